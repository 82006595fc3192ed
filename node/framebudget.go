package node

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// frameBudget bounds the HTTP/2 frames each client API connection may
// send: a token bucket per connection that fills at Limits.MaxFrameRate
// frames a second and holds a tenth of that (at least 4 frames per
// stream of Limits.MaxStreams: a client may open them all at once, each
// with HEADERS and DATA, and then reset them). A connection that sends
// faster is sent GOAWAY ENHANCE_YOUR_CALM, whose debug data names the
// limit, and closed. Every frame counts, whatever its type: HEADERS (a
// new stream), RST_STREAM, PING, SETTINGS, WINDOW_UPDATE, PRIORITY,
// CONTINUATION, DATA, and types net/http ignores; but WINDOW_UPDATEs
// that hand back the window of the server's replies are free, one per
// windowCredit bytes of DATA it sent. The bucket is small
// beside the rate so that a client cut for flooding gets little from a
// new connection: a full bucket per connection it opens.
//
// The auth budget (connLimiter) bounds what a connection without the
// token can make a node do; this bounds a connection with it. A token
// holder (or a client certificate) is trusted with leases, not with the
// node's CPU: an outsider's HTTP/2 rapid reset (HEADERS then RST_STREAM,
// in a loop) with the token made a leader step down 3 times, and 7.1
// million PINGs on connections with it stalled a cluster for up to 6.5 s,
// and a buggy client can do the same. net/http bounds neither rate: since
// Go 1.21 it runs at most MaxConcurrentStreams handlers per connection
// and closes one that queues 4 times more (ENHANCE_YOUR_CALM), and it
// closes one that leaves 10,000 control frames (PING and SETTINGS acks,
// RST_STREAM) unread, but a client that resets its streams and reads its
// replies may open streams and send PINGs as fast as the server can take
// them.
//
// net/http gives its HTTP/2 server the connection's bytes in two places,
// both TLSNextProto hooks: "h2" hands over a TLS connection whose ALPN
// chose HTTP/2, and "unencrypted_http2" a plain one that opened with the
// HTTP/2 preface (h2c). install wraps both: the connection becomes a
// frameConn, which reads the frame headers as they pass, and is handed to
// the unencrypted path's server (a TLS connection once its preface is
// read, so the server takes it as it takes an h2c one; the frameConn
// reports the TLS state, so requests still carry it and HTTP/2's TLS
// checks still run). HTTP/1 connections never pass here and cost
// nothing.
//
// Invariant (frame-budget): no client API HTTP/2 connection, with the
// token or not, over TLS or h2c, passes net/http's server more than
// burst + MaxFrameRate*t frames in any t seconds; the frame past them
// closes it. What is read is counted before net/http's server sees it,
// so no frame escapes the count. Guarded by
// TestFrameBudgetClosesRapidReset, TestFrameBudgetClosesPingFlood (h2c
// and TLS) and TestFrameConnBudget; TestFrameBudgetSparesHeavyClient
// guards the margin of the default for well-behaved clients.
type frameBudget struct {
	rate  int64                // frames a second (Limits.MaxFrameRate)
	burst int64                // frames at once: the bucket's size, rate/10 or 4*MaxStreams
	every time.Duration        // per frame: time.Second/rate
	now   func() time.Duration // the buckets' clock (monotonic)
	log   *slog.Logger
	warn  *loglimit.Limiter

	// closed counts the connections closed over the budget
	// (Node.Refusals: frame_rate), backlogged those closed for keeping
	// a backlog through maxBacklog of paced reads (api_rate).
	closed, backlogged atomic.Uint64
	// maxBacklog is maxAPIBacklog; lowered by tests.
	maxBacklog time.Duration

	// api is the node-wide budget every connection's frames also draw
	// from, or nil.
	api *apiBudget
}

func newFrameBudget(rate int, streams uint32, log *slog.Logger) *frameBudget {
	epoch := time.Now()
	return &frameBudget{rate: int64(rate), burst: max(int64(rate)/10, 4*int64(streams)),
		every: max(time.Second/time.Duration(rate), 1), now: func() time.Duration { return time.Since(epoch) },
		log: log, warn: loglimit.New(), maxBacklog: maxAPIBacklog}
}

// maxAPIBacklog is how long an HTTP/2 connection may keep unread bytes
// in its socket through reads paced by the API budget before it is
// closed (see apiBudget).
const maxAPIBacklog = 2 * time.Second

// nextProtoH2C is net/http's TLSNextProto key for an h2c connection (not
// a TLS protocol): its server reads the connection's preface, then hands
// it over.
const nextProtoH2C = "unencrypted_http2"

// h2Preface is what an HTTP/2 client sends first (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// install has srv give every HTTP/2 connection to its HTTP/2 server
// through a frameConn. It runs before srv serves: it has net/http set up
// its HTTP/2 server first (Serve does, on a listener with nothing to
// accept), as there is no other way to reach the bundled one.
func (b *frameBudget) install(srv *http.Server) error {
	_ = srv.Serve(noConns{})
	if srv.TLSNextProto == nil {
		return nil // HTTP/2 is off (GODEBUG=http2server=0)
	}
	serve := srv.TLSNextProto[nextProtoH2C]
	if serve == nil || srv.TLSNextProto["h2"] == nil {
		return errors.New("net/http set up no HTTP/2 server for unencrypted connections, which the client API's HTTP/2 frame budget needs (built with another Go version?)")
	}
	srv.TLSNextProto["h2"] = func(hs *http.Server, tc *tls.Conn, h http.Handler) {
		// The hand-off below is the h2c one, whose server expects the
		// preface read; read it as net/http's server would, within its
		// 10 s (a connection yet to send its first request has less: the
		// connLimiter's first-request deadline).
		tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		var pre [len(h2Preface)]byte
		if _, err := io.ReadFull(tc, pre[:]); err != nil || string(pre[:]) != h2Preface {
			tc.Close()
			return
		}
		tc.SetReadDeadline(time.Time{})
		serve(hs, handOff(&tlsFrameConn{b.wrap(tc), tc}), h)
	}
	srv.TLSNextProto[nextProtoH2C] = func(hs *http.Server, tc *tls.Conn, h http.Handler) {
		nc, ok := tc.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok { // not net/http's hand-off: let its server refuse it
			serve(hs, tc, h)
			return
		}
		serve(hs, handOff(b.wrap(nc.UnencryptedNetConn())), h)
	}
	return nil
}

// handOff wraps c as net/http hands an h2c connection to its HTTP/2
// server: a *tls.Conn that is never used, around a net.Conn that gives c
// back.
func handOff(c net.Conn) *tls.Conn {
	return tls.Client(unencrypted{c}, nil)
}

// unencrypted is net/http's unencryptedNetConnInTLSConn.
type unencrypted struct{ net.Conn }

// UnencryptedNetConn returns the connection handed over.
func (u unencrypted) UnencryptedNetConn() net.Conn { return u.Conn }

// noConns is a listener with nothing to accept (see install).
type noConns struct{}

func (noConns) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (noConns) Close() error              { return nil }
func (noConns) Addr() net.Addr            { return &net.TCPAddr{} }

func (b *frameBudget) wrap(c net.Conn) *frameConn {
	lc, _ := apiNetConn(c).(*limitedConn)
	return &frameConn{Conn: c, b: b, tokens: b.burst, filled: b.now(), source: sourceKey(c.RemoteAddr()), lc: lc, closing: make(chan struct{})}
}

// unauthSource is the API budget's share of every connection that has
// not yet made a request with the auth token, wherever it comes from: an
// outsider's frames (PINGs, SETTINGS; they need no token) from 64
// addresses took 64 of 65 shares and cut a client with the token from
// ~600 to 33-49 operations a second (outsider review s32). No address
// makes this key. Their frames also cost unauthWeight times as much:
// with one share alone they still took half the budget beside one client
// with the token, cutting it from ~1,000 to ~100 operations a second
// (outsider re-probe s32).
const unauthSource = "(connections without the auth token)"

// unauthWeight multiplies the units of a frame read before its
// connection made a request with the auth token (a client's first
// request pays it once).
const unauthWeight = 8

// frameCursor follows the frame boundaries of an HTTP/2 byte stream
// (after the preface) fed to it in pieces of any size.
type frameCursor struct {
	hdr  [9]byte // the frame header being read, or last read
	hn   int     // bytes of hdr read
	skip int     // bytes of the frame's payload still to pass
}

// next passes the bytes of p up to the end of the next whole frame
// header, and returns the rest of p and whether that header is complete
// (in f.hdr). With false, p is used up.
func (f *frameCursor) next(p []byte) ([]byte, bool) {
	if f.skip > 0 {
		k := min(f.skip, len(p))
		f.skip -= k
		p = p[k:]
	}
	if len(p) == 0 {
		return p, false
	}
	k := copy(f.hdr[f.hn:], p)
	f.hn += k
	p = p[k:]
	if f.hn < len(f.hdr) {
		return p, false
	}
	f.hn = 0
	f.skip = int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
	return p, true
}

// atBoundary reports whether the bytes passed end with a whole frame.
func (f *frameCursor) atBoundary() bool { return f.hn == 0 && f.skip == 0 }

// HTTP/2 frame types (RFC 9113 §6) that frameConn counts apart, for its
// log line; frameOther counts the rest.
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9
	frameOther        = 0xa
)

var frameNames = [...]string{"data", "headers", "priority", "rst_stream", "settings", "push_promise",
	"ping", "goaway", "window_update", "continuation", "other"}

// windowCredit is how many bytes of DATA the server writes let one
// WINDOW_UPDATE in without counting: a client hands back the window of
// what it read, Go's one WINDOW_UPDATE for the stream and one for the
// connection per 4 KiB read (others less often), so a fast download read
// in small pieces sends tens of thousands a second (a 64 MiB reply read
// in 32 KiB pieces was cut after 68 MB when they counted).
const windowCredit = 2 << 10

// errFrameRate fails the reads of a connection closed over the budget.
var (
	errFrameRate = errors.New("HTTP/2 connection closed: it sent frames faster than the client API's frame budget")
	errAPIRate   = errors.New("HTTP/2 connection closed: it kept sending faster than its share of the node's API budget")
)

// refusedBy names why frameConn.refuse closes a connection: its refusal
// reason (Node.Refusals).
type refusedBy string

const (
	refusedFrameRate refusedBy = "frame_rate"
	refusedAPIRate   refusedBy = "api_rate"
)

// frameConn is an HTTP/2 connection of the client API under a
// frameBudget: it counts the frames read from it, and past the budget
// sends GOAWAY and fails its reads, which makes net/http's server close
// it.
type frameConn struct {
	net.Conn // a *tls.Conn, or the connLimiter's *limitedConn (h2c)
	b        *frameBudget

	// The read side: net/http's HTTP/2 server reads from one goroutine.
	in     frameCursor
	tokens int64                  // frames the connection may send now
	filled time.Duration          // b.now() to which tokens were added
	stream uint32                 // the highest stream the client opened
	count  [frameOther + 1]uint64 // frames read, by type
	over   bool                   // the budget is spent: reads fail
	// backlogFrom is when the connection's reads began to be paced
	// with bytes left queued after each (backlog: since then).
	backlogFrom time.Duration
	backlog     bool
	acked       int64  // dataOut handed back by free WINDOW_UPDATEs
	source      string // its share of the API budget (sourceKey)
	// lc is the connection's admission by the connLimiter (nil in tests
	// that wrap bare connections): until it has made a request with the
	// auth token, its reads draw on the one share of all such
	// connections (unauthSource), not on its address's.
	lc *limitedConn

	closeOnce sync.Once
	closing   chan struct{} // closed by Close: a read waiting for the API budget ends

	// dataOut counts the DATA payload bytes the server wrote (its
	// replies): each windowCredit of them lets one WINDOW_UPDATE in free.
	dataOut atomic.Int64

	wmu  sync.Mutex             // guards out and gone
	out  frameCursor            // the server's frames written
	gone bool                   // GOAWAY written: later writes are dropped
	calm atomic.Pointer[goAway] // the GOAWAY to send, once refused
}

// Read reads from the connection and counts the frames whose headers it
// completes. The read that passes the budget fails, after a GOAWAY.
func (c *frameConn) Read(p []byte) (int, error) {
	if c.over {
		return 0, errFrameRate
	}
	n, err := c.Conn.Read(p)
	rest := p[:n]
	var units int64 // of the API budget
	for {
		var ok bool
		if rest, ok = c.in.next(rest); !ok {
			break
		}
		typ := min(c.in.hdr[3], frameOther)
		c.count[typ]++
		if typ == frameWindowUpdate && c.dataOut.Load()-c.acked >= windowCredit {
			c.acked += windowCredit
			continue
		}
		if !c.take() {
			c.refuse(refusedFrameRate)
			return 0, errFrameRate
		}
		units++
		if typ == frameHeaders {
			units += apiHeadersUnits - 1
			if id := uint32(c.in.hdr[5]&0x7f)<<24 | uint32(c.in.hdr[6])<<16 | uint32(c.in.hdr[7])<<8 | uint32(c.in.hdr[8]); id > c.stream {
				c.stream = id
			}
		}
	}
	// What was read waits for its turn of the node's API budget before
	// net/http's server sees it; meanwhile nothing more is read, and TCP
	// flow control holds the sender back.
	if units > 0 && c.b.api != nil {
		source := c.source
		if c.lc != nil && c.lc.awaitsToken() {
			source, units = unauthSource, units*unauthWeight
		}
		paced, ok := c.b.api.wait(source, units, c.closing)
		if !ok {
			return 0, net.ErrClosed
		}
		if c.backlogged(paced) {
			c.refuse(refusedAPIRate)
			return 0, errAPIRate
		}
	}
	return n, err
}

// backlogBytes is how many unread bytes make a backlog. A client's
// WINDOW_UPDATEs and next request, queued while its source's turns paid
// for its large reply in small pieces, are a few hundred bytes, and at
// any size they made a backlog: a sequential client reading 60 KB
// replies had its connection closed as a flooder after 2 s. A flood
// passes 4 KiB within its first second of paced reads.
const backlogBytes = 4 << 10

// backlogged notes whether the connection keeps a backlog: bytes queued
// unread in its socket, from a read that was paced (the budget held it
// back) until a read that leaves nothing queued (it caught up). It
// reports whether one has lasted maxBacklog. The socket is looked at
// only after a paced read, or during a backlog: never on an unloaded
// node.
func (c *frameConn) backlogged(paced bool) bool {
	if !paced && !c.backlog {
		return false
	}
	if !queued(c.Conn) {
		c.backlog = false
		return false
	}
	now := c.b.now()
	if !c.backlog {
		c.backlog, c.backlogFrom = true, now
	}
	return now-c.backlogFrom >= c.b.maxBacklog
}

// queued reports whether more bytes than backlogBytes the peer sent wait
// unread in the socket's receive queue below c.
func queued(c net.Conn) bool {
	for {
		switch x := c.(type) {
		case *tls.Conn:
			c = x.NetConn()
		case *limitedConn:
			c = x.Conn
		case syscall.Conn:
			n, ok := unread(x)
			return ok && n > backlogBytes
		default:
			return false
		}
	}
}

// Close closes the connection, and ends a read waiting for the API
// budget.
func (c *frameConn) Close() error {
	c.closeOnce.Do(func() { close(c.closing) })
	return c.Conn.Close()
}

// take spends a frame of the bucket, reporting false if it is empty. The
// clock is read only when it runs out.
func (c *frameConn) take() bool {
	if c.tokens == 0 {
		now := c.b.now()
		add := int64((now - c.filled) / c.b.every)
		if add >= c.b.burst {
			c.tokens, c.filled = c.b.burst, now
		} else {
			c.tokens += add
			c.filled += time.Duration(add) * c.b.every
		}
		if c.tokens == 0 {
			return false
		}
	}
	c.tokens--
	return true
}

// refuse counts and logs the connection's refusal, and sends GOAWAY
// ENHANCE_YOUR_CALM naming the limit as soon as the server's frames
// written so far are whole: at once if they are, else at the end of the
// server's next write that leaves them so (it goes on writing what it has
// queued, PING acks say, then flushes), for up to goAwayWait. After the
// GOAWAY it reads what the client still sends for goAwayWait (as
// net/http's server does after its own GOAWAY: closing with unread bytes
// would reset the connection, and the client might never read the
// GOAWAY). If no GOAWAY could be sent (the server's writes stuck, a peer
// that does not read), the connection just closes.
func (c *frameConn) refuse(why refusedBy) {
	c.over = true
	b := c.b
	var msg, debug string
	args := []any{"remote", c.RemoteAddr().String()}
	switch why {
	case refusedFrameRate:
		b.closed.Add(1)
		msg = fmt.Sprintf("closing a client API HTTP/2 connection that sent more than %d frames a second, or %d at once (streams opened and reset, PINGs, SETTINGS, WINDOW_UPDATEs: every frame counts; GOAWAY ENHANCE_YOUR_CALM sent): fix the client, or raise the agent's --max-frame-rate if it is yours and well-behaved", b.rate, b.burst)
		debug = fmt.Sprintf("more than %d HTTP/2 frames a second (or %d at once) on one connection: over the agent's --max-frame-rate", b.rate, b.burst)
		args = append(args, "max_frame_rate", b.rate)
	case refusedAPIRate:
		b.backlogged.Add(1)
		msg = fmt.Sprintf("closing a client API HTTP/2 connection that kept sending faster than its turns of the node's API budget for %v (bytes left unread after every paced read; GOAWAY ENHANCE_YOUR_CALM sent): fix the client, or raise the agent's --max-api-rate if the node has CPU to spare", b.maxBacklog)
		debug = fmt.Sprintf("sent faster than its share of the node's API budget for %v: over the agent's --max-api-rate", b.maxBacklog)
		if b.api != nil {
			args = append(args, "max_api_rate", b.api.perS)
		}
	}
	if ok, skipped := b.warn.Allow(string(why)); ok {
		for typ, n := range c.count {
			if n > 0 {
				args = append(args, frameNames[typ], n)
			}
		}
		if skipped > 0 {
			args = append(args, loglimit.Skipped, skipped)
		}
		b.log.Warn(msg, args...)
	}
	n := 8 + len(debug)
	f := []byte{byte(n >> 16), byte(n >> 8), byte(n), frameGoAway, 0, 0, 0, 0, 0,
		byte(c.stream >> 24), byte(c.stream >> 16), byte(c.stream >> 8), byte(c.stream),
		0, 0, 0, 0xb} // ENHANCE_YOUR_CALM
	g := &goAway{frame: append(f, debug...), sent: make(chan struct{})}
	c.calm.Store(g)
	if c.wmu.TryLock() { // else a write is under way: it sends the GOAWAY
		c.sendGoAwayLocked()
		c.wmu.Unlock()
	}
	t := time.NewTimer(goAwayWait)
	defer t.Stop()
	select {
	case <-g.sent:
	case <-t.C:
		return
	}
	c.Conn.SetReadDeadline(time.Now().Add(goAwayWait))
	drain := make([]byte, 4<<10)
	for {
		if _, err := c.Conn.Read(drain); err != nil {
			return
		}
	}
}

// goAwayWait bounds the wait for the server's frames to be whole before a
// GOAWAY, and then the reads that follow it.
const goAwayWait = time.Second

// goAway is the GOAWAY frame a refused frameConn sends.
type goAway struct {
	frame []byte
	sent  chan struct{} // closed once it is written (or failed)
}

// sendGoAwayLocked writes the GOAWAY of a refused connection if the
// server's frames written so far are whole. Called with c.wmu held.
func (c *frameConn) sendGoAwayLocked() {
	if !c.out.atBoundary() {
		return
	}
	g := c.calm.Swap(nil)
	if g == nil {
		return
	}
	c.gone = true
	c.Conn.SetWriteDeadline(time.Now().Add(goAwayWait))
	c.Conn.Write(g.frame)
	close(g.sent)
}

// Write writes a piece of the server's frames, noting where they end;
// once the connection is refused, it sends the GOAWAY after the first
// piece that ends a frame, and drops the rest.
func (c *frameConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.gone {
		return len(p), nil
	}
	n, err := c.Conn.Write(p)
	for rest := p[:n]; len(rest) > 0; {
		var ok bool
		if rest, ok = c.out.next(rest); ok && c.out.hdr[3] == frameData {
			c.dataOut.Add(int64(c.out.skip))
		}
	}
	if c.calm.Load() != nil {
		c.sendGoAwayLocked()
	}
	return n, err
}

// tlsFrameConn is the frameConn of a TLS connection: net/http's HTTP/2
// server takes a connection with a ConnectionState method for TLS (it
// sets Request.TLS, and refuses TLS below 1.2 and banned cipher suites).
type tlsFrameConn struct {
	*frameConn
	tls *tls.Conn
}

// ConnectionState returns the TLS connection's state.
func (c *tlsFrameConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// apiNetConn returns the connection under an API connection as net/http's
// hooks see it (a *tls.Conn, a frameConn or both), which is the
// connLimiter's *limitedConn when startAPI's server serves it.
func apiNetConn(nc net.Conn) net.Conn {
	switch c := nc.(type) {
	case *tlsFrameConn:
		nc = c.Conn
	case *frameConn:
		nc = c.Conn
	}
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	return nc
}
