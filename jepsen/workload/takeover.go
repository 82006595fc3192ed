package workload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/lease"
)

// A takeover chain runs on one key of its own: a holder acquires it and
// holds it for a while, a second client starts waiting for it, and then
// the holder is killed — its client stops extending and never releases
// (its gate is cut, like a crashed process) — and the waiter must be
// granted the key once the lease has expired: within TTL + lock-delay +
// one election of the killed holder's last successful extend (the
// takeover-bound checker). The waiter then holds, a new waiter queues,
// and the chain goes on. Every holder is a new client (holder tkI.N).
type chain struct {
	w   *Workload
	idx int
	key string
	rnd *rand.Rand
	n   int

	abandoned []*lease.Client
}

type chainHolder struct {
	name  string
	c     *lease.Client
	gate  *Gate
	lease *lease.Lease
	delay time.Duration
}

func (ch *chain) newClient() (*chainHolder, error) {
	ch.n++
	h := &chainHolder{name: fmt.Sprintf("tk%d.%d", ch.idx, ch.n), gate: &Gate{}}
	be, err := NewGatedBackend(ch.w.cfg.Addrs, h.gate, ch.w.cfg.TLS)
	if err != nil {
		return nil, err
	}
	h.c, err = lease.New(be, lease.WithHolder(h.name), lease.WithTTL(ch.w.cfg.TTL), lease.WithDriftBound(ch.w.cfg.DriftBound),
		lease.WithLogger(ch.w.cfg.Log.With("holder", h.name)))
	return h, err
}

// newHolder makes the next holder's client and draws whether its grant
// asks for a lock-delay.
func (ch *chain) newHolder() (*chainHolder, error) {
	h, err := ch.newClient()
	if err == nil && ch.w.cfg.LockDelay > 0 && ch.rnd.IntN(2) == 0 {
		h.delay = ch.w.cfg.LockDelay
	}
	return h, err
}

// acquire waits for the key and records the acquire; it returns whether
// h got it. It may run beside the chain's loop: it draws nothing from
// ch.rnd.
func (ch *chain) acquire(ctx context.Context, h *chainHolder) bool {
	inv := history.Record{Client: h.name, Op: history.Acquire, Key: ch.key, Mode: "wait", TTL: int64(ch.w.cfg.TTL)}
	var opts []lease.AcquireOption
	if h.delay > 0 {
		opts = append(opts, lease.LockDelay(h.delay))
		inv.LockDelay = int64(h.delay)
	}
	id := ch.w.rec.Invoke(inv)
	// Long enough for any takeover: the checker, not this deadline,
	// judges how long it took.
	cctx, cancel := context.WithTimeout(ctx, 10*ch.w.cfg.TTL+30*time.Second)
	l, err := h.c.Acquire(cctx, ch.key, opts...)
	cancel()
	wk := &worker{w: ch.w, name: h.name}
	if wk.acquired(id, l, err) == nil {
		return false
	}
	h.lease = l
	return true
}

func (ch *chain) close(h *chainHolder) {
	if h == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if h.lease != nil {
		wk := &worker{w: ch.w, name: h.name}
		wk.release(h.lease)
	}
	h.c.Close(cctx)
}

// run drives the chain until ctx ends.
func (ch *chain) run(ctx context.Context) error {
	var cur *chainHolder
	defer func() {
		ch.close(cur)
		for _, c := range ch.abandoned {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c.Close(cctx)
			cancel()
		}
	}()
	ttl := ch.w.cfg.TTL
	for ctx.Err() == nil {
		if cur == nil {
			h, err := ch.newHolder()
			if err != nil {
				return err
			}
			if !ch.acquire(ctx, h) {
				ch.close(h)
				ctxtime.Sleep(ctx, ttl/4)
				continue
			}
			cur = h
		}
		next, err := ch.newHolder()
		if err != nil {
			return err
		}
		got := make(chan bool, 1)
		go func() { got <- ch.acquire(ctx, next) }()
		// Hold (extending) for a while, then die.
		ctxtime.Sleep(ctx, ttl/2+time.Duration(ch.rnd.Int64N(int64(ttl))))
		if ctx.Err() != nil || !cur.lease.IsHealthy() {
			// Not killed (the campaign ended, or the lease was lost on
			// its own): a normal end, not a takeover.
			ch.close(cur)
			cur = nil
		} else {
			vu := cur.lease.ValidUntil()
			cur.gate.Cut()
			ch.w.rec.Event(history.Record{Client: cur.name, Op: history.Crash, Key: ch.key, Token: cur.lease.Token(),
				ValidUntil: ch.w.clock.At(vu), TTL: int64(ttl), LockDelay: int64(cur.delay)})
			ch.abandoned = append(ch.abandoned, cur.c)
			cur = nil
		}
		if <-got {
			cur = next
		} else {
			ch.close(next)
		}
	}
	return nil
}
