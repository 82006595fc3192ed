// Package transporttest makes throwaway certificate authorities, node
// certificates and API client certificates for tests that run transport
// (or whole nodes) with mutual TLS, on top of transport.Authority. Keys
// are ECDSA P-256, certificates live for an hour, and files go to
// t.TempDir(). Never use it outside tests.
package transporttest

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport"
)

// CA is a test certificate authority.
type CA struct {
	*transport.Authority
	caFile string
}

// NewCA makes a self-signed CA valid for an hour; its certificate is
// written to a PEM file that every TLSFiles issued by it names as CAFile.
func NewCA(t testing.TB) *CA {
	t.Helper()
	a, err := transport.NewAuthority("leasenode test CA", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatalf("transporttest: %v", err)
	}
	ca := &CA{Authority: a, caFile: filepath.Join(t.TempDir(), "ca.crt")}
	writeFile(t, ca.caFile, a.CertPEM())
	return ca
}

// Issue makes a node certificate for node name (the node role and identity
// SANs, plus DNS SANs name and "localhost") for ips (127.0.0.1 when none
// are given), usable for both server and client authentication, and writes
// it, its key and the CA certificate as PEM files into a fresh
// t.TempDir().
func (ca *CA) Issue(t testing.TB, name string, ips ...net.IP) transport.TLSFiles {
	t.Helper()
	if len(ips) == 0 {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	certPEM, keyPEM, err := ca.IssueNode(name, ips, []string{name, "localhost"}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatalf("transporttest: %v", err)
	}
	return ca.files(t, name, certPEM, keyPEM)
}

// IssueClient makes an API client certificate (the client role only, no
// node role) named name, signed by the same CA, and writes it like Issue.
func (ca *CA) IssueClient(t testing.TB, name string) transport.TLSFiles {
	t.Helper()
	certPEM, keyPEM, err := ca.Authority.IssueClient(name, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatalf("transporttest: %v", err)
	}
	return ca.files(t, name, certPEM, keyPEM)
}

// IssueWithout makes a certificate like Issue's (serverAuth and
// clientAuth, IP SANs ips, DNS SAN name) but without the node role and
// identity: a certificate from the right CA that is still no node's.
func (ca *CA) IssueWithout(t testing.TB, name string, ips ...net.IP) transport.TLSFiles {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{name},
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	certPEM, keyPEM, err := ca.Authority.Issue(tmpl, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatalf("transporttest: %v", err)
	}
	return ca.files(t, name, certPEM, keyPEM)
}

func (ca *CA) files(t testing.TB, name string, certPEM, keyPEM []byte) transport.TLSFiles {
	t.Helper()
	dir := t.TempDir()
	files := transport.TLSFiles{
		CertFile: filepath.Join(dir, name+".crt"),
		KeyFile:  filepath.Join(dir, name+".key"),
		CAFile:   ca.caFile,
	}
	writeFile(t, files.CertFile, certPEM)
	writeFile(t, files.KeyFile, keyPEM)
	return files
}

// ServerConfig issues a certificate (see Issue) and returns the mutual-TLS
// server configuration built from it by TLSFiles.ServerConfig.
func (ca *CA) ServerConfig(t testing.TB, name string, ips ...net.IP) *tls.Config {
	t.Helper()
	cfg, err := ca.Issue(t, name, ips...).ServerConfig()
	if err != nil {
		t.Fatalf("transporttest: server config for %s: %v", name, err)
	}
	return cfg
}

// ClientConfig issues a certificate (see Issue) and returns the mutual-TLS
// client configuration built from it by TLSFiles.ClientConfig.
func (ca *CA) ClientConfig(t testing.TB, name string, ips ...net.IP) *tls.Config {
	t.Helper()
	cfg, err := ca.Issue(t, name, ips...).ClientConfig()
	if err != nil {
		t.Fatalf("transporttest: client config for %s: %v", name, err)
	}
	return cfg
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("transporttest: %v", err)
	}
}
