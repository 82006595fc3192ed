package fsm

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Mode says how a holding shares its key with other holdings.
type Mode uint8

// Modes. Values are stable: they are stored in Raft logs and snapshots.
const (
	// ModeExclusive: the holding is alone on its key (the default).
	ModeExclusive Mode = 0
	// ModeShared: any number of shared holdings may hold the key
	// together, and nothing else (readers of a read-write lock).
	ModeShared Mode = 1
	// ModeSemaphore: up to Limit semaphore holdings of the same Limit may
	// hold the key together, and nothing else.
	ModeSemaphore Mode = 2
)

func (m Mode) String() string {
	switch m {
	case ModeExclusive:
		return "exclusive"
	case ModeShared:
		return "shared"
	case ModeSemaphore:
		return "semaphore"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Limits on shapes.
const (
	// MaxLimit is the largest N of a semaphore.
	MaxLimit = 1 << 16
	// MaxSetKeys is the most keys one multi-key acquire may name.
	MaxSetKeys = 64
)

// Item is one key of an acquire, with the mode it is asked in. Limit is
// a semaphore's N (1 to MaxLimit), and 0 in the other modes.
type Item struct {
	Key   string
	Mode  Mode
	Limit uint32
}

func (it Item) String() string {
	if it.Mode == ModeSemaphore {
		return fmt.Sprintf("%s(%s %d)", it.Key, it.Mode, it.Limit)
	}
	return fmt.Sprintf("%s(%s)", it.Key, it.Mode)
}

func (it Item) validate() error {
	if err := checkKey(it.Key); err != nil {
		return err
	}
	switch it.Mode {
	case ModeExclusive, ModeShared:
		if it.Limit != 0 {
			return fmt.Errorf("key %q: a limit (%d) is only for a semaphore", it.Key, it.Limit)
		}
	case ModeSemaphore:
		if it.Limit < 1 || it.Limit > MaxLimit {
			return fmt.Errorf("key %q: semaphore limit %d out of range [1, %d]", it.Key, it.Limit, MaxLimit)
		}
	default:
		return fmt.Errorf("key %q: unknown mode %d", it.Key, uint8(it.Mode))
	}
	return nil
}

// keyState is everything on one key: its holdings and the lock-delay
// remnants of expired ones, in token order, with counts by mode (remnants
// included: a remnant keeps its place in its mode until its delay ends).
type keyState struct {
	key  string
	recs []*record
	one  [1]*record // recs' first backing: most keys hold one record
	// n counts recs by mode; limit is the semaphore's N while n[ModeSemaphore] > 0.
	n     [3]int32
	limit uint32
}

// shaped reports whether r needs snapshot format 3: a shape, or a set.
func (r *record) shaped() bool { return r.Mode != ModeExclusive || r.Limit != 0 || r.set != nil }

// live returns holder's held record on the key, or nil. A holder has at
// most one (lock-delay remnants are not holdings).
func (ks *keyState) live(holder string) *record {
	if ks == nil {
		return nil
	}
	for _, r := range ks.recs {
		if r.State == StateHeld && r.Holder == holder {
			return r
		}
	}
	return nil
}

// byToken returns the record with token, or nil.
func (ks *keyState) byToken(token uint64) *record {
	if ks == nil {
		return nil
	}
	i, ok := slices.BinarySearchFunc(ks.recs, token, func(r *record, t uint64) int {
		switch {
		case r.Token < t:
			return -1
		case r.Token > t:
			return 1
		}
		return 0
	})
	if !ok {
		return nil
	}
	return ks.recs[i]
}

// firstLive returns the held record with the lowest token, or nil.
func (ks *keyState) firstLive() *record {
	if ks == nil {
		return nil
	}
	for _, r := range ks.recs {
		if r.State == StateHeld {
			return r
		}
	}
	return nil
}

func (ks *keyState) add(r *record) {
	// A new grant has the highest token of the key (its entry's index),
	// except in Restore, which adds in token order too.
	if ks.recs == nil {
		ks.recs = ks.one[:0]
	}
	ks.recs = append(ks.recs, r)
	if i := len(ks.recs) - 1; i > 0 && ks.recs[i-1].Token > r.Token {
		slices.SortFunc(ks.recs, func(a, b *record) int { return cmp.Compare(a.Token, b.Token) })
	}
	if int(r.Mode) < len(ks.n) {
		ks.n[r.Mode]++
	}
	if r.Mode == ModeSemaphore {
		ks.limit = r.Limit
	}
}

func (ks *keyState) del(r *record) {
	i := slices.Index(ks.recs, r)
	if i < 0 {
		return
	}
	ks.recs = slices.Delete(ks.recs, i, i+1)
	if int(r.Mode) < len(ks.n) {
		ks.n[r.Mode]--
	}
	if ks.n[ModeSemaphore] == 0 {
		ks.limit = 0
	}
}

// block is why an item cannot be granted now.
type block struct {
	// bad is set when the item can never be granted while the key's
	// holdings last (a semaphore asked with another N): Invalid.
	bad string
	// first is the blocking record to report: the first held one in
	// token order, else the first remnant.
	first *record
	// wait is the longest the key can stay unavailable to the item unless
	// released earlier.
	wait time.Duration
}

// compat reports whether it can be granted on ks beside what is there,
// leaving out own (the asking holder's holding, which the grant would
// replace; nil if none) and, with excl, every member of the grants it
// names. now is the FSM's clock (records due at now are already reaped).
//
// Invariant shape-compatibility: Exclusive only on an empty key; Shared
// only beside Shared; Semaphore(N) only beside Semaphore(N), fewer than N
// of them; a Semaphore of another N is Invalid. Lock-delay remnants count
// in their mode until their delay ends. Guarded by testdata/shapes*.txt,
// TestShapeCompatibility and TestModel.
func (f *FSM) compat(ks *keyState, it Item, skip []*record) (ok bool, b block) {
	return compat(ks, it, skip, f.now, &f.cfg)
}

// compat is FSM.compat at logical time now under cfg's knobs; skip lists
// the records left out.
func compat(ks *keyState, it Item, skip []*record, now time.Duration, cfg *Config) (ok bool, b block) {
	if ks == nil || len(ks.recs) == 0 {
		return true, b
	}
	n := ks.n
	for _, r := range skip {
		if r.Key == ks.key && int(r.Mode) < len(n) {
			n[r.Mode]--
		}
	}
	skipped := func(r *record) bool { return len(skip) > 0 && slices.Contains(skip, r) }
	total := n[0] + n[1] + n[2]
	// blocks says which records stand in it's way.
	var blocks func(r *record) bool
	switch it.Mode {
	case ModeExclusive:
		ok = total == 0
		blocks = func(*record) bool { return true }
	case ModeShared:
		ok = n[ModeExclusive] == 0 && n[ModeSemaphore] == 0
		if cfg.UnsafeSharedBesideExclusive {
			ok = n[ModeSemaphore] == 0
		}
		blocks = func(r *record) bool { return r.Mode != ModeShared }
	case ModeSemaphore:
		if n[ModeSemaphore] > 0 && ks.limit != it.Limit {
			return false, block{bad: fmt.Sprintf("key %q is a semaphore of %d, not %d: every holder of a semaphore gives the same number of slots", ks.key, ks.limit, it.Limit)}
		}
		limit := int32(it.Limit)
		if cfg.UnsafeSemaphoreOvergrant {
			limit++
		}
		ok = n[ModeExclusive] == 0 && n[ModeShared] == 0 && n[ModeSemaphore] < limit
		if n[ModeExclusive]+n[ModeShared] > 0 {
			blocks = func(r *record) bool { return r.Mode != ModeSemaphore }
		} else {
			blocks = func(*record) bool { return true }
		}
	}
	if ok {
		return true, b
	}
	// A full semaphore frees a slot when its first holding ends; anything
	// else is free when the last blocking record ends.
	full := it.Mode == ModeSemaphore && n[ModeExclusive]+n[ModeShared] == 0
	var remnant *record
	first := true
	for _, r := range ks.recs {
		if skipped(r) || !blocks(r) {
			continue
		}
		if b.first == nil && r.State == StateHeld {
			b.first = r
		}
		if remnant == nil && r.State != StateHeld {
			remnant = r
		}
		w := r.FreeAt() - now
		if first || full && w < b.wait || !full && w > b.wait {
			b.wait = w
		}
		first = false
	}
	if b.first == nil {
		b.first = remnant
	}
	return false, b
}

// grantSet ties the holdings of one multi-key grant together: they share
// holder, request id, token (= Set), TTL, lock-delay, expiry, state, Seen
// and value, and are granted, extended, refreshed, reaped, released,
// cancelled and replaced together.
type grantSet struct {
	members []*record // in key order
	keys    []string  // the members' keys, in key order (Lease.SetKeys)
}

// members returns the records of r's grant: r alone, or its set.
func (r *record) members() []*record {
	if r.set == nil {
		return []*record{r}
	}
	return r.set.members
}

// Admits predicts, without changing anything, whether an acquire of it by
// holder (with Acquire.KeepLockDelay keep) would be granted on its key at
// logical time now, as Acquire would judge it if applied then: records
// due by now count as reaped (a lease with a lock-delay as its remnant),
// holder's own live holding (which a grant replaces; with keep, only one
// without a lock-delay) and every record with token except (a grant
// about to be released; 0 for none) are left out, and extra further
// semaphore holdings of it.Limit count as granted (requests proposed
// ahead of this one). If not, wait is how long the key's records may keep
// it unavailable (0 when only the extra ones do), and bad is set if it can
// never be granted while they last (a semaphore of another limit).
//
// Node's waiter queues use it to decide when to propose a waiter and
// when to look again; the FSM decides when the entry applies.
func (f *FSM) Admits(it Item, holder string, keep bool, now time.Duration, extra int, except uint64) (ok bool, wait time.Duration, bad string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	view := &keyState{key: it.Key}
	if ks := f.keys[it.Key]; ks != nil {
		for _, r := range ks.recs {
			switch {
			case except != 0 && r.Token == except:
				continue
			case r.State == StateHeld && r.Holder == holder && r.Expiry > now:
				if keep && r.LockDelay > 0 {
					// Kept whatever the shape (see Acquire.KeepLockDelay).
					return false, r.FreeAt() - now, ""
				}
				continue
			case r.FreeAt() <= now:
				continue
			}
			view.add(r) // read only: compat does not change records
		}
	}
	if extra > 0 && it.Mode == ModeSemaphore {
		if view.n[ModeSemaphore] == 0 {
			view.limit = it.Limit
		}
		view.n[ModeSemaphore] += int32(extra)
	}
	ok, b := compat(view, it, nil, now, &f.cfg)
	return ok, max(b.wait, 0), b.bad
}
