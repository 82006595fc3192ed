package control

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// TLSAssets are the PEM files of a TLS campaign, in one directory: ca.pem
// (the CA every party trusts), nI.pem and nI-key.pem per node (IP SAN,
// server and client auth: every node is both), and client.pem /
// client-key.pem (client auth only: what an API client holds — the
// harness's clients use it, and the rogue peer presents it on the node
// port, where it must be refused).
type TLSAssets struct {
	Dir string
}

// CA, NodeCert, NodeKey, ClientCert and ClientKey name the files.
func (a *TLSAssets) CA() string                { return filepath.Join(a.Dir, "ca.pem") }
func (a *TLSAssets) NodeCert(id string) string { return filepath.Join(a.Dir, id+".pem") }
func (a *TLSAssets) NodeKey(id string) string  { return filepath.Join(a.Dir, id+"-key.pem") }
func (a *TLSAssets) ClientCert() string        { return filepath.Join(a.Dir, "client.pem") }
func (a *TLSAssets) ClientKey() string         { return filepath.Join(a.Dir, "client-key.pem") }

// ClientConfig is the TLS configuration of an API client: the client
// certificate, and the CA to verify nodes with (by the IP dialed).
func (a *TLSAssets) ClientConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(a.ClientCert(), a.ClientKey())
	if err != nil {
		return nil, fmt.Errorf("tls client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(a.CA())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", a.CA())
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// Check reports a missing file for any of the nodes.
func (a *TLSAssets) Check(nodes []*Node) error {
	files := []string{a.CA(), a.ClientCert(), a.ClientKey()}
	for _, n := range nodes {
		files = append(files, a.NodeCert(n.ID), a.NodeKey(n.ID))
	}
	var errs []error
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// GenerateTLS makes a CA, a certificate per node (its IP as SAN) and a
// client certificate under dir. The node certificates also carry the DNS
// names ID and "node.leasenode" (a role a node could be recognised by);
// an agent that wants another role in its peers' certificates needs
// certificates made its own way, given with -tls-dir.
func GenerateTLS(dir string, nodes []*Node) (*TLSAssets, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	a := &TLSAssets{Dir: dir}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "leasenode jepsen CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writePEM(a.CA(), "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	issue := func(certPath, keyPath string, tmpl *x509.Certificate) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(30*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyPath, "PRIVATE KEY", kb)
	}
	for _, n := range nodes {
		err := issue(a.NodeCert(n.ID), a.NodeKey(n.ID), &x509.Certificate{
			Subject:     pkix.Name{CommonName: n.ID},
			IPAddresses: []net.IP{net.ParseIP(n.IP)}, DNSNames: []string{n.ID, "node.leasenode"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return nil, err
		}
	}
	err = issue(a.ClientCert(), a.ClientKey(), &x509.Certificate{
		Subject:     pkix.Name{CommonName: "jepsen-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// NewClusterKey returns a fresh cluster secret as the agents take it:
// base64 (standard encoding) of 32 random bytes.
func NewClusterKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// AgentFlags lists the flags `BINARY agent --help` documents, to detect
// what the agent under test supports (--cluster-key, --cluster-key-file).
func AgentFlags(ctx context.Context, binary string) (map[string]bool, error) {
	out, err := exec.CommandContext(ctx, binary, "agent", "--help").CombinedOutput()
	if len(out) == 0 && err != nil {
		return nil, fmt.Errorf("%s agent --help: %w", binary, err)
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "-") {
			continue
		}
		flags[strings.TrimLeft(f[0], "-")] = true
	}
	if !flags["id"] {
		return flags, fmt.Errorf("%s agent --help lists no --id: not a leasenode agent? %s", binary, bytes.TrimSpace(out[:min(len(out), 200)]))
	}
	return flags, nil
}
