package main

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: the leader's process is stopped (SIGSTOP) and stays stopped:
// its kernel keeps every connection open, so nothing fails, nothing
// answers. A Go client whose requests went to it keeps working: the
// liveness check ends its requests to the stopped process and they are
// retried at the leader the other two elect, so a held lease is extended
// through the stop and a new acquire is granted, with a retry timeout far
// longer than the test (without the check, both would wait for the stopped
// process: the lease would be lost and the acquire would time out).
func TestStoppedLeaderIsLeftBehind(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	const ttl = 6 * time.Second
	cl, err := lease.Dial(ctxT(t, 10*time.Second), strings.Split(addrs(agents), ","),
		lease.WithTTL(ttl), lease.WithRetryTimeout(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	held, err := cl.TryAcquire(ctxT(t, 10*time.Second), "stopped/held") // also: the client learns the leader
	if err != nil || held == nil {
		t.Fatalf("acquire before the stop: %v %v", held, err)
	}
	leader := leaderOf(t, agents, func(*agent) bool { return true })
	leader.p.kill(syscall.SIGSTOP)
	stopped := time.Now()
	t.Cleanup(func() { leader.p.kill(syscall.SIGCONT) })

	l, err := cl.TryAcquire(ctxT(t, 60*time.Second), "stopped/new")
	if err != nil || l == nil {
		t.Fatalf("acquire with the leader stopped: %v %v", l, err)
	}
	t.Logf("acquire granted %v after the stop", time.Since(stopped).Round(time.Millisecond))
	// The held lease must outlive two TTLs after the stop: extended
	// through the new leader, without a break in its validity.
	nodetest.Eventually(t, 4*ttl, func() error {
		if !held.IsHealthy() {
			t.Fatalf("lease lost with the leader stopped: %v", held.Err())
		}
		if time.Since(stopped) < 2*ttl {
			return errors.New("waiting for two TTLs to pass")
		}
		return nil
	})
	if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
}
