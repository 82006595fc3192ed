package fsm_test

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"pgregory.net/rapid"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/holdset"
)

// model is a small, obviously correct reference for the lease rules: a
// list of records, a map of (key, holder) to request-id mark, linear
// scans, no heap, no tree, no per-key counts. A multi-key grant is the
// records that carry its token as their set.
type model struct {
	epoch uint64
	now   time.Duration
	recs  []*mrec
	marks map[mkey]*mmark
}

type mkey struct{ key, holder string }

type mmark struct {
	reqID uint64
	ended bool
	due   time.Duration
}

// markDue: a mark updated at t is kept until MarkRetention later, rounded
// up to the granule.
func markDue(t time.Duration) time.Duration {
	g := fsm.MarkGranule
	return (t + fsm.MarkRetention + g - 1) / g * g
}

// mark returns the live mark of k; a due one is gone.
func (m *model) mark(k mkey) *mmark {
	if mk := m.marks[k]; mk != nil && mk.due > m.now {
		return mk
	}
	delete(m.marks, k)
	return nil
}

// noteRequest: an acquire with id req was applied (not stale).
func (m *model) noteRequest(k mkey, req uint64) {
	mk := m.mark(k)
	if mk == nil {
		m.marks[k] = &mmark{reqID: req, due: markDue(m.now)}
		return
	}
	if req > mk.reqID {
		mk.reqID, mk.ended = req, false
	}
	mk.due = markDue(m.now)
}

// keepMark: a grant or retry with id req; a live holding needs no mark of
// its own, so only an existing one is updated.
func (m *model) keepMark(k mkey, req uint64) {
	if m.mark(k) != nil {
		m.noteRequest(k, req)
	}
}

// noteEnded: the holding of request req ended, or req was cancelled, at
// time at (a lease's expiry, not when it was reaped).
func (m *model) noteEnded(k mkey, req uint64, at time.Duration) {
	mk := m.marks[k]
	if mk != nil && mk.due <= at {
		mk = nil
	}
	if mk != nil && req < mk.reqID {
		return
	}
	if markDue(at) <= m.now {
		delete(m.marks, k)
		return
	}
	m.marks[k] = &mmark{reqID: req, ended: true, due: markDue(at)}
}

type mrec struct {
	key, holder  string
	reqID, token uint64
	ttl, delay   time.Duration
	expiry       time.Duration
	delayed      bool // the holder expired; the record waits out its lock-delay
	value        string
	seen         bool   // a retry of the granting request was applied
	grantEpoch   uint64 // the epoch of the grant
	mode         fsm.Mode
	limit        uint32
	set          uint64 // the grant's token if it has several keys
}

// freeAt: from when the record no longer blocks the key.
func (r *mrec) freeAt() time.Duration { return r.expiry + r.delay }

// due: when Expire has work to do on the record.
func (r *mrec) due() time.Duration {
	if r.delayed {
		return r.expiry + r.delay
	}
	return r.expiry
}

func newModel() *model { return &model{marks: map[mkey]*mmark{}} }

// on returns the records of key, in token order.
func (m *model) on(key string) []*mrec {
	var out []*mrec
	for _, r := range m.recs {
		if r.key == key {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].token < out[j].token })
	return out
}

// live returns holder's held record of key, or nil.
func (m *model) live(key, holder string) *mrec {
	for _, r := range m.on(key) {
		if !r.delayed && r.holder == holder {
			return r
		}
	}
	return nil
}

// firstLive is the held record of key with the lowest token, or nil.
func (m *model) firstLive(key string) *mrec {
	for _, r := range m.on(key) {
		if !r.delayed {
			return r
		}
	}
	return nil
}

// grant returns every record of r's grant, in key order.
func (m *model) grant(r *mrec) []*mrec {
	if r.set == 0 {
		return []*mrec{r}
	}
	var out []*mrec
	for _, o := range m.recs {
		if o.set == r.set {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

func (m *model) drop(r *mrec) {
	for i, o := range m.recs {
		if o == r {
			m.recs = append(m.recs[:i], m.recs[i+1:]...)
			return
		}
	}
}

func validItem(key string, mode fsm.Mode, limit uint32) bool {
	if key == "" || len(key) > 1024 {
		return false
	}
	switch mode {
	case fsm.ModeExclusive, fsm.ModeShared:
		return limit == 0
	case fsm.ModeSemaphore:
		return limit >= 1 && limit <= fsm.MaxLimit
	}
	return false
}

func validAcquire(c *fsm.Acquire) bool {
	if !(c.Holder != "" && len(c.Holder) <= 256 &&
		c.ReqID > 0 && c.TTL > 0 && c.TTL <= 24*time.Hour &&
		c.LockDelay >= 0 && c.LockDelay <= 24*time.Hour && len(c.Value) <= 64<<10) {
		return false
	}
	if 1+len(c.More) > fsm.MaxSetKeys {
		return false
	}
	seen := map[string]bool{}
	for _, it := range c.Items() {
		if !validItem(it.Key, it.Mode, it.Limit) || seen[it.Key] {
			return false
		}
		seen[it.Key] = true
	}
	return true
}

func validExtend(c *fsm.Extend) bool {
	if c.Holder == "" || len(c.Items) == 0 {
		return false
	}
	for _, it := range c.Items {
		if it.Key == "" || it.Token == 0 {
			return false
		}
	}
	return true
}

// apply returns the results the FSM must give for cmd at index.
func (m *model) apply(index uint64, s fsm.Stamp, cmd fsm.Command) []fsm.Result {
	if _, ok := cmd.(fsm.Promote); ok {
		if s.Epoch <= m.epoch {
			return []fsm.Result{{Code: fsm.WrongEpoch}}
		}
		// Reap what is due at the old clock, then keep the time left
		// (marks: rounded up, at most a full retention).
		out := append([]fsm.Result{{Code: fsm.Promoted}}, m.expire()...)
		for _, r := range m.recs {
			r.expiry = s.Now + r.expiry - m.now
		}
		for _, mk := range m.marks {
			g := fsm.MarkGranule
			mk.due = (min(mk.due-m.now+s.Now, s.Now+fsm.MarkRetention) + g - 1) / g * g
		}
		m.epoch, m.now = s.Epoch, s.Now
		return out
	}
	if s.Epoch != m.epoch {
		return []fsm.Result{{Code: fsm.WrongEpoch}}
	}
	m.now = max(m.now, s.Now)
	return m.applySub(index, cmd)
}

func (m *model) applySub(index uint64, cmd fsm.Command) []fsm.Result {
	switch c := cmd.(type) {
	case *fsm.Acquire:
		return []fsm.Result{m.acquire(index, c)}
	case *fsm.Extend:
		if !validExtend(c) {
			return []fsm.Result{{Code: fsm.Invalid}}
		}
		var out []fsm.Result
		for _, it := range c.Items {
			out = append(out, m.extend(index, c.Holder, it))
		}
		return out
	case *fsm.ExtendAll:
		return []fsm.Result{m.extendAll(c)}
	case *fsm.Release:
		return []fsm.Result{m.release(c)}
	case *fsm.Cancel:
		return []fsm.Result{m.cancel(c)}
	case fsm.Expire:
		return m.expire()
	case *fsm.Batch:
		acquires := 0
		for _, sub := range c.Cmds {
			if _, ok := sub.(*fsm.Acquire); ok {
				acquires++
			}
		}
		if len(c.Cmds) == 0 || acquires > 1 {
			return []fsm.Result{{Code: fsm.Invalid}}
		}
		var out []fsm.Result
		for _, sub := range c.Cmds {
			out = append(out, m.applySub(index, sub)...)
		}
		return out
	}
	panic(fmt.Sprintf("model: %T", cmd))
}

// step takes one reaping step of r's grant (due now), appending the
// Expired results to out if it is not nil.
func (m *model) step(r *mrec, out *[]fsm.Result) {
	for _, g := range m.grant(r) {
		if !g.delayed {
			m.noteEnded(mkey{g.key, g.holder}, g.reqID, g.expiry)
			if out != nil {
				*out = append(*out, fsm.Result{Code: fsm.Expired, Key: g.key, Token: g.token, Holder: g.holder})
			}
			if g.delay > 0 {
				g.delayed = true
				continue
			}
		} else if out != nil {
			*out = append(*out, fsm.Result{Code: fsm.Expired, Key: g.key, Token: g.token})
		}
		m.drop(g)
	}
}

// reap does to key's records what Expire would if it ran now, one step
// at a time in (due, token) order, whole grants at once: every command
// does this first (reaper-independence).
func (m *model) reap(key string) {
	for {
		var next *mrec
		for _, r := range m.on(key) {
			if r.due() <= m.now && (next == nil || r.due() < next.due()) {
				next = r
			}
		}
		if next == nil {
			return
		}
		m.step(next, nil)
	}
}

// blocks says whether r stands in the way of an item asked in mode, and
// whether the mode is refused outright (a semaphore of another limit).
func blocks(r *mrec, mode fsm.Mode, limit uint32) (blocking, bad bool) {
	switch mode {
	case fsm.ModeExclusive:
		return true, false
	case fsm.ModeShared:
		return r.mode != fsm.ModeShared, false
	default:
		if r.mode == fsm.ModeSemaphore && r.limit != limit {
			return true, true
		}
		return r.mode != fsm.ModeSemaphore, false
	}
}

// itemState judges one item against key's records, leaving out skipped
// ones: grantable, Invalid (with a reason), or Held with the record to
// report and the wait.
func (m *model) itemState(it fsm.Item, skip func(*mrec) bool) (ok, bad bool, first *mrec, wait time.Duration) {
	var others []*mrec
	for _, r := range m.on(it.Key) {
		if !skip(r) {
			others = append(others, r)
		}
	}
	var blocking []*mrec
	sems := 0
	for _, r := range others {
		b, isBad := blocks(r, it.Mode, it.Limit)
		if isBad {
			return false, true, nil, 0
		}
		if b {
			blocking = append(blocking, r)
		}
		if r.mode == fsm.ModeSemaphore {
			sems++
		}
	}
	full := false
	switch it.Mode {
	case fsm.ModeExclusive, fsm.ModeShared:
		ok = len(blocking) == 0
	default:
		nonSem := 0
		for _, r := range blocking {
			if r.mode != fsm.ModeSemaphore {
				nonSem++
			}
		}
		if nonSem == 0 {
			ok = sems < int(it.Limit)
			full = true
			blocking = others // every record holds a slot
		} else {
			ok = false
		}
	}
	if ok {
		return true, false, nil, 0
	}
	for i, r := range blocking {
		w := r.freeAt() - m.now
		if i == 0 || full && w < wait || !full && w > wait {
			wait = w
		}
		if first == nil && !r.delayed {
			first = r
		}
	}
	if first == nil {
		first = blocking[0]
	}
	return false, false, first, wait
}

func (m *model) acquire(index uint64, c *fsm.Acquire) fsm.Result {
	if !validAcquire(c) {
		return fsm.Result{Code: fsm.Invalid, Key: c.Key}
	}
	items := c.Items()
	for _, it := range items {
		m.reap(it.Key)
	}
	own := make([]*mrec, len(items))
	retry := false
	for i, it := range items {
		k := mkey{it.Key, c.Holder}
		if mk := m.mark(k); mk != nil && (c.ReqID < mk.reqID || c.ReqID == mk.reqID && mk.ended) {
			res := fsm.Result{Code: fsm.Stale, Key: it.Key}
			if r := m.firstLive(it.Key); r != nil {
				res.Holder, res.Token = r.holder, r.token
			}
			return res
		}
		r := m.live(it.Key, c.Holder)
		own[i] = r
		if r == nil {
			continue
		}
		if c.ReqID < r.reqID {
			return fsm.Result{Code: fsm.Stale, Key: it.Key, Token: r.token, Holder: r.holder}
		}
		if c.ReqID == r.reqID {
			retry = true
		}
	}
	start := func(r *mrec) {
		r.ttl, r.delay, r.value = c.TTL, c.LockDelay, string(c.Value)
		r.expiry = m.now + c.TTL
		r.delayed = false
	}
	if retry {
		g := own[0]
		same := g != nil && len(m.grant(g)) == len(items)
		for _, r := range own {
			if r == nil || g == nil || r.token != g.token || r.reqID != c.ReqID {
				same = false
			}
		}
		if !same {
			res := fsm.Result{Code: fsm.Stale, Key: c.Key}
			if r := m.firstLive(c.Key); r != nil {
				res.Holder, res.Token = r.holder, r.token
			}
			return res
		}
		for _, r := range m.grant(g) {
			start(r)
			r.seen = true
		}
		for _, it := range items {
			m.keepMark(mkey{it.Key, c.Holder}, c.ReqID)
		}
		return fsm.Result{Code: fsm.Granted, Key: c.Key, Token: g.token, Expiry: g.expiry, Retry: true}
	}
	// lock-delay-kept: the holder's own live holding with a lock-delay
	// (every member of its grant) stays; the new request is Held.
	for _, r := range own {
		if r == nil || !c.KeepLockDelay {
			continue
		}
		if g := m.grant(r)[0]; g.delay > 0 {
			for _, it := range items {
				m.noteRequest(mkey{it.Key, c.Holder}, c.ReqID)
			}
			return fsm.Result{Code: fsm.Held, Key: g.key, Token: g.token, Holder: g.holder, Wait: g.freeAt() - m.now}
		}
	}
	replaced := map[*mrec]bool{}
	for _, r := range own {
		if r != nil {
			for _, g := range m.grant(r) {
				replaced[g] = true
			}
		}
	}
	skip := func(r *mrec) bool { return replaced[r] }
	var held *fsm.Result
	for _, it := range items {
		ok, bad, first, wait := m.itemState(it, skip)
		if bad {
			return fsm.Result{Code: fsm.Invalid, Key: it.Key}
		}
		if ok {
			continue
		}
		if held == nil {
			held = &fsm.Result{Code: fsm.Held, Key: it.Key, Token: first.token}
			if !first.delayed {
				held.Holder = first.holder
			}
		}
		held.Wait = max(held.Wait, wait)
	}
	if held != nil {
		for _, it := range items {
			m.noteRequest(mkey{it.Key, c.Holder}, c.ReqID)
		}
		return *held
	}
	named := map[string]bool{}
	for _, it := range items {
		named[it.Key] = true
	}
	for r := range replaced {
		m.drop(r)
		if !named[r.key] {
			m.noteEnded(mkey{r.key, r.holder}, r.reqID, m.now)
		}
	}
	var set uint64
	if len(items) > 1 {
		set = index
	}
	var expiry time.Duration
	for _, it := range items {
		r := &mrec{key: it.Key, holder: c.Holder, reqID: c.ReqID, token: index, grantEpoch: m.epoch, mode: it.Mode, limit: it.Limit, set: set}
		start(r)
		expiry = r.expiry
		m.recs = append(m.recs, r)
		m.keepMark(mkey{it.Key, c.Holder}, c.ReqID)
	}
	return fsm.Result{Code: fsm.Granted, Key: c.Key, Token: index, Expiry: expiry}
}

// holding returns holder's held record of key with token, or nil.
func (m *model) holding(key, holder string, token uint64) *mrec {
	for _, r := range m.on(key) {
		if !r.delayed && r.holder == holder && r.token == token {
			return r
		}
	}
	return nil
}

func (m *model) notHeld(key string) fsm.Result {
	res := fsm.Result{Code: fsm.NotHeld, Key: key}
	if r := m.firstLive(key); r != nil {
		res.Holder, res.Token = r.holder, r.token
	}
	return res
}

func (m *model) extend(index uint64, holder string, it fsm.ExtendItem) fsm.Result {
	m.reap(it.Key)
	r := m.holding(it.Key, holder, it.Token)
	if r == nil {
		return m.notHeld(it.Key)
	}
	for _, g := range m.grant(r) {
		g.expiry = m.now + g.ttl
	}
	return fsm.Result{Code: fsm.Extended, Key: it.Key, Token: r.token, Expiry: r.expiry}
}

// heads are holder's live holdings, one per grant (a set's member with
// the least key), and their sum.
func (m *model) heads(holder string) ([]*mrec, holdset.Sum) {
	var out []*mrec
	var sum holdset.Sum
	for _, r := range m.recs {
		if r.holder == holder && !r.delayed && m.grant(r)[0] == r {
			out = append(out, r)
			sum.Add(r.key, r.token)
		}
	}
	return out, sum
}

// extendAll: the holder's due holdings are reaped, then every live one
// is extended if the sum names exactly them.
func (m *model) extendAll(c *fsm.ExtendAll) fsm.Result {
	if c.Holder == "" || c.Count == 0 {
		return fsm.Result{Code: fsm.Invalid}
	}
	var due []string
	live := uint32(0)
	for _, r := range m.recs {
		switch {
		case r.holder != c.Holder || r.delayed:
		case r.expiry <= m.now:
			due = append(due, r.key)
		case m.grant(r)[0] == r:
			live++
		}
	}
	if live > c.Count {
		return fsm.Result{Code: fsm.NotHeld} // more live grants than summed: nothing is reaped
	}
	for _, k := range due {
		m.reap(k)
	}
	heads, sum := m.heads(c.Holder)
	if sum != (holdset.Sum{Count: c.Count, Digest: c.Digest}) {
		return fsm.Result{Code: fsm.NotHeld}
	}
	for _, h := range heads {
		for _, g := range m.grant(h) {
			g.expiry = m.now + g.ttl
		}
	}
	return fsm.Result{Code: fsm.Extended}
}

// end removes r's grant as released.
func (m *model) end(r *mrec) {
	for _, g := range m.grant(r) {
		m.drop(g)
		m.noteEnded(mkey{g.key, g.holder}, g.reqID, m.now)
	}
}

func (m *model) release(c *fsm.Release) fsm.Result {
	if c.Key == "" || c.Holder == "" || c.Token == 0 {
		return fsm.Result{Code: fsm.Invalid, Key: c.Key}
	}
	m.reap(c.Key)
	r := m.holding(c.Key, c.Holder, c.Token)
	if r == nil {
		return m.notHeld(c.Key)
	}
	m.end(r)
	return fsm.Result{Code: fsm.Released, Key: c.Key, Token: r.token}
}

// cancel releases the grant of c.ReqID if it is the holder's live holding
// and not seen (else Held if it is, Stale if the id was spent, NotHeld if
// never granted); the id is spent either way.
func (m *model) cancel(c *fsm.Cancel) fsm.Result {
	if c.Key == "" || c.Holder == "" || c.ReqID == 0 {
		return fsm.Result{Code: fsm.Invalid, Key: c.Key}
	}
	m.reap(c.Key)
	res := m.notHeld(c.Key)
	r, mk := m.live(c.Key, c.Holder), m.mark(mkey{c.Key, c.Holder})
	switch {
	case r != nil && r.reqID == c.ReqID && !r.seen && (c.Epoch == 0 || c.Epoch == r.grantEpoch):
		m.end(r)
		res = fsm.Result{Code: fsm.Released, Key: c.Key, Token: r.token}
	case r != nil && r.reqID == c.ReqID:
		res = fsm.Result{Code: fsm.Held, Key: c.Key, Token: r.token, Holder: r.holder}
	case r != nil && c.ReqID < r.reqID, mk != nil && (c.ReqID < mk.reqID || c.ReqID == mk.reqID && mk.ended):
		res = fsm.Result{Code: fsm.Stale, Key: c.Key, Token: res.Token, Holder: res.Holder}
	}
	m.noteEnded(mkey{c.Key, c.Holder}, c.ReqID, m.now)
	return res
}

// expire reaps, one step at a time, the record with the smallest (due,
// key, token) that is due, with its grant.
func (m *model) expire() []fsm.Result {
	var out []fsm.Result
	for {
		var next *mrec
		for _, r := range m.recs {
			if r.due() > m.now {
				continue
			}
			if next == nil || r.due() < next.due() || r.due() == next.due() &&
				(r.key < next.key || r.key == next.key && r.token < next.token) {
				next = r
			}
		}
		if next == nil {
			for k, mk := range m.marks {
				if mk.due <= m.now {
					delete(m.marks, k)
				}
			}
			return out
		}
		m.step(next, &out)
	}
}

// leases lists the records as List does: by key, then live ones by token,
// then lock-delays by token.
func (m *model) leases() []fsm.Lease {
	var out []fsm.Lease
	for _, r := range m.recs {
		l := fsm.Lease{Key: r.key, Holder: r.holder, ReqID: r.reqID, Token: r.token, TTL: r.ttl,
			LockDelay: r.delay, Expiry: r.expiry, State: fsm.StateHeld, Seen: r.seen,
			GrantEpoch: r.grantEpoch, Mode: r.mode, Limit: r.limit, Set: r.set}
		if r.value != "" {
			l.Value = []byte(r.value)
		}
		if r.delayed {
			l.State = fsm.StateDelayed
		}
		if r.set != 0 {
			for _, g := range m.grant(r) {
				l.SetKeys = append(l.SetKeys, g.key)
			}
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		if a.State != b.State {
			return a.State == fsm.StateHeld
		}
		return a.Token < b.Token
	})
	return out
}

func (m *model) nextExpiry() (time.Duration, bool) {
	var due time.Duration
	ok := false
	for _, r := range m.recs {
		if !ok || r.due() < due {
			due, ok = r.due(), true
		}
	}
	for _, mk := range m.marks {
		if !ok || mk.due < due {
			due, ok = mk.due, true
		}
	}
	return due, ok
}

// allMarks lists the model's marks, due ones included, as the FSM does.
func (m *model) allMarks() []fsm.Mark {
	var out []fsm.Mark
	for k, mk := range m.marks {
		out = append(out, fsm.Mark{Key: k.key, Holder: k.holder, ReqID: mk.reqID, Ended: mk.ended, Due: mk.due})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Holder < out[j].Holder
	})
	return out
}

var (
	modelKeys    = []string{"a", "b", "c", "d"}
	modelHolders = []string{"h1", "h2", "h3"}

	stepKinds = []string{
		"acquire", "extend", "acquire", "release", "expire", "acquire", "extend",
		"batch", "acquire", "release", "expire", "extend", "acquire", "batch",
		"expire", "acquire", "cancel", "promote", "cancel", "extend-all", "extend-all",
	}
	epochKinds = []string{
		"current", "current", "current", "current", "current", "current",
		"current", "current", "current", "current", "current", "current",
		"current", "current", "current", "current", "current", "stale", "future",
	}
	reqKinds = []string{
		"new", "new", "retry", "new", "new", "old", "new", "retry", "new", "new",
	}
	invalidKinds = []string{
		"valid", "valid", "valid", "valid", "valid", "valid", "valid", "valid",
		"valid", "valid", "valid", "valid", "valid", "valid", "valid", "valid",
		"valid", "valid", "valid", "valid", "valid", "valid", "valid", "valid",
		"valid", "valid", "valid", "valid", "valid", "valid", "valid", "valid",
		"ttl0", "req0", "key", "ttl-max", "limit", "mode",
	}
	// clockSteps in ms: mostly forward, sometimes backwards, rarely past a
	// request-id mark's retention.
	clockSteps = []int{500, 1000, 0, 1500, 300, 2000, 2500, -500, 700, 3000, 1200, 4000, -1500, 100, 5500,
		500, 1000, 1500, 300, 2000, 8 * 60_000, 16 * 60_000}
)

// sentKey names an acquire sent: its holder and request id.
type sentKey struct {
	holder string
	req    uint64
}

// modelRun is the state of one generated run.
type modelRun struct {
	f, twin *fsm.FSM // twin gets the same entries through ApplyBatch
	pending []*raft.Log
	m       *model
	index   uint64
	stamp   time.Duration // the leader's clock: mostly forward, sometimes back
	epoch   uint64        // the current leader's epoch
	nextReq map[string]uint64
	tokens  []uint64 // every token ever granted, for stale extends/releases
	// sent holds every acquire sent, by holder and request id, so that a
	// retry repeats the very request.
	sent map[sentKey]*fsm.Acquire
	// monotonic-token bookkeeping
	lastToken    uint64
	keyLastToken map[string]uint64
}

// TestModel checks the FSM against the reference model on random runs of
// promote, acquire, extend, release, cancel, expire and batch commands, and
// after every step the invariants single-holder, monotonic-token,
// NextExpiry and Get/List/Stats/mark agreement, and restore-bounds (the
// state's snapshot passes Restore's checks). At the end a twin FSM fed the same entries
// through ApplyBatch must write the same snapshot (fsm-determinism), and a
// restored copy must too.
func TestModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := &modelRun{
			f: fsm.New(fsm.Config{}), twin: fsm.New(fsm.Config{}), m: newModel(),
			nextReq: map[string]uint64{}, keyLastToken: map[string]uint64{}, sent: map[sentKey]*fsm.Acquire{},
		}
		// Most runs start with a promote, as a real leader does; some
		// exercise epoch 0.
		if rapid.IntRange(0, 9).Draw(t, "start-promoted") > 0 {
			r.promote(t)
		}
		steps := rapid.IntRange(1, 150).Draw(t, "steps")
		for range steps {
			r.step(t)
		}
		r.flushTwin(t)
		a, b := snapshotBytes(t, r.f), snapshotBytes(t, r.twin)
		if !bytes.Equal(a, b) {
			t.Fatalf("fsm-determinism: Apply and ApplyBatch snapshots differ")
		}
		restored := fsm.New(fsm.Config{})
		if err := restoreBytes(restored, a); err != nil {
			t.Fatal(err)
		}
		if c := snapshotBytes(t, restored); !bytes.Equal(a, c) {
			t.Fatalf("snapshot → restore → snapshot differs")
		}
		// The restored copy keeps behaving like the model and the twin.
		r.f = restored
		for range rapid.IntRange(0, 10).Draw(t, "steps-after-restore") {
			r.step(t)
		}
		r.flushTwin(t)
		if !bytes.Equal(snapshotBytes(t, r.f), snapshotBytes(t, r.twin)) {
			t.Fatalf("fsm-determinism: restored FSM and twin diverged")
		}
	})
}

func (r *modelRun) promote(t *rapid.T) {
	r.epoch += uint64(rapid.IntRange(1, 2).Draw(t, "epoch-step"))
	// The new leader's clock starts near 0, mostly behind the old one, so
	// lock-delays carried over often end up with negative expiries.
	r.stamp = time.Duration(rapid.SampledFrom([]int{0, 50, 0, 1200, 3000, 10}).Draw(t, "promote-at-ms")) * ms
	r.run(t, r.epoch, fsm.Promote{})
}

func (r *modelRun) step(t *rapid.T) {
	// The leader's clock: mostly forward, sometimes backwards (the FSM must
	// take the max).
	// (rapid favours the first elements of SampledFrom lists, so the
	// common choices come first and weights are given by repetition.)
	r.stamp += time.Duration(rapid.SampledFrom(clockSteps).Draw(t, "dt-ms")) * ms
	r.stamp = max(r.stamp, 0)
	epoch := r.epoch
	switch rapid.SampledFrom(epochKinds).Draw(t, "epoch-kind") {
	case "stale":
		if epoch > 0 {
			epoch-- // an old leader's late command
		}
	case "future":
		epoch++ // a leader that has not promoted yet
	}
	var cmd fsm.Command
	switch rapid.SampledFrom(stepKinds).Draw(t, "kind") {
	case "promote":
		if rapid.IntRange(0, 3).Draw(t, "stale-promote") == 3 && r.epoch > 0 {
			r.run(t, r.epoch-uint64(rapid.IntRange(0, 1).Draw(t, "back")), fsm.Promote{})
		} else {
			r.promote(t)
		}
		return
	case "acquire":
		cmd = r.genAcquire(t)
	case "extend":
		cmd = r.genExtend(t)
	case "extend-all":
		cmd = r.genExtendAll(t)
	case "release":
		cmd = r.genRelease(t)
	case "cancel":
		cmd = r.genCancel(t)
	case "expire":
		cmd = fsm.Expire{}
	case "batch":
		cmd = r.genBatch(t)
	}
	r.run(t, epoch, cmd)
}

// keyShape is how a key is mostly asked for, so that holders meet in
// compatible and incompatible modes alike: a exclusive, b shared, c a
// semaphore of 2, d anything.
func keyShape(t *rapid.T, key string) (fsm.Mode, uint32) {
	mode := map[string]string{"a": "exclusive", "b": "shared", "c": "sem2"}[key]
	if mode == "" || rapid.IntRange(0, 3).Draw(t, "odd-mode?") == 0 {
		mode = rapid.SampledFrom([]string{"exclusive", "shared", "sem2", "sem3", "sem1"}).Draw(t, "mode")
	}
	switch mode {
	case "shared":
		return fsm.ModeShared, 0
	case "sem1":
		return fsm.ModeSemaphore, 1
	case "sem2":
		return fsm.ModeSemaphore, 2
	case "sem3":
		return fsm.ModeSemaphore, 3
	}
	return fsm.ModeExclusive, 0
}

func (r *modelRun) genAcquire(t *rapid.T) *fsm.Acquire {
	key := rapid.SampledFrom(modelKeys).Draw(t, "key")
	h := rapid.SampledFrom(modelHolders).Draw(t, "holder")
	switch rapid.SampledFrom(reqKinds).Draw(t, "req-kind") {
	case "retry": // the same request again, mostly by one of the key's holders
		if recs := r.m.on(key); len(recs) > 0 && rapid.Bool().Draw(t, "holder-retries") {
			rec := rapid.SampledFrom(recs).Draw(t, "rec")
			h = rec.holder
			if c := r.sent[sentKey{h, rec.reqID}]; c != nil {
				return r.resend(t, c)
			}
		}
		if c := r.sent[sentKey{h, r.nextReq[h]}]; c != nil {
			return r.resend(t, c)
		}
	case "old": // a delayed older request, mostly by one of the key's holders
		if recs := r.m.on(key); len(recs) > 0 && rapid.Bool().Draw(t, "holder-is-late") {
			rec := rapid.SampledFrom(recs).Draw(t, "rec")
			if rec.reqID > 1 {
				old := uint64(rapid.IntRange(1, int(rec.reqID-1)).Draw(t, "old-req"))
				if c := r.sent[sentKey{rec.holder, old}]; c != nil {
					return r.resend(t, c)
				}
			}
		}
		if n := r.nextReq[h]; n > 0 {
			old := uint64(rapid.IntRange(1, int(n)).Draw(t, "old-req"))
			if c := r.sent[sentKey{h, old}]; c != nil {
				return r.resend(t, c)
			}
		}
	}
	r.nextReq[h]++
	c := &fsm.Acquire{
		Key:    key,
		Holder: h,
		ReqID:  r.nextReq[h],
		TTL:    time.Duration(rapid.SampledFrom([]int{1, 2, 3, 5}).Draw(t, "ttl-s")) * s,
	}
	c.Mode, c.Limit = keyShape(t, key)
	// Mostly one key; some sets of two or three (rarely a key twice:
	// Invalid).
	for range rapid.SampledFrom([]int{0, 0, 0, 1, 0, 2, 1}).Draw(t, "more") {
		k := rapid.SampledFrom(modelKeys).Draw(t, "more-key")
		if k == key && rapid.IntRange(0, 5).Draw(t, "dup-ok?") > 0 {
			continue
		}
		it := fsm.Item{Key: k}
		it.Mode, it.Limit = keyShape(t, k)
		dup := false
		for _, o := range c.More {
			dup = dup || o.Key == k
		}
		if !dup {
			c.More = append(c.More, it)
		}
	}
	c.LockDelay = time.Duration(rapid.SampledFrom([]int{0, 0, 1, 0, 2}).Draw(t, "delay-s")) * s
	c.KeepLockDelay = rapid.IntRange(0, 3).Draw(t, "keep-lock-delay") > 0 // as a format-5 cluster sends, mostly
	if rapid.Bool().Draw(t, "has-value") {
		c.Value = []byte(fmt.Sprintf("v%d", r.index+1))
	}
	switch rapid.SampledFrom(invalidKinds).Draw(t, "invalid") {
	case "ttl0":
		c.TTL = 0
	case "req0":
		c.ReqID = 0
	case "key":
		c.Key = ""
	case "ttl-max":
		c.TTL = 24*time.Hour + 1
	case "limit":
		c.Mode, c.Limit = fsm.ModeSemaphore, 0
	case "mode":
		c.Mode = 7
	}
	r.sent[sentKey{h, c.ReqID}] = c
	return c
}

// resend repeats an acquire sent earlier, sometimes with other options
// (a retry carries the same keys, not always the same TTL).
func (r *modelRun) resend(t *rapid.T, c *fsm.Acquire) *fsm.Acquire {
	again := *c
	if rapid.IntRange(0, 3).Draw(t, "other-ttl?") == 0 {
		again.TTL = time.Duration(rapid.SampledFrom([]int{1, 2, 3, 5}).Draw(t, "ttl-s")) * s
	}
	return &again
}

// pick returns one of key's records, mostly a live one, or nil.
func (r *modelRun) pick(t *rapid.T, key string) *mrec {
	recs := r.m.on(key)
	if len(recs) == 0 {
		return nil
	}
	if l := r.m.firstLive(key); l != nil && rapid.Bool().Draw(t, "first-live?") {
		return l
	}
	return rapid.SampledFrom(recs).Draw(t, "rec")
}

// token picks, mostly, a token of one of the key's records; sometimes an
// old one.
func (r *modelRun) token(t *rapid.T, key string) uint64 {
	if rec := r.pick(t, key); rec != nil && rapid.IntRange(0, 3).Draw(t, "old-token?") < 3 {
		return rec.token
	}
	if len(r.tokens) == 0 {
		return 1
	}
	return rapid.SampledFrom(r.tokens).Draw(t, "old-token")
}

// holderFor picks, mostly, a holder of one of the key's records.
func (r *modelRun) holderFor(t *rapid.T, key string) string {
	if rec := r.pick(t, key); rec != nil && rapid.IntRange(0, 3).Draw(t, "other-holder?") < 3 {
		return rec.holder
	}
	return rapid.SampledFrom(modelHolders).Draw(t, "holder")
}

// holding picks, mostly, one of the key's records with its holder and
// token, so extends and releases mostly hit.
func (r *modelRun) holding(t *rapid.T, key string) (string, uint64) {
	if rec := r.pick(t, key); rec != nil && rapid.IntRange(0, 3).Draw(t, "miss?") < 3 {
		return rec.holder, rec.token
	}
	return r.holderFor(t, key), r.token(t, key)
}

func (r *modelRun) genExtend(t *rapid.T) *fsm.Extend {
	first := rapid.SampledFrom(modelKeys).Draw(t, "key")
	holder, token := r.holding(t, first)
	c := &fsm.Extend{Holder: holder}
	n := rapid.SampledFrom([]int{1, 2, 3, 1, 0}).Draw(t, "items") // 0 items is Invalid
	for i := range n {
		k, tok := first, token
		if i > 0 {
			k = rapid.SampledFrom(modelKeys).Draw(t, "key")
			tok = r.token(t, k)
		}
		c.Items = append(c.Items, fsm.ExtendItem{Key: k, Token: tok})
	}
	return c
}

// genExtendAll sums a holder's live holdings as the model has them
// (some may be due, and are then reaped first), or a near miss: one left
// out, one too many, or a token changed.
func (r *modelRun) genExtendAll(t *rapid.T) *fsm.ExtendAll {
	holder := rapid.SampledFrom(modelHolders).Draw(t, "holder")
	heads, sum := r.m.heads(holder)
	switch rapid.IntRange(0, 5).Draw(t, "extend-all-miss") {
	case 1:
		if len(heads) > 0 {
			h := heads[rapid.IntRange(0, len(heads)-1).Draw(t, "left-out")]
			sum.Count--
			sum.Digest -= holdset.Unit(h.key, h.token)
		}
	case 2:
		sum.Add(rapid.SampledFrom(modelKeys).Draw(t, "key"), r.token(t, "x"))
	case 3:
		if len(heads) > 0 {
			h := heads[0]
			sum.Digest += holdset.Unit(h.key, h.token+1) - holdset.Unit(h.key, h.token)
		}
	}
	return &fsm.ExtendAll{Holder: holder, Count: sum.Count, Digest: sum.Digest}
}

func (r *modelRun) genRelease(t *rapid.T) *fsm.Release {
	k := rapid.SampledFrom(modelKeys).Draw(t, "key")
	holder, token := r.holding(t, k)
	return &fsm.Release{Key: k, Holder: holder, Token: token}
}

// genCancel mostly names the request that granted one of the key's live
// holdings, sometimes an older, newer or unrelated one.
func (r *modelRun) genCancel(t *rapid.T) *fsm.Cancel {
	k := rapid.SampledFrom(modelKeys).Draw(t, "key")
	c := &fsm.Cancel{Key: k, Holder: r.holderFor(t, k)}
	rec := r.m.live(k, c.Holder)
	if rec != nil && rapid.IntRange(0, 3).Draw(t, "cancel-other?") < 3 {
		c.ReqID = rec.reqID
	} else {
		c.ReqID = uint64(rapid.IntRange(0, int(r.nextReq[c.Holder])+1).Draw(t, "cancel-req")) // 0 is Invalid
	}
	// The epoch of the withdrawn proposal: mostly the grant's, sometimes
	// another (a lost proposal of an earlier leader) or none (version 3).
	switch rapid.SampledFrom([]string{"grant", "grant", "other", "none"}).Draw(t, "cancel-epoch") {
	case "grant":
		if rec != nil {
			c.Epoch = rec.grantEpoch
		} else {
			c.Epoch = r.epoch
		}
	case "other":
		c.Epoch = uint64(rapid.IntRange(1, int(r.epoch)+2).Draw(t, "cancel-other-epoch"))
	}
	return c
}

func (r *modelRun) genBatch(t *rapid.T) *fsm.Batch {
	b := &fsm.Batch{}
	for range rapid.SampledFrom([]int{2, 1, 3, 2, 4, 0}).Draw(t, "batch-len") {
		switch rapid.SampledFrom([]string{"release", "acquire", "expire", "extend", "cancel", "extend-all"}).Draw(t, "batch-kind") {
		case "extend-all":
			b.Cmds = append(b.Cmds, r.genExtendAll(t))
		case "release":
			b.Cmds = append(b.Cmds, r.genRelease(t))
		case "cancel":
			b.Cmds = append(b.Cmds, r.genCancel(t))
		case "acquire":
			b.Cmds = append(b.Cmds, r.genAcquire(t)) // two make the batch Invalid
		case "extend":
			b.Cmds = append(b.Cmds, r.genExtend(t))
		case "expire":
			b.Cmds = append(b.Cmds, fsm.Expire{})
		}
	}
	return b
}

// run applies one command to the FSM and the model and checks both.
func (r *modelRun) run(t *rapid.T, epoch uint64, cmd fsm.Command) {
	r.index++
	s := fsm.Stamp{Epoch: epoch, Now: r.stamp}
	before := allLeases(r.f)
	// fsm.Admits predicts an acquire's grant from the state before it.
	var admitted *bool
	if c, ok := cmd.(*fsm.Acquire); ok && epoch == r.m.epoch && c.Validate() == nil {
		now := max(r.m.now, s.Now)
		all := true
		for _, it := range c.Items() {
			ok, _, bad := r.f.Admits(it, c.Holder, c.KeepLockDelay, now, 0, 0)
			all = all && ok && bad == ""
		}
		admitted = &all
	}
	log := entry(r.index, s, cmd)
	got, ok := r.f.Apply(log).(*fsm.Response)
	if !ok {
		t.Fatalf("Apply returned no *Response")
	}
	r.pending = append(r.pending, log)
	if len(r.pending) >= rapid.IntRange(1, 8).Draw(t, "twin-batch") {
		r.flushTwin(t)
	}
	want := r.m.apply(r.index, s, cmd)
	if got.Index != r.index || got.Epoch != r.m.epoch || got.Now != r.m.now {
		t.Fatalf("entry %d %s: response header %d/%d/%v, model %d/%d/%v", r.index, cmd.Type(),
			got.Index, got.Epoch, got.Now, r.index, r.m.epoch, r.m.now)
	}
	results := make([]fsm.Result, len(got.Results))
	for i, res := range got.Results {
		if (res.Code == fsm.Invalid || res.Code == fsm.WrongEpoch || res.Code == fsm.Stale) != (res.Reason != "") {
			t.Fatalf("entry %d: reason %q on %v", r.index, res.Reason, res.Code)
		}
		res.Reason = ""
		results[i] = res
	}
	if len(want) == 0 {
		want = []fsm.Result{}
	}
	if !reflect.DeepEqual(results, want) {
		t.Fatalf("entry %d %s at %v (epoch %d):\n   fsm %+v\n model %+v", r.index, describe(cmd), r.stamp, epoch, results, want)
	}
	if admitted != nil && len(results) == 1 && (results[0].Code == fsm.Held || results[0].Code == fsm.Granted && !results[0].Retry) {
		if *admitted != (results[0].Code == fsm.Granted) {
			t.Fatalf("Admits predicted %v for entry %d %s, the FSM said %+v", *admitted, r.index, describe(cmd), results[0])
		}
	}
	r.checkGrants(t, got, before, keepsLockDelay(cmd))
	r.checkState(t)
}

// recKey names a record: its key and token.
type recKey struct {
	key   string
	token uint64
}

// keepsLockDelay reports whether cmd, or an acquire in its batch, has
// KeepLockDelay.
func keepsLockDelay(cmd fsm.Command) bool {
	switch c := cmd.(type) {
	case *fsm.Acquire:
		return c.KeepLockDelay
	case *fsm.Batch:
		for _, sub := range c.Cmds {
			if keepsLockDelay(sub) {
				return true
			}
		}
	}
	return false
}

// mayShare reports whether the two holdings may hold one key together
// (shape-compatibility; how many is checkState's business).
func mayShare(a, b fsm.Lease) bool {
	return a.Mode == fsm.ModeShared && b.Mode == fsm.ModeShared ||
		a.Mode == fsm.ModeSemaphore && b.Mode == fsm.ModeSemaphore && a.Limit == b.Limit
}

// checkGrants checks single-holder (generalised to shapes) and
// monotonic-token on the FSM's own state, independently of the model:
// every record that is new after an entry carries the entry's index as
// its token, above every earlier token of its key and of the cluster; and
// each record it could not share the key with was released by the same
// entry, was its own holder's holding that the grant replaced, or no
// longer blocked the key (its expiry plus lock-delay passed); with keep
// (the entry's acquire has KeepLockDelay), a replaced holding of its own
// holder had no lock-delay (lock-delay-kept).
func (r *modelRun) checkGrants(t *rapid.T, resp *fsm.Response, before []fsm.Lease, keep bool) {
	after := allLeases(r.f)
	old := map[recKey]fsm.Lease{}
	for _, l := range before {
		old[recKey{l.Key, l.Token}] = l
	}
	released := map[uint64]bool{}
	for _, res := range resp.Results {
		if res.Code == fsm.Released {
			released[res.Token] = true
		}
	}
	granted := false
	for _, n := range after {
		if _, ok := old[recKey{n.Key, n.Token}]; ok {
			continue
		}
		if n.Token != resp.Index || n.Token <= r.lastToken && !granted || n.Token <= r.keyLastToken[n.Key] {
			t.Fatalf("monotonic-token: new holding of %s at %d with token %d; last %d, key's last %d",
				n.Key, resp.Index, n.Token, r.lastToken, r.keyLastToken[n.Key])
		}
		granted = true
		r.keyLastToken[n.Key] = n.Token
		for _, p := range before {
			if p.Key != n.Key || mayShare(p, n) || released[p.Token] || p.FreeAt() <= resp.Now {
				continue
			}
			if p.State == fsm.StateHeld && p.Holder == n.Holder && p.ReqID < n.ReqID && (!keep || p.LockDelay == 0) {
				continue // its holder's own, replaced
			}
			t.Fatalf("single-holder: %s (%s) granted to %s at %v while %+v blocked it", n.Key, n.Mode, n.Holder, resp.Now, p)
		}
	}
	if granted {
		r.lastToken = resp.Index
		r.tokens = append(r.tokens, resp.Index)
	}
}

// checkState compares the FSM's reads with the model, and checks on the
// FSM's own state, independently of the model, that no key holds
// incompatible records (shape-compatibility, semaphore-limit), no holder
// has two live holdings of one key, and every multi-key grant is whole
// (set-atomicity: no state ever shows part of a set).
func (r *modelRun) checkState(t *rapid.T) {
	want := r.m.leases()
	got := allLeases(r.f)
	if len(want) == 0 {
		want = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List:\n   fsm %+v\n model %+v", got, want)
	}
	byKey := map[string][]fsm.Lease{}
	for _, l := range got {
		byKey[l.Key] = append(byKey[l.Key], l)
	}
	held, delayed, size := 0, 0, int64(0)
	for _, l := range got {
		size += int64(len(l.Key) + len(l.Holder) + len(l.Value))
	}
	for _, k := range modelKeys {
		recs := byKey[k]
		if hs := r.f.Holdings(k); !reflect.DeepEqual(hs, recs) {
			t.Fatalf("Holdings(%s) = %+v; List has %+v", k, hs, recs)
		}
		l, ok := r.f.Get(k)
		if ok != (len(recs) > 0) || ok && !reflect.DeepEqual(l, recs[0]) {
			t.Fatalf("Get(%s) = %+v, %v; want the first of %+v", k, l, ok, recs)
		}
		var n [3]int
		live := map[string]bool{}
		for _, l := range recs {
			n[l.Mode]++
			if l.State == fsm.StateHeld {
				held++
				if live[l.Holder] {
					t.Fatalf("one-holding-per-holder: %s holds %s twice: %+v", l.Holder, k, recs)
				}
				live[l.Holder] = true
			} else {
				delayed++
			}
			if l.Mode == fsm.ModeSemaphore && (l.Limit != recs[0].Limit || n[fsm.ModeSemaphore] > int(l.Limit)) {
				t.Fatalf("semaphore-limit: %s: %+v", k, recs)
			}
		}
		if n[fsm.ModeExclusive] > 0 && len(recs) > 1 || n[fsm.ModeShared] > 0 && n[fsm.ModeSemaphore] > 0 {
			t.Fatalf("shape-compatibility: %s: %+v", k, recs)
		}
	}
	sets := map[uint64][]fsm.Lease{}
	for _, l := range got {
		if l.Set != 0 {
			sets[l.Set] = append(sets[l.Set], l)
		}
	}
	for token, members := range sets {
		first := members[0]
		if token != first.Token || len(members) != len(first.SetKeys) || len(members) < 2 {
			t.Fatalf("set-atomicity: set %d has %d members, says %v: %+v", token, len(members), first.SetKeys, members)
		}
		for i, m := range members {
			if m.Key != first.SetKeys[i] || m.Holder != first.Holder || m.Token != token || m.State != first.State ||
				m.Expiry != first.Expiry || m.Seen != first.Seen || m.ReqID != first.ReqID {
				t.Fatalf("set-atomicity: set %d member %d differs: %+v", token, i, members)
			}
		}
	}
	gotMarks, wantMarks := fsm.AllMarks(r.f), r.m.allMarks()
	if !reflect.DeepEqual(gotMarks, wantMarks) {
		t.Fatalf("marks:\n   fsm %+v\n model %+v", gotMarks, wantMarks)
	}
	var markSize int64
	for _, m := range wantMarks {
		markSize += int64(len(m.Key) + len(m.Holder))
	}
	st := r.f.Stats()
	if st.Epoch != r.m.epoch || st.Now != r.m.now || st.Applied != r.index || st.Held != held || st.Delayed != delayed ||
		st.Keys != len(byKey) || st.Marks != len(wantMarks) || st.Bytes != size || st.MarkBytes != markSize {
		t.Fatalf("Stats %+v; model epoch %d now %v applied %d held %d delayed %d keys %d marks %d bytes %d mark bytes %d", st,
			r.m.epoch, r.m.now, r.index, held, delayed, len(byKey), len(wantMarks), size, markSize)
	}
	due, ok := r.f.NextExpiry()
	mdue, mok := r.m.nextExpiry()
	if ok != mok || due != mdue {
		t.Fatalf("NextExpiry %v %v; model %v %v", due, ok, mdue, mok)
	}
	// restore-bounds: every state the rules reach passes Restore's checks.
	if got, err := fsm.ReadBackup(bytes.NewReader(snapshotBytes(t, r.f))); err != nil || got != st {
		t.Fatalf("restore-bounds: the snapshot of a reachable state reads as %+v, %v; want %+v", got, err, st)
	}
}

func (r *modelRun) flushTwin(t *rapid.T) {
	if len(r.pending) == 0 {
		return
	}
	out := r.twin.ApplyBatch(r.pending)
	if len(out) != len(r.pending) {
		t.Fatalf("ApplyBatch returned %d results for %d entries", len(out), len(r.pending))
	}
	r.pending = nil
}

func describe(cmd fsm.Command) string {
	switch c := cmd.(type) {
	case *fsm.Batch:
		s := "batch["
		for i, sub := range c.Cmds {
			if i > 0 {
				s += "; "
			}
			s += describe(sub)
		}
		return s + "]"
	case fsm.Promote, fsm.Expire:
		return cmd.Type().String()
	}
	return fmt.Sprintf("%s%+v", cmd.Type(), cmd)
}
