package lease_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario (new-user review, outsider F): a program watches 300 prefixes
// through one Client dialled without TLS, on an agent whose --max-watches
// allows them. Over HTTP/1.1 every watch held a connection of its own, so
// past the agent's connections per source (a quarter of --max-conns, 256)
// the agent closed them and the watches' channels closed after their
// listing, with no error. Over HTTP/2 (h2c) they share a connection or
// two: every watch sees a grant made after all were open, and requests
// are answered meanwhile.
func TestManyWatchesOfOneClientStayOpen(t *testing.T) {
	const watches = 300
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxWatches = 4 * 1024 // a source's share: 1,024 watches
	}})
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{c.Config(0).APIAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	chans := make([]<-chan lease.Event, watches)
	for i := range chans {
		if chans[i], err = cl.Watch(ctx, "w/"); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	// Requests are answered while the watches are open.
	l, err := cl.TryAcquire(ctx, "w/k")
	if err != nil || l == nil {
		t.Fatalf("TryAcquire beside %d watches: %v %v", watches, l, err)
	}
	if _, err := cl.Get(ctx, "w/k"); err != nil {
		t.Fatalf("Get beside %d watches: %v", watches, err)
	}
	closed := 0
	var firstErr error
	for i, ch := range chans {
		if err := waitGranted(ctx, ch, "w/k", l.Token()); err != nil {
			closed++
			if firstErr == nil {
				firstErr = fmt.Errorf("watch %d: %w", i, err)
			}
		}
	}
	if closed > 0 {
		t.Fatalf("%d of %d watches ended before the grant made after they opened (first: %v)", closed, watches, firstErr)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitGranted reads ch until the Granted event of key with token.
func waitGranted(ctx context.Context, ch <-chan lease.Event, key string, token uint64) error {
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return fmt.Errorf("the channel closed")
			}
			if ev.Type == lease.Granted && ev.Key == key && ev.Token == token && !ev.Current {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Scenario: a node's limit cuts a watch's connection after the watch
// began (here --max-frame-rate: the client's waiting acquires share the
// watch's HTTP/2 connection and send frames faster than the agent allows). The
// channel ends with a Broken event whose error names the limit, instead
// of closing as if the watch had simply ended.
func TestWatchCutByALimitSaysWhich(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxStreams = 4    // so that the frame budget's burst is small: 16 frames
		cfg.Limits.MaxFrameRate = 20 // frames a second on one connection
	}})
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{c.Config(0).APIAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	ctx := ctxT(t, 30*time.Second)
	events, err := cl.Watch(ctx, "w/")
	if err != nil {
		t.Fatal(err)
	}
	holder, err := lease.Dial(ctxT(t, 10*time.Second), []string{c.Config(0).APIAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	if l, err := holder.TryAcquire(ctxT(t, 10*time.Second), "held"); err != nil || l == nil {
		t.Fatalf("TryAcquire held: %v %v", l, err)
	}
	for {
		// Waits on the watch's connection (a waiting acquire goes over
		// HTTP/2 as a watch does), until the node cuts it: the leader
		// answers each after its max_wait of 1 ms, so they come fast.
		_, _ = cl.AcquireTimeout(ctx, "held", time.Millisecond)
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the watch's channel closed without a Broken event saying why")
			}
			if ev.Type != lease.Broken {
				continue
			}
			t.Logf("broken: %v", ev.Err)
			if ev.Err == nil || !strings.Contains(ev.Err.Error(), "--max-frame-rate") {
				t.Fatalf("Broken event's error does not name --max-frame-rate: %v", ev.Err)
			}
			if ev, ok := <-events; ok {
				t.Fatalf("an event after Broken: %+v", ev)
			}
			return
		case <-ctx.Done():
			t.Fatal("the watch was not cut within 30 s")
		default:
		}
	}
}
