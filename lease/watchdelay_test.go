package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// A key in its lock-delay is listed at the start of a watch as the
// expiry that began it (Expired, Current), not as a holding: nobody holds
// it. Stop 31's adversarial review: it was listed as a Granted holding
// with no holder, and `leasenode watch` showed it held.
func TestWatchListsALockDelayAsExpired(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, n := c.Leader()
	cl, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	ctx := ctxT(t, 30*time.Second)
	resp, err := n.Acquire(ctx, &pb.AcquireRequest{Key: "ld/k", Holder: "gone", RequestId: 1,
		Ttl: durationpb.New(300 * time.Millisecond), LockDelay: durationpb.New(time.Minute)})
	if err != nil || !resp.GetGranted() {
		t.Fatal(resp, err)
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		info, err := cl.Get(ctx, "ld/k")
		if err != nil || info == nil || !info.LockDelay {
			return errors.New("the holding has not expired into its lock-delay yet")
		}
		return nil
	})
	events, err := cl.Watch(ctx, "ld/")
	if err != nil {
		t.Fatal(err)
	}
	var listed []lease.Event
	for done := false; !done; {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the watch ended before its listing did")
			}
			listed = append(listed, ev)
			done = ev.Type == lease.Listed
		case <-time.After(10 * time.Second):
			t.Fatalf("no Listed event within 10 s; got %+v", listed)
		}
	}
	if len(listed) != 2 || listed[0].Type != lease.Expired || !listed[0].Current || listed[0].Key != "ld/k" || listed[0].Token != resp.GetToken() {
		t.Fatalf("listing %+v, want one Current Expired event of ld/k (token %d), then Listed", listed, resp.GetToken())
	}
}
