package lease_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Close ends an Acquire that is waiting, with ErrClosed, and a closed
// Client is never handed a Lease: the key is not left held by a lease
// nobody extends.
func TestCloseEndsWaitingAcquire(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t, lease.WithTTL(2*time.Second))
		b, _ := e.newClient(t, lease.WithTTL(2*time.Second))
		la, err := a.TryAcquire(ctxT(t, 10*time.Second), "cw")
		if err != nil || la == nil {
			t.Fatalf("TryAcquire: %v %v", la, err)
		}
		type res struct {
			l   *lease.Lease
			err error
		}
		got := make(chan res, 1)
		go func() {
			l, err := b.Acquire(ctxT(t, 30*time.Second), "cw")
			got <- res{l, err}
		}()
		waitWaiters(t, e.c, 1)
		if err := b.Close(ctxT(t, 10*time.Second)); err != nil {
			t.Fatalf("Close: %v", err)
		}
		select {
		case r := <-got:
			if r.l != nil || !errors.Is(r.err, lease.ErrClosed) {
				t.Fatalf("waiting Acquire after Close: %v, %v; want nil, ErrClosed", r.l, r.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiting Acquire did not end when its Client closed")
		}
		if err := la.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		// Nobody holds the key: the closed client's attempt was settled.
		c, _ := e.newClient(t)
		waitFree(t, c, "cw", 10*time.Second, "the closed client's acquire was settled")
	})
}

// waitFree waits until c can take key (and gives it back): nobody holds
// it any more, as after should have made sure.
func waitFree(t *testing.T, c *lease.Client, key string, within time.Duration, after string) {
	t.Helper()
	nodetest.Eventually(t, within, func() error {
		l, err := c.TryAcquire(ctxT(t, 5*time.Second), key)
		if err != nil || l == nil {
			return fmt.Errorf("%s still held after %s: %v", key, after, err)
		}
		return l.Release(ctxT(t, 5*time.Second))
	})
}

// A Release that fails (its context ended) leaves the lease ended, is
// retried in the background, and a second Release tries again instead
// of reporting success without sending anything.
func TestReleaseAfterFailedRelease(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t, lease.WithTTL(time.Minute))
		b, _ := e.newClient(t)
		l, err := a.TryAcquire(ctxT(t, 10*time.Second), "rc")
		if err != nil || l == nil {
			t.Fatalf("TryAcquire: %v %v", l, err)
		}
		dead, cancel := context.WithCancel(context.Background())
		cancel()
		if err := l.Release(dead); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "retried in the background") {
			t.Fatalf("Release with a cancelled context: %v; want context.Canceled, saying the release is retried", err)
		}
		if l.IsHealthy() || !errors.Is(l.Err(), lease.ErrReleased) {
			t.Fatalf("after a failed Release: healthy %v, err %v; want ended", l.IsHealthy(), l.Err())
		}
		if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatalf("second Release: %v", err)
		}
		lb, err := b.TryAcquire(ctxT(t, 10*time.Second), "rc")
		if err != nil || lb == nil {
			t.Fatalf("the key is still held after the second Release: %v %v", lb, err)
		}
		lb.Release(ctxT(t, 10*time.Second))

		// Without a second call, the background release frees the key
		// long before the one-minute TTL.
		l2, err := a.TryAcquire(ctxT(t, 10*time.Second), "rc2")
		if err != nil || l2 == nil {
			t.Fatalf("TryAcquire: %v %v", l2, err)
		}
		if err := l2.Release(dead); err == nil {
			t.Fatal("Release with a cancelled context reported success")
		}
		waitFree(t, b, "rc2", 20*time.Second, "a failed Release, without a second one (the background release)")
	})
}

// Input that cannot work is refused at once with ErrInvalid.
func TestClientRefusesBadInput(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t, lease.WithRetryTimeout(30*time.Second))
		ctx := ctxT(t, 20*time.Second)
		start := time.Now()
		for name, f := range map[string]func() error{
			"acquire": func() error { _, err := a.TryAcquire(ctx, "bad\xff"); return err },
			"set":     func() error { _, err := a.TryAcquireSet(ctx, []lease.Item{{Key: "ok"}, {Key: "bad\xff"}}); return err },
			"nil set": func() error { _, err := a.TryAcquireSet(ctx, nil); return err },
			"get":     func() error { _, err := a.Get(ctx, "bad\xff"); return err },
			"list":    func() error { _, err := a.List(ctx, "bad\xff"); return err },
			"check":   func() error { _, err := a.CheckToken(ctx, "bad\xff", 1); return err },
			"watch":   func() error { _, err := a.Watch(ctx, "bad\xff"); return err },
			"ttl 0":   func() error { _, err := a.TryAcquire(ctx, "k", lease.TTL(0)); return err },
			"ttl -1":  func() error { _, err := a.TryAcquire(ctx, "k", lease.TTL(-time.Second)); return err },
			"ttl < extend interval": func() error {
				c, _ := e.newClient(t, lease.WithExtendInterval(time.Second))
				_, err := c.TryAcquire(ctx, "k", lease.TTL(time.Second))
				return err
			},
		} {
			if err := f(); !errors.Is(err, lease.ErrInvalid) {
				t.Errorf("%s: %v, want ErrInvalid", name, err)
			}
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("refusals took %v: they were retried", d)
		}
	})
	_, n := nodetest.New(t, nodetest.Options{Size: 1}).Leader()
	for name, opts := range map[string][]lease.Option{
		"holder not UTF-8":         {lease.WithHolder("bad\xff")},
		"drift NaN":                {lease.WithDriftBound(math.NaN())},
		"extend interval too long": {lease.WithTTL(time.Second), lease.WithExtendInterval(5 * time.Second)},
	} {
		if _, err := lease.New(n, opts...); !errors.Is(err, lease.ErrInvalid) {
			t.Errorf("New with %s: %v, want ErrInvalid", name, err)
		}
	}
}

// AcquireTimeout with no time to wait is one try: a free key is granted,
// a held one is ErrTimeout and ErrHeld naming the holder, whoever holds it.
// So is a wait shorter than a round trip (1 ns timed out a free key
// before sending anything: adversarial review s39).
func TestAcquireTimeoutWithoutTime(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t)
		b, _ := e.newClient(t)
		ctx := ctxT(t, 20*time.Second)
		for _, d := range []time.Duration{time.Nanosecond, time.Microsecond, -time.Second} {
			l, err := a.AcquireTimeout(ctx, "tiny", d)
			if err != nil || l == nil {
				t.Fatalf("AcquireTimeout(%v) of a free key: %v %v; want granted", d, l, err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		l, err := a.AcquireTimeout(ctx, "z", 0)
		if err != nil || l == nil {
			t.Fatalf("AcquireTimeout(0) of a free key: %v %v", l, err)
		}
		for _, c := range []*lease.Client{a, b} {
			for _, d := range []time.Duration{0, -time.Second, time.Nanosecond} {
				_, err := c.AcquireTimeout(ctx, "z", d)
				var he *lease.HeldError
				if !errors.Is(err, lease.ErrTimeout) || !errors.As(err, &he) || he.Holder != a.Holder() {
					t.Errorf("AcquireTimeout(%v) of a held key: %v; want ErrTimeout and a HeldError naming %s", d, err, a.Holder())
				}
			}
		}
		// Waiting for its own lease, a Client times out with ErrHeld too.
		_, err = a.AcquireTimeout(ctx, "z", 50*time.Millisecond)
		var he *lease.HeldError
		if !errors.Is(err, lease.ErrTimeout) || !errors.As(err, &he) || he.Holder != a.Holder() {
			t.Errorf("AcquireTimeout of its own key: %v; want ErrTimeout and a HeldError naming itself", err)
		}
		l.Release(ctx)
	})
}

// A watch of a quiet prefix starts at once, and Observe of a key nobody
// holds says so at once.
func TestWatchOfQuietPrefixStarts(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t)
		ctx, cancel := context.WithCancel(ctxT(t, 20*time.Second))
		defer cancel()
		started := make(chan error, 1)
		go func() {
			_, err := a.Watch(ctx, "quiet/")
			started <- err
		}()
		if err := recvErr(t, started, 5*time.Second, "Watch of a quiet prefix"); err != nil {
			t.Fatalf("Watch: %v", err)
		}
		select {
		case ld, ok := <-a.Observe(ctx, "quiet/leader"):
			if !ok || ld.Holder != "" {
				t.Fatalf("Observe of a free key: %+v %v; want a zero Leader", ld, ok)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Observe of a free key sent nothing")
		}
	})
}

// Dial waits for a node that is not listening yet (started alongside the
// caller), as any request waits for a leader, instead of failing at once.
func TestDialWaitsForANodeStartingLater(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true})
	_, n := c.Leader()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there until the "node" starts below
	dialed := make(chan error, 1)
	go func() {
		cl, err := lease.Dial(ctxT(t, 30*time.Second), []string{addr}, lease.WithRetryTimeout(20*time.Second))
		if err == nil {
			cl.Close(context.Background())
		}
		dialed <- err
	}()
	start := time.AfterFunc(300*time.Millisecond, func() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			dialed <- err
			return
		}
		d := &door{ln: ln, target: n.APIAddr(), thawed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
		close(d.thawed)
		d.wg.Add(1)
		go d.serve()
		t.Cleanup(d.close)
	})
	defer start.Stop()
	if err := recvErr(t, dialed, 30*time.Second, "Dial of a node that started 300 ms later"); err != nil {
		t.Fatalf("Dial of a node that started 300 ms later: %v", err)
	}
	// With nothing ever listening, Dial gives up after its retry timeout
	// with ErrNoLeader.
	t0 := time.Now()
	_, err = lease.Dial(ctxT(t, 30*time.Second), []string{"127.0.0.1:1"}, lease.WithRetryTimeout(500*time.Millisecond))
	if !errors.Is(err, lease.ErrNoLeader) || time.Since(t0) > 10*time.Second {
		t.Fatalf("Dial of nothing: %v after %v; want ErrNoLeader after about 500ms", err, time.Since(t0))
	}
}

// An election is exclusive and Run stops on what retrying cannot cure.
func TestElectorRefusesWhatCannotWork(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t)
		ctx := ctxT(t, 20*time.Second)
		for name, opt := range map[string]lease.AcquireOption{"shared": lease.Shared(), "semaphore": lease.Semaphore(2)} {
			if _, err := a.Elector("el", nil, opt).Campaign(ctx); !errors.Is(err, lease.ErrInvalid) {
				t.Errorf("Campaign with %s: %v, want ErrInvalid", name, err)
			}
		}
		start := time.Now()
		if err := a.Elector("bad\xff", nil).Run(ctx, func(context.Context, *lease.Lease) {}); !errors.Is(err, lease.ErrInvalid) {
			t.Errorf("Run with an invalid key: %v, want ErrInvalid", err)
		}
		if _, err := a.TryAcquire(ctx, "s0", lease.Semaphore(0)); !errors.Is(err, lease.ErrInvalid) {
			t.Errorf("Semaphore(0): %v, want ErrInvalid", err)
		}
		a.Close(ctx)
		if err := a.Elector("el", nil).Run(ctx, func(context.Context, *lease.Lease) {}); !errors.Is(err, lease.ErrClosed) {
			t.Errorf("Run on a closed client: %v, want ErrClosed", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("the refusals took %v", d)
		}
	})
	_, n := nodetest.New(t, nodetest.Options{Size: 1}).Leader()
	for name, opts := range map[string][]lease.Option{
		"negative expiring threshold":  {lease.WithExpiringThreshold(-time.Second)},
		"threshold as long as the TTL": {lease.WithTTL(time.Second), lease.WithExpiringThreshold(time.Second)},
	} {
		if _, err := lease.New(n, opts...); !errors.Is(err, lease.ErrInvalid) {
			t.Errorf("New with %s: %v, want ErrInvalid", name, err)
		}
	}
}

// Close ends everything of the Client: reads and watches after it are
// ErrClosed, watches and Observe open before it end, and a second Close
// waits for the first.
func TestCloseEndsReadsAndWatches(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t)
		ctx := ctxT(t, 20*time.Second)
		events, err := a.Watch(ctx, "w/")
		if err != nil {
			t.Fatal(err)
		}
		observed := a.Observe(ctx, "w/leader")
		select {
		case <-observed:
		case <-time.After(10 * time.Second):
			t.Fatal("Observe sent nothing")
		}
		l, err := a.TryAcquire(ctx, "w/k")
		if err != nil || l == nil {
			t.Fatal(l, err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Close(ctx) }()
		if err := a.Close(ctx); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if l.IsHealthy() {
			t.Fatal("a second Close returned before the first released the lease")
		}
		if err := recvErr(t, done, 10*time.Second, "the first Close"); err != nil {
			t.Fatal(err)
		}
		for name, ch := range map[string]func() bool{
			"watch":   func() bool { _, ok := <-events; return ok },
			"observe": func() bool { _, ok := <-observed; return ok },
		} {
			ended := make(chan struct{})
			go func() {
				for ch() {
				}
				close(ended)
			}()
			select {
			case <-ended:
			case <-time.After(10 * time.Second):
				t.Errorf("%s still open after Close", name)
			}
		}
		for name, f := range map[string]func() error{
			"get":   func() error { _, err := a.Get(ctx, "w/k"); return err },
			"list":  func() error { _, err := a.List(ctx, "w/"); return err },
			"check": func() error { _, err := a.CheckToken(ctx, "w/k", 1); return err },
			"watch": func() error { _, err := a.Watch(ctx, "w/"); return err },
		} {
			if err := f(); !errors.Is(err, lease.ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		}
	})
}

// hookGet runs hook once, before its first Get.
type hookGet struct {
	lease.Backend
	once sync.Once
	hook func()
}

func (b *hookGet) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	b.once.Do(b.hook)
	return b.Backend.Get(ctx, r)
}

// Observe never goes back to an older leader once it reported a newer
// one: the watch it opens first may hold events older than its read.
func TestObserveNeverGoesBack(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, n := c.Leader()
	ctx := ctxT(t, 20*time.Second)
	a, _ := lease.New(n, lease.WithHolder("a"))
	b, _ := lease.New(n, lease.WithHolder("b"))
	defer a.Close(ctx)
	defer b.Close(ctx)
	la, err := a.TryAcquire(ctx, "obs", lease.Value([]byte("a")))
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	// Between the watch's start and the read, a hands over to b.
	hb := &hookGet{Backend: n, hook: func() {
		la.Release(ctx)
		if lb, err := b.TryAcquire(ctx, "obs", lease.Value([]byte("b"))); err != nil || lb == nil {
			t.Errorf("b's acquire: %v %v", lb, err)
		}
	}}
	o, _ := lease.New(hb)
	defer o.Close(ctx)
	obs := o.Observe(ctx, "obs")
	var seen []string
	deadline := time.After(3 * time.Second)
	for len(seen) < 3 {
		select {
		case ld := <-obs:
			seen = append(seen, string(ld.Value))
		case <-deadline:
			if len(seen) == 0 || seen[len(seen)-1] != "b" {
				t.Fatalf("Observe reported %q; want it to end at b", seen)
			}
			return
		}
	}
	t.Fatalf("Observe reported %q with b leading all along; want b alone", seen)
}

// A Fence refuses token 0, which no lease carries (TokenFor's answer for a
// key not held), and older tokens; it admits the highest again.
func TestFenceRefusesTokenZero(t *testing.T) {
	f := lease.NewFence()
	if err := f.Check("k", 0); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("Check of token 0 on a fresh fence: %v", err)
	}
	if err := f.CheckRead("k", 0); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("CheckRead of token 0: %v", err)
	}
	if err := f.Check("k", 5); err != nil {
		t.Fatal(err)
	}
	if err := f.Check("k", 4); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("older token: %v", err)
	}
	if err := f.Check("k", 5); err != nil {
		t.Fatalf("the same token again: %v", err)
	}
}

// gatedRelease holds Release calls until gate closes, and notes any
// Acquire sent while one is held.
type gatedRelease struct {
	lease.Backend
	arrived chan struct{} // closed when the first Release is held
	gate    chan struct{}
	once    sync.Once
	held    atomic.Bool
	early   atomic.Int64 // Acquires sent while a Release was held
	sent    chan struct{}
}

func (b *gatedRelease) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	b.held.Store(true)
	b.once.Do(func() { close(b.arrived) })
	select {
	case <-b.gate:
	case <-time.After(30 * time.Second):
		return nil, errors.New("test: held release never let through")
	}
	b.held.Store(false)
	return b.Backend.Release(ctx, r)
}

func (b *gatedRelease) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if b.held.Load() {
		b.early.Add(1)
		select {
		case b.sent <- struct{}{}:
		default:
		}
	}
	return b.Backend.Acquire(ctx, r)
}

// Invariant fifo-no-barging, from the client's side: a goroutine of a
// Client waiting for a key that its own Lease holds does not go ahead of
// another client queued for it at the leader. It waits until the release
// has reached the cluster, then queues like anyone (before, the local
// guard opened before the release was sent, and its acquire renewed the
// holding still live in the cluster: a client releasing and re-acquiring
// in a loop kept the key from the queue for good).
func TestReleaseDoesNotHandOffWithinTheClient(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, f := c.Follower()
	gb := &gatedRelease{Backend: f, arrived: make(chan struct{}), gate: make(chan struct{}), sent: make(chan struct{}, 1)}
	a, err := lease.New(gb, lease.WithTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := lease.New(f, lease.WithTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())

	l, err := a.Acquire(ctxT(t, 10*time.Second), "k")
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		who string
		l   *lease.Lease
		err error
	}
	order := make(chan got, 2)
	go func() {
		lb, err := b.Acquire(ctxT(t, 30*time.Second), "k")
		order <- got{"b", lb, err}
	}()
	waitWaiters(t, c, 1)
	released := make(chan error, 1)
	go func() { released <- l.Release(ctxT(t, 30*time.Second)) }()
	select {
	case <-gb.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the release never reached the backend")
	}
	go func() {
		la, err := a.Acquire(ctxT(t, 30*time.Second), "k")
		order <- got{"a", la, err}
	}()
	// Before the fix the second acquire left at once; give it the chance.
	select {
	case <-gb.sent:
		t.Fatal("A's second acquire was sent while its own release of the key was still on its way")
	case <-time.After(300 * time.Millisecond):
	}
	close(gb.gate)
	if err := recvErr(t, released, 10*time.Second, "release"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"b", "a"} {
		select {
		case g := <-order:
			if g.err != nil || g.who != want {
				t.Fatalf("%s got the key (%v) where %s, queued first, should have", g.who, g.err, want)
			}
			if err := g.l.Release(ctxT(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s never got the key", want)
		}
	}
	if n := gb.early.Load(); n != 0 {
		t.Fatalf("%d acquires sent while a release was held", n)
	}
}

// A node may take fewer leases per Extend than the client sends
// (--max-extend-items, --max-request-bytes): the client sends refused
// chunks again in halves at once, and keeps the smaller size. Before,
// it retried the refused batch until every lease of the client was lost
// together, on a healthy cluster.
func TestExtendFitsTheNodesLimit(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxExtendItems = 10
	}})
	_, f := c.Follower()
	// Leases of 5 s, not 1 s: the property is the chunking, and 1 s
	// leases are lost on a busy host without it (an election, "node n2
	// is Follower in term 3", in the new-user review at load 14-21;
	// "no extend succeeded before its validity ended" beside busy loops,
	// with scheduling lag up to 0.8 s). Without the chunking a client
	// still loses every lease within one TTL, well inside the wait below.
	const ttl = 5 * time.Second
	cl, err := lease.New(f, lease.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	ls := acquireN(t, cl, "many", 25)
	// Every lease extended twice over: its validity reaches two TTLs past
	// the last grant (about 1.3 TTLs from now, extending every TTL/3).
	extendedPast(t, ls, time.Now().Add(2*ttl), 3*ttl+10*time.Second)
	for _, l := range ls {
		if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
}

// A client whose TLS settings do not fit the node's is told so at once
// (ErrTLSSetup, with what to set), not after retrying for the retry
// timeout as if no leader were up.
func TestDialTellsATLSMismatch(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) })
	tlsSrv := httptest.NewTLSServer(h)
	defer tlsSrv.Close()
	plain := httptest.NewServer(h)
	defer plain.Close()
	mtls := httptest.NewUnstartedServer(h)
	mtls.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	mtls.StartTLS()
	defer mtls.Close()
	for _, tlsSrv := range []*httptest.Server{tlsSrv, mtls} {
		tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	}
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	skip := &tls.Config{InsecureSkipVerify: true}
	// One node still on the other setup (a rolling switch to TLS) is
	// passed over for the others, not a failure of the call.
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true})
	if cl, err := lease.Dial(ctxT(t, 30*time.Second), []string{addr(tlsSrv), c.Node(0).APIAddr()}, lease.WithRetryTimeout(20*time.Second)); err != nil {
		t.Fatalf("Dial with a TLS-only seed first and a plain node second: %v", err)
	} else {
		cl.Close(context.Background())
	}
	for _, c := range []struct {
		name string
		addr string
		tls  *tls.Config
		want string
		p    lease.TLSProblem
	}{
		{"plain to a TLS port", addr(tlsSrv), nil, "the node requires TLS", lease.TLSNodeRequiresTLS},
		{"TLS to a plain port", addr(plain), skip, "a node serving plain HTTP", lease.TLSNodeIsPlain},
		{"an unknown CA", addr(tlsSrv), &tls.Config{}, "certificate failed verification", lease.TLSUnverified},
		{"no client certificate", addr(mtls), skip, "certificate of the cluster's CA", lease.TLSClientCertRequired},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := lease.Dial(ctxT(t, 30*time.Second), []string{c.addr}, lease.WithTLS(c.tls), lease.WithRetryTimeout(20*time.Second))
			if !errors.Is(err, lease.ErrTLSSetup) || errors.Is(err, lease.ErrNoLeader) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Dial: %v; want ErrTLSSetup saying %q", err, c.want)
			}
			// The library names its own options, not the CLI's flags.
			if strings.Contains(err.Error(), "--") {
				t.Errorf("Dial: %v: names a command-line flag", err)
			}
			if te := (*lease.TLSSetupError)(nil); !errors.As(err, &te) || te.Problem != c.p || te.Addr != c.addr {
				t.Errorf("Dial: %#v; want a *TLSSetupError for %s with problem %v", err, c.addr, c.p)
			}
		})
	}
}

// A refused acquire says who holds the key and how long it is not free
// unless released (the rest of the grant and any lock-delay): not "for at
// most", which a holder that keeps extending makes false.
func TestHeldErrorWords(t *testing.T) {
	err := &lease.HeldError{Key: "k", Holder: "job#1", Wait: 8470 * time.Millisecond}
	if msg := err.Error(); !strings.Contains(msg, "held by job#1: not free for 8.5s unless released sooner (the rest of its grant, and its lock-delay if it has one), longer if extended") || strings.Contains(msg, "at most") {
		t.Errorf("HeldError: %q", msg)
	}
	err.Holder = ""
	if msg := err.Error(); !strings.Contains(msg, "in its lock-delay for 8.5s more") {
		t.Errorf("HeldError in a lock-delay: %q", msg)
	}
	// Nobody holds it and no lock-delay runs: clients queued first come
	// first (it said "held by nobody (lock-delay)").
	err.Wait = 0
	if msg := err.Error(); !strings.Contains(msg, "clients waiting for it since before this request come first") || strings.Contains(msg, "lock-delay") {
		t.Errorf("HeldError behind waiters: %q", msg)
	}
}

// A token read from a file keeps its trailing newline: it is trimmed, as
// the agent trims its --auth-token-file. One with a line break inside is
// refused at once as ErrInvalid (it was retried for the retry timeout,
// then reported as "no leader reachable ... invalid header field value"),
// and the refusal does not show the secret.
func TestAuthTokenFromAFile(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "PRI" { // the HTTP/2 preface, to a server of HTTP/1.1 only
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		select {
		case got <- r.Header.Get("Authorization"):
		default:
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	addr := []string{srv.Listener.Addr().String()}
	r, err := lease.NewRemote(addr, lease.WithAuthToken(" s3cret\r\n"))
	if err != nil {
		t.Fatalf("NewRemote with a token ending in a newline: %v", err)
	}
	defer r.Close()
	r.Status(ctxT(t, 5*time.Second)) // 404: only the header matters
	select {
	case h := <-got:
		if h != "Bearer s3cret" {
			t.Fatalf("Authorization sent: %q, want %q", h, "Bearer s3cret")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no request reached the node: the token was not trimmed (net/http refuses a header with a newline)")
	}
	for _, tok := range []string{"s3c\nret", "s3c\x00ret", "s3c\x7fret"} {
		start := time.Now()
		_, err := lease.Dial(ctxT(t, 30*time.Second), addr, lease.WithAuthToken(tok), lease.WithRetryTimeout(20*time.Second))
		if !errors.Is(err, lease.ErrInvalid) || !strings.Contains(err.Error(), "auth token contains a control character") ||
			strings.Contains(err.Error(), "s3c") || time.Since(start) > time.Second {
			t.Errorf("Dial with token %q: %v after %v; want ErrInvalid at once, without the token", tok, err, time.Since(start))
		}
		if _, err := lease.NewRemote(addr, lease.WithAuthToken(tok)); !errors.Is(err, lease.ErrInvalid) {
			t.Errorf("NewRemote with token %q: %v, want ErrInvalid", tok, err)
		}
	}
}

// A lease the cluster says it does not hold (an extend answered "not
// held") frees this Client's guard of its key at once: there is no live
// record for a goroutine of this Client to renew ahead of others. (The
// guard was held until the lease's old validity ran out: a TTL.)
func TestLostLeaseFreesTheKeyForItsClient(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, f := c.Follower()
	cl, err := lease.New(f, lease.WithTTL(time.Minute), lease.WithExtendInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	l, err := cl.Acquire(ctxT(t, 10*time.Second), "lost/k")
	if err != nil {
		t.Fatal(err)
	}
	// Released behind the client's back: its next extend is "not held".
	// (Again after an unknown outcome: a leader stepping down on a busy
	// host, new-user review s33; a second release of it is no error.)
	nodetest.Eventually(t, 20*time.Second, func() error {
		_, err := f.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: "lost/k", Holder: cl.Holder(), Token: l.Token()})
		if err != nil && !errors.Is(err, node.ErrUnknownOutcome) && !errors.Is(err, node.ErrNoLeader) && !errors.Is(err, node.ErrNotLeader) {
			t.Fatal(err)
		}
		return err
	})
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the lease did not end")
	}
	// Lost, not dropped: l stays reachable until here (a dropped Lease
	// keeps its guards for the validity read from it).
	if !errors.Is(l.Err(), lease.ErrLeaseLost) {
		t.Fatalf("Err %v, want ErrLeaseLost", l.Err())
	}
	nodetest.Eventually(t, 5*time.Second, func() error {
		l2, err := cl.TryAcquire(ctxT(t, 5*time.Second), "lost/k")
		if err != nil || l2 == nil {
			return fmt.Errorf("the client's own key after its lease was lost: %v %v", l2, err)
		}
		return l2.Release(ctxT(t, 5*time.Second))
	})
}

// refuseExtends refuses the first n Extends as invalid for a reason that
// is not their size, and counts the leases of each Extend.
type refuseExtends struct {
	lease.Backend
	n     atomic.Int64
	mu    sync.Mutex
	sizes []int
}

func (b *refuseExtends) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if r.All != nil {
		return &pb.ExtendResponse{}, nil // as a cluster that cannot extend by sum: the Client names its leases
	}
	b.mu.Lock()
	b.sizes = append(b.sizes, len(r.Items))
	b.mu.Unlock()
	if b.n.Add(-1) >= 0 {
		return nil, fmt.Errorf("%w: test: refused, not for its size", node.ErrInvalid)
	}
	return b.Backend.Extend(ctx, r)
}

// Only a refusal for size shrinks the Client's extend batches: others
// (a node that stopped on a bad entry refuses every extend as invalid)
// are retried whole, after a back-off.
func TestOtherRefusalsDoNotShrinkExtends(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, l := c.Leader()
	b := &refuseExtends{Backend: l}
	cl, err := lease.New(b, lease.WithTTL(time.Minute), lease.WithExtendInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	// Kept referenced: a Lease dropped is released once collected, and
	// the batches would shrink for that.
	var held []*lease.Lease
	defer func() { runtime.KeepAlive(held) }()
	for i := range 16 {
		l, err := cl.Acquire(ctxT(t, 10*time.Second), fmt.Sprint("shrink/", i))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	// Refuse the next 3 extends, each of all 16 leases once they are held
	// (refused while fewer were, they would prove nothing), then look at
	// the batches after them.
	nodetest.Eventually(t, 10*time.Second, func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if n := len(b.sizes); n == 0 || b.sizes[n-1] != 16 {
			return fmt.Errorf("no extend of the 16 leases yet: %v", b.sizes)
		}
		return nil
	})
	b.mu.Lock()
	from := len(b.sizes)
	b.mu.Unlock()
	b.n.Store(3)
	nodetest.Eventually(t, 10*time.Second, func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		after := b.sizes[from:]
		if len(after) < 6 {
			return fmt.Errorf("%d extends since the refusals began", len(after))
		}
		for _, n := range after[len(after)-3:] {
			if n != 16 {
				return fmt.Errorf("the last extends carried %v of 16 leases (since the refusals began: %v)", after[len(after)-3:], after)
			}
		}
		return nil
	})
}

// With its quorum lost, the node left answers why there is no leader
// while the others refuse connections: the error says the answer, not
// the last refusal.
func TestNoQuorumErrorSaysWhy(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true})
	addrs := []string{c.Config(0).APIAddr, c.Config(1).APIAddr, c.Config(2).APIAddr}
	a, err := lease.Dial(ctxT(t, 10*time.Second), addrs, lease.WithRetryTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	c.Kill(1)
	c.Kill(2)
	_, err = a.TryAcquire(ctxT(t, 20*time.Second), "k")
	// Unknown when an attempt went through n0 to the killed leader.
	if !(errors.Is(err, lease.ErrNoLeader) || errors.Is(err, lease.ErrUnknownOutcome)) || !strings.Contains(err.Error(), "no leader: node n0") {
		t.Fatalf("TryAcquire with 1 of 3 nodes up: %v; want the live node's answer", err)
	}
}

// A waiting Acquire gives up like any call once failures have lasted
// the retry timeout without a quorum, although the node holds each
// attempt about an election before it answers "no leader" (new-user
// review s32, high: it waited 40 s and more on a free key, the streak of
// failures restarted after every long attempt).
func TestWaitingAcquireGivesUpWithoutAQuorum(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true})
	addrs := []string{c.Config(0).APIAddr, c.Config(1).APIAddr, c.Config(2).APIAddr}
	const retry = time.Second
	a, err := lease.Dial(ctxT(t, 10*time.Second), addrs, lease.WithRetryTimeout(retry))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	c.Kill(1)
	c.Kill(2)
	start := time.Now()
	_, err = a.Acquire(ctxT(t, 60*time.Second), "free")
	took := time.Since(start)
	t.Logf("after %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, lease.ErrNoLeader) && !errors.Is(err, lease.ErrUnknownOutcome) {
		t.Fatalf("Acquire with 1 of 3 nodes up: %v; want it to give up (ErrNoLeader)", err)
	}
	// The reason counts the killed voters out at once (their Raft ports
	// refuse), not after gossip's suspicion: it said "3 of 3 voters alive"
	// for seconds (new-user review s32).
	if !strings.Contains(err.Error(), "1 of 3 voters") {
		t.Errorf("the reason does not count the killed voters out: %v", err)
	}
	// The retry timeout plus the attempt under way when it ran out (the
	// node's wait for a leader: a heartbeat and two election timeouts).
	tm := nodetest.TestTiming
	if bound := retry + 2*(tm.HeartbeatTimeout+2*tm.ElectionTimeout) + 5*time.Second; took > bound {
		t.Errorf("gave up after %v, more than the retry timeout allows (%v)", took, bound)
	}
}

// Scenario: a remote waiting Acquire has waited at the leader longer than
// the retry timeout when the leader is partitioned from the other nodes.
// The old leader answers the wait "not leader" and the Remote goes on to
// the followers, which answer "no leader" until they elect one. That
// attempt is a wait cut short by a leader change, not a run of failures:
// the Acquire is retried and granted when the holder releases after the
// election. (Adversarial review s32, round 2: the Remote reported the
// followers' "no leader", the streak counted from the start of the wait,
// and the Acquire gave up about 0.2 s after the partition.)
func TestRemoteWaitCutByAPartitionIsRetried(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true})
	li := c.WaitForLeader()
	addrs := []string{c.Config(li).APIAddr} // the wait is served by the leader
	var rest []int
	for i := range c.Size() {
		if i != li {
			addrs = append(addrs, c.Config(i).APIAddr)
			rest = append(rest, i)
		}
	}
	const retry = 2 * time.Second
	a, err := lease.Dial(ctxT(t, 10*time.Second), addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := lease.Dial(ctxT(t, 10*time.Second), addrs, lease.WithRetryTimeout(retry))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	l, err := a.Acquire(ctxT(t, 10*time.Second), "cut/k")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctxT(t, 30*time.Second), "cut/k")
		got <- err
	}()
	waitWaiters(t, c, 1)
	select { // the wait outlasts the retry timeout
	case err := <-got:
		t.Fatalf("the waiting Acquire ended before the partition: %v", err)
	case <-time.After(time.Until(start.Add(retry + 500*time.Millisecond))):
	}
	c.Partition([]int{li}, rest)
	defer c.Heal()
	// The release comes after the election: one the old leader applied
	// would hand the wait a grant it cannot commit (an unknown outcome),
	// not the not-leader answer under test.
	nodetest.Eventually(t, 10*time.Second, func() error {
		for _, i := range rest {
			if c.Node(i).IsLeader() && !c.Node(li).IsLeader() {
				return nil
			}
		}
		return errors.New("no new leader yet")
	})
	if err := l.Release(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, got, 20*time.Second, "the waiting Acquire after the release"); err != nil {
		t.Fatalf("the waiting Acquire, %v after it began and cut by the leader's partition: %v; want it retried and granted",
			time.Since(start).Round(time.Millisecond), err)
	}
}

// A watch begins with the holdings current when it started, marked
// Current, then Listed, and then reports grants made since, not marked: a
// consumer (the CLI prints the first as "held") can tell the two apart,
// and knows where the listing ends.
func TestWatchMarksTheCurrentListing(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t)
		ctx := ctxT(t, 20*time.Second)
		// A first watch sees the grant published, so the second's listing
		// has it (one published after a watch starts comes as news).
		before, err := a.Watch(ctx, "cur/")
		if err != nil {
			t.Fatal(err)
		}
		old, err := a.TryAcquire(ctx, "cur/a")
		if err != nil || old == nil {
			t.Fatal(old, err)
		}
		for _, want := range []lease.EventType{lease.Listed, lease.Granted} {
			select {
			case ev := <-before:
				if ev.Type != want || want == lease.Granted && (ev.Key != "cur/a" || ev.Current) {
					t.Fatalf("first watch: %+v, want %s (of cur/a, new)", ev, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("the first watch sent no %s within 10 s", want)
			}
		}
		events, err := a.Watch(ctx, "cur/")
		if err != nil {
			t.Fatal(err)
		}
		next := func() lease.Event {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("the watch ended")
				}
				return ev
			case <-time.After(10 * time.Second):
				t.Fatal("no event within 10 s")
			}
			return lease.Event{}
		}
		if ev := next(); ev.Type != lease.Granted || ev.Key != "cur/a" || !ev.Current || ev.Token != old.Token() {
			t.Fatalf("first event %+v, want the current holding of cur/a marked Current", ev)
		}
		if ev := next(); ev.Type != lease.Listed || ev.Index < old.Token() {
			t.Fatalf("event after the listing %+v, want Listed at or after index %d", ev, old.Token())
		}
		l, err := a.TryAcquire(ctx, "cur/b")
		if err != nil || l == nil {
			t.Fatal(l, err)
		}
		if ev := next(); ev.Type != lease.Granted || ev.Key != "cur/b" || ev.Current {
			t.Fatalf("event of a new grant %+v, want Granted cur/b not marked Current", ev)
		}
	})
}

// WithDialTimeout bounds how long Dial tries to reach a node where none
// listens, apart from the calls' retry timeout (new-user review: Dial
// took the 10 s retry timeout to say so), and the error names that timer
// and what to check (it said "retry timeout", with no hint).
func TestDialTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	start := time.Now()
	_, err = lease.Dial(ctxT(t, 30*time.Second), []string{addr}, lease.WithDialTimeout(300*time.Millisecond))
	took := time.Since(start)
	if err == nil || !errors.Is(err, lease.ErrNoLeader) {
		t.Fatalf("Dial with nothing listening: %v, want ErrNoLeader", err)
	}
	if took > 5*time.Second {
		t.Fatalf("Dial gave up after %v with a 300 ms dial timeout (the retry timeout is %v)", took, lease.DefaultRetryTimeout)
	}
	if msg := err.Error(); !strings.Contains(msg, "dial timeout") || !strings.Contains(msg, "agent --api") {
		t.Errorf("Dial's error names neither the dial timeout nor what to check: %v", err)
	}
	if _, err := lease.Dial(ctxT(t, 5*time.Second), []string{addr}, lease.WithDialTimeout(-time.Second)); !errors.Is(err, lease.ErrInvalid) {
		t.Fatalf("a negative dial timeout: %v, want ErrInvalid", err)
	}
}

// A watch a node refuses (past its --max-watches) fails with the node's
// reason, over the network as embedded: not a channel that closes at once,
// which a "watch again" loop took for a broken stream and reopened a
// thousand times a second (new-user and outsider reviews s32).
func TestRefusedWatchSaysWhy(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxWatches = 2
	}})
	a, err := lease.Dial(ctxT(t, 10*time.Second), []string{c.Config(0).APIAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	ctx := ctxT(t, 20*time.Second)
	for range 2 {
		if _, err := a.Watch(ctx, "w/"); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	events, err := a.Watch(ctx, "w/")
	t.Logf("third watch after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if err == nil {
		select {
		case ev, ok := <-events:
			t.Fatalf("a third watch of a node that allows two began with no error (first event %+v, open %v)", ev, ok)
		case <-time.After(10 * time.Second):
			t.Fatal("a third watch of a node that allows two began with no error")
		}
	}
	if !errors.Is(err, lease.ErrTooManyWatches) || !strings.Contains(err.Error(), "--max-watches") {
		t.Errorf("the refusal is not ErrTooManyWatches naming the limit: %v", err)
	}
}

// Observe past a node's --max-watches still reports the current leader
// first, and then its changes, by reading the key while no watch can be
// had: 220 observers of one address behind a node that takes 64 watches
// from it were left silent (adversarial review s39).
func TestObservePastTheWatchLimit(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxWatches = 8
	}})
	addr := c.Config(0).APIAddr
	dial := func(holder string) *lease.Client {
		cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{addr}, lease.WithHolder(holder))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close(context.Background()) })
		return cl
	}
	first := dial("first")
	l, err := first.Acquire(ctxT(t, 10*time.Second), "election")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs := dial("observer")
	const n = 12 // past the node's 8
	chans := make([]<-chan lease.Leader, n)
	for i := range chans {
		chans[i] = obs.Observe(ctx, "election")
	}
	next := func(i int, want string) {
		t.Helper()
		for {
			select {
			case got, ok := <-chans[i]:
				if !ok {
					t.Fatalf("observer %d: closed waiting for %q", i, want)
				}
				if got.Holder == want {
					return
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("observer %d was not told of %q in 20 s", i, want)
			}
		}
	}
	for i := range chans {
		next(i, first.Holder())
	}
	if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	second := dial("second")
	if _, err := second.Acquire(ctxT(t, 10*time.Second), "election"); err != nil {
		t.Fatal(err)
	}
	for i := range chans {
		next(i, second.Holder())
	}
}

// quietOldWatch is the client API of a node older than the watch's
// listing (Listed): a watch of a prefix nobody holds gets its headers at
// once and no event until a change, here once late is closed.
type quietOldWatch struct {
	pbconnect.UnimplementedLeaseServiceHandler
	late chan struct{}
}

func (s quietOldWatch) Watch(ctx context.Context, req *connect.Request[pb.WatchRequest], stream *connect.ServerStream[pb.WatchEvent]) error {
	if err := stream.Send(nil); err != nil { // the headers
		return err
	}
	select {
	case <-s.late:
	case <-ctx.Done():
		return nil
	}
	ev := &pb.WatchEvent{Type: pb.EventType_EVENT_TYPE_GRANTED, Index: 7, Lease: &pb.Lease{Key: req.Msg.GetPrefix() + "k", Holder: "h", Token: 7}}
	if err := stream.Send(ev); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// Scenario: a Remote watches a quiet prefix on a server older than the
// listing. Watch returns the open stream after its wait for a first event
// (2 s); the first event comes after that; then the caller cancels. The
// channel closes, so a loop that watches again goes on. (Adversarial
// review s32, round 2: the stream's goroutine blocked reporting its end
// to the Watch that had returned long before, and the channel never
// closed.)
func TestWatchClosesAfterALateFirstEvent(t *testing.T) {
	late := make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle(pbconnect.NewLeaseServiceHandler(quietOldWatch{late: late}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	r, err := lease.NewRemote([]string{srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(ctxT(t, 20*time.Second))
	defer cancel()
	events, err := r.Watch(ctx, &pb.WatchRequest{Prefix: "old/", Initial: true, Listed: true})
	if err != nil {
		t.Fatal(err)
	}
	close(late)
	select {
	case ev := <-events:
		if ev.GetLease().GetKey() != "old/k" {
			t.Fatalf("first event %v, want the grant of old/k", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s of the server's first")
	}
	cancel()
	select {
	case ev, ok := <-events:
		if ok {
			t.Fatalf("event %v after the caller cancelled", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch channel is still open 5 s after its caller cancelled")
	}
}

// Every key of a multi-key lease counts against the node's
// --max-extend-items: a sum over more keys is answered no and a named
// extend over more is refused, so the Client names its leases in chunks
// of at most that many keys, and keeps every lease (outsider review s32,
// high: 2,000 sets of 64 keys made one 24-byte extend renew 128,000
// keys on every replica, and the leader stepped down).
func TestExtendCountsTheKeysOfSets(t *testing.T) {
	const max = 100
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxExtendItems = max
	}})
	_, f := c.Follower()
	cl, b := countingClient(t, f)
	ls := acquireSets(t, cl, "set", 5, 40)
	// A named extend of all five (200 keys) is refused, naming the limit.
	raw := &pb.ExtendRequest{Holder: cl.Holder()}
	for _, l := range ls {
		raw.Items = append(raw.Items, &pb.ExtendItem{Key: l.Key(), Token: l.Token()})
	}
	_, err := f.Extend(ctxT(t, 10*time.Second), raw)
	t.Logf("named extend of 200 keys: %v", err)
	if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "--max-extend-items") {
		t.Fatalf("a named extend of 5 sets of 40 keys with a limit of %d: %v; want a refusal naming --max-extend-items", max, err)
	}
	// The Client keeps them all, naming them in chunks.
	extendedPast(t, ls, time.Now().Add(2*sumTTL), 20*time.Second)
	t.Logf("extends by sum %d (answered no), named %d", b.sums.Load(), b.named.Load())
	for _, l := range ls {
		if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
}

// extendedPast waits up to within for every lease of ls to be healthy and
// valid past mark (extended since), and fails t if one is lost first.
func extendedPast(t *testing.T, ls []*lease.Lease, mark time.Time, within time.Duration) {
	t.Helper()
	nodetest.Eventually(t, within, func() error {
		for i, l := range ls {
			if !l.IsHealthy() {
				return fmt.Errorf("lease %d lost: %v", i, l.Err())
			}
			if l.ValidUntil().Before(mark) {
				return fmt.Errorf("lease %d valid until %v, not yet past %v", i, l.ValidUntil(), mark)
			}
		}
		return nil
	})
}

// A lease of more keys than --max-extend-items is refused at its acquire,
// naming the flag: granted, no extend could renew it, and it was lost
// after one TTL on a healthy cluster (adversarial review s32, round 2).
func TestSetLargerThanTheExtendLimitIsRefused(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxExtendItems = 16
	}})
	_, f := c.Follower()
	cl, _ := countingClient(t, f)
	l, err := cl.TryAcquireSet(ctxT(t, 10*time.Second), setItems("big", 20))
	if l != nil || !errors.Is(err, lease.ErrInvalid) || !strings.Contains(err.Error(), "--max-extend-items") {
		t.Fatalf("a 20-key set with --max-extend-items 16: %v, %v; want a refusal naming the flag", l, err)
	}
}

// After an extend refused as too large, a Client's chunk is half the
// refused chunk's keys, not half its leases: two 64-key sets refused at a
// limit of 100 keys made it one, and 953 of 1,500 single leases were lost
// one request each (adversarial review s32, round 2).
func TestExtendChunkShrinksByKeys(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxExtendItems = 100
	}})
	_, f := c.Follower()
	cl, b := countingClient(t, f)
	sets := acquireSets(t, cl, "sets", 2, 64)
	// Both sets named in one extend (128 keys) are refused once; each
	// after alone (64) is not.
	extendedPast(t, sets, time.Now().Add(2*sumTTL), 20*time.Second)
	for _, l := range sets {
		if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	ls := acquireN(t, cl, "singles", 300)
	n0 := b.named.Load()
	extendedPast(t, ls, time.Now().Add(2*sumTTL), 30*time.Second)
	if named := b.named.Load() - n0; named > 1000 {
		t.Errorf("%d named extends for 300 single leases over two TTLs: the chunk shrank to a few leases", named)
	}
}

// setItems is the keys prefix/00 … of a set of n.
func setItems(prefix string, n int) []lease.Item {
	var items []lease.Item
	for k := range n {
		items = append(items, lease.Item{Key: fmt.Sprintf("%s/%02d", prefix, k)})
	}
	return items
}

// acquireSets has cl acquire sets sets of keys keys each, prefix<i>/00 ….
func acquireSets(t *testing.T, cl *lease.Client, prefix string, sets, keys int) []*lease.Lease {
	t.Helper()
	var ls []*lease.Lease
	for i := range sets {
		l, err := cl.AcquireSet(ctxT(t, 10*time.Second), setItems(fmt.Sprintf("%s%d", prefix, i), keys))
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls
}

// A waiting Acquire of a free key whose only node is stopped (SIGSTOP: its
// sockets accept, nothing answers) gives up after about the retry timeout,
// as TryAcquire does (adversarial review s33: it waited for its whole
// context, each attempt ended by the liveness check after more than the
// back-off, and taken for a wait at a leader that a leader change cut
// short, restarted the count of failures).
func TestWaitingAcquireOfAStoppedAgentGivesUp(t *testing.T) {
	var d *door
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		d = newDoor(t, cfg.APIAddr)
		cfg.APIAdvertiseAddr = d.addr()
	}})
	c.WaitForLeader()
	const retry = 2 * time.Second
	a, err := lease.Dial(ctxT(t, 10*time.Second), []string{d.addr()}, lease.WithRetryTimeout(retry))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctxT(t, 5*time.Second))
	if _, err := a.Get(ctxT(t, 5*time.Second), "warm"); err != nil { // pool a connection
		t.Fatal(err)
	}
	d.freeze()
	defer d.thaw()
	for _, acquire := range []func(context.Context, string, ...lease.AcquireOption) (*lease.Lease, error){a.TryAcquire, a.Acquire} {
		start := time.Now()
		_, err := acquire(ctxT(t, 40*time.Second), "free")
		took := time.Since(start)
		t.Logf("after %v: %v", took.Round(time.Millisecond), err)
		if err == nil || took > retry+6*time.Second {
			t.Errorf("an acquire of a stopped node's key took %v with a retry timeout of %v: %v", took.Round(time.Millisecond), retry, err)
		}
	}
}

// A watch whose every stream ends before its first event, not refused by
// the node in words (its connection closed under it), says what ended it
// and where: it said "no leader reachable: no reachable leader: no address
// to try" (a CLI watch at an agent's --max-conns 1 under load, CI of
// b9bf37f).
func TestWatchSaysWhyItsStreamsEnded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	r, err := lease.NewRemote([]string{addr})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.Watch(ctxT(t, 10*time.Second), &pb.WatchRequest{Prefix: "w/"})
	if err == nil {
		t.Fatal("Watch of a node that closes every stream: no error")
	}
	if msg := err.Error(); strings.Contains(msg, "no address to try") || !strings.Contains(msg, addr) {
		t.Errorf("Watch: %q; want what ended the stream, at %s", msg, addr)
	}
}

// slowAcquires delays every Acquire by d before passing it on: a commit
// that takes a loaded host that long.
type slowAcquires struct {
	lease.Backend
	d time.Duration
}

func (b slowAcquires) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return b.Backend.Acquire(ctx, r)
}

// AcquireTimeout bounds the wait at the leader, not the answer: a free key
// is granted when its grant takes longer than maxWait to come (6 of 120
// AcquireTimeout(100 ms) of free keys failed beside two busy loops, while
// a shorter maxWait, a plain try, never did: adversarial review
// rev-adv40), and a held key is answered held once maxWait has passed at
// the leader, well before the call's deadline.
func TestAcquireTimeoutBoundsTheWaitNotTheAnswer(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	_, n := c.Follower()
	slow, err := lease.New(slowAcquires{Backend: n, d: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(context.Background())
	ctx := ctxT(t, 20*time.Second)
	for _, d := range []time.Duration{time.Millisecond, 99 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond} {
		l, err := slow.AcquireTimeout(ctx, "free", d)
		if err != nil || l == nil {
			t.Fatalf("AcquireTimeout(%v) of a free key whose grant takes 300 ms: %v %v; want granted", d, l, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	holder, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	held, err := holder.TryAcquire(ctx, "held")
	if err != nil || held == nil {
		t.Fatalf("TryAcquire: %v %v", held, err)
	}
	waiter, err := lease.New(n)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close(context.Background())
	const maxWait = 300 * time.Millisecond
	start := time.Now()
	_, err = waiter.AcquireTimeout(ctx, "held", maxWait)
	took := time.Since(start)
	var he *lease.HeldError
	if !errors.Is(err, lease.ErrTimeout) || !errors.As(err, &he) || he.Holder != holder.Holder() || took < maxWait {
		t.Fatalf("AcquireTimeout(%v) of a held key: %v after %v; want ErrTimeout and a HeldError naming %s, after %v or more",
			maxWait, err, took, holder.Holder(), maxWait)
	}
	t.Logf("a held key's AcquireTimeout(%v) answered after %v", maxWait, took)
}

// Without a quorum AcquireTimeout ends with ErrTimeout once maxWait and
// the answer's allowance have passed, however short maxWait: a maxWait
// under 100 ms was a plain try, held for the client's whole retry timeout
// (10 s; adversarial review rev-adv40).
func TestAcquireTimeoutWithoutAQuorumEndsSoon(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, _ := c.Leader()
	var keep int
	for i := range c.Size() {
		if i != li {
			keep = i
		}
	}
	for i := range c.Size() {
		if i != keep {
			c.Kill(i)
		}
	}
	cl, err := lease.New(c.Node(keep))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	for _, d := range []time.Duration{50 * time.Millisecond, 500 * time.Millisecond} {
		start := time.Now()
		l, err := cl.AcquireTimeout(ctxT(t, 30*time.Second), "nobody", d)
		took := time.Since(start)
		if l != nil || !errors.Is(err, lease.ErrTimeout) || took > 5*time.Second {
			t.Fatalf("AcquireTimeout(%v) without a quorum: %v %v after %v; want ErrTimeout within seconds", d, l, err, took)
		}
		t.Logf("AcquireTimeout(%v) without a quorum: %v after %v", d, err, took.Round(time.Millisecond))
	}
}
