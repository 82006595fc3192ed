package node

import (
	"errors"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// minTrailingLogs is the fewest entries kept after a snapshot, however
// large they are.
const minTrailingLogs = 64

// Replay bound: a restarted node restores its latest snapshot and then
// applies every entry after it before it has caught up (and, should it
// win an election, before its Barrier lets it serve). Applying an extend
// costs about as much per lease as restoring one, so the node snapshots
// once the operations applied since the last snapshot reach a quarter of
// the records and marks the state holds (replayPerState), or
// minReplayOps if that is more: a restart replays at most about a
// quarter of a restore's work. The price is a snapshot per quarter of
// the state's worth of operations: with a million leases kept alive every
// 40 s, one every 10 s on each node, which stalls its applying for about
// 70 ms (the encoding, BenchmarkSnapshot1M) and writes about 48 MB.
const (
	replayPerState = 4 // snapshot after state/replayPerState operations
	minReplayOps   = 1 << 16
)

// runCompaction bounds the Raft log by bytes (Config.LogBytes) and a
// restart's replay by work. Raft snapshots and truncates by entry counts
// only (SnapshotThreshold, TrailingLogs), which suits small entries; but
// one batched extend of 20,000 leases is half a megabyte, and 10,240
// trailing entries of that size would keep gigabytes; and a log of
// LogBytes of extends takes a restarted node many seconds to apply again
// (after a 10-minute soak of a million leases: 1,100 entries, 4.5 M lease
// extends, 19 s). Every second this loop looks at what was applied since
// the last snapshot. Once its bytes reach LogBytes or its operations
// replayBound, it takes a snapshot, and first sets TrailingLogs so that
// the entries kept after the snapshot also stay near LogBytes.
func (n *Node) runCompaction() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	log := n.log.With("component", "node.compaction")
	baseBytes, baseOps, baseIndex := n.fsm.AppliedBytes(), n.fsm.AppliedOps(), n.raft.AppliedIndex()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
		bytes, ops, index := n.fsm.AppliedBytes(), n.fsm.AppliedOps(), n.raft.AppliedIndex()
		if snap := lastSnapshotIndex(n.raft); snap > baseIndex {
			// Raft snapshotted by count: start counting afresh.
			baseBytes, baseOps, baseIndex = bytes, ops, snap
		}
		if bytes-baseBytes < n.cfg.LogBytes && ops-baseOps < replayBound(n.fsm.Stats()) || index <= baseIndex {
			continue
		}
		// Whichever bound was reached, the entries kept after this
		// snapshot stay near LogBytes.
		avg := (bytes - baseBytes) / (index - baseIndex)
		trailing := min(n.cfg.TrailingLogs, max(minTrailingLogs, n.cfg.LogBytes/max(avg, 1)))
		if rc := n.raft.ReloadableConfig(); rc.TrailingLogs != trailing &&
			n.reloadRaft(func(rc *raft.ReloadableConfig) { rc.TrailingLogs = trailing }) {
			log.Info("trailing logs set for the entry size", "trailing", trailing, "avg_entry_bytes", avg)
		}
		err := n.wait(n.raft.Snapshot())
		switch {
		case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
			// The snapshot may reach past index (entries applied since
			// the tick began): counted from here, those count twice, a
			// snapshot a little early. Taken for one of Raft's own by
			// count (above), the next tick would count afresh from then,
			// and the operations applied meanwhile not at all: a node
			// applying fast skipped a whole round's snapshot
			// (TestReplayBoundedByWork, beside two busy loops).
			baseBytes, baseOps, baseIndex = bytes, ops, max(index, lastSnapshotIndex(n.raft))
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default: // e.g. a snapshot already running: try again next tick
			log.Debug("compaction snapshot", "err", err)
		}
	}
}

// replayBound is how many operations may be applied after a snapshot of
// a state like st before the node takes the next one.
func replayBound(st fsm.Stats) uint64 {
	return max(minReplayOps, uint64(st.Held+st.Delayed+st.Marks)/replayPerState)
}

// lastSnapshotIndex is the index of Raft's latest snapshot.
func lastSnapshotIndex(r *raft.Raft) uint64 {
	i, _ := strconv.ParseUint(r.Stats()["last_snapshot_index"], 10, 64)
	return i
}
