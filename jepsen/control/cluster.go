package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/leasenode/leasenode/internal/freeport"
)

// Options configures a Cluster.
type Options struct {
	// Nodes is the cluster size.
	Nodes int
	// Binary is the leasenode agent binary (see Build).
	Binary string
	// Dir holds nodes/<id>/data and nodes/<id>/log.
	Dir string
	// Network, if set, runs node i in Network.Nodes[i-1] (netns mode);
	// nil: loopback processes on 127.0.0.(10+i).
	Network *Network
	// Timing is the agent's --timing (default "fast").
	Timing string
	// LogLevel is the agent's --log-level (default "debug").
	LogLevel string
	// Voters is the agent's --voters (default: Nodes if odd, else
	// Nodes-1).
	Voters int
	// Args adds agent arguments for every node (unsafe flags); NodeArgs
	// adds per-node ones (by 1-based index).
	Args     []string
	NodeArgs map[int][]string
	// Unsafe sets LEASENODE_UNSAFE=1 for the agents.
	Unsafe bool
	// TLS, if set, runs the agents with mutual TLS (--tls-cert, --tls-key,
	// --tls-ca from these files); the harness's own calls present the
	// client certificate.
	TLS *TLSAssets
	// NewTLS, if set (and TLS is not), is a directory where New generates
	// the campaign's TLS files (GenerateTLS) and sets TLS.
	NewTLS string
	// ClusterKey, if set, is the cluster secret every agent gets (base64
	// of 32 bytes): from ClusterKeyFile with --cluster-key-file when that
	// is set, else on the command line with --cluster-key.
	ClusterKey     string
	ClusterKeyFile string
	// ReadyTimeout bounds each agent's start (default 30 s).
	ReadyTimeout time.Duration
	// Command overrides the agent command line (tests run a trivial
	// helper instead of the agent): it returns argv for node n.
	Command func(n *Node) []string
	// Ready overrides the readiness line check (default: the agent's
	// "leasenode agent ready" line).
	Ready func(line string) bool
}

// Node is one cluster member.
type Node struct {
	// Index is 1-based; ID is "n<Index>".
	Index int
	ID    string
	// IP and the three addresses the agent listens on.
	IP         string
	BindAddr   string
	GossipAddr string
	APIAddr    string
	// DataDir and LogPath of the agent.
	DataDir string
	LogPath string

	proc  *Proc
	extra []string // per-start arguments (Restart with new flags)
}

// Proc returns the node's process.
func (n *Node) Proc() *Proc { return n.proc }

// Cluster is a running set of nodes.
type Cluster struct {
	opts   Options
	nodes  []*Node
	http   *http.Client
	scheme string
}

// New prepares a cluster (directories, addresses) without starting it.
func New(opts Options) (*Cluster, error) {
	if opts.Nodes < 1 {
		return nil, fmt.Errorf("cluster: %d nodes", opts.Nodes)
	}
	if opts.Timing == "" {
		opts.Timing = "fast"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if opts.Voters == 0 {
		opts.Voters = opts.Nodes
		if opts.Voters%2 == 0 {
			opts.Voters--
		}
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	if opts.Ready == nil {
		opts.Ready = func(line string) bool { return strings.Contains(line, "leasenode agent ready") }
	}
	c := &Cluster{opts: opts}
	// Every campaign's cluster has its own cluster key: the one Options
	// give (the runner's, on the command line or in a file), or else a
	// fresh one passed in the environment (not on the command line, where
	// ps shows it). The agents authenticate each other on the node port
	// and gossip, and the netns addresses are not loopback, where agents
	// refuse to run open.
	var env []string
	if opts.ClusterKey == "" && opts.ClusterKeyFile == "" {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		env = append(env, "LEASENODE_CLUSTER_KEY="+base64.StdEncoding.EncodeToString(key))
	}
	var basePort int
	if opts.Network == nil {
		var err error
		hosts := make([]string, opts.Nodes)
		for i := range hosts {
			hosts[i] = loopbackIP(i + 1)
		}
		// Node i takes three ports from base+3(i-1) on its own address.
		if basePort, err = freeport.Block(hosts, 3*opts.Nodes, true); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Nodes; i++ {
		n := &Node{Index: i, ID: "n" + strconv.Itoa(i)}
		dir := filepath.Join(opts.Dir, "nodes", n.ID)
		n.DataDir = filepath.Join(dir, "data")
		n.LogPath = filepath.Join(dir, "log")
		if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
			return nil, err
		}
		p := &Proc{Name: n.ID, LogPath: n.LogPath, Ready: opts.Ready, Env: env}
		if opts.Unsafe {
			p.Env = append(p.Env, "LEASENODE_UNSAFE=1")
		}
		if opts.Network != nil {
			n.IP = NodeIP(i)
			n.BindAddr, n.GossipAddr, n.APIAddr = n.IP+":7400", n.IP+":7401", n.IP+":7402"
			p.Netns = opts.Network.Nodes[i-1]
		} else {
			n.IP = loopbackIP(i)
			port := basePort + 3*(i-1)
			n.BindAddr = net.JoinHostPort(n.IP, strconv.Itoa(port))
			n.GossipAddr = net.JoinHostPort(n.IP, strconv.Itoa(port+1))
			n.APIAddr = net.JoinHostPort(n.IP, strconv.Itoa(port+2))
		}
		n.proc = p
		c.nodes = append(c.nodes, n)
	}
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: time.Second}).DialContext,
		DisableKeepAlives: true, // a paused or partitioned node must not hold a pooled connection
	}
	c.scheme = "http"
	if opts.TLS == nil && opts.NewTLS != "" {
		a, err := GenerateTLS(opts.NewTLS, c.nodes)
		if err != nil {
			return nil, fmt.Errorf("generating TLS files: %w", err)
		}
		opts.TLS = a
		c.opts.TLS = a
	}
	if opts.TLS != nil {
		if err := opts.TLS.Check(c.nodes); err != nil {
			return nil, fmt.Errorf("cluster TLS files: %w", err)
		}
		tc, err := opts.TLS.ClientConfig()
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig, c.scheme = tc, "https"
	}
	c.http = &http.Client{Timeout: 3 * time.Second, Transport: tr}
	return c, nil
}

// TLS returns the campaign's TLS files (nil: plain TCP).
func (c *Cluster) TLS() *TLSAssets { return c.opts.TLS }

// HarnessIP is the address the harness's own processes (clients, the
// rogue peer) use: the hub's in netns mode, 127.0.0.1 on loopback.
func (c *Cluster) HarnessIP() string {
	if c.opts.Network != nil {
		return HubIP
	}
	return "127.0.0.1"
}

func loopbackIP(i int) string { return "127.0.0." + strconv.Itoa(10+i) }

// Nodes returns the nodes, n1 first.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Node returns node i (1-based).
func (c *Cluster) Node(i int) *Node { return c.nodes[i-1] }

// Network returns the namespaces (nil in loopback mode).
func (c *Cluster) Network() *Network { return c.opts.Network }

// CanPartition reports whether network faults are possible.
func (c *Cluster) CanPartition() bool { return c.opts.Network != nil }

// APIAddrs lists every node's client API address.
func (c *Cluster) APIAddrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.APIAddr
	}
	return out
}

// Argv returns the command line node n is started with.
func (c *Cluster) Argv(n *Node) []string { return c.argv(n) }

func (c *Cluster) argv(n *Node) []string {
	if c.opts.Command != nil {
		return c.opts.Command(n)
	}
	var join []string
	for _, m := range c.nodes {
		if m != n {
			join = append(join, m.GossipAddr)
		}
	}
	args := []string{c.opts.Binary, "agent",
		"--id", n.ID, "--data-dir", n.DataDir,
		"--bind", n.BindAddr, "--gossip", n.GossipAddr, "--api", n.APIAddr,
		"--join", strings.Join(join, ","),
		"--bootstrap-expect", strconv.Itoa(c.opts.Voters),
		"--voters", strconv.Itoa(c.opts.Voters),
		"--timing", c.opts.Timing,
		"--log-level", c.opts.LogLevel, "--log-format", "json",
	}
	if t := c.opts.TLS; t != nil {
		args = append(args, "--tls-cert", t.NodeCert(n.ID), "--tls-key", t.NodeKey(n.ID), "--tls-ca", t.CA())
	}
	switch {
	case c.opts.ClusterKeyFile != "":
		args = append(args, "--cluster-key-file", c.opts.ClusterKeyFile)
	case c.opts.ClusterKey != "":
		args = append(args, "--cluster-key", c.opts.ClusterKey)
	}
	args = append(args, c.opts.Args...)
	args = append(args, c.opts.NodeArgs[n.Index]...)
	args = append(args, n.extra...)
	return args
}

// Start starts every node concurrently and waits until each is ready.
func (c *Cluster) Start(ctx context.Context) error {
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.StartNode(ctx, n, nil)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartNode starts n (again) with extra arguments added for this run only
// (nil: the node's usual ones).
func (c *Cluster) StartNode(ctx context.Context, n *Node, extra []string) error {
	n.extra = extra
	return n.proc.Start(ctx, c.argv(n), c.opts.ReadyTimeout)
}

// Kill sends SIGKILL to n and waits for it to die.
func (c *Cluster) Kill(n *Node) error { return n.proc.Kill() }

// Stop asks n to exit gracefully (SIGTERM), killing it after grace.
func (c *Cluster) Stop(n *Node, grace time.Duration) error { return n.proc.Stop(grace) }

// Pause sends SIGSTOP to n.
func (c *Cluster) Pause(n *Node) error { return n.proc.Pause() }

// Resume sends SIGCONT to n.
func (c *Cluster) Resume(n *Node) error { return n.proc.Resume() }

// Block drops every packet from node from to node to (netns mode only).
func (c *Cluster) Block(ctx context.Context, from, to *Node) error {
	if c.opts.Network == nil {
		return errors.New("partitions need network namespaces (root and iproute2)")
	}
	return c.opts.Network.Block(ctx, from.Index, to.Index)
}

// HealNetwork removes every block.
func (c *Cluster) HealNetwork(ctx context.Context) error {
	if c.opts.Network == nil {
		return nil
	}
	return c.opts.Network.Heal(ctx)
}

// Close stops every node: SIGCONT, SIGTERM, then SIGKILL after a grace
// period. It removes partitions first so that nodes can leave cleanly.
func (c *Cluster) Close() error {
	c.HealNetwork(context.Background())
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.proc.Stop(5 * time.Second)
		}()
	}
	wg.Wait()
	return nil
}

// Status is a node's answer to the Status RPC.
type Status struct {
	NodeID     string
	RaftState  string
	Term       uint64
	Serving    bool
	LeaderID   string
	LeaderAddr string
	Applied    uint64
	Epoch      uint64
}

// jsonUint parses protojson's 64-bit integers, sent as strings.
type jsonUint uint64

func (u *jsonUint) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*u = 0
		return nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	*u = jsonUint(v)
	return err
}

type pbHeader struct {
	LeaderID     string   `json:"leaderId"`
	LeaderAddr   string   `json:"leaderAddr"`
	NodeID       string   `json:"nodeId"`
	Epoch        jsonUint `json:"epoch"`
	AppliedIndex jsonUint `json:"appliedIndex"`
}

// call posts a Connect unary JSON request to n's API.
func (c *Cluster) call(ctx context.Context, n *Node, method string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	url := c.scheme + "://" + n.APIAddr + "/leasenode.v1.LeaseService/" + method
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := c.http.Do(hr)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", n.ID, method, res.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, resp)
}

// Status asks n for its status.
func (c *Cluster) Status(ctx context.Context, n *Node) (Status, error) {
	var r struct {
		Header    pbHeader `json:"header"`
		NodeID    string   `json:"nodeId"`
		RaftState string   `json:"raftState"`
		Term      jsonUint `json:"term"`
		Serving   bool     `json:"serving"`
	}
	if err := c.call(ctx, n, "Status", struct{}{}, &r); err != nil {
		return Status{}, err
	}
	return Status{NodeID: r.NodeID, RaftState: r.RaftState, Term: uint64(r.Term), Serving: r.Serving,
		LeaderID: r.Header.LeaderID, LeaderAddr: r.Header.LeaderAddr, Applied: uint64(r.Header.AppliedIndex), Epoch: uint64(r.Header.Epoch)}, nil
}

// Leader asks every running node and returns the serving leader with the
// highest term (a deposed leader may still believe it leads for a moment).
func (c *Cluster) Leader(ctx context.Context) (*Node, error) {
	type answer struct {
		n  *Node
		st Status
	}
	var (
		mu   sync.Mutex
		best *answer
		wg   sync.WaitGroup
	)
	for _, n := range c.nodes {
		if n.proc.State() != Running {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.Status(ctx, n)
			if err != nil || st.RaftState != "Leader" {
				return
			}
			mu.Lock()
			if best == nil || st.Term > best.st.Term || (st.Serving && !best.st.Serving && st.Term == best.st.Term) {
				best = &answer{n, st}
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if best == nil {
		return nil, errors.New("no node reports itself leader")
	}
	return best.n, nil
}

// WaitLeader polls until a node serves as leader or ctx ends.
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	for {
		n, err := c.Leader(ctx)
		if err == nil {
			if st, err := c.Status(ctx, n); err == nil && st.Serving {
				return n, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no serving leader: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Digest reads n's own state (a stale List, which n answers without asking
// the leader) and returns its applied index and a SHA-256 digest of every
// record's key, holder, token, TTL, lock-delay, value and state. The
// advisory remaining time is left out.
func (c *Cluster) Digest(ctx context.Context, n *Node) (uint64, string, int, error) {
	type lease struct {
		Key       string `json:"key"`
		Holder    string `json:"holder"`
		Token     string `json:"token"`
		TTL       string `json:"ttl"`
		LockDelay string `json:"lockDelay"`
		Value     string `json:"value"`
		State     string `json:"state"`
	}
	var lines []string
	var applied uint64
	after := ""
	for page := 0; page < 10000; page++ {
		var r struct {
			Header pbHeader `json:"header"`
			Leases []lease  `json:"leases"`
			Next   string   `json:"next"`
		}
		req := map[string]any{"stale": true, "limit": 1000}
		if after != "" {
			req["after"] = after
		}
		if err := c.call(ctx, n, "List", req, &r); err != nil {
			return 0, "", 0, err
		}
		if page == 0 {
			applied = uint64(r.Header.AppliedIndex)
		} else if uint64(r.Header.AppliedIndex) != applied {
			return 0, "", 0, fmt.Errorf("%s: state changed while listing (applied %d then %d)", n.ID, applied, r.Header.AppliedIndex)
		}
		for _, l := range r.Leases {
			lines = append(lines, strings.Join([]string{l.Key, l.Holder, l.Token, l.TTL, l.LockDelay, l.Value, l.State}, "\x00"))
		}
		if r.Next == "" {
			break
		}
		after = r.Next
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
		h.Write([]byte{'\n'})
	}
	return applied, hex.EncodeToString(h.Sum(nil))[:16], len(lines), nil
}
