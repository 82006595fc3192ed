package lease

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport/pb"
)

// grantAll is a Backend that grants every acquire (a new token each) and
// every release: enough for what the Client keeps per key.
type grantAll struct {
	Backend
	token atomic.Uint64
}

func (b *grantAll) Acquire(context.Context, *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	return &pb.AcquireResponse{Granted: true, Token: b.token.Add(1)}, nil
}

func (b *grantAll) Release(context.Context, *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	return &pb.ReleaseResponse{Released: true}, nil
}

// The local guards of keys no one holds or waits for are dropped: a
// long-lived Client that touches many keys once keeps nothing of them.
func TestGuardsOfFreeKeysAreDropped(t *testing.T) {
	c, err := New(&grantAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 2000 {
		l, err := c.TryAcquire(ctx, fmt.Sprint("k", i))
		if err != nil || l == nil {
			t.Fatalf("TryAcquire %d: %v %v", i, l, err)
		}
		if again, err := c.TryAcquire(ctx, fmt.Sprint("k", i)); again != nil || err != nil {
			t.Fatalf("second TryAcquire of a held key: %v %v", again, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	n := len(c.guards)
	c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d guards kept after 2,000 keys were acquired and released", n)
	}
}
