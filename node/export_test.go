package node

import (
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

// Transport is the node's Raft transport.
func (n *Node) Transport() raft.Transport { return n.trans }

// Withdraw proposes the withdrawal of acquire reqID of holder for key, as
// a leader whose proposal of it in epoch lost its outcome would.
func (n *Node) Withdraw(key, holder string, reqID, epoch uint64) {
	n.withdraw(&pb.AcquireRequest{Key: key, Holder: holder, RequestId: reqID}, epoch)
}

// MinReplayOps is the fewest lease operations applied after a snapshot
// that make the node take the next one (compaction.go).
const MinReplayOps = minReplayOps
