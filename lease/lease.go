package lease

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/internal/holdset"
	"github.com/leasenode/leasenode/transport/pb"
)

// Lease is a held lease. The Client extends it in the background until it
// is released or lost. Use Token as a fencing token on every write to the
// protected resource, and stop writing when Done closes.
type Lease struct {
	c *Client
	h *held
}

// held is the state the extension loop keeps for a lease. It must never
// reference the *Lease, so that a Lease dropped without Release becomes
// unreachable and its cleanup releases it.
type held struct {
	c     *Client
	key   string // items[0].Key: the one extends and releases name
	items []Item // every key, as asked
	token uint64
	ttl   time.Duration
	value []byte
	// lockDelay is the acquire's LockDelay: a lease lost with one is left
	// to expire into it, never released (see Client.end).
	lockDelay time.Duration

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	// expiring receives a value (without blocking) each time the remaining
	// validity falls below the threshold without a successful extend.
	expiring chan struct{}

	mu         sync.Mutex
	validUntil time.Time // monotonic
	lastSent   time.Time // send time of the latest successful acquire or extend
	warned     bool      // expiring fired since the last successful extend
	err        error     // why it ended; nil while held
	// unreleased: Release ended the lease but could not delete its record
	// (a background release is trying; a later Release tries again).
	unreleased bool

	// unguard unlocks the local guards of items, once: when the record
	// is released, or given up on (see Client.end).
	unguard sync.Once
}

// Key returns the leased key (the first key of a set).
func (l *Lease) Key() string { return l.h.key }

// Keys returns every key of the lease, in the order they were asked for
// (one key unless it came from AcquireSet).
func (l *Lease) Keys() []string {
	out := make([]string, len(l.h.items))
	for i, it := range l.h.items {
		out[i] = it.Key
	}
	return out
}

// Items returns every key of the lease with the shape it is held in.
func (l *Lease) Items() []Item { return slices.Clone(l.h.items) }

// Token returns the fencing token: the Raft index of the grant, strictly
// increasing per key and cluster-wide. Send it with every write to the
// protected resource, which must refuse tokens lower than the highest it
// has seen (see Fence), so a holder that was paused past its lease cannot
// overwrite its successor's work. Every key of a set has this token (they
// were granted by one entry).
func (l *Lease) Token() uint64 { return l.h.token }

// TokenFor returns the fencing token of key: Token if key is one of the
// lease's keys, else 0. Fence and CheckToken take it per key.
func (l *Lease) TokenFor(key string) uint64 {
	for _, it := range l.h.items {
		if it.Key == key {
			return l.h.token
		}
	}
	return 0
}

// Value returns the value attached at acquire.
func (l *Lease) Value() []byte { return l.h.value }

// TTL returns the lease's TTL.
func (l *Lease) TTL() time.Duration { return l.h.ttl }

// ValidUntil is the moment, on this process's monotonic clock, until which
// the lease is certainly held: the send time of the last successful
// acquire or extend plus the TTL (plus the time a queued grant waited at
// the leader), shortened by the drift bound. While the lease is held it
// only moves later, with each successful extend.
//
// When the lease ends, ValidUntil becomes the moment it ended, if that is
// earlier: the moment Release was called, or the moment the client
// declared the lease lost (a little before the old ValidUntil: see Done),
// and no reply arriving later moves it again. So a write gated on
// time.Now().Before(l.ValidUntil()) stops no later than the client
// stopped believing. The background release that follows a loss is sent
// only after the old ValidUntil has passed, so a value read before the
// loss stays true too: nobody else can be granted the key before it.
func (l *Lease) ValidUntil() time.Time {
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	return l.h.validUntil
}

// Remaining returns how long the lease is certainly held (0 when ended).
func (l *Lease) Remaining() time.Duration {
	if !l.IsHealthy() {
		return 0
	}
	return max(time.Until(l.ValidUntil()), 0)
}

// IsHealthy reports whether the lease is still certainly held: not
// released, not lost, and within its validity right now.
func (l *Lease) IsHealthy() bool {
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	return l.h.err == nil && time.Now().Before(l.h.validUntil)
}

// Done is closed when the lease ends: released, or lost (validity ran out
// without a successful extend, or the cluster refused an extend). A lease
// that cannot be extended is declared lost shortly before ValidUntil (by
// TTL/20, at most 100 ms, to absorb timer latency), so Done closes by
// ValidUntil and long before any other holder can be granted the key.
func (l *Lease) Done() <-chan struct{} { return l.h.done }

// Context returns a context cancelled when the lease ends; its cause is
// Err. Run the work the lease protects under it. The context keeps the
// Lease reachable: work that holds only the context is not cut short by
// the release of a dropped Lease.
func (l *Lease) Context() context.Context { return context.WithValue(l.h.ctx, leaseKey{}, l) }

// leaseKey is the context key under which Context keeps its Lease.
type leaseKey struct{}

// Expiring receives a value each time the remaining validity falls below
// the client's expiring threshold (default TTL/3) without a successful
// extend: the lease is in danger (the DynamoDB Lock Client's danger zone,
// Chubby's jeopardy). Finish or checkpoint the work; Done follows if
// extends keep failing.
func (l *Lease) Expiring() <-chan struct{} { return l.h.expiring }

// Err returns nil while the lease is held, then why it ended: ErrReleased
// or an error matching ErrLeaseLost.
func (l *Lease) Err() error {
	l.h.mu.Lock()
	defer l.h.mu.Unlock()
	return l.h.err
}

// Release ends the lease and deletes its record so the next waiter gets
// the key at once: from the call on, ValidUntil returns the moment of the
// call and IsHealthy is false. A goroutine of this Client waiting for the
// key goes on once the record is deleted, and queues behind other
// clients' waiters like anyone. If the delete fails (ctx ended, no
// leader), Release returns the error and the lease stays ended: the record
// is then released in the background, and calling Release again tries
// once more and reports the outcome. A deferred Release should not take a
// context that may be cancelled by then: give it
// context.WithoutCancel(ctx) or a fresh timeout. Releasing a lease that
// ended otherwise (lost, or released already) returns nil.
func (l *Lease) Release(ctx context.Context) error {
	h := l.h
	if !l.c.end(h, ErrReleased, false) {
		h.mu.Lock()
		again := h.unreleased
		h.mu.Unlock()
		if !again {
			return nil
		}
	}
	err := l.c.releaseRecord(ctx, h)
	h.mu.Lock()
	retry := err != nil && !h.unreleased
	h.unreleased = err != nil
	h.mu.Unlock()
	// The guards open once the release was answered, or failed: a
	// goroutine of this Client waiting for the key then asks the cluster,
	// which queues it behind other clients' waiters even if the record
	// still lives. (Held any longer, a TryAcquire of this Client would be
	// refused "held" by its own guard while the key may be free.)
	l.c.unguard(h)
	if retry {
		l.c.releaseLater(h)
	}
	if err != nil && ctx.Err() != nil && retry {
		ended := ctx.Err()
		if cause := context.Cause(ctx); cause != ended {
			ended = fmt.Errorf("%w: %w", ended, cause)
		}
		return fmt.Errorf("%w (the context ended: %w); the release is retried in the background for up to its TTL (%v)", err, ended, h.ttl)
	}
	return err
}

// Info is one holding of a key as the cluster reports it.
type Info struct {
	Key    string
	Holder string // empty while the key is in lock-delay
	Token  uint64
	TTL    time.Duration
	Value  []byte
	// LockDelay is set when this record only blocks the key after an
	// expiry (it keeps its place in its shape until the delay ends).
	LockDelay bool
	// Remaining is the time left by the leader's clock when read; advisory
	// only, never a basis for safety.
	Remaining time.Duration
	// Delay is the holding's lock-delay: how long the key stays blocked
	// after the holding expires (0: none). While LockDelay is set,
	// Remaining already counts to its end.
	Delay time.Duration
	// Shared and Semaphore say how the holding shares the key (Semaphore
	// is the n of a semaphore; neither: exclusive).
	Shared    bool
	Semaphore int
	// SetKeys are the keys of the multi-key lease this holding belongs to
	// (all of them hold Token), nil if it was acquired alone.
	SetKeys []string
}

func infoFromPB(l *pb.Lease) Info {
	info := Info{
		Key: l.GetKey(), Holder: l.GetHolder(), Token: l.GetToken(), TTL: l.GetTtl().AsDuration(),
		Value: l.GetValue(), LockDelay: l.GetState() == pb.LeaseState_LEASE_STATE_LOCK_DELAY,
		Remaining: l.GetRemaining().AsDuration(), Delay: l.GetLockDelay().AsDuration(), SetKeys: l.GetSetKeys(),
	}
	switch l.GetMode() {
	case pb.LeaseMode_LEASE_MODE_SHARED:
		info.Shared = true
	case pb.LeaseMode_LEASE_MODE_SEMAPHORE:
		info.Semaphore = int(l.GetLimit())
	}
	return info
}

// run is the Client's one background loop: it extends every held lease in
// one batched request per tick, retries failures with back-off until each
// lease's validity runs out, fires Expiring, and ends leases whose validity
// passed (Done closes, then a best-effort release).
func (c *Client) run() {
	defer c.loopWG.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	results := make(chan extendOutcome, 1)
	inFlight := false
	var retryAt time.Time // after a failed extend: not before this
	var lastErr error     // of the latest extend, if it failed
	bo := c.backoff()
	for {
		now := time.Now()
		next := now.Add(time.Hour)
		var due, ripe []*held
		c.mu.Lock()
		hs := make([]*held, 0, len(c.held))
		for h := range c.held {
			hs = append(hs, h)
		}
		c.mu.Unlock()
		for _, h := range hs {
			h.mu.Lock()
			valid, last := h.validUntil, h.lastSent
			h.mu.Unlock()
			// End the lease a little before its validity so that Done has
			// closed by ValidUntil despite timer latency.
			endAt := valid.Add(-lossGuard(h.ttl))
			if !now.Before(endAt) {
				c.end(h, lostErr(lastErr), true)
				continue
			}
			next = earlier(next, endAt)
			threshold := c.opts.expiring
			if threshold == 0 {
				threshold = h.ttl / 3
			}
			if warnAt := valid.Add(-threshold); !now.Before(warnAt) {
				h.mu.Lock()
				if !h.warned {
					h.warned = true
					select {
					case h.expiring <- struct{}{}:
					default:
					}
				}
				h.mu.Unlock()
			} else {
				next = earlier(next, warnAt)
			}
			interval := c.opts.extend
			if interval == 0 {
				interval = h.ttl / 3
			}
			age := now.Sub(last)
			switch {
			case age >= interval:
				due = append(due, h)
			case age >= interval/2:
				ripe = append(ripe, h)
				next = earlier(next, last.Add(interval))
			default:
				next = earlier(next, last.Add(interval))
			}
		}
		// Coalesce: when any lease is due, extend every lease past half its
		// interval too, so that leases acquired at different times fall
		// into one phase and a tick costs one request.
		if len(due) > 0 {
			due = append(due, ripe...)
		}
		if len(due) > 0 && !inFlight {
			if now.Before(retryAt) {
				next = earlier(next, retryAt)
			} else {
				inFlight = true
				c.loopWG.Add(1)
				go c.extend(due, results)
			}
		}
		timer.Reset(max(time.Until(next), 0))
		select {
		case <-c.stop:
			return
		case <-c.kick:
		case <-timer.C:
		case out := <-results:
			inFlight = false
			lastErr = out.err
			if out.err != nil {
				retryAt = time.Now().Add(bo.next())
				c.log.Debug("extend failed; retrying", "leases", len(out.leases), "err", out.err)
			} else {
				bo.reset(c.opts.backoffMin)
				retryAt = time.Time{}
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// lostErr is the error of a lease whose validity ran out: ErrLeaseLost,
// with the last extend's failure if there was one.
func lostErr(last error) error {
	if last == nil {
		return fmt.Errorf("%w: no extend succeeded before its validity ended", ErrLeaseLost)
	}
	return fmt.Errorf("%w: no extend succeeded before its validity ended (last: %v)", ErrLeaseLost, last)
}

// lossGuard is how long before ValidUntil a lease is declared lost, to
// absorb timer and scheduling latency on a loaded host: 1/20 of the TTL,
// at most 100 ms. Giving up early is always safe.
func lossGuard(ttl time.Duration) time.Duration { return min(ttl/20, 100*time.Millisecond) }

type extendOutcome struct {
	leases []*held
	err    error
}

// One Extend request (and so one Raft entry) carries at most
// extendChunkItems keys and extendChunkBytes of encoded body: well inside
// a node's default limits (node.Limits: 10,000 items, 4 MiB per request),
// whatever the key sizes, and below the size past which a node reads a
// body only with room in its node-wide pool of large bodies (256 KiB,
// node/api.go bigBodyBytes). A client holding 4,100 leases of 110-byte
// keys sent chunks of about 490 KB, which waited for that room; attackers
// trickling 4 MB bodies held it, and the client lost every lease
// (outsider review s35). A chunk of at most 64 KiB is never one of them.
const (
	extendChunkItems = 4096
	extendChunkBytes = 64 << 10
)

// extendItem is h's item in a named Extend.
func extendItem(h *held) *pb.ExtendItem { return &pb.ExtendItem{Key: h.key, Token: h.token} }

// extendItemBytes is the most an Extend item of h adds to the encoded
// request: the item (its key and token) with its field tag (at most 2
// bytes: field numbers below 2,048) and length prefix.
func extendItemBytes(h *held) int {
	n := proto.Size(extendItem(h))
	return 2 + protowire.SizeVarint(uint64(n)) + n
}

// firstChunk is the longest prefix of leases (at least one) within
// maxItems keys (every key of a multi-key lease counts: the node bounds
// the keys an extend renews) and whose request, base bytes of it without
// items (the holder), encodes to at most extendChunkBytes.
func firstChunk(leases []*held, maxItems, base int) []*held {
	size, keys := base, 0
	for i, h := range leases {
		size += extendItemBytes(h)
		keys += max(len(h.items), 1)
		if i > 0 && (keys > maxItems || size > extendChunkBytes) {
			return leases[:i]
		}
	}
	return leases
}

// chunkKeys is the keys leases renew (every key of a multi-key lease).
func chunkKeys(leases []*held) int {
	n := 0
	for _, h := range leases {
		n += max(len(h.items), 1)
	}
	return n
}

// tooLarge reports whether the cluster refused a request for its size or
// number of items (a node's --max-extend-items or --max-request-bytes set
// below what this client sends), and for nothing else: other refusals
// must not shrink the batches.
func tooLarge(err error) bool {
	if connect.CodeOf(err) == connect.CodeResourceExhausted && reasonOf(err) == pb.Reason_REASON_UNSPECIFIED {
		// Over --max-request-bytes, refused before the request is read
		// (so without a reason). Not --max-waiters (REASON_RESOURCE_EXHAUSTED)
		// nor --max-lease-bytes (REASON_INVALID): a smaller batch would
		// not help.
		return true
	}
	return reasonOf(err) == pb.Reason_REASON_INVALID && strings.Contains(err.Error(), "--max-extend-items")
}

// extend sends one batched Extend for leases (chunked if huge) and applies
// the results: an extended lease is valid until this request's send time
// plus its TTL, shortened by drift; a lease the cluster says is not held
// ends at once with ErrLeaseLost. A chunk refused as too large is sent
// again at once in halves, and the client keeps the smaller size.
func (c *Client) extend(leases []*held, out chan<- extendOutcome) {
	defer c.loopWG.Done()
	var firstErr error
	if done, err := c.extendAll(); done {
		leases, firstErr = nil, err
	}
	for len(leases) > 0 {
		req := &pb.ExtendRequest{Holder: c.opts.holder}
		chunk := firstChunk(leases, int(c.extendItems.Load()), proto.Size(req))
		req.Items = make([]*pb.ExtendItem, len(chunk))
		for i, h := range chunk {
			req.Items[i] = extendItem(h)
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(c.closing, c.requestTimeout(chunk)) // Close ends it: it releases the leases anyway
		resp, err := c.b.Extend(ctx, req)
		cancel()
		if err == nil {
			c.noteRTT(time.Since(sent))
		}
		if err != nil && len(chunk) > 1 && tooLarge(err) {
			// extendItems counts keys (firstChunk): half the chunk's
			// keys, not half its leases (review s32b: two 64-key sets
			// refused made it 1, for good).
			half := int64(chunkKeys(chunk) / 2)
			if c.extendItems.Load() > half {
				c.extendItems.Store(half)
				c.log.Warn("the cluster refused an extend as too large; sending fewer leases per request", "leases", len(chunk), "now", half, "err", err)
			}
			continue
		}
		leases = leases[len(chunk):]
		if err != nil {
			firstErr = errors.Join(firstErr, err)
			continue
		}
		for i, r := range resp.GetResults() {
			if i >= len(chunk) {
				break
			}
			h := chunk[i]
			if !r.GetOk() {
				c.end(h, fmt.Errorf("%w: the cluster says %q is no longer held with token %d (it expired, or was released or taken over)", ErrLeaseLost, h.key, h.token), true)
				c.unguard(h) // the cluster holds no record of it: nothing for a new acquire to replace
				continue
			}
			c.extended(h, sent)
		}
	}
	select {
	case out <- extendOutcome{leases: leases, err: firstErr}:
	case <-c.stop:
	}
}

// maxAllSkip is the most keepalive rounds sent lease by lease after sums
// were answered no: a cluster that predates Extend by sum is asked again
// about once a minute with the default 15 s TTL, and so starts to save
// the work soon after it is upgraded.
const maxAllSkip = 16

// extendAll extends every lease of the Client with one small request,
// the sum of their (least key, token) units (pb.HoldingSum): the leader
// extends them all if they are exactly the holder's live leases in the
// cluster, in one Raft entry that names none of them (fsm.ExtendAll). A
// keepalive round then costs the same for ten thousand leases as for
// one. A sum is sent only when a second round trip (the latest measured)
// still fits in the shortest validity, so that a no leaves time to name
// the leases. It reports whether the round is done: yes when every lease
// was extended, or when the request failed (err: the round failed, and is
// retried with back-off as a per-lease round would be); no when the
// cluster answered no (it holds a lease the Client has given up on, or
// has not learnt of yet, or has ended one the Client still counts; or it
// predates Extend by sum), and then the round names the leases, which
// says which ones ended. After a no, the next 1, 2, 4 … maxAllSkip
// rounds name their leases without asking.
func (c *Client) extendAll() (done bool, err error) {
	if c.allSkip > 0 {
		c.allSkip--
		return false, nil
	}
	c.mu.Lock()
	all := make([]*held, 0, len(c.held))
	for h := range c.held {
		all = append(all, h)
	}
	c.mu.Unlock()
	var sum holdset.Sum
	live := all[:0]
	minTTL := time.Duration(1<<63 - 1)
	for _, h := range all {
		h.mu.Lock()
		ended := h.err != nil
		h.mu.Unlock()
		if !ended {
			live = append(live, h)
			sum.Add(h.unit(), h.token)
			minTTL = min(minTTL, h.ttl)
		}
	}
	if sum.Count < 2 || int64(sum.Count) > c.extendItems.Load() {
		return false, nil // one lease costs the same named; too many go in chunks
	}
	// The attempt's bound (at most half the shortest validity left).
	left := c.requestTimeout(live)
	if c.lastRTT == 0 || left < 2*c.lastRTT+lossGuard(minTTL) {
		// A no would leave no time to name them after it (a slow link,
		// or a round trip not measured yet): name them now. Stop 31's
		// adversarial review lost leases so at a round trip of a
		// quarter of their TTL, which named rounds kept.
		return false, nil
	}
	sent := time.Now()
	ctx, cancel := context.WithTimeout(c.closing, left)
	resp, err := c.b.Extend(ctx, &pb.ExtendRequest{Holder: c.opts.holder,
		All: &pb.HoldingSum{Count: sum.Count, Digest: sum.Digest}})
	cancel()
	if err == nil {
		c.noteRTT(time.Since(sent))
	}
	switch {
	case err == nil && resp.GetAllExtended():
		c.allMisses = 0
		for _, h := range live {
			c.extended(h, sent)
		}
		return true, nil
	case err != nil && reasonOf(err) != pb.Reason_REASON_INVALID && connect.CodeOf(err) != connect.CodeInvalidArgument:
		return true, err // unanswered: the round failed, whatever it named
	}
	// No (or refused by a server that predates it): name them.
	c.allSkip = min(1<<c.allMisses, maxAllSkip)
	c.allMisses = min(c.allMisses+1, 8)
	return false, nil
}

// unit is the key that names h's grant in a sum: its least key.
func (h *held) unit() string {
	k := h.key
	for _, it := range h.items {
		k = min(k, it.Key)
	}
	return k
}

// extended records a successful extend of h sent at sent: valid until
// sent plus its TTL, shortened by drift; a lease that ended meanwhile
// (lost or released while the reply was on its way) keeps the validity
// end left it.
func (c *Client) extended(h *held, sent time.Time) {
	valid := c.validity(sent, h.ttl)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return
	}
	if valid.After(h.validUntil) {
		h.validUntil = valid
	}
	// Only a success moves the schedule: a lease whose extend failed
	// stays due and is retried after the back-off.
	h.lastSent = sent
	h.warned = false
}

// requestTimeout bounds one extend attempt of hs, so that a node that
// takes the request and never answers it (a leader whose disk hangs,
// still answering liveness checks) leaves time for at least two more
// attempts, at other nodes, before the leases are lost: at most 10 s, a
// third of the shortest TTL, and half the shortest validity left. One
// attempt of min(10 s, validity left) used a 15 s lease's whole validity
// at such a leader, and a healthy leader elected 6 s in was never asked
// (adversarial review s35).
//
// A slow link still gets its answers: the bound is never below twice
// the link's round trip (baseRTT), nor minExtendAttempt, and before any
// extend was answered (no round trip known) it is never below two
// thirds of the validity left, which still leaves room for one more
// attempt; extends that take a third of the TTL keep their leases (stop
// 31's review: 400 ms at a 1 s TTL). It is never above the validity
// left: waiting longer is pointless.
func (c *Client) requestTimeout(hs []*held) time.Duration {
	d := maxExtendAttempt
	left := time.Duration(math.MaxInt64)
	for _, h := range hs {
		h.mu.Lock()
		d = min(d, h.ttl/3)
		left = min(left, time.Until(h.validUntil))
		h.mu.Unlock()
	}
	d = min(d, left/2)
	base := c.baseRTT()
	floor := max(minExtendAttempt, 2*base)
	if base == 0 {
		floor = max(floor, left*2/3)
	}
	return max(d, min(floor, left), minExtendAttempt/2)
}

// noteRTT records an answered extend's round trip.
func (c *Client) noteRTT(d time.Duration) {
	c.lastRTT = max(d, time.Nanosecond)
	c.rtts[c.rttAt] = c.lastRTT
	c.rttAt = (c.rttAt + 1) % len(c.rtts)
}

// baseRTT is the link's round trip as the latest answered extends tell
// it: the least of them (0 before any). A slow link's are all slow; one
// slow commit (a disk slowing before it hangs) is not the link, and, as
// the floor of requestTimeout, let the next attempt of a 15 s lease with
// 10 s left take 8 s, leaving room for one more attempt, not two
// (adversarial review s36).
func (c *Client) baseRTT() time.Duration {
	var base time.Duration
	for _, d := range c.rtts {
		if d > 0 && (base == 0 || d < base) {
			base = d
		}
	}
	return base
}

// An extend attempt waits at most maxExtendAttempt, and at least
// minExtendAttempt while the validity lasts (see Client.requestTimeout).
const (
	maxExtendAttempt = 10 * time.Second
	minExtendAttempt = 100 * time.Millisecond
)

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
