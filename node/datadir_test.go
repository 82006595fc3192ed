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
// an error naming them, never a panic: a data dir whose raft.db was
// truncated (it started as a new node, forgetting its term and vote),
// damaged bbolt pages, and a garbage snapshot meta.json.
func TestDamagedDataDirRefused(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.SnapshotThreshold = 16
		cfg.TrailingLogs = 8
		cfg.SnapshotInterval = 20 * time.Millisecond
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
	c.Stop(fi)
	db := filepath.Join(cfg.DataDir, "raft.db")
	good := filepath.Join(t.TempDir(), "raft.db")
	copyFile(t, db, good)

	// Truncated raft.db beside snapshots and a cluster id.
	if err := os.Truncate(db, 0); err != nil {
		t.Fatal(err)
	}
	if err := startFails(t, cfg); !strings.Contains(err.Error(), "raft.db is empty") || !strings.Contains(err.Error(), "vote") {
		t.Fatalf("truncated raft.db: %v", err)
	}
	// Damaged bbolt pages: garbage over the middle of the file.
	copyFile(t, good, db)
	b, _ := os.ReadFile(db)
	for i := len(b) / 3; i < len(b)/3+8192 && i < len(b); i++ {
		b[i] = 0xA5
	}
	os.WriteFile(db, b, 0o600)
	if err := startFails(t, cfg); !strings.Contains(err.Error(), "raft.db") || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged raft.db: %v", err)
	}
	// A garbage snapshot meta.json.
	copyFile(t, good, db)
	metas, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshots", "*", "meta.json"))
	if len(metas) == 0 {
		t.Fatal("no snapshot on disk")
	}
	os.WriteFile(metas[0], []byte(`{"Version":1,"ID":`), 0o600)
	if err := startFails(t, cfg); !strings.Contains(err.Error(), metas[0]) {
		t.Fatalf("garbage meta.json: %v; want its path named", err)
	}
}

// A byte flipped inside a Raft log entry on one replica's disk is caught
// by the entry's checksum when the log is replayed: that replica stops
// (ErrFatal) instead of holding a different key from the others for ever.
func TestFlippedLogByteStopsTheReplica(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	fi, _ := c.Follower()
	mustGrant(t, l, acq("flip-me-please-0123456789", "h", 1, time.Minute))
	nodetest.Eventually(t, 10*time.Second, func() error {
		if _, ok := c.Node(fi).FSM().Get("flip-me-please-0123456789"); !ok {
			return errors.New("not replicated yet")
		}
		return nil
	})
	cfg := c.Config(fi)
	c.Stop(fi)
	db := filepath.Join(cfg.DataDir, "raft.db")
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("flip-me-please-0123456789"))
	if i < 0 {
		t.Fatal("the entry is not in raft.db")
	}
	b[i] ^= 0x01 // 'f' -> 'g': still a valid key, a different one
	if err := os.WriteFile(db, b, 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	select {
	case <-n.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("a replica replayed a damaged entry and kept running")
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
