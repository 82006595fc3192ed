package fsm_test

import (
	"testing"

	"github.com/leasenode/leasenode/fsm"
)

// TestCancel: Cancel{key, holder, req} releases the grant of req only if it
// is the key's live holding and nobody saw it (no retry of req applied);
// in every case req is spent (a later arrival is Stale). Its result tells
// what became of req: Released, Held (granted and kept), Stale (spent
// already: granted once, maybe) or NotHeld (never granted).
func TestCancel(t *testing.T) {
	type step struct {
		cmd  fsm.Command
		want fsm.Code
	}
	cases := []struct {
		name  string
		steps []step
		// afterwards: the holder of key a ("" when free)
		holder string
	}{
		{"cancel before grant", []step{
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.NotHeld},
			{acq("a", "c1", 5, 5*s, 0), fsm.Stale},
			{acq("a", "c1", 6, 5*s, 0), fsm.Granted},
		}, "c1"},
		{"cancel after grant", []step{
			{acq("a", "c1", 5, 5*s, 3*s), fsm.Granted},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.Released},
			{acq("a", "c1", 5, 5*s, 0), fsm.Stale},
		}, ""},
		{"cancel after grant, key free at once", []step{
			{acq("a", "c1", 5, 5*s, 3*s), fsm.Granted},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.Released},
			{acq("a", "c2", 1, 5*s, 0), fsm.Granted},
		}, "c2"},
		{"cancel after a retry", []step{
			{acq("a", "c1", 5, 5*s, 0), fsm.Granted},
			{acq("a", "c1", 5, 5*s, 0), fsm.Granted},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.Held},
		}, "c1"},
		{"cancel of an older id while a newer holding is live", []step{
			{acq("a", "c1", 5, 5*s, 0), fsm.Granted},
			{acq("a", "c1", 6, 5*s, 0), fsm.Granted},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.Stale},
			{acq("a", "c1", 5, 5*s, 0), fsm.Stale},
		}, "c1"},
		{"second cancel: the id was spent by the first", []step{
			{acq("a", "c1", 5, 5*s, 0), fsm.Granted},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.Released},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.Stale},
		}, ""},
		{"cancel of a request refused as held: never granted", []step{
			{acq("a", "c2", 1, 5*s, 0), fsm.Granted},
			{acq("a", "c1", 5, 5*s, 0), fsm.Held},
			{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 5}, fsm.NotHeld},
			{acq("a", "c1", 5, 5*s, 0), fsm.Stale},
		}, "c2"},
		{"cancel by another holder", []step{
			{acq("a", "c1", 5, 5*s, 0), fsm.Granted},
			{&fsm.Cancel{Key: "a", Holder: "c2", ReqID: 5}, fsm.NotHeld},
		}, "c1"},
		{"invalid", []step{
			{&fsm.Cancel{Key: "a", Holder: "c1"}, fsm.Invalid},
			{&fsm.Cancel{Holder: "c1", ReqID: 1}, fsm.Invalid},
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fsm.New(fsm.Config{})
			one(t, f, 1, st(1, 0), fsm.Promote{})
			for i, sp := range tc.steps {
				if r := one(t, f, uint64(2+i), st(1, s), sp.cmd); r.Code != sp.want {
					t.Fatalf("step %d (%s): %+v, want %v", i, describe(sp.cmd), r, sp.want)
				}
			}
			l, ok := f.Get("a")
			if holder := map[bool]string{true: l.Holder}[ok]; holder != tc.holder {
				t.Fatalf("holder of a: %q, want %q", holder, tc.holder)
			}
		})
	}
}
