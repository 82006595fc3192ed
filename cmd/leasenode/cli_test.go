package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/node/nodetest"
)

// run1 runs the binary with args and env (and no LEASENODE_ variables of
// the caller) and returns its exit code, stdout and stderr.
func run1(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(cleanEnv(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	_ = cmd.Run()
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// The habits of a GNU/cobra command line: errors first and short (no
// usage dump), hints for what a value must look like, suggestions for
// mistyped commands and flags, help printed once, no doubled prefixes.
func TestCLIHabits(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		code int
		want []string // all in stderr
	}{
		{[]string{"aquire", "k"}, exitUsage, []string{`unknown command "aquire"`, `did you mean "acquire"?`}},
		{[]string{"extend", "k"}, exitUsage, []string{`unknown command "extend"`, "leasenode lock KEY -- CMD", "acquire KEY --hold"}},
		{[]string{"renew", "k"}, exitUsage, []string{`unknown command "renew"`, "leasenode lock KEY -- CMD", "acquire KEY --hold"}},
		{[]string{"acquire", "k", "--ttl", "5"}, exitUsage, []string{`--ttl "5": not a duration`, "durations need a unit: 5s"}},
		{[]string{"acquire", "k", "--tll", "5s"}, exitUsage, []string{"unknown flag: --tll", "did you mean --ttl?"}},
		{[]string{"acquire", "k", "--wait", "soon"}, exitUsage, []string{`--wait "soon"`, `"forever"`}},
		{[]string{"acquire", "k", "--count", "3"}, exitUsage, []string{"unknown flag: --count", "did you mean -n N"}},
		{[]string{"watch", "--json"}, exitUsage, []string{"unknown flag: --json", "did you mean -o json?"}},
		{[]string{"status", "--adress", "127.0.0.1:1"}, exitUsage, []string{"unknown flag: --adress", "did you mean --addr?"}},
		{[]string{"acquire", "k", "-x"}, exitUsage, []string{"unknown shorthand flag", "the one-letter flags of acquire are -h, -n, -o"}},
		{[]string{"snapshot", "sve", "f"}, exitUsage, []string{`unknown subcommand "sve"`, `did you mean "save"?`}},
		{[]string{"tls"}, exitUsage, []string{"want a subcommand"}},
		{[]string{"acquire", "k", "-n", "0"}, exitUsage, []string{"-n 0: want at least 1"}},
		// The lease state's limits, before any connection: exit 2 with
		// nobody at --addr, not 3 (new-user review).
		{[]string{"acquire", "k", "--ttl", "25h", "--addr", "127.0.0.1:1"}, exitUsage, []string{"--ttl 25h: at most 24h", "hint: give --ttl 24h or less"}},
		{[]string{"lock", "k", "--ttl", "25h", "--addr", "127.0.0.1:1", "--", "true"}, exitUsage, []string{"--ttl 25h: at most 24h"}},
		{[]string{"acquire", "k", "--lock-delay", "25h", "--addr", "127.0.0.1:1"}, exitUsage, []string{"--lock-delay 25h: at most 24h"}},
		{[]string{"acquire", "k", "--ttl", "0s", "--addr", "127.0.0.1:1"}, exitUsage, []string{"--ttl 0s: must be positive"}},
		{[]string{"acquire", "k", "--value", strings.Repeat("v", fsm.MaxValueLen+1), "--addr", "127.0.0.1:1"}, exitUsage, []string{"--value of 65537 bytes: at most 65536"}},
		{[]string{"acquire", "k", "--key", strings.Repeat("k", fsm.MaxKeyLen+1), "--addr", "127.0.0.1:1"}, exitUsage, []string{"of 1025 bytes: at most 1024"}},
		{[]string{"agent", "--id", "n", "--data-dir", "/nonexistent/d", "--advertise", "0.0.0.0:7400", "--voters", "2"}, exitUsage,
			[]string{`--advertise "0.0.0.0:7400" is unspecified`, "--voters 2 should be odd"}},
		{[]string{"acquire", "k", "--addr", "127.0.0.1:1", "--timeout", "1s"}, exitUnreachable, []string{"lease: no leader"}},
		{[]string{"get", "k", "--timeout", "1s", "--addr", "127.0.0.1:1"}, exitUnreachable, []string{"leasenode get \"k\": lease: no leader"}},
		{[]string{"status", "--timeout", "1s", "--addr", "127.0.0.1:1"}, exitUnreachable, []string{"leasenode status: lease: no leader"}},
		{[]string{"lock", "--grace", "-1s", "k", "--", "true"}, exitUsage, []string{"--grace -1s: must not be negative"}},
		{[]string{"agent", "--id", "n", "--data-dir", "/nonexistent/d", "--dead-server-grace", "0s"}, exitUsage, []string{"--dead-server-grace 0s: must be positive"}},
		{[]string{"health", "--addr", "127.0.0.1:1,127.0.0.1:2"}, exitUnreachable, []string{"probing 127.0.0.1:1, the first of 2 addresses"}},
		// Other tools' flags (new-user review L4): etcdctl's TLS flags,
		// --insecure, --prefix, --rev.
		{[]string{"get", "k", "--cacert", "ca.pem"}, exitUsage, []string{"unknown flag: --cacert", "did you mean --tls-ca"}},
		{[]string{"get", "k", "--cert", "c.pem"}, exitUsage, []string{"did you mean --tls-cert"}},
		{[]string{"list", "--key", "c.key"}, exitUsage, []string{"did you mean --tls-key"}},
		{[]string{"get", "k", "--insecure"}, exitUsage, []string{"unknown flag: --insecure", "--tls-ca", "always verified"}},
		{[]string{"list", "--prefix", "a/"}, exitUsage, []string{"the prefix is an argument, `leasenode list PREFIX`"}},
		{[]string{"watch", "--prefix", "a/"}, exitUsage, []string{"`leasenode watch PREFIX`"}},
		{[]string{"get", "k", "--rev", "3"}, exitUsage, []string{"no history of revisions"}},
		// Flag conflicts end with the CLI's hint line, not cobra's.
		{[]string{"acquire", "k", "-n", "2", "--shared"}, exitUsage, []string{"-n and --shared", "hint: give -n N for a semaphore"}},
		{[]string{"get", "k", "--tls-cert", "c.pem"}, exitUsage, []string{"--tls-cert and --tls-key go together", "hint: give both"}},
		{[]string{"release", "k"}, exitUsage, []string{"needs --token and --holder", "hint: `leasenode release --help`"}},
	}
	for _, c := range cases {
		code, out, errOut := run1(t, nil, c.args...)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d; stderr %q", c.args, code, c.code, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v: stderr %q lacks %q", c.args, errOut, w)
			}
		}
		if strings.Contains(errOut, "Usage:") || strings.Count(errOut, "\n") > 4 {
			t.Errorf("%v: the error is not short (%d lines): %q", c.args, strings.Count(errOut, "\n"), errOut)
		}
		if strings.Contains(errOut, "Run '") {
			t.Errorf("%v: cobra's pointer to --help instead of a hint line: %q", c.args, errOut)
		}
		if strings.Contains(errOut, "get: get") || strings.Contains(errOut, "status: status") || out != "" && c.code == exitUsage {
			t.Errorf("%v: doubled prefix or output on a usage error: %q %q", c.args, out, errOut)
		}
	}

	// A command lock cannot run: named once, without "lock: lock:".
	if code, _, errOut := run1(t, nil, "lock", "k", "--addr", "127.0.0.1:1", "--", "no-such-command-xyz"); code != 127 ||
		strings.Contains(errOut, "lock: lock:") || !strings.Contains(errOut, "leasenode lock: exec: \"no-such-command-xyz\"") {
		t.Errorf("lock of a missing command: exit %d, %q", code, errOut)
	}

	// restore's help shows what shapes a restore, not the agent's other
	// flags or its --unsafe-* switches (it still takes them).
	if _, out, _ := run1(t, nil, "snapshot", "restore", "--help"); strings.Contains(out, "--unsafe-") || strings.Contains(out, "--join string") ||
		strings.Contains(out, "--max-conns int") || !strings.Contains(out, "--data-dir") || !strings.Contains(out, "--index-gap") {
		t.Errorf("snapshot restore --help:\n%s", out)
	}
	// --min-ttl's help says what 0 means once, not two defaults.
	if _, out, _ := run1(t, nil, "agent", "--help"); !strings.Contains(out, "0: the Raft leader lease timeout") || strings.Contains(out, "(default: the Raft") {
		t.Errorf("agent --help on --min-ttl:\n%s", out)
	}

	// Help once, on stdout, exit 0; the agent's help lists --config.
	for _, args := range [][]string{{"get", "-h"}, {"agent", "--help"}, {"help", "lock"}, {"lock", "--help"}} {
		code, out, errOut := run1(t, nil, args...)
		if code != 0 || strings.Count(out, "Usage:") != 1 || errOut != "" {
			t.Errorf("%v: exit %d, %d usages, stderr %q", args, code, strings.Count(out, "Usage:"), errOut)
		}
	}
	if _, out, _ := run1(t, nil, "agent", "--help"); !strings.Contains(out, "--config") || !strings.Contains(out, "--print-config") {
		t.Errorf("agent --help lacks --config:\n%s", out)
	}

	// Shell completion for bash, zsh and fish.
	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, _ := run1(t, nil, "completion", sh)
		if code != 0 || !strings.Contains(out, "leasenode") || len(out) < 500 {
			t.Errorf("completion %s: exit %d, %d bytes", sh, code, len(out))
		}
	}
	// Completion of commands and of a flag's values.
	if _, out, _ := run1(t, nil, "__complete", "acq"); !strings.Contains(out, "acquire") {
		t.Errorf("completing acq: %q", out)
	}
	if _, out, _ := run1(t, nil, "__complete", "bench", "--workload", ""); !strings.Contains(out, "keepalive") {
		t.Errorf("completing --workload: %q", out)
	}

	// The version, three ways.
	code, out, _ := run1(t, nil, "version", "-o", "json")
	var v struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Version == "" || !strings.HasPrefix(v.GoVersion, "go1.") {
		t.Errorf("version -o json: %d %q", code, out)
	}
	// "modified" comes only with "revision" (the test binary is built
	// without VCS information under GOFLAGS=-buildvcs=false).
	var keys map[string]any
	if json.Unmarshal([]byte(out), &keys) == nil {
		if _, rev := keys["revision"]; !rev {
			if _, mod := keys["modified"]; mod {
				t.Errorf("version -o json without a revision says modified: %s", out)
			}
		}
	}
	for _, args := range [][]string{{"--version"}, {"-v"}, {"version"}} {
		if code, out, _ := run1(t, nil, args...); code != 0 || !strings.Contains(out, "leasenode "+v.Version) || !strings.Contains(out, v.GoVersion) {
			t.Errorf("%v: %d %q", args, code, out)
		}
	}
}

// lock takes its flags before and after KEY and leaves CMD's own flags
// alone, with or without "--".
func TestLockArgs(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"lock", "--addr", "127.0.0.1:1", "k", "--timeout", "1s", "--", "sh", "-c", "exit 0"},
		{"lock", "k", "--addr", "127.0.0.1:1", "--timeout=1s", "sh", "-c", "exit 0"},
	} {
		code, _, errOut := run1(t, nil, args...)
		if code != exitUnreachable || strings.Contains(errOut, "unknown") {
			t.Errorf("%v: exit %d, %q; want %d (flags parsed, cluster unreachable)", args, code, errOut, exitUnreachable)
		}
	}
}

// The agent's config file: keys are flag names; flags > environment >
// file; an unknown key is an error naming the key and the file;
// --print-config shows the effective settings with their sources and
// redacts secrets.
func TestAgentConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.toml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`# a node
id = "from-file"
data-dir = "` + dir + `/data"
join = ["127.0.0.1:7401", "127.0.0.1:7411"]
bootstrap-expect = 3
voters = 3
timing = "fast"
min-ttl = "2s"
auth-token = "s3cret"
insecure = false
`)
	code, out, errOut := run1(t, []string{"LEASENODE_TIMING=default", "LEASENODE_CONFIG=" + file}, "agent", "--voters", "5", "--print-config")
	if code != 0 {
		t.Fatalf("print-config: %d %s", code, errOut)
	}
	for _, want := range []string{
		`id = "from-file"`, "# file",
		`join = ["127.0.0.1:7401", "127.0.0.1:7411"]`,
		"bootstrap-expect = 3", "voters = 5", "# flag",
		`timing = "default"`, "# env LEASENODE_TIMING",
		`min-ttl = "2s"`, `auth-token = "<redacted>"`, `bind = "127.0.0.1:7400"`, "# default",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("print-config lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("print-config shows the secret:\n%s", out)
	}
	// Loaded back as it is, the placeholder is refused, not taken as the
	// token.
	write(out)
	if code, _, errOut := run1(t, nil, "agent", "--config", file, "--print-config"); code != 2 || !strings.Contains(errOut, "placeholder") {
		t.Errorf("print-config output with its redacted token as a config file: %d %s", code, errOut)
	}
	// What --print-config prints is itself a valid config file.
	write(strings.ReplaceAll(out, `auth-token = "<redacted>"`, `auth-token = ""`))
	if code, _, errOut := run1(t, nil, "agent", "--config", file, "--print-config"); code != 0 {
		t.Errorf("print-config output as a config file: %d %s", code, errOut)
	}
	// A token exported for the CLI does not conflict with an agent's
	// --auth-token-file: the flag is the stronger source.
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	if code, _, errOut := run1(t, []string{"LEASENODE_AUTH_TOKEN=other"}, "agent", "--id", "n", "--data-dir", t.TempDir(),
		"--auth-token-file", tokenFile, "--print-config"); code != 0 {
		t.Errorf("--auth-token-file beside LEASENODE_AUTH_TOKEN: %d %q", code, errOut)
	}
	// Missing settings (a unit file sets some by environment only): the
	// settings are printed, and then what is missing.
	if code, out, errOut := run1(t, nil, "agent", "--voters", "5", "--print-config"); code != exitUsage ||
		!strings.Contains(out, "voters = 5") || !strings.Contains(errOut, "--id is required") {
		t.Errorf("print-config without --id: %d %q %q", code, out, errOut)
	}
	// A LEASENODE_ variable a letter from a setting's is a warning (a
	// config file's unknown key is an error).
	if _, _, errOut := run1(t, []string{"LEASENODE_DATADIR=/x"}, "version"); !strings.Contains(errOut, "LEASENODE_DATADIR sets nothing (did you mean LEASENODE_DATA_DIR?)") {
		t.Errorf("a misspelt LEASENODE_ variable: %q", errOut)
	}
	// --help marks a flag the environment sets, with the value in force
	// (new-user review: --addr showed only its default), but a secret's
	// without its value.
	if _, out, _ := run1(t, []string{"LEASENODE_ADDR=127.0.0.1:7412", "LEASENODE_AUTH_TOKEN=s3cret"}, "get", "--help"); !strings.Contains(out, `[set now by LEASENODE_ADDR to "127.0.0.1:7412"`) ||
		!strings.Contains(out, "[set now by LEASENODE_AUTH_TOKEN]") || strings.Contains(out, "s3cret") {
		t.Errorf("get --help with LEASENODE_ADDR and LEASENODE_AUTH_TOKEN set:\n%s", out)
	}
	// A zero that means "derived" says what it is derived to.
	if _, out, _ := run1(t, nil, "agent", "--id", "n", "--data-dir", t.TempDir(), "--print-config"); !strings.Contains(out, "leader lease timeout of this --timing, 500ms") {
		t.Errorf("print-config without --min-ttl:\n%s", out)
	}

	for _, c := range []struct{ body, want, hint string }{
		{"data_dir = \"/x\"\nid = \"n\"\n", `unknown key "data_dir"`, `did you mean "data-dir"?`},
		{"id = \"n\"\n[tls]\ncert = \"x\"\n", `unknown key "tls`, "no tables"},
		{"id = \"n\"\ndata-dir = \"/x\"\nmin-ttl = \"5\"\n", `min-ttl = "5"`, "durations need a unit"},
		{"id = \"n\"\ndata-dir = \"/x\"\nvoters = \"three\"\n", `voters: want a number`, "voters = 3"},
		{"id = \"n\"\ndata-dir = \"/x\"\nbootstrap-expect = \"3\"\n", `bootstrap-expect: want a number`, `not "3"`},
		{"id = \"n\"\ndata-dir = \"/x\"\nleave-on-stop = \"true\"\n", `leave-on-stop: want true or false`, `not "true"`},
		{"id = n\n", "line 1", ""},
		{"id = \"n\"\ndata-dir = \"/x\"\nbind = 127.0.0.1:43170\n", "line 3", `quote string values: bind = "127.0.0.1:43170"`},
	} {
		write(c.body)
		code, _, errOut := run1(t, nil, "agent", "--config", file)
		if code != exitUsage || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, file) || !strings.Contains(errOut, c.hint) {
			t.Errorf("config %q: exit %d, %q; want %d naming the file, %q and %q", c.body, code, errOut, exitUsage, c.want, c.hint)
		}
	}
}

// Nothing listening at --addr gets the hint to check it; "knows no
// leader" is only for a node that said so.
func TestNobodyAtAddrHint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, _, errOut := run1(t, nil, "get", "k", "--addr", addr, "--timeout", "1s")
	if code != exitUnreachable || !strings.Contains(errOut, "check --addr") || strings.Contains(errOut, "knows no leader") {
		t.Errorf("get with nothing at %s: %d %s", addr, code, errOut)
	}
	// status is what the hint of the other commands points to: its own
	// hint does not point to itself.
	code, _, errOut = run1(t, nil, "status", "--addr", addr, "--timeout", "1s")
	if code != exitUnreachable || !strings.Contains(errOut, "check --addr") || strings.Contains(errOut, "`leasenode status`") {
		t.Errorf("status with nothing at %s: %d %s", addr, code, errOut)
	}
	// Nothing listens: the first contact gives up at --dial-timeout, not
	// after --timeout, and says which flag to raise.
	for _, cmd := range [][]string{{"get", "k"}, {"acquire", "k"}} {
		code, _, errOut = run1(t, nil, append(cmd, "--addr", addr, "--timeout", "10m", "--dial-timeout", "300ms")...)
		if code != exitUnreachable || !strings.Contains(errOut, "--dial-timeout") {
			t.Errorf("%v with nothing at %s: %d %s", cmd, addr, code, errOut)
		}
	}
}

// Ports that clash are refused before the data dir is made (it was made,
// with a 64 MiB WAL segment, before the listener failed), naming the flag.
func TestAgentPortClashBeforeDataDir(t *testing.T) {
	t.Parallel()
	p := nodetest.FreeAddr(t, true)
	dir := filepath.Join(t.TempDir(), "data")
	code, _, errOut := run1(t, nil, "agent", "--id", "n", "--data-dir", dir, "--bind", p, "--gossip", p, "--api", nodetest.FreeAddr(t, false))
	if code != exitUsage || !strings.Contains(errOut, "--bind "+p+" and --gossip "+p+" are one port") {
		t.Errorf("--bind and --gossip on one port: %d %s", code, errOut)
	}
	api := nodetest.FreeAddr(t, false)
	code, _, errOut = run1(t, nil, "agent", "--id", "n", "--data-dir", dir, "--bind", nodetest.FreeAddr(t, false), "--gossip", nodetest.FreeAddr(t, true),
		"--api", api, "--http", api)
	if code != exitUsage || !strings.Contains(errOut, "--http "+api+" and --api "+api+" are one port") {
		t.Errorf("--http and --api on one port: %d %s", code, errOut)
	}
	ln, err := net.Listen("tcp", api)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	code, _, errOut = run1(t, nil, "agent", "--id", "n", "--data-dir", dir, "--bind", nodetest.FreeAddr(t, false), "--gossip", nodetest.FreeAddr(t, true), "--api", api)
	if code != exitFailure || !strings.Contains(errOut, "--api "+api+" is in use (another agent?)") {
		t.Errorf("--api in use: %d %s", code, errOut)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the data dir was made for an agent that could not listen")
	}
}

// The flags that name what one command acts on (--key, --token, --holder,
// --value) are not taken from the environment: an exported LEASENODE_KEY
// added a key to every acquire. It is warned about, and --help says so.
func TestPerInvocationFlagsIgnoreTheEnvironment(t *testing.T) {
	t.Parallel()
	env := []string{"LEASENODE_KEY=extra", "LEASENODE_TOKEN=7"}
	_, _, errOut := run1(t, env, "acquire", "k", "--addr", "127.0.0.1:1", "--timeout", "1s")
	for _, w := range []string{"LEASENODE_KEY sets nothing: --key", "LEASENODE_TOKEN sets nothing: --token"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("acquire with LEASENODE_KEY and LEASENODE_TOKEN exported: %q lacks %q", errOut, w)
		}
	}
	// release still wants its --token: the environment's does not count.
	if code, _, errOut := run1(t, env, "release", "k", "--holder", "h#1", "--addr", "127.0.0.1:1"); code != exitUsage || !strings.Contains(errOut, "needs --token") {
		t.Errorf("release with only LEASENODE_TOKEN: exit %d, %q", code, errOut)
	}
	_, out, _ := run1(t, env, "acquire", "--help")
	if strings.Contains(out, "set now by LEASENODE_KEY") || !strings.Contains(out, "except those that name what one command") {
		t.Errorf("acquire --help with LEASENODE_KEY set:\n%s", out)
	}
}

// A file that holds a node's JSON error answer (curl without --fail) is
// not a backup, and restore says so rather than "bad magic".
func TestRestoreOfAnErrorBody(t *testing.T) {
	t.Parallel()
	f := filepath.Join(t.TempDir(), "backup.lns")
	os.WriteFile(f, []byte(`{"code":"unauthenticated","message":"missing or wrong auth token"}`), 0o600)
	code, _, errOut := run1(t, nil, "snapshot", "restore", f, "--id", "n1", "--data-dir", t.TempDir())
	if code == 0 || !strings.Contains(errOut, "is not a backup: it holds a node's error response (unauthenticated: missing or wrong auth token)") ||
		!strings.Contains(errOut, "curl") || strings.Contains(errOut, "bad magic") {
		t.Errorf("restore of an error body: exit %d, %q", code, errOut)
	}
}

// Every README command that writes a key file (> cluster.key) makes it
// mode 0600 with (umask 077; ...): a copied 0644 key makes every agent warn
// that other users can read it.
func TestREADMEKeyFilesArePrivate(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "> cluster.key") {
			continue
		}
		n++
		if !strings.Contains(line, "(umask 077;") {
			t.Errorf("README.md:%d writes cluster.key without (umask 077; ...): %s", i+1, strings.TrimSpace(line))
		}
	}
	if n == 0 {
		t.Errorf("README.md has no command that writes cluster.key: does this test still check anything?")
	}
}

// snapshot save into a directory that does not exist says so, naming the
// file asked for, not the temporary file made beside it; and it says it
// before asking any cluster (nothing listens at --addr here).
func TestSnapshotSaveIntoMissingDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "missing", "b.lns")
	code, _, errOut := run1(t, nil, "snapshot", "save", file, "--addr", "127.0.0.1:1")
	want := "leasenode snapshot save: cannot write " + file + ": directory " + filepath.Dir(file) + " does not exist"
	if code != exitFailure || !strings.HasPrefix(errOut, want) || strings.Contains(errOut, ".tmp") {
		t.Errorf("snapshot save into a missing directory: exit %d %q; want %d and %q", code, errOut, exitFailure, want)
	}
}

// Every README command put in the background (cmd &) sends its output to a
// file: three agents started with & and no redirect wrote their logs over
// the terminal the reader typed the next command in (new-user review).
func TestREADMEBackgroundCommandsLogToFiles(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, line := range strings.Split(string(b), "\n") {
		cmd, _, _ := strings.Cut(line, " #")
		cmd = strings.TrimSpace(cmd)
		if !strings.HasSuffix(cmd, "&") || strings.HasSuffix(cmd, "&&") || strings.HasSuffix(cmd, "2>&1") {
			continue
		}
		n++
		if !strings.Contains(cmd, "> ") || !strings.Contains(cmd, "2>&1") {
			t.Errorf("README.md:%d runs a command in the background without sending its output to a file (> F 2>&1): %s", i+1, strings.TrimSpace(line))
		}
	}
	if n == 0 {
		t.Errorf("README.md runs nothing in the background: does this test still check anything?")
	}
}
