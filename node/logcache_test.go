package node

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// logCache serves recent entries from memory, never an entry above
// logCacheMaxEntry, and forgets everything on DeleteRange.
func TestLogCache(t *testing.T) {
	store := raft.NewInmemStore()
	c := newLogCache(store)
	big := make([]byte, logCacheMaxEntry+1)
	if err := c.StoreLogs([]*raft.Log{{Index: 1, Data: []byte("a")}, {Index: 2, Data: big}}); err != nil {
		t.Fatal(err)
	}
	if l := c.cache[1%logCacheEntries]; l == nil || string(l.Data) != "a" {
		t.Fatalf("entry 1 not cached: %v", l)
	}
	if l := c.cache[2%logCacheEntries]; l != nil {
		t.Fatal("an entry above logCacheMaxEntry was cached")
	}
	var got raft.Log
	if err := c.GetLog(2, &got); err != nil || len(got.Data) != len(big) {
		t.Fatalf("entry 2 from the store: %v, %d bytes", err, len(got.Data))
	}
	// A later entry in the same slot replaces the earlier one.
	if err := c.StoreLog(&raft.Log{Index: 1 + logCacheEntries, Data: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if err := c.GetLog(1, &got); err != nil || string(got.Data) != "a" {
		t.Fatalf("entry 1 after its slot was reused: %v %q", err, got.Data)
	}
	if err := c.DeleteRange(1, 1); err != nil {
		t.Fatal(err)
	}
	for _, l := range c.cache {
		if l != nil {
			t.Fatal("DeleteRange left entries in the cache")
		}
	}
	if err := c.GetLog(1, &got); err == nil {
		t.Fatal("a deleted entry was served")
	}
}

// lastStampOfEarlierTerm finds when the last command of an earlier term
// was stored, passing over Raft's own entries, and says nobody knows when
// an entry on the way back is not remembered.
func TestLastStampOfEarlierTerm(t *testing.T) {
	c := newLogCache(raft.NewInmemStore())
	store := func(term uint64, idx ...uint64) time.Time {
		var logs []*raft.Log
		for _, i := range idx {
			logs = append(logs, &raft.Log{Index: i, Term: term, Type: raft.LogCommand})
		}
		before := time.Now()
		if err := c.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
		return before
	}
	store(3, 1, 2)
	t4 := store(4, 3, 4) // the last commands of term 4
	// Raft's own entries after them carry no stamp: a configuration change
	// of term 4, a new leader's noop and barrier in term 5.
	later := time.Now()
	for _, l := range []*raft.Log{{Index: 5, Term: 4, Type: raft.LogConfiguration}, {Index: 6, Term: 5, Type: raft.LogNoop}, {Index: 7, Term: 5, Type: raft.LogBarrier}} {
		if err := c.StoreLogs([]*raft.Log{l}); err != nil {
			t.Fatal(err)
		}
	}
	at, ok := c.lastStampOfEarlierTerm(5, 7)
	if ok && !at.Before(later) {
		t.Fatalf("last command before term 5 stored at %v, but that is the configuration change's time", at)
	}
	if !ok || at.Before(t4) {
		t.Fatalf("last command before term 5 stored at %v (%v), want at or after %v", at, ok, t4)
	}
	if at, ok := c.lastStampOfEarlierTerm(4, 7); !ok || !at.Before(t4) {
		t.Fatalf("last command before term 4: %v %v, want the term-3 batch's time", at, ok)
	}
	if _, ok := c.lastStampOfEarlierTerm(3, 7); ok {
		t.Fatal("a time for a term before the first stored one")
	}
	// An entry on the way back that is not remembered: nobody knows.
	store(6, 8+logCacheEntries)
	if _, ok := c.lastStampOfEarlierTerm(6, 8+logCacheEntries); ok {
		t.Fatal("a time although entries between were never stored here")
	}
	if err := c.DeleteRange(1, 7); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.lastStampOfEarlierTerm(5, 7); ok {
		t.Fatal("a time remembered across DeleteRange")
	}
}
