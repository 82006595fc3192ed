package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// timeoutCause is the cause of a request context that --timeout ended:
// its message names the flag ("context deadline exceeded" named nothing a
// user set; new-user review), and it still is a deadline to errors.Is.
type timeoutCause struct{ d time.Duration }

func (c timeoutCause) Error() string        { return fmt.Sprintf("--timeout %v ran out", c.d) }
func (c timeoutCause) Is(target error) bool { return target == context.DeadlineExceeded }

// withTimeout bounds ctx by --timeout, with timeoutCause as its cause.
func (c *clientFlags) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, c.timeout, timeoutCause{c.timeout})
}

// noAnswerError is a request that gave up when its time ran out with no
// node's answer to say why: each attempt was still waiting (a node
// without a leader holds a request about an election before it says so),
// and the message read "gave up after 1.991s: context deadline exceeded):
// context deadline exceeded", with a hint to check --addr, while the
// nodes answered fine but had lost their quorum (new-user review). It
// says instead what the nodes say when asked again, and so does the hint.
type noAnswerError struct {
	err   error // the request's error, as lease returned it
	ge    *lease.GiveUpError
	nodes string // what the nodes say now, from their Status
	// answered: some node answered the Status asked after the request
	// gave up, so --addr is right; noLeader: none of those knows a leader.
	answered, noLeader bool
}

func (e *noAnswerError) Error() string {
	why := "the retry timeout ran out"
	if e.ge.Cause != nil {
		why = e.ge.Cause.Error()
	}
	return fmt.Sprintf("%v (gave up after %v: %s): no node answered the request in that time; asked now, %s",
		e.ge.Sentinel, e.ge.After.Round(time.Millisecond), why, e.nodes)
}

func (e *noAnswerError) Unwrap() error { return e.err }

// explain returns err, or, for a request that gave up on time without any
// node's answer, a noAnswerError saying what the nodes at --addr say now
// (each asked for its Status, within a second). A request that began
// with little of --timeout left (the command's earlier requests or waits
// used the rest) says so: "gave up after 3ms: --timeout 4s ran out" read
// as a timeout that had not run its course (new-user review).
func (c *clientFlags) explain(err error) error {
	err = c.explainSilence(err)
	var ge *lease.GiveUpError
	var tc timeoutCause
	if !errors.As(err, &ge) || ge.Cause == nil || !errors.As(ge.Cause, &tc) || ge.Took >= tc.d*9/10 {
		return err
	}
	return &rewordedError{err: err, old: tc.Error() + ")", new: fmt.Sprintf("%v, which bounds the whole command: this request began with %v of it left)", tc, ge.Took.Round(time.Millisecond))}
}

// explainSilence is explain without the note on a late start.
func (c *clientFlags) explainSilence(err error) error {
	var ge *lease.GiveUpError
	if !errors.As(err, &ge) || ge.Stall != nil {
		return err
	}
	var tc timeoutCause
	if ge.Answer != nil {
		// A node said why; the last attempt was cut by --timeout (watch
		// cancels it): say so, not "context canceled".
		if ge.Cause != nil && errors.As(ge.Cause, &tc) && (errors.Is(ge.Last, context.Canceled) || errors.Is(ge.Last, context.DeadlineExceeded)) {
			last := ge.Last.Error()
			if ce := (*connect.Error)(nil); errors.As(ge.Last, &ce) && ce.Message() != "" {
				last = ce.Message() // as lease's message shows it
			}
			return &rewordedError{err: err, old: "(last attempt: " + last + ")", new: "(the last attempt was still waiting when " + tc.Error() + ")"}
		}
		return err
	}
	switch {
	case explainedByNode(ge.Last):
		// The last attempt's answer says why (an overload refusal,
		// say): not "no node answered", even if --timeout ended the
		// back-off after it.
		return err
	case ge.Cause == nil && errors.Is(ge.Last, context.DeadlineExceeded): // the retry timeout ran out
	case ge.Cause != nil && errors.As(ge.Cause, &tc): // --timeout ran out (watch cancels with it)
	default:
		return err // ctrl-c, a bound of the command's own, or a node's own error
	}
	api, aerr := c.api()
	if aerr != nil {
		return err
	}
	defer api.Close()
	addrs := c.addrs()
	said := make([]string, len(addrs))
	var (
		mu                 sync.Mutex
		answered, anyLeads bool
		silent             []string
		wg                 sync.WaitGroup
	)
	for i, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			s, serr := api.StatusAt(ctx, addr)
			mu.Lock()
			defer mu.Unlock()
			if serr != nil {
				silent = append(silent, addr)
				return
			}
			answered = true
			state := strings.ToLower(s.GetRaftState())
			if l := s.GetHeader().GetLeaderId(); l != "" {
				anyLeads = true
				said[i] = fmt.Sprintf("%s knows leader %s (%s in term %d)", dash(s.GetNodeId()), l, state, s.GetTerm())
			} else {
				said[i] = fmt.Sprintf("%s knows no leader (%s in term %d)", dash(s.GetNodeId()), state, s.GetTerm())
			}
		}()
	}
	wg.Wait()
	slices.Sort(silent)
	var parts []string
	for _, s := range said {
		if s != "" {
			parts = append(parts, s)
		}
	}
	if len(silent) > 0 {
		parts = append(parts, fmt.Sprintf("%s did not answer", strings.Join(silent, ", ")))
	}
	return &noAnswerError{err: err, ge: ge, nodes: strings.Join(parts, "; "), answered: answered, noLeader: answered && !anyLeads}
}

// explainedByNode reports whether err is a node's answer with a reason in
// its error detail (an overload refusal, no leader), as opposed to an
// attempt that ended without one (a deadline, a refused connection).
func explainedByNode(err error) bool {
	return err != nil && detailReason(err) != pb.Reason_REASON_UNSPECIFIED
}

// rewordedError is err with one phrase of its message replaced.
type rewordedError struct {
	err      error
	old, new string
}

func (e *rewordedError) Error() string { return strings.Replace(e.err.Error(), e.old, e.new, 1) }
func (e *rewordedError) Unwrap() error { return e.err }
