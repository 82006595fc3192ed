package transport

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Hello is what a node says about itself at the start of every node-port
// connection, and how it judges what the other side says. The Mux
// (MuxConfig.Hello) and the Dialer (Dialer.Hello) run the exchange after
// the TLS handshake and the protocol byte, before handing the connection
// to Raft or RPC; see the package documentation for the bytes. A nil
// *Hello presents an empty node ID and cluster id and accepts every peer.
type Hello struct {
	// NodeID is this node's ID. Under TLS it must be the identity in this
	// node's certificate (or empty: the certificate then speaks alone):
	// peers refuse a hello that disagrees with the certificate.
	NodeID string
	// ClusterID returns this node's cluster id, "" while it has none. It
	// is called once per connection, after Check when Check accepts (so
	// an id that Check adopted is presented at once). Nil means "".
	ClusterID func() string
	// Check judges a peer. inbound is true on the Mux (p dialed us) and
	// false on the Dialer (p is the node we reached). A non-nil error
	// refuses the connection: on the Mux its text is sent to the dialer,
	// which returns it in a *RefusedError; on the Dialer, Dial fails with
	// it. Nil accepts every peer. Check runs concurrently for different
	// connections and bounds what it does (the handshake deadline runs).
	Check func(p Peer, inbound bool) error
	// Refused, if set, is told (on the Dialer side) when a peer refused
	// this node, before Dial returns the error: the node logs it once per
	// peer, since Raft's own log of a failed dial is easy to miss.
	Refused func(err *RefusedError)
}

func (h *Hello) nodeID() string {
	if h == nil {
		return ""
	}
	return h.NodeID
}

func (h *Hello) clusterID() string {
	if h == nil || h.ClusterID == nil {
		return ""
	}
	return h.ClusterID()
}

func (h *Hello) check(p Peer, inbound bool) error {
	if h == nil || h.Check == nil {
		return nil
	}
	return h.Check(p, inbound)
}

// RefusedError is returned by Dialer.Dial when the Mux it reached refused
// this node in the hello: another cluster, a node waiting to bootstrap, an
// identity that does not match the certificate. It wraps ErrRefused.
type RefusedError struct {
	// Addr is the dialed address.
	Addr string
	// PeerID is the refusing node's ID, as it said in its answer.
	PeerID string
	// PeerClusterID is the refusing node's cluster id ("" if none).
	PeerClusterID string
	// Message is the refusing node's reason, meant for an operator.
	Message string
}

// Error implements error.
func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused by %s (%s): %s", e.PeerID, e.Addr, e.Message)
}

// Unwrap returns ErrRefused.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// Hello wire format constants.
const (
	helloMagic   byte = 'L'
	helloVersion byte = 1

	helloAccept byte = 0
	helloRefuse byte = 1

	// maxHelloMessage bounds a refusal's text; longer ones are cut.
	maxHelloMessage = 1024
	// maxHelloID bounds node and cluster ids: one length byte.
	maxHelloID = 255
)

// appendHelloString appends a one-byte length and s (cut to maxHelloID).
func appendHelloString(b []byte, s string) []byte {
	if len(s) > maxHelloID {
		s = s[:maxHelloID]
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// readHelloString reads what appendHelloString wrote.
func readHelloString(r io.Reader) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, n[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// clientHelloBytes is the protocol byte followed by the dialer's hello,
// sent in one write.
func clientHelloBytes(proto byte, h *Hello) []byte {
	b := []byte{proto, helloMagic, helloVersion}
	b = appendHelloString(b, h.nodeID())
	return appendHelloString(b, h.clusterID())
}

// readHelloHeader reads and checks the magic and version bytes.
func readHelloHeader(r io.Reader) error {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	if hdr[0] != helloMagic {
		return fmt.Errorf("%w: no hello (first byte %#x): a leasenode version without cluster identity? Upgrade every node", errProtocol, hdr[0])
	}
	if hdr[1] != helloVersion {
		return fmt.Errorf("%w: hello version %d, this node speaks %d", errProtocol, hdr[1], helloVersion)
	}
	return nil
}

// certPeerID returns the node ID proven by conn's peer certificate, and
// whether conn is TLS at all. The role was verified during the handshake
// (withNodeRole); this only reads it.
func certPeerID(conn net.Conn) (id string, isTLS bool, err error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return "", false, nil
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", true, errors.New("no peer certificate")
	}
	id, err = NodeIDOf(certs[0])
	return id, true, err
}

// serverHello runs the Mux's side of the hello on conn (the protocol byte
// already read): read the dialer's hello, judge it, answer. It returns the
// peer when the connection is accepted, and an error otherwise; refused
// tells that the error is this side's refusal (already sent to the peer).
func serverHello(conn net.Conn, h *Hello) (p Peer, refused bool, err error) {
	if err := readHelloHeader(conn); err != nil {
		return p, false, err
	}
	id, err := readHelloString(conn)
	if err != nil {
		return p, false, err
	}
	cluster, err := readHelloString(conn)
	if err != nil {
		return p, false, err
	}
	p = Peer{ID: id, ClusterID: cluster}
	refusal := func() error {
		certID, isTLS, err := certPeerID(conn)
		if err != nil {
			return err
		}
		if isTLS {
			if id != "" && certID != id {
				return fmt.Errorf("your certificate is for node %q but you said you are %q", certID, id)
			}
			p.ID, p.Authenticated = certID, true
		}
		return h.check(p, true)
	}()

	reply := []byte{helloMagic, helloVersion, helloAccept}
	msg := ""
	if refusal != nil {
		reply[2] = helloRefuse
		msg = refusal.Error()
		if len(msg) > maxHelloMessage {
			msg = msg[:maxHelloMessage]
		}
	}
	reply = appendHelloString(reply, h.nodeID())
	reply = appendHelloString(reply, h.clusterID())
	reply = binary.BigEndian.AppendUint16(reply, uint16(len(msg)))
	reply = append(reply, msg...)
	_, werr := conn.Write(reply)
	switch {
	case refusal != nil:
		return p, true, refusal
	case werr != nil:
		return p, false, fmt.Errorf("write hello reply: %w", werr)
	}
	return p, false, nil
}

// clientHello runs the Dialer's side after its hello was written: read the
// server's answer and judge the server.
func clientHello(conn net.Conn, addr string, h *Hello) (Peer, error) {
	if err := readHelloHeader(conn); err != nil {
		return Peer{}, err
	}
	var status [1]byte
	if _, err := io.ReadFull(conn, status[:]); err != nil {
		return Peer{}, err
	}
	id, err := readHelloString(conn)
	if err != nil {
		return Peer{}, err
	}
	cluster, err := readHelloString(conn)
	if err != nil {
		return Peer{}, err
	}
	var n [2]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil {
		return Peer{}, err
	}
	msgLen := binary.BigEndian.Uint16(n[:])
	if msgLen > maxHelloMessage {
		return Peer{}, fmt.Errorf("%w: hello refusal of %d bytes", errProtocol, msgLen)
	}
	msg := make([]byte, msgLen)
	if _, err := io.ReadFull(conn, msg); err != nil {
		return Peer{}, err
	}
	p := Peer{ID: id, ClusterID: cluster}
	switch status[0] {
	case helloAccept:
	case helloRefuse:
		rerr := &RefusedError{Addr: addr, PeerID: id, PeerClusterID: cluster, Message: string(msg)}
		if h != nil && h.Refused != nil {
			h.Refused(rerr)
		}
		return p, rerr
	default:
		return p, fmt.Errorf("%w: hello status %d", errProtocol, status[0])
	}
	certID, isTLS, err := certPeerID(conn)
	if err != nil {
		return p, err
	}
	if isTLS {
		if id != "" && certID != id {
			return p, fmt.Errorf("server's certificate is for node %q but it said it is %q", certID, id)
		}
		p.ID, p.Authenticated = certID, true
	}
	if err := h.check(p, false); err != nil {
		return p, err
	}
	return p, nil
}
