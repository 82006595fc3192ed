package node_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// Scenario: a cluster with mutual TLS elects a leader and serves; a node
// whose certificate comes from another CA is seen by gossip (it has the
// cluster's gossip key) but never proves who it is over node RPC, so the
// leader never adds it and not one Raft entry reaches it. A node started
// with an API client certificate from the cluster's own CA refuses to
// start (the node port would refuse it), while the API accepts that
// certificate.
func TestMutualTLS(t *testing.T) {
	ca := transporttest.NewCA(t)
	rogueCA := transporttest.NewCA(t)
	loop := net.ParseIP("127.0.0.1")
	var nlogs logs
	rogue := -1
	var c *nodetest.Cluster
	c = nodetest.New(t, nodetest.Options{Size: 3, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Logger = nlogs.logger().With("n", i)
		if i == rogue {
			cfg.TLSFiles = rogueCA.Issue(t, cfg.ID, loop)
			// Gossip it to every node at once (it has the gossip key).
			cfg.Join = []string{c.Config(0).GossipAddr, c.Config(1).GossipAddr, c.Config(2).GossipAddr}
			return
		}
		cfg.TLSFiles = ca.Issue(t, cfg.ID, loop)
	}})
	_, f := c.Follower()
	resp := mustGrant(t, f, acq("tls", "c1", 1, time.Minute))

	rogue = c.Size()
	c.Add()
	rogueNode := c.Node(rogue)
	// The leader tried the newcomer and it failed to prove itself.
	var l *node.Node
	nodetest.Eventually(t, 30*time.Second, func() error {
		var li int
		li, l = c.Leader()
		if len(nlogs.lines(fmt.Sprintf("n=%d", li), "member not verified", "id="+rogueNode.ID())) == 0 {
			return errorf("the leader has not tried the newcomer yet", li)
		}
		return nil
	})
	if _, ok := suffrage(t, l)[rogueNode.ID()]; ok {
		t.Fatalf("the leader added %s: %v", rogueNode.ID(), suffrage(t, l))
	}
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
	if _, ok := suffrage(t, l)[rogueNode.ID()]; ok {
		t.Fatalf("the leader added %s: %v", rogueNode.ID(), suffrage(t, l))
	}
	g, err := l.Get(context.Background(), &pb.GetRequest{Key: "tls"})
	if err != nil || g.Lease.GetToken() != resp.Token {
		t.Fatalf("get over TLS cluster: %v %v", g, err)
	}
	c.Kill(rogue) // its state differs on purpose; keep it out of the convergence check

	// A node with a client certificate: refused at start, naming the role.
	cfg := c.Config(0)
	cfg.ID, cfg.DataDir = "n9", t.TempDir()
	cfg.BindAddr, cfg.AdvertiseAddr, cfg.GossipAddr, cfg.APIAddr = nodetest.FreeAddr(t, false), "", nodetest.FreeAddr(t, true), ""
	cfg.TLSFiles = ca.IssueClient(t, "ops")
	if n, err := node.Start(context.Background(), cfg); err == nil {
		n.Close(context.Background())
		t.Fatal("a node started with an API client certificate")
	} else if !strings.Contains(err.Error(), transport.NodeRole) {
		t.Fatalf("start with a client certificate: %v, want it to name the role %s", err, transport.NodeRole)
	}

	// The API takes the client certificate.
	files := ca.IssueClient(t, "ops")
	tlsCfg, err := files.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
	api := pbconnect.NewLeaseServiceClient(hc, "https://"+l.APIAddr())
	st, err := api.Status(context.Background(), connect.NewRequest(&pb.StatusRequest{}))
	if err != nil || st.Msg.GetNodeId() != l.ID() {
		t.Fatalf("API status with a client certificate: %v %v", st, err)
	}
}
