package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
)

// Scenario: a leader flooded by another client's bodiless requests refuses
// this CLI's get for its load until --timeout. The hint says the nodes were
// reached and refused for load, that a client sending its bodies is not
// the cause, where to look (leasenode_refusals_total), and not "no leader
// could be reached ... leasenode dev" (new-user review); it exits 3.
func TestOverloadHintIsNotUnreachable(t *testing.T) {
	refusal := errors.New("node: too many requests waiting for their bodies: 1024 requests from the caller's /24 (IPv6 /64) wait for their bodies")
	for _, cause := range []error{nil, timeoutCause{700 * time.Millisecond}} {
		err := fmt.Errorf("get %q: %w", "go/x", &lease.GiveUpError{Sentinel: lease.ErrOverloaded, After: 700 * time.Millisecond, Took: 700 * time.Millisecond, Cause: cause, Last: refusal})
		if code := exitCode(err); code != exitUnreachable {
			t.Errorf("cause %v: exit %d, want %d", cause, code, exitUnreachable)
		}
		hint := hintFor(err, "get", false, "700ms")
		for _, want := range []string{"refused the request for their load", "leasenode_refusals_total", "--timeout (700ms here)", "sends each request's body with it, so what fills the limit is other clients'"} {
			if !strings.Contains(hint, want) {
				t.Errorf("cause %v: overload hint %q lacks %q", cause, hint, want)
			}
		}
		for _, bad := range []string{"no leader could be reached", "leasenode dev", "check --addr"} {
			if strings.Contains(hint, bad) {
				t.Errorf("cause %v: overload hint %q says %q", cause, hint, bad)
			}
		}
	}
}

// The no-leader hint suggests --timeout 2s only to a user who left
// --timeout at its default, and otherwise repeats the value given (it said
// "shorten it with --timeout 2s" after --timeout 3s; new-user review).
func TestNoLeaderHintRepeatsTheTimeoutGiven(t *testing.T) {
	na := &noAnswerError{err: context.DeadlineExceeded, ge: &lease.GiveUpError{Sentinel: lease.ErrNoLeader}, answered: true, noLeader: true}
	err := fmt.Errorf("get %q: %w", "k", na)
	if hint := hintFor(err, "get", false, ""); !strings.Contains(hint, "(10s by default;") || !strings.Contains(hint, "shorten it with --timeout 2s") {
		t.Errorf("hint with the default --timeout: %q", hint)
	}
	hint := hintFor(err, "get", false, "3s")
	if !strings.Contains(hint, "(3s here;") || strings.Contains(hint, "--timeout 2s") || strings.Contains(hint, "by default") {
		t.Errorf("hint after --timeout 3s: %q; want it to say 3s and suggest no other value", hint)
	}
}

// A waiting acquire or a watch refused at an agent's --max-waiters or
// --max-watches exits 1, as README's exit codes say, and the hint names
// the CLI's way not to wait (--wait 0), not a Go call.
func TestMaxWaitersRefusalHint(t *testing.T) {
	err := fmt.Errorf("acquire %q: %w: node v1 serves 1 waiting acquires, its limit (agent --max-waiters 1): retry later, use TryAcquire", "k", lease.ErrTooManyWaiters)
	if code := exitCode(err); code != exitFailure {
		t.Errorf("--max-waiters refusal: exit %d, want %d", code, exitFailure)
	}
	if hint := hintFor(err, "acquire", false, ""); !strings.Contains(hint, "--wait 0") || strings.Contains(hint, "TryAcquire") {
		t.Errorf("--max-waiters hint: %q", hint)
	}
	err = fmt.Errorf("watch %q: %w: 1 watches open on this node, its limit (agent --max-watches)", "w/", lease.ErrTooManyWatches)
	if code := exitCode(err); code != exitFailure {
		t.Errorf("--max-watches refusal: exit %d, want %d", code, exitFailure)
	}
	if hint := hintFor(err, "watch", false, ""); !strings.Contains(hint, "--max-watches") {
		t.Errorf("--max-watches hint: %q", hint)
	}
}

// A request that began with little of --timeout left (status's last round
// of polling, begun 3 ms before the deadline) says that --timeout bounds
// the whole command, not "gave up after 3ms: --timeout 4s ran out" alone
// (new-user review); status does not begin a round that late.
func TestLateRequestSaysTimeoutBoundsTheCommand(t *testing.T) {
	cf := &clientFlags{timeout: 4 * time.Second}
	ge := &lease.GiveUpError{Sentinel: lease.ErrNoLeader, After: 3 * time.Millisecond, Took: 3 * time.Millisecond, Cause: timeoutCause{cf.timeout},
		Answer: errors.New("no leader: node u1 is Candidate in term 3"), Last: errors.New("connection refused")}
	msg := cf.explain(fmt.Errorf("status: %w", ge)).Error()
	if want := "--timeout 4s ran out, which bounds the whole command: this request began with 3ms of it left)"; !strings.Contains(msg, want) {
		t.Errorf("a request begun 3ms before --timeout 4s ran out: %q; want %q", msg, want)
	}
	ge.After, ge.Took = 4*time.Second, 4*time.Second
	if msg := cf.explain(fmt.Errorf("status: %w", ge)).Error(); strings.Contains(msg, "bounds the whole command") {
		t.Errorf("a request that had all of --timeout: %q", msg)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	if began := time.Now(); pollAgain(ctx, 200*time.Millisecond) || time.Since(began) > 100*time.Millisecond {
		t.Errorf("pollAgain with 600ms left: another round, or slept; want neither")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if !pollAgain(ctx, 10*time.Millisecond) {
		t.Errorf("pollAgain with 5s left: no other round")
	}
}
