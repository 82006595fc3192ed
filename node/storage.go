package node

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
	"go.etcd.io/bbolt"
)

// raft-wal's file layer imports coreos/pkg/capnslog (through etcd's
// fileutil), whose init rewires the standard library's log package (no
// flags, output through capnslog: "2006-01-02 15:04:05.000000 I | msg"):
// a program that embeds a node found its own log.Printf lines changed by
// the import. This init runs after it (node imports raft-wal) and puts
// back log's defaults; a program's main sets its own after both.
func init() {
	log.SetFlags(log.LstdFlags)
	log.SetPrefix("")
	log.SetOutput(os.Stderr)
}

// Log store kinds (Config.LogStore).
const (
	// LogStoreWAL is hashicorp/raft-wal: append-only segment files and one
	// fsync per append (what Consul moved to). The default for new data
	// dirs.
	LogStoreWAL = "wal"
	// LogStoreBolt is raft-boltdb/v2 on bbolt: two fsyncs per append (data
	// pages, then the meta page). Data dirs made by earlier versions keep
	// it.
	LogStoreBolt = "boltdb"
)

// walDir holds the raft-wal segments and its meta store (wal-meta.db,
// which also keeps the vote and term) inside the data dir.
const walDir = "wal"

// raftStore is a Raft log and stable store that can be closed.
type raftStore interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

// storeKind says which log store the data dir dir uses: the kind it
// already holds, else want (Config.LogStore), else LogStoreWAL. A data dir
// holding one kind is never opened as the other: its Raft log, vote and
// term live in those files.
func storeKind(dir, want string) (string, error) {
	hasBolt := exists(filepath.Join(dir, raftDBFile))
	hasWAL := exists(filepath.Join(dir, walDir))
	switch {
	case hasBolt && hasWAL:
		return "", fmt.Errorf("data dir %s holds both %s (raft-boltdb) and %s/ (raft-wal): it is unclear which holds this node's Raft log, vote and term; "+
			"keep the one this node last ran on (the other was copied in) or empty the data dir to join again as a new node", dir, raftDBFile, walDir)
	case hasBolt:
		if want == LogStoreWAL {
			return "", fmt.Errorf("data dir %s holds a raft-boltdb store (%s) and LogStore is %q: a store is chosen when a data dir is new. "+
				"Leave LogStore empty to keep using raft-boltdb, or move this node to the WAL by emptying its data dir (it joins again and copies the state from the leader; one node at a time)",
				dir, raftDBFile, LogStoreWAL)
		}
		return LogStoreBolt, nil
	case hasWAL:
		if want == LogStoreBolt {
			return "", fmt.Errorf("data dir %s holds a raft-wal store (%s/) and LogStore is %q: a store is chosen when a data dir is new; leave LogStore empty", dir, walDir, LogStoreBolt)
		}
		return LogStoreWAL, nil
	case want != "":
		return want, nil
	}
	return LogStoreWAL, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// openStore opens the data dir's Raft log and stable store of the given
// kind (storeKind). noSync skips fsync (UNSAFE).
func openStore(dir, kind string, noSync bool, log *slog.Logger) (raftStore, error) {
	switch kind {
	case LogStoreBolt:
		s, err := raftboltdb.New(raftboltdb.Options{
			Path:        filepath.Join(dir, raftDBFile),
			NoSync:      noSync,
			BoltOptions: &bbolt.Options{Timeout: time.Second, NoSync: noSync},
		})
		if err != nil {
			return nil, fmt.Errorf("open raft store %s: %w", filepath.Join(dir, raftDBFile), err)
		}
		return s, nil
	case LogStoreWAL:
		return openWAL(filepath.Join(dir, walDir), noSync, log)
	}
	return nil, fmt.Errorf("unknown log store %q (want %q or %q)", kind, LogStoreWAL, LogStoreBolt)
}

// openWAL opens (or creates) the raft-wal store in dir. raft-wal recovers
// a torn tail itself: an append is one write of its frames and a commit
// frame whose checksum covers the batch, then one fsync; at open the tail
// segment is read up to the last whole, valid commit, and anything after
// it (an append cut by a crash, never acknowledged) is ignored and
// overwritten. A panic while reading damaged files is turned into an
// error naming the directory.
func openWAL(dir string, noSync bool, log *slog.Logger) (_ raftStore, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("raft-wal dir: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s is damaged (%v): restore the data dir from a copy, or empty it to join again as a new node", dir, p)
		}
	}()
	var vfs types.VFS = walfs.New()
	if noSync {
		vfs = noSyncVFS{vfs}
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(dir,
		wal.WithLogger(hclogFor(log, "raft-wal")),
		wal.WithSegmentFiler(segment.NewFiler(dir, vfs)),
		wal.WithMetaStore(meta),
	)
	if err != nil {
		meta.Close()
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("open raft-wal %s: %w: the disk is full (a log segment takes 64 MiB): free space, then start again", dir, err)
		}
		return nil, fmt.Errorf("open raft-wal %s: %w: if the files are damaged, restore the data dir from a copy, or empty it to join again as a new node", dir, err)
	}
	// raft-wal v0.4.2 or later: v0.4.0 marked a segment sealed on a tail
	// truncation without writing its index, so a node that had truncated
	// its log's tail (routine after an election) could not start again
	// ("sealed segment has no index block", hashicorp/raft-wal#31, seen in
	// our first campaign), and its Close left wal-meta.db open.
	return w, nil
}

// noSyncVFS is raft-wal's file system without fsync of segment files
// (Config.NoSync, UNSAFE).
type noSyncVFS struct{ types.VFS }

func (v noSyncVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := v.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

func (v noSyncVFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := v.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

type noSyncFile struct{ types.WritableFile }

func (noSyncFile) Sync() error { return nil }

// walSegments lists the segment files in a raft-wal dir.
func walSegments(dir string) ([]string, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return names, nil
}

// logCache keeps the most recent entries in memory in front of the log
// store. The leader reads every entry back to replicate it
// (setupAppendEntries) and followers read each one to apply it; raft-wal
// serves those with a pread each (8.6% of a busy leader's CPU in a
// profile of `leasenode bench --clients 32`). raft.LogCache caps entries
// by count only, and a batched extend can be half a megabyte, so this one
// keeps no entry above logCacheMaxEntry: memory stays within
// logCacheEntries × logCacheMaxEntry (16 MiB), about 100 KiB for
// acquires and releases.
//
// It also remembers when each of the most recent entries was stored here
// (received from the leader, or appended as leader), for the clock origin
// of this node's next epoch (see lastStampOfEarlierTerm).
type logCache struct {
	raft.LogStore
	mu    sync.RWMutex
	cache []*raft.Log
	recv  []received
	// failed, if set, is told of every write the store refused.
	failed func(error)
	// fault, if set, is returned by every write instead of storing (tests:
	// a full disk).
	fault atomic.Pointer[error]
	// stall, if set, blocks every write until it is closed (tests: a hung
	// disk, whose writes neither finish nor fail).
	stall atomic.Pointer[chan struct{}]
	// stalled counts the writes blocked by stall.
	stalled atomic.Int32
	// writes, if set, times every StoreLogs (does this node's disk
	// hang?): Raft's main goroutine makes them, and applies nothing
	// while one waits. DeleteRange (compaction, in the snapshot
	// goroutine) holds up nothing and is not timed.
	writes *writeWatch
}

// received is when this node stored the entry at index, of term; stamped
// if it is a command (every command carries its leader's Stamp; Raft's
// own entries, its noops, barriers and configurations, carry none).
type received struct {
	index, term uint64
	at          time.Time
	stamped     bool
}

const (
	logCacheEntries  = 256
	logCacheMaxEntry = 64 << 10
)

func newLogCache(s raft.LogStore) *logCache {
	return &logCache{LogStore: s, cache: make([]*raft.Log, logCacheEntries), recv: make([]received, logCacheEntries)}
}

// IsMonotonic passes on the store's answer (raft-wal is monotonic).
func (c *logCache) IsMonotonic() bool {
	m, ok := c.LogStore.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

func (c *logCache) GetLog(index uint64, log *raft.Log) error {
	c.mu.RLock()
	l := c.cache[index%logCacheEntries]
	c.mu.RUnlock()
	if l != nil && l.Index == index {
		*log = *l
		return nil
	}
	return c.LogStore.GetLog(index, log)
}

func (c *logCache) StoreLog(log *raft.Log) error { return c.StoreLogs([]*raft.Log{log}) }

func (c *logCache) StoreLogs(logs []*raft.Log) error {
	defer c.writes.begin()()
	if ch := c.stall.Load(); ch != nil {
		c.stalled.Add(1)
		<-*ch
		c.stalled.Add(-1)
	}
	at := time.Now()
	store := c.LogStore.StoreLogs
	if f := c.fault.Load(); f != nil {
		store = func([]*raft.Log) error { return *f }
	}
	if err := store(logs); err != nil {
		if c.failed != nil {
			c.failed(err)
		}
		return err
	}
	c.mu.Lock()
	for _, l := range logs {
		c.recv[l.Index%logCacheEntries] = received{index: l.Index, term: l.Term, at: at, stamped: l.Type == raft.LogCommand}
		slot := &c.cache[l.Index%logCacheEntries]
		if len(l.Data)+len(l.Extensions) <= logCacheMaxEntry {
			*slot = l
		} else {
			*slot = nil
		}
	}
	c.mu.Unlock()
	return nil
}

func (c *logCache) DeleteRange(min, max uint64) error {
	c.mu.Lock()
	clear(c.cache)
	clear(c.recv)
	c.mu.Unlock()
	return c.LogStore.DeleteRange(min, max)
}

// lastStampOfEarlierTerm returns when this node stored the last command
// of a term before term, looking back from index last (the log's last
// index) over the entries it remembers. ok is false if an entry on the
// way, or that one, is not remembered (stored before the last
// logCacheEntries, or before a DeleteRange): then nobody can say.
//
// Every stamp of an earlier epoch was taken by its leader before it sent
// the entry carrying it, hence before this node stored it; the last
// command carries the last stamp, so at that moment every earlier
// leader's clock had passed every stamp applied so far. Raft's own
// entries of the earlier terms (noops, barriers, configuration changes)
// are passed over: they carry no stamp, and one stored after the last
// stamp (a membership change, a leader elected that never promoted)
// would start the epoch late, giving every lease the time between as
// time left.
func (c *logCache) lastStampOfEarlierTerm(term, last uint64) (time.Time, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for i := last; i > 0 && last-i < logCacheEntries; i-- {
		r := c.recv[i%logCacheEntries]
		if r.index != i || r.at.IsZero() {
			return time.Time{}, false
		}
		if r.term < term && r.stamped {
			return r.at, true
		}
	}
	return time.Time{}, false
}
