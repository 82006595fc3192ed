package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"github.com/leasenode/leasenode/fsm"
)

// raftDBFile is the raft-boltdb log and stable store (vote, term) in the
// data dir; snapshotsDir holds raft's file snapshots. A raft-wal data dir
// has walDir instead, with its vote and term in walMetaFile.
const (
	raftDBFile   = "raft.db"
	walMetaFile  = "wal-meta.db"
	snapshotsDir = "snapshots"
)

// NodeIDFile is the file in the data directory that holds the ID of the
// node the directory belongs to (one line). Start writes it on the first
// start, and adopts the current ID for a data dir made by a version
// without it.
const NodeIDFile = "node-id"

// checkNodeID refuses to start node id on a data dir that belongs to
// another node, and records id in a data dir that names none yet.
//
// Invariant one-node-per-data-dir: a data dir serves under one node ID
// for its whole life. Raft's state in it (its vote, its log, its place in
// the configuration) is that node's; under another ID the leader would
// take the old server for gone and remove it, while the new one carried
// its vote and log, and status showed the removed ID answering as a
// healthy follower. Guarded by TestDataDirKeepsItsNodeID.
func checkNodeID(dir, id string) error {
	owner, err := nodeIDOwner(dir, id)
	if err != nil || owner != "" {
		return err
	}
	if err := writeIDFile(dir, NodeIDFile, id); err != nil {
		return fmt.Errorf("data dir %s: record node ID: %w", dir, err)
	}
	return nil
}

// nodeIDOwner returns the node ID that dir's NodeIDFile names ("" if it
// names none), or an error if that is not id.
func nodeIDOwner(dir, id string) (string, error) {
	owner, err := dataDirOwner(dir)
	if err == nil && owner != "" && owner != id {
		return "", fmt.Errorf("data dir %s belongs to node %s; start with --id %s, or with an empty --data-dir to join as a new node", dir, owner, owner)
	}
	return owner, err
}

// dataDirFresh reports whether dir exists, and whether it holds nothing
// (or does not exist).
func dataDirFresh(dir string) (existed, fresh bool) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, true
	case err != nil:
		return true, false
	}
	return true, len(entries) == 0
}

// discardDataDir empties dir, which a failed start found empty, and
// removes it if it did not exist before.
func discardDataDir(dir string, existed bool, log *slog.Logger) {
	var err error
	if existed {
		var entries []os.DirEntry
		entries, err = os.ReadDir(dir)
		for _, e := range entries {
			err = errors.Join(err, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	} else {
		err = os.RemoveAll(dir)
	}
	if err != nil {
		log.Warn("a failed start could not remove what it wrote to its data dir, which was empty before it: empty it before starting again", "dir", dir, "err", err)
	}
}

// dataDirOwner returns the node ID that dir's NodeIDFile names, "" if it
// has none.
func dataDirOwner(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, NodeIDFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("data dir %s: %w", dir, err)
	}
	owner := strings.TrimSpace(string(b))
	if len(owner) > 128 {
		return "", fmt.Errorf("data dir %s: %s is %d bytes long: damaged? It names the node the data dir belongs to", dir, NodeIDFile, len(owner))
	}
	return owner, nil
}

// checkDataDir refuses a data dir whose state cannot be trusted, before
// anything opens it. Every refusal names the file and says what to do.
// kind is the log store the dir uses (storeKind).
//
// Invariant vote-is-never-forgotten: a node whose Raft vote and term are
// gone (raft.db or wal/wal-meta.db missing, empty or replaced) while the
// dir shows it was a member (a cluster id, snapshots, WAL segments) is
// refused instead of starting as a new node: a node that forgets its vote
// can vote twice in one term, and two leaders of one term could each
// grant the same key. (raft-wal would also delete segments its missing
// meta store does not list.) Damaged files give an error naming them,
// never a panic. Guarded by TestDamagedDataDirRefused and
// TestDamagedWALRefused.
func checkDataDir(dir, kind string) error {
	db, name := filepath.Join(dir, raftDBFile), raftDBFile
	if kind == LogStoreWAL {
		db, name = filepath.Join(dir, walDir, walMetaFile), walDir+"/"+walMetaFile
	}
	st, err := os.Stat(db)
	switch {
	case err == nil && st.Size() > 0:
		if err := checkBolt(db); err != nil {
			return err
		}
	case err == nil || errors.Is(err, fs.ErrNotExist):
		what := "is missing"
		if err == nil {
			what = "is empty"
		}
		var evidence []string
		if _, err := os.Stat(filepath.Join(dir, ClusterIDFile)); err == nil {
			evidence = append(evidence, ClusterIDFile)
		}
		if snaps, _ := os.ReadDir(filepath.Join(dir, snapshotsDir)); len(snaps) > 0 {
			evidence = append(evidence, snapshotsDir+"/")
		}
		if segs, _ := walSegments(filepath.Join(dir, walDir)); len(segs) > 0 {
			evidence = append(evidence, walDir+"/ segments")
		}
		if len(evidence) > 0 {
			return fmt.Errorf("data dir %s: %s %s but %s shows this node was a cluster member: its Raft vote and term are lost, "+
				"and a node that forgets its vote can vote twice in one term. Restore %s from a copy of this data dir, or, to "+
				"join again as a new node (its leases live on the other nodes), empty the data dir",
				dir, name, what, strings.Join(evidence, " and "), name)
		}
	default:
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	return checkSnapshots(filepath.Join(dir, snapshotsDir))
}

// checkBolt opens the Raft store read-only and walks every page, turning
// bbolt's panics on damaged pages into an error naming the file.
func checkBolt(path string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s is damaged (%v): restore it from a copy of this data dir, or empty the data dir to join again as a new node", path, r)
		}
	}()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("open %s: %w (is another process using this data dir?)", path, err)
	}
	defer db.Close()
	return db.View(func(tx *bbolt.Tx) error {
		for cerr := range tx.Check() {
			if err == nil {
				err = fmt.Errorf("%s is damaged: %v: restore it from a copy of this data dir, or empty the data dir to join again as a new node", path, cerr)
			}
		}
		return err
	})
}

// checkSnapshots reads the metadata of every snapshot raft would consider
// and checks it against its state file; a damaged one is named.
func checkSnapshots(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshots %s: %w", dir, err)
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue // raft ignores these too
		}
		metaPath := filepath.Join(dir, e.Name(), "meta.json")
		b, err := os.ReadFile(metaPath)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", metaPath, err)
		}
		var meta raft.SnapshotMeta
		if err := json.Unmarshal(b, &meta); err != nil {
			return fmt.Errorf("snapshot metadata %s is damaged: %v; remove that snapshot's directory (raft falls back to an older one or the log)", metaPath, err)
		}
		st, err := os.Stat(filepath.Join(dir, e.Name(), "state.bin"))
		switch {
		case err != nil:
			return fmt.Errorf("snapshot %s: %w", e.Name(), err)
		case meta.ID != e.Name() || meta.Index == 0 || meta.Index > fsm.MaxIndex || meta.Term == 0 || meta.Term > fsm.MaxEpoch ||
			meta.Size != st.Size() || meta.Version < raft.SnapshotVersionMin || meta.Version > raft.SnapshotVersionMax:
			return fmt.Errorf("snapshot metadata %s is damaged (id %q, index %d, term %d, size %d for a %d-byte state.bin, version %d); "+
				"remove that snapshot's directory (raft falls back to an older one or the log)",
				metaPath, meta.ID, meta.Index, meta.Term, meta.Size, st.Size(), meta.Version)
		}
	}
	return nil
}
