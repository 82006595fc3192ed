package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// waiter is one acquirer queued at the leader, in the queue of every key
// it names. Its fields after done are guarded by waitQueues.mu.
type waiter struct {
	cmd     *fsm.Acquire
	items   []fsm.Item      // cmd.Items(): the keys it waits for, with their modes
	seq     uint64          // arrival order at this leader (its request's first attempt's), the same in every queue
	arrival time.Duration   // leader clock at receipt of this request
	done    chan waitResult // buffered 1; receives exactly one result

	// gone: the caller stopped waiting, or a retry of the same request
	// took its place (supersede, which answers it once). A waiter that is
	// gone is never proposed again, and the queue never answers it.
	gone bool
	// inflight is the waiter's proposal while one is in flight; settled
	// is closed once that proposal is settled.
	inflight *proposal
	settled  chan struct{}
	// unreserve returns the state quota reserved for the waiter's
	// proposal (Node.quota), from the pass that chose to propose it until
	// proposeLocked hands it to the proposal's settling.
	unreserve func()
}

// errSuperseded answers an attempt of an acquire that a retry of the same
// request took out of the queues (see supersede): it was not granted and
// can no longer be.
var errSuperseded = errors.New("node: a later attempt of this acquire (same holder and request id) took its place in the queue; this one was not granted")

type waitResult struct {
	res    fsm.Result
	waited time.Duration // W: grant stamp minus arrival, leader clock
	err    error
	// lost is the waiter's proposal when its caller left while it was in
	// flight (err is then ErrUnknownOutcome): see Node.lostOutcome.
	lost *proposal
	// outwaited: the waiter's patience (the request's max_wait) ran out
	// before its turn; it left the queue, certainly not granted.
	outwaited bool
}

// item returns w's item on key.
func (w *waiter) item(key string) fsm.Item {
	for _, it := range w.items {
		if it.Key == key {
			return it
		}
	}
	return fsm.Item{Key: key}
}

// shares reports whether holdings of a and b may hold one key together,
// so that b may be proposed while a's proposal is in flight.
func shares(a, b fsm.Item) bool {
	return a.Mode == fsm.ModeShared && b.Mode == fsm.ModeShared ||
		a.Mode == fsm.ModeSemaphore && b.Mode == fsm.ModeSemaphore && a.Limit == b.Limit
}

// keyQueue is the FIFO of one key's waiters, in arrival order.
type keyQueue struct {
	waiters []*waiter
	timer   *time.Timer
}

// waitQueues holds the waiting acquirers of one leadership term, FIFO per
// key.
//
// Invariant fifo-no-barging: while a key has waiters, a newcomer without
// wait is refused and a newcomer with wait joins the tail of the queue of
// every key it names (a retry of a request whose attempt left the queues
// unproposed within keepPlace takes that attempt's place back, behind the
// waiters in flight: enqueueLocked). A waiter is proposed only from the front of every
// one of its queues: every waiter ahead of it on each of its keys must be
// in flight already and able to hold that key beside it (shared beside
// shared, semaphore beside semaphore of the same limit), and fsm.Admits
// must say the FSM would grant it on every key now. So a queue drains in
// arrival order: a head is proposed when it is compatible with what holds
// the key, and, while it is in flight, the waiters right behind it that
// share with it are proposed too (several readers, several semaphore
// slots, each its own entry); a queued exclusive waiter stops every newer
// one behind it, shared or not (no writer starvation). A waiter is
// proposed when the key may have become free: a release or expiry event
// from the FSM, a timer set to the time the blocking records end, or in
// the same entry as the holder's release (a Batch of Release and the
// waiter's Acquire), so a handoff costs one Raft round trip. Guarded by
// TestWaitersFIFO, TestSharedWaitersDrainTogether and
// TestWriterStopsNewerReaders.
//
// Invariant no-set-deadlock: two waiters can never wait for each other,
// whatever the order in which they name their keys ({a, b} and {b, a}).
// Every queue is ordered by the same arrival sequence (seq), so the oldest
// waiter that is not in flight has nothing but in-flight waiters ahead of
// it in any of its queues; in-flight proposals resolve, so it reaches the
// front of all of them and is proposed as soon as its keys are free,
// which only holdings (which end by release or expiry) can delay, never
// another waiter. A lock-ordering protocol is not needed, and no waiter
// ever holds part of its set while waiting (set-atomicity in fsm).
// Guarded by TestMultiKeyWaitersNoDeadlock.
//
// Invariant waiter-outcome: a waiter's proposal is settled by the queue
// when Raft resolves it (settle), never by whoever proposed it: a releaser
// that gives up does not cut the waiter's grant short. A waiter whose
// caller leaves while its grant is in flight answers ErrUnknownOutcome
// (the grant may commit), and the node that took the request withdraws it
// (Node.withdraw, an fsm Cancel of the whole grant), so a grant nobody
// hears of never blocks a key, on this leader or the next. A retry of a
// request (same holder and request id) that arrives while an attempt of
// it waits here is judged alone (supersede): the waiting attempt leaves
// the queues first, or, in flight, is settled first, so the retry's
// answer is the request's outcome. Guarded by
// TestAbandonedWaiterGrantIsWithdrawn and TestRetryOfQueuedWaiterIsJudgedAlone.
type waitQueues struct {
	ls *leaderState

	mu     sync.Mutex
	keys   map[string]*keyQueue
	closed error
	n      int    // waiters queued
	seq    uint64 // the last arrival's sequence number
	// places: the arrival order of waiters that left the queues before
	// they were proposed (their attempt's context ended: a connection
	// cut, a follower that ended its forward), kept for keepPlace for a
	// retry of the same request to take (see wait).
	places map[placeKey]place
}

// placeKey names a request: its holder and request id.
type placeKey struct {
	holder string
	reqID  uint64
}

// place is a left waiter's arrival order, kept until until.
type place struct {
	seq   uint64
	until time.Time
}

// keepPlace is how long a waiter's place in the queues outlives its
// attempt: a client retries an attempt cut short at once or after a
// back-off well under it. Without it the retry queued at the back, and
// every waiter that had come after it went first (adversarial review
// rev-adv37: A waiting, then B; A's attempt cut and retried at once; B
// granted first).
const keepPlace = 2 * time.Second

// maxPlaces bounds the places kept: at it, once the expired ones are
// dropped, a new one is not kept (its retry queues at the back).
const maxPlaces = 4096

func newWaitQueues(ls *leaderState) *waitQueues {
	return &waitQueues{ls: ls, keys: make(map[string]*keyQueue), places: make(map[placeKey]place)}
}

// keepPlaceLocked keeps w's place for a retry of its request. q.mu is
// held.
func (q *waitQueues) keepPlaceLocked(w *waiter) {
	now := time.Now()
	if len(q.places) >= maxPlaces {
		for k, p := range q.places {
			if now.After(p.until) {
				delete(q.places, k)
			}
		}
		if len(q.places) >= maxPlaces {
			return
		}
	}
	q.places[placeKey{w.cmd.Holder, w.cmd.ReqID}] = place{seq: w.seq, until: now.Add(keepPlace)}
}

// enqueueLocked gives w its place in the queue of each of its keys: its
// request's earlier place if an attempt of it left within keepPlace,
// else the back. An earlier place is behind every waiter in flight (they
// are at the front of their queues, and go on), and ahead of those that
// arrived after it; every queue stays in the same order. q.mu is held.
func (q *waitQueues) enqueueLocked(w *waiter) {
	k := placeKey{w.cmd.Holder, w.cmd.ReqID}
	p, ok := q.places[k]
	delete(q.places, k)
	if !ok || time.Now().After(p.until) {
		q.seq++
		p.seq = q.seq
	}
	w.seq = p.seq
	for _, it := range w.items {
		kq := q.keys[it.Key]
		if kq == nil {
			kq = &keyQueue{}
			q.keys[it.Key] = kq
		}
		at := len(kq.waiters)
		for at > 0 && kq.waiters[at-1].inflight == nil && kq.waiters[at-1].seq > w.seq {
			at--
		}
		kq.waiters = slices.Insert(kq.waiters, at, w)
	}
}

// busy reports whether any of keys has waiters, so that a non-waiting
// acquire does not barge ahead of them.
func (q *waitQueues) busy(items []fsm.Item) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, it := range items {
		if kq := q.keys[it.Key]; kq != nil && len(kq.waiters) > 0 {
			return true
		}
	}
	return false
}

// count returns how many acquirers wait.
func (q *waitQueues) count() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// maxKeyWaiters bounds the waiters queued for one key at the leader: past
// it a waiting acquire of the key is refused (ErrTooManyWaiters) rather
// than queued. A queue that long drains one holder at a time, a handoff a
// Raft round trip each, so a newcomer would wait seconds to minutes
// anyway; the bound keeps one key's crowd from taking the node's whole
// --max-waiters (outsider review s32 #4: 8,186 waits on 8 keys).
const maxKeyWaiters = 1024

// wait queues w on each of its keys and blocks until it is granted,
// refused for good, ctx ends, or patience fires (nil: never). A key with
// maxKeyWaiters queued already refuses w at once. If ctx ends while w's
// grant is in flight, the answer is ErrUnknownOutcome; before that, the
// caller certainly was not granted. If patience fires first, w leaves
// the queue (outwaited) unless its grant is in flight, which is then
// awaited: its caller is still there to hear it.
func (q *waitQueues) wait(ctx context.Context, w *waiter, patience <-chan time.Time) waitResult {
	q.mu.Lock()
	if q.closed != nil {
		q.mu.Unlock()
		return waitResult{err: q.closed}
	}
	if _, _, stalled := q.ls.n.commits.stalled(); stalled {
		// Found unable to commit since the caller asked (invariant
		// commit-or-say).
		q.mu.Unlock()
		return waitResult{err: q.ls.n.stallErr()}
	}
	for _, it := range w.items {
		if kq := q.keys[it.Key]; kq != nil && len(kq.waiters) >= maxKeyWaiters {
			q.mu.Unlock()
			return waitResult{err: fmt.Errorf("%w: %d acquires wait for %q already, the most one key may have queued at the leader: retry later or use TryAcquire", ErrTooManyWaiters, len(kq.waiters), it.Key)}
		}
	}
	q.enqueueLocked(w)
	q.n++
	q.pumpLocked(w.items[0].Key)
	q.mu.Unlock()

	outwaited := false
	select {
	case r := <-w.done:
		return r
	case <-ctx.Done():
	case <-patience:
		outwaited = true
	}
	q.mu.Lock()
	select {
	case r := <-w.done: // answered just now
		q.mu.Unlock()
		return r
	default:
	}
	if outwaited && w.inflight != nil {
		q.mu.Unlock()
		select {
		case r := <-w.done:
			return r
		case <-ctx.Done():
		}
		q.mu.Lock()
		select {
		case r := <-w.done:
			q.mu.Unlock()
			return r
		default:
		}
		outwaited = false // its caller left after all
	}
	w.gone = true
	lost := w.inflight
	if lost == nil {
		if !outwaited {
			q.keepPlaceLocked(w) // for its retry
		}
		q.leaveLocked(w) // and let the ones behind it go
	}
	q.mu.Unlock()
	switch {
	case lost != nil:
		return waitResult{lost: lost, err: fmt.Errorf("%w: gave up waiting (%v) while the grant was being committed", ErrUnknownOutcome, ctx.Err())}
	case outwaited:
		return waitResult{outwaited: true}
	}
	return waitResult{err: fmt.Errorf("acquire %q: gave up waiting, not granted: %w", w.cmd.Key, ctx.Err())}
}

// supersede makes way for a retry of cmd's request (the same holder and
// request id) while an earlier attempt of it waits here: its reply was
// lost, or its caller gave up and is settling the outcome (with Abandon,
// or, from a client older than Abandon, a non-waiting retry). Judging the
// retry beside that attempt would be wrong both ways: a non-waiting retry
// would be refused Held on account of the queue, and the attempt could be
// granted right after, the refusal then denying a grant the cluster made. An attempt that is not in flight
// leaves the queues at once, answered errSuperseded, so it can never be
// granted; for one in flight supersede returns a channel closed once its
// proposal is settled, after which the caller asks again. It returns nil
// when no attempt of the request waits here.
func (q *waitQueues) supersede(cmd *fsm.Acquire) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	kq := q.keys[cmd.Key]
	if kq == nil {
		return nil
	}
	for _, w := range kq.waiters {
		if w.cmd.Holder != cmd.Holder || w.cmd.ReqID != cmd.ReqID {
			continue
		}
		if w.inflight != nil {
			return w.settled
		}
		w.gone = true
		select {
		case w.done <- waitResult{err: errSuperseded}:
		default:
		}
		q.keepPlaceLocked(w) // for the retry
		q.leaveLocked(w)
		return nil
	}
	return nil
}

// pump proposes the waiters of key that may be granted now, or arms a
// timer for when they may be.
func (q *waitQueues) pump(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pumpLocked(key)
}

// pumpLocked walks key's queue from the front and proposes every waiter
// that may go (see fifo-no-barging), stopping at the first that may not.
// A waiter named by several keys is judged on all of them; proposing it
// may let others go on its other keys, which are pumped in turn. q.mu is
// held.
func (q *waitQueues) pumpLocked(key string) {
	todo := []string{key}
	for len(todo) > 0 {
		k := todo[0]
		todo = todo[1:]
		ws, refused := q.proposable(k)
		for _, w := range ws {
			q.proposeLocked(w, nil)
			for _, it := range w.items {
				if it.Key != k {
					todo = append(todo, it.Key)
				}
			}
		}
		if refused != nil {
			// Answered already; the waiters behind it may go.
			q.removeLocked(refused)
			for _, it := range refused.items {
				todo = append(todo, it.Key)
			}
		}
	}
}

// proposable returns the waiters of key that may be proposed now, in
// order, each with its state quota reserved, arming key's timer (or the
// blocking key's) for the first one that may not if records block it.
//
// A waiter whose turn comes while the cluster is at its state quota
// (Limits.MaxLeases, MaxLeaseBytes) is refused then, with the quota's
// error, as a TryAcquire would be, and returned as refused for the caller
// to take out of the queues; it does not wait for room. Room is not a
// property of its key: it would wait on every release in the cluster,
// while newcomers on other keys take each freed slot first, and hold up
// its whole queue (FIFO) meanwhile. etcd and ZooKeeper refuse at their
// quotas too (etcd's "database space exceeded", ZooKeeper's enforced
// quota) rather than block. A handoff never meets the refusal: the
// releaser's holding counts as gone (claimHead), and a record that the
// grant would reap (an expired holding, an ended lock-delay) makes the
// waiter wait for the reaper's Expire, whose event pumps the key again,
// rather than be refused. q.mu is held.
func (q *waitQueues) proposable(key string) (out []*waiter, refused *waiter) {
	kq := q.keys[key]
	if kq == nil || q.closed != nil {
		return nil, nil
	}
	if len(kq.waiters) == 0 {
		q.drop(key, kq)
		return nil, nil
	}
	var ahead []fsm.Item // in flight, or proposed by this pass, on key
	for _, w := range kq.waiters {
		it := w.item(key)
		if !sharesAll(ahead, it) {
			break
		}
		if w.inflight != nil {
			ahead = append(ahead, it)
			continue
		}
		ok, blockKey, wait := q.admits(w, nil)
		if !ok {
			if wait > 0 {
				q.arm(blockKey, wait)
			}
			break
		}
		unreserve, pending, err := q.ls.n.quota(q.ls, w.cmd, w.items, nil)
		if pending {
			// Due records count until reaped: look again after the
			// reaper's Expire (its event pumps key; the timer is a
			// fallback).
			q.arm(key, quotaPendingRetry)
			break
		}
		if err != nil {
			w.gone = true
			select {
			case w.done <- waitResult{err: fmt.Errorf("acquire %q: its turn came: %w", w.cmd.Key, err)}:
			default:
			}
			return out, w
		}
		out = append(out, w)
		ahead = append(ahead, it)
		w.inflight = &proposal{} // reserved: proposeLocked sets the real one
		w.unreserve = unreserve
	}
	return out, nil
}

// quotaPendingRetry is how soon (leader clock) a waiter that the quota
// held back for records about to be reaped is looked at again, if no
// event of its key comes first.
const quotaPendingRetry = 50 * time.Millisecond

// sharesAll reports whether it may hold its key beside every one of
// ahead.
func sharesAll(ahead []fsm.Item, it fsm.Item) bool {
	for _, a := range ahead {
		if !shares(a, it) {
			return false
		}
	}
	return true
}

// admits reports whether w may be proposed now: at the front of every one
// of its queues (only in-flight waiters that share with it ahead of it)
// and admitted by the FSM on every key (release, if not nil, counts as
// applied first). If not, and records block it, blockKey and wait say
// where and for how long at most. q.mu is held.
func (q *waitQueues) admits(w *waiter, release *fsm.Release) (ok bool, blockKey string, wait time.Duration) {
	now := q.ls.now()
	var except uint64
	if release != nil {
		except = release.Token
	}
	for _, it := range w.items {
		kq := q.keys[it.Key]
		extra := 0
		for _, o := range kq.waiters {
			if o == w {
				break
			}
			if o.inflight == nil || !shares(o.item(it.Key), it) {
				return false, "", 0 // someone older is not in flight yet: it goes first
			}
			extra++
		}
		if it.Mode != fsm.ModeSemaphore {
			extra = 0
		}
		okKey, wk, bad := q.ls.n.fsm.Admits(it, w.cmd.Holder, w.cmd.KeepLockDelay, now, extra, except)
		if bad != "" {
			// Refused for good: propose it, and the FSM's Invalid
			// answers it.
			continue
		}
		if !okKey {
			return false, it.Key, wk
		}
	}
	return true, "", 0
}

// claimHead proposes, in one entry after the holder's release, the first
// waiter of key if the key's release lets it be granted, so a handoff
// costs one Raft round trip. It returns the proposal, or nil if no waiter
// may go (then the caller proposes the release alone, and the release
// event pumps the queue).
func (q *waitQueues) claimHead(key string, release *fsm.Release) *proposal {
	q.mu.Lock()
	defer q.mu.Unlock()
	kq := q.keys[key]
	if kq == nil || q.closed != nil || len(kq.waiters) == 0 {
		return nil
	}
	w := kq.waiters[0]
	if w.inflight != nil || w.gone {
		return nil
	}
	if ok, _, _ := q.admits(w, release); !ok {
		return nil
	}
	unreserve, _, err := q.ls.n.quota(q.ls, w.cmd, w.items, release)
	if err != nil {
		// The release goes alone, and its event pumps the queue, which
		// asks the quota again with the holding gone.
		return nil
	}
	w.inflight, w.unreserve = &proposal{}, unreserve
	p := q.proposeLocked(w, release)
	// The waiters behind it may share with it.
	q.pumpLocked(key)
	return p
}

// proposeLocked proposes w (after prefix, if any) and settles the outcome
// when Raft resolves it. q.mu is held.
func (q *waitQueues) proposeLocked(w *waiter, prefix fsm.Command) *proposal {
	var cmd fsm.Command = w.cmd
	if prefix != nil {
		cmd = &fsm.Batch{Cmds: []fsm.Command{prefix, w.cmd}}
	}
	s := q.ls.stamp()
	p := q.ls.n.propose(s, cmd, 5*time.Second)
	w.inflight, w.settled = p, make(chan struct{})
	unreserve := w.unreserve
	w.unreserve = nil
	go func() {
		<-p.done // propose resolves every proposal (see Node.wait)
		// Applied or not, the state now counts what it did.
		unreserve()
		var res fsm.Result
		if p.err == nil {
			res = p.resp.Results[len(p.resp.Results)-1]
		}
		q.settle(w, s, res, p.err)
	}()
	return p
}

// settle records the outcome of w's proposal: it answers w (unless w's
// caller left: then the node that took the request withdraws it) and
// takes it out of its queues, or leaves it queued with a timer if it
// turned out held.
func (q *waitQueues) settle(w *waiter, s fsm.Stamp, res fsm.Result, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	w.inflight = nil
	close(w.settled)
	if q.closed != nil {
		return // failAll has answered everyone already
	}
	if err == nil && res.Code == fsm.Held && !w.gone {
		// Someone holds a key after all (a holder's own renewal, say):
		// look again when it may be free. The waiters behind it stay
		// behind it.
		q.arm(res.Key, max(res.Wait, time.Millisecond))
		return
	}
	if !w.gone {
		r := waitResult{res: res, waited: s.Now - w.arrival, err: err}
		if err == nil && res.Code != fsm.Granted && res.Code != fsm.Held {
			r.err = resultErr(res)
		}
		select {
		case w.done <- r:
		default:
		}
	}
	q.leaveLocked(w)
}

// leaveLocked takes w out of every queue it is in and pumps them. q.mu is
// held.
func (q *waitQueues) leaveLocked(w *waiter) {
	q.removeLocked(w)
	for _, it := range w.items {
		q.pumpLocked(it.Key)
	}
}

// removeLocked takes w out of every queue it is in. q.mu is held.
func (q *waitQueues) removeLocked(w *waiter) {
	for _, it := range w.items {
		kq := q.keys[it.Key]
		if kq == nil {
			continue
		}
		for i, o := range kq.waiters {
			if o == w {
				kq.waiters = append(kq.waiters[:i], kq.waiters[i+1:]...)
				break
			}
		}
	}
	q.n--
}

// resultErr turns a refusal other than Held into an error.
func resultErr(res fsm.Result) error {
	if res.Code == fsm.Stale {
		return fmt.Errorf("acquire %q: %w: %s", res.Key, ErrStaleRequest, res.Reason)
	}
	return fmt.Errorf("acquire %q: %w: %s %s", res.Key, ErrInvalid, res.Code, res.Reason)
}

// arm sets key's timer to pump it after wait (leader clock). q.mu is held.
func (q *waitQueues) arm(key string, wait time.Duration) {
	kq := q.keys[key]
	if kq == nil {
		return
	}
	d := q.ls.realDuration(wait)
	if kq.timer == nil {
		kq.timer = time.AfterFunc(d, func() { q.pump(key) })
		return
	}
	kq.timer.Reset(d)
}

func (q *waitQueues) drop(key string, kq *keyQueue) {
	if kq.timer != nil {
		kq.timer.Stop()
	}
	delete(q.keys, key)
}

// stall answers every waiter when this leader is found unable to commit
// (invariant commit-or-say): queued with queued (its wait was cut short,
// as by a leader change: retryable), in flight with inflight (its grant
// may still commit: ErrUnknownOutcome, for its client to settle, as
// failAll's). Every waiter answered is gone: none is proposed again, and
// the queue answers none of them again. New waiters are refused while the
// stall lasts (wait); the queues stay open for when it ends.
func (q *waitQueues) stall(queued, inflight error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed != nil {
		return
	}
	var ws []*waiter
	seen := map[*waiter]bool{}
	for _, kq := range q.keys {
		for _, w := range kq.waiters {
			if !w.gone && !seen[w] {
				seen[w] = true
				ws = append(ws, w)
			}
		}
	}
	for _, w := range ws {
		w.gone = true
		r := waitResult{err: queued}
		if w.inflight != nil {
			// Settled when Raft resolves it (settle takes it out of
			// its queues then); not withdrawn, as in failAll.
			r.err = inflight
		} else {
			q.removeLocked(w)
		}
		select {
		case w.done <- r:
		default:
		}
	}
}

// failAll answers every waiter with err and refuses new ones; called when
// leadership ends. Waiters are told the outcome is retryable (not leader),
// except one whose proposal is in flight: its grant may still commit
// (under the next leader too), so it gets ErrUnknownOutcome, for its
// client to settle (protocol rule 7).
func (q *waitQueues) failAll(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	keys := q.keys
	q.keys = map[string]*keyQueue{}
	q.closed = err
	q.n = 0
	for _, kq := range keys {
		if kq.timer != nil {
			kq.timer.Stop()
		}
		for _, w := range kq.waiters {
			if w.gone {
				continue
			}
			r := waitResult{err: err}
			if w.inflight != nil {
				// Not withdrawn: its caller is here to be told, and
				// settles it (a retry with the same id takes the grant,
				// an Abandon releases it). A withdrawal racing that
				// retry released the grant into its lock-delay, a state
				// no answer explained (a campaign on 025a9b7).
				r.err = errors.Join(ErrUnknownOutcome, err)
			}
			select {
			case w.done <- r:
			default: // answered already (a waiter in several queues)
			}
		}
	}
}
