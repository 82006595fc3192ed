package lease_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// Invariant client-validity, through the Client's own next acquire: a
// Lease dropped without Release keeps its key for the validity read from
// it, against other clients (TestDroppedLeaseKeepsItsValidity) and against
// its own Client too. The same holder's new acquire would replace the live
// holding on the server at once, and the release of that new Lease would
// hand the key to another client while code that read the dropped Lease's
// ValidUntil may still act on it.
func TestDroppedLeaseGuardsItsValidity(t *testing.T) {
	n, cl := soloClient(t)
	other, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	validUntil := func() time.Time {
		l, err := cl.Acquire(ctxT(t, 5*time.Second), "dropped/own", lease.TTL(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return l.ValidUntil()
	}()
	l2 := reacquire(t, cl, "dropped/own", validUntil)
	if left := time.Until(validUntil); left > 0 {
		t.Errorf("its own Client was granted the key again (token %d) with %v left of the validity read from the dropped Lease",
			l2.Token(), left.Round(time.Millisecond))
	}
	if err := l2.Release(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	l3, err := other.TryAcquire(ctxT(t, 5*time.Second), "dropped/own")
	if err != nil || l3 == nil {
		t.Fatalf("another client after the release: %v %v", l3, err)
	}
	defer l3.Release(context.Background())
	if left := time.Until(validUntil); left > 0 {
		t.Errorf("another client was granted the key with %v left of the validity read from the dropped Lease", left.Round(time.Millisecond))
	}
}

// The same for a lease declared lost (its extends failed): it is declared
// lost a little before its ValidUntil (lossGuard), and a value read before
// the loss stays true, for this Client's next acquire too.
func TestLostLeaseGuardsItsValidity(t *testing.T) {
	a, cb, _ := cutOff(t, time.Second)
	read := acquireAndLose(t, a, cb, "lost/own")
	la2 := reacquire(t, a, "lost/own", read)
	defer la2.Release(context.Background())
	if left := time.Until(read); left > 0 {
		t.Errorf("its own Client was granted the key again %v before the ValidUntil read before the loss", left.Round(time.Millisecond))
	}
}

// acquireAndLose acquires key with a (of cutOff), cuts its extends and
// waits until the lease is declared lost; it returns the ValidUntil read
// before the cut. The Lease stays reachable until it is lost (a dropped
// one would end otherwise), and its Err must say why it was lost.
func acquireAndLose(t *testing.T, a *lease.Client, cb *cutExtends, key string, opts ...lease.AcquireOption) time.Time {
	t.Helper()
	l, err := a.Acquire(ctxT(t, 10*time.Second), key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	cb.cut.Store(true)
	read := l.ValidUntil()
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the lease was never declared lost", key)
	}
	if err := l.Err(); !errors.Is(err, lease.ErrLeaseLost) || !strings.Contains(err.Error(), "no extend succeeded") {
		t.Fatalf("%s: Err %v, want ErrLeaseLost saying why", key, err)
	}
	return read
}

// reacquire tries key with cl until granted (collecting garbage between
// tries, so that a dropped Lease's cleanup runs), giving up 5 s after
// validUntil.
func reacquire(t *testing.T, cl *lease.Client, key string, validUntil time.Time) *lease.Lease {
	t.Helper()
	for time.Now().Before(validUntil.Add(5 * time.Second)) {
		runtime.GC()
		l, err := cl.TryAcquire(ctxT(t, 5*time.Second), key)
		if err != nil {
			t.Fatal(err)
		}
		if l != nil {
			return l
		}
		time.Sleep(10 * time.Millisecond) // poll
	}
	t.Fatalf("%s: never granted again", key)
	return nil
}

// LockDelay protects the writes of a holder that lost its lease without
// noticing. A client that declares its lease lost (its extends failed)
// leaves it to expire at the leader into its lock-delay: a release, which
// would reach the leader before that expiry, would end it plainly and
// free the key at once.
func TestLostLeaseKeepsItsLockDelay(t *testing.T) {
	a, cb, b := cutOff(t, time.Second)
	const delay = 2 * time.Second
	lostAt := acquireAndLose(t, a, cb, "lost/delay", lease.LockDelay(delay))
	grantedAfterLockDelay(t, b, "lost/delay", lostAt, delay)
}

// grantedAfterLockDelay has b wait for key, and checks that it was
// granted no sooner than delay after lostAt, the validity of the lost
// lease: the leader's expiry is no earlier than that validity, and the
// lock-delay follows it.
func grantedAfterLockDelay(t *testing.T, b *lease.Client, key string, lostAt time.Time, delay time.Duration) {
	t.Helper()
	lb, err := b.AcquireTimeout(ctxT(t, 20*time.Second), key, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release(context.Background())
	if gap := time.Since(lostAt); gap < delay {
		t.Errorf("B was granted %v after A's validity ended: the lock-delay of %v was skipped", gap.Round(time.Millisecond), delay)
	}
}

// The lost lease's lock-delay holds against its own Client too: the
// Client's guard opens at the validity it read, while the leader's record
// still lives (by the drift bound and a trip, a whole TTL if an extend's
// reply was lost). Its next acquire must not replace that holding (which
// would end it with no lock-delay) and then free the key for another
// client by releasing the new one (stop 28's adversarial review: B
// granted 6-53 ms after A's validity instead of 3 s after). The cluster
// answers it held, by its own holder, until the lock-delay ended. Here
// A's extends are applied but their replies lost, so the leader's record
// outlives A's validity by up to a TTL.
func TestLostLeaseKeepsItsLockDelayFromItsOwnClient(t *testing.T) {
	a, cb, b := cutOff(t, time.Second)
	const delay = 2 * time.Second
	cb.lose.Store(true)
	lostAt := acquireAndLose(t, a, cb, "lost/own-delay", lease.LockDelay(delay))
	cb.cut.Store(false)
	cb.lose.Store(false)
	la2 := reacquire(t, a, "lost/own-delay", lostAt.Add(delay))
	if gap := time.Since(lostAt); gap < delay {
		t.Errorf("its own Client was granted the key again %v after the lost lease's validity: the lock-delay of %v was skipped", gap.Round(time.Millisecond), delay)
	}
	if err := la2.Release(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	grantedAfterLockDelay(t, b, "lost/own-delay", lostAt, delay)
}

// A grant that waited W in the leader's queue is valid for
// sent + (W + TTL)(1 - drift): the drift is counted over the wait too, so
// after a wait of about TTL/drift the grant would arrive with no validity
// left (at the default 1%, 100 TTLs: 17 minutes for a 10 s TTL). Acquire
// restarts such a grant's TTL (the same request id, sent again without
// waiting), so its validity is measured from a send after the wait ended.
// Here a drift bound of 45% makes a wait of 2.5 TTLs long enough.
func TestLongWaitGrantArrivesHealthy(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	const ttl = time.Second
	a, err := lease.New(n, lease.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := lease.New(n, lease.WithTTL(ttl), lease.WithDriftBound(0.45), lease.WithExpiringThreshold(ttl/10))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	la, err := a.Acquire(ctxT(t, 5*time.Second), "long/wait")
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan time.Time, 1)
	release := time.AfterFunc(5*ttl/2, func() { // the wait under test
		released <- time.Now()
		la.Release(context.Background())
	})
	defer release.Stop()
	lb, err := b.Acquire(ctxT(t, 30*time.Second), "long/wait")
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release(context.Background())
	var at time.Time
	select {
	case at = <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("granted before the holder released")
	}
	if !lb.ValidUntil().After(at) {
		t.Errorf("after a wait of 2.5 TTLs Acquire returned a lease valid until %v before the wait ended (healthy %v, err %v)",
			at.Sub(lb.ValidUntil()).Round(time.Millisecond), lb.IsHealthy(), lb.Err())
	}
}

// Work run under a Lease's Context, with only the context kept, is not
// cut short by the cleanup of the dropped Lease: the context keeps the
// Lease reachable.
func TestContextKeepsItsLease(t *testing.T) {
	_, cl := soloClient(t)
	ctx := func() context.Context {
		l, err := cl.Acquire(ctxT(t, 5*time.Second), "ctx/only", lease.TTL(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return l.Context()
	}()
	for range 5 {
		runtime.GC()
	}
	if ctx.Err() != nil {
		t.Fatalf("the work's context was cancelled (%v) by the cleanup of a Lease it came from", context.Cause(ctx))
	}
}

// lateGrants answers the first late Acquire calls only after the TTL
// has passed since they were sent: an overloaded cluster that granted
// in time but answered late.
type lateGrants struct {
	lease.Backend
	ttl  time.Duration
	late atomic.Int32 // how many more answers come late
}

func (b *lateGrants) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	sent := time.Now()
	resp, err := b.Backend.Acquire(ctx, r)
	if err == nil && resp.GetGranted() && b.late.Add(-1) >= 0 {
		// Fault injection: the answer is held up past the grant's TTL.
		select {
		case <-time.After(time.Until(sent.Add(b.ttl + 50*time.Millisecond))):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return resp, err
}

// A grant whose answer comes after the validity it gives is never handed
// out with a nil error (the outsider review: Acquire returned a lease 919
// ms past its validity, with a token older than the next holder's). A
// TryAcquire fails with ErrLeaseLost and releases the grant; a waiting
// Acquire asks again and returns a live lease.
func TestGrantAnsweredAfterItsValidityIsNotHandedOut(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Leader()
	const ttl = time.Second
	b := &lateGrants{Backend: n, ttl: ttl}
	cl, err := lease.New(b, lease.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())

	b.late.Store(1)
	l, err := cl.TryAcquire(ctxT(t, 10*time.Second), "late/try")
	if !errors.Is(err, lease.ErrLeaseLost) || l != nil {
		t.Fatalf("TryAcquire answered after the TTL: %v, %v; want ErrLeaseLost and no lease", l, err)
	}
	if info, err := cl.Get(ctxT(t, 10*time.Second), "late/try"); err != nil || info != nil {
		t.Fatalf("the late grant was not released: %+v, %v", info, err)
	}

	b.late.Store(1)
	l, err = cl.Acquire(ctxT(t, 10*time.Second), "late/wait")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	if !l.IsHealthy() || time.Until(l.ValidUntil()) <= 0 {
		t.Fatalf("Acquire returned a lease valid until %v (%v from now), healthy %v", l.ValidUntil(), time.Until(l.ValidUntil()), l.IsHealthy())
	}
}
