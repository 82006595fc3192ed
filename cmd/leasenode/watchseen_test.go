package main

import (
	"testing"

	"github.com/leasenode/leasenode/lease"
)

// A watch started again through a node that lags the one before repeats
// older state (the new-user review: "released w/k0", then "granted w/k0"
// again after a leader kill): what the streams before showed is skipped,
// nothing of a stream's own listing (key order, not index order), and
// everything after a reset.
func TestWatchAgainSkipsWhatWasShown(t *testing.T) {
	var w watchSeen
	var shown []uint64
	stream := func(events ...lease.Event) {
		w.restart()
		for _, e := range events {
			if w.show(e) {
				shown = append(shown, e.Index)
			}
		}
	}
	granted := func(key string, index uint64) lease.Event {
		return lease.Event{Type: lease.Granted, Key: key, Index: index, Token: index}
	}
	released := func(key string, index uint64) lease.Event {
		return lease.Event{Type: lease.Released, Key: key, Index: index}
	}
	stream(granted("k0", 10), granted("k1", 5), released("k0", 12))
	stream(granted("k0", 10), granted("k1", 5), released("k0", 12), granted("k2", 13))
	stream(lease.Event{Type: lease.Reset})
	stream(granted("k1", 5), granted("k2", 13))
	want := []uint64{10, 5, 12, 13, 0, 5, 13}
	if len(shown) != len(want) {
		t.Fatalf("shown %v, want %v", shown, want)
	}
	for i := range want {
		if shown[i] != want[i] {
			t.Fatalf("shown %v, want %v", shown, want)
		}
	}
}
