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
//   - Faults: an in-process switchboard that partitions nodes in tests.
//
// It does not know what the bytes mean: nothing here knows about leases,
// the FSM or Raft semantics. RPC methods, payloads and error encodings are
// opaque numbers and bytes defined by package node (protobuf messages from
// transport/pb); the client API protocol is served elsewhere.
//
// # Connection preamble
//
// A dialer opens TCP, completes the TLS handshake when TLS is configured,
// and writes one protocol byte. The Mux reads that byte under
// MuxConfig.HandshakeTimeout and hands the connection, byte consumed, to the
// protocol's listener. Unknown bytes and failed handshakes are closed.
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
