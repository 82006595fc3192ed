package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// A leader that cannot commit (one voter of three stopped, the other's
// disk hung: heartbeats go on, so it keeps leading and answers the
// client's liveness checks) tells a waiting Acquire so, and the client
// gives up after its retry timeout with an error that names the cause,
// as it does without a quorum at all. Adversarial review: a waiting
// Acquire with a 2 s retry timeout waited its whole context (21 s).
// Both shapes of wait: a free key whose grant cannot commit, and a key
// held by a live holder (its extends cannot commit either). Once the disk
// is back, the key is granted as usual, to one holder.
func TestWaitAtLeaderThatCannotCommitGivesUp(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{API: true})
	l, hung, stopped := leaderAndFollowers(c)
	dial := func(holder string, opts ...lease.Option) *lease.Client {
		t.Helper()
		opts = append([]lease.Option{lease.WithHolder(holder)}, opts...)
		cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{l.APIAddr()}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = cl.Close(ctx)
		})
		return cl
	}
	holder := dial("holder")
	if _, err := holder.Acquire(ctxT(t, 10*time.Second), "held", lease.TTL(3*time.Second)); err != nil {
		t.Fatal(err)
	}

	term := l.Raft().CurrentTerm()
	release := c.Node(hung).StallLogWrites()
	t.Cleanup(release) // before the cluster closes (cleanups run last first)
	c.Kill(stopped)
	stoppedID := c.Config(stopped).ID

	const retry = 2 * time.Second
	const patience = 20 * time.Second // the callers' context: before the fix, the wait
	type outcome struct {
		key  string
		err  error
		took time.Duration
	}
	done := make(chan outcome, 2)
	for _, key := range []string{"free", "held"} {
		cl := dial("waiter-"+key, lease.WithRetryTimeout(retry))
		go func() {
			start := time.Now()
			ls, err := cl.Acquire(ctxT(t, patience), key, lease.TTL(3*time.Second))
			if err == nil {
				err = fmt.Errorf("granted (token %d) by a leader that cannot commit", ls.Token())
			}
			done <- outcome{key, err, time.Since(start)}
		}()
	}
	var ends []outcome
	for range 2 {
		var o outcome
		select {
		case o = <-done:
		case <-time.After(patience + 10*time.Second):
			t.Fatal("a waiting acquire did not return after its context ended")
		}
		t.Logf("wait for %q ended after %v: %v", o.key, o.took.Round(time.Millisecond), o.err)
		if o.took >= patience-time.Second {
			t.Errorf("wait for %q took its whole context (%v), not its retry timeout (%v): %v", o.key, o.took, retry, o.err)
		}
		if !errors.Is(o.err, lease.ErrNoLeader) && !errors.Is(o.err, lease.ErrUnknownOutcome) {
			t.Errorf("wait for %q: %v, want ErrNoLeader or ErrUnknownOutcome", o.key, o.err)
		}
		ends = append(ends, o)
	}
	// hashicorp/raft may yet depose the leader (its replication to the
	// hung follower times out after the transport's 10 s); then the waits
	// ended as without a quorum, which says nothing of this case.
	if !l.IsLeader() || l.Raft().CurrentTerm() != term {
		t.Logf("the leader stepped down meanwhile: the waits ended as without a quorum")
	} else {
		for _, o := range ends {
			if msg := o.err.Error(); !strings.Contains(msg, "cannot commit") || !strings.Contains(msg, stoppedID) {
				t.Errorf("wait for %q: the error does not say the leader cannot commit, naming the stopped voter %s: %v", o.key, stoppedID, o.err)
			}
		}
	}

	// The disk is back: a quorum again (the leader and the follower). The
	// free key's grant may have committed now, for its TTL; a new holder
	// waits that out and is granted, alone.
	release()
	after := dial("after")
	ls, err := after.AcquireTimeout(ctxT(t, 30*time.Second), "free", 20*time.Second, lease.TTL(10*time.Second))
	if err != nil {
		t.Fatalf("acquire once the disk is back: %v", err)
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		_, ln := c.Leader()
		if ln == nil {
			return errors.New("no leader")
		}
		r, err := ln.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: "free"})
		if err != nil {
			return err
		}
		var live []*pb.Lease
		for _, h := range r.GetHoldings() {
			if h.GetState() == pb.LeaseState_LEASE_STATE_HELD {
				live = append(live, h)
			}
		}
		if len(live) != 1 || !strings.HasPrefix(live[0].GetHolder(), "after#") || live[0].GetToken() != ls.Token() {
			return fmt.Errorf("holdings of \"free\": %v, want only after's (token %d)", r.GetHoldings(), ls.Token())
		}
		return nil
	})
}

// The leader's own disk hangs, both followers healthy. hashicorp/raft
// writes the leader's log inside its leader loop, which then neither
// commits nor steps down, while its heartbeats (other goroutines) keep
// the followers from an election: before, every acquire was refused for
// as long as the disk hung (no grant in 25 s), and a holder lost its
// lease with two healthy voters of three (adversarial review s34b). Now
// the stalled leader goes silent on Raft, the followers elect another,
// a new key is granted and a holder with a TTL longer than the
// detection and the election keeps its lease.
func TestLeaderOwnDiskHungFailsOver(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{API: true})
	li, l := c.Leader()
	var addrs []string
	for i := range c.Size() {
		addrs = append(addrs, c.Node(i).APIAddr())
	}
	dial := func(holder string, opts ...lease.Option) *lease.Client {
		t.Helper()
		cl, err := lease.Dial(ctxT(t, 10*time.Second), addrs, append([]lease.Option{lease.WithHolder(holder)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close(ctxT(t, 5*time.Second)) })
		return cl
	}
	holder := dial("holder")
	held, err := holder.Acquire(ctxT(t, 10*time.Second), "kept", lease.TTL(15*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	release := l.StallLogWrites()
	t.Cleanup(release)
	start := time.Now()
	cl := dial("after", lease.WithRetryTimeout(30*time.Second))
	ls, err := cl.AcquireTimeout(ctxT(t, 40*time.Second), "new", 30*time.Second, lease.TTL(5*time.Second))
	if err != nil {
		t.Fatalf("no grant with the leader's disk hung and two healthy voters: %v", err)
	}
	t.Logf("granted %v after the leader's disk hung (token %d)", time.Since(start).Round(time.Millisecond), ls.Token())
	// Another node serves (the stalled one may still think it leads
	// until its disk is back: its leader loop waits for its write).
	nodetest.Eventually(t, 10*time.Second, func() error {
		for i := range c.Size() {
			if i != li && c.Node(i).IsLeader() {
				return nil
			}
		}
		return fmt.Errorf("no other node serves: %s", c.Describe())
	})
	if !held.IsHealthy() {
		t.Fatalf("the holder lost its lease: %v", held.Err())
	}
	release()
	// The old leader rejoins as a follower once its disk is back.
	nodetest.Eventually(t, 20*time.Second, func() error {
		if got, want := l.Raft().AppliedIndex(), c.Node(c.WaitForLeader()).Raft().CommitIndex(); got < want {
			return fmt.Errorf("old leader applied %d of %d", got, want)
		}
		return nil
	})
}

// Every client request at a leader that cannot commit keeps invariant
// commit-or-say, not only acquires: an extend and a release proposed
// there end once the stall is found (ErrUnknownOutcome, naming the
// voters behind), and one sent after it is refused before it is
// proposed (ErrNoLeader). Before, both waited for their callers' whole
// context and said nothing of why.
func TestExtendAndReleaseAtLeaderThatCannotCommitSaySo(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{})
	l, hung, stopped := leaderAndFollowers(c)
	tokens := map[string]uint64{}
	for i, key := range []string{"extended", "released", "later"} {
		tokens[key] = mustGrant(t, l, acq(key, "h", uint64(i+1), time.Minute)).GetToken()
	}
	term := l.Raft().CurrentTerm()
	release := c.Node(hung).StallLogWrites()
	t.Cleanup(release)
	c.Kill(stopped)
	stoppedID := c.Config(stopped).ID

	const patience = 20 * time.Second // the callers' context: before the fix, the wait
	type outcome struct {
		op   string
		err  error
		took time.Duration
	}
	done := make(chan outcome, 2)
	start := time.Now()
	go func() {
		_, err := l.Extend(ctxT(t, patience), &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "extended", Token: tokens["extended"]}}})
		done <- outcome{"extend", err, time.Since(start)}
	}()
	go func() {
		_, err := l.Release(ctxT(t, patience), &pb.ReleaseRequest{Key: "released", Holder: "h", Token: tokens["released"]})
		done <- outcome{"release", err, time.Since(start)}
	}()
	check := func(o outcome, want error) {
		t.Helper()
		t.Logf("%s at a leader that cannot commit ended after %v: %v", o.op, o.took.Round(time.Millisecond), o.err)
		if o.took >= patience-time.Second {
			t.Errorf("%s took its whole context (%v): %v", o.op, o.took, o.err)
		}
		if !l.IsLeader() || l.Raft().CurrentTerm() != term {
			t.Logf("the leader stepped down meanwhile: %s ended as without a quorum", o.op)
			return
		}
		if !errors.Is(o.err, want) {
			t.Errorf("%s: %v, want %v", o.op, o.err, want)
		}
		if msg := fmt.Sprint(o.err); !strings.Contains(msg, "cannot commit") || !strings.Contains(msg, stoppedID) {
			t.Errorf("%s: the error does not say the leader cannot commit, naming the stopped voter %s: %v", o.op, stoppedID, o.err)
		}
	}
	for range 2 {
		select {
		case o := <-done:
			check(o, node.ErrUnknownOutcome)
		case <-time.After(patience + 10*time.Second):
			t.Fatal("an extend or release did not return after its context ended")
		}
	}
	// Found stalled: the next one is refused before it is proposed.
	start = time.Now()
	_, err := l.Extend(ctxT(t, patience), &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "later", Token: tokens["later"]}}})
	check(outcome{"a later extend", err, time.Since(start)}, node.ErrNoLeader)
}

// A leader whose own disk hangs goes silent on Raft and the followers
// elect another (TestLeaderOwnDiskHungFailsOver); the old one stays
// stuck in hashicorp/raft's leader loop. It must not go on serving:
// before, it said it led (IsLeader, Status), and a consistent read there
// waited for a VerifyLeader its stuck loop never handled, past its
// caller's deadline, for as long as the disk hung (adversarial review
// s35: a Get with a 4 s context had not returned after 8 s).
func TestOldLeaderWithHungDiskStopsServing(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{})
	li, l := c.Leader()
	granted := mustGrant(t, l, acq("k", "h", 1, time.Minute))
	release := l.StallLogWrites()
	t.Cleanup(release)
	go func() { // a proposal, to start the stall clock
		_, _ = l.Acquire(ctxT(t, 20*time.Second), acq("x", "h", 2, 5*time.Second))
	}()
	nodetest.Eventually(t, 30*time.Second, func() error {
		for i := range c.Size() {
			if i != li && c.Node(i).IsLeader() {
				return nil
			}
		}
		return fmt.Errorf("no new leader: %s", c.Describe())
	})
	if l.IsLeader() {
		t.Errorf("the old leader, its disk hung and another elected, still says it leads: %s", c.Describe())
	}
	st, err := l.Status(ctxT(t, 5*time.Second), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetServing() {
		t.Errorf("the old leader's status says it serves: %v", st)
	}
	const patience = 4 * time.Second
	for _, op := range []struct {
		name string
		call func(context.Context) error
	}{
		{"get", func(ctx context.Context) error { _, err := l.Get(ctx, &pb.GetRequest{Key: "k"}); return err }},
		{"list", func(ctx context.Context) error { _, err := l.List(ctx, &pb.ListRequest{}); return err }},
		{"extend", func(ctx context.Context) error {
			_, err := l.Extend(ctx, &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "k", Token: granted.GetToken()}}})
			return err
		}},
	} {
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- op.call(ctxT(t, patience)) }()
		select {
		case err = <-done:
		case <-time.After(2 * patience):
			t.Fatalf("%s at the old leader had not returned %v after its context's deadline", op.name, patience)
		}
		took := time.Since(start)
		t.Logf("%s at the old leader: %v after %v", op.name, err, took.Round(time.Millisecond))
		if took >= patience {
			t.Errorf("%s at the old leader (disk hung, another leader elected): %v after %v, want an answer (forwarded to the new leader, or a refusal) before the deadline", op.name, err, took.Round(time.Millisecond))
		}
	}
	release()
}

// Status at a leader that cannot commit says so, in the words of its
// refusals (new-user review M4: `leasenode status` showed "u1 leader
// (serving)" while every acquire there failed with "leader u1 cannot
// commit").
func TestStatusOfLeaderThatCannotCommitSaysSo(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{})
	l, hung, stopped := leaderAndFollowers(c)
	token := mustGrant(t, l, acq("k", "h", 1, time.Minute)).GetToken()
	if st, err := l.Status(ctxT(t, 5*time.Second), &pb.StatusRequest{}); err != nil || st.GetCannotCommit() != "" {
		t.Fatalf("status of a healthy leader: %v, cannot_commit %q", err, st.GetCannotCommit())
	}
	release := c.Node(hung).StallLogWrites()
	t.Cleanup(release)
	c.Kill(stopped)
	// A write waits at the leader: the stall is found while it does.
	_, err := l.Extend(ctxT(t, 20*time.Second), &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "k", Token: token}}})
	t.Logf("extend at a leader that cannot commit: %v", err)
	st, err := l.Status(ctxT(t, 5*time.Second), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !st.GetServing() {
		t.Logf("the leader stepped down meanwhile: nothing to show")
		return
	}
	if msg := st.GetCannotCommit(); !strings.Contains(msg, "cannot commit") || !strings.Contains(msg, c.Config(stopped).ID) {
		t.Errorf("status of a serving leader that cannot commit: cannot_commit %q, want it to say so naming the stopped voter %s", msg, c.Config(stopped).ID)
	}
	t.Logf("status: cannot_commit %q", st.GetCannotCommit())
}

// Every voter up, both followers' disks hung: the leader keeps leading
// (heartbeats touch no disk) and cannot commit. A client's acquire (wait
// 0), release and read there are refused, and the client says so in its
// own words, naming the leader and the voters behind: a
// *lease.CommitStallError, still ErrNoLeader, not "no leader reachable"
// (new-user review: all three voters were up, and the CLI's hint said
// the cluster was electing a leader or lacked a quorum).
func TestClientSaysTheLeaderCannotCommit(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{API: true})
	li, l := c.Leader()
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{l.APIAddr()}, lease.WithRetryTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = cl.Close(ctx)
	})
	held, err := cl.TryAcquire(ctxT(t, 10*time.Second), "held", lease.TTL(time.Minute))
	if err != nil || held == nil {
		t.Fatalf("acquire before the stall: %v %v", held, err)
	}
	term := l.Raft().CurrentTerm()
	var followers []string
	for i := range c.Size() {
		if i != li {
			release := c.Node(i).StallLogWrites()
			t.Cleanup(release)
			followers = append(followers, c.Config(i).ID)
		}
	}
	// A write waits at the leader: the stall is found while it does.
	_, err = l.Acquire(ctxT(t, 20*time.Second), acq("trigger", "h", 1, time.Minute))
	t.Logf("a write at the leader once its followers' disks hang: %v", err)
	for _, op := range []struct {
		name string
		call func(context.Context) error
	}{
		{"acquire (wait 0)", func(ctx context.Context) error {
			ls, err := cl.TryAcquire(ctx, "new", lease.TTL(time.Minute))
			if err == nil {
				err = fmt.Errorf("granted: %v", ls)
			}
			return err
		}},
		{"release", func(ctx context.Context) error { return held.Release(ctx) }},
		{"get", func(ctx context.Context) error { _, err := cl.Get(ctx, "held"); return err }},
		{"embedded acquire", func(ctx context.Context) error {
			emb, err := lease.New(l, lease.WithRetryTimeout(2*time.Second))
			if err != nil {
				return err
			}
			defer func() { _ = emb.Close(ctxT(t, 5*time.Second)) }()
			ls, err := emb.TryAcquire(ctx, "new", lease.TTL(time.Minute))
			if err == nil {
				err = fmt.Errorf("granted: %v", ls)
			}
			return err
		}},
	} {
		start := time.Now()
		err := op.call(ctxT(t, 20*time.Second))
		t.Logf("%s at a leader that cannot commit, after %v: %v", op.name, time.Since(start).Round(time.Millisecond), err)
		if !l.IsLeader() || l.Raft().CurrentTerm() != term {
			t.Skipf("the leader stepped down meanwhile: nothing to show")
		}
		var st *lease.CommitStallError
		if !errors.As(err, &st) {
			t.Errorf("%s: %v; want a *lease.CommitStallError", op.name, err)
			continue
		}
		if !errors.Is(err, lease.ErrNoLeader) && !errors.Is(err, lease.ErrUnknownOutcome) {
			t.Errorf("%s: %v; want it to match ErrNoLeader", op.name, err)
		}
		slices.Sort(st.Behind)
		if st.Leader != c.Config(li).ID || !slices.Equal(st.Behind, followers) || st.OwnDisk {
			t.Errorf("%s: stall %+v; want leader %s, voters behind %v", op.name, st, c.Config(li).ID, followers)
		}
		want := fmt.Sprintf("leader %s cannot commit: voters %s have not stored its entries", c.Config(li).ID, strings.Join(followers, ", "))
		if msg := err.Error(); !strings.Contains(msg, want) || strings.Contains(msg, "no leader reachable") {
			t.Errorf("%s: %q; want it to say %q, and not \"no leader reachable\"", op.name, msg, want)
		}
	}
}

// leaderAndFollowers returns c's leader and the indexes of its two
// followers (the one whose disk the test hangs, the one it stops).
func leaderAndFollowers(c *nodetest.Cluster) (l *node.Node, hung, stopped int) {
	li, l := c.Leader()
	var followers []int
	for i := range c.Size() {
		if i != li {
			followers = append(followers, i)
		}
	}
	return l, followers[0], followers[1]
}

// An acquire whose caller gave up while the leader could not commit is
// settled once it can: the client told its caller ErrUnknownOutcome (its
// Abandon could not commit either), and when the cluster commits again
// the grant, if its entry is applied, is released, not left to block the
// key for its TTL. Adversarial review rev-adv37: a waiter that gave up
// held its key 8 s after the disks came back with 2.9 s of 20 s left, and
// a TryAcquire the same; nobody withdrew either. Both shapes, and both
// ways to give up: a waiter granted by the holder's handoff entry, whose
// retry timeout ends first (15 s after the disks came back it still held
// the key, 8.6 s of 30 left), and a TryAcquire of a free key whose
// caller's context ends first.
func TestAcquireGivenUpDuringCommitStallIsSettled(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, l := c.Leader()
	const ttl = 30 * time.Second // longer than the wait below: only a release frees the keys
	client := func(holder string, retry time.Duration) *lease.Client {
		cl, err := lease.New(l, lease.WithHolder(holder), lease.WithTTL(ttl), lease.WithRetryTimeout(retry))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close(ctxT(t, 5*time.Second)) })
		return cl
	}
	h, w, w2 := client("h", 2*time.Second), client("w", 2*time.Second), client("w2", time.Minute)
	held, err := h.Acquire(ctxT(t, 10*time.Second), "ghost/wait")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		l   *lease.Lease
		err error
	}
	waited := make(chan result, 1)
	go func() {
		l, err := w.Acquire(ctxT(t, 8*time.Second), "ghost/wait")
		waited <- result{l, err}
	}()
	nodetest.Eventually(t, 10*time.Second, func() error {
		if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.GetWaiters() != 1 {
			return fmt.Errorf("%d waiters", st.GetWaiters())
		}
		return nil
	})
	var releases []func()
	for i := range c.Size() {
		if i != li {
			releases = append(releases, c.Node(i).StallLogWrites())
		}
	}
	unstall := func() {
		for _, r := range releases {
			r()
		}
		releases = nil
	}
	t.Cleanup(unstall)
	// Proposed before the leader finds the stall, as the handoff below.
	tried := make(chan result, 1)
	go func() {
		l, err := w2.TryAcquire(ctxT(t, 6*time.Second), "ghost/try")
		tried <- result{l, err}
	}()
	// The holder's release makes the handoff entry (its release, w's
	// grant), which cannot commit.
	t.Logf("holder's release during the stall: %v", held.Release(ctxT(t, 2*time.Second)))
	var r result
	select {
	case r = <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting acquire never returned")
	}
	if r.l != nil {
		t.Fatalf("the waiter was granted while the followers' disks hung: %v", r.l)
	}
	t.Logf("waiter: %v", r.err)
	if !errors.Is(r.err, lease.ErrUnknownOutcome) {
		t.Skipf("the waiter was told %v, not an unknown outcome: nothing to settle", r.err)
	}
	select {
	case r = <-tried:
	case <-time.After(30 * time.Second):
		t.Fatal("the TryAcquire never returned")
	}
	if r.l != nil {
		t.Fatalf("a TryAcquire was granted while the followers' disks hung: %v", r.l)
	}
	t.Logf("TryAcquire: %v", r.err)
	unstall()
	back := time.Now()
	other := client("other", 2*time.Second)
	for _, key := range []string{"ghost/wait", "ghost/try"} {
		nodetest.Eventually(t, 15*time.Second, func() error {
			info, err := other.Get(ctxT(t, 5*time.Second), key)
			if err != nil {
				return err
			}
			if info != nil {
				return fmt.Errorf("%s held by %s (token %d, %v left) %v after the disks came back", key, info.Holder, info.Token, info.Remaining.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
			}
			return nil
		})
	}
	t.Logf("both keys free %v after the disks came back", time.Since(back).Round(time.Millisecond))
}
