package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// logs collects the logs of several nodes, for tests that wait for a line.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lines returns the log lines that contain every one of want.
func (l *logs) lines(want ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok && line != "" {
			out = append(out, line)
		}
	}
	return out
}

// waitFor waits until a log line contains every one of want, and returns
// it.
func (l *logs) waitFor(t *testing.T, timeout time.Duration, want ...string) string {
	t.Helper()
	var line string
	nodetest.Eventually(t, timeout, func() error {
		if got := l.lines(want...); len(got) > 0 {
			line = got[0]
			return nil
		}
		return errorf("no log line with %q", want)
	})
	return line
}

type errorString string

func (e errorString) Error() string { return string(e) }

func errorf(format string, args ...any) error {
	b, _ := json.Marshal(args)
	return errorString(strings.TrimSpace(format + " " + string(b)))
}

// Scenario: a node whose data belongs to another cluster (same cluster key,
// so TLS lets it through; only the cluster id differs) is restarted with
// --join pointing at this cluster. It is refused both ways with a message
// naming both clusters and what to do; the leader never adds it, and
// neither cluster's state changes.
func TestOtherClusterRefused(t *testing.T) {
	var blogs, alogs logs
	a := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Logger = alogs.logger().With("n", i)
	}})
	defer func() {
		if t.Failed() {
			t.Logf("a's logs:\n%s\nb0's logs:\n%s", alogs.buf.String(), blogs.buf.String())
		}
	}()
	b := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1, ClusterKey: a.ClusterKey(),
		Configure: func(i int, cfg *node.Config) { cfg.ID = "b" + strconv.Itoa(i) }})
	_, al := a.Leader()
	_, bl := b.Leader()
	mustGrant(t, al, acq("a-key", "ca", 1, time.Minute))
	mustGrant(t, bl, acq("b-key", "cb", 1, time.Minute))
	aID, err := node.ClusterID(a.Config(0).DataDir)
	if err != nil || len(aID) != 64 {
		t.Fatalf("cluster a's id %q, %v: want 64 hex digits", aID, err)
	}
	bID, _ := node.ClusterID(b.Config(0).DataDir)
	if bID == "" || bID == aID {
		t.Fatalf("cluster ids a=%q b=%q: want two different ids", aID, bID)
	}
	st, _ := al.Status(context.Background(), &pb.StatusRequest{})
	if st.GetClusterId() != aID {
		t.Fatalf("Status says cluster %q, data dir %q", st.GetClusterId(), aID)
	}

	// b0 comes back joined to a's gossip.
	cfg := b.Config(0)
	b.Kill(0)
	cfg.Join = []string{a.Config(0).GossipAddr, a.Config(1).GossipAddr, a.Config(2).GossipAddr}
	cfg.Logger = blogs.logger()
	var rogue *node.Node
	nodetest.Eventually(t, 10*time.Second, func() error {
		rogue, err = node.Start(context.Background(), cfg)
		return err
	})
	defer rogue.Close(context.Background())

	// b0 dials a's nodes (to verify them) and is refused; it logs the
	// refusal in its own words, naming both clusters and what each node
	// would do. (Both sides dial: a refusal that said "your data dir …;
	// start with an empty --data-dir", as one did, told the operator of
	// a's nodes to wipe them when they dialed b0.)
	line := blogs.waitFor(t, 20*time.Second, "REFUSED by n", "'s data dir belongs to cluster "+aID[:12]+"…, this node's to cluster "+bID[:12]+"…")
	if !strings.Contains(line, "to join this cluster, n") || !strings.Contains(line, "'s, this node must") {
		t.Fatalf("refusal does not say which node does what: %s", line)
	}
	// a's nodes dial b0 too (it is in their gossip) and are refused: they
	// name b0 as the one to start afresh to join them.
	alogs.waitFor(t, 20*time.Second, "REFUSED by b0: node b0's data dir belongs to cluster "+bID[:12]+"…, this node's to cluster "+aID[:12]+
		"…; to join this cluster, b0 must start with an empty --data-dir")
	// a's nodes log their refusal in their own words, naming b0 and what
	// b0 must do; no line of theirs (b0's refusals quoted in other logs
	// included) tells "you" to wipe a data dir.
	alogs.waitFor(t, 20*time.Second, "REFUSED node b0: its data dir belongs to cluster "+bID[:12]+"…, ours is "+aID[:12]+
		"…; b0 must start with an empty --data-dir to join this cluster")
	for _, line := range append(alogs.lines("your data dir"), alogs.lines("to join this cluster start")...) {
		t.Fatalf("a's nodes log words that tell them to wipe their data dir: %s", line)
	}
	// a's leader sees b0 in gossip but does not add it (gossip says it is
	// of another cluster, and the hello would refuse it anyway).
	nodetest.Eventually(t, 10*time.Second, func() error {
		m, err := al.Members(context.Background(), &pb.MembersRequest{})
		if err != nil {
			return err
		}
		for _, mm := range m.Members {
			if mm.Id == "b0" {
				return nil
			}
		}
		return errorf("a's leader does not see b0 in gossip yet", m.Members)
	})
	mustGrant(t, al, acq("a-key2", "ca", 2, time.Minute))
	if _, in := suffrage(t, al)["b0"]; in {
		t.Fatalf("b0 was added to cluster a: %v", suffrage(t, al))
	}
	if _, ok := rogue.FSM().Get("a-key"); ok {
		t.Fatal("b0 received cluster a's leases")
	}
	nodetest.Eventually(t, 10*time.Second, func() error { // b0 leads itself again and replays its log
		if _, ok := rogue.FSM().Get("b-key"); !ok {
			return errorf("b0 does not hold its own cluster's lease")
		}
		return nil
	})
	if id, _ := node.ClusterID(cfg.DataDir); id != bID {
		t.Fatalf("b0's cluster id changed to %q", id)
	}
}

// rpcAs returns an RPC client that speaks on c's node port as node id: a
// holder of the cluster key, which any node of the cluster is.
func rpcAs(t *testing.T, c *nodetest.Cluster, id string) *transport.RPCClient {
	t.Helper()
	_, cli, err := transport.ClusterKeyTLS(c.ClusterKey(), id)
	if err != nil {
		t.Fatal(err)
	}
	rc := transport.NewRPCClient(transport.RPCClientConfig{DecodeError: node.DecodeRPCError,
		Dialer: &transport.Dialer{TLS: cli, Hello: &transport.Hello{NodeID: id}}})
	t.Cleanup(func() { rc.Close() })
	return rc
}

// Scenario: node n1 asks the leader to remove another node; the leader
// refuses (only node X may ask to remove X) and the configuration keeps
// every voter.
func TestLeaveOnlySelf(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, l := c.Leader()
	caller, victim := (li+1)%3, (li+2)%3
	callerID, victimID := c.Node(caller).ID(), c.Node(victim).ID()
	req, _ := json.Marshal(map[string]string{"id": victimID})
	_, err := rpcAs(t, c, callerID).CallNode(ctxT(t, 10*time.Second), l.RaftAddr(), l.ID(), node.MethodLeave, req)
	if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "may only ask to remove itself") {
		t.Fatalf("leave of %s asked by %s: %v, want a refusal", victimID, callerID, err)
	}
	mustGrant(t, l, acq("after", "c", 1, time.Minute)) // a later entry: any removal would be in by now
	if v, _ := countVoters(suffrage(t, l)); v != 3 {
		t.Fatalf("voters after a refused leave: %v", suffrage(t, l))
	}
}

// Scenario: with the cluster's gossip key, a gossip member claims to be the
// leader and advertises another API address (the probe). Followers
// keep pointing clients at the real leader: leader hints and Members carry
// only API addresses that nodes gave about themselves over authenticated
// node RPC.
func TestGossipCannotRedirect(t *testing.T) {
	var nlogs logs
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Logger = nlogs.logger().With("n", i)
	}})
	li, l := c.Leader()
	realAPI := l.APIAddr()
	hint := func(n *node.Node) (string, string) {
		st, err := n.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			return "", ""
		}
		return st.GetHeader().GetLeaderId(), st.GetHeader().GetLeaderAddr()
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		for i := range 3 {
			if id, api := hint(c.Node(i)); id != l.ID() || api != realAPI {
				return errorf("node has leader hint", i, id, api)
			}
		}
		return nil
	})

	gossipKey, err := transport.GossipKey(c.ClusterKey())
	if err != nil {
		t.Fatal(err)
	}
	evilAPI := nodetest.FreeAddr(t, false)
	md, _ := json.Marshal(map[string]string{"id": l.ID(), "raft": nodetest.FreeAddr(t, false), "api": evilAPI, "run": "evil"})
	mc := memberlist.DefaultLocalConfig()
	mc.Name = "evil"
	host, port, _ := net.SplitHostPort(nodetest.FreeAddr(t, true))
	mc.BindAddr = host
	mc.BindPort, _ = strconv.Atoi(port)
	mc.AdvertisePort = mc.BindPort
	mc.SecretKey = gossipKey
	mc.Delegate = metaDelegate(md)
	mc.LogOutput = &nlogs
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	var seeds []string
	for i := range 3 {
		seeds = append(seeds, c.Config(i).GossipAddr)
	}
	if n, err := ml.Join(seeds); err != nil || n != 3 {
		t.Fatalf("impostor joined %d nodes: %v", n, err)
	}
	// Every follower heard the impostor's claim...
	for i := range 3 {
		if i != li {
			nlogs.waitFor(t, 10*time.Second, "n="+strconv.Itoa(i), "ignoring gossip metadata", "from=evil")
		}
	}
	// ...and still sends clients to the real leader.
	for i := range 3 {
		if id, api := hint(c.Node(i)); id != l.ID() || api != realAPI {
			t.Fatalf("n%d: leader hint %s at %s, want %s at %s", i, id, api, l.ID(), realAPI)
		}
		m, err := c.Node(i).Members(context.Background(), &pb.MembersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, mm := range m.Members {
			if mm.ApiAddr == evilAPI || mm.Id == "evil" {
				t.Fatalf("n%d lists %v", i, mm)
			}
		}
	}
	_ = ml.Leave(time.Second)
}

// metaDelegate is a memberlist delegate that only publishes metadata.
type metaDelegate []byte

func (d metaDelegate) NodeMeta(int) []byte             { return d }
func (d metaDelegate) NotifyMsg([]byte)                {}
func (d metaDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d metaDelegate) LocalState(bool) []byte          { return nil }
func (d metaDelegate) MergeRemoteState([]byte, bool)   {}

// An agent on an address other hosts can reach, with neither a cluster key
// nor TLS, refuses to start, naming what to set; Insecure lets it start
// (with a warning), and so does a cluster key.
func TestExposedWithoutKeyRefused(t *testing.T) {
	base := func(t *testing.T) node.Config {
		cfg := node.DefaultConfig()
		cfg.ID, cfg.DataDir = "n0", t.TempDir()
		bind := nodetest.FreeAddr(t, false)
		_, port, _ := net.SplitHostPort(bind)
		cfg.BindAddr = net.JoinHostPort("0.0.0.0", port) // every interface
		cfg.AdvertiseAddr = bind
		cfg.GossipAddr = nodetest.FreeAddr(t, true)
		cfg.BootstrapExpect = 1
		cfg.Timing = nodetest.TestTiming
		return cfg
	}
	t.Run("refused", func(t *testing.T) {
		_, err := node.Start(context.Background(), base(t))
		if err == nil {
			t.Fatal("a node bound to 0.0.0.0 without key or TLS started")
		}
		for _, want := range []string{"0.0.0.0", "--cluster-key-file", "--tls-cert", "--insecure"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not mention %s: %v", want, err)
			}
		}
	})
	t.Run("insecure", func(t *testing.T) {
		var l logs
		cfg := base(t)
		cfg.Insecure = true
		cfg.Logger = l.logger()
		n, err := node.Start(context.Background(), cfg)
		if err != nil {
			t.Fatalf("Insecure: %v", err)
		}
		defer n.Close(context.Background())
		if len(l.lines("level=WARN", "INSECURE")) == 0 {
			t.Fatal("no INSECURE warning logged")
		}
	})
	t.Run("loopback", func(t *testing.T) {
		var l logs
		cfg := base(t)
		cfg.BindAddr = cfg.AdvertiseAddr
		cfg.Logger = l.logger()
		n, err := node.Start(context.Background(), cfg)
		if err != nil {
			t.Fatalf("on loopback: %v", err)
		}
		defer n.Close(context.Background())
		if len(l.lines("level=WARN", "unauthenticated on loopback", "--cluster-key-file")) == 0 {
			t.Fatal("no warning that the node port is open to local processes")
		}
	})
	t.Run("cluster key", func(t *testing.T) {
		cfg := base(t)
		cfg.ClusterKey = nodetest.NewClusterKey(t)
		n, err := node.Start(context.Background(), cfg)
		if err != nil {
			t.Fatalf("with a cluster key: %v", err)
		}
		n.Close(context.Background())
	})
}

// Scenario: a member of cluster a dies; two new nodes start to found a new
// cluster (BootstrapExpect 2, empty data dirs, even the same cluster key),
// the first on the dead member's address. a's leader keeps sending
// AppendEntries there, but a node waiting to bootstrap takes nobody with a
// cluster id: it stays empty until its partner comes, then the two found
// their own cluster with their own id, holding none of a's leases.
func TestNewClusterOnDeadMembersAddress(t *testing.T) {
	var xlogs logs
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("x0 and x1 logged:\n%s", strings.Join(xlogs.lines(), "\n"))
		}
	})
	a := nodetest.New(t, nodetest.Options{Size: 3, DeadServerGrace: time.Hour})
	li, al := a.Leader()
	mustGrant(t, al, acq("a-key", "ca", 1, time.Minute))
	dead := (li + 1) % 3
	addr := a.Config(dead).BindAddr
	a.Kill(dead)

	newNode := func(id, bind string, join []string) (*node.Node, node.Config) {
		cfg := node.DefaultConfig()
		cfg.ID, cfg.DataDir = id, t.TempDir()
		cfg.BindAddr, cfg.GossipAddr, cfg.Join = bind, nodetest.FreeAddr(t, true), join
		cfg.BootstrapExpect, cfg.Timing = 2, nodetest.TestTiming
		cfg.ClusterKey = a.ClusterKey()
		cfg.Logger = xlogs.logger()
		return startOnDeadNodesPort(t, cfg), cfg
	}
	x0, x0cfg := newNode("x0", addr, nil)
	// a's leader reaches x0 (and is turned away, or not).
	nodetest.Eventually(t, 20*time.Second, func() error {
		if x0.Raft().LastIndex() > 0 || len(xlogs.lines("node=x0", "waiting to bootstrap a new cluster")) > 0 {
			return nil
		}
		return errorf("a's leader has not reached x0 yet")
	})
	mustGrant(t, al, acq("a-key2", "ca", 2, time.Minute))
	if got := x0.Raft().LastIndex(); got != 0 {
		t.Fatalf("x0, waiting to bootstrap, received Raft entries up to %d from cluster a", got)
	}
	if id, _ := node.ClusterID(x0cfg.DataDir); id != "" {
		t.Fatalf("x0 took cluster id %q while waiting to bootstrap", id)
	}

	x1, _ := newNode("x1", nodetest.FreeAddr(t, false), []string{x0cfg.GossipAddr})
	nodetest.Eventually(t, 20*time.Second, func() error {
		if !x0.IsLeader() && !x1.IsLeader() {
			return errorf("the new cluster has no leader yet")
		}
		return nil
	})
	aID, _ := node.ClusterID(a.Config(li).DataDir)
	xID, _ := node.ClusterID(x0cfg.DataDir)
	if xID == "" || xID == aID {
		t.Fatalf("the new cluster's id %q, a's %q: want a new one", xID, aID)
	}
	if _, ok := x0.FSM().Get("a-key"); ok {
		t.Fatal("the new cluster holds the old cluster's lease: absorbed")
	}
	if s := suffrage(t, x0); len(s) != 2 || s["x0"] != raft.Voter || s["x1"] != raft.Voter {
		t.Fatalf("x0's configuration %v, want x0 and x1", s)
	}
}

// Scenario: a dead member's host comes back as a new node (a new ID, an
// empty data dir, the same Raft address) and joins the same cluster. The
// leader removes the dead server at once (the new node answered at its
// address as itself, so it is gone) instead of after DeadServerGrace, and
// the configuration never lists two servers at one address: Raft dials by
// address, so until then the new node's empty log would have been sent the
// dead member's AppendEntries and vote requests, and answered them as that
// voter (an empty voter can elect a leader without committed entries).
func TestNewNodeOnMembersAddressReplacesIt(t *testing.T) {
	a := nodetest.New(t, nodetest.Options{Size: 3, DeadServerGrace: time.Hour})
	li, al := a.Leader()
	mustGrant(t, al, acq("a-key", "ca", 1, time.Minute))
	dead := (li + 1) % 3
	deadID := a.Config(dead).ID
	addr := a.Config(dead).BindAddr
	a.Kill(dead)

	cfg := node.DefaultConfig()
	cfg.ID, cfg.DataDir = "y", t.TempDir()
	cfg.BindAddr, cfg.GossipAddr = addr, nodetest.FreeAddr(t, true)
	cfg.Join = []string{a.Config(li).GossipAddr}
	cfg.Timing, cfg.ClusterKey = nodetest.TestTiming, a.ClusterKey()
	y := startOnDeadNodesPort(t, cfg)

	nodetest.Eventually(t, 30*time.Second, func() error {
		f := al.Raft().GetConfiguration()
		if err := f.Error(); err != nil {
			return err
		}
		at := map[raft.ServerAddress]raft.ServerID{}
		for _, s := range f.Configuration().Servers {
			if other, ok := at[s.Address]; ok {
				t.Fatalf("the configuration lists %s and %s at %s", other, s.ID, s.Address)
			}
			at[s.Address] = s.ID
		}
		s := suffrage(t, al)
		if _, ok := s[deadID]; ok {
			return fmt.Errorf("%s, whose address y took, is still in the configuration: %v", deadID, s)
		}
		if s["y"] != raft.Voter {
			return fmt.Errorf("y is not a voter yet: %v", s)
		}
		return nil
	})
	nodetest.Eventually(t, 10*time.Second, func() error {
		if _, ok := y.FSM().Get("a-key"); !ok {
			return errorf("y has not applied the cluster's lease yet")
		}
		return nil
	})
}

// startOnDeadNodesPort starts a node whose address a killed node had,
// retrying while that port lingers, and closes it when the test ends.
func startOnDeadNodesPort(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	var n *node.Node
	nodetest.Eventually(t, 10*time.Second, func() error {
		var err error
		n, err = node.Start(context.Background(), cfg)
		return err
	})
	t.Cleanup(func() { n.Close(context.Background()) })
	return n
}

// Scenario: README's recipe with a wrong cluster key on one node: its
// --join lists all three gossip addresses, its own included. It says at
// once that the seeds use another key (its own address answering used to
// hide that: it only logged "waiting to bootstrap seen=1"), and the
// cluster's nodes, which cannot decrypt its streams, say what that means.
func TestWrongClusterKeyIsNamed(t *testing.T) {
	var alogs, blogs logs
	a := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Logger = alogs.logger().With("n", i)
	}})
	defer func() {
		if t.Failed() {
			t.Logf("a's logs:\n%s\nodd node's logs:\n%s", alogs.buf.String(), blogs.buf.String())
		}
	}()
	cfg := a.Config(2)
	cfg.ID = "odd"
	cfg.DataDir = t.TempDir()
	cfg.BindAddr = nodetest.FreeAddr(t, false)
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.GossipAddr = nodetest.FreeAddr(t, true)
	cfg.ClusterKey = nodetest.NewClusterKey(t)
	cfg.BootstrapExpect = 3
	cfg.Join = []string{cfg.GossipAddr, a.Config(0).GossipAddr, a.Config(1).GossipAddr}
	cfg.Logger = blogs.logger()
	odd, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer odd.Close(context.Background())

	for _, seed := range []string{a.Config(0).GossipAddr, a.Config(1).GossipAddr} {
		blogs.waitFor(t, 10*time.Second, "level=WARN", "join failed", "seed="+seed, "the seeds use another gossip key")
	}
	if got := blogs.lines("join failed", "seed="+cfg.GossipAddr); len(got) > 0 {
		t.Fatalf("the node joined itself: %s", got[0])
	}
	alogs.waitFor(t, 10*time.Second, "no installed keys could decrypt", "another cluster key")
	if n := refusals(t, a.Node(0), node.PortGossip, "undecodable") + refusals(t, a.Node(1), node.PortGossip, "undecodable"); n == 0 {
		t.Fatal("the cluster's nodes counted no undecodable gossip")
	}
}

// A node that decided to join the cluster a member showed it
// (SeenClusterFile) takes no other cluster's id, whichever connects to it
// first: it would be a voter of a second cluster serving the same keys
// (stop 31's outsider review: a fresh node that had seen the main cluster
// took the id of a stale one-node cluster 36 ms later and served beside
// it).
func TestSeenClusterRefusesAnother(t *testing.T) {
	var logs logs
	a := nodetest.New(t, nodetest.Options{Size: 1})
	defer func() {
		if t.Failed() {
			t.Logf("s0's logs:\n%s", logs.buf.String())
		}
	}()
	seen := strings.Repeat("5e", 32) // the cluster it decided to join, which is not a's
	cfg := freshNode(t, a.ClusterKey(), func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, node.SeenClusterFile), []byte(seen+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	cfg.Join = []string{a.Config(0).GossipAddr}
	cfg.Logger = logs.logger()
	startOnDeadNodesPort(t, cfg)
	logs.waitFor(t, 20*time.Second, "decided to join cluster "+seen[:12], "takes no member of cluster")
	if id, err := node.ClusterID(cfg.DataDir); err != nil || id != "" {
		t.Fatalf("the node took cluster id %q (%v) after deciding to join %s", id, err, seen[:12])
	}
}

// A fresh node whose gossip pool shows members of two clusters (a stale
// node of another cluster holding the same key, whose ID sorts first)
// joins neither, says why in its log and its no-leader reason, and takes
// no cluster id: as a voter of the stale one it would serve the same keys
// beside the other (stop 31's outsider re-probe: two fresh nodes joined a
// stale one-node cluster and made it a quorate second cluster).
func TestTwoClustersInGossipJoinNeither(t *testing.T) {
	var logs logs
	a := nodetest.New(t, nodetest.Options{Size: 3})
	defer func() {
		if t.Failed() {
			t.Logf("fresh node's logs:\n%s", logs.buf.String())
		}
	}()
	stale := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1, ClusterKey: a.ClusterKey(),
		Configure: func(i int, cfg *node.Config) { cfg.ID = "a" + strconv.Itoa(i) }}) // sorts before a's nodes
	cfg := freshNode(t, a.ClusterKey(), nil)
	cfg.Join = []string{stale.Config(0).GossipAddr, a.Config(0).GossipAddr}
	cfg.Logger = logs.logger()
	n := startOnDeadNodesPort(t, cfg)
	logs.waitFor(t, 20*time.Second, "not joining any cluster", "gossip shows members of two clusters")
	nodetest.Eventually(t, 10*time.Second, func() error {
		if r := n.NoLeaderReason(); !strings.Contains(r, "two clusters") {
			return fmt.Errorf("no-leader reason %q does not say why", r)
		}
		return nil
	})
	if id, err := node.ClusterID(cfg.DataDir); err != nil || id != "" {
		t.Fatalf("the node took cluster id %q (%v) with two clusters in its gossip pool", id, err)
	}
}

// freshNode is the config of a node with an empty data dir (prepare, if
// set, may put files in it), the cluster key key, and no seeds yet.
func freshNode(t *testing.T, key []byte, prepare func(dir string)) node.Config {
	t.Helper()
	spare := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1, ClusterKey: key,
		Configure: func(i int, cfg *node.Config) { cfg.ID = "s" + strconv.Itoa(i) }})
	cfg := spare.Config(0)
	spare.Kill(0)
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(cfg.DataDir)
	}
	cfg.BootstrapExpect = 0
	return cfg
}
