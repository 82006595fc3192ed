package node_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// One client source (an IPv4 /24, an IPv6 /64) may hold at most a quarter
// of --max-waiters (at least 64): an outsider's token holder held 8,186
// waits from one address, the node's whole limit, and a lock loop beside
// it was refused 595 times in 30 s (outsider review s32 #4). With
// MaxWaiters 256, 64 waits from 127.0.0.1 are queued; a 65th from
// 127.0.0.2, the same /24, is refused resource_exhausted naming the
// per-source share and the flag, while one from another /24 and an
// embedded caller's still queue. Fails without the share (the 65th
// queues).
func TestWaitersPerSourceAreBounded(t *testing.T) {
	const max, perSource = 256, 64
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWaiters = max
	}})
	_, l := c.Leader()
	hot := mustGrant(t, l, acq("hot", "owner", 1, time.Minute))

	from := func(ip string) pbconnect.LeaseServiceClient { return apiFrom(t, ip, l) }
	ws := newHotWaits(t, 2*perSource)
	ctx, ended, wait := ws.ctx, ws.ended, ws.wait
	one := from("127.0.0.1")
	for i := range perSource {
		wait(one, fmt.Sprint("a", i))
	}
	waitWaiters(t, l, perSource)

	r := acq("hot", "b", 1, time.Minute)
	r.Wait = true
	start := time.Now()
	_, err := from("127.0.0.2").Acquire(ctxT(t, 10*time.Second), connect.NewRequest(r))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "from your address") ||
		!strings.Contains(err.Error(), fmt.Sprintf("--max-waiters %d", max)) {
		t.Fatalf("waiting acquire %d from one /24 (another address of it): %v; want resource_exhausted naming the per-source share and --max-waiters", perSource+1, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the refusal took %v", d)
	}
	t.Logf("waiting acquire %d from one /24: %v", perSource+1, err)

	// Another /24 and an embedded caller still queue.
	wait(from("127.0.5.2"), "c")
	waitWaiters(t, l, perSource+1)
	ws.embedded(l, "d")
	waitWaiters(t, l, perSource+2)
	ws.noneEnded(t)

	// Once one of the source's waits ends, it may wait again: the hot
	// key goes to the first waiter, whose wait ends granted.
	mustReleaseToken(t, l, "hot", "owner", hot.Token)
	nodetest.Eventually(t, 10*time.Second, func() error {
		r := acq("hot", "e", 1, time.Minute)
		r.Wait = true
		wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer wcancel()
		_, err := from("127.0.0.3").Acquire(wctx, connect.NewRequest(r))
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			return err
		}
		return nil
	})
	select {
	case err := <-ended:
		if !strings.HasSuffix(err.Error(), "<nil>") {
			t.Fatalf("the first waiter, after the release: %v; want granted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no waiter granted within 10 s of the release")
	}
}

// apiFrom returns a client of n's API whose connections come from ip (an
// address of 127.0.0.0/8, which loopback answers), so that a test can
// send requests from several client sources. It speaks HTTP/2, so that
// its requests share a connection or a few, which spares a loaded
// machine the cost of a connection each.
func apiFrom(t *testing.T, ip string, n *node.Node) pbconnect.LeaseServiceClient {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{DialContext: d.DialContext, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return pbconnect.NewLeaseServiceClient(&http.Client{Transport: tr}, "http://"+n.APIAddr())
}

// hotWaits are waiting acquires of the key "hot" that last until the test
// ends; one that ends earlier reports it on ended.
type hotWaits struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ended  chan error
}

func newHotWaits(t *testing.T, n int) *hotWaits {
	ctx, cancel := context.WithCancel(context.Background())
	ws := &hotWaits{ctx: ctx, cancel: cancel, ended: make(chan error, n)}
	t.Cleanup(ws.stop)
	return ws
}

// stop ends the waits and waits for them to return.
func (ws *hotWaits) stop() { ws.cancel(); ws.wg.Wait() }

// wait starts a waiting acquire of hot by holder through cl.
func (ws *hotWaits) wait(cl pbconnect.LeaseServiceClient, holder string) {
	r := acq("hot", holder, 1, time.Minute)
	r.Wait = true
	ws.wg.Add(1)
	go func() {
		defer ws.wg.Done()
		_, err := cl.Acquire(ws.ctx, connect.NewRequest(r))
		if ws.ctx.Err() == nil {
			ws.ended <- fmt.Errorf("%s: %v", holder, err)
		}
	}()
}

// embedded starts a waiting acquire of hot by holder as an embedded
// caller of n (no client source).
func (ws *hotWaits) embedded(n *node.Node, holder string) {
	r := acq("hot", holder, 1, time.Minute)
	r.Wait = true
	ws.wg.Add(1)
	go func() {
		defer ws.wg.Done()
		_, err := n.Acquire(ws.ctx, r)
		if ws.ctx.Err() == nil {
			ws.ended <- fmt.Errorf("embedded %s: %v", holder, err)
		}
	}()
}

// noneEnded fails t if a wait of ws ended.
func (ws *hotWaits) noneEnded(t *testing.T) {
	t.Helper()
	select {
	case err := <-ws.ended:
		t.Fatalf("a waiting acquire ended early: %v", err)
	default:
	}
}

// waiters waits until leader l serves want waiting acquires; it returns
// an error at once if a wait of ws ended meanwhile, and after 10 s if l
// serves another number.
func (ws *hotWaits) waiters(l *node.Node, want uint64) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-ws.ended:
			return fmt.Errorf("a waiting acquire ended early: %v", err)
		default:
		}
		st, err := l.Status(context.Background(), &pb.StatusRequest{})
		if err == nil && st.Waiters != want {
			err = fmt.Errorf("%d waiters at %s, want %d", st.Waiters, l.ID(), want)
		}
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// onSteadyLeader runs attempt with the cluster's leader until one attempt
// ends without a leader change: a scenario that needs one leader
// throughout (waits queued at it, its limits counted) says nothing once
// an election cut it short, and a busy host may cause one (the new-user
// review at load 14-21: "0 waiters, want 64", the waits ended "no
// leader: node n0 is Candidate in term 3"). An attempt that fails while
// the leader it began with still leads in the same term fails the test;
// after three attempts each cut short by an election, so does that.
func onSteadyLeader(t *testing.T, c *nodetest.Cluster, attempt func(li int, l *node.Node) error) {
	t.Helper()
	const attempts = 3
	for i := 1; ; i++ {
		li, l := c.Leader()
		term := l.Raft().CurrentTerm()
		err := attempt(li, l)
		if err == nil {
			return
		}
		if l.IsLeader() && l.Raft().CurrentTerm() == term {
			t.Fatal(err)
		}
		if i == attempts {
			t.Fatalf("the leader changed in each of %d attempts (a host too busy for the test cluster's Raft timing); the last: %v", attempts, err)
		}
		t.Logf("attempt %d: the leader %s of term %d changed meanwhile (%v); again with the new leader", i, l.ID(), term, err)
	}
}

// mustRefuseWait fails t unless a waiting acquire of hot from ip through
// n is refused resource_exhausted, naming want and --max-waiters limit.
func mustRefuseWait(t *testing.T, ip string, n *node.Node, want string, limit int) {
	t.Helper()
	if err := refuseWait(t, ip, n, want, limit); err != nil {
		t.Fatal(err)
	}
}

// refuseWait is mustRefuseWait returning its failure.
func refuseWait(t *testing.T, ip string, n *node.Node, want string, limit int) error {
	t.Helper()
	r := acq("hot", "late-"+ip, 1, time.Minute)
	r.Wait = true
	_, err := apiFrom(t, ip, n).Acquire(ctxT(t, 10*time.Second), connect.NewRequest(r))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), fmt.Sprintf("--max-waiters %d", limit)) {
		return fmt.Errorf("a waiting acquire from %s through %s: %v; want resource_exhausted naming %q and --max-waiters %d", ip, n.ID(), err, want, limit)
	}
	t.Logf("from %s through %s: %v", ip, n.ID(), err)
	return nil
}

// A source's waits count against one share of the leader's
// --max-waiters whichever nodes they are sent through, and one follower
// forwards at most half of it: in the outsider review s32 N4 two /24s
// through three nodes filled a leader's 8,192, since the waits a follower
// forwarded counted as that node's, against the whole limit, and a lock
// loop beside them was refused 1,203 times in 30 s. With MaxWaiters 256
// (a share of 64; 128 a node), on a 3-node cluster:
//   - /24 A waits 64 times through follower f1; its 65th is refused at
//     the leader, sent directly or through f2, naming the per-source
//     share (fails without the source carried in the forward: both
//     queue);
//   - f1's embedded callers wait 64 times more, and the next is refused
//     naming the forwarding node's share (fails without it: it queues);
//   - a lock loop's /24 still waits, through f2 and directly.
func TestForwardedWaitsCountBySource(t *testing.T) {
	const limit, share = 256, 64
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWaiters = limit
	}})
	mustGrant(t, c.Node(c.WaitForLeader()), acq("hot", "owner", 1, time.Minute))
	onSteadyLeader(t, c, func(li int, l *node.Node) error {
		var fs []*node.Node
		for i := range c.Size() {
			if i != li {
				fs = append(fs, c.Node(i))
			}
		}
		f1, f2 := fs[0], fs[1]
		ws := newHotWaits(t, 2*share+2)
		defer ws.stop()
		// The waits of an attempt an election cut short have ended.
		if err := ws.waiters(l, 0); err != nil {
			return err
		}

		a := apiFrom(t, "127.0.1.1", f1)
		for i := range share {
			ws.wait(a, fmt.Sprint("a", i))
		}
		if err := ws.waiters(l, share); err != nil {
			return err
		}
		if err := refuseWait(t, "127.0.1.2", l, "the most one source may have", limit); err != nil {
			return err
		}
		if err := refuseWait(t, "127.0.1.3", f2, "the most one source may have", limit); err != nil {
			return err
		}

		// An embedded caller of f1 has no source: its waits count only
		// against f1's share at the leader.
		for i := range limit/2 - share {
			ws.embedded(f1, fmt.Sprint("f1-", i))
		}
		if err := ws.waiters(l, limit/2); err != nil {
			return err
		}
		late := acq("hot", "f1-late", 1, time.Minute)
		late.Wait = true
		_, err := f1.Acquire(ctxT(t, 10*time.Second), late)
		if !errors.Is(err, node.ErrTooManyWaiters) || !strings.Contains(err.Error(), "forwarded by node "+f1.ID()) ||
			!strings.Contains(err.Error(), fmt.Sprintf("half of the leader's --max-waiters %d", limit)) {
			return fmt.Errorf("waiting acquire %d forwarded by %s: %v; want ErrTooManyWaiters naming the node's share", limit/2+1, f1.ID(), err)
		}
		t.Logf("waiting acquire %d forwarded by %s: %v", limit/2+1, f1.ID(), err)

		ws.wait(apiFrom(t, "127.0.5.1", f2), "e-via-f2")
		ws.wait(apiFrom(t, "127.0.5.2", l), "e-direct")
		return ws.waiters(l, limit/2+2)
	})
}

// Past its first 64 waits, a source waits only while a quarter of
// --max-waiters is free: in the outsider review s32 N4 four /24s of one
// token holder, a quarter each, filled a leader's 8,192, and a lock loop
// beside them was refused 340 times in 30 s. With MaxWaiters 300 (a share
// of 75, a floor of 64, 75 kept back), /24s A, B and C wait 75 times each;
// D waits 64 times, and its 65th is refused naming the quarter kept back
// (fails without it: it queues, and the limit is reached); a lock loop's
// /24 still waits.
func TestFewSourcesCannotFillWaiters(t *testing.T) {
	const limit, share, floor = 300, 75, 64
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWaiters = limit
	}})
	_, l := c.Leader()
	mustGrant(t, l, acq("hot", "owner", 1, time.Minute))
	ws := newHotWaits(t, 3*share+floor+1)
	total := 0
	for i, n := range []int{share, share, share, floor} { // one after the other: D's come when 225 are taken
		cl := apiFrom(t, fmt.Sprintf("127.0.%d.1", i+1), l)
		for j := range n {
			ws.wait(cl, fmt.Sprint(i, "-", j))
		}
		total += n
		waitWaiters(t, l, uint64(total))
	}
	mustRefuseWait(t, "127.0.4.2", l, fmt.Sprintf("kept for sources with fewer than %d", floor), limit)
	ws.wait(apiFrom(t, "127.0.5.1", l), "lock-loop")
	waitWaiters(t, l, 3*share+floor+1)
	ws.noneEnded(t)
}

// One key's queue at the leader holds at most 1,024 waiters: past it a
// waiting acquire of the key is refused ErrTooManyWaiters naming the key,
// while other keys still queue. Fails without the bound (the 1,025th
// queues).
func TestKeyQueueIsBounded(t *testing.T) {
	const perKey = 1024
	c := nodetest.New(t, nodetest.Options{Size: 1, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWaiters = 4 * perKey
	}})
	_, l := c.Leader()
	mustGrant(t, l, acq("crowd", "owner", 1, time.Minute))
	mustGrant(t, l, acq("other", "owner", 1, time.Minute))

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wait := func(key, holder string) {
		r := acq(key, holder, 1, time.Minute)
		r.Wait = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Acquire(ctx, r)
		}()
	}
	for i := range perKey {
		wait("crowd", fmt.Sprint("w", i))
	}
	waitWaiters(t, l, perKey)

	r := acq("crowd", "late", 1, time.Minute)
	r.Wait = true
	_, err := l.Acquire(ctxT(t, 10*time.Second), r)
	if !errors.Is(err, node.ErrTooManyWaiters) || !strings.Contains(err.Error(), `"crowd"`) {
		t.Fatalf("waiting acquire %d of one key: %v; want ErrTooManyWaiters naming the key", perKey+1, err)
	}
	t.Logf("waiting acquire %d of one key: %v", perKey+1, err)
	wait("other", "x")
	waitWaiters(t, l, perKey+1)
	if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != perKey+1 {
		t.Fatalf("%d waiters, want %d", st.Waiters, perKey+1)
	}
}
