package lease_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// Tests that what a caller gets is its own, what it drops keeps its
// validity, and what it cancelled never reaches the cluster.

// soloClient is a Client over the one node of a new single-node cluster;
// Close runs at the end of the test unless the test closed it first.
func soloClient(t *testing.T) (*node.Node, *lease.Client) {
	t.Helper()
	c := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1})
	_, n := c.Leader()
	cl, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(context.Background()) })
	return n, cl
}

// A Lease dropped without Release keeps the key until the validity read
// from it before ends (code may act on a ValidUntil, Context or Token it
// took), and is released then, not left to expire by its TTL.
func TestDroppedLeaseKeepsItsValidity(t *testing.T) {
	n, cl := soloClient(t)
	other, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	var validUntil time.Time
	func() {
		l, err := cl.Acquire(ctxT(t, 5*time.Second), "dropped/valid", lease.TTL(3*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		validUntil = l.ValidUntil() // acted on after the Lease is dropped
	}()
	var early *lease.Lease // granted to other during a try that ended past validUntil
	nodetest.Eventually(t, 5*time.Second, func() error {
		runtime.GC()
		if time.Now().After(validUntil) {
			return nil // collected or not, past the validity read
		}
		l, err := other.TryAcquire(context.Background(), "dropped/valid")
		if l != nil {
			// The grant came after the try began and before it returned:
			// certainly early only if it returned before validUntil. A try
			// begun just before validUntil may be granted just after it.
			if left := time.Until(validUntil); left > 0 {
				t.Fatalf("another client was granted the key %v before the validity the first read ended", left)
			}
			early = l
			return nil
		}
		if err != nil {
			return err
		}
		return errors.New("within the validity read")
	})
	l := early
	if l == nil {
		l, err = other.AcquireTimeout(ctxT(t, 10*time.Second), "dropped/valid", 5*time.Second)
		if err != nil || l == nil {
			t.Fatalf("after the validity of a dropped Lease: %v %v", l, err)
		}
	}
	l.Release(context.Background())
}

// A caller that writes into a Get's value writes into its own copy: the
// leader's replica (an embedded Client reads it without a wire between)
// stays as every other replica.
func TestGetValueIsTheCallersCopy(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, ln := c.Leader()
	fi, fn := c.Follower()
	cl, err := lease.New(ln)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	const v = "10.0.0.1:80"
	l, err := cl.Acquire(ctxT(t, 5*time.Second), "val", lease.Value([]byte(v)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	info, err := cl.Get(ctxT(t, 5*time.Second), "val")
	if err != nil || info == nil {
		t.Fatal(info, err)
	}
	copy(info.Value, "XXXX")
	again, err := cl.Get(ctxT(t, 5*time.Second), "val")
	if err != nil || string(again.Value) != v {
		t.Fatalf("the leader's record after the caller wrote into its Get: %q %v, want %q", again.Value, err, v)
	}
	nodetest.Eventually(t, 5*time.Second, func() error {
		r, err := fn.Get(context.Background(), &pb.GetRequest{Key: "val", Stale: true})
		if err != nil || string(r.GetLease().GetValue()) != v {
			return fmt.Errorf("follower n%d: %q %v", fi, r.GetLease().GetValue(), err)
		}
		return nil
	})
}

// Two Electors made from one options slice with spare capacity each
// publish their own value.
func TestElectorsShareNoOptions(t *testing.T) {
	_, cl := soloClient(t)
	base := make([]lease.AcquireOption, 0, 4)
	base = append(base, lease.TTL(5*time.Second))
	a := cl.Elector("svc/a", []byte("addr-a"), base...)
	_ = cl.Elector("svc/b", []byte("addr-b"), base...)
	l, err := a.Campaign(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	info, err := cl.Get(ctxT(t, 5*time.Second), "svc/a")
	if err != nil || info == nil || string(info.Value) != "addr-a" {
		t.Fatalf("the leader of svc/a publishes %+v (%v), want addr-a", info, err)
	}
}

// A Fence's zero value works: a struct field needs no NewFence.
func TestZeroFence(t *testing.T) {
	var f lease.Fence
	if err := f.CheckRead("k", 1); err != nil {
		t.Fatal(err)
	}
	if err := f.Check("k", 5); err != nil {
		t.Fatal(err)
	}
	if err := f.Check("k", 4); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("token 4 after 5: %v, want ErrStaleToken", err)
	}
}

// An acquire whose context ended before the call returns the context's
// error and writes nothing to the cluster (it proposed a grant nobody saw,
// then its withdrawal and an abandon: 25 entries for 20 calls).
func TestCancelledAcquireWritesNothing(t *testing.T) {
	n, cl := soloClient(t)
	applied := func() uint64 {
		st, err := n.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return st.GetHeader().GetAppliedIndex()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := applied()
	for i := range 21 {
		key := fmt.Sprintf("cancelled/%d", i)
		var l *lease.Lease
		var err error
		switch i % 3 {
		case 0:
			l, err = cl.TryAcquire(ctx, key)
		case 1:
			l, err = cl.Acquire(ctx, key)
		case 2:
			l, err = cl.AcquireTimeout(ctx, key, time.Second)
		}
		if l != nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("%s with a cancelled context: %v %v, want context.Canceled", key, l, err)
		}
	}
	if after := applied(); after != before {
		t.Fatalf("21 acquires with a cancelled context wrote %d Raft entries", after-before)
	}
}

// Keys and holders of new holdings are printable: a newline would forge a
// row of `leasenode list`, a bidirectional override reverse what an
// operator reads. Embedded and remote alike, refused before anything is
// written.
func TestAcquireRefusesControlCharacters(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		cl, _ := e.newClient(t)
		for _, key := range []string{"a\x00b", "a\nb", "a\u202eb", "tab\there", "del\x7f", "c1\u0085"} {
			l, err := cl.TryAcquire(ctxT(t, 5*time.Second), key)
			if l != nil || !errors.Is(err, lease.ErrInvalid) || !strings.Contains(err.Error(), "printable") {
				t.Errorf("key %q: %v %v, want ErrInvalid naming printable text", key, l, err)
			}
		}
		_, n := e.c.Leader()
		_, err := n.Acquire(ctxT(t, 5*time.Second), &pb.AcquireRequest{Key: "ok", Holder: "job\nlevel=ERROR forged",
			RequestId: 1, Ttl: durationpb.New(5 * time.Second)})
		if !errors.Is(err, node.ErrInvalid) {
			t.Errorf("holder with a newline: %v, want ErrInvalid", err)
		}
	})
}

// A client given a node port instead of an API address is told so at once
// (the node port answers HTTP with a 421 marked Leasenode-Port: node),
// instead of retrying for the retry timeout and reporting no leader.
func TestNodePortIsNotAnAPI(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1, API: true})
	c.WaitForLeader()
	start := time.Now()
	_, err := lease.Dial(ctxT(t, 30*time.Second), []string{c.Config(0).AdvertiseAddr})
	if !errors.Is(err, lease.ErrWrongPort) || time.Since(start) > 5*time.Second {
		t.Fatalf("Dial of a node port: %v after %v, want ErrWrongPort at once", err, time.Since(start))
	}
	// The gossip port says so too.
	start = time.Now()
	_, err = lease.Dial(ctxT(t, 30*time.Second), []string{c.Config(0).GossipAddr})
	if !errors.Is(err, lease.ErrWrongPort) || !strings.Contains(err.Error(), "gossip port") || time.Since(start) > 5*time.Second {
		t.Fatalf("Dial of a gossip port: %v after %v, want ErrWrongPort naming the gossip port at once", err, time.Since(start))
	}
	// Any other HTTP server (one that answers 404, as some networks do for
	// every address) is not an API either: said at once, not retried.
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	start = time.Now()
	_, err = lease.Dial(ctxT(t, 30*time.Second), []string{other.Listener.Addr().String()})
	if !errors.Is(err, lease.ErrWrongPort) || !strings.Contains(err.Error(), "HTTP 404") || time.Since(start) > 5*time.Second {
		t.Fatalf("Dial of an HTTP server that answers 404: %v after %v, want ErrWrongPort naming the 404 at once", err, time.Since(start))
	}
	// With the API address among them, the call goes on to it.
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{c.Config(0).AdvertiseAddr, c.Node(0).APIAddr()})
	if err != nil {
		t.Fatalf("Dial of a node port and an API address: %v", err)
	}
	cl.Close(context.Background())
}

// invalidAfterApplied applies the first Acquire and loses its reply (an
// unknown outcome), then refuses the retry as invalid: what a replacement
// leader's format gate did to the retry of a shaped grant whose reply was
// lost (adversarial review).
type invalidAfterApplied struct {
	lease.Backend
	calls atomic.Int32
}

func (b *invalidAfterApplied) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	switch b.calls.Add(1) {
	case 1:
		if _, err := b.Backend.Acquire(ctx, r); err != nil {
			return nil, err
		}
		return nil, errors.New("test: the reply was lost")
	case 2:
		return nil, fmt.Errorf("%w: node n2 may run an older leasenode (test)", node.ErrInvalid)
	}
	return b.Backend.Acquire(ctx, r)
}

// An attempt that may have been granted, then a refusal of the retry: the
// grant is settled (released) before the refusal reaches the caller. It
// stood for its TTL while the caller heard "invalid".
func TestRefusalAfterAnUnknownOutcomeSettlesIt(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1})
	_, n := c.Leader()
	cl, err := lease.New(&invalidAfterApplied{Backend: n}, lease.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	l, err := cl.TryAcquire(ctxT(t, 10*time.Second), "settle/k")
	if l != nil || !errors.Is(err, lease.ErrInvalid) {
		t.Fatalf("TryAcquire: %v %v, want the refusal (ErrInvalid)", l, err)
	}
	other, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	l, err = other.TryAcquire(ctxT(t, 10*time.Second), "settle/k")
	if err != nil || l == nil {
		t.Fatalf("after the refusal another client's TryAcquire: %v %v; the first attempt's grant still holds the key", l, err)
	}
	l.Release(context.Background())
}
