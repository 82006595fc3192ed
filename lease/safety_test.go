package lease_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// cutExtends fails every Extend while cut is set; releases get through.
type cutExtends struct {
	lease.Backend
	cut atomic.Bool
	// lose applies extends but loses their replies: the leader's expiry
	// runs up to a TTL past the validity the client knows.
	lose atomic.Bool
}

func (b *cutExtends) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if b.lose.Load() {
		b.Backend.Extend(ctx, r)
		return nil, errCut
	}
	if b.cut.Load() {
		return nil, errCut
	}
	return b.Backend.Extend(ctx, r)
}

// cutOff starts a 3-node cluster and two clients of one follower: a, with
// TTL ttl and a quick back-off, whose extends stop reaching the cluster
// once cb.cut is set (its other requests still do), and b.
func cutOff(t *testing.T, ttl time.Duration) (a *lease.Client, cb *cutExtends, b *lease.Client) {
	t.Helper()
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	cb = &cutExtends{Backend: n}
	a, err := lease.New(cb, lease.WithTTL(ttl), lease.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(context.Background()) })
	if b, err = lease.New(n); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return a, cb, b
}

// Invariant client-validity: every ValidUntil a client ever reports for a
// lease is before the moment another client is granted the key. Scenario:
// A's extends stop reaching the cluster (its releases still do); B waits
// for the key. A reports
// ValidUntil continuously until B is granted; no reading may reach past
// B's grant. (Before the fix, A declared the lease lost TTL/20 early and
// released it at once, so B was granted while A's ValidUntil was still
// ~90 ms in the future.)
func TestValidUntilNeverPastTheNextGrant(t *testing.T) {
	a, cb, b := cutOff(t, 2*time.Second)
	la, err := a.Acquire(ctxT(t, 10*time.Second), "vu")
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu     sync.Mutex
		latest time.Time // the latest ValidUntil A reported
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			v := la.ValidUntil()
			mu.Lock()
			if v.After(latest) {
				latest = v
			}
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	cb.cut.Store(true)
	lb, err := b.Acquire(ctxT(t, 20*time.Second), "vu")
	grantedAt := time.Now()
	close(stop)
	select {
	case <-sampled:
	case <-time.After(5 * time.Second):
		t.Fatal("sampler did not stop")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release(ctxT(t, 5*time.Second))
	mu.Lock()
	defer mu.Unlock()
	if !latest.Before(grantedAt) {
		t.Fatalf("client-validity: A reported ValidUntil %v after B's grant", latest.Sub(grantedAt))
	}
	if v := la.ValidUntil(); !v.Before(grantedAt) || la.IsHealthy() {
		t.Fatalf("after the loss: ValidUntil %v (grant at %v), healthy %v", v, grantedAt, la.IsHealthy())
	}
	t.Logf("A's last reported validity ended %v before B's grant", grantedAt.Sub(latest))
}

// heldExtend lets one Extend reach the cluster only when released, so its
// (successful) reply lands after the client has given the lease up.
type heldExtend struct {
	lease.Backend
	hold    atomic.Bool
	arrived chan struct{} // an extend is being held
	resume  chan struct{} // lets it through
	once    sync.Once
}

func (b *heldExtend) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if b.hold.Load() {
		b.once.Do(func() { close(b.arrived) })
		select {
		case <-b.resume:
		case <-time.After(30 * time.Second):
			return nil, errors.New("test: held extend never resumed")
		}
		return b.Backend.Extend(context.WithoutCancel(ctx), r)
	}
	return b.Backend.Extend(ctx, r)
}

// Invariant client-validity: a successful extend reply that arrives after
// the lease ended does not move ValidUntil (it moved it 334 ms later in
// the review that found this).
func TestLateExtendReplyDoesNotReviveValidity(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	hb := &heldExtend{Backend: n, arrived: make(chan struct{}), resume: make(chan struct{})}
	a, err := lease.New(hb, lease.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	l, err := a.Acquire(ctxT(t, 10*time.Second), "late")
	if err != nil {
		t.Fatal(err)
	}
	hb.hold.Store(true)
	select {
	case <-hb.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("no extend was sent")
	}
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("lease not lost while its extend was held")
	}
	ended := l.ValidUntil()
	close(hb.resume)
	// Wait until the held extend has completed (the loop moves on to the
	// lease's release once nothing is held any more).
	nodetest.Eventually(t, 10*time.Second, func() error {
		info, err := a.Get(ctxT(t, 5*time.Second), "late")
		if err != nil {
			return err
		}
		if info != nil {
			return errors.New("lease still recorded; waiting for the late extend and the release")
		}
		return nil
	})
	if v := l.ValidUntil(); v.After(ended) || l.IsHealthy() {
		t.Fatalf("client-validity: a late extend reply moved ValidUntil from %v to %v (healthy %v)", ended, v, l.IsHealthy())
	}
}

// A holder names one Client instance: two Clients given the same holder
// name (a process and its restarted or duplicated self) are different
// holders, so the second waits for the first's live lease instead of
// replacing it with a new token (it did, before holders had incarnations).
func TestReusedHolderNameDoesNotTakeOver(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	a, err := lease.New(n, lease.WithHolder("worker-1"), lease.WithTTL(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := lease.New(n, lease.WithHolder("worker-1"), lease.WithTTL(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if a.Holder() == b.Holder() || a.HolderName() != "worker-1" || b.HolderName() != "worker-1" {
		t.Fatalf("holders %q and %q (names %q, %q): want one name, two holders", a.Holder(), b.Holder(), a.HolderName(), b.HolderName())
	}
	la, err := a.Acquire(ctxT(t, 10*time.Second), "job")
	if err != nil {
		t.Fatal(err)
	}
	if lb, err := b.TryAcquire(ctxT(t, 10*time.Second), "job"); lb != nil || err != nil {
		t.Fatalf("single-holder: restarted holder got %v (err %v) while the old one holds token %d, healthy %v",
			lb, err, la.Token(), la.IsHealthy())
	}
	_, err = b.AcquireTimeout(ctxT(t, 10*time.Second), "job", 500*time.Millisecond)
	if !errors.Is(err, lease.ErrTimeout) || !la.IsHealthy() {
		t.Fatalf("waiting second holder: %v; first still healthy: %v", err, la.IsHealthy())
	}
	if err := la.Release(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Acquire(ctxT(t, 10*time.Second), "job")
	if err != nil || lb.Token() <= la.Token() {
		t.Fatalf("after release: %v %v", lb, err)
	}
}

// lostFirstReply applies the first Acquire and loses its reply; before
// that reply is "lost" it waits (for until) so that the grant can end
// unseen, as it does when a partition outlasts the TTL.
type lostFirstReply struct {
	lease.Backend
	calls    atomic.Int64
	applied  chan struct{} // closed once the first Acquire was applied
	answered chan struct{} // closed by the test once the call returned
	until    func() bool
}

func (b *lostFirstReply) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	resp, err := b.Backend.Acquire(ctx, r)
	if b.calls.Add(1) > 1 || err != nil {
		return resp, err
	}
	close(b.applied)
	for !b.until() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil, context.DeadlineExceeded // the reply was lost
}

// An acquire whose grant ended before any reply reached the client (the
// reply lost, the grant expired unseen) has an unknown outcome: it was
// granted, so the call may not report a refusal, and it may not go on with
// a new request id, which would make one call two grants. Found by a
// 3-node TLS campaign (partition-halves): a waiter's grant expired while
// its reply was lost, the retry met the spent id, the client renewed the
// id and reported "held by" the next holder, while another client had
// already been refused "held by" this one.
func TestSpentRequestIDIsUnknownOutcome(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	other, err := lease.New(l)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	b := &lostFirstReply{Backend: l, applied: make(chan struct{}), answered: make(chan struct{})}
	b.until = func() bool {
		g, err := l.Get(context.Background(), &pb.GetRequest{Key: "spent"})
		return err == nil && g.GetFound() && g.GetLease().GetHolder() == other.Holder()
	}
	cl, err := lease.New(b, lease.WithTTL(time.Second), lease.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	// Once the lost grant has expired, another client takes the key and
	// keeps it.
	done := make(chan error, 1)
	go func() {
		select {
		case <-b.applied:
		case <-time.After(20 * time.Second):
			done <- errors.New("the first acquire was never applied")
			return
		}
		lo, err := other.Acquire(ctxT(t, 20*time.Second), "spent", lease.TTL(time.Minute))
		if err == nil {
			defer lo.Release(context.Background())
			<-b.answered // deadline: the TryAcquire's own (ctxT)
		}
		done <- err
	}()
	got, err := cl.TryAcquire(ctxT(t, 20*time.Second), "spent")
	close(b.answered)
	if got != nil || !errors.Is(err, lease.ErrUnknownOutcome) || errors.Is(err, lease.ErrHeld) {
		t.Fatalf("TryAcquire after its grant ended unseen: %v, %v; want ErrUnknownOutcome, not a refusal or a new grant", got, err)
	}
	t.Logf("as wanted: %v", err)
	if err := recvErr(t, done, 30*time.Second, "the other client's grant"); err != nil {
		t.Fatal(err)
	}
}
