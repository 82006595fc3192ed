package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// craft builds snapshots in the current format with valid checksums, so
// only Restore's own checks stand between their numbers and the state.
type craft struct {
	version        uint64 // 2 unless set
	epoch, applied uint64
	now            time.Duration
	recs           []craftRec
	marks          []craftMark
}

type craftRec struct {
	key, holder        string
	req, token         uint64
	ttl, delay, expiry time.Duration
	state              fsm.State
	flags              byte // version 3: mode, limit and flags
	mode               fsm.Mode
	limit              uint64
	grantEpoch         uint64 // written after the flags if flag 4 is set
}

type craftMark struct {
	key, holder string
	req         uint64
	due         time.Duration
}

func (c craft) bytes() []byte {
	version := c.version
	if version == 0 {
		version = 2
	}
	hdr := binary.AppendUvarint(nil, version)
	hdr = binary.AppendUvarint(hdr, c.epoch)
	hdr = binary.AppendVarint(hdr, int64(c.now))
	hdr = binary.AppendUvarint(hdr, c.applied)
	hdr = binary.AppendUvarint(hdr, uint64(len(c.recs)))
	hdr = binary.AppendUvarint(hdr, uint64(len(c.marks)))
	out := append([]byte(snapshotMagic), frame(hdr)...)
	if len(c.recs) > 0 {
		b := binary.AppendUvarint(nil, uint64(len(c.recs)))
		for _, r := range c.recs {
			b = binary.AppendUvarint(b, uint64(len(r.key)))
			b = append(b, r.key...)
			b = binary.AppendUvarint(b, uint64(len(r.holder)))
			b = append(b, r.holder...)
			b = binary.AppendUvarint(b, r.req)
			b = binary.AppendUvarint(b, r.token)
			b = binary.AppendVarint(b, int64(r.ttl))
			b = binary.AppendVarint(b, int64(r.delay))
			b = binary.AppendVarint(b, int64(r.expiry))
			b = append(b, byte(r.state), r.flags)
			if r.flags&4 != 0 {
				b = binary.AppendUvarint(b, r.grantEpoch)
			}
			if version >= 3 {
				b = append(b, byte(r.mode))
				b = binary.AppendUvarint(b, r.limit)
			}
			b = append(b, 0) // empty value
		}
		out = append(out, frame(b)...)
	}
	if len(c.marks) > 0 {
		b := binary.AppendUvarint(nil, uint64(len(c.marks)))
		for _, m := range c.marks {
			b = binary.AppendUvarint(b, uint64(len(m.key)))
			b = append(b, m.key...)
			b = binary.AppendUvarint(b, uint64(len(m.holder)))
			b = append(b, m.holder...)
			b = binary.AppendUvarint(b, m.req)
			b = append(b, 1)
			b = binary.AppendVarint(b, int64(m.due))
		}
		out = append(out, frame(b)...)
	}
	return out
}

// TestRestoreRangeChecks: restore-bounds. Restore (and ReadBackup) refuse
// any header, record or mark whose numbers no sequence of commands can
// reach, or that could overflow later arithmetic, naming the field; the
// bounds admit every state the rules reach (TestModel restores every
// state it reaches). Issue 9 item 7: a backup with valid checksums and
// Expiry = MaxInt64-1h plus a 24 h lock-delay wrapped negative and granted
// another holder at once.
func TestRestoreRangeChecks(t *testing.T) {
	const h = time.Hour
	held := craftRec{key: "a", holder: "c1", req: 1, token: 5, ttl: 10 * s, expiry: 30 * s, state: fsm.StateHeld}
	delayed := craftRec{key: "a", holder: "c1", req: 1, token: 5, ttl: 10 * s, delay: 5 * s, expiry: 15 * s, state: fsm.StateDelayed}
	base := craft{epoch: 3, applied: 9, now: 20 * s}
	with := func(mod func(*craft)) craft {
		c := base
		c.recs = []craftRec{held}
		c.marks = []craftMark{{"a", "c1", 1, 16 * time.Minute}}
		mod(&c)
		return c
	}
	rec := func(r craftRec, mod func(*craftRec)) func(*craft) {
		return func(c *craft) { mod(&r); c.recs = []craftRec{r} }
	}
	mark := func(mod func(*craftMark)) func(*craft) {
		return func(c *craft) { mod(&c.marks[0]) }
	}
	// The bounds themselves are admitted.
	sound := map[string]craft{
		"plain":                     with(func(*craft) {}),
		"epoch at MaxEpoch":         with(func(c *craft) { c.epoch = fsm.MaxEpoch }),
		"now at MaxNow":             with(func(c *craft) { c.now = fsm.MaxNow; c.recs[0].expiry = fsm.MaxNow + 1; c.marks = nil }),
		"applied at MaxIndex":       with(func(c *craft) { c.applied = fsm.MaxIndex }),
		"token at applied":          with(rec(held, func(r *craftRec) { r.token = 9 })),
		"held, expiry now+ttl":      with(rec(held, func(r *craftRec) { r.expiry = 30 * s })),
		"held, overdue":             with(rec(held, func(r *craftRec) { r.expiry = 1 })),
		"delayed, negative expiry":  with(rec(delayed, func(r *craftRec) { r.expiry = -4 * s })),
		"delayed, expiry now":       with(rec(delayed, func(r *craftRec) { r.expiry = 20 * s })),
		"delayed, overdue":          with(rec(delayed, func(r *craftRec) { r.expiry = -5*s + 1 })),
		"mark due roundUp(now+15m)": with(mark(func(m *craftMark) { m.due = 16 * time.Minute })),
		"mark overdue":              with(mark(func(m *craftMark) { m.due = time.Minute })),
	}
	for name, c := range sound {
		if err := restoreBytes(fsm.New(fsm.Config{}), c.bytes()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := []struct {
		name, field string
		c           craft
	}{
		{"the issue's backup", "expiry", with(rec(delayed, func(r *craftRec) {
			r.expiry, r.delay, r.ttl = math.MaxInt64-h, 24*h, h
		}))},
		{"the issue's backup, held", "expiry", with(rec(held, func(r *craftRec) {
			r.expiry, r.delay, r.ttl = math.MaxInt64-h, 24*h, h
		}))},
		{"epoch 2^64-1", "epoch", with(func(c *craft) { c.epoch = math.MaxUint64 })},
		{"epoch above MaxEpoch", "epoch", with(func(c *craft) { c.epoch = fsm.MaxEpoch + 1 })},
		{"negative now", "now", with(func(c *craft) { c.now = -1 })},
		{"now above MaxNow", "now", with(func(c *craft) { c.now = fsm.MaxNow + 1 })},
		{"applied above MaxIndex", "applied", with(func(c *craft) { c.applied = fsm.MaxIndex + 1 })},
		{"token above applied", "token", with(rec(held, func(r *craftRec) { r.token = 10 }))},
		{"token 0", "token", with(rec(held, func(r *craftRec) { r.token = 0 }))},
		{"request id 0", "request id", with(rec(held, func(r *craftRec) { r.req = 0 }))},
		{"held, expiry after now+ttl", "expiry", with(rec(held, func(r *craftRec) { r.expiry = 30*s + 1 }))},
		{"held, expiry 0", "expiry", with(rec(held, func(r *craftRec) { r.expiry = 0 }))},
		{"held, expiry min", "expiry", with(rec(held, func(r *craftRec) { r.expiry = math.MinInt64 }))},
		{"delayed, expiry after now", "expiry", with(rec(delayed, func(r *craftRec) { r.expiry = 20*s + 1 }))},
		{"delayed, ended before 0", "expiry", with(rec(delayed, func(r *craftRec) { r.expiry = -5 * s }))},
		{"delayed, expiry min", "expiry", with(rec(delayed, func(r *craftRec) { r.expiry = math.MinInt64 }))},
		{"delayed without lock-delay", "lock-delay", with(rec(delayed, func(r *craftRec) { r.delay = 0 }))},
		{"mark request id 0", "request id", with(mark(func(m *craftMark) { m.req = 0 }))},
		{"mark due 0", "due", with(mark(func(m *craftMark) { m.due = 0 }))},
		{"mark due negative", "due", with(mark(func(m *craftMark) { m.due = -time.Minute }))},
		{"mark due too late", "due", with(mark(func(m *craftMark) { m.due = 17 * time.Minute }))},
		{"mark due max", "due", with(mark(func(m *craftMark) { m.due = math.MaxInt64 }))},
		{"mark due off the granule", "due", with(mark(func(m *craftMark) { m.due = 15*time.Minute + 1 }))},
	}
	for _, tc := range bad {
		data := tc.c.bytes()
		f := fsm.New(fsm.Config{})
		err := restoreBytes(f, data)
		if !errors.Is(err, fsm.ErrCorruptSnapshot) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: Restore: %v, want ErrCorruptSnapshot naming %q", tc.name, err, tc.field)
		}
		if st := f.Stats(); st.Held+st.Delayed+st.Marks != 0 || st.Epoch != 0 {
			t.Errorf("%s: refused restore changed the state: %+v", tc.name, st)
		}
		if _, err := fsm.ReadBackup(bytes.NewReader(data)); !errors.Is(err, fsm.ErrCorruptSnapshot) {
			t.Errorf("%s: ReadBackup: %v", tc.name, err)
		}
	}
}

// TestRestoreMarkCount: a snapshot may hold at most MaxMarks marks (the
// count is checked before any is read).
func TestRestoreMarkCount(t *testing.T) {
	c := craft{epoch: 1, applied: 1}
	data := c.bytes()
	// Re-sign the header with a mark count of MaxMarks+1.
	hdr := binary.AppendUvarint(nil, 2)
	hdr = binary.AppendUvarint(hdr, 1)
	hdr = binary.AppendVarint(hdr, 0)
	hdr = binary.AppendUvarint(hdr, 1)
	hdr = binary.AppendUvarint(hdr, 0)
	hdr = binary.AppendUvarint(hdr, fsm.MaxMarks+1)
	data = append([]byte(snapshotMagic), frame(hdr)...)
	if err := restoreBytes(fsm.New(fsm.Config{}), data); !errors.Is(err, fsm.ErrCorruptSnapshot) || !strings.Contains(err.Error(), "marks") {
		t.Fatalf("Restore: %v", err)
	}
}

// TestPromoteMaxEpoch: a Promote to an epoch above MaxEpoch is Invalid, so
// no state holds one.
func TestPromoteMaxEpoch(t *testing.T) {
	f := fsm.New(fsm.Config{})
	if r := one(t, f, 1, st(fsm.MaxEpoch+1, 0), fsm.Promote{}); r.Code != fsm.Invalid || !strings.Contains(r.Reason, "epoch") {
		t.Fatalf("promote above MaxEpoch: %+v", r)
	}
	if r := one(t, f, 2, st(math.MaxUint64, 0), fsm.Promote{}); r.Code != fsm.Invalid {
		t.Fatalf("promote to 2^64-1: %+v", r)
	}
	if r := one(t, f, 3, st(fsm.MaxEpoch, 0), fsm.Promote{}); r.Code != fsm.Promoted {
		t.Fatalf("promote to MaxEpoch: %+v", r)
	}
}

// TestRestoreUnsafeSkipRebase: a state reached with the UNSAFE
// UnsafeSkipRebase knob (a lease whose expiry, kept from a clock far
// ahead, is more than its TTL after the new epoch's now) is outside the
// bounds of the safe rules: a safe FSM refuses it, an FSM with the knob
// (the chaos harness restarting such a node) restores it, within bounds
// that still rule out overflow.
func TestRestoreUnsafeSkipRebase(t *testing.T) {
	f := fsm.New(fsm.Config{UnsafeSkipRebase: true})
	one(t, f, 1, st(1, time.Hour), fsm.Promote{})
	one(t, f, 2, st(1, time.Hour), acq("a", "c1", 1, 10*s, 0))
	one(t, f, 3, st(2, 0), fsm.Promote{})
	snap := snapshotBytes(t, f)
	if err := restoreBytes(fsm.New(fsm.Config{}), snap); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("safe restore of an unsafe state: %v", err)
	}
	g := fsm.New(fsm.Config{UnsafeSkipRebase: true})
	if err := restoreBytes(g, snap); err != nil {
		t.Fatalf("unsafe restore: %v", err)
	}
	bad := craft{epoch: 3, applied: 9, now: 20 * s, recs: []craftRec{{key: "a", holder: "c1", req: 1, token: 5, ttl: h1, delay: 24 * time.Hour, expiry: math.MaxInt64 - h1, state: fsm.StateDelayed}}}
	if err := restoreBytes(g, bad.bytes()); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("unsafe restore of the issue's backup: %v", err)
	}
}

const h1 = time.Hour
