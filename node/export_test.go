package node

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/leasenode/leasenode/transport/pb"
)

// MethodLeave is the node-RPC method of a graceful leave, for tests that
// play a node asking the leader to remove someone.
const MethodLeave = methodLeave

// DecodeRPCError turns a node-RPC error payload back into node errors.
var DecodeRPCError = decodeRPCError

// EarlyCampaigns is how often this node shortened its heartbeat timeout
// because the leader's process was gone (failover.go).
func (n *Node) EarlyCampaigns() int64 { return n.earlyCampaigns.Load() }

// CampaignRank is this follower's place in the campaign order after the
// death of leader dead (failover.go).
func (n *Node) CampaignRank(dead string) (int, bool) { return n.campaignRank(dead, time.Second) }

// StopGossip stops this node's gossip only: to its peers it looks dead,
// while its Raft and node RPC go on.
func (n *Node) StopGossip() { n.ml.Shutdown() }

// KeptAnswering counts the reconcile passes of this leader that kept a
// server gossip called dead because it answered over node RPC.
func (n *Node) KeptAnswering() int64 { return n.keptAnswering.Load() }

// Transport is the node's Raft transport.
func (n *Node) Transport() raft.Transport { return n.trans }

// Withdraw proposes the withdrawal of acquire reqID of holder for key, as
// a leader whose proposal of it in epoch, at Raft index (0: unknown), lost
// its outcome would.
func (n *Node) Withdraw(key, holder string, reqID, epoch, index uint64) {
	n.withdraw(&pb.AcquireRequest{Key: key, Holder: holder, RequestId: reqID}, epoch, index)
}

// Withdrawals is how many withdrawals this node started, and how many
// lost outcomes and withdrawals are still being settled.
func (n *Node) Withdrawals() (started, pending int64) {
	return n.withdrawn.Load(), n.lostPending.Load() + int64(len(n.withdrawals))
}

// MinReplayOps is the fewest lease operations applied after a snapshot
// that make the node take the next one (compaction.go).
const MinReplayOps = minReplayOps

// FailLogWrites makes every write of n's Raft log store fail with err, as
// a full disk does.
func (n *Node) FailLogWrites(err error) { n.logs.fault.Store(&err) }

// StallLogWrites makes every write of n's Raft log store block, as a hung
// disk does, until release is called (idempotent).
func (n *Node) StallLogWrites() (release func()) {
	ch := make(chan struct{})
	n.logs.stall.Store(&ch)
	var once sync.Once
	return func() {
		once.Do(func() {
			n.logs.stall.Store(nil)
			close(ch)
		})
	}
}

// LogWritesStalled counts n's Raft log writes blocked by StallLogWrites.
func (n *Node) LogWritesStalled() int32 { return n.logs.stalled.Load() }

// LogEntrySize is the size of the data of n's Raft log entry at index.
func (n *Node) LogEntrySize(index uint64) (int, error) {
	var l raft.Log
	if err := n.logs.GetLog(index, &l); err != nil {
		return 0, err
	}
	return len(l.Data), nil
}

// GossipStreamsRefused is how many inbound gossip streams n closed at its
// limits: at once for too many open (gossip_max_streams and _per_ip), and
// after reading too much of one (gossip_stream_max_bytes).
func (n *Node) GossipStreamsRefused() (atOnce, tooLong int64) {
	return n.gossipNet.refused.Load(), n.gossipNet.tooLong.Load()
}

// GossipStreamMaxBytes is the most a node reads of an inbound gossip
// stream.
const GossipStreamMaxBytes = gossipStreamMaxBytes

// Bounds of the gossip streams from addresses that are no known node's.
const (
	GossipOutsiderStreamMaxBytes = gossipOutsiderStreamMaxBytes
	GossipOutsiderBytesPerSecond = gossipOutsiderBytesPerSecond
	GossipOutsiderBurst          = gossipOutsiderBurst
)

// GossipOutsiderBytesRead is how many bytes n read of inbound gossip
// streams from addresses that are no known node's.
func (n *Node) GossipOutsiderBytesRead() int64 { return n.gossipNet.outsiderRead.Load() }

// GossipStreamsOpen is how many inbound gossip streams n holds open.
func (n *Node) GossipStreamsOpen() int {
	n.gossipNet.mu.Lock()
	defer n.gossipNet.mu.Unlock()
	return len(n.gossipNet.open)
}

// FrameBurst is the frames an API connection may send at once under l
// (the frame budget's bucket).
func FrameBurst(l Limits) int {
	l = l.withDefaults(DefaultTiming())
	return int(newFrameBudget(l.MaxFrameRate, l.MaxStreams, nil).burst)
}

// WaitsToBootstrap reports whether this node still waits to decide
// between bootstrapping a cluster and joining one (BootstrapExpect).
func (n *Node) WaitsToBootstrap() bool {
	n.cluster.mu.Lock()
	defer n.cluster.mu.Unlock()
	return n.cluster.waiting
}

// LargeBodySources counts the sources (/24, /64) whose large request
// bodies hold or wait for their turn (bodyGate).
func (n *Node) LargeBodySources() int {
	n.bigBodies.mu.Lock()
	defer n.bigBodies.mu.Unlock()
	return len(n.bigBodies.srcs)
}

// LargeBodyRoomHeld reports the bytes of room the node's large request
// bodies hold (bodyGate).
func (n *Node) LargeBodyRoomHeld() int64 {
	n.bigBodies.mu.Lock()
	defer n.bigBodies.mu.Unlock()
	return n.bigBodies.held
}

// SetLargeBodyBytes sets the bytes of large request bodies the node
// holds at once (maxLargeBodyBytes), before any request is served.
func (n *Node) SetLargeBodyBytes(b int64) {
	n.bigBodies.mu.Lock()
	defer n.bigBodies.mu.Unlock()
	n.bigBodies.budget = b
}

// APIConns counts n's open client API connections, and of them those
// idle (or not yet past their first request) and those busy.
func (n *Node) APIConns() (open, idle, busy int) {
	l := n.apiConn
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.open {
		if c.idleSince.IsZero() {
			busy++
		} else {
			idle++
		}
	}
	return len(l.open), idle, busy
}

// H2StreamWindow and H2ConnWindow are the client API's HTTP/2
// flow-control windows: the most of a request body, and of a
// connection's, read before a handler reads it.
const H2StreamWindow, H2ConnWindow = h2StreamWindow, h2ConnWindow

// APIConnsOf counts n's open client API connections of source prefix
// (transport.SourcePrefix with HandshakeV4Bits).
func (n *Node) APIConnsOf(prefix string) int {
	l := n.apiConn
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bySource[prefix]
}

// ReplyShareBytes is the most of the room for replies held unsent one
// client source may hold (reply-room).
const ReplyShareBytes = replyShareBytes

// RepliesHeld is the bytes of replies this node holds unsent, as its
// room counts them (reply-room).
func (n *Node) RepliesHeld() int64 {
	n.replies.mu.Lock()
	defer n.replies.mu.Unlock()
	return n.replies.held
}

// PendingBodies is how many requests wait for their bodies (pending-bodies).
func (n *Node) PendingBodies() int {
	n.pending.mu.Lock()
	defer n.pending.mu.Unlock()
	return n.pending.n
}
