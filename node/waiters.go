package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// waiter is one acquirer queued at the leader. Its fields after done are
// guarded by waitQueues.mu.
type waiter struct {
	cmd     *fsm.Acquire
	arrival time.Duration   // leader clock at receipt of this request
	done    chan waitResult // buffered 1; receives exactly one result

	// gone: the caller stopped waiting. A waiter that is gone is never
	// proposed again and never answered.
	gone bool
}

type waitResult struct {
	res    fsm.Result
	waited time.Duration // W: grant stamp minus arrival, leader clock
	err    error
}

// keyQueue is the FIFO of one key's waiters.
type keyQueue struct {
	waiters []*waiter
	// inflight is the head's proposal while one is in flight (the head is
	// then waiters[0]); nil otherwise.
	inflight *proposal
	timer    *time.Timer
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
//
// Invariant waiter-outcome: a head's proposal is settled by the queue when
// Raft resolves it (settle), never by whoever proposed it: a releaser that
// gives up does not cut the head's grant short. A waiter whose caller
// leaves while its grant is in flight answers ErrUnknownOutcome (the grant
// may commit), and the node that took the request withdraws it
// (Node.withdraw, an fsm Cancel), so a grant nobody hears of never blocks
// the key, on this leader or the next. Guarded by
// TestAbandonedWaiterGrantIsWithdrawn.
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

// wait queues w and blocks until it is granted, refused for good, or ctx
// ends. If ctx ends while w's grant is in flight, the answer is
// ErrUnknownOutcome; before that, the caller certainly was not granted.
func (q *waitQueues) wait(ctx context.Context, w *waiter) waitResult {
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
	case <-ctx.Done():
	}
	q.mu.Lock()
	select {
	case r := <-w.done: // answered just now
		q.mu.Unlock()
		return r
	default:
	}
	w.gone = true
	kq = q.keys[w.cmd.Key]
	inflight := kq != nil && kq.inflight != nil && len(kq.waiters) > 0 && kq.waiters[0] == w
	q.mu.Unlock()
	if inflight {
		return waitResult{err: fmt.Errorf("%w: gave up waiting (%v) while the grant was being committed", ErrUnknownOutcome, ctx.Err())}
	}
	q.pump(w.cmd.Key) // drop it from the queue
	return waitResult{err: fmt.Errorf("acquire %q: gave up waiting, not granted: %w", w.cmd.Key, ctx.Err())}
}

// pump proposes the head waiter of key if the key may be free now, or arms
// a timer for when it may be.
func (q *waitQueues) pump(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	kq := q.keys[key]
	if kq == nil || kq.inflight != nil || q.closed != nil {
		return
	}
	q.dropGone(kq)
	if len(kq.waiters) == 0 {
		q.drop(key, kq)
		return
	}
	head := kq.waiters[0]
	if l, ok := q.ls.n.fsm.Get(key); ok && !(l.State == fsm.StateHeld && l.Holder == head.cmd.Holder) {
		if wait := l.FreeAt() - q.ls.now(); wait > 0 {
			q.arm(key, kq, wait)
			return
		}
	}
	q.proposeLocked(key, kq, nil)
}

// claimHead proposes key's head waiter in one entry after prefix (the
// holder's release), so the handoff costs one Raft round trip. It returns
// the proposal, or nil if there is no head to propose (then the caller
// proposes prefix alone).
func (q *waitQueues) claimHead(key string, prefix fsm.Command) *proposal {
	q.mu.Lock()
	defer q.mu.Unlock()
	kq := q.keys[key]
	if kq == nil || kq.inflight != nil || q.closed != nil {
		return nil
	}
	q.dropGone(kq)
	if len(kq.waiters) == 0 {
		q.drop(key, kq)
		return nil
	}
	return q.proposeLocked(key, kq, prefix)
}

// proposeLocked proposes kq's head (after prefix, if any) and settles the
// outcome when Raft resolves it. q.mu is held.
func (q *waitQueues) proposeLocked(key string, kq *keyQueue, prefix fsm.Command) *proposal {
	head := kq.waiters[0]
	var cmd fsm.Command = head.cmd
	if prefix != nil {
		cmd = &fsm.Batch{Cmds: []fsm.Command{prefix, head.cmd}}
	}
	s := q.ls.stamp()
	p := q.ls.n.propose(s, cmd, 5*time.Second)
	kq.inflight = p
	go func() {
		<-p.done // propose resolves every proposal (see Node.wait)
		var res fsm.Result
		if p.err == nil {
			res = p.resp.Results[len(p.resp.Results)-1]
		}
		q.settle(key, head, s, res, p.err)
	}()
	return p
}

// settle records the outcome of the proposal for head: it answers head
// (unless head's caller left: then the node that took the request
// withdraws it), or re-arms the key if it turned out held.
func (q *waitQueues) settle(key string, head *waiter, s fsm.Stamp, res fsm.Result, err error) {
	q.mu.Lock()
	kq := q.keys[key]
	if kq != nil && len(kq.waiters) > 0 && kq.waiters[0] == head {
		kq.inflight = nil
		if err == nil && res.Code == fsm.Held && !head.gone {
			q.arm(key, kq, max(res.Wait, time.Millisecond))
			q.mu.Unlock()
			return
		}
		q.popHead(kq)
	}
	// else failAll has answered everyone already.
	if !head.gone {
		r := waitResult{res: res, waited: s.Now - head.arrival, err: err}
		if err == nil && res.Code != fsm.Granted && res.Code != fsm.Held {
			r.err = resultErr(res)
		}
		select {
		case head.done <- r:
		default: // answered by failAll
		}
	}
	q.mu.Unlock()
	q.pump(key)
}

// resultErr turns a refusal other than Held into an error.
func resultErr(res fsm.Result) error {
	if res.Code == fsm.Stale {
		return fmt.Errorf("acquire %q: %w: %s", res.Key, ErrStaleRequest, res.Reason)
	}
	return fmt.Errorf("acquire %q: %w: %s %s", res.Key, ErrInvalid, res.Code, res.Reason)
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

// dropGone removes waiters whose callers left from the head. q.mu is held.
func (q *waitQueues) dropGone(kq *keyQueue) {
	for len(kq.waiters) > 0 && kq.waiters[0].gone {
		q.popHead(kq)
	}
	// Gone waiters further back are skipped when they reach the head.
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
// leadership ends. Waiters are told the outcome is retryable (not leader),
// except a head whose proposal is in flight: its grant may still commit
// (under the next leader too), so it gets ErrUnknownOutcome and the node
// that took the request withdraws it.
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
		for i, w := range kq.waiters {
			if w.gone {
				continue
			}
			r := waitResult{err: err}
			if i == 0 && kq.inflight != nil {
				r.err = errors.Join(ErrUnknownOutcome, err)
			}
			select {
			case w.done <- r:
			default:
			}
		}
	}
}
