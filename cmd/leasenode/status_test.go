package main

import (
	"context"
	"testing"

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
