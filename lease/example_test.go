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
