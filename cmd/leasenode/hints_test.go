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
