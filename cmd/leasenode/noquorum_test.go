package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
)

// Scenario: a 3-agent cluster loses two agents (its quorum). watch gives
// up within --timeout, as its hint says (it took 18 s with --timeout
// 10s); get --timeout 2s says why, with no "context deadline exceeded"
// twice, and its hint is about the missing leader, not --addr; members
// warns on stderr that no leader is known (new-user review).
func TestNoQuorumSaysWhyWithinTimeout(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	for _, a := range agents[1:] {
		a.p.kill(syscall.SIGKILL)
		a.p.wait(t, 10*time.Second)
	}
	addr := addrs(agents)

	began := time.Now()
	code, out, errOut := cli(t, "watch", "w/", "--addr", addr, "--timeout", "3s")
	took := time.Since(began)
	if code != exitUnreachable || took > 6*time.Second || !strings.Contains(errOut, "--timeout 3s ran out") {
		t.Errorf("watch --timeout 3s without a quorum: exit %d after %v, want 3 within about 3s\n%s%s", code, took, out, errOut)
	}

	code, out, errOut = cli(t, "get", "k", "--addr", addr, "--timeout", "2s")
	if code != exitUnreachable || strings.Contains(errOut, "deadline exceeded") || strings.Contains(errOut, "check --addr") ||
		!strings.Contains(errOut, "--timeout 2s ran out") || !strings.Contains(errOut, "knows no leader") {
		t.Errorf("get --timeout 2s without a quorum: exit %d, want 3 saying why\n%s%s", code, out, errOut)
	}

	// A request no node answered before --timeout (each attempt still
	// waiting): the nodes are asked again, and say they know no leader.
	cf := &clientFlags{addr: addr, timeout: 2 * time.Second}
	ge := &lease.GiveUpError{Sentinel: lease.ErrNoLeader, After: 2 * time.Second, Cause: timeoutCause{cf.timeout}, Last: context.DeadlineExceeded}
	err := cf.explain(fmt.Errorf("get %q: %w", "k", ge))
	msg, hint := err.Error(), hintFor(err, "get", false, "")
	if exitCode(err) != exitUnreachable || strings.Count(msg, "deadline exceeded") > 0 || !strings.Contains(msg, agents[0].id+" knows no leader") ||
		!strings.Contains(msg, "did not answer") || !strings.Contains(hint, "knows no leader") || strings.Contains(hint, "--addr") {
		t.Errorf("a request unanswered within --timeout: exit %d, %q, hint %q", exitCode(err), msg, hint)
	}

	code, out, errOut = cli(t, "members", "--addr", addr)
	if code != exitOK || !strings.Contains(out, agents[0].id) || !strings.Contains(errOut, "knows no leader") {
		t.Errorf("members without a quorum: exit %d, want 0 and a warning on stderr\n%s%s", code, out, errOut)
	}
	code, out, errOut = cli(t, "members", "--addr", addr, "-o", "json")
	if code != exitOK || !strings.Contains(errOut, "knows no leader") {
		t.Errorf("members -o json without a quorum: exit %d, want 0 and a warning on stderr\n%s%s", code, out, errOut)
	}
}
