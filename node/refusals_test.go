package node_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
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

// reasonOf returns the reason of the ErrorDetail a client API error
// carries (REASON_UNSPECIFIED if none).
func reasonOf(err error) pb.Reason {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return pb.Reason_REASON_UNSPECIFIED
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ed, ok := v.(*pb.ErrorDetail); ok {
				return ed.GetReason()
			}
		}
	}
	return pb.Reason_REASON_UNSPECIFIED
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

	plainGet(t, &net.Dialer{}, addr) // plain HTTP to the TLS port
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

// A TLS client API starts at most Limits.MaxHandshakeRatePerSource TLS
// handshakes a second from one /24 (1 here, a burst of 2): of 20 clients
// with a good certificate dialing from one /24, those past it are closed
// after their first bytes, before the node spends a handshake, counted as
// handshake_rate (never also tls_handshake) and logged naming the flags,
// while a client from another /24 connects. Plain HTTP to the TLS port,
// whose bytes are no handshake, is not counted; nor is anything on an
// h2c API. Fails without the limit (all 20 connect).
func TestAPIHandshakeRate(t *testing.T) {
	for _, s := range budgetSetups {
		t.Run(s.name, func(t *testing.T) {
			var lg logs
			c, tlsCfg := s.start(t, 1, &lg, func(cfg *node.Config) { cfg.Limits.MaxHandshakeRatePerSource = 1 })
			l := c.Node(0)
			addr := l.APIAddr()
			const n = 20
			connected := 0
			start := time.Now()
			for i := range n {
				d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 4, byte(2+i))}}
				if !s.tls {
					conn, err := d.Dial("tcp", addr)
					if err != nil {
						t.Fatal(err)
					}
					conn.Write([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0}) // a handshake record: not TLS here
					conn.Close()
					continue
				}
				tc, err := tls.DialWithDialer(d, "tcp", addr, tlsCfg)
				if err == nil {
					connected++
					tc.Close()
				}
			}
			if !s.tls {
				s.status(t, addr, tlsCfg)
				if n := refusals(t, l, node.PortAPI, "handshake_rate"); n != 0 {
					t.Fatalf("an h2c API counted %d handshake_rate refusals", n)
				}
				return
			}
			allowed := 2 + int(time.Since(start).Seconds()+1)
			t.Logf("%d of %d clients from one /24 finished their handshake in %v", connected, n, time.Since(start).Round(time.Millisecond))
			if connected > allowed {
				t.Fatalf("%d of %d clients from one /24 finished their handshake, want at most %d", connected, n, allowed)
			}
			nodetest.Eventually(t, 10*time.Second, func() error {
				if got := refusals(t, l, node.PortAPI, "handshake_rate"); got != uint64(n-connected) {
					return fmt.Errorf("handshake_rate refusals: %d, want %d", got, n-connected)
				}
				return nil
			})
			lg.waitFor(t, 5*time.Second, "at its TLS ClientHello", "--max-handshake-rate-per-source", "--max-handshake-rate ")
			s.status(t, addr, tlsCfg) // from 127.0.0.1, another /24
			// Plain HTTP from the flooded /24: no handshake, not counted.
			plainGet(t, &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 4, 200)}}, addr)
			nodetest.Eventually(t, 10*time.Second, func() error {
				if got := refusals(t, l, node.PortAPI, "tls_handshake"); got != 1 {
					return fmt.Errorf("tls_handshake refusals: %d, want 1 (the plain HTTP client's)", got)
				}
				return nil
			})
			if got := refusals(t, l, node.PortAPI, "handshake_rate"); got != uint64(n-connected) {
				t.Fatalf("handshake_rate refusals: %d, want %d", got, n-connected)
			}
			// A warning alert record first, which crypto/tls drops before
			// it reads the ClientHello, does not get the ClientHello after
			// it past the bucket (outsider re-probe: it passed the bound
			// from one address when only a handshake record first drew).
			// The client needs a ServerName here: without one tls.Client
			// sends no ClientHello at all.
			alertCfg := tlsCfg.Clone()
			alertCfg.ServerName = "127.0.0.1"
			before := refusals(t, l, node.PortAPI, "handshake_rate")
			const m = 6
			startPrefixed := time.Now()
			for i := range m {
				d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 4, byte(100+i))}}
				conn, err := d.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				conn.Write([]byte{21, 3, 3, 0, 2, 1, 90}) // alert: warning, user_canceled
				tc := tls.Client(conn, alertCfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				tc.Handshake()
				tc.Close()
			}
			passed := uint64(1 + time.Since(startPrefixed).Seconds() + 1) // the bucket's refill meanwhile
			nodetest.Eventually(t, 10*time.Second, func() error {
				if got := refusals(t, l, node.PortAPI, "handshake_rate") - before; got+passed < m {
					return fmt.Errorf("%d of %d alert-prefixed connections from the flooded /24 refused handshake_rate, want at least %d", got, m, m-passed)
				}
				return nil
			})
		})
	}
}

// A TLS client API's handshake limit is drawn by ClientHellos, not by
// first bytes: while connections from four /24s each send one
// handshake-record byte and reset, as fast as they can, a client from
// another /24 finishes every handshake. The limit (20 a second, a burst
// of 20) is below what the flood sends, so drawing at the first byte would
// give it the whole total (outsider review s32 #2: from 20 /24s, 34 of 44
// fresh clients of another /24 failed). Fails without the fix (most
// handshakes refused).
func TestAPIOneByteConnectionsDrawNoHandshakes(t *testing.T) {
	l, tlsCfg := limitedTLSAPI(t)
	addr := l.APIAddr()
	stop := transporttest.OneByteFlood(t, addr, 4, func() uint64 {
		return refusals(t, l, node.PortAPI, "tls_handshake") + refusals(t, l, node.PortAPI, "handshake_rate")
	})
	transporttest.DialsDuringFlood(t, 10, "TLS clients from another /24", "one-byte connections", stop, tlsDial(addr, tlsCfg))
}

// With the auth token, one-byte connections do not push TLS clients out
// mid-handshake through the cap of 64 connections without an
// authenticated request: while four /24s each send one handshake-record
// byte and reset, as fast as they can, keeping the cap full and churning,
// a client of another /24 finishes every handshake and request. A
// connection that has not sent a whole ClientHello is closed at the cap
// before one that has, and by /24 (outsider review s32 N2: 10-14 of
// 32-41 fresh TLS clients failed, each the oldest of the cap when the
// flood's next connection came). Fails without the fix (most clients'
// handshakes or requests cut).
func TestAPIOneByteConnectionsEvictNoTLSClients(t *testing.T) {
	s := budgetSetup{name: "TLS with the token", tls: true, token: "s3cret", scheme: "https"}
	c, tlsCfg := s.start(t, 1, nil, nil)
	l := c.Node(0)
	addr := l.APIAddr()
	stop := transporttest.OneByteFlood(t, addr, 4, func() uint64 {
		return refusals(t, l, node.PortAPI, "max_unauthenticated")
	})
	transporttest.DialsDuringFlood(t, 20, "TLS clients with the token from another /24", "one-byte connections", stop, tlsStatus(addr, tlsCfg, s.token))
}

// limitedTLSAPI starts a node with a TLS client API whose handshake
// limit is 20 a second in all and from one source, and returns it with a
// client configuration.
func limitedTLSAPI(t *testing.T) (*node.Node, *tls.Config) {
	t.Helper()
	s := budgetSetups[1]
	if !s.tls {
		t.Fatal("budgetSetups[1] is not the TLS setup")
	}
	c, tlsCfg := s.start(t, 1, nil, func(cfg *node.Config) {
		cfg.Limits.MaxHandshakeRate, cfg.Limits.MaxHandshakeRatePerSource = 20, 20
	})
	return c.Node(0), tlsCfg
}

// tlsDial returns a dial of a TLS connection to addr with cfg, for
// transporttest.DialsDuringFlood.
func tlsDial(addr string, cfg *tls.Config) func() (io.Closer, error) {
	return func() (io.Closer, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	}
}

// tlsStatus returns a dial of a TLS connection to addr with cfg that
// asks for Status with token on it and reads a 200, for
// transporttest.DialsDuringFlood.
func tlsStatus(addr string, cfg *tls.Config, token string) func() (io.Closer, error) {
	return func() (io.Closer, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		req := "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
			"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
		var status string
		if _, err = io.WriteString(c, req); err == nil {
			status, err = bufio.NewReader(c).ReadString('\n')
		}
		if err == nil && !strings.HasPrefix(status, "HTTP/1.1 200") {
			err = fmt.Errorf("status: %q", status)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// While four /24s replay whole ClientHellos, far more than a TLS client
// API's total (20 a second) and all of it, a client from another /24
// that has started no handshake lately finishes its handshake, twice:
// the reserve serves light prefixes when the total is spent (outsider
// review s32 #2: past 2-3 /24s an outsider held the whole total and
// every new client raced it for tokens). Fails without the reserve.
func TestAPILightSourceConnectsDuringAFlood(t *testing.T) {
	l, tlsCfg := limitedTLSAPI(t)
	addr := l.APIAddr()
	helloCfg := tlsCfg.Clone()
	helloCfg.ServerName = "127.0.0.1"
	stop := transporttest.Flood(t, addr, 4, transporttest.ClientHello(t, helloCfg), true, func() uint64 {
		return refusals(t, l, node.PortAPI, "handshake_rate")
	})
	transporttest.DialsDuringFlood(t, 2, "TLS clients from another /24", "ClientHellos", stop, tlsDial(addr, tlsCfg))
}

// A node's own address is known to its node port (the Raft
// configuration's, and gossip's): while four /24s replay whole
// ClientHellos, far more than the port's total (20 a second) and all of
// it, ten TLS handshakes in a row from 127.0.0.1, the node's address,
// all finish, more than a light prefix gets from the reserve (outsider
// review s32 #6: a candidate's requestVote dials were refused at the
// handshake during such a flood). Fails without Known (the third is
// refused).
func TestNodePortKnownSourcesDuringAFlood(t *testing.T) {
	ca := transporttest.NewCA(t)
	c := nodetest.New(t, nodetest.Options{Size: 1, Configure: func(i int, cfg *node.Config) {
		cfg.TLSFiles = ca.Issue(t, cfg.ID, net.ParseIP("127.0.0.1"))
		cfg.Limits.MaxHandshakeRate, cfg.Limits.MaxHandshakeRatePerSource = 20, 20
	}})
	l := c.Node(0)
	addr := l.RaftAddr()
	cliCfg := ca.ClientConfig(t, "n9")
	cliCfg.ServerName = "127.0.0.1"
	stop := transporttest.Flood(t, addr, 4, transporttest.ClientHello(t, cliCfg), true, func() uint64 {
		return refusals(t, l, transport.PortNode, "handshake_rate")
	})
	transporttest.DialsDuringFlood(t, 10, "handshakes from the node's own address", "ClientHellos", stop, tlsDial(addr, cliCfg))
}

// plainGet sends a plain HTTP request to addr through d and reads until
// the server closes (at most 10 s).
func plainGet(t *testing.T, d *net.Dialer, addr string) {
	t.Helper()
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, conn)
}
