package node

import (
	"errors"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// minTrailingLogs is the fewest entries kept after a snapshot, however
// large they are.
const minTrailingLogs = 64

// runCompaction bounds the Raft log by bytes (Config.LogBytes). Raft
// snapshots and truncates by entry counts only (SnapshotThreshold,
// TrailingLogs), which suits small entries; but one batched extend of
// 20,000 leases is half a megabyte, and 10,240 trailing entries of that
// size would keep gigabytes. Every second this loop looks at the bytes
// applied since the last snapshot; once they reach LogBytes it sets
// TrailingLogs so that the entries kept after a snapshot also stay near
// LogBytes, then takes a snapshot.
func (n *Node) runCompaction() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	log := n.log.With("component", "node.compaction")
	baseBytes, baseIndex := n.fsm.AppliedBytes(), n.raft.AppliedIndex()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
		bytes, index := n.fsm.AppliedBytes(), n.raft.AppliedIndex()
		if snap := lastSnapshotIndex(n.raft); snap > baseIndex {
			// Raft snapshotted by count: start counting afresh.
			baseBytes, baseIndex = bytes, snap
		}
		if bytes-baseBytes < n.cfg.LogBytes || index <= baseIndex {
			continue
		}
		avg := (bytes - baseBytes) / (index - baseIndex)
		trailing := min(n.cfg.TrailingLogs, max(minTrailingLogs, n.cfg.LogBytes/max(avg, 1)))
		if rc := n.raft.ReloadableConfig(); rc.TrailingLogs != trailing &&
			n.reloadRaft(func(rc *raft.ReloadableConfig) { rc.TrailingLogs = trailing }) {
			log.Info("trailing logs set for the entry size", "trailing", trailing, "avg_entry_bytes", avg)
		}
		err := n.wait(n.raft.Snapshot())
		switch {
		case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
			baseBytes, baseIndex = bytes, index
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default: // e.g. a snapshot already running: try again next tick
			log.Debug("size-triggered snapshot", "err", err)
		}
	}
}

// lastSnapshotIndex is the index of Raft's latest snapshot.
func lastSnapshotIndex(r *raft.Raft) uint64 {
	i, _ := strconv.ParseUint(r.Stats()["last_snapshot_index"], 10, 64)
	return i
}
