package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles names the PEM files for mutual TLS. Every node presents its
// certificate (CertFile, KeyFile) and verifies its peer's against the CA
// bundle (CAFile), in both directions. On the node port (Mux, Dialer) a
// certificate must also carry the node role: the NodeRole DNS SAN and one
// identity SAN NodeSAN(ID) (`leasenode tls cert create --node ID` makes
// them); the nodes' advertised IPs (or names) as SANs; and both the
// serverAuth and clientAuth extended key usages, since every node is both.
// The client API (ServerConfig alone) accepts any certificate from the CA.
type TLSFiles struct {
	// CertFile is this node's certificate chain (PEM).
	CertFile string
	// KeyFile is the private key for CertFile (PEM, PKCS#8, PKCS#1 or EC).
	KeyFile string
	// CAFile holds the CA certificates that peers' certificates must chain
	// to (PEM).
	CAFile string
	// ServerName, when set, overrides the name checked in servers'
	// certificates; by default the host part of the dialed address is
	// checked (an IP SAN for host:port IP addresses).
	ServerName string
}

// Enabled reports whether any file is named, that is, whether the node is
// meant to use TLS. ServerConfig and ClientConfig then insist on all three.
func (f TLSFiles) Enabled() bool {
	return f.CertFile != "" || f.KeyFile != "" || f.CAFile != ""
}

// ServerConfig returns the server configuration: it presents the node's
// certificate and requires and verifies a client certificate signed by the
// CA. As given it accepts any certificate from the CA, which is what the
// client API wants; a Mux given it adds the node-role check. TLS 1.2 is
// the minimum; Go negotiates 1.3 whenever the peer offers it.
func (f TLSFiles) ServerConfig() (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientConfig returns the configuration for a Dialer: it presents the
// node's certificate and verifies the server's against the CA, including
// its name or IP (see ServerName); the Dialer adds the node-role check.
// TLS 1.2 is the minimum.
func (f TLSFiles) ClientConfig() (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   f.ServerName,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

func (f TLSFiles) load() (tls.Certificate, *x509.CertPool, error) {
	if f.CertFile == "" || f.KeyFile == "" || f.CAFile == "" {
		return tls.Certificate{}, nil, errors.New("transport: TLS needs all of CertFile, KeyFile and CAFile")
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("transport: load TLS key pair %s, %s: %w", f.CertFile, f.KeyFile, err)
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("transport: read TLS CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, fmt.Errorf("transport: TLS CA file %s holds no PEM certificate", f.CAFile)
	}
	return cert, pool, nil
}
