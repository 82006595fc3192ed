package fsm_test

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// TestFatalStopsApplying: once an entry is fatal the FSM applies nothing
// after it, in the same ApplyBatch or later: each later entry gets a single
// Fatal result naming the first fatal entry, and the state, the clock and
// the applied index stay at the last good entry. Snapshot refuses while
// fatal; OnFatal is called once, after the lock is released.
func TestFatalStopsApplying(t *testing.T) {
	newer := []byte{fsm.FormatVersion + 1, 2, 0, 0}
	for _, batched := range []bool{false, true} {
		name := "apply"
		if batched {
			name = "applybatch"
		}
		t.Run(name, func(t *testing.T) {
			var f *fsm.FSM
			var reported []error
			f = fsm.New(fsm.Config{Events: true, OnFatal: func(err error) {
				_ = f.Stats() // the lock is released
				reported = append(reported, err)
			}})
			one(t, f, 1, st(1, 0), fsm.Promote{})
			good := entry(2, st(1, s), acq("a", "c1", 1, 5*s, 0))
			bad := &raft.Log{Type: raft.LogCommand, Index: 3, Data: newer}
			after := entry(4, st(1, 2*s), acq("b", "c2", 1, 5*s, 0))
			var out []interface{}
			if batched {
				out = f.ApplyBatch([]*raft.Log{good, bad, after})
			} else {
				for _, l := range []*raft.Log{good, bad, after} {
					out = append(out, f.Apply(l))
				}
			}
			if r := out[0].(*fsm.Response); r.Results[0].Code != fsm.Granted {
				t.Fatalf("good entry: %+v", r)
			}
			for i, o := range out[1:] {
				r, ok := o.(*fsm.Response)
				if !ok || len(r.Results) != 1 || r.Results[0].Code != fsm.Fatal ||
					!strings.Contains(r.Results[0].Reason, "entry 3") || r.Now != s || r.Epoch != 1 {
					t.Fatalf("entry %d after the fatal one: %+v", i+3, o)
				}
			}
			if _, ok := f.Get("b"); ok {
				t.Fatal("an entry after the fatal one was applied")
			}
			if st := f.Stats(); st.Applied != 2 || st.Now != s || st.Held != 1 {
				t.Fatalf("stats moved past the last good entry: %+v", st)
			}
			// Later entries of every kind, through either path, are not
			// applied either; the events stop at the good entry.
			before := allLeases(f)
			later := []*raft.Log{
				entry(5, st(2, 0), fsm.Promote{}),
				{Type: raft.LogNoop, Index: 6},
				entry(7, st(1, 9*s), fsm.Expire{}),
			}
			for _, l := range later {
				r, ok := f.Apply(l).(*fsm.Response)
				if !ok || len(r.Results) != 1 || r.Results[0].Code != fsm.Fatal {
					t.Fatalf("entry %d: %+v", l.Index, r)
				}
			}
			for _, o := range f.ApplyBatch(later) {
				if r, ok := o.(*fsm.Response); !ok || r.Results[0].Code != fsm.Fatal {
					t.Fatalf("batched later entry: %+v", o)
				}
			}
			if got := f.ApplyCommand(8, st(1, 9*s), fsm.Expire{}); got.Results[0].Code != fsm.Fatal {
				t.Fatalf("ApplyCommand after fatal: %+v", got)
			}
			if !reflect.DeepEqual(before, allLeases(f)) || f.Stats().Applied != 2 || f.Stats().Epoch != 1 {
				t.Fatalf("state moved: %+v %+v", allLeases(f), f.Stats())
			}
			for _, e := range f.Drain(nil) {
				if e.Index > 2 {
					t.Fatalf("event after the fatal entry: %+v", e)
				}
			}
			if _, err := f.Snapshot(); err == nil || !errors.Is(err, fsm.ErrNewerVersion) {
				t.Fatalf("Snapshot while fatal: %v", err)
			}
			if len(reported) != 1 || !errors.Is(reported[0], fsm.ErrNewerVersion) {
				t.Fatalf("OnFatal calls: %v", reported)
			}
			if err := f.Fatal(); err == nil || !strings.Contains(err.Error(), "entry 3") {
				t.Fatalf("Fatal() = %v", err)
			}
			// Restore does not resume a stopped FSM either.
			src := fsm.New(fsm.Config{})
			one(t, src, 1, st(1, 0), fsm.Promote{})
			if err := f.Restore(nopCloser{bytes.NewReader(snapshotBytes(t, src))}); err == nil {
				t.Fatal("Restore while fatal succeeded")
			}
		})
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
