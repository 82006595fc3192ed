package lease

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport/pb"
)

// nodeAnswer is a failure a node gave a reason for.
type nodeAnswer struct{ msg string }

func (e nodeAnswer) Error() string     { return e.msg }
func (e nodeAnswer) Reason() pb.Reason { return pb.Reason_REASON_NO_LEADER }

// With a quorum lost, the one node left answers "no leader" while the dead
// ones refuse connections: giving up, the message leads with the answer,
// whichever address the last attempt tried.
func TestGiveUpLeadsWithANodesAnswer(t *testing.T) {
	p := RetryPolicy{Timeout: 50 * time.Millisecond, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	refused := &NotSentError{Addr: "127.0.0.1:7412", Err: syscall.ECONNREFUSED}
	i := 0
	err := p.Do(context.Background(), true, func(context.Context) error {
		i++
		if i == 1 {
			return nodeAnswer{"no leader: election in progress (candidate, term 6)"}
		}
		return refused
	})
	var ge *GiveUpError
	if !errors.As(err, &ge) || !errors.Is(err, ErrNoLeader) {
		t.Fatalf("gave up with %v", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "election in progress") || !strings.Contains(msg, "last attempt") {
		t.Errorf("the message lacks the node's answer: %s", msg)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the last attempt's error is not kept: %v", err)
	}
}

// A waiting acquire's attempt lasts as long as it waits at the leader: one
// that waited longer than the retry timeout and was cut short by a leader
// change is retried, not given up on as if it had been failing all along
// (the streak the timeout bounds starts when it failed). An attempt that
// does not wait keeps the old rule: its time counts.
func TestLongWaitCutShortIsRetried(t *testing.T) {
	p := RetryPolicy{Timeout: 100 * time.Millisecond, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	cut := lostLead{}
	for _, waits := range []bool{true, false} {
		tries := 0
		err := p.do(context.Background(), true, waits, func(ctx context.Context) error {
			tries++
			if tries == 1 {
				<-time.After(3 * p.Timeout) // the attempt under test: a long wait, then a leader change
				return cut
			}
			return nil
		})
		switch {
		case waits && (err != nil || tries != 2):
			t.Errorf("a wait of 3 retry timeouts cut short: %d tries, %v; want it retried", tries, err)
		case !waits && (err == nil || tries != 1):
			t.Errorf("an attempt that failed for 3 retry timeouts: %d tries, %v; want a give-up", tries, err)
		}
	}
}

// lostLead is what a leader that stepped down answers the waits it held
// (node's lostLeadErr).
type lostLead struct{}

func (lostLead) Error() string {
	return "not the leader: this node stopped leading while it served the request"
}
func (lostLead) Reason() pb.Reason { return pb.Reason_REASON_NOT_LEADER }

// A wait answered "no leader" after however long is no wait cut short:
// the node held it while it waited for a leader (new-user review s32:
// Acquire of a free key with no quorum never gave up, as every attempt
// took the node's ~3 s wait for a leader).
func TestNoLeaderAnswersAddUp(t *testing.T) {
	p := RetryPolicy{Timeout: 100 * time.Millisecond, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	tries := 0
	err := p.do(context.Background(), true, true, func(ctx context.Context) error {
		tries++
		<-time.After(p.Timeout / 2) // held by the node for a leader
		return nodeAnswer{"no leader: node n0 is Candidate in term 3"}
	})
	if !errors.Is(err, ErrNoLeader) || tries > 4 {
		t.Fatalf("%d tries of no-leader answers, %v; want a give-up after about the retry timeout", tries, err)
	}
}

// exhausted is a node's refusal of a waiter past its --max-waiters.
type exhausted struct{}

func (exhausted) Error() string {
	return "node: too many waiting acquires: ... (agent --max-waiters 4)"
}
func (exhausted) Reason() pb.Reason { return pb.Reason_REASON_RESOURCE_EXHAUSTED }

// A waiter refused for a node's --max-waiters is final: retrying it would
// only add to the load the limit bounds. It is answered after one attempt,
// as ErrTooManyWaiters with the node's words.
func TestTooManyWaitersIsFinal(t *testing.T) {
	if k := classifyAttempt(exhausted{}); k != final {
		t.Fatalf("classified %v, want final", k)
	}
	p := RetryPolicy{Timeout: time.Minute, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	attempts := 0
	err := p.Do(context.Background(), true, func(context.Context) error { attempts++; return exhausted{} })
	if attempts != 1 {
		t.Fatalf("%d attempts, want 1", attempts)
	}
	err = classify("acquire", "k", err)
	if !errors.Is(err, ErrTooManyWaiters) || !strings.Contains(err.Error(), "--max-waiters 4") {
		t.Fatalf("classified as %v", err)
	}
}

// A retry is not begun with less than minAttemptLeft of the caller's
// deadline left: such an attempt ends with the deadline more often than
// with an answer, and an attempt cut short may have applied, so the
// caller got "outcome unknown" where every answer had been "no leader"
// (the CLI's acquire after a quorum loss, on a busy host). It waits out
// the deadline instead and gives up with the last answer.
func TestNoRetryBegunAtTheDeadline(t *testing.T) {
	p := RetryPolicy{Timeout: time.Minute, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	dl, _ := ctx.Deadline()
	var least time.Duration = time.Hour
	attempts := 0
	err := p.Do(ctx, true, func(context.Context) error {
		if attempts++; attempts > 1 {
			least = min(least, time.Until(dl))
		}
		return nodeAnswer{"no leader: election in progress (candidate, term 6)"}
	})
	// (The back-off's timer may fire a little late on a busy host; without
	// the margin retries run until the deadline, within a millisecond.)
	if least < minAttemptLeft/2 {
		t.Errorf("a retry began with %v of the deadline left, want about %v", least, minAttemptLeft)
	}
	var ge *GiveUpError
	if !errors.As(err, &ge) || !errors.Is(err, ErrNoLeader) || errors.Is(err, ErrUnknownOutcome) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("gave up with %v, want ErrNoLeader at the deadline", err)
	}
	if attempts < 2 {
		t.Errorf("%d attempts: the retries before the deadline's margin did not run", attempts)
	}
}

// After a "no leader" answer that a node held for a while (it waits about
// an election for a leader first), a retry is not begun with less of the
// deadline left than that answer took: it would be cut by the deadline
// before its answer, its outcome unknown. `acquire --wait 0 --timeout 2s`
// at a cluster without a quorum exited "outcome unknown" when an answer
// took over a second on a loaded host (CI beside four campaigns).
func TestNoRetryBegunWithLessThanAnAnswerTakes(t *testing.T) {
	p := RetryPolicy{Timeout: time.Minute, BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	attempts := 0
	err := p.Do(ctx, true, func(ctx context.Context) error {
		attempts++
		select { // held as a node without a leader holds a request
		case <-time.After(400 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		return nodeAnswer{"no leader: election in progress (candidate, term 6)"}
	})
	if attempts != 1 {
		t.Errorf("%d attempts; want 1: the second would have begun with ~200 ms left, half what an answer took", attempts)
	}
	if !errors.Is(err, ErrNoLeader) || errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("gave up with %v, want ErrNoLeader", err)
	}
}
