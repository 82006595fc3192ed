package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// waiter is one acquirer queued at the leader.
type waiter struct {
	ctx     context.Context
	cmd     *fsm.Acquire
	arrival time.Duration // leader clock at receipt of this request
	// state: 0 waiting, 1 answered, 2 abandoned (its caller went away).
	state atomic.Int32
	done  chan waitResult // buffered 1
}

type waitResult struct {
	res    fsm.Result
	waited time.Duration // W: grant stamp minus arrival, leader clock
	err    error
}

const (
	waiting int32 = iota
	answered
	abandoned
)

// answer delivers r unless the caller already left; it reports whether the
// caller will see it.
func (w *waiter) answer(r waitResult) bool {
	if !w.state.CompareAndSwap(waiting, answered) {
		return false
	}
	w.done <- r
	return true
}

// keyQueue is the FIFO of one key's waiters.
type keyQueue struct {
	waiters []*waiter
	busy    bool // a proposal for the head is in flight
	timer   *time.Timer
}

// waitQueues holds the waiting acquirers of one leadership term, FIFO per
// key.
//
// Invariant fifo-no-barging: while a key has waiters, only its head waiter
// is proposed; a newcomer without wait is refused and a newcomer with wait
// joins the tail. The head is proposed when the key may be free: on a
// release or expiry event from the FSM, when a timer reaches the key's
// free time, or in the same entry as the holder's release (a Batch of
// Release and the head's Acquire), so a handoff costs one Raft round trip.
// Guarded by TestWaitersFIFO.
type waitQueues struct {
	ls *leaderState

	mu     sync.Mutex
	keys   map[string]*keyQueue
	closed error
	n      int // waiters queued
}

func newWaitQueues(ls *leaderState) *waitQueues {
	return &waitQueues{ls: ls, keys: make(map[string]*keyQueue)}
}

// busyKey reports whether key has waiters, so that a non-waiting acquire
// does not barge ahead of them.
func (q *waitQueues) busyKey(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	kq := q.keys[key]
	return kq != nil && len(kq.waiters) > 0
}

// count returns how many acquirers wait.
func (q *waitQueues) count() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// wait queues w and blocks until it is granted, refused for good, or its
// context ends. A grant that completes after the caller left is released
// again so it does not block the key for a TTL.
func (q *waitQueues) wait(w *waiter) waitResult {
	q.mu.Lock()
	if q.closed != nil {
		q.mu.Unlock()
		return waitResult{err: q.closed}
	}
	kq := q.keys[w.cmd.Key]
	if kq == nil {
		kq = &keyQueue{}
		q.keys[w.cmd.Key] = kq
	}
	kq.waiters = append(kq.waiters, w)
	q.n++
	q.mu.Unlock()
	q.pump(w.cmd.Key)

	select {
	case r := <-w.done:
		return r
	case <-w.ctx.Done():
		if w.state.CompareAndSwap(waiting, abandoned) {
			q.pump(w.cmd.Key) // drop it from the queue unless its proposal is in flight
			return waitResult{err: w.ctx.Err()}
		}
		return <-w.done
	}
}

// pump proposes the head waiter of key if the key may be free now, or arms
// a timer for when it may be.
func (q *waitQueues) pump(key string) {
	q.mu.Lock()
	kq := q.keys[key]
	if kq == nil || kq.busy || q.closed != nil {
		q.mu.Unlock()
		return
	}
	q.dropGone(kq)
	if len(kq.waiters) == 0 {
		q.drop(key, kq)
		q.mu.Unlock()
		return
	}
	head := kq.waiters[0]
	if l, ok := q.ls.n.fsm.Get(key); ok && !(l.State == fsm.StateHeld && l.Holder == head.cmd.Holder) {
		if wait := l.FreeAt() - q.ls.now(); wait > 0 {
			q.arm(key, kq, wait)
			q.mu.Unlock()
			return
		}
	}
	kq.busy = true
	q.mu.Unlock()
	go q.propose(key, head, nil)
}

// claimHead marks key's head waiter as being proposed by the caller (the
// release path, which grants it in the same entry). nil if there is none
// or a proposal is already in flight.
func (q *waitQueues) claimHead(key string) *waiter {
	q.mu.Lock()
	defer q.mu.Unlock()
	kq := q.keys[key]
	if kq == nil || kq.busy || q.closed != nil {
		return nil
	}
	q.dropGone(kq)
	if len(kq.waiters) == 0 {
		q.drop(key, kq)
		return nil
	}
	kq.busy = true
	return kq.waiters[0]
}

// propose applies the head's acquire, alone or after prefix (a release),
// and settles the result.
func (q *waitQueues) propose(key string, head *waiter, prefix fsm.Command) {
	n := q.ls.n
	s := q.ls.stamp()
	var cmd fsm.Command = head.cmd
	if prefix != nil {
		cmd = &fsm.Batch{Cmds: []fsm.Command{prefix, head.cmd}}
	}
	resp, err := n.apply(q.ls.ctx, s, cmd)
	var res fsm.Result
	if err == nil {
		res = resp.Results[len(resp.Results)-1]
	}
	q.settle(key, head, s, res, err)
}

// settle records the outcome of a proposal for head.
func (q *waitQueues) settle(key string, head *waiter, s fsm.Stamp, res fsm.Result, err error) {
	q.mu.Lock()
	kq := q.keys[key]
	if kq == nil || q.closed != nil {
		// failAll answered everyone already; a grant nobody hears of is
		// released below.
		q.mu.Unlock()
		if err == nil && res.Code == fsm.Granted && !head.answer(waitResult{res: res, waited: s.Now - head.arrival}) {
			q.releaseOrphan(head, res)
		}
		return
	}
	kq.busy = false
	if err == nil && res.Code == fsm.Held {
		if head.state.Load() == waiting {
			q.arm(key, kq, max(res.Wait, time.Millisecond))
			q.mu.Unlock()
			return
		}
	}
	q.popHead(kq)
	q.mu.Unlock()
	r := waitResult{res: res, waited: s.Now - head.arrival, err: err}
	if !head.answer(r) && err == nil && res.Code == fsm.Granted {
		q.releaseOrphan(head, res)
	}
	q.pump(key)
}

// releaseOrphan releases a grant whose requester gave up before it
// completed. Best effort: if it fails the lease expires after its TTL.
func (q *waitQueues) releaseOrphan(w *waiter, res fsm.Result) {
	n := q.ls.n
	rel := &fsm.Release{Key: res.Key, Holder: w.cmd.Holder, Token: res.Token}
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	if _, err := n.apply(ctx, q.ls.stamp(), rel); err != nil {
		n.log.Debug("release of abandoned grant failed", "key", res.Key, "err", err)
	}
}

// arm sets key's timer to pump after wait (leader clock). q.mu is held.
func (q *waitQueues) arm(key string, kq *keyQueue, wait time.Duration) {
	d := q.ls.realDuration(wait)
	if kq.timer == nil {
		kq.timer = time.AfterFunc(d, func() { q.pump(key) })
		return
	}
	kq.timer.Reset(d)
}

// dropGone removes abandoned waiters from the head. q.mu is held.
func (q *waitQueues) dropGone(kq *keyQueue) {
	for len(kq.waiters) > 0 && kq.waiters[0].state.Load() == abandoned {
		q.popHead(kq)
	}
	// Abandoned waiters further back are skipped when they reach the head.
}

func (q *waitQueues) popHead(kq *keyQueue) {
	kq.waiters[0] = nil
	kq.waiters = kq.waiters[1:]
	q.n--
}

func (q *waitQueues) drop(key string, kq *keyQueue) {
	if kq.timer != nil {
		kq.timer.Stop()
	}
	delete(q.keys, key)
}

// failAll answers every waiter with err and refuses new ones; called when
// leadership ends. Waiters are told the outcome is retryable (not leader):
// a proposal in flight for a head is settled by settle, which releases a
// grant nobody can hear of any more.
func (q *waitQueues) failAll(err error) {
	q.mu.Lock()
	keys := q.keys
	q.keys = map[string]*keyQueue{}
	q.closed = err
	q.n = 0
	q.mu.Unlock()
	for key, kq := range keys {
		if kq.timer != nil {
			kq.timer.Stop()
		}
		for i, w := range kq.waiters {
			if i == 0 && kq.busy {
				// Its proposal may still commit: the caller must not
				// assume it failed.
				w.answer(waitResult{err: errors.Join(ErrUnknownOutcome, err)})
				continue
			}
			w.answer(waitResult{err: err})
		}
		_ = key
	}
}
