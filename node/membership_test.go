package node

import (
	"encoding/json"
	"log/slog"
	"net"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/leasenode/leasenode/transport"
)

func gossipNode(t *testing.T, md meta) *memberlist.Node {
	t.Helper()
	b, err := json.Marshal(md)
	if err != nil {
		t.Fatal(err)
	}
	return &memberlist.Node{Name: md.ID, Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Meta: b}
}

// A leave announced by the leave RPC before gossip carries it must stick
// for that run of the process: late gossip saying it is alive must not
// make the leader add it back, and its departure counts as a leave, not a
// failure. A restart (a new run) is alive again.
func TestMemberTableLeavingSticksToItsRun(t *testing.T) {
	tab := newMemberTable()
	status := func() string {
		m, _ := tab.get("n3")
		return m.Status
	}
	old := meta{ID: "n3", Raft: "127.0.0.1:1", Run: "r1"}
	tab.update(gossipNode(t, old), false)
	if got := status(); got != statusAlive {
		t.Fatalf("joined: %s", got)
	}
	tab.markLeaving("n3", "r1")
	if got := status(); got != statusLeaving {
		t.Fatalf("after leave request: %s", got)
	}
	tab.update(gossipNode(t, old), false) // late gossip from before the leave
	if got := status(); got != statusLeaving {
		t.Fatalf("stale alive gossip undid the leave: %s", got)
	}
	tab.update(gossipNode(t, old), true) // gone, its meta without the flag
	if got := status(); got != statusLeft {
		t.Fatalf("departure after a leave request: %s", got)
	}
	tab.update(gossipNode(t, meta{ID: "n3", Raft: "127.0.0.1:1", Run: "r2"}), false)
	if got := status(); got != statusAlive {
		t.Fatalf("restarted run: %s", got)
	}
	tab.update(gossipNode(t, meta{ID: "n3", Raft: "127.0.0.1:1", Run: "r2"}), true)
	if got := status(); got != statusDead {
		t.Fatalf("a failure without a leave: %s", got)
	}
}

// Gossip forging a member's metadata under its own name (what an insider
// with the gossip key could send) never changes the API address nodes
// give clients: that comes only from the node itself (setVerified, fed by
// its Status over authenticated RPC), for the Raft address and run it was
// asked at. A forged Raft address or run voids it until the node at that
// address proves it is the member. Metadata speaking for another name is
// ignored outright.
func TestGossipCannotRedirectMemberTable(t *testing.T) {
	tab := newMemberTable()
	genuine := meta{ID: "n0", Raft: "127.0.0.1:7400", API: "127.0.0.1:7402", Run: "r1"}
	tab.update(gossipNode(t, genuine), false)
	if api := tab.confirmedAPI("n0", genuine.Raft); api != "" {
		t.Fatalf("unconfirmed gossip gave API address %q", api)
	}
	asked := tab.toVerify("self", 0)
	if len(asked) != 1 || asked[0].ID != "n0" {
		t.Fatalf("toVerify = %v", asked)
	}
	tab.setVerified(asked[0], true, "127.0.0.1:7402", nil) // what n0's own Status said
	if api := tab.confirmedAPI("n0", genuine.Raft); api != "127.0.0.1:7402" {
		t.Fatalf("confirmed API %q", api)
	}

	// Same name, same Raft address and run, another API: ignored.
	forged := genuine
	forged.API = "10.6.6.6:7402"
	tab.update(gossipNode(t, forged), false)
	if api := tab.confirmedAPI("n0", genuine.Raft); api != "127.0.0.1:7402" {
		t.Fatalf("forged API taken: %q", api)
	}
	// Another Raft address: no API at all until the node there proves
	// itself, and Raft's address for the leader must match.
	forged.Raft, forged.Run = "10.6.6.6:7400", "evil"
	tab.update(gossipNode(t, forged), false)
	if api := tab.confirmedAPI("n0", genuine.Raft); api != "" {
		t.Fatalf("API %q for a forged Raft address", api)
	}
	if m, _ := tab.get("n0"); m.confirmed() {
		t.Fatal("forged claims count as confirmed")
	}
	// Metadata for n0 under another memberlist name: refused.
	n := gossipNode(t, meta{ID: "n0", Raft: "10.6.6.6:7400", API: "10.6.6.6:7402"})
	n.Name = "evil"
	if err := tab.update(n, false); err == nil {
		t.Fatal("metadata speaking for another name accepted")
	}
}

// A node that has no cluster id yet and no longer waits to bootstrap (it
// decided to join) takes an id from an inbound peer only if the peer is in
// its gossip pool: the old cluster's leader, still dialing a dead member's
// address that this node now has, is not. TestNewClusterOnDeadMembersAddress
// failed this way under load: x0 took cluster a's id from a's leader.
func TestClusterIDOnlyFromGossipMembers(t *testing.T) {
	members := map[string]bool{"x1": true}
	c, err := newClusterIdentity(t.TempDir(), "x0", slog.New(slog.DiscardHandler), true,
		func() bool { return false }, func(id string) bool { return members[id] })
	if err != nil {
		t.Fatal(err)
	}
	c.joining()
	if err := c.check(transport.Peer{ID: "n0", ClusterID: "old-cluster"}, true); err == nil || c.get() != "" {
		t.Fatalf("an outsider's id was taken: check %v, id %q", err, c.get())
	}
	if err := c.check(transport.Peer{ID: "x1", ClusterID: "new-cluster"}, true); err != nil || c.get() != "new-cluster" {
		t.Fatalf("a gossip member's id: check %v, id %q; want it taken", err, c.get())
	}
}
