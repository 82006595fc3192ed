package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
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
	Abandon(context.Context, *pb.AbandonRequest) (*pb.AbandonResponse, error)
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
	retry  RetryPolicy
	log    *slog.Logger
	closer func() // closes what Dial opened

	reqID atomic.Uint64 // request ids: strictly increasing per holder
	// extendItems is the most leases one Extend carries: extendChunkItems,
	// halved each time the cluster refuses a request as too large (its
	// --max-extend-items or --max-request-bytes are set lower).
	extendItems atomic.Int64
	// allSkip and allMisses pace Extend by sum (see Client.extendAll):
	// the number of keepalive rounds still to send lease by lease, and
	// how many sums in a row were answered no. Used only by the one
	// extend in flight at a time.
	allSkip, allMisses int
	// lastRTT is how long the latest answered extend took: a sum is sent
	// only when a second round trip, naming the leases after a no, still
	// fits in the shortest validity (see Client.extendAll). rtts holds
	// the latest answered extends' round trips, rttAt the next one's
	// place (see Client.baseRTT).
	lastRTT time.Duration
	rtts    [8]time.Duration
	rttAt   int

	mu     sync.Mutex
	held   map[*held]struct{} // leases being kept alive
	guards map[string]*guard  // key → local guard, while anyone holds or waits for it
	// unreleased: leases whose Release failed; releaseLater retries them,
	// and Close releases them under its ctx before it stops the retries.
	unreleased map[*held]struct{}
	// unsettled: Abandons of acquires whose callers were told
	// ErrUnknownOutcome because settling failed; abandonLater retries
	// them, and Close tries them once more under its ctx.
	unsettled map[*pb.AbandonRequest]struct{}
	closed    bool

	kick   chan struct{} // wakes the loop when leases are added
	stop   chan struct{}
	loopWG sync.WaitGroup
	// closing ends when Close begins: it cancels every acquire in flight,
	// and Close waits for them (acquires) before it stops the transport.
	closing    context.Context
	closeBegun context.CancelFunc
	acquires   sync.WaitGroup
	closeDone  chan struct{} // closed when Close has finished; closeErr is its result
	closeErr   error
	bgWG       sync.WaitGroup // best-effort releases (background)
	bgDone     bool           // under mu: Close is waiting for bgWG; no more may start
	bgCtx      context.Context
	bgCancel   context.CancelFunc // Close gives up on best-effort releases
}

// background runs f on a goroutine Close waits for, unless Close has
// begun waiting for them already (then f does not run, and it returns
// false). Adding to bgWG while Close waits on it would be a misuse of the
// WaitGroup: a failed Release, or a dropped Lease's cleanup, can race
// Close.
func (c *Client) background(f func()) bool {
	c.mu.Lock()
	if c.bgDone {
		c.mu.Unlock()
		return false
	}
	c.bgWG.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.bgWG.Done()
		f()
	}()
	return true
}

// New returns a Client over b: an embedded *node.Node or any Backend.
func New(b Backend, opts ...Option) (*Client, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	c := &Client{
		b:          b,
		opts:       o,
		retry:      RetryPolicy{Timeout: o.retryTimeout, BackoffMin: o.backoffMin, BackoffMax: o.backoffMax},
		log:        o.logger.With("component", "lease.client", "holder", o.holder),
		held:       map[*held]struct{}{},
		guards:     map[string]*guard{},
		unreleased: map[*held]struct{}{},
		unsettled:  map[*pb.AbandonRequest]struct{}{},
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
	}
	c.extendItems.Store(extendChunkItems)
	c.bgCtx, c.bgCancel = context.WithCancel(context.Background())
	c.closing, c.closeBegun = context.WithCancel(context.Background())
	c.closeDone = make(chan struct{})
	// The holder is unique to this Client (its incarnation), so request ids
	// simply count from 1: no other process ever sends ids for it.
	c.loopWG.Add(1)
	go c.run()
	return c, nil
}

// Holder returns the holder this client's leases carry in the cluster:
// the name (WithHolder, default host/pid), "#", and this Client's
// incarnation, a random 64-bit value in hex made by New. Two Clients
// never share a holder, even with the same name in two processes, so a
// restarted or duplicated process can never take over a live lease of
// another. Pass the whole string to tools that release by holder.
func (c *Client) Holder() string { return c.opts.holder }

// HolderName returns the name part of Holder (WithHolder's argument, or
// host/pid).
func (c *Client) HolderName() string { return c.opts.name }

// TryAcquire acquires key if it is free and returns the Lease; if another
// holder has it, it returns nil, nil at once. If this Client already holds
// key it also returns nil, nil: one Client never competes with itself.
// With Shared or Semaphore the key is free while it can take one more
// holder of that shape. A grant whose answer arrives after the validity
// it gives (an overloaded cluster or network) is released and not handed
// out: that is ErrLeaseLost, with nothing held; try again.
func (c *Client) TryAcquire(ctx context.Context, key string, opts ...AcquireOption) (*Lease, error) {
	l, err := c.acquire(ctx, nil, key, false, opts)
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
	return c.acquire(ctx, nil, key, true, opts)
}

// AcquireTimeout is Acquire bounded by maxWait: it waits for the key at
// the leader at most maxWait, and the leader then answers who holds it;
// a grant already being committed then is still answered. The call
// returns within maxWait and answerAllowance (1 s): a free key is granted
// however short maxWait is and however slow the commit (within that), and
// a cluster without a quorum ends it then. On timeout the error matches
// ErrTimeout (and ErrHeld, as a *HeldError naming the holder, when the
// key was seen held). A maxWait of 0 or less makes one try, as
// TryAcquire. (A node older than the request's max_wait queues it until
// maxWait and answerAllowance have passed.)
func (c *Client) AcquireTimeout(ctx context.Context, key string, maxWait time.Duration, opts ...AcquireOption) (*Lease, error) {
	return c.acquireTimeout(ctx, nil, key, maxWait, opts)
}

// TryAcquireSet acquires every key of items at once, each in its shape,
// if all of them are free, and returns one Lease for the set; if any is
// held (or this Client holds any), it returns nil, nil at once and holds
// none of them. The cluster grants the set in one Raft entry, all or
// none: one fencing token for every key, one expiry, one extend and one
// release for all. TTL, Value and LockDelay apply to every key; Shared and
// Semaphore are set per Item instead. A grant that arrives too late is
// ErrLeaseLost, as with TryAcquire.
func (c *Client) TryAcquireSet(ctx context.Context, items []Item, opts ...AcquireOption) (*Lease, error) {
	l, err := c.acquire(ctx, asSet(items), "", false, opts)
	if errors.Is(err, ErrHeld) {
		return nil, nil
	}
	return l, err
}

// AcquireSet waits until every key of items is granted at once, queued
// FIFO at the leader on each key (see TryAcquireSet). It never holds part
// of the set while it waits, and two clients that wait for overlapping
// sets, named in any order, cannot wait for each other: the cluster
// grants waiters in one arrival order on every key. ctx bounds the wait.
func (c *Client) AcquireSet(ctx context.Context, items []Item, opts ...AcquireOption) (*Lease, error) {
	return c.acquire(ctx, asSet(items), "", true, opts)
}

// asSet keeps a nil set a set (of no keys, refused as such): acquire takes
// nil items for the one-key calls.
func asSet(items []Item) []Item {
	if items == nil {
		return []Item{}
	}
	return items
}

// AcquireSetTimeout is AcquireSet bounded by maxWait, as AcquireTimeout.
func (c *Client) AcquireSetTimeout(ctx context.Context, items []Item, maxWait time.Duration, opts ...AcquireOption) (*Lease, error) {
	return c.acquireTimeout(ctx, asSet(items), "", maxWait, opts)
}

func (c *Client) acquireTimeout(ctx context.Context, items []Item, key string, maxWait time.Duration, opts []AcquireOption) (*Lease, error) {
	// The leader stops queueing the request at maxWait and answers (the
	// request's max_wait); the call's own deadline comes answerAllowance
	// later, so that the answer, or a grant committed at the edge of the
	// wait, reaches it. When the deadline cut the wait itself, a grant
	// that took a loaded host more than maxWait to commit was lost: 6 of
	// 120 AcquireTimeout(100 ms) of free keys failed beside two busy loops,
	// while a shorter maxWait (a plain try) never did, and a cluster
	// without a quorum held a try for the whole retry timeout
	// (adversarial review rev-adv40).
	wait := maxWait > 0
	if wait {
		until := time.Now().Add(maxWait)
		opts = append(opts[:len(opts):len(opts)], func(o *acquireOptions) { o.waitUntil = until })
	}
	wctx, cancel := context.WithTimeoutCause(ctx, max(maxWait, 0)+answerAllowance, ErrTimeout)
	defer cancel()
	l, err := c.acquire(wctx, items, key, wait, opts)
	var he *HeldError
	switch {
	case err == nil:
	case errors.As(err, &he) && ctx.Err() == nil:
		// Held when the wait (or the try) ended: the timeout.
		he.Err = ErrTimeout
		return nil, he
	case ctx.Err() == nil && errors.Is(context.Cause(wctx), ErrTimeout) && !errors.Is(err, ErrTimeout):
		err = fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return l, err
}

// answerAllowance is how long past maxWait an AcquireTimeout waits for
// its answer: the leader's refusal once the wait ran out, or a grant's
// commit on a loaded host.
const answerAllowance = time.Second

// acquire acquires items (or, if items is nil, key in the shape opts
// give) under this Client's local guards of every key.
func (c *Client) acquire(ctx context.Context, items []Item, key string, wait bool, opts []AcquireOption) (*Lease, error) {
	ao := acquireOptions{ttl: c.opts.ttl}
	for _, f := range opts {
		f(&ao)
	}
	if ao.slotsSet && (ao.semaphore < 1 || ao.semaphore > maxSemaphore) {
		return nil, fmt.Errorf("acquire: %w: semaphore of %d, want 1 to %d", ErrInvalid, ao.semaphore, maxSemaphore)
	}
	if items == nil {
		items = []Item{{Key: key, Shared: ao.shared, Semaphore: ao.semaphore}}
	} else if ao.shared || ao.slotsSet {
		return nil, fmt.Errorf("acquire: %w: Shared and Semaphore options are for one key; set them per Item of a set", ErrInvalid)
	}
	if ao.ttl <= 0 {
		return nil, fmt.Errorf("acquire: %w: TTL %v must be > 0", ErrInvalid, ao.ttl)
	}
	if err := c.opts.fits(ao.ttl); err != nil {
		return nil, fmt.Errorf("acquire: %w", err)
	}
	if len(items) == 0 || len(items) > maxSetKeys {
		return nil, fmt.Errorf("acquire: %w: %d keys, want 1 to %d", ErrInvalid, len(items), maxSetKeys)
	}
	wire := make([]*pb.AcquireItem, len(items))
	keys := make([]string, len(items))
	for i, it := range items {
		w, err := it.pb()
		if err != nil {
			return nil, fmt.Errorf("acquire: %w", err)
		}
		wire[i], keys[i] = w, it.Key
	}
	items = slices.Clone(items)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.acquires.Add(1)
	c.mu.Unlock()
	defer c.acquires.Done()
	if ctx.Err() != nil {
		// Nothing sent: a call already cancelled must not write to the
		// cluster (a grant nobody sees, then its withdrawal).
		return nil, fmt.Errorf("acquire %q: %w", keys[0], context.Cause(ctx))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.closing, func() { cancel(ErrClosed) })
	defer stop()
	gctx := ctx
	if !ao.waitUntil.IsZero() {
		// Waiting for this Client's own holding is waiting too: at most
		// until the wait ends (AcquireTimeout's maxWait).
		var cancel context.CancelFunc
		gctx, cancel = context.WithDeadlineCause(ctx, ao.waitUntil, ErrTimeout)
		defer cancel()
	}
	guards, err := c.lockGuards(gctx, keys, wait)
	if err != nil {
		return nil, err
	}
	l, err := c.acquireLocked(ctx, items, wire, wait, ao)
	for wait && errors.Is(err, errArrivedExpired) && ctx.Err() == nil {
		l, err = c.acquireLocked(ctx, items, wire, wait, ao) // a new request id
	}
	if wait && errors.Is(err, errArrivedExpired) {
		// The wait ended while a grant that came too late was released:
		// the call ends as its wait did (ErrTimeout for AcquireTimeout),
		// not as a lost lease, since none was handed out.
		err = fmt.Errorf("acquire %q: %w (the last grant arrived after its validity and was released: %v)", keys[0], context.Cause(ctx), err)
	}
	if l == nil {
		for _, g := range guards {
			c.unlockGuard(g)
		}
	}
	return l, err
}

// guard is this Client's local lock of one key: one of its goroutines at a
// time acquires or holds the key. refs counts who holds or waits for it;
// at zero it leaves the map, so keys used once do not accumulate.
type guard struct {
	key  string
	ch   chan struct{} // capacity 1: full while held
	refs int           // under Client.mu
}

// unlockGuard releases g, taken by lockGuard.
func (c *Client) unlockGuard(g *guard) {
	<-g.ch
	c.unref(g)
}

// unref drops one reference to g.
func (c *Client) unref(g *guard) {
	c.mu.Lock()
	if g.refs--; g.refs == 0 {
		delete(c.guards, g.key)
	}
	c.mu.Unlock()
}

// lockGuards takes the local guards of keys, in key order so that two
// goroutines of this Client taking overlapping sets cannot deadlock; it
// waits for each when wait is set, else fails with ErrHeld if this Client
// holds any. A key named twice is ErrInvalid.
func (c *Client) lockGuards(ctx context.Context, keys []string, wait bool) ([]*guard, error) {
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	for j := 1; j < len(sorted); j++ {
		if sorted[j] == sorted[j-1] {
			return nil, fmt.Errorf("acquire: %w: key %q named twice", ErrInvalid, sorted[j])
		}
	}
	var taken []*guard
	for _, k := range sorted {
		g, err := c.lockGuard(ctx, k, wait)
		if err != nil {
			for _, t := range taken {
				c.unlockGuard(t)
			}
			return nil, err
		}
		taken = append(taken, g)
	}
	return taken, nil
}

// lockGuard takes the local guard of key: waits for it when wait is set,
// else fails with ErrHeld if this Client holds key.
func (c *Client) lockGuard(ctx context.Context, key string, wait bool) (*guard, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	g := c.guards[key]
	if g == nil {
		g = &guard{key: key, ch: make(chan struct{}, 1)}
		c.guards[key] = g
	}
	g.refs++
	c.mu.Unlock()
	select {
	case g.ch <- struct{}{}: // free: taken, whatever the context says
		return g, nil
	default:
	}
	if !wait {
		c.unref(g)
		return nil, &HeldError{Key: key, Holder: c.opts.holder, Own: true}
	}
	select {
	case g.ch <- struct{}{}:
		return g, nil
	case <-ctx.Done():
		c.unref(g)
		return nil, &HeldError{Key: key, Holder: c.opts.holder, Own: true, Wait: c.remaining(key), Err: context.Cause(ctx)}
	}
}

// remaining is the validity left of this Client's lease on key, if any.
func (c *Client) remaining(key string) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h := range c.held {
		for _, it := range h.items {
			if it.Key == key {
				h.mu.Lock()
				d := time.Until(h.validUntil)
				h.mu.Unlock()
				return max(d, 0)
			}
		}
	}
	return 0
}

// acquireLocked runs the acquire protocol with one request id, retried by
// the client's RetryPolicy. Every attempt carries the same id, so a retry
// after a lost reply is recognised by the cluster (same grant, same token)
// instead of being refused by our own earlier grant; validity is measured
// from the send time of the attempt that succeeded. If the cluster says the
// id is spent (REASON_STALE_REQUEST: its grant ended unseen, by expiry or
// by a withdrawal after its reply was lost, see node.Cancel), an earlier
// attempt was applied and may have held the key: the call goes on with a
// new id (a withdrawn grant must not fail a call that can still be
// granted), but if it then ends without a grant it reports
// ErrUnknownOutcome, never a refusal, which would deny the first grant.
func (c *Client) acquireLocked(ctx context.Context, items []Item, wire []*pb.AcquireItem, wait bool, ao acquireOptions) (*Lease, error) {
	key := items[0].Key
	req := &pb.AcquireRequest{
		Key: key, Holder: c.opts.holder, RequestId: c.reqID.Add(1),
		Ttl: durationpb.New(ao.ttl), LockDelay: durationpb.New(ao.lockDelay), Value: ao.value, Wait: wait,
		Mode: wire[0].Mode, Limit: wire[0].Limit, Items: wire[1:],
	}
	var (
		resp  *pb.AcquireResponse
		sent  time.Time
		maybe bool // an attempt may have been applied
		spent int  // request ids the cluster reported spent
		began = time.Now()
	)
	err := c.retry.do(ctx, true, wait, func(ctx context.Context) error {
		sent = time.Now()
		areq := req
		if wait && !ao.waitUntil.IsZero() {
			// The wait left, from this attempt on (at least 1 ns: 0
			// would mean the call's whole deadline).
			areq = proto.CloneOf(req)
			areq.MaxWait = durationpb.New(max(time.Until(ao.waitUntil), time.Nanosecond))
		}
		actx, cancel := c.attemptContext(ctx, wait)
		r, err := c.b.Acquire(actx, areq)
		cancel()
		if err == nil {
			resp = r
			return nil
		}
		if reasonOf(err) == pb.Reason_REASON_STALE_REQUEST && spent < 8 {
			spent++
			// A new message for the new id: a backend may still read the
			// one it was given (an embedded node withdrawing a lost
			// outcome by its id).
			req = proto.CloneOf(req)
			req.RequestId = c.reqID.Add(1)
			maybe = false // the spent id's copies are refused; the new one has none yet
			return &NotSentError{Err: err}
		}
		if classifyAttempt(err) == unknown {
			maybe = true
		}
		return err
	})
	if err == nil {
		if resp.GetGranted() {
			if wait {
				resp, sent = c.refreshGrant(ctx, req, resp, sent, ao.ttl)
			}
			if err := c.expiredOnArrival(req, resp, sent, ao.ttl); err != nil {
				return nil, err
			}
			return c.newLease(items, resp, sent, ao)
		}
		var refusal error = c.heldError(key, resp)
		if maybe {
			// An attempt with the last id may still be applied after
			// this refusal: settle it, spent ids or not.
			refusal = c.settleRefusal(req, began, c.heldError(key, resp))
		}
		if spent > 0 {
			return nil, spentError(key, refusal)
		}
		return nil, refusal
	}
	// A refusal of the request itself (invalid: a leader that cannot write
	// its shape while an older node is a server, say) after an attempt
	// that may have been applied is no answer about that attempt: a grant
	// of it would stand for its TTL while the caller heard "invalid".
	// The same for a node's limit (--max-waiters, a source's share of
	// them, a key's queue): final for the client, no answer about the
	// attempt before it (review s32b).
	refused := ctx.Err() == nil && maybe && (reasonOf(err) == pb.Reason_REASON_INVALID || reasonOf(err) == pb.Reason_REASON_RESOURCE_EXHAUSTED)
	if spent > 0 && (ctx.Err() == nil && !refused || !maybe) {
		return nil, spentError(key, err)
	}
	cause := context.Cause(ctx)
	if !refused && (ctx.Err() == nil || !maybe) {
		// Nothing was applied (no leader, or the wait ended), or a
		// failure the caller must see as it is.
		if maybe {
			// The retry timeout ended on an attempt that may still be
			// applied (a leader that could not commit, a lost reply):
			// the caller hears ErrUnknownOutcome now, and the call is
			// settled when the cluster can commit, so that a grant of it
			// nobody hears of does not block the key for its TTL
			// (adversarial review rev-adv37).
			c.abandonLater(&pb.AbandonRequest{Key: key, Holder: req.GetHolder(), RequestId: req.GetRequestId()}, began)
			return nil, fmt.Errorf("%w (this Client goes on settling the call until it is closed: a grant of it applied meanwhile is released)", classify("acquire", key, err))
		}
		return nil, classify("acquire", key, err)
	}
	// An attempt may have been granted just as we gave up, or before the
	// refusal: settle it.
	granted, held, rerr := c.abandon(req, began)
	if refused {
		if rerr != nil {
			return nil, fmt.Errorf("acquire %q: %w: an earlier attempt may have been granted (%v), and then: %w", key, ErrUnknownOutcome, rerr, classify("acquire", key, err))
		}
		if granted || spent > 0 {
			// An attempt of this call was granted (and has ended: released
			// now, or its id reported spent): an effect the refusal alone
			// would deny (lease/doc.go: after a spent id, ErrUnknownOutcome,
			// never a refusal). Nothing of it is held.
			return nil, fmt.Errorf("acquire %q: %w: an earlier attempt was granted and has ended (released or withdrawn); nothing is held; then: %w", key, ErrUnknownOutcome, classify("acquire", key, err))
		}
		return nil, classify("acquire", key, err) // settled: never granted
	}
	if errors.Is(rerr, errAbandonEnded) {
		// Settled as surely as a release: nothing of the call is held and
		// no copy of it can be granted, whether the leader withdrew the
		// grant first (its request id spent) or the Abandon released it.
		rerr = nil
	}
	if rerr != nil {
		return nil, fmt.Errorf("acquire %q: %w: %w (%v)", key, cause, ErrUnknownOutcome, rerr)
	}
	if spent > 0 {
		// An earlier id's grant may have been seen (lease/doc.go).
		if held != nil {
			return nil, spentError(key, held)
		}
		return nil, fmt.Errorf("acquire %q: %w: %w: "+spentText, key, cause, ErrUnknownOutcome)
	}
	if held != nil {
		held.Err = cause
		return nil, held
	}
	return nil, fmt.Errorf("acquire %q: %w", key, cause)
}

// errArrivedExpired marks a grant whose answer came after the validity
// it gives (expiredOnArrival): a waiting acquire asks again.
var errArrivedExpired = errors.New("the grant's validity ended before its answer was used")

// expiredOnArrival releases, and reports as an error wrapping ErrLeaseLost
// and errArrivedExpired, a grant whose validity (invariant
// client-validity) ended before its answer came: an overloaded cluster
// answered after the TTL, or a long-waited grant whose TTL could not be
// restarted (refreshGrant). Handed out, its Lease would be lost at once
// while the caller, told err == nil, acts on a key that may already be
// another's (the outsider review saw one returned 919 ms past its
// validity, with a token older than the next holder's).
func (c *Client) expiredOnArrival(req *pb.AcquireRequest, resp *pb.AcquireResponse, sent time.Time, ttl time.Duration) error {
	if t := resp.GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	valid := c.validity(sent, resp.GetWaited().AsDuration()+ttl)
	if time.Now().Before(valid) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	rerr := c.releaseRecord(ctx, &held{key: req.GetKey(), token: resp.GetToken()})
	msg := "it was released"
	if rerr != nil {
		msg = fmt.Sprintf("it could not be released (%v) and expires at the cluster", rerr)
	}
	return fmt.Errorf("acquire %q: %w: %w (sent %v ago, valid for %v): %s; nothing is held",
		req.GetKey(), ErrLeaseLost, errArrivedExpired, time.Since(sent).Round(time.Millisecond), valid.Sub(sent).Round(time.Millisecond), msg)
}

// spentError is the error of an acquire that ends without a grant after
// the cluster reported one of its request ids spent.
func spentError(key string, err error) error {
	return fmt.Errorf("acquire %q: %w: "+spentText+": %v", key, ErrUnknownOutcome, err)
}

const spentText = "an earlier attempt of this call was applied before its reply reached this client and its grant, if any, has ended (expired or withdrawn); this client does not hold the key"

// heldError is the HeldError of a refused acquire of key: the key the
// cluster names as held (one of a set's), its holder and wait.
func (c *Client) heldError(key string, resp *pb.AcquireResponse) *HeldError {
	if k := resp.GetHeldKey(); k != "" {
		key = k
	}
	return &HeldError{Key: key, Holder: resp.GetHolder(), Own: resp.GetHolder() == c.opts.holder, Wait: resp.GetWait().AsDuration()}
}

// attemptContext bounds one attempt. A waiting acquire waits as long as
// ctx allows (the wait is its point); any other attempt is bounded by the
// retry timeout too, so a node that stopped answering (a paused process
// keeps its connections open) cannot hold a call longer than that.
func (c *Client) attemptContext(ctx context.Context, wait bool) (context.Context, context.CancelFunc) {
	if wait {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.retry.withDefaults().Timeout)
}

// resolveTimeout bounds the settling of an acquire whose caller gave up
// while an attempt's outcome was unknown.
const resolveTimeout = time.Second

// abandonWindow is the longest acquire call whose Abandon answer "never
// granted" is believed. The cluster remembers a holder's spent request id
// for fsm.MarkRetention (15 minutes) after its grant ended, and the grant
// came after the call began; beyond that it may have forgotten a grant.
const abandonWindow = 10 * time.Minute

// abandon settles an acquire whose caller gave up, or whose refusal
// followed an attempt with an unknown outcome (protocol rule 7), begun at
// began: Abandon spends its request id in the cluster's log, so no attempt
// of it still in flight can be granted afterwards, and releases its grant
// if it stands. granted says an attempt was granted (and is released
// now); held, if the request was never granted, who holds the key (no
// one while it is in its lock-delay) and when its current grant ends
// unless extended, unless the key is free. err says the outcome stays unknown: an attempt may
// have been granted and its grant has ended, or the settling failed. It
// takes at most resolveTimeout.
func (c *Client) abandon(req *pb.AcquireRequest, began time.Time) (granted bool, held *HeldError, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	ab := &pb.AbandonRequest{Key: req.GetKey(), Holder: req.GetHolder(), RequestId: req.GetRequestId()}
	var (
		resp  *pb.AbandonResponse
		older bool
	)
	err = c.retry.Do(ctx, true, func(ctx context.Context) error {
		r, err := c.b.Abandon(ctx, ab)
		if older = unsupported(err); older {
			return nil
		}
		resp = r
		return err
	})
	if older {
		return c.retryAbandoned(ctx, req)
	}
	if err != nil {
		c.abandonLater(ab, began)
		return false, nil, fmt.Errorf("%w (this Client goes on settling the call until it is closed: a grant of it applied meanwhile is released)", err)
	}
	switch resp.GetOutcome() {
	case pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED:
		return true, nil, nil
	case pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED:
		if d := time.Since(began); d > abandonWindow {
			return false, nil, fmt.Errorf("the call ran %v, longer than the cluster is sure to remember a grant of it (%v): Get the key to see whether this client holds it (a grant it holds expires unless extended)",
				d.Round(time.Second), abandonWindow)
		}
		if resp.GetHolder() == "" && resp.GetWait() == nil {
			return false, nil, nil // the key is free now
		}
		return false, &HeldError{Key: req.GetKey(), Holder: resp.GetHolder(), Own: resp.GetHolder() == c.opts.holder, Wait: resp.GetWait().AsDuration()}, nil
	case pb.AbandonOutcome_ABANDON_OUTCOME_ENDED:
		return false, nil, errAbandonEnded
	}
	return false, nil, fmt.Errorf("the settling answered %v, which this client does not know", resp.GetOutcome())
}

// abandonLater retries ab in the background after abandon failed to
// settle it (no leader, or one that could not commit, for its
// resolveTimeout): an attempt of the call may still be applied once the
// cluster commits again, and nobody would release its grant, which would
// block the key for its TTL (adversarial review rev-adv37: a waiter that
// gave up during a commit stall held its key 11 s after the disks came
// back). An applied Abandon settles it whatever the order: a grant before
// it is released, one after it is refused. It retries until the cluster
// answers, while it may still remember the call (abandonWindow from
// began), or until Close.
func (c *Client) abandonLater(ab *pb.AbandonRequest, began time.Time) {
	c.mu.Lock()
	c.unsettled[ab] = struct{}{}
	c.mu.Unlock()
	c.background(func() {
		ctx, cancel := context.WithDeadline(c.bgCtx, began.Add(abandonWindow))
		defer cancel()
		err := c.settleLater(ctx, ab)
		if err != nil {
			c.log.Warn("could not settle an acquire whose caller gave up; a grant of it, if applied, expires at the cluster unless extended",
				"key", ab.GetKey(), "err", err)
		}
		if err == nil || c.bgCtx.Err() == nil {
			c.mu.Lock()
			delete(c.unsettled, ab)
			c.mu.Unlock()
		}
	})
}

// settleLater sends ab until it is applied, a node refuses it for good,
// or ctx ends.
func (c *Client) settleLater(ctx context.Context, ab *pb.AbandonRequest) error {
	for {
		err := c.sendAbandon(ctx, ab)
		if err == nil || ctx.Err() != nil || classifyAttempt(err) == final {
			return err
		}
	}
}

// sendAbandon sends ab, retried by the retry policy (an Abandon is safe
// to repeat).
func (c *Client) sendAbandon(ctx context.Context, ab *pb.AbandonRequest) error {
	return c.retry.Do(ctx, true, func(ctx context.Context) error {
		actx, cancel := c.attemptContext(ctx, false)
		defer cancel()
		_, err := c.b.Abandon(actx, ab)
		return err
	})
}

// errAbandonEnded is abandon's answer ENDED: the request id was already
// spent (a grant of it expired or was withdrawn, or an earlier Abandon of
// it was applied), so nothing of it is held and none can be granted.
var errAbandonEnded = errors.New("an attempt may have been granted; if so, its grant has ended")

// settleRefusal makes refused, the answer to req, final when one of req's
// attempts had an unknown outcome: a copy of it may still be on its way to
// the leader and be granted after the refusal. abandon spends the id; if
// an attempt was granted after all, the call had an effect the refusal
// would deny, and its outcome is unknown.
func (c *Client) settleRefusal(req *pb.AcquireRequest, began time.Time, refused *HeldError) error {
	granted, _, err := c.abandon(req, began)
	if err == nil && !granted {
		return refused
	}
	if err == nil {
		err = errors.New("an attempt whose reply was lost was granted after it; released")
	}
	return fmt.Errorf("acquire %q: %w: refused (%v), but: %v", req.GetKey(), ErrUnknownOutcome, refused, err)
}

// refreshGrant restarts the TTL of a grant that waited so long in the
// queue that little of its validity is left. The client counts the drift
// over the wait too (invariant client-validity), so after a wait of about
// TTL/drift (100 TTLs at the default 1%) a Lease would be lost on
// arrival, and its key released behind the caller. The same request id,
// sent again without waiting, is a retry of that grant to the cluster:
// the same token, its TTL restarted at the leader's now, no time in the
// queue. If that fails, the first grant stands as it is.
func (c *Client) refreshGrant(ctx context.Context, req *pb.AcquireRequest, resp *pb.AcquireResponse, sent time.Time, ttl time.Duration) (*pb.AcquireResponse, time.Time) {
	if t := resp.GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	if time.Until(c.validity(sent, resp.GetWaited().AsDuration()+ttl)) >= ttl/2 {
		return resp, sent
	}
	r := proto.CloneOf(req)
	r.Wait = false
	again := time.Now()
	actx, cancel := c.attemptContext(ctx, false)
	defer cancel()
	fresh, err := c.b.Acquire(actx, r)
	if err != nil || !fresh.GetGranted() || fresh.GetToken() != resp.GetToken() {
		c.log.Debug("could not restart the TTL of a grant after a long wait; it keeps what is left", "key", req.GetKey(), "err", err)
		return resp, sent
	}
	return fresh, again
}

// unsupported reports whether err says the cluster predates Abandon: the
// node asked answers Unimplemented, or it forwarded to an older leader,
// which refused the unknown node method as invalid.
func unsupported(err error) bool {
	return connect.CodeOf(err) == connect.CodeUnimplemented || reasonOf(err) == pb.Reason_REASON_INVALID
}

// retryAbandoned settles an abandoned acquire as clusters older than
// Abandon allow: ask once more with the same id, without waiting; granted
// means it was ours, so release it. Unlike Abandon it cannot stop a copy of
// an attempt that reaches the leader after it was answered.
func (c *Client) retryAbandoned(ctx context.Context, req *pb.AcquireRequest) (granted bool, held *HeldError, err error) {
	r := proto.CloneOf(req)
	r.Wait = false
	err = c.retry.Do(ctx, true, func(ctx context.Context) error {
		resp, err := c.b.Acquire(ctx, r)
		if err != nil {
			return err // a spent id is final: its grant, if any, has ended
		}
		if !resp.GetGranted() {
			held = c.heldError(req.Key, resp)
			return nil
		}
		granted = true
		_, err = c.b.Release(ctx, &pb.ReleaseRequest{Key: req.Key, Holder: req.Holder, Token: resp.GetToken()})
		return err
	})
	return granted, held, err
}

// newLease starts keeping a granted lease alive. A grant that arrives
// once Close has begun is not handed to the closed Client: it is released
// (Close waits for acquires in flight, so the transport is still open).
//
// Invariant client-validity (DESIGN.md rule 6): valid until
// sent + (W + ttl) * (1 - drift), where sent is the send time of the very
// attempt that was granted and W the time the leader reports the request
// waited in its queue. The leader's expiry is at least arrival + W + ttl on
// its clock, and arrival is after sent, so with clock rates within
// drift/2 the client stops believing before the cluster could grant the key
// to anyone else.
func (c *Client) newLease(items []Item, resp *pb.AcquireResponse, sent time.Time, ao acquireOptions) (*Lease, error) {
	ttl := ao.ttl
	if t := resp.GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	h := &held{
		c:         c,
		key:       items[0].Key,
		items:     items,
		token:     resp.GetToken(),
		ttl:       ttl,
		value:     ao.value,
		lockDelay: ao.lockDelay,
		done:      make(chan struct{}),
		expiring:  make(chan struct{}, 1),
		lastSent:  sent,
	}
	h.ctx, h.cancel = context.WithCancelCause(context.Background())
	h.validUntil = c.validity(sent, resp.GetWaited().AsDuration()+ttl)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		defer cancel()
		if err := c.releaseRecord(ctx, h); err != nil {
			return nil, fmt.Errorf("acquire %q: %w; it was granted as the client closed and could not be released, so it expires after its TTL (%v): %w",
				h.key, ErrClosed, ttl, err)
		}
		return nil, fmt.Errorf("acquire %q: %w (it was granted as the client closed, and released)", h.key, ErrClosed)
	}
	c.held[h] = struct{}{}
	c.mu.Unlock()
	c.wake()
	l := &Lease{c: c, h: h}
	// A Lease dropped without Release is released in the background. The
	// loop keeps only h, never l, so l can become unreachable.
	runtime.AddCleanup(l, releaseDropped, h)
	return l, nil
}

// releaseDropped ends a lease whose Lease was dropped without Release and
// releases its record in the background once the validity in force before
// ends (invariant client-validity: a ValidUntil, Context or Token taken
// from the Lease before it was dropped may still be acted on). A plain
// function, not a closure: the cleanup keeps nothing alive but h.
func releaseDropped(h *held) { h.c.end(h, ErrReleased, true) }

func (c *Client) validity(sent time.Time, d time.Duration) time.Time {
	return sent.Add(time.Duration(float64(d) * (1 - c.opts.drift)))
}

func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// end stops keeping h: its validity ends now (ValidUntil never again
// returns a later time), Done closes, the context is cancelled with err,
// and (if release: the lease was lost or dropped) the local guards open
// and the record is deleted in the background, both once the validity in
// force before has passed (a lease the cluster said it no longer holds
// is unguarded at once by its caller; one lost with a lock-delay is not
// deleted but left to expire into it). Release keeps the guards
// until its own delete was answered (unguard), so that a waiter of this
// same Client acquires the key from the cluster after it was freed, not
// over its live record. Either way the leader queues that acquire behind
// other clients' waiters (invariant fifo-no-barging: only a retry of the
// request that started a holding skips the queue; dynamodb-lease lets a
// same-client waiter go first, and a client that releases and re-acquires
// in a loop then starves everyone else). Returns false if h had ended
// already.
//
// Invariant client-validity: a background release (release set) is sent
// no earlier than the ValidUntil that was in force before end, because
// code may have read that value before end and be acting on it; a release
// grants the key to the next waiter at once. Release by the caller (which
// itself decided to stop) sends at once.
func (c *Client) end(h *held, err error, release bool) bool {
	now := time.Now()
	h.mu.Lock()
	if h.err != nil {
		h.mu.Unlock()
		return false
	}
	h.err = err
	wasValid := h.validUntil
	if now.Before(h.validUntil) {
		h.validUntil = now
	}
	h.mu.Unlock()
	close(h.done)
	h.cancel(err)
	c.mu.Lock()
	delete(c.held, h)
	c.mu.Unlock()
	if release {
		// A lease lost with a lock-delay is not released: the leader's
		// expiry, a little after the validity this client counted, starts
		// the delay that protects a write still in flight from a holder
		// that lost the lease without noticing (paused past its validity,
		// say). A release reaching the leader before that expiry would end
		// the holding plainly, with no delay.
		keepDelay := errors.Is(err, ErrLeaseLost) && h.lockDelay > 0
		started := c.background(func() {
			// Wait until nobody can still be acting on the old validity.
			// The guards stay closed until then too: a new acquire of this
			// Client would replace the holding on the server at once.
			ok := ctxtime.Sleep(c.bgCtx, time.Until(wasValid))
			c.unguard(h)
			if !ok || keepDelay {
				return
			}
			ctx, cancel := context.WithTimeout(c.bgCtx, 5*time.Second)
			defer cancel()
			c.releaseRecord(ctx, h)
		})
		if !started {
			c.unguard(h) // Close releases nothing more; the record expires by its TTL
		}
	}
	return true
}

// unguard unlocks h's local guards, once: after its record was released,
// or the release was given up on (the record then expires by its TTL).
func (c *Client) unguard(h *held) {
	h.unguard.Do(func() {
		c.mu.Lock()
		guards := make([]*guard, 0, len(h.items))
		for _, it := range h.items {
			if g := c.guards[it.Key]; g != nil {
				guards = append(guards, g)
			}
		}
		c.mu.Unlock()
		for _, g := range guards {
			c.unlockGuard(g)
		}
	})
}

// releaseLater releases h's record in the background after Release
// failed to, retrying for up to one TTL (after that the record has
// expired) or until Close: each try retries by the retry policy, and a
// try that gives up, or meets a refusal it takes as final, is tried
// again after releaseRetry, until the record is released or the request
// is invalid (a key left held for its TTL, up to 24 h, blocks every
// other client of it: adversarial review s39).
func (c *Client) releaseLater(h *held) {
	c.mu.Lock()
	c.unreleased[h] = struct{}{}
	c.mu.Unlock()
	c.background(func() {
		ctx, cancel := context.WithTimeout(c.bgCtx, h.ttl)
		defer cancel()
		err := c.releaseRecord(ctx, h)
		for err != nil && !errors.Is(err, ErrInvalid) && ctxtime.Sleep(ctx, releaseRetry) {
			err = c.releaseRecord(ctx, h)
		}
		h.mu.Lock()
		if err == nil {
			h.unreleased = false
		}
		h.mu.Unlock()
		if err == nil || c.bgCtx.Err() == nil {
			// Released, or its TTL is over (the record expired): nothing
			// left for Close to release. Close cancelled it otherwise.
			c.mu.Lock()
			delete(c.unreleased, h)
			c.mu.Unlock()
		}
	})
}

// releaseRetry is how long releaseLater waits before it tries again.
const releaseRetry = time.Second

// releaseRecord deletes h's record in the cluster, retried by the retry
// policy (a release is safe to repeat: releasing a key no longer held is a
// no-op).
func (c *Client) releaseRecord(ctx context.Context, h *held) error {
	err := c.retry.Do(ctx, true, func(ctx context.Context) error {
		actx, cancel := c.attemptContext(ctx, false)
		defer cancel()
		_, err := c.b.Release(actx, &pb.ReleaseRequest{Key: h.key, Holder: c.opts.holder, Token: h.token})
		return err
	})
	if err != nil {
		return classify("release", h.key, err)
	}
	return nil
}

// Get returns the current record of key, or nil if nobody holds it. The
// read is linearizable (served by the leader). A key held by several
// holders (Shared, Semaphore) reports its first: the live holding with
// the lowest token (Holdings returns them all).
func (c *Client) Get(ctx context.Context, key string) (*Info, error) {
	if err := c.readable("get", "key", key); err != nil {
		return nil, err
	}
	resp, err := retryRead(ctx, c, func(ctx context.Context) (*pb.GetResponse, error) {
		return c.b.Get(ctx, &pb.GetRequest{Key: key})
	})
	if err != nil {
		return nil, classify("get", key, err)
	}
	if !resp.GetFound() {
		return nil, nil
	}
	info := infoFromPB(resp.GetLease())
	return &info, nil
}

// Holdings returns every holding of key, linearizably: its live holdings
// in token order (grant order), then the lock-delays of expired ones. It
// is empty when the key is free.
func (c *Client) Holdings(ctx context.Context, key string) ([]Info, error) {
	if err := c.readable("holdings", "key", key); err != nil {
		return nil, err
	}
	resp, err := retryRead(ctx, c, func(ctx context.Context) (*pb.GetResponse, error) {
		return c.b.Get(ctx, &pb.GetRequest{Key: key})
	})
	if err != nil {
		return nil, classify("get", key, err)
	}
	hs := resp.GetHoldings()
	if len(hs) == 0 && resp.GetFound() {
		hs = []*pb.Lease{resp.GetLease()} // a server without shapes
	}
	out := make([]Info, len(hs))
	for i, l := range hs {
		out[i] = infoFromPB(l)
	}
	return out, nil
}

// List returns every holding of every key that starts with prefix, in key
// order (within a key, as Holdings), reading page by page from the leader.
func (c *Client) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := c.readable("list", "prefix", prefix); err != nil {
		return nil, err
	}
	var out []Info
	after := ""
	for {
		resp, err := retryRead(ctx, c, func(ctx context.Context) (*pb.ListResponse, error) {
			return c.b.List(ctx, &pb.ListRequest{Prefix: prefix, After: after, Limit: 1000})
		})
		if err != nil {
			return nil, classify("list", prefix, err)
		}
		page := resp.GetHoldings()
		if len(page) == 0 {
			page = resp.GetLeases() // a server without shapes
		}
		for _, l := range page {
			out = append(out, infoFromPB(l))
		}
		if resp.GetNext() == "" {
			return out, nil
		}
		after = resp.GetNext()
	}
}

// CheckToken asks the cluster, linearizably, whether token is the token of
// a live holding of key (unexpired by the leader's clock): what a resource
// that can reach the cluster asks before accepting a write (Chubby's
// sequencer). For a key with several holders (Shared, Semaphore), every
// one of their tokens is current; pass Lease.TokenFor(key) for a set.
func (c *Client) CheckToken(ctx context.Context, key string, token uint64) (bool, error) {
	if err := c.readable("check token", "key", key); err != nil {
		return false, err
	}
	resp, err := retryRead(ctx, c, func(ctx context.Context) (*pb.CheckTokenResponse, error) {
		return c.b.CheckToken(ctx, &pb.CheckTokenRequest{Key: key, Token: token})
	})
	if err != nil {
		return false, classify("check token", key, err)
	}
	return resp.GetCurrent(), nil
}

// retryRead runs a read under the retry policy.
func retryRead[T any](ctx context.Context, c *Client, f func(context.Context) (T, error)) (T, error) {
	var v T
	err := c.retry.Do(ctx, true, func(ctx context.Context) error {
		actx, cancel := c.attemptContext(ctx, false)
		defer cancel()
		var err error
		v, err = f(actx)
		return err
	})
	return v, err
}

// Close releases every lease of this Client (as Release does), ends its
// acquires and watches (ErrClosed) and stops its background loop. ctx
// bounds the releases, those Release left to retry in the background
// included: without a quorum each takes up to the retry timeout, so a
// program that must stop within a grace period (Kubernetes' 30 s) passes
// a ctx with a deadline here and to Release. A Close while another runs
// waits for it and returns its result (or ctx's error).
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		select {
		case <-c.closeDone:
			return c.closeErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.closed = true
	c.closeBegun()
	hs := make([]*held, 0, len(c.held))
	for h := range c.held {
		hs = append(hs, h)
	}
	var failed []*held // Release failed; releaseLater may still be at it
	for h := range c.unreleased {
		failed = append(failed, h)
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
			defer c.unguard(h)
			if err := c.releaseRecord(ctx, h); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	for _, h := range failed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.releaseRecord(ctx, h); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	c.acquires.Wait() // each ends promptly: its context ended with ErrClosed
	// Acquires whose settling failed (abandonLater may still be at it).
	c.mu.Lock()
	unsettled := make([]*pb.AbandonRequest, 0, len(c.unsettled))
	for ab := range c.unsettled {
		unsettled = append(unsettled, ab)
	}
	c.mu.Unlock()
	for _, ab := range unsettled {
		wg.Go(func() {
			if err := c.sendAbandon(ctx, ab); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("settle acquire %q whose caller gave up: %w", ab.GetKey(), classify("abandon", ab.GetKey(), err)))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(c.stop)
	c.loopWG.Wait()
	c.bgCancel()
	c.mu.Lock()
	c.bgDone = true
	c.mu.Unlock()
	c.bgWG.Wait()
	if c.closer != nil {
		c.closer()
	}
	c.closeErr = errors.Join(errs...)
	close(c.closeDone)
	return c.closeErr
}

// open returns ErrClosed once Close has begun.
func (c *Client) open() error {
	if c.closing.Err() != nil {
		return ErrClosed
	}
	return nil
}

// readable checks a read (op) of the key or prefix s before it is sent:
// ErrClosed after Close, ErrInvalid for text that is not UTF-8.
func (c *Client) readable(op, what, s string) error {
	if err := c.open(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := text(what, s); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (c *Client) backoff() *backoff {
	return &backoff{cur: c.opts.backoffMin, max: c.opts.backoffMax}
}
