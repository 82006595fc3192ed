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
