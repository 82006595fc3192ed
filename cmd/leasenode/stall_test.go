package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// stalledLeader is a node that leads but cannot commit: it answers status
// and refuses every write and consistent read as a node does then
// (node.ErrNoLeader with the commit stall in its error detail).
type stalledLeader struct {
	pbconnect.UnimplementedLeaseServiceHandler
}

func (stalledLeader) refusal() error {
	const words = `acquire "c/new2": node: no leader: leader u2 cannot commit: nothing it proposed has committed for 6.012s (3 proposals waiting); ` +
		`voters that have not stored its newest entries: u1 (stored the log to index 40 of 45, and answers heartbeats: its disk may be hung), ` +
		`u3 (stored the log to index 40 of 45, and answers heartbeats: its disk may be hung); it commits again once a quorum of voters stores the log`
	ce := connect.NewError(connect.CodeUnavailable, errors.New("node: no leader: "+words))
	det, err := connect.NewErrorDetail(&pb.ErrorDetail{Reason: pb.Reason_REASON_NO_LEADER, CommitStall: &pb.CommitStall{
		LeaderId: "u2", StalledFor: durationpb.New(6012 * time.Millisecond), VotersBehind: []string{"u1", "u3"}}})
	if err != nil {
		panic(err)
	}
	ce.AddDetail(det)
	return ce
}

func (s stalledLeader) Status(context.Context, *connect.Request[pb.StatusRequest]) (*connect.Response[pb.StatusResponse], error) {
	return connect.NewResponse(&pb.StatusResponse{Header: &pb.Header{NodeId: "u2", LeaderId: "u2"}, NodeId: "u2", RaftState: "Leader", Serving: true}), nil
}

func (s stalledLeader) Acquire(context.Context, *connect.Request[pb.AcquireRequest]) (*connect.Response[pb.AcquireResponse], error) {
	return nil, s.refusal()
}

func (s stalledLeader) Release(context.Context, *connect.Request[pb.ReleaseRequest]) (*connect.Response[pb.ReleaseResponse], error) {
	return nil, s.refusal()
}

func (s stalledLeader) Get(context.Context, *connect.Request[pb.GetRequest]) (*connect.Response[pb.GetResponse], error) {
	return nil, s.refusal()
}

// Scenario (new-user review): every voter is up, the followers' disks
// hang, and the leader cannot commit. release, acquire --wait 0 and get
// each say, first and in the CLI's words, that leader u2 cannot commit
// because u1 and u3 have not stored its entries, and hint at their disks
// and the network, not at an election or a missing quorum.
func TestLeaderThatCannotCommitIsNamed(t *testing.T) {
	t.Parallel()
	_, h := pbconnect.NewLeaseServiceHandler(stalledLeader{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, args := range [][]string{
		{"release", "c/new2", "--token", "7", "--holder", "h#1"},
		{"acquire", "c/new2", "--wait", "0"},
		{"get", "c/new2"},
	} {
		args = append(args, "--addr", addr, "--timeout", "1s")
		code, _, errOut := cli(t, args...)
		t.Logf("%s: exit %d\n%s", args[0], code, errOut)
		if code != exitUnreachable {
			t.Errorf("%s: exit %d, want %d", args[0], code, exitUnreachable)
		}
		first, hint, _ := strings.Cut(errOut, "\n")
		if want := "leader u2 cannot commit: voters u1, u3 have not stored its entries for 6s (their disks, or the network)"; !strings.Contains(first, want) {
			t.Errorf("%s: %q; want it to say %q", args[0], first, want)
		}
		if strings.Contains(first, "no leader") {
			t.Errorf("%s: %q says no leader, of a cluster whose leader cannot commit", args[0], first)
		}
		if !strings.Contains(hint, "hint: ") || !strings.Contains(hint, "disks") || strings.Contains(hint, "electing") || strings.Contains(hint, "too few of its voters") {
			t.Errorf("%s: hint %q; want one about the voters' disks and the network, not an election", args[0], hint)
		}
	}
}
