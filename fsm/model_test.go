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
)

// model is a small, obviously correct reference for the lease rules: a map
// of key to record, a map of (key, holder) to request-id mark, linear
// scans, no heap, no tree.
type model struct {
	epoch uint64
	now   time.Duration
	recs  map[string]*mrec
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
	holder       string
	reqID, token uint64
	ttl, delay   time.Duration
	expiry       time.Duration
	delayed      bool // the holder expired; the key waits out its lock-delay
	value        string
	seen         bool // a retry of the granting request was applied
}

// freeAt: from when another holder may have the key.
func (r *mrec) freeAt() time.Duration { return r.expiry + r.delay }

// due: when Expire has work to do on the record.
func (r *mrec) due() time.Duration {
	if r.delayed {
		return r.expiry + r.delay
	}
	return r.expiry
}

func newModel() *model { return &model{recs: map[string]*mrec{}, marks: map[mkey]*mmark{}} }

func validAcquire(c *fsm.Acquire) bool {
	return c.Key != "" && len(c.Key) <= 1024 && c.Holder != "" && len(c.Holder) <= 256 &&
		c.ReqID > 0 && c.TTL > 0 && c.TTL <= 24*time.Hour &&
		c.LockDelay >= 0 && c.LockDelay <= 24*time.Hour && len(c.Value) <= 64<<10
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
			out = append(out, m.extend(c.Holder, it))
		}
		return out
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

// reap does to key's record what Expire would if it ran now, and returns
// what is left: every command does this first (reaper-independence).
func (m *model) reap(key string) *mrec {
	r := m.recs[key]
	for r != nil && r.due() <= m.now {
		if !r.delayed {
			m.noteEnded(mkey{key, r.holder}, r.reqID, r.expiry)
			if r.delay > 0 {
				r.delayed = true
				continue
			}
		}
		delete(m.recs, key)
		return nil
	}
	return r
}

func (m *model) acquire(index uint64, c *fsm.Acquire) fsm.Result {
	if !validAcquire(c) {
		return fsm.Result{Code: fsm.Invalid, Key: c.Key}
	}
	r := m.reap(c.Key)
	k := mkey{c.Key, c.Holder}
	if mk := m.mark(k); mk != nil && (c.ReqID < mk.reqID || c.ReqID == mk.reqID && mk.ended) {
		res := fsm.Result{Code: fsm.Stale, Key: c.Key}
		if r != nil && !r.delayed {
			res.Holder, res.Token = r.holder, r.token
		}
		return res
	}
	start := func(r *mrec) {
		r.ttl, r.delay, r.value = c.TTL, c.LockDelay, string(c.Value)
		r.expiry = m.now + c.TTL
		r.delayed = false
	}
	if r != nil && !r.delayed && r.holder == c.Holder {
		switch {
		case c.ReqID == r.reqID:
			start(r)
			r.seen = true
			m.keepMark(k, c.ReqID)
			return fsm.Result{Code: fsm.Granted, Key: c.Key, Token: r.token, Expiry: r.expiry, Retry: true}
		case c.ReqID > r.reqID:
			r.reqID, r.token, r.seen = c.ReqID, index, false
			start(r)
			m.keepMark(k, c.ReqID)
			return fsm.Result{Code: fsm.Granted, Key: c.Key, Token: r.token, Expiry: r.expiry}
		default:
			return fsm.Result{Code: fsm.Stale, Key: c.Key, Token: r.token, Holder: r.holder}
		}
	}
	if r != nil { // a live lease or a lock-delay: it blocks the key
		m.noteRequest(k, c.ReqID)
		res := fsm.Result{Code: fsm.Held, Key: c.Key, Token: r.token, Wait: r.freeAt() - m.now}
		if !r.delayed {
			res.Holder = r.holder
		}
		return res
	}
	r = &mrec{holder: c.Holder, reqID: c.ReqID, token: index}
	start(r)
	m.recs[c.Key] = r
	m.keepMark(k, c.ReqID)
	return fsm.Result{Code: fsm.Granted, Key: c.Key, Token: r.token, Expiry: r.expiry}
}

func (m *model) extend(holder string, it fsm.ExtendItem) fsm.Result {
	r := m.reap(it.Key)
	live := r != nil && !r.delayed
	if !live || r.holder != holder || r.token != it.Token {
		res := fsm.Result{Code: fsm.NotHeld, Key: it.Key}
		if live {
			res.Holder, res.Token = r.holder, r.token
		}
		return res
	}
	r.expiry = m.now + r.ttl
	return fsm.Result{Code: fsm.Extended, Key: it.Key, Token: r.token, Expiry: r.expiry}
}

func (m *model) release(c *fsm.Release) fsm.Result {
	if c.Key == "" || c.Holder == "" || c.Token == 0 {
		return fsm.Result{Code: fsm.Invalid, Key: c.Key}
	}
	r := m.reap(c.Key)
	if r == nil || r.delayed || r.holder != c.Holder || r.token != c.Token {
		res := fsm.Result{Code: fsm.NotHeld, Key: c.Key}
		if r != nil && !r.delayed {
			res.Holder, res.Token = r.holder, r.token
		}
		return res
	}
	delete(m.recs, c.Key)
	m.noteEnded(mkey{c.Key, r.holder}, r.reqID, m.now)
	return fsm.Result{Code: fsm.Released, Key: c.Key, Token: r.token}
}

// cancel releases the grant of c.ReqID if it is the live holding and not
// seen; the id is spent either way.
func (m *model) cancel(c *fsm.Cancel) fsm.Result {
	if c.Key == "" || c.Holder == "" || c.ReqID == 0 {
		return fsm.Result{Code: fsm.Invalid, Key: c.Key}
	}
	r := m.reap(c.Key)
	k := mkey{c.Key, c.Holder}
	res := fsm.Result{Code: fsm.NotHeld, Key: c.Key}
	if r != nil && !r.delayed && r.holder == c.Holder && r.reqID == c.ReqID && !r.seen {
		delete(m.recs, c.Key)
		m.noteEnded(k, r.reqID, m.now)
		res = fsm.Result{Code: fsm.Released, Key: c.Key, Token: r.token}
	} else if r != nil && !r.delayed {
		res.Holder, res.Token = r.holder, r.token
	}
	m.noteEnded(k, c.ReqID, m.now)
	return res
}

// expire reaps, one at a time, the record with the smallest (due, key)
// that is due.
func (m *model) expire() []fsm.Result {
	var out []fsm.Result
	for {
		var key string
		var min *mrec
		for k, r := range m.recs {
			if r.due() <= m.now && (min == nil || r.due() < min.due() || r.due() == min.due() && k < key) {
				key, min = k, r
			}
		}
		if min == nil {
			for k, mk := range m.marks {
				if mk.due <= m.now {
					delete(m.marks, k)
				}
			}
			return out
		}
		if min.delayed {
			out = append(out, fsm.Result{Code: fsm.Expired, Key: key, Token: min.token})
			delete(m.recs, key)
			continue
		}
		m.noteEnded(mkey{key, min.holder}, min.reqID, min.expiry)
		out = append(out, fsm.Result{Code: fsm.Expired, Key: key, Token: min.token, Holder: min.holder})
		if min.delay > 0 {
			min.delayed = true
		} else {
			delete(m.recs, key)
		}
	}
}

func (m *model) leases() []fsm.Lease {
	var out []fsm.Lease
	for k, r := range m.recs {
		l := fsm.Lease{Key: k, Holder: r.holder, ReqID: r.reqID, Token: r.token, TTL: r.ttl,
			LockDelay: r.delay, Expiry: r.expiry, State: fsm.StateHeld, Seen: r.seen}
		if r.value != "" {
			l.Value = []byte(r.value)
		}
		if r.delayed {
			l.State = fsm.StateDelayed
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
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
	modelKeys    = []string{"a", "b", "c"}
	modelHolders = []string{"h1", "h2", "h3"}

	stepKinds = []string{
		"acquire", "extend", "acquire", "release", "expire", "acquire", "extend",
		"batch", "acquire", "release", "expire", "extend", "acquire", "batch",
		"expire", "acquire", "cancel", "promote", "cancel",
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
		"ttl0", "req0", "key", "ttl-max",
	}
	// clockSteps in ms: mostly forward, sometimes backwards, rarely past a
	// request-id mark's retention.
	clockSteps = []int{500, 1000, 0, 1500, 300, 2000, 2500, -500, 700, 3000, 1200, 4000, -1500, 100, 5500,
		500, 1000, 1500, 300, 2000, 8 * 60_000, 16 * 60_000}
)

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
			nextReq: map[string]uint64{}, keyLastToken: map[string]uint64{},
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

func (r *modelRun) genAcquire(t *rapid.T) *fsm.Acquire {
	key := rapid.SampledFrom(modelKeys).Draw(t, "key")
	h := rapid.SampledFrom(modelHolders).Draw(t, "holder")
	c := &fsm.Acquire{
		Key:    key,
		Holder: h,
		TTL:    time.Duration(rapid.SampledFrom([]int{1, 2, 3, 5}).Draw(t, "ttl-s")) * s,
	}
	rec := r.m.recs[key]
	switch rapid.SampledFrom(reqKinds).Draw(t, "req-kind") {
	case "retry": // the same request again, mostly by the key's holder
		c.ReqID = max(r.nextReq[h], 1)
		if rec != nil && rapid.Bool().Draw(t, "holder-retries") {
			c.Holder, c.ReqID = rec.holder, rec.reqID
		}
	case "old": // a delayed older request, mostly by the key's holder
		if rec != nil && rec.reqID > 1 && rapid.Bool().Draw(t, "holder-is-late") {
			c.Holder = rec.holder
			c.ReqID = uint64(rapid.IntRange(1, int(rec.reqID-1)).Draw(t, "old-req"))
		} else {
			c.ReqID = uint64(rapid.IntRange(1, int(max(r.nextReq[h], 1))).Draw(t, "old-req"))
		}
	default:
		r.nextReq[h]++
		c.ReqID = r.nextReq[h]
	}
	c.LockDelay = time.Duration(rapid.SampledFrom([]int{0, 0, 1, 0, 2}).Draw(t, "delay-s")) * s
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
	}
	return c
}

// token picks, mostly, the key's current token; sometimes an old one.
func (r *modelRun) token(t *rapid.T, key string) uint64 {
	if rec := r.m.recs[key]; rec != nil && rapid.IntRange(0, 3).Draw(t, "old-token?") < 3 {
		return rec.token
	}
	if len(r.tokens) == 0 {
		return 1
	}
	return rapid.SampledFrom(r.tokens).Draw(t, "old-token")
}

// holderFor picks, mostly, the key's holder.
func (r *modelRun) holderFor(t *rapid.T, key string) string {
	if rec := r.m.recs[key]; rec != nil && rapid.IntRange(0, 3).Draw(t, "other-holder?") < 3 {
		return rec.holder
	}
	return rapid.SampledFrom(modelHolders).Draw(t, "holder")
}

func (r *modelRun) genExtend(t *rapid.T) *fsm.Extend {
	first := rapid.SampledFrom(modelKeys).Draw(t, "key")
	c := &fsm.Extend{Holder: r.holderFor(t, first)}
	n := rapid.SampledFrom([]int{1, 2, 3, 1, 0}).Draw(t, "items") // 0 items is Invalid
	for i := range n {
		k := first
		if i > 0 {
			k = rapid.SampledFrom(modelKeys).Draw(t, "key")
		}
		c.Items = append(c.Items, fsm.ExtendItem{Key: k, Token: r.token(t, k)})
	}
	return c
}

func (r *modelRun) genRelease(t *rapid.T) *fsm.Release {
	k := rapid.SampledFrom(modelKeys).Draw(t, "key")
	return &fsm.Release{Key: k, Holder: r.holderFor(t, k), Token: r.token(t, k)}
}

// genCancel mostly names the request that granted the key's live holding,
// sometimes an older, newer or unrelated one.
func (r *modelRun) genCancel(t *rapid.T) *fsm.Cancel {
	k := rapid.SampledFrom(modelKeys).Draw(t, "key")
	c := &fsm.Cancel{Key: k, Holder: r.holderFor(t, k)}
	if rec := r.m.recs[k]; rec != nil && rec.holder == c.Holder && rapid.IntRange(0, 3).Draw(t, "cancel-other?") < 3 {
		c.ReqID = rec.reqID
	} else {
		c.ReqID = uint64(rapid.IntRange(0, int(r.nextReq[c.Holder])+1).Draw(t, "cancel-req")) // 0 is Invalid
	}
	return c
}

func (r *modelRun) genBatch(t *rapid.T) *fsm.Batch {
	b := &fsm.Batch{}
	for range rapid.SampledFrom([]int{2, 1, 3, 2, 4, 0}).Draw(t, "batch-len") {
		switch rapid.SampledFrom([]string{"release", "acquire", "expire", "extend", "cancel"}).Draw(t, "batch-kind") {
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
	before := map[string]fsm.Lease{}
	for _, l := range allLeases(r.f) {
		before[l.Key] = l
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
	r.checkGrants(t, cmd, got, before)
	r.checkState(t)
}

// checkGrants checks single-holder and monotonic-token on the FSM's own
// results, independently of the model: a new grant of a key held by
// someone else needs that holding released or reaped in the same entry,
// or its free-at passed; a new token exceeds every earlier one.
func (r *modelRun) checkGrants(t *rapid.T, cmd fsm.Command, resp *fsm.Response, before map[string]fsm.Lease) {
	freed := map[string]bool{}
	for _, res := range resp.Results {
		switch res.Code {
		case fsm.Released:
			freed[res.Key] = true
		case fsm.Expired:
			if res.Holder == "" { // the lock-delay ended
				freed[res.Key] = true
			}
		case fsm.Granted:
			if res.Retry {
				if prev, ok := before[res.Key]; !ok || prev.Token != res.Token {
					t.Fatalf("retry of %s with token %d, record had %+v", res.Key, res.Token, prev)
				}
				continue
			}
			if res.Token != resp.Index || res.Token <= r.lastToken || res.Token <= r.keyLastToken[res.Key] {
				t.Fatalf("monotonic-token: grant of %s at %d with token %d; last %d, key's last %d",
					res.Key, resp.Index, res.Token, r.lastToken, r.keyLastToken[res.Key])
			}
			r.lastToken, r.keyLastToken[res.Key] = res.Token, res.Token
			r.tokens = append(r.tokens, res.Token)
			prev, ok := before[res.Key]
			sameHolding := ok && prev.State == fsm.StateHeld && prev.Holder == acquirer(cmd)
			if ok && !freed[res.Key] && !sameHolding && prev.FreeAt() > resp.Now {
				t.Fatalf("single-holder: %s granted at %v while %+v blocked it", res.Key, resp.Now, prev)
			}
		}
	}
}

// checkState compares the FSM's reads with the model.
func (r *modelRun) checkState(t *rapid.T) {
	want := r.m.leases()
	got := allLeases(r.f)
	if len(want) == 0 {
		want = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List:\n   fsm %+v\n model %+v", got, want)
	}
	for _, k := range modelKeys {
		l, ok := r.f.Get(k)
		rec, mok := r.m.recs[k]
		if ok != mok || ok && (l.Holder != rec.holder || l.Token != rec.token || l.Expiry != rec.expiry) {
			t.Fatalf("Get(%s) = %+v, %v; model %+v", k, l, ok, rec)
		}
	}
	seen := map[string]bool{}
	held, delayed := 0, 0
	for _, l := range got {
		if seen[l.Key] {
			t.Fatalf("single-holder: two records for %s", l.Key)
		}
		seen[l.Key] = true
		if l.State == fsm.StateHeld {
			held++
		} else {
			delayed++
		}
	}
	gotMarks, wantMarks := fsm.AllMarks(r.f), r.m.allMarks()
	if !reflect.DeepEqual(gotMarks, wantMarks) {
		t.Fatalf("marks:\n   fsm %+v\n model %+v", gotMarks, wantMarks)
	}
	st := r.f.Stats()
	if st.Epoch != r.m.epoch || st.Now != r.m.now || st.Applied != r.index || st.Held != held || st.Delayed != delayed || st.Marks != len(wantMarks) {
		t.Fatalf("Stats %+v; model epoch %d now %v applied %d held %d delayed %d marks %d", st, r.m.epoch, r.m.now, r.index, held, delayed, len(wantMarks))
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

// acquirer is the holder of cmd's acquire (a batch holds at most one).
func acquirer(cmd fsm.Command) string {
	switch c := cmd.(type) {
	case *fsm.Acquire:
		return c.Holder
	case *fsm.Batch:
		for _, sub := range c.Cmds {
			if a, ok := sub.(*fsm.Acquire); ok {
				return a.Holder
			}
		}
	}
	return ""
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
