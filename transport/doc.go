// Package transport owns the bytes on the wire between leasenode nodes:
//
//   - Mux: one TCP port per node, optionally mutual TLS, whose connections
//     are routed to sub-listeners by their first byte (ProtoRaft, ProtoRPC),
//     in the shape of rqlite's tcp.Mux.
//   - NewStreamLayer: the raft.StreamLayer that hashicorp/raft's
//     NetworkTransport runs over.
//   - RPCServer and RPCClient: node-to-node request/response (forwarding to
//     the leader) over long-lived, pooled, multiplexed connections.
//   - Dialer and TLSFiles: the client side of all of the above, and the
//     mutual-TLS configuration both sides share.
//   - Hello and Peer: who is at the other end of every node-port
//     connection, and the cluster-identity check at its start.
//   - ClusterKeyTLS, GossipKey and Authority: cluster-key mode (a CA
//     derived from a shared secret) and the certificates of `leasenode
//     tls`.
//   - Faults: an in-process switchboard that partitions nodes in tests.
//
// It does not know what the bytes mean: nothing here knows about leases,
// the FSM or Raft semantics. RPC methods, payloads and error encodings are
// opaque numbers and bytes defined by package node (protobuf messages from
// transport/pb); the client API protocol is served elsewhere.
//
// # Trust on the node port
//
// Every Raft and node-RPC byte is meant to come from a node of this
// cluster. The node port runs in one of two secure modes, by one code path
// (mutual TLS on the Mux and the Dialer), or, only where the operator
// allows it, in the clear:
//
//   - TLS files (TLSFiles): certificates from the operator's CA. A
//     certificate proves a *node* only by its role: the DNS SAN NodeRole
//     ("node.leasenode") and exactly one identity SAN NodeSAN(ID)
//     ("<ID>.node.leasenode"). Both sides check chain and role during the
//     handshake (the Mux and the Dialer add the check to whatever
//     tls.Config they are given), so an API client certificate from the
//     same CA (ClientRole) is refused on the node port, with a log line
//     naming the missing role, while the API accepts it.
//   - Cluster key (ClusterKeyTLS): every node derives from the shared
//     32-byte key, with HKDF-SHA256 under a fixed info string, the same
//     Ed25519 CA key and a byte-identical self-signed CA certificate
//     (fixed serial and subject, valid 2000-01-01 to 9999-12-31 so that
//     no clock skew matters), and at start mints an ephemeral certificate
//     with the node role and its identity, signed by that CA. From there
//     it is the TLS-files path exactly. GossipKey derives the memberlist
//     key from the same secret under another info string.
//   - Plain TCP: no authentication at all. Package node allows it only
//     when every address it binds is loopback, or when told Insecure.
//
// Why TLS in cluster-key mode rather than a bare challenge-response (an
// HMAC of nonces, then plain bytes): a challenge proves who opened the
// connection, not who sends its later bytes. Anyone on the path could
// take over an authenticated TCP stream after the challenge, read every
// lease, holder and token it carries, or inject a forged AppendEntries
// (the attack that made one replica hold a lease another had released).
// Binding every byte to the key needs a MAC on every frame of Raft's own
// protocol, which we do not own; TLS does exactly that, and encrypts, with
// one well-reviewed implementation and the same code path as the TLS-files
// mode, so there is one thing to test. The cost is one handshake per
// pooled connection (connections are long-lived) and AES-GCM on the bytes;
// see the benchmark figures in node/DESIGN.md.
//
// # Connection preamble
//
// A dialer opens TCP, completes the TLS handshake when TLS is configured
// (role checked on both sides), and writes one protocol byte followed by
// its hello. The Mux reads them, judges the dialer, answers, and hands the
// connection to the protocol's listener; all of it runs under
// MuxConfig.HandshakeTimeout on the Mux and the dial's deadline on the
// Dialer. Unknown bytes, failed handshakes and refused hellos are closed.
// Raft's NetworkTransport and the RPC frames below never see the hello.
//
//	dialer → Mux   proto   uint8   ProtoRaft or ProtoRPC
//	               magic   uint8   'L'
//	               version uint8   1
//	               node    uint8 length + bytes   the dialer's node ID
//	               cluster uint8 length + bytes   its cluster id ("" none)
//	Mux → dialer   magic, version
//	               status  uint8   0 accept, 1 refuse
//	               node, cluster   the Mux's own, as above
//	               message uint16 length (<= 1024) + bytes: why it refused
//
// Under TLS the node ID in a hello must be the identity in the sender's
// certificate (or empty); otherwise the node ID is only a claim. The
// judge (Hello.Check) runs on both sides, so a refusal goes both ways: the
// Mux sends its reason, which Dial returns as a *RefusedError (for
// instance "refused by n2 (10.0.0.2:7400): node n4's data dir belongs to
// cluster 91bc…, node n2's to cluster 7f3a…; to join n2's cluster, n4
// must start with an empty --data-dir; to join n4's, n2 must"). Package
// node decides what cluster ids match.
//
// Connections handed out by Mux sub-listeners and returned by Dial carry
// the peer (PeerOf); RPCServer puts it in every handler's context
// (PeerFrom, PeerID), and RPCClient.CallNode refuses to send to an
// address whose node is not the one meant.
//
// # RPC frames
//
// Every RPC frame, in both directions, is
//
//	length  uint32   big-endian count of the bytes that follow
//	type    uint8    1 request, 2 response, 3 error, 4 cancel
//	id      uint64   call id, chosen by the client, unique per connection
//	...              type-specific header, then the payload
//
// with these type-specific headers:
//
//	request   method uint8, timeout int64 (nanoseconds left on the
//	          caller's deadline; 0 = none), payload = request bytes
//	response  payload = reply bytes
//	error     kind uint8, payload: 1 = bytes from EncodeError, 2 = error
//	          text, 3 = request over the server's MaxMessage (handler not
//	          run), 4 = reply over the server's MaxMessage (handler ran);
//	          kinds 1 and 2 or-ed with 0x80 when the handler's context had
//	          ended before it returned the error
//	cancel    nothing: the client gave up on call id
//
// Payloads are limited to MaxMessage on each side. An oversized payload is
// skipped by the reader (its length is known), so the connection survives:
// the server answers an oversized request with an error frame, the client
// fails the one call whose reply was oversized. A malformed frame closes
// the connection.
//
// The caller's deadline travels as a relative timeout, so the handler's
// context ends when the caller's does (plus transit time, since the timer
// starts on arrival). When the caller's context ends early the client sends
// a cancel frame, best effort; the server also cancels the handlers of a
// connection that breaks, and of every connection when it closes.
//
// # Unknown outcomes
//
// RPCClient.Call separates failures by what the remote handler may have
// done, because node decides on it whether to retry a write or report an
// unknown outcome (never retry blindly: a write that got EOF or timeout may
// have been applied):
//
//   - nil error: the handler ran and this is its reply.
//   - an error made by DecodeError (or a *RemoteError): the handler ran and
//     returned that error while its context was live.
//   - *CallError wrapping ErrNotSent: the handler certainly did not run.
//     The dial failed, the context ended before the whole request frame was
//     written, the client was closed, or the request was too large for
//     either side. The server acts only on complete frames, so a request
//     cut off mid-write is not delivered. Safe to retry.
//   - *CallError wrapping ErrNoReply: the whole request was written, then
//     the connection broke, the context ended, the client was closed or the
//     reply was too large to deliver. The handler may have run; the outcome
//     is unknown. A handler error returned after the handler's context had
//     ended (the server marks it: error kind | 0x80) also lands here, with
//     the decoded error as the cause: a handler that ran out of time may
//     have done part of its work.
//
// When in doubt the classification errs toward ErrNoReply: for instance a
// server that rejects the client's certificate under TLS 1.3 is only noticed
// after the request was written.
package transport
