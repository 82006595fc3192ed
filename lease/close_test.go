package lease_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

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
