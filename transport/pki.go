package transport

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Authority is a certificate authority for a leasenode cluster: it issues
// node certificates (the NodeRole SAN plus the node's identity SAN, usable
// as server and client) and API client certificates (the ClientRole SAN,
// client only). `leasenode tls` uses it with a key kept in a file;
// cluster-key mode derives one from the key (ClusterKeyTLS).
type Authority struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	der  []byte
	key  crypto.Signer
}

// NewAuthority makes a CA with a new ECDSA P-256 key, valid from now until
// notAfter, named commonName.
func NewAuthority(commonName string, notAfter time.Time) (*Authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("transport: CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"leasenode"}},
		NotBefore:             time.Now().Add(-time.Hour), // a little clock skew between machines
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return selfSigned(tmpl, key)
}

// selfSigned signs tmpl with key and returns the Authority.
func selfSigned(tmpl *x509.Certificate, key crypto.Signer) (*Authority, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("transport: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("transport: CA certificate: %w", err)
	}
	return &Authority{Cert: cert, der: der, key: key}, nil
}

// LoadAuthority reads a CA from its certificate and private key (PEM, the
// files NewAuthority's CertPEM and KeyPEM wrote).
func LoadAuthority(certPEM, keyPEM []byte) (*Authority, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("transport: load CA: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("transport: load CA: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("transport: load CA: the certificate is not a CA certificate")
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("transport: load CA: unsupported key type %T", pair.PrivateKey)
	}
	return &Authority{Cert: cert, der: pair.Certificate[0], key: key}, nil
}

// CertPEM returns the CA certificate as PEM: the --tls-ca file of nodes and
// clients.
func (a *Authority) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.der})
}

// KeyPEM returns the CA's private key as PEM (PKCS #8). Keep it secret and
// off the nodes: only `leasenode tls cert create` needs it.
func (a *Authority) KeyPEM() ([]byte, error) {
	return keyPEM(a.key)
}

// Pool returns a pool holding only this CA.
func (a *Authority) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.Cert)
	return p
}

// IssueNode issues a certificate for node id: DNS SANs NodeRole,
// NodeSAN(id) and dns, IP SANs ips (the addresses other nodes dial),
// usable for server and client authentication, valid until notAfter (and
// never past the CA). It returns the certificate and a new ECDSA P-256
// private key, both PEM.
func (a *Authority) IssueNode(id string, ips []net.IP, dns []string, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	if id == "" {
		return nil, nil, errors.New("transport: node certificate: empty node ID")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: NodeSAN(id), Organization: []string{"leasenode"}},
		DNSNames:    append([]string{NodeRole, NodeSAN(id)}, dns...),
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return a.issuePEM(tmpl, notAfter)
}

// IssueClient issues an API client certificate named name: DNS SAN
// ClientRole, client authentication only, valid until notAfter (and never
// past the CA). The node port refuses it; the API accepts it.
func (a *Authority) IssueClient(name string, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	if name == "" {
		name = ClientRole
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"leasenode"}},
		DNSNames:    []string{ClientRole},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return a.issuePEM(tmpl, notAfter)
}

// Issue issues a certificate from tmpl (subject, SANs, extended key
// usages; the serial, key and validity are set here) for a new ECDSA P-256
// key, valid until notAfter and never past the CA. It returns the
// certificate and key as PEM. IssueNode and IssueClient are the usual
// forms; Issue makes anything else (tests make certificates without a
// role with it).
func (a *Authority) Issue(tmpl *x509.Certificate, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	return a.issuePEM(tmpl, notAfter)
}

func (a *Authority) issuePEM(tmpl *x509.Certificate, notAfter time.Time) (certOut, keyOut []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: certificate key: %w", err)
	}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = notAfter
	der, err := a.issue(tmpl, key)
	if err != nil {
		return nil, nil, err
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp, nil
}

// issue signs tmpl for key's public half; tmpl's validity is cut to the
// CA's, and a random serial is set.
func (a *Authority) issue(tmpl *x509.Certificate, key crypto.Signer) ([]byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
	if tmpl.NotAfter.After(a.Cert.NotAfter) {
		tmpl.NotAfter = a.Cert.NotAfter
	}
	if tmpl.NotBefore.Before(a.Cert.NotBefore) {
		tmpl.NotBefore = a.Cert.NotBefore
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, key.Public(), a.key)
	if err != nil {
		return nil, fmt.Errorf("transport: issue certificate: %w", err)
	}
	return der, nil
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("transport: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("transport: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // positive, never zero
}

// ConfigNodeID returns the node ID in cfg's own certificate (the first of
// cfg.Certificates), so that a node can check at start that it holds a
// node certificate for its own ID. It fails if cfg has no certificate or
// the certificate has no node role (see NodeIDOf).
func ConfigNodeID(cfg *tls.Config) (string, error) {
	if cfg == nil || len(cfg.Certificates) == 0 || len(cfg.Certificates[0].Certificate) == 0 {
		return "", errors.New("transport: no certificate in the TLS configuration")
	}
	leaf := cfg.Certificates[0].Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cfg.Certificates[0].Certificate[0]); err != nil {
			return "", fmt.Errorf("transport: parse own certificate: %w", err)
		}
	}
	return NodeIDOf(leaf)
}
