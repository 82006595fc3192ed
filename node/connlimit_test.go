package node

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// deadlineConn records the read deadline set on it.
type deadlineConn struct {
	net.Conn        // nil: only the methods below are called
	ip       net.IP // its remote address; nil: 127.0.0.1
	mu       sync.Mutex
	read     time.Time
	closed   bool
}

func (c *deadlineConn) RemoteAddr() net.Addr {
	if c.ip == nil {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	}
	return &net.TCPAddr{IP: c.ip}
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = t
	return nil
}

func (c *deadlineConn) SetWriteDeadline(time.Time) error { return nil }

func (c *deadlineConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *deadlineConn) state() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read, c.closed
}

// connsListener hands out the conns sent on it.
type connsListener struct {
	net.Listener // nil
	ch           chan net.Conn
}

func (l connsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-time.After(10 * time.Second):
		return nil, net.ErrClosed
	}
}

// admit runs one Accept of l for raw, which must be admitted.
func admit(t *testing.T, l *connLimiter, ch chan net.Conn, raw net.Conn) *limitedConn {
	t.Helper()
	ch <- raw
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c.(*limitedConn)
}

// Until its first request, a connection's read deadline is at most its
// first-request deadline, whatever net/http asks; after it, the deadline
// is the one net/http asked for last.
func TestConnLimiterFirstRequestDeadline(t *testing.T) {
	ch := make(chan net.Conn, 1)
	l := newConnLimiter(connsListener{ch: ch}, 4, time.Second, slog.New(slog.DiscardHandler))
	raw := &deadlineConn{}
	c := admit(t, l, ch, raw)
	firstBy := c.firstBy
	if d := time.Until(firstBy); d <= 0 || d > time.Second {
		t.Fatalf("first-request deadline in %v, want within 1 s", d)
	}
	if got, _ := raw.state(); !got.Equal(firstBy) {
		t.Fatalf("read deadline on admission %v, want %v", got, firstBy)
	}
	later := time.Now().Add(10 * time.Second)
	for _, asked := range []time.Time{later, {}} {
		c.SetReadDeadline(asked)
		if got, _ := raw.state(); !got.Equal(firstBy) {
			t.Fatalf("read deadline %v asked before the first request: set %v, want %v", asked, got, firstBy)
		}
	}
	sooner := time.Now().Add(time.Millisecond)
	c.SetDeadline(sooner)
	if got, _ := raw.state(); !got.Equal(sooner) {
		t.Fatalf("an earlier read deadline: set %v, want %v", got, sooner)
	}
	c.SetReadDeadline(later)
	l.state(c, http.StateNew)
	if got, _ := raw.state(); !got.Equal(firstBy) {
		t.Fatalf("StateNew lifted the first-request deadline: %v", got)
	}
	l.state(c, http.StateActive)
	if got, _ := raw.state(); !got.Equal(later) {
		t.Fatalf("read deadline after the first request %v, want the one asked for, %v", got, later)
	}
	c.SetReadDeadline(time.Time{})
	if got, _ := raw.state(); !got.IsZero() {
		t.Fatalf("no read deadline asked after the first request: set %v", got)
	}
}

// At the limit, the connection idle longest makes room, counting one that
// has sent no request yet as idle since it was admitted; busy ones stay.
func TestConnLimiterEvictsIdlestFreshOrIdle(t *testing.T) {
	ch := make(chan net.Conn, 1)
	l := newConnLimiter(connsListener{ch: ch}, 3, time.Minute, slog.New(slog.DiscardHandler))
	busy, fresh, idle := &deadlineConn{}, &deadlineConn{}, &deadlineConn{}
	cb := admit(t, l, ch, busy)
	l.state(cb, http.StateActive)
	cf := admit(t, l, ch, fresh)
	ci := admit(t, l, ch, idle)
	l.state(ci, http.StateIdle)
	// fresh was admitted 3 s ago, idle went idle 2 s ago.
	cf.idleSince, ci.idleSince = time.Now().Add(-3*time.Second), time.Now().Add(-2*time.Second)
	admit(t, l, ch, &deadlineConn{})
	if _, closed := fresh.state(); !closed {
		t.Fatal("the connection without a request, admitted first, was not closed to make room")
	}
	if l.lastWarn.IsZero() {
		t.Fatal("no warning of the connection closed")
	}
	admit(t, l, ch, &deadlineConn{})
	if _, closed := idle.state(); !closed {
		t.Fatal("the idle connection was not closed to make room next")
	}
	if _, closed := busy.state(); closed {
		t.Fatal("a busy connection was closed to make room")
	}
	if l.shed != 1 {
		t.Fatalf("%d idle connections counted for the next warning, want 1", l.shed)
	}
}

// With an auth token, at the limit the oldest connection that has made no
// request with the token makes room even while busy (its request without
// the token, a /healthz held open behind a zero flow-control window, kept
// it for ever, and Accept waited), before the one idle longest among the
// authenticated. Without a token, busy connections stay.
func TestConnLimiterEvictsUnauthenticatedFirst(t *testing.T) {
	ch := make(chan net.Conn, 1)
	l := authLimiter(t, ch, 3)
	authedIdle, busy1, busy2 := &deadlineConn{}, &deadlineConn{}, &deadlineConn{}
	ca := admit(t, l, ch, authedIdle)
	l.state(ca, http.StateActive)
	ca.authenticated()
	l.state(ca, http.StateIdle)
	c1 := admit(t, l, ch, busy1)
	l.state(c1, http.StateActive)
	c2 := admit(t, l, ch, busy2)
	l.state(c2, http.StateActive)
	ca.idleSince = time.Now().Add(-time.Hour) // idle longest by far
	c1.admitted, c2.admitted = time.Now().Add(-2*time.Second), time.Now().Add(-time.Second)

	ch <- &deadlineConn{}
	admitted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		admitted <- err
	}()
	select {
	case err := <-admitted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept waited for a slot held by busy connections without the auth token")
	}
	if _, closed := busy1.state(); !closed {
		t.Fatal("the oldest busy connection without the auth token was not closed to make room")
	}
	if _, closed := busy2.state(); closed {
		t.Fatal("a newer connection without the auth token was closed before the oldest")
	}
	if _, closed := authedIdle.state(); closed {
		t.Fatal("an authenticated idle connection was closed while one without the token held a slot")
	}
	if l.lastWarn.IsZero() {
		t.Fatal("no warning of the connection closed")
	}
}

// authLimiter returns a connLimiter of max connections on ch whose
// connections must make a request with an auth token within a minute.
func authLimiter(t *testing.T, ch chan net.Conn, max int) *connLimiter {
	l := newConnLimiter(connsListener{ch: ch}, max, time.Minute, slog.New(slog.DiscardHandler))
	l.authBy = time.Minute
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.open {
			c.authTimer.Stop()
		}
	})
	return l
}

// At the cap of connections without the token, one that has not sent a
// whole TLS ClientHello (nor a request) is closed before a client that
// has, however old: with 63 silent connections from as many /24s beside
// a client whose ClientHello was read, the oldest, the 65th connection
// closes a silent one. A one-byte connection ranked alike with a real
// client mid-handshake, and from as many sources as the cap the source
// counts tie, so the client, the oldest, was closed (outsider review s32
// N2). Fails without the begun rank (the client is closed).
func TestConnLimiterUnauthCapClosesUnbegunFirst(t *testing.T) {
	ch := make(chan net.Conn, 1)
	l := authLimiter(t, ch, 1024)
	client := &deadlineConn{}
	cc := admit(t, l, ch, client)
	if _, err := l.noteHellos(&tls.Config{}).GetConfigForClient(&tls.ClientHelloInfo{Conn: cc}); err != nil {
		t.Fatal(err)
	}
	silent := make([]*deadlineConn, maxUnauthed-1)
	for i := range silent {
		silent[i] = &deadlineConn{ip: net.IPv4(127, 0, byte(10+i), 1)}
		sc := admit(t, l, ch, silent[i])
		l.mu.Lock()
		sc.admitted = sc.admitted.Add(-beginGrace) // silent past the grace
		l.mu.Unlock()
	}
	admit(t, l, ch, &deadlineConn{ip: net.IPv4(127, 1, 0, 1)})
	if _, closed := client.state(); closed {
		t.Fatal("the client whose ClientHello was read was closed at the cap before a connection that sent nothing")
	}
	if _, closed := silent[0].state(); !closed {
		t.Fatal("the oldest connection that sent nothing was not closed at the cap")
	}
}

// At the cap of connections without the token, one whose first flight the
// node read long ago and that has sent nothing since (an HTTP/2 preface,
// then nothing) goes before a client's whose request is on its way, read
// a moment ago, though the client's /24 holds 8 and each of the others 1:
// ranked as connections that sent a first flight, for as long as they
// were open, the flood from 64 /24s closed the client's pool (outsider
// review s39, C1).
func TestConnLimiterCapClosesDrainedBeforeInFlight(t *testing.T) {
	ch := make(chan net.Conn, 1)
	l := authLimiter(t, ch, 1024)
	now := time.Now()
	var pool []*deadlineConn
	for i := range 8 {
		c := &deadlineConn{ip: net.IPv4(127, 0, 0, byte(10+i))}
		lc := admit(t, l, ch, c)
		l.mu.Lock()
		lc.begun = true
		lc.got.Store(firstFlight)
		lc.lastRead.Store(now.UnixNano())
		l.mu.Unlock()
		pool = append(pool, c)
	}
	var flood []*deadlineConn
	for i := range maxUnauthed - len(pool) {
		c := &deadlineConn{ip: net.IPv4(127, 1, byte(i), 1)}
		lc := admit(t, l, ch, c)
		l.mu.Lock()
		lc.begun = true
		lc.admitted = lc.admitted.Add(-2 * beginGrace)
		lc.got.Store(33) // a preface and an empty SETTINGS frame
		lc.lastRead.Store(now.Add(-2 * flightGrace).UnixNano())
		lc.flightUntil = now.Add(-flightGrace) // found in flight when it was read
		l.mu.Unlock()
		flood = append(flood, c)
	}
	admit(t, l, ch, &deadlineConn{ip: net.IPv4(127, 2, 0, 1)})
	for i, c := range pool {
		if _, closed := c.state(); closed {
			t.Fatalf("the client's connection %d, its request read a moment ago, was closed at the cap before a drained one", i)
		}
	}
	closed := 0
	for _, c := range flood {
		if _, ok := c.state(); ok {
			closed++
		}
	}
	if closed == 0 {
		t.Fatal("no drained connection was closed at the cap")
	}
}

// A connection is stalled only while every request in flight on it waits
// in a read of its body, begun stallGrace ago or more, having received
// fewer than stallRate bytes a second of it: not a body arriving faster,
// nor one younger, nor a request whose handler is not reading (a waiting
// acquire, a watch, a turn of the API budget), nor one whose body it
// does not watch beside a stalled one (HTTP/2); or while every one waits
// on its client to read a unary reply it began to write stallGrace ago
// or more (a client granting no HTTP/2 window), not one begun since.
func TestConnStalledOnlyOnTricklingBodies(t *testing.T) {
	l := newConnLimiter(nil, 4, time.Minute, slog.New(slog.DiscardHandler))
	now := time.Now()
	for _, tc := range []struct {
		name    string
		age     time.Duration // since the body's first read
		got     int64
		reading bool
		reqs    int           // requests in flight, the one body watched among them
		wrote   time.Duration // since its reply began to be written (0: not yet)
		want    bool
	}{
		{"trickling", 3 * time.Second, 10, true, 1, 0, true},
		{"arriving at stallRate", 3 * time.Second, 3 * stallRate, true, 1, 0, false},
		{"younger than stallGrace", stallGrace - time.Millisecond, 0, true, 1, 0, false},
		{"not in a read", 3 * time.Second, 10, false, 1, 0, false},
		{"beside an unwatched request", 3 * time.Second, 10, true, 2, 0, false},
		{"no request", 0, 0, false, 0, 0, false},
		{"reply unread", 3 * time.Second, 100, false, 1, stallGrace, true},
		{"reply being written", 3 * time.Second, 100, false, 1, stallGrace - time.Millisecond, false},
		{"reply unread beside an unwatched request", 3 * time.Second, 100, false, 2, 3 * time.Second, false},
	} {
		c := &limitedConn{l: l}
		for range tc.reqs {
			c.requestStarted()
		}
		if tc.reqs > 0 {
			w := c.watchBody()
			c.bodyRead(w, true, 0)
			w.since, w.got, w.reading = now.Add(-tc.age), tc.got, tc.reading
			if tc.wrote > 0 {
				w.writeAt = now.Add(-tc.wrote)
			}
		}
		if _, got := c.stalled(now); got != tc.want {
			t.Errorf("%s: stalled %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Past the cap of connections without the token, connections the node
// has not heard from yet (unheard: young, and silent or a whole first
// flight sent) are admitted without closing one another, up to
// maxUnheard, where the worst goes; once their grace is over the cap is
// restored (drainUnheard), the worst first. One that sent a byte and no
// more is closed at the cap as before.
func TestConnLimiterUnheardPastTheCap(t *testing.T) {
	ch := make(chan net.Conn, 1)
	l := authLimiter(t, ch, 1024)
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.drain != nil {
			l.drain.Stop()
		}
	})
	conns := make([]*deadlineConn, maxUnheard+1)
	lcs := make([]*limitedConn, len(conns))
	for i := range conns {
		conns[i] = &deadlineConn{}
		lcs[i] = admit(t, l, ch, conns[i])
	}
	for i, c := range conns[1:] {
		if _, closed := c.state(); closed {
			t.Fatalf("connection %d of %d, silent and young, closed at the cap", i+1, len(conns))
		}
	}
	if _, closed := conns[0].state(); !closed {
		t.Fatalf("the oldest was not closed at maxUnheard (%d)", maxUnheard)
	}
	l.mu.Lock()
	if l.unauthed != maxUnheard {
		t.Fatalf("%d open without the token, want maxUnheard %d", l.unauthed, maxUnheard)
	}
	for _, c := range lcs {
		c.admitted = c.admitted.Add(-beginGrace) // their grace is over
	}
	l.mu.Unlock()
	l.drainUnheard()
	l.mu.Lock()
	left := l.unauthed
	l.mu.Unlock()
	if left != maxUnauthed {
		t.Fatalf("%d open without the token after the drain, want maxUnauthed %d", left, maxUnauthed)
	}
	for i, c := range conns {
		if _, closed := c.state(); closed != (i <= maxUnheard-maxUnauthed) {
			t.Fatalf("connection %d closed %v by the drain, want the oldest %d closed", i, closed, maxUnheard-maxUnauthed+1)
		}
	}

	// Young again, the oldest having sent a byte and no more: not
	// unheard, it is closed at the cap; the others are not.
	l.mu.Lock()
	for i, c := range lcs[len(lcs)-maxUnauthed:] {
		c.admitted = time.Now().Add(time.Duration(i-maxUnauthed) * time.Millisecond)
	}
	l.mu.Unlock()
	lcs[len(lcs)-maxUnauthed].got.Store(1)
	admit(t, l, ch, &deadlineConn{})
	for i, c := range conns[len(conns)-maxUnauthed:] {
		if _, closed := c.state(); closed != (i == 0) {
			t.Fatalf("young connection %d of the cap closed %v, want only the oldest, which sent a byte and no more", i, closed)
		}
	}
}
