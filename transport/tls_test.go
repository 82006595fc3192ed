package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// noLeaks checks for leaked goroutines after every other cleanup of t; call
// it first.
func noLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// tlsMux serves a TLS Mux with a ProtoRaft listener; cleanup closes it.
func tlsMux(t *testing.T, cfg *tls.Config) (*transport.Mux, net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := transport.NewMux(ln, transport.MuxConfig{TLS: cfg})
	raftLn := m.Listen(transport.ProtoRaft)
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		_ = m.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return m, raftLn
}

// accept returns the next connection on ln, failing after 10s.
func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		ch <- c
	}()
	select {
	case c := <-ch:
		if c == nil {
			t.Fatal("Accept failed")
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	case <-time.After(10 * time.Second):
		_ = ln.Close()
		<-ch
		t.Fatal("nothing accepted within 10s")
		return nil
	}
}

// sendMarker writes msg on c and checks the accepted side reads it.
func sendMarker(t *testing.T, c, s net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q, %v; want %q", buf, err, msg)
	}
}

// expectRejected checks that a connection the Mux refused is closed by it:
// the dial fails, or the first read does.
func expectRejected(t *testing.T, c net.Conn, dialErr error) {
	t.Helper()
	if dialErr != nil {
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("rejected connection still open: read error %v", err)
	}
}

// Both sides present and verify certificates from the shared CA.
func TestMuxMutualTLS(t *testing.T) {
	noLeaks(t)
	ca := transporttest.NewCA(t)
	func() {
		m, ln := tlsMux(t, ca.ServerConfig(t, "n1"))
		d := &transport.Dialer{TLS: ca.ClientConfig(t, "n2")}
		c, err := d.Dial(context.Background(), m.Addr().String(), transport.ProtoRaft)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer c.Close()
		s := accept(t, ln)
		sendMarker(t, c, s, "over mTLS")
		sendMarker(t, s, c, "and back")

		if p, ok := transport.PeerOf(s); !ok || p.ID != "n2" || !p.Authenticated {
			t.Fatalf("server saw peer %+v (%v), want authenticated n2", p, ok)
		}
		if p, ok := transport.PeerOf(c); !ok || p.ID != "n1" || !p.Authenticated {
			t.Fatalf("client reached peer %+v (%v), want authenticated n1", p, ok)
		}
		tc, ok := s.(interface{ NetConn() net.Conn }).NetConn().(*tls.Conn)
		if !ok {
			t.Fatalf("accepted %T, want a *tls.Conn underneath", s)
		}
		st := tc.ConnectionState()
		if st.Version != tls.VersionTLS13 {
			t.Fatalf("negotiated TLS version %x, want 1.3", st.Version)
		}
	}()
}

// A client certificate from another CA, and a plain-TCP client, are
// refused; neither reaches the listener nor disturbs the next good client.
func TestMuxRejectsUntrustedClients(t *testing.T) {
	noLeaks(t)
	ca, other := transporttest.NewCA(t), transporttest.NewCA(t)
	m, ln := tlsMux(t, ca.ServerConfig(t, "n1"))
	addr := m.Addr().String()

	// The foreign client trusts our CA (so its own handshake can finish)
	// but presents a certificate that our CA did not sign.
	foreign := other.ClientConfig(t, "intruder")
	foreign.RootCAs = ca.Pool()
	c, err := (&transport.Dialer{TLS: foreign}).Dial(context.Background(), addr, transport.ProtoRaft)
	expectRejected(t, c, err)

	c, err = (&transport.Dialer{}).Dial(context.Background(), addr, transport.ProtoRaft)
	expectRejected(t, c, err)

	good, err := (&transport.Dialer{TLS: ca.ClientConfig(t, "n2")}).Dial(context.Background(), addr, transport.ProtoRaft)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	// The first connection the listener ever yields is the good one.
	sendMarker(t, good, accept(t, ln), "trusted")
}

// The client verifies the server: a certificate from another CA, or one
// without the dialed IP, fails the dial.
func TestDialVerifiesServer(t *testing.T) {
	noLeaks(t)
	ca, other := transporttest.NewCA(t), transporttest.NewCA(t)
	client := ca.ClientConfig(t, "n2")

	t.Run("foreign CA", func(t *testing.T) {
		m, _ := tlsMux(t, other.ServerConfig(t, "n1"))
		_, err := (&transport.Dialer{TLS: client}).Dial(context.Background(), m.Addr().String(), transport.ProtoRaft)
		var verr *tls.CertificateVerificationError
		if !errors.As(err, &verr) {
			t.Fatalf("Dial: %v, want a certificate verification error", err)
		}
	})
	t.Run("wrong IP SAN", func(t *testing.T) {
		m, _ := tlsMux(t, ca.ServerConfig(t, "n1", net.IPv4(127, 0, 0, 2)))
		_, err := (&transport.Dialer{TLS: client}).Dial(context.Background(), m.Addr().String(), transport.ProtoRaft)
		var herr x509.HostnameError
		if !errors.As(err, &herr) {
			t.Fatalf("Dial: %v, want a hostname (IP SAN) error", err)
		}
	})
	t.Run("ServerName override", func(t *testing.T) {
		m, ln := tlsMux(t, ca.ServerConfig(t, "n1", net.IPv4(127, 0, 0, 2)))
		files := ca.Issue(t, "n2")
		files.ServerName = "n1"
		cfg, err := files.ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		c, err := (&transport.Dialer{TLS: cfg}).Dial(context.Background(), m.Addr().String(), transport.ProtoRaft)
		if err != nil {
			t.Fatalf("Dial with ServerName n1: %v", err)
		}
		defer c.Close()
		sendMarker(t, c, accept(t, ln), "by name")
	})
}

// Node RPC over mutual TLS.
func TestRPCOverMutualTLS(t *testing.T) {
	noLeaks(t)
	ca := transporttest.NewCA(t)
	func() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		m := transport.NewMux(ln, transport.MuxConfig{TLS: ca.ServerConfig(t, "n1")})
		srv := transport.NewRPCServer(m.Listen(transport.ProtoRPC), func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
			return append(req, '!'), nil
		}, transport.RPCServerConfig{})
		go func() { _ = m.Serve() }()
		go func() { _ = srv.Serve() }()
		defer m.Close()
		defer srv.Close()

		c := transport.NewRPCClient(transport.RPCClientConfig{Dialer: &transport.Dialer{TLS: ca.ClientConfig(t, "n2")}})
		defer c.Close()
		got, err := c.Call(context.Background(), m.Addr().String(), 1, []byte("secure"))
		if err != nil || string(got) != "secure!" {
			t.Fatalf("Call = %q, %v", got, err)
		}
	}()
}

func TestTLSFiles(t *testing.T) {
	if (transport.TLSFiles{}).Enabled() {
		t.Fatal("zero TLSFiles is Enabled")
	}
	ca := transporttest.NewCA(t)
	files := ca.Issue(t, "n1")
	if !files.Enabled() {
		t.Fatal("issued TLSFiles not Enabled")
	}
	srv, err := files.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	if srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.MinVersion < tls.VersionTLS12 || srv.ClientCAs == nil {
		t.Fatalf("server config %+v is not mutual TLS >= 1.2", srv)
	}
	cli, err := files.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cli.RootCAs == nil || len(cli.Certificates) != 1 || cli.InsecureSkipVerify || cli.MinVersion < tls.VersionTLS12 {
		t.Fatalf("client config %+v does not present and verify", cli)
	}

	partial := files
	partial.CAFile = ""
	if _, err := partial.ServerConfig(); err == nil || !partial.Enabled() {
		t.Fatal("partial TLSFiles: want Enabled and an error")
	}
	notPEM := files
	notPEM.CAFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(notPEM.CAFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := notPEM.ClientConfig(); err == nil {
		t.Fatal("CA file without PEM accepted")
	}
	missing := files
	missing.KeyFile = filepath.Join(t.TempDir(), "nope.key")
	if _, err := missing.ServerConfig(); err == nil {
		t.Fatal("missing key file accepted")
	}
}
