package workload

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/lease"
)

// TestShapesPick: the shapes workload draws every kind of acquire, each
// well formed: semaphore slots with the key's limit, readers and writers
// of the read-write key, sets of two or three distinct set keys; and the
// history records them as asked.
func TestShapesPick(t *testing.T) {
	s := DefaultShapes()
	rnd := rand.New(rand.NewPCG(1, 2))
	kinds := map[string]int{}
	for range 2000 {
		items := s.pick(rnd)
		switch {
		case len(items) == 1 && items[0].Key == s.Semaphore:
			if items[0].Semaphore != s.Limit || items[0].Shared {
				t.Fatalf("semaphore item %+v", items[0])
			}
			kinds["semaphore"]++
		case len(items) == 1 && items[0].Key == s.RW:
			if items[0].Shared {
				kinds["reader"]++
			} else {
				kinds["writer"]++
			}
		case len(items) == 2 || len(items) == 3:
			var keys []string
			for _, it := range items {
				if !slices.Contains(s.Set, it.Key) || slices.Contains(keys, it.Key) || it.Semaphore != 0 {
					t.Fatalf("set %+v", items)
				}
				keys = append(keys, it.Key)
			}
			kinds["set"]++
		default:
			t.Fatalf("unexpected draw %+v", items)
		}
	}
	for _, k := range []string{"semaphore", "reader", "writer", "set"} {
		if kinds[k] < 100 {
			t.Fatalf("%s drawn %d times in 2000: %v", k, kinds[k], kinds)
		}
	}
	if got := historyItem(lease.Item{Key: "s0", Semaphore: 2}); got != (history.Item{Key: "s0", Shape: history.ShapeSemaphore, Limit: 2}) {
		t.Fatalf("history item %+v", got)
	}
	hs := holdings([]lease.Info{{Key: "m0", Holder: "w1#abc", Token: 9, Shared: true, SetKeys: []string{"m0", "m1"}}})
	if h := hs[0]; h.Holder != "w1" || h.Set != 9 || h.Shape != history.ShapeShared || len(h.SetKeys) != 2 {
		t.Fatalf("holding %+v", h)
	}
}
