package node_test

import (
	"testing"
	"time"

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
