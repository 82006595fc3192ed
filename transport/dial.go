package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// DefaultDialTimeout bounds a Dial whose context has no deadline, when
// Dialer.Timeout is zero.
const DefaultDialTimeout = 5 * time.Second

// Dialer opens connections to other nodes' Muxes: TCP, then the TLS client
// handshake when TLS is set, then the protocol byte and the hello. It
// consults Faults (if set) before dialing and registers the connection with
// it, so that a later partition closes it. The zero value dials plain TCP
// with no faults and an empty hello. A Dialer is safe for concurrent use and
// must not be modified after first use.
type Dialer struct {
	// TLS, when non-nil, is the client-side TLS configuration (see
	// TLSFiles.ClientConfig and ClusterKeyTLS). If its ServerName is empty,
	// the host part of the dialed address is used, so a certificate is
	// verified against the IP SAN when dialing host:port by IP. The Dialer
	// adds the node-role check: a server whose certificate lacks the
	// NodeRole SAN and one node identity fails the handshake.
	TLS *tls.Config
	// Hello is this node's side of the hello: its identity, and the judge
	// of the nodes it reaches. Nil presents empty ids and accepts every
	// server.
	Hello *Hello
	// LocalAddr is this node's advertised address, the "from" side that
	// Faults judges.
	LocalAddr string
	// Faults is the in-process fault switchboard for tests; nil in
	// production.
	Faults *Faults
	// Timeout bounds the whole dial (TCP, TLS handshake, protocol byte) when
	// ctx has no deadline. Zero means DefaultDialTimeout.
	Timeout time.Duration
}

// Dial connects to the Mux at addr, announces proto and runs the hello.
// The returned connection is ready for the protocol's own bytes, and
// PeerOf tells which node it reached. A dial forbidden by Faults fails with
// an error wrapping ErrPartitioned without touching the network; a node
// that refuses this one in the hello makes it fail with a *RefusedError.
//
// With TLS 1.3 the server verifies the client certificate after the client's
// handshake has returned; the hello's answer is the first read, so a server
// that rejects this node's certificate still fails the Dial.
func (d *Dialer) Dial(ctx context.Context, addr string, proto byte) (net.Conn, error) {
	if d.Faults != nil && !d.Faults.Allowed(d.LocalAddr, addr) {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, ErrPartitioned)
	}
	if _, ok := ctx.Deadline(); !ok {
		timeout := d.Timeout
		if timeout <= 0 {
			timeout = DefaultDialTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	var nd net.Dialer
	raw, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	conn := raw
	if d.TLS != nil {
		cfg := withNodeRole(d.TLS)
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				_ = raw.Close()
				return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
			}
			cfg.ServerName = host
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("transport: dial %s: TLS handshake: %w", addr, err)
		}
		conn = tc
	}

	// The deadline always exists here (see above); clear it once the hello
	// is done so the connection's owner starts with none. Closing raw when
	// ctx ends covers a cancellation before the deadline.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	if _, err := conn.Write(clientHelloBytes(proto, d.Hello)); err != nil {
		stop()
		_ = raw.Close()
		return nil, fmt.Errorf("transport: dial %s: write hello: %w", addr, err)
	}
	peer, err := clientHello(conn, addr, d.Hello)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		_ = raw.Close()
		var rerr *RefusedError
		if errors.As(err, &rerr) {
			return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
		}
		if _, ok := conn.(*tls.Conn); ok && isRemoteAlert(err) {
			return nil, fmt.Errorf("transport: dial %s: hello: %w (the node refused this node's certificate: it needs the %q role and this cluster's CA)", addr, err, NodeRole)
		}
		return nil, fmt.Errorf("transport: dial %s: hello: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	conn = &peerConn{Conn: conn, peer: peer}

	if d.Faults != nil {
		fc, err := d.Faults.track(d.LocalAddr, addr, conn, raw)
		if err != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
		}
		return fc, nil
	}
	return conn, nil
}

// isRemoteAlert reports a TLS alert sent by the peer: after a completed
// client handshake, that is a server refusing this node's certificate.
func isRemoteAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}
