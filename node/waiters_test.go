package node_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// holderOf returns who holds key by the leader's consistent read.
// spinFor busy-waits up to max microseconds (a random share of it), to
// vary which of two racing goroutines goes first.
func spinFor(max int) {
	until := time.Now().Add(time.Duration(rand.IntN(max)) * time.Microsecond)
	for time.Now().Before(until) {
	}
}

func holderOf(t *testing.T, n *node.Node, key string) string {
	t.Helper()
	var resp *pb.GetResponse
	nodetest.Eventually(t, 10*time.Second, func() error { // through an election, if one is on
		var err error
		resp, err = n.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: key})
		return err
	})
	if !resp.Found || resp.Lease.State != pb.LeaseState_LEASE_STATE_HELD {
		return ""
	}
	return resp.Lease.Holder
}

// Invariant waiter-outcome: a waiter whose caller leaves while the
// handoff entry granting it is in flight is told ErrUnknownOutcome, never
// "not granted"; and a grant whose waiter left never blocks the key for a
// TTL: the node withdraws it, even when the releaser that proposed the
// handoff gave up too. Each round releases the key to a waiter while both
// the waiter's and the releaser's contexts end at random instants 0-6 ms
// later, so many rounds land inside the handoff's commit. The leader's
// change feed (Watch) tells whether the waiter was really granted. (Before
// the fix the waiter was told "gave up waiting: context canceled" while
// its grant committed, and with the releaser gone nobody released it.)
func TestAbandonedWaiterGrantIsWithdrawn(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	events, err := l.Watch(wctx, &pb.WatchRequest{Prefix: "abandon/"})
	if err != nil {
		t.Fatal(err)
	}
	grantedB := make(chan string, 100) // keys granted to the waiter "b"
	go func() {
		for e := range events {
			if e.Type == pb.EventType_EVENT_TYPE_GRANTED && e.Lease.GetHolder() == "b" {
				grantedB <- e.Lease.GetKey()
			}
		}
	}()
	const ttl = time.Minute
	unknown, granted, refused := 0, 0, 0
	for round := range 40 {
		key := fmt.Sprintf("abandon/%02d", round)
		held := mustGrant(t, l, acq(key, "a", 1, ttl))
		ctx, cancel := context.WithCancel(context.Background())
		rctx, rcancel := context.WithCancel(context.Background())
		type result struct {
			resp *pb.AcquireResponse
			err  error
		}
		done := make(chan result, 1)
		go func() {
			req := acq(key, "b", 1, ttl)
			req.Wait = true
			resp, err := l.Acquire(ctx, req)
			done <- result{resp, err}
		}()
		nodetest.Eventually(t, 10*time.Second, func() error {
			select {
			case r := <-done:
				t.Fatalf("round %d: the waiting acquire returned before it waited: %+v, %v", round, r.resp, r.err)
			default:
			}
			if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != 1 {
				return fmt.Errorf("%d waiters", st.Waiters)
			}
			return nil
		})
		go func() { spinFor(6000); cancel() }()
		go func() { spinFor(6000); rcancel() }()
		if _, err := l.Release(rctx, &pb.ReleaseRequest{Key: key, Holder: "a", Token: held.Token}); err != nil {
			// The releaser gave up; make sure a's release happened.
			if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: key, Holder: "a", Token: held.Token}); err != nil {
				t.Fatal(err)
			}
		}
		var r result
		select {
		case r = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("waiter never answered")
		}
		switch {
		case r.err == nil && r.resp.Granted:
			granted++ // its caller heard of it
			if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: key, Holder: "b", Token: r.resp.Token}); err != nil {
				t.Fatal(err)
			}
		case errors.Is(r.err, node.ErrUnknownOutcome):
			unknown++
		case r.err != nil:
			refused++
			// Told "not granted": then it must not have been granted.
			// (The feed has applied the handoff entry by the time the
			// next grant below is applied.)
			mustGrant(t, l, acq(key, "probe", 1, time.Second))
			select {
			case k := <-grantedB:
				if k == key {
					t.Fatalf("round %d: the waiter was told %q, but the key was granted to it", round, r.err)
				}
			case <-time.After(100 * time.Millisecond):
			}
			mustRelease(t, l, key, "probe")
		default:
			t.Fatalf("round %d: %+v", round, r.resp)
		}
		// Whatever happened, the key is free for the next acquirer well
		// within the TTL: a grant the waiter never heard of is withdrawn.
		nodetest.Eventually(t, 5*time.Second, func() error {
			if h := holderOf(t, l, key); h != "" {
				return fmt.Errorf("%s still held by %s", key, h)
			}
			return nil
		})
		nodetest.Eventually(t, 5*time.Second, func() error {
			resp, err := l.Acquire(ctxT(t, 5*time.Second), acq(key, "c", 1, ttl))
			if err != nil || !resp.Granted {
				return fmt.Errorf("c not granted %s: %v %v", key, resp, err)
			}
			return nil
		})
	drain:
		for {
			select {
			case <-grantedB:
			default:
				break drain
			}
		}
	}
	t.Logf("40 rounds: %d granted, %d unknown outcome (withdrawn), %d not granted", granted, unknown, refused)
}

func mustRelease(t *testing.T, n *node.Node, key, holder string) {
	t.Helper()
	resp, err := n.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: key})
	if err != nil || !resp.Found {
		t.Fatalf("get %s: %v %v", key, resp, err)
	}
	if _, err := n.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: key, Holder: holder, Token: resp.Lease.Token}); err != nil {
		t.Fatal(err)
	}
}

// A grant in flight when leadership is lost is settled by the next leader:
// the waiter hears ErrUnknownOutcome (its caller has gone), and the node it
// asked withdraws the grant through the new leader, so the key does not
// stay blocked for the TTL.
func TestWithdrawAcrossLeaderChange(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, l := c.Leader()
	fi, f := c.Follower()
	const ttl = time.Minute
	held := mustGrant(t, l, acq("x", "a", 1, ttl))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req := acq("x", "b", 1, ttl)
		req.Wait = true
		_, err := f.Acquire(ctx, req) // through a follower: the follower withdraws
		done <- err
	}()
	nodetest.Eventually(t, 5*time.Second, func() error {
		if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != 1 {
			return fmt.Errorf("%d waiters", st.Waiters)
		}
		return nil
	})
	// The release and the grant go out in one entry; cut the leader off
	// at once so the entry's fate is decided by the next leader.
	go l.Release(context.Background(), &pb.ReleaseRequest{Key: "x", Holder: "a", Token: held.Token})
	var others []int
	for i := range c.Size() {
		if i != li {
			others = append(others, i)
		}
	}
	c.Partition([]int{li}, others)
	cancel() // the client gives up
	var granted bool
	select {
	case err := <-done:
		if granted = err == nil; granted {
			t.Log("the waiter was granted, and told so, before the partition")
		} else {
			t.Logf("waiter: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("waiter never answered")
	}
	c.Heal()
	_ = fi
	_, nl := c.Leader()
	if granted {
		// A grant its waiter was told of is its own: never withdrawn (on a
		// busy machine the grant can beat the partition).
		if h := holderOf(t, nl, "x"); h != "b" {
			t.Fatalf("x held by %q after the waiter was answered its grant; want b", h)
		}
		return
	}
	nodetest.Eventually(t, 15*time.Second, func() error {
		if h := holderOf(t, nl, "x"); h == "b" {
			return errors.New("x still held by the waiter that left")
		}
		return nil
	})
}

// Scenario (found by a jepsen campaign under leader pauses): a leader's
// proposal of an acquire loses its outcome with its leadership, the
// client's retry of the same request is granted afresh by the next leader
// and answered, and then the old leader's withdrawal arrives. It must not
// release that grant: the key went to a third client at once while the
// holder still believed it held. The withdrawal names the epoch of the
// lost proposal; only a grant made in that epoch is released.
func TestWithdrawLeavesAnotherEpochsGrant(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	spent := func(key string) func() error {
		return func() error {
			if m, ok := l.FSM().Mark(key, "h"); !ok || !m.Ended {
				return fmt.Errorf("withdrawal of %s not applied yet (mark %+v)", key, m)
			}
			return nil
		}
	}
	held := mustGrant(t, l, acq("epoch/a", "h", 7, time.Minute))
	granted, _ := l.FSM().Get("epoch/a")
	epoch, other := granted.GrantEpoch, granted.GrantEpoch-1 // a proposal lost in an earlier epoch
	if other == 0 {
		other = epoch + 1 // (0 would name no epoch)
	}
	l.Withdraw("epoch/a", "h", 7, other, 0)
	nodetest.Eventually(t, 10*time.Second, spent("epoch/a"))
	if got, ok := l.FSM().Get("epoch/a"); !ok || got.Holder != "h" || got.Token != held.Token {
		t.Fatalf("the grant of epoch %d was released by the withdrawal of epoch %d's proposal: %+v", epoch, other, got)
	}
	mustGrant(t, l, acq("epoch/b", "h", 7, time.Minute))
	l.Withdraw("epoch/b", "h", 7, epoch, 0) // this epoch's proposal: it is the grant
	nodetest.Eventually(t, 10*time.Second, func() error {
		if got, ok := l.FSM().Get("epoch/b"); ok {
			return fmt.Errorf("epoch/b still held: %+v", got)
		}
		return nil
	})
}

// Scenario (campaign H3 of stop 22, 3½ min in): a client's attempt at an
// acquire was held up in a stopped node; the client gave up on it and was
// granted the key by a retry of the same request. When the stopped node
// woke, it forwarded the held copy to the leader with its caller already
// gone, so the leader lost the copy's outcome and withdrew "its" grant,
// naming only the request and its epoch. The Cancel got into the log ahead
// of the copy and released the grant the client had been answered with;
// the key went to another client while the first still held it. Now a
// leader withdraws only a fresh grant made by the very entry whose outcome
// it lost, once it knows what that entry did; and a withdrawal naming its
// entry's index releases only the grant that entry made.
func TestWithdrawOnlyWhatTheLostEntryGranted(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	settled := func(t *testing.T) {
		t.Helper()
		nodetest.Eventually(t, 10*time.Second, func() error {
			if _, pending := l.Withdrawals(); pending != 0 {
				return fmt.Errorf("%d lost outcomes and withdrawals still in flight", pending)
			}
			return nil
		})
	}
	stillHeld := func(t *testing.T, key string, token uint64) {
		t.Helper()
		if got, ok := l.FSM().Get(key); !ok || got.State != fsm.StateHeld || got.Holder != "h" || got.Token != token {
			t.Fatalf("%s: the grant the holder was answered with (token %d) is gone: %+v", key, token, got)
		}
	}
	gone := func(t *testing.T, key string) {
		t.Helper()
		nodetest.Eventually(t, 10*time.Second, func() error {
			if got, ok := l.FSM().Get(key); ok && got.State == fsm.StateHeld {
				return fmt.Errorf("%s still held: %+v", key, got)
			}
			return nil
		})
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	// A copy whose caller left while it was in flight: a context already
	// done is refused before anything is proposed, so this one says it
	// is alive when the node first asks.
	left := func() context.Context { return &leftInFlight{Context: done} }

	t.Run("a late copy of an answered request", func(t *testing.T) {
		held := mustGrant(t, l, acq("lost/answered", "h", 1, time.Minute))
		before, _ := l.Withdrawals()
		if _, err := l.Acquire(left(), acq("lost/answered", "h", 1, time.Minute)); !errors.Is(err, node.ErrUnknownOutcome) {
			t.Fatalf("copy with its caller gone: %v, want %v", err, node.ErrUnknownOutcome)
		}
		settled(t)
		if after, _ := l.Withdrawals(); after != before {
			t.Fatalf("%d withdrawals for a copy that only repeated an answered grant", after-before)
		}
		stillHeld(t, "lost/answered", held.Token)
	})
	t.Run("a fresh grant nobody heard of", func(t *testing.T) {
		before, _ := l.Withdrawals()
		if _, err := l.Acquire(left(), acq("lost/fresh", "h", 1, time.Minute)); !errors.Is(err, node.ErrUnknownOutcome) {
			t.Fatalf("acquire with its caller gone: %v, want %v", err, node.ErrUnknownOutcome)
		}
		settled(t)
		if after, _ := l.Withdrawals(); after != before+1 {
			t.Fatalf("%d withdrawals of a fresh grant whose outcome was lost, want 1", after-before)
		}
		gone(t, "lost/fresh")
	})
	t.Run("a withdrawal naming another entry", func(t *testing.T) {
		held := mustGrant(t, l, acq("lost/index", "h", 1, time.Minute))
		granted, _ := l.FSM().Get("lost/index")
		l.Withdraw("lost/index", "h", 1, granted.GrantEpoch, held.Token+1) // a later copy's entry
		settled(t)
		stillHeld(t, "lost/index", held.Token)
		l.Withdraw("lost/index", "h", 1, granted.GrantEpoch, held.Token) // the entry that granted it
		gone(t, "lost/index")
	})
}

// Scenario (campaign H3 of stop 20, 34 min in): a client gave up waiting
// for a key and settled the outcome as lease.Client does, asking once more
// with the same request id without waiting, while its waiting attempt was
// still queued at the leader (the leader had not yet seen the caller
// leave). The retry was refused Held on account of the queue, the client
// reported "held by w2", and the queued attempt was granted a moment
// later when w2 released. A retry of a queued request is that request: a
// refusal must mean the waiting attempt will not be granted either, and a
// grant of it must be the retry's answer. Rounds race the holder's release
// against the retry, so the waiting attempt is found queued or in flight.
func TestRetryOfQueuedWaiterIsJudgedAlone(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	refused, granted := 0, 0
	for round := range 30 {
		key := fmt.Sprintf("retry/%02d", round)
		var retry *pb.AcquireResponse
		raceQueuedAttempt(t, l, l, key, func() {
			var err error
			if retry, err = l.Acquire(ctxT(t, 10*time.Second), acq(key, "b", 1, raceTTL)); err != nil {
				t.Fatalf("round %d: retry: %v", round, err)
			}
		})
		// Both attempts are settled: the key's state is final.
		switch h := holderOf(t, l, key); {
		case retry.Granted:
			granted++
			if h != "b" {
				t.Fatalf("round %d: the retry was granted, but %q holds the key", round, h)
			}
		case h == "b":
			t.Fatalf("round %d: the retry was refused (held by %q), but the waiting attempt was granted afterwards", round, retry.Holder)
		default:
			refused++
		}
	}
	t.Logf("retry granted in %d rounds, refused in %d", granted, refused)
}

// raceTTL is the TTL of the leases raceQueuedAttempt grants.
const raceTTL = time.Minute

// raceQueuedAttempt sets up a holder's settling of an attempt that waits
// at the leader l: "a" holds key, and request 1 of "b" waits for it,
// through via, for a caller that has left (nobody reads its answer). Then
// a's release races settle (b's retry or Abandon of request 1), so the
// waiting attempt is found queued or in flight; it returns once the
// release and the waiting attempt are answered too, when the key's state
// is final.
func raceQueuedAttempt(t *testing.T, l, via *node.Node, key string, settle func()) {
	t.Helper()
	held := mustGrant(t, l, acq(key, "a", 1, raceTTL))
	waiting := make(chan error, 1)
	go func() {
		req := acq(key, "b", 1, raceTTL)
		req.Wait = true
		_, err := via.Acquire(ctxT(t, 20*time.Second), req)
		waiting <- err
	}()
	nodetest.Eventually(t, 5*time.Second, func() error {
		if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != 1 {
			return fmt.Errorf("%d waiters", st.Waiters)
		}
		return nil
	})
	released := make(chan error, 1)
	go func() {
		spinFor(3000)
		_, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: key, Holder: "a", Token: held.Token})
		released <- err
	}()
	spinFor(3000)
	settle()
	for _, ch := range []chan error{released, waiting} {
		select {
		case err := <-ch:
			if ch == released && err != nil {
				t.Fatalf("%s: release: %v", key, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no answer", key)
		}
	}
}

// leftInFlight is a done context whose first Err says it is not: a caller
// that left after its request was admitted.
type leftInFlight struct {
	context.Context
	asked atomic.Bool
}

func (c *leftInFlight) Err() error {
	if !c.asked.Swap(true) {
		return nil
	}
	return c.Context.Err()
}

// endingCtx is a context whose Err reports it ended once end is set,
// while its Done channel never closes: the instant an acquire's grant and
// the end of its caller's context arrive together, held open.
type endingCtx struct {
	context.Context
	end atomic.Bool
}

func (c *endingCtx) Err() error {
	if c.end.Load() {
		return context.Canceled
	}
	return c.Context.Err()
}

// A waiting acquire granted as its caller left is never answered
// "granted": over the API that answer is never written (the connection
// or stream is gone), and the grant held the key for its whole TTL,
// nobody knowing of it (outsider review s36: waiting acquires whose
// clients gave up after 20-320 ms left a key held for 30 s). It is told
// ErrUnknownOutcome, and the grant is withdrawn.
func TestGrantAsItsCallerLeavesIsWithdrawn(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	mustGrant(t, l, acq("ghost", "a", 1, time.Minute))
	ctx := &endingCtx{Context: context.Background()}
	done := make(chan error, 1)
	go func() {
		req := acq("ghost", "b", 1, time.Minute)
		req.Wait = true
		resp, err := l.Acquire(ctx, req)
		if err == nil {
			err = fmt.Errorf("answered %v", resp)
		}
		done <- err
	}()
	nodetest.Eventually(t, 5*time.Second, func() error {
		if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != 1 {
			return fmt.Errorf("%d waiters", st.Waiters)
		}
		return nil
	})
	ctx.end.Store(true)
	mustRelease(t, l, "ghost", "a")
	select {
	case err := <-done:
		if !errors.Is(err, node.ErrUnknownOutcome) {
			t.Fatalf("a waiter whose caller left as it was granted: %v, want ErrUnknownOutcome", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not answered")
	}
	nodetest.Eventually(t, 5*time.Second, func() error {
		if h := holderOf(t, l, "ghost"); h != "" {
			return fmt.Errorf("ghost still held by %s", h)
		}
		return nil
	})
}

// The withdrawal of a grant whose caller left names the request as the
// caller sent it, whatever the caller does with its message afterwards:
// an embedded lease.Client renews a spent id in the message it sent, and
// the withdrawal, which reads the request once the proposal resolves,
// spent that new id instead, the one the client then held its live grant
// by (adversarial review s38: the client lost the grant and its place in
// the queue).
func TestWithdrawalNamesTheRequestAsSent(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	release := l.StallLogWrites()
	t.Cleanup(release)
	req := acq("alias", "h", 1, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := l.Acquire(ctx, req)
	cancel()
	if !errors.Is(err, node.ErrUnknownOutcome) {
		t.Fatalf("an acquire whose caller left while its entry was in flight: %v, want ErrUnknownOutcome", err)
	}
	req.RequestId = 2 // the caller's next id, in the message it sent
	release()
	nodetest.Eventually(t, 10*time.Second, func() error {
		if started, pending := l.Withdrawals(); started == 0 || pending > 0 {
			return fmt.Errorf("withdrawals: %d started, %d pending", started, pending)
		}
		if h := holderOf(t, l, "alias"); h != "" {
			return fmt.Errorf("alias still held by %s", h)
		}
		return nil
	})
	resp, err := l.Acquire(ctxT(t, 10*time.Second), acq("alias", "h", 2, time.Minute))
	if err != nil || !resp.GetGranted() {
		t.Fatalf("request id 2, never sent before: %v %v; want granted (the withdrawal of id 1 must not spend it)", resp, err)
	}
}

// cutFirstWait cuts its first waiting Acquire attempt after cutAfter, as
// a connection reset or a follower ending its forward does: the node sees
// the attempt's caller leave, the client a lost reply, which it retries
// with the same request id. cut is closed once the cut attempt returned.
type cutFirstWait struct {
	lease.Backend
	cutAfter time.Duration
	once     atomic.Bool
	cut      chan struct{}
}

func (b *cutFirstWait) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if !r.GetWait() || b.once.Swap(true) {
		return b.Backend.Acquire(ctx, r)
	}
	defer close(b.cut)
	actx, cancel := context.WithTimeout(ctx, b.cutAfter)
	defer cancel()
	resp, err := b.Backend.Acquire(actx, r)
	if err != nil && ctx.Err() == nil {
		return nil, errors.New("connection reset by peer (test)")
	}
	return resp, err
}

// A waiter whose attempt is cut short and retried (same request id)
// keeps its place in the queue: A waits first, B second, A's attempt is
// cut and retried at once; when the holder releases, A is granted first.
// (Adversarial review rev-adv37: the retry queued at the back, and B went
// first.)
func TestWaiterKeepsItsPlaceAcrossARetry(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	client := func(b lease.Backend, opts ...lease.Option) *lease.Client {
		cl, err := lease.New(b, append([]lease.Option{lease.WithTTL(10 * time.Second)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close(ctxT(t, 5*time.Second)) })
		return cl
	}
	held, err := client(l).Acquire(ctxT(t, 5*time.Second), "fifo")
	if err != nil {
		t.Fatal(err)
	}
	cutter := &cutFirstWait{Backend: l, cutAfter: 300 * time.Millisecond, cut: make(chan struct{})}
	a := client(cutter, lease.WithBackoff(time.Millisecond, 10*time.Millisecond))
	b := client(l)
	type result struct {
		who string
		l   *lease.Lease
		err error
	}
	out := make(chan result, 2)
	waiters := func(n int) {
		t.Helper()
		nodetest.Eventually(t, 10*time.Second, func() error {
			if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); int(st.GetWaiters()) != n {
				return fmt.Errorf("%d waiters, want %d", st.GetWaiters(), n)
			}
			return nil
		})
	}
	go func() {
		la, err := a.Acquire(ctxT(t, 30*time.Second), "fifo")
		out <- result{"A", la, err}
	}()
	waiters(1)
	go func() {
		lb, err := b.Acquire(ctxT(t, 30*time.Second), "fifo")
		out <- result{"B", lb, err}
	}()
	waiters(2)
	select {
	case <-cutter.cut:
	case <-time.After(10 * time.Second):
		t.Fatal("A's first attempt was never cut")
	}
	waiters(2) // A's retry queued again
	if err := held.Release(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	var first, second result
	for i, r := range []*result{&first, &second} {
		select {
		case *r = <-out:
		case <-time.After(20 * time.Second):
			t.Fatalf("acquire %d of 2 never returned", i+1)
		}
		if r.err != nil {
			t.Fatalf("%s: %v", r.who, r.err)
		}
		if err := r.l.Release(ctxT(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if first.who != "A" {
		t.Errorf("B, who began waiting after A, was granted first: A's retry went to the back of the queue")
	}
}

// A waiting acquire with max_wait leaves the leader's queue when that much
// has passed there, and is answered as a refused try (who holds the key),
// well before its call's deadline; the waiters behind it move up, and
// one granted within its max_wait is granted as any waiter.
func TestWaitingAcquireMaxWait(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	_, f := c.Follower()
	mustGrant(t, l, acq("k", "a", 1, time.Minute))
	impatient := acq("k", "b", 1, time.Minute)
	impatient.Wait, impatient.MaxWait = true, durationpb.New(200*time.Millisecond)
	start := time.Now()
	resp, err := f.Acquire(ctxT(t, 30*time.Second), impatient) // through a follower
	if err != nil || resp.Granted || resp.Holder != "a" {
		t.Fatalf("a waiter with max_wait 200ms, the key held: %v %v; want refused, naming a", resp, err)
	}
	t.Logf("answered after %v", time.Since(start).Round(time.Millisecond))

	// One that waits behind a patient waiter and outlasts its max_wait
	// leaves without taking the patient one's turn.
	patient := acq("k", "c", 1, time.Minute)
	patient.Wait = true
	got := make(chan *pb.AcquireResponse, 1)
	go func() {
		r, err := l.Acquire(ctxT(t, 30*time.Second), patient)
		if err != nil {
			t.Errorf("patient waiter: %v", err)
		}
		got <- r
	}()
	nodetest.Eventually(t, 10*time.Second, func() error {
		if st, _ := l.Status(ctxT(t, time.Second), &pb.StatusRequest{}); st.GetWaiters() != 1 {
			return fmt.Errorf("%d waiters", st.GetWaiters())
		}
		return nil
	})
	impatient.RequestId++
	if resp, err := l.Acquire(ctxT(t, 30*time.Second), impatient); err != nil || resp.Granted {
		t.Fatalf("second impatient waiter: %v %v; want refused", resp, err)
	}
	mustRelease(t, l, "k", "a")
	select {
	case r := <-got:
		if !r.GetGranted() {
			t.Fatalf("patient waiter: %v; want granted", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the patient waiter was not granted within 10s of the release")
	}
	// Free, the key is granted to a waiter with max_wait at once.
	mustRelease(t, l, "k", "c")
	impatient.RequestId++
	if resp, err := l.Acquire(ctxT(t, 30*time.Second), impatient); err != nil || !resp.Granted {
		t.Fatalf("a waiter with max_wait, the key free: %v %v; want granted", resp, err)
	}
}
