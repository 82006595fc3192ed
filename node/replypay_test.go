package node_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"runtime/pprof"
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
	parked0 := parkedIn("node.(*Node).payUnits")
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

