package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// Scenario: a member's API address is now answered by another node (an
// agent restarted there under another --id). status says who answers
// instead of showing that node's state under the member's name.
func TestStatusNamesAnotherNodeAtAMembersAddress(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1, API: true})
	addr := c.Node(0).APIAddr()
	api, err := lease.NewRemote([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	got := statusOfAll(context.Background(), api, []*pb.Member{{Id: "n0", ApiAddr: addr}, {Id: "n2", ApiAddr: addr}})
	if got[0].resp == nil || got[0].resp.GetNodeId() != "n0" {
		t.Fatalf("n0's own status: %+v", got[0])
	}
	if got[1].resp != nil || got[1].err != "address now answered by n0" {
		t.Fatalf("n2's address answered by n0: %+v, want the error %q", got[1], "address now answered by n0")
	}
}

// Scenario: one of three agents is killed. status still exits 0 (it is
// informational: the cluster serves while a quorum does), shows the node
// without its state and says on stderr that a member was not heard from and that
// health is the check; health exits 3 for the killed agent and 0 for the
// others (new-user review: status exited 0 with a node shown unreachable).
func TestStatusIsInformationalHealthIsTheCheck(t *testing.T) {
	t.Parallel()
	agents := cluster(t, 3)
	// Right after the start (the README's first command): status waits
	// up to 2 s for the nodes to confirm each other's API addresses; a
	// row still without its state says so in words and stderr says what
	// that means (it said "no confirmed client API", unexplained;
	// new-user review).
	code, out, errOut := cli(t, "status", "--addr", addrs(agents))
	if code != 0 || strings.Contains(out, "no confirmed client API") ||
		strings.Contains(out, apiNotConfirmed) && !strings.Contains(errOut, "within a second or two of a start") {
		t.Fatalf("status right after the start: exit %d\n%s%s", code, out, errOut)
	}
	for _, c := range []struct{ status, want string }{{"alive", apiNotConfirmed}, {"dead", "no API address: gossip has it dead"}} {
		if got := unconfirmedAPI(&pb.Member{Id: "x", Status: c.status}); got != c.want {
			t.Errorf("unconfirmedAPI(%s) = %q, want %q", c.status, got, c.want)
		}
	}
	leader := leaderOf(t, agents, func(*agent) bool { return true })
	var down *agent
	for _, a := range agents {
		if a != leader {
			down = a
			break
		}
	}
	down.p.kill(syscall.SIGKILL)
	down.p.wait(t, 10*time.Second)
	nodetest.Eventually(t, 20*time.Second, func() error {
		code, out, errOut := cli(t, "status", "--addr", addrs(agents))
		// Its row says why it has no state: unreachable, or, once gossip
		// has it dead, no API address.
		if code != 0 || !strings.Contains(out, down.id) ||
			!strings.Contains(errOut, "1 of 3 members are shown without their state") || !strings.Contains(errOut, "leasenode health") {
			return fmt.Errorf("status with %s killed: exit %d\n%s%s", down.id, code, out, errOut)
		}
		return nil
	})
	for _, a := range agents {
		want := exitOK
		if a == down {
			want = exitUnreachable
		}
		if code, out, errOut := cli(t, "health", "--addr", a.api); code != want {
			t.Errorf("health --addr %s (%s): exit %d, want %d\n%s%s", a.api, a.id, code, want, out, errOut)
		}
	}
}
