package lease_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// heldUpCopy holds the first Acquire back, as a paused node that received
// it would: its caller sees no reply (an unknown outcome), and the test
// delivers the copy to the leader late.
type heldUpCopy struct {
	lease.Backend
	stash    chan *pb.AcquireRequest
	old      bool // answer Abandon as a cluster that predates it
	abandons atomic.Int64
	heldUp   atomic.Bool
}

func (b *heldUpCopy) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if !b.heldUp.Swap(true) {
		b.stash <- proto.CloneOf(r)
		return nil, context.DeadlineExceeded // sent, no reply
	}
	return b.Backend.Acquire(ctx, r)
}

func (b *heldUpCopy) Abandon(ctx context.Context, r *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	b.abandons.Add(1)
	if b.old {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("leasenode.v1.LeaseService/Abandon is not implemented"))
	}
	return b.Backend.Abandon(ctx, r)
}

// holdKey has a new Client over n take key for a minute; the Client is
// closed when the test ends.
func holdKey(t *testing.T, n lease.Backend, key string) (*lease.Client, *lease.Lease) {
	t.Helper()
	holder, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Close(context.Background()) })
	first, err := holder.TryAcquire(ctxT(t, 10*time.Second), key, lease.TTL(time.Minute))
	if err != nil || first == nil {
		t.Fatalf("first holder of %s: %v, %v", key, first, err)
	}
	return holder, first
}

// heldUpClient is a Client over b that retries quickly; closed when the
// test ends.
func heldUpClient(t *testing.T, b *heldUpCopy) *lease.Client {
	t.Helper()
	cl, err := lease.New(b, lease.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(context.Background()) })
	return cl
}

// TestRefusedAcquireLateCopyNeverGranted: an acquire's first attempt is
// held up on the way to the leader (a paused forwarding node), its retry
// with the same id is refused (TryAcquire) or waits until the caller gives
// up (AcquireTimeout), and the client reports the key held by its holder.
// When the held-up copy reaches the leader afterwards and the holder
// releases, the copy must not be granted: a grant now would be one the
// cluster made and the client denied (a linearizability violation). Before
// Abandon, the copy was granted in both cases: the settling retry left the
// request id unspent, and a refusal was not settled at all.
func TestRefusedAcquireLateCopyNeverGranted(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	_, f := c.Follower()
	for _, tc := range []struct {
		name    string
		acquire func(cl *lease.Client, key string) (*lease.Lease, error)
	}{
		{"TryAcquire", func(cl *lease.Client, key string) (*lease.Lease, error) {
			return cl.TryAcquire(ctxT(t, 10*time.Second), key, lease.TTL(time.Minute))
		}},
		{"AcquireTimeout", func(cl *lease.Client, key string) (*lease.Lease, error) {
			return cl.AcquireTimeout(ctxT(t, 10*time.Second), key, 200*time.Millisecond, lease.TTL(time.Minute))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "late/" + tc.name
			holder, first := holdKey(t, l, key)
			b := &heldUpCopy{Backend: f, stash: make(chan *pb.AcquireRequest, 1)}
			cl := heldUpClient(t, b)

			got, err := tc.acquire(cl, key)
			var he *lease.HeldError
			switch {
			case got != nil:
				t.Fatalf("granted a held key: %v", got)
			case tc.name == "TryAcquire" && err != nil:
				t.Fatalf("TryAcquire of a held key: %v; want nil, nil", err)
			case tc.name != "TryAcquire" && (!errors.As(err, &he) || he.Holder != holder.Holder() || !errors.Is(err, lease.ErrTimeout)):
				t.Fatalf("AcquireTimeout of a held key: %v; want a timeout naming holder %s", err, holder.Holder())
			}
			if b.abandons.Load() == 0 {
				t.Fatal("the client settled without Abandon")
			}
			var late *pb.AcquireRequest
			select {
			case late = <-b.stash:
			default:
				t.Fatal("no attempt was held up")
			}
			// The held-up copy reaches the leader now, and the holder
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
					t.Fatalf("the late copy of the refused acquire answered %v; want %v", err, node.ErrStaleRequest)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the late copy got no answer")
			}
			g, err := l.Get(ctxT(t, 10*time.Second), &pb.GetRequest{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			if g.GetFound() && g.GetLease().GetHolder() == cl.Holder() {
				t.Fatalf("the client was refused the key (held by %s), and now holds it", holder.Holder())
			}
		})
	}
}

// TestAbandonOnAnOlderCluster: a cluster that predates Abandon answers it
// Unimplemented; the client settles as before, with a non-waiting retry of
// the same id, and releases a grant it finds.
func TestAbandonOnAnOlderCluster(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	holder, first := holdKey(t, l, "older")
	defer runtime.KeepAlive(first) // a dropped Lease is released at once
	b := &heldUpCopy{Backend: l, stash: make(chan *pb.AcquireRequest, 1), old: true}
	cl := heldUpClient(t, b)
	got, err := cl.AcquireTimeout(ctxT(t, 10*time.Second), "older", 200*time.Millisecond, lease.TTL(time.Minute))
	var he *lease.HeldError
	if got != nil || !errors.As(err, &he) || he.Holder != holder.Holder() || b.abandons.Load() == 0 {
		t.Fatalf("AcquireTimeout of a held key on an older cluster: %v, %v (%d abandons); want a timeout naming %s",
			got, err, b.abandons.Load(), holder.Holder())
	}
}

// Scenario: a key is in its lock-delay (its holder vanished without
// releasing it) when another client's AcquireTimeout ends. The client
// reports a refusal, as a TryAcquire in the lock-delay does: a *HeldError
// naming no holder, with the time the key stays blocked, not a bare
// timeout whose outcome a caller could not tell from an unknown one.
func TestAcquireTimeoutInLockDelay(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	vanishing := &cutBackend{Backend: n}
	a, err := lease.New(vanishing, lease.WithTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	const delay = time.Minute
	l, err := a.TryAcquire(ctxT(t, 10*time.Second), "delayed", lease.LockDelay(delay))
	if err != nil || l == nil {
		t.Fatalf("acquire: %v %v", l, err)
	}
	vanishing.cut.Store(true) // no extends, no release: it expires into its lock-delay
	b, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	nodetest.Eventually(t, 10*time.Second, func() error {
		info, err := b.Get(ctxT(t, 5*time.Second), "delayed")
		if err != nil {
			return err
		}
		if info == nil || !info.LockDelay {
			return fmt.Errorf("not in its lock-delay yet: %+v", info)
		}
		return nil
	})
	_, err = b.AcquireTimeout(ctxT(t, 10*time.Second), "delayed", 200*time.Millisecond)
	var held *lease.HeldError
	if !errors.As(err, &held) || !errors.Is(err, lease.ErrTimeout) || held.Holder != "" || held.Wait <= 0 || held.Wait > delay {
		t.Fatalf("AcquireTimeout in the lock-delay: %v; want ErrTimeout and a HeldError naming no holder, with a wait in (0, %v]", err, delay)
	}
}
