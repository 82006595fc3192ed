package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node/nodetest"
)

// End-to-end tests: they build the leasenode binary once, run agents as
// separate processes on free loopback ports, and drive them with the CLI.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "leasenode-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "leasenode")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build leasenode: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a process started by a test, in its own process group.
type proc struct {
	cmd    *exec.Cmd
	stdout *syncBuf
	stderr *syncBuf
	done   chan struct{}
	err    error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs the binary with args; cleanup kills its process group.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{cmd: cmd, stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("%v stderr:\n%s", args, tail(p.stderr.String(), 3000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// cleanEnv is the environment without LEASENODE_ variables of the caller.
func cleanEnv() []string {
	var out []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LEASENODE_") {
			out = append(out, e)
		}
	}
	return out
}

func (p *proc) kill(sig syscall.Signal) { _ = syscall.Kill(-p.cmd.Process.Pid, sig) }

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%v still running after %v; stdout:\n%s\nstderr:\n%s", p.cmd.Args, timeout, p.stdout, tail(p.stderr.String(), 3000))
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// agent is one running agent process.
type agent struct {
	id                string
	raft, gossip, api string
	dir               string
	p                 *proc
	args, env         []string // to restart it
}

// restart starts the agent again (after it exited) and waits until it is
// ready.
func (a *agent) restart(t *testing.T) {
	t.Helper()
	a.p = start(t, a.env, a.args...)
	waitReady(t, a)
}

// waitReady waits until the agent listens and its /readyz answers 200.
func waitReady(t *testing.T, a *agent) {
	t.Helper()
	nodetest.Eventually(t, 20*time.Second, func() error {
		if a.p.exited() {
			t.Fatalf("agent %s exited: %s", a.id, a.p.stderr)
		}
		want := fmt.Sprintf("leasenode agent ready api=%s raft=%s gossip=%s\n", a.api, a.raft, a.gossip)
		if got := a.p.stdout.String(); got != want {
			return fmt.Errorf("stdout %q, want %q", got, want)
		}
		return nil
	})
	nodetest.Eventually(t, 20*time.Second, func() error {
		code, body := httpGet(a.api, "/readyz")
		if code != 200 {
			return fmt.Errorf("%s /readyz: %d %s", a.id, code, body)
		}
		return nil
	})
}

// cluster starts n agents with --timing fast and waits until each is
// ready (/readyz answers 200).
func cluster(t *testing.T, n int, extra ...string) []*agent {
	t.Helper()
	return clusterEach(t, n, nil, extra...)
}

// clusterEach is cluster with a hook that may add to each agent's args and
// env before it starts (flags given later override earlier ones).
func clusterEach(t *testing.T, n int, each func(i int, a *agent), extra ...string) []*agent {
	t.Helper()
	agents := make([]*agent, n)
	for i := range agents {
		agents[i] = &agent{id: "a" + strconv.Itoa(i), raft: nodetest.FreeAddr(t, false), gossip: nodetest.FreeAddr(t, true), api: nodetest.FreeAddr(t, false),
			dir: filepath.Join(t.TempDir(), "data")}
	}
	for i, a := range agents {
		var join []string
		for j, b := range agents {
			if j != i {
				join = append(join, b.gossip)
			}
		}
		a.args = append([]string{"agent", "--id", a.id, "--bind", a.raft, "--gossip", a.gossip, "--api", a.api,
			"--join", strings.Join(join, ","), "--bootstrap-expect", strconv.Itoa(n), "--timing", "fast", "--log-level", "warn"}, extra...)
		// The data dir comes from the environment, to test that path too.
		a.env = []string{"LEASENODE_DATA_DIR=" + a.dir}
		if each != nil {
			each(i, a)
		}
		a.p = start(t, a.env, a.args...)
	}
	for _, a := range agents {
		waitReady(t, a)
	}
	return agents
}

func addrs(agents []*agent) string {
	var out []string
	for _, a := range agents {
		out = append(out, a.api)
	}
	return strings.Join(out, ",")
}

func httpGet(addr, path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// cli runs one client command to completion.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return cliEnv(t, nil, args...)
}

// cliEnv is cli with extra environment variables (LEASENODE_AUTH_TOKEN=...).
func cliEnv(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(cleanEnv(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// leaderOf returns the agent that leads, by `status -o json`.
func leaderOf(t *testing.T, agents []*agent, alive func(*agent) bool) *agent {
	t.Helper()
	var leader *agent
	nodetest.Eventually(t, 20*time.Second, func() error {
		var live []*agent
		for _, a := range agents {
			if alive(a) {
				live = append(live, a)
			}
		}
		code, out, errOut := cli(t, "status", "-o", "json", "--addr", addrs(live))
		if code != 0 {
			return fmt.Errorf("status: %d %s", code, errOut)
		}
		var rows []struct {
			ID      string `json:"id"`
			Serving bool   `json:"serving"`
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			return err
		}
		for _, r := range rows {
			for _, a := range live {
				if r.Serving && r.ID == a.id {
					leader = a
					return nil
				}
			}
		}
		return fmt.Errorf("no serving leader among %s", out)
	})
	return leader
}

func TestAgentAndClientCommands(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	addr := addrs(agents)

	code, out, errOut := cli(t, "acquire", "jobs/a", "--addr", addr, "--ttl", "30s", "--wait", "0", "--value", "worker-1", "-o", "json")
	if code != 0 {
		t.Fatalf("acquire: %d %s", code, errOut)
	}
	var got struct {
		Key    string `json:"key"`
		Token  uint64 `json:"token"`
		Holder string `json:"holder"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Token == 0 || got.Holder == "" {
		t.Fatalf("acquire output %q: %v", out, err)
	}
	if !strings.Contains(errOut, "leasenode release") {
		t.Errorf("acquire does not say how to release: %q", errOut)
	}

	// Held: exit 4, naming the holder and the time left.
	code, _, errOut = cli(t, "acquire", "jobs/a", "--addr", addr, "--wait", "0")
	if code != exitHeld || !strings.Contains(errOut, got.Holder) || !strings.Contains(errOut, "longer if extended") {
		t.Errorf("acquire of a held key: exit %d, %q; want %d naming %s", code, errOut, exitHeld, got.Holder)
	}
	for _, cmd := range [][]string{{"acquire", "jobs/a"}, {"lock", "jobs/a"}} {
		args := append(cmd, "--addr", addr, "--wait", "0", "-o", "json")
		if cmd[0] == "lock" {
			args = append(args, "--", "true")
		}
		code, out, _ = cli(t, args...)
		var refused struct {
			Acquired *bool   `json:"acquired"`
			Holder   string  `json:"holder"`
			Left     float64 `json:"holder_remaining_seconds"`
		}
		if err := json.Unmarshal([]byte(out), &refused); code != exitHeld || err != nil || refused.Acquired == nil || *refused.Acquired ||
			refused.Holder != got.Holder || refused.Left <= 0 {
			t.Errorf("%s -o json of a held key: exit %d, %q (%v); want %d and JSON naming %s", cmd[0], code, out, err, exitHeld, got.Holder)
		}
	}

	// With a lock-delay the key is not free until that too has passed:
	// --wait 0 says so as the cluster's refusal after a wait does (it
	// said the rest of the grant alone).
	code, out, errOut = cli(t, "acquire", "jobs/d", "--addr", addr, "--ttl", "30s", "--lock-delay", "1m", "--wait", "0", "-o", "json")
	var d struct {
		Token  uint64  `json:"token"`
		Holder string  `json:"holder"`
		Left   float64 `json:"holder_remaining_seconds"`
	}
	if err := json.Unmarshal([]byte(out), &d); code != 0 || err != nil {
		t.Fatalf("acquire with a lock-delay: %d %s %s", code, out, errOut)
	}
	code, out, _ = cli(t, "acquire", "jobs/d", "--addr", addr, "--wait", "0", "-o", "json")
	if err := json.Unmarshal([]byte(out), &d); code != exitHeld || err != nil || d.Left < 60 {
		t.Errorf("acquire --wait 0 of a key held for 30 s with a 1m lock-delay: exit %d, %q (%v); want %d and more than 60 s left", code, out, err, exitHeld)
	}
	if code, _, errOut := cli(t, "release", "jobs/d", "--addr", addr, "--token", strconv.FormatUint(d.Token, 10), "--holder", d.Holder); code != 0 {
		t.Errorf("release of jobs/d: %d %s", code, errOut)
	}

	code, out, _ = cli(t, "get", "jobs/a", "--addr", addr)
	if code != 0 || !strings.Contains(out, got.Holder) || !strings.Contains(out, "worker-1") {
		t.Errorf("get: %d %q", code, out)
	}
	code, out, _ = cli(t, "list", "jobs/", "--addr", addr, "-o", "json")
	if code != 0 || !strings.Contains(out, `"key": "jobs/a"`) {
		t.Errorf("list: %d %q", code, out)
	}
	code, out, _ = cli(t, "members", "--addr", addr)
	if code != 0 || strings.Count(out, "voter") != 3 || strings.Count(out, "*") != 1 {
		t.Errorf("members: %d %q", code, out)
	}

	// Release by token and holder; a wrong token changes nothing.
	if code, _, errOut = cli(t, "release", "jobs/a", "--addr", addr, "--token", "1", "--holder", got.Holder); code != 1 ||
		!strings.Contains(errOut, "not released") {
		t.Errorf("release with a wrong token: %d %q", code, errOut)
	}
	if code, _, errOut = cli(t, "release", "jobs/a", "--addr", addr, "--token", strconv.FormatUint(got.Token, 10), "--holder", got.Holder); code != 0 {
		t.Errorf("release: %d %q", code, errOut)
	}
	if code, out, _ = cli(t, "get", "jobs/a", "--addr", addr); code != 0 || !strings.Contains(out, "free") {
		t.Errorf("get after release: %d %q", code, out)
	}

	// lock passes the child's exit code, and gives it the lease in its env.
	code, out, errOut = cli(t, "lock", "jobs/b", "--addr", addr, "--ttl", "3s", "--", "sh", "-c", `echo "key=$LEASE_KEY token=$LEASE_TOKEN"; exit 7`)
	if code != 7 || !strings.Contains(out, "key=jobs/b token=") {
		t.Errorf("lock: exit %d, stdout %q, stderr %q; want 7", code, out, errOut)
	}
	if code, out, _ = cli(t, "get", "jobs/b", "--addr", addr); !strings.Contains(out, "free") {
		t.Errorf("lock did not release jobs/b: %d %q", code, out)
	}

	// Metrics and probes on the API port.
	nodetest.Eventually(t, 10*time.Second, func() error {
		code, body := httpGet(agents[1].api, "/metrics")
		for _, want := range []string{"leasenode_grants_total 3", "leasenode_releases_total 3", `leasenode_raft_state{state="Follower"}`,
			"leasenode_raft_applied_index", "leasenode_apply_lag_entries", "leasenode_leader_changes_total", "leasenode_leases 0", "go_goroutines",
			`leasenode_refusals_total{port="node",reason="tls_handshake"}`} {
			if code != 200 || !strings.Contains(body, want) {
				return fmt.Errorf("/metrics: %d, no %q", code, want)
			}
		}
		return nil
	})
	// The API latency of the acquires above, on whichever agent served
	// them (the CLI may reach a follower, which forwards to the leader).
	// A request is counted when its handler returns, which may be after
	// its client has the reply, and a scrape may be served from the last
	// gather: wait for it.
	nodetest.Eventually(t, 10*time.Second, func() error {
		for _, a := range agents {
			if _, body := httpGet(a.api, "/metrics"); strings.Contains(body, `leasenode_api_request_duration_seconds_count{code="200",method="Acquire"}`) {
				return nil
			}
		}
		return errors.New("no agent's /metrics has an Acquire latency")
	})
	if code, body := httpGet(agents[0].api, "/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	// health on a node or gossip port is a wrong --addr (exit 2, naming
	// the port), not an agent that is not ready (exit 1).
	for port, a := range map[string]string{"node": agents[0].raft, "gossip": agents[0].gossip} {
		code, _, errOut := cli(t, "health", "--addr", a)
		// Said once (it read "is a leasenode node port, not one health
		// probes: this is a leasenode node port ..."; new-user review).
		if code != exitUsage || !strings.Contains(errOut, a+": this is a leasenode "+port+" port") || strings.Count(errOut, "leasenode "+port+" port") != 1 ||
			!strings.Contains(errOut, "--api or --http") {
			t.Errorf("health on the %s port: exit %d %q; want %d naming the port", port, code, errOut, exitUsage)
		}
	}
	// The leader shows as serving once the agent asked has confirmed its
	// client API (gossip, then a check about every second).
	nodetest.Eventually(t, 30*time.Second, func() error {
		if code, out, _ := cli(t, "status", "--addr", addr); code != 0 || strings.Count(out, "(serving)") != 1 {
			return fmt.Errorf("status: %d %q", code, out)
		}
		return nil
	})

	// SIGTERM: a graceful leave, exit 0; the others stay ready.
	agents[2].p.kill(syscall.SIGTERM)
	if code := agents[2].p.wait(t, 15*time.Second); code != 0 {
		t.Errorf("agent exit after SIGTERM: %d\n%s", code, agents[2].p.stderr)
	}
}

// snapshot save through a follower (redirected to the leader) writes a
// checked backup; snapshot restore seeds a new node's data dir from it,
// refuses a used dir and a damaged file; the agent started on it serves
// the lease with its holder and token.
func TestSnapshotSaveRestore(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	code, out, errOut := cli(t, "acquire", "jobs/keep", "--addr", addrs(agents), "--ttl", "60s", "-o", "json")
	var held leaseJSON
	if code != 0 || json.Unmarshal([]byte(out), &held) != nil || held.Holder == "" {
		t.Fatalf("acquire: %d %q %s", code, out, errOut)
	}
	leader := leaderOf(t, agents, func(*agent) bool { return true })
	var follower *agent
	for _, a := range agents {
		if a != leader {
			follower = a
		}
	}
	file := filepath.Join(t.TempDir(), "backup.lns")
	code, out, errOut = cli(t, "snapshot", "save", file, "--addr", follower.api, "-o", "json")
	var saved backupJSON
	if code != 0 || json.Unmarshal([]byte(out), &saved) != nil || saved.Leases != 1 || saved.Index == 0 {
		t.Fatalf("snapshot save: %d %q %s", code, out, errOut)
	}
	if st, err := os.Stat(file); err != nil || st.Size() != saved.Bytes {
		t.Fatalf("backup file: %v %v, want %d bytes", st, err, saved.Bytes)
	}

	r := &agent{id: "r0", raft: nodetest.FreeAddr(t, false), gossip: nodetest.FreeAddr(t, true), api: nodetest.FreeAddr(t, false),
		dir: filepath.Join(t.TempDir(), "data")}
	flags := []string{"--id", r.id, "--data-dir", r.dir, "--bind", r.raft, "--gossip", r.gossip, "--api", r.api}
	restore := append([]string{"snapshot", "restore", file}, flags...)
	if code, out, errOut = cli(t, restore...); code != 0 || !strings.Contains(out, "restored 1 lease (") {
		t.Fatalf("snapshot restore: %d %q %s", code, out, errOut)
	}
	if code, _, errOut = cli(t, restore...); code != 1 || !strings.Contains(errOut, "already holds") {
		t.Errorf("restore into a used data dir: %d %q", code, errOut)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.lns")
	if err := os.WriteFile(bad, data[:len(data)-5], 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut = cli(t, "snapshot", "restore", bad, "--id", "x", "--data-dir", t.TempDir()); code != 1 || !strings.Contains(errOut, "corrupt") {
		t.Errorf("restore of a truncated backup: %d %q", code, errOut)
	}

	r.p = start(t, nil, append([]string{"agent", "--timing", "fast", "--log-level", "warn"}, flags...)...)
	nodetest.Eventually(t, 20*time.Second, func() error {
		code, out, errOut := cli(t, "get", "jobs/keep", "--addr", r.api, "-o", "json")
		var got leaseJSON
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil {
			return fmt.Errorf("get: %d %q %s", code, out, errOut)
		}
		if got.Holder != held.Holder || got.Token != held.Token {
			return fmt.Errorf("restored lease %+v, want holder %s token %d", got, held.Holder, held.Token)
		}
		return nil
	})
}

func TestLockSurvivesLeaderKill(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	addr := addrs(agents)
	stop := filepath.Join(t.TempDir(), "stop")
	const ttl = 3 * time.Second
	lock := start(t, []string{"STOP=" + stop}, "lock", "jobs/survivor", "--addr", addr, "--ttl", ttl.String(), "--",
		"sh", "-c", `echo "token=$LEASE_TOKEN"; while [ ! -e "$STOP" ]; do sleep 0.05; done; exit 3`)
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(lock.stdout.String(), "token=") {
			return errors.New("child not started")
		}
		return nil
	})
	token := strings.TrimSpace(strings.TrimPrefix(lock.stdout.String(), "token="))

	leader := leaderOf(t, agents, func(*agent) bool { return true })
	leader.p.kill(syscall.SIGKILL)
	killed := time.Now()
	leader.p.wait(t, 5*time.Second)
	alive := func(a *agent) bool { return a != leader }
	newLeader := leaderOf(t, agents, alive)
	t.Logf("killed %s; new leader %s after %v", leader.id, newLeader.id, time.Since(killed).Round(time.Millisecond))

	// The property under test spans time: the lease must outlive two TTLs
	// after the kill (so it was extended through the new leader), with
	// the same token, while the child keeps running.
	var live []*agent
	for _, a := range agents {
		if alive(a) {
			live = append(live, a)
		}
	}
	nodetest.Eventually(t, 4*ttl, func() error {
		if lock.exited() {
			t.Fatalf("lock exited during failover: %s", lock.stderr)
		}
		code, out, _ := cli(t, "get", "jobs/survivor", "--addr", addrs(live), "-o", "json")
		if code != 0 || !strings.Contains(out, `"token": `+token) {
			t.Fatalf("lease not held with token %s after the leader kill: %d %s", token, code, out)
		}
		if time.Since(killed) < 2*ttl {
			return errors.New("waiting for two TTLs to pass")
		}
		return nil
	})
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := lock.wait(t, 10*time.Second); code != 3 {
		t.Errorf("lock exit %d, want the child's 3; stderr %s", code, lock.stderr)
	}

	// A second kill loses the quorum: status says so (exit 3, how many
	// answered) after an election's wait, not after --timeout.
	live[0].p.kill(syscall.SIGKILL)
	live[0].p.wait(t, 5*time.Second)
	// (A leader left alone keeps its role for a leader lease timeout.)
	nodetest.Eventually(t, 30*time.Second, func() error {
		code, out, errOut := cli(t, "status", "--addr", live[1].api, "--timeout", "60s")
		if code != exitUnreachable || !strings.Contains(errOut, "1 of 3 members answered") || !strings.Contains(out, live[1].id) {
			return fmt.Errorf("status after a quorum loss: exit %d, %s %s", code, out, errOut)
		}
		return nil
	})
	// Reads and writes alike: a node answered, but knows no leader; not
	// "check --addr", which is for nothing answering.
	for _, cmd := range [][]string{{"get", "jobs/survivor"}, {"list", "jobs/"}, {"acquire", "jobs/q", "--wait", "0"}} {
		code, _, errOut := cli(t, append(cmd, "--addr", live[1].api, "--timeout", "2s")...)
		if code != exitUnreachable || !strings.Contains(errOut, "a node answered but knows no leader") || strings.Contains(errOut, "check --addr") {
			t.Errorf("%v after a quorum loss: exit %d %q; want %d and the knows-no-leader hint", cmd, code, errOut, exitUnreachable)
		}
		// What bounds the wait (the --timeout given, with no other value
		// suggested: it said "shorten it with --timeout 2s" after
		// --timeout 2s), and, for a read, how to read anyway.
		if stale := strings.Contains(errOut, "--stale reads the local copy"); !strings.Contains(errOut, "up to --timeout (2s here;") ||
			strings.Contains(errOut, "shorten it") || stale != (cmd[0] != "acquire") {
			t.Errorf("%v after a quorum loss: hint %q; want the --timeout given named, and --stale for reads only", cmd, errOut)
		}
	}
	// --stale does read the node's copy.
	if code, out, errOut := cli(t, "get", "jobs/survivor", "--stale", "--addr", live[1].api, "--timeout", "2s"); code != 0 {
		t.Errorf("get --stale after a quorum loss: exit %d %s %s", code, out, errOut)
	}
}

// Scenario: lock shapes from the shell. Two `lock -n 2` run side by side
// on one key while a third waits for a slot; `lock --shared` readers
// share a key a plain `acquire --wait 0` cannot take; `lock KEY --key
// KEY2` holds both keys under one token (LEASE_KEYS) and frees both.
func TestLockShapes(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	addr := addrs(agents)
	dir := t.TempDir()
	stop := filepath.Join(dir, "stop")
	hold := func(args ...string) *proc {
		args = append(append([]string{"lock"}, args...), "--addr", addr, "--",
			"sh", "-c", `echo "keys=$LEASE_KEYS token=$LEASE_TOKEN"; while [ ! -e "$STOP" ]; do sleep 0.05; done`)
		return start(t, []string{"STOP=" + stop}, args...)
	}
	started := func(p *proc) {
		t.Helper()
		nodetest.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(p.stdout.String(), "token=") {
				return errors.New("child not started")
			}
			return nil
		})
	}
	s1, s2 := hold("sem", "-n", "2"), hold("sem", "-n", "2")
	started(s1)
	started(s2)
	if code, _, errOut := cli(t, "acquire", "sem", "-n", "2", "--wait", "0", "--addr", addr); code != exitHeld {
		t.Errorf("a third slot of 2: exit %d, want %d: %s", code, exitHeld, errOut)
	}
	// Another n conflicts with the key's state (exit 4, as held), it is
	// not bad usage (2); waiting or not.
	for _, wait := range []string{"0", "forever"} {
		if code, _, errOut := cli(t, "acquire", "sem", "-n", "3", "--wait", wait, "--addr", addr); code != exitHeld || !strings.Contains(errOut, "semaphore of 2") || !strings.Contains(errOut, "use -n 2") {
			t.Errorf("another n, --wait %s: exit %d, want %d: %s", wait, code, exitHeld, errOut)
		}
	}
	// list shows both holders of the semaphore, with their tokens.
	if code, out, errOut := cli(t, "list", "sem", "--addr", addr, "-o", "json"); code != 0 || strings.Count(out, `"token"`) != 2 {
		t.Errorf("list of a semaphore with 2 holders: exit %d, %s %s", code, out, errOut)
	}
	// ... and says they are the slots of a semaphore of 2, in the table
	// (MODE) and in JSON (mode, limit), for list and get alike.
	for _, cmd := range [][]string{{"list", "sem"}, {"get", "sem"}} {
		code, out, errOut := cli(t, append(cmd, "--addr", addr)...)
		if code != 0 || !strings.Contains(out, "MODE") || strings.Count(out, " sem/2 ") != 2 {
			t.Errorf("%v of a semaphore with 2 holders: exit %d, %s %s; want 2 rows of MODE sem/2", cmd, code, out, errOut)
		}
	}
	var rows []struct {
		Mode  string `json:"mode"`
		Limit int    `json:"limit"`
	}
	var got1 struct {
		Mode     string `json:"mode"`
		Limit    int    `json:"limit"`
		Holdings []struct {
			Mode  string `json:"mode"`
			Limit int    `json:"limit"`
			Token uint64 `json:"token"`
		} `json:"holdings"`
	}
	_, out, _ := cli(t, "list", "sem", "--addr", addr, "-o", "json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 2 || rows[0].Mode != "semaphore" || rows[0].Limit != 2 || rows[1] != rows[0] {
		t.Errorf("list -o json of a semaphore of 2: %s (%v); want 2 rows of mode semaphore, limit 2", out, err)
	}
	_, out, _ = cli(t, "get", "sem", "--addr", addr, "-o", "json")
	if err := json.Unmarshal([]byte(out), &got1); err != nil || got1.Mode != "semaphore" || got1.Limit != 2 || len(got1.Holdings) != 2 ||
		got1.Holdings[1].Mode != "semaphore" || got1.Holdings[0].Token == got1.Holdings[1].Token {
		t.Errorf("get -o json of a semaphore of 2: %s (%v); want mode semaphore, limit 2 and both holdings", out, err)
	}
	r1, r2 := hold("doc", "--shared"), hold("doc", "--shared")
	started(r1)
	started(r2)
	if code, _, _ := cli(t, "acquire", "doc", "--wait", "0", "--addr", addr); code != exitHeld {
		t.Errorf("a writer beside readers: exit %d, want %d", code, exitHeld)
	}
	if code, out, _ := cli(t, "list", "doc", "--addr", addr); code != 0 || strings.Count(out, " shared ") != 2 {
		t.Errorf("list of a key with 2 readers: exit %d, %s; want 2 rows of MODE shared", code, out)
	}
	set := hold("acct/a", "--key", "acct/b")
	started(set)
	if !strings.Contains(set.stdout.String(), "keys=acct/a,acct/b") {
		t.Errorf("LEASE_KEYS: %q", set.stdout.String())
	}
	for _, k := range []string{"acct/a", "acct/b"} {
		if code, _, _ := cli(t, "acquire", k, "--wait", "0", "--addr", addr); code != exitHeld {
			t.Errorf("%s while the set holds it: exit %d", k, code)
		}
	}
	if code, out, _ := cli(t, "get", "acct/a", "--addr", addr, "-o", "json"); code != 0 || !strings.Contains(out, `"mode": "exclusive"`) || strings.Contains(out, `"limit"`) {
		t.Errorf("get -o json of an exclusive holding: exit %d, %s; want mode exclusive and no limit", code, out)
	}
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*proc{s1, s2, r1, r2, set} {
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Errorf("lock exit %d: %s", code, p.stderr)
		}
	}
	if code, out, _ := cli(t, "get", "acct/b", "--addr", addr, "-o", "json"); code != 0 || strings.Contains(out, "token") {
		t.Errorf("acct/b after the set's release: %d %s", code, out)
	}

	// acquire of a set prints every key (JSON: "keys", "key" kept), with
	// an exported LEASENODE_KEY adding none, and its release hint frees
	// the whole set.
	env := []string{"LEASENODE_KEY=acct/e"}
	code, out, errOut := cliEnv(t, env, "acquire", "acct/c", "--key", "acct/d", "--ttl", "30s", "--addr", addr, "-o", "json")
	var got struct {
		Key    string   `json:"key"`
		Keys   []string `json:"keys"`
		Token  uint64   `json:"token"`
		Holder string   `json:"holder"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Key != "acct/c" || strings.Join(got.Keys, ",") != "acct/c,acct/d" {
		t.Fatalf("acquire of a set -o json: %d %s %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "lease on 2 keys (acct/c, acct/d)") || !strings.Contains(errOut, "all of its keys") {
		t.Errorf("acquire of a set: release hint %q", errOut)
	}
	// A release by the --holder name alone says the holder is the full
	// name acquire printed.
	name, _, _ := strings.Cut(got.Holder, "#")
	code, _, errOut = cli(t, "release", "acct/d", "--token", strconv.FormatUint(got.Token, 10), "--holder", name, "--addr", addr)
	if code != exitFailure || !strings.Contains(errOut, "the holder is the full name acquire printed, with its #… incarnation") || !strings.Contains(errOut, got.Holder) {
		t.Errorf("release by the holder's name alone: %d %q", code, errOut)
	}
	if code, _, errOut := cli(t, "release", "acct/d", "--token", strconv.FormatUint(got.Token, 10), "--holder", got.Holder, "--addr", addr); code != 0 {
		t.Fatalf("release of the set by its second key: %d %s", code, errOut)
	}
	for _, k := range []string{"acct/c", "acct/d", "acct/e"} {
		if code, out, _ := cli(t, "get", k, "--addr", addr); code != 0 || !strings.Contains(out, "is free") {
			t.Errorf("%s after the set's release: %d %s", k, code, out)
		}
	}
	code, out, _ = cli(t, "acquire", "acct/c", "--key", "acct/d", "--hold", "1ms", "--addr", addr)
	if code != 0 || !strings.Contains(out, "acct/c") || !strings.Contains(out, "acct/d") {
		t.Errorf("acquire of a set, table: %d %s", code, out)
	}
}

func TestLockKillsChildWhenLeaseLost(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	lock := start(t, nil, "lock", "jobs/doomed", "--addr", addrs(agents), "--ttl", "2s", "--grace", "1s", "--",
		"sh", "-c", `echo "pid=$$"; sleep 60`)
	pid := childPID(t, lock)
	// Stop the whole cluster under it.
	for _, a := range agents {
		a.p.kill(syscall.SIGKILL)
	}
	if code := lock.wait(t, 15*time.Second); code != exitLost {
		t.Errorf("lock exit %d, want %d; stderr %s", code, exitLost, lock.stderr)
	}
	if !strings.Contains(lock.stderr.String(), "lost") {
		t.Errorf("lock stderr does not say the lease was lost: %s", lock.stderr)
	}
	// The child and its own child (sleep) are gone: no live process is
	// left in the child's group (zombies wait for their reaper).
	nodetest.Eventually(t, 5*time.Second, func() error {
		if live := liveInGroup(pid); len(live) > 0 {
			return fmt.Errorf("processes %v of the child's group %d still run", live, pid)
		}
		return nil
	})
}

// After a loss CMD runs on for up to --grace, so lock takes its lease
// with a lock-delay of --grace unless --lock-delay is given: the key is
// not granted to anyone else while CMD may still run (adversarial review
// s38: without lock-delay another holder could be granted the key at
// once).
func TestLockTakesItsGraceAsLockDelay(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 1)
	for _, c := range []struct {
		args []string
		want string // the lease's lock-delay in get -o json
	}{
		{[]string{"--grace", "3s"}, `"lock_delay_seconds":3,`},
		{[]string{"--grace", "3s", "--lock-delay", "1s"}, `"lock_delay_seconds":1,`},
		{[]string{"--grace", "3s", "--lock-delay", "0s"}, ""},
	} {
		key := "jobs/graced" + strconv.Itoa(len(c.args))
		args := append([]string{"lock", key, "--addr", addrs(agents), "--ttl", "2s"}, c.args...)
		lock := start(t, nil, append(args, "--", "sh", "-c", `echo "pid=$$"; sleep 60`)...)
		childPID(t, lock)
		code, out, errOut := cli(t, "get", key, "--addr", addrs(agents), "-o", "json")
		compact := strings.Join(strings.Fields(out), "")
		switch {
		case code != 0:
			t.Errorf("get %s: exit %d: %s", key, code, errOut)
		case c.want != "" && !strings.Contains(compact, c.want):
			t.Errorf("lock %v: get says %s; want %s", c.args, out, c.want)
		case c.want == "" && strings.Contains(compact, `"lock_delay_seconds"`):
			t.Errorf("lock %v: get says %s; want no lock-delay", c.args, out)
		}
		lock.kill(syscall.SIGINT)
		lock.wait(t, 15*time.Second)
	}
}

// lock gives CMD the lease's validity: LEASE_VALID_UNTIL as it started,
// within one TTL from then, and LEASE_VALID_UNTIL_FILE, which lock
// rewrites as extends move it (a paused lock stops rewriting it, so a
// command that checks it stops on its own). The file's directory is
// removed when lock exits.
func TestLockValidUntil(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	const ttl = 2 * time.Second
	before := time.Now().UnixMilli()
	lock := start(t, nil, "lock", "jobs/fenced", "--addr", addrs(agents), "--ttl", ttl.String(), "--",
		"sh", "-c", `echo "start=$LEASE_VALID_UNTIL file=$LEASE_VALID_UNTIL_FILE"
f=$LEASE_VALID_UNTIL_FILE
while [ "$(cat "$f")" -le "$LEASE_VALID_UNTIL" ]; do sleep 0.05; done
echo "later=$(cat "$f")"`)
	if code := lock.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("lock exit %d; stdout %q stderr %s", code, lock.stdout, lock.stderr)
	}
	after := time.Now().UnixMilli()
	var start, later int64
	var file string
	out := lock.stdout.String()
	if _, err := fmt.Sscanf(out, "start=%d file=%s\nlater=%d", &start, &file, &later); err != nil {
		t.Fatalf("child's output %q: %v", out, err)
	}
	// Granted after before and before after: valid until no later than
	// after+TTL, and later than before (CMD started with some TTL left).
	if start <= before || start > after+ttl.Milliseconds() {
		t.Errorf("LEASE_VALID_UNTIL %d: want after the start %d and within the TTL %v of it", start, before, ttl)
	}
	if later <= start || later > after+ttl.Milliseconds() {
		t.Errorf("LEASE_VALID_UNTIL_FILE moved from %d to %d: want later, within the TTL of the end %d", start, later, after)
	}
	if _, err := os.Stat(filepath.Dir(file)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after lock exited: %v; want it removed", filepath.Dir(file), err)
	}
}

// A command that ignores SIGINT: lock passes the first on and says it
// waits for the command, counts one sent to it and its group at once as
// one, and on a second kills the command's group, releases the key and
// exits 130.
func TestLockSecondSignalKillsCommand(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 1)
	addr := addrs(agents)
	lock := start(t, nil, "lock", "jobs/stubborn", "--addr", addr, "--",
		"sh", "-c", `trap "" INT TERM; echo "pid=$$"; while :; do sleep 0.05; done`)
	pid := childPID(t, lock)
	// One SIGINT, to lock and to its group at once (as a supervisor may):
	// passed on, ignored by the command, which runs on with the key held.
	_ = syscall.Kill(lock.cmd.Process.Pid, syscall.SIGINT)
	lock.kill(syscall.SIGINT)
	want := fmt.Sprintf("waiting for sh (pid %d) to exit; interrupt again to kill it", pid)
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(lock.stderr.String(), want) {
			return fmt.Errorf("stderr %q, want %q", lock.stderr, want)
		}
		return nil
	})
	if code, out, _ := cli(t, "get", "jobs/stubborn", "--addr", addr); code != 0 || !strings.Contains(out, "held") {
		t.Errorf("the key after one SIGINT: %d %q; want it held", code, out)
	}
	if lock.exited() || len(liveInGroup(pid)) == 0 {
		t.Fatalf("one SIGINT (and its copy) ended lock or its command; stderr %s", lock.stderr)
	}
	if n := strings.Count(lock.stderr.String(), "interrupt again"); n != 1 {
		t.Errorf("the waiting line %d times, want once: %s", n, lock.stderr)
	}
	// A second SIGINT: one within 200 ms of the first counts as its copy,
	// so send again until lock exits.
	nodetest.Eventually(t, 10*time.Second, func() error {
		_ = syscall.Kill(lock.cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-lock.done:
			return nil
		case <-time.After(300 * time.Millisecond):
			return errors.New("lock still runs after a second SIGINT")
		}
	})
	if code := lock.wait(t, 5*time.Second); code != 130 || !strings.Contains(lock.stderr.String(), fmt.Sprintf("second SIGINT: killed sh (pid %d)", pid)) {
		t.Errorf("lock after a second SIGINT: exit %d, stderr %s; want 130 and the kill named", code, lock.stderr)
	}
	nodetest.Eventually(t, 5*time.Second, func() error {
		if live := liveInGroup(pid); len(live) > 0 {
			return fmt.Errorf("processes %v of the command's group %d still run", live, pid)
		}
		return nil
	})
	if code, out, _ := cli(t, "get", "jobs/stubborn", "--addr", addr); code != 0 || !strings.Contains(out, "is free") {
		t.Errorf("the key after lock killed its command: %d %q; want it released", code, out)
	}
}

// liveInGroup lists the processes of group pgid that are not zombies.
func liveInGroup(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

func TestUsageAndUnreachable(t *testing.T) {
	t.Parallel()
	dead := nodetest.FreeAddr(t, false)
	// Free ports, not the defaults: an agent of the user's may hold those.
	_, offPort, _ := net.SplitHostPort(nodetest.FreeAddr(t, false))
	cases := []struct {
		args []string
		env  []string
		code int
		msg  string
	}{
		{[]string{"frobnicate"}, nil, exitUsage, "unknown command"},
		{[]string{"get", "k", "--no-such-flag"}, nil, exitUsage, "unknown flag: --no-such-flag"},
		{[]string{"get"}, nil, exitUsage, "wrong number of arguments"},
		{[]string{"get", "k", "-o", "yaml"}, nil, exitUsage, "want table or json"},
		{[]string{"lock", "k"}, nil, exitUsage, "lock KEY"},
		{[]string{"agent", "--data-dir", "/tmp/x"}, nil, exitUsage, "--id is required"},
		{[]string{"agent", "--id", "x", "--data-dir", "/tmp/x", "--timing", "slow"}, nil, exitUsage, "want default or fast"},
		{[]string{"agent", "--id", "x", "--data-dir", "/tmp/x", "--unsafe-clock-rate", "2"}, nil, exitUsage, "LEASENODE_UNSAFE=1"},
		{[]string{"agent", "--id", "x", "--data-dir", "/tmp/x", "--unsafe-partial-set"}, nil, exitUsage, "LEASENODE_UNSAFE=1"},
		{[]string{"agent", "--id", "x"}, []string{"LEASENODE_DATA_DIR=/tmp/x", "LEASENODE_VOTERS=two"}, exitUsage, "LEASENODE_VOTERS"},
		{[]string{"get", "k", "--addr", dead, "--timeout", "1s"}, nil, exitUnreachable, "no leader reachable"},
		{[]string{"acquire", "k", "--wait", "0"}, []string{"LEASENODE_ADDR=" + dead, "LEASENODE_TIMEOUT=1s"}, exitUnreachable, "leasenode status"},
		{[]string{"lock", "k", "--addr", dead, "--timeout", "1s", "--", "true"}, nil, exitUnreachable, "no leader reachable"},
		{[]string{"lock", "k", "--addr", dead, "--timeout", "1s", "--", "/nonexistent/cmd"}, nil, 127, "nothing was acquired"},
		{[]string{"lock", "k", "--addr", dead, "--timeout", "1s", "--", "no-such-command-anywhere"}, nil, 127, "not found"},
		// Off loopback, an agent needs a cluster key or TLS, or --insecure.
		{[]string{"agent", "--id", "x", "--data-dir", t.TempDir(), "--bind", "0.0.0.0:" + offPort, "--advertise", "127.0.0.1:" + offPort,
			"--gossip", nodetest.FreeAddr(t, true), "--api", nodetest.FreeAddr(t, false)}, nil, exitFailure, "--insecure"},
		{[]string{"agent", "--id", "x", "--data-dir", "/tmp/x", "--cluster-key", "c2hvcnQ="}, nil, exitUsage, "want 32"},
		{[]string{"agent", "--id", "x", "--data-dir", "/tmp/x"}, []string{"LEASENODE_CLUSTER_KEY_FILE=/nonexistent"}, exitUsage, "--cluster-key-file"},
		{[]string{"tls", "cert", "create", "--node", "n1", "--client"}, nil, exitUsage, "exactly one of"},
	}
	for _, c := range cases {
		cmd := exec.Command(binary, c.args...)
		cmd.Env = append(cleanEnv(), c.env...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != c.code || !strings.Contains(string(out), c.msg) {
			t.Errorf("%v: exit %d, output %q; want %d and %q", c.args, code, out, c.code, c.msg)
		}
	}
	code, out, _ := cli(t, "help")
	if code != 0 || !strings.Contains(out, "exit codes") {
		t.Errorf("help: %d %q", code, out)
	}
}

func TestDemoShort(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "demo", "--short")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo --short: %v\n%s", err, out)
	}
	for _, want := range []string{"CRASH leader", "RESTART", "REJECTED stale write", "violations: 0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchSelf(t *testing.T) {
	t.Parallel()
	args := []string{"bench", "--self", "--duration", "400ms", "--kills", "1", "--clients", "4", "--leases", "40", "--holders", "2", "-o", "json"}
	code, out, errOut := cli(t, args...)
	if code != 0 {
		t.Fatalf("bench: %d %s", code, errOut)
	}
	var doc struct {
		Results []struct {
			Workload string         `json:"workload"`
			Metric   string         `json:"metric"`
			Count    int            `json:"count"`
			P50      *float64       `json:"p50_ms"`
			P99      *float64       `json:"p99_ms"`
			Max      float64        `json:"max_ms"`
			Errors   int            `json:"errors"`
			Kinds    map[string]int `json:"errors_by_kind"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("bench json: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, r := range doc.Results {
		if r.Count == 0 || r.Max <= 0 {
			t.Errorf("empty result %+v", r)
		}
		// Percentiles only where the samples allow them (p99: n >= 100).
		if (r.P99 != nil) != (r.Count >= 100) || (r.P50 != nil) != (r.Count >= 2) {
			t.Errorf("%s %s: n=%d with p50 %v, p99 %v", r.Workload, r.Metric, r.Count, r.P50, r.P99)
		}
		// Every error is accounted for by kind.
		sum := 0
		for _, n := range r.Kinds {
			sum += n
		}
		if sum != r.Errors {
			t.Errorf("%s %s: %d errors, by kind %v", r.Workload, r.Metric, r.Errors, r.Kinds)
		}
		seen[r.Workload] = true
	}
	for _, w := range []string{"uncontended", "handoff", "keepalive", "failover", "semaphore", "shared", "multi"} {
		if !seen[w] {
			t.Errorf("no %s result in %s", w, out)
		}
	}
	// A comma list runs those workloads.
	code, out, errOut = cli(t, "bench", "--self", "--workload", "semaphore,shared,multi", "--duration", "300ms", "--clients", "2", "-o", "json")
	if code != 0 || !strings.Contains(out, `"workload": "multi"`) && !strings.Contains(out, `"workload":"multi"`) {
		t.Fatalf("bench --workload semaphore,shared,multi: %d %s %s", code, out, errOut)
	}
	// Without --self, failover is refused with the reason.
	if code, _, errOut := cli(t, "bench", "--workload", "failover"); code != exitUsage || !strings.Contains(errOut, "--self") {
		t.Errorf("bench --workload failover without --self: %d %q", code, errOut)
	}
	// --self with a cluster named: it would not be the one measured.
	if code, _, errOut := cli(t, "bench", "--self", "--addr", "10.9.9.9:7402"); code != exitUsage || !strings.Contains(errOut, "drop --addr") {
		t.Errorf("bench --self --addr: %d %q", code, errOut)
	}
}

// tlsSetup is the README's TLS cluster: a CA, three node certificates and
// an API client certificate ("ops") made by `leasenode tls`, a cluster key
// file that keys gossip, and three agents running mutual TLS on the node
// port and the API, with the probes in plain HTTP on --http.
type tlsSetup struct {
	dir, ca, keyFile string
	agents           []*tlsAgent
	client           []string // client flags: --addr, --tls-ca, --tls-cert, --tls-key
}

type tlsAgent struct {
	agent
	http string
}

// tlsCluster makes the files and starts the agents (with extra flags),
// and waits until each serves /readyz on --http.
func tlsCluster(t *testing.T, extra ...string) *tlsSetup {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if code, out, errOut := cli(t, args...); code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	run("tls", "ca", "create", "--dir", dir)
	for i := range 3 {
		run("tls", "cert", "create", "--dir", dir, "--node", "t"+strconv.Itoa(i), "--ip", "127.0.0.1")
	}
	run("tls", "cert", "create", "--dir", dir, "--client", "--name", "ops")
	s := &tlsSetup{dir: dir, ca: filepath.Join(dir, "leasenode-ca.pem"), keyFile: filepath.Join(dir, "cluster.key")}
	if err := os.WriteFile(s.keyFile, []byte(base64.StdEncoding.EncodeToString(nodetest.NewClusterKey(t))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.agents = make([]*tlsAgent, 3)
	for i := range s.agents {
		s.agents[i] = &tlsAgent{agent: agent{id: "t" + strconv.Itoa(i), raft: nodetest.FreeAddr(t, false), gossip: nodetest.FreeAddr(t, true),
			api: nodetest.FreeAddr(t, false), dir: filepath.Join(t.TempDir(), "data")}, http: nodetest.FreeAddr(t, false)}
	}
	var join, apis []string
	for _, b := range s.agents {
		join = append(join, b.gossip)
		apis = append(apis, b.api)
	}
	for _, a := range s.agents {
		a.env = []string{"LEASENODE_CLUSTER_KEY_FILE=" + s.keyFile}
		a.args = append([]string{"agent", "--id", a.id, "--data-dir", a.dir,
			"--bind", a.raft, "--gossip", a.gossip, "--api", a.api, "--http", a.http,
			"--join", strings.Join(join, ","), "--bootstrap-expect", "3", "--timing", "fast", "--log-level", "warn",
			"--tls-ca", s.ca, "--tls-cert", filepath.Join(dir, "node-"+a.id+".pem"), "--tls-key", filepath.Join(dir, "node-"+a.id+"-key.pem")},
			extra...)
		a.p = start(t, a.env, a.args...)
	}
	for _, a := range s.agents {
		nodetest.Eventually(t, 30*time.Second, func() error {
			if a.p.exited() {
				t.Fatalf("agent %s exited: %s", a.id, a.p.stderr)
			}
			if !strings.Contains(a.p.stdout.String(), "http="+a.http) {
				return fmt.Errorf("%s not ready: %q", a.id, a.p.stdout.String())
			}
			if code, body := httpGet(a.http, "/readyz"); code != 200 {
				return fmt.Errorf("%s /readyz on --http: %d %s", a.id, code, body)
			}
			return nil
		})
	}
	s.client = []string{"--addr", strings.Join(apis, ","), "--tls-ca", s.ca,
		"--tls-cert", filepath.Join(dir, "client-ops.pem"), "--tls-key", filepath.Join(dir, "client-ops-key.pem")}
	return s
}

// Scenario: the README's TLS set-up. `tls ca create` and `tls cert create`
// make a CA, three node certificates and an API client certificate (keys
// 0600, never overwritten); three agents run mutual TLS on the node port
// and the API with a cluster key file keying gossip, and serve the probes
// in plain HTTP on --http. The client certificate works on the API
// (status shows the cluster id); an agent started with it as its node
// certificate refuses to start, naming the missing role.
func TestTLSCluster(t *testing.T) {
	t.Parallel()
	s := tlsCluster(t)
	dir, agents, client := s.dir, s.agents, s.client
	run := func(want int, args ...string) string {
		t.Helper()
		code, out, errOut := cli(t, args...)
		if code != want {
			t.Fatalf("%v: exit %d, want %d\n%s%s", args, code, want, out, errOut)
		}
		return out + errOut
	}
	if out := run(1, "tls", "ca", "create", "--dir", dir); !strings.Contains(out, "not overwriting") {
		t.Fatalf("second ca create: %s", out)
	}
	for _, f := range []string{"leasenode-ca-key.pem", "node-t0-key.pem", "client-ops-key.pem"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, st, err)
		}
	}
	if code, body := httpGet(agents[0].http, "/metrics"); code != 200 || !strings.Contains(body, "leasenode_raft_term") {
		t.Fatalf("/metrics on --http: %d", code)
	}
	nodetest.Eventually(t, 20*time.Second, func() error {
		code, out, errOut := cli(t, append([]string{"status"}, client...)...)
		if code != 0 || !strings.Contains(out, "\ncluster ") || strings.Contains(out, apiNotConfirmed) {
			return fmt.Errorf("status: %d %s%s", code, out, errOut)
		}
		return nil
	})
	out := run(0, append([]string{"acquire", "tls/key", "--ttl", "30s"}, client...)...)
	if !strings.Contains(out, "tls/key") {
		t.Fatalf("acquire over TLS: %s", out)
	}

	// TLS flags that do not fit: every command says which to set and
	// exits 2 (bad usage), not 1 or 3 "unreachable" (status exited 1
	// where health exited 2; new-user review); no hint names a flag the
	// client commands lack.
	api := agents[0].api
	otherCA := t.TempDir()
	run(0, "tls", "ca", "create", "--dir", otherCA)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", api}, "the node requires TLS: give --tls-ca"},
		{[]string{"--addr", api, "--tls-ca", s.ca}, "give --tls-cert and --tls-key"},
		{[]string{"--addr", api, "--tls-ca", filepath.Join(otherCA, "leasenode-ca.pem")}, "--dns"},
	} {
		for _, cmd := range [][]string{{"get", "k"}, {"health"}, {"status"}, {"acquire", "k"}, {"snapshot", "save", filepath.Join(t.TempDir(), "b.lns")}} {
			args := append(append(append([]string{}, cmd...), c.args...), "--timeout", "3s")
			code, _, errOut := cli(t, args...)
			if code != exitUsage || !strings.Contains(errOut, c.want) || strings.Contains(errOut, "tls-server-name") {
				t.Errorf("%v: exit %d, %q; want a hint with %q", args, code, errOut, c.want)
			}
			// Plain HTTP to the TLS API says so, not "(internal: 400
			// Bad Request)" (new-user review).
			if len(c.args) == 2 && (strings.Contains(errOut, "internal: 400") || cmd[0] != "health" && !strings.Contains(errOut, "serves its API over TLS, and this command spoke plain HTTP")) {
				t.Errorf("%v: %q; want it to say the API expects TLS", args, errOut)
			}
		}
	}

	// A client pointed at a port that is not the API, with its TLS
	// flags or without, is told which port it reached or that it may be
	// one, before --dial-timeout (the gossip and --http ports cost it the
	// whole --timeout), and exits 2 as health does (a wrong --addr is
	// bad usage).
	tlsFlags := client[2:]
	for _, c := range []struct {
		args []string
		want string
	}{
		{append([]string{"--addr", agents[0].raft}, tlsFlags...), "may be a node port"},
		{append([]string{"--addr", agents[0].gossip}, tlsFlags...), "gossip or --http port"},
		{append([]string{"--addr", agents[0].http}, tlsFlags...), "gossip or --http port"},
		{[]string{"--addr", agents[0].http}, "probe and metrics port (--http)"},
	} {
		code, _, errOut := cli(t, append(append([]string{"get", "k"}, c.args...), "--timeout", "1m", "--dial-timeout", "30s")...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("get %v: exit %d, %q; want a hint with %q", c.args, code, errOut, c.want)
		}
	}

	// An agent whose certificate is an API client's: refused at start.
	bad := start(t, []string{"LEASENODE_CLUSTER_KEY_FILE=" + s.keyFile}, "agent", "--id", "t9", "--data-dir", t.TempDir(),
		"--bind", nodetest.FreeAddr(t, false), "--gossip", nodetest.FreeAddr(t, true), "--api", nodetest.FreeAddr(t, false),
		"--tls-ca", s.ca, "--tls-cert", filepath.Join(dir, "client-ops.pem"), "--tls-key", filepath.Join(dir, "client-ops-key.pem"))
	if code := bad.wait(t, 20*time.Second); code == 0 || !strings.Contains(bad.stderr.String(), "node.leasenode") {
		t.Fatalf("agent with a client certificate: exit %d, stderr %s", code, bad.stderr)
	}
}

// An agent with neither --join nor --bootstrap-expect, and no state, says
// at start that nothing will happen until a cluster joins it (it printed
// "ready" and waited for ever; new-user review).
func TestAgentWithNoClusterSaysSo(t *testing.T) {
	t.Parallel()
	p := start(t, nil, "agent", "--id", "alone", "--data-dir", t.TempDir(), "--bind", nodetest.FreeAddr(t, false),
		"--gossip", nodetest.FreeAddr(t, true), "--api", nodetest.FreeAddr(t, false))
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p.stderr.String(), "this node has no cluster to join") || !strings.Contains(p.stderr.String(), "--bootstrap-expect") {
			return errors.New("no warning yet")
		}
		return nil
	})
}

// A signal sent to the agent and to its process group at once (GNU
// timeout does; so do some supervisors) is one request to stop gracefully,
// not a second signal that exits at once and skips the handoff.
func TestSignalToProcessAndGroupStopsGracefully(t *testing.T) {
	t.Parallel()
	p := start(t, nil, "agent", "--id", "solo", "--data-dir", t.TempDir(), "--bind", nodetest.FreeAddr(t, false),
		"--gossip", nodetest.FreeAddr(t, true), "--api", nodetest.FreeAddr(t, false), "--bootstrap-expect", "1")
	nodetest.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(p.stdout.String(), "agent ready") {
			return errors.New("not ready")
		}
		return nil
	})
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGINT)
	p.kill(syscall.SIGINT) // its group
	if code := p.wait(t, 20*time.Second); code != 0 || strings.Contains(p.stderr.String(), "exiting at once") {
		t.Errorf("SIGINT to the agent and its group: exit %d, stderr %s", code, tail(p.stderr.String(), 1000))
	}
	// It stays a member only for the dead-server grace: the log says so.
	if !strings.Contains(p.stderr.String(), "stays a member of the cluster if it is back within 30s, --dead-server-grace") {
		t.Errorf("the stop's log line does not name the grace: %s", tail(p.stderr.String(), 1000))
	}
}

// childPID waits until lock's command printed "pid=N" (its first line)
// and returns N.
func childPID(t *testing.T, lock *proc) int {
	t.Helper()
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(lock.stdout.String(), "pid=") {
			return errors.New("child not started")
		}
		return nil
	})
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(lock.stdout.String(), "pid=")))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
