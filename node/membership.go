package node

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hashicorp/raft"
	"github.com/leasenode/leasenode/fsm"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// Gossip status of a member.
const (
	statusAlive   = "alive"
	statusSuspect = "suspect"
	statusDead    = "dead"
	statusLeft    = "left"
	// statusLeaving: announced a graceful leave, still reachable.
	statusLeaving = "leaving"
)

// member is what gossip tells about one node, and what the node itself
// confirmed over an authenticated node-RPC connection.
type member struct {
	ID      string
	Raft    string // Raft and node-RPC address, as gossip claims it
	Gossip  string
	Run     string // the process start that gossip speaks for
	Cluster string // the cluster id gossip claims for it ("" none)
	Reads   byte   // the newest command format it applies (meta.Reads)
	Status  string
	Since   time.Time // when Status last changed
	// leavingRun is the Run of a process that announced a graceful
	// leave; gossip about that same process never makes it alive again.
	leavingRun string

	// What the node itself said (verifyMember), valid while gossip still
	// claims the same Raft address and run: gossip alone never names an
	// API address or gets a node into Raft.
	verified     bool   // the node at verifiedRaft proved it is ID, of our cluster
	verifiedRaft string // the Raft address it was asked at
	verifiedRun  string // gossip's Run when it was asked
	verifiedAPI  string // its own API address, from its Status reply
	verifying    bool   // a verifyMember call is running
	verifyAt     time.Time
	verifyFails  int    // consecutive failures for the current claims (backoff)
	verifyErr    string // the last failure, logged once
}

// confirmed reports whether the member's current gossip claims (Raft
// address and run) are the ones its node confirmed.
func (m *member) confirmed() bool {
	return m.verified && m.verifiedRaft == m.Raft && m.verifiedRun == m.Run
}

// meta is the gossip metadata a node publishes about itself.
type meta struct {
	ID   string `json:"id"`
	Raft string `json:"raft"`
	API  string `json:"api,omitempty"`
	// Leaving is set just before a graceful leave, so that the leader
	// removes the node at once instead of waiting out DeadServerGrace.
	// (memberlist's leave callback does not say whether a node left or
	// failed.)
	Leaving bool `json:"leaving,omitempty"`
	// Run identifies one start of the node's process, so that a leave
	// announced by one run is not undone by late gossip about it, yet a
	// restart with the same ID is alive again.
	Run string `json:"run,omitempty"`
	// Cluster is the node's cluster id, so that the leader skips members
	// of another cluster without dialing them.
	Cluster string `json:"cluster,omitempty"`
	// Reads is the newest command format version the node can apply
	// (fsm.FormatVersion), so that a leader writes nothing newer while a
	// node of an older version is in the cluster (0: a version before
	// this field, taken as fsm.OldestFormat).
	Reads byte `json:"reads,omitempty"`
}

// memberTable is this node's view of gossip membership. memberlist's
// callbacks only update it and signal; they never block.
type memberTable struct {
	mu sync.Mutex
	m  map[string]*member
	// changed and leaderChanged (capacity 1) are coalesced change
	// signals: for runMembership and for the leader's reconcile.
	changed, leaderChanged chan struct{}
	other                  map[string]string // members of another cluster, logged once: id -> their cluster
}

func newMemberTable() *memberTable {
	return &memberTable{m: map[string]*member{}, changed: make(chan struct{}, 1), leaderChanged: make(chan struct{}, 1),
		other: map[string]string{}}
}

// firstOtherCluster reports whether member id of cluster is news (to log
// it once).
func (t *memberTable) firstOtherCluster(id, cluster string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.other[id] == cluster {
		return false
	}
	t.other[id] = cluster
	return true
}

func (t *memberTable) get(id string) (member, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m, ok := t.m[id]
	if !ok {
		return member{}, false
	}
	return *m, true
}

func (t *memberTable) list() []member {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]member, 0, len(t.m))
	for _, m := range t.m {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// update records a gossip event; gone is true for memberlist's leave
// callback, which fires for failed and departed nodes alike. It returns
// an error for metadata it ignored.
func (t *memberTable) update(n *memberlist.Node, gone bool) error {
	var md meta
	if err := json.Unmarshal(n.Meta, &md); err != nil || md.ID == "" {
		return nil // not a leasenode member, or an old message
	}
	if md.ID != n.Name {
		// memberlist keeps one address per name; a member whose
		// metadata speaks for another name is forging.
		return fmt.Errorf("gossip member %q speaks for node %q", n.Name, md.ID)
	}
	t.mu.Lock()
	m := t.m[md.ID]
	if m == nil {
		m = &member{ID: md.ID}
		t.m[md.ID] = m
	}
	if md.Leaving {
		m.leavingRun = md.Run
	}
	leaving := md.Leaving || m.leavingRun != "" && m.leavingRun == md.Run
	status := statusAlive
	switch {
	case gone && leaving:
		status = statusLeft
	case gone:
		status = statusDead
	case leaving:
		status = statusLeaving
	}
	m.setStatus(status)
	if m.Raft != md.Raft || m.Run != md.Run {
		m.verifyFails, m.verifyAt = 0, time.Time{} // new claims: verify them at once
	}
	m.Raft, m.Run, m.Cluster = md.Raft, md.Run, md.Cluster
	m.Reads = max(md.Reads, fsm.OldestFormat)
	m.Gossip = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	t.mu.Unlock()
	t.signal()
	return nil
}

// toVerify returns the members whose current gossip claims no verification
// covers and none is running for, the last attempt older than retry
// (doubled per consecutive failure, up to maxVerifyRetry), and marks them
// as being verified.
func (t *memberTable) toVerify(self string, retry time.Duration) []member {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []member
	for _, m := range t.m {
		wait := min(retry<<min(m.verifyFails, 8), maxVerifyRetry)
		if m.ID == self || m.Raft == "" || m.verifying || m.confirmed() ||
			m.Status == statusDead || m.Status == statusLeft || time.Since(m.verifyAt) < wait {
			continue
		}
		m.verifying, m.verifyAt = true, time.Now()
		out = append(out, *m)
	}
	return out
}

// settled reports whether no member waits for a verification: each one
// with a Raft address is confirmed, dead or gone. (A member being verified
// is not settled: a failed verification is retried on a timer.)
func (t *memberTable) settled(self string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.m {
		if m.ID != self && m.Raft != "" && !m.confirmed() && m.Status != statusDead && m.Status != statusLeft {
			return false
		}
	}
	return true
}

// setVerified records the outcome of verifying asked (a copy taken by
// toVerify): ok and the API address it gave, or the failure. It is kept
// only if gossip still claims the same address and run; otherwise the next
// pass verifies the new claim at once. It reports whether a failure is new
// (to be logged).
func (t *memberTable) setVerified(asked member, ok bool, api string, failure error) (newFailure bool) {
	t.mu.Lock()
	m := t.m[asked.ID]
	if m != nil {
		m.verifying = false
		switch {
		case m.Raft != asked.Raft || m.Run != asked.Run:
			m.verifyFails, m.verifyAt = 0, time.Time{}
		case ok:
			m.verified, m.verifiedRaft, m.verifiedRun, m.verifiedAPI = true, asked.Raft, asked.Run, api
			m.verifyFails, m.verifyErr = 0, ""
		default:
			m.verified = false
			m.verifyFails++
			newFailure = m.verifyErr != failure.Error()
			m.verifyErr = failure.Error()
		}
	}
	t.mu.Unlock()
	if ok {
		t.signal()
	}
	return newFailure
}

// confirmedAPI returns the API address node id gave about itself, if
// gossip's current claims for it were confirmed and its Raft address is
// raftAddr (the address Raft knows it by; "" to skip that check).
func (t *memberTable) confirmedAPI(id, raftAddr string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.m[id]
	if m == nil || !m.confirmed() || raftAddr != "" && m.verifiedRaft != raftAddr {
		return ""
	}
	return m.verifiedAPI
}

// markLeaving records that run of member id asked to leave, ahead of the
// gossip that says so: the leader must not add the node back in between.
func (t *memberTable) markLeaving(id, run string) {
	t.mu.Lock()
	m := t.m[id]
	if m == nil {
		m = &member{ID: id}
		t.m[id] = m
	}
	m.leavingRun = run
	if m.Status == statusAlive || m.Status == "" {
		m.setStatus(statusLeaving)
	}
	t.mu.Unlock()
	t.signal()
}

func (m *member) setStatus(status string) {
	if m.Status != status {
		m.Status, m.Since = status, time.Now()
	}
}

func (t *memberTable) signal() {
	for _, ch := range []chan struct{}{t.changed, t.leaderChanged} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// gossipDelegate adapts memberlist callbacks to the member table.
type gossipDelegate struct {
	n    *Node
	meta atomic.Pointer[[]byte]
	// conflict is a live member at another address that uses this node's
	// ID (memberlist's name conflict), as "addr (run R)".
	conflict atomic.Pointer[string]
}

// NotifyConflict implements memberlist.ConflictDelegate: it records
// another live member using this node's ID. During Start that makes Start
// fail (this node is the duplicate); later it is logged (the other one
// is).
func (d *gossipDelegate) NotifyConflict(existing, other *memberlist.Node) {
	if existing.Name != d.n.cfg.ID {
		return
	}
	var md meta
	_ = json.Unmarshal(other.Meta, &md)
	who := fmt.Sprintf("%s (run %s)", net.JoinHostPort(other.Addr.String(), strconv.Itoa(int(other.Port))), md.Run)
	if d.conflict.Swap(&who) == nil && d.n.ml != nil {
		d.n.log.Error("another live node uses this node's ID; one of the two must get another --id", "other", who)
	}
}

func (d *gossipDelegate) setMeta(md meta) {
	b, _ := json.Marshal(md)
	d.meta.Store(&b)
}

func (d *gossipDelegate) NodeMeta(limit int) []byte       { return *d.meta.Load() }
func (d *gossipDelegate) NotifyMsg([]byte)                {}
func (d *gossipDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(bool) []byte          { return nil }
func (d *gossipDelegate) MergeRemoteState([]byte, bool)   {}
func (d *gossipDelegate) NotifyJoin(m *memberlist.Node)   { d.update(m, false) }
func (d *gossipDelegate) NotifyUpdate(m *memberlist.Node) { d.update(m, false) }
func (d *gossipDelegate) NotifyLeave(m *memberlist.Node)  { d.update(m, true) }

func (d *gossipDelegate) update(m *memberlist.Node, gone bool) {
	if err := d.n.members.update(m, gone); err != nil {
		d.n.log.Warn("ignoring gossip metadata", "component", "node.membership", "from", m.Name, "addr", m.Address(), "err", err)
	}
}

func (n *Node) startGossip(ctx context.Context) error {
	cfg := n.cfg
	host, portStr, _ := net.SplitHostPort(cfg.GossipAddr)
	port, _ := strconv.Atoi(portStr)
	ahost, aportStr, _ := net.SplitHostPort(cfg.GossipAdvertiseAddr)
	aport, _ := strconv.Atoi(aportStr)
	d := &gossipDelegate{n: n}
	biggest := n.meta(true)
	biggest.Cluster = strings.Repeat("f", 64) // the id may come later
	d.setMeta(biggest)
	if l := len(*d.meta.Load()); l > memberlist.MetaMaxSize {
		return fmt.Errorf("gossip metadata of %d bytes exceeds %d: shorten the ID or addresses", l, memberlist.MetaMaxSize)
	}
	d.setMeta(n.meta(false))
	n.gossip = d
	mc := memberlist.DefaultLANConfig()
	// Gossip rounds carry only news (membership changes, a node's new
	// metadata), which also rides on every probe; memberlist wakes every
	// node each round even when there is none, and at the LAN default of
	// 200 ms those idle rounds were a sixth of an idle cluster's CPU and
	// a fifth of its wake-ups (three agents, 40 s idle: 0.62 -> 0.47-0.57
	// CPU-s a 30 s, 635 -> 505-536 context switches a second; with fast
	// timing, 50 -> 200 ms: 2.03, 1.88 -> 1.77, 1.76 CPU-s). News still
	// reaches a 3-5 node cluster within about a second; failure
	// detection (the probes) is unchanged.
	mc.GossipInterval = idleGossipInterval
	if cfg.Timing.HeartbeatTimeout <= FastLANTiming().HeartbeatTimeout {
		// Fast-LAN timing: detect failed nodes in a second or two, with
		// enough slack that a busy host does not flap members.
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 300 * time.Millisecond
		mc.ProbeTimeout = 200 * time.Millisecond
		mc.GossipInterval = fastGossipInterval
		mc.SuspicionMult = 3
	}
	if cfg.Testing != nil && cfg.Testing.Gossip != nil {
		cfg.Testing.Gossip(mc)
	}
	// memberlist compresses every message with LZW by default: a writer
	// whose table is 64 KiB allocated per message, over half of an idle
	// follower's allocations (~320 KB/s) for messages of a few hundred
	// bytes on a LAN. Receivers read compressed and plain messages alike,
	// so nodes of either version talk.
	mc.EnableCompression = false
	mc.Name = cfg.ID
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = ahost, aport
	mc.SecretKey = cfg.GossipKey
	mc.Delegate = d
	mc.Events = d
	mc.Conflict = d
	mc.Logger = memberlistLog(n.log, &n.gossipUndecodable)
	gt, err := newGossipTransport(host, &mc.BindPort, n.known.has, mc.Logger, n.log.With("component", "node.gossip"))
	if err != nil {
		return fmt.Errorf("start gossip on %s: %w", cfg.GossipAddr, err)
	}
	if port == 0 {
		mc.AdvertisePort = mc.BindPort
	}
	mc.Transport = gt
	ml, err := memberlist.Create(mc)
	if err != nil {
		gt.Shutdown()
		return fmt.Errorf("start gossip on %s: %w", cfg.GossipAddr, err)
	}
	n.gossipNet = gt
	n.gossipSelf = []string{net.JoinHostPort(host, strconv.Itoa(mc.BindPort)), net.JoinHostPort(ahost, strconv.Itoa(mc.AdvertisePort))}
	n.joinSeeds(ml, n.seeds(ctx))
	close(n.gossipJoined)
	if who := d.conflict.Load(); who != nil {
		ml.Shutdown()
		return fmt.Errorf("node ID %q is already used by a live node at %s: give this node another --id (IDs are unique and stable per node)", cfg.ID, *who)
	}
	n.ml = ml
	return nil
}

// seeds returns the Join addresses other than this node's own gossip
// address (bound or advertised), names resolved: README's recipe lists
// every node's address on every node, and memberlist's Join succeeds when
// any seed answers, this node included, which hid every other seed's
// failure (a node with another cluster key only said it waited to
// bootstrap). A name that does not resolve is kept for memberlist to
// report.
func (n *Node) seeds(ctx context.Context) []string {
	if len(n.cfg.Join) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var out []string
	for _, seed := range n.cfg.Join {
		host, port, err := net.SplitHostPort(seed)
		if err != nil {
			out = append(out, seed)
			continue
		}
		ips := []string{host}
		if net.ParseIP(host) == nil {
			if ips, err = net.DefaultResolver.LookupHost(ctx, host); err != nil {
				out = append(out, seed)
				continue
			}
		}
		for _, ip := range ips {
			if a := net.JoinHostPort(ip, port); !n.isOwnGossipAddr(a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// isOwnGossipAddr reports whether the gossip address addr (IP:port) is
// this node's: its bound or advertised one, or, bound to an unspecified
// address, the same port on a loopback or local address.
func (n *Node) isOwnGossipAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	for _, own := range n.gossipSelf {
		ohost, oport, err := net.SplitHostPort(own)
		if err != nil || oport != port {
			continue
		}
		oip := net.ParseIP(ohost)
		switch {
		case ip == nil || oip == nil:
		case ip.Equal(oip):
			return true
		case oip.IsUnspecified() && (ip.IsLoopback() || isLocalIP(ip)):
			return true
		}
	}
	return false
}

// isLocalIP reports whether ip is an address of one of this host's
// interfaces.
func isLocalIP(ip net.IP) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if in, ok := a.(*net.IPNet); ok && in.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// seedsStarting is how long after Start a seed that refuses connections
// is taken for one starting alongside this node (logged at Info, not Warn).
const seedsStarting = 10 * time.Second

// joinSeeds joins each seed on its own, so that one seed's failure is
// seen even when another answered, and logs each failure with what it
// most likely means: at most once per loglimit.Every for a seed and kind
// of failure (runMembership retries every second while alone). It
// reports whether some seed answered.
func (n *Node) joinSeeds(ml *memberlist.Memberlist, seeds []string) bool {
	joined := false
	for _, seed := range seeds {
		if _, err := ml.Join([]string{seed}); err != nil {
			hint := joinHint(err)
			if ok, skipped := n.joinLimit.Allow(seed + "\x00" + hint); ok {
				args := []any{"component", "node.membership", "seed", seed, "err", oneLine(err), "hint", hint}
				if skipped > 0 {
					args = append(args, loglimit.Skipped, skipped)
				}
				level := slog.LevelWarn
				if time.Since(n.started) < seedsStarting && strings.Contains(err.Error(), "connection refused") {
					// Nodes started together: a seed not listening yet
					// is what a simultaneous start looks like.
					level = slog.LevelInfo
				}
				n.log.Log(n.ctx, level, "join failed; will retry", args...)
			}
			continue
		}
		joined = true
	}
	return joined
}

// joinRemembered joins, while ml knows no other member (its seeds down,
// or none given), the gossip addresses remembered from before this
// node's restart (GossipPeersFile), one at a time, and reports whether
// one answered. A failure is logged at Debug only: a remembered member
// may be gone for good, and --join is the configuration to warn about.
func (n *Node) joinRemembered(ml *memberlist.Memberlist) bool {
	for _, addr := range n.peers.addrs() {
		if ml.NumMembers() >= 2 {
			return true
		}
		if n.isOwnGossipAddr(addr) {
			continue
		}
		if _, err := ml.Join([]string{addr}); err != nil {
			n.log.Debug("join of a remembered member failed", "component", "node.membership", "addr", addr, "err", oneLine(err))
			continue
		}
		n.log.Info("joined gossip through a member remembered from before the restart ("+GossipPeersFile+")",
			"component", "node.membership", "addr", addr)
		return true
	}
	return ml.NumMembers() >= 2
}

// oneLine is err's message on one line, for a log line: memberlist's Join
// returns a multierror whose text spans lines ("1 error occurred:\n\t*
// failed to join ...\n\n"); its errors are joined with "; ".
func oneLine(err error) string {
	var me interface{ WrappedErrors() []error }
	if errors.As(err, &me) && len(me.WrappedErrors()) > 0 {
		var parts []string
		for _, e := range me.WrappedErrors() {
			parts = append(parts, oneLine(e))
		}
		return strings.Join(parts, "; ")
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// joinHint says what a failed join's error most likely means, in the
// agent's terms rather than memberlist's.
func joinHint(err error) string {
	msg := strings.ToLower(err.Error())
	switch {
	case strings.Contains(msg, "remote state is not encrypted"):
		// What a key holder reads from anything that does not encrypt:
		// an agent without the key, or no gossip port at all (an HTTP
		// answer from --api reads the same).
		return "the seed answered without gossip encryption: either its agent runs without a cluster key (give every agent the same --cluster-key, or none on all), " +
			"or it is not a gossip port: --join takes the agents' --gossip addresses (port 7401 by default), not their --api or --bind"
	case strings.Contains(msg, "no installed keys could decrypt"), strings.Contains(msg, "encryption is not configured"),
		strings.Contains(msg, "remote state is encrypted"):
		return "the seeds use another gossip key: give every agent the same --cluster-key (or --gossip-key), or none on all"
	case strings.Contains(msg, "invalid msgtype (72)"), strings.Contains(msg, "invalid msgtype (80)"):
		return "a seed answered HTTP: --join takes the agents' gossip addresses (their --gossip, port 7401 by default), not their --api"
	case strings.Contains(msg, "connection refused"):
		return "nothing listens there yet: the seeds' agents may not have started; this node keeps trying"
	}
	return "--join takes the agents' gossip addresses (their --gossip)"
}

// meta is what this node publishes about itself in gossip.
func (n *Node) meta(leaving bool) meta {
	return meta{ID: n.cfg.ID, Raft: n.cfg.AdvertiseAddr, API: n.apiAddr, Run: n.run, Leaving: leaving, Cluster: n.cluster.get(),
		Reads: n.cfg.Testing.readsFormat()}
}

// publishMeta gossips this node's metadata again (its cluster id changed).
func (n *Node) publishMeta() {
	n.gossip.setMeta(n.meta(false))
	if err := n.ml.UpdateNode(time.Second); err != nil {
		n.log.Debug("gossip metadata update", "err", err)
	}
}

// announceLeave tells gossip that this node is about to leave, before it
// asks the leader to remove it: a leader that learns of the leave by
// gossip first must not add the node back, nor wait out DeadServerGrace
// when it goes.
func (n *Node) announceLeave(timeout time.Duration) {
	n.gossip.setMeta(n.meta(true))
	if err := n.ml.UpdateNode(timeout); err != nil {
		n.log.Debug("gossip leave announcement", "err", err)
	}
}

// leaveRaft asks the leader to remove this node from the Raft
// configuration, so that the leave does not wait for DeadServerGrace. It
// retries (a new leader, a busy one) until the leader confirms the removal
// has committed, ctx ends, or leaveRaftTimeout passes; the gossip leave
// flag is the fallback after that.
func (n *Node) leaveRaft(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, leaveRaftTimeout)
	defer cancel()
	req, _ := json.Marshal(n.meta(true))
	var err error
	for ctx.Err() == nil {
		id, _, addr := n.leaderHint()
		switch {
		case addr == n.cfg.AdvertiseAddr:
			return // still the leader: nobody else could take over
		case addr != "":
			actx, acancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = n.rpc.CallNode(actx, addr, id, methodLeave, req)
			acancel()
			if err == nil {
				return
			}
		}
		ctxtime.Sleep(ctx, 100*time.Millisecond)
	}
	n.log.Info("asking the leader to remove this node failed; it will notice by gossip", "err", err)
}

// leaveRaftTimeout bounds leaveRaft when Close's ctx has no deadline.
const leaveRaftTimeout = 10 * time.Second

// serveLeave, on the leader, removes a node that leaves gracefully.
//
// Invariant leave-only-self: only node X may ask to remove X. The caller's
// ID comes from the connection (its certificate, in both secure modes),
// never from the request body; otherwise anyone who reaches the node port
// could remove voters (the probe removed one twice).
// TestLeaveOnlySelf guards it.
func (n *Node) serveLeave(ctx context.Context, data []byte) error {
	var md meta
	if err := json.Unmarshal(data, &md); err != nil || md.ID == "" {
		return fmt.Errorf("%w: leave request: %v", ErrInvalid, err)
	}
	if caller, _ := transport.PeerID(ctx); caller != md.ID {
		n.log.Warn("refused a request to remove another node", "component", "node.membership", "caller", caller, "id", md.ID)
		return fmt.Errorf("%w: node %q may not remove node %q: a node may only ask to remove itself", ErrInvalid, caller, md.ID)
	}
	if n.leader(ctx) == nil {
		return n.notLeaderErr()
	}
	n.members.markLeaving(md.ID, md.Run)
	return n.removeServer(md.ID)
}

// removeServer removes id from the Raft configuration if it is there.
func (n *Node) removeServer(id string) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			n.log.Info("removing server that leaves", "component", "node.membership", "id", id)
			return n.wait(n.raft.RemoveServer(s.ID, 0, 5*time.Second))
		}
	}
	return nil
}

// Gossip intervals: how often memberlist sends pending news to a few
// random members (see startGossip).
const (
	idleGossipInterval = time.Second
	fastGossipInterval = 200 * time.Millisecond
)

// leaveGossip leaves gossip, waiting up to timeout for the news to go out.
func (n *Node) leaveGossip(timeout time.Duration) {
	if err := n.ml.Leave(timeout); err != nil {
		n.log.Debug("gossip leave", "err", err)
	}
}

// runMembership bootstraps the cluster when BootstrapExpect nodes see each
// other and keeps retrying the join seeds while alone. (Reconciling the
// Raft configuration with gossip is the leader's, in leaderLoop.)
//
// It wakes on every gossip change, and every second while it has
// something to retry (a bootstrap, a join, a rejoin of a failed member, a
// verification, a file it could not write); once everything is settled it
// wakes only for changes, and every settledPoll. An idle cluster's CPU is
// its wakeups (issue 12).
func (n *Node) runMembership() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	bootstrapped := n.cfg.BootstrapExpect == 0 || n.hasState()
	for {
		if !bootstrapped {
			bootstrapped = n.tryBootstrap()
		}
		retry := !bootstrapped
		retry = n.rejoin() || retry
		n.verifyMembers()
		retry = !n.members.settled(n.cfg.ID) || retry
		if err := n.formats.record(n.members.list()); err != nil {
			retry = true
			if ok, _ := n.formatsFailed.Allow("peer formats"); ok {
				n.log.Warn("could not remember which command format each node reads (a restarted leader asks gossip only)", "err", err)
			}
		}
		if err := n.peers.record(n.cfg.ID, n.members.list()); err != nil {
			retry = true
			if ok, _ := n.formatsFailed.Allow("gossip peers"); ok {
				n.log.Warn("could not remember the other nodes' gossip addresses (a restart joins through --join only)", "err", err)
			}
		}
		timer.Reset(pollEvery(retry))
		select {
		case <-n.ctx.Done():
			return
		case <-n.members.changed:
		case <-n.cluster.changed:
			n.publishMeta()
		case <-timer.C:
		}
	}
}

// settledPoll is how often membership and the leader's reconcile look
// again when nothing waits to be retried: gossip and Raft signal every
// change, so this only bounds the cost of a signal missed.
const settledPoll = 30 * time.Second

// pollEvery is how long a loop that retries every second waits when
// retry says something is left to retry, else settledPoll.
func pollEvery(retry bool) time.Duration {
	if retry {
		return time.Second
	}
	return settledPoll
}

// bootstrapLogEvery is how often a node waiting to bootstrap says so;
// past bootstrapWarnAfter of waiting it says so as a warning, with what
// to check.
const (
	bootstrapLogEvery  = 5 * time.Second
	bootstrapWarnAfter = 4 * bootstrapLogEvery
)

// bootstrapWait is how a node that has waited so long to bootstrap, seeing
// seen of the expected nodes, says so: at Info at first (agents started one
// by one wait for each other), then at Warn with what to check.
func bootstrapWait(waited time.Duration, seen, expected int) (slog.Level, string, []any) {
	if waited < bootstrapWarnAfter {
		return slog.LevelInfo, "waiting to bootstrap", nil
	}
	return slog.LevelWarn, "still waiting to bootstrap", []any{"waited", waited.Round(time.Second),
		"hint", fmt.Sprintf("this node sees %d of the %d nodes --bootstrap-expect asks for: check that every agent runs, that --join lists their --gossip addresses "+
			"(not --api or --bind), and that every agent has the same --cluster-key (a node with another key logs \"join failed\"; the others log "+
			"\"no installed keys could decrypt\")", seen, expected)}
}

// verifyRetry is how soon a member that failed verification is asked
// again, doubling per consecutive failure up to maxVerifyRetry.
const (
	verifyRetry    = time.Second
	maxVerifyRetry = 15 * time.Second
)

// verifyMembers asks, in the background, every member whose gossip claims
// (Raft address, run) are not yet confirmed for its own Status, over an
// authenticated connection that must belong to the node it claims to be
// (RPCClient.CallNode). Only what a node says about itself that way is
// believed: its API address (leader hints, redirects, Members) and its
// place in Raft (reconcile adds only confirmed members).
//
// Invariant gossip-is-only-a-hint: no API address and no Raft membership
// comes from gossip metadata alone, which anyone with the gossip key (or,
// without one, anyone) can forge; a gossip member claiming the leader's
// ID with another API address made followers redirect clients and their
// bearer tokens to it. TestGossipCannotRedirect guards it.
func (n *Node) verifyMembers() {
	for _, m := range n.members.toVerify(n.cfg.ID, verifyRetry) {
		n.goRun("node.verify", func() { n.verifyMember(m) })
	}
}

// verifyMember asks m for its Status and records whether it proved who
// gossip says it is.
func (n *Node) verifyMember(m member) {
	st, err := n.peerStatus(m.ID, m.Raft)
	own := n.cluster.get()
	switch {
	case err != nil:
	case st.GetNodeId() != m.ID:
		err = fmt.Errorf("it answered as node %q", st.GetNodeId())
	case st.GetClusterId() != own:
		err = fmt.Errorf("it belongs to cluster %q, this node to %q", st.GetClusterId(), own)
	}
	if err != nil {
		level := slog.LevelDebug
		if n.members.setVerified(m, false, "", err) {
			level = slog.LevelInfo
		}
		n.log.Log(n.ctx, level, "member not verified: not adding it to Raft nor trusting its API address",
			"component", "node.membership", "id", m.ID, "raft", m.Raft, "err", err)
		return
	}
	n.members.setVerified(m, true, st.GetApiAddr(), nil)
}

// rejoinFor is how long a failed member is retried.
const rejoinFor = 24 * time.Hour

// rejoin tries, in the background and one attempt at a time, to reach
// nodes that gossip gave up on: failed members (a restarted node that
// knows no live seed would otherwise stay alone: memberlist never probes
// dead members again; Serf calls this reconnect) and, while this node is
// alone, the configured seeds, then the members remembered from before a
// restart (GossipPeersFile). It reports whether it has anyone to reach.
func (n *Node) rejoin() (retrying bool) {
	alone := n.ml.NumMembers() < 2 && (len(n.cfg.Join) > 0 || len(n.peers.addrs()) > 0)
	var addrs []string
	for _, m := range n.members.list() {
		if m.Status == statusDead && m.ID != n.cfg.ID && m.Gossip != "" && time.Since(m.Since) < rejoinFor {
			addrs = append(addrs, m.Gossip)
		}
	}
	if !alone && len(addrs) == 0 {
		return false
	}
	if !n.rejoining.CompareAndSwap(false, true) {
		return true
	}
	n.goRun("node.rejoin", func() {
		defer n.rejoining.Store(false)
		if alone && n.joinSeeds(n.ml, n.seeds(n.ctx)) {
			n.log.Debug("joined gossip through the seeds")
		}
		if alone {
			n.joinRemembered(n.ml)
		}
		if len(addrs) == 0 {
			return
		}
		if _, err := n.ml.Join(addrs); err == nil {
			n.log.Debug("rejoined gossip", "addrs", addrs)
		}
	})
	return true
}

// seenCluster returns a member other than this node that gossip has shown
// with a cluster id, and that id, unless the member left ("", "" if none):
// while this node has no cluster of its own, it bootstraps beside no such
// member, even one that is down (bootstrap-asks-everyone). If gossip
// shows members of two clusters (a stale node of another cluster with
// the same key, say), it returns an error naming them and this node
// decides nothing: which one it joined would depend on member IDs, and
// as a voter of the wrong one it would serve the same keys beside the
// other (stop 31's outsider review: two fresh nodes joined a stale
// one-node cluster whose ID sorted first).
func (n *Node) seenCluster() (id, cluster string, err error) {
	if id, cluster, err = n.gossipCluster(); cluster != "" || err != nil {
		return id, cluster, err
	}
	// What this node decided on before, perhaps before a restart that
	// emptied its member table (SeenClusterFile): the restored node it
	// saw may still be down, and the nodes it told may ask it again.
	return "", n.cluster.seenID(), nil
}

// gossipCluster is seenCluster from gossip alone (it takes no lock of
// the clusterIdentity's).
func (n *Node) gossipCluster() (id, cluster string, err error) {
	for _, m := range n.members.list() {
		if m.ID == n.cfg.ID || m.Cluster == "" || m.Status == statusLeft {
			continue
		}
		switch {
		case cluster == "":
			id, cluster = m.ID, m.Cluster
		case m.Cluster != cluster:
			return "", "", fmt.Errorf("gossip shows members of two clusters: %s (cluster %s) and %s (cluster %s); this node joins neither until the nodes of one are gone from its gossip pool (they hold the same cluster key: stop them, or give them another key)",
				id, short(cluster), m.ID, short(m.Cluster))
		}
	}
	return id, cluster, nil
}

// waitGossipJoined waits, at most joinWait, until this node's first join
// of its seeds is done: the node port is up before gossip is, and a
// leader that connects meanwhile must not be judged (mayTake) on a pool
// gossip has shown only part of (the first seed's, a stale cluster's
// perhaps, and not the next one's).
func (n *Node) waitGossipJoined() {
	t := time.NewTimer(joinWait)
	defer t.Stop()
	select {
	case <-n.gossipJoined:
	case <-n.ctx.Done():
	case <-t.C:
	}
}

// joinWait bounds waitGossipJoined: a seed that does not answer makes
// the first join last up to memberlist's TCP timeout.
const joinWait = 5 * time.Second

// twoClustersErr is gossipCluster's error, if any, logged at most once
// per loglimit interval.
func (n *Node) twoClustersErr() error {
	_, _, err := n.gossipCluster()
	if err != nil {
		if ok, skipped := n.twoClusters.Allow("two clusters"); ok {
			args := []any{"component", "node.membership"}
			if skipped > 0 {
				args = append(args, loglimit.Skipped, skipped)
			}
			n.log.Error("not joining any cluster: "+err.Error(), args...)
		}
	}
	return err
}

func (n *Node) hasState() bool {
	return n.raft.LastIndex() > 0
}

// tryBootstrap bootstraps Raft once BootstrapExpect members are alive: the
// BootstrapExpect lowest IDs, the first Voters of them voters. Every node
// computes the same configuration from the same members, so they agree
// (start exactly BootstrapExpect nodes first, as with Consul).
func (n *Node) tryBootstrap() bool {
	if n.hasState() {
		return true
	}
	var alive, asked []member
	for _, m := range n.members.list() {
		switch m.Status {
		case statusAlive:
			alive = append(alive, m)
			asked = append(asked, m)
		case statusSuspect:
			asked = append(asked, m)
		}
	}
	if len(alive) < n.cfg.BootstrapExpect {
		if n.bootstrapWaiting.IsZero() {
			n.bootstrapWaiting = time.Now()
		}
		if time.Since(n.bootstrapLogged) >= bootstrapLogEvery {
			n.bootstrapLogged = time.Now()
			ids := make([]string, len(alive))
			for i, m := range alive {
				ids[i] = m.ID
			}
			level, msg, args := bootstrapWait(time.Since(n.bootstrapWaiting), len(alive), n.cfg.BootstrapExpect)
			n.log.Log(n.ctx, level, msg, append(args, "component", "node.membership", "seen", len(alive),
				"expected", n.cfg.BootstrapExpect, "members", strings.Join(ids, ","), "join", strings.Join(n.cfg.Join, ","))...)
		}
		return false
	}
	n.bootstrapWaiting = time.Time{}
	alive = alive[:n.cfg.BootstrapExpect]
	clusterID := bootstrapClusterID(alive)
	var conf raft.Configuration
	self := false
	for i, m := range alive {
		s := raft.Server{ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Raft), Suffrage: raft.Voter}
		if i >= n.cfg.Voters {
			s.Suffrage = raft.Nonvoter
		}
		conf.Servers = append(conf.Servers, s)
		self = self || m.ID == n.cfg.ID
	}
	if !self {
		n.cluster.joining()
		return true // the others bootstrap; the leader adds us
	}
	// Like Consul: never bootstrap next to a node that has Raft state (an
	// existing cluster, or the first node of one restored from a backup),
	// or two clusters could serve the same keys. Its leader adds us.
	// A member gossip has shown with a cluster id counts even while it is
	// down, and every member gossip does not call dead is asked, not only
	// those the configuration takes (invariant bootstrap-asks-everyone).
	// The decision to join is written down first (SeenClusterFile), so
	// that a restart, which forgets the member table, keeps it.
	if err := n.twoClustersErr(); err != nil {
		return false // decided nothing; said why
	}
	if id, cluster, _ := n.seenCluster(); cluster != "" {
		if err := n.cluster.noteSeen(cluster); err != nil {
			n.log.Warn("bootstrap postponed", "err", err)
			return false
		}
		n.log.Info("not bootstrapping: a member belongs to a cluster already; waiting for its leader to add this node (to found a new cluster instead, stop every node that logged this and delete "+SeenClusterFile+" from each data dir)",
			"component", "node.membership", "member", id, "cluster", cluster)
		n.cluster.joining()
		return true
	}
	switch id, cluster, err := n.peerWithState(asked); {
	case err != nil:
		n.log.Debug("bootstrap postponed", "err", err)
		return false
	case id != "":
		if err := n.cluster.noteSeen(cluster); err != nil {
			n.log.Warn("bootstrap postponed", "err", err)
			return false
		}
		n.log.Info("not bootstrapping: a member already has Raft state, or has seen a cluster; waiting for its leader to add this node (to found a new cluster instead, stop every node that logged this and delete "+SeenClusterFile+" from each data dir)",
			"member", id, "cluster", cluster)
		n.cluster.joining()
		return true
	}
	// The cluster id goes to disk before Raft's first state: every
	// bootstrapping node computes the same one from the same members.
	if err := n.cluster.bootstrapped(clusterID); err != nil {
		n.log.Warn("bootstrap postponed", "err", err)
		return false
	}
	if err := n.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
		n.log.Warn("bootstrap failed", "err", err)
		return false
	}
	n.log.Info("bootstrapped cluster", "servers", len(conf.Servers), "cluster", clusterID)
	return true
}

// peerWithState returns the ID of a member other than this node that has
// Raft state or has seen a cluster (StatusResponse.seen_cluster), and that
// cluster's id if it knows it; "" if none has; an error if none that
// answered has and one could not be asked.
//
// Invariant bootstrap-decides: one member that answers with Raft state
// settles the decision (join), whichever other members cannot be asked;
// only a decision to bootstrap needs every member's answer. Until it has
// decided, a node waiting to bootstrap refuses every peer with a cluster
// id (clusterIdentity.check), including the nodes that bootstrapped with
// it in their configuration as a voter. Giving up at the first member
// that could not be asked (members are asked in ID order) left it
// waiting for as long as that member stayed unreachable, or for ever once
// gossip called it dead and fewer than BootstrapExpect were alive: a
// cluster whose leader died or was cut off before its slowest node had
// decided had two live voters of three and no leader, the undecided one
// refusing the other's votes (TestLeaderKillKeepsLeases and
// TestPartitionedMinorityCannotGrant failed so on busy machines). Guarded
// by TestBootstrapPastAnUnreachableMember.
func (n *Node) peerWithState(members []member) (id, cluster string, err error) {
	var unasked []error
	for _, m := range members {
		if m.ID == n.cfg.ID {
			continue
		}
		st, err := n.peerStatus(m.ID, m.Raft)
		if err != nil {
			unasked = append(unasked, fmt.Errorf("status of %s: %w", m.ID, err))
			continue
		}
		if st.GetLastIndex() > 0 || st.GetSeenCluster() != "" {
			// It has state, or has seen a member that has (its cluster
			// id, if it has one yet, or the one it saw).
			return m.ID, cmp.Or(st.GetClusterId(), st.GetSeenCluster()), nil
		}
	}
	return "", "", errors.Join(unasked...)
}

// serverAt returns the server at addr in servers, if any.
func serverAt(servers []raft.Server, addr raft.ServerAddress) (raft.Server, bool) {
	for _, s := range servers {
		if s.Address == addr {
			return s, true
		}
	}
	return raft.Server{}, false
}

// reconcile, on the leader (only its leaderLoop calls it, for ls),
// brings the Raft configuration in line with gossip: new members join as
// non-voters; non-voters that caught up are promoted until Voters voters
// are healthy; a voter that failed is demoted once a replacement is in;
// members that left are removed at once and failed ones after
// DeadServerGrace. It makes at most one change a pass, and reports
// whether the configuration is settled: nothing to change now or later
// without a gossip change (no member awaits verification, no server is
// within its grace, failed, or catching up).
func (n *Node) reconcile(ls *leaderState) (settled bool) {
	if ls.ctx.Err() != nil {
		return true
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	servers := f.Configuration().Servers
	members := map[string]member{}
	for _, m := range n.members.list() {
		members[m.ID] = m
	}
	inConf := map[string]raft.Server{}
	for _, s := range servers {
		inConf[string(s.ID)] = s
	}
	log := n.log.With("component", "node.membership")
	timeout := 5 * time.Second
	own := n.cluster.get()
	pending := false

	for _, m := range members {
		if _, ok := inConf[m.ID]; ok || m.Status != statusAlive {
			continue
		}
		switch {
		case m.Cluster != "" && m.Cluster != own:
			// Gossip says so; the hello would refuse it anyway.
			if n.members.firstOtherCluster(m.ID, m.Cluster) {
				log.Warn("not adding a member of another cluster", "id", m.ID, "its_cluster", m.Cluster, "cluster", own)
			}
			continue
		case !m.confirmed():
			pending = true
			continue // verifyMembers has not confirmed it (yet)
		}
		if s, ok := serverAt(servers, raft.ServerAddress(m.Raft)); ok && s.ID != raft.ServerID(n.cfg.ID) {
			// m answered at that address as itself (confirmed), so the
			// server Raft has there is gone: remove it before adding m,
			// or both would share one address and Raft's connections
			// (which the dial check would then have to accept for both).
			log.Info("removing server: its address now belongs to another member", "id", s.ID, "addr", m.Raft, "member", m.ID)
			if err := n.wait(n.raft.RemoveServer(s.ID, 0, timeout)); err != nil {
				log.Warn("remove server failed", "id", s.ID, "err", err)
			}
			return false
		}
		log.Info("adding non-voter", "id", m.ID, "addr", m.Raft)
		if err := n.wait(n.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.Raft), 0, timeout)); err != nil {
			log.Warn("add non-voter failed", "id", m.ID, "err", err)
		}
		return false // one change at a time; the next pass continues
	}

	healthy := func(id string) bool {
		if id == n.cfg.ID {
			return true
		}
		m, ok := members[id]
		return ok && m.Status == statusAlive
	}
	var voters, failedVoters, spare []string
	for _, s := range servers {
		id := string(s.ID)
		if id == n.cfg.ID {
			if s.Suffrage == raft.Voter {
				voters = append(voters, id)
			}
			continue
		}
		m, known := members[id]
		gone := known && m.Status == statusLeft ||
			known && m.Status == statusDead && time.Since(m.Since) > n.cfg.DeadServerGrace ||
			!known && time.Since(ls.began) > n.cfg.DeadServerGrace
		if !gone && (!known || m.Status == statusDead) {
			pending = true // gone once its grace ends
		}
		if gone && !(known && m.Status == statusLeft) && n.answers(ls.ctx, id, string(s.Address)) {
			log.Debug("keeping a server gossip calls dead: it answers over node RPC", "id", id, "status", m.Status)
			n.keptAnswering.Add(1)
			pending = true
			if s.Suffrage == raft.Voter {
				voters = append(voters, id)
			}
			continue
		}
		if gone {
			log.Info("removing server", "id", id, "status", m.Status)
			if err := n.wait(n.raft.RemoveServer(s.ID, 0, timeout)); err != nil {
				log.Warn("remove server failed", "id", id, "err", err)
			}
			return false
		}
		switch {
		case s.Suffrage == raft.Voter && healthy(id):
			voters = append(voters, id)
		case s.Suffrage == raft.Voter && n.answers(ls.ctx, id, string(s.Address)):
			voters = append(voters, id) // gossip's word alone demotes no voter
			n.keptAnswering.Add(1)
			pending = true
		case s.Suffrage == raft.Voter:
			failedVoters = append(failedVoters, id)
		case healthy(id):
			spare = append(spare, id)
		}
	}
	sort.Strings(spare)
	if len(voters) < n.cfg.Voters {
		for _, id := range spare {
			// The address Raft has, never gossip's: a gossip member
			// claiming this ID elsewhere must not move it.
			addr := inConf[id].Address
			if !n.caughtUp(id, string(addr)) {
				log.Debug("not caught up", "id", id)
				pending = true
				continue
			}
			log.Info("promoting to voter", "id", id)
			if err := n.wait(n.raft.AddVoter(raft.ServerID(id), addr, 0, timeout)); err != nil {
				log.Warn("promote failed", "id", id, "err", err)
			}
			return false
		}
	}
	if len(failedVoters) > 0 && len(voters) >= n.cfg.Voters {
		id := failedVoters[0]
		log.Info("demoting failed voter", "id", id)
		if err := n.wait(n.raft.DemoteVoter(raft.ServerID(id), 0, timeout)); err != nil {
			log.Warn("demote failed", "id", id, "err", err)
		}
		return false
	}
	if len(voters) > n.cfg.Voters {
		sort.Strings(voters)
		for i := len(voters) - 1; i >= 0; i-- {
			if voters[i] != n.cfg.ID {
				log.Info("demoting extra voter", "id", voters[i])
				if err := n.wait(n.raft.DemoteVoter(raft.ServerID(voters[i]), 0, timeout)); err != nil {
					log.Warn("demote failed", "id", voters[i], "err", err)
				}
				return false
			}
		}
	}
	return !pending && len(failedVoters) == 0
}

// answers reports whether node id answers at addr over node RPC, which
// is authenticated. Gossip's failure detector is not proof of death: an
// outsider that holds a node's gossip streams (or drops its UDP) can make
// a live node look dead to it, and a voter removed or demoted for that
// weakens the quorum for nothing. So the leader asks the node itself
// before it removes or demotes a voter gossip calls dead.
func (n *Node) answers(ctx context.Context, id, addr string) bool {
	// Bounded by the term and by half a second: a host that drops packets
	// must not hold the reconcile pass (and a step-down) for long.
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	out, err := n.rpc.CallNode(ctx, addr, id, methodStatus, nil)
	return err == nil && proto.Unmarshal(out, &pb.StatusResponse{}) == nil
}

// caughtUp asks node id at addr for its applied index; it is caught up
// when within a small margin of ours.
func (n *Node) caughtUp(id, addr string) bool {
	st, err := n.peerStatus(id, addr)
	return err == nil && st.GetHeader().GetAppliedIndex()+256 >= n.raft.AppliedIndex()
}

// LeaderCommitIndex returns the commit index of the leader this node
// knows: its own on the leader, else the leader's answer over node RPC
// (bounded by a second). A follower's own commit index can lag far
// behind it: one that was out of the configuration, or whose log is
// behind, learns only min(the leader's, its own last index) until it has
// caught up, so a readiness check that compared it with that would pass
// at commit 0, applied 0.
//
// A follower asks at most once per leaderCommitFresh, and concurrent
// callers share that answer: /readyz needs no token, and a flood of it on
// followers (5,277 a second) was as many node RPCs to the leader (outsider
// review rev-out37).
func (n *Node) LeaderCommitIndex() (uint64, error) {
	if n.raft.State() == raft.Leader {
		return n.raft.CommitIndex(), nil
	}
	addr, id := n.raft.LeaderWithID()
	if id == "" {
		return 0, ErrNoLeader
	}
	c := &n.leaderCommit
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader == string(id) && time.Since(c.at) < leaderCommitFresh {
		return c.index, nil
	}
	st, err := n.peerStatus(string(id), string(addr))
	if err != nil {
		return 0, fmt.Errorf("asking leader %s: %w", id, err)
	}
	c.leader, c.index, c.at = string(id), st.GetCommitIndex(), time.Now()
	return c.index, nil
}

// leaderCommitFresh is how long a follower reuses the leader's commit
// index it last learnt (LeaderCommitIndex).
const leaderCommitFresh = 100 * time.Millisecond

// leaderCommitCache is the leader's commit index a follower last learnt;
// its mutex is held while it asks, so that concurrent callers wait for
// one answer.
type leaderCommitCache struct {
	mu     sync.Mutex
	leader string
	index  uint64
	at     time.Time
}

// peerStatus asks node id, at addr, for its local status over node RPC;
// it fails if the node at addr is not id.
func (n *Node) peerStatus(id, addr string) (*pb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(n.ctx, time.Second)
	defer cancel()
	out, err := n.rpc.CallNode(ctx, addr, id, methodStatus, nil)
	if err != nil {
		return nil, err
	}
	st := &pb.StatusResponse{}
	if err := proto.Unmarshal(out, st); err != nil {
		return nil, err
	}
	return st, nil
}
