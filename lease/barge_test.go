package lease_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// bargeSetup: client a (its backend cuttable) holds "k" with ttl, and
// client b waits for it at the leader. bgot gets b's outcome.
func bargeSetup(t *testing.T, ttl, retry time.Duration) (a *lease.Client, cb *cutExt, l *lease.Lease, bgot chan error) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, f := c.Follower()
	cb = &cutExt{Backend: f}
	a, err := lease.New(cb, lease.WithTTL(ttl), lease.WithRetryTimeout(retry))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(context.Background()) })
	b, err := lease.New(f, lease.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	if l, err = a.Acquire(ctxT(t, 10*time.Second), "k"); err != nil {
		t.Fatal(err)
	}
	bgot = make(chan error, 1)
	go func() {
		lb, err := b.Acquire(ctxT(t, 30*time.Second), "k")
		if lb != nil {
			lb.Release(ctxT(t, 5*time.Second))
		}
		bgot <- err
	}()
	waitWaiters(t, c, 1)
	return a, cb, l, bgot
}

// A Release that fails opens the Client's guard while its record may
// still be live: the same Client's next TryAcquire must not take the key
// ahead of a client already queued for it (fifo-no-barging; found by a
// review of 0a1ef23).
func TestFailedReleaseDoesNotBargeAhead(t *testing.T) {
	a, cb, l, bgot := bargeSetup(t, 5*time.Second, 500*time.Millisecond)
	cb.releasesCut.Store(true) // the release fails (e.g. no leader for a moment)
	if err := l.Release(ctxT(t, 5*time.Second)); err == nil {
		t.Fatal("Release succeeded with releases cut")
	}
	// b has queued first; a must not get the key now. (A leader change
	// on a busy machine can leave an attempt's outcome unknown within a's
	// short retry timeout: ask again, as a caller would.)
	var (
		la  *lease.Lease
		err error
	)
	ctx := ctxT(t, 20*time.Second)
	for la, err = a.TryAcquire(ctx, "k"); ctx.Err() == nil && (errors.Is(err, lease.ErrUnknownOutcome) || errors.Is(err, lease.ErrNoLeader)); {
		la, err = a.TryAcquire(ctx, "k")
	}
	if err != nil {
		t.Fatal(err)
	}
	if la != nil {
		info, _ := a.Get(ctxT(t, 5*time.Second), "k")
		t.Errorf("a barged ahead of queued b: TryAcquire granted token %d (old %d), record %+v; b still waiting", la.Token(), l.Token(), info)
		cb.releasesCut.Store(false)
		la.Release(ctxT(t, 5*time.Second))
	}
	cb.releasesCut.Store(false)
	recvErr(t, bgot, 20*time.Second, "b acquire")
}

// The same for a lease lost locally (its validity ran out, extends
// failing) while its record lives on in the cluster.
func TestLostLeaseDoesNotBargeAhead(t *testing.T) {
	a, cb, l, bgot := bargeSetup(t, 3*time.Second, time.Second)
	cb.extendsCut.Store(true)
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("not lost")
	}
	la, err := a.TryAcquire(ctxT(t, 10*time.Second), "k")
	if err != nil {
		t.Fatal(err)
	}
	if la != nil {
		t.Errorf("a barged ahead of queued b after local loss: token %d (old %d)", la.Token(), l.Token())
		cb.extendsCut.Store(false)
		la.Release(ctxT(t, 5*time.Second))
	}
	cb.extendsCut.Store(false)
	recvErr(t, bgot, 20*time.Second, "b acquire")
}

// cutExt fails Extend and Release calls while cut.
type cutExt struct {
	lease.Backend
	extendsCut  atomic.Bool
	releasesCut atomic.Bool
}

func (b *cutExt) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if b.extendsCut.Load() {
		return nil, errors.New("test: extends cut")
	}
	return b.Backend.Extend(ctx, r)
}

func (b *cutExt) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	if b.extendsCut.Load() || b.releasesCut.Load() {
		return nil, errors.New("test: releases cut")
	}
	return b.Backend.Release(ctx, r)
}
