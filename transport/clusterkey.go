package transport

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// ClusterKeySize is the length of a cluster key: 32 random bytes, written
// as base64 (`head -c 32 /dev/urandom | base64`).
const ClusterKeySize = 32

// HKDF info strings: each derived key has its own, so that no two uses of
// the cluster key ever share key material. Changing one is a protocol
// change (nodes with different strings cannot talk).
const (
	clusterCAInfo     = "leasenode cluster-key v1: node-port CA"
	clusterGossipInfo = "leasenode cluster-key v1: gossip key"
)

// Validity of cluster-key certificates: wide enough that no wall clock,
// however wrong, makes them invalid (time plays no part in trusting a
// peer that knows the key).
var (
	clusterNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	clusterNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// ParseClusterKey decodes a base64 cluster key and checks its length.
// Surrounding white space (a trailing newline in a key file) is ignored.
func ParseClusterKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("cluster key is not base64: %v (make one with: head -c 32 /dev/urandom | base64)", err)
	}
	if len(key) != ClusterKeySize {
		return nil, fmt.Errorf("cluster key is %d bytes, want %d (make one with: head -c 32 /dev/urandom | base64)", len(key), ClusterKeySize)
	}
	return key, nil
}

// derive returns n bytes of HKDF-SHA256 of key for info.
func derive(key []byte, info string, n int) ([]byte, error) {
	if len(key) != ClusterKeySize {
		return nil, fmt.Errorf("transport: cluster key is %d bytes, want %d", len(key), ClusterKeySize)
	}
	return hkdf.Key(sha256.New, key, nil, info, n)
}

// GossipKey derives the 32-byte memberlist key (AES-256) that nodes use
// when they have a cluster key and no separate gossip key.
func GossipKey(clusterKey []byte) ([]byte, error) {
	return derive(clusterKey, clusterGossipInfo, 32)
}

// ClusterAuthority derives the cluster-key CA: an Ed25519 key from the
// cluster key (HKDF-SHA256) and a self-signed certificate with a fixed
// serial, subject and validity (2000-01-01 to 9999-12-31). Every node
// derives a byte-identical certificate, so nothing is distributed but the
// key.
func ClusterAuthority(clusterKey []byte) (*Authority, error) {
	seed, err := derive(clusterKey, clusterCAInfo, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	key := ed25519.NewKeyFromSeed(seed)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "leasenode cluster-key CA", Organization: []string{"leasenode"}},
		NotBefore:             clusterNotBefore,
		NotAfter:              clusterNotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	// Ed25519 signatures are deterministic and nothing else in the
	// certificate is random, so the bytes are the same on every node.
	return selfSigned(tmpl, key)
}

// ClusterKeyTLS returns the node-port TLS configurations of cluster-key
// mode for node id: a fresh Ed25519 certificate with the NodeRole and
// NodeSAN(id) SANs, signed by ClusterAuthority(clusterKey), presented and
// required in both directions (TLS 1.3 only). Only holders of the key can
// make such a certificate, so a completed handshake proves membership; see
// the package documentation for why this is TLS rather than a bare
// challenge-response.
func ClusterKeyTLS(clusterKey []byte, id string) (server, client *tls.Config, err error) {
	ca, err := ClusterAuthority(clusterKey)
	if err != nil {
		return nil, nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: node key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: NodeSAN(id), Organization: []string{"leasenode"}},
		DNSNames:    []string{NodeRole, NodeSAN(id)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		NotBefore:   clusterNotBefore,
		NotAfter:    clusterNotAfter,
	}
	der, err := ca.issue(tmpl, priv)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: node certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}
	pool := ca.Pool()
	server = &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
	client = &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		// Nodes are dialed by IP, and no IP is in these certificates:
		// the server proves the node role by name instead (and its
		// identity in the hello).
		ServerName: NodeRole,
		MinVersion: tls.VersionTLS13,
	}
	return server, client, nil
}
