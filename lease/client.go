package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/transport/pb"
)

// Backend is what a Client needs from a cluster. A *node.Node satisfies it
// (embedded: the calls go to the local node, which forwards to the leader);
// Dial builds one that talks to a cluster over the network.
type Backend interface {
	Acquire(context.Context, *pb.AcquireRequest) (*pb.AcquireResponse, error)
	Extend(context.Context, *pb.ExtendRequest) (*pb.ExtendResponse, error)
	Release(context.Context, *pb.ReleaseRequest) (*pb.ReleaseResponse, error)
	Get(context.Context, *pb.GetRequest) (*pb.GetResponse, error)
	List(context.Context, *pb.ListRequest) (*pb.ListResponse, error)
	CheckToken(context.Context, *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error)
	Watch(context.Context, *pb.WatchRequest) (<-chan *pb.WatchEvent, error)
}

// Client acquires and keeps leases for one holder. One background loop
// extends all of its leases in one batched request per tick. A Client is
// safe for concurrent use; create one per process (or per logical holder)
// and Close it when done.
type Client struct {
	b      Backend
	opts   options
	log    *slog.Logger
	closer func() // closes what Dial opened

	reqID atomic.Uint64 // request ids: strictly increasing per holder

	mu     sync.Mutex
	held   map[string]*held         // key → lease being kept alive
	guards map[string]chan struct{} // key → local guard (capacity 1)
	closed bool

	kick     chan struct{} // wakes the loop when leases are added
	stop     chan struct{}
	loopWG   sync.WaitGroup
	bgWG     sync.WaitGroup // best-effort releases
	bgCtx    context.Context
	bgCancel context.CancelFunc // Close gives up on best-effort releases
}

// New returns a Client over b: an embedded *node.Node or any Backend.
func New(b Backend, opts ...Option) (*Client, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	c := &Client{
		b:      b,
		opts:   o,
		log:    o.logger.With("component", "lease.client", "holder", o.holder),
		held:   map[string]*held{},
		guards: map[string]chan struct{}{},
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
	}
	c.bgCtx, c.bgCancel = context.WithCancel(context.Background())
	// Request ids start from the clock so a restarted process reusing a
	// holder name (WithHolder) still sends ids above its old ones.
	c.reqID.Store(uint64(time.Now().UnixNano()))
	c.loopWG.Add(1)
	go c.run()
	return c, nil
}

// Holder returns the holder name this client's leases carry.
func (c *Client) Holder() string { return c.opts.holder }

// TryAcquire acquires key if it is free and returns the Lease; if another
// holder has it, it returns nil, nil at once. If this Client already holds
// key it also returns nil, nil: one Client never competes with itself.
func (c *Client) TryAcquire(ctx context.Context, key string, opts ...AcquireOption) (*Lease, error) {
	l, err := c.acquire(ctx, key, false, opts)
	if errors.Is(err, ErrHeld) {
		return nil, nil
	}
	return l, err
}

// Acquire waits until key is granted, queued FIFO at the leader (no
// polling: the leader hands the key over the moment it is released or
// expires). ctx bounds the wait. If this Client holds key already, Acquire
// first waits for that lease to be released.
func (c *Client) Acquire(ctx context.Context, key string, opts ...AcquireOption) (*Lease, error) {
	return c.acquire(ctx, key, true, opts)
}

// AcquireTimeout is Acquire bounded by maxWait. On timeout the error
// matches ErrTimeout (and ErrHeld, as a *HeldError naming the holder, when
// the key was seen held).
func (c *Client) AcquireTimeout(ctx context.Context, key string, maxWait time.Duration, opts ...AcquireOption) (*Lease, error) {
	wctx, cancel := context.WithTimeoutCause(ctx, maxWait, ErrTimeout)
	defer cancel()
	l, err := c.acquire(wctx, key, true, opts)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(wctx), ErrTimeout) {
		var he *HeldError
		if errors.As(err, &he) {
			he.Err = ErrTimeout
			return nil, he
		}
		if !errors.Is(err, ErrTimeout) {
			err = fmt.Errorf("%w: %w", ErrTimeout, err)
		}
	}
	return l, err
}

func (c *Client) acquire(ctx context.Context, key string, wait bool, opts []AcquireOption) (*Lease, error) {
	ao := acquireOptions{ttl: c.opts.ttl}
	for _, f := range opts {
		f(&ao)
	}
	if key == "" {
		return nil, fmt.Errorf("acquire: %w: empty key", ErrInvalid)
	}
	guard, err := c.lockGuard(ctx, key, wait)
	if err != nil {
		return nil, err
	}
	l, err := c.acquireLocked(ctx, key, wait, ao)
	if l == nil {
		<-guard
	}
	return l, err
}

// lockGuard takes the local guard of key: waits for it when wait is set,
// else fails with ErrHeld if this Client holds key.
func (c *Client) lockGuard(ctx context.Context, key string, wait bool) (chan struct{}, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	g := c.guards[key]
	if g == nil {
		g = make(chan struct{}, 1)
		c.guards[key] = g
	}
	c.mu.Unlock()
	if !wait {
		select {
		case g <- struct{}{}:
			return g, nil
		default:
			return nil, &HeldError{Key: key, Holder: c.opts.holder}
		}
	}
	select {
	case g <- struct{}{}:
		return g, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("acquire %q: waiting for this client's own lease: %w", key, context.Cause(ctx))
	}
}

// acquireLocked runs the acquire protocol with one request id. Every
// attempt carries the same id, so a retry after a lost reply is recognised
// by the cluster (same grant, same token) instead of being refused by our
// own earlier grant; validity is measured from the send time of the
// attempt that succeeded.
func (c *Client) acquireLocked(ctx context.Context, key string, wait bool, ao acquireOptions) (*Lease, error) {
	req := &pb.AcquireRequest{
		Key: key, Holder: c.opts.holder, RequestId: c.reqID.Add(1),
		Ttl: durationpb.New(ao.ttl), LockDelay: durationpb.New(ao.lockDelay), Value: ao.value, Wait: wait,
	}
	bo := c.backoff()
	uncertain := false // an attempt may have been granted without us hearing
	var lastErr error
	for ctx.Err() == nil {
		sent := time.Now()
		resp, err := c.b.Acquire(ctx, req)
		if err == nil {
			if resp.GetGranted() {
				return c.newLease(key, resp, sent, ao), nil
			}
			return nil, &HeldError{Key: key, Holder: resp.GetHolder(), Wait: resp.GetWait().AsDuration()}
		}
		lastErr = err
		switch reasonOf(err) {
		case pb.Reason_REASON_INVALID, pb.Reason_REASON_STALE_REQUEST:
			return nil, classify("acquire", key, err)
		case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER, pb.Reason_REASON_CLOSED:
		default:
			// Unknown outcome, or a transport error after sending: retry
			// with the same id, which resolves it either way.
			if ctx.Err() == nil || !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				uncertain = true
			}
		}
		if ctx.Err() != nil {
			break
		}
		c.log.Debug("acquire attempt failed; retrying", "key", key, "err", err)
		if !ctxtime.Sleep(ctx, bo.next()) {
			break
		}
	}
	cause := context.Cause(ctx)
	if wait || uncertain {
		// The wait or an unanswered attempt may have been granted just as
		// we gave up. Ask once more with the same id (without waiting):
		// granted means it was ours; release it since the caller left.
		held, err := c.resolveAbandoned(req)
		if err != nil {
			return nil, fmt.Errorf("acquire %q: %w: %w (%v)", key, cause, ErrUnknownOutcome, err)
		}
		if held != nil {
			held.Err = cause
			return nil, held
		}
		return nil, fmt.Errorf("acquire %q: %w", key, cause)
	}
	if lastErr != nil {
		return nil, fmt.Errorf("acquire %q: %w: %w", key, cause, classify("acquire", key, lastErr))
	}
	return nil, fmt.Errorf("acquire %q: %w", key, cause)
}

// resolveAbandoned settles an acquire whose caller gave up: if the request
// id turns out granted, the grant is released. It returns who holds the
// key if someone else does.
func (c *Client) resolveAbandoned(req *pb.AcquireRequest) (*HeldError, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := &pb.AcquireRequest{Key: req.Key, Holder: req.Holder, RequestId: req.RequestId, Ttl: req.Ttl, LockDelay: req.LockDelay, Value: req.Value}
	bo := c.backoff()
	for {
		resp, err := c.b.Acquire(ctx, r)
		if err == nil {
			if !resp.GetGranted() {
				return &HeldError{Key: req.Key, Holder: resp.GetHolder(), Wait: resp.GetWait().AsDuration()}, nil
			}
			_, err = c.b.Release(ctx, &pb.ReleaseRequest{Key: req.Key, Holder: req.Holder, Token: resp.GetToken()})
			return nil, err
		}
		if reasonOf(err) == pb.Reason_REASON_STALE_REQUEST || reasonOf(err) == pb.Reason_REASON_INVALID {
			return nil, nil // a newer holding of ours exists; this id was never current
		}
		if !ctxtime.Sleep(ctx, bo.next()) {
			return nil, err
		}
	}
}

// newLease starts keeping a granted lease alive.
//
// Invariant client-validity (DESIGN.md rule 6): valid until
// sent + (W + ttl) * (1 - drift), where sent is the send time of the very
// attempt that was granted and W the time the leader reports the request
// waited in its queue. The leader's expiry is at least arrival + W + ttl on
// its clock, and arrival is after sent, so with clock rates within
// drift/2 the client stops believing before the cluster could grant the key
// to anyone else.
func (c *Client) newLease(key string, resp *pb.AcquireResponse, sent time.Time, ao acquireOptions) *Lease {
	ttl := ao.ttl
	if t := resp.GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	h := &held{
		key:      key,
		token:    resp.GetToken(),
		ttl:      ttl,
		value:    ao.value,
		done:     make(chan struct{}),
		expiring: make(chan struct{}, 1),
		lastSent: sent,
	}
	h.ctx, h.cancel = context.WithCancelCause(context.Background())
	h.validUntil = c.validity(sent, resp.GetWaited().AsDuration()+ttl)
	c.mu.Lock()
	c.held[key] = h
	c.mu.Unlock()
	c.wake()
	l := &Lease{c: c, h: h}
	// A Lease dropped without Release is released in the background. The
	// loop keeps only h, never l, so l can become unreachable.
	runtime.AddCleanup(l, func(h *held) { c.end(h, ErrReleased, true) }, h)
	return l
}

func (c *Client) validity(sent time.Time, d time.Duration) time.Time {
	return sent.Add(time.Duration(float64(d) * (1 - c.opts.drift)))
}

func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// end stops keeping h: Done closes, the context is cancelled with err, the
// local guard is unlocked, and (if release) the record is deleted in the
// background. Unlocking the guard before deleting the record lets a
// waiter of this same Client go first without starving other processes
// (dynamodb-lease's fairness rule). Returns false if h had ended already.
func (c *Client) end(h *held, err error, release bool) bool {
	h.mu.Lock()
	if h.err != nil {
		h.mu.Unlock()
		return false
	}
	h.err = err
	h.mu.Unlock()
	close(h.done)
	h.cancel(err)
	c.mu.Lock()
	if c.held[h.key] == h {
		delete(c.held, h.key)
	}
	g := c.guards[h.key]
	c.mu.Unlock()
	if g != nil {
		<-g
	}
	if release {
		c.bgWG.Add(1)
		go func() {
			defer c.bgWG.Done()
			ctx, cancel := context.WithTimeout(c.bgCtx, 5*time.Second)
			defer cancel()
			c.releaseRecord(ctx, h)
		}()
	}
	return true
}

// releaseRecord deletes h's record in the cluster, retrying while no
// leader is reachable.
func (c *Client) releaseRecord(ctx context.Context, h *held) error {
	bo := c.backoff()
	for {
		_, err := c.b.Release(ctx, &pb.ReleaseRequest{Key: h.key, Holder: c.opts.holder, Token: h.token})
		if err == nil {
			return nil
		}
		switch reasonOf(err) {
		case pb.Reason_REASON_INVALID:
			return classify("release", h.key, err)
		}
		if !ctxtime.Sleep(ctx, bo.next()) {
			return classify("release", h.key, err)
		}
	}
}

// Get returns the current record of key, or nil if nobody holds it. The
// read is linearizable (served by the leader).
func (c *Client) Get(ctx context.Context, key string) (*Info, error) {
	resp, err := retryRead(ctx, c, func() (*pb.GetResponse, error) { return c.b.Get(ctx, &pb.GetRequest{Key: key}) })
	if err != nil {
		return nil, classify("get", key, err)
	}
	if !resp.GetFound() {
		return nil, nil
	}
	info := infoFromPB(resp.GetLease())
	return &info, nil
}

// List returns every record whose key starts with prefix, in key order,
// reading page by page from the leader.
func (c *Client) List(ctx context.Context, prefix string) ([]Info, error) {
	var out []Info
	after := ""
	for {
		resp, err := retryRead(ctx, c, func() (*pb.ListResponse, error) {
			return c.b.List(ctx, &pb.ListRequest{Prefix: prefix, After: after, Limit: 1000})
		})
		if err != nil {
			return nil, classify("list", prefix, err)
		}
		for _, l := range resp.GetLeases() {
			out = append(out, infoFromPB(l))
		}
		if resp.GetNext() == "" {
			return out, nil
		}
		after = resp.GetNext()
	}
}

// CheckToken asks the cluster, linearizably, whether token is key's
// current fencing token and its lease unexpired: what a resource that can
// reach the cluster asks before accepting a write (Chubby's sequencer).
func (c *Client) CheckToken(ctx context.Context, key string, token uint64) (bool, error) {
	resp, err := retryRead(ctx, c, func() (*pb.CheckTokenResponse, error) {
		return c.b.CheckToken(ctx, &pb.CheckTokenRequest{Key: key, Token: token})
	})
	if err != nil {
		return false, classify("check token", key, err)
	}
	return resp.GetCurrent(), nil
}

// retryRead retries a read while no leader is reachable.
func retryRead[T any](ctx context.Context, c *Client, f func() (T, error)) (T, error) {
	bo := c.backoff()
	for {
		v, err := f()
		if err == nil {
			return v, nil
		}
		switch reasonOf(err) {
		case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER, pb.Reason_REASON_CLOSED:
			if ctxtime.Sleep(ctx, bo.next()) {
				continue
			}
		}
		return v, err
	}
}

// Close releases every lease of this Client (as Release does) and stops
// its background loop. ctx bounds the releases.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	hs := make([]*held, 0, len(c.held))
	for _, h := range c.held {
		hs = append(hs, h)
	}
	c.mu.Unlock()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32) // releases in flight
	)
	for _, h := range hs {
		if !c.end(h, ErrReleased, false) {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := c.releaseRecord(ctx, h); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(c.stop)
	c.loopWG.Wait()
	c.bgCancel()
	c.bgWG.Wait()
	if c.closer != nil {
		c.closer()
	}
	return errors.Join(errs...)
}

// backoff is an exponential back-off with full jitter.
type backoff struct {
	cur, max time.Duration
}

func (c *Client) backoff() *backoff {
	return &backoff{cur: c.opts.backoffMin, max: c.opts.backoffMax}
}

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset(min time.Duration) { b.cur = min }
