package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// heldUpCopy holds the first waiting Acquire back, as a paused node that
// received it would, until the caller gives up; the test delivers it late.
type heldUpCopy struct {
	lease.Backend
	stash      chan *pb.AcquireRequest
	old        bool // answer Abandon as a cluster that predates it
	abandons   int
	heldUpOnce bool
}

func (b *heldUpCopy) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if r.GetWait() && !b.heldUpOnce {
		b.heldUpOnce = true
		b.stash <- r
		<-ctx.Done()
		return nil, ctx.Err() // sent, no reply: its outcome is unknown
	}
	return b.Backend.Acquire(ctx, r)
}

func (b *heldUpCopy) Abandon(ctx context.Context, r *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	b.abandons++
	if b.old {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("leasenode.v1.LeaseService/Abandon is not implemented"))
	}
	return b.Backend.Abandon(ctx, r)
}

// TestAbandonedAcquireLateCopyNeverGranted: AcquireTimeout gives up while
// its attempt is held up on the way to the leader (a paused forwarding
// node) and reports the key held by its holder. When the copy reaches the
// leader afterwards, it must not be granted: the client said "held by
// another", so a grant to it now would be one the cluster made and the
// client denied (a linearizability violation; with the retry that settled
// abandoned acquires before Abandon, the copy queued and took the key at
// the holder's release).
func TestAbandonedAcquireLateCopyNeverGranted(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	_, f := c.Follower()
	holder, err := lease.New(l)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	first, err := holder.TryAcquire(ctxT(t, 10*time.Second), "late", lease.TTL(time.Minute))
	if err != nil || first == nil {
		t.Fatalf("first holder: %v, %v", first, err)
	}
	b := &heldUpCopy{Backend: f, stash: make(chan *pb.AcquireRequest, 1)}
	cl, err := lease.New(b, lease.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())

	got, err := cl.AcquireTimeout(ctxT(t, 10*time.Second), "late", 200*time.Millisecond, lease.TTL(time.Minute))
	var he *lease.HeldError
	if got != nil || !errors.As(err, &he) || he.Holder != holder.Holder() || !errors.Is(err, lease.ErrTimeout) {
		t.Fatalf("AcquireTimeout of a held key: %v, %v; want a timeout naming holder %s", got, err, holder.Holder())
	}
	if b.abandons == 0 {
		t.Fatal("the client settled without Abandon")
	}
	var late *pb.AcquireRequest
	select {
	case late = <-b.stash:
	case <-time.After(10 * time.Second):
		t.Fatal("no attempt was held up")
	}
	// The held-up copy reaches the leader now, waits there, and the holder
	// releases.
	res := make(chan error, 1)
	go func() {
		resp, err := f.Acquire(ctxT(t, 10*time.Second), late)
		if err == nil && resp.GetGranted() {
			err = errors.New("granted")
		}
		res <- err
	}()
	if err := first.Release(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, node.ErrStaleRequest) {
			t.Fatalf("the late copy of an acquire answered %q: %v; want %v", err, err, node.ErrStaleRequest)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the late copy got no answer")
	}
	g, err := l.Get(ctxT(t, 10*time.Second), &pb.GetRequest{Key: "late"})
	if err != nil {
		t.Fatal(err)
	}
	if g.GetFound() && g.GetLease().GetHolder() == cl.Holder() {
		t.Fatalf("the client was told the key is held by %s, and now holds it", holder.Holder())
	}
}

// TestAbandonOnAnOlderCluster: a cluster that predates Abandon answers it
// Unimplemented; the client settles as before, with a non-waiting retry of
// the same id, and releases a grant it finds.
func TestAbandonOnAnOlderCluster(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	holder, err := lease.New(l)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	first, err := holder.TryAcquire(ctxT(t, 10*time.Second), "older", lease.TTL(time.Minute))
	if err != nil || first == nil {
		t.Fatalf("first holder: %v, %v", first, err)
	}
	b := &heldUpCopy{Backend: l, stash: make(chan *pb.AcquireRequest, 1), old: true}
	cl, err := lease.New(b, lease.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	got, err := cl.AcquireTimeout(ctxT(t, 10*time.Second), "older", 200*time.Millisecond, lease.TTL(time.Minute))
	var he *lease.HeldError
	if got != nil || !errors.As(err, &he) || he.Holder != holder.Holder() || b.abandons == 0 {
		t.Fatalf("AcquireTimeout of a held key on an older cluster: %v, %v (%d abandons); want a timeout naming %s",
			got, err, b.abandons, holder.Holder())
	}
}
