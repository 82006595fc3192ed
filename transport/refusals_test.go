package transport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// Every kind of node-port refusal moves its own counter, and only that
// one: plain TCP, an HTTP client and another cluster key on a keyed node
// port; an unknown protocol byte, a hello that is not leasenode's and a
// peer of another cluster on a plain one. (handshake_timeout and
// max_pending: TestMuxHandshakeTimeout, TestMuxBoundsPendingConnections.)
func TestMuxCountsRefusals(t *testing.T) {
	noLeaks(t)
	key, otherKey := clusterKey(t), clusterKey(t)
	srvTLS, _ := keyTLS(t, key, "n1")
	_, wrongKey := keyTLS(t, otherKey, "n9")
	keyed, _ := serveMux(t, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"}})
	plain, _ := serveMux(t, transport.MuxConfig{Hello: &transport.Hello{
		NodeID:    "n1",
		ClusterID: func() string { return "7f3a" },
		Check: func(p transport.Peer, _ bool) error {
			if p.ClusterID != "7f3a" {
				return fmt.Errorf("this cluster is 7f3a, not %s", p.ClusterID)
			}
			return nil
		},
	}})

	dialFails := func(d *transport.Dialer, proto byte) func(addr string) {
		return func(addr string) {
			if c, err := d.Dial(context.Background(), addr, proto); err == nil {
				c.Close()
				t.Fatal("Dial succeeded, want a refusal")
			}
		}
	}
	// writeUntilClosed writes b on a plain TCP connection and reads until
	// the node closes it.
	writeUntilClosed := func(b string) func(addr string) {
		return func(addr string) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, b); err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.EOF) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("the node did not close the connection")
				}
			}
		}
	}
	for _, step := range []struct {
		reason string
		m      *transport.Mux
		do     func(addr string)
	}{
		{"plain_tcp", keyed, dialFails(&transport.Dialer{}, transport.ProtoRPC)},
		{"http_client", keyed, writeUntilClosed("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"tls_handshake", keyed, dialFails(&transport.Dialer{TLS: wrongKey}, transport.ProtoRPC)},
		{"unknown_protocol", plain, dialFails(&transport.Dialer{}, 99)},
		{"bad_hello", plain, writeUntilClosed(string([]byte{transport.ProtoRPC, 'X', 1}))},
		{"hello_refused", plain, dialFails(&transport.Dialer{Hello: &transport.Hello{NodeID: "n5",
			ClusterID: func() string { return "91bc" }}}, transport.ProtoRPC)},
	} {
		before := refusalCounts(t, step.m)
		step.do(step.m.Addr().String())
		want := before
		want[step.reason]++
		deadline := time.Now().Add(10 * time.Second)
		for got := refusalCounts(t, step.m); !maps.Equal(got, want); got = refusalCounts(t, step.m) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: refusals %v, want %v", step.reason, got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// refusalCounts returns m's refusals by reason, checking their port.
func refusalCounts(t *testing.T, m *transport.Mux) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, r := range m.Refusals() {
		if r.Port != transport.PortNode {
			t.Fatalf("a Mux refusal at port %q", r.Port)
		}
		out[r.Reason] = r.Count
	}
	return out
}

// A TLS node port starts at most MuxConfig.Handshakes' TLS handshakes: of
// 20 TLS clients with the cluster key from one /24, past a limit of 1 a
// second from one source (a burst of 2), those past it are refused at
// their ClientHello, counted as handshake_rate (never also
// tls_handshake). A node dialing from another /24 meanwhile connects.
// Fails without the limit (no handshake_rate refusals: all 20 connect).
func TestMuxHandshakeRate(t *testing.T) {
	noLeaks(t)
	key := clusterKey(t)
	srvTLS, cliTLS := keyTLS(t, key, "n1")
	m, _ := serveMux(t, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"},
		Handshakes: transport.NewHandshakeLimit(1, 1000)})
	const n = 20
	connected := 0
	start := time.Now()
	for i := range n {
		d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(2+i))}}
		c, err := d.Dial("tcp", m.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, cliTLS)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err == nil {
			connected++
		}
		tc.Close()
	}
	allowed := 2 + int(time.Since(start).Seconds()+1)
	if connected > allowed {
		t.Fatalf("%d of %d clients from one /24 finished their handshake, want at most %d", connected, n, allowed)
	}
	var got map[string]uint64
	for deadline := time.Now().Add(10 * time.Second); ; {
		got = refusalCounts(t, m)
		if got["handshake_rate"] == uint64(n-connected) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got["handshake_rate"] != uint64(n-connected) || got["tls_handshake"] != 0 {
		t.Fatalf("of %d connections, %d connected: %d handshake_rate, %d tls_handshake refusals; want %d and 0",
			n, connected, got["handshake_rate"], got["tls_handshake"], n-connected)
	}
	c, err := (&transport.Dialer{TLS: cliTLS}).Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	if err != nil {
		t.Fatalf("a node from another /24 could not connect: %v", err)
	}
	c.Close()
}

// A node port's handshake limit is drawn by ClientHellos, not by first
// bytes: while connections from four /24s each send one handshake-record
// byte and reset, as fast as they can, a node dialing from another /24
// connects every time. The limit (20 a second, a burst of 20) is below
// what the flood sends, so drawing at the first byte would give it the
// whole total (outsider review s32 #6: nodes' vote requests refused
// during such a flood). Fails without the fix (most dials refused).
func TestMuxOneByteConnectionsDrawNoHandshakes(t *testing.T) {
	m, cliTLS := limitedMux(t, transport.NewHandshakeLimit(20, 20))
	stop := transporttest.OneByteFlood(t, m.Addr().String(), 4, func() uint64 {
		got := refusalCounts(t, m)
		return got["handshake_rate"] + got["tls_handshake"]
	})
	transporttest.DialsDuringFlood(t, 10, "dials from another /24", "one-byte connections", stop, rpcDial(m, cliTLS))
}

// limitedMux serves a node port with the cluster key and handshake
// limit, and returns it with a node's client configuration (no goroutine
// may outlive the test).
func limitedMux(t *testing.T, limit *transport.HandshakeLimit) (*transport.Mux, *tls.Config) {
	t.Helper()
	noLeaks(t)
	srvTLS, cliTLS := keyTLS(t, clusterKey(t), "n1")
	m, _ := serveMux(t, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"}, Handshakes: limit})
	return m, cliTLS
}

// rpcDial returns a dial of an RPC stream to m with cfg, for
// transporttest.DialsDuringFlood.
func rpcDial(m *transport.Mux, cfg *tls.Config) func() (io.Closer, error) {
	d := &transport.Dialer{TLS: cfg}
	return func() (io.Closer, error) {
		return d.Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	}
}

// While four /24s replay whole ClientHellos, far more than a node port's
// total (20 a second) and all of it, a node dialing from another /24 that
// has started no handshake lately connects, twice: the reserve serves
// light prefixes when the total is spent (outsider review s32 #6: a
// candidate's vote requests were refused during a flood). Fails without
// the reserve (the node races the flood for each token and loses).
func TestMuxLightSourceConnectsDuringAFlood(t *testing.T) {
	m, cliTLS := limitedMux(t, transport.NewHandshakeLimit(20, 20))
	stop := transporttest.Flood(t, m.Addr().String(), 4, transporttest.ClientHello(t, cliTLS), true, func() uint64 {
		return refusalCounts(t, m)["handshake_rate"]
	})
	transporttest.DialsDuringFlood(t, 2, "dials from another /24", "ClientHellos", stop, rpcDial(m, cliTLS))
}

// A node port's known addresses (HandshakeLimit.Known: the cluster's
// nodes) connect however often during a flood of replayed ClientHellos
// that holds the total: ten dials in a row from 127.0.0.1, more than a
// light prefix gets from the reserve, all connect. Fails without Known.
func TestMuxKnownSourcesConnectDuringAFlood(t *testing.T) {
	limit := transport.NewHandshakeLimit(20, 20)
	limit.Known = func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) }
	m, cliTLS := limitedMux(t, limit)
	stop := transporttest.Flood(t, m.Addr().String(), 4, transporttest.ClientHello(t, cliTLS), true, func() uint64 {
		return refusalCounts(t, m)["handshake_rate"]
	})
	transporttest.DialsDuringFlood(t, 10, "dials from a known address", "ClientHellos", stop, rpcDial(m, cliTLS))
}
