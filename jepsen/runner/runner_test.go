package runner

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/jepsen/checker"
	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/report"
)

func TestValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Out = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := cfg
	bad.Nodes, bad.TTL, bad.Unsafe, bad.Faults = 0, time.Millisecond, "nope", "kill,bogus"
	err := bad.Validate()
	for _, want := range []string{"-nodes 0", "-ttl", `-unsafe "nope"`, "bogus"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to mention %s", err, want)
		}
	}
}

func TestUnsafeModesHaveFlags(t *testing.T) {
	for _, name := range UnsafeModeNames() {
		m := UnsafeModes[name]
		var args []string
		if m.Args != nil {
			args = append(args, m.Args(3, 2*time.Second)...)
		}
		if m.NodeArgs != nil {
			args = append(args, m.NodeArgs(2, 2*time.Second)...)
		}
		if len(args) == 0 || !strings.HasPrefix(args[0], "--unsafe-") || m.Describe == "" {
			t.Errorf("%s: args %v", name, args)
		}
	}
	if UnsafeModes["clock-rate-within"].ExpectViolation {
		t.Error("a drift within the bound must be expected to stay safe")
	}
}

// TestLoopbackCampaignWithAgent runs a short campaign of real agents as
// loopback processes (the fallback without root) with kill and pause
// faults, and checks that it passes and writes its report. The agent is
// built from this source tree (or is $LEASENODE_BIN): a prebuilt
// bin/leasenode may be older than the code under test. A failed run's
// directory (history, node logs and data) is kept and named.
func TestLoopbackCampaignWithAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and runs a 10 s campaign; skipped with -short")
	}
	dir, err := os.MkdirTemp("", "leasenode-loopback-campaign-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s for inspection", dir)
			return
		}
		os.RemoveAll(dir)
	})
	bin := os.Getenv("LEASENODE_BIN")
	if bin == "" {
		root, err := control.ModuleRoot(".")
		if err != nil {
			t.Fatal(err)
		}
		if bin, err = control.Build(t.Context(), root, filepath.Join(dir, "bin"), false); err != nil {
			t.Fatal(err)
		}
	}
	cfg := DefaultConfig()
	cfg.Binary, cfg.Out, cfg.Duration, cfg.Faults = bin, dir, 10*time.Second, "kill,pause"
	cfg.Progress = nil
	var out bytes.Buffer
	cfg.Stdout = &out
	code := Campaign(cfg, nil, "test: loopback")
	t.Log(out.String())
	if code != ExitPass {
		t.Fatalf("exit %d; see %s", code, cfg.Out)
	}
	r, err := report.Load(filepath.Join(cfg.Out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict == checker.Invalid || r.Counts.OK == 0 || r.Meta.Control != "loopback" {
		t.Fatalf("results %+v", r)
	}
	if rec, ok := (checker.Results{Checkers: r.Checkers}).Get(checker.NameRecovery); !ok || rec.Verdict != checker.Valid {
		t.Fatalf("recovery: %+v", rec)
	}
	if _, err := os.Stat(filepath.Join(cfg.Out, "report.html")); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "jepsen: PASS") {
		t.Fatalf("verdict line %q", out.String())
	}
}

// fakeAgent writes a script that answers `agent --help` like an agent
// with the given extra flags.
func fakeAgent(t *testing.T, flags ...string) string {
	t.Helper()
	script := "#!/bin/sh\necho 'usage: leasenode agent --id ID'\necho '  -id string'\necho '    \tnode ID'\n"
	for _, f := range flags {
		script += "echo '  -" + f + " string'\n"
	}
	path := filepath.Join(t.TempDir(), "leasenode")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestClusterKeyDetection: -cluster-key auto gives every agent a fresh
// key once the agent lists --cluster-key (in a file when it takes
// --cluster-key-file), none before; on insists.
func TestClusterKeyDetection(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Out = t.TempDir()

	cfg.Binary = fakeAgent(t)
	var opts control.Options
	extra := map[string]string{}
	if on, err := clusterKey(cfg, &opts, extra); err != nil || on || opts.ClusterKey != "" {
		t.Fatalf("an agent without --cluster-key: on=%v key=%q err=%v", on, opts.ClusterKey, err)
	}
	cfg.ClusterKey = "on"
	if _, err := clusterKey(cfg, &opts, extra); err == nil {
		t.Fatal("-cluster-key on accepted an agent without the flag")
	}

	cfg.ClusterKey, cfg.Binary = "auto", fakeAgent(t, "cluster-key")
	opts = control.Options{}
	if on, err := clusterKey(cfg, &opts, extra); err != nil || !on {
		t.Fatalf("on=%v err=%v", on, err)
	}
	if b, err := base64.StdEncoding.DecodeString(opts.ClusterKey); err != nil || len(b) != 32 {
		t.Fatalf("key %q: %d bytes, %v", opts.ClusterKey, len(b), err)
	}

	cfg.Binary = fakeAgent(t, "cluster-key", "cluster-key-file")
	opts = control.Options{}
	if on, err := clusterKey(cfg, &opts, extra); err != nil || !on || opts.ClusterKey != "" || opts.ClusterKeyFile == "" {
		t.Fatalf("on=%v opts=%+v err=%v", on, opts, err)
	}
	b, err := os.ReadFile(opts.ClusterKeyFile)
	if raw, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b))); err != nil || derr != nil || len(raw) != 32 {
		t.Fatalf("key file %q: %v %v", b, err, derr)
	}
	if fi, _ := os.Stat(opts.ClusterKeyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}

	cfg.ClusterKey = "off"
	opts = control.Options{}
	if on, _ := clusterKey(cfg, &opts, extra); on || opts.ClusterKeyFile != "" {
		t.Fatal("-cluster-key off still set a key")
	}
}
