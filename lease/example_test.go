package lease_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
)

// An application embeds a node in each of its instances; here, one
// process runs a single-node cluster and takes a lease from it.
func Example_embedded() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "leasenode-example")
	defer os.RemoveAll(dir)

	cfg := node.DefaultConfig()
	cfg.ID = "app-1"
	cfg.DataDir = filepath.Join(dir, "app-1")
	cfg.BindAddr = "127.0.0.1:17400"
	cfg.GossipAddr = "127.0.0.1:17401"
	cfg.BootstrapExpect = 1 // three instances would each say 3
	n, err := node.Start(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close(ctx)

	client, err := lease.New(n, lease.WithTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)

	l, err := client.Acquire(ctx, "jobs/nightly-report")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held:", l.Key(), l.IsHealthy())
	// Work under l.Context(); stamp writes with l.Token().
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output: held: jobs/nightly-report true
}

// A program in any process dials the client API of a running cluster
// (`leasenode dev` starts one).
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := lease.Dial(ctx, []string{"127.0.0.1:7402", "127.0.0.1:7412", "127.0.0.1:7422"})
	if err != nil {
		log.Print(err) // no cluster running
		return
	}
	defer client.Close(ctx)
	if l, err := client.TryAcquire(ctx, "reports/daily"); err == nil && l != nil {
		defer l.Release(ctx)
	}
}

// The resource side of fencing: refuse writes with an old token.
func ExampleFence() {
	fence := lease.NewFence()
	fmt.Println(fence.Check("orders", 42)) // the current holder writes
	fmt.Println(fence.Check("orders", 57)) // the next holder writes
	err := fence.Check("orders", 42)       // the old holder wakes from a GC pause
	fmt.Println(err != nil)
	// Output:
	// <nil>
	// <nil>
	// true
}

// Leader election: run as leader while elected; others observe who leads.
func ExampleElector() {
	run := func(ctx context.Context, client *lease.Client, myAddr string) error {
		return client.Elector("service/leader", []byte(myAddr)).Run(ctx, func(ctx context.Context, l *lease.Lease) {
			// Lead until ctx is done: leadership lost or shutting down.
			<-ctx.Done()
		})
	}
	observe := func(ctx context.Context, client *lease.Client) {
		for leader := range client.Observe(ctx, "service/leader") {
			fmt.Printf("leader is %s at %s\n", leader.Holder, leader.Value)
		}
	}
	_, _ = run, observe
}

// exampleNode starts a single-node cluster on port (and port+1 for
// gossip) in a temporary directory, as Example_embedded does.
func exampleNode(port int) (*node.Node, func()) {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "leasenode-example")
	cfg := node.DefaultConfig()
	cfg.ID = "app-1"
	cfg.DataDir = filepath.Join(dir, "app-1")
	cfg.BindAddr = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.GossipAddr = fmt.Sprintf("127.0.0.1:%d", port+1)
	cfg.BootstrapExpect = 1
	n, err := node.Start(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	return n, func() { n.Close(ctx); os.RemoveAll(dir) }
}

// A semaphore: at most n holders of a key at once (here 2 workers of a
// rate-limited API), each with its own fencing token and expiry.
func ExampleSemaphore() {
	ctx := context.Background()
	n, stop := exampleNode(17410)
	defer stop()
	var workers []*lease.Client
	for range 3 {
		c, _ := lease.New(n)
		defer c.Close(ctx)
		workers = append(workers, c)
	}
	a, _ := workers[0].TryAcquire(ctx, "api/quota", lease.Semaphore(2))
	b, _ := workers[1].TryAcquire(ctx, "api/quota", lease.Semaphore(2))
	c, _ := workers[2].TryAcquire(ctx, "api/quota", lease.Semaphore(2))
	fmt.Println("slots taken:", a != nil, b != nil, "third:", c != nil)
	a.Release(ctx) // frees a slot at once (a waiting Acquire gets it)
	c, _ = workers[2].TryAcquire(ctx, "api/quota", lease.Semaphore(2))
	fmt.Println("after a release:", c != nil, c.Token() > b.Token())
	// Output:
	// slots taken: true true third: false
	// after a release: true true
}

// A read-write lock: readers share the key, a writer takes it alone. The
// writer's token fences readers that still hold older tokens.
func ExampleShared() {
	ctx := context.Background()
	n, stop := exampleNode(17420)
	defer stop()
	readerA, _ := lease.New(n)
	defer readerA.Close(ctx)
	readerB, _ := lease.New(n)
	defer readerB.Close(ctx)
	writer, _ := lease.New(n)
	defer writer.Close(ctx)

	r1, _ := readerA.Acquire(ctx, "config", lease.Shared())
	r2, _ := readerB.Acquire(ctx, "config", lease.Shared())
	w, _ := writer.TryAcquire(ctx, "config") // exclusive: not beside readers
	fmt.Println("readers:", r1 != nil, r2 != nil, "writer:", w != nil)
	r1.Release(ctx)
	r2.Release(ctx)
	w, _ = writer.Acquire(ctx, "config")

	fence := lease.NewFence()                                 // the resource's side
	fmt.Println(fence.Check("config", w.Token()))             // the write
	fmt.Println(fence.CheckRead("config", r1.Token()) != nil) // a late reader is stale
	// Output:
	// readers: true true writer: false
	// <nil>
	// true
}

// A multi-key lease: both keys or neither, one token, one release. Two
// clients taking the same keys in opposite orders cannot deadlock.
func ExampleClient_AcquireSet() {
	ctx := context.Background()
	n, stop := exampleNode(17430)
	defer stop()
	client, _ := lease.New(n)
	defer client.Close(ctx)
	other, _ := lease.New(n)
	defer other.Close(ctx)

	l, err := client.AcquireSet(ctx, []lease.Item{{Key: "accounts/alice"}, {Key: "accounts/bob"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held:", l.Keys(), l.TokenFor("accounts/bob") == l.Token())
	busy, _ := other.TryAcquireSet(ctx, []lease.Item{{Key: "accounts/bob"}, {Key: "accounts/carol"}})
	fmt.Println("overlapping set:", busy != nil)
	carol, _ := other.Get(ctx, "accounts/carol")
	fmt.Println("carol untouched:", carol == nil) // nothing of a refused set is held
	l.Release(ctx)                                // frees both keys at once
	// Output:
	// held: [accounts/alice accounts/bob] true
	// overlapping set: false
	// carol untouched: true
}
