package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/transport/pb"
)

// Elector runs leader election on one key, the recipe of client-go's
// leaderelection and etcd's Election built on a lease: the leader is the
// holder of the key, its value (an address, say) is published with the
// lease, and anyone can Observe it.
type Elector struct {
	c     *Client
	key   string
	value []byte
	opts  []AcquireOption
}

// Elector returns an Elector that campaigns for key, publishing value
// while it leads.
func (c *Client) Elector(key string, value []byte, opts ...AcquireOption) *Elector {
	// Clipped: appending to the caller's slice could write into spare
	// capacity that another Elector built from it shares.
	return &Elector{c: c, key: key, value: value, opts: append(slices.Clip(opts), Value(value))}
}

// Campaign waits until this client is elected (queued FIFO with the other
// candidates) and returns the leadership lease. ctx bounds the wait. An
// election is exclusive: Shared and Semaphore are ErrInvalid.
func (e *Elector) Campaign(ctx context.Context) (*Lease, error) {
	var ao acquireOptions
	for _, f := range e.opts {
		f(&ao)
	}
	if ao.shared || ao.slotsSet {
		return nil, fmt.Errorf("campaign %q: %w: an election has one leader; Shared and Semaphore do not apply", e.key, ErrInvalid)
	}
	return e.c.Acquire(ctx, e.key, e.opts...)
}

// Run campaigns until ctx ends. Each time it is elected it calls lead with
// a context that is cancelled as soon as leadership is lost or ctx ends;
// when lead returns, leadership is released and Run campaigns again. lead
// must stop acting as leader when its context is done. Run returns ctx's
// error, or a campaign's error that retrying cannot cure (ErrInvalid, or
// ErrClosed once the Client is closed).
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context, l *Lease)) error {
	bo := e.c.backoff()
	for {
		l, err := e.Campaign(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, ErrInvalid) || errors.Is(err, ErrClosed) {
				return err
			}
			e.c.log.Warn("campaign failed; retrying", "key", e.key, "err", err)
			if !ctxtime.Sleep(ctx, bo.next()) {
				return ctx.Err()
			}
			continue
		}
		bo.reset(e.c.opts.backoffMin)
		lctx, cancel := context.WithCancelCause(ctx)
		stop := context.AfterFunc(l.Context(), func() { cancel(l.Err()) })
		lead(lctx, l)
		stop()
		cancel(nil)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*e.c.opts.backoffMax)
		if err := l.Release(rctx); err != nil {
			e.c.log.Warn("releasing leadership failed; it expires after its TTL", "key", e.key, "err", err)
		}
		rcancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Leader describes who leads a key.
type Leader struct {
	Holder string
	Value  []byte
	Token  uint64
}

// Observe reports the leader of key: the current one first (a zero Leader
// if none), then every change. The channel closes when ctx ends or the
// Client closes; if the underlying watch breaks, Observe re-reads and
// resumes. While no watch can be had (every node it tries serves its
// --max-watches, or its share for this client's address; or none
// answers), it reads the key instead, polling each back-off (up to
// WithBackoff's max, 1 s by default) until a watch is had again.
func (c *Client) Observe(ctx context.Context, key string) <-chan Leader {
	out := make(chan Leader, 1)
	go func() {
		defer close(out)
		var last *Leader
		emit := func(l Leader) bool {
			if last != nil && last.Token == l.Token && last.Holder == l.Holder {
				return true
			}
			last = &l
			select {
			case out <- l:
				return true
			case <-ctx.Done():
				return false
			}
		}
		// read emits the key's leader as a linearizable read finds it,
		// and returns the index the read reflects (0 if it failed); false
		// once ctx has ended.
		read := func() (uint64, bool) {
			resp, err := retryRead(ctx, c, func(ctx context.Context) (*pb.GetResponse, error) {
				return c.b.Get(ctx, &pb.GetRequest{Key: key})
			})
			if err != nil {
				return 0, ctx.Err() == nil
			}
			l := Leader{}
			if resp.GetFound() {
				if info := infoFromPB(resp.GetLease()); !info.LockDelay {
					l = Leader{Holder: info.Holder, Value: info.Value, Token: info.Token}
				}
			}
			return resp.GetHeader().GetAppliedIndex(), emit(l)
		}
		bo := c.backoff()
		for ctx.Err() == nil {
			events, err := c.Watch(ctx, key)
			if err != nil {
				if errors.Is(err, ErrClosed) {
					return
				}
				// Refused or unreachable: the current leader first all
				// the same, then polled (a watch refused for its limits
				// left Observe silent: adversarial review s39).
				if _, ok := read(); !ok || !ctxtime.Sleep(ctx, bo.next()) {
					return
				}
				continue
			}
			// The read comes after the watch began, so the watch's first
			// events may be older than it: skip those the read reflects.
			readAt, ok := read()
			if !ok {
				return
			}
			for ev := range events {
				if ev.Key != key || ev.Index <= readAt {
					continue
				}
				var l Leader
				switch ev.Type {
				case Granted:
					l = Leader{Holder: ev.Holder, Value: ev.Value, Token: ev.Token}
				case Released, Expired, Freed:
				default:
					continue
				}
				if !emit(l) {
					return
				}
			}
			if errors.Is(ctx.Err(), context.Canceled) {
				return
			}
		}
	}()
	return out
}
