package fsm_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoWallClock: fsm-determinism needs the package to be a pure function
// of the log. Its non-test code must not read the wall clock, sleep or
// start timers, and (DESIGN.md) must not start goroutines or reach for
// randomness, the environment or the network.
func TestNoWallClock(t *testing.T) {
	forbiddenTime := map[string]bool{
		"Now": true, "Since": true, "Until": true, "Sleep": true, "After": true,
		"AfterFunc": true, "Tick": true, "NewTimer": true, "NewTicker": true,
	}
	forbiddenImports := map[string]bool{
		"math/rand": true, "math/rand/v2": true, "crypto/rand": true,
		"os": true, "os/exec": true, "net": true, "net/http": true, "syscall": true, "unsafe": true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		// The file's name for package time, if it imports it.
		timeName := ""
		for _, imp := range file.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if forbiddenImports[path] {
				t.Errorf("%s imports %s", fset.Position(imp.Pos()), path)
			}
			if path == "time" {
				timeName = "time"
				if imp.Name != nil {
					timeName = imp.Name.Name
				}
				if timeName == "." || timeName == "_" {
					t.Errorf("%s: import time as %s hides its uses", fset.Position(imp.Pos()), timeName)
				}
			}
		}
		ast.Inspect(file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				// Any use counts, called or not (f := time.Now).
				if id, ok := n.X.(*ast.Ident); ok && timeName != "" && id.Name == timeName && forbiddenTime[n.Sel.Name] {
					t.Errorf("%s: time.%s: the FSM's only clock is the command's Stamp", fset.Position(n.Pos()), n.Sel.Name)
				}
			case *ast.GoStmt:
				t.Errorf("%s: go statement: the FSM starts no goroutines", fset.Position(n.Pos()))
			}
			return true
		})
	}
	if checked == 0 {
		t.Fatal("no source files checked")
	}
}
