package transport

import "sync/atomic"

// Refusal is how many connections (or streams, packets, requests) one port
// of a node refused for one reason since the node started: one series of
// the counter leasenode_refusals_total. The Mux reports the node port's
// (Mux.Refusals); package node adds gossip's and the client API's.
type Refusal struct {
	// Port is the port that refused: "node" (Raft and node RPC),
	// "gossip" or "api".
	Port string
	// Reason is why, one of a small fixed set of snake_case words per
	// port (never anything the sender chose, such as its address).
	Reason string
	// Count is how many were refused.
	Count uint64
}

// PortNode is the Port of the Mux's refusals.
const PortNode = "node"

// muxRefusal is a reason the Mux closes a connection before handing it
// over: an index into Mux.refusals and muxRefusalReasons.
type muxRefusal int

// The reasons, each described at Mux.Refusals.
const (
	refusedPlainTCP muxRefusal = iota
	refusedHTTPClient
	refusedTLSHandshake
	refusedUnknownProtocol
	refusedBadHello
	refusedHello
	refusedHandshakeTimeout
	refusedMaxPending
	refusedHandshakeRate
	numMuxRefusals
)

// muxRefusalReasons are the Reason labels of the muxRefusals, in order.
var muxRefusalReasons = [numMuxRefusals]string{
	refusedPlainTCP:         "plain_tcp",
	refusedHTTPClient:       "http_client",
	refusedTLSHandshake:     "tls_handshake",
	refusedUnknownProtocol:  "unknown_protocol",
	refusedBadHello:         "bad_hello",
	refusedHello:            "hello_refused",
	refusedHandshakeTimeout: "handshake_timeout",
	refusedMaxPending:       "max_pending",
	refusedHandshakeRate:    "handshake_rate",
}

// muxRefusals counts a Mux's refusals by reason.
type muxRefusals [numMuxRefusals]atomic.Uint64

// Refusals returns how many connections the Mux has refused since NewMux,
// one Refusal for each reason (Port PortNode), in a fixed order, zeros
// included:
//
//   - plain_tcp: a connection without TLS on a TLS node port (a node
//     without the cluster key or certificates, or a scanner);
//   - http_client: one whose first byte starts an HTTP method, with or
//     without TLS configured: a client pointed at the node port instead of
//     the API (answered HTTP 421 while within the answers' budget);
//   - tls_handshake: a failed TLS handshake: a certificate from another CA
//     or cluster key, or one without the node role;
//   - unknown_protocol: a protocol byte nobody listens for (TLS on a plain
//     node port among them);
//   - bad_hello: a hello that is not leasenode's, or of another version;
//   - hello_refused: a peer the hello's judge refused (MuxConfig.Hello's
//     Check: another cluster's id, the same node ID twice, a node waiting
//     to bootstrap);
//   - handshake_timeout: no TLS handshake, protocol byte or hello within
//     the handshake timeout;
//   - max_pending: closed to make room past MaxPending, whatever its
//     handshake was doing then (counted as this only, never also as
//     tls_handshake or another reason);
//   - handshake_rate: refused at its TLS ClientHello, before the node
//     does any crypto for it, past MuxConfig.Handshakes (agent
//     --max-handshake-rate and --max-handshake-rate-per-source).
//
// Connections that hang up before saying anything, and those closed by
// Close, are not refusals.
func (m *Mux) Refusals() []Refusal {
	out := make([]Refusal, numMuxRefusals)
	for i := range out {
		out[i] = Refusal{Port: PortNode, Reason: muxRefusalReasons[i], Count: m.refusals[i].Load()}
	}
	return out
}
