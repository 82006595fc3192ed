package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Certificate roles. A certificate proves a role by a DNS SAN: the node
// role lets it speak on the node port (Raft and node RPC); the client role
// only marks an API client. Trust is a role, not a CA: one CA may sign both
// kinds, and a client certificate from it is still refused on the node
// port (as Consul's server.<dc>.consul SAN and etcd's separate peer CA).
const (
	// NodeRole is the DNS SAN every node certificate carries. A node
	// certificate also carries exactly one identity SAN, NodeSAN(ID).
	NodeRole = "node.leasenode"
	// ClientRole is the DNS SAN of an API client certificate made by
	// `leasenode tls cert create --client`. Nothing requires it: the API
	// accepts any certificate from its CA; the node port refuses it.
	ClientRole = "client.leasenode"
)

// NodeSAN returns the identity SAN of node id: "<id>.node.leasenode".
func NodeSAN(id string) string { return id + "." + NodeRole }

// NodeIDOf returns the node ID that cert proves: it must carry the NodeRole
// SAN and exactly one identity SAN (NodeSAN). The error says what is
// missing, for the log line of a refused connection.
func NodeIDOf(cert *x509.Certificate) (string, error) {
	role := false
	var ids []string
	for _, name := range cert.DNSNames {
		switch {
		case name == NodeRole:
			role = true
		case strings.HasSuffix(name, "."+NodeRole):
			ids = append(ids, strings.TrimSuffix(name, "."+NodeRole))
		}
	}
	switch {
	case !role:
		return "", fmt.Errorf("certificate %q (DNS SANs %q) lacks the node role: no DNS SAN %q; a client certificate may not speak on the node port",
			cert.Subject.CommonName, cert.DNSNames, NodeRole)
	case len(ids) != 1 || ids[0] == "":
		return "", fmt.Errorf("certificate %q has the node role but %d node identities (want exactly one DNS SAN <ID>.%s): %q",
			cert.Subject.CommonName, len(ids), NodeRole, ids)
	}
	return ids[0], nil
}

// withNodeRole returns a clone of cfg that refuses, during the handshake,
// a peer whose certificate was not verified against the CA, or lacks the
// node role or a single node identity (see NodeIDOf), after cfg's own
// checks (chain, and any VerifyConnection of cfg). The Mux and the Dialer apply it to every TLS configuration they
// are given, so no caller can forget it.
func withNodeRole(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	prev := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("transport: peer presented no certificate; the node port needs one with the %q role", NodeRole)
		}
		if len(cs.VerifiedChains) == 0 {
			// A configuration that requests but does not verify
			// certificates (RequestClientCert, InsecureSkipVerify) would
			// let a self-signed certificate claim the role.
			return errors.New("transport: peer certificate not verified against the CA; the node port verifies every certificate")
		}
		if _, err := NodeIDOf(cs.PeerCertificates[0]); err != nil {
			return fmt.Errorf("transport: %w", err)
		}
		return nil
	}
	return cfg
}

// Peer is the node at the other end of a node-port connection, as its
// certificate and its hello told.
type Peer struct {
	// ID is the peer's node ID: proven by its certificate when
	// Authenticated, otherwise only claimed in its hello.
	ID string
	// ClusterID is the cluster id the peer presented in its hello ("" if
	// it has none yet).
	ClusterID string
	// Authenticated reports that the connection is mutual TLS and ID was
	// proven by a certificate with the node role (cluster-key mode
	// included). It is false only on a plain-TCP node port.
	Authenticated bool
}

// PeerOf returns the peer of a connection returned by a Mux sub-listener
// or a Dialer, and false for any other connection.
func PeerOf(c net.Conn) (Peer, bool) {
	if pc, ok := c.(interface{ Peer() Peer }); ok {
		return pc.Peer(), true
	}
	return Peer{}, false
}

// peerConn is a node-port connection after its hello: what Mux
// sub-listeners hand out and Dialer returns.
type peerConn struct {
	net.Conn
	peer Peer
}

// Peer returns the authenticated (or, on plain TCP, claimed) peer.
func (c *peerConn) Peer() Peer { return c.peer }

// NetConn returns the connection underneath: a *tls.Conn under TLS, as
// tls.Conn.NetConn does for its own.
func (c *peerConn) NetConn() net.Conn { return c.Conn }

// peerKey is the context key of the Peer that RPCServer attaches to every
// handler's context.
type peerKey struct{}

// PeerFrom returns the peer whose connection carried the request that ctx
// belongs to (RPCServer puts it in every Handler's context), and false if
// ctx carries none.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// PeerID returns the node ID of the peer that sent the request of ctx and
// whether it was authenticated (see Peer.Authenticated). It is ("", false)
// for a context that did not come from an RPCServer.
func PeerID(ctx context.Context) (id string, authenticated bool) {
	p, ok := PeerFrom(ctx)
	if !ok {
		return "", false
	}
	return p.ID, p.Authenticated
}
