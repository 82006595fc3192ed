package node_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// refusals returns n's count of refusals at port for reason, failing t if
// n does not report that reason.
func refusals(t *testing.T, n *node.Node, port, reason string) uint64 {
	t.Helper()
	for _, r := range n.Refusals() {
		if r.Port == port && r.Reason == reason {
			return r.Count
		}
	}
	t.Fatalf("no refusals reported for port %q, reason %q", port, reason)
	return 0
}

// A TLS client API counts the connections whose handshake fails as
// tls_handshake refusals: plain HTTP to the TLS port, a client of
// another CA, a connection closed before its handshake. One that the
// node closes for a reason of its own is not counted twice, and a good
// client's connection is not counted. Fails without the count (the
// reason is missing).
func TestAPITLSHandshakeRefusals(t *testing.T) {
	var lg logs
	c, tlsCfg := budgetSetups[1].start(t, 1, &lg, nil)
	l := c.Node(0)
	addr := l.APIAddr()
	budgetSetups[1].status(t, addr, tlsCfg) // a good client: not counted

	// Plain HTTP to the TLS port.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, conn)
	conn.Close()
	// A client of another CA.
	other, err := transporttest.NewCA(t).IssueClient(t, "stranger").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	other.RootCAs = tlsCfg.RootCAs
	if tc, err := tls.Dial("tcp", addr, other); err == nil {
		tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, tc) // TLS 1.3: the server's refusal comes after the client's handshake
		tc.Close()
	}
	// A connection closed at once.
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		if n := refusals(t, l, node.PortAPI, "tls_handshake"); n != 3 {
			return fmt.Errorf("tls_handshake refusals: %d, want 3", n)
		}
		return nil
	})
	lg.waitFor(t, 5*time.Second, "TLS handshake error")
}
