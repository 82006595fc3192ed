package node_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// An Extend that renews nothing (its holder holds none of the leases it
// names) is answered by the leader without a Raft entry: proposed, it
// changed nothing and cost an entry of its size on every replica (an
// outsider's 261 KB Extends of keys nobody held went through the log at
// 6.5 MB/s: review s35). Its answer is what applying it would have said.
func TestExtendOfNothingHeldProposesNothing(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{})
	_, l := c.Leader()
	g := mustGrant(t, l, acq("k", "h", 1, time.Minute))
	before := l.Raft().LastIndex()
	resp, err := l.Extend(ctxT(t, 10*time.Second), &pb.ExtendRequest{Holder: "intruder", Items: []*pb.ExtendItem{
		{Key: "k", Token: g.GetToken()}, {Key: "nobody", Token: 7}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Raft().LastIndex(); got != before {
		t.Errorf("an extend renewing nothing took Raft entries: last index %d -> %d", before, got)
	}
	rs := resp.GetResults()
	if len(rs) != 2 || rs[0].GetOk() || rs[1].GetOk() || rs[0].GetHolder() != "h" || rs[0].GetCurrentToken() != g.GetToken() || rs[1].GetHolder() != "" {
		t.Errorf("results %v, want both not extended, k naming its holder h (token %d)", rs, g.GetToken())
	}
	// The holder's own extend still commits and renews.
	resp, err = l.Extend(ctxT(t, 10*time.Second), &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "k", Token: g.GetToken()}}})
	if err != nil || !resp.GetResults()[0].GetOk() {
		t.Fatalf("the holder's extend: %v, %v", resp, err)
	}
	if got := l.Raft().LastIndex(); got <= before {
		t.Errorf("the holder's extend took no Raft entry (last index %d)", got)
	}
}

// Of an Extend that renews some leases and names keys its holder does
// not hold, only the held ones go into the log: one held lease and 4,000
// keys nobody holds wrote a 264 KB entry on every replica (adversarial
// review s36), so the flood of review s35 needed one acquire more.
func TestExtendLogsOnlyWhatItRenews(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{})
	_, l := c.Leader()
	g := mustGrant(t, l, acq("k", "h", 1, time.Minute))
	items := []*pb.ExtendItem{{Key: "junk-first", Token: 1}, {Key: "k", Token: g.GetToken()}}
	for i := range 4000 {
		items = append(items, &pb.ExtendItem{Key: fmt.Sprintf("junk-%058d", i), Token: uint64(i + 1)})
	}
	before := l.Raft().LastIndex()
	resp, err := l.Extend(ctxT(t, 10*time.Second), &pb.ExtendRequest{Holder: "h", Items: items})
	if err != nil {
		t.Fatal(err)
	}
	rs := resp.GetResults()
	if len(rs) != len(items) || !rs[1].GetOk() || rs[1].GetTtl().AsDuration() <= 0 || rs[0].GetOk() || rs[2].GetOk() || rs[len(rs)-1].GetOk() {
		t.Fatalf("%d results (of %d items): k %v, others %v %v", len(rs), len(items), rs[1], rs[0], rs[len(rs)-1])
	}
	last := l.Raft().LastIndex()
	size := 0
	for i := before + 1; i <= last; i++ {
		if n, err := l.LogEntrySize(i); err == nil {
			size += n
		}
	}
	t.Logf("an extend renewing 1 lease and naming %d keys nobody holds: %d Raft entries, %d bytes of log", len(items)-1, last-before, size)
	if size > 4096 {
		t.Errorf("an extend renewing one lease wrote %d bytes of log: the %d keys not held were logged", size, len(items)-1)
	}
}

// A leader answers an Extend "not held" from its state only once it has
// confirmed that it still leads. Here the leader's Raft loop hangs in a
// log write no client proposal made (the configuration entry adding a
// node), so nothing tells it that it cannot commit, and a partition
// keeps the new leader's heartbeats from demoting it: both say they
// lead. Answered from its state, an Extend of a lease the new leader
// granted was "not held", and lease.Client dropped a live lease
// (adversarial review s36). It must not be answered so.
func TestDeposedLeaderDoesNotAnswerExtendFromItsState(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, l := c.Leader()
	release := l.StallLogWrites()
	t.Cleanup(release)
	ai := c.Add() // the leader's write of the new configuration hangs
	nodetest.Eventually(t, 20*time.Second, func() error {
		if l.LogWritesStalled() == 0 {
			return fmt.Errorf("no log write of the leader hangs yet")
		}
		return nil
	})
	others := []int{ai}
	for i := range c.Size() - 1 {
		if i != li {
			others = append(others, i)
		}
	}
	c.Partition([]int{li}, others)
	var nl *node.Node
	nodetest.Eventually(t, 30*time.Second, func() error {
		for _, i := range others {
			if n := c.Node(i); n != nil && n.IsLeader() {
				nl = n
				return nil
			}
		}
		return fmt.Errorf("no new leader: %s", c.Describe())
	})
	granted := mustGrant(t, nl, acq("k", "h", 1, time.Minute))
	start := time.Now()
	resp, err := l.Extend(ctxT(t, 5*time.Second), &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "k", Token: granted.GetToken()}}})
	t.Logf("extend at the old leader (IsLeader %v) after %v: %v, %v", l.IsLeader(), time.Since(start).Round(time.Millisecond), resp, err)
	if err == nil {
		t.Errorf("a deposed leader answered an Extend of k (held, granted by the new leader with token %d): %v", granted.GetToken(), resp)
	}
	c.Heal()
	release()
}
