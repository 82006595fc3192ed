package node_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// abandon settles request req of holder for key through n.
func abandon(t *testing.T, n *node.Node, key, holder string, req uint64) *pb.AbandonResponse {
	t.Helper()
	resp, err := n.Abandon(ctxT(t, 10*time.Second), &pb.AbandonRequest{Key: key, Holder: holder, RequestId: req})
	if err != nil {
		t.Fatalf("abandon %s/%s/%d: %v", key, holder, req, err)
	}
	return resp
}

// TestAbandon: Abandon says what became of a request, releases its grant
// if it stands (even one a retry of it was answered with), and spends its
// id, so a copy of the request that arrives afterwards is Stale and never
// granted. Sent through a follower, which forwards it.
func TestAbandon(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	_, f := c.Follower()
	const ttl = time.Minute
	lateCopyIsStale := func(key, holder string, req uint64) {
		t.Helper()
		if resp, err := f.Acquire(ctxT(t, 10*time.Second), acq(key, holder, req, ttl)); !errors.Is(err, node.ErrStaleRequest) {
			t.Fatalf("a copy of the abandoned request after the answer: %+v, %v; want %v", resp, err, node.ErrStaleRequest)
		}
	}
	holderIs := func(key, want string) {
		t.Helper()
		if h := holderOf(t, l, key); h != want {
			t.Fatalf("holder of %s: %q, want %q", key, h, want)
		}
	}
	want := func(got *pb.AbandonResponse, outcome pb.AbandonOutcome, holder string) {
		t.Helper()
		if got.Outcome != outcome || got.Holder != holder {
			t.Fatalf("abandon: %v held by %q, want %v held by %q", got.Outcome, got.Holder, outcome, holder)
		}
	}

	t.Run("never granted, held by another", func(t *testing.T) {
		mustGrant(t, l, acq("ab/held", "a", 1, ttl))
		got := abandon(t, f, "ab/held", "b", 1)
		want(got, pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED, "a")
		if w := got.Wait.AsDuration(); w <= 0 || w > ttl {
			t.Fatalf("wait %v, want in (0, %v]", w, ttl)
		}
		lateCopyIsStale("ab/held", "b", 1)
		holderIs("ab/held", "a")
	})
	t.Run("never granted, free", func(t *testing.T) {
		got := abandon(t, f, "ab/free", "b", 1)
		want(got, pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED, "")
		if got.Wait != nil {
			t.Fatalf("wait %v for a free key, want none", got.Wait.AsDuration())
		}
		lateCopyIsStale("ab/free", "b", 1)
		holderIs("ab/free", "")
	})
	t.Run("never granted, the key in its lock-delay", func(t *testing.T) {
		// a's lease expires unreleased: nobody holds the key, and nobody
		// can take it for the lock-delay. The answer says so (a wait, no
		// holder), as a refused try-acquire would.
		const delay = time.Minute
		req := acq("ab/delay", "a", 1, nodetest.TestTiming.LeaderLeaseTimeout) // the shortest TTL allowed
		req.LockDelay = durationpb.New(delay)
		mustGrant(t, l, req)
		nodetest.Eventually(t, 10*time.Second, func() error {
			if holderOf(t, l, "ab/delay") != "" {
				return errors.New("a's lease has not expired yet")
			}
			return nil
		})
		got := abandon(t, f, "ab/delay", "b", 1)
		want(got, pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED, "")
		if w := got.Wait.AsDuration(); w <= 0 || w > delay {
			t.Fatalf("wait %v in the lock-delay, want in (0, %v]", w, delay)
		}
	})
	t.Run("granted, its reply lost", func(t *testing.T) {
		mustGrant(t, l, acq("ab/granted", "b", 1, ttl))
		want(abandon(t, f, "ab/granted", "b", 1), pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED, "")
		holderIs("ab/granted", "")
		lateCopyIsStale("ab/granted", "b", 1)
		// Settled already: a second Abandon cannot tell more.
		want(abandon(t, f, "ab/granted", "b", 1), pb.AbandonOutcome_ABANDON_OUTCOME_ENDED, "")
	})
	t.Run("granted, and a retry's reply lost too", func(t *testing.T) {
		mustGrant(t, l, acq("ab/seen", "b", 1, ttl))
		mustGrant(t, l, acq("ab/seen", "b", 1, ttl)) // applied as a retry: Seen
		want(abandon(t, f, "ab/seen", "b", 1), pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED, "")
		holderIs("ab/seen", "")
	})
	t.Run("an older request of a live holding", func(t *testing.T) {
		mustGrant(t, l, acq("ab/newer", "b", 2, ttl))
		want(abandon(t, f, "ab/newer", "b", 1), pb.AbandonOutcome_ABANDON_OUTCOME_ENDED, "")
		holderIs("ab/newer", "b")
	})
	t.Run("invalid", func(t *testing.T) {
		if _, err := f.Abandon(ctxT(t, 10*time.Second), &pb.AbandonRequest{Key: "ab/x", Holder: "b"}); !errors.Is(err, node.ErrInvalid) {
			t.Fatalf("abandon without a request id: %v, want %v", err, node.ErrInvalid)
		}
	})
}

// TestAbandonOfQueuedWaiter: the attempt a caller gave up on may still
// wait in the leader's queue, or be in flight, when its Abandon arrives,
// racing the holder's release. Whatever the race, the answer is final: a
// request answered NOT_GRANTED is never granted afterwards, and one
// answered RELEASED no longer holds the key.
func TestAbandonOfQueuedWaiter(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	_, f := c.Follower()
	counts := map[pb.AbandonOutcome]int{}
	for round := range 30 {
		key := fmt.Sprintf("abandon/%02d", round)
		var got *pb.AbandonResponse
		raceQueuedAttempt(t, l, f, key, func() { got = abandon(t, f, key, "b", 1) })
		counts[got.Outcome]++
		switch got.Outcome {
		case pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED, pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED:
		default:
			t.Fatalf("round %d: outcome %v", round, got.Outcome)
		}
		if h := holderOf(t, l, key); h == "b" {
			t.Fatalf("round %d: abandoned (%v), but b holds the key", round, got.Outcome)
		}
		if _, err := l.Acquire(ctxT(t, 10*time.Second), acq(key, "b", 1, raceTTL)); !errors.Is(err, node.ErrStaleRequest) {
			t.Fatalf("round %d: a copy after the abandon: %v, want %v", round, err, node.ErrStaleRequest)
		}
	}
	t.Logf("outcomes: %v", counts)
}
