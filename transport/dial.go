package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// DefaultDialTimeout bounds a Dial whose context has no deadline, when
// Dialer.Timeout is zero.
const DefaultDialTimeout = 5 * time.Second

// Dialer opens connections to other nodes' Muxes: TCP, then the TLS client
// handshake when TLS is set, then the protocol byte. It consults Faults (if
// set) before dialing and registers the connection with it, so that a later
// partition closes it. The zero value dials plain TCP with no faults. A
// Dialer is safe for concurrent use and must not be modified after first use.
type Dialer struct {
	// TLS, when non-nil, is the client-side TLS configuration (see
	// TLSFiles.ClientConfig). If its ServerName is empty, the host part of
	// the dialed address is used, so a certificate is verified against the
	// IP SAN when dialing host:port by IP.
	TLS *tls.Config
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

// Dial connects to the Mux at addr and announces proto. The returned
// connection is ready for the protocol's own bytes. A dial forbidden by
// Faults fails with an error wrapping ErrPartitioned without touching the
// network.
//
// With TLS 1.3 the server verifies the client certificate after the client's
// handshake has returned, so a server that rejects this node's certificate
// shows up as an error on the first read, not here.
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
		cfg := d.TLS
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				_ = raw.Close()
				return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
			}
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("transport: dial %s: TLS handshake: %w", addr, err)
		}
		conn = tc
	}

	// The deadline always exists here (see above); clear it once the byte
	// is out so the connection's owner starts with none.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetWriteDeadline(dl)
	}
	if _, err := conn.Write([]byte{proto}); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("transport: dial %s: write protocol byte: %w", addr, err)
	}
	_ = conn.SetWriteDeadline(time.Time{})

	if d.Faults != nil {
		fc, err := d.Faults.track(d.LocalAddr, addr, conn, raw)
		if err != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
		}
		return fc, nil
	}
	return conn, nil
}
