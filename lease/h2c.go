package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Without TLS a Remote sends what may hold a stream for long, watches and
// waiting acquires, over HTTP/2 in clear text (h2c, with prior knowledge,
// as gRPC does), so that they share one connection to a node, as they do
// over TLS. Over HTTP/1.1 each held a connection of its own, and a
// program with a few hundred watches met the agent's connections per
// source (a quarter of --max-conns) long before its --max-watches: the
// agent closed the extra connections (new-user review, outsider F).
// Short requests stay on a pool of HTTP/1.1 connections, which gave more
// pairs a second than h2c (node/DESIGN.md). Every leasenode agent serves
// h2c on its API port. When a node's HTTP/2 streams per connection (256
// by default) are all taken, net/http opens another connection.
//
// A server that does not speak h2c (a TLS port, a plain HTTP/1.1 proxy, a
// node or gossip port answering with its wrong-port reply) is told apart
// before any request is sent: the dial writes the HTTP/2 preface and waits
// for the server's SETTINGS frame. If the server answers otherwise, or
// closes the connection, the dial fails and the request goes over HTTP/1.1
// instead, so such a server gets the answers it gave before (a TLS port's
// 400, a wrong port's 421, a proxy's reply); a server that answered
// HTTP/1.1 gets HTTP/1.1 from then on. A dial whose greeting does not come
// within the dial timeout (a stopped process's kernel accepts connections
// and holds them) fails as a dial does: the request was not sent.

// h2cPreface is the client connection preface of HTTP/2 (RFC 9113 §3.4).
const h2cPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// dialTimeout bounds a TCP connect, and then the server's HTTP/2 greeting.
const dialTimeout = 2 * time.Second

// plainTransport is a Remote's RoundTripper without TLS: h2c, or HTTP/1.1
// for a server that does not speak it.
type plainTransport struct {
	h2c *http.Transport
	h1  *http.Transport

	mu     sync.Mutex
	h1Only map[string]bool // host:port → answered the preface with HTTP/1.x
}

func newPlainTransport() *plainTransport {
	t := &plainTransport{h1Only: map[string]bool{}}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	t.h2c = &http.Transport{
		DialContext:         t.dialH2C(dialer),
		Protocols:           &h2c,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	t.h1 = &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return t
}

// RoundTrip sends req over h2c, or over HTTP/1.1 to a server that does not
// speak h2c.
func (t *plainTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	t.mu.Lock()
	h1 := t.h1Only[host]
	t.mu.Unlock()
	if h1 {
		return t.h1.RoundTrip(req)
	}
	// Not rewound for a retry inside net/http: on a GOAWAY (a node's
	// --max-frame-rate) its HTTP/2 transport rewinds a body that the
	// stream cut short may still be reading (a data race the race
	// detector reports in net/http); Remote's own retry sends the request
	// again.
	h2req := *req
	h2req.GetBody = nil
	resp, err := t.h2c.RoundTrip(&h2req)
	var no *noH2CError
	if err == nil || !errors.As(err, &no) || !no.fallBack() || req.Context().Err() != nil {
		return resp, err
	}
	// Nothing of req was sent: the dial failed before it was handed a
	// connection.
	if no.spoke != "" {
		t.mu.Lock()
		t.h1Only[host] = true
		t.mu.Unlock()
	}
	return t.h1.RoundTrip(req)
}

// CloseIdleConnections closes both transports' idle connections.
func (t *plainTransport) CloseIdleConnections() {
	t.h2c.CloseIdleConnections()
	t.h1.CloseIdleConnections()
}

// noH2CError: the server at Addr did not answer the HTTP/2 preface with
// its SETTINGS frame. Spoke holds the first bytes it sent instead, if any.
type noH2CError struct {
	Addr  string
	spoke string
	Err   error
}

func (e *noH2CError) Error() string {
	if e.spoke != "" {
		return fmt.Sprintf("%s does not speak HTTP/2 without TLS: it answered %q", e.Addr, e.spoke)
	}
	return fmt.Sprintf("%s: no HTTP/2 greeting: %v", e.Addr, e.Err)
}

func (e *noH2CError) Unwrap() error { return e.Err }

// fallBack says whether to send the request over HTTP/1.1 instead: the
// server answered something else, or closed the connection (a TLS port
// does that), not when it stayed silent (a stopped process).
func (e *noH2CError) fallBack() bool {
	var ne net.Error
	silent := errors.As(e.Err, &ne) && ne.Timeout() ||
		errors.Is(e.Err, context.Canceled) || errors.Is(e.Err, context.DeadlineExceeded)
	return e.spoke != "" || !silent
}

// dialH2C dials addr and exchanges HTTP/2 greetings: it writes the
// preface and reads the header of the server's first frame, which must be
// SETTINGS. The connection it returns drops the preface the HTTP/2
// transport writes (already sent) and hands it the frame header read.
func (t *plainTransport) dialH2C(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		deadline := time.Now().Add(dialTimeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		_ = c.SetDeadline(deadline)
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
		var hdr [9]byte
		n := 0
		_, err = io.WriteString(c, h2cPreface)
		if err == nil {
			n, err = io.ReadFull(c, hdr[:])
		}
		if !stop() {
			err = cmp.Or(ctx.Err(), err, context.Canceled) // the deadline may be past
		}
		// A SETTINGS frame (type 4) on stream 0 opens every HTTP/2
		// server's side of the connection.
		if err == nil && (hdr[3] != 0x4 || hdr[5]&0x7f != 0 || hdr[6] != 0 || hdr[7] != 0 || hdr[8] != 0) {
			err = errors.New("not an HTTP/2 SETTINGS frame")
		}
		if err != nil {
			c.Close()
			return nil, &noH2CError{Addr: addr, spoke: string(hdr[:n]), Err: err}
		}
		_ = c.SetDeadline(time.Time{})
		return &h2cConn{Conn: c, head: hdr[:], skip: len(h2cPreface)}, nil
	}
}

// h2cConn is a connection whose greetings dialH2C exchanged.
type h2cConn struct {
	net.Conn
	head []byte // read from the server, not yet handed on (the reader's)
	skip int    // bytes of the preface still to drop from writes (the writer's)
}

func (c *h2cConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *h2cConn) Write(p []byte) (int, error) {
	dropped := 0
	if c.skip > 0 {
		sent := len(h2cPreface) - c.skip
		k := min(c.skip, len(p))
		if string(p[:k]) != h2cPreface[sent:sent+k] {
			return 0, errors.New("lease: the HTTP/2 transport wrote no preface first")
		}
		c.skip -= k
		p = p[k:]
		dropped = k
		if len(p) == 0 {
			return dropped, nil
		}
	}
	n, err := c.Conn.Write(p)
	return dropped + n, err
}
