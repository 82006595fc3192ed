package node

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/hashicorp/memberlist"
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
