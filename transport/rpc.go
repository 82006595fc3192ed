package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the RPC configurations.
const (
	// DefaultMaxMessage is the default limit on a request or reply payload.
	DefaultMaxMessage = 4 << 20
	// DefaultMaxConnsPerPeer is the default size of the client's
	// connection pool per peer address.
	DefaultMaxConnsPerPeer = 2
	// DefaultRPCWriteTimeout bounds the server's write of one reply.
	DefaultRPCWriteTimeout = 10 * time.Second
)

// Frame types and error kinds; see the package documentation for the
// layout.
const (
	frameRequest  byte = 1
	frameResponse byte = 2
	frameError    byte = 3
	frameCancel   byte = 4

	errKindApp              byte = 1    // payload made by RPCServerConfig.EncodeError
	errKindText             byte = 2    // payload is the error's text (no EncodeError)
	errKindRequestTooLarge  byte = 3    // handler not run
	errKindResponseTooLarge byte = 4    // handler ran; its reply was over the limit
	errFlagLate             byte = 0x80 // or-ed into kinds 1 and 2: the handler's context had ended

	prefixLen    = 4 + 1 + 8 // length, type, call id
	requestExtra = 1 + 8     // method, timeout
	errorExtra   = 1         // kind

	// maxPayload keeps every frame's length within its uint32 field.
	maxPayload = math.MaxUint32 - 1 - 8 - requestExtra

	// cancelWriteTimeout bounds the write of cancel frames; a connection
	// that cannot take 13 bytes for this long is broken.
	cancelWriteTimeout = 5 * time.Second
)

// frame is one decoded frame.
type frame struct {
	typ      byte
	id       uint64
	method   byte          // request
	timeout  time.Duration // request; 0 = no deadline
	kind     byte          // error
	payload  []byte
	oversize bool // payload was over the reader's limit and was skipped
}

// readFrame reads one frame. A payload over max is skipped (read and
// discarded, so the stream stays in step) and reported with oversize; a
// malformed frame is an error wrapping errProtocol, after which the stream
// is unusable. It never allocates more than max bytes for a payload.
func readFrame(r *bufio.Reader, max int) (frame, error) {
	var f frame
	var hdr [prefixLen + requestExtra]byte
	if _, err := io.ReadFull(r, hdr[:prefixLen]); err != nil {
		return f, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[0:4]))
	f.typ = hdr[4]
	f.id = binary.BigEndian.Uint64(hdr[5:13])
	var extra int64
	switch f.typ {
	case frameRequest:
		extra = requestExtra
	case frameError:
		extra = errorExtra
	case frameResponse, frameCancel:
	default:
		return f, fmt.Errorf("%w: unknown frame type %d", errProtocol, f.typ)
	}
	rest := n - 1 - 8 - extra
	if rest < 0 || (f.typ == frameCancel && rest != 0) {
		return f, fmt.Errorf("%w: bad length %d for frame type %d", errProtocol, n, f.typ)
	}
	if extra > 0 {
		if _, err := io.ReadFull(r, hdr[prefixLen:prefixLen+extra]); err != nil {
			return f, noEOF(err)
		}
		switch f.typ {
		case frameRequest:
			f.method = hdr[prefixLen]
			t := int64(binary.BigEndian.Uint64(hdr[prefixLen+1:]))
			if t < 0 {
				return f, fmt.Errorf("%w: negative timeout", errProtocol)
			}
			f.timeout = time.Duration(t)
		case frameError:
			f.kind = hdr[prefixLen]
		}
	}
	if rest > int64(max) {
		f.oversize = true
		_, err := io.CopyN(io.Discard, r, rest)
		return f, noEOF(err)
	}
	f.payload = make([]byte, rest)
	_, err := io.ReadFull(r, f.payload)
	return f, noEOF(err)
}

// noEOF turns an EOF in the middle of a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendHeader appends the header of f (everything but the payload).
func appendHeader(b []byte, f *frame) []byte {
	var extra int
	switch f.typ {
	case frameRequest:
		extra = requestExtra
	case frameError:
		extra = errorExtra
	}
	b = binary.BigEndian.AppendUint32(b, uint32(1+8+extra+len(f.payload)))
	b = append(b, f.typ)
	b = binary.BigEndian.AppendUint64(b, f.id)
	switch f.typ {
	case frameRequest:
		b = append(b, f.method)
		b = binary.BigEndian.AppendUint64(b, uint64(f.timeout))
	case frameError:
		b = append(b, f.kind)
	}
	return b
}

// writeFrame writes f with one vectored write where the connection supports
// it. It returns whether every byte was written.
func writeFrame(w io.Writer, f *frame) (complete bool, err error) {
	hdr := appendHeader(make([]byte, 0, prefixLen+requestExtra), f)
	total := int64(len(hdr) + len(f.payload))
	bufs := net.Buffers{hdr}
	if len(f.payload) > 0 {
		// No empty write after the frame is out: on a connection that is
		// not a *net.TCPConn each buffer is its own Write, and an empty
		// Write still fails on a passed deadline, so a call cancelled just
		// after its frame was sent would fail the whole connection.
		bufs = append(bufs, f.payload)
	}
	n, err := bufs.WriteTo(w)
	return n == total, err
}

// clampMax applies the default and the frame-format limit to a MaxMessage.
func clampMax(n int) int {
	if n <= 0 {
		return DefaultMaxMessage
	}
	return int(min(int64(n), maxPayload))
}

// Handler serves one RPC. method is an application-defined number; req and
// the returned bytes are opaque (node puts protobuf messages in them). ctx
// names the calling node (PeerFrom, PeerID: authenticated on a TLS or
// cluster-key node port), carries the caller's deadline and is cancelled
// when the caller gives up, when the caller's connection breaks and when
// the server closes. A returned error is sent as an error frame: errors
// are encoded to bytes by RPCServerConfig.EncodeError and decoded on the
// client by RPCClientConfig.DecodeError, so errors.Is works across the
// network without string matching. Handlers run concurrently, one
// goroutine per request.
type Handler func(ctx context.Context, method uint8, req []byte) ([]byte, error)

// RPCServerConfig configures an RPCServer.
type RPCServerConfig struct {
	// MaxMessage limits request and reply payloads; zero means
	// DefaultMaxMessage. A larger request is skipped unread and answered
	// with ErrMessageTooLarge; a larger reply is replaced by that error.
	MaxMessage int
	// EncodeError turns a handler's error into bytes for the client's
	// DecodeError. Nil sends the error's text, which the client returns as a
	// *RemoteError.
	EncodeError func(error) []byte
	// Logger receives diagnostics; nil discards them. The server logs with
	// component=transport.rpc.
	Logger *slog.Logger
	// WriteTimeout bounds the write of one reply; a connection that cannot
	// take it in time is closed. Zero means DefaultRPCWriteTimeout.
	WriteTimeout time.Duration
}

// RPCServer serves node RPCs on connections accepted from a listener
// (normally Mux.Listen(ProtoRPC)).
//
// Goroutines: the caller's Serve loop; one reader per connection, owned by
// the server; one per in-flight request running the Handler. Close stops
// and waits for all but Serve, which returns on its own once the listener
// is closed.
type RPCServer struct {
	ln           net.Listener
	h            Handler
	max          int
	encodeErr    func(error) []byte
	log          *slog.Logger
	writeTimeout time.Duration

	ctx    context.Context // parent of every handler context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[*serverConn]struct{}
	wg     sync.WaitGroup // connection readers and handlers
}

// NewRPCServer returns a server for ln and h. It takes ownership of ln:
// Close closes it.
func NewRPCServer(ln net.Listener, h Handler, cfg RPCServerConfig) *RPCServer {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wt := cfg.WriteTimeout
	if wt <= 0 {
		wt = DefaultRPCWriteTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &RPCServer{
		ln:           ln,
		h:            h,
		max:          clampMax(cfg.MaxMessage),
		encodeErr:    cfg.EncodeError,
		log:          log.With("component", "transport.rpc"),
		writeTimeout: wt,
		ctx:          ctx,
		cancel:       cancel,
		conns:        make(map[*serverConn]struct{}),
	}
}

// Serve accepts connections until Close. It returns nil after Close and the
// listener's error if it fails otherwise.
func (s *RPCServer) Serve() error {
	var delay time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			if isTemporary(err) {
				delay = backoff(delay)
				select {
				case <-time.After(delay):
					continue
				case <-s.ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("transport: rpc accept: %w", err)
		}
		delay = 0
		sc := &serverConn{s: s, conn: conn, inflight: make(map[uint64]context.CancelFunc)}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = conn.Close()
			return nil
		}
		s.conns[sc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go sc.serve()
	}
}

// Close stops accepting, closes every connection, cancels the contexts of
// in-flight handlers and waits for the readers and handlers to return.
// Idempotent.
func (s *RPCServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()

	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	// Connections first, so that a handler that returns because of the
	// cancellation cannot send its ctx error as if it were a real answer:
	// its callers see a broken connection (ErrNoReply) instead.
	for _, sc := range conns {
		_ = sc.conn.Close()
	}
	s.cancel()
	s.wg.Wait()
	return err
}

func (s *RPCServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// serverConn is one accepted RPC connection.
type serverConn struct {
	s    *RPCServer
	conn net.Conn
	wmu  sync.Mutex // serializes replies

	mu       sync.Mutex
	inflight map[uint64]context.CancelFunc
}

// serve is the connection's reader: it dispatches requests to handler
// goroutines and cancel frames to their contexts, until the connection
// fails. Handlers still running then have their contexts cancelled: their
// replies could not be delivered.
func (sc *serverConn) serve() {
	s := sc.s
	defer s.wg.Done()
	defer func() {
		_ = sc.conn.Close()
		sc.mu.Lock()
		for _, cancel := range sc.inflight {
			cancel()
		}
		sc.mu.Unlock()
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
	}()

	// Every handler's context says who sent the request.
	base := s.ctx
	if p, ok := PeerOf(sc.conn); ok {
		base = context.WithValue(base, peerKey{}, p)
	}
	r := bufio.NewReader(sc.conn)
	for {
		f, err := readFrame(r, s.max)
		if err != nil {
			switch {
			case errors.Is(err, errProtocol):
				s.log.Warn("protocol violation; closing connection", "remote", sc.conn.RemoteAddr().String(), "error", err)
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !s.isClosed():
				s.log.Debug("rpc connection ended", "remote", sc.conn.RemoteAddr().String(), "error", err)
			}
			return
		}
		switch f.typ {
		case frameRequest:
			if f.oversize {
				s.log.Warn("request over MaxMessage refused", "remote", sc.conn.RemoteAddr().String(), "method", f.method, "max", s.max)
				sc.reply(&frame{typ: frameError, id: f.id, kind: errKindRequestTooLarge})
				continue
			}
			var ctx context.Context
			var cancel context.CancelFunc
			if f.timeout > 0 {
				ctx, cancel = context.WithTimeout(base, f.timeout)
			} else {
				ctx, cancel = context.WithCancel(base)
			}
			sc.mu.Lock()
			sc.inflight[f.id] = cancel
			sc.mu.Unlock()
			s.wg.Add(1) // this reader is counted, so the group is not at zero
			go sc.run(ctx, cancel, f)
		case frameCancel:
			sc.mu.Lock()
			if cancel := sc.inflight[f.id]; cancel != nil {
				cancel()
			}
			sc.mu.Unlock()
		default:
			s.log.Warn("unexpected frame from client; closing connection", "remote", sc.conn.RemoteAddr().String(), "type", f.typ)
			return
		}
	}
}

// run executes one request and sends its reply.
func (sc *serverConn) run(ctx context.Context, cancel context.CancelFunc, f frame) {
	s := sc.s
	defer s.wg.Done()
	defer func() {
		sc.mu.Lock()
		delete(sc.inflight, f.id)
		sc.mu.Unlock()
		cancel()
	}()

	resp, err := s.h(ctx, f.method, f.payload)
	out := &frame{typ: frameResponse, id: f.id, payload: resp}
	switch {
	case err != nil:
		out = &frame{typ: frameError, id: f.id, kind: errKindText}
		if s.encodeErr != nil {
			out.kind, out.payload = errKindApp, s.encodeErr(err)
		} else {
			out.payload = []byte(err.Error())
		}
		if len(out.payload) > s.max {
			out.kind, out.payload = errKindText, []byte(err.Error())[:min(len(err.Error()), s.max)]
		}
		if ctx.Err() != nil {
			// The handler failed after its deadline or cancellation: its
			// error most likely means "gave up midway", not a decision.
			out.kind |= errFlagLate
		}
	case len(resp) > s.max:
		s.log.Warn("reply over MaxMessage replaced by an error", "method", f.method, "size", len(resp), "max", s.max)
		out = &frame{typ: frameError, id: f.id, kind: errKindResponseTooLarge}
	}
	sc.reply(out)
}

// reply writes one frame; a failed write closes the connection, which ends
// the reader.
func (sc *serverConn) reply(f *frame) {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	_ = sc.conn.SetWriteDeadline(time.Now().Add(sc.s.writeTimeout))
	if _, err := writeFrame(sc.conn, f); err != nil {
		_ = sc.conn.Close()
	}
}

// RPCClientConfig configures an RPCClient.
type RPCClientConfig struct {
	// Dialer opens connections (with ProtoRPC); nil means a plain-TCP
	// &Dialer{}.
	Dialer *Dialer
	// MaxMessage limits request and reply payloads; zero means
	// DefaultMaxMessage. A larger request fails before anything is sent; a
	// larger reply is skipped and reported as ErrMessageTooLarge with
	// ErrNoReply.
	MaxMessage int
	// DecodeError turns an error payload made by the server's EncodeError
	// back into an error; what it returns, Call returns unchanged. Nil, or a
	// nil result, yields a *RemoteError.
	DecodeError func([]byte) error
	// MaxConnsPerPeer bounds the connections kept per peer address; zero
	// means DefaultMaxConnsPerPeer. Calls share connections; a new one is
	// opened only while every existing one has calls in flight.
	MaxConnsPerPeer int
	// Logger receives diagnostics; nil discards them. The client logs with
	// component=transport.rpcclient.
	Logger *slog.Logger
}

// RPCClient calls RPCServers on other nodes over long-lived connections,
// many concurrent calls per connection, matched by call id.
//
// Goroutines: one reader per open connection, owned by the client and
// stopped by Close or by the connection failing.
type RPCClient struct {
	dialer    *Dialer
	max       int
	decodeErr func([]byte) error
	maxConns  int
	log       *slog.Logger

	mu     sync.Mutex
	closed bool
	peers  map[string]*peer
	wg     sync.WaitGroup // connection readers
}

// peer is the pool of connections to one address.
type peer struct {
	conns   []*clientConn
	dialing int
	changed chan struct{} // closed and replaced when a dial ends
}

// NewRPCClient returns a client. It opens connections on first use.
func NewRPCClient(cfg RPCClientConfig) *RPCClient {
	d := cfg.Dialer
	if d == nil {
		d = &Dialer{}
	}
	maxConns := cfg.MaxConnsPerPeer
	if maxConns <= 0 {
		maxConns = DefaultMaxConnsPerPeer
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RPCClient{
		dialer:    d,
		max:       clampMax(cfg.MaxMessage),
		decodeErr: cfg.DecodeError,
		maxConns:  maxConns,
		log:       log.With("component", "transport.rpcclient"),
		peers:     make(map[string]*peer),
	}
}

// Call sends req to method on the node at addr and waits for the reply.
//
// ctx's deadline travels with the request, so the handler's context ends at
// the same moment (measured from the request's arrival). If ctx ends first,
// Call returns at once, and a cancel frame asks the server to cancel the
// handler's context; if that frame cannot be sent, the handler is still
// bounded by the deadline and by the connection's lifetime.
//
// A nil error means the handler ran and returned the reply. An error from
// the handler comes back as DecodeError made it, unmodified, unless the
// handler returned it after its context had ended: then it is the cause of
// a *CallError wrapping ErrNoReply, since a handler that ran out of time
// may have done part of its work. Any other failure is a *CallError
// wrapping ErrNotSent (the handler certainly did not run) or ErrNoReply (it
// may have run; the outcome is unknown).
func (c *RPCClient) Call(ctx context.Context, addr string, method uint8, req []byte) ([]byte, error) {
	return c.call(ctx, addr, "", false, method, req)
}

// CallNode is Call to the node id at addr: if the node reached there is
// another (by its certificate on a TLS or cluster-key node port, by its
// hello on plain TCP), the call fails before anything is sent with a
// *CallError wrapping ErrNotSent and ErrWrongPeer. Use it wherever the
// answer is taken as the word of node id: an address learned from gossip
// may belong to anyone.
func (c *RPCClient) CallNode(ctx context.Context, addr, id string, method uint8, req []byte) ([]byte, error) {
	return c.call(ctx, addr, id, true, method, req)
}

func (c *RPCClient) call(ctx context.Context, addr, id string, checkID bool, method uint8, req []byte) ([]byte, error) {
	fail := func(maybeDelivered bool, err error) error {
		return &CallError{Addr: addr, Method: method, MaybeDelivered: maybeDelivered, Err: err}
	}
	if len(req) > c.max {
		return nil, fail(false, fmt.Errorf("request of %d bytes, limit %d: %w", len(req), c.max, ErrMessageTooLarge))
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(false, err)
	}
	cc, err := c.conn(ctx, addr)
	if err != nil {
		return nil, fail(false, err)
	}
	if checkID && cc.peer.ID != id {
		return nil, fail(false, fmt.Errorf("%w: %s is node %q, not %q", ErrWrongPeer, addr, cc.peer.ID, id))
	}
	f, delivered, err := cc.call(ctx, method, req)
	if err != nil {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed && !errors.Is(err, ErrClosed) {
			// Close cut the call short (its write, say): say so.
			err = fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return nil, fail(delivered, err)
	}
	return c.result(f, fail)
}

// result turns a reply frame into Call's results.
func (c *RPCClient) result(f frame, fail func(bool, error) error) ([]byte, error) {
	if f.oversize {
		return nil, fail(true, fmt.Errorf("reply over limit %d: %w", c.max, ErrMessageTooLarge))
	}
	if f.typ == frameResponse {
		return f.payload, nil
	}
	var err error
	switch f.kind &^ errFlagLate {
	case errKindApp:
		if c.decodeErr != nil {
			err = c.decodeErr(f.payload)
		}
		if err == nil {
			err = &RemoteError{Message: fmt.Sprintf("undecoded error payload of %d bytes", len(f.payload))}
		}
	case errKindText:
		err = &RemoteError{Message: string(f.payload)}
	}
	if err != nil {
		if f.kind&errFlagLate != 0 {
			// The handler ran out of time or was cancelled, then failed:
			// whatever it did before is unknown.
			return nil, fail(true, err)
		}
		return nil, err
	}
	switch f.kind {
	case errKindRequestTooLarge:
		return nil, fail(false, fmt.Errorf("server refused request: %w", ErrMessageTooLarge))
	case errKindResponseTooLarge:
		return nil, fail(true, fmt.Errorf("server dropped its reply: %w", ErrMessageTooLarge))
	default:
		return nil, fail(true, fmt.Errorf("%w: unknown error kind %d", errProtocol, f.kind))
	}
}

// Close closes every connection, failing the calls waiting on them with
// ErrClosed (and ErrNoReply), and waits for the connection readers. Later
// calls fail with ErrClosed (and ErrNotSent). Idempotent.
func (c *RPCClient) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	var conns []*clientConn
	for _, p := range c.peers {
		conns = append(conns, p.conns...)
	}
	c.mu.Unlock()
	for _, cc := range conns {
		cc.fail(ErrClosed)
	}
	c.wg.Wait()
	return nil
}

// conn returns a live connection to addr: the least loaded one, unless all
// are busy and the pool has room, in which case it dials.
func (c *RPCClient) conn(ctx context.Context, addr string) (*clientConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		p := c.peers[addr]
		if p == nil {
			p = &peer{changed: make(chan struct{})}
			c.peers[addr] = p
		}
		var best *clientConn
		live := p.conns[:0]
		for _, cc := range p.conns {
			if cc.broken() {
				continue
			}
			live = append(live, cc)
			if best == nil || cc.load.Load() < best.load.Load() {
				best = cc
			}
		}
		clear(p.conns[len(live):])
		p.conns = live
		full := len(p.conns)+p.dialing >= c.maxConns
		if best != nil && (best.load.Load() == 0 || full) {
			c.mu.Unlock()
			return best, nil
		}
		if !full {
			p.dialing++
			c.mu.Unlock()
			return c.dial(ctx, addr, p)
		}
		// No live connection and every slot is being dialed: wait.
		changed := p.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// dial opens a connection for p and starts its reader.
func (c *RPCClient) dial(ctx context.Context, addr string, p *peer) (*clientConn, error) {
	conn, err := c.dialer.Dial(ctx, addr, ProtoRPC)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.dialing--
	close(p.changed)
	p.changed = make(chan struct{})
	if err != nil {
		if len(p.conns) == 0 && p.dialing == 0 && c.peers[addr] == p {
			delete(c.peers, addr)
		}
		return nil, err
	}
	if c.closed {
		_ = conn.Close()
		return nil, ErrClosed
	}
	peer, _ := PeerOf(conn)
	cc := &clientConn{
		c:       c,
		addr:    addr,
		conn:    conn,
		peer:    peer,
		sem:     make(chan struct{}, 1),
		pending: make(map[uint64]chan frame),
		done:    make(chan struct{}),
	}
	p.conns = append(p.conns, cc)
	c.wg.Add(1)
	go cc.read()
	return cc, nil
}

// remove drops a failed connection from its pool.
func (c *RPCClient) remove(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[cc.addr]
	if p == nil {
		return
	}
	for i, x := range p.conns {
		if x == cc {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	if len(p.conns) == 0 && p.dialing == 0 {
		delete(c.peers, cc.addr)
	}
}

// clientConn is one pooled connection.
//
// Writing: sem is a one-slot token; the holder writes one whole frame, so
// frames never interleave, and a caller waiting for the token can give up
// (its request then certainly was not sent). Cancel frames are queued in
// cancels and written by whoever holds the token next (see releaseWriter).
type clientConn struct {
	c      *RPCClient
	addr   string
	conn   net.Conn
	peer   Peer // who answered the hello; fixed for the connection's life
	sem    chan struct{}
	nextID atomic.Uint64
	load   atomic.Int64 // calls in flight

	mu      sync.Mutex
	pending map[uint64]chan frame // call id -> reply slot (buffered, 1)
	cancels []uint64
	err     error         // why the connection failed; set once
	done    chan struct{} // closed when err is set
}

func (cc *clientConn) broken() bool {
	select {
	case <-cc.done:
		return true
	default:
		return false
	}
}

// failure returns the error the connection failed with.
func (cc *clientConn) failure() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

// fail marks the connection failed, wakes every waiting call and closes it.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
		cc.pending = nil
		cc.cancels = nil
		close(cc.done)
	}
	cc.mu.Unlock()
	_ = cc.conn.Close()
}

// read is the connection's reader goroutine: it routes replies to waiting
// calls until the connection fails.
func (cc *clientConn) read() {
	defer cc.c.wg.Done()
	defer cc.c.remove(cc)
	r := bufio.NewReader(cc.conn)
	for {
		f, err := readFrame(r, cc.c.max)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("connection closed by peer: %w", io.ErrUnexpectedEOF)
			}
			if first := cc.failure(); first == nil {
				cc.c.log.Debug("rpc connection failed", "peer", cc.addr, "error", err)
			}
			cc.fail(err)
			return
		}
		if f.typ != frameResponse && f.typ != frameError {
			err := fmt.Errorf("%w: unexpected frame type %d from server", errProtocol, f.typ)
			cc.c.log.Warn("closing rpc connection", "peer", cc.addr, "error", err)
			cc.fail(err)
			return
		}
		// Deliver under the lock: a call that finds its id gone from
		// pending (see forget) then knows its reply is already in ch.
		cc.mu.Lock()
		if ch := cc.pending[f.id]; ch != nil {
			ch <- f // buffered, and the only send: never blocks
			delete(cc.pending, f.id)
		}
		cc.mu.Unlock()
	}
}

// call sends one request and waits for its reply frame. On error, delivered
// tells whether the request may have reached the server.
func (cc *clientConn) call(ctx context.Context, method uint8, req []byte) (f frame, delivered bool, err error) {
	cc.load.Add(1)
	defer cc.load.Add(-1)

	id := cc.nextID.Add(1)
	ch := make(chan frame, 1)
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		return f, false, err
	}
	cc.pending[id] = ch
	cc.mu.Unlock()

	select {
	case cc.sem <- struct{}{}:
	case <-ctx.Done():
		cc.forget(id)
		return f, false, ctx.Err()
	case <-cc.done:
		return f, false, cc.failure()
	}
	if cc.broken() {
		// Writing to a connection the peer closed might succeed locally
		// and then look like a lost reply; the request was never sent.
		cc.releaseWriter()
		return f, false, cc.failure()
	}
	sent, err := cc.writeRequest(ctx, id, method, req)
	cc.releaseWriter()
	if err != nil {
		cc.forget(id)
		return f, sent, err
	}

	select {
	case f := <-ch:
		return f, true, nil
	case <-cc.done:
		select {
		case f := <-ch: // the reply beat the failure
			return f, true, nil
		default:
		}
		return f, true, cc.failure()
	case <-ctx.Done():
		if !cc.forget(id) {
			// Either the reply was delivered (it is in ch) or the
			// connection failed (nothing will come).
			select {
			case f := <-ch:
				return f, true, nil
			default:
			}
			return f, true, ctx.Err()
		}
		cc.cancel(id)
		return f, true, ctx.Err()
	}
}

// forget removes a pending call; it reports whether the call was still
// pending, that is, neither answered nor failed with the connection.
func (cc *clientConn) forget(id uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	_, ok := cc.pending[id]
	delete(cc.pending, id)
	return ok
}

// writeRequest writes a request frame; the caller holds the write token.
// It reports whether the frame was written in full, which is what decides
// ErrNotSent against ErrNoReply: the server acts only on complete frames. A
// write that ctx interrupts, or that fails, leaves a partial frame, so the
// connection is failed (its other calls get ErrNoReply).
func (cc *clientConn) writeRequest(ctx context.Context, id uint64, method uint8, req []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return false, context.DeadlineExceeded
		}
	}
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = cc.conn.SetWriteDeadline(time.Unix(1, 0))
		close(interrupted)
	})
	complete, err := writeFrame(cc.conn, &frame{typ: frameRequest, id: id, method: method, timeout: timeout, payload: req})
	if !stop() {
		<-interrupted
		if err == nil {
			_ = cc.conn.SetWriteDeadline(time.Time{})
		} else if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
	}
	if err != nil {
		cc.fail(fmt.Errorf("write failed: %w", err))
		return complete, err
	}
	return true, nil
}

// cancel asks the server to cancel call id's handler context. Best effort:
// the frame goes out now if the write token is free, else with the next
// write on this connection.
func (cc *clientConn) cancel(id uint64) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.cancels = append(cc.cancels, id)
	cc.mu.Unlock()
	select {
	case cc.sem <- struct{}{}:
		cc.releaseWriter()
	default:
		// The holder flushes it in releaseWriter.
	}
}

// releaseWriter writes queued cancel frames and gives up the write token.
// After releasing it re-checks the queue, so a cancel queued while the
// token was held is never stranded: either its owner got the token, or the
// previous holder sees the cancel here.
func (cc *clientConn) releaseWriter() {
	for {
		cc.mu.Lock()
		ids := cc.cancels
		cc.cancels = nil
		cc.mu.Unlock()
		if len(ids) > 0 {
			var b []byte
			for _, id := range ids {
				b = appendHeader(b, &frame{typ: frameCancel, id: id})
			}
			_ = cc.conn.SetWriteDeadline(time.Now().Add(cancelWriteTimeout))
			_, err := cc.conn.Write(b)
			_ = cc.conn.SetWriteDeadline(time.Time{})
			if err != nil {
				cc.fail(fmt.Errorf("write cancel: %w", err))
			}
		}
		<-cc.sem
		cc.mu.Lock()
		more := len(cc.cancels) > 0
		cc.mu.Unlock()
		if !more {
			return
		}
		select {
		case cc.sem <- struct{}{}:
		default:
			return // the new holder will flush
		}
	}
}
