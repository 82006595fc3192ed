package node_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// Scenario: a cluster with mutual TLS elects a leader and serves; a node
// whose certificate comes from another CA is seen by gossip and added by
// the leader, but no Raft traffic reaches it: it never receives a single
// entry and is never promoted.
func TestMutualTLS(t *testing.T) {
	ca := transporttest.NewCA(t)
	rogueCA := transporttest.NewCA(t)
	loop := net.ParseIP("127.0.0.1")
	rogue := -1
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		if i == rogue {
			cfg.TLSFiles = rogueCA.Issue(t, cfg.ID, loop)
			return
		}
		cfg.TLSFiles = ca.Issue(t, cfg.ID, loop)
	}})
	_, l := c.Leader()
	_, f := c.Follower()
	resp := mustGrant(t, f, acq("tls", "c1", 1, time.Minute))

	rogue = c.Size()
	c.Add()
	rogueNode := c.Node(rogue)
	nodetest.Eventually(t, 20*time.Second, func() error {
		if _, ok := suffrage(t, l)[rogueNode.ID()]; !ok {
			return fmt.Errorf("leader has not added %s yet", rogueNode.ID())
		}
		return nil
	})
	// Commit more entries and wait until every trusted node applied them.
	last := mustGrant(t, l, acq("tls2", "c1", 2, time.Minute))
	nodetest.Eventually(t, 10*time.Second, func() error {
		for i := range 3 {
			if got := c.Node(i).FSM().Stats().Applied; got < last.Token {
				return fmt.Errorf("n%d applied %d < %d", i, got, last.Token)
			}
		}
		return nil
	})
	if got := rogueNode.Raft().LastIndex(); got != 0 {
		t.Fatalf("untrusted node received Raft entries up to %d", got)
	}
	if _, ok := rogueNode.FSM().Get("tls"); ok {
		t.Fatal("untrusted node has the lease")
	}
	if v, _ := countVoters(suffrage(t, l)); v != 3 {
		t.Fatalf("voters changed: %v", suffrage(t, l))
	}
	g, err := l.Get(context.Background(), &pb.GetRequest{Key: "tls"})
	if err != nil || g.Lease.GetToken() != resp.Token {
		t.Fatalf("get over TLS cluster: %v %v", g, err)
	}
	c.Kill(rogue) // its state differs on purpose; keep it out of the convergence check
}
