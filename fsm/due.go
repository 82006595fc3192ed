package fsm

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// dueQueue holds every record in reap order, (due, key, token), for the
// reaper and NextExpiry.
//
// A binary heap made every extend cost a sift from the front of the order
// (an extended lease was the one due first) to the back, a cache miss per
// level: most of a follower's CPU in keepalive. Here records live in
// lanes, doubly linked lists sorted by due, one per TTL for held leases
// and one per lock-delay for remnants. A grant or an extend sets a due of
// now + TTL, and now never goes back, so it lands at its lane's tail:
// unlink and append, O(1). A small heap orders the lanes by their first
// record. Records of equal due are appended in arrival order; a lane's
// head run (the records sharing its first due) is sorted by key and token
// when it is asked for its first record, so the reap order is exactly
// (due, key, token) whatever the arrival order, and the same on every
// replica and after a restore.
type dueQueue struct {
	lanes map[laneKey]*lane
	heads laneHeap // lanes by their head's due
	n     int
	buf   []*record // scratch for sorting a head run
}

// laneKey names a lane: the offset of a due from the moment it is set.
type laneKey struct {
	delayed bool          // remnants, by lock-delay; else held, by TTL
	d       time.Duration // TTL or LockDelay
}

type lane struct {
	key        laneKey
	head, tail *record
	// sorted: the head run was in (key, token) order when its due was
	// sortedAt; it says nothing once the head run has another due.
	sorted   bool
	sortedAt time.Duration
	hidx     int // place in dueQueue.heads
}

// headSorted reports whether l's head run is in (key, token) order.
func (l *lane) headSorted() bool { return l.sorted && l.head.due() == l.sortedAt }

// laneHeap orders lanes by their head's due only; first looks past ties.
type laneHeap = indexedHeap[*lane]

func (l *lane) before(o *lane) bool {
	if a, b := l.head.due(), o.head.due(); a != b {
		return a < b
	}
	if l.key.delayed != o.key.delayed {
		return !l.key.delayed
	}
	return l.key.d < o.key.d
}

func (l *lane) slot() *int { return &l.hidx }

func newDueQueue() dueQueue { return dueQueue{lanes: map[laneKey]*lane{}} }

func (r *record) laneKey() laneKey {
	if r.State == StateHeld {
		return laneKey{d: r.TTL}
	}
	return laneKey{delayed: true, d: r.LockDelay}
}

// len is the number of records queued.
func (q *dueQueue) len() int { return q.n }

// queued reports whether r is in the queue.
func (r *record) queued() bool { return r.lane != nil }

// update inserts r, or moves it after its due (or its lane) changed.
func (q *dueQueue) update(r *record) {
	if r.lane != nil {
		q.unlink(r)
	}
	q.insert(r)
}

// insert links r into its lane after the last record due no later.
func (q *dueQueue) insert(r *record) {
	k := r.laneKey()
	l := q.lanes[k]
	if l == nil {
		l = &lane{key: k, hidx: -1}
		q.lanes[k] = l
	}
	due := r.due()
	at := l.tail // r goes after at (at the head if nil)
	for at != nil && due < at.due() {
		at = at.prev
	}
	r.lane, r.prev = l, at
	if at == nil {
		r.next, l.head = l.head, r
	} else {
		r.next, at.next = at.next, r
	}
	if r.next == nil {
		l.tail = r
	} else {
		r.next.prev = r
	}
	q.n++
	switch {
	case l.head == r && (r.next == nil || r.next.due() != due):
		l.sorted, l.sortedAt = true, due // alone in a new head run
	case due == l.head.due():
		l.sorted = false // joins the head run
	}
	if l.head == r {
		q.heads.update(l)
	}
}

// unlink takes r out of the queue. r's due may have changed already (its
// caller sets the new one, then calls update): unlink must not read it.
func (q *dueQueue) unlink(r *record) {
	l := r.lane
	wasHead := l.head == r
	if r.prev == nil {
		l.head = r.next
	} else {
		r.prev.next = r.next
	}
	if r.next == nil {
		l.tail = r.prev
	} else {
		r.next.prev = r.prev
	}
	r.lane, r.prev, r.next = nil, nil, nil
	q.n--
	switch {
	case l.head == nil:
		q.heads.remove(l)
		delete(q.lanes, l.key)
	case wasHead:
		q.heads.update(l)
	}
}

// remove takes r out of the queue, if it is in it.
func (q *dueQueue) remove(r *record) {
	if r.lane != nil {
		q.unlink(r)
	}
}

// first returns the record to reap first, nil if none: the least by
// (due, key, token) among the heads of the lanes whose head is due first.
func (q *dueQueue) first() *record {
	if len(q.heads) == 0 {
		return nil
	}
	due := q.heads[0].head.due()
	var best *record
	q.eachHead(0, due, func(l *lane) {
		if !l.headSorted() {
			q.sortRun(l)
		}
		if best == nil || l.head.before(best) {
			best = l.head
		}
	})
	return best
}

// nextDue is the due of the first record; ok is false if there is none.
func (q *dueQueue) nextDue() (due time.Duration, ok bool) {
	if len(q.heads) == 0 {
		return 0, false
	}
	return q.heads[0].head.due(), true
}

// eachHead calls f for every lane in the subheap at i whose head is due
// at due (none is due earlier).
func (q *dueQueue) eachHead(i int, due time.Duration, f func(*lane)) {
	if i >= len(q.heads) || q.heads[i].head.due() != due {
		return
	}
	f(q.heads[i])
	q.eachHead(2*i+1, due, f)
	q.eachHead(2*i+2, due, f)
}

// sortRun puts l's head run in (key, token) order. Its head may change,
// not its due, so l keeps its place among the lanes.
func (q *dueQueue) sortRun(l *lane) {
	due := l.head.due()
	run := q.buf[:0]
	var next *record // the first record after the run
	for next = l.head; next != nil && next.due() == due; next = next.next {
		run = append(run, next)
	}
	slices.SortFunc(run, byKeyToken)
	var prev *record
	for _, r := range run {
		r.prev, r.next = prev, nil
		if prev == nil {
			l.head = r
		} else {
			prev.next = r
		}
		prev = r
	}
	prev.next = next
	if next == nil {
		l.tail = prev
	} else {
		next.prev = prev
	}
	l.sorted, l.sortedAt = true, due
	clear(run)
	q.buf = run[:0]
}

// build queues recs, none queued yet, in O(n log n) (a restore). They
// are sorted first, by due in a compact array (a sort that chased record
// pointers took twice as long), so that each lands at its lane's tail.
func (q *dueQueue) build(recs []*record) {
	type entry struct {
		due time.Duration
		r   *record
	}
	order := make([]entry, len(recs))
	for i, r := range recs {
		order[i] = entry{r.due(), r}
	}
	slices.SortFunc(order, func(a, b entry) int {
		if c := cmp.Compare(a.due, b.due); c != 0 {
			return c
		}
		return byKeyToken(a.r, b.r)
	})
	for _, e := range order {
		q.insert(e.r)
	}
	for _, l := range q.lanes {
		l.sorted, l.sortedAt = true, l.head.due() // inserted in order
	}
}

// before is the reap order: (due, key, token).
func (r *record) before(o *record) bool {
	if a, b := r.due(), o.due(); a != b {
		return a < b
	}
	return byKeyToken(r, o) < 0
}

func byKeyToken(a, b *record) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return cmp.Compare(a.Token, b.Token)
}
