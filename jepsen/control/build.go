package control

import (
	"bytes"
	"context"
	"debug/buildinfo"
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

// Revision returns the commit the agent binary was built from and whether
// its tree had uncommitted changes, from the VCS stamp go build writes
// into binaries built in a git checkout. Without a stamp it falls back to
// the module's git HEAD (and `git status`), and to "unknown".
func Revision(binary string) (commit string, dirty bool) {
	if bi, err := buildinfo.ReadFile(binary); err == nil {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if commit != "" {
			return commit, dirty
		}
	}
	root, err := ModuleRoot(".")
	if err != nil {
		return "unknown", false
	}
	out, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown", false
	}
	st, _ := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output()
	return strings.TrimSpace(string(out)), len(bytes.TrimSpace(st)) > 0
}
