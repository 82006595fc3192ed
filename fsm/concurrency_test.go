package fsm_test

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// TestConcurrentReads: Get, List, Stats, Clock, NextExpiry, Mark, Fatal and
// Drain from several goroutines while another applies entries (one at a
// time, in batches, and with snapshots and a restore in between, as Raft's
// FSM goroutine does). Meant for go test -race; each reader also checks
// that what it sees is self-consistent and never goes back.
func TestConcurrentReads(t *testing.T) {
	f := fsm.New(fsm.Config{Events: true})
	const entries = 3000
	var applying atomic.Bool
	applying.Store(true)
	errs := make(chan error, 16)
	var wg sync.WaitGroup

	for r := range 4 {
		wg.Go(func() {
			var lastApplied uint64
			var lastEpoch uint64
			for i := 0; applying.Load(); i++ {
				st := f.Stats()
				if st.Applied < lastApplied {
					errs <- fmt.Errorf("reader %d: applied went back %d -> %d", r, lastApplied, st.Applied)
					return
				}
				lastApplied = st.Applied
				if e, _ := f.Clock(); e < lastEpoch {
					errs <- fmt.Errorf("reader %d: epoch went back", r)
					return
				} else {
					lastEpoch = e
				}
				key := fmt.Sprintf("k%02d", i%50)
				if l, ok := f.Get(key); ok && (l.Key != key || l.Token == 0) {
					errs <- fmt.Errorf("reader %d: Get(%s) = %+v", r, key, l)
					return
				}
				page, next := f.List("k", "", 10)
				if !sort.SliceIsSorted(page, func(a, b int) bool { return page[a].Key < page[b].Key }) {
					errs <- fmt.Errorf("reader %d: List out of order", r)
					return
				}
				if next != "" {
					f.List("k", next, 10)
				}
				f.NextExpiry()
				f.Mark(key, fmt.Sprintf("h%d", i%3))
				_ = f.Fatal()
				if r == 0 {
					f.Drain(nil)
				}
			}
		})
	}

	wg.Go(func() {
		defer applying.Store(false)
		idx := uint64(0)
		next := func() uint64 { idx++; return idx }
		f.Apply(entry(next(), st(1, 0), fsm.Promote{}))
		now := time.Duration(0)
		for i := range entries {
			now += 10 * ms
			key := fmt.Sprintf("k%02d", i%50)
			switch i % 7 {
			case 0, 1, 2:
				f.Apply(entry(next(), st(1, now), acq(key, fmt.Sprintf("h%d", i%3), uint64(i+1), 300*ms, 50*ms)))
			case 3:
				l, _ := f.Get(key)
				f.ApplyBatch([]*raft.Log{
					entry(next(), st(1, now), ext(l.Holder+"x", key, int(l.Token))),
					{Type: raft.LogNoop, Index: next()},
					entry(next(), st(1, now), fsm.Expire{}),
				})
			case 4:
				l, _ := f.Get(key)
				f.Apply(entry(next(), st(1, now), rel(key, max(l.Holder, "h0"), max(l.Token, 1))))
			case 5:
				f.Apply(entry(next(), st(1, now), fsm.Expire{}))
			case 6:
				if i%700 == 6 {
					if _, err := persist(f); err != nil {
						errs <- err
						return
					}
				}
			}
		}
		// Restore runs on the applying goroutine too, readers still going.
		// (Of the latest state, so Applied does not go back.)
		snap, err := persist(f)
		if err != nil {
			errs <- err
			return
		}
		if err := restoreBytes(f, snap); err != nil {
			errs <- err
		}
		f.Apply(entry(idx+1, st(2, 0), fsm.Promote{}))
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
