package lease_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// A lease with LockDelay is lost (its extends are cut) and left to
// expire into its lock-delay. At its ValidUntil the leader's record is
// still live (its expiry is later by the drift bound and a trip), and an
// acquire of the same Client would replace that holding at once, with no
// lock-delay; its release then freed the key for another client 6-53 ms
// after the old validity instead of after the delay (adversarial review
// of 94d7944). The Client keeps its guard until the cluster no longer
// holds the lost lease live.
func TestLostLeaseGuardsItsLockDelayFromItsOwnClient(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	cb := &cutExtends{Backend: n}
	const ttl = 2 * time.Second
	const delay = 3 * time.Second
	// A drift bound of 20% widens the window (ValidUntil .. leader's
	// expiry) to ~400 ms; at the default 1% it is ~TTL/100 plus a round
	// trip (600 ms for a 60 s TTL).
	drift := 0.2
	if v, err := strconv.ParseFloat(os.Getenv("LEASE_TEST_DRIFT"), 64); err == nil {
		drift = v
	}
	a, err := lease.New(cb, lease.WithTTL(ttl), lease.WithDriftBound(drift),
		lease.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	const key = "guard/lockdelay"
	l, err := a.Acquire(ctxT(t, 10*time.Second), key, lease.LockDelay(delay))
	if err != nil {
		t.Fatal(err)
	}
	grantedAt := time.Now()
	cb.cut.Store(true)
	read := l.ValidUntil()
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("never lost")
	}
	// Another goroutine of the same Client (one Client per process is the
	// documented use) takes the key again as soon as its guard opens.
	var l2 *lease.Lease
	for l2 == nil && time.Since(read) < 5*time.Second {
		l2, err = a.TryAcquire(ctxT(t, 5*time.Second), key)
		if err != nil {
			t.Fatal(err)
		}
		if l2 == nil {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if l2 == nil {
		return // the guard held until the lost lease's lock-delay began
	}
	t.Logf("A granted again %v after its old ValidUntil (token %d -> %d)", time.Since(read).Round(time.Millisecond), l.Token(), l2.Token())
	if err := l2.Release(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	lb, err := b.TryAcquire(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if lb == nil {
		return // the lock-delay held
	}
	defer lb.Release(context.Background())
	// The lost lease expires at the leader no earlier than grantedAt+ttl*(1-0.2);
	// its lock-delay runs for `delay` after that.
	if gap := time.Since(read); gap < delay {
		t.Errorf("B granted %v after A's lost lease's ValidUntil (%v after its grant), lock-delay %v skipped: tokens A %d, A-again %d, B %d",
			gap.Round(time.Millisecond), time.Since(grantedAt).Round(time.Millisecond), delay, l.Token(), l2.Token(), lb.Token())
	}
}

// failReleases fails every Release while fail is set, as a cluster
// without a leader would.
type failReleases struct {
	lease.Backend
	fail atomic.Bool
}

func (b *failReleases) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	if b.fail.Load() {
		return nil, &lease.NotSentError{Err: errCut}
	}
	return b.Backend.Release(ctx, r)
}

// Release fails (its ctx ends while the cluster is unreachable), so the
// record is released in the background; the cluster comes back and Close
// is called with a generous ctx. Close releases every lease of its Client,
// those whose Release failed included: it returned nil at once and
// cancelled the background release, and the key stayed held for the rest
// of its TTL (adversarial review of 94d7944).
func TestCloseReleasesWhatReleaseCouldNot(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, n := c.Leader()
	fb := &failReleases{Backend: n}
	a, err := lease.New(fb, lease.WithTTL(10*time.Second), lease.WithBackoff(300*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	l, err := a.Acquire(ctxT(t, 5*time.Second), "close/failed")
	if err != nil {
		t.Fatal(err)
	}
	fb.fail.Store(true)
	rctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err = l.Release(rctx)
	cancel()
	t.Logf("Release: %v", err)
	fb.fail.Store(false) // the cluster is reachable again
	start := time.Now()
	if err := a.Close(ctxT(t, 10*time.Second)); err != nil {
		t.Logf("Close: %v", err)
	}
	took := time.Since(start)
	b, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	info, err := b.Get(ctxT(t, 5*time.Second), "close/failed")
	if err != nil {
		t.Fatal(err)
	}
	if info != nil {
		t.Errorf("Close returned (nil error, after %v) with the released lease still held in the cluster by %s for %v more",
			took.Round(time.Millisecond), info.Holder, info.Remaining.Round(time.Millisecond))
	}
}
