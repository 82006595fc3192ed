package node

import (
	"testing"

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
