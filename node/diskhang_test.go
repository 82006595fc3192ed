package node_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/metrics"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// A watch stream served by a leader whose own disk hangs ends, saying
// why, and a watch started again is served by the new leader and sees
// its grants. Before, the old leader (stuck in hashicorp/raft's leader
// loop, applying nothing) kept the stream open and silent: new-user
// review of 91beb32 (fsfreeze of the leader's data dir): 8 grants at the
// new leader over 11 s, nothing on the watch for 61 s, then all of them
// at once when the disk came back. The old leader also says in Status,
// and in its refusals, that its own disk hangs.
func TestWatchAtLeaderWithHungDiskEnds(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{API: true})
	li, l := c.Leader()
	addrs := []string{l.APIAddr()} // the watch goes to the leader
	var others []string
	for i := range c.Size() {
		if i != li {
			addrs = append(addrs, c.Node(i).APIAddr())
			others = append(others, c.Node(i).APIAddr())
		}
	}
	dial := func(holder string, addrs []string, opts ...lease.Option) *lease.Client {
		t.Helper()
		cl, err := lease.Dial(ctxT(t, 10*time.Second), addrs, append([]lease.Option{lease.WithHolder(holder)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close(ctxT(t, 5*time.Second)) })
		return cl
	}
	watcher := dial("watcher", addrs, lease.WithRetryTimeout(30*time.Second))
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := watcher.Watch(wctx, "w/")
	if err != nil {
		t.Fatal(err)
	}
	next := func(d time.Duration) (lease.Event, bool, bool) {
		select {
		case e, ok := <-events:
			return e, ok, true
		case <-time.After(d):
			return lease.Event{}, false, false
		}
	}
	if e, ok, in := next(10 * time.Second); !in || !ok || e.Type != lease.Listed {
		t.Fatalf("watch at the leader: %+v (open %v, in time %v), want its Listed event", e, ok, in)
	}

	release := l.StallLogWrites()
	t.Cleanup(release)
	stalled := time.Now()
	go func() { // a write at the old leader, which hangs
		_, _ = l.Acquire(ctxT(t, 20*time.Second), acq("x", "h", 1, 5*time.Second))
	}()
	acquirer := dial("acquirer", others, lease.WithRetryTimeout(30*time.Second))
	ls, err := acquirer.AcquireTimeout(ctxT(t, 40*time.Second), "w/1", 30*time.Second, lease.TTL(20*time.Second))
	if err != nil {
		t.Fatalf("no grant at the new leader: %v", err)
	}
	t.Logf("granted w/1 (token %d) %v after the leader's disk hung", ls.Token(), time.Since(stalled).Round(time.Millisecond))

	// The stream at the old leader ends (it applies nothing), saying why.
	const patience = 15 * time.Second
	var broken lease.Event
	for deadline := time.Now().Add(patience); ; {
		e, ok, in := next(time.Until(deadline))
		if !in {
			t.Fatalf("the watch at the leader whose disk hangs sent nothing and did not end %v after a grant at the new leader (%v after the stall)", patience, time.Since(stalled).Round(time.Millisecond))
		}
		if !ok {
			break
		}
		t.Logf("watch event: %s %s %v", e.Type, e.Key, e.Err)
		if e.Type == lease.Broken {
			broken = e
		}
	}
	t.Logf("the watch at the old leader ended %v after the stall: %v", time.Since(stalled).Round(time.Millisecond), broken.Err)
	if broken.Err == nil || !strings.Contains(broken.Err.Error(), "own disk hangs") {
		t.Errorf("the watch ended without a Broken event naming the old leader's hung disk: %+v", broken)
	}
	// Watched again: the new leader serves it, and lists the grant.
	events, err = watcher.Watch(wctx, "w/")
	if err != nil {
		t.Fatalf("watch again: %v", err)
	}
	seen := false
	for !seen {
		e, ok, in := next(10 * time.Second)
		if !in || !ok {
			t.Fatalf("the watch started again did not list w/1 (open %v, in time %v)", ok, in)
		}
		seen = e.Key == "w/1" && e.Token == ls.Token()
	}

	// The old leader says so: Status, readiness, its refusals, and
	// a watch opened there directly.
	dir := c.Config(li).DataDir
	st, err := l.Status(ctxT(t, 5*time.Second), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if msg := st.GetOwnDiskHung(); !strings.Contains(msg, "own disk hangs") || !strings.Contains(msg, dir) {
		t.Errorf("status of the old leader (%s %v) does not say its own disk hangs in %s: %q", st.GetRaftState(), st.GetServing(), dir, msg)
	}
	if err := metrics.Ready(l, 100); err == nil || !strings.Contains(err.Error(), "own disk hangs") {
		t.Errorf("readiness of the old leader: %v, want it to say its own disk hangs", err)
	}
	if _, err := l.Watch(ctxT(t, 5*time.Second), &pb.WatchRequest{Prefix: "w/"}); err == nil || !strings.Contains(err.Error(), "own disk hangs") {
		t.Errorf("a watch opened at the old leader: %v, want a refusal naming its hung disk", err)
	}
	start := time.Now()
	_, err = l.List(ctxT(t, 10*time.Second), &pb.ListRequest{})
	t.Logf("list at the old leader: %v after %v", err, time.Since(start).Round(time.Millisecond))
	release()
}

// A follower whose own disk hangs says so: its Status, its readiness
// and its refusals name its hung disk, at once rather than after waiting
// for a leader it cannot follow (a request it can forward to the leader
// it knows still goes there). Before, it said "no leader known: this
// node is Follower in term 2", and an acquire sent to it alone took 11 s
// to fail with "context deadline exceeded" (new-user review of 91beb32).
func TestFollowerWithHungDiskSaysSo(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{})
	_, l := c.Leader()
	fi, f := c.Follower()
	release := f.StallLogWrites()
	t.Cleanup(release)
	mustGrant(t, l, acq("k", "h", 1, time.Minute)) // f's write of it hangs
	dir := c.Config(fi).DataDir
	nodetest.Eventually(t, 20*time.Second, func() error {
		st, err := f.Status(ctxT(t, 5*time.Second), &pb.StatusRequest{})
		if err != nil {
			return err
		}
		if msg := st.GetOwnDiskHung(); !strings.Contains(msg, "own disk hangs") || !strings.Contains(msg, dir) {
			return fmt.Errorf("status of the follower whose disk hangs (%s): own_disk_hung %q, want it named, with %s", st.GetRaftState(), msg, dir)
		}
		return nil
	})
	if err := metrics.Ready(f, 100); err == nil || !strings.Contains(err.Error(), "own disk hangs") {
		t.Errorf("readiness of the follower whose disk hangs: %v", err)
	}
	start := time.Now()
	_, err := f.Acquire(ctxT(t, 20*time.Second), acq("k2", "h", 2, time.Minute))
	took := time.Since(start)
	t.Logf("acquire at the follower whose disk hangs: %v after %v", err, took.Round(time.Millisecond))
	// Forwarded to the leader it knows (which commits with the other
	// follower, or answers that it is in an election: on a busy host the
	// two live voters of three may hold one), or refused naming its
	// disk: never a silent wait for its caller's whole context.
	if errors.Is(err, context.DeadlineExceeded) || took >= 15*time.Second {
		t.Errorf("acquire at a follower whose disk hangs waited out its context (%v): %v", took.Round(time.Millisecond), err)
	}
	release()
}
