package fsm

import (
	"time"

	"github.com/google/btree"
)

// Request-id marks: how long they are kept, and how many.
const (
	// MarkRetention is how long a mark is kept after its last update, in
	// logical time. It is about Linux's TCP retransmission give-up
	// (tcp_retries2=15: ~15.4 min), after which no delayed copy of a
	// request can still arrive over the connection that carried it; with
	// MarkGranule rounding a mark lives 15 to 16 minutes.
	MarkRetention = 15 * time.Minute
	// MarkGranule rounds every mark's due time up to a multiple of it, so
	// the reaper proposes at most one Expire per granule for marks.
	MarkGranule = time.Minute
	// MaxMarks caps the number of marks kept. Above it the mark with the
	// earliest (due, key, holder) is dropped, deterministically.
	MaxMarks = 1 << 20
)

// Mark is a read-only copy of the request-id high-water mark of one holder
// for one key: the highest request id of an acquire of Key by Holder that
// was applied (granted, retried or refused Held), and whether the holding
// it started has ended (released, expired, replaced, cancelled). An
// acquire by Holder with a lower id, or with the same id once Ended, is
// Stale. Due is when the mark may be dropped (MarkRetention after its last
// update, rounded up to MarkGranule).
type Mark struct {
	Key    string
	Holder string
	ReqID  uint64
	Ended  bool
	Due    time.Duration
}

// mark is the mutable form of a Mark; hidx is its place in the mark heap.
type mark struct {
	Mark
	hidx int
}

func markLess(a, b *mark) bool {
	if a.Key != b.Key {
		return a.Key < b.Key
	}
	return a.Holder < b.Holder
}

// markSet holds the marks by (key, holder), for lookups and snapshots, and
// in a heap by (due, key, holder), for reaping and eviction. A btree rather
// than a map: it costs less memory per mark and snapshots iterate it in
// order without a sort.
type markSet struct {
	tree *btree.BTreeG[*mark]
	heap markHeap
	// bytes is the size of the marks' keys and holders (Stats.MarkBytes).
	bytes int64
}

// size is what a mark counts in markSet.bytes.
func (m *mark) size() int64 { return int64(len(m.Key) + len(m.Holder)) }

// add inserts m, which must not be in the set, and places it in the heap.
func (s *markSet) add(m *mark) {
	if old, ok := s.tree.ReplaceOrInsert(m); ok {
		s.bytes -= old.size()
	}
	s.bytes += m.size()
	s.heap.update(m)
}

// remove takes m out of the set.
func (s *markSet) remove(m *mark) {
	if _, ok := s.tree.Delete(m); ok {
		s.bytes -= m.size()
	}
	s.heap.remove(m)
}

func newMarkSet() markSet { return markSet{tree: btree.NewG(32, markLess)} }

// markDue is the due time of a mark updated at now.
func markDue(now time.Duration) time.Duration { return roundUp(now + MarkRetention) }

// roundUp rounds d >= 0 up to a multiple of MarkGranule.
func roundUp(d time.Duration) time.Duration {
	return (d + MarkGranule - 1) / MarkGranule * MarkGranule
}

// spends reports whether m (nil: no mark) makes request reqID of its
// holder Stale: lower than the mark, or equal to it once its holding ended
// or it was cancelled.
func (m *mark) spends(reqID uint64) bool {
	return m != nil && (reqID < m.ReqID || reqID == m.ReqID && m.Ended)
}

// liveMark returns the mark of (key, holder), or nil. A mark that is due
// counts as gone, and is dropped, whether or not an Expire reaped it
// (reaper-independence).
func (f *FSM) liveMark(key, holder string) *mark {
	f.probe.Key, f.probe.Holder = key, holder
	m, _ := f.marks.tree.Get(&f.probe)
	f.probe.Key, f.probe.Holder = "", ""
	if m != nil && m.Due <= f.now {
		f.dropMark(m)
		return nil
	}
	return m
}

// noteRequest records that an acquire of key by holder with request id
// reqID was applied (granted, retried or refused Held). m is the live mark
// of (key, holder) as liveMark returned it, or nil; the caller has checked
// that the request is not stale, so reqID is at least the mark's.
func (f *FSM) noteRequest(m *mark, key, holder string, reqID uint64) {
	if m == nil {
		f.addMark(key, holder, reqID, false, markDue(f.now))
		return
	}
	if reqID > m.ReqID {
		m.ReqID, m.Ended = reqID, false
	}
	f.touchMark(m)
}

// noteEnded records that the request reqID of holder for key is spent as
// of logical time at (<= now): the holding it started ended (released,
// expired, replaced) or it was cancelled. A mark that was live at that time
// with a higher id stays as it is.
//
// An expiry is dated at the lease's expiry, not at the reap, so that the
// mark's lifetime does not depend on when the reaper ran
// (reaper-independence): no other update of the mark can fall between the
// two, since every command on the key reaps it first.
func (f *FSM) noteEnded(key, holder string, reqID uint64, at time.Duration) {
	f.probe.Key, f.probe.Holder = key, holder
	m, _ := f.marks.tree.Get(&f.probe)
	f.probe.Key, f.probe.Holder = "", ""
	if m != nil && m.Due <= at {
		f.dropMark(m) // gone before the holding ended
		m = nil
	}
	if m != nil && reqID < m.ReqID {
		return
	}
	due := markDue(at)
	if due <= f.now {
		// Already gone by now, had it been noted in time.
		if m != nil {
			f.dropMark(m)
		}
		return
	}
	if m == nil {
		f.addMark(key, holder, reqID, true, due)
		return
	}
	m.ReqID, m.Ended, m.Due = reqID, true, due
	f.marks.heap.update(m)
}

// keepMark records a grant (or retry) with request id reqID for the
// holder whose live mark is m. While the holding lives its record carries
// the request id, which the live-record rules judge, so a grant needs no
// mark of its own: an existing one is kept up to date, and none is made
// (noteEnded makes it when the holding ends). This keeps a million held
// leases from costing a million marks.
func (f *FSM) keepMark(m *mark, reqID uint64) {
	if m != nil {
		f.noteRequest(m, m.Key, m.Holder, reqID)
	}
}

func (f *FSM) touchMark(m *mark) {
	m.Due = markDue(f.now)
	f.marks.heap.update(m)
}

// addMark adds a mark and, above the cap, drops the one with the earliest
// (due, key, holder). (A mark that is due counts as gone anyway, so the cap
// drops a live one only when MaxMarks live marks are kept.)
func (f *FSM) addMark(key, holder string, reqID uint64, ended bool, due time.Duration) {
	m := &mark{Mark: Mark{Key: key, Holder: holder, ReqID: reqID, Ended: ended, Due: due}, hidx: -1}
	f.marks.add(m)
	if f.marks.tree.Len() > f.maxMarks {
		f.dropMark(f.marks.heap[0])
	}
}

func (f *FSM) dropMark(m *mark) { f.marks.remove(m) }

// reapMarks drops every mark that is due.
func (f *FSM) reapMarks() {
	for len(f.marks.heap) > 0 && f.marks.heap[0].Due <= f.now {
		f.dropMark(f.marks.heap[0])
	}
}

// shiftMarks moves every mark into a new epoch whose clock reads now after
// the old one read oldNow: the retention it had left is kept, capped at a
// full MarkRetention (it had at most that plus less than a granule), and
// rounded up to MarkGranule so that all marks stay aligned.
func (f *FSM) shiftMarks(oldNow, now time.Duration) {
	limit := now + MarkRetention
	for _, m := range f.marks.heap {
		m.Due = roundUp(min(m.Due-oldNow+now, limit))
	}
	f.marks.heap.init() // rounding and the cap may make ties
}

// Mark returns the request-id mark of holder for key, if one is kept.
func (f *FSM) Mark(key, holder string) (Mark, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.marks.tree.Get(&mark{Mark: Mark{Key: key, Holder: holder}})
	if !ok {
		return Mark{}, false
	}
	return m.Mark, true
}
