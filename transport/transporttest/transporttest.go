// Package transporttest makes throwaway certificate authorities and node
// certificates for tests that run transport (or whole nodes) with mutual
// TLS. Keys are ECDSA P-256, certificates live for an hour, and files go to
// t.TempDir(). Never use it outside tests.
package transporttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/leasenode/leasenode/transport"
)

// CA is a test certificate authority.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	caFile  string
}

// NewCA makes a self-signed CA; its certificate is written to a PEM file
// that every TLSFiles issued by it names as CAFile.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("transporttest: CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "leasenode test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("transporttest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("transporttest: parse CA certificate: %v", err)
	}
	ca := &CA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	ca.caFile = filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, ca.caFile, ca.certPEM)
	return ca
}

// CertPEM returns the CA certificate in PEM form.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issue makes a node certificate named name (CommonName and DNS SAN, plus
// "localhost") for ips (127.0.0.1 when none are given), usable for both
// server and client authentication, and writes it, its key and the CA
// certificate as PEM files into a fresh t.TempDir().
func (ca *CA) Issue(t testing.TB, name string, ips ...net.IP) transport.TLSFiles {
	t.Helper()
	if len(ips) == 0 {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("transporttest: key for %s: %v", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{name, "localhost"},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("transporttest: certificate for %s: %v", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("transporttest: marshal key for %s: %v", name, err)
	}
	dir := t.TempDir()
	files := transport.TLSFiles{
		CertFile: filepath.Join(dir, name+".crt"),
		KeyFile:  filepath.Join(dir, name+".key"),
		CAFile:   ca.caFile,
	}
	writeFile(t, files.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, files.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
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

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("transporttest: serial: %v", err)
	}
	return n
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("transporttest: %v", err)
	}
}
