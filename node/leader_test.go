package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// One owner of leadership: driven through hundreds of fast flaps, with
// terms that publish their state at random moments (some immediately, some
// only after a delay that the next step-down interrupts, some never), no
// term's state is ever visible once the step-down that ended it has been
// handled, and at most one term runs at a time. The old code published
// from a separate establish goroutine after revoke had already run, so a
// deposed leader kept serving stale state until the next transition.
func TestLeadershipFlapsLeaveNoStaleState(t *testing.T) {
	var (
		published atomic.Pointer[int] // the term whose state is visible
		running   atomic.Int32        // terms running at once
		maxRun    atomic.Int32
		terms     atomic.Int32
	)
	term := func(ctx context.Context) {
		n := int(terms.Add(1))
		if r := running.Add(1); r > maxRun.Load() {
			maxRun.Store(r)
		}
		defer running.Add(-1)
		// Establish: sometimes slow (Barrier, Promote), sometimes failing.
		switch rand.IntN(4) {
		case 0:
			return // could not establish
		case 1:
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(rand.IntN(300)) * time.Microsecond):
			}
		}
		published.Store(&n)
		defer published.CompareAndSwap(&n, nil) // revoke, as leaderLoop defers it
		<-ctx.Done()
	}
	notify := make(chan bool)
	handled := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		followLeadership(ctx, notify, nil, func() {
			select {
			case handled <- struct{}{}:
			default:
			}
		}, term)
	}()
	send := func(v bool) {
		t.Helper()
		select {
		case notify <- v:
		case <-time.After(10 * time.Second):
			t.Fatal("followLeadership stopped reading notifications")
		}
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatal("notification not handled")
		}
	}
	const flaps = 500
	for i := 0; i < flaps; i++ {
		send(true)
		for range rand.IntN(200) { // let some terms publish first
			runtime.Gosched()
		}
		send(false)
		if p := published.Load(); p != nil {
			t.Fatalf("flap %d: term %d's leader state still visible after its step-down was handled", i, *p)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("followLeadership did not return after ctx ended")
	}
	if got := terms.Load(); got != flaps {
		t.Fatalf("%d terms ran for %d gains of leadership", got, flaps)
	}
	if m := maxRun.Load(); m > 1 {
		t.Fatalf("%d terms ran at once", m)
	}
}

// An Apply that Raft refused before appending its entry is a definite
// failure (not leader), never an unknown outcome: a withdrawal of it in
// this epoch could release the grant of the client's retry, made afresh
// in the same epoch. A leadership transfer in progress refuses entries so.
func TestNeverAppendedIsNotUnknown(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{raft.ErrNotLeader, true},
		{raft.ErrEnqueueTimeout, true},
		{raft.ErrLeadershipTransferInProgress, true},
		{fmt.Errorf("apply: %w", raft.ErrLeadershipTransferInProgress), true},
		{raft.ErrLeadershipLost, false}, // appended: it may still commit
		{raft.ErrRaftShutdown, false},
	} {
		if got := neverAppended(c.err); got != c.want {
			t.Errorf("neverAppended(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
