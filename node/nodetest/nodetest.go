// Package nodetest runs real leasenode clusters inside a test: N nodes with
// real Raft over real TCP on 127.0.0.1, temp data dirs, fast timings, a
// random cluster key (mutual TLS on the node port, keyed gossip), and a
// fault switchboard to partition them. Every wait is on a condition;
// cleanup closes every node and checks that all replicas hold the same
// state (fsm-determinism).
package nodetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/internal/freeport"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// TestTiming is fast like node.FastLANTiming but with more slack, so that
// a test run under -race beside other packages on two busy cores does not
// see spurious elections. (At 200 ms heartbeat and 100 ms leader lease
// timeouts, a new user's first `go test -race ./...` on a busy machine
// lost a leader in the middle of two tests that need a steady one.)
var TestTiming = node.Timing{
	HeartbeatTimeout:   300 * time.Millisecond,
	ElectionTimeout:    300 * time.Millisecond,
	LeaderLeaseTimeout: 200 * time.Millisecond,
	CommitTimeout:      5 * time.Millisecond,
}

// Options shapes a test cluster.
type Options struct {
	// Size is the number of nodes started (default 3).
	Size int
	// Voters is node.Config.Voters (default 3).
	Voters int
	// BootstrapExpect defaults to min(Size, Voters).
	BootstrapExpect int
	// Timing defaults to TestTiming.
	Timing node.Timing
	// API starts each node's client API on a free loopback port.
	API bool
	// DeadServerGrace defaults to 5 s.
	DeadServerGrace time.Duration
	// Configure, if set, adjusts each node's config before start.
	Configure func(i int, c *node.Config)
	// Verbose sends node logs to the test log.
	Verbose bool
	// ClusterKey is every node's node.Config.ClusterKey. Default: a random
	// key per cluster, so that tests run the secure path (mutual TLS on
	// the node port, keyed gossip); see Insecure.
	ClusterKey []byte
	// Insecure runs the nodes without a cluster key: plain TCP on the node
	// port and open gossip (allowed on loopback).
	Insecure bool
	// BeforeStart, if set, runs once every node's configuration is made
	// and before any node starts: to start the cluster under faults
	// (Cluster.Partition).
	BeforeStart func(c *Cluster)
}

// Cluster is a running test cluster.
type Cluster struct {
	t      testing.TB
	opts   Options
	Faults *transport.Faults

	dir string // parent of the nodes' data dirs

	mu    sync.Mutex
	nodes []*node.Node // nil while a node is down
	cfgs  []node.Config
}

// New starts a cluster and waits until it has a serving leader and every
// node has learnt the cluster's identity. (Waiting for the leader alone
// returned while a slow node could still be waiting to bootstrap, refusing
// the leader's dials; a test that then stopped its gossip, or put another
// cluster's node into gossip, met a state no deployment meets at once.)
// With Options.BeforeStart, New waits only for the leader: the test's
// faults may keep a node apart.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Size == 0 {
		opts.Size = 3
	}
	if opts.Voters == 0 {
		opts.Voters = 3
	}
	if opts.BootstrapExpect == 0 {
		opts.BootstrapExpect = min(opts.Size, opts.Voters)
	}
	if opts.Timing == (node.Timing{}) {
		opts.Timing = TestTiming
	}
	if opts.DeadServerGrace == 0 {
		opts.DeadServerGrace = 5 * time.Second
	}
	if opts.ClusterKey == nil && !opts.Insecure {
		opts.ClusterKey = NewClusterKey(t)
	}
	// The base dir is made before cleanup is registered: cleanups run last
	// first, so the nodes close before their data dirs are removed.
	c := &Cluster{t: t, opts: opts, Faults: transport.NewFaults(), dir: t.TempDir()}
	t.Cleanup(c.cleanup)
	for i := 0; i < opts.Size; i++ {
		c.cfgs = append(c.cfgs, c.config(i))
		c.nodes = append(c.nodes, nil)
	}
	if opts.BeforeStart != nil {
		opts.BeforeStart(c)
	}
	var wg sync.WaitGroup
	errs := make([]error, opts.Size)
	for i := range c.cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.nodes[i], errs[i] = node.Start(context.Background(), c.cfgs[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	c.WaitForLeader()
	if opts.BeforeStart == nil {
		c.waitJoined()
	}
	return c
}

// waitJoined waits until every running node knows the cluster's id.
func (c *Cluster) waitJoined() {
	c.t.Helper()
	Eventually(c.t, 20*time.Second, func() error {
		for i := range c.cfgs {
			n := c.Node(i)
			if n == nil {
				continue
			}
			st, err := n.Status(context.Background(), &pb.StatusRequest{})
			if err != nil {
				return err
			}
			if st.ClusterId == "" {
				return fmt.Errorf("n%d has not learnt the cluster id yet: %s", i, c.Describe())
			}
		}
		return nil
	})
}

// Logger returns a logger for node i.
func (c *Cluster) logger(i int) *slog.Logger {
	if !c.opts.Verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{c.t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("n", i)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func (c *Cluster) config(i int) node.Config {
	cfg := node.DefaultConfig()
	cfg.ID = "n" + strconv.Itoa(i)
	cfg.DataDir = filepath.Join(c.dir, cfg.ID)
	cfg.BindAddr = FreeAddr(c.t, false)
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.GossipAddr = FreeAddr(c.t, true)
	if c.opts.API {
		cfg.APIAddr = FreeAddr(c.t, false)
	}
	cfg.BootstrapExpect = c.opts.BootstrapExpect
	cfg.Voters = c.opts.Voters
	cfg.Timing = c.opts.Timing
	cfg.DeadServerGrace = c.opts.DeadServerGrace
	cfg.SnapshotInterval = time.Second
	cfg.Testing = &node.TestingKnobs{Faults: c.Faults}
	cfg.ClusterKey = c.opts.ClusterKey
	cfg.Logger = c.logger(i)
	if i > 0 || len(c.cfgs) > 0 {
		cfg.Join = []string{c.joinSeed()}
	}
	if c.opts.Configure != nil {
		c.opts.Configure(i, &cfg)
	}
	return cfg
}

func (c *Cluster) joinSeed() string {
	if len(c.cfgs) == 0 {
		return ""
	}
	return c.cfgs[0].GossipAddr
}

// NewClusterKey returns a random cluster key (node.Config.ClusterKey).
func NewClusterKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, transport.ClusterKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// ClusterKey returns the cluster's key (nil with Options.Insecure), for
// tests that start nodes of their own to join it.
func (c *Cluster) ClusterKey() []byte { return c.opts.ClusterKey }

// FreeAddr finds a free 127.0.0.1 port; with udp, free for UDP too
// (memberlist binds both). See package freeport for why not port 0.
func FreeAddr(t testing.TB, udp bool) string {
	t.Helper()
	addr, err := freeport.Addr("127.0.0.1", udp)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// Beside returns the configuration of a node that is not one of c's
// slots: ID id, an empty data dir of its own, fresh addresses, no client
// API, c's cluster key, timing and faults, joining c's gossip through
// n0, BootstrapExpect 0. Start it with node.Start (and close it).
func (c *Cluster) Beside(id string) node.Config {
	c.t.Helper()
	cfg := c.Config(0)
	cfg.ID = id
	cfg.DataDir = filepath.Join(c.t.TempDir(), id)
	cfg.BindAddr = FreeAddr(c.t, false)
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.GossipAddr = FreeAddr(c.t, true)
	cfg.GossipAdvertiseAddr = ""
	cfg.APIAddr = ""
	cfg.BootstrapExpect = 0
	cfg.Join = []string{c.Config(0).GossipAddr}
	return cfg
}

// Node returns node i, or nil while it is down.
func (c *Cluster) Node(i int) *node.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Size returns the number of node slots.
func (c *Cluster) Size() int { return len(c.cfgs) }

// Config returns node i's configuration.
func (c *Cluster) Config(i int) node.Config { return c.cfgs[i] }

// Add starts one more node that joins by gossip, and returns its index.
func (c *Cluster) Add() int {
	c.t.Helper()
	cfg := c.config(len(c.cfgs))
	cfg.BootstrapExpect = 0
	n, err := node.Start(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("add node: %v", err)
	}
	c.mu.Lock()
	c.cfgs = append(c.cfgs, cfg)
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return len(c.cfgs) - 1
}

// WaitForLeader waits until exactly one running node serves as leader and
// returns its index.
func (c *Cluster) WaitForLeader() int {
	c.t.Helper()
	leader := -1
	Eventually(c.t, 20*time.Second, func() error {
		leader = -1
		for i := range c.cfgs {
			if n := c.Node(i); n != nil && n.IsLeader() {
				if leader >= 0 {
					return fmt.Errorf("two leaders: n%d and n%d: %s", leader, i, c.Describe())
				}
				leader = i
			}
		}
		if leader < 0 {
			return fmt.Errorf("no serving leader: %s", c.Describe())
		}
		return nil
	})
	return leader
}

// Leader returns the current leader's index and node, waiting for one.
func (c *Cluster) Leader() (int, *node.Node) {
	c.t.Helper()
	i := c.WaitForLeader()
	return i, c.Node(i)
}

// Follower returns some running node that is not the leader.
func (c *Cluster) Follower() (int, *node.Node) {
	c.t.Helper()
	l := c.WaitForLeader()
	for i := range c.cfgs {
		if n := c.Node(i); i != l && n != nil {
			return i, n
		}
	}
	c.t.Fatal("no follower")
	return -1, nil
}

// Kill stops node i abruptly: no leadership transfer, no gossip leave.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	if n := c.take(i); n != nil {
		n.Crash()
	}
}

// take removes node i from the running set and returns it (nil if down).
func (c *Cluster) take(i int) *node.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	c.nodes[i] = nil
	return n
}

// Stop closes node i gracefully (it leaves the cluster).
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if n := c.take(i); n != nil {
		if err := n.Close(context.Background()); err != nil {
			c.t.Errorf("close n%d: %v", i, err)
		}
	}
}

// Leave makes node i leave the cluster for good (node.Leave).
func (c *Cluster) Leave(i int) {
	c.t.Helper()
	if n := c.take(i); n != nil {
		if err := n.Leave(context.Background()); err != nil {
			c.t.Errorf("leave n%d: %v", i, err)
		}
	}
}

// Restart starts node i again from its data dir, with the same addresses.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if c.Node(i) != nil {
		c.Kill(i)
	}
	var n *node.Node
	Eventually(c.t, 10*time.Second, func() error {
		var err error
		n, err = node.Start(context.Background(), c.cfgs[i])
		return err // ports may linger briefly
	})
	c.mu.Lock()
	c.nodes[i] = n
	c.mu.Unlock()
}

// Partition splits Raft and RPC traffic between the groups of node indexes.
func (c *Cluster) Partition(groups ...[]int) {
	var gs [][]string
	for _, g := range groups {
		var addrs []string
		for _, i := range g {
			addrs = append(addrs, c.cfgs[i].AdvertiseAddr)
		}
		gs = append(gs, addrs)
	}
	c.Faults.Partition(gs...)
}

// Heal removes every partition.
func (c *Cluster) Heal() { c.Faults.Heal() }

// WaitConverged waits until every running node has applied the same index
// and their states are byte-identical.
func (c *Cluster) WaitConverged() {
	c.t.Helper()
	Eventually(c.t, 20*time.Second, func() error {
		var want []byte
		var wantID string
		for i := range c.cfgs {
			n := c.Node(i)
			if n == nil || n.Err() != nil {
				continue // down, or stopped on an entry it cannot apply
			}
			got, err := snapshotBytes(n)
			if err != nil {
				return err
			}
			if want == nil {
				want, wantID = got, n.ID()
			} else if !bytes.Equal(want, got) {
				return fmt.Errorf("state of %s differs from %s: %s%s", n.ID(), wantID, c.Describe(), c.diffStates(wantID, n, want, got))
			}
		}
		return nil
	})
}

// diffStates says where two nodes' states differ, for WaitConverged's
// failure message: the first differing byte of the encoded states, both
// nodes' stats, and the first leases that differ.
func (c *Cluster) diffStates(wantID string, n *node.Node, want, got []byte) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "\n bytes: %d vs %d", len(want), len(got))
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	lo := max(0, i-64)
	fmt.Fprintf(&b, "\n first differing byte %d\n %s: %q\n %s: %q", i, wantID, want[lo:min(len(want), i+64)], n.ID(), got[lo:min(len(got), i+64)])
	var other *node.Node
	for j := range c.cfgs {
		if m := c.Node(j); m != nil && m.ID() == wantID {
			other = m
		}
	}
	if other != nil {
		sa, sb := other.FSM().Stats(), n.FSM().Stats()
		fmt.Fprintf(&b, "\n stats %+v\n stats %+v", sa, sb)
		la, _ := other.FSM().List("", "", 1<<30)
		lb, _ := n.FSM().List("", "", 1<<30)
		shown := 0
		for k := 0; k < len(la) && k < len(lb) && shown < 5; k++ {
			if fmt.Sprintf("%+v", la[k]) != fmt.Sprintf("%+v", lb[k]) {
				fmt.Fprintf(&b, "\n lease %d: %s %+v\n          %s %+v", k, wantID, la[k], n.ID(), lb[k])
				shown++
			}
		}
		fmt.Fprintf(&b, "\n leases %d vs %d, %d differing shown", len(la), len(lb), shown)
	}
	return b.String()
}

// Describe summarises every running node's state (Raft state, term, log
// and commit index, configuration, FSM counters), for failure messages.
func (c *Cluster) Describe() string {
	var b bytes.Buffer
	for i := range c.cfgs {
		if n := c.Node(i); n != nil {
			st := n.FSM().Stats()
			var conf []string
			if f := n.Raft().GetConfiguration(); f.Error() == nil {
				for _, s := range f.Configuration().Servers {
					conf = append(conf, fmt.Sprintf("%s:%s", s.ID, s.Suffrage))
				}
			}
			fmt.Fprintf(&b, "[%s raft=%s term=%d applied=%d epoch=%d now=%v held=%d delayed=%d last=%d commit=%d conf=%v] ",
				n.ID(), n.Raft().State(), n.Raft().CurrentTerm(), st.Applied, st.Epoch, st.Now, st.Held, st.Delayed,
				n.Raft().LastIndex(), n.Raft().CommitIndex(), conf)
		}
	}
	return b.String()
}

func snapshotBytes(n *node.Node) ([]byte, error) {
	s, err := n.FSM().Snapshot()
	if err != nil {
		return nil, err
	}
	defer s.Release()
	var buf bytes.Buffer
	if err := s.Persist(&sink{Buffer: &buf}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type sink struct{ *bytes.Buffer }

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { return nil }
func (s *sink) Close() error  { return nil }

var _ raft.SnapshotSink = (*sink)(nil)
var _ io.Writer = (*sink)(nil)

func (c *Cluster) cleanup() {
	if !c.t.Failed() {
		c.Heal()
		c.WaitConverged()
	}
	var wg sync.WaitGroup
	for i := range c.cfgs {
		if n := c.Node(i); n != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				n.Close(ctx)
			}()
		}
	}
	wg.Wait()
	for i := range c.cfgs {
		os.RemoveAll(c.cfgs[i].DataDir)
	}
}

// Quantiles returns the median and 99th percentile of ds (sorting it).
func Quantiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)*99/100]
}

// CPUTime returns the user plus system CPU time this process has used.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Eventually calls f until it returns nil, failing the test with f's last
// error after timeout. It polls with a short back-off, never a fixed sleep
// standing in for a condition.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
}
