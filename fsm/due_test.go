package fsm

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The due queue gives records in exactly (due, key, token) order, however
// they arrive: appends in order, equal dues in any key order, dues that go
// back (a record reaped late on its own key), lane changes (a lease into
// its lock-delay), removals, a uniform shift, and a queue rebuilt from
// scratch as a restore does. Checked against a sort of the same records.
func TestDueQueueOrder(t *testing.T) {
	for seed := range uint64(500) {
		rng := rand.New(rand.NewPCG(seed, 7))
		q := newDueQueue()
		var live []*record
		token := uint64(0)
		now := time.Duration(0)
		ttls := []time.Duration{time.Second, 1500 * time.Millisecond, 3 * time.Second}
		check := func(step string) {
			t.Helper()
			want := slices.Clone(live)
			slices.SortFunc(want, func(a, b *record) int {
				if a.before(b) {
					return -1
				}
				if b.before(a) {
					return 1
				}
				return 0
			})
			if q.len() != len(want) {
				t.Fatalf("seed %d %s: len %d, want %d", seed, step, q.len(), len(want))
			}
			if len(want) > 0 && q.first() != want[0] {
				t.Fatalf("seed %d %s: first %s, want %s", seed, step, desc(q.first()), desc(want[0]))
			}
		}
		for range 300 {
			switch op := rng.IntN(10); {
			case op < 4: // grant or extend: due now+TTL
				var r *record
				if len(live) > 0 && rng.IntN(2) == 0 {
					r = live[rng.IntN(len(live))]
				} else {
					token++
					r = &record{holding: holding{Key: fmt.Sprintf("k%02d", rng.IntN(40)), Token: token}}
					live = append(live, r)
				}
				r.State, r.TTL = StateHeld, ttls[rng.IntN(len(ttls))]
				r.Expiry = now + r.TTL
				if rng.IntN(8) == 0 {
					r.Expiry -= time.Duration(rng.IntN(6)) * 500 * time.Millisecond // a due that goes back
				}
				q.update(r)
			case op < 5 && len(live) > 0: // into a lock-delay
				r := live[rng.IntN(len(live))]
				r.State, r.LockDelay = StateDelayed, time.Duration(1+rng.IntN(2))*time.Second
				q.update(r)
			case op < 6 && len(live) > 0: // removed
				i := rng.IntN(len(live))
				q.remove(live[i])
				live = slices.Delete(live, i, i+1)
			case op < 7: // time passes; pop what is due, in order
				now += time.Duration(rng.IntN(4)) * 500 * time.Millisecond // coarse: many equal dues
				for r := q.first(); r != nil && r.due() <= now; r = q.first() {
					check("before a pop")
					q.remove(r)
					live = slices.DeleteFunc(live, func(x *record) bool { return x == r })
				}
			case op < 8: // a uniform shift (Promote)
				d := time.Duration(rng.IntN(2)) * 500 * time.Millisecond
				for _, r := range live {
					r.Expiry += d
				}
			case op < 9: // a restore: the same records, queued from scratch
				fresh := newDueQueue()
				recs := slices.Clone(live)
				for _, r := range recs {
					r.lane, r.prev, r.next = nil, nil, nil
				}
				rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
				fresh.build(recs)
				q = fresh
			}
			check("after a step")
		}
		// Drain: every record comes out in order.
		for len(live) > 0 {
			check("draining")
			r := q.first()
			q.remove(r)
			live = slices.DeleteFunc(live, func(x *record) bool { return x == r })
		}
		if q.first() != nil || len(q.lanes) != 0 || len(q.heads) != 0 {
			t.Fatalf("seed %d: empty queue keeps %d lanes, %d heads", seed, len(q.lanes), len(q.heads))
		}
	}
}

func desc(r *record) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("%s/%d due %v", r.Key, r.Token, r.due())
}
