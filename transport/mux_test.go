package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// leakCheck registers a goroutine leak check that runs after every other
// cleanup of t; call it first in each test.
func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// eventually polls cond until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startMux serves a Mux on 127.0.0.1 with listeners for protos; cleanup
// closes it and checks that Serve returned nil.
func startMux(t *testing.T, cfg MuxConfig, protos ...byte) (*Mux, map[byte]net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(ln, cfg)
	lns := make(map[byte]net.Listener)
	for _, p := range protos {
		lns[p] = m.Listen(p)
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Mux.Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Mux.Serve returned %v after Close, want nil", err)
		}
	})
	return m, lns
}

// acceptOne accepts one connection from ln, failing the test after 10s.
func acceptOne(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { _ = r.c.Close() })
		return r.c
	case <-time.After(10 * time.Second):
		_ = ln.Close() // unblock the goroutine
		<-ch
		t.Fatal("Accept: nothing within 10s")
		return nil
	}
}

// dial connects with a plain Dialer and registers cleanup.
func dial(t *testing.T, d *Dialer, addr string, proto byte) net.Conn {
	t.Helper()
	c, err := d.Dial(context.Background(), addr, proto)
	if err != nil {
		t.Fatalf("Dial %s proto %d: %v", addr, proto, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// expectClosedByPeer reads from c until the peer closes it (EOF or reset),
// failing if data arrives or nothing happens within 10s.
func expectClosedByPeer(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 {
		t.Fatalf("read %d bytes, want the peer to close", n)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("peer did not close the connection within 10s")
	}
	if err == nil {
		t.Fatal("read returned no error")
	}
}

// exchange writes msg on c and checks that peer reads it.
func exchange(t *testing.T, c, peer net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(peer, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("read %q, want %q", buf, msg)
	}
}

// One port carries Raft and RPC: each connection reaches the listener for
// its protocol byte, with the byte consumed and bytes flowing both ways.
func TestMuxDemultiplexesRaftAndRPC(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{}, ProtoRaft, ProtoRPC)
	addr := m.Addr().String()
	if got := lns[ProtoRaft].Addr().String(); got != addr {
		t.Fatalf("sub-listener Addr = %s, want %s", got, addr)
	}
	d := &Dialer{}

	// Open both first, then accept in the opposite order: neither waits
	// for the other.
	raftC := dial(t, d, addr, ProtoRaft)
	rpcC := dial(t, d, addr, ProtoRPC)
	rpcS := acceptOne(t, lns[ProtoRPC])
	raftS := acceptOne(t, lns[ProtoRaft])

	exchange(t, raftC, raftS, "raft hello")
	exchange(t, rpcC, rpcS, "rpc hello")
	exchange(t, raftS, raftC, "raft reply")
	exchange(t, rpcS, rpcC, "rpc reply")
}

// A connection with an unknown first byte is closed; a silent connection
// that never sends its byte does not delay anyone else.
func TestMuxUnknownByteClosedOthersUnaffected(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{HandshakeTimeout: time.Minute}, ProtoRaft)
	addr := m.Addr().String()

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	// The Mux closes it before the hello's answer: the Dial fails.
	if bad, err := (&Dialer{}).Dial(context.Background(), addr, 99); err == nil {
		bad.Close()
		t.Fatal("Dial with an unknown protocol byte succeeded")
	}

	good := dial(t, &Dialer{}, addr, ProtoRaft)
	s := acceptOne(t, lns[ProtoRaft])
	exchange(t, good, s, "still works")
}

// A connection that sends nothing is closed after HandshakeTimeout, and
// counted as refused for it.
func TestMuxHandshakeTimeout(t *testing.T) {
	leakCheck(t)
	m, _ := startMux(t, MuxConfig{HandshakeTimeout: 50 * time.Millisecond}, ProtoRaft)
	silent, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	expectClosedByPeer(t, silent)
	if n := m.refusals[refusedHandshakeTimeout].Load(); n != 1 {
		t.Fatalf("refusals for handshake_timeout: %d, want 1", n)
	}
}

// Close ends Serve with nil, makes Accept return net.ErrClosed, closes
// connections still in their handshake, and is idempotent; connections
// already handed over stay open.
func TestMuxClose(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(ln, MuxConfig{HandshakeTimeout: time.Minute})
	raftLn := m.Listen(ProtoRaft)
	rpcLn := m.Listen(ProtoRPC)
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()

	handed := dial(t, &Dialer{}, m.Addr().String(), ProtoRaft)
	handedS := acceptOne(t, raftLn)

	silent, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Wait until the Mux has the silent connection in its handshake.
	eventually(t, 10*time.Second, func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		if len(m.pending) != 1 {
			return fmt.Errorf("%d pending connections, want 1", len(m.pending))
		}
		return nil
	})

	accepted := make(chan error, 1)
	go func() {
		_, err := rpcLn.Accept()
		accepted <- err
	}()

	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve returned %v, want nil", err)
	}
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := raftLn.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Accept after Close: %v, want net.ErrClosed", err)
	}
	expectClosedByPeer(t, silent)
	exchange(t, handed, handedS, "handed-over connections survive")
	if _, err := net.Dial("tcp", m.Addr().String()); err == nil {
		t.Fatal("dial after Close succeeded")
	}
}

// A closed sub-listener makes the Mux close that protocol's connections;
// other protocols go on.
func TestMuxClosedSubListener(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{}, ProtoRaft, ProtoRPC)
	if err := lns[ProtoRaft].Close(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, &Dialer{}, m.Addr().String(), ProtoRaft)
	expectClosedByPeer(t, c)
	ok := dial(t, &Dialer{}, m.Addr().String(), ProtoRPC)
	exchange(t, ok, acceptOne(t, lns[ProtoRPC]), "rpc")
}

func TestMuxListenTwicePanics(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(ln, MuxConfig{})
	defer m.Close()
	m.Listen(ProtoRaft)
	defer func() {
		if recover() == nil {
			t.Fatal("second Listen(ProtoRaft) did not panic")
		}
	}()
	m.Listen(ProtoRaft)
}

// Many connections handshake in parallel and all arrive.
func TestMuxManyConcurrentConnections(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{}, ProtoRPC)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := (&Dialer{}).Dial(context.Background(), m.Addr().String(), ProtoRPC)
			if err != nil {
				errs <- err
				return
			}
			_, err = c.Write([]byte{7})
			errs <- err
			// Keep it open until the server side has read.
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Read(make([]byte, 1))
			_ = c.Close()
		}()
	}
	for range n {
		s := acceptOne(t, lns[ProtoRPC])
		var b [1]byte
		if _, err := io.ReadFull(s, b[:]); err != nil || b[0] != 7 {
			t.Fatalf("read %v, %v", b, err)
		}
		_ = s.Close()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Connections that never authenticate are bounded: past MaxPending, the
// one that has waited longest is closed (anyone could otherwise run the
// agent out of file descriptors), so a node still connects at once while
// an outsider keeps every slot filled with silent connections.
func TestMuxBoundsPendingConnections(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{HandshakeTimeout: time.Minute}, ProtoRaft)
	addr := m.Addr().String()
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for range MaxPending {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	// The Mux counts a connection once it accepted it: wait until all are in.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		n := len(m.pending)
		m.mu.Unlock()
		if n == MaxPending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d silent connections pending", n, MaxPending)
		}
		time.Sleep(5 * time.Millisecond)
	}
	good, err := (&Dialer{}).Dial(context.Background(), addr, ProtoRaft)
	if err != nil {
		t.Fatalf("a node could not connect past %d silent connections: %v", MaxPending, err)
	}
	defer good.Close()
	s := acceptOne(t, lns[ProtoRaft])
	defer s.Close()
	exchange(t, good, s, "room made")
	expectClosedByPeer(t, silent[0])
	m.mu.Lock()
	n := len(m.pending)
	m.mu.Unlock()
	if n > MaxPending {
		t.Fatalf("%d connections pending, bound %d", n, MaxPending)
	}
	if n := m.refusals[refusedMaxPending].Load(); n != 1 {
		t.Fatalf("refusals for max_pending: %d, want 1 (the connection closed to make room)", n)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A flood of refused connections logs one line of each kind, not one per
// connection: plain-TCP garbage made 112,000 lines (40 MB) in 20 s, and
// TLS without a client certificate 5,000. Each kind is still logged once.
func TestMuxRefusalFloodLogsBounded(t *testing.T) {
	leakCheck(t)
	const n = 200
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	// refuse opens n connections to addr, each sending first (a TLS
	// handshake without a certificate when first is nil) and reading
	// until the Mux closes it: the Mux logs before it closes.
	refuse := func(addr string, first []byte) {
		t.Helper()
		for range n {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
				_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
				_ = tc.Handshake() // TLS 1.3: the refusal shows at the first read
				c = tc
			} else if _, err := c.Write(first); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the Mux did not close a refused connection within 10 s")
			}
			c.Close()
		}
	}

	plain, _ := startMux(t, MuxConfig{Logger: logger}, ProtoRaft)
	refuse(plain.Addr().String(), []byte("GET / HTTP/1.1\r\n\r\n"))
	refuse(plain.Addr().String(), []byte{ProtoRaft, 0, 0})

	key := make([]byte, ClusterKeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	srv, _, err := ClusterKeyTLS(key, "n1")
	if err != nil {
		t.Fatal(err)
	}
	secure, _ := startMux(t, MuxConfig{Logger: logger, TLS: srv}, ProtoRaft)
	refuse(secure.Addr().String(), []byte("GET / HTTP/1.1\r\n\r\n"))
	refuse(secure.Addr().String(), nil)

	out := buf.String()
	for _, kind := range []string{"unknown protocol byte", "bad hello", "plain TCP, but the node port is mutual TLS", "TLS handshake failed"} {
		if got := strings.Count(out, kind); got != 1 {
			t.Errorf("%d connections refused as %q: %d lines, want 1", n, kind, got)
		}
	}
	if lines := strings.Count(out, "\n"); lines > 4 {
		t.Errorf("%d refused connections logged %d lines:\n%.3000s", 4*n, lines, out)
	}
}

// A node's connection that passed its hello and waits for Accept is not
// the one closed to make room, however long it waits (found by a review).
func TestMuxKeepsAuthenticatedConnections(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{HandshakeTimeout: time.Minute}, ProtoRaft)
	addr := m.Addr().String()
	good, err := (&Dialer{}).Dial(context.Background(), addr, ProtoRaft)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	pending := func(authed bool) int {
		m.mu.Lock()
		defer m.mu.Unlock()
		n := 0
		for _, p := range m.pending {
			if p.authed == authed {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(10 * time.Second)
	for pending(true) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the node's connection never waited for Accept")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for range MaxPending + 1 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	for pending(false) != MaxPending-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d silent connections pending, want %d", pending(false), MaxPending-1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s := acceptOne(t, lns[ProtoRaft])
	defer s.Close()
	exchange(t, good, s, "still here")
}

// goroutinesIn counts the goroutines whose stack contains fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// A connection closed to make room past MaxPending while in its TLS
// handshake is counted and logged once, as max_pending: not also as a
// failed TLS handshake that blames its certificate (an outsider's review
// counted 54,424 max_pending and 54,695 tls_handshake for 54,704
// connections that sent 3 bytes of a TLS record and went silent).
func TestMuxMaxPendingDuringTLSHandshakeCountedOnce(t *testing.T) {
	leakCheck(t)
	key := make([]byte, ClusterKeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	srv, _, err := ClusterKeyTLS(key, "n1")
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	m, _ := startMux(t, MuxConfig{Logger: logger, TLS: srv, HandshakeTimeout: time.Minute}, ProtoRaft)
	addr := m.Addr().String()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// The first 3 bytes of a TLS handshake record's header.
		if _, err := c.Write([]byte{tlsRecordHandshake, 3, 1}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := open()
	for range MaxPending - 1 {
		open()
	}
	// Every handshake goroutine is inside the TLS handshake, waiting for
	// the rest of the record.
	const inHandshake = "crypto/tls.(*Conn).serverHandshake"
	eventually(t, 10*time.Second, func() error {
		if n := goroutinesIn(inHandshake); n != MaxPending {
			return fmt.Errorf("%d of %d connections in their TLS handshake", n, MaxPending)
		}
		return nil
	})
	open() // makes room: the first is closed during its handshake
	expectClosedByPeer(t, first)
	// Its goroutine has returned once the new connection's handshake
	// goroutine has taken its place.
	eventually(t, 10*time.Second, func() error {
		if n := goroutinesIn("transport.(*Mux).handle("); n != MaxPending {
			return fmt.Errorf("%d handshake goroutines, want %d", n, MaxPending)
		}
		return nil
	})
	if n := m.refusals[refusedMaxPending].Load(); n != 1 {
		t.Errorf("refusals for max_pending: %d, want 1", n)
	}
	if n := m.refusals[refusedTLSHandshake].Load(); n != 0 {
		t.Errorf("refusals for tls_handshake: %d, want 0 (the handshake was cut at max_pending)", n)
	}
	if out := buf.String(); strings.Contains(out, "TLS handshake failed") || !strings.Contains(out, "max_pending") {
		t.Errorf("log, want the max_pending warning and no TLS handshake failure:\n%s", out)
	}
}
