package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/leasenode/leasenode/fsm"
)

// shaped returns an acquire of key in mode (limit for a semaphore).
func shaped(key, holder string, req uint64, mode fsm.Mode, limit uint32) *fsm.Acquire {
	c := acq(key, holder, req, 5*s, 0)
	c.Mode, c.Limit = mode, limit
	return c
}

// TestShapeCompatibility: shape-compatibility, as a table: what a key
// already holds (live, or as a lock-delay remnant), the shape asked, and
// the outcome.
func TestShapeCompatibility(t *testing.T) {
	type hold struct {
		mode  fsm.Mode
		limit uint32
		delay bool // expired into its lock-delay before the ask
	}
	ex, sh := hold{mode: fsm.ModeExclusive}, hold{mode: fsm.ModeShared}
	sem := func(n uint32) hold { return hold{mode: fsm.ModeSemaphore, limit: n} }
	remnant := func(h hold) hold { h.delay = true; return h }
	cases := []struct {
		name  string
		held  []hold
		mode  fsm.Mode
		limit uint32
		want  fsm.Code
	}{
		{"free/exclusive", nil, fsm.ModeExclusive, 0, fsm.Granted},
		{"free/shared", nil, fsm.ModeShared, 0, fsm.Granted},
		{"free/semaphore", nil, fsm.ModeSemaphore, 4, fsm.Granted},
		{"exclusive/exclusive", []hold{ex}, fsm.ModeExclusive, 0, fsm.Held},
		{"exclusive/shared", []hold{ex}, fsm.ModeShared, 0, fsm.Held},
		{"exclusive/semaphore", []hold{ex}, fsm.ModeSemaphore, 2, fsm.Held},
		{"shared/shared", []hold{sh, sh}, fsm.ModeShared, 0, fsm.Granted},
		{"shared/exclusive", []hold{sh}, fsm.ModeExclusive, 0, fsm.Held},
		{"shared/semaphore", []hold{sh}, fsm.ModeSemaphore, 2, fsm.Held},
		{"semaphore/room", []hold{sem(3), sem(3)}, fsm.ModeSemaphore, 3, fsm.Granted},
		{"semaphore/full", []hold{sem(2), sem(2)}, fsm.ModeSemaphore, 2, fsm.Held},
		{"semaphore/other-limit", []hold{sem(2)}, fsm.ModeSemaphore, 3, fsm.Invalid},
		{"semaphore/exclusive", []hold{sem(2)}, fsm.ModeExclusive, 0, fsm.Held},
		{"semaphore/shared", []hold{sem(2)}, fsm.ModeShared, 0, fsm.Held},
		{"remnant-exclusive/shared", []hold{remnant(ex)}, fsm.ModeShared, 0, fsm.Held},
		{"remnant-shared/shared", []hold{remnant(sh)}, fsm.ModeShared, 0, fsm.Granted},
		{"remnant-shared/exclusive", []hold{remnant(sh)}, fsm.ModeExclusive, 0, fsm.Held},
		{"remnant-semaphore/takes-a-slot", []hold{remnant(sem(2)), sem(2)}, fsm.ModeSemaphore, 2, fsm.Held},
		{"remnant-semaphore/keeps-limit", []hold{remnant(sem(2))}, fsm.ModeSemaphore, 3, fsm.Invalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fsm.New(fsm.Config{})
			idx := uint64(1)
			one(t, f, idx, st(1, 0), fsm.Promote{})
			// Remnants first, expired at 1s into a 10 s lock-delay.
			for i, h := range tc.held {
				if !h.delay {
					continue
				}
				idx++
				c := shaped("k", fmt.Sprintf("old%d", i), 1, h.mode, h.limit)
				c.TTL, c.LockDelay = s, 10*s
				if r := one(t, f, idx, st(1, 0), c); r.Code != fsm.Granted {
					t.Fatalf("setup: %+v", r)
				}
			}
			idx++
			apply(t, f, idx, st(1, 2*s), fsm.Expire{})
			for i, h := range tc.held {
				if h.delay {
					continue
				}
				idx++
				if r := one(t, f, idx, st(1, 2*s), shaped("k", fmt.Sprintf("h%d", i), 1, h.mode, h.limit)); r.Code != fsm.Granted {
					t.Fatalf("setup: %+v", r)
				}
			}
			idx++
			r := one(t, f, idx, st(1, 2*s), shaped("k", "asker", 1, tc.mode, tc.limit))
			if r.Code != tc.want {
				t.Fatalf("%s: %+v, want %v", tc.name, r, tc.want)
			}
			if r.Code == fsm.Invalid && !strings.Contains(r.Reason, "is a semaphore of") {
				t.Fatalf("reason %q does not name the key's limit", r.Reason)
			}
		})
	}
}

// shapesFSM returns an FSM holding every shape: shared readers, a full
// semaphore, a multi-key grant (one Seen), remnants of each mode.
func shapesFSM(t tb) *fsm.FSM {
	t.Helper()
	f := fsm.New(fsm.Config{})
	cmds := []fsm.Command{
		fsm.Promote{},
		shaped("r", "c1", 1, fsm.ModeShared, 0),
		shaped("r", "c2", 1, fsm.ModeShared, 0),
		shaped("n", "c1", 2, fsm.ModeSemaphore, 2),
		shaped("n", "c3", 1, fsm.ModeSemaphore, 2),
		&fsm.Acquire{Key: "x", Holder: "c4", ReqID: 1, TTL: 9 * s, LockDelay: s, Value: []byte("set"),
			More: []fsm.Item{{Key: "r", Mode: fsm.ModeShared}, {Key: "y"}}},
		&fsm.Acquire{Key: "x", Holder: "c4", ReqID: 1, TTL: 9 * s, LockDelay: s, Value: []byte("set"),
			More: []fsm.Item{{Key: "r", Mode: fsm.ModeShared}, {Key: "y"}}}, // a retry: Seen
		&fsm.Acquire{Key: "p", Holder: "c5", ReqID: 1, TTL: s, LockDelay: 20 * s, More: []fsm.Item{{Key: "q", Mode: fsm.ModeSemaphore, Limit: 5}}},
		&fsm.Acquire{Key: "z", Holder: "c5", ReqID: 2, TTL: s, LockDelay: 20 * s, Mode: fsm.ModeShared},
	}
	for i, c := range cmds {
		if r := apply(t, f, uint64(i+1), st(1, 0), c); r.Results[0].Code != fsm.Granted && r.Results[0].Code != fsm.Promoted {
			t.Fatalf("setup %d: %+v", i, r.Results)
		}
	}
	apply(t, f, uint64(len(cmds)+1), st(1, 2*s), fsm.Expire{}) // p, q, z into lock-delay
	return f
}

// TestSnapshotShapes: a state with shapes restores to the same records,
// sets and grant epochs included (restore → snapshot is byte-identical).
// Grants made by this version carry their epoch, so the state is written
// in format 4; a state whose records carry none (restored from format 3)
// is written in format 3 again, and one without shapes either in format 2,
// which replicas of earlier versions read.
func TestSnapshotShapes(t *testing.T) {
	f := shapesFSM(t)
	snap := snapshotBytes(t, f)
	if v := headerVersion(t, snap); v != 4 {
		t.Fatalf("snapshot version %d, want 4", v)
	}
	g := fsm.New(fsm.Config{})
	if err := restoreBytes(g, snap); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(allLeases(f), allLeases(g)) || f.Stats() != g.Stats() {
		t.Fatalf("restored state differs:\n%+v\n%+v", allLeases(f), allLeases(g))
	}
	if !bytes.Equal(snapshotBytes(t, g), snap) {
		t.Fatal("snapshot → restore → snapshot differs")
	}
	// The restored set still acts as one: releasing y releases x and r too.
	x, _ := g.Get("x")
	if x.Set == 0 || !reflect.DeepEqual(x.SetKeys, []string{"r", "x", "y"}) || !x.Seen {
		t.Fatalf("restored set member %+v", x)
	}
	if r := one(t, g, 20, st(1, 3*s), rel("y", "c4", x.Token)); r.Code != fsm.Released {
		t.Fatalf("release of a restored set: %+v", r)
	}
	for _, k := range []string{"x", "y"} {
		if _, ok := g.Get(k); ok {
			t.Fatalf("%s still held after its set was released", k)
		}
	}
	if hs := g.Holdings("r"); len(hs) != 2 {
		t.Fatalf("r after the set's release: %+v", hs)
	}

	for _, l := range allLeases(g) {
		if l.GrantEpoch != 1 {
			t.Fatalf("restored %s with grant epoch %d, want 1", l.Key, l.GrantEpoch)
		}
	}
	plain := richFSM(t, 50, fsm.Config{})
	if v := headerVersion(t, snapshotBytes(t, plain)); v != 4 {
		t.Fatalf("a state of fresh grants is written in version %d, want 4", v)
	}
	for _, c := range []struct {
		version uint64
		recs    []craftRec
	}{
		{3, []craftRec{{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld, mode: fsm.ModeShared}}},
		{2, []craftRec{{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld}}},
	} {
		h := fsm.New(fsm.Config{})
		if err := restoreBytes(h, craft{version: c.version, epoch: 1, applied: 9, now: 6 * s, recs: c.recs}.bytes()); err != nil {
			t.Fatal(err)
		}
		if v := headerVersion(t, snapshotBytes(t, h)); v != c.version {
			t.Fatalf("a state restored from version %d is written in version %d", c.version, v)
		}
	}
}

// headerVersion reads the version in a snapshot's header frame.
func headerVersion(t tb, snap []byte) uint64 {
	t.Helper()
	fr := frames(t, snap)[0]
	hdr := snap[fr[0]:fr[1]]
	_, n := binary.Uvarint(hdr) // frame length
	v, _ := binary.Uvarint(hdr[n:])
	return v
}

// TestRestoreShapeChecks: restore-bounds for shapes. Restore refuses
// records no command sequence can reach: incompatible shapes on a key, a
// semaphore over or across limits, two live holdings of one holder on a
// key, a multi-key grant whose members disagree or that has one member,
// unknown modes, flags or limits, and several records of a key in format
// 2. A state reached with an UNSAFE knob restores under that knob.
func TestRestoreShapeChecks(t *testing.T) {
	rec := func(key, holder string, token uint64, mode fsm.Mode, limit uint64) craftRec {
		return craftRec{key: key, holder: holder, req: 1, token: token, ttl: 10 * s, expiry: 15 * s,
			state: fsm.StateHeld, mode: mode, limit: limit}
	}
	member := func(key string, token uint64) craftRec {
		r := rec(key, "c9", token, fsm.ModeExclusive, 0)
		r.flags = 2
		return r
	}
	ok := []craftRec{
		rec("a", "c1", 3, fsm.ModeShared, 0), rec("a", "c2", 4, fsm.ModeShared, 0),
		rec("b", "c1", 5, fsm.ModeSemaphore, 2), rec("b", "c2", 6, fsm.ModeSemaphore, 2),
		member("c", 7), member("d", 7),
	}
	good := craft{version: 3, epoch: 1, applied: 9, now: 6 * s, recs: ok}
	if err := restoreBytes(fsm.New(fsm.Config{}), good.bytes()); err != nil {
		t.Fatalf("a sound version-3 snapshot: %v", err)
	}
	with := func(recs ...craftRec) craft { c := good; c.recs = recs; return c }
	diff := member("d", 7)
	diff.expiry = 14 * s
	cases := []struct {
		name   string
		c      craft
		unsafe fsm.Config // restores under this knob
	}{
		{"exclusive beside shared", with(rec("a", "c1", 3, fsm.ModeShared, 0), rec("a", "c2", 4, fsm.ModeExclusive, 0)),
			fsm.Config{UnsafeSharedBesideExclusive: true}},
		{"shared beside exclusive", with(rec("a", "c1", 3, fsm.ModeExclusive, 0), rec("a", "c2", 4, fsm.ModeShared, 0)),
			fsm.Config{UnsafeSharedBesideExclusive: true}},
		{"semaphore over its limit", with(rec("b", "c1", 3, fsm.ModeSemaphore, 1), rec("b", "c2", 4, fsm.ModeSemaphore, 1)),
			fsm.Config{UnsafeSemaphoreOvergrant: true}},
		{"semaphores of two limits", with(rec("b", "c1", 3, fsm.ModeSemaphore, 2), rec("b", "c2", 4, fsm.ModeSemaphore, 3)),
			fsm.Config{UnsafeSemaphoreOvergrant: true}},
		{"two live holdings of a holder", with(rec("a", "c1", 3, fsm.ModeShared, 0), rec("a", "c1", 4, fsm.ModeShared, 0)), fsm.Config{}},
		{"a set of one", with(member("c", 7)), fsm.Config{UnsafePartialSet: true}},
		{"set members differ", with(member("c", 7), diff), fsm.Config{}},
		{"unknown mode", with(rec("a", "c1", 3, 3, 0)), fsm.Config{}},
		{"semaphore without a limit", with(rec("a", "c1", 3, fsm.ModeSemaphore, 0)), fsm.Config{}},
		{"limit on a shared holding", with(rec("a", "c1", 3, fsm.ModeShared, 2)), fsm.Config{}},
		{"limit above 32 bits", with(rec("a", "c1", 3, fsm.ModeSemaphore, 1<<33)), fsm.Config{}},
		{"tokens out of order", with(rec("a", "c1", 4, fsm.ModeShared, 0), rec("a", "c2", 3, fsm.ModeShared, 0)), fsm.Config{}},
		{"two records of a key in version 2", craft{version: 2, epoch: 1, applied: 9, now: 6 * s,
			recs: []craftRec{{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld},
				{key: "a", holder: "c2", req: 1, token: 4, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld}}}, fsm.Config{}},
		{"grant epoch flag in version 3", with(craftRec{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s,
			state: fsm.StateHeld, flags: 4, grantEpoch: 1}), fsm.Config{}},
		{"grant epoch after the snapshot's", craft{version: 4, epoch: 1, applied: 9, now: 6 * s,
			recs: []craftRec{{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld, flags: 4, grantEpoch: 2}}}, fsm.Config{}},
		{"grant epoch 0", craft{version: 4, epoch: 1, applied: 9, now: 6 * s,
			recs: []craftRec{{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld, flags: 4}}}, fsm.Config{}},
		{"set flag in version 2", craft{version: 2, epoch: 1, applied: 9, now: 6 * s,
			recs: []craftRec{{key: "a", holder: "c1", req: 1, token: 3, ttl: 10 * s, expiry: 15 * s, state: fsm.StateHeld, flags: 2}}}, fsm.Config{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := restoreBytes(fsm.New(fsm.Config{}), c.c.bytes())
			if !errors.Is(err, fsm.ErrCorruptSnapshot) {
				t.Fatalf("restored: %v", err)
			}
			if !c.unsafe.UnsafeSemaphoreOvergrant && !c.unsafe.UnsafeSharedBesideExclusive && !c.unsafe.UnsafePartialSet {
				return
			}
			if err := restoreBytes(fsm.New(c.unsafe), c.c.bytes()); err != nil {
				t.Fatalf("under %+v: %v", c.unsafe, err)
			}
		})
	}
}

// TestUnsafeShapeKnobs: each UNSAFE shape knob breaks exactly its rule,
// so the chaos harness's checkers have something to catch.
func TestUnsafeShapeKnobs(t *testing.T) {
	t.Run("semaphore-overgrant", func(t *testing.T) {
		f := fsm.New(fsm.Config{UnsafeSemaphoreOvergrant: true})
		one(t, f, 1, st(1, 0), fsm.Promote{})
		for i, want := range []fsm.Code{fsm.Granted, fsm.Granted, fsm.Held} {
			if r := one(t, f, uint64(i+2), st(1, 0), shaped("n", fmt.Sprint("c", i), 1, fsm.ModeSemaphore, 1)); r.Code != want {
				t.Fatalf("holder %d: %+v, want %v", i, r, want)
			}
		}
	})
	t.Run("shared-beside-exclusive", func(t *testing.T) {
		f := fsm.New(fsm.Config{UnsafeSharedBesideExclusive: true})
		one(t, f, 1, st(1, 0), fsm.Promote{})
		one(t, f, 2, st(1, 0), shaped("k", "w", 1, fsm.ModeExclusive, 0))
		if r := one(t, f, 3, st(1, 0), shaped("k", "r", 1, fsm.ModeShared, 0)); r.Code != fsm.Granted {
			t.Fatalf("shared beside exclusive: %+v", r)
		}
		if r := one(t, f, 4, st(1, 0), shaped("k", "w2", 1, fsm.ModeExclusive, 0)); r.Code != fsm.Held {
			t.Fatalf("a second exclusive: %+v", r)
		}
	})
	t.Run("partial-set", func(t *testing.T) {
		f := fsm.New(fsm.Config{UnsafePartialSet: true})
		one(t, f, 1, st(1, 0), fsm.Promote{})
		one(t, f, 2, st(1, 0), shaped("b", "other", 1, fsm.ModeExclusive, 0))
		c := &fsm.Acquire{Key: "a", Holder: "c1", ReqID: 1, TTL: 5 * s, More: []fsm.Item{{Key: "b"}}}
		if r := one(t, f, 3, st(1, 0), c); r.Code != fsm.Granted {
			t.Fatalf("partial set: %+v", r)
		}
		if l, _ := f.Get("b"); l.Holder != "other" {
			t.Fatalf("b taken from its holder: %+v", l)
		}
		if l, _ := f.Get("a"); l.Holder != "c1" || l.Set != 3 {
			t.Fatalf("a: %+v", l)
		}
		// The safe FSM refuses the same request.
		g := fsm.New(fsm.Config{})
		one(t, g, 1, st(1, 0), fsm.Promote{})
		one(t, g, 2, st(1, 0), shaped("b", "other", 1, fsm.ModeExclusive, 0))
		if r := one(t, g, 3, st(1, 0), c); r.Code != fsm.Held {
			t.Fatalf("safe FSM: %+v", r)
		}
	})
}
