package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// Backup captures the whole lease state for a backup, as a consistent read:
// on the leader, after an entry of its own committed, so the backup holds
// every write acknowledged before the call. That entry (an Expire) also
// brings the state's clock to the leader's now: the state's clock moves
// only with entries, and on a quiet cluster its last one may be minutes
// old, which a restore would count as time the leases still had. Other
// nodes answer a *LeaderError naming the leader. Write the result with
// WriteTo; Restore turns it into the data directory of a new cluster's
// first node.
func (n *Node) Backup(ctx context.Context) (*fsm.Backup, error) {
	ls := n.leader(ctx)
	if ls == nil {
		return nil, n.notLeaderErr()
	}
	if _, err := n.apply(ctx, ls.stamp(), fsm.Expire{}); err != nil {
		return nil, err
	}
	return n.fsm.Backup(), nil
}

// DefaultRestoreIndexGap is how far Restore moves the Raft index past the
// backup's by default: a billion entries, more than any cluster commits
// between two backups (days at full speed).
const DefaultRestoreIndexGap = 1_000_000_000

// Restore prepares cfg.DataDir, which must hold no node state, so that
// Start(ctx, cfg) runs the first node of a new cluster with the leases of
// backup: a single voter (cfg.ID at cfg.AdvertiseAddr) that elects itself,
// with a new random cluster id (ClusterIDFile); start the other nodes with
// Join, empty data dirs and without BootstrapExpect, and the leader adds
// them. It returns the stats of the restored state.
//
// What a restore keeps safe:
//   - Fencing tokens stay monotonic: the new cluster's Raft index starts
//     indexGap (0: DefaultRestoreIndexGap) past the backup's, so its grants
//     carry tokens above any the old cluster granted after the backup.
//   - Leases in the backup come back with their holders and tokens, each
//     with the time it had left when the backup was taken, counted from
//     the new leader's promote (as at any leader change), so their holders
//     keep them by extending as usual.
//
// What it cannot know: leases granted after the backup was taken. Their
// holders learn at their next extend that the lease is gone, but until
// then they may still believe they hold it, so serve from a restore only
// after the old cluster has been down for longer than the longest TTL in
// use (fencing tokens protect resources either way).
func Restore(cfg Config, backup io.Reader, indexGap uint64) (fsm.Stats, error) {
	if err := cfg.Validate(); err != nil {
		return fsm.Stats{}, fmt.Errorf("node config: %w", err)
	}
	cfg = cfg.withDefaults()
	if indexGap == 0 {
		indexGap = DefaultRestoreIndexGap
	}
	f := fsm.New(fsm.Config{})
	if err := f.Restore(io.NopCloser(backup)); err != nil {
		return fsm.Stats{}, fmt.Errorf("read backup: %w", err)
	}
	st := f.Stats()
	if st.Applied > 1<<62 || indexGap > 1<<62 {
		return fsm.Stats{}, fmt.Errorf("backup index %d or index gap %d above 2^62", st.Applied, indexGap)
	}
	// The new Raft log starts right after index, in a term above the
	// backup's epoch, so the first leader's Promote is newer than it.
	index, term := st.Applied+indexGap, max(st.Epoch, 1)
	f.Apply(&raft.Log{Index: index, Term: term, Type: raft.LogNoop})
	st = f.Stats()

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return st, fmt.Errorf("data dir: %w", err)
	}
	// A restore makes a new node's data dir. One that a node has used is
	// refused at once, before a store is opened: a running agent holds
	// its lock, and the store's open would wait for it for ever.
	if owner, err := dataDirOwner(cfg.DataDir); err != nil {
		return st, err
	} else if owner != "" {
		return st, fmt.Errorf("data dir %s already holds the state of node %s (stop that node if it runs); restore into an empty data dir", cfg.DataDir, owner)
	}
	kind, err := storeKind(cfg.DataDir, cfg.LogStore)
	if err != nil {
		return st, err
	}
	if err := checkDataDir(cfg.DataDir, kind); err != nil {
		return st, fmt.Errorf("%w; restore into an empty data dir", err)
	}
	store, err := openStore(cfg.DataDir, kind, false, cfg.Logger)
	if err != nil {
		return st, err
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStore(cfg.DataDir, 2, io.Discard)
	if err != nil {
		return st, fmt.Errorf("snapshot store: %w", err)
	}
	if has, err := raft.HasExistingState(store, store, snaps); err != nil {
		return st, fmt.Errorf("check data dir: %w", err)
	} else if has {
		return st, fmt.Errorf("data dir %s already holds a node's state; restore into an empty one", cfg.DataDir)
	}
	if id, err := readClusterID(cfg.DataDir); err != nil || id != "" {
		return st, fmt.Errorf("data dir %s already belongs to cluster %q (%v); restore into an empty one", cfg.DataDir, id, err)
	}
	conf := raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(cfg.ID), Address: raft.ServerAddress(cfg.AdvertiseAddr),
	}}}
	_, trans := raft.NewInmemTransport("") // only encodes the peer list of the snapshot's metadata
	defer trans.Close()
	sink, err := snaps.Create(1, index, term, conf, index, trans)
	if err != nil {
		return st, fmt.Errorf("create snapshot: %w", err)
	}
	if _, err := f.Backup().WriteTo(sink); err != nil {
		sink.Cancel()
		return st, fmt.Errorf("write snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return st, fmt.Errorf("write snapshot: %w", err)
	}
	// Raft's first election then runs in term+1.
	if err := store.SetUint64([]byte("CurrentTerm"), term); err != nil {
		return st, fmt.Errorf("write raft term: %w", err)
	}
	// A restore founds a new cluster: a new id, so that no node of the
	// old cluster (or another restore of the same backup) joins it.
	if err := writeClusterID(cfg.DataDir, newClusterID()); err != nil {
		return st, err
	}
	if err := checkNodeID(cfg.DataDir, cfg.ID); err != nil {
		return st, err
	}
	return st, nil
}

// ClusterID returns the id of the cluster whose state dataDir holds: ""
// while the directory has none (a new node, or one made by a version
// without cluster ids).
func ClusterID(dataDir string) (string, error) { return readClusterID(dataDir) }

// BackupPath is where the API port serves backups: GET it for the lease
// state in the snapshot format (curl -L follows a follower's redirect to
// the leader; the auth token applies).
const BackupPath = "/v1/backup"

// Response headers of BackupPath describing the backup.
const (
	HeaderBackupIndex  = "Leasenode-Backup-Index"
	HeaderBackupEpoch  = "Leasenode-Backup-Epoch"
	HeaderBackupLeases = "Leasenode-Backup-Leases"
)

// maxBackups is how many backups a node serves at once: each holds an
// encoded copy of the state (about 50 bytes a lease) until its reader has
// read it all, so slow readers could otherwise hold any number of copies.
// backupWriteTimeout bounds how long one may take to read it.
const (
	maxBackups         = 2
	backupWriteTimeout = 10 * time.Minute
)

// serveBackup serves BackupPath (behind guard, which checks the token).
// A follower redirects to the leader.
func (n *Node) serveBackup(w http.ResponseWriter, r *http.Request) {
	select {
	case n.backups <- struct{}{}:
		defer func() { <-n.backups }()
	default:
		w.Header().Set("Retry-After", "10")
		http.Error(w, fmt.Sprintf("%d backups are being read from this node already, its limit (each holds a copy of the state until it is read): retry when one has ended", maxBackups),
			http.StatusTooManyRequests)
		return
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(backupWriteTimeout))
	b, err := n.Backup(r.Context())
	if err != nil {
		var le *LeaderError
		if errors.As(err, &le) && le.LeaderAddr != "" {
			scheme := "http"
			if n.apiTLS != nil {
				scheme = "https"
			}
			http.Redirect(w, r, scheme+"://"+le.LeaderAddr+BackupPath, http.StatusTemporaryRedirect)
			return
		}
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(HeaderBackupIndex, strconv.FormatUint(b.Stats.Applied, 10))
	h.Set(HeaderBackupEpoch, strconv.FormatUint(b.Stats.Epoch, 10))
	h.Set(HeaderBackupLeases, strconv.Itoa(b.Stats.Held+b.Stats.Delayed))
	if _, err := b.WriteTo(w); err != nil {
		n.log.Info("backup not delivered", "err", err)
	}
}
