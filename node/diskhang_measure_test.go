package node_test

import (
	"os"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// TestMeasureOwnDiskHangFailover measures, with default timing, how long
// a leader whose own disk hangs takes to be replaced, and whether a
// 10 s lease held through lease.Client survives it. It asserts nothing
// and runs only with LEASENODE_MEASURE_HANG=1 (figures for the commit
// message; run it alone, and beside busy loops).
func TestMeasureOwnDiskHangFailover(t *testing.T) {
	if os.Getenv("LEASENODE_MEASURE_HANG") == "" {
		t.Skip("a measurement: set LEASENODE_MEASURE_HANG=1")
	}
	c := nodetest.New(t, nodetest.Options{API: true, Timing: node.DefaultTiming()})
	li, l := c.Leader()
	var addrs []string
	for i := range c.Size() {
		addrs = append(addrs, c.Node(i).APIAddr())
	}
	cl, err := lease.Dial(ctxT(t, 10*time.Second), addrs, lease.WithHolder("holder"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close(ctxT(t, 5*time.Second)) })
	held, err := cl.Acquire(ctxT(t, 10*time.Second), "kept", lease.TTL(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Somewhere in the lease's extend cycle.
	time.Sleep(time.Duration(time.Now().UnixNano()%int64(3*time.Second)) + time.Second)
	release := l.StallLogWrites()
	t.Cleanup(release)
	start := time.Now()
	var elected, detected time.Duration
	nodetest.Eventually(t, 40*time.Second, func() error {
		if detected == 0 && l.OwnDiskHung() != "" {
			detected = time.Since(start)
		}
		for i := range c.Size() {
			if i != li && c.Node(i).IsLeader() {
				elected = time.Since(start)
				return nil
			}
		}
		return os.ErrNotExist
	})
	// The lease is kept if it is healthy a whole TTL after the stall.
	for time.Since(start) < 12*time.Second && held.IsHealthy() {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("MEASURE new leader %.2f s after the stall (own disk hang found at %.2f s); lease kept: %v (%v)", elected.Seconds(), detected.Seconds(), held.IsHealthy(), held.Err())
	release()
}
