package transport

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// Protocol bytes: the first byte a dialer writes on a new connection (after
// the TLS handshake, when TLS is on). The Mux routes on it.
const (
	// ProtoRaft marks a hashicorp/raft NetworkTransport stream.
	ProtoRaft byte = 1
	// ProtoRPC marks a node-to-node RPC connection (RPCServer/RPCClient).
	ProtoRPC byte = 2
)

// DefaultHandshakeTimeout bounds the TLS handshake, the protocol byte and
// the hello on an accepted connection when MuxConfig.HandshakeTimeout is
// zero.
const DefaultHandshakeTimeout = 5 * time.Second

// MuxConfig configures a Mux.
type MuxConfig struct {
	// TLS, when non-nil, makes the Mux a TLS server: every accepted
	// connection must complete a handshake before its protocol byte is
	// read. With ClientAuth set to tls.RequireAndVerifyClientCert (as
	// TLSFiles.ServerConfig and ClusterKeyTLS do) this is mutual TLS. The
	// Mux adds the node-role check to it: a client certificate without
	// the NodeRole SAN and one node identity fails the handshake, whatever
	// CA signed it. Nil means plain TCP.
	TLS *tls.Config
	// Hello is this node's side of the hello that follows the protocol
	// byte on every connection: its identity, and the judge of dialers.
	// Nil presents empty ids and accepts every dialer.
	Hello *Hello
	// Logger receives connection-level diagnostics; nil discards them. The
	// Mux logs with component=transport.mux.
	Logger *slog.Logger
	// HandshakeTimeout bounds the TLS handshake, the protocol byte and
	// the hello. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Handshakes, with TLS, bounds how fast the Mux starts TLS
	// handshakes (HandshakeLimit.Guard): a connection whose ClientHello
	// it does not allow fails its handshake there, before the node does
	// any crypto for it, and is counted as handshake_rate and logged once
	// per 10 s. A connection that never sends a whole ClientHello draws
	// nothing. Nil starts every one.
	Handshakes *HandshakeLimit
}

// Mux accepts connections on one listener and hands each to the
// sub-listener registered for its first byte, so that Raft and node RPC
// share one port (rqlite's tcp.Mux, plus TLS).
//
// Each accepted connection is handshaked in its own goroutine under a
// deadline, so a slow, silent or hostile peer never delays another. A
// connection with an unknown protocol byte, that fails the TLS handshake
// (a certificate from another CA or without the node role, plain TCP to a
// TLS Mux) or that the hello refuses, is closed and logged: one line of
// each kind per loglimit.Every, with a count of those left out, since
// anyone who reaches the port can open connections by the thousand (plain
// TCP garbage made 112,000 lines, 40 MB, in 20 s). One whose first byte
// starts an HTTP method is a client at the wrong port: it is answered with
// a short HTTP 421 saying so first (answerHTTP, bounded). Every refusal,
// logged or not, is counted by reason (Refusals). Sub-listeners hand out
// connections whose PeerOf is the dialer's node.
//
// Lifecycle: NewMux, Listen for each protocol, Serve (blocks), Close.
// Goroutines: the caller's Serve loop, and one short-lived goroutine per
// connection between accept and hand-over; Close stops them all and waits
// for the latter.
type Mux struct {
	ln               net.Listener
	tls              *tls.Config
	hello            *Hello
	log              *slog.Logger
	handshakeTimeout time.Duration
	done             chan struct{}     // closed by Close
	limit            *loglimit.Limiter // of the refusals' warnings
	refusals         muxRefusals       // by reason, since NewMux (Refusals)
	handshakes       *HandshakeLimit   // nil: unbounded

	mu      sync.Mutex
	closed  bool
	subs    map[byte]*muxListener
	pending map[net.Conn]pendingConn // raw conns accepted but not yet handed over
	wg      sync.WaitGroup           // per-connection handshake goroutines

	refused  int       // connections closed at MaxPending since the last warning
	lastWarn time.Time // of the last such warning

	wrongPort *WrongPort // answers HTTP clients, bounded
}

// MaxPending bounds the node-port connections a Mux holds before they
// authenticate (each for at most its handshake timeout). Nodes open a few
// each; past the bound, anyone could make the agent run out of file
// descriptors by opening connections and sending nothing. A connection
// past it closes the one that has waited longest (a node authenticates
// in milliseconds, so silent ones go first), and the first such closing
// of each minute is logged.
const MaxPending = 256

// NewMux returns a Mux serving ln. It takes ownership of ln: Close closes it.
func NewMux(ln net.Listener, cfg MuxConfig) *Mux {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	tlsCfg := cfg.TLS
	if tlsCfg != nil {
		tlsCfg = cfg.Handshakes.Guard(withNodeRole(tlsCfg), nil)
	}
	return &Mux{
		ln:               ln,
		tls:              tlsCfg,
		hello:            cfg.Hello,
		log:              log.With("component", "transport.mux"),
		handshakeTimeout: timeout,
		handshakes:       cfg.Handshakes,
		done:             make(chan struct{}),
		limit:            loglimit.New(),
		subs:             make(map[byte]*muxListener),
		pending:          make(map[net.Conn]pendingConn),
		wrongPort:        NewWrongPort(PortNode, "a leasenode node port (Raft and node RPC)"),
	}
}

// Listen registers proto and returns the listener that receives connections
// whose first byte is proto. Call it before Serve, so that no connection for
// proto is refused as unknown. Registering the same byte twice is a
// programming error and panics. The returned listener's Addr is the Mux's.
// Closing it makes later connections for proto be closed on arrival; closing
// the Mux closes it.
func (m *Mux) Listen(proto byte) net.Listener {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.subs[proto]; dup {
		panic(fmt.Sprintf("transport: Mux.Listen: protocol byte %d registered twice", proto))
	}
	l := &muxListener{m: m, proto: proto, ch: make(chan handoff), done: make(chan struct{})}
	if m.closed {
		l.closeOnce.Do(func() { close(l.done) })
	}
	m.subs[proto] = l
	return l
}

// Addr returns the address of the underlying listener.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// Serve runs the accept loop until Close. It returns nil after Close, and
// the listener's error if the listener fails for another reason.
// Temporary accept errors (such as running out of file descriptors) are
// retried with backoff.
func (m *Mux) Serve() error {
	var delay time.Duration
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			if m.isClosed() {
				return nil
			}
			if isTemporary(err) {
				delay = backoff(delay)
				m.log.Warn("accept failed; retrying", "error", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-m.done:
					return nil
				}
			}
			return fmt.Errorf("transport: mux accept: %w", err)
		}
		delay = 0

		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			_ = conn.Close()
			return nil
		}
		if len(m.pending) >= MaxPending {
			// Make room by closing the connection that has waited
			// longest: a node's handshake takes milliseconds, so only
			// connections opened and left silent lose their slot, and
			// an outsider holding every slot cannot keep nodes out.
			// If every one has authenticated already (they wait for
			// Accept), the new connection is closed instead.
			victim := conn
			for c, p := range m.pending {
				if !p.authed && (victim == conn || p.since.Before(m.pending[victim].since)) {
					victim = c
				}
			}
			delete(m.pending, victim)
			m.refusals[refusedMaxPending].Add(1)
			_ = victim.Close()
			m.refused++
			if time.Since(m.lastWarn) >= time.Minute {
				m.log.Warn("node port: too many connections waiting to authenticate; closing the longest waiting (nodes need a few each and authenticate at once: someone else is opening them)",
					"max_pending", MaxPending, "closed", m.refused, "remote", conn.RemoteAddr().String())
				m.lastWarn, m.refused = time.Now(), 0
			}
		}
		if len(m.pending) >= MaxPending { // the new one was the victim
			m.mu.Unlock()
			continue
		}
		m.pending[conn] = pendingConn{since: time.Now()}
		m.wg.Add(1)
		m.mu.Unlock()
		go m.handle(conn)
	}
}

// Close stops Serve, closes the listener, every sub-listener (their Accept
// returns net.ErrClosed) and every connection not yet handed over, and
// waits for the per-connection goroutines. Connections already returned by
// a sub-listener's Accept belong to their acceptor and stay open. Close is
// idempotent.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	conns := make([]net.Conn, 0, len(m.pending))
	for c := range m.pending {
		conns = append(conns, c)
	}
	subs := make([]*muxListener, 0, len(m.subs))
	for _, l := range m.subs {
		subs = append(subs, l)
	}
	m.mu.Unlock()

	err := m.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for _, c := range conns {
		_ = c.Close()
	}
	for _, l := range subs {
		_ = l.Close()
	}
	m.wg.Wait()
	return err
}

func (m *Mux) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// gone reports whether raw's handshake was cut from outside: by Close, or
// by Serve closing it to make room past MaxPending (which drops it from the
// pending set first). A handshake that fails then is not the peer's fault:
// it is counted once, as max_pending or not at all, and not logged as what
// the failed read would otherwise suggest (a TLS handshake failure blamed
// on the peer's certificate, found by an outsider's review).
func (m *Mux) gone(raw net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, pending := m.pending[raw]
	return m.closed || !pending
}

// forget drops raw from the pending set and closes it.
func (m *Mux) forget(raw net.Conn) {
	m.mu.Lock()
	delete(m.pending, raw)
	m.mu.Unlock()
	_ = raw.Close()
}

// handle runs the handshake for one accepted connection and hands it over.
func (m *Mux) handle(raw net.Conn) {
	defer m.wg.Done()
	log := m.log.With("remote", raw.RemoteAddr().String())

	// One deadline covers the TLS handshake and the protocol byte. Close
	// closes raw, which ends either at once.
	_ = raw.SetDeadline(time.Now().Add(m.handshakeTimeout))
	conn := raw
	if m.tls != nil {
		// A TLS client starts with a handshake record. Checking that byte
		// first refuses a plain-TCP dialer at once, with a clear log,
		// instead of leaving the TLS stack waiting for a full record
		// header until the deadline.
		var first [1]byte
		if _, err := io.ReadFull(raw, first[:]); err != nil {
			if !m.gone(raw) {
				m.timedOut(err)
				log.Debug("no TLS handshake; closing connection", "error", err)
			}
			m.forget(raw)
			return
		}
		if first[0] != tlsRecordHandshake {
			m.refuse(refusedPlainTCP, first[0])
			m.warn(log, "refused a node-port connection: plain TCP, but the node port is mutual TLS: a node needs the cluster key or a node certificate from the cluster's CA"+looksLike(first[0]), "first_byte", first[0])
			m.answerHTTP(raw, first[0])
			m.forget(raw)
			return
		}
		tc := tls.Server(&replayConn{Conn: raw, first: first[0], pending: true}, m.tls)
		if err := tc.Handshake(); err != nil {
			if errors.Is(err, ErrHandshakeRate) {
				// Refused at its ClientHello (m.tls is Guarded), before
				// the node spent an X25519 exchange and a signature: a
				// replayed ClientHello costs the sender nothing.
				m.refusals[refusedHandshakeRate].Add(1)
				m.warn(log, fmt.Sprintf("refused a node-port connection at its TLS ClientHello: past %d handshakes a second from its /%d (IPv6 /64) or %d from all sources (raise agent --max-handshake-rate-per-source or --max-handshake-rate if these are nodes)",
					m.handshakes.PerSource(), HandshakeV4Bits, m.handshakes.Total()))
			} else if !m.gone(raw) {
				// Told apart, so that an operator chases certificates only
				// when they are the cause: under load, peers' dials that
				// timed out or were reset were logged as a certificate
				// problem (outsider review rev-out37).
				var ne net.Error
				switch {
				case errors.As(err, &ne) && ne.Timeout():
					m.timedOut(err)
					m.warn(log, "a node-port connection did not finish its TLS handshake in time: a slow or overloaded peer, or a connection opened and left silent", "error", err)
				case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
					m.refusals[refusedTLSHandshake].Add(1)
					m.warn(log, "a node-port connection closed during its TLS handshake: its peer gave up or stopped (a certificate it refused shows as a TLS alert instead)", "error", err)
				default:
					m.refusals[refusedTLSHandshake].Add(1)
					m.warn(log, "refused a node-port connection: TLS handshake failed (the error says why): a node needs a certificate with the node role from this cluster's CA: the one --tls-ca names, or, with a cluster key and no TLS files, the one the key derives", "error", err)
				}
			}
			m.forget(raw)
			return
		}
		conn = tc
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		if !m.gone(raw) {
			m.timedOut(err)
			log.Debug("no protocol byte; closing connection", "error", err)
		}
		m.forget(raw)
		return
	}
	m.mu.Lock()
	l := m.subs[b[0]]
	m.mu.Unlock()
	if l == nil {
		m.refuse(refusedUnknownProtocol, b[0])
		m.warn(log, "unknown protocol byte; closing connection"+looksLike(b[0]), "proto", b[0])
		m.answerHTTP(raw, b[0])
		m.forget(raw)
		return
	}
	peer, refused, err := serverHello(conn, m.hello)
	if err != nil {
		switch {
		case m.gone(raw):
		case refused:
			m.refusals[refusedHello].Add(1)
			// The judge (MuxConfig.Hello.Check) logs its refusals as
			// loudly as they deserve, once per peer.
			log.Debug("refused in hello; closing connection", "peer", peer.ID, "peer_cluster", peer.ClusterID, "reason", err)
		case errors.Is(err, errProtocol):
			m.refusals[refusedBadHello].Add(1)
			m.warn(log, "bad hello; closing connection", "error", err)
		default:
			m.timedOut(err)
			log.Debug("no hello; closing connection", "error", err)
		}
		m.forget(raw)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	m.mu.Lock()
	p, ok := m.pending[raw]
	if ok {
		// Past MaxPending, only connections still authenticating make
		// room: this one is a node's.
		p.authed = true
		m.pending[raw] = p
	}
	m.mu.Unlock()
	if !ok {
		_ = raw.Close() // made room for a newer connection meanwhile
		return
	}

	select {
	case l.ch <- handoff{conn: &peerConn{Conn: conn, peer: peer}, raw: raw}:
		// The acceptor removes raw from pending (see muxListener.Accept).
	case <-l.done:
		log.Debug("listener for protocol closed; closing connection", "proto", b[0])
		m.forget(raw)
	case <-m.done:
		m.forget(raw)
	}
}

// refuse counts a connection refused for reason, whose first byte was
// first: as refusedHTTPClient instead if that byte starts an HTTP method.
func (m *Mux) refuse(reason muxRefusal, first byte) {
	if LooksHTTP(first) {
		reason = refusedHTTPClient
	}
	m.refusals[reason].Add(1)
}

// timedOut counts a connection closed because err, from reading its
// handshake, is the handshake timeout's.
func (m *Mux) timedOut(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		m.refusals[refusedHandshakeTimeout].Add(1)
	}
}

// warn logs a refused connection: msg, which names the kind of refusal
// (a fixed text, with at most looksLike's few), at most once per
// loglimit.Every, with the count of those left out since the last.
func (m *Mux) warn(log *slog.Logger, msg string, args ...any) {
	ok, skipped := m.limit.Allow(msg)
	if !ok {
		return
	}
	if skipped > 0 {
		args = append(args, loglimit.Skipped, skipped)
	}
	log.Warn(msg, args...)
}

// answerHTTP answers conn, whose first byte (already read) was first,
// with the node port's wrong-port answer if that byte starts an HTTP
// method (WrongPort.Answer). It reads nothing more from conn.
func (m *Mux) answerHTTP(conn net.Conn, first byte) { m.wrongPort.Answer(conn, first, m.done) }

// tlsRecordHandshake is the TLS record content type of a ClientHello.
const tlsRecordHandshake = 22

// replayConn returns first before the rest of Conn's bytes: it puts back the
// byte the Mux read to tell TLS from plain TCP.
type replayConn struct {
	net.Conn
	first   byte
	pending bool // first not yet returned; only the TLS stack reads, one goroutine at a time
}

func (c *replayConn) Read(b []byte) (int, error) {
	if c.pending && len(b) > 0 {
		c.pending = false
		b[0] = c.first
		return 1, nil
	}
	return c.Conn.Read(b)
}

// handoff carries a ready connection to a sub-listener. raw is the TCP
// connection under conn (the same value without TLS), the key in pending.
type handoff struct {
	conn net.Conn
	raw  net.Conn
}

// pendingConn is what a Mux knows of a connection it has not handed over.
type pendingConn struct {
	since  time.Time // accepted
	authed bool      // its hello passed: it waits for Accept only
}

// muxListener is the net.Listener that Mux.Listen returns.
type muxListener struct {
	m         *Mux
	proto     byte
	ch        chan handoff
	done      chan struct{}
	closeOnce sync.Once
}

// Accept waits for the next connection for this protocol. It returns
// net.ErrClosed after the listener or the Mux is closed.
func (l *muxListener) Accept() (net.Conn, error) {
	select {
	case h := <-l.ch:
		// Ownership passes to the caller here, under the Mux lock, so a
		// concurrent Mux.Close either closed the conn already (and we
		// report closed) or will never touch it.
		l.m.mu.Lock()
		closed := l.m.closed
		delete(l.m.pending, h.raw)
		l.m.mu.Unlock()
		select {
		case <-l.done:
			closed = true
		default:
		}
		if closed {
			_ = h.raw.Close()
			return nil, net.ErrClosed
		}
		return h.conn, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close makes Accept return net.ErrClosed; connections for this protocol
// that arrive later are closed by the Mux. Idempotent.
func (l *muxListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

// Addr returns the Mux's address.
func (l *muxListener) Addr() net.Addr { return l.m.Addr() }

// isTemporary reports accept errors worth retrying (EMFILE, ECONNABORTED).
// net.Error's Temporary is deprecated for general use but is still what the
// standard library's own servers consult for accept errors.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// backoff doubles d between 5ms and 1s.
func backoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, time.Second)
}

// looksLike names what a connection's first byte suggests the peer speaks,
// when that is not leasenode's node protocol: HTTP is a client at the
// wrong port, TLS a node configured with a cluster key or TLS talking to
// one without.
func looksLike(b byte) string {
	switch {
	case b == tlsRecordHandshake:
		return " (it speaks TLS: it has a cluster key or TLS and this node has neither; give every node the same --cluster-key-file)"
	case LooksHTTP(b):
		return " (it looks like HTTP: this is the node port; clients use the client API port, agent --api)"
	}
	return ""
}
