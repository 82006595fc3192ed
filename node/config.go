package node

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/transport"
)

// Timing holds the Raft timeouts. The leader-failover window is roughly
// ElectionTimeout plus one or two HeartbeatTimeouts.
type Timing struct {
	// HeartbeatTimeout: a follower without contact for this long starts an
	// election.
	HeartbeatTimeout time.Duration
	// ElectionTimeout: a candidate without a result for this long retries.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout: a leader without contact with a quorum for this
	// long steps down. Must not exceed HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout: how long an idle leader waits before telling
	// followers the commit index. Only followers' own state (stale reads,
	// watches served by followers) waits for it; grants never do. Raft
	// sends one AppendEntries per follower per CommitTimeout even when
	// idle, so a short one costs CPU on an idle cluster.
	CommitTimeout time.Duration
}

// DefaultTiming suits a LAN or one data centre. A leader whose process
// dies is replaced in about a second: its followers see its connections
// close and its port refuse, and campaign one LeaderLeaseTimeout after its
// last word (see failover.go). A leader that hangs or is cut off is
// replaced after one to three HeartbeatTimeouts of silence (1-3 s; etcd's
// default election timeout is 1 s, Consul's production Raft timing 5 s).
// The heartbeat timeout is 1 s because hashicorp/raft heartbeats every
// tenth to fifth of it, and those heartbeats are most of an idle cluster's
// CPU: at 500 ms they were twice as many, for nothing but a faster
// replacement of a hung leader. (Raft wants the election timeout no
// shorter; it only matters after a split vote.) A leader cut off from its quorum steps
// down after LeaderLeaseTimeout (500 ms); a shorter lease made a leader on
// a busy host step down whenever its followers' replies were late by a
// quarter second, which the lease protocol gains nothing from (every
// grant and extend commits through Raft; nothing is served on the
// strength of the lease).
//
// The commit timeout is 1 s: Raft sends each follower an AppendEntries
// per commit timeout even when idle (hashicorp/raft's "commit index"
// nudge), about a sixth of an idle cluster's CPU at 250 ms (three
// agents, 60 s idle: 0.51-0.63 -> 0.54 CPU-s a 30 s, with the gossip
// rounds below 0.60, 0.72 -> 0.48, 0.60 and 639, 605 -> 449, 431 context
// switches a second). It delays nothing but a follower's own view of the
// last entry of a burst (a watch a follower serves: an embedded
// lease.Client's on a follower; a dialled one watches through the leader
// it knows). Gossip rounds were the other sixth: they run every second
// (fast timing 200 ms) instead of memberlist's 200 ms (50 ms); see
// startGossip. (Tried twice before, they were taken back when test runs
// had a node sent no Raft traffic for 20 s: the test harness returned at
// the first leader, before every node had learnt the cluster's id, and
// the tests then cut that node's gossip or showed it a second cluster.)
func DefaultTiming() Timing {
	return Timing{
		HeartbeatTimeout:   time.Second,
		ElectionTimeout:    time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      time.Second,
	}
}

// FastLANTiming suits nodes on one fast network (or one machine): failover
// in about half a second. Shorter timeouts (it was 100 ms) flapped on a
// busy 2-core host: a follower that is not scheduled for a tenth of a
// second starts an election. The commit timeout is DefaultTiming's: at
// 50 ms it made a third of an idle cluster's Raft messages and 18% of its
// CPU (three agents, 30 s: 2.86-2.89 CPU-s, 2.29-2.42 at 250 ms) for
// nothing but fresher stale reads on followers.
func FastLANTiming() Timing {
	return Timing{
		HeartbeatTimeout:   250 * time.Millisecond,
		ElectionTimeout:    250 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		CommitTimeout:      250 * time.Millisecond,
	}
}

// Config configures a Node. Start it from DefaultConfig and set ID,
// DataDir and the addresses.
type Config struct {
	// ID names the node in Raft and gossip; unique and stable across
	// restarts. Required.
	ID string
	// DataDir holds the Raft log, stable store and snapshots. Required.
	DataDir string

	// BindAddr is the TCP host:port carrying Raft and node-to-node RPC on
	// one port. Default 127.0.0.1:7400.
	BindAddr string
	// AdvertiseAddr is how other nodes reach BindAddr. Default BindAddr,
	// which must then not be an unspecified address (0.0.0.0).
	AdvertiseAddr string
	// GossipAddr is the UDP and TCP host:port of memberlist. Default
	// 127.0.0.1:7401.
	GossipAddr string
	// GossipAdvertiseAddr is how other nodes reach GossipAddr. Default
	// GossipAddr.
	GossipAdvertiseAddr string
	// APIAddr is the host:port of the client API (Connect/gRPC/JSON over
	// HTTP). Empty: the node serves no client API (an embedding program
	// uses the Go methods). Use port 0 for any free port.
	APIAddr string
	// APIAdvertiseAddr is how clients reach APIAddr. Default: APIAddr as
	// bound.
	APIAdvertiseAddr string

	// Join lists gossip addresses of existing nodes to join at start.
	Join []string
	// BootstrapExpect: when > 0 and the node has no Raft state yet, the
	// cluster is bootstrapped once this many nodes see each other. Nodes
	// that join later are added by the leader. 0: never bootstrap (join
	// an existing cluster).
	BootstrapExpect int
	// Voters is how many Raft voters the leader keeps; other nodes are
	// non-voters that replicate and can be promoted. Default 3.
	Voters int
	// DeadServerGrace is how long a failed node stays in the Raft
	// configuration before the leader removes it. Default 30 s. A node
	// stopped for a restart or upgrade (Close without LeaveOnClose) stays
	// a member, a voter a voter, only if it is back within it.
	DeadServerGrace time.Duration

	// LeaveOnClose makes Close leave the cluster (as Leave does) instead
	// of stopping as a member that will come back. Leave it off for
	// restarts and upgrades: a voter that leaves shrinks the Raft
	// configuration, so a rolling restart would run on one voter fewer.
	// Turn it on for nodes that are retired when they stop (autoscaled
	// instances that never return).
	LeaveOnClose bool

	// Timing sets the Raft timeouts. Default DefaultTiming().
	Timing Timing
	// SnapshotThreshold is how many new log entries trigger a snapshot.
	// Default 8192.
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks the threshold. Default 30 s.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries stay in the log after a snapshot,
	// so a slightly lagging follower catches up without one. Default 10240.
	TrailingLogs uint64
	// LogBytes bounds the Raft log by size where the two counts above do
	// not: once entries applied since the last snapshot add up to it, the
	// node snapshots early, and it keeps fewer trailing entries when
	// entries are large (a million leases extended by a few holders make
	// entries of half a megabyte). Default 64 MiB.
	//
	// Independently of these settings a node also snapshots once the
	// lease operations applied since its last snapshot reach a quarter
	// of the leases and request-id marks it holds (at least 65,536), so
	// that a restart replays at most about a quarter of a restore's work
	// after loading its snapshot.
	LogBytes uint64

	// TLSFiles enables mutual TLS on the node port (Raft, node RPC) and
	// the client API. Node certificates need the node role and this
	// node's identity as SANs (transport.NodeRole, transport.NodeSAN(ID);
	// `leasenode tls cert create --node ID` makes them): a certificate
	// without the role, such as an API client's from the same CA, is
	// refused on the node port. The API accepts any certificate from the
	// CA. TLS does not cover gossip: set GossipKey or ClusterKey too.
	TLSFiles transport.TLSFiles
	// ServerTLS and ClientTLS are TLSFiles' alternative for programs that
	// build their own tls.Config: set both or neither. ServerTLS serves the
	// node port (with the node-role check added) and the API; ClientTLS
	// dials other nodes. Their certificate needs the node role too.
	ServerTLS *tls.Config
	ClientTLS *tls.Config // see ServerTLS

	// Limits bound what clients can make this node hold (defaults: see
	// DefaultLimits). Give every node the same limits: followers forward
	// requests to the leader as they received them.
	Limits Limits

	// ClusterKey (32 random bytes, the same on every node) authenticates
	// and encrypts the node port without certificates: every node derives
	// the same CA from it and mints its own node certificate, so only
	// holders of the key get a byte through (transport.ClusterKeyTLS). It
	// also keys gossip when GossipKey is empty. With TLSFiles or ServerTLS
	// set, those secure the node port and ClusterKey only keys gossip.
	ClusterKey []byte
	// GossipKey encrypts and authenticates gossip (16, 24 or 32 bytes,
	// AES). Default: derived from ClusterKey, if set.
	GossipKey []byte
	// Insecure lets the node run an unauthenticated node port or gossip
	// (no ClusterKey or TLS; no GossipKey or ClusterKey) on an address
	// other than loopback, where Start otherwise refuses: anyone who can
	// reach those ports can then read every lease, take leases from their
	// holders, and join or disrupt the cluster. Start logs a warning. Nodes
	// bound only to loopback addresses need neither.
	Insecure bool
	// AuthToken, when set, is required as "Authorization: Bearer <token>"
	// on the client API.
	AuthToken string

	// LogStore chooses the Raft log and stable store of a new data dir:
	// LogStoreWAL (raft-wal, the default: one fsync per append) or
	// LogStoreBolt (raft-boltdb, two). A data dir that already holds one
	// keeps it whatever this says, as long as it is empty or names that
	// kind; naming the other kind is refused (node/DESIGN.md, "Storage",
	// says how to move a node to the WAL).
	LogStore string

	// NoSync disables fsync of the Raft log. UNSAFE: a power loss can lose
	// acknowledged grants. For tests and benchmarks only.
	NoSync bool

	// Logger receives the node's logs (components named node.*, raft,
	// memberlist). Default: warnings and errors on stderr, so an embedded
	// node that cannot form a cluster says why; pass
	// slog.New(slog.DiscardHandler) to silence it.
	Logger *slog.Logger

	// HTTPHandlers are extra handlers served on the API address next to
	// the client protocol, by path pattern (the agent mounts /metrics,
	// /healthz and /readyz). They are served without the auth token,
	// with request bodies capped at 64 KiB as sent and never compressed
	// (larger or compressed ones are refused unread). Ignored without
	// APIAddr.
	HTTPHandlers map[string]http.Handler
	// APIHandlers are extra handlers served on the API address behind
	// AuthToken and the client protocol's request limits, by path
	// pattern (the agent mounts gRPC server reflection here). Ignored
	// without APIAddr.
	APIHandlers map[string]http.Handler
	// EnablePprof serves Go's profiler (net/http/pprof) under
	// /debug/pprof/ on the API address, behind AuthToken like the client
	// protocol (etcd's --enable-pprof): CPU, heap, goroutine and mutex
	// profiles of a running node for operators. Off by default: a
	// profile shows internals, and a CPU profile costs a little while it
	// runs. Ignored without APIAddr.
	EnablePprof bool
	// APIMiddleware, if set, wraps the client protocol handlers (metrics,
	// tracing, access logs), outside the auth token and size checks, so
	// that it sees their refusals too.
	APIMiddleware func(http.Handler) http.Handler

	// Testing holds settings for tests and the chaos harness only; nil in
	// production. Some of them are UNSAFE: they exist so that the
	// harness can show its checkers catch a broken server.
	Testing *TestingKnobs
}

// TestingKnobs are the settings a production node never has (CockroachDB's
// TestingKnobs): a fault switchboard for in-process tests, and deliberately
// UNSAFE servers for the chaos harness. Each UNSAFE knob breaks mutual
// exclusion; a node with one logs a warning at start.
type TestingKnobs struct {
	// Faults routes node-to-node traffic through an in-process
	// switchboard, so tests can partition nodes.
	Faults *transport.Faults

	// ClockRate scales the leader clock (1 = real time; 0 means 1).
	// UNSAFE beyond the clients' drift bound.
	ClockRate float64
	// SkipRebase: Promote keeps expiries as the previous leader's clock
	// left them, and the leader clock counts from process start instead
	// of from winning the election. UNSAFE: a new leader judges old
	// expiries by an unrelated clock.
	SkipRebase bool
	// WallClock: the leader stamps wall-clock time plus ClockSkew, and
	// Promote does not rebase. UNSAFE under skew.
	WallClock bool
	// ClockSkew is added to the wall clock in WallClock mode.
	ClockSkew time.Duration
	// ExtendNoCommit: the leader answers extends from its own state
	// without committing them. UNSAFE: a deposed leader keeps extending.
	ExtendNoCommit bool
	// SemaphoreOvergrant: a semaphore of N is granted to N+1 holders
	// (fsm.Config.UnsafeSemaphoreOvergrant, on every node). UNSAFE.
	SemaphoreOvergrant bool
	// SharedBesideExclusive: a shared holding is granted beside an
	// exclusive one (fsm.Config.UnsafeSharedBesideExclusive). UNSAFE.
	SharedBesideExclusive bool
	// PartialSet: a multi-key acquire is granted on the keys that are
	// free and answered Granted (fsm.Config.UnsafePartialSet). UNSAFE.
	PartialSet bool
	// ReadsFormat, if set, is the command format version this node says
	// in gossip that it reads (default fsm.FormatVersion): a test's
	// stand-in for a node of an older version.
	ReadsFormat byte
	// Gossip, if set, adjusts the node's memberlist configuration after
	// the node's own timing and before its name, addresses, key and
	// delegates are set: a test's means to slow or stop gossip's periodic
	// work (probes, full syncs) that would otherwise, at random moments,
	// do what the test waits for the node itself to do.
	Gossip func(*memberlist.Config)
}

// readsFormat is the format version a node with these knobs advertises.
func (k *TestingKnobs) readsFormat() byte {
	if k == nil || k.ReadsFormat == 0 {
		return fsm.FormatVersion
	}
	return k.ReadsFormat
}

// Unsafe reports whether any knob breaks mutual exclusion.
func (k *TestingKnobs) Unsafe() bool {
	return k != nil && (k.SkipRebase || k.WallClock || k.ExtendNoCommit || k.rate() != 1 ||
		k.SemaphoreOvergrant || k.SharedBesideExclusive || k.PartialSet)
}

// rate is ClockRate, 1 when unset.
func (k *TestingKnobs) rate() float64 {
	if k == nil || k.ClockRate == 0 {
		return 1
	}
	return k.ClockRate
}

// faults returns the switchboard, or nil.
func (k *TestingKnobs) faults() *transport.Faults {
	if k == nil {
		return nil
	}
	return k.Faults
}

// Limits bound every input of the client API before it is read into
// memory, so that no client can make a node hold more than a small
// multiple of them. A refused request names the limit it broke and the
// agent flag that sets it (resource_exhausted for sizes, invalid_argument
// for counts and TTLs).
type Limits struct {
	// MaxRequestBytes bounds one request, as sent and once decompressed
	// (agent --max-request-bytes). Default 4 MiB.
	MaxRequestBytes int64
	// MaxExtendItems bounds the keys one Extend (and so one Raft entry)
	// renews, every key of a multi-key lease counting one: a named
	// extend over it is refused, one by sum answered no (the client
	// names its leases in chunks); lease.Client sends fewer per request.
	// Default 10,000.
	MaxExtendItems int
	// MaxListBytes bounds one page of List: it ends before its leases
	// pass this size, whatever the limit asked (a page holds at least one
	// lease). Default 1 MiB, well inside the node RPC's message limit.
	MaxListBytes int
	// MaxConns bounds concurrent client API connections. One client
	// source (an IPv4 /24, an IPv6 /64) may hold at most a quarter of
	// them, at least 64 (all of them, below 64): past it a new connection
	// of the source replaces the source's own idle longest, or is refused
	// (closed at once, the refusal max_conns_per_source) if all of its
	// are busy. At the limit a new connection replaces one of the source
	// holding the most connections, busy or not, if it holds more than
	// its fair share (MaxConns over the sources holding connections, at
	// least a sixteenth of MaxConns) and more than the new one's source
	// would; else, with a token, the oldest without a request with it, or
	// the one silent longest (not yet past its first request), or its own
	// source's idle longest (kept alive between requests); else, if its
	// source would hold at most MaxConns over the active sources, the
	// idle or stalled one (a request body trickling in: not done 2 s
	// after its first read, at under 4 KiB/s) of the source holding the
	// most past that; else it is refused (closed at once, the refusal
	// max_conns). One token holder's
	// 1,006 busy connections from one address filled the limit, and the
	// connections closed to admit new ones were other clients' idle ones
	// (outsider review s32 #5), as were they for 50 /24s holding fewer
	// each than the clients' /24 (N5), and 16 /24s holding a sixteenth
	// each with trickling bodies locked every other source out (s35). A
	// connection must send its first
	// request, TLS handshake included, within 2 s (or ReadTimeout if
	// shorter). Default 1024.
	MaxConns int
	// MaxStreams bounds concurrent HTTP/2 streams per connection.
	// Default 256.
	MaxStreams uint32
	// MaxFrameRate bounds the HTTP/2 frames one client API connection
	// may send (agent --max-frame-rate): this many a second, and a tenth
	// of it at once (at least 4 per stream of MaxStreams). Every frame
	// counts: a request is 2 (HEADERS and DATA), plus a RST_STREAM if it
	// is given up; only the WINDOW_UPDATEs that hand back the window of
	// replies read are free, 2 per 4 KiB of them (Go's client sends one
	// for the stream, one for the connection). A
	// connection past it, with the token or not, is sent GOAWAY
	// ENHANCE_YOUR_CALM naming the limit and closed: an HTTP/2 rapid
	// reset (streams opened and reset at once) or PING flood with the
	// token made a leader step down. Default 20,000: 10,000 requests a
	// second on one connection, where one connection to a 2-core node
	// carried at most 5,000 Gets (11,000 frames) or 1,200
	// TryAcquire+Release pairs (6,000 frames) a second, and an
	// unbounded flood 70,000 (rapid reset) to 170,000 (PING) frames.
	// Raise it for a proxy that carries many clients on one connection.
	MaxFrameRate int
	// MaxAPIRate bounds the work all client API connections of this node
	// together make it do (agent --max-api-rate): this many requests a
	// second, and a tenth of that at once, where an HTTP/2 request
	// (HEADERS and DATA), a stream opened and reset, ten PINGs or other
	// control frames, and an HTTP/1 request each count one (measured
	// CPU: 58-67 µs a request, 42 µs a reset stream, 4.8 µs a PING on a
	// 2-core machine). Past it nothing is refused or closed: connections
	// are paced, their reads waiting their turn, fairly between client
	// sources (an IPv4 /24, an IPv6 /64: one source's many addresses and
	// connections share one turn) and then between a source's
	// addresses, and
	// TCP flow control holds the senders back; the node counts the
	// waits (Node.APIPacing) and logs them once per 10 s. Requests
	// other nodes forward to this one draw on it too, a share for each
	// forwarding node. MaxFrameRate
	// bounds one connection; without this, 32 connections with the
	// token each flooding just under it made a leader step down in 5 of
	// 6 runs. Default 10,000 (100,000 PINGs): a 2-core node sustained
	// at most 1,736 TryAcquire+Release pairs (3,500 requests) and 12,400
	// Gets a second; with 32 such floods on its leader, 10,000 kept the
	// leader and a lock loop's p99 at 47 ms, where 20,000 let the flood
	// take the CPU (p99 2.3 s). Raise it on a bigger machine.
	MaxAPIRate int
	// MaxHandshakeRate bounds the TLS handshakes a second each TLS port
	// of this node (the client API's, the node port's) starts, from all
	// sources together (agent --max-handshake-rate), with a burst of one
	// second's worth; MaxHandshakeRatePerSource bounds those from one
	// source prefix, an IPv4 /24 or an IPv6 /64
	// (agent --max-handshake-rate-per-source), with a burst of two
	// seconds' worth. A whole ClientHello draws, not a first byte
	// (transport.HandshakeLimit.Guard): one past either limit fails its
	// handshake there, before the node does any crypto for it, counted
	// as the refusal handshake_rate and logged once per 10 s;
	// connections that send no whole ClientHello, and plain ones, are not
	// counted (they cost no crypto). With the total spent, a source prefix
	// that has started about one a second or fewer lately still gets one
	// from a reserve of a tenth of MaxHandshakeRate (at least 1), so a
	// flood from a few /24s cannot lock out every other client (so a
	// port starts at most 1.1 times MaxHandshakeRate a second); on the
	// node port the cluster's nodes' addresses draw only on a bucket of
	// their own, MaxHandshakeRatePerSource each (knownSources). A
	// ClientHello costs the node an X25519 exchange and an ECDSA signature, about
	// 0.4 ms of CPU on a 2-core host, and can be replayed at no cost: an
	// outsider's replay from 249 addresses drove a leader to 1.3 cores
	// and cut a client's throughput by 85-95%. Each port has its own
	// buckets, so a flood of the client API cannot keep nodes from
	// reconnecting Raft. Defaults DefaultHandshakeRate (250 a CPU, at
	// least 500: at 0.4 ms each, a quarter of the host's CPU at most;
	// 2,000 on a 2-core host was never reached before the CPU ran out,
	// so a flood spread over a few /24s was never refused) and 200
	// (bursts of one and two seconds' worth): a host's connection pools
	// reconnecting after a partition, or leasenode bench's 32
	// connections, take a few tens at once.
	MaxHandshakeRate          int
	MaxHandshakeRatePerSource int
	// MaxWatches bounds the Watch streams open on this node at once
	// (agent --max-watches); past it a Watch is refused
	// (ErrTooManyWatches, resource_exhausted on the API) until one ends.
	// Each costs two goroutines and its buffers (about 33 KB), and every
	// batch of applied events visits every watcher: 15,379 watches took a
	// leader from 30 to 529 MB and 27,000 goroutines, and it lost its
	// leadership twice. Default 256: each event is a message, and a
	// write, to every watcher of its key, and on a 2-core leader 1,024
	// watches of every key (one token holder, 8 /24s) cut a lock loop
	// beside them from ~260 to 11-18 operations a second, at 200-375 ms
	// each, and in an outsider's runs made the leader step down (20 of 20
	// leases lost once); at 256, 55-77 a second, at most 116 ms, no step
	// down (outsider review s38). Raise it for many watchers where the
	// leader has the cores.
	MaxWatches int
	// MaxWaiters bounds the waiting acquires (Wait set) this node serves
	// at once (agent --max-waiters): those its API admitted, as leader or
	// as a follower that forwards them (each holds a forwarded call open at
	// the leader), and, on the leader, the ones queued for callers on
	// other nodes. Past it a waiting acquire is tried once without
	// waiting: granted if it may be at once, else refused
	// (ErrTooManyWaiters, resource_exhausted on the API, naming the flag)
	// instead of queued. One client source (an IPv4 /24 or IPv6 /64, as
	// MaxWatches counts them) may hold at most a quarter of it, at least
	// 64 (all of it below 64), and past its first 64 only while more than
	// a quarter of it is free, refused past either alike, naming the
	// share; so a few sources that fill their shares leave a quarter to
	// the sources that wait a little. Waits other nodes forward count
	// against their client's source, which the forwarding node sends with
	// them, so that a source has one share of the leader through any
	// nodes, and against the forwarding node's share, half of the limit;
	// an embedded caller's count only against the limit (and, forwarded,
	// its node's share). One key's queue at the leader holds at most
	// 1,024 waiters. A TryAcquire is never refused by it. A waiter
	// costs about 11-18 KB on each node it passes (its goroutines, a
	// forwarded call's buffers, the queue entry): 20,000 from one client
	// took a follower up 350 MB and the leader 230 MB, and the leader lost
	// its leadership twice; 8,186 from one token holder's address took a
	// leader's whole limit, and a lock loop beside it was refused 595
	// times in 30 s, until sources had their share; then four /24s, or
	// two through three nodes, filled it, and the lock loop was refused
	// 340 and 1,203 times, until a quarter was kept back and forwarded
	// waits counted by source. Default 8192: 90-150 MB at worst, 32 times
	// MaxWatches, since a lock's waiters are many cheap clients where
	// watchers are few.
	MaxWaiters int
	// ReadTimeout bounds reading one request, headers and body: a client
	// that sends a byte now and then is cut off. Default 10 s.
	ReadTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long. Default
	// 30 s: net/http keeps what an HTTP/2 connection used (7-60 KB) until
	// its idle timer fires, even after the connection closed, so churned
	// connections cost that times the connections opened per IdleTimeout
	// (at 2 min an outsider's churn lifted an agent to 683 MB RSS). A
	// lease client extends every third of a TTL, so its connection is
	// never idle that long.
	IdleTimeout time.Duration
	// MinTTL is the shortest TTL a lease may ask for (agent --min-ttl).
	// Default: Timing.LeaderLeaseTimeout (500 ms with default timing,
	// 250 ms with fast timing), the cluster's own shortest failure
	// detection: a shorter lease could not outlive one late reply.
	MinTTL time.Duration
	// MaxLeases and MaxLeaseBytes bound the cluster's state, as etcd's
	// backend quota does: the leader refuses an acquire that would take
	// it past either (ErrInvalid, naming the limit), while extends,
	// releases and reads go on, so a full cluster drains. MaxLeases
	// counts holdings and lock-delays (agent --max-leases, default 2
	// million); MaxLeaseBytes their keys, holders and values, and the
	// keys and holders of the request-id marks each acquire leaves for
	// 15-16 minutes once its lease ends (agent --max-lease-bytes, default
	// 256 MiB). Every node keeps the whole state in memory, about three
	// times these bytes. A lease that ends leaves a mark smaller than
	// itself; only an Abandon of a request the cluster never saw, which is
	// never refused, adds a mark past MaxLeaseBytes (and never more than
	// fsm.MaxMarks marks in all).
	MaxLeases     int
	MaxLeaseBytes int64
}

// DefaultHandshakeRate is Limits.MaxHandshakeRate's default: 250 TLS
// handshakes a second per CPU of this host, at least 500.
func DefaultHandshakeRate() int { return max(500, 250*runtime.NumCPU()) }

// DefaultLimits returns the default Limits for timing t.
func DefaultLimits(t Timing) Limits {
	return Limits{
		MaxRequestBytes: 4 << 20,
		MaxExtendItems:  10_000,
		MaxListBytes:    1 << 20,
		MaxConns:        1024,
		MaxStreams:      256,
		MaxFrameRate:    20_000,
		MaxAPIRate:      10_000,

		MaxHandshakeRate:          DefaultHandshakeRate(),
		MaxHandshakeRatePerSource: 200,
		MaxWatches:                256,
		MaxWaiters:                8192,
		ReadTimeout:               10 * time.Second,
		IdleTimeout:               30 * time.Second,
		MinTTL:                    t.LeaderLeaseTimeout,
		MaxLeases:                 2_000_000,
		MaxLeaseBytes:             256 << 20,
	}
}

// withDefaults fills zero limits from DefaultLimits(t).
func (l Limits) withDefaults(t Timing) Limits {
	d := DefaultLimits(t)
	if l.MaxRequestBytes == 0 {
		l.MaxRequestBytes = d.MaxRequestBytes
	}
	if l.MaxExtendItems == 0 {
		l.MaxExtendItems = d.MaxExtendItems
	}
	if l.MaxListBytes == 0 {
		l.MaxListBytes = d.MaxListBytes
	}
	if l.MaxConns == 0 {
		l.MaxConns = d.MaxConns
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = d.MaxStreams
	}
	if l.MaxFrameRate == 0 {
		l.MaxFrameRate = d.MaxFrameRate
	}
	if l.MaxAPIRate == 0 {
		l.MaxAPIRate = d.MaxAPIRate
	}
	if l.MaxHandshakeRate == 0 {
		l.MaxHandshakeRate = d.MaxHandshakeRate
	}
	if l.MaxHandshakeRatePerSource == 0 {
		l.MaxHandshakeRatePerSource = d.MaxHandshakeRatePerSource
	}
	if l.MaxWatches == 0 {
		l.MaxWatches = d.MaxWatches
	}
	if l.MaxWaiters == 0 {
		l.MaxWaiters = d.MaxWaiters
	}
	if l.ReadTimeout == 0 {
		l.ReadTimeout = d.ReadTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.MinTTL == 0 {
		l.MinTTL = d.MinTTL
	}
	if l.MaxLeases == 0 {
		l.MaxLeases = d.MaxLeases
	}
	if l.MaxLeaseBytes == 0 {
		l.MaxLeaseBytes = d.MaxLeaseBytes
	}
	return l
}

// DefaultConfig returns a Config with every default filled in except ID and
// DataDir.
func DefaultConfig() Config {
	return Config{
		BindAddr:          "127.0.0.1:7400",
		GossipAddr:        "127.0.0.1:7401",
		Voters:            3,
		DeadServerGrace:   30 * time.Second,
		Timing:            DefaultTiming(),
		SnapshotThreshold: 8192,
		SnapshotInterval:  30 * time.Second,
		TrailingLogs:      10240,
		LogBytes:          64 << 20,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.GossipAddr == "" {
		c.GossipAddr = d.GossipAddr
	}
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = c.BindAddr
	}
	if c.GossipAdvertiseAddr == "" {
		c.GossipAdvertiseAddr = c.GossipAddr
	}
	if c.Voters == 0 {
		c.Voters = d.Voters
	}
	if c.DeadServerGrace == 0 {
		c.DeadServerGrace = d.DeadServerGrace
	}
	if c.Timing == (Timing{}) {
		c.Timing = d.Timing
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.LogBytes == 0 {
		c.LogBytes = d.LogBytes
	}
	c.Limits = c.Limits.withDefaults(c.Timing)
	if c.Logger == nil {
		c.Logger = defaultLogger()
	}
	return c
}

// Validate reports the first setting a user must fix, after defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.ID == "" {
		bad("ID is required (a stable, unique name for this node)")
	} else if !validID(c.ID) {
		bad("ID %q: use up to 128 letters, digits, '.', '_' or '-' (it is part of the node's certificate name)", c.ID)
	}
	if c.DataDir == "" {
		bad("DataDir is required (where the Raft log and snapshots live)")
	}
	for _, a := range []struct{ name, addr string }{
		{"BindAddr", c.BindAddr}, {"AdvertiseAddr", c.AdvertiseAddr},
		{"GossipAddr", c.GossipAddr}, {"GossipAdvertiseAddr", c.GossipAdvertiseAddr},
	} {
		if err := checkHostPort(a.addr); err != nil {
			bad("%s %q: %v", a.name, a.addr, err)
		}
	}
	if host, port, err := net.SplitHostPort(c.AdvertiseAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			bad("AdvertiseAddr %q is unspecified; set the address other nodes use", c.AdvertiseAddr)
		}
		if port == "0" {
			bad("AdvertiseAddr %q needs a fixed port", c.AdvertiseAddr)
		}
	}
	if c.APIAddr != "" {
		if err := checkHostPort(c.APIAddr); err != nil {
			bad("APIAddr %q: %v", c.APIAddr, err)
		}
	}
	if x, y, ok := samePort(listenAddrs(c)); ok {
		bad("%s %s and %s %s are one port: each needs its own", x.name, x.addr, y.name, y.addr)
	}
	if c.LogStore != "" && c.LogStore != LogStoreWAL && c.LogStore != LogStoreBolt {
		bad("LogStore %q: want %q (raft-wal), %q (raft-boltdb) or empty (the data dir's own, else %q)", c.LogStore, LogStoreWAL, LogStoreBolt, LogStoreWAL)
	}
	if c.BootstrapExpect < 0 {
		bad("BootstrapExpect %d must be >= 0", c.BootstrapExpect)
	}
	if c.Voters < 1 {
		bad("Voters %d must be >= 1", c.Voters)
	}
	if c.DeadServerGrace < 0 {
		bad("DeadServerGrace %v must not be negative", c.DeadServerGrace)
	}
	if c.Voters%2 == 0 {
		bad("Voters %d should be odd: an even count tolerates no more failures than one fewer", c.Voters)
	}
	t := c.Timing
	if t.HeartbeatTimeout < 5*time.Millisecond || t.ElectionTimeout < 5*time.Millisecond ||
		t.LeaderLeaseTimeout < 5*time.Millisecond || t.CommitTimeout <= 0 {
		bad("Timing %+v: timeouts must be at least 5ms", t)
	}
	if t.LeaderLeaseTimeout > t.HeartbeatTimeout {
		bad("Timing: LeaderLeaseTimeout %v must not exceed HeartbeatTimeout %v", t.LeaderLeaseTimeout, t.HeartbeatTimeout)
	}
	if t.ElectionTimeout < t.HeartbeatTimeout {
		bad("Timing: ElectionTimeout %v must not be shorter than HeartbeatTimeout %v (Raft's rule)", t.ElectionTimeout, t.HeartbeatTimeout)
	}
	if l := c.Limits; l.MaxRequestBytes < 64<<10 || l.MaxRequestBytes > 64<<20 {
		bad("Limits.MaxRequestBytes %d out of range [64 KiB, 64 MiB]", l.MaxRequestBytes)
	}
	if l := c.Limits; l.MaxLeases < 1 || l.MaxLeaseBytes < 1 {
		bad("Limits.MaxLeases %d and MaxLeaseBytes %d must be positive", l.MaxLeases, l.MaxLeaseBytes)
	}
	if l := c.Limits; l.MaxExtendItems < 1 || l.MaxExtendItems > fsm.MaxBatch {
		bad("Limits.MaxExtendItems %d out of range [1, %d]", l.MaxExtendItems, fsm.MaxBatch)
	}
	if l := c.Limits; l.MaxListBytes < 128<<10 || int64(l.MaxListBytes) > transport.DefaultMaxMessage/2 {
		bad("Limits.MaxListBytes %d out of range [128 KiB, %d] (a page must fit a node RPC message)", l.MaxListBytes, transport.DefaultMaxMessage/2)
	}
	if l := c.Limits; l.MaxConns < 1 || l.MaxStreams < 1 || l.ReadTimeout < 0 || l.IdleTimeout < 0 {
		bad("Limits: MaxConns, MaxStreams must be >= 1 and timeouts >= 0")
	}
	if l := c.Limits; l.MaxFrameRate < 1 {
		bad("Limits.MaxFrameRate %d must be positive (HTTP/2 frames a second per client API connection)", l.MaxFrameRate)
	}
	if l := c.Limits; l.MaxAPIRate < 100 || l.MaxAPIRate > 100_000_000 {
		bad("Limits.MaxAPIRate %d out of range [100, 100000000] (client API requests a second, all connections of a node together)", l.MaxAPIRate)
	}
	if l := c.Limits; l.MaxHandshakeRatePerSource < 1 || l.MaxHandshakeRatePerSource > 100_000_000 {
		bad("Limits.MaxHandshakeRatePerSource %d out of range [1, 100000000] (TLS handshakes a second from one IPv4 /24 or IPv6 /64, per port)", l.MaxHandshakeRatePerSource)
	}
	if l := c.Limits; l.MaxHandshakeRate < 1 || l.MaxHandshakeRate > 100_000_000 {
		bad("Limits.MaxHandshakeRate %d out of range [1, 100000000] (TLS handshakes a second from all sources, per port)", l.MaxHandshakeRate)
	}
	if l := c.Limits; l.MaxWatches < 1 {
		bad("Limits.MaxWatches %d must be positive", l.MaxWatches)
	}
	if l := c.Limits; l.MaxWaiters < 1 {
		bad("Limits.MaxWaiters %d must be positive", l.MaxWaiters)
	}
	if l := c.Limits; l.MinTTL < time.Millisecond || l.MinTTL > fsm.MaxTTL {
		bad("Limits.MinTTL %v out of range [1ms, %v]", l.MinTTL, fsm.MaxTTL)
	}
	if n := len(c.GossipKey); n != 0 && n != 16 && n != 24 && n != 32 {
		bad("GossipKey is %d bytes; want 16, 24 or 32", n)
	}
	if n := len(c.ClusterKey); n != 0 && n != transport.ClusterKeySize {
		hint := "make one with: head -c 32 /dev/urandom | base64, and decode it with transport.ParseClusterKey"
		if _, err := transport.ParseClusterKey(string(c.ClusterKey)); err == nil {
			hint = "it is the base64 text of a key: decode it with transport.ParseClusterKey"
		}
		bad("ClusterKey is %d bytes; want %d (%s)", n, transport.ClusterKeySize, hint)
	}
	if (c.ServerTLS == nil) != (c.ClientTLS == nil) {
		bad("set both ServerTLS and ClientTLS, or neither")
	}
	if c.ServerTLS != nil && c.TLSFiles.Enabled() {
		bad("set TLSFiles or ServerTLS/ClientTLS, not both")
	}
	if k := c.Testing; k != nil {
		if k.ClockRate < 0 {
			bad("Testing.ClockRate %v must be > 0", k.ClockRate)
		}
		if k.ClockSkew != 0 && !k.WallClock {
			bad("Testing.ClockSkew needs Testing.WallClock")
		}
	}
	return errors.Join(errs...)
}

// validID reports whether id may name a node: it goes into certificate
// SANs (transport.NodeSAN) and the hello.
func validID(id string) bool {
	if len(id) > 128 {
		return false
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return true
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("host must be an IP address")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// namedAddr is a listen address and the setting that gives it.
type namedAddr struct{ name, addr string }

// listenAddrs returns the addresses a node listens on (c with defaults).
func listenAddrs(c Config) []namedAddr {
	out := []namedAddr{{"BindAddr", c.BindAddr}, {"GossipAddr", c.GossipAddr}}
	if c.APIAddr != "" {
		out = append(out, namedAddr{"APIAddr", c.APIAddr})
	}
	return out
}

// samePort returns two of addrs that would listen on one port: the same
// fixed port on the same host, or on any host when one of them binds all
// (0.0.0.0, ::). Port 0 (any free port) never clashes.
func samePort(addrs []namedAddr) (x, y namedAddr, ok bool) {
	for i, a := range addrs {
		ah, ap, err := net.SplitHostPort(a.addr)
		if err != nil || ap == "0" {
			continue
		}
		for _, b := range addrs[i+1:] {
			bh, bp, err := net.SplitHostPort(b.addr)
			if err != nil || bp != ap {
				continue
			}
			aip, bip := net.ParseIP(ah), net.ParseIP(bh)
			if ah == bh || ah == "" || bh == "" || aip != nil && bip != nil && (aip.Equal(bip) || aip.IsUnspecified() || bip.IsUnspecified()) {
				return a, b, true
			}
		}
	}
	return x, y, false
}

// checkListen tries every address the node will listen on (TCP, and UDP
// for gossip) and lets go at once, so that one in use is refused before
// the data dir and its first WAL segment are made. The node binds them
// for good moments later; one taken in between still fails then.
func checkListen(c Config) error {
	for _, a := range listenAddrs(c) {
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return &AddrError{Setting: a.name, Addr: a.addr, Err: err}
		}
		ln.Close()
		if a.name == "GossipAddr" {
			pc, err := net.ListenPacket("udp", a.addr)
			if err != nil {
				return &AddrError{Setting: a.name, Addr: a.addr + " (UDP)", Err: err}
			}
			pc.Close()
		}
	}
	return nil
}
