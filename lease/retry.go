package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/transport/pb"
)

// DefaultRetryTimeout is how long a request keeps being retried while no
// leader can be reached (Consul calls it RPCHoldTimeout): about ten
// election timeouts with default timing.
const DefaultRetryTimeout = 10 * time.Second

// RetryPolicy is the one place where this package retries a request. A
// backend (an embedded node, or Remote) makes exactly one attempt per call;
// the policy retries an attempt that failed
//
//   - certainly before being applied (no leader, not the leader, node
//     closing, request never written to a connection), or
//   - with an unknown outcome, when the caller says the request is safe to
//     repeat (an acquire with the same request id, a release, a read),
//
// with exponential back-off and full jitter, until the call succeeds,
// fails for good (invalid request, stale request id, unauthenticated),
// ctx ends, or failures have lasted Timeout without a break. A call
// therefore returns within min(ctx's deadline, Timeout plus one attempt)
// when the cluster has no leader.
type RetryPolicy struct {
	// Timeout bounds a streak of failed attempts (default
	// DefaultRetryTimeout).
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the pause between attempts (default
	// DefaultBackoffMin, DefaultBackoffMax).
	BackoffMin, BackoffMax time.Duration
	// Name names Timeout in the error when it runs out (default "retry
	// timeout"; Dial's is "dial timeout").
	Name string
}

// DefaultRetryPolicy returns the policy a Client uses by default.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{Timeout: DefaultRetryTimeout, BackoffMin: DefaultBackoffMin, BackoffMax: DefaultBackoffMax}
}

// attemptKind classifies a failed attempt.
type attemptKind int

const (
	// final: retrying cannot help (invalid, stale request id, refused).
	final attemptKind = iota
	// notApplied: the request certainly had no effect; retry anywhere.
	notApplied
	// unknown: the request may have been applied.
	unknown
)

// classifyAttempt says what a failed attempt means. Errors of an embedded
// node carry their reason (Reason method); a remote node's carry it in the
// connect error's detail; a Remote attempt that never wrote its request is
// a *NotSentError. Anything else (a connection broken after the request
// was written, a timeout) may have been applied.
func classifyAttempt(err error) attemptKind {
	if errors.Is(err, ErrTLSSetup) || errors.Is(err, ErrWrongPort) {
		return final
	}
	var ns *NotSentError
	if errors.As(err, &ns) {
		return notApplied
	}
	switch reasonOf(err) {
	case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER, pb.Reason_REASON_CLOSED, pb.Reason_REASON_OVERLOADED:
		return notApplied
	case pb.Reason_REASON_UNKNOWN_OUTCOME:
		return unknown
	case pb.Reason_REASON_RESOURCE_EXHAUSTED:
		// A per-node limit (--max-waiters): retrying at once would only
		// add to the load it bounds.
		return final
	case pb.Reason_REASON_UNSPECIFIED:
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return unknown
		}
		if errors.Is(err, ErrNoLeader) {
			return notApplied
		}
		return unknown
	}
	return final
}

// Do runs f until it succeeds or the policy gives up, and returns f's last
// error (wrapped with ErrNoLeader or ErrUnknownOutcome when the policy
// gave up on retryable failures). idempotent says whether an attempt with
// an unknown outcome may be repeated; if not, Do returns at once with an
// error matching ErrUnknownOutcome.
func (p RetryPolicy) Do(ctx context.Context, idempotent bool, f func(context.Context) error) error {
	return p.do(ctx, idempotent, false, f)
}

// do is Do; waits says that an attempt may wait at the leader (a waiting
// acquire queued for a held key) for as long as its context allows. Such
// an attempt that fails after it waited longer than the back-off (a leader
// change cut the wait short) was not a run of failures: the streak that
// the retry timeout bounds starts when it failed, not when it began.
// Otherwise a wait longer than the retry timeout gave up at the first
// leader change, whatever the caller's context allowed. An answer "no
// leader" is no such wait, however long the node held it (it waits about
// an election for a leader first): without a quorum every attempt took
// that long, and a waiting acquire of a free key never gave up. Nor is
// the time a stopped node (SIGSTOP: its connections open, nothing
// answered) held the request until the liveness check ended it: a Remote
// reports how long the node was heard from during the attempt
// (attemptWaited), and without that every such attempt restarted the
// count too.
func (p RetryPolicy) do(ctx context.Context, idempotent, waits bool, f func(context.Context) error) error {
	p = p.withDefaults()
	bo := backoff{cur: p.BackoffMin, max: p.BackoffMax}
	start := time.Now()
	var streak time.Time // start of the current run of failures
	sawUnknown := false
	var answer error // the last failure a node explained, in this streak
	for {
		began := time.Now()
		err := f(ctx)
		if err == nil {
			return nil
		}
		if explained(err) {
			answer = err
		}
		kind := classifyAttempt(err)
		switch {
		case kind == final:
			return err
		case kind == unknown && !idempotent:
			return unknownErr(err)
		}
		sawUnknown = sawUnknown || kind == unknown
		held := time.Since(began)
		var hf interface{ attemptWaited() time.Duration }
		if errors.As(err, &hf) {
			held = hf.attemptWaited() // the part a live node held it
		}
		if waits && held >= bo.cur && reasonOf(err) != pb.Reason_REASON_NO_LEADER {
			streak = time.Now()
			if !explained(err) {
				answer = nil
			}
		} else if streak.IsZero() {
			streak = began
		}
		giveUp := func(cause error) error {
			ge := &GiveUpError{Sentinel: ErrNoLeader, After: time.Since(streak), Took: time.Since(start), Cause: cause, Timer: p.Name, Last: err}
			if answer != err {
				ge.Answer = answer
			}
			if ge.Stall = stallOf(err); ge.Stall == nil {
				ge.Stall = stallOf(answer)
			}
			switch {
			case sawUnknown:
				ge.Sentinel = ErrUnknownOutcome
			case reasonOf(err) == pb.Reason_REASON_OVERLOADED:
				ge.Sentinel = ErrOverloaded
			}
			return ge
		}
		if ctx.Err() != nil {
			return giveUp(context.Cause(ctx))
		}
		if time.Since(began) >= bo.cur {
			// A slow failure (a wait cut short by a leader change, say)
			// is no tight loop: try again promptly, back off afresh.
			bo.reset(p.BackoffMin)
		}
		wait := bo.next()
		if time.Since(streak)+wait > p.Timeout {
			return giveUp(nil)
		}
		// The least of the deadline an attempt begins with: a node that
		// knows no leader holds a request about an election before it
		// says so, and the next attempt is likely held as long, so it
		// needs that much left (up to maxNoLeaderHold) to end with an
		// answer rather than be cut, its outcome unknown: an acquire
		// --wait 0 with --timeout 2s at a cluster without a quorum
		// exited "outcome unknown" when an answer took over a second
		// on a loaded host.
		need := minAttemptLeft
		if reasonOf(err) == pb.Reason_REASON_NO_LEADER {
			need = max(need, min(held, maxNoLeaderHold))
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl)-wait < need {
			// An attempt begun this close to the caller's deadline ends
			// with it more often than with an answer (a node's "no
			// leader" comes just before the deadline, and a busy host
			// delays it past), and an attempt cut short by the deadline
			// may have applied: the caller would get an unknown outcome
			// where every answer was certain. Wait out the deadline
			// instead, and end as a call whose deadline came between
			// attempts.
			<-ctx.Done()
			return giveUp(context.Cause(ctx))
		}
		if !ctxtime.Sleep(ctx, wait) {
			return giveUp(context.Cause(ctx))
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < need {
			// The back-off's timer fired late (a busy host): the rule
			// above holds for the attempt as it begins, not as planned.
			<-ctx.Done()
			return giveUp(context.Cause(ctx))
		}
	}
}

// minAttemptLeft is the least of the caller's deadline a retry begins
// with (see RetryPolicy.do); after a "no leader" answer, as much as that
// answer took, up to maxNoLeaderHold.
const (
	minAttemptLeft  = 100 * time.Millisecond
	maxNoLeaderHold = 2 * time.Second
)

// GiveUpError is what RetryPolicy.Do returns when it stops retrying: it
// matches Sentinel (ErrNoLeader: nothing was applied; ErrOverloaded: nor
// was it, the last attempt refused as overloaded; ErrUnknownOutcome:
// an attempt may have been), Cause (the context's cause, if the context
// ended) and the last attempt's error.
type GiveUpError struct {
	Sentinel error
	After    time.Duration // how long the failures lasted
	Took     time.Duration // how long the call retried in all (from its first attempt)
	Cause    error         // nil when the retry timeout ran out
	Timer    string        // the timeout that ran out when Cause is nil (RetryPolicy.Name)
	Last     error
	// Answer is the last failure a node explained (no leader: an election
	// in progress, say), if the last attempt's was not one: a node that
	// does not answer at all (connection refused) says less than one that
	// does, so the message leads with the answer.
	Answer error
	// Stall is set when the last answer came from a leader that cannot
	// commit: the message leads with it, not with "no leader", which
	// sent users to look for an election while every voter was up.
	Stall *CommitStallError
}

func (e *GiveUpError) Error() string {
	why := cmp.Or(e.Timer, "retry timeout")
	if e.Cause != nil {
		why = e.Cause.Error()
	}
	last := describe(e.Last)
	if e.Answer != nil {
		last = describe(e.Answer) + " (last attempt: " + last + ")"
	}
	after := e.After.Round(time.Millisecond).String()
	if took, a := e.Took.Round(time.Millisecond), e.After.Round(time.Millisecond); a > 0 && took-a >= 10*time.Millisecond {
		// A wait at the leader that a leader change cut short is not a
		// failure: the streak began after it, but the caller waited all.
		after = fmt.Sprintf("%v, the last %v failing", took, after)
	}
	sentinel := e.Sentinel.Error()
	if e.Stall != nil {
		if e.Sentinel == ErrNoLeader {
			sentinel = "lease: the leader cannot commit"
		}
		last = e.Stall.Error()
		if e.Stall.Err != e.Last && e.Answer != nil {
			last += " (last attempt: " + describe(e.Last) + ")"
		}
	}
	return fmt.Sprintf("%s (gave up after %s: %s): %s", sentinel, after, why, last)
}

// Unwrap lets errors.Is match the sentinel, the cause and the last error.
func (e *GiveUpError) Unwrap() []error {
	out := []error{e.Sentinel, e.Last}
	if e.Stall != nil {
		out = append(out, e.Stall)
	}
	if e.Cause != nil {
		out = append(out, e.Cause)
	}
	return out
}

// describe returns err's message without transport decoration: a node's
// own words for errors it sent.
func describe(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Message() != "" {
		return ce.Message()
	}
	return err.Error()
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.Timeout <= 0 {
		p.Timeout = d.Timeout
	}
	if p.BackoffMin <= 0 {
		p.BackoffMin = d.BackoffMin
	}
	if p.BackoffMax < p.BackoffMin {
		p.BackoffMax = max(d.BackoffMax, p.BackoffMin)
	}
	return p
}

// unknownErr wraps a possibly applied failure with ErrUnknownOutcome.
func unknownErr(err error) error {
	if errors.Is(err, ErrUnknownOutcome) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
}

// backoff is an exponential back-off with full jitter.
type backoff struct {
	cur, max time.Duration
}

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset(min time.Duration) { b.cur = min }
