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
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/transport"
)

// Node is one member of a leasenode cluster. Create it with Start; every
// method is safe for concurrent use.
type Node struct {
	cfg     Config
	started time.Time
	log     *slog.Logger

	fsm   *fsm.FSM
	raft  *raft.Raft
	trans *raft.NetworkTransport
	store *raftboltdb.BoltStore

	mux    *transport.Mux
	rpcSrv *transport.RPCServer
	rpc    *transport.RPCClient

	// Node-port security (trust.go): TLS configurations of the node port
	// (nil: plain TCP) and the API, whether every peer is authenticated,
	// and this node's cluster id with the rules for peers'.
	nodeServerTLS *tls.Config
	nodeClientTLS *tls.Config
	apiTLS        *tls.Config
	authPeers     bool
	cluster       *clusterIdentity
	raftp         atomic.Pointer[raft.Raft] // n.raft once NewRaft returned, for the hello's judge

	ml        *memberlist.Memberlist
	gossip    *gossipDelegate
	members   *memberTable
	rejoining atomic.Bool   // a rejoin attempt is running
	run       string        // random ID of this start, published in gossip
	raftDown  chan struct{} // closed once Raft has shut down; see wait

	api     *http.Server
	apiLn   net.Listener
	apiAddr string // advertised client API address ("" if none)

	// lead is non-nil while this node is the leader and its Promote has
	// applied; every leader-only operation reads it once and uses that
	// epoch's clock and queues.
	lead         atomic.Pointer[leaderState]
	leaderNotify chan bool // raft.Config.NotifyCh

	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced when leadership or serving changes

	hub *watchHub

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
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
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
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
	n := &Node{
		started:       time.Now(),
		cfg:           cfg,
		log:           log,
		changed:       make(chan struct{}),
		run:           strconv.FormatUint(rand.Uint64(), 36),
		raftDown:      make(chan struct{}),
		nodeServerTLS: nodeServer,
		nodeClientTLS: nodeClient,
		apiTLS:        apiTLS,
		authPeers:     nodeServer != nil,
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.hub = newWatchHub()
	n.members = newMemberTable()
	n.fsm = fsm.New(fsm.Config{Events: true, OnFatal: n.onFatal,
		UnsafeSkipRebase: cfg.UnsafeSkipRebase || cfg.UnsafeWallClock})
	if cfg.UnsafeSkipRebase || cfg.UnsafeWallClock || cfg.UnsafeExtendNoCommit || cfg.UnsafeClockRate != 1 {
		n.log.Warn("UNSAFE settings in force: mutual exclusion is NOT guaranteed",
			"clock_rate", cfg.UnsafeClockRate, "skip_rebase", cfg.UnsafeSkipRebase,
			"wall_clock", cfg.UnsafeWallClock, "extend_no_commit", cfg.UnsafeExtendNoCommit)
	}
	defer func() {
		if err != nil {
			n.shutdown(context.Background(), false)
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
	n.log.Info("node started", "raft", cfg.AdvertiseAddr, "gossip", cfg.GossipAdvertiseAddr, "api", n.apiAddr)
	return n, nil
}

// goRun starts a goroutine owned by the node; Close waits for it.
func (n *Node) goRun(name string, f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	_ = name
}

func (n *Node) startRaft() error {
	cfg := n.cfg
	var err error
	n.store, err = raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.DataDir, "raft.db"),
		NoSync:      cfg.NoSync,
		BoltOptions: &bbolt.Options{Timeout: time.Second, NoSync: cfg.NoSync},
	})
	if err != nil {
		return fmt.Errorf("open raft store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hclogFor(n.log, "raft-snapshot"))
	if err != nil {
		return fmt.Errorf("snapshot store: %w", err)
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
	})
	if err != nil {
		return err
	}
	hello := &transport.Hello{NodeID: cfg.ID, ClusterID: n.cluster.get, Check: n.cluster.check, Refused: n.cluster.refusedBy}

	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.BindAddr, err)
	}
	n.mux = transport.NewMux(ln, transport.MuxConfig{TLS: n.nodeServerTLS, Hello: hello, Logger: n.log})
	raftLn := n.mux.Listen(transport.ProtoRaft)
	rpcLn := n.mux.Listen(transport.ProtoRPC)

	adv, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
	if err != nil {
		return fmt.Errorf("advertise address: %w", err)
	}
	dialer := &transport.Dialer{TLS: n.nodeClientTLS, Hello: hello, LocalAddr: cfg.AdvertiseAddr, Faults: cfg.Faults}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  transport.NewStreamLayer(raftLn, adv, dialer),
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hclogFor(n.log, "raft-net"),
	})
	n.rpc = transport.NewRPCClient(transport.RPCClientConfig{Dialer: dialer, DecodeError: decodeRPCError})
	n.rpcSrv = transport.NewRPCServer(rpcLn, n.handleRPC, transport.RPCServerConfig{
		EncodeError: encodeRPCError, Logger: n.log.With("component", "node.rpc"),
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
	n.raft, err = raft.NewRaft(rc, n.fsm, n.store, n.store, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.raftp.Store(n.raft)
	// Serve the node port only now: the hello's judge asks Raft whether
	// this node has state.
	n.goRun("transport.mux", func() { _ = n.mux.Serve() })
	return nil
}

// onFatal stops the node when the log holds an entry this version cannot
// apply without risking divergence from newer replicas.
func (n *Node) onFatal(err error) {
	n.log.Error("FATAL: cannot apply the Raft log; stopping this node to avoid diverging. Upgrade leasenode.", "err", err)
	go n.Close(context.Background())
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.cfg.ID }

// APIAddr returns the address the client API listens on, or "" if the node
// serves none.
func (n *Node) APIAddr() string { return n.apiAddr }

// RaftAddr returns the advertised Raft and node-RPC address.
func (n *Node) RaftAddr() string { return n.cfg.AdvertiseAddr }

// IsLeader reports whether this node is the leader and serving.
func (n *Node) IsLeader() bool { return n.lead.Load() != nil }

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

// Close leaves the cluster gracefully and releases every resource, in this
// order: stop serving the API, announce the leave in gossip, transfer
// leadership (if leader), ask the leader to remove this node from Raft,
// leave gossip, stop background
// loops, shut Raft down, close RPC, the mux and the stores. It is
// idempotent; ctx bounds the graceful part.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(ctx, true) })
	return n.closeErr
}

// Crash stops the node the way a crashed process stops: no leadership
// transfer, no gossip leave, connections cut. What was committed stays on
// disk. For tests and chaos harnesses; programs call Close.
func (n *Node) Crash() {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(context.Background(), false) })
}

func (n *Node) shutdown(ctx context.Context, graceful bool) error {
	var errs []error
	if !graceful {
		n.cancel()
		if n.apiLn != nil {
			n.api.Close()
		}
	}
	if n.api != nil && graceful {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := n.api.Shutdown(sctx); err != nil {
			n.api.Close()
		}
		cancel()
	}
	timeout := time.Second // for each gossip step of a graceful leave
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl)/2, 0))
	}
	if n.ml != nil && graceful {
		n.announceLeave(timeout)
	}
	if n.raft != nil && n.raft.State() == raft.Leader && n.ctx.Err() == nil {
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.log.Info("leadership transfer on close failed", "err", err)
		}
	}
	if n.raft != nil && graceful && n.ctx.Err() == nil {
		n.leaveRaft(ctx)
	}
	if n.ml != nil && graceful {
		n.leaveGossip(timeout)
	}
	n.cancel()
	if n.raft != nil {
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		close(n.raftDown)
	}
	if ls := n.lead.Swap(nil); ls != nil {
		ls.stop(ErrClosed)
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
	}
	if n.mux != nil {
		n.mux.Close()
	}
	n.hub.close()
	n.wg.Wait()
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
	}
	n.log.Info("node closed")
	return errors.Join(errs...)
}
