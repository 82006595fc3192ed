package transport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport"
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

// A TLS node port starts at most MuxConfig.Handshakes' TLS handshakes: 20
// connections from one /24 that start a handshake record, past a limit of
// 1 a second from one source (a burst of 2), are closed after their first
// byte, counted as handshake_rate; the few allowed fail their handshake
// (tls_handshake). A node dialing from another /24 meanwhile connects.
// Fails without the limit (no handshake_rate refusals: all 20 reach
// crypto/tls).
func TestMuxHandshakeRate(t *testing.T) {
	noLeaks(t)
	key := clusterKey(t)
	srvTLS, cliTLS := keyTLS(t, key, "n1")
	m, _ := serveMux(t, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"},
		Handshakes: transport.NewHandshakeLimit(1, 1000)})
	const n = 20
	start := time.Now()
	for i := range n {
		d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(2+i))}}
		c, err := d.Dial("tcp", m.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		// A handshake record header and a body that is no ClientHello.
		if _, err := c.Write([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, c); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the node port did not close the connection")
			}
		}
		c.Close()
	}
	allowed := 2 + int(time.Since(start).Seconds()+1)
	var got map[string]uint64
	for deadline := time.Now().Add(10 * time.Second); ; {
		got = refusalCounts(t, m)
		if got["handshake_rate"]+got["tls_handshake"] == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got["handshake_rate"]+got["tls_handshake"] != n || got["handshake_rate"] < uint64(n-allowed) {
		t.Fatalf("of %d connections: %d handshake_rate, %d tls_handshake refusals; want %d in all, at most %d handshakes",
			n, got["handshake_rate"], got["tls_handshake"], n, allowed)
	}
	c, err := (&transport.Dialer{TLS: cliTLS}).Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	if err != nil {
		t.Fatalf("a node from another /24 could not connect: %v", err)
	}
	c.Close()
}
