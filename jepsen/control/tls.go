package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/leasenode/leasenode/transport"
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

// GenerateTLS makes a CA, a node certificate per node (the node role and
// its identity, transport.NodeRole and NodeSAN, plus its IP) and an API
// client certificate (transport.ClientRole only: the node port must
// refuse it) under dir.
func GenerateTLS(dir string, nodes []*Node) (*TLSAssets, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	a := &TLSAssets{Dir: dir}
	until := time.Now().Add(30 * 24 * time.Hour)
	ca, err := transport.NewAuthority("leasenode jepsen CA", until)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(a.CA(), ca.CertPEM(), 0o600); err != nil {
		return nil, err
	}
	write := func(certPath, keyPath string, cert, key []byte, err error) error {
		if err != nil {
			return err
		}
		if err := os.WriteFile(certPath, cert, 0o600); err != nil {
			return err
		}
		return os.WriteFile(keyPath, key, 0o600)
	}
	for _, n := range nodes {
		cert, key, err := ca.IssueNode(n.ID, []net.IP{net.ParseIP(n.IP)}, nil, until)
		if err := write(a.NodeCert(n.ID), a.NodeKey(n.ID), cert, key, err); err != nil {
			return nil, err
		}
	}
	cert, key, err := ca.IssueClient("jepsen-client", until)
	if err := write(a.ClientCert(), a.ClientKey(), cert, key, err); err != nil {
		return nil, err
	}
	return a, nil
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
