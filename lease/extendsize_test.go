package lease_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// countingBody counts the bytes read from a request body.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// noSums answers every Extend by sum as a cluster that predates it does
// (invalid: no items), so that each keepalive round names the leases.
type noSums struct {
	lease.Backend
	named atomic.Int64 // leases named in Extends answered
}

func (b *noSums) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if r.All != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("test: an extend names no items"))
	}
	resp, err := b.Backend.Extend(ctx, r)
	if err == nil {
		b.named.Add(int64(len(r.Items)))
	}
	return resp, err
}

// Scenario (outsider review s35): a client holds enough leases with long
// keys that one Extend naming them all is over the 256 KiB past which a
// node reads a body only with room in its node-wide pool of large
// bodies, which other clients can hold. Every Extend body the node reads
// stays within the client's 64 KiB bound, measured on the wire, and the
// leases stay held.
func TestExtendBodiesStaySmall(t *testing.T) {
	const (
		leases  = 300
		keyLen  = 1000     // 300 such keys: about 300 KB named at once
		bound   = 64 << 10 // the client's bound on an Extend body
		bigBody = 256 << 10
	)
	var mu sync.Mutex
	var sizes []int64
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.APIMiddleware = func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.HasSuffix(r.URL.Path, "/Extend") {
					h.ServeHTTP(w, r)
					return
				}
				body := &countingBody{ReadCloser: r.Body}
				r.Body = body
				h.ServeHTTP(w, r)
				mu.Lock()
				sizes = append(sizes, body.n)
				mu.Unlock()
			})
		}
	}})
	r, err := lease.NewRemote([]string{c.Node(0).APIAddr()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := &noSums{Backend: r}
	cl, err := lease.New(b, lease.WithTTL(3*time.Second), lease.WithExtendInterval(300*time.Millisecond),
		lease.WithBackoff(5*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())

	prefix := strings.Repeat("k", keyLen-5)
	ls := make([]*lease.Lease, leases)
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := w; i < leases; i += 8 {
				l, err := cl.TryAcquire(ctxT(t, 20*time.Second), fmt.Sprintf("%s%05d", prefix, i))
				if err == nil && l == nil {
					err = fmt.Errorf("key %d held elsewhere", i)
				}
				if err != nil {
					errs <- err
					return
				}
				ls[i] = l
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := recvErr(t, errs, 60*time.Second, "acquires"); err != nil {
			t.Fatal(err)
		}
	}
	// Three full rounds naming every lease, after all were acquired.
	from := b.named.Load()
	nodetest.Eventually(t, 30*time.Second, func() error {
		if got := b.named.Load() - from; got < 3*leases {
			return fmt.Errorf("%d leases named in extends since all were held, want %d", got, 3*leases)
		}
		return nil
	})
	for i, l := range ls {
		if !l.IsHealthy() {
			t.Fatalf("lease %d not healthy: %v", i, l.Err())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var largest int64
	for _, n := range sizes {
		largest = max(largest, n)
	}
	t.Logf("%d Extend bodies, the largest %d bytes", len(sizes), largest)
	if largest > bound {
		t.Fatalf("an Extend body of %d bytes, over the client's bound of %d (a node reads one over %d only with room in its pool of large bodies)", largest, bound, bigBody)
	}
}

// Scenario (adversarial review s35): the node the client sends its
// extends to takes them and never answers (a leader whose disk hangs),
// while it answers liveness checks, and the other nodes serve. One
// extend attempt must not use up the lease's validity: it ends early
// enough for more attempts, which go to the other nodes first, and the
// lease stays held across many rounds, and when the node is tried first
// again a while later.
func TestExtendLeavesStalledNodeInTime(t *testing.T) {
	const size = 3
	var stalled [size]atomic.Bool
	var swallowed, served atomic.Int64 // extends swallowed, and served while one node swallows
	unstall := make(chan struct{})
	c := nodetest.New(t, nodetest.Options{Size: size, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.APIMiddleware = func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.HasSuffix(r.URL.Path, "/Extend") {
					h.ServeHTTP(w, r)
					return
				}
				if stalled[i].Load() {
					swallowed.Add(1)
					select {
					case <-r.Context().Done():
					case <-unstall:
					}
					return
				}
				h.ServeHTTP(w, r)
				served.Add(1)
			})
		}
	}})
	// Closed before the cluster stops (cleanups run last first): the
	// swallowed requests end.
	t.Cleanup(func() { close(unstall) })
	li, _ := c.Leader()
	addrs := []string{c.Node(li).APIAddr()} // the leader first, as a client's first address
	for i := range size {
		if i != li {
			addrs = append(addrs, c.Node(i).APIAddr())
		}
	}
	const ttl = 3 * time.Second
	cl, err := lease.Dial(ctxT(t, 10*time.Second), addrs, lease.WithTTL(ttl),
		lease.WithBackoff(5*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	l, err := cl.TryAcquire(ctxT(t, 10*time.Second), "k")
	if err != nil || l == nil {
		t.Fatalf("acquire: %v %v", l, err)
	}
	// A client that has run a while: an extend answered (its round trip
	// known) before the node starts to swallow them.
	acquired := l.ValidUntil()
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !l.ValidUntil().After(acquired) {
			return errors.New("no extend answered yet")
		}
		return nil
	})

	stalled[li].Store(true)
	start := l.ValidUntil()
	served.Store(0)
	// Several TTLs of rounds: each must reach a node that serves before
	// the validity runs out.
	nodetest.Eventually(t, 30*time.Second, func() error {
		if err := l.Err(); err != nil {
			return nil // reported below
		}
		switch {
		case swallowed.Load() < 2:
			// Twice: once it is tried first again (suspectFor later).
			return fmt.Errorf("%d extends reached the stalled node so far, want 2", swallowed.Load())
		case l.ValidUntil().Before(start.Add(3 * ttl)):
			return fmt.Errorf("validity moved %v of %v so far", l.ValidUntil().Sub(start), 3*ttl)
		}
		return nil
	})
	if err := l.Err(); err != nil {
		t.Fatalf("the lease ended while one node swallowed extends (%d swallowed, %d served elsewhere): %v", swallowed.Load(), served.Load(), err)
	}
	t.Logf("%d extends swallowed, %d served by the other nodes", swallowed.Load(), served.Load())
	if !l.IsHealthy() {
		t.Fatalf("lease not healthy: valid until %v from now", time.Until(l.ValidUntil()))
	}
	stalled[li].Store(false)
	if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
		t.Fatalf("release: %v", err)
	}
}
