package node

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport"
)

// connLimiter admits at most max client API connections. At the limit a
// new connection takes the place of one that has sent no request yet,
// silent the longest, or of one of its own source idle the longest (kept
// alive between requests), which is closed. Connections cheap for anyone
// to open and leave must not lock every other client out (an outsider's
// 1,100 silent connections made a Get take 2.35 s on average, 7.75 s at
// worst). With an auth token, the oldest connection that has made no
// request with it goes first, busy or not: a request without the token
// is not worth a slot. Other sources' connections that made a request
// (with the token, if there is one) are closed only by the fair-share
// rule below; if none may be closed, the new connection is refused:
// closed at once, counted as max_conns and logged once per
// loglimit.Every, naming --max-conns. (It waited for a slot before, and
// every client that connected meanwhile waited behind it.)
//
// Sources (an IPv4 /24, an IPv6 /64: transport.SourcePrefix with
// HandshakeV4Bits) share the slots: one source may hold at most
// perSource of them (a quarter of max, at least 64, all of it below 64).
// A new connection of a source at its share takes the place of the
// source's own worst (without the token) or idle longest connection; if
// all of them are busy it is refused, closed at once, counted as
// max_conns_per_source and logged once per loglimit.Every. And at max,
// the victim comes first from the source holding the most connections,
// if it holds more than its fair share (fairConns: max over the active
// sources, at least a sixteenth of max) and more than the new
// connection's source would once admitted: among its connections in the
// order above, then, if none of its is idle, any connection without the
// token, then its oldest busy one. A source holding at most its fair
// share loses none of its working connections (busy, and not stalled on
// a request body trickling in: limitedConn.stalled) that made a request
// to another source's, and one holding at most max over the active
// sources none at all; but past that, its idle and stalled connections
// make room for a new one of a source that would hold at most that, the
// most crowded source's first. Else 16 /24s holding a sixteenth each,
// with connections idle or trickling request bodies, locked out every
// other source (outsider review s35). One token holder's 1,006 busy
// connections from one address filled --max-conns, and the idle
// connections closed to admit new ones were other clients': 5 of 55
// fresh curls failed and a lock loop stalled 2-4 s 18 times (outsider
// review s32 #5); and 50 /24s holding fewer each than the clients' /24
// did the same (s32 N5). Guarded by TestConnsPerSourceAreBounded,
// TestConnLimitClosesTheCrowdedSourceFirst, TestConnLimitKeepsFairShares,
// TestConnLimitAdmitsPastIdleAndStalledShares and
// TestConnStalledOnlyOnTricklingBodies.
//
// A connection must also send its first request (TLS handshake included)
// within first: until then its read deadline is at most that, whatever
// net/http asks, so a silent one gives its slot back in a second or two,
// not the ten of ReadHeaderTimeout. The first refusal of each minute is
// logged.
//
// With an auth token (authBy set), a connection must also make a request
// with the token within authBy of its admission, and before it has made
// maxRefused requests refused for the lack of it; otherwise it is closed.
// HTTP/2 does work for a connection before any request reaches the token
// check (PINGs, SETTINGS, streams opened and reset at once), so without
// this anyone who could reach the port could flood the leader with it
// (1.35 million HEADERS+RST_STREAM frames from 8 connections made a leader
// step down; 2.65 million PINGs in 15 s were all answered). A connection
// that has made one authenticated request is never closed for this; one
// that has not is closed at the end of its budget even with a request in
// flight: requests without the token (/metrics, /healthz) would otherwise
// keep it for ever (1,300 HTTP/2 connections each holding one GET
// /healthz behind a zero flow-control window filled --max-conns, and
// clients with the token could not connect, while PINGs on them were all
// answered).
//
// Every request without the token counts toward maxRefused, served or
// refused (/healthz, /metrics, a stream reset before its handler read
// anything): counting only refusals let an HTTP/2 rapid-reset flood of
// /healthz streams from 50 connections, redialed as they were cut, keep
// thousands of handler goroutines beside Raft's and make the leader step
// down (6 of 6 runs). And at most maxUnauthed connections without an
// authenticated request are open at once: past it a new one takes the
// place of the first of them by worse (one that made a request without
// the token, then one that has not sent a whole TLS ClientHello nor a
// request, then one that has not answered, or answered more than
// answeredGrace ago without the token, then by source prefix, address
// and age), so a flood of fresh connections costs a bounded amount
// however fast it redials, and closes its own first. But not one the
// node has not heard from yet (unheard: younger than beginGrace, and it
// sent nothing or a whole first flight, read or not): then the new one is
// admitted past the cap, up to maxUnheard, and the cap is restored
// beginGrace after the last admitted past it (drainUnheard). A client
// with the token that opened 250 connections at once had each new one
// close an older one whose request, with the token, net/http had not read
// yet, or that it had not written yet: 64 of 250 were answered (outsider
// review; TestTokenBurstIsAnsweredAtTheUnauthenticatedCap).
//
// Invariant (auth-budget): with a token, no connection outlives authBy
// or maxRefused requests without having made a request with it, at most
// maxUnauthed such connections are open (maxUnheard while the worst of
// them is unheard, for beginGrace), and at the limit no new connection is
// refused while such a connection holds a slot. Guarded by
// TestUnauthenticatedRequestsDoNotHoldConnections,
// TestUnauthenticatedRequestsAreBounded,
// TestTokenBurstIsAnsweredAtTheUnauthenticatedCap and
// TestUnauthenticatedFloodClosesItsOwn.
type connLimiter struct {
	net.Listener
	max    int
	first  time.Duration // to send the first request in
	authBy time.Duration // to make an authenticated request in; 0: no token
	log    *slog.Logger

	mu   sync.Mutex
	open map[net.Conn]*limitedConn // by the conn net/http reports
	// bySource counts the open connections of each source prefix
	// (limitedConn.prefix).
	bySource map[string]int
	lastWarn time.Time
	shed     int // idle connections closed since the last warning
	// crowdShed counts connections of the source holding the most
	// closed since then (see victimLocked).
	crowdShed int
	silent    int // connections without a request closed since then
	// unauthShed counts connections, with a request but none with the
	// auth token, closed since then.
	unauthShed int

	lastAuthWarn time.Time
	unauthSlow   int // closed for no authenticated request within authBy, since the last warning
	unauthRefuse int // closed after maxRefused requests without the token, since then
	unauthCap    int // closed to admit a new one at maxUnauthed, since then
	unauthed     int // open connections that have made no authenticated request
	// unauthPer counts those by source prefix and by address (worse),
	// kept as they come and go: rebuilt for every connection admitted at
	// the cap, the counts were half a node's CPU under a flood of silent
	// connections from many /24s, on the one goroutine that accepts
	// (outsider review s38).
	unauthPer unauthCounts
	// drain, once connections were admitted past maxUnauthed, sheds
	// those past it beginGrace after the last of them (drainUnheard).
	drain *time.Timer

	// Connections closed since the start (Node.Refusals): to admit a
	// new one at max (or refused at it), for no authenticated request within authBy, after
	// maxRefused requests without the token, and to admit a new one at
	// maxUnauthed.
	closedMax, closedAuthSlow, closedAuthRefused, closedUnauthCap atomic.Uint64
	// failedTLS counts the connections whose TLS handshake failed (or
	// never finished), those the limiter closed itself aside.
	failedTLS atomic.Uint64
	// closedPerSource counts the connections refused, or of their own
	// source closed to admit them, at a source's share (perSource);
	// srcWarn limits their log lines, and those of connections refused
	// at max (closedMax).
	closedPerSource atomic.Uint64
	srcWarn         *loglimit.Limiter

	// handshakes, on a TLS API, bounds how fast connections start their
	// TLS handshakes (nil: unbounded, or no TLS); closedHandshakeRate
	// counts those closed past it, hsWarn limits their log lines.
	handshakes          *transport.HandshakeLimit
	closedHandshakeRate atomic.Uint64
	hsWarn              *loglimit.Limiter

	// tlsAPI: the API is served with TLS (refuseSaying answers no
	// connection before its handshake). answering holds a token per
	// refusal answer being written (at most maxAnswers); unanswered
	// counts the connections refused silently past that bound.
	tlsAPI     bool
	answering  chan struct{}
	unanswered atomic.Uint64
}

// maxRefused is how many requests without the auth token a connection
// may make before it is closed. A client that lacks the token learns it
// from the first answer; a few more let a pool's requests in flight be
// answered, and a probe that keeps its connection make a few checks.
const maxRefused = 16

// maxUnauthed bounds the open connections, with an auth token, that have
// made no request with it: a client sends one within milliseconds of
// connecting. A burst of more at once is admitted past it while the node
// has not heard them yet (unheard, maxUnheard).
const maxUnauthed = 64

// firstRequestTimeout is the connLimiter's first with the default
// ReadTimeout: a client sends its first request (on a TLS port after the
// handshake) at once, and a TLS handshake takes milliseconds, tens on a
// busy machine.
const firstRequestTimeout = 2 * time.Second

func newConnLimiter(ln net.Listener, max int, first time.Duration, log *slog.Logger) *connLimiter {
	return &connLimiter{Listener: ln, max: max, first: first, log: log, open: map[net.Conn]*limitedConn{}, bySource: map[string]int{},
		hsWarn: loglimit.New(), srcWarn: loglimit.New(), answering: make(chan struct{}, maxAnswers)}
}

// connsPerSource is the most connections one source (an IPv4 /24, an
// IPv6 /64) may hold of a limit of limit: a quarter, at least 64 (all of
// it, below 64), as watchesPerSource.
func connsPerSource(limit int) int { return max(limit/4, min(limit, 64)) }

// limitedConn is one admitted connection. Its fields but once are
// guarded by l.mu.
type limitedConn struct {
	net.Conn
	l         *connLimiter
	admitted  time.Time
	idleSince time.Time // since admitted or idle; zero while busy
	fresh     bool      // no request yet: the read deadline is at most firstBy
	firstBy   time.Time
	wantRead  time.Time // the read deadline last asked for
	authed    bool      // made a request with the auth token
	// begun: it sent a whole TLS ClientHello (on a TLS API, see
	// noteHellos) or its first request (HTTP/2: its preface), and so
	// cost its sender more than a byte (see worse).
	begun bool
	// flightUntil: until then it ranks as one whose request is on its
	// way (see inFlight): oldestUnauthed found bytes of it waiting.
	flightUntil time.Time
	refused     int // requests made without it
	// overPending counts its requests refused for pending-bodies since
	// one was admitted (pendingRefused, pendingAdmitted).
	overPending atomic.Int32
	source      string // the remote IP
	prefix      string // its source prefix (IPv4 /24, IPv6 /64): connLimiter.bySource
	authTimer   *time.Timer
	once        sync.Once
	closedBy    bool // the limiter closed it (a refusal of its own)
	// answered: 0, then 1 once this side wrote, then 2 once the peer
	// sent something after that (a TLS client's second flight, a request
	// after an answer): a peer that answers back is evicted after those
	// that never did (atomic: Read and Write are the hot path).
	answered atomic.Int32
	// tokenSeen mirrors authed for readers without the limiter's lock.
	tokenSeen atomic.Bool
	// got counts the bytes read from it, up to firstFlight (unheard).
	got atomic.Int64
	// lastRead is when the node last read from it (UnixNano), until it
	// made a request with the token (inFlight).
	lastRead atomic.Int64

	// bodyMu guards reqs and bodies (taken after l.mu, if both are).
	bodyMu sync.Mutex
	reqs   int                     // requests in its handlers (countRequests)
	bodies map[*bodyWatch]struct{} // their bodies the guard reads
	// waiting counts its HTTP/2 request bodies waiting, unread, for
	// their source's turn or room (limitedBody.hold).
	waiting int
	// cancel ends the context of its requests (connContext) once it is
	// closed (shut); nil until net/http asked for that context.
	cancel context.CancelCauseFunc
	shut   bool // closed: by the limiter, net/http or a refusal
}

// bodyWatch is the progress of one request body on a limitedConn (see
// stalled). Guarded by the connection's bodyMu.
type bodyWatch struct {
	since   time.Time // its first read; zero before
	got     int64     // bytes read
	reading bool      // a read of it waits for the client
	// readAt is when the read in progress began; waited sums the time
	// its reads spent waiting for the client, that one aside.
	readAt time.Time
	waited time.Duration
	// writeAt is when its unary reply began to be written (zero before):
	// a reply still being written stallGrace later waits on its client.
	writeAt time.Time
}

// Stalled bodies: a connection whose every request in flight has waited
// on its body for at least stallGrace after the body's first read, having
// received fewer than stallRate bytes a second of it, is stalled (see
// limitedConn.stalled). A client sends a request body in one flight,
// milliseconds; at stallRate a body still unfinished after stallGrace
// has 8 KiB, past the 4 KiB a body has for free (bodyUnits), so a sender
// fast enough not to stall pays the API budget for its bytes.
const (
	stallGrace = 2 * time.Second
	stallRate  = 4 << 10
)

// requestStarted notes a request of c in a handler (countRequests).
func (c *limitedConn) requestStarted() {
	c.bodyMu.Lock()
	c.reqs++
	c.bodyMu.Unlock()
}

// requestDone notes the end of one.
func (c *limitedConn) requestDone() {
	c.bodyMu.Lock()
	c.reqs--
	c.bodyMu.Unlock()
}

// waitBody notes that one more of c's HTTP/2 request bodies waits for
// its turn or room, and reports false, noting nothing, if
// maxWaitingBodies wait already; doneWaiting notes one less.
func (c *limitedConn) waitBody() bool {
	c.bodyMu.Lock()
	defer c.bodyMu.Unlock()
	if c.waiting >= maxWaitingBodies {
		return false
	}
	c.waiting++
	return true
}

func (c *limitedConn) doneWaiting() {
	c.bodyMu.Lock()
	c.waiting--
	c.bodyMu.Unlock()
}

// watchBody returns the watch of a request body of c, to be given back
// by unwatchBody when the request ends.
func (c *limitedConn) watchBody() *bodyWatch {
	w := &bodyWatch{}
	c.bodyMu.Lock()
	if c.bodies == nil {
		c.bodies = map[*bodyWatch]struct{}{}
	}
	c.bodies[w] = struct{}{}
	c.bodyMu.Unlock()
	return w
}

// unwatchBody forgets w.
func (c *limitedConn) unwatchBody(w *bodyWatch) {
	c.bodyMu.Lock()
	delete(c.bodies, w)
	c.bodyMu.Unlock()
}

// bodyRead notes that a read of w's body begins (start) or returned n
// bytes.
func (c *limitedConn) bodyRead(w *bodyWatch, start bool, n int) {
	now := time.Now()
	c.bodyMu.Lock()
	if start && w.since.IsZero() {
		w.since = now
	}
	switch {
	case start:
		w.readAt = now
	case w.reading:
		w.waited += now.Sub(w.readAt)
	}
	w.reading = start
	w.got += int64(n)
	c.bodyMu.Unlock()
}

// replyWriting notes that the reply of the request whose body w watches
// begins to be written (replyWriter).
func (c *limitedConn) replyWriting(w *bodyWatch) {
	now := time.Now()
	c.bodyMu.Lock()
	w.writeAt = now
	c.bodyMu.Unlock()
}

// bodyPace reports, at now, how many bytes of the body w watches have
// arrived, how long its reads have waited for them in all (not its waits
// for turns of the API budget), and how long ago its first read began.
func (c *limitedConn) bodyPace(w *bodyWatch, now time.Time) (got int64, waited, age time.Duration) {
	c.bodyMu.Lock()
	defer c.bodyMu.Unlock()
	waited = w.waited
	if w.reading {
		waited += now.Sub(w.readAt)
	}
	if !w.since.IsZero() {
		age = now.Sub(w.since)
	}
	return w.got, waited, age
}

// stalled reports whether c is stalled at now (see stallGrace): it has
// requests in flight, and each of them waits on a body it began to read
// stallGrace ago or more and has received fewer than stallRate bytes a
// second of, or on its client to read a unary reply it began to write
// stallGrace ago or more; and since when (its newest such body's first
// read, or reply's first write). A stalled connection does no work: it
// is closed to make room as an idle one is (slowly trickled bodies from
// 16 /24s, each at its fair share, held every slot of --max-conns, and
// new clients were refused: outsider review s35; so did connections
// granting no HTTP/2 window to their replies, review of 91beb32). A
// request waiting on the node (its turn of the API budget, a waiting
// acquire, a watch) or on anything but its client keeps it busy.
func (c *limitedConn) stalled(now time.Time) (time.Time, bool) {
	c.bodyMu.Lock()
	defer c.bodyMu.Unlock()
	if c.reqs == 0 || len(c.bodies) < c.reqs {
		return time.Time{}, false
	}
	var since time.Time
	for w := range c.bodies {
		at := w.since
		if !w.writeAt.IsZero() {
			if now.Sub(w.writeAt) < stallGrace {
				return time.Time{}, false
			}
			at = w.writeAt
		} else if d := now.Sub(w.since); !w.reading || w.since.IsZero() || d < stallGrace || float64(w.got) >= stallRate*d.Seconds() {
			return time.Time{}, false
		}
		if at.After(since) {
			since = at
		}
	}
	return since, true
}

// countRequests is the API server's outermost handler: it counts the
// requests in flight on each connection, for stalled.
func countRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lc := requestConn(r)
		if lc == nil {
			next.ServeHTTP(w, r)
			return
		}
		lc.requestStarted()
		defer lc.requestDone()
		next.ServeHTTP(w, r)
	})
}

// awaitsToken reports whether the node requires an auth token and c has
// not yet made a request with it.
func (c *limitedConn) awaitsToken() bool { return c.l.authBy > 0 && !c.tokenSeen.Load() }

// Read notes the peer's answer to what this side wrote (see answered).
// (A TLS API's handshakes are bounded at the ClientHello, by the
// HandshakeLimit's Guard of the server's TLS configuration: see
// refusedHello.)
func (c *limitedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.answered.Load() == 1 {
		c.answered.Store(2)
	}
	if n > 0 && c.got.Load() < firstFlight {
		c.got.Add(int64(n))
	}
	if n > 0 && !c.tokenSeen.Load() {
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// Write notes that this side wrote (see answered).
func (c *limitedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 && c.answered.Load() == 0 {
		c.answered.CompareAndSwap(0, 1)
	}
	return n, err
}

// SetReadDeadline sets the read deadline t, or firstBy if earlier while
// the connection has not sent its first request.
func (c *limitedConn) SetReadDeadline(t time.Time) error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	c.wantRead = t
	return c.Conn.SetReadDeadline(c.readDeadlineLocked())
}

// SetDeadline sets the write deadline t and the read deadline as
// SetReadDeadline does.
func (c *limitedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

func (c *limitedConn) readDeadlineLocked() time.Time {
	t := c.wantRead
	if c.fresh && (t.IsZero() || t.After(c.firstBy)) {
		t = c.firstBy
	}
	return t
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c) })
	c.shutDown()
	return c.Conn.Close()
}

// errConnClosed ends the requests of a client API connection closed
// under them (limitedConn.shutDown).
var errConnClosed = errors.New("the client API connection was closed (by its client, or by the agent: --max-conns, the auth token's deadline)")

// shutDown ends the context of c's requests: c is closed. net/http's
// HTTP/1 server cancels a request's context only from its background
// read of the connection, which begins once the body has been read; a
// handler waiting for its turn of the API budget (paceHTTP1, payUnits)
// or for a large body's turn (bodySlot) before it reads the body would
// never learn that its connection was closed, by its client or by the
// limiter, and kept waiting, its buffers held: an outsider's 800
// connections sending 261 KB Extends, cut by the auth deadline as they
// waited and redialed, left 3,300 such handlers on 220 connections and
// took a leader from 30 to 300 MB (review s35). Invariant
// (closed-conn-ends-requests): no handler of a closed API connection
// waits for a turn. Guarded by TestClosedConnectionsEndTheirWaits.
func (c *limitedConn) shutDown() {
	c.l.mu.Lock()
	c.shut = true
	cancel := c.cancel
	c.l.mu.Unlock()
	if cancel != nil {
		cancel(errConnClosed)
	}
}

// authenticated notes that c made a request with the auth token: it is
// never closed for the lack of one.
func (c *limitedConn) authenticated() {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if !c.authed {
		c.authed = true
		c.tokenSeen.Store(true)
		if c.authTimer != nil {
			c.authTimer.Stop()
		}
		if c.l.open[c.Conn] == c {
			c.l.unauthed--
			c.l.unauthPer.add(c, -1)
		}
	}
}

// unauthedRequest notes a request of c without the auth token (refused,
// or served without it), and reports whether c has made maxRefused of
// them without one authenticated: its caller closes it once the answer
// is sent.
func (c *limitedConn) unauthedRequest() bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.authed {
		return false
	}
	if c.refused++; c.refused < maxRefused {
		return false
	}
	if c.refused == maxRefused { // requests still in flight end after it
		l.unauthRefuse++
		l.closedAuthRefused.Add(1)
		l.warnAuthLocked()
	}
	return true
}

// pendingRefused notes a request of c refused for pending-bodies, and
// reports whether c has had maxRefused of them in a row: its caller
// closes it once the answer is sent, with the requests it holds open. A
// client that opens a new stream at each refusal otherwise had the node
// refuse 8,600 requests a second, and a lock loop beside it fell to a
// fifth of its rate; closed, it must connect again, within its source's
// connections. Only in a row: a client's long-lived connection that
// meets a refusal now and then, among requests admitted, is not closed
// with its waiting acquires and watches (adversarial review s39).
func (c *limitedConn) pendingRefused() bool {
	return c.overPending.Add(1) >= maxRefused
}

// pendingAdmitted notes a request of c admitted past pending-bodies.
func (c *limitedConn) pendingAdmitted() {
	if c.overPending.Load() != 0 {
		c.overPending.Store(0)
	}
}

// authExpired closes c if it has made no authenticated request within
// the budget, with its requests in flight: only a request with the token
// keeps a connection (a 3 s /metrics scrape carrying it is not cut; one
// without it is).
func (c *limitedConn) authExpired() {
	l := c.l
	l.mu.Lock()
	if c.authed {
		l.mu.Unlock()
		return
	}
	l.unauthSlow++
	l.closedAuthSlow.Add(1)
	c.closedBy = true
	l.warnAuthLocked()
	l.mu.Unlock()
	c.Close()
}

func (l *connLimiter) warnAuthLocked() {
	if time.Since(l.lastAuthWarn) < time.Minute {
		return
	}
	l.lastAuthWarn = time.Now()
	l.log.Warn(fmt.Sprintf("closing client API connections without the auth token: none may go %v or %d requests without a request with it, and at most %d may be open (clients need the agents' --auth-token)", l.authBy, maxRefused, maxUnauthed),
		"closed_slow", l.unauthSlow, "closed_refused", l.unauthRefuse, "closed_over_cap", l.unauthCap)
	l.unauthSlow, l.unauthRefuse, l.unauthCap = 0, 0, 0
}

// Accept waits for a connection it admits: one refused (at its source's
// share, or at max: see slot) is closed, and Accept waits for the next.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c := &limitedConn{Conn: raw, l: l, fresh: true, source: sourceIP(raw.RemoteAddr()),
			prefix: transport.SourcePrefix(raw.RemoteAddr(), transport.HandshakeV4Bits)}
		if l.slot(c) {
			return c, nil
		}
	}
}

// slot gives c a slot. It reports false if c was refused (and closed):
// at its source's share, or at max if no connection may make room for it
// (see victimLocked).
func (l *connLimiter) slot(c *limitedConn) bool {
	l.mu.Lock()
	if share := connsPerSource(l.max); share < l.max && l.bySource[c.prefix] >= share {
		// Its own source's connections make room for it, or none.
		victim := l.pickLocked(func(o *limitedConn) bool { return o.prefix == c.prefix }, false)
		if victim != nil {
			l.dropLocked(victim)
			l.admitLocked(c)
		}
		l.mu.Unlock()
		l.closedPerSource.Add(1)
		if victim != nil {
			victim.evicted()
		} else {
			l.refuseSaying(c.Conn, http.StatusTooManyRequests, "max_conns_per_source",
				fmt.Sprintf("this client source (IPv4 /24, IPv6 /64) holds %d connections, the most one may (a quarter of the agent's --max-conns %d, at least 64), all busy: raise --max-conns if the clients are yours", share, l.max))
		}
		l.warnPerSource(c, share, victim != nil)
		return victim != nil
	}
	if l.authBy > 0 && l.unauthed >= maxUnauthed {
		// The worst without the token make room, unless unheard: then c
		// is admitted past the cap (as any connection, below), and the
		// cap is restored once their grace is over.
		shed := l.shedUnauthedLocked(maxUnauthed - 1)
		if l.unauthed >= maxUnauthed {
			l.drainLaterLocked(beginGrace)
		}
		defer func() {
			for _, v := range shed {
				v.evicted()
			}
		}()
	}
	if len(l.open) < l.max {
		l.admitLocked(c)
		l.mu.Unlock()
		return true
	}
	victim, crowded, fair := l.victimLocked(c.prefix)
	if victim != nil {
		l.dropLocked(victim)
		l.admitLocked(c)
		l.closedMax.Add(1)
		switch {
		case crowded:
			l.crowdShed++
			l.warnLocked("closing a connection of the client source (IPv4 /24, IPv6 /64) holding the most connections, or an idle or stalled one (a request body trickling) of a source holding more than --max-conns over the active sources, to admit one from another")
		case victim.fresh:
			l.silent++
			l.warnLocked("closing the connection idle longest (one that has sent no request yet) to admit a new one")
		case l.authBy > 0 && !victim.authed:
			l.unauthShed++
			l.warnLocked("closing the oldest connection without a request with the auth token to admit a new one")
		default:
			l.shed++
			l.warnLocked("closing the connection idle longest to admit a new one")
		}
		l.mu.Unlock()
		victim.evicted()
		return true
	}
	l.closedMax.Add(1)
	l.mu.Unlock()
	l.refuseSaying(c.Conn, http.StatusServiceUnavailable, "max_conns",
		fmt.Sprintf("the agent holds its --max-conns %d client API connections, none of which may make room: raise --max-conns if the clients are yours", l.max))
	l.warnRefusedMax(c, fair)
	return false
}

// victimLocked returns the connection to close, at max, to admit one from
// source prefix, or nil if none may be (the new one is refused), and a
// source's fair share of the slots (fairConns). crowded says that it is
// one of a source holding more than its share (see connLimiter): when
// that source holds more than its fair share, and more than prefix would
// once the new one is admitted, its worst connection without the token
// or its idle longest; if none of its is idle, with a token any
// connection without it (a request without the token is not worth a
// busy slot: an outsider without it, dialing from fresh addresses, would
// otherwise close busy connections of the clients that have it); then
// its oldest busy one. Otherwise, the worst without the token, or, of
// the connections that have sent no request yet and those of prefix
// itself, the idle longest (or stalled: limitedConn.stalled); then, if
// prefix would hold at most max over the active sources (the fair share
// without its floor), an idle or stalled connection of a source holding
// more than that and more than prefix would, of the source holding the
// most first. A source within its fair share keeps its working (busy,
// not stalled) connections, and within max over the active sources all
// of them. Called with l.mu held.
func (l *connLimiter) victimLocked(prefix string) (victim *limitedConn, crowded bool, fair int) {
	top, active := 0, len(l.bySource)
	for _, n := range l.bySource {
		top = max(top, n)
	}
	if l.bySource[prefix] == 0 {
		active++
	}
	fair = fairConns(l.max, active)
	if top > fair && top > l.bySource[prefix]+1 {
		inTop := func(o *limitedConn) bool { return l.bySource[o.prefix] == top }
		if v := l.pickLocked(inTop, false); v != nil {
			return v, true, fair
		}
		if v := l.oldestUnauthed(); v != nil {
			return v, false, fair
		}
		return l.pickLocked(inTop, true), true, fair
	}
	if v := l.oldestUnauthed(); v != nil {
		return v, false, fair
	}
	if v := l.pickLocked(func(o *limitedConn) bool { return o.fresh || o.prefix == prefix }, false); v != nil {
		return v, false, fair
	}
	// The floor of fairConns protects working connections only: a
	// source within limit / active once admitted takes an idle or
	// stalled one of a source holding more than that (the most first),
	// so that sources holding the floor each cannot lock every other
	// out with connections that do nothing.
	own := l.bySource[prefix] + 1
	if strict := max(l.max/active, 1); own <= strict {
		now := time.Now()
		var v *limitedConn
		var vIdle time.Time
		for _, c := range l.open {
			n := l.bySource[c.prefix]
			if n <= strict || n <= own {
				continue
			}
			if r, idle := l.rankLocked(c, now); r == 1 && (v == nil || n > l.bySource[v.prefix] ||
				n == l.bySource[v.prefix] && idle.Before(vIdle)) {
				v, vIdle = c, idle
			}
		}
		if v != nil {
			return v, true, fair
		}
	}
	return nil, false, fair
}

// fairConns is a source's fair share of limit connections among active
// sources: limit / active, at least a sixteenth of limit (64 of the
// default 1,024; below the per-source share, connsPerSource, so one
// source at that share is still over it) and 1. A source holding at
// most that many keeps its connections at the limit: 50 /24s holding
// 22 busy connections each, fewer than a client /24's 25 but more than
// 1,024 / 51, would otherwise take the client's place (outsider review
// s32 N5).
func fairConns(limit, active int) int { return max(limit/max(active, 1), limit/16, 1) }

// warnRefusedMax logs, once per loglimit.Every, that c was refused at
// max, every source holding at most its fair share fair, or its own
// connections all busy.
func (l *connLimiter) warnRefusedMax(c *limitedConn, fair int) {
	ok, skipped := l.srcWarn.Allow("max_conns")
	if !ok {
		return
	}
	args := []any{"source", c.prefix, "max_conns", l.max, "fair_share", fair, "closed", l.closedMax.Load()}
	if skipped > 0 {
		args = append(args, loglimit.Skipped, skipped)
	}
	l.log.Warn(fmt.Sprintf("refused a client API connection at the agent's --max-conns %d: no client source (IPv4 /24, IPv6 /64) holds more than its fair share of %d connections (--max-conns over the active sources, at least a sixteenth), nor an idle or stalled one past --max-conns over the active sources, and the new connection's own source has none idle to replace (raise --max-conns if the clients are yours)", l.max, fair), args...)
}

// pickLocked returns, of the connections for which in is true, the one to
// close first: one without the auth token (by worse), then the idle
// longest, then, if busy is set, the oldest busy one; or nil. Called with
// l.mu held.
func (l *connLimiter) pickLocked(in func(*limitedConn) bool, busy bool) *limitedConn {
	per := l.unauthPer
	now := time.Now()
	var v *limitedConn
	vr := 0
	var vIdle time.Time
	for _, c := range l.open {
		if !in(c) {
			continue
		}
		cr, idle := l.rankLocked(c, now)
		if cr == 2 && !busy {
			continue
		}
		if v == nil || cr < vr || cr == vr && (cr == 0 && worse(c, v, per, now) ||
			cr == 1 && idle.Before(vIdle) || cr == 2 && c.admitted.Before(v.admitted)) {
			v, vr, vIdle = c, cr, idle
		}
	}
	return v
}

// rankLocked ranks c for pickLocked at now: 0 without the auth token, 1
// idle or stalled (see limitedConn.stalled), since idle, 2 busy. Called
// with l.mu held.
func (l *connLimiter) rankLocked(c *limitedConn, now time.Time) (int, time.Time) {
	switch {
	case l.authBy > 0 && !c.authed:
		return 0, time.Time{}
	case !c.idleSince.IsZero():
		return 1, c.idleSince
	}
	if since, ok := c.stalled(now); ok {
		return 1, since
	}
	return 2, time.Time{}
}

// warnPerSource logs, once per loglimit.Every, that c was refused at its
// source's share of connections, or took the place of one of its own
// (replaced).
func (l *connLimiter) warnPerSource(c *limitedConn, share int, replaced bool) {
	ok, skipped := l.srcWarn.Allow("max_conns_per_source")
	if !ok {
		return
	}
	args := []any{"source", c.prefix, "per_source", share, "max_conns", l.max, "closed", l.closedPerSource.Load()}
	if skipped > 0 {
		args = append(args, loglimit.Skipped, skipped)
	}
	what := "refused a client API connection: every connection of its source is busy"
	if replaced {
		what = "closed a client API connection of the source of a new one, to admit it"
	}
	l.log.Warn(what+fmt.Sprintf(": the source (IPv4 /24, IPv6 /64) holds %d connections, the most one may have (a quarter of the agent's --max-conns %d, at least 64; raise --max-conns if the clients are yours)", share, l.max), args...)
}

// refusedHello is the refused hook of the API's HandshakeLimit.Guard:
// conn, whose ClientHello the limit did not allow, is the connection
// crypto/tls was given, the limiter's own.
func (l *connLimiter) refusedHello(conn net.Conn) {
	if c, ok := conn.(*limitedConn); ok {
		l.refuseHandshake(c)
	}
}

// noteHellos returns a clone of cfg (nil if cfg is) whose
// GetConfigForClient marks the connection begun once crypto/tls has read
// its whole ClientHello, then calls cfg's own, if any. Wrapped by the
// HandshakeLimit's Guard, it marks only the handshakes the limit allowed.
func (l *connLimiter) noteHellos(cfg *tls.Config) *tls.Config {
	if cfg == nil {
		return nil
	}
	cfg = cfg.Clone()
	prev := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if c, ok := hello.Conn.(*limitedConn); ok {
			l.mu.Lock()
			c.begun = true
			l.mu.Unlock()
		}
		if prev != nil {
			return prev(hello)
		}
		return nil, nil
	}
	return cfg
}

// refuseHandshake closes c, whose TLS handshake the limiter's
// HandshakeLimit did not allow at its ClientHello, before the node did any
// crypto for it, counts it and logs it once per 10 s.
func (l *connLimiter) refuseHandshake(c *limitedConn) {
	l.mu.Lock()
	c.closedBy = true // not a failed handshake of its own (failedTLS)
	l.mu.Unlock()
	l.closedHandshakeRate.Add(1)
	c.Close()
	if ok, skipped := l.hsWarn.Allow("handshake_rate"); ok {
		args := []any{"remote", c.source, "closed", l.closedHandshakeRate.Load()}
		if skipped > 0 {
			args = append(args, loglimit.Skipped, skipped)
		}
		l.log.Warn(fmt.Sprintf("refused a client API connection at its TLS ClientHello: past %d handshakes a second from its /%d (IPv6 /64) or %d from all sources (raise the agent's --max-handshake-rate-per-source or --max-handshake-rate if the clients are yours)",
			l.handshakes.PerSource(), transport.HandshakeV4Bits, l.handshakes.Total()), args...)
	}
}

// evicted closes c, whose slot dropLocked already gave away.
func (c *limitedConn) evicted() {
	c.l.mu.Lock()
	c.closedBy = true
	c.l.mu.Unlock()
	c.once.Do(func() {}) // its Close must not release a slot again
	c.shutDown()
	c.Conn.Close()
}

// dropLocked takes c's slot away, to close it. Called with l.mu held.
func (l *connLimiter) dropLocked(c *limitedConn) {
	if l.open[c.Conn] != c {
		return
	}
	delete(l.open, c.Conn)
	if l.bySource[c.prefix]--; l.bySource[c.prefix] <= 0 {
		delete(l.bySource, c.prefix)
	}
	if c.authTimer != nil {
		c.authTimer.Stop()
	}
	if l.authBy > 0 && !c.authed {
		l.unauthed--
		l.unauthPer.add(c, -1)
	}
}

// admitLocked gives c a slot, and its deadline for its first request.
// Called with l.mu held.
func (l *connLimiter) admitLocked(c *limitedConn) {
	l.open[c.Conn] = c
	l.bySource[c.prefix]++
	if l.authBy > 0 {
		l.unauthed++
		l.unauthPer.add(c, 1)
	}
	c.admitted = time.Now()
	c.idleSince = c.admitted
	c.firstBy = c.idleSince.Add(l.first)
	c.Conn.SetReadDeadline(c.readDeadlineLocked())
	if l.authBy > 0 {
		c.authTimer = time.AfterFunc(l.authBy, c.authExpired)
	}
}

// shedUnauthedLocked takes the slots of connections without the auth
// token, the worst first (oldestUnauthed), while more than keep are open,
// and returns them for the caller to close (evicted) once it has let
// l.mu go. It stops at one that is unheard while fewer than maxUnheard
// are open: a client's connection whose first flight the node has not
// read yet, or that its client has not written yet. Called with l.mu
// held.
func (l *connLimiter) shedUnauthedLocked(keep int) (shed []*limitedConn) {
	now := time.Now()
	for l.unauthed > keep {
		v := l.oldestUnauthed()
		if v == nil || l.unauthed < maxUnheard && v.unheard(now) {
			break
		}
		l.dropLocked(v)
		l.closedUnauthCap.Add(1)
		l.unauthCap++
		shed = append(shed, v)
	}
	if len(shed) > 0 {
		l.warnAuthLocked()
	}
	return shed
}

// drainLaterLocked has drainUnheard run after d, and not before. Called
// with l.mu held.
func (l *connLimiter) drainLaterLocked(d time.Duration) {
	if l.drain == nil {
		l.drain = time.AfterFunc(d, l.drainUnheard)
		return
	}
	l.drain.Reset(d)
}

// drainUnheard restores maxUnauthed after connections were admitted past
// it: it closes those past it, worst first (shedUnauthedLocked), or, if
// the worst is still unheard, runs again at the end of its grace. It runs
// beginGrace after the last connection admitted past the cap, when every
// connection admitted past it has had its grace: run at the end of the
// first one's, the next to go would be a client that connected before a
// flood and was waiting for its first request to go, now stale, and not
// one of the flood's (TestUnauthenticatedFloodClosesItsOwn).
func (l *connLimiter) drainUnheard() {
	l.mu.Lock()
	shed := l.shedUnauthedLocked(maxUnauthed)
	if l.unauthed > maxUnauthed {
		if v := l.oldestUnauthed(); v != nil {
			l.drainLaterLocked(max(beginGrace-time.Since(v.admitted), time.Millisecond))
		}
	}
	l.mu.Unlock()
	for _, v := range shed {
		v.evicted()
	}
}

// maxUnheard bounds the connections without an authenticated request
// while the worst of them is unheard: past maxUnauthed a new connection
// is admitted without closing an unheard one, up to this many; at it the
// worst goes, unheard or not. A quarter of the default --max-conns, the
// most one source may hold: a client's burst of 250 connections at once
// fits, and a flood of connections that stay silent costs at most four
// times the cap, each for beginGrace.
const maxUnheard = 4 * maxUnauthed

// firstFlight is the fewest bytes a client's first flight has (a TLS
// record header; a request line, the HTTP/2 preface are longer): a
// connection that sent fewer, a byte and a hang-up, is not unheard.
const firstFlight = 5

// unheard reports whether c, without the auth token, is one the node has
// not heard from yet, at now: younger than beginGrace, with no request
// made without the token, and that has sent either nothing (a client that
// dials its pool's connections before writing on any: the outsider's 250
// connections, opened at once, each one Status request) or a first
// flight, at least firstFlight bytes, read or waiting in its socket (a
// burst's requests wait there until net/http reads them). Such a
// connection is not closed for maxUnauthed, but only at maxUnheard: each
// new connection of a burst of 250 had closed an older one whose request
// with the token sat unread in its socket, and 64 of the 250 were
// answered. Where the socket cannot tell what waits in it (not Linux),
// one that has sent a byte the node has not read yet is unheard too.
// Called with c.l.mu held.
func (c *limitedConn) unheard(now time.Time) bool {
	if c.refused > 0 || now.Sub(c.admitted) >= beginGrace {
		return false
	}
	sent := c.sent()
	return sent == 0 || sent >= firstFlight
}

// sent returns the bytes c has sent as far as firstFlight: read by the
// node, or waiting in its socket (looked up only if fewer were read).
func (c *limitedConn) sent() int64 {
	sent := c.got.Load()
	if sent < firstFlight {
		if sc, ok := c.Conn.(syscall.Conn); ok {
			if n, ok := unread(sc); ok {
				sent += int64(n)
			}
		}
	}
	return sent
}

// oldestUnauthed returns, with an auth token, the connection to close
// first (worse) of those that have made no request with it (busy or
// not), or nil. Whether the worst has sent its first flight is looked up
// in its socket (one system call) only when it comes to be the worst: if
// it has, it ranks better, and the worst is looked for again. Called with
// l.mu held.
func (l *connLimiter) oldestUnauthed() *limitedConn {
	if l.authBy <= 0 {
		return nil
	}
	now := time.Now()
	for looked := 0; ; looked++ {
		var v *limitedConn
		for _, c := range l.open {
			if c.authed {
				continue
			}
			if v == nil || worse(c, v, l.unauthPer, now) {
				v = c
			}
		}
		// Past a few lookups the worst are a flood's whose requests are
		// on their way: rank them as they are.
		if v == nil || v.inFlight(now) || looked == maxFlightLookups || !v.bytesWaiting() {
			return v
		}
		v.flightUntil = now.Add(flightGrace)
	}
}

// maxFlightLookups bounds the sockets oldestUnauthed looks into at once.
const maxFlightLookups = 8

// inFlight reports whether c's first request may be on its way: bytes
// of it were found waiting in its socket, unread, within flightGrace
// (bytesWaiting; a burst's requests wait there until net/http reads them), or
// it sent a first flight (firstFlight bytes) that the node read within
// flightGrace and may still be reading or handling. A connection that
// sent its HTTP/2 preface and nothing more ranked as one with its request
// on its way for as long as it was open, and 64 /24s of them closed a
// client pool's 8 connections (its /24's count the higher) before any of
// theirs (outsider review s39, C1). On a TLS API a first flight (a whole
// ClientHello, whose answer the client must read and answer before it
// sends a request: a round trip and its crypto, over a second on a loaded
// host) keeps it in flight: expiring it closed one of 20 TLS clients
// beside a one-byte flood mid-handshake
// (TestAPIOneByteConnectionsEvictNoTLSClients, beside two busy loops).
// Called with c.l.mu held.
func (c *limitedConn) inFlight(now time.Time) bool {
	if now.Before(c.flightUntil) {
		return true
	}
	if c.got.Load() < firstFlight {
		return false
	}
	return c.l.tlsAPI || now.Sub(time.Unix(0, c.lastRead.Load())) < flightGrace
}

// bytesWaiting reports whether bytes c sent wait unread in its socket (one
// system call; false where the socket cannot tell).
func (c *limitedConn) bytesWaiting() bool {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		if n, ok := unread(sc); ok && n > 0 {
			return true
		}
	}
	return false
}

// flightGrace is how long after the node last read a connection's bytes
// it may still be taking its request in (see inFlight); an answer is
// kept as long.
const flightGrace = 500 * time.Millisecond

// unauthCounts counts the open connections without the auth token by
// source prefix (limitedConn.prefix) and by address (source), for worse.
type unauthCounts struct{ byPrefix, byAddr map[string]int }

// add counts c in (d 1) or out (d -1).
func (u *unauthCounts) add(c *limitedConn, d int) {
	if u.byPrefix == nil {
		u.byPrefix, u.byAddr = map[string]int{}, map[string]int{}
	}
	count(u.byPrefix, c.prefix, d)
	count(u.byAddr, c.source, d)
}

// count adds d to m[k], deleting it at zero.
func count(m map[string]int, k string, d int) {
	if m[k] += d; m[k] <= 0 {
		delete(m, k)
	}
}

// worse reports whether c is to be closed before v, both without the
// token, at now:
//
//  1. one that made requests without it first;
//  2. then one that has not begun within beginGrace of its admission:
//     it has not sent a whole TLS ClientHello, nor a request (see
//     limitedConn.begun), which a client sends in its first flight. A
//     connection that sent one byte and hung up costs nothing to open,
//     and ranked alike with a real client mid-handshake, the older of
//     which was closed: one-byte connections from 20 /24s churned the
//     cap every ~16 ms, less than a handshake with a client certificate
//     takes on a loaded host, and 10-14 of 32-41 fresh TLS clients
//     failed (outsider review s32 N2). A younger one is not ranked by
//     it: a client whose ClientHello the server has not read yet (its
//     handshake goroutine not yet run on a loaded host) would otherwise
//     be closed before every connection of a flood that finished its
//     handshakes;
//  3. then one whose peer has not answered what this side sent (a silent
//     connection, a replayed TLS ClientHello that cannot finish its
//     handshake: from many source addresses the per-source count ties,
//     and those evicted a real client mid-handshake, 9 of 35 fresh
//     clients with the token; outsider review), or answered but made no
//     request with the token within answeredGrace of its admission: an
//     outsider that finishes its handshakes and stays silent would
//     otherwise keep the answered rank until the auth timeout, and the
//     real client still in its first round trip would be the one closed
//     (outsider review, round 3);
//  4. then one whose request is not on its way (see inFlight, as far as
//     oldestUnauthed has looked, and for flightGrace after) before one
//     whose is: a client's request with the token waits in its socket
//     for net/http to read it, and a flood of connections that send
//     nothing, spread over many /24s (fewer each than the client's),
//     closed the client's instead (outsider review s38: 8 connections at
//     once, 0-9 of 150 answered in 2 s), and one of connections that
//     send an HTTP/2 preface and nothing more did too (s39);
//  5. then one from the source (/24, /64) with more such connections,
//     then from the address with more, so that one source's flood closes
//     its own, not another source's fresh clients, however many
//     addresses it spreads over;
//  6. then the older.
//
// There is no age floor ahead of 5 (never close a connection younger
// than a floor while an older one exists, an outsider's suggestion): the
// older already goes first within a rank, and a floor ahead of the rank
// or the source count would close an older client that answered, or a
// lone client beside one address's flood, for the flood's younger
// connections (TestUnauthenticatedFloodFromManyAddressesSparesAnsweringClient,
// TestUnauthenticatedFloodClosesItsOwn).
func worse(c, v *limitedConn, per unauthCounts, now time.Time) bool {
	if cr, vr := c.refused > 0, v.refused > 0; cr != vr {
		return cr
	}
	if cs, vs := c.stale(now), v.stale(now); cs != vs {
		return cs
	}
	if ca, va := c.answeredLately(now), v.answeredLately(now); ca != va {
		return va
	}
	if cf, vf := c.inFlight(now), v.inFlight(now); cf != vf {
		return vf
	}
	if cn, vn := per.byPrefix[c.prefix], per.byPrefix[v.prefix]; cn != vn {
		return cn > vn
	}
	if cn, vn := per.byAddr[c.source], per.byAddr[v.source]; cn != vn {
		return cn > vn
	}
	return c.admitted.Before(v.admitted)
}

// beginGrace is how long after its admission a connection may go without
// a whole ClientHello or request before it ranks as junk in worse: a
// client sends either in its first flight, milliseconds after it
// connects, tens on a loaded host.
const beginGrace = 500 * time.Millisecond

// stale reports whether c has not begun (see limitedConn.begun) within
// beginGrace of its admission, as of now.
func (c *limitedConn) stale(now time.Time) bool {
	return !c.begun && now.Sub(c.admitted) >= beginGrace
}

// answeredGrace is how long after its admission a connection that
// answered (see limitedConn.answered) but made no request with the token
// keeps the answered rank in worse. A client sends its request in the
// same flight as its last handshake message, so a TLS handshake and one
// request take milliseconds, tens on a busy host; 1 s leaves a loaded
// 2-core host running tests (or a client across a continent) ten times
// that, and still ranks an outsider's silent handshakes with the
// never-answered ones for the second half of the auth timeout (2 s).
const answeredGrace = time.Second

// answeredLately reports whether c answered (see answered) within
// answeredGrace of its admission, as of now.
func (c *limitedConn) answeredLately(now time.Time) bool {
	return c.answered.Load() == 2 && now.Sub(c.admitted) < answeredGrace
}

// sourceIP is the IP of addr ("" if it has none).
func sourceIP(addr net.Addr) string {
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, _ := net.SplitHostPort(addr.String())
	return host
}

func (l *connLimiter) warnLocked(what string) {
	if time.Since(l.lastWarn) < time.Minute {
		return
	}
	l.lastWarn = time.Now()
	args := []any{"max_conns", l.max, "idle_closed", l.shed, "silent_closed", l.silent, "crowded_source_closed", l.crowdShed}
	if l.authBy > 0 {
		args = append(args, "unauthenticated_closed", l.unauthShed)
	}
	l.log.Warn("client API at its connection limit: "+what+" (raise agent --max-conns if the clients are yours)", args...)
	l.shed, l.silent, l.unauthShed, l.crowdShed = 0, 0, 0, 0
}

func (l *connLimiter) release(c *limitedConn) {
	l.mu.Lock()
	l.dropLocked(c)
	l.mu.Unlock()
}

// connKey is the context key of a request's *limitedConn.
type connKey struct{}

// connContext is the http.Server's ConnContext hook: it puts the
// *limitedConn under a request's context, for the auth guard to mark.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	if lc, ok := apiNetConn(nc).(*limitedConn); ok {
		// Its requests end when it closes (shutDown): net/http's
		// request contexts derive from this one.
		ctx, cancel := context.WithCancelCause(ctx)
		lc.l.mu.Lock()
		lc.cancel = cancel
		shut := lc.shut
		lc.l.mu.Unlock()
		if shut {
			cancel(errConnClosed)
		}
		return context.WithValue(ctx, connKey{}, lc)
	}
	return ctx
}

// requestConn returns the connection of a request served by startAPI's
// server, or nil (a program serving MountAPI on its own server).
func requestConn(r *http.Request) *limitedConn {
	lc, _ := r.Context().Value(connKey{}).(*limitedConn)
	return lc
}

// state is the http.Server's ConnState hook: it marks connections idle
// and busy. A connection is fresh, idle since it was admitted, until it
// leaves StateNew: its first request read (HTTP/1), or its HTTP/2
// preface; then its read deadline is the one net/http last asked for.
// HTTP/2 connections are reported as their frameConn.
func (l *connLimiter) state(nc net.Conn, st http.ConnState) {
	lc, ok := apiNetConn(nc).(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateNew:
		return // fresh since admitted
	case http.StateClosed:
		// A TLS connection that closes before its handshake finished
		// failed it (net/http logs why, once per 10 s): another CA, no
		// client certificate, plain HTTP, a port probe, a timeout.
		if tc, ok := nc.(*tls.Conn); ok && !lc.closedBy && !tc.ConnectionState().HandshakeComplete {
			l.failedTLS.Add(1)
		}
		return
	case http.StateIdle:
		lc.idleSince = time.Now()
	default:
		lc.idleSince = time.Time{}
	}
	if lc.fresh {
		lc.fresh = false
		lc.begun = true
		lc.Conn.SetReadDeadline(lc.readDeadlineLocked())
	}
}

// Refusal answers. A connection refused at admission (at --max-conns, or
// at its source's share of it) is one net/http never saw: nothing of it
// was read, and no request on it was served. Closed bare, it reached
// curl as "Empty reply from server", Go and Python clients as EOF or a
// reset, and its users took the agent for down. refuseSaying tells it
// why first, in its own protocol: an HTTP/1.1 503 Service Unavailable
// (max_conns: the agent is full, as a server at capacity says) or 429
// Too Many Requests (max_conns_per_source: this client's own share, as
// Consul answers its http_max_conns_per_client) with Connection: close,
// Retry-After and a body naming the refusal and the flag; to an h2c
// client (its preface read) SETTINGS and a GOAWAY ENHANCE_YOUR_CALM whose
// debug data says the same. On a TLS API it closes as before: there is no
// handshake to speak through, and the node does no crypto for a refused
// connection.
//
// It never holds the limiter: the answer is written by its own goroutine,
// at most maxAnswers at once (past them the connection is closed
// silently, counted in unanswered), each bounded by answerPeek (the
// client's first bytes, to know its protocol), answerWrite and
// answerLinger (what the client still sends is read and dropped, so that
// the close does not reset the connection before the client reads the
// answer).
//
// Connections closed after admission (evicted, past the auth deadline)
// are closed bare still: net/http owns them, a request of theirs may be
// half read by it (and then a 503 would answer a request the node may
// serve), an HTTP/2 one's framer is the server's (frameConn can only
// slip a GOAWAY in between its frames), and a TLS one may be mid-handshake.
const (
	maxAnswers   = 32
	answerPeek   = 100 * time.Millisecond
	answerWrite  = 50 * time.Millisecond
	answerLinger = 250 * time.Millisecond
)

// refuseSaying closes raw, a connection refused at admission with the
// refusal reason (Node.Refusals) and words (what the log says, and the
// flag that raises the limit), after an answer saying so if it may (see
// maxAnswers).
func (l *connLimiter) refuseSaying(raw net.Conn, status int, reason, words string) {
	if l.tlsAPI {
		raw.Close()
		return
	}
	select {
	case l.answering <- struct{}{}:
	default:
		l.unanswered.Add(1)
		raw.Close()
		return
	}
	go func() {
		defer func() { <-l.answering }()
		defer raw.Close()
		answerRefusal(raw, status, reason, words)
	}()
}

// answerRefusal writes the refusal answer on raw, in the protocol of its
// first bytes, and reads what follows for answerLinger.
func answerRefusal(raw net.Conn, status int, reason, words string) {
	raw.SetReadDeadline(time.Now().Add(answerPeek))
	first := make([]byte, len(h2Preface))
	n, _ := io.ReadFull(raw, first)
	var out []byte
	if n >= 3 && strings.HasPrefix(h2Preface, string(first[:n])) {
		out = h2Refusal(reason + ": " + words)
	} else {
		// A Connect error (the API's JSON clients read its message; curl
		// shows it as it is).
		code := connect.CodeUnavailable
		if status == http.StatusTooManyRequests {
			code = connect.CodeResourceExhausted
		}
		body, _ := json.Marshal(struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		}{code.String(), fmt.Sprintf("leasenode: connection refused (%s): %s", reason, words)})
		out = fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json\r\nLeasenode-Refusal: %s\r\nContent-Length: %d\r\n\r\n%s\n",
			status, http.StatusText(status), reason, len(body)+1, body)
	}
	raw.SetWriteDeadline(time.Now().Add(answerWrite))
	if _, err := raw.Write(out); err != nil {
		return
	}
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	raw.SetReadDeadline(time.Now().Add(answerLinger))
	io.Copy(io.Discard, io.LimitReader(raw, 64<<10))
}

// h2Refusal is a server's HTTP/2 preface (SETTINGS, empty) and a GOAWAY
// ENHANCE_YOUR_CALM with debug as its debug data. Its last stream is the
// highest: Go's HTTP/2 client then fails the requests it sent with the
// GOAWAY's words (GoAwayError), where a lower one has it retry them
// silently, with backoff up to a minute, and say nothing of the limit.
func h2Refusal(debug string) []byte {
	f := []byte{0, 0, 0, 4, 0, 0, 0, 0, 0} // SETTINGS
	n := 8 + len(debug)
	f = append(f, byte(n>>16), byte(n>>8), byte(n), frameGoAway, 0, 0, 0, 0, 0,
		0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0xb) // ENHANCE_YOUR_CALM
	return append(f, debug...)
}
