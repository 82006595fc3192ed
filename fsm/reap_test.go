package fsm_test

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// TestNoOutcomeDependsOnReaper: reaper-independence. A command on a key
// whose lease or lock-delay is due gets the same result, leaves the same
// state and emits the same events whether or not the leader's Expire ran
// first: every command first applies to the record what Expire would.
// (Issue 9 item 5: a release before the reap freed the key at once, after
// it the lock-delay ran.)
func TestNoOutcomeDependsOnReaper(t *testing.T) {
	cmds := map[string]fsm.Command{
		"release":             rel("a", "c1", 2),
		"extend":              ext("c1", "a", 2),
		"acquire other":       acq("a", "c2", 1, 5*s, 0),
		"acquire same id":     acq("a", "c1", 1, 5*s, 0),
		"acquire higher id":   acq("a", "c1", 2, 5*s, 0),
		"batch release+grant": &fsm.Batch{Cmds: []fsm.Command{rel("a", "c1", 2), acq("a", "c2", 1, 5*s, 0)}},
	}
	for _, delay := range []time.Duration{0, 3 * s} {
		for _, at := range []time.Duration{4 * s, 5 * s, 6 * s, 8 * s, 9 * s} {
			for name, cmd := range cmds {
				t.Run(fmt.Sprintf("delay=%v/at=%v/%s", delay, at, name), func(t *testing.T) {
					run := func(reap bool) (*fsm.Response, []fsm.Lease, []fsm.Event) {
						f := fsm.New(fsm.Config{Events: true})
						one(t, f, 1, st(1, 0), fsm.Promote{})
						one(t, f, 2, st(1, 0), acq("a", "c1", 1, 5*s, delay))
						if reap {
							apply(t, f, 3, st(1, at), fsm.Expire{})
						} else {
							f.Apply(&raft.Log{Type: raft.LogNoop, Index: 3})
						}
						r := apply(t, f, 4, st(1, at), cmd)
						ev := f.Drain(nil)
						for i := range ev {
							ev[i].Index = 0 // the reap's events come from entry 3 or 4
						}
						return r, allLeases(f), ev
					}
					r1, l1, e1 := run(true)
					r2, l2, e2 := run(false)
					if !reflect.DeepEqual(r1, r2) {
						t.Errorf("result after the reaper ran:\n%+v\nwithout:\n%+v", r1, r2)
					}
					if !reflect.DeepEqual(l1, l2) {
						t.Errorf("state after the reaper ran:\n%+v\nwithout:\n%+v", l1, l2)
					}
					if !reflect.DeepEqual(e1, e2) {
						t.Errorf("events after the reaper ran:\n%+v\nwithout:\n%+v", e1, e2)
					}
				})
			}
		}
	}
}
