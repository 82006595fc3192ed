package node_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// seedValues grants leases keys prefix/0.. of size-byte values through n.
func seedValues(t *testing.T, n *node.Node, prefix string, leases, size int) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < leases; i += 8 {
				mustGrant(t, n, &pb.AcquireRequest{Key: fmt.Sprintf("%s/%04d", prefix, i), Holder: "h", RequestId: uint64(i + 1),
					Ttl: durationpb.New(time.Hour), Value: bytes.Repeat([]byte{byte(i)}, size)})
			}
		}()
	}
	wg.Wait()
}

// parkedIn counts the goroutines whose stacks hold fn.
func parkedIn(fn string) int {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	return bytes.Count(b.Bytes(), []byte(fn+"("))
}

// stacksIn is the stacks of the goroutines in fn.
func stacksIn(fn string) string {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	var out []string
	for _, g := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(g, fn) {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// noneParked waits until no goroutine pays the API budget (payUnits),
// those of an earlier test's closed node included (its handlers end as
// its connections close), and returns how many do: 0.
func noneParked(t *testing.T) int {
	t.Helper()
	n := 0
	nodetest.Eventually(t, 30*time.Second, func() error {
		if n = parkedIn("node.(*Node).payUnits"); n > 0 {
			return fmt.Errorf("%d goroutines of an earlier test still pay the API budget: %s", n, stacksIn("node.(*Node).payUnits("))
		}
		return nil
	})
	return n
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// Many Lists of large pages from one source, waiting for their turns of
// a low --max-api-rate, hold no pages meanwhile: each is sized from the
// FSM and paid before it is built (reply-paid-before-built). Built
// first, every List waiting for its turn held its page, values cloned:
// 250 connections of one /24 listing 1.4 MB pages filled a leader's heap
// and it stepped down 4 times in 40 s (outsider review s35).
func TestListsWaitingForTurnsHoldNoReplies(t *testing.T) {
	const lists, leases, size = 32, 400, 2_000
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxAPIRate = 100 // 1,000 units a second: a page's ~16,000 take 16 s
	}})
	_, l := c.Leader()
	seedValues(t, l, "v", leases, size)
	page, err := l.List(ctxT(t, 10*time.Second), &pb.ListRequest{Prefix: "v/"})
	if err != nil || len(page.GetLeases()) == 0 {
		t.Fatalf("List: %d leases, %v", len(page.GetLeases()), err)
	}
	pageBytes := int64(proto.Size(page))
	page = nil

	ctx, cancel := context.WithCancel(ctxT(t, 60*time.Second))
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	parked0 := noneParked(t)
	base := heapInUse()
	for i := range lists {
		// From addresses of one /24, as the review's: each address's
		// connection reads its List at once, between the others' turns.
		cl := apiFrom(t, fmt.Sprintf("127.0.7.%d", i+1), l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = cl.List(ctx, connect.NewRequest(&pb.ListRequest{Prefix: "v/"}))
		}()
	}
	// Most Lists wait for their turns (all but the one served, unless
	// the machine is slow to start them).
	waiting := 0
	nodetest.Eventually(t, 60*time.Second, func() error {
		if waiting = parkedIn("node.(*Node).payUnits") - parked0; waiting < lists/2 {
			return fmt.Errorf("%d of %d Lists wait for their turns", waiting, lists)
		}
		return nil
	})
	grew := heapInUse() - base
	t.Logf("%d of %d Lists of %d-byte pages waiting for their turns: the heap grew %d KB", waiting, lists, pageBytes, grew>>10)
	if bound := lists * pageBytes / 8; grew > bound {
		t.Errorf("%d Lists waiting for their turns grew the heap by %d KB, over %d KB (an eighth of their %d KB pages): they hold their replies", lists, grew>>10, bound>>10, pageBytes>>10)
	}
}

// A light source's requests wait at most a small piece of each large
// charge that other sources pay meanwhile: large charges are paid in
// pieces of apiPayPiece units, each at its source's own turn. In pieces
// of a whole burst (a tenth of a second of the budget), a source that
// had just had its turn waited one such piece of every source paying
// ahead of it: 32 /24s listing large pages cut a lock loop beside them
// from ~180 to 7-8 operations a second, with stalls of 6.6 s (outsider
// review s35).
func TestLightSourceWaitsSmallPiecesOfLargeCharges(t *testing.T) {
	const heavy, leases, size, gets = 24, 400, 2_000, 10
	const rate = 2_000 // 20,000 units a second, a burst of 2,000
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxAPIRate = rate
	}})
	_, l := c.Leader()
	seedValues(t, l, "v", leases, size)

	ctx, cancel := context.WithCancel(ctxT(t, 120*time.Second))
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	parked0 := noneParked(t)
	for i := range heavy {
		// Each from a /24 of its own, two Lists of ~1 MB pages in flight
		// (~16,000 units each), again and again.
		cl := apiFrom(t, fmt.Sprintf("127.0.%d.1", 10+i), l)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					_, _ = cl.List(ctx, connect.NewRequest(&pb.ListRequest{Prefix: "v/"}))
				}
			}()
		}
	}
	nodetest.Eventually(t, 60*time.Second, func() error {
		if n := parkedIn("node.(*Node).payUnits") - parked0; n < heavy/2 {
			return fmt.Errorf("%d of %d Lists pay for their pages", n, 2*heavy)
		}
		return nil
	})
	light := apiFrom(t, "127.0.9.1", l)
	var worst, total time.Duration
	for range gets {
		start := time.Now()
		if _, err := light.Get(ctx, connect.NewRequest(&pb.GetRequest{Key: "v/0001"})); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		worst, total = max(worst, took), total+took
	}
	// Waiting a burst-sized piece of each heavy source: 24 × 0.1 s.
	burstRound := time.Duration(heavy) * time.Second / 10 // a burst is a tenth of a second of the budget
	t.Logf("beside %d sources paying for large pages, a light source's Get took %v on average, %v at worst (a burst-sized piece of each: %v)",
		heavy, (total / gets).Round(time.Millisecond), worst.Round(time.Millisecond), burstRound)
	if worst > burstRound/2 {
		t.Errorf("a light source's Get waited %v beside %d sources paying for large pages: over half of one burst-sized piece of each (%v)", worst.Round(time.Millisecond), heavy, burstRound/2)
	}
}

// Watches whose initial listings wait for their turns of a low
// --max-api-rate hold none of their pages meanwhile: each page is sized
// from the FSM and paid before it is read (reply-paid-before-built), as
// a List's. Read first, every listing waiting for its turn held a page
// of 64 leases, values cloned (outsider review s35).
func TestWatchListingsWaitingForTurnsHoldNoPages(t *testing.T) {
	const watches, leases, size = 32, 64, 16 << 10
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxAPIRate = 100 // 1,000 units a second: a page's ~16,000 take 16 s
	}})
	_, l := c.Leader()
	seedValues(t, l, "w", leases, size)
	pageBytes := int64(leases * size)

	ctx, cancel := context.WithCancel(ctxT(t, 60*time.Second))
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	parked0 := noneParked(t)
	base := heapInUse()
	for i := range watches {
		cl := apiFrom(t, fmt.Sprintf("127.0.8.%d", i+1), l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if stream, err := cl.Watch(ctx, connect.NewRequest(&pb.WatchRequest{Prefix: "w/", Initial: true})); err == nil {
				<-ctx.Done()
				stream.Close()
			}
		}()
	}
	waiting := 0
	nodetest.Eventually(t, 60*time.Second, func() error {
		if waiting = parkedIn("node.(*Node).payUnits") - parked0; waiting < watches/2 {
			return fmt.Errorf("%d of %d listings wait for their turns", waiting, watches)
		}
		return nil
	})
	grew := heapInUse() - base
	t.Logf("%d of %d watches' listings of %d-byte pages waiting for their turns: the heap grew %d KB", waiting, watches, pageBytes, grew>>10)
	if bound := watches * pageBytes / 8; grew > bound {
		t.Errorf("%d watches' listings waiting for their turns grew the heap by %d KB, over %d KB (an eighth of their %d KB pages): they hold their pages", watches, grew>>10, bound>>10, pageBytes>>10)
	}
}
