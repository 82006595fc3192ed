package node_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// shapedAcq is an acquire of key in mode (limit for a semaphore), plus
// further items.
func shapedAcq(key, holder string, req uint64, mode pb.LeaseMode, limit uint32, more ...*pb.AcquireItem) *pb.AcquireRequest {
	r := acq(key, holder, req, 30*time.Second)
	r.Mode, r.Limit, r.Items = mode, limit, more
	return r
}

const (
	exclusive = pb.LeaseMode_LEASE_MODE_EXCLUSIVE
	shared    = pb.LeaseMode_LEASE_MODE_SHARED
	semaphore = pb.LeaseMode_LEASE_MODE_SEMAPHORE
)

// waitN waits until the leader has n waiters.
func waitN(t *testing.T, l *node.Node, n int) {
	t.Helper()
	nodetest.Eventually(t, 5*time.Second, func() error {
		st, _ := l.Status(context.Background(), &pb.StatusRequest{})
		if st.Waiters != uint64(n) {
			return fmt.Errorf("%d waiters, want %d", st.Waiters, n)
		}
		return nil
	})
}

// holders returns the holders of key's live holdings, in token order, by
// a consistent read through n.
func holders(t *testing.T, n *node.Node, key string) []string {
	t.Helper()
	resp, err := n.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range resp.Holdings {
		if h.State == pb.LeaseState_LEASE_STATE_HELD {
			out = append(out, h.Holder)
		}
	}
	return out
}

// Scenario: every shape through the API, on a follower (forwarded) and the
// leader: a semaphore of 2 takes two holders, refuses a third (naming the
// key) and refuses another limit as invalid; readers share a key a writer
// cannot take; a multi-key acquire holds all its keys under one token and
// its release frees them all; Get, List, CheckToken and Watch report every
// holding, keeping the first in the fields old clients read.
func TestShapesThroughTheAPI(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	_, f := c.Follower()
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	events, err := l.Watch(wctx, &pb.WatchRequest{Prefix: "shape/"})
	if err != nil {
		t.Fatal(err)
	}

	s1 := mustGrant(t, f, shapedAcq("shape/sem", "c1", 1, semaphore, 2))
	s2 := mustGrant(t, l, shapedAcq("shape/sem", "c2", 1, semaphore, 2))
	if s2.Token <= s1.Token {
		t.Fatalf("tokens %d then %d", s1.Token, s2.Token)
	}
	r, err := f.Acquire(ctxT(t, 5*time.Second), shapedAcq("shape/sem", "c3", 1, semaphore, 2))
	if err != nil || r.Granted || r.HeldKey != "shape/sem" || r.Holder != "c1" {
		t.Fatalf("third holder of a semaphore of 2: %v %v", r, err)
	}
	if _, err := f.Acquire(ctxT(t, 5*time.Second), shapedAcq("shape/sem", "c3", 2, semaphore, 3)); !errors.Is(err, node.ErrInvalid) {
		t.Fatalf("another limit: %v", err)
	}
	get, err := f.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: "shape/sem"})
	if err != nil || len(get.Holdings) != 2 || get.Lease.Token != s1.Token || get.Holdings[1].Token != s2.Token ||
		get.Lease.Mode != semaphore || get.Lease.Limit != 2 {
		t.Fatalf("get: %v %v", get, err)
	}
	for _, tok := range []uint64{s1.Token, s2.Token} {
		ct, err := l.CheckToken(ctxT(t, 5*time.Second), &pb.CheckTokenRequest{Key: "shape/sem", Token: tok})
		if err != nil || !ct.Current || ct.CurrentToken != s1.Token || len(ct.Holdings) != 2 {
			t.Fatalf("check token %d: %v %v", tok, ct, err)
		}
	}

	mustGrant(t, l, shapedAcq("shape/rw", "r1", 1, shared, 0))
	mustGrant(t, f, shapedAcq("shape/rw", "r2", 1, shared, 0))
	if r, err := l.Acquire(ctxT(t, 5*time.Second), shapedAcq("shape/rw", "w", 1, exclusive, 0)); err != nil || r.Granted {
		t.Fatalf("writer beside readers: %v %v", r, err)
	}

	set := mustGrant(t, f, shapedAcq("shape/a", "c9", 1, exclusive, 0,
		&pb.AcquireItem{Key: "shape/b"}, &pb.AcquireItem{Key: "shape/rw", Mode: shared}))
	for _, k := range []string{"shape/a", "shape/b", "shape/rw"} {
		g, err := l.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		h := g.Holdings[len(g.Holdings)-1]
		if h.Holder != "c9" || h.Token != set.Token || h.Set != set.Token ||
			!slices.Equal(h.SetKeys, []string{"shape/a", "shape/b", "shape/rw"}) {
			t.Fatalf("%s after the set's grant: %v", k, g.Holdings)
		}
	}
	list, err := f.List(ctxT(t, 5*time.Second), &pb.ListRequest{Prefix: "shape/"})
	if err != nil || len(list.Leases) != 4 || len(list.Holdings) != 7 {
		t.Fatalf("list: %d leases, %d holdings: %v %v", len(list.Leases), len(list.Holdings), list, err)
	}
	if rel, err := f.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: "shape/b", Holder: "c9", Token: set.Token}); err != nil || !rel.Released {
		t.Fatalf("release of a set member: %v %v", rel, err)
	}
	if got := holders(t, l, "shape/a"); len(got) != 0 {
		t.Fatalf("shape/a after its set's release: %v", got)
	}
	if got := holders(t, l, "shape/rw"); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("shape/rw after the set's release: %v", got)
	}

	// The change feed carried the shapes.
	sawSet, sawSem := false, false
	timeout := time.After(5 * time.Second)
	for !sawSet || !sawSem {
		select {
		case e := <-events:
			if e.Type == pb.EventType_EVENT_TYPE_GRANTED && e.Lease.Set == set.Token {
				sawSet = true
			}
			if e.Type == pb.EventType_EVENT_TYPE_GRANTED && e.Lease.Mode == semaphore && e.Lease.Limit == 2 {
				sawSem = true
			}
		case <-timeout:
			t.Fatalf("watch: set %v, semaphore %v", sawSet, sawSem)
		}
	}
}

// Scenario (fifo-no-barging, shared): five readers wait behind a writer;
// its release lets all of them in at once, each with its own token.
func TestSharedWaitersDrainTogether(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	w := mustGrant(t, l, acq("rw", "writer", 1, 30*time.Second))
	const readers = 5
	grants := make(chan *pb.AcquireResponse, readers)
	for i := range readers {
		req := shapedAcq("rw", fmt.Sprint("r", i), 1, shared, 0)
		req.Wait = true
		go func() {
			resp, err := l.Acquire(ctxT(t, 20*time.Second), req)
			if err != nil || !resp.Granted {
				t.Errorf("reader %d: %v %v", i, resp, err)
				resp = nil
			}
			grants <- resp
		}()
		waitN(t, l, i+1)
	}
	if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: "rw", Holder: "writer", Token: w.Token}); err != nil {
		t.Fatal(err)
	}
	tokens := map[uint64]bool{}
	for range readers {
		select {
		case g := <-grants:
			if g == nil {
				t.FailNow()
			}
			tokens[g.Token] = true
		case <-time.After(10 * time.Second):
			t.Fatal("readers not all granted")
		}
	}
	if len(tokens) != readers || len(holders(t, l, "rw")) != readers {
		t.Fatalf("%d tokens, holders %v", len(tokens), holders(t, l, "rw"))
	}
}

// Scenario (fifo-no-barging, no writer starvation): a writer queued behind
// a reader stops every newer reader, waiting or not, until it has had the
// key; then the newer reader goes.
func TestWriterStopsNewerReaders(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	r1 := mustGrant(t, l, shapedAcq("k", "r1", 1, shared, 0))
	type result struct {
		who  string
		resp *pb.AcquireResponse
	}
	got := make(chan result, 2)
	wait := func(who string, req *pb.AcquireRequest) {
		req.Wait = true
		go func() {
			resp, err := l.Acquire(ctxT(t, 20*time.Second), req)
			if err != nil || !resp.Granted {
				t.Errorf("%s: %v %v", who, resp, err)
			}
			got <- result{who, resp}
		}()
	}
	wait("writer", acq("k", "writer", 1, 30*time.Second))
	waitN(t, l, 1)
	wait("r2", shapedAcq("k", "r2", 1, shared, 0))
	waitN(t, l, 2)
	if r, err := l.Acquire(ctxT(t, 5*time.Second), shapedAcq("k", "r3", 1, shared, 0)); err != nil || r.Granted {
		t.Fatalf("a newer reader barged past the queued writer: %v %v", r, err)
	}
	if h := holders(t, l, "k"); !slices.Equal(h, []string{"r1"}) {
		t.Fatalf("holders while the writer waits: %v", h)
	}
	if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: "k", Holder: "r1", Token: r1.Token}); err != nil {
		t.Fatal(err)
	}
	first := <-got
	if first.who != "writer" {
		t.Fatalf("%s went before the writer", first.who)
	}
	if h := holders(t, l, "k"); !slices.Equal(h, []string{"writer"}) {
		t.Fatalf("holders after the writer's grant: %v", h)
	}
	if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: "k", Holder: "writer", Token: first.resp.Token}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.who != "r2" {
			t.Fatalf("then %s", r.who)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("r2 never granted")
	}
}

// Scenario: a semaphore of 2 held by two; two waiters; each release hands
// one slot to the next waiter in one entry.
func TestSemaphoreHandoff(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	held := []*pb.AcquireResponse{
		mustGrant(t, l, shapedAcq("n", "h0", 1, semaphore, 2)),
		mustGrant(t, l, shapedAcq("n", "h1", 1, semaphore, 2)),
	}
	got := make(chan string, 2)
	for i := range 2 {
		req := shapedAcq("n", fmt.Sprint("w", i), 1, semaphore, 2)
		req.Wait = true
		go func() {
			resp, err := l.Acquire(ctxT(t, 20*time.Second), req)
			if err != nil || !resp.Granted {
				t.Errorf("waiter %d: %v %v", i, resp, err)
			}
			got <- req.Holder
		}()
		waitN(t, l, i+1)
	}
	for i := range 2 {
		start := time.Now()
		if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: "n", Holder: fmt.Sprint("h", i), Token: held[i].Token}); err != nil {
			t.Fatal(err)
		}
		select {
		case who := <-got:
			if want := fmt.Sprint("w", i); who != want {
				t.Fatalf("slot went to %s, want %s", who, want)
			}
			t.Logf("semaphore handoff %d: %v from release call to grant", i, time.Since(start))
		case <-time.After(10 * time.Second):
			t.Fatal("no handoff")
		}
	}
}

// Invariant no-set-deadlock: clients that wait for overlapping sets of
// keys, named in any order and in any modes, are all granted in turn;
// none waits for another. Two clients taking {a, b} and {b, a} while both
// keys are held: the older is granted both when they are released, then
// the younger. Then eight clients each take random subsets of four keys
// in random orders and modes, hold them briefly and release, many times:
// every acquire completes within its deadline.
func TestMultiKeyWaitersNoDeadlock(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	ha := mustGrant(t, l, acq("a", "h", 1, 30*time.Second))
	hb := mustGrant(t, l, acq("b", "h", 2, 30*time.Second))
	got := make(chan string, 2)
	for i, keys := range [][2]string{{"a", "b"}, {"b", "a"}} {
		who := fmt.Sprint("c", i)
		req := acq(keys[0], who, 1, 30*time.Second)
		req.Items = []*pb.AcquireItem{{Key: keys[1]}}
		req.Wait = true
		go func() {
			resp, err := l.Acquire(ctxT(t, 20*time.Second), req)
			if err != nil || !resp.Granted {
				t.Errorf("%s: %v %v", who, resp, err)
				got <- ""
				return
			}
			got <- who
			// Hold a moment, then let the other in.
			if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: keys[1], Holder: who, Token: resp.Token}); err != nil {
				t.Error(err)
			}
		}()
		waitN(t, l, i+1)
	}
	mustReleaseToken(t, l, "b", "h", hb.Token)
	mustReleaseToken(t, l, "a", "h", ha.Token)
	for _, want := range []string{"c0", "c1"} {
		select {
		case who := <-got:
			if who != want {
				t.Fatalf("granted %q, want %q", who, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("deadlock: a set was never granted")
		}
	}

	keys := []string{"k0", "k1", "k2", "k3"}
	modes := []pb.LeaseMode{exclusive, shared, semaphore}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range 6 {
				perm := rng.Perm(len(keys))[:1+rng.IntN(len(keys))]
				item := func(k int) (string, pb.LeaseMode, uint32) {
					m := modes[rng.IntN(len(modes))]
					if m == semaphore {
						return keys[k], m, 2 // every semaphore here has the same limit
					}
					return keys[k], m, 0
				}
				k0, m0, l0 := item(perm[0])
				req := shapedAcq(k0, fmt.Sprint("w", w), uint64(i+1), m0, l0)
				for _, k := range perm[1:] {
					kk, m, lim := item(k)
					req.Items = append(req.Items, &pb.AcquireItem{Key: kk, Mode: m, Limit: lim})
				}
				req.Wait = true
				resp, err := l.Acquire(ctxT(t, 30*time.Second), req)
				if err != nil || !resp.Granted {
					t.Errorf("worker %d round %d %v: %v %v", w, i, perm, resp, err)
					return
				}
				time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond) // hold it a little
				if _, err := l.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: k0, Holder: req.Holder, Token: resp.Token}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func mustReleaseToken(t *testing.T, n *node.Node, key, holder string, token uint64) {
	t.Helper()
	if r, err := n.Release(ctxT(t, 5*time.Second), &pb.ReleaseRequest{Key: key, Holder: holder, Token: token}); err != nil || !r.Released {
		t.Fatalf("release %s by %s: %v %v", key, holder, r, err)
	}
}

// fifo-no-barging holds for a holder's set too: holding one key of it
// lets a retry or renewal of keys it holds skip the queue, not a key it
// does not hold, where an exclusive waiter stands first.
func TestOwnKeyDoesNotCarryASetPastWaiters(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	mustGrant(t, l, acq("k", "h", 1, time.Minute))
	mustGrant(t, l, shapedAcq("x", "r1", 1, shared, 0))
	writer := make(chan error, 1)
	go func() {
		r := acq("x", "w", 1, time.Minute)
		r.Wait = true
		_, err := l.Acquire(ctxT(t, 30*time.Second), r)
		writer <- err
	}()
	waitN(t, l, 1)
	set := acq("k", "h", 2, time.Minute)
	set.Items = []*pb.AcquireItem{{Key: "x", Mode: shared}}
	resp, err := l.Acquire(ctxT(t, 10*time.Second), set)
	if err != nil || resp.Granted {
		t.Fatalf("a set of its own key and a key with a queued writer: %v %v; want refused", resp, err)
	}
	if got := holders(t, l, "x"); len(got) != 1 || got[0] != "r1" {
		t.Fatalf("x held by %v, want r1 alone", got)
	}
	// The holder's retry of the grant of the key it holds still skips the
	// queue.
	if r, err := l.Acquire(ctxT(t, 10*time.Second), acq("k", "h", 1, time.Minute)); err != nil || !r.Granted {
		t.Fatalf("retry of its own grant: %v %v", r, err)
	}
	select {
	case err := <-writer:
		t.Fatalf("the writer's wait ended early: %v", err)
	default:
	}
}

// fifo-no-barging holds against a key's own holder: a new request of the
// holder (a new id: its release failed, say, or it lost its lease while
// the record lived on) queues behind the clients already waiting, or is
// refused if it does not wait; only a retry of its grant's request skips
// the queue.
func TestHolderQueuesBehindWaiters(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, l := c.Leader()
	first := mustGrant(t, l, acq("k", "a", 1, time.Minute))
	type got struct {
		who  string
		resp *pb.AcquireResponse
		err  error
	}
	grants := make(chan got, 2)
	wait := func(holder string, id uint64) {
		r := acq("k", holder, id, time.Minute)
		r.Wait = true
		resp, err := l.Acquire(ctxT(t, 30*time.Second), r)
		grants <- got{holder, resp, err}
	}
	go wait("b", 1)
	waitN(t, l, 1)
	if r, err := l.Acquire(ctxT(t, 10*time.Second), acq("k", "a", 2, time.Minute)); err != nil || r.Granted {
		t.Fatalf("the holder's new request, not waiting, with b queued: %v %v; want refused", r, err)
	}
	if r, err := l.Acquire(ctxT(t, 10*time.Second), acq("k", "a", 1, time.Minute)); err != nil || !r.Granted || r.Token != first.Token {
		t.Fatalf("the holder's retry of its grant: %v %v; want token %d", r, err, first.Token)
	}
	go wait("a", 3)
	waitN(t, l, 2)
	if _, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: "k", Holder: "a", Token: first.Token}); err != nil {
		t.Fatal(err)
	}
	var order []string
	for range 2 {
		select {
		case g := <-grants:
			if g.err != nil || !g.resp.Granted {
				t.Fatalf("%s: %v %v", g.who, g.resp, g.err)
			}
			order = append(order, g.who)
			if _, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: "k", Holder: g.who, Token: g.resp.Token}); err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("granted so far: %v", order)
		}
	}
	if order[0] != "b" || order[1] != "a" {
		t.Fatalf("granted in the order %v, want b (queued first), then a", order)
	}
}

// Scenario: mid-upgrade, a node of an older version (one that reads only
// command format 2) is in the cluster when leadership is on an upgraded
// node. A lock shape (format 3) would stop that node when it applied the
// entry: the leader refuses it as invalid, naming the node, and plain
// acquires go on (adversarial review of 94d7944: nothing gated formats).
func TestShapesWaitForEveryNodeToReadThem(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		if i == 2 {
			cfg.Testing = &node.TestingKnobs{ReadsFormat: 2}
		}
	}})
	_, l := leaderOtherThan(t, c, 2)
	ctx := ctxT(t, 20*time.Second)
	nodetest.Eventually(t, 10*time.Second, func() error {
		_, err := l.Acquire(ctx, shapedAcq("gate/sem", "h1", 1, semaphore, 2))
		if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "node n2 runs an older leasenode") {
			return fmt.Errorf("a semaphore with a format-2 node in the cluster: %v", err)
		}
		return nil
	})
	if _, err := l.Acquire(ctx, acq("gate/plain", "h1", 2, 30*time.Second)); err != nil {
		t.Fatalf("a plain acquire with a format-2 node in the cluster: %v", err)
	}
}
