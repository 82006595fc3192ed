package fsm_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// TestRequestIDOrderAfterHoldingEnds: request-id order holds after the
// holding is gone (issue 9 item 4): once holder c1's holding with request
// id 6 has ended (released, expired and reaped or not, replaced by its own
// id 7), a delayed acquire with id 6 or lower is Stale, not a new holding
// nobody uses; a higher id is a new holding.
func TestRequestIDOrderAfterHoldingEnds(t *testing.T) {
	ends := map[string][]fsm.Command{
		"released":          {rel("a", "c1", 2)},
		"expired, reaped":   {fsm.Expire{}},
		"expired, unreaped": nil,
		"expired, lock-delay over": {
			fsm.Expire{},
		},
	}
	for name, steps := range ends {
		for _, req := range []uint64{1, 5, 6, 7} {
			t.Run(fmt.Sprintf("%s/req=%d", name, req), func(t *testing.T) {
				f := fsm.New(fsm.Config{})
				one(t, f, 1, st(1, 0), fsm.Promote{})
				delay := time.Duration(0)
				if name == "expired, lock-delay over" {
					delay = s
				}
				one(t, f, 2, st(1, 0), acq("a", "c1", 6, 5*s, delay))
				at := 10 * s
				if name == "released" {
					at = s
				}
				idx := uint64(3)
				for _, c := range steps {
					apply(t, f, idx, st(1, at), c)
					idx++
				}
				r := one(t, f, idx, st(1, at), acq("a", "c1", req, 5*s, 0))
				if want := map[bool]fsm.Code{true: fsm.Stale, false: fsm.Granted}[req <= 6]; r.Code != want {
					t.Fatalf("acquire with id %d after the id-6 holding %s: %+v, want %v", req, name, r, want)
				}
			})
		}
	}
	// Replaced by a newer holding of the same holder, which then ended.
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "c1", 6, 5*s, 0))
	one(t, f, 3, st(1, s), acq("a", "c1", 7, 5*s, 0))
	one(t, f, 4, st(1, s), rel("a", "c1", 3))
	for _, req := range []uint64{6, 7} {
		if r := one(t, f, 5, st(1, s), acq("a", "c1", req, 5*s, 0)); r.Code != fsm.Stale {
			t.Fatalf("id %d after ids 6 and 7 ended: %+v", req, r)
		}
	}
	// A request refused Held counts too: a delayed older one is Stale.
	one(t, f, 6, st(1, s), acq("b", "c2", 1, 5*s, 0))
	if r := one(t, f, 7, st(1, s), acq("b", "c1", 9, 5*s, 0)); r.Code != fsm.Held {
		t.Fatalf("%+v", r)
	}
	apply(t, f, 8, st(1, s), rel("b", "c2", 6))
	if r := one(t, f, 9, st(1, s), acq("b", "c1", 8, 5*s, 0)); r.Code != fsm.Stale {
		t.Fatalf("id 8 after id 9 was refused Held: %+v", r)
	}
}

// TestMarkCap: above the cap (MaxMarks, lowered here) the mark with the
// earliest (due, key, holder) is dropped, deterministically; a due mark
// counts as gone, so one that is due goes first, as an Expire would have
// reaped it. (Marks come from refusals here: a live holding needs no mark
// of its own.)
func TestMarkCap(t *testing.T) {
	f := fsm.New(fsm.Config{})
	fsm.SetMaxMarks(f, 3)
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("k", "owner", 1, time.Hour, 0))
	// Refused Held, each leaves a mark: due 15m (h1, h2), 16m (h3).
	one(t, f, 3, st(1, 0), acq("k", "h2", 1, s, 0))
	one(t, f, 4, st(1, 0), acq("k", "h1", 1, s, 0))
	one(t, f, 5, st(1, 30*s), acq("k", "h3", 1, s, 0))
	if got := markNames(f); got != "k/h1 k/h2 k/h3" {
		t.Fatalf("marks %s", got)
	}
	// A fourth: k/h1 has the earliest (due, key, holder) and goes.
	one(t, f, 6, st(1, 30*s), acq("k", "h4", 1, s, 0))
	if got := markNames(f); got != "k/h2 k/h3 k/h4" || f.Stats().Marks != 3 {
		t.Fatalf("marks %s, stats %+v", got, f.Stats())
	}
	// Without its mark, h1's request id 1 is taken for new again (refused
	// Held, not Stale): the protection the cap gives up. It is marked
	// again, and the earliest, k/h2, goes.
	if r := one(t, f, 7, st(1, 30*s), acq("k", "h1", 1, s, 0)); r.Code != fsm.Held {
		t.Fatalf("k/h1 after its mark was dropped: %+v", r)
	}
	if got := markNames(f); got != "k/h1 k/h3 k/h4" {
		t.Fatalf("marks %s", got)
	}
	// At 16m all three are due; a new mark drops a due one, exactly what
	// an Expire would have reaped: the live marks are the same.
	one(t, f, 8, st(1, 16*time.Minute), acq("k", "h5", 1, s, 0))
	apply(t, f, 9, st(1, 16*time.Minute), fsm.Expire{})
	if got := markNames(f); got != "k/h5" {
		t.Fatalf("marks %s", got)
	}
}

func markNames(f *fsm.FSM) string {
	var out []string
	for _, m := range fsm.AllMarks(f) {
		out = append(out, m.Key+"/"+m.Holder)
	}
	return strings.Join(out, " ")
}

// TestMarkRead: Mark reads one holder's mark for a key.
func TestMarkRead(t *testing.T) {
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "h1", 7, s, 0))
	one(t, f, 3, st(1, 0), rel("a", "h1", 2))
	m, ok := f.Mark("a", "h1")
	if !ok || m != (fsm.Mark{Key: "a", Holder: "h1", ReqID: 7, Ended: true, Due: 15 * time.Minute}) {
		t.Fatalf("Mark(a, h1) = %+v, %v", m, ok)
	}
	if _, ok := f.Mark("a", "h2"); ok {
		t.Fatal("a mark for a holder that never asked")
	}
}
