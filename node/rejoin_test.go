package node

import (
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/internal/freeport"
)

// An AppendEntries to a peer that refuses connections (down, restarting)
// waits for it to listen and is delivered then, instead of failing into
// hashicorp/raft's backoff, which after some seconds of failures leaves a
// restarted follower without entries for up to ten more.
func TestAppendEntriesWaitsForARestartingPeer(t *testing.T) {
	addr, err := freeport.Addr("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	client, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	stop := make(chan struct{})
	tr := &rejoinTransport{NetworkTransport: client, stop: stop}

	type result struct {
		resp raft.AppendEntriesResponse
		err  error
	}
	call := func() <-chan result {
		out := make(chan result, 1)
		go func() {
			var r result
			r.err = tr.AppendEntries("peer", raft.ServerAddress(addr), &raft.AppendEntriesRequest{Term: 7}, &r.resp)
			out <- r
		}()
		return out
	}

	// Nothing listens yet: the call keeps redialing until the peer does.
	got := call()
	until(t, func() bool { return tr.redialed.Load() > 0 })
	select {
	case r := <-got:
		t.Fatalf("AppendEntries returned before the peer listened: %v", r.err)
	default:
	}
	server, err := raft.NewTCPTransport(addr, nil, 1, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	select {
	case rpc := <-server.Consumer():
		if req, ok := rpc.Command.(*raft.AppendEntriesRequest); !ok || req.Term != 7 {
			t.Fatalf("peer got %#v", rpc.Command)
		}
		rpc.Respond(&raft.AppendEntriesResponse{Term: 7, Success: true}, nil)
	case <-time.After(10 * time.Second):
		t.Fatal("the restarted peer got no AppendEntries")
	}
	select {
	case r := <-got:
		if r.err != nil || !r.resp.Success {
			t.Fatalf("AppendEntries after the peer came back: %v %+v", r.err, r.resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AppendEntries did not return")
	}

	// Stopping the node ends a wait at once, with the refusal.
	server.Close()
	until(t, func() bool {
		var resp raft.AppendEntriesResponse
		return client.AppendEntries("peer", raft.ServerAddress(addr), &raft.AppendEntriesRequest{Term: 7}, &resp) != nil
	})
	n := tr.redialed.Load()
	got = call()
	until(t, func() bool { return tr.redialed.Load() > n })
	close(stop)
	select {
	case r := <-got:
		if r.err == nil {
			t.Fatal("AppendEntries to a closed peer succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a stopped node's AppendEntries kept waiting")
	}
}

// until polls cond for up to 10 s.
func until(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
