package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

func TestFaultsAllowed(t *testing.T) {
	f := NewFaults()
	const a, b, c, d = "a:1", "b:1", "c:1", "d:1"
	check := func(step string, want map[[2]string]bool) {
		t.Helper()
		for pair, ok := range want {
			if got := f.Allowed(pair[0], pair[1]); got != ok {
				t.Errorf("%s: Allowed(%s, %s) = %v, want %v", step, pair[0], pair[1], got, ok)
			}
		}
	}
	check("healthy", map[[2]string]bool{{a, b}: true, {b, a}: true, {a, d}: true})

	f.Partition([]string{a, b}, []string{c})
	check("partitioned", map[[2]string]bool{
		{a, b}: true, {b, a}: true, // same group
		{a, c}: false, {c, a}: false, {b, c}: false, // across groups
		{a, d}: true, {d, c}: true, // d is in no group: reachable from all
		{c, c}: true, // a node always reaches itself
	})

	f.Isolate(d)
	check("d isolated too", map[[2]string]bool{{a, b}: true, {a, d}: false, {d, c}: false, {d, d}: true})

	f.Partition([]string{a}, []string{b})
	check("new partition replaces the old faults", map[[2]string]bool{{a, b}: false, {a, c}: true, {c, d}: true})

	f.Isolate(a)
	check("a isolated", map[[2]string]bool{{a, b}: false, {a, c}: false, {c, a}: false, {b, c}: true})

	f.Heal()
	check("healed", map[[2]string]bool{{a, b}: true, {a, c}: true, {c, a}: true, {a, d}: true})
}

// faultNode is a Mux whose Dialer points at a shared Faults.
type faultNode struct {
	addr string
	d    *Dialer
	ln   net.Listener // ProtoRaft
}

func startFaultNode(t *testing.T, f *Faults) *faultNode {
	t.Helper()
	m, lns := startMux(t, MuxConfig{}, ProtoRaft)
	addr := m.Addr().String()
	return &faultNode{addr: addr, d: &Dialer{LocalAddr: addr, Faults: f}, ln: lns[ProtoRaft]}
}

// A partition cuts live connections in both directions at once and
// refuses new dials with a non-timeout net.Error; Heal restores dialing.
func TestFaultsPartitionCutsConnectionsAndRefusesDials(t *testing.T) {
	leakCheck(t)
	f := NewFaults()
	a, b := startFaultNode(t, f), startFaultNode(t, f)

	ab := dial(t, a.d, b.addr, ProtoRaft)
	abS := acceptOne(t, b.ln)
	ba := dial(t, b.d, a.addr, ProtoRaft)
	baS := acceptOne(t, a.ln)
	exchange(t, ab, abS, "before")

	f.Partition([]string{a.addr}, []string{b.addr})
	expectClosedByPeer(t, abS) // the accepting sides see the cut
	expectClosedByPeer(t, baS)
	if _, err := ab.Write([]byte("x")); err == nil {
		t.Fatal("write on a cut connection succeeded")
	}

	_, err := a.d.Dial(context.Background(), b.addr, ProtoRaft)
	if !errors.Is(err, ErrPartitioned) {
		t.Fatalf("dial across the partition: %v, want ErrPartitioned", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || ne.Timeout() {
		t.Fatalf("dial error %v: want a net.Error that is not a timeout", err)
	}
	if _, err := b.d.Dial(context.Background(), a.addr, ProtoRaft); !errors.Is(err, ErrPartitioned) {
		t.Fatalf("dial back across the partition: %v, want ErrPartitioned", err)
	}
	_ = ba.Close()

	f.Heal()
	c := dial(t, a.d, b.addr, ProtoRaft)
	exchange(t, c, acceptOne(t, b.ln), "after heal")
}

// Stall holds bytes both ways on a stalled node's connections without
// closing them, lets new dials connect, and Heal delivers what was held.
func TestFaultsStallHoldsBytesUntilHeal(t *testing.T) {
	leakCheck(t)
	f := NewFaults()
	a, b := startFaultNode(t, f), startFaultNode(t, f)
	ab := dial(t, a.d, b.addr, ProtoRaft)
	abS := acceptOne(t, b.ln)
	exchange(t, ab, abS, "before")

	f.Stall(b.addr)
	// What b's side sends reaches a's kernel but not a's reader.
	if _, err := abS.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	read := make(chan string, 1)
	go func() {
		buf := make([]byte, 4)
		_ = ab.SetReadDeadline(time.Now().Add(time.Minute))
		n, _ := io.ReadFull(ab, buf)
		read <- string(buf[:n])
	}()
	// a's writes are taken, and held: nothing reaches b while stalled.
	if _, err := ab.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	// A new dial to the stalled node still connects.
	dial(t, a.d, b.addr, ProtoRaft)
	acceptOne(t, b.ln)
	_ = abS.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := abS.Read(make([]byte, 4)); n > 0 || !isTimeout(err) {
		t.Fatalf("b read %d bytes (%v) from a stalled connection", n, err)
	}
	select {
	case got := <-read:
		t.Fatalf("a read %q from a stalled connection", got)
	default:
	}

	f.Heal()
	select {
	case got := <-read:
		if got != "held" {
			t.Fatalf("after heal a read %q, want %q", got, "held")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held bytes not delivered after heal")
	}
	_ = abS.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(abS, buf); err != nil || string(buf) != "late" {
		t.Fatalf("b read %q (%v) after heal, want %q", buf, err, "late")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Closing a connection unregisters it: Faults holds no dead connections.
func TestFaultsForgetsClosedConnections(t *testing.T) {
	leakCheck(t)
	f := NewFaults()
	a, b := startFaultNode(t, f), startFaultNode(t, f)
	c := dial(t, a.d, b.addr, ProtoRaft)
	acceptOne(t, b.ln)
	f.mu.Lock()
	n := len(f.conns)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d registered connections, want 1", n)
	}
	_ = c.Close()
	f.mu.Lock()
	n = len(f.conns)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d registered connections after Close, want 0", n)
	}
}

// RPC across a partition: an in-flight call on a cut connection is an
// unknown outcome, a new call is not sent, and after Heal calls work again.
func TestFaultsPartitionRPC(t *testing.T) {
	leakCheck(t)
	f := NewFaults()
	started := make(chan struct{}, 1)
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		if method == 2 {
			started <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return req, nil
	}
	srv := startRPC(t, h, RPCServerConfig{})
	const self = "127.0.0.1:1" // the calling node's advertised address
	c := newClient(t, RPCClientConfig{Dialer: &Dialer{LocalAddr: self, Faults: f}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if _, err := c.Call(ctx, srv.addr, 1, []byte("a")); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-started
		f.Isolate(srv.addr)
	}()
	_, err := c.Call(ctx, srv.addr, 2, nil)
	wantCallError(t, err, true, nil)

	eventually(t, 10*time.Second, func() error {
		if n := c.liveConns(srv.addr); n != 0 {
			return fmt.Errorf("%d live connections", n)
		}
		return nil
	})
	_, err = c.Call(ctx, srv.addr, 1, []byte("b"))
	wantCallError(t, err, false, ErrPartitioned)

	f.Heal()
	if got, err := c.Call(ctx, srv.addr, 1, []byte("c")); err != nil || string(got) != "c" {
		t.Fatalf("after Heal: %q, %v", got, err)
	}
}
