package control

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModuleRoot finds the directory of the leasenode module (the one holding
// go.mod with module github.com/leasenode/leasenode), starting at dir and
// walking up.
func ModuleRoot(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/leasenode/leasenode\n")) {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no leasenode go.mod above %s", dir)
		}
		d = parent
	}
}

// Build compiles ./cmd/leasenode of the module at root into outDir and
// returns the binary's path. race adds -race (slower agents, more bugs
// found).
func Build(ctx context.Context, root, outDir string, race bool) (string, error) {
	if _, err := os.Stat(filepath.Join(root, "cmd", "leasenode")); err != nil {
		return "", fmt.Errorf("build agent: %w (cmd/leasenode does not exist yet)", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(outDir, "leasenode")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/leasenode")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return bin, nil
}
