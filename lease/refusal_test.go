package lease_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/transport/pb"
)

// scriptedAcquires answers Acquire from a script of errors and Abandon with a
// fixed outcome.
type scriptedAcquires struct {
	lease.Backend
	mu       sync.Mutex
	acquires []error
	ids      []uint64
	abandon  pb.AbandonOutcome
	abandons []uint64
	// onAcquire, if set, runs after each Acquire is recorded (before
	// its scripted answer): a test cancels the caller there.
	onAcquire func()
}

func (s *scriptedAcquires) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids = append(s.ids, r.GetRequestId())
	if s.onAcquire != nil {
		s.onAcquire()
	}
	if len(s.acquires) == 0 {
		return &pb.AcquireResponse{Granted: false, Holder: "other"}, nil
	}
	err := s.acquires[0]
	s.acquires = s.acquires[1:]
	return nil, err
}

func (s *scriptedAcquires) Abandon(ctx context.Context, r *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.abandons = append(s.abandons, r.GetRequestId())
	return &pb.AbandonResponse{Outcome: s.abandon}, nil
}

func (s *scriptedAcquires) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return nil, errors.New("no")
}

// A call one of whose attempts was granted and has ended (its id found
// spent, or the grant released by the settling Abandon) and that is then
// refused as invalid reports ErrUnknownOutcome, never a plain refusal: the
// grant was applied and may have been seen (lease/doc.go). Adversarial
// review s31, finding 3.
func TestRefusalAfterAnEndedGrantIsUnknown(t *testing.T) {
	// The node's own errors, as an embedded backend returns them.
	unknown := func() error { return fmt.Errorf("%w: leader lost mid-apply", node.ErrUnknownOutcome) }
	invalid := fmt.Errorf("%w: format gate: node n2 may read an older format", node.ErrInvalid)
	for _, tc := range []struct {
		name    string
		script  []error
		abandon pb.AbandonOutcome
	}{
		{"spent, then unknown, then invalid; abandon: never granted", []error{unknown(),
			fmt.Errorf("%w: request id spent", node.ErrStaleRequest), unknown(),
			invalid}, pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED},
		{"unknown, then invalid; abandon: released (it was granted)", []error{unknown(),
			invalid}, pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &scriptedAcquires{acquires: tc.script, abandon: tc.abandon}
			cl, err := lease.New(b, lease.WithBackoff(time.Millisecond, 5*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l, err := cl.TryAcquire(ctx, "k", lease.Shared())
			t.Logf("ids sent %v, abandoned %v: lease %v, err %v; ErrInvalid=%v ErrUnknownOutcome=%v",
				b.ids, b.abandons, l, err, errors.Is(err, lease.ErrInvalid), errors.Is(err, lease.ErrUnknownOutcome))
			if !errors.Is(err, lease.ErrUnknownOutcome) {
				t.Errorf("an attempt of this call was applied (granted, then ended), but the call reports a plain refusal")
			}
		})
	}
}

// A caller that gives up while an attempt's outcome is unknown gets its
// context's error alone when the settling Abandon finds nothing held,
// whether it released the grant (RELEASED) or the leader had withdrawn it
// first (ENDED: the id spent), a race inside the cluster; and
// ErrUnknownOutcome when an earlier id of the call was found spent, as
// lease/doc.go says (its grant was applied and may have been seen).
// Adversarial review s32, finding 1: ENDED reported ErrUnknownOutcome and
// RELEASED a plain context error, for the same fact.
func TestGivingUpSettlesTheSameWhoeverEndedTheGrant(t *testing.T) {
	unknown := func() error { return fmt.Errorf("%w: leader lost mid-apply", node.ErrUnknownOutcome) }
	spent := func() error { return fmt.Errorf("%w: request id spent", node.ErrStaleRequest) }
	for _, tc := range []struct {
		name        string
		script      []error
		abandon     pb.AbandonOutcome
		wantUnknown bool
	}{
		{"released", []error{unknown()}, pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED, false},
		{"withdrawn first", []error{unknown()}, pb.AbandonOutcome_ABANDON_OUTCOME_ENDED, false},
		{"never granted", []error{unknown()}, pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED, false},
		{"an earlier id spent, then released", []error{spent(), unknown()}, pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED, true},
		{"an earlier id spent, then withdrawn", []error{spent(), unknown()}, pb.AbandonOutcome_ABANDON_OUTCOME_ENDED, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			b := &scriptedAcquires{acquires: tc.script, abandon: tc.abandon}
			b.onAcquire = func() {
				if len(b.acquires) == 1 { // the last scripted attempt: unknown
					cancel()
				}
			}
			cl, err := lease.New(b, lease.WithBackoff(time.Millisecond, 5*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close(context.Background())
			l, err := cl.Acquire(ctx, "k")
			t.Logf("ids sent %v, abandoned %v: lease %v, err %v", b.ids, b.abandons, l, err)
			if l != nil || !errors.Is(err, context.Canceled) {
				t.Fatalf("want the context's error, got lease %v, err %v", l, err)
			}
			if len(b.abandons) == 0 {
				t.Fatal("the unknown attempt was not settled")
			}
			if got := errors.Is(err, lease.ErrUnknownOutcome); got != tc.wantUnknown {
				t.Errorf("ErrUnknownOutcome: got %v, want %v", got, tc.wantUnknown)
			}
		})
	}
}

// A node's limit (--max-waiters, a source's share, a key's queue) that
// refuses the retry of an attempt whose outcome was unknown is settled
// before it is reported, as a refusal as invalid is: a copy of the
// attempt may still be granted (adversarial review s32, round 2).
func TestTooManyWaitersAfterUnknownIsSettled(t *testing.T) {
	unknown := fmt.Errorf("%w: forwarded to n1: no reply", node.ErrUnknownOutcome)
	full := fmt.Errorf("%w: node n1 serves 64 waiting acquires from your address's /24", node.ErrTooManyWaiters)
	b := &scriptedAcquires{acquires: []error{unknown, full}, abandon: pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED}
	cl, err := lease.New(b, lease.WithBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	l, err := cl.Acquire(ctxT(t, 5*time.Second), "k")
	t.Logf("ids sent %v, abandoned %v: lease %v, err %v", b.ids, b.abandons, l, err)
	if len(b.abandons) == 0 {
		t.Fatal("the refusal after an attempt with an unknown outcome was reported without settling it (no Abandon)")
	}
	if !errors.Is(err, lease.ErrTooManyWaiters) {
		t.Errorf("settled as never granted, the refusal is not reported as ErrTooManyWaiters: %v", err)
	}
}
