package workload

import (
	"math/rand/v2"

	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/lease"
)

// Shapes are the lock shapes the workers use beside the plain keys, on
// keys of their own: a semaphore, a read-write key, and keys taken by
// multi-key leases. The shape checkers (shared-exclusive, at-most-n,
// set-atomicity) judge them; single-holder and linearizable judge the
// plain keys only.
type Shapes struct {
	// Semaphore is a key taken as a semaphore of Limit slots.
	Semaphore string
	Limit     int
	// RW is a key taken shared by readers (which make fenced reads of
	// the resource) and exclusively by writers.
	RW string
	// Set are keys taken two or three at a time by multi-key leases, in a
	// random order, each exclusive or shared; ListPrefix lists all of them
	// in one read.
	Set        []string
	ListPrefix string
	// Prob is the chance that a worker's next acquire uses a shape rather
	// than a plain key.
	Prob float64
}

// DefaultShapes is a semaphore of 2 (s0), a read-write key (rw0) and sets
// over m0, m1 and m2, used for half of the acquires.
func DefaultShapes() *Shapes {
	return &Shapes{Semaphore: "s0", Limit: 2, RW: "rw0", Set: []string{"m0", "m1", "m2"}, ListPrefix: "m", Prob: 0.5}
}

// keys returns every key the shapes use.
func (s *Shapes) keys() []string {
	return append([]string{s.Semaphore, s.RW}, s.Set...)
}

// pick draws the items of one acquire: a semaphore slot, a reader or
// writer of the read-write key, or a set of two or three keys.
func (s *Shapes) pick(rnd *rand.Rand) []lease.Item {
	switch p := rnd.Float64(); {
	case p < 0.3:
		return []lease.Item{{Key: s.Semaphore, Semaphore: s.Limit}}
	case p < 0.65:
		return []lease.Item{{Key: s.RW, Shared: rnd.Float64() < 0.65}}
	}
	perm := rnd.Perm(len(s.Set))[:2+rnd.IntN(len(s.Set)-1)]
	items := make([]lease.Item, len(perm))
	for i, k := range perm {
		items[i] = lease.Item{Key: s.Set[k], Shared: rnd.IntN(2) == 0}
	}
	return items
}

// historyItem is it as the history records it.
func historyItem(it lease.Item) history.Item {
	switch {
	case it.Shared:
		return history.Item{Key: it.Key, Shape: history.ShapeShared}
	case it.Semaphore != 0:
		return history.Item{Key: it.Key, Shape: history.ShapeSemaphore, Limit: it.Semaphore}
	}
	return history.Item{Key: it.Key}
}

// holdings is what a read saw, as the history records it.
func holdings(infos []lease.Info) []history.Holding {
	out := make([]history.Holding, len(infos))
	for i, in := range infos {
		h := history.Holding{Key: in.Key, Holder: holderName(in.Holder), Token: in.Token, Delayed: in.LockDelay}
		switch {
		case in.Shared:
			h.Shape = history.ShapeShared
		case in.Semaphore != 0:
			h.Shape, h.Limit = history.ShapeSemaphore, in.Semaphore
		}
		if len(in.SetKeys) > 0 {
			h.Set, h.SetKeys = in.Token, in.SetKeys
		}
		out[i] = h
	}
	return out
}
