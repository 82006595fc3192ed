package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: a rolling restart of all three agents (SIGTERM, start again,
// wait for /readyz, next; the leader last, as the README says) under a
// client that keeps 20 leases alive. A graceful stop keeps the node a
// voter, so the cluster never runs on fewer than its three voters, no
// lease is lost, and there is never a window without a serving leader
// longer than one election (a stopping leader hands over first).
func TestRollingRestartKeepsLeasesAndLeader(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{agents[0].api, agents[1].api, agents[2].api},
		lease.WithTTL(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	var leases []*lease.Lease
	for i := range 20 {
		l, err := cl.Acquire(ctxT(t, 10*time.Second), fmt.Sprintf("roll/%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}

	// Watch for windows without a serving leader, from outside: every
	// 10 ms ask each agent that is up whether it serves.
	api, err := lease.NewRemote([]string{agents[0].api, agents[1].api, agents[2].api})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	var (
		mu      sync.Mutex
		longest time.Duration
		gapFrom time.Time
	)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ctx.Err() == nil {
			serving := false
			for _, a := range agents {
				sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
				st, err := api.StatusAt(sctx, a.api)
				scancel()
				serving = serving || err == nil && st.GetServing()
			}
			now := time.Now()
			mu.Lock()
			switch {
			case !serving && gapFrom.IsZero():
				gapFrom = now
			case serving && !gapFrom.IsZero():
				longest = max(longest, now.Sub(gapFrom))
				gapFrom = time.Time{}
			}
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	leader := leaderOf(t, agents, func(*agent) bool { return true })
	order := make([]*agent, 0, len(agents))
	for _, a := range agents {
		if a != leader {
			order = append(order, a)
		}
	}
	order = append(order, leader)
	for _, a := range order {
		a.p.kill(syscall.SIGTERM)
		if code := a.p.wait(t, 15*time.Second); code != 0 {
			t.Fatalf("%s exit after SIGTERM: %d\n%s", a.id, code, a.p.stderr)
		}
		// Down, but still one of the three voters: one more failure now
		// costs no quorum.
		resp, err := api.Members(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		voters := 0
		for _, m := range resp.GetMembers() {
			if m.GetRaft() == "voter" {
				voters++
			}
		}
		if voters != 3 {
			t.Fatalf("%s stopped: the configuration has %d voters, want 3: %v", a.id, voters, resp.GetMembers())
		}
		a.restart(t)
		// Move on only once the restarted node is a voter again and has
		// caught up, as an operator checking `leasenode status` would.
		nodetest.Eventually(t, 20*time.Second, func() error {
			resp, err := api.Members(ctxT(t, 2*time.Second))
			if err != nil {
				return err
			}
			voters := 0
			for _, m := range resp.GetMembers() {
				if m.GetRaft() == "voter" && m.GetStatus() == "alive" {
					voters++
				}
			}
			if voters != 3 {
				return fmt.Errorf("%d alive voters: %v", voters, resp.GetMembers())
			}
			return nil
		})
	}
	cancel()
	select {
	case <-watched:
	case <-time.After(10 * time.Second):
		t.Fatal("leader watcher did not stop")
	}

	for _, l := range leases {
		if !l.IsHealthy() {
			t.Errorf("lease %s lost during the rolling restart: %v", l.Key(), l.Err())
		}
	}
	got, err := cl.List(ctxT(t, 10*time.Second), "roll/")
	if err != nil || len(got) != len(leases) {
		t.Fatalf("after the restart: %d leases (%v), want %d", len(got), err, len(leases))
	}
	mu.Lock()
	defer mu.Unlock()
	// One election with fast timing is ~0.5 s; the bound leaves room
	// for a loaded machine, and a handover usually leaves no gap at all.
	if longest > time.Second {
		t.Errorf("a window of %v without a serving leader; want at most one election", longest)
	}
	t.Logf("longest window without a serving leader: %v", longest)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
