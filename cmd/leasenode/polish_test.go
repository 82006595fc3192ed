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

	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Scenario: a watch the agent refuses at its --max-watches exits with the
// refusal and does not first say it is watching (new-user review L7).
func TestWatchRefusedDoesNotSayWatching(t *testing.T) {
	t.Parallel()
	addr := addrs(cluster(t, 1, "--max-watches", "1"))
	w := start(t, nil, "watch", "w/", "--addr", addr)
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(w.stderr.String(), "watching") {
			return errors.New("first watch not started")
		}
		return nil
	})
	code, _, errOut := cli(t, "watch", "w/", "--addr", addr, "--timeout", "3s")
	t.Logf("second watch: exit %d, stderr %q", code, errOut)
	if code == 0 || !strings.Contains(errOut, "max-watches") {
		t.Fatalf("second watch at --max-watches 1: exit %d, stderr %q; want a refusal naming --max-watches", code, errOut)
	}
	if strings.Contains(errOut, "watching \"") {
		t.Errorf("a refused watch said it was watching: %q", errOut)
	}
}

// A --stale read of a held lease with no time left (a node without a
// leader: by its own clock the lease has expired, but nobody reaped it)
// shows REMAINING unknown and says why, not "0s" (new-user review L7); a
// read through the leader shows the time it gives.
func TestStaleReadOfAnExpiredLeaseSaysUnknown(t *testing.T) {
	held := &pb.Lease{Key: "k", Holder: "h", Token: 7, State: pb.LeaseState_LEASE_STATE_HELD,
		Ttl: durationpb.New(10 * time.Second), Remaining: durationpb.New(0)}
	var b, notes strings.Builder
	printLeases(&b, &notes, []*pb.Lease{held}, true)
	if out := b.String(); !strings.Contains(out, "unknown") || strings.Contains(out, " 0s ") ||
		strings.Contains(out, "REMAINING unknown:") || !strings.Contains(notes.String(), "REMAINING unknown:") {
		t.Errorf("--stale read of a held lease past its expiry:\n%s\nnotes: %s\nwant REMAINING unknown, and why among the notes (stderr)", out, notes.String())
	}
	b.Reset()
	notes.Reset()
	printLeases(&b, &notes, []*pb.Lease{held}, false)
	if out := b.String(); strings.Contains(out, "unknown") || !strings.Contains(out, "0s") || notes.Len() != 0 {
		t.Errorf("read through the leader:\n%s\nnotes: %s\nwant REMAINING 0s, no note", out, notes.String())
	}
}

// laggingFollower is a node cut off from the leader: its own copy of the
// state shows every key free.
type laggingFollower struct {
	pbconnect.UnimplementedLeaseServiceHandler
}

func (laggingFollower) Status(context.Context, *connect.Request[pb.StatusRequest]) (*connect.Response[pb.StatusResponse], error) {
	return connect.NewResponse(&pb.StatusResponse{Header: &pb.Header{NodeId: "u3"}, NodeId: "u3", RaftState: "Candidate"}), nil
}

func (laggingFollower) Get(_ context.Context, req *connect.Request[pb.GetRequest]) (*connect.Response[pb.GetResponse], error) {
	if !req.Msg.GetStale() {
		return nil, errors.New("want a stale read")
	}
	return connect.NewResponse(&pb.GetResponse{Header: &pb.Header{NodeId: "u3"}}), nil
}

// Scenario (new-user review): `get --stale` at a lagging follower (the
// two others killed after they committed a 60 s lease) finds the key
// free. It says that is u3's possibly stale view, not a plain "q/long is
// free", in the table and in JSON.
func TestStaleReadOfAFreeKeySaysWhose(t *testing.T) {
	t.Parallel()
	_, h := pbconnect.NewLeaseServiceHandler(laggingFollower{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	code, out, errOut := cli(t, "get", "q/long", "--stale", "--addr", addr, "--timeout", "2s")
	t.Logf("get --stale: exit %d, stdout %q, stderr %q", code, out, errOut)
	if want := "q/long is free as far as u3 knows (a stale read: u3 may be behind the leader"; code != 0 || !strings.Contains(out, want) {
		t.Errorf("get --stale of a key free at a lagging node: exit %d, %q; want exit 0 and %q", code, out, want)
	}
	code, out, _ = cli(t, "get", "q/long", "--stale", "-o", "json", "--addr", addr, "--timeout", "2s")
	if !strings.Contains(out, `"stale": true`) || !strings.Contains(out, `"node": "u3"`) {
		t.Errorf("get --stale -o json: exit %d, %q; want \"stale\": true and \"node\": \"u3\"", code, out)
	}
}

// Text get shows a holding's lock-delay, and a key in its lock-delay says
// that REMAINING is the delay's time left (it showed TTL 2s beside
// REMAINING 2.446s, with the lock-delay hidden; new-user review), in a
// note on stderr: stdout is the table alone, for scripts that parse it.
func TestTextGetShowsLockDelay(t *testing.T) {
	held := &pb.Lease{Key: "a", Holder: "h", Token: 7, State: pb.LeaseState_LEASE_STATE_HELD,
		Ttl: durationpb.New(2 * time.Second), Remaining: durationpb.New(time.Second), LockDelay: durationpb.New(3 * time.Second)}
	delayed := &pb.Lease{Key: "b", Token: 8, State: pb.LeaseState_LEASE_STATE_LOCK_DELAY,
		Ttl: durationpb.New(2 * time.Second), Remaining: durationpb.New(2446 * time.Millisecond), LockDelay: durationpb.New(3 * time.Second)}
	plain := &pb.Lease{Key: "c", Holder: "h", Token: 9, State: pb.LeaseState_LEASE_STATE_HELD,
		Ttl: durationpb.New(2 * time.Second), Remaining: durationpb.New(time.Second)}
	var b, notes strings.Builder
	printLeases(&b, &notes, []*pb.Lease{held, delayed, plain}, false)
	out := b.String()
	lines := strings.Split(out, "\n")
	if len(lines) != 5 || lines[4] != "" || !strings.Contains(lines[0], "TTL  LOCK-DELAY  REMAINING") || !strings.Contains(lines[1], "2s   3s          1s") ||
		!strings.Contains(lines[2], "2s   3s          2.446s") || !strings.Contains(lines[3], "2s   -           1s") ||
		!strings.Contains(notes.String(), "REMAINING of a key in lock-delay is what is left of its LOCK-DELAY") {
		t.Errorf("get's table with lock-delays:\n%s\nnotes (stderr):\n%s\nwant the header and three rows only, the note on stderr", out, notes.String())
	}
	b.Reset()
	notes.Reset()
	printLeases(&b, &notes, []*pb.Lease{plain}, false)
	if strings.Contains(b.String()+notes.String(), "REMAINING of a key") {
		t.Errorf("the lock-delay note without a key in lock-delay:\n%s%s", b.String(), notes.String())
	}
}
