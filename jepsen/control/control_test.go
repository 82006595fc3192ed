package control_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/control/controltest"
)

func TestMain(m *testing.M) {
	controltest.MaybeRun()
	os.Exit(m.Run())
}

func helperCluster(t *testing.T, nodes int, nw *control.Network) *control.Cluster {
	t.Helper()
	c, err := control.New(control.Options{
		Nodes: nodes, Dir: t.TempDir(), Network: nw, ReadyTimeout: 10 * time.Second,
		Command: controltest.Command(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func procState(t *testing.T, pid int) byte {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return s[i+2]
}

// TestLoopbackProcessFaults: the loopback fallback's faults — pause,
// resume, kill -9, restart, graceful stop — on helper processes, plus
// leader finding and state digests through the JSON API.
func TestLoopbackProcessFaults(t *testing.T) {
	c := helperCluster(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil || leader.ID != "n1" {
		t.Fatalf("leader %v, %v; want n1", leader, err)
	}
	st, err := c.Status(ctx, c.Node(2))
	if err != nil || st.RaftState != "Follower" || st.Applied != 42 || st.Term != 3 || st.LeaderID != "n1" {
		t.Fatalf("status %+v %v", st, err)
	}
	var digests []string
	for _, n := range c.Nodes() {
		applied, d, count, err := c.Digest(ctx, n)
		if err != nil || applied != 42 || count != 2 {
			t.Fatalf("digest of %s: %d %s %d %v", n.ID, applied, d, count, err)
		}
		digests = append(digests, d)
	}
	if digests[0] != digests[1] || digests[1] != digests[2] {
		t.Fatalf("digests differ although only the advisory remaining time does: %v", digests)
	}

	n2 := c.Node(2)
	pid := n2.Proc().Pid()
	if err := c.Pause(n2); err != nil {
		t.Fatal(err)
	}
	if s := procState(t, pid); s != 'T' {
		t.Fatalf("paused process in state %c", s)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := c.Status(short, n2); err == nil {
		t.Fatal("a paused node answered")
	}
	cancelShort()
	if err := c.Resume(n2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(ctx, n2); err != nil {
		t.Fatalf("resumed node: %v", err)
	}

	if err := c.Kill(c.Node(1)); err != nil {
		t.Fatal(err)
	}
	if c.Node(1).Proc().State() != control.Stopped {
		t.Fatal("killed node still running")
	}
	if _, err := c.Leader(ctx); err == nil {
		t.Fatal("found a leader with the leader killed")
	}
	if err := c.StartNode(ctx, c.Node(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}

	if err := c.Stop(c.Node(3), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(c.Node(3).LogPath)
	if !strings.Contains(string(log), "graceful exit") {
		t.Fatalf("SIGTERM did not reach the helper; log:\n%s", log)
	}
}

func TestProcStartFailsClearly(t *testing.T) {
	p := &control.Proc{Name: "false", LogPath: t.TempDir() + "/log", Ready: func(string) bool { return false }}
	err := p.Start(context.Background(), []string{"false"}, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("err %v", err)
	}
}

// TestNetnsPartition needs root and iproute2: it builds a two-node network
// of namespaces, runs helpers inside, cuts one direction, heals, and
// deletes everything.
func TestNetnsPartition(t *testing.T) {
	caps := control.Detect()
	if !caps.Netns {
		t.Skipf("skipping the network-namespace part by design: %s", caps.Note)
	}
	fws := []control.Firewall{caps.Firewall}
	if caps.Firewall != control.FirewallRoute {
		fws = append(fws, control.FirewallRoute) // the fallback must work too
	}
	for _, fw := range fws {
		t.Run(string(fw), func(t *testing.T) { testPartition(t, fw) })
	}
}

func testPartition(t *testing.T, fw control.Firewall) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nw, err := control.CreateNetwork(ctx, control.NewRunID(), 2, fw)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := nw.Destroy(); err != nil {
			t.Error(err)
		}
		for _, ns := range append(nw.Nodes, nw.Hub) {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				t.Errorf("namespace %s left behind", ns)
			}
		}
	}()
	t.Logf("firewall: %s", nw.Firewall)
	c := helperCluster(t, 2, nw)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reach := func(ns, addr string) bool {
		argv, env := controltest.DialArgs(addr)
		cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
		cmd.Env = append(os.Environ(), env)
		out, err := cmd.CombinedOutput()
		t.Logf("from %s to %s: %s", ns, addr, strings.TrimSpace(string(out)))
		return err == nil
	}
	n1, n2 := c.Node(1), c.Node(2)
	if !reach(nw.Hub, n1.APIAddr) || !reach(nw.Hub, n2.APIAddr) || !reach(nw.Nodes[0], n2.APIAddr) {
		t.Fatal("the network does not connect hub and nodes")
	}
	if err := c.Block(ctx, n1, n2); err != nil {
		t.Fatal(err)
	}
	if reach(nw.Nodes[0], n2.APIAddr) {
		t.Fatal("n1 reaches n2 through the partition")
	}
	if !reach(nw.Hub, n2.APIAddr) {
		t.Fatal("the partition cut the harness off n2")
	}
	if err := c.HealNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	if !reach(nw.Nodes[0], n2.APIAddr) {
		t.Fatal("n1 does not reach n2 after heal")
	}
}

// TestTLSAndClusterKeyArguments: a TLS campaign's agents get their own
// certificate, key and the CA; a keyed one the key file; the harness's
// own client configuration carries the client certificate.
func TestTLSAndClusterKeyArguments(t *testing.T) {
	dir := t.TempDir()
	var argv [][]string
	c, err := control.New(control.Options{Nodes: 2, Dir: dir, NewTLS: filepath.Join(dir, "tls"), ClusterKeyFile: "/k", Binary: "/bin/leasenode"})
	if err != nil {
		t.Fatal(err)
	}
	a := c.TLS()
	if a == nil {
		t.Fatal("no TLS files generated")
	}
	for _, n := range c.Nodes() {
		argv = append(argv, c.Argv(n))
	}
	for i, args := range argv {
		s := strings.Join(args, " ")
		id := c.Nodes()[i].ID
		for _, want := range []string{"--tls-cert " + a.NodeCert(id), "--tls-key " + a.NodeKey(id), "--tls-ca " + a.CA(), "--cluster-key-file /k"} {
			if !strings.Contains(s, want) {
				t.Errorf("%s: %q lacks %q", id, s, want)
			}
		}
	}
	tc, err := a.ClientConfig()
	if err != nil || len(tc.Certificates) != 1 || tc.RootCAs == nil {
		t.Fatalf("client config %+v %v", tc, err)
	}
	leaf, err := x509.ParseCertificate(tc.Certificates[0].Certificate[0])
	if err != nil || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("the client certificate must be a client's only: %v %v", leaf.ExtKeyUsage, err)
	}
}
