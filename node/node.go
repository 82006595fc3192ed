package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport"
)

// Node is one member of a leasenode cluster. Create it with Start; every
// method is safe for concurrent use.
type Node struct {
	cfg     Config
	started time.Time
	log     *slog.Logger

	fsm  *fsm.FSM
	raft *raft.Raft
	// leaderCommit: the leader's commit index as this follower last
	// learnt it (LeaderCommitIndex).
	leaderCommit leaderCommitCache
	trans        *raft.NetworkTransport
	stream       *transport.StreamLayer // under trans; drained before the store closes
	walDir       string                 // the raft-wal dir, if the store is raft-wal (see walguard.go)
	logs         *logCache              // Raft's log store: n.store behind a cache
	store        raftStore

	mux    *transport.Mux
	rpcSrv *transport.RPCServer
	rpc    *transport.RPCClient

	// Node-port security (trust.go): TLS configurations of the node port
	// (nil: plain TCP) and the API, whether every peer is authenticated,
	// and this node's cluster id with the rules for peers'.
	nodeServerTLS  *tls.Config
	nodeClientTLS  *tls.Config
	apiTLS         *tls.Config
	authPeers      bool
	cluster        *clusterIdentity
	raftp          atomic.Pointer[raft.Raft] // n.raft once NewRaft returned, for the hello's judge
	reloadMu       sync.Mutex                // serialises raft.ReloadConfig read-modify-writes (reloadRaft)
	failover       atomic.Bool               // a leaderGone check is running (failover.go)
	earlyCampaigns atomic.Int64              // times leaderGone shortened the heartbeat timeout
	keptAnswering  atomic.Int64              // reconcile passes that kept a server gossip called dead (answers)
	goneLeader     atomic.Pointer[string]    // ID of a leader whose process leaderGone found gone
	slowCommits    *loglimit.Limiter         // of the slow-commit warnings (noteCommit)
	commits        *commitWatch              // proposals in flight: can this leader commit? (commitwatch.go)
	disk           *writeWatch               // Raft log writes in flight: does this node's own disk hang? (diskhang.go)
	formatsFailed  *loglimit.Limiter         // of failures to write PeerFormatsFile
	twoClusters    *loglimit.Limiter         // of the warnings that gossip shows two clusters (seenCluster)
	gossipJoined   chan struct{}             // closed once the first join of the seeds is done
	startDone      chan struct{}             // closed once Start has returned

	ml        *memberlist.Memberlist
	gossip    *gossipDelegate
	gossipNet *gossipTransport // bounds inbound gossip streams (gossipconn.go)
	// gossipUndecodable counts the gossip packets and streams memberlist
	// could not decrypt or decode (memberlistLog): another key, or none.
	gossipUndecodable atomic.Uint64
	members           *memberTable
	known             *knownSources // addresses of the cluster's nodes: the node port's handshakes, gossip streams
	formats           *peerFormats  // what each node was last seen to read (PeerFormatsFile)
	peers             *gossipPeers  // the members' gossip addresses last seen (GossipPeersFile)
	rejoining         atomic.Bool   // a rejoin attempt is running
	// gossipSelf is this node's gossip address, bound and advertised
	// (ports resolved), which seeds leaves out of Join.
	gossipSelf []string
	joinLimit  *loglimit.Limiter // of joinSeeds' warnings
	// bootstrapLogged is when tryBootstrap last said it waits, and
	// bootstrapWaiting since when it waits (only runMembership touches
	// them).
	bootstrapLogged, bootstrapWaiting time.Time
	run                               string        // random ID of this start, published in gossip
	raftDown                          chan struct{} // closed once Raft has shut down; see wait

	// fatal holds the error that made this node stop (an entry it cannot
	// apply); fatalCh is closed when it is set.
	fatal     atomic.Pointer[error]
	fatalCh   chan struct{}
	fatalOnce sync.Once
	down      chan struct{} // closed when shutdown has finished

	api     *http.Server
	apiLn   net.Listener
	apiConn *connLimiter // under apiLn; nil without an API
	// apiFrames bounds the HTTP/2 frames of API connections; nil without
	// an API.
	apiFrames *frameBudget
	// apiWork is the API budget all connections share; nil without an
	// API.
	apiWork *apiBudget
	// raftTrans is Raft's transport, which knows the peers whose Raft
	// port refused its last dial.
	raftTrans *rejoinTransport
	apiAddr   string // advertised client API address ("" if none)

	// lead is non-nil while this node is the leader and its Promote has
	// applied; every leader-only operation reads it once and uses that
	// epoch's clock and queues.
	lead         atomic.Pointer[leaderState]
	leaderNotify chan bool // raft.Config.NotifyCh

	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced when leadership or serving changes
	forwards forwards      // requests in flight to the leader (forward)

	hub     *watchHub
	applied appliedCounter // the feed's changes by kind (Applied)
	// withdrawals bounds withdraw goroutines in flight.
	withdrawals chan struct{}
	// backups bounds the backups being served (BackupPath): each holds an
	// encoded copy of the state until its reader has it all.
	backups chan struct{}
	// bigBodies bounds the large request bodies being read and decoded
	// (bodySlot).
	bigBodies *bodyGate
	// replies bounds the replies built and not yet written (reply-room).
	replies *replyRoom
	pending *pendingBodies // requests whose bodies have not arrived (pending-bodies)
	// wrongTokens counts API requests whose bearer token is not the
	// cluster's (Refusals: wrong_token); tokenWarn bounds their log.
	wrongTokens atomic.Uint64
	tokenWarn   *loglimit.Limiter
	// openRefused counts requests to Config.HTTPHandlers refused for
	// their body (Refusals: open_body).
	openRefused atomic.Uint64
	// lostPending counts acquires whose outcome this leader is waiting
	// to learn before it decides to withdraw them (lostOutcome);
	// withdrawn counts the withdrawals it started.
	lostPending, withdrawn atomic.Int64
	// waiting counts the waiting acquires this node serves, in all and
	// by client source and forwarding node (waiterSlot, Limits.MaxWaiters).
	waiting waiterCount
	clock   clockSeen // when the FSM clock last moved, for stale reads

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	// stopping is cancelled when a graceful stop begins, before the API
	// drains: a watch stream ends then with ErrClosed, which its client
	// reads as a node shutting down, instead of being cut when the drain's
	// second ran out (a broken connection, "incomplete envelope").
	stopping     context.Context
	stopStopping context.CancelFunc
	wg           sync.WaitGroup
	goMu         sync.Mutex
	goStopped    bool // goRun starts nothing: shutdown waits for wg
	closeOnce    sync.Once
	closeErr     error
}

// Start creates a node from cfg, opens its stores, starts Raft, gossip and
// (if configured) the client API, and returns without waiting for a leader.
// ctx bounds only the start itself. Invalid configuration fails here with a
// message naming the setting.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	cfg = cfg.withDefaults()
	if err := checkListen(cfg); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("node", cfg.ID)
	if err := checkExposure(cfg, log); err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	if len(cfg.GossipKey) == 0 && len(cfg.ClusterKey) > 0 {
		if cfg.GossipKey, err = transport.GossipKey(cfg.ClusterKey); err != nil {
			return nil, fmt.Errorf("gossip key: %w", err)
		}
	}
	nodeServer, nodeClient, apiTLS, err := nodePortTLS(cfg)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	existed, fresh := dataDirFresh(cfg.DataDir)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := checkNodeID(cfg.DataDir, cfg.ID); err != nil {
		return nil, err
	}
	n := &Node{
		started:     time.Now(),
		cfg:         cfg,
		log:         log,
		changed:     make(chan struct{}),
		run:         strconv.FormatUint(rand.Uint64(), 36),
		raftDown:    make(chan struct{}),
		fatalCh:     make(chan struct{}),
		withdrawals: make(chan struct{}, 1024),
		backups:     make(chan struct{}, maxBackups),
		bigBodies: &bodyGate{srcs: map[string]*srcToken{}, decoding: make(chan struct{}, maxBigBodies), budget: maxLargeBodyBytes,
			holders: map[*roomHolder]struct{}{}, log: log.With("component", "node.api"), warn: loglimit.New()},
		replies:       newReplyRoom(log.With("component", "node.api")),
		pending:       newPendingBodies(log.With("component", "node.api")),
		tokenWarn:     loglimit.New(),
		down:          make(chan struct{}),
		nodeServerTLS: nodeServer,
		nodeClientTLS: nodeClient,
		slowCommits:   loglimit.New(),
		formatsFailed: loglimit.New(),
		twoClusters:   loglimit.New(),
		gossipJoined:  make(chan struct{}),
		startDone:     make(chan struct{}),
		apiTLS:        apiTLS,
		authPeers:     nodeServer != nil,
		joinLimit:     loglimit.New(),
	}
	n.commits = newCommitWatch(commitStallAfter(cfg.Timing), n.onCommitStall)
	n.disk = newWriteWatch(ownDiskHangAfter(cfg.Timing), n.onOwnDiskHang, n.onOwnDiskBack)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.stopping, n.stopStopping = context.WithCancel(n.ctx)
	n.hub = newWatchHub()
	n.members = newMemberTable()
	n.known = &knownSources{n: n}
	k := cfg.Testing
	fc := fsm.Config{Events: true, OnFatal: n.onFatal}
	if k != nil {
		fc.UnsafeSkipRebase = k.SkipRebase || k.WallClock
		fc.UnsafeSemaphoreOvergrant = k.SemaphoreOvergrant
		fc.UnsafeSharedBesideExclusive = k.SharedBesideExclusive
		fc.UnsafePartialSet = k.PartialSet
	}
	n.fsm = fsm.New(fc)
	if k.Unsafe() {
		n.log.Warn("UNSAFE settings in force: mutual exclusion is NOT guaranteed",
			"clock_rate", k.rate(), "skip_rebase", k.SkipRebase, "wall_clock", k.WallClock, "extend_no_commit", k.ExtendNoCommit,
			"semaphore_overgrant", k.SemaphoreOvergrant, "shared_beside_exclusive", k.SharedBesideExclusive, "partial_set", k.PartialSet)
	}
	// Last of Start's defers: a fatal entry met while Start runs (Raft
	// replays the log in startRaft) stops the node only once Start is
	// done, not beside it (stopFatal): its shutdown read fields Start
	// was still setting (a data race -race caught on a busy machine).
	defer close(n.startDone)
	defer func() {
		if err != nil {
			// A start that failed in a data dir it found empty takes
			// back what it wrote there (the node ID, the Raft store), so
			// that the operator can start again with other settings, a
			// new --id say, without emptying the dir first. Only once it
			// held the store's lock: else another process may use the dir.
			held := n.store != nil
			n.shutdown(context.Background(), stopCrash)
			if held && fresh {
				discardDataDir(cfg.DataDir, existed, n.log)
			}
		}
	}()
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	if err := n.startAPI(); err != nil {
		return nil, err
	}
	if err := n.startGossip(ctx); err != nil {
		return nil, err
	}
	n.goRun("node.leader", n.runLeadership)
	n.goRun("node.feed", n.runFeed)
	n.goRun("node.membership", n.runMembership)
	n.goRun("node.compaction", n.runCompaction)
	n.goRun("node.certs", n.watchCertExpiry)
	if n.walDir != "" {
		n.goRun("node.commitmark", func() { n.runCommitMark(n.walDir) })
	}
	n.log.Info("node started", "raft", cfg.AdvertiseAddr, "gossip", cfg.GossipAdvertiseAddr, "api", n.apiAddr)
	if cfg.BootstrapExpect == 0 && len(cfg.Join) == 0 && !n.hasState() {
		n.log.Warn("this node has no cluster to join: no Join seeds (agent --join), no BootstrapExpect (--bootstrap-expect) and no state in its data dir; "+
			"it waits until a member of a cluster joins it by its gossip address. To start a new cluster give every first node --bootstrap-expect N and --join with the others' gossip addresses; to join one, --join a member's",
			"gossip", cfg.GossipAdvertiseAddr)
	}
	return n, nil
}

// goRun starts a goroutine owned by the node; Close waits for it. Once
// Close has begun to wait it starts nothing and reports false (a
// WaitGroup may not grow while Wait runs, and f would only find the node
// closing): a withdrawal or a member check that a stopping node would
// start is dropped.
func (n *Node) goRun(name string, f func()) bool {
	n.goMu.Lock()
	defer n.goMu.Unlock()
	if n.goStopped {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	_ = name
	return true
}

func (n *Node) startRaft() error {
	cfg := n.cfg
	kind, err := storeKind(cfg.DataDir, cfg.LogStore)
	if err != nil {
		return err
	}
	if err := checkDataDir(cfg.DataDir, kind); err != nil {
		return err
	}
	if n.store, err = openStore(cfg.DataDir, kind, cfg.NoSync, n.log); err != nil {
		return err
	}
	n.log.Info("raft log store", "kind", kind)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hclogFor(n.log, "raft-snapshot"))
	if err != nil {
		return fmt.Errorf("snapshot store: %w", err)
	}
	if kind == LogStoreWAL {
		n.walDir = filepath.Join(cfg.DataDir, walDir)
		if err := checkCommitMark(n.walDir, n.store, snaps); err != nil {
			return err
		}
	}
	hadState, err := raft.HasExistingState(n.store, n.store, snaps)
	if err != nil {
		return fmt.Errorf("read raft state: %w", err)
	}
	n.cluster, err = newClusterIdentity(cfg.DataDir, cfg.ID, n.log, cfg.BootstrapExpect > 0 && !hadState, func() bool {
		if r := n.raftp.Load(); r != nil {
			return r.LastIndex() > 0
		}
		return hadState
	}, func(id string) bool {
		_, ok := n.members.get(id)
		return ok
	})
	if err != nil {
		return err
	}
	n.cluster.mayTake, n.cluster.settle = n.twoClustersErr, n.waitGossipJoined
	if n.formats, err = loadPeerFormats(cfg.DataDir); err != nil {
		return err
	}
	if n.peers, err = loadGossipPeers(cfg.DataDir); err != nil {
		return err
	}
	hello := &transport.Hello{NodeID: cfg.ID, ClusterID: n.cluster.get, Check: n.cluster.check, Refused: n.cluster.refusedBy}

	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.BindAddr, err)
	}
	handshakes := transport.NewHandshakeLimit(cfg.Limits.MaxHandshakeRatePerSource, cfg.Limits.MaxHandshakeRate)
	handshakes.Known = n.known.has // the cluster's nodes: never starved by outsiders
	n.mux = transport.NewMux(ln, transport.MuxConfig{TLS: n.nodeServerTLS, Hello: hello, Logger: n.log,
		Handshakes: handshakes})
	raftLn := raftConnListener{n.mux.Listen(transport.ProtoRaft), n.raftConnClosed}
	rpcLn := n.mux.Listen(transport.ProtoRPC)

	adv, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
	if err != nil {
		return fmt.Errorf("advertise address: %w", err)
	}
	dialer := &transport.Dialer{TLS: n.nodeClientTLS, Hello: hello, LocalAddr: cfg.AdvertiseAddr, Faults: cfg.Testing.faults()}
	n.stream = transport.NewStreamLayer(raftLn, adv, dialer)
	n.stream.ExpectPeers(n.serversAt)
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  n.stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hclogFor(n.log, "raft-net"),
		// One AppendEntries in flight per follower: no pipeline.
		// hashicorp/raft's pipeline (MaxRPCsInFlight 2, its default) can
		// wedge a follower's replication for good: when the follower
		// answers Success=false (it has a newer term, or is missing the
		// previous entry), pipelineDecode returns and stops reading the
		// unbuffered response channel, and if the send loop then picks a
		// ready trigger over its finish channel, the next send blocks
		// forever. Heartbeats go on, so the follower never campaigns: it
		// just stops receiving entries, and Shutdown waits for the stuck
		// goroutine (hashicorp/raft#612; seen here as a Close that hung
		// for minutes in TestFullRestartKeepsLeases). Synchronous
		// replication still batches every entry proposed meanwhile, and
		// hashicorp/raft#541 measured the pipeline buying little.
		MaxRPCsInFlight: 1,
	})
	// A forwarded request is as large as the client's (Limits).
	maxMsg := max(transport.DefaultMaxMessage, int(cfg.Limits.MaxRequestBytes)+64<<10)
	n.rpc = transport.NewRPCClient(transport.RPCClientConfig{Dialer: dialer, DecodeError: decodeRPCError, MaxMessage: maxMsg})
	n.rpcSrv = transport.NewRPCServer(rpcLn, n.handleRPC, transport.RPCServerConfig{
		EncodeError: encodeRPCError, Logger: n.log.With("component", "node.rpc"), MaxMessage: maxMsg,
	})
	n.goRun("node.rpc", func() { _ = n.rpcSrv.Serve() })

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hclogFor(n.log, "raft")
	rc.HeartbeatTimeout = cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = cfg.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.Timing.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	// The leader loop's group commit turns every Apply blocked on applyCh
	// into one log batch, one fsync and one AppendEntries. BatchApplyCh is
	// left off: its buffered applyCh leaves futures still queued at
	// shutdown unresolved forever (Close hung on one).
	rc.MaxAppendEntries = 512
	// Leadership changes, in order and none lost, for runLeadership. Raft
	// blocks until they are read, so runLeadership never blocks.
	n.leaderNotify = make(chan bool, 8)
	rc.NotifyCh = n.leaderNotify
	n.logs = newLogCache(n.store)
	n.logs.failed = n.onStoreFailure
	n.logs.writes = n.disk
	n.raftTrans = &rejoinTransport{NetworkTransport: n.trans, stop: n.ctx.Done(), mute: n.ownDiskHung}
	n.raft, err = newRaft(rc, n.fsm, n.logs, n.store, snaps, n.raftTrans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.raftp.Store(n.raft)
	// Serve the node port only now: the hello's judge asks Raft whether
	// this node has state.
	n.goRun("transport.mux", func() { _ = n.mux.Serve() })
	return nil
}

// serversAt returns the IDs of the Raft servers the latest configuration
// lists at addr: who a Raft dial to addr may reach (StreamLayer.ExpectPeers).
func (n *Node) serversAt(addr string) []string {
	r := n.raftp.Load()
	if r == nil {
		return nil
	}
	f := r.GetConfiguration() // a copy of the latest, without the main loop
	if f.Error() != nil {
		return nil
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		if string(s.Address) == addr {
			ids = append(ids, string(s.ID))
		}
	}
	return ids
}

// newRaft is raft.NewRaft, with a panic while it loads the log and
// snapshots from disk (damaged state raft does not check) turned into an
// error that names the data dir.
func newRaft(rc *raft.Config, f raft.FSM, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore, trans raft.Transport) (r *raft.Raft, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("loading the Raft state failed: %v: the data dir is damaged; restore it from a copy, or empty it to join again as a new node", p)
		}
	}()
	return raft.NewRaft(rc, f, logs, stable, snaps, trans)
}

// onFatal stops the node when the log holds an entry this version cannot
// apply (written by a newer version, or damaged on disk) and so could
// diverge from its peers. It runs on Raft's FSM goroutine, right after the
// FSM refused the entry (the FSM applies nothing after it, so no later
// grant can be served from this replica): from here on every request is
// refused, the leader state (if any) is withdrawn by runLeadership, and
// the node shuts down without leaving the cluster (its peers keep its
// place for when it comes back on a version that can read the entry). Err
// and Done report it to the program.
func (n *Node) onFatal(err error) {
	n.stopFatal(err, "cannot apply the Raft log; this node stops serving now to avoid diverging from its peers. "+
		"Restart it on a leasenode version that can read the entry (or with a repaired data dir).")
}

// onStoreFailure stops the node when its log store fails to write (Raft
// calls it on its own goroutines): a follower that cannot store entries
// falls behind for good (raft-wal seals its segment after one failed
// write), while it still answered ready and served ever staler reads; a
// leader steps down, and won elections again only to fail again. A
// supervisor sees the exit and restarts the node, which catches up once
// there is room. Failures while the node is closing are not its disk's.
func (n *Node) onStoreFailure(err error) {
	if n.ctx.Err() != nil {
		return
	}
	what := "the Raft log store failed to write; this node stops serving now rather than fall behind its peers unseen. "
	if errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "no space left") {
		what += "The disk is full: free space in the file system of the data dir (" + n.cfg.DataDir + "), then restart the node; it catches up from its peers."
	} else {
		what += "Check the disk of the data dir (" + n.cfg.DataDir + "), then restart the node; it catches up from its peers."
	}
	n.stopFatal(fmt.Errorf("storing the Raft log: %w", err), what)
}

// stopFatal stops the node for good with err (see onFatal), logging what
// happened and what to do.
func (n *Node) stopFatal(err error, what string) {
	n.fatalOnce.Do(func() {
		err = fmt.Errorf("%w: %w", ErrFatal, err)
		n.fatal.Store(&err)
		close(n.fatalCh)
		n.log.Error("FATAL: "+what, "err", err)
		go func() {
			<-n.startDone
			n.Crash()
		}()
	})
}

// fatalErr returns the error that stopped the node, or nil.
func (n *Node) fatalErr() error {
	if p := n.fatal.Load(); p != nil {
		return *p
	}
	return nil
}

// serviceErr returns why this node serves no requests at all (closed, or
// stopped by a fatal entry), or nil.
func (n *Node) serviceErr() error {
	if err := n.fatalErr(); err != nil {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	if n.ctx.Err() != nil {
		return ErrClosed
	}
	return nil
}

// Done is closed once the node has stopped: after Close or Crash, or on
// its own after a fatal error (see Err).
func (n *Node) Done() <-chan struct{} { return n.down }

// Err returns the error that stopped the node on its own (it matches
// ErrFatal), or nil.
func (n *Node) Err() error { return n.fatalErr() }

// ID returns the node's ID.
func (n *Node) ID() string { return n.cfg.ID }

// APIAddr returns the address the client API listens on, or "" if the node
// serves none.
func (n *Node) APIAddr() string { return n.apiAddr }

// RaftAddr returns the advertised Raft and node-RPC address.
func (n *Node) RaftAddr() string { return n.cfg.AdvertiseAddr }

// IsLeader reports whether this node is the leader and serving.
func (n *Node) IsLeader() bool { return n.serving() != nil }

// serving returns this term's leader state if this node serves as leader
// now, else nil. The state is published for a whole term of Raft
// leadership and withdrawn when hashicorp/raft's leader loop ends; a
// leader whose own log write hangs is stuck in that loop, and kept it
// while the followers it stopped replicating to elected another leader:
// it went on answering (reads waited for a VerifyLeader its loop never
// handled, past their callers' deadlines; status said it served). So it
// also serves only while Raft says it leads and its own disk is not
// found hung (invariants commit-or-say, own-disk-says).
func (n *Node) serving() *leaderState {
	ls := n.lead.Load()
	if ls == nil || ls.ctx.Err() != nil || n.raft != nil && n.raft.State() != raft.Leader || n.ownDiskHung() {
		return nil
	}
	return ls
}

// FSM returns the node's state machine, for read-only inspection (tests,
// metrics). Never apply to it directly.
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// Raft returns the underlying Raft instance for inspection and metrics.
// Changing its configuration behind the node's back is unsupported.
func (n *Node) Raft() *raft.Raft { return n.raft }

// notifyChange wakes everyone waiting for a leadership or serving change.
func (n *Node) notifyChange() {
	n.changeMu.Lock()
	close(n.changed)
	n.changed = make(chan struct{})
	n.changeMu.Unlock()
}

func (n *Node) changes() <-chan struct{} {
	n.changeMu.Lock()
	defer n.changeMu.Unlock()
	return n.changed
}

// Close stops the node gracefully and releases every resource: it stops
// serving the API and, if it leads, hands leadership to another voter
// first. The node stays a member of the cluster (a voter stays a voter),
// as for a restart or an upgrade; with Config.LeaveOnClose it leaves the
// cluster as Leave does. It is idempotent; ctx bounds the graceful part.
func (n *Node) Close(ctx context.Context) error {
	mode := stopStay
	if n.cfg.LeaveOnClose {
		mode = stopLeave
	}
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(ctx, mode) })
	return n.closeErr
}

// Leave removes this node from the cluster for good and closes it:
// announce the leave in gossip, hand leadership over (if leader), have the
// leader remove it from the Raft configuration (retried until the leader
// confirms, bounded by ctx), leave gossip, then close as Close does. Use it
// when a node is retired or replaced, not for a restart: the cluster then
// runs with one voter fewer until the leader promotes a spare.
func (n *Node) Leave(ctx context.Context) error {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(ctx, stopLeave) })
	return n.closeErr
}

// Crash stops the node the way a crashed process stops: no leadership
// transfer, no gossip leave, connections cut. What was committed stays on
// disk. For tests and chaos harnesses; programs call Close.
func (n *Node) Crash() {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(context.Background(), stopCrash) })
}

// How a node stops.
type stopMode int

const (
	stopCrash stopMode = iota // no goodbyes
	stopStay                  // graceful; stays a member
	stopLeave                 // graceful; leaves the cluster
)

func (n *Node) shutdown(ctx context.Context, mode stopMode) error {
	var errs []error
	if mode == stopCrash {
		n.cancel()
		if n.apiLn != nil {
			n.api.Close()
		}
	}
	// The API drains (for up to a second) while the node hands over:
	// an idle HTTP/2 connection (a lease.Client's watches and waits,
	// h2c or TLS) holds Shutdown for its GOAWAY's second, and a leader
	// that waited for it before handing over served nobody for that
	// second (TestRollingRestartKeepsLeasesAndLeader: 1.0-1.1 s without
	// a serving leader, 12-35 ms before watches went over h2c).
	apiDone := make(chan struct{})
	if n.api != nil && mode != stopCrash {
		n.stopStopping() // watch streams end, saying why
		go func() {
			defer close(apiDone)
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := n.api.Shutdown(sctx); err != nil {
				n.api.Close()
			}
		}()
	} else {
		close(apiDone)
	}
	timeout := time.Second // for each gossip step of a graceful leave
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl)/2, 0))
	}
	if n.ml != nil && mode == stopLeave {
		n.announceLeave(timeout)
	}
	if n.raft != nil && mode != stopCrash && n.ctx.Err() == nil {
		n.handOver()
	}
	if n.raft != nil && mode == stopLeave && n.ctx.Err() == nil {
		n.leaveRaft(ctx)
	}
	if n.ml != nil && mode == stopLeave {
		n.leaveGossip(timeout)
	}
	<-apiDone // bounded: Shutdown's second, then Close
	n.cancel()
	if n.raft != nil {
		// Shutdown signals Raft's goroutines; closing the transport before
		// waiting for them cuts the connections they may be blocked on (a
		// stalled peer would otherwise hold them until the RPC timeout),
		// and lets peers see at once that this node is gone.
		f := n.raft.Shutdown()
		n.trans.Close()
		if err := f.Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		close(n.raftDown)
	}
	if n.ml != nil {
		n.ml.Shutdown()
	}
	if n.rpcSrv != nil {
		n.rpcSrv.Close()
	}
	if n.rpc != nil {
		n.rpc.Close()
	}
	if n.trans != nil {
		n.trans.Close()
		// Raft serves incoming RPCs on the transport's goroutines, which
		// write the stable store: they must be done before it closes.
		if !n.stream.Drain(5 * time.Second) {
			n.log.Warn("Raft connections still being served after 5 s; closing the store anyway")
		}
	}
	if n.mux != nil {
		n.mux.Close()
	}
	n.hub.close()
	n.goMu.Lock()
	n.goStopped = true
	n.goMu.Unlock()
	n.wg.Wait()
	if n.walDir != "" && n.raft != nil && mode != stopCrash {
		if idx := min(n.raft.CommitIndex(), n.raft.LastIndex()); idx > 0 {
			if err := writeCommitMark(n.walDir, idx); err != nil {
				n.log.Warn("recording the committed index", "err", err)
			}
		}
	}
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
	}
	n.log.Info("node closed")
	close(n.down)
	return errors.Join(errs...)
}

// handOver transfers leadership to another voter if this node leads and
// one exists, so a graceful stop costs the cluster no election timeout.
func (n *Node) handOver() {
	if n.raft.State() != raft.Leader {
		return
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	others := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != raft.ServerID(n.cfg.ID) {
			others++
		}
	}
	if others == 0 {
		return // a single voter has nobody to hand over to
	}
	if err := n.wait(n.raft.LeadershipTransfer()); err != nil {
		n.log.Warn("leadership transfer on close failed; the others elect a leader after the heartbeat timeout", "err", err)
	}
}
