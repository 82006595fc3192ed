package node

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
)

// commitMarkFile, in the WAL directory, records an index this node knew
// committed (and so had stored and acknowledged), written about once a
// second and at a graceful stop.
const commitMarkFile = "committed-index"

// Invariant committed-never-forgotten: raft-wal reads its tail segment up
// to the first frame it cannot verify and treats the rest as a torn write
// (an append a crash cut short, never acknowledged). That is right for a
// torn write, but a flipped bit in an older frame of the same segment
// would silently drop entries this node had acknowledged, and a node that
// forgets acknowledged entries can help elect a leader without them: a
// committed grant lost, a key granted twice. So a WAL node writes a
// committed index it has seen (committed entries are never truncated by
// Raft), and refuses to start if its log and snapshots no longer reach
// it. (A bit flip within the last second before a crash can still go
// unseen; bolt data dirs need no mark: bbolt never drops data silently,
// and the per-entry checksum stops the node at a damaged entry.) Guarded
// by TestWALLostCommittedEntriesRefused and the adversary suite.

// readCommitMark returns the recorded committed index (0 if none).
func readCommitMark(walDir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(walDir, commitMarkFile))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("%s: %d bytes, want 8", filepath.Join(walDir, commitMarkFile), len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// writeCommitMark records index atomically (write, fsync, rename).
func writeCommitMark(walDir string, index uint64) error {
	path := filepath.Join(walDir, commitMarkFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(binary.BigEndian.AppendUint64(nil, index))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// checkCommitMark refuses a WAL data dir whose log and snapshots end below
// the committed index it recorded.
func checkCommitMark(walDir string, logs raft.LogStore, snaps raft.SnapshotStore) error {
	mark, err := readCommitMark(walDir)
	if err != nil || mark == 0 {
		return err
	}
	have, err := logs.LastIndex()
	if err != nil {
		return err
	}
	if list, err := snaps.List(); err == nil && len(list) > 0 {
		have = max(have, list[0].Index)
	}
	if have < mark {
		return fmt.Errorf("%s: the Raft log ends at index %d, but this node had seen index %d committed: raft-wal dropped "+
			"acknowledged entries (it reads a damaged frame as a torn write). A node that forgets acknowledged entries can "+
			"help lose a committed grant, so it does not start. Empty the data dir to join again as a new node (the "+
			"other nodes have the entries)", walDir, have, mark)
	}
	return nil
}

// runCommitMark records the committed index about once a second while the
// node runs, and once more when it stops.
func (n *Node) runCommitMark(walDir string) {
	var written uint64
	write := func() {
		idx := min(n.raft.CommitIndex(), n.raft.LastIndex())
		if idx <= written {
			return
		}
		if err := writeCommitMark(walDir, idx); err != nil {
			n.log.Warn("recording the committed index", "err", err)
			return
		}
		written = idx
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
			write()
		}
	}
}
