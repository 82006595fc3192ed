// Package local runs a small leasenode cluster inside one process, on
// loopback: the cluster of `leasenode dev`, of the demo, and of the
// benchmark's failover workload. Each node gets its own data directory,
// its client API and the metrics endpoints, and can be crashed and
// restarted from its data.
//
// It is not a test helper (node/nodetest is): it reports errors instead of
// failing a test, and uses fixed, documented ports when asked to.
package local

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/leasenode/leasenode/internal/freeport"
	"github.com/leasenode/leasenode/metrics"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/transport"
)

// Options shapes a local cluster.
type Options struct {
	// Nodes is the number of nodes (default 3).
	Nodes int
	// PortBase, when > 0, gives node i the ports PortBase+10i (Raft),
	// +1 (gossip) and +2 (client API); 7400 gives 7400/7401/7402,
	// 7410/7411/7412, ... When 0, free ports are picked.
	PortBase int
	// DataDir holds one directory per node. Empty: a temporary directory,
	// removed by Close.
	DataDir string
	// Timing defaults to node.FastLANTiming().
	Timing node.Timing
	// NoSync disables fsync (UNSAFE; benchmarks of the protocol only).
	NoSync bool
	// Logger receives the nodes' logs (default: discard).
	Logger *slog.Logger
	// ClusterKey is the nodes' node.Config.ClusterKey. Default: a random
	// key for this cluster, so that even on loopback no other process can
	// speak on its node ports or gossip.
	ClusterKey []byte
}

// Cluster is a running local cluster.
type Cluster struct {
	opts    Options
	dir     string
	tempDir bool

	mu      sync.Mutex
	cfgs    []node.Config
	nodes   []*node.Node
	metrics []*metrics.Metrics
	cancel  []context.CancelFunc
	wg      sync.WaitGroup
}

// Start starts the cluster and waits (bounded by ctx) until a leader
// serves. Ports already in use fail with an error naming them. Picked
// ports (PortBase 0) are free when picked, but another process may bind
// one before a node does; with a temporary data directory, where nothing
// of the failed start is kept, Start then tries again with other ports
// (three starts in all).
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	for try := 1; ; try++ {
		c, err := start(ctx, opts)
		if err == nil || try == 3 || opts.PortBase > 0 || opts.DataDir != "" || ctx.Err() != nil || !portTaken(err) {
			return c, err
		}
		opts.Logger.Warn("local cluster: a picked port was taken before a node bound it; starting again on other ports", "err", err)
	}
}

// portTaken reports whether err is a listener's "address already in use".
// memberlist formats its listeners' errors with %v, so the text is
// checked too.
func portTaken(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// pickAddr picks a free port on host (a variable so that a test can hand
// out a taken one).
var pickAddr = freeport.Addr

func start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 1 {
		return nil, fmt.Errorf("nodes %d must be >= 1", opts.Nodes)
	}
	if opts.Timing == (node.Timing{}) {
		opts.Timing = node.FastLANTiming()
	}
	if opts.ClusterKey == nil {
		opts.ClusterKey = make([]byte, transport.ClusterKeySize)
		if _, err := rand.Read(opts.ClusterKey); err != nil {
			return nil, err
		}
	}
	c := &Cluster{opts: opts, dir: opts.DataDir}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "leasenode-local-")
		if err != nil {
			return nil, err
		}
		c.dir, c.tempDir = d, true
	}
	addrs, err := ports(opts)
	if err != nil {
		c.removeDir()
		return nil, err
	}
	voters := opts.Nodes
	if voters%2 == 0 {
		voters--
	}
	for i := 0; i < opts.Nodes; i++ {
		cfg := node.DefaultConfig()
		cfg.ID = "n" + strconv.Itoa(i+1)
		cfg.DataDir = filepath.Join(c.dir, cfg.ID)
		cfg.BindAddr, cfg.GossipAddr, cfg.APIAddr = addrs[i][0], addrs[i][1], addrs[i][2]
		cfg.BootstrapExpect = opts.Nodes
		cfg.Voters = voters
		cfg.Timing = opts.Timing
		cfg.NoSync = opts.NoSync
		cfg.ClusterKey = opts.ClusterKey
		cfg.Logger = opts.Logger.With("n", cfg.ID)
		for j := 0; j < opts.Nodes; j++ {
			if j != i {
				cfg.Join = append(cfg.Join, addrs[j][1])
			}
		}
		c.cfgs = append(c.cfgs, cfg)
		c.nodes = append(c.nodes, nil)
		c.metrics = append(c.metrics, nil)
		c.cancel = append(c.cancel, nil)
	}
	var wg sync.WaitGroup
	errs := make([]error, opts.Nodes)
	for i := range c.cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.start(ctx, i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ports returns the Raft, gossip and API address of every node.
func ports(opts Options) ([][3]string, error) {
	out := make([][3]string, opts.Nodes)
	if opts.PortBase > 0 {
		var busy []string
		for i := range out {
			for k := 0; k < 3; k++ {
				addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.PortBase+10*i+k))
				out[i][k] = addr
				if !freeport.Free(addr, k == 1) {
					busy = append(busy, addr)
				}
			}
		}
		if len(busy) > 0 {
			return nil, fmt.Errorf("ports in use: %v (another leasenode running?); stop it or choose other ports with --port-base", busy)
		}
		return out, nil
	}
	for i := range out {
		for k := 0; k < 3; k++ {
			a, err := pickAddr("127.0.0.1", k == 1)
			if err != nil {
				return nil, err
			}
			out[i][k] = a
		}
	}
	return out, nil
}

func (c *Cluster) start(ctx context.Context, i int) error {
	cfg := c.cfgs[i]
	m := metrics.New(metrics.Options{})
	cfg.HTTPHandlers = m.Handlers()
	cfg.APIMiddleware = m.Middleware
	n, err := node.Start(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.ID, err)
	}
	m.Attach(n)
	mctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.nodes[i], c.metrics[i], c.cancel[i] = n, m, cancel
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		m.Run(mctx, n)
	}()
	return nil
}

// Size returns the number of nodes.
func (c *Cluster) Size() int { return len(c.cfgs) }

// Node returns node i, or nil while it is down.
func (c *Cluster) Node(i int) *node.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Config returns node i's configuration.
func (c *Cluster) Config(i int) node.Config { return c.cfgs[i] }

// ID returns node i's ID.
func (c *Cluster) ID(i int) string { return c.cfgs[i].ID }

// APIAddrs returns every node's client API address.
func (c *Cluster) APIAddrs() []string {
	out := make([]string, len(c.cfgs))
	for i, cfg := range c.cfgs {
		out[i] = cfg.APIAddr
	}
	return out
}

// Dir returns the directory holding the nodes' data.
func (c *Cluster) Dir() string { return c.dir }

// Leader returns the index of the serving leader, or -1.
func (c *Cluster) Leader() int {
	for i := range c.cfgs {
		if n := c.Node(i); n != nil && n.IsLeader() {
			return i
		}
	}
	return -1
}

// WaitLeader waits until a node serves as leader and returns its index.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if i := c.Leader(); i >= 0 {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader elected: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

// Crash stops node i as a crashed process stops (no leadership transfer,
// no goodbye); its data stays for Restart.
func (c *Cluster) Crash(i int) {
	c.mu.Lock()
	n, cancel := c.nodes[i], c.cancel[i]
	c.nodes[i], c.cancel[i] = nil, nil
	c.mu.Unlock()
	if n != nil {
		n.Crash()
		cancel()
	}
}

// Restart starts node i again from its data directory.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if c.Node(i) != nil {
		return fmt.Errorf("%s is running", c.cfgs[i].ID)
	}
	c.cfgs[i].BootstrapExpect = c.opts.Nodes // has state: ignored
	return c.start(ctx, i)
}

// Close stops every node gracefully and removes a temporary data
// directory.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for i := range c.cfgs {
		c.mu.Lock()
		n, cancel := c.nodes[i], c.cancel[i]
		c.nodes[i], c.cancel[i] = nil, nil
		c.mu.Unlock()
		if n == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cc := context.WithTimeout(context.Background(), 5*time.Second)
			defer cc()
			_ = n.Close(ctx)
			cancel()
		}()
	}
	wg.Wait()
	c.wg.Wait()
	c.removeDir()
}

func (c *Cluster) removeDir() {
	if c.tempDir {
		os.RemoveAll(c.dir)
	}
}
