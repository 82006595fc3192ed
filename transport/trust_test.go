package transport_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// logBuffer is a concurrency-safe log sink for checking what was logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLogged waits up to 10 s for the log to contain want.
func waitLogged(t *testing.T, b *logBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q; log:\n%s", want, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serveMux serves a Mux with cfg and a ProtoRPC listener; cleanup closes
// it.
func serveMux(t *testing.T, cfg transport.MuxConfig) (*transport.Mux, net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := transport.NewMux(ln, cfg)
	rpcLn := m.Listen(transport.ProtoRPC)
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		_ = m.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return m, rpcLn
}

func clusterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, transport.ClusterKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func keyTLS(t *testing.T, key []byte, id string) (server, client *tls.Config) {
	t.Helper()
	s, c, err := transport.ClusterKeyTLS(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// An API client certificate from the node's own CA is refused on the node
// port in both directions, with a log line (or error) naming the missing
// role; a node certificate from the same CA is accepted.
func TestNodePortRefusesClientCertificates(t *testing.T) {
	noLeaks(t)
	ca := transporttest.NewCA(t)
	clientFiles := ca.IssueClient(t, "ops")

	t.Run("client cert dials a node", func(t *testing.T) {
		var logs logBuffer
		m, ln := serveMux(t, transport.MuxConfig{TLS: ca.ServerConfig(t, "n1"),
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		cfg, err := clientFiles.ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		c, err := (&transport.Dialer{TLS: cfg}).Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
		if err == nil {
			c.Close()
			t.Fatal("a client certificate got a node-port connection")
		}
		if !strings.Contains(err.Error(), transport.NodeRole) {
			t.Errorf("dial error does not name the role %q: %v", transport.NodeRole, err)
		}
		waitLogged(t, &logs, "lacks the node role")
		waitLogged(t, &logs, transport.NodeRole)

		// A node certificate from the same CA still gets in, and is the
		// first connection the listener yields.
		good, err := (&transport.Dialer{TLS: ca.ClientConfig(t, "n2")}).Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
		if err != nil {
			t.Fatalf("node certificate refused: %v", err)
		}
		defer good.Close()
		sendMarker(t, good, accept(t, ln), "node")
	})

	t.Run("node dials a server without the node role", func(t *testing.T) {
		// A certificate that passes every other check (same CA, the
		// dialed IP, serverAuth): only the missing role refuses it.
		srv := ca.IssueWithout(t, "web", net.IPv4(127, 0, 0, 1))
		srvCfg, err := srv.ServerConfig()
		if err != nil {
			t.Fatal(err)
		}
		m, _ := serveMux(t, transport.MuxConfig{TLS: srvCfg})
		_, err = (&transport.Dialer{TLS: ca.ClientConfig(t, "n2"), Hello: &transport.Hello{NodeID: "n2"}}).
			Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
		if err == nil || !strings.Contains(err.Error(), "lacks the node role") {
			t.Fatalf("Dial to a server without the node role: %v, want a refusal naming the role", err)
		}
	})
}

// A certificate whose identity disagrees with the ID its hello claims is
// refused: the certificate, not the claim, names the node.
func TestHelloMustMatchCertificate(t *testing.T) {
	noLeaks(t)
	ca := transporttest.NewCA(t)
	m, _ := serveMux(t, transport.MuxConfig{TLS: ca.ServerConfig(t, "n1"), Hello: &transport.Hello{NodeID: "n1"}})
	_, err := (&transport.Dialer{TLS: ca.ClientConfig(t, "n2"), Hello: &transport.Hello{NodeID: "n0"}}).
		Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	if !errors.Is(err, transport.ErrRefused) || !strings.Contains(err.Error(), `certificate is for node "n2"`) {
		t.Fatalf("Dial claiming another ID: %v, want a refusal", err)
	}
}

// Cluster-key mode: nodes with the same key reach each other over mutual
// TLS and know each other's IDs; a node with another key is refused in
// both directions, and so is plain TCP.
func TestClusterKeyMode(t *testing.T) {
	noLeaks(t)
	key, otherKey := clusterKey(t), clusterKey(t)
	srvTLS, _ := keyTLS(t, key, "n1")
	m, ln := serveMux(t, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"}})
	addr := m.Addr().String()

	_, wrongClient := keyTLS(t, otherKey, "n9")
	if c, err := (&transport.Dialer{TLS: wrongClient}).Dial(context.Background(), addr, transport.ProtoRPC); err == nil {
		c.Close()
		t.Fatal("a node with another cluster key got in")
	}
	if c, err := (&transport.Dialer{}).Dial(context.Background(), addr, transport.ProtoRPC); err == nil {
		c.Close()
		t.Fatal("plain TCP got in")
	}

	_, goodClient := keyTLS(t, key, "n2")
	c, err := (&transport.Dialer{TLS: goodClient, Hello: &transport.Hello{NodeID: "n2"}}).Dial(context.Background(), addr, transport.ProtoRPC)
	if err != nil {
		t.Fatalf("same key refused: %v", err)
	}
	defer c.Close()
	s := accept(t, ln)
	sendMarker(t, c, s, "keyed")
	if p, _ := transport.PeerOf(s); p.ID != "n2" || !p.Authenticated {
		t.Fatalf("server sees %+v, want authenticated n2", p)
	}
	if p, _ := transport.PeerOf(c); p.ID != "n1" || !p.Authenticated {
		t.Fatalf("client reached %+v, want authenticated n1", p)
	}

	// The other direction: a node with the right key does not accept a
	// server that has another key.
	wrongSrv, _ := keyTLS(t, otherKey, "n9")
	m2, _ := serveMux(t, transport.MuxConfig{TLS: wrongSrv})
	if c, err := (&transport.Dialer{TLS: goodClient}).Dial(context.Background(), m2.Addr().String(), transport.ProtoRPC); err == nil {
		c.Close()
		t.Fatal("dialed into a node with another cluster key")
	}
}

// Every node derives the same CA certificate from the key, byte for byte;
// another key gives another CA; the gossip key differs from both.
func TestClusterAuthorityDeterministic(t *testing.T) {
	key := clusterKey(t)
	a, err := transport.ClusterAuthority(key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := transport.ClusterAuthority(append([]byte(nil), key...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.CertPEM(), b.CertPEM()) {
		t.Fatal("two derivations of the cluster CA differ")
	}
	c, err := transport.ClusterAuthority(clusterKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.CertPEM(), c.CertPEM()) {
		t.Fatal("two keys gave the same CA")
	}
	g1, _ := transport.GossipKey(key)
	g2, _ := transport.GossipKey(key)
	if len(g1) != 32 || !bytes.Equal(g1, g2) || bytes.Contains(a.CertPEM(), g1) {
		t.Fatalf("gossip key %x not a stable 32-byte derivation", g1)
	}
	if _, err := transport.ClusterAuthority(key[:16]); err == nil {
		t.Fatal("a 16-byte cluster key was accepted")
	}
	if _, err := transport.ParseClusterKey("c2hvcnQ="); err == nil {
		t.Fatal("ParseClusterKey accepted a short key")
	}
}

// A refusal in the hello comes back to the dialer as a *RefusedError with
// the refusing node's words, and the dialer's Refused hook hears it.
func TestHelloRefusalText(t *testing.T) {
	noLeaks(t)
	m, _ := serveMux(t, transport.MuxConfig{Hello: &transport.Hello{
		NodeID:    "n2",
		ClusterID: func() string { return "7f3a" },
		Check: func(p transport.Peer, inbound bool) error {
			if !inbound || p.ClusterID == "7f3a" {
				return nil
			}
			return fmt.Errorf("this cluster is %s, your data dir belongs to cluster %s; to join this cluster start with an empty --data-dir", "7f3a", p.ClusterID)
		},
	}})
	heard := make(chan *transport.RefusedError, 1)
	d := &transport.Dialer{Hello: &transport.Hello{
		NodeID:    "n5",
		ClusterID: func() string { return "91bc" },
		Refused:   func(e *transport.RefusedError) { heard <- e },
	}}
	_, err := d.Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	var rerr *transport.RefusedError
	if !errors.As(err, &rerr) || !errors.Is(err, transport.ErrRefused) {
		t.Fatalf("Dial: %v, want a *RefusedError", err)
	}
	want := "refused by n2 (" + m.Addr().String() + "): this cluster is 7f3a, your data dir belongs to cluster 91bc; to join this cluster start with an empty --data-dir"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("Dial error\n  %v\nwant it to contain\n  %s", err, want)
	}
	if rerr.PeerID != "n2" || rerr.PeerClusterID != "7f3a" {
		t.Fatalf("refusal names %q/%q, want n2/7f3a", rerr.PeerID, rerr.PeerClusterID)
	}
	select {
	case e := <-heard:
		if e.Message != rerr.Message {
			t.Fatalf("Refused hook heard %q", e.Message)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Refused hook not called")
	}

	// The same cluster id gets in, and both ends see each other's ids.
	d.Hello.ClusterID = func() string { return "7f3a" }
	c, err := d.Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	if err == nil {
		defer c.Close()
	}
	if p, _ := transport.PeerOf(c); err != nil || p.ID != "n2" || p.ClusterID != "7f3a" || p.Authenticated {
		t.Fatalf("Dial with the same cluster: %+v, %v", p, err)
	}
}

// The RPC handler learns who called it, and CallNode refuses to send to
// an address that turns out to be another node.
func TestRPCPeerIdentity(t *testing.T) {
	noLeaks(t)
	key := clusterKey(t)
	srvTLS, _ := keyTLS(t, key, "n1")
	m, rpcLn := serveMux(t, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"}})
	srv := transport.NewRPCServer(rpcLn, func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		id, auth := transport.PeerID(ctx)
		return []byte(fmt.Sprintf("%s/%v", id, auth)), nil
	}, transport.RPCServerConfig{})
	go func() { _ = srv.Serve() }()
	defer srv.Close()

	_, cliTLS := keyTLS(t, key, "n2")
	c := transport.NewRPCClient(transport.RPCClientConfig{Dialer: &transport.Dialer{TLS: cliTLS, Hello: &transport.Hello{NodeID: "n2"}}})
	defer c.Close()
	got, err := c.CallNode(context.Background(), m.Addr().String(), "n1", 1, nil)
	if err != nil || string(got) != "n2/true" {
		t.Fatalf("CallNode = %q, %v; want the handler to see authenticated n2", got, err)
	}
	_, err = c.CallNode(context.Background(), m.Addr().String(), "n3", 1, nil)
	if !errors.Is(err, transport.ErrWrongPeer) || !errors.Is(err, transport.ErrNotSent) {
		t.Fatalf("CallNode to the wrong node: %v, want ErrWrongPeer and ErrNotSent", err)
	}
}

// A node port whose configuration only requests client certificates (no
// verification) still refuses a self-signed certificate that claims the
// node role: the role counts only on a certificate verified against the CA.
func TestNodeRoleNeedsVerifiedChain(t *testing.T) {
	noLeaks(t)
	ca, rogue := transporttest.NewCA(t), transporttest.NewCA(t)
	srv := ca.ServerConfig(t, "n1")
	srv.ClientAuth = tls.RequireAnyClientCert
	m, _ := serveMux(t, transport.MuxConfig{TLS: srv})
	cli := rogue.ClientConfig(t, "n2")
	cli.RootCAs = ca.Pool()
	c, err := (&transport.Dialer{TLS: cli}).Dial(context.Background(), m.Addr().String(), transport.ProtoRPC)
	if err == nil {
		c.Close()
		t.Fatal("a certificate from another CA claiming the node role got in")
	}
}
