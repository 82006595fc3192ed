package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// A holder's new request does not replace its own live holding that has a
// lock-delay once every node reads command format 5 (fsm invariant
// lock-delay-kept): not at once, not from the waiter queue; the holding's
// release by token frees the key as ever. While a node reads only an
// older format the leader writes the older rule (the new request replaces
// the holding), which that node can apply.
func TestLostLockDelayKeptFromItsOwnClient(t *testing.T) {
	withDelay := func(key string, req uint64) *pb.AcquireRequest {
		r := acq(key, "h1", req, 30*time.Second)
		r.LockDelay = durationpb.New(5 * time.Second)
		return r
	}
	t.Run("every node reads format 5", func(t *testing.T) {
		c := nodetest.New(t, nodetest.Options{Size: 3})
		attempt := 0
		// One leader throughout: a busy host's election cut a release
		// short ("outcome unknown: leadership lost while committing
		// log", new-user review at load 14-21). Each attempt has a key
		// of its own.
		onSteadyLeader(t, c, func(_ int, l *node.Node) error {
			attempt++
			key := fmt.Sprintf("own/delay%d", attempt)
			first, err := l.Acquire(ctxT(t, 10*time.Second), withDelay(key, 1))
			if err != nil || !first.Granted {
				return fmt.Errorf("acquire: %v %v", first, err)
			}
			resp, err := l.Acquire(ctxT(t, 10*time.Second), acq(key, "h1", 2, 30*time.Second))
			if err != nil {
				return err
			}
			if resp.Granted || resp.Holder != "h1" || resp.Wait.AsDuration() <= 30*time.Second {
				t.Fatalf("a new request of the holder: granted %v, holder %q, wait %v; want held by h1 for its TTL and lock-delay",
					resp.Granted, resp.Holder, resp.Wait.AsDuration())
			}
			// Queued, it is not granted either.
			waiting := acq(key, "h1", 3, 30*time.Second)
			waiting.Wait = true
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			resp, err = l.Acquire(ctx, waiting)
			cancel()
			if err == nil && resp.Granted {
				t.Fatalf("a waiting request of the holder was granted (token %d) beside its holding %d", resp.Token, first.Token)
			}
			got, err := l.Get(ctxT(t, 10*time.Second), &pb.GetRequest{Key: key})
			if err != nil {
				return err
			}
			if got.GetLease().GetToken() != first.Token {
				t.Fatalf("the key's holding is %d, want %d kept", got.GetLease().GetToken(), first.Token)
			}
			rel, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: key, Holder: "h1", Token: first.Token})
			if err != nil || !rel.Released {
				return fmt.Errorf("release: %v %v", rel, err)
			}
			if again, err := l.Acquire(ctxT(t, 10*time.Second), acq(key, "h1", 4, 30*time.Second)); err != nil || !again.Granted {
				return fmt.Errorf("acquire after the release: %v %v", again, err)
			}
			return nil
		})
	})
	t.Run("a node reads an older format", func(t *testing.T) {
		c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
			if i == 2 {
				cfg.Testing = &node.TestingKnobs{ReadsFormat: 2}
			}
		}})
		_, l := leaderOtherThan(t, c, 2) // the old node must not lead: its own entries it does not check
		// Gossip must have told the leader what node 2 reads.
		nodetest.Eventually(t, 10*time.Second, func() error {
			_, err := l.Acquire(ctxT(t, 10*time.Second), shapedAcq("gate/probe", "h9", 1, shared, 0))
			if !errors.Is(err, node.ErrInvalid) {
				return fmt.Errorf("a lock shape with a format-2 node: %v", err)
			}
			return nil
		})
		first := mustGrant(t, l, withDelay("own/delay", 1))
		resp := mustGrant(t, l, acq("own/delay", "h1", 2, 30*time.Second))
		if resp.Token == first.Token {
			t.Fatalf("the new request was answered as a retry (token %d)", resp.Token)
		}
	})
}

// A leader that restarted while a server of an older format was down
// never hears of it in gossip (a dead member is not passed on to a node
// that never saw it alive). It must still write only what that server
// reads: each node remembers in PeerFormatsFile what every node was last
// seen to read. (Stop 29's adversarial review: the restarted leader wrote
// format-5 entries with the format-4 server still a voter.)
func TestFormatGateRemembersADownServer(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		if i == 2 {
			cfg.Testing = &node.TestingKnobs{ReadsFormat: 4}
		}
	}})
	li, l := leaderOtherThan(t, c, 2)
	other := 1 - li // neither the leader nor the old node
	oldID := c.Config(2).ID
	nodetest.Eventually(t, 10*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(c.Config(other).DataDir, node.PeerFormatsFile))
		if err != nil {
			return err
		}
		var m map[string]byte
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		if m[oldID] != 4 {
			return fmt.Errorf("%s remembers %v", node.PeerFormatsFile, m)
		}
		return nil
	})
	c.Kill(2)
	nodetest.Eventually(t, 30*time.Second, func() error {
		resp, err := l.Members(ctxT(t, 5*time.Second), &pb.MembersRequest{})
		if err != nil {
			return err
		}
		for _, m := range resp.Members {
			if m.Id == oldID && m.Status != "dead" {
				return fmt.Errorf("gossip says %s is %s", oldID, m.Status)
			}
		}
		return nil
	})
	c.Restart(other)
	cfg := c.Config(other)
	nodetest.Eventually(t, 20*time.Second, func() error {
		if n := c.Node(other); n.Raft().State() == raft.Leader && n.IsLeader() {
			return nil
		}
		_, ln := c.Leader()
		if err := ln.Raft().LeadershipTransferToServer(raft.ServerID(cfg.ID), raft.ServerAddress(cfg.AdvertiseAddr)).Error(); err != nil {
			return err
		}
		return fmt.Errorf("leadership transfer to %s asked", cfg.ID) // done when it serves
	})
	n := c.Node(other)
	r := acq("gate/down", "h1", 1, 30*time.Second)
	r.LockDelay = durationpb.New(5 * time.Second)
	mustGrant(t, n, r)
	resp, err := n.Acquire(ctxT(t, 10*time.Second), acq("gate/down", "h1", 2, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Granted {
		t.Fatalf("the restarted leader wrote a format-5 acquire (held by %q for %v) while %s, a server of the configuration, reads only format 4",
			resp.Holder, resp.Wait.AsDuration(), oldID)
	}
}

// leaderOtherThan returns the cluster's leader once it is not node i,
// moving leadership away from i (a node with older knobs must not lead:
// its own entries it does not check).
func leaderOtherThan(t *testing.T, c *nodetest.Cluster, i int) (int, *node.Node) {
	t.Helper()
	var (
		li int
		l  *node.Node
	)
	nodetest.Eventually(t, 30*time.Second, func() error {
		if li, l = c.Leader(); li != i {
			return nil
		}
		return fmt.Errorf("node %d leads: %v", i, l.Raft().LeadershipTransfer().Error())
	})
	return li, l
}

// Scenario (formats-readable): n2 reads format 4 and goes down; a
// replacement node joins while it is down, so neither its gossip nor its
// peer-formats file has ever seen n2 (memberlist passes on a dead member
// only to nodes that saw it alive), and it comes to lead with n2 still a
// server of the configuration. It wrote format-5 entries, which n2 would
// stop at on its return (adversarial review). A server never seen counts
// as reading the oldest format: the older lock-delay rule applies, and a
// shaped acquire is refused naming the server and what to do.
func TestFormatGateWaitsForAServerNeverSeen(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, DeadServerGrace: 5 * time.Minute, Configure: func(i int, cfg *node.Config) {
		if i == 2 {
			cfg.Testing = &node.TestingKnobs{ReadsFormat: 4}
		}
	}})
	leaderOtherThan(t, c, 2)
	oldID := c.Config(2).ID
	c.Kill(2)
	nodetest.Eventually(t, 30*time.Second, func() error {
		for _, i := range []int{0, 1} {
			resp, err := c.Node(i).Members(ctxT(t, 5*time.Second), &pb.MembersRequest{})
			if err != nil {
				return err
			}
			for _, m := range resp.Members {
				if m.Id == oldID && m.Status == "alive" {
					return fmt.Errorf("n%d's gossip says %s is alive", i, oldID)
				}
			}
		}
		return nil
	})
	ni := c.Add() // the replacement, with an empty data dir
	cfg := c.Config(ni)
	nodetest.Eventually(t, 60*time.Second, func() error {
		if n := c.Node(ni); n.Raft().State() == raft.Leader && n.IsLeader() {
			return nil
		}
		_, l := c.Leader()
		if s := suffrage(t, l); s[cfg.ID] != raft.Voter {
			return fmt.Errorf("configuration %v: %s is not a voter yet", s, cfg.ID)
		}
		if err := l.Raft().LeadershipTransferToServer(raft.ServerID(cfg.ID), raft.ServerAddress(cfg.AdvertiseAddr)).Error(); err != nil {
			return err
		}
		return fmt.Errorf("leadership transfer to %s asked: %s", cfg.ID, c.Describe())
	})
	n := c.Node(ni)
	if _, in := suffrage(t, n)[oldID]; !in {
		t.Fatalf("%s left the configuration: the scenario needs it in: %s", oldID, c.Describe())
	}
	r := acq("gate/never", "h1", 1, 30*time.Second)
	r.LockDelay = durationpb.New(5 * time.Second)
	mustGrant(t, n, r)
	resp, err := n.Acquire(ctxT(t, 10*time.Second), acq("gate/never", "h1", 2, 30*time.Second))
	if err != nil || !resp.Granted {
		t.Fatalf("the new leader answered %v %v: it wrote format 5 (held by its own holding) while %s, never seen by it, is a server", resp, err, oldID)
	}
	_, err = n.Acquire(ctxT(t, 10*time.Second), shapedAcq("gate/shared", "h2", 1, shared, 0))
	if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), oldID) || !strings.Contains(err.Error(), "not been seen") {
		t.Fatalf("a shared acquire with %s never seen: %v, want ErrInvalid naming it", oldID, err)
	}
}
