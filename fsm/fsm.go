package fsm

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/internal/holdset"
)

// State says whether a record holds a key or only blocks it.
type State uint8

const (
	// StateHeld: a holder has the key until Expiry.
	StateHeld State = 1
	// StateDelayed: the holder expired and the key stays unavailable until
	// Expiry+LockDelay (Chubby's lock-delay); nobody holds it.
	StateDelayed State = 2
)

func (s State) String() string {
	switch s {
	case StateHeld:
		return "held"
	case StateDelayed:
		return "lock-delay"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Lease is a read-only copy of one holding, or of the lock-delay remnant
// of one that expired.
type Lease struct {
	Key    string
	Holder string
	// ReqID is the request id of the acquire that started this holding.
	ReqID uint64
	// Token is the Raft index of the entry that granted this holding.
	Token     uint64
	TTL       time.Duration
	LockDelay time.Duration
	// Expiry is the logical expiry in epoch Epoch of the FSM.
	Expiry time.Duration
	Value  []byte
	State  State
	// Seen is set once a retry of the granting request (the same holder
	// and request id) was applied: its holder may have learnt of the grant
	// through it, so a Cancel of the request no longer releases it. False
	// on a new holding. Records restored from a version-1 snapshot have it
	// set (the safe default: Cancel never releases them).
	Seen bool
	// GrantEpoch is the epoch whose leader granted the holding: a Cancel
	// releases it only if it names that epoch (see Cancel). 0 on records
	// restored from a snapshot older than version 4 that did not need it.
	GrantEpoch uint64
	// Mode is how the holding shares its key; Limit is a semaphore's N
	// (0 in the other modes).
	Mode  Mode
	Limit uint32
	// Set is the token of the multi-key grant this holding belongs to
	// (equal to Token), 0 if it was granted alone; SetKeys are that
	// grant's keys, in key order (nil if alone). SetKeys is shared: do
	// not modify it.
	Set     uint64
	SetKeys []string
}

// FreeAt is the logical time from which the key can be granted to another
// holder if it is not released first.
func (l *Lease) FreeAt() time.Duration { return l.Expiry + l.LockDelay }

// holding is what a record stores of a Lease (Set and SetKeys come from
// its grantSet).
type holding struct {
	Key        string
	Holder     string
	ReqID      uint64
	Token      uint64
	TTL        time.Duration
	LockDelay  time.Duration
	Expiry     time.Duration
	Value      []byte
	State      State
	Seen       bool
	GrantEpoch uint64
	Mode       Mode
	Limit      uint32
}

// record is the mutable form of a Lease; lane, prev and next are its
// place in the due queue (lane nil while not queued), set its multi-key
// grant (nil if granted alone).
type record struct {
	holding
	lane       *lane
	prev, next *record
	set        *grantSet
	// hprev and hnext link the holder's live holdings (FSM.holders);
	// tracked says r is on that list.
	hprev, hnext *record
	tracked      bool
}

// FreeAt is Lease.FreeAt.
func (r *record) FreeAt() time.Duration { return r.Expiry + r.LockDelay }

// lease returns a copy of r that shares no memory with the state: an
// embedded caller that writes into a Get's value must not change the
// leader's replica alone.
func (r *record) lease() Lease {
	l := r.view()
	l.Value, l.SetKeys = bytes.Clone(l.Value), slices.Clone(l.SetKeys)
	return l
}

// view is r as a Lease that shares r's value and set keys: for readers
// inside this package that copy them out themselves (a snapshot).
func (r *record) view() Lease {
	h := &r.holding
	l := Lease{Key: h.Key, Holder: h.Holder, ReqID: h.ReqID, Token: h.Token, TTL: h.TTL, LockDelay: h.LockDelay,
		Expiry: h.Expiry, Value: h.Value, State: h.State, Seen: h.Seen, GrantEpoch: h.GrantEpoch, Mode: h.Mode, Limit: h.Limit}
	if r.set != nil {
		l.Set, l.SetKeys = h.Token, r.set.keys
	}
	return l
}

// setToken is the token of r's multi-key grant, 0 if it has none.
func (r *record) setToken() uint64 {
	if r.set == nil {
		return 0
	}
	return r.Token
}

// due is the logical time at which the reaper must look at the record:
// expiry for a held lease, end of lock-delay for a delayed one.
func (r *record) due() time.Duration {
	if r.State == StateHeld {
		return r.Expiry
	}
	return r.Expiry + r.LockDelay
}

// EventType says what changed.
type EventType uint8

// Event types.
const (
	EventGranted  EventType = 1
	EventExtended EventType = 2
	EventReleased EventType = 3
	// EventExpired: the holder's lease ran out; with a lock-delay the key
	// stays blocked until a later EventFreed.
	EventExpired EventType = 4
	// EventFreed: a lock-delay ended and the key became free.
	EventFreed EventType = 5
	// EventPromoted: a new epoch began (Key is empty).
	EventPromoted EventType = 6
	// EventRestored: the whole state was replaced by a snapshot; observers
	// must re-read what they care about.
	EventRestored EventType = 7
)

func (t EventType) String() string {
	switch t {
	case EventGranted:
		return "granted"
	case EventExtended:
		return "extended"
	case EventReleased:
		return "released"
	case EventExpired:
		return "expired"
	case EventFreed:
		return "freed"
	case EventPromoted:
		return "promoted"
	case EventRestored:
		return "restored"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Event is one applied change, in log order.
type Event struct {
	Type   EventType
	Index  uint64
	Key    string
	Holder string
	Token  uint64
	Value  []byte
	// Mode, Limit and Set describe the holding (see Lease).
	Mode  Mode
	Limit uint32
	Set   uint64
}

// event is the Event of type t at index for record r: Freed carries no
// holder (nobody holds a key whose lock-delay ended), only Granted a value.
func event(t EventType, index uint64, r *record) Event {
	e := Event{Type: t, Index: index, Key: r.Key, Holder: r.Holder, Token: r.Token,
		Mode: r.Mode, Limit: r.Limit, Set: r.setToken()}
	if t == EventFreed {
		e.Holder = ""
	}
	if t == EventGranted {
		e.Value = bytes.Clone(r.Value) // the feed's readers own their events
	}
	return e
}

// Config configures an FSM. The zero value is usable.
type Config struct {
	// Events enables the change feed (Changes/Drain). Leave it off when
	// nobody drains, or events accumulate.
	Events bool
	// OnFatal is called once, on the applying goroutine, when an entry was
	// written by a newer version of leasenode or fails its checksum
	// (IsFatal). Applying or skipping it could make this replica diverge,
	// so the FSM applies nothing from that entry on: it and every later
	// entry get a single Fatal result, and the state, clock and applied
	// index stay at the last good entry. The owner must stop the node.
	// OnFatal runs after Apply or ApplyBatch released the FSM's lock, so it
	// may call the FSM's read methods.
	OnFatal func(error)
	// UnsafeSkipRebase makes Promote neither reap nor move anything: every
	// expiry stays as the previous epoch's clock left it and is judged by
	// the new epoch's unrelated clock. UNSAFE: it breaks no-early-expiry;
	// it exists only so the chaos harness can show that its checkers catch
	// it.
	UnsafeSkipRebase bool
	// UnsafeSemaphoreOvergrant grants a semaphore of N to N+1 holders.
	// UNSAFE: it breaks semaphore-limit; for the chaos harness only.
	UnsafeSemaphoreOvergrant bool
	// UnsafeSharedBesideExclusive grants a shared holding beside an
	// exclusive one. UNSAFE: it breaks shape-compatibility; for the chaos
	// harness only.
	UnsafeSharedBesideExclusive bool
	// UnsafePartialSet grants a multi-key acquire on the keys that are
	// free and skips the others, answering Granted. UNSAFE: it breaks
	// set-atomicity; for the chaos harness only.
	UnsafePartialSet bool
}

// unsafe reports whether a knob breaks the state's invariants, so that
// Restore must accept the states it reaches (see restoreBounds).
func (c *Config) unsafe() bool {
	return c.UnsafeSkipRebase || c.UnsafeSemaphoreOvergrant || c.UnsafeSharedBesideExclusive || c.UnsafePartialSet
}

// FSM is the lease state machine. Apply and ApplyBatch must be called from
// one goroutine (Raft's); Get, List, Mark, Stats, NextExpiry, Fatal and
// Drain may be called concurrently with them.
type FSM struct {
	cfg      Config
	maxMarks int // MaxMarks; lowered by tests

	// appliedBytes counts the bytes of every entry applied and appliedOps
	// the lease operations in them, for the node's log compaction; they
	// are not part of the state.
	appliedBytes, appliedOps atomic.Uint64

	mu      sync.RWMutex
	epoch   uint64
	now     time.Duration
	applied uint64 // index of the last applied entry
	keys    map[string]*keyState
	order   *btree.BTreeG[*keyState] // by key, for List and snapshots
	due     dueQueue                 // every record, by (due, key, token)
	// nHeld and nDelayed count records in StateHeld and StateDelayed,
	// nShaped those with a shape or in a set (snapshot format 3).
	nHeld, nDelayed int
	nShaped         int
	// nBytes is the size of the records' keys, holders and values: what a
	// node's quota (node.Limits.MaxLeaseBytes) bounds. Derived state,
	// recomputed by a restore.
	nBytes int64
	// holders lists each holder's live holdings (StateHeld records), for
	// ExtendAll: the head of a list linked through record.hnext. Derived
	// state, rebuilt by a restore; its order is not (extendAll sorts).
	holders map[string]*record
	// holderKeys counts the records on each holder's list (a set's every
	// member): the keys an ExtendAll of the holder would renew.
	holderKeys map[string]int
	marks      markSet
	probe      mark // a lookup key for marks, used under mu (write)

	evMu    sync.Mutex
	events  []Event
	changed chan struct{}

	// fatal is the first fatal entry's error; once set, nothing more is
	// applied (see Config.OnFatal).
	fatal error
	// unreported holds the fatal error found under mu until it is passed
	// to OnFatal once mu is released.
	unreported []error
}

// New returns an empty FSM.
func New(cfg Config) *FSM {
	return &FSM{
		cfg:        cfg,
		maxMarks:   MaxMarks,
		marks:      newMarkSet(),
		keys:       make(map[string]*keyState),
		order:      newOrder(),
		due:        newDueQueue(),
		holders:    make(map[string]*record),
		changed:    make(chan struct{}, 1),
		holderKeys: make(map[string]int),
	}
}

func newOrder() *btree.BTreeG[*keyState] {
	return btree.NewG(32, func(a, b *keyState) bool { return a.key < b.key })
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// Apply implements raft.FSM. It returns a *Response for command entries and
// nil for any other entry type.
func (f *FSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	r := f.applyLog(l)
	fatal := f.takeUnreported()
	f.mu.Unlock()
	f.notify()
	f.reportFatal(fatal)
	return r
}

// ApplyBatch implements raft.BatchingFSM: it applies consecutive entries
// under one lock.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	f.mu.Lock()
	for i, l := range logs {
		out[i] = f.applyLog(l)
	}
	fatal := f.takeUnreported()
	f.mu.Unlock()
	f.notify()
	f.reportFatal(fatal)
	return out
}

// takeUnreported returns and clears the fatal errors not yet passed to
// OnFatal; f.mu is held.
func (f *FSM) takeUnreported() []error {
	errs := f.unreported
	f.unreported = nil
	return errs
}

// reportFatal passes errs to Config.OnFatal. It runs without f.mu, so the
// callback may read the FSM without deadlocking.
func (f *FSM) reportFatal(errs []error) {
	if f.cfg.OnFatal == nil {
		return
	}
	for _, err := range errs {
		f.cfg.OnFatal(err)
	}
}

// applyLog applies one Raft entry; f.mu is held.
//
// Invariant fatal-stop: once an entry is fatal (IsFatal) nothing is applied
// from it on, in the same batch or later, and the state, clock and applied
// index stay at the last good entry: a replica that went on could grant
// leases that replicas understanding the entry never granted (issue 9
// found a leader granting hundreds after such an entry). Guarded by
// TestFatalStopsApplying and testdata/version.txt.
func (f *FSM) applyLog(l *raft.Log) interface{} {
	if f.fatal != nil {
		return f.fatalResp(l.Index)
	}
	if l.Type != raft.LogCommand {
		f.advance(l.Index, len(l.Data))
		return nil
	}
	s, cmd, err := Decode(l.Data)
	if err != nil && IsFatal(err) {
		f.fatal = fmt.Errorf("entry %d: %w", l.Index, err)
		f.unreported = append(f.unreported, f.fatal)
		return f.fatalResp(l.Index)
	}
	f.advance(l.Index, len(l.Data))
	if err != nil {
		return f.resp(l.Index, invalid("", "%v", err))
	}
	f.appliedOps.Add(ops(cmd))
	// f.mu is held (Apply, ApplyBatch): not ApplyCommand, which locks.
	return f.applyLocked(l.Index, s, cmd)
}

// advance records that the entry at index, of n bytes, was applied.
func (f *FSM) advance(index uint64, n int) {
	f.appliedBytes.Add(uint64(n))
	if index > f.applied {
		f.applied = index
	}
}

// ops counts the lease operations in cmd: one per leased key an extend
// names, one per other command.
func ops(cmd Command) uint64 {
	switch c := cmd.(type) {
	case *Extend:
		return uint64(max(len(c.Items), 1))
	case *ExtendAll:
		return uint64(max(c.Count, 1))
	case *Batch:
		var n uint64
		for _, sub := range c.Cmds {
			n += ops(sub)
		}
		return max(n, 1)
	}
	return 1
}

// fatalResp is the response to every entry from the first fatal one on.
func (f *FSM) fatalResp(index uint64) *Response {
	return f.resp(index, Result{Code: Fatal, Reason: fmt.Sprintf("not applied: the FSM stopped at %v", f.fatal)})
}

// applyLocked applies one decoded command; f.mu is held.
func (f *FSM) applyLocked(index uint64, s Stamp, cmd Command) *Response {
	if s.Now < 0 || s.Now > MaxNow {
		return f.resp(index, invalid("", "stamp time %d out of range [0, %d]", s.Now, MaxNow))
	}
	if p, ok := cmd.(Promote); ok {
		return f.promote(index, s, p)
	}
	if s.Epoch != f.epoch {
		return f.resp(index, Result{Code: WrongEpoch,
			Reason: fmt.Sprintf("stamped epoch %d, current %d", s.Epoch, f.epoch)})
	}
	if s.Now > f.now {
		f.now = s.Now
	}
	switch c := cmd.(type) {
	case *Acquire:
		return f.resp(index, f.acquire(index, c))
	case *Extend:
		if err := c.Validate(); err != nil {
			return f.resp(index, invalid("", "%v", err))
		}
		out := make([]Result, len(c.Items))
		for i, it := range c.Items {
			out[i] = f.extend(index, c.Holder, it)
		}
		return &Response{Index: index, Epoch: f.epoch, Now: f.now, Results: out}
	case *ExtendAll:
		return f.resp(index, f.extendAll(index, c))
	case *Release:
		return f.resp(index, f.release(index, c))
	case *Cancel:
		return f.resp(index, f.cancel(index, c))
	case Expire:
		r := &Response{Index: index, Epoch: f.epoch, Now: f.now}
		r.Results = f.expire(index, r.Results)
		return r
	case *Batch:
		if err := c.Validate(); err != nil {
			return f.resp(index, invalid("", "%v", err))
		}
		r := &Response{Index: index, Epoch: f.epoch, Now: f.now}
		for _, sub := range c.Cmds {
			r.Results = append(r.Results, f.applyLocked(index, s, sub).Results...)
		}
		return r
	}
	return f.resp(index, invalid("", "unknown command %T", cmd))
}

// ApplyCommand applies cmd, stamped s, as if it were the entry at index.
// It is the same code path Apply takes after decoding; tests and
// benchmarks use it to drive the FSM without Raft.
func (f *FSM) ApplyCommand(index uint64, s Stamp, cmd Command) *Response {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fatal != nil {
		return f.fatalResp(index)
	}
	if index > f.applied {
		f.applied = index
	}
	r := f.applyLocked(index, s, cmd)
	f.notify()
	return r
}

func (f *FSM) resp(index uint64, r Result) *Response {
	return &Response{Index: index, Epoch: f.epoch, Now: f.now, Results: []Result{r}}
}

// promote starts a new epoch. It first reaps everything due at the old
// clock, exactly as an Expire would (same events; the Expired results
// follow the Promoted one), then moves every record into the new epoch
// with the time it had left: expiry += s.Now - f.now, for a held lease and
// a lock-delay alike, so expiry' = s.Now + max(expiry - old now, 0).
//
// Invariant no-early-expiry: no lease (or lock-delay) ends earlier in real
// time than the time it had left at the last applied stamp. Every stamp
// of an earlier epoch committed before this Promote was read before the
// new leader was elected (a deposed leader cannot commit), and the new
// epoch's clock starts at the election, so at least (old now - stamp)
// plus the new clock's reading has passed since each earlier grant or
// extend: counting the remainder from the new clock can only be late,
// never early. Reaping first keeps an expired but unreaped lease from being
// revived. A full-TTL rebase (before issue 9) was safe too but kept
// abandoned leases alive while leaders changed faster than their TTL.
// Guarded by TestNoEarlyExpiryPromoteKeepsRemaining,
// TestPromoteExpiresAbandonedUnderChurn, testdata/promote.txt, TestModel
// and the failover tests in node.
func (f *FSM) promote(index uint64, s Stamp, _ Promote) *Response {
	if s.Epoch > MaxEpoch {
		return f.resp(index, invalid("", "promote to epoch %d, above MaxEpoch %d", s.Epoch, uint64(MaxEpoch)))
	}
	if s.Epoch <= f.epoch {
		return f.resp(index, Result{Code: WrongEpoch,
			Reason: fmt.Sprintf("promote to epoch %d, current %d", s.Epoch, f.epoch)})
	}
	if f.cfg.UnsafeSkipRebase {
		f.epoch, f.now = s.Epoch, s.Now
		f.emit(Event{Type: EventPromoted, Index: index})
		return f.resp(index, Result{Code: Promoted})
	}
	r := &Response{Index: index, Results: []Result{{Code: Promoted}}}
	r.Results = f.expire(index, r.Results)
	// A uniform shift keeps the due queue's order: no rebuild.
	delta := s.Now - f.now
	f.eachRecord(func(rec *record) bool {
		rec.Expiry += delta
		return true
	})
	f.shiftMarks(f.now, s.Now)
	f.epoch, f.now = s.Epoch, s.Now
	r.Epoch, r.Now = f.epoch, f.now
	f.emit(Event{Type: EventPromoted, Index: index})
	return r
}

// acquire implements takeover, shape and request-id rules for every item
// of c at once: all of them are granted in this entry, or none.
//
// Invariant single-holder (generalised by shape-compatibility): an item is
// granted only when the key's records left at the FSM's now (after
// reapDue: live holdings, and lock-delay remnants, which keep their place
// in their mode) are compatible with it (see compat); an expired holding
// no longer counts once its expiry plus lock-delay is <= now. Release
// removes a holding at once. Guarded by TestSingleHolderTakeover,
// testdata/takeover.txt, testdata/lockdelay.txt, testdata/shapes*.txt and
// TestModel.
//
// Invariant set-atomicity: a multi-key acquire is granted iff every item
// is grantable at once; its holdings get Token = Set = this entry's index
// and the same expiry, and from then on are extended, refreshed, reaped,
// released, cancelled and replaced together (a grantSet), so no state
// ever holds part of a set. Guarded by testdata/shapes-set.txt and
// TestModel (which checks every state it reaches).
//
// Invariant request-id order: request ids of one holder strictly increase.
// First the holder's mark for each item key (see Mark): an id below it, or
// equal to it once its holding ended or it was cancelled, is Stale. Then
// the holder's live holdings on the item keys: the same id is a retry of
// the same grant (same token, refreshed expiry; it must name exactly that
// grant's keys), a higher one a new holding (new token) that replaces
// them, with every other member of their grants, if it is granted; a
// lower one is Stale. Accepting a lower id would let a delayed old request
// replace the holder's live holding with a new token while the client
// still uses the old one, or, once the holding is gone, start a holding
// nobody uses that blocks the key for its TTL and lock-delay. Every
// applied acquire that is not Stale or Invalid raises the marks to its
// id. Guarded by TestRequestIDOrder, TestRequestIDOrderAfterHoldingEnds,
// testdata/reqid.txt, testdata/marks.txt, testdata/shapes-set.txt and
// TestModel.
//
// Invariant lock-delay-kept: with KeepLockDelay, a higher id does not
// replace the holder's live holdings that have a lock-delay (nor their
// grants' other members): it is Held, naming the holding, until it ends.
// Guarded by testdata/lockdelay-own.txt and TestModel.
func (f *FSM) acquire(index uint64, c *Acquire) Result {
	if err := c.Validate(); err != nil {
		return invalid(c.Key, "%v", err)
	}
	// Small buffers on the stack: most acquires name one key.
	var (
		itemBuf  [4]Item
		markBuf  [4]*mark
		ownBuf   [4]*record
		grantBuf [4]bool
		orderBuf [4]int
	)
	items := append(itemBuf[:0], Item{Key: c.Key, Mode: c.Mode, Limit: c.Limit})
	items = append(items, c.More...)
	for _, it := range items {
		f.reapDue(index, it.Key)
	}
	marks, own, granted := markBuf[:0], ownBuf[:0], grantBuf[:0]
	for range items {
		marks, own, granted = append(marks, nil), append(own, nil), append(granted, false)
	}
	retry := false
	for i, it := range items {
		ks := f.keys[it.Key]
		m := f.liveMark(it.Key, c.Holder)
		marks[i] = m
		if m.spends(c.ReqID) {
			return f.staleByMark(it.Key, c.ReqID, m)
		}
		r := ks.live(c.Holder)
		own[i] = r
		if r == nil {
			continue
		}
		if c.ReqID < r.ReqID {
			return Result{Code: Stale, Key: it.Key, Token: r.Token, Holder: r.Holder,
				Reason: fmt.Sprintf("request id %d is older than the holding's %d", c.ReqID, r.ReqID)}
		}
		if c.ReqID == r.ReqID {
			retry = true
		}
	}
	if retry {
		return f.retry(index, c, items, own, marks)
	}
	if c.KeepLockDelay {
		if r := delaying(own); r != nil {
			for i, it := range items {
				f.noteRequest(marks[i], it.Key, c.Holder, c.ReqID)
			}
			return Result{Code: Held, Key: r.Key, Token: r.Token, Holder: r.Holder, Wait: r.FreeAt() - f.now}
		}
	}
	// The holder's grants on the item keys end if this one is granted:
	// they are left out of the compatibility checks, every member alike.
	var replaced []*record
	for _, r := range own {
		if r != nil && !slices.Contains(replaced, r) { // a set's members are own on each of its keys
			replaced = append(replaced, r.members()...)
		}
	}
	var (
		blocked *block
		bkey    string
		wait    time.Duration
		anyOK   bool
	)
	for i, it := range items {
		ok, b := f.compat(f.keys[it.Key], it, replaced)
		if b.bad != "" {
			return Result{Code: Invalid, Key: it.Key, Reason: b.bad}
		}
		granted[i] = ok
		if ok {
			anyOK = true
			continue
		}
		if blocked == nil {
			blocked, bkey = &b, it.Key
		}
		wait = max(wait, b.wait)
	}
	partial := f.cfg.UnsafePartialSet && len(items) > 1 && anyOK
	if blocked != nil && !partial {
		for i, it := range items {
			f.noteRequest(marks[i], it.Key, c.Holder, c.ReqID)
		}
		res := Result{Code: Held, Key: bkey, Wait: wait}
		if r := blocked.first; r != nil {
			res.Token = r.Token
			if r.State == StateHeld {
				res.Holder = r.Holder
			}
		}
		return res
	}
	// Granted: end what it replaces, then add a holding per item.
	for _, r := range own {
		if r == nil || !r.queued() {
			continue // none, or ended with an earlier member
		}
		for _, m := range r.members() {
			f.remove(m)
			if !names(items, m.Key) {
				// A member on a key this grant does not name is free.
				f.noteEnded(m.Key, m.Holder, m.ReqID, f.now)
				f.emit(event(EventReleased, index, m))
			}
		}
	}
	order := orderBuf[:0]
	for i := range items {
		if granted[i] || !partial {
			order = append(order, i)
		}
	}
	var gs *grantSet
	if len(items) > 1 {
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(items[a].Key, items[b].Key) })
		gs = &grantSet{keys: make([]string, len(order))}
		for j, i := range order {
			gs.keys[j] = items[i].Key
		}
	}
	var first *record
	for _, i := range order {
		it := items[i]
		r := &record{holding: holding{Key: it.Key, Holder: c.Holder, ReqID: c.ReqID, Token: index,
			GrantEpoch: f.epoch, Mode: it.Mode, Limit: it.Limit}}
		if gs != nil {
			r.set = gs
			gs.members = append(gs.members, r)
		}
		f.setLease(r, c)
		f.insert(r)
		f.keepMark(marks[i], c.ReqID)
		f.emit(event(EventGranted, index, r))
		if first == nil {
			first = r
		}
	}
	return Result{Code: Granted, Key: c.Key, Token: index, Expiry: first.Expiry}
}

// delaying returns the first of the holder's own live holdings (own, with
// every member of their grants) that has a lock-delay, or nil: an acquire
// with KeepLockDelay waits for it to end instead of replacing it.
func delaying(own []*record) *record {
	for _, r := range own {
		if r == nil {
			continue
		}
		for _, m := range r.members() {
			if m.LockDelay > 0 {
				return m
			}
		}
	}
	return nil
}

// names reports whether items name key.
func names(items []Item, key string) bool {
	for _, it := range items {
		if it.Key == key {
			return true
		}
	}
	return false
}

// retry answers an acquire whose request id is the one a live holding of
// its holder was granted with: a retry after a lost reply. It must name
// exactly that grant's keys; then the whole grant is refreshed (expiry
// from now, TTL, lock-delay and value from the request) and Seen.
func (f *FSM) retry(index uint64, c *Acquire, items []Item, own []*record, marks []*mark) Result {
	g := own[0]
	same := g != nil && g.ReqID == c.ReqID && len(g.members()) == len(items)
	for _, r := range own {
		if !same || r == nil || r.Token != g.Token {
			same = false
			break
		}
	}
	if !same {
		res := Result{Code: Stale, Key: c.Key,
			Reason: fmt.Sprintf("request id %d was granted for another set of keys", c.ReqID)}
		if r := f.keys[c.Key].firstLive(); r != nil {
			res.Holder, res.Token = r.Holder, r.Token
		}
		return res
	}
	for _, m := range g.members() {
		f.setLease(m, c)
		m.Seen = true
		f.emit(event(EventGranted, index, m))
	}
	for i := range items {
		f.keepMark(marks[i], c.ReqID)
	}
	return Result{Code: Granted, Key: c.Key, Token: g.Token, Expiry: g.Expiry, Retry: true}
}

// setLease (re)starts a held lease from an acquire at the FSM's now.
func (f *FSM) setLease(r *record, c *Acquire) {
	r.State = StateHeld
	r.TTL = c.TTL
	r.LockDelay = c.LockDelay
	f.nBytes += int64(len(c.Value) - len(r.Value)) // insert counts key and holder
	r.Value = c.Value
	r.Expiry = f.now + c.TTL
	f.due.update(r)
	f.track(r)
}

// ExtendKeys says how many keys an extend would renew: every member of
// each set counts, as the FSM renews them all. For an ExtendAll of
// holder (items nil), the keys the holder holds; else for each item
// (a lease's key and token) the keys of that grant, or one if it is not
// held. Work of an entry is bounded by this (node's --max-extend-items),
// not by the grants it names: 2,000 sets of 64 keys were 128,000 keys a
// 24-byte entry renewed (outsider review s32).
func (f *FSM) ExtendKeys(holder string, items []ExtendItem) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if items == nil {
		return f.holderKeys[holder]
	}
	n := 0
	for _, it := range items {
		if ks := f.keys[it.Key]; ks != nil {
			if r := held(ks, holder, it.Token); r != nil && r.set != nil {
				n += len(r.set.members)
				continue
			}
		}
		n++
	}
	return n
}

// ExtendSplit splits an Extend of items by holder as the state is at
// now (the leader's clock), or the FSM's clock if later: held lists
// the indices of the items holder holds under the tokens named, unexpired
// at now, and results has, at every other index, the NotHeld result
// applying the Extend at now would give (a holding expired by now is
// reaped first, and not named). A serving leader answers those items
// without proposing them, once it has confirmed that it still leads: no
// later entry can make a holding that is not the holder's now its
// holding under a token the client names, since a grant takes the new
// token of its own entry, and a serving leader has applied every entry
// committed before its term. Proposed, they changed nothing and cost a
// Raft entry of their size on every replica (an outsider's 261 KB
// Extends of keys nobody held went through the log at 6.5 MB/s: review
// s35; with one held key among them, they still did: review s36).
func (f *FSM) ExtendSplit(holder string, items []ExtendItem, now time.Duration) (held []int, results []Result) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now = max(now, f.now) // an entry applies at the later of its stamp and the clock
	results = make([]Result, len(items))
	for i, it := range items {
		ks := f.keys[it.Key]
		if r := heldAt(ks, holder, it.Token, now); r != nil {
			held = append(held, i)
			continue
		}
		results[i] = Result{Code: NotHeld, Key: it.Key}
		if ks == nil {
			continue
		}
		for _, r := range ks.recs {
			if r.State == StateHeld && r.Expiry > now {
				results[i].Holder, results[i].Token = r.Holder, r.Token
				break
			}
		}
	}
	return held, results
}

// heldAt is held, for a holding unexpired at now.
func heldAt(ks *keyState, holder string, token uint64, now time.Duration) *record {
	if ks == nil {
		return nil
	}
	if r := held(ks, holder, token); r != nil && r.Expiry > now {
		return r
	}
	return nil
}

// track puts r, held, on its holder's list (FSM.holders), once.
func (f *FSM) track(r *record) {
	if r.tracked {
		return
	}
	r.tracked = true
	f.holderKeys[r.Holder]++
	r.hprev, r.hnext = nil, f.holders[r.Holder]
	if r.hnext != nil {
		r.hnext.hprev = r
	}
	f.holders[r.Holder] = r
}

// untrack takes r off its holder's list, if it is on it: it is no longer
// held (expired into its lock-delay, or removed).
func (f *FSM) untrack(r *record) {
	if !r.tracked {
		return
	}
	r.tracked = false
	if f.holderKeys[r.Holder]--; f.holderKeys[r.Holder] == 0 {
		delete(f.holderKeys, r.Holder)
	}
	switch {
	case r.hprev != nil:
		r.hprev.hnext = r.hnext
	case r.hnext != nil:
		f.holders[r.Holder] = r.hnext
	default:
		delete(f.holders, r.Holder)
	}
	if r.hnext != nil {
		r.hnext.hprev = r.hprev
	}
	r.hprev, r.hnext = nil, nil
}

// insert adds a new record (its place in the due queue is set by
// setLease).
func (f *FSM) insert(r *record) {
	ks := f.keys[r.Key]
	if ks == nil {
		ks = &keyState{key: r.Key}
		f.keys[r.Key] = ks
		f.order.ReplaceOrInsert(ks)
	}
	r.Key = ks.key // share one copy of the key
	ks.add(r)
	f.nBytes += int64(len(r.Key) + len(r.Holder))
	if r.State == StateHeld {
		f.nHeld++
	} else {
		f.nDelayed++
	}
	if r.shaped() {
		f.nShaped++
	}
}

// held returns holder's live holding with token on the key ks, or nil.
func held(ks *keyState, holder string, token uint64) *record {
	r := ks.byToken(token)
	if r == nil || r.State != StateHeld || r.Holder != holder {
		return nil
	}
	return r
}

// staleByMark is the Stale result for request reqID on key, which the
// holder's mark m spends, naming the key's first live holding.
func (f *FSM) staleByMark(key string, reqID uint64, m *mark) Result {
	res := Result{Code: Stale, Key: key,
		Reason: fmt.Sprintf("request id %d is older than %d, this holder's last for the key", reqID, m.ReqID)}
	if reqID == m.ReqID {
		res.Reason = fmt.Sprintf("request id %d is spent: its holding ended or it was cancelled", reqID)
	}
	if r := f.keys[key].firstLive(); r != nil {
		res.Holder, res.Token = r.Holder, r.Token
	}
	return res
}

// notHeld is the NotHeld result for key, naming its first live holding.
func (f *FSM) notHeld(key string) Result {
	res := Result{Code: NotHeld, Key: key}
	if r := f.keys[key].firstLive(); r != nil {
		res.Holder, res.Token = r.Holder, r.Token
	}
	return res
}

// extend renews one holding, and with it every member of its grant.
//
// Invariant no-extend-after-expiry: a lease whose expiry is <= now cannot
// be extended even if no Expire has reaped it, since another holder may be
// granted it in the same instant: reapDue reaps it first. Guarded by
// TestNoExtendAfterExpiry and testdata/extend.txt.
func (f *FSM) extend(index uint64, holder string, it ExtendItem) Result {
	r := held(f.reapDue(index, it.Key), holder, it.Token)
	if r == nil {
		return f.notHeld(it.Key)
	}
	f.renew(index, r)
	return Result{Code: Extended, Key: r.Key, Token: r.Token, Expiry: r.Expiry}
}

// renew extends every member of r's grant by its TTL from now.
func (f *FSM) renew(index uint64, r *record) {
	for _, m := range r.members() {
		m.Expiry = f.now + m.TTL
		f.due.update(m)
		if f.cfg.Events {
			f.emit(event(EventExtended, index, m))
		}
	}
}

// extendAll renews every live holding of c.Holder, with every member of
// its grant, if they are exactly the holdings c summarises (holdset.Sum:
// one unit per grant, named by its least key and its token); otherwise
// it changes nothing and is NotHeld, and the holder names its leases one
// by one (Extend).
//
// Invariant extend-all-exact: ExtendAll extends a holding only if the
// holder's client counted it among those it holds (the sums match), so
// it extends nothing that a per-lease Extend from the same client would
// not have; a holding the client has given up on (lost, dropped, or
// granted by a request whose answer it never read) makes the sums differ
// and is left to expire. Holdings due at this entry's time are reaped
// first, as Extend's no-extend-after-expiry requires, and then no longer
// count. The holdings are extended in (key, token) order, so replicas
// emit the same events whatever order their lists are in (a restore
// rebuilds the lists in another order). Guarded by
// testdata/extend-all.txt and TestModel (whose restored copy goes on
// applying).
func (f *FSM) extendAll(index uint64, c *ExtendAll) Result {
	if err := c.Validate(); err != nil {
		return invalid("", "%v", err)
	}
	// The work is bounded by Count (at most the node's
	// --max-extend-items), not by the holder's holdings: past Count live
	// grants the sums cannot match, whatever reaping would remove (only
	// due ones), so the answer is NotHeld at once, reaper or not.
	var due []string
	live := uint32(0)
	for r := f.holders[c.Holder]; r != nil; r = r.hnext {
		switch {
		case r.Expiry <= f.now:
			due = append(due, r.Key)
		case r.set == nil || r.set.members[0] == r:
			if live++; live > c.Count {
				return Result{Code: NotHeld}
			}
		}
	}
	slices.Sort(due) // reap in key order, so every replica emits the same events
	for _, key := range due {
		f.reapDue(index, key)
	}
	var heads []*record
	var sum holdset.Sum
	for r := f.holders[c.Holder]; r != nil; r = r.hnext {
		if r.set == nil || r.set.members[0] == r {
			heads = append(heads, r)
			sum.Add(r.Key, r.Token)
		}
	}
	if sum != (holdset.Sum{Count: c.Count, Digest: c.Digest}) {
		return Result{Code: NotHeld}
	}
	slices.SortFunc(heads, func(a, b *record) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return cmp.Compare(a.Token, b.Token)
	})
	for _, r := range heads {
		f.renew(index, r)
	}
	return Result{Code: Extended}
}

// release frees a holding its holder gives up, with every member of its
// grant. A lease that has expired is not the caller's to release: reapDue
// turned it into its lock-delay first, as Expire would have.
func (f *FSM) release(index uint64, c *Release) Result {
	if err := c.Validate(); err != nil {
		return invalid(c.Key, "%v", err)
	}
	r := held(f.reapDue(index, c.Key), c.Holder, c.Token)
	if r == nil {
		return f.notHeld(c.Key)
	}
	f.end(index, r)
	return Result{Code: Released, Key: r.Key, Token: r.Token}
}

// end removes r's whole grant as released, noting each member's request
// id spent.
func (f *FSM) end(index uint64, r *record) {
	for _, m := range r.members() {
		f.remove(m)
		f.noteEnded(m.Key, m.Holder, m.ReqID, f.now)
		f.emit(event(EventReleased, index, m))
	}
}

// cancel withdraws a request whose outcome its caller never learnt.
//
// Invariant cancel-unseen: Cancel releases a grant only while nobody can
// believe in it: the request it names must be the one that started the
// holder's live holding of the key, the grant must have been made in the
// epoch the Cancel names (the epoch of the proposal whose outcome was
// lost), and no retry of that request may have been applied (Seen), since
// a retry's answer may have reached the holder through another node. The
// cancelling node vouches only for its own proposal: that its answer
// never reached its caller. Another attempt of the same request (the
// client's retry, through another node or leader) may have been granted
// and answered as a fresh grant, not a retry, when the first proposal was
// lost with its leader; that grant was made in a later epoch, so a Cancel
// naming the first proposal's epoch leaves it alone. Within one epoch the
// first grant of a request id is the earliest proposal of it (a leader
// never drops its own entries), so a later attempt there is applied as a
// retry and sets Seen. The whole grant goes (set-atomicity).
// In every case the request id is spent, so a copy of the acquire still
// in flight is Stale and cannot grant afterwards (a multi-key copy is
// Stale as soon as one of its keys' marks says so). Guarded by TestCancel,
// testdata/cancel.txt, testdata/shapes-set.txt and TestModel.
//
// The result tells the proposer what became of the request, so that a
// holder abandoning it learns the outcome from the same entry that spends
// its id: Released (its grant was live and is released), Held (its grant
// is live and stays: Seen, or made in another epoch; Token names it), Stale
// (the id was spent already, or a later request of the holder was applied:
// it may have been granted, and if so that grant has ended) or NotHeld (no
// acquire with this id was granted while the holder's mark was kept; see
// MarkRetention). Held and NotHeld name the key's first live holding in
// Holder and Token, Held the request's own. The result is not state: the
// same entry changes every replica alike whatever its version reports.
func (f *FSM) cancel(index uint64, c *Cancel) Result {
	if err := c.Validate(); err != nil {
		return invalid(c.Key, "%v", err)
	}
	ks := f.reapDue(index, c.Key)
	var res Result
	r := ks.live(c.Holder)
	m := f.liveMark(c.Key, c.Holder)
	switch {
	case r != nil && r.ReqID == c.ReqID && !r.Seen && (c.Epoch == 0 || r.GrantEpoch == c.Epoch):
		f.end(index, r)
		res = Result{Code: Released, Key: r.Key, Token: r.Token}
	case r != nil && r.ReqID == c.ReqID:
		res = Result{Code: Held, Key: r.Key, Token: r.Token, Holder: r.Holder}
	case r != nil && c.ReqID < r.ReqID:
		res = f.notHeld(c.Key)
		res.Code, res.Reason = Stale, fmt.Sprintf("request id %d is older than the holding's %d", c.ReqID, r.ReqID)
	case m.spends(c.ReqID):
		res = f.staleByMark(c.Key, c.ReqID, m)
	default:
		res = f.notHeld(c.Key)
	}
	f.noteEnded(c.Key, c.Holder, c.ReqID, f.now)
	return res
}

// expire reaps everything due at now, in (due, key, token) order (the due
// queue's, O(1) per step), and the marks that are due. A held lease with a
// lock-delay takes two steps (expired, then freed), each in its turn; the
// members of a multi-key grant take each step together.
func (f *FSM) expire(index uint64, out []Result) []Result {
	for r := f.due.first(); r != nil && r.due() <= f.now; r = f.due.first() {
		f.reapStep(index, r, &out)
	}
	f.reapMarks()
	return out
}

// reapStep takes one step of reaping r's grant, which is due: a held
// lease expires (into its lock-delay, if it has one), a lock-delay ends.
// It emits the events and, if out is not nil, appends the Expired results,
// member by member in key order.
func (f *FSM) reapStep(index uint64, r *record, out *[]Result) {
	for _, m := range r.members() {
		if m.State == StateHeld {
			f.noteEnded(m.Key, m.Holder, m.ReqID, m.Expiry)
			f.emit(event(EventExpired, index, m))
			if out != nil {
				*out = append(*out, Result{Code: Expired, Key: m.Key, Token: m.Token, Holder: m.Holder})
			}
			if m.LockDelay > 0 {
				m.State = StateDelayed
				f.untrack(m)
				f.nHeld--
				f.nDelayed++
				f.due.update(m)
				continue
			}
		} else {
			f.emit(event(EventFreed, index, m))
			if out != nil {
				*out = append(*out, Result{Code: Expired, Key: m.Key, Token: m.Token})
			}
		}
		f.remove(m)
	}
}

// reapDue applies to key exactly what Expire would if it ran now: every
// reaping step of its records that is due, in (due, token) order, with
// the same events, and no results. A step reaps a multi-key grant's
// members on every key together. What is left on the key are live
// holdings and lock-delays that have not ended.
//
// Invariant reaper-independence: no outcome depends on when the leader's
// reaper ran. Acquire (on each of its keys), Extend (on each item's key),
// Release and Cancel call reapDue first, so a command that meets an
// expired but unreaped lease sees what it would have seen after the
// Expire: a release of an expired lease is NotHeld and its lock-delay
// runs, an acquire waits out the lock-delay. Without it a holder's late
// release skipped its lock-delay only if it beat the reaper (issue 9).
// Reaping a set member's whole grant keeps set-atomicity in this path
// too: the members share their due time, so they are due together.
// Guarded by TestNoOutcomeDependsOnReaper, testdata/reap.txt,
// testdata/shapes-set.txt and TestModel. It returns what is left of the
// key (nil if nothing), so that the caller need not look it up again.
func (f *FSM) reapDue(index uint64, key string) *keyState {
	ks := f.keys[key]
	for ks != nil {
		var next *record
		for _, r := range ks.recs {
			if d := r.due(); d <= f.now && (next == nil || d < next.due()) {
				next = r // recs are in token order: ties go to the lower token
			}
		}
		if next == nil {
			return ks
		}
		f.reapStep(index, next, nil)
		ks = f.keys[key] // the step may have removed the key's last record
	}
	return nil
}

// eachRecord calls fn for every record, in (key, token) order, until fn
// returns false.
func (f *FSM) eachRecord(fn func(*record) bool) {
	f.order.Ascend(func(ks *keyState) bool {
		for _, r := range ks.recs {
			if !fn(r) {
				return false
			}
		}
		return true
	})
}

// remove deletes r from its key, the due queue, its holder's list and
// the counts.
func (f *FSM) remove(r *record) {
	f.untrack(r)
	if r.State == StateDelayed {
		f.nDelayed--
	} else {
		f.nHeld--
	}
	if r.shaped() {
		f.nShaped--
	}
	f.nBytes -= r.size()
	if ks := f.keys[r.Key]; ks != nil {
		ks.del(r)
		if len(ks.recs) == 0 {
			delete(f.keys, r.Key)
			f.order.Delete(ks)
		}
	}
	f.due.remove(r)
}

// emit appends to the change feed. Called with f.mu held.
func (f *FSM) emit(e Event) {
	if !f.cfg.Events {
		return
	}
	f.evMu.Lock()
	f.events = append(f.events, e)
	f.evMu.Unlock()
}

func (f *FSM) notify() {
	if !f.cfg.Events {
		return
	}
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// Changes returns a channel that receives a value after applied entries
// produced events (coalesced: one signal may stand for many entries). Call
// Drain after each signal. Nil when Config.Events is off.
func (f *FSM) Changes() <-chan struct{} {
	if !f.cfg.Events {
		return nil
	}
	return f.changed
}

// Drain appends the pending events, in log order, to dst and returns it.
// Apply never blocks on the feed; undrained events accumulate.
func (f *FSM) Drain(dst []Event) []Event {
	f.evMu.Lock()
	dst = append(dst, f.events...)
	clear(f.events)
	f.events = f.events[:0]
	f.evMu.Unlock()
	return dst
}

// Fatal reports the entry that made this replica unable to continue, if
// any (see Config.OnFatal).
func (f *FSM) Fatal() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.fatal
}

// Get returns the first record of key: its live holding with the lowest
// token, or if it has none, its oldest lock-delay remnant (see Holdings).
func (f *FSM) Get(key string) (Lease, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ks := f.keys[key]
	if ks == nil {
		return Lease{}, false
	}
	if r := ks.firstLive(); r != nil {
		return r.lease(), true
	}
	return ks.recs[0].lease(), true
}

// Holdings returns every record of key: its live holdings in token order,
// then its lock-delay remnants in token order (nil if the key is free).
func (f *FSM) Holdings(key string) []Lease {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return appendHoldings(nil, f.keys[key])
}

// appendHoldings appends ks's records in read order: live holdings, then
// remnants, each in token order.
func appendHoldings(dst []Lease, ks *keyState) []Lease {
	return appendRecords(dst, ks, (*record).lease)
}

// appendRecords appends ks's records in read order, each as as makes it.
func appendRecords(dst []Lease, ks *keyState, as func(*record) Lease) []Lease {
	if ks == nil {
		return dst
	}
	for _, r := range ks.recs {
		if r.State == StateHeld {
			dst = append(dst, as(r))
		}
	}
	for _, r := range ks.recs {
		if r.State != StateHeld {
			dst = append(dst, as(r))
		}
	}
	return dst
}

// List returns the records of up to limit keys that start with prefix and
// sort after the key after (exclusive), in key order and, within a key, in
// the order of Holdings; and the key to pass as after for the next page
// ("" when there is none). limit <= 0 means 1000.
func (f *FSM) List(prefix, after string, limit int) ([]Lease, string) {
	if limit <= 0 {
		limit = 1000
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Lease
	next := f.walkListLocked(prefix, after, limit, func(ks *keyState) bool {
		out = appendHoldings(out, ks)
		return true
	})
	return out, next
}

// walkListLocked calls fn with each key List(prefix, after, limit) would
// return, in key order, until fn returns false, and returns the key to
// pass as after for the next page ("" when there is none). limit > 0.
func (f *FSM) walkListLocked(prefix, after string, limit int, fn func(*keyState) bool) string {
	start := prefix
	if after > start {
		start = after
	}
	keys := 0
	more := false
	last := ""
	f.order.AscendGreaterOrEqual(&keyState{key: start}, func(ks *keyState) bool {
		if !strings.HasPrefix(ks.key, prefix) {
			return false
		}
		if ks.key == after {
			return true
		}
		if keys == limit {
			more = true
			return false
		}
		if !fn(ks) {
			more = true
			return false
		}
		keys++
		last = ks.key
		return true
	})
	if !more || keys == 0 {
		return ""
	}
	return last
}

// ViewList calls fn with the records of each key List(prefix, after,
// limit) would return, in the same order, until fn returns false: to
// size a page before copying it (a reply pays for its bytes before it is
// built). The records are views that share the state's memory (Value,
// SetKeys) and the slice is reused: fn must neither keep nor change them.
// fn runs under the FSM's read lock: it must be quick and must not call
// the FSM.
func (f *FSM) ViewList(prefix, after string, limit int, fn func(holdings []Lease) bool) {
	if limit <= 0 {
		limit = 1000
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var scratch []Lease
	f.walkListLocked(prefix, after, limit, func(ks *keyState) bool {
		scratch = appendViews(scratch[:0], ks)
		return fn(scratch)
	})
}

// ViewHoldings calls fn with the records Holdings(key) would return, as
// views (see ViewList: fn must neither keep nor change them, must be
// quick and must not call the FSM); with none if the key is free.
func (f *FSM) ViewHoldings(key string, fn func(holdings []Lease)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(appendViews(nil, f.keys[key]))
}

// appendViews is appendHoldings with views (record.view) for copies.
func appendViews(dst []Lease, ks *keyState) []Lease {
	return appendRecords(dst, ks, (*record).view)
}

// Stats is a summary of the state.
type Stats struct {
	Epoch   uint64
	Now     time.Duration
	Applied uint64
	// Held counts live holdings; Delayed counts lock-delay remnants.
	Held, Delayed int
	// Keys counts keys with a holding or a remnant.
	Keys int
	// Marks counts request-id marks kept (see Mark), due ones included
	// until an Expire reaps them.
	Marks int
	// Bytes is the size of the records' keys, holders and values.
	Bytes int64
	// MarkBytes is the size of the marks' keys and holders (each mark
	// keeps its own copy while the FSM runs; a restore shares holders).
	MarkBytes int64
}

// size is what a record counts in FSM.nBytes.
func (r *record) size() int64 { return int64(len(r.Key) + len(r.Holder) + len(r.Value)) }

// Stats returns a summary of the state.
func (f *FSM) Stats() Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.statsLocked()
}

func (f *FSM) statsLocked() Stats {
	return Stats{Epoch: f.epoch, Now: f.now, Applied: f.applied,
		Held: f.nHeld, Delayed: f.nDelayed, Keys: len(f.keys), Marks: f.marks.tree.Len(), Bytes: f.nBytes, MarkBytes: f.marks.bytes}
}

// AppliedBytes returns the total size of the entries this FSM applied
// since it was created (restores do not count). Node uses it to bound the
// Raft log by bytes; it is not part of the replicated state.
func (f *FSM) AppliedBytes() uint64 { return f.appliedBytes.Load() }

// AppliedOps returns how many lease operations the entries this FSM
// applied since it was created held (an extend of n leases counts n;
// restores do not count): the work a replica replays for them after a
// restart. Node uses it to snapshot before a restart's replay outgrows
// the restore of a snapshot; it is not part of the replicated state.
func (f *FSM) AppliedOps() uint64 { return f.appliedOps.Load() }

// Clock returns the current epoch and logical time.
func (f *FSM) Clock() (epoch uint64, now time.Duration) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.epoch, f.now
}

// NextExpiry returns the earliest logical time at which an Expire would
// reap something (a lease, a lock-delay or a mark), in O(1). ok is false
// when nothing can expire.
func (f *FSM) NextExpiry() (due time.Duration, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	due, ok = f.due.nextDue()
	if len(f.marks.heap) > 0 && (!ok || f.marks.heap[0].Due < due) {
		due, ok = f.marks.heap[0].Due, true
	}
	return due, ok
}
