package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// recordingListener remembers every connection it accepted.
type recordingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *recordingListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// kill closes every accepted connection from the server side.
func (l *recordingListener) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
}

// rpcNode is a Mux with an RPCServer on 127.0.0.1.
type rpcNode struct {
	addr string
	mux  *Mux
	srv  *RPCServer
	ln   *recordingListener
}

// startRPC serves h behind a Mux; cleanup closes both.
func startRPC(t *testing.T, h Handler, cfg RPCServerConfig) *rpcNode {
	t.Helper()
	m, lns := startMux(t, MuxConfig{}, ProtoRPC)
	rl := &recordingListener{Listener: lns[ProtoRPC]}
	srv := NewRPCServer(rl, h, cfg)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("RPCServer.Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("RPCServer.Serve returned %v after Close, want nil", err)
		}
	})
	return &rpcNode{addr: m.Addr().String(), mux: m, srv: srv, ln: rl}
}

func newClient(t *testing.T, cfg RPCClientConfig) *RPCClient {
	t.Helper()
	c := NewRPCClient(cfg)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// liveConns counts the client's pooled, unbroken connections to addr.
func (c *RPCClient) liveConns(addr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	if p := c.peers[addr]; p != nil {
		for _, cc := range p.conns {
			if !cc.broken() {
				n++
			}
		}
	}
	return n
}

// Application errors cross the wire as codes: the same sentinel comes out.
var (
	errTestHeld     = errors.New("test: held")
	errTestNotFound = errors.New("test: not found")
	testErrorCodes  = []error{nil, errTestHeld, errTestNotFound, context.DeadlineExceeded, context.Canceled}
)

func encodeTestError(err error) []byte {
	for i, e := range testErrorCodes {
		if e != nil && errors.Is(err, e) {
			return []byte{byte(i)}
		}
	}
	return []byte{0}
}

func decodeTestError(b []byte) error {
	if len(b) == 1 && int(b[0]) < len(testErrorCodes) && b[0] != 0 {
		return testErrorCodes[b[0]]
	}
	return nil
}

// echo returns req, or the error named by method.
func echo(ctx context.Context, method uint8, req []byte) ([]byte, error) {
	switch method {
	case 1:
		return req, nil
	case 2:
		return nil, fmt.Errorf("acquire %q: %w", req, errTestHeld)
	case 3:
		return nil, errors.New("plain failure")
	}
	return nil, fmt.Errorf("unknown method %d", method)
}

// wantCallError checks err's classification and cause.
func wantCallError(t *testing.T, err error, maybeDelivered bool, cause error) {
	t.Helper()
	var ce *CallError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v (%T), want *CallError", err, err)
	}
	if ce.MaybeDelivered != maybeDelivered {
		t.Fatalf("MaybeDelivered = %v, want %v (err %v)", ce.MaybeDelivered, maybeDelivered, err)
	}
	notSent, noReply := errors.Is(err, ErrNotSent), errors.Is(err, ErrNoReply)
	if notSent == noReply || noReply != maybeDelivered {
		t.Fatalf("errors.Is(ErrNotSent)=%v, errors.Is(ErrNoReply)=%v, want exactly one matching MaybeDelivered=%v", notSent, noReply, maybeDelivered)
	}
	if cause != nil && !errors.Is(err, cause) {
		t.Fatalf("err = %v, want it to wrap %v", err, cause)
	}
}

func TestRPCRoundTripAndErrors(t *testing.T) {
	leakCheck(t)
	n := startRPC(t, echo, RPCServerConfig{EncodeError: encodeTestError})
	c := newClient(t, RPCClientConfig{DecodeError: decodeTestError})
	ctx := context.Background()

	got, err := c.Call(ctx, n.addr, 1, []byte("ping"))
	if err != nil || string(got) != "ping" {
		t.Fatalf("Call = %q, %v", got, err)
	}
	got, err = c.Call(ctx, n.addr, 1, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty Call = %q, %v", got, err)
	}

	// A handler error comes back as the same sentinel: the outcome is known.
	_, err = c.Call(ctx, n.addr, 2, []byte("k"))
	if !errors.Is(err, errTestHeld) {
		t.Fatalf("err = %v, want errTestHeld", err)
	}
	var ce *CallError
	if errors.As(err, &ce) || errors.Is(err, ErrNoReply) || errors.Is(err, ErrNotSent) {
		t.Fatalf("handler error %v classified as a transport failure", err)
	}

	// An error EncodeError does not know, or a client without DecodeError:
	// a RemoteError, still not a transport failure.
	_, err = c.Call(ctx, n.addr, 3, nil)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want *RemoteError", err, err)
	}

	if got := n.ln.count(); got != 1 {
		t.Fatalf("server accepted %d connections, want 1 reused", got)
	}
}

// Without EncodeError the handler's text arrives in a RemoteError.
func TestRPCErrorTextWithoutEncoder(t *testing.T) {
	leakCheck(t)
	n := startRPC(t, echo, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{DecodeError: decodeTestError})
	_, err := c.Call(context.Background(), n.addr, 3, nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "plain failure" {
		t.Fatalf("err = %v, want RemoteError with the handler's text", err)
	}
}

// Many calls run at once over one connection: every handler is in flight
// before any returns.
func TestRPCConcurrentCallsShareOneConnection(t *testing.T) {
	leakCheck(t)
	const calls = 32
	var arrived atomic.Int32
	all := make(chan struct{})
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		if arrived.Add(1) == calls {
			close(all)
		}
		select {
		case <-all:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return append([]byte("re:"), req...), nil
	}
	n := startRPC(t, h, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{MaxConnsPerPeer: 1})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fmt.Appendf(nil, "%d", i)
			got, err := c.Call(ctx, n.addr, 1, req)
			if err == nil && string(got) != "re:"+string(req) {
				err = fmt.Errorf("call %d got %q", i, got)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := n.ln.count(); got != 1 {
		t.Fatalf("server accepted %d connections, want 1", got)
	}
}

// The default pool grows to at most MaxConnsPerPeer under load.
func TestRPCPoolBoundedByMaxConnsPerPeer(t *testing.T) {
	leakCheck(t)
	release := make(chan struct{})
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	}
	n := startRPC(t, h, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{})
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Call(context.Background(), n.addr, 1, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	eventually(t, 10*time.Second, func() error {
		if c.liveConns(n.addr) != DefaultMaxConnsPerPeer {
			return fmt.Errorf("%d live connections", c.liveConns(n.addr))
		}
		return nil
	})
	close(release)
	wg.Wait()
	if got := n.ln.count(); got != DefaultMaxConnsPerPeer {
		t.Fatalf("server accepted %d connections, want %d", got, DefaultMaxConnsPerPeer)
	}
}

// The handler's context carries the caller's deadline, or none.
func TestRPCDeadlinePropagated(t *testing.T) {
	leakCheck(t)
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return nil, nil
		}
		return binary.BigEndian.AppendUint64(nil, uint64(dl.UnixNano())), nil
	}
	n := startRPC(t, h, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{})

	got, err := c.Call(context.Background(), n.addr, 1, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("without deadline: %x, %v; want no deadline on the server", got, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	got, err = c.Call(ctx, n.addr, 1, nil)
	if err != nil || len(got) != 8 {
		t.Fatalf("with deadline: %x, %v", got, err)
	}
	server := time.Unix(0, int64(binary.BigEndian.Uint64(got)))
	// The server starts the same timeout on arrival: never earlier than
	// the caller's deadline, later only by the transit time.
	if server.Before(want.Add(-time.Millisecond)) || server.After(want.Add(time.Second)) {
		t.Fatalf("server deadline %v, caller deadline %v", server, want)
	}
}

// Cancelling the caller's context returns at once with ErrNoReply and
// cancels the handler's context through a cancel frame.
func TestRPCCancelPropagated(t *testing.T) {
	leakCheck(t)
	started := make(chan struct{})
	handlerDone := make(chan error, 1)
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		if method != 2 {
			return nil, nil
		}
		close(started)
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return nil, ctx.Err()
	}
	n := startRPC(t, h, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{})

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	_, err := c.Call(ctx, n.addr, 2, nil)
	wantCallError(t, err, true, context.Canceled)
	select {
	case err := <-handlerDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx ended with %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler context not cancelled")
	}
	// The connection is still good.
	if _, err := c.Call(context.Background(), n.addr, 1, nil); err != nil {
		t.Fatal(err)
	}
	if got := n.ln.count(); got != 1 {
		t.Fatalf("server accepted %d connections, want 1", got)
	}
}

// A deadline that passes while waiting for the reply is an unknown outcome.
func TestRPCDeadlineWhileWaitingIsNoReply(t *testing.T) {
	leakCheck(t)
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		if method == 0 {
			return nil, nil
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	// The client's deadline and the server's (a little later) race: either
	// the client gives up first, or the handler's late error arrives first.
	// Both are unknown outcomes caused by the deadline.
	n := startRPC(t, h, RPCServerConfig{EncodeError: encodeTestError})
	c := newClient(t, RPCClientConfig{DecodeError: decodeTestError})
	// Connect first, so that the short deadline cannot expire in the dial.
	if _, err := c.Call(context.Background(), n.addr, 0, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Call(ctx, n.addr, 1, nil)
	wantCallError(t, err, true, context.DeadlineExceeded)
}

// A handler error returned after the handler's context ended is an unknown
// outcome even when the reply reaches a client that is still waiting, and
// keeps its identity as the cause.
func TestRPCLateHandlerErrorIsNoReply(t *testing.T) {
	leakCheck(t)
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		if method == 0 {
			return nil, nil
		}
		<-ctx.Done() // the server's deadline, from the request's timeout
		if method == 2 {
			return []byte("late but fine"), nil
		}
		return nil, fmt.Errorf("apply: %w", errTestHeld)
	}
	n := startRPC(t, h, RPCServerConfig{EncodeError: encodeTestError})
	c := newClient(t, RPCClientConfig{DecodeError: decodeTestError})

	if _, err := c.Call(context.Background(), n.addr, 0, nil); err != nil {
		t.Fatal(err) // connect first: the short deadline is for the handler
	}
	// Send a short timeout on the wire while the client itself waits
	// longer, so the late reply is sure to arrive first.
	call := func(method uint8) ([]byte, error) {
		short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		return c.Call(waitLonger{short}, n.addr, method, nil)
	}
	_, err := call(1)
	wantCallError(t, err, true, errTestHeld)
	// A success is a success, late or not.
	got, err := call(2)
	if err != nil || string(got) != "late but fine" {
		t.Fatalf("late success: %q, %v", got, err)
	}
}

// waitLonger reports its parent's deadline but is never done, modelling a
// client whose own timer is slower than the server's.
type waitLonger struct{ context.Context }

func (waitLonger) Done() <-chan struct{} { return nil }
func (waitLonger) Err() error            { return nil }

// A context that ends before the request is written means not sent: before
// the call, and while waiting for another call's write to finish.
func TestRPCContextDoneBeforeWriteIsNotSent(t *testing.T) {
	leakCheck(t)
	n := startRPC(t, echo, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{MaxConnsPerPeer: 1})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Call(ctx, n.addr, 1, nil)
	wantCallError(t, err, false, context.Canceled)

	if _, err := c.Call(context.Background(), n.addr, 1, nil); err != nil {
		t.Fatal(err)
	}
	// Hold the connection's write token as a stuck writer would.
	c.mu.Lock()
	cc := c.peers[n.addr].conns[0]
	c.mu.Unlock()
	cc.sem <- struct{}{}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Call(ctx, n.addr, 1, []byte("x"))
	wantCallError(t, err, false, context.DeadlineExceeded)
	cc.releaseWriter()

	if _, err := c.Call(context.Background(), n.addr, 1, nil); err != nil {
		t.Fatal(err)
	}
}

func TestRPCMaxMessage(t *testing.T) {
	leakCheck(t)
	const small, large = 1 << 10, 1 << 20
	big := bytes.Repeat([]byte("x"), 2*small)
	var handled atomic.Int32
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		handled.Add(1)
		if method == 9 {
			return big, nil
		}
		return req, nil
	}
	ctx := context.Background()

	t.Run("request over client limit is not sent", func(t *testing.T) {
		n := startRPC(t, h, RPCServerConfig{MaxMessage: large})
		c := newClient(t, RPCClientConfig{MaxMessage: small})
		_, err := c.Call(ctx, n.addr, 1, big)
		wantCallError(t, err, false, ErrMessageTooLarge)
		if n.ln.count() != 0 {
			t.Fatal("client dialed for a request it could not send")
		}
	})
	t.Run("request over server limit is refused, connection kept", func(t *testing.T) {
		n := startRPC(t, h, RPCServerConfig{MaxMessage: small})
		c := newClient(t, RPCClientConfig{MaxMessage: large})
		before := handled.Load()
		_, err := c.Call(ctx, n.addr, 1, big)
		wantCallError(t, err, false, ErrMessageTooLarge)
		if handled.Load() != before {
			t.Fatal("handler ran for an oversized request")
		}
		if got, err := c.Call(ctx, n.addr, 1, []byte("ok")); err != nil || string(got) != "ok" {
			t.Fatalf("next call: %q, %v", got, err)
		}
		if n.ln.count() != 1 {
			t.Fatalf("server accepted %d connections, want 1", n.ln.count())
		}
	})
	t.Run("reply over server limit is an unknown outcome", func(t *testing.T) {
		n := startRPC(t, h, RPCServerConfig{MaxMessage: small})
		c := newClient(t, RPCClientConfig{MaxMessage: large})
		_, err := c.Call(ctx, n.addr, 9, nil)
		wantCallError(t, err, true, ErrMessageTooLarge)
	})
	t.Run("reply over client limit is an unknown outcome, connection kept", func(t *testing.T) {
		n := startRPC(t, h, RPCServerConfig{MaxMessage: large})
		c := newClient(t, RPCClientConfig{MaxMessage: small})
		_, err := c.Call(ctx, n.addr, 9, nil)
		wantCallError(t, err, true, ErrMessageTooLarge)
		if got, err := c.Call(ctx, n.addr, 1, []byte("ok")); err != nil || string(got) != "ok" {
			t.Fatalf("next call: %q, %v", got, err)
		}
		if n.ln.count() != 1 {
			t.Fatalf("server accepted %d connections, want 1", n.ln.count())
		}
	})
	t.Run("exactly at the limit passes", func(t *testing.T) {
		n := startRPC(t, h, RPCServerConfig{MaxMessage: small})
		c := newClient(t, RPCClientConfig{MaxMessage: small})
		msg := bytes.Repeat([]byte("y"), small)
		if got, err := c.Call(ctx, n.addr, 1, msg); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("Call at limit: %d bytes, %v", len(got), err)
		}
	})
}

// The connection dies after the request reached the handler: the outcome
// is unknown, and the server cancels the orphaned handler.
func TestRPCConnectionKilledAfterWriteIsNoReply(t *testing.T) {
	leakCheck(t)
	started := make(chan struct{})
	handlerCtx := make(chan error, 1)
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		close(started)
		<-ctx.Done()
		handlerCtx <- ctx.Err()
		return nil, ctx.Err()
	}
	n := startRPC(t, h, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{})
	go func() {
		<-started
		n.ln.kill()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Call(ctx, n.addr, 1, []byte("write"))
	wantCallError(t, err, true, nil)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v: waited for the deadline instead of seeing the broken connection", err)
	}
	select {
	case err := <-handlerCtx:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("orphaned handler not cancelled")
	}
}

// Nothing listening: the request was certainly not sent.
func TestRPCDialRefusedIsNotSent(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c := newClient(t, RPCClientConfig{})
	_, err = c.Call(context.Background(), addr, 1, nil)
	wantCallError(t, err, false, syscall.ECONNREFUSED)
}

// A broken connection is dropped from the pool and replaced on the next
// call.
func TestRPCPoolReconnectsAfterBrokenConnection(t *testing.T) {
	leakCheck(t)
	n := startRPC(t, echo, RPCServerConfig{})
	c := newClient(t, RPCClientConfig{})
	ctx := context.Background()
	if _, err := c.Call(ctx, n.addr, 1, []byte("a")); err != nil {
		t.Fatal(err)
	}
	n.ln.kill()
	eventually(t, 10*time.Second, func() error {
		if k := c.liveConns(n.addr); k != 0 {
			return fmt.Errorf("%d live connections after the server closed them", k)
		}
		return nil
	})
	if got, err := c.Call(ctx, n.addr, 1, []byte("b")); err != nil || string(got) != "b" {
		t.Fatalf("Call after reconnect: %q, %v", got, err)
	}
	if got := n.ln.count(); got != 2 {
		t.Fatalf("server accepted %d connections, want 2", got)
	}
}

// Closing the client fails waiting calls (unknown outcome) and later calls
// (not sent) with ErrClosed.
func TestRPCClientClose(t *testing.T) {
	leakCheck(t)
	started := make(chan struct{})
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	n := startRPC(t, h, RPCServerConfig{})
	c := NewRPCClient(RPCClientConfig{})
	go func() {
		<-started
		_ = c.Close()
	}()
	_, err := c.Call(context.Background(), n.addr, 1, nil)
	wantCallError(t, err, true, ErrClosed)
	_, err = c.Call(context.Background(), n.addr, 1, nil)
	wantCallError(t, err, false, ErrClosed)
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Closing the server cancels in-flight handlers and waits for them.
func TestRPCServerCloseCancelsHandlers(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{}, ProtoRPC)
	started := make(chan struct{})
	var returned atomic.Bool
	h := func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		close(started)
		<-ctx.Done()
		returned.Store(true)
		return nil, ctx.Err()
	}
	srv := NewRPCServer(lns[ProtoRPC], h, RPCServerConfig{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	c := newClient(t, RPCClientConfig{})
	callErr := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), m.Addr().String(), 1, nil)
		callErr <- err
	}()
	<-started
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if !returned.Load() {
		t.Fatal("Close returned before the handler")
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	wantCallError(t, <-callErr, true, nil)
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Malformed frames from a client close its connection without disturbing
// the server.
func TestRPCServerRejectsGarbage(t *testing.T) {
	leakCheck(t)
	n := startRPC(t, echo, RPCServerConfig{})
	for _, garbage := range [][]byte{
		{0, 0, 0, 9, 77, 0, 0, 0, 0, 0, 0, 0, 1},                                          // unknown type
		{0, 0, 0, 2, frameRequest, 0, 0, 0, 0, 0, 0, 0, 1},                                // shorter than its own header
		{0, 0, 0, 10, frameCancel, 0, 0, 0, 0, 0, 0, 0, 1, 5},                             // cancel with payload
		{0, 0, 0, 9, frameResponse, 0, 0, 0, 0, 0, 0, 0, 1},                               // a reply sent to the server
		{0, 0, 0, 18, frameRequest, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xff, 0, 0, 0, 0, 0, 0, 0}, // negative timeout
	} {
		conn := dial(t, &Dialer{}, n.addr, ProtoRPC)
		if _, err := conn.Write(garbage); err != nil {
			t.Fatal(err)
		}
		expectClosedByPeer(t, conn)
	}
	c := newClient(t, RPCClientConfig{})
	if _, err := c.Call(context.Background(), n.addr, 1, nil); err != nil {
		t.Fatal(err)
	}
}

// An empty request is one Write: once the frame is out nothing else is
// written, so a deadline that passes then (a call cancelled as its frame
// went out) cannot fail the connection. A net.Conn that is not a
// *net.TCPConn writes each buffer of a vectored write on its own, and an
// empty Write after a passed deadline fails.
func TestWriteFrameEmptyPayloadIsOneWrite(t *testing.T) {
	w := &deadlineAfterFirstWrite{}
	complete, err := writeFrame(w, &frame{typ: frameRequest, id: 9, method: 2})
	if !complete || err != nil || w.writes != 1 {
		t.Fatalf("writeFrame: complete %v, err %v, %d writes; want one write and no error", complete, err, w.writes)
	}
}

// deadlineAfterFirstWrite accepts one Write, then fails every later one as
// a connection whose write deadline has passed does, even an empty one.
type deadlineAfterFirstWrite struct{ writes int }

func (w *deadlineAfterFirstWrite) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > 1 {
		return 0, os.ErrDeadlineExceeded
	}
	return len(p), nil
}

// Frames survive a round trip through the codec.
func TestFrameRoundTrip(t *testing.T) {
	for _, f := range []frame{
		{typ: frameRequest, id: 1, method: 7, timeout: 1500 * time.Millisecond, payload: []byte("req")},
		{typ: frameRequest, id: 1<<64 - 1, payload: []byte{}},
		{typ: frameResponse, id: 2, payload: []byte("resp")},
		{typ: frameError, id: 3, kind: errKindApp, payload: []byte{1}},
		{typ: frameCancel, id: 4, payload: []byte{}},
	} {
		var buf bytes.Buffer
		if complete, err := writeFrame(&buf, &f); !complete || err != nil {
			t.Fatalf("writeFrame: %v, %v", complete, err)
		}
		got, err := readFrame(bufio.NewReader(&buf), 100)
		if err != nil {
			t.Fatalf("readFrame(%+v): %v", f, err)
		}
		if got.typ != f.typ || got.id != f.id || got.method != f.method || got.timeout != f.timeout || got.kind != f.kind || !bytes.Equal(got.payload, f.payload) {
			t.Fatalf("round trip: got %+v, want %+v", got, f)
		}
		if buf.Len() != 0 {
			t.Fatalf("%d bytes left over", buf.Len())
		}
	}
}
