package node_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// startFails starts a node on cfg and returns Start's error (failing the
// test if it started).
func startFails(t *testing.T, cfg node.Config) error {
	t.Helper()
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("Start panicked on a damaged data dir: %v", p)
			}
		}()
		var n *node.Node
		n, err = node.Start(context.Background(), cfg)
		if err == nil {
			n.Crash()
			t.Fatal("a node started on a damaged data dir")
		}
	}()
	return err
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Invariant vote-is-never-forgotten, and damaged files stop a node with
// an error naming them, never a panic: a data dir whose vote store
// (raft.db, or wal/wal-meta.db) was truncated or removed (it would start
// as a new node, forgetting its term and vote), damaged bbolt pages, and a
// garbage snapshot meta.json; for both log stores.
func TestDamagedDataDirRefused(t *testing.T) {
	for _, store := range []string{node.LogStoreBolt, node.LogStoreWAL} {
		t.Run(store, func(t *testing.T) { testDamagedDataDir(t, store) })
	}
}

func testDamagedDataDir(t *testing.T, store string) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.SnapshotThreshold = 16
		cfg.TrailingLogs = 8
		cfg.SnapshotInterval = 20 * time.Millisecond
		cfg.LogStore = store
	}})
	_, l := c.Leader()
	for i := range 64 {
		mustGrant(t, l, acq("d"+string(rune('a'+i%26))+string(rune('a'+i/26)), "h", 1, time.Minute))
	}
	fi, _ := c.Follower()
	nodetest.Eventually(t, 10*time.Second, func() error {
		if st := c.Node(fi).Raft().Stats(); st["last_snapshot_index"] == "0" {
			return errors.New("no snapshot yet")
		}
		return nil
	})
	cfg := c.Config(fi)
	cfg.LogStore = "" // the data dir's own kind
	c.Stop(fi)
	name := "raft.db"
	if store == node.LogStoreWAL {
		name = "wal/wal-meta.db"
	}
	db := filepath.Join(cfg.DataDir, name)
	good := filepath.Join(t.TempDir(), "good.db")
	copyFile(t, db, good)

	// Truncated vote store beside snapshots and a cluster id.
	if err := os.Truncate(db, 0); err != nil {
		t.Fatal(err)
	}
	if err := startFails(t, cfg); !strings.Contains(err.Error(), name+" is empty") || !strings.Contains(err.Error(), "vote") {
		t.Fatalf("truncated %s: %v", name, err)
	}
	if store == node.LogStoreWAL {
		// Removed: raft-wal would start afresh and delete the segments.
		os.Remove(db)
		if err := startFails(t, cfg); !strings.Contains(err.Error(), name+" is missing") || !strings.Contains(err.Error(), "wal/ segments") {
			t.Fatalf("removed %s: %v", name, err)
		}
		if segs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "wal", "*.wal")); len(segs) == 0 {
			t.Fatal("the refused start deleted the WAL segments")
		}
	}
	// Damaged bbolt pages: garbage over every page after the two meta
	// pages (garbage over a part of the file could land on free pages,
	// which nothing reads).
	copyFile(t, good, db)
	b, _ := os.ReadFile(db)
	for i := 2 * os.Getpagesize(); i < len(b); i++ {
		b[i] = 0xA5
	}
	os.WriteFile(db, b, 0o600)
	if err := startFails(t, cfg); !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged %s: %v", name, err)
	}
	// A garbage snapshot meta.json.
	copyFile(t, good, db)
	metas, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshots", "*", "meta.json"))
	if len(metas) == 0 {
		t.Fatal("no snapshot on disk")
	}
	orig, _ := os.ReadFile(metas[0])
	os.WriteFile(metas[0], []byte(`{"Version":1,"ID":`), 0o600)
	if err := startFails(t, cfg); !strings.Contains(err.Error(), metas[0]) {
		t.Fatalf("garbage meta.json: %v; want its path named", err)
	}
	os.WriteFile(metas[0], orig, 0o600)

	// The store is chosen when the data dir is new: asking for the other
	// kind, or a dir holding both, is refused with what to do.
	other := cfg
	other.LogStore = node.LogStoreWAL
	if store == node.LogStoreWAL {
		other.LogStore = node.LogStoreBolt
	}
	if err := startFails(t, other); !strings.Contains(err.Error(), "chosen when a data dir is new") {
		t.Fatalf("LogStore %q on a %s data dir: %v", other.LogStore, store, err)
	}
	stray := filepath.Join(cfg.DataDir, "raft.db")
	if store == node.LogStoreBolt {
		stray = filepath.Join(cfg.DataDir, "wal")
	}
	if err := os.Mkdir(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := startFails(t, cfg); !strings.Contains(err.Error(), "holds both") {
		t.Fatalf("raft.db and wal/ in one data dir: %v", err)
	}
	os.Remove(stray)
	// Undamaged, it starts and rejoins.
	c.Restart(fi)
	c.WaitForLeader()
}

// A byte flipped inside a Raft log entry on one replica's disk is caught
// by the entry's checksum when the log is replayed: that replica stops
// (ErrFatal) instead of holding a different key from the others for ever.
// For both log stores (raft-wal checks a checksum only over the last batch
// of its tail segment, when it recovers it).
func TestFlippedLogByteStopsTheReplica(t *testing.T) {
	for _, store := range []string{node.LogStoreBolt, node.LogStoreWAL} {
		t.Run(store, func(t *testing.T) { testFlippedLogByte(t, store) })
	}
}

func testFlippedLogByte(t *testing.T, store string) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) { cfg.LogStore = store }})
	_, l := c.Leader()
	fi, _ := c.Follower()
	// Later batches on the follower too (each waits for the one before to
	// reach it: a lagging follower is sent several entries in one), so
	// that the flipped entry is not in the WAL's last one (whose checksum
	// its recovery checks).
	for _, key := range []string{"flip-me-please-0123456789", "after-a", "after-b", "after-c", "after-d"} {
		mustGrant(t, l, acq(key, "h", 1, time.Minute))
		nodetest.Eventually(t, 10*time.Second, func() error {
			if _, ok := c.Node(fi).FSM().Get(key); !ok {
				return errors.New("not replicated yet")
			}
			return nil
		})
	}
	cfg := c.Config(fi)
	c.Stop(fi)
	files := []string{filepath.Join(cfg.DataDir, "raft.db")}
	if store == node.LogStoreWAL {
		files, _ = filepath.Glob(filepath.Join(cfg.DataDir, "wal", "*.wal"))
	}
	flipped := false
	for _, db := range files {
		b, err := os.ReadFile(db)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("flip-me-please-0123456789")) {
			continue
		}
		// Every copy: bbolt's free pages may keep stale ones. 'f' -> 'g':
		// still a valid key, a different one.
		b = bytes.ReplaceAll(b, []byte("flip-me-please-0123456789"), []byte("glip-me-please-0123456789"))
		if err := os.WriteFile(db, b, 0o600); err != nil {
			t.Fatal(err)
		}
		flipped = true
	}
	if !flipped {
		t.Fatalf("the entry is not in %v", files)
	}
	n, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	select {
	case <-n.Done():
	case <-time.After(15 * time.Second):
		t.Fatalf("a replica replayed a damaged entry and kept running: %v", n.Raft().Stats())
	}
	if !errors.Is(n.Err(), node.ErrFatal) || !strings.Contains(n.Err().Error(), "checksum") {
		t.Fatalf("Err %v, want ErrFatal naming the checksum", n.Err())
	}
	if _, ok := n.FSM().Get("glip-me-please-0123456789"); ok {
		t.Fatal("the damaged entry was applied")
	}
	// The others go on.
	mustGrant(t, l, acq("after-flip", "h", 1, time.Minute))
	if _, err := l.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: "flip-me-please-0123456789"}); err != nil {
		t.Fatal(err)
	}
}

// Invariant committed-never-forgotten: raft-wal reads a damaged last
// batch as a torn write and drops it; when that batch held entries this
// node had seen committed (it acknowledged them), the node refuses to
// start instead of running on having forgotten them.
func TestWALLostCommittedEntriesRefused(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) { cfg.LogStore = node.LogStoreWAL }})
	_, l := c.Leader()
	fi, _ := c.Follower()
	mustGrant(t, l, acq("last-batch-0123456789", "h", 1, time.Minute))
	nodetest.Eventually(t, 10*time.Second, func() error {
		n := c.Node(fi)
		if _, ok := n.FSM().Get("last-batch-0123456789"); !ok || n.Raft().CommitIndex() < n.Raft().LastIndex() {
			return errors.New("not committed on the follower yet")
		}
		return nil
	})
	cfg := c.Config(fi)
	c.Stop(fi) // a graceful stop records the committed index
	segs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "wal", "*.wal"))
	flipped := false
	for _, seg := range segs {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.LastIndex(b, []byte("last-batch-0123456789")); i >= 0 {
			b[i] ^= 0x01
			if err := os.WriteFile(seg, b, 0o600); err != nil {
				t.Fatal(err)
			}
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("the entry is in no WAL segment")
	}
	err := startFails(t, cfg)
	if !strings.Contains(err.Error(), "dropped acknowledged entries") {
		t.Fatalf("a WAL that lost committed entries: %v", err)
	}
}

// Scenario (one-node-per-data-dir): a node is restarted under another ID
// on its data dir and is refused, naming the ID the dir belongs to; a
// data dir made by a version without NodeIDFile adopts the ID it starts
// with.
func TestDataDirKeepsItsNodeID(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1})
	c.WaitForLeader()
	cfg := c.Config(0)
	c.Stop(0)
	if b, err := os.ReadFile(filepath.Join(cfg.DataDir, node.NodeIDFile)); err != nil || string(b) != "n0\n" {
		t.Fatalf("%s holds %q, %v: want the node's ID", node.NodeIDFile, b, err)
	}
	other := cfg
	other.ID = "n5"
	want := "data dir " + cfg.DataDir + " belongs to node n0; start with --id n0, or with an empty --data-dir to join as a new node"
	if err := startFails(t, other); err.Error() != want {
		t.Fatalf("started under another ID: %v\nwant: %s", err, want)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, node.NodeIDFile)); err != nil {
		t.Fatal(err)
	}

	// A data dir of an older version: no NodeIDFile. It takes the ID it
	// is started with, and keeps it.
	if err := os.Remove(filepath.Join(cfg.DataDir, node.NodeIDFile)); err != nil {
		t.Fatal(err)
	}
	c.Restart(0)
	c.WaitForLeader()
	c.Stop(0)
	if b, err := os.ReadFile(filepath.Join(cfg.DataDir, node.NodeIDFile)); err != nil || string(b) != "n0\n" {
		t.Fatalf("%s holds %q, %v after a start without it: want n0", node.NodeIDFile, b, err)
	}
	if err := startFails(t, other); !strings.Contains(err.Error(), "belongs to node n0") {
		t.Fatalf("started under another ID: %v", err)
	}
	c.Restart(0)
}
