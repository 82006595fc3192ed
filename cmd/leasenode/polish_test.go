package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// Scenario: a watch the agent refuses at its --max-watches exits with the
// refusal and does not first say it is watching (new-user review L7).
func TestWatchRefusedDoesNotSayWatching(t *testing.T) {
	t.Parallel()
	addr := addrs(cluster(t, 1, "--max-watches", "1"))
	w := start(t, nil, "watch", "w/", "--addr", addr)
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(w.stderr.String(), "watching") {
			return errors.New("first watch not started")
		}
		return nil
	})
	code, _, errOut := cli(t, "watch", "w/", "--addr", addr, "--timeout", "3s")
	t.Logf("second watch: exit %d, stderr %q", code, errOut)
	if code == 0 || !strings.Contains(errOut, "max-watches") {
		t.Fatalf("second watch at --max-watches 1: exit %d, stderr %q; want a refusal naming --max-watches", code, errOut)
	}
	if strings.Contains(errOut, "watching \"") {
		t.Errorf("a refused watch said it was watching: %q", errOut)
	}
}

// A --stale read of a held lease with no time left (a node without a
// leader: by its own clock the lease has expired, but nobody reaped it)
// shows REMAINING unknown and says why, not "0s" (new-user review L7); a
// read through the leader shows the time it gives.
func TestStaleReadOfAnExpiredLeaseSaysUnknown(t *testing.T) {
	held := &pb.Lease{Key: "k", Holder: "h", Token: 7, State: pb.LeaseState_LEASE_STATE_HELD,
		Ttl: durationpb.New(10 * time.Second), Remaining: durationpb.New(0)}
	var b strings.Builder
	printLeases(&b, []*pb.Lease{held}, true)
	if out := b.String(); !strings.Contains(out, "unknown") || strings.Contains(out, " 0s ") {
		t.Errorf("--stale read of a held lease past its expiry:\n%s\nwant REMAINING unknown and why", out)
	}
	b.Reset()
	printLeases(&b, []*pb.Lease{held}, false)
	if out := b.String(); strings.Contains(out, "unknown") || !strings.Contains(out, "0s") {
		t.Errorf("read through the leader:\n%s\nwant REMAINING 0s", out)
	}
}
