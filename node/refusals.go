package node

import (
	"time"

	"github.com/leasenode/leasenode/transport"
)

// Ports of Refusals besides the node port (transport.PortNode).
const (
	// PortGossip is the Port of gossip's refusals.
	PortGossip = "gossip"
	// PortAPI is the Port of the client API's refusals.
	PortAPI = "api"
)

// Refusals returns how many connections, streams, packets and requests
// this node has refused at its trust boundary since it started, by port
// and reason: one transport.Refusal for every reason, zeros included, in
// a fixed order (the metrics package exports them as
// leasenode_refusals_total). Each kind is also logged, once per 10 s or
// per minute; these count every one.
//
// The node port's are the Mux's (transport.Mux.Refusals). Gossip's:
//
//   - max_streams: inbound streams closed at gossip_max_streams or
//     gossip_max_streams_per_ip, new ones and older ones closed to make
//     room for them;
//   - too_long: streams that read, or declared, more than
//     gossip_stream_max_bytes (gossip_outsider_stream_max_bytes from an
//     address that is no known node's);
//   - outsider_budget: streams from addresses that are no known node's
//     refused or closed while such streams, together, have read their
//     gossip_outsider_bytes_per_second;
//   - undecodable: packets and streams memberlist could not decrypt or
//     decode, as its log reports them: another cluster key, none where
//     this cluster has one (or one where it has none), or not leasenode's;
//   - encrypt_version: encrypted streams closed at their first message's
//     encryption version, one memberlist does not know (before the
//     message is read: memberlist would read it whole first).
//
// The client API's:
//
//   - auth_timeout: connections closed for making no request with the
//     auth token within their first-request timeout (2 s by default);
//   - auth_refused: connections closed after 16 requests without it
//     (refused, or served without it: /healthz, /metrics);
//   - wrong_token: requests whose bearer token is not the cluster's
//     (each is answered 401; logged once per 10 s with its source);
//   - open_body: requests to the endpoints served without the token
//     (health, probes, metrics) refused for a compressed body or one
//     over 64 KiB;
//   - max_unauthenticated: connections without an authenticated request
//     closed to admit a new one past 64 of them;
//   - max_conns: connections closed to admit a new one at
//     Limits.MaxConns: silent ones, idle ones of the new one's source, or
//     those of a source holding the most and more than its fair share
//     (busy or not), idle or stalled ones of a source holding more than
//     Limits.MaxConns over the active sources; and new ones refused at
//     it, every source holding at most its fair share;
//   - max_conns_per_source: connections refused, or of their own source
//     closed to admit them, at a source's share of Limits.MaxConns (an
//     IPv4 /24 or IPv6 /64 may hold a quarter of it, at least 64). The
//     new connections refused at max_conns and max_conns_per_source are
//     told why on a plain port (connLimiter.refuseSaying: HTTP/1.1 503 or
//     429, or an HTTP/2 GOAWAY, naming the reason and the flag);
//   - max_watches: Watch calls refused at Limits.MaxWatches;
//   - frame_rate: HTTP/2 connections, with the token or not, closed for
//     sending frames faster than Limits.MaxFrameRate;
//   - api_rate: HTTP/2 connections closed for sending faster than their
//     turns of Limits.MaxAPIRate for 2 s (bytes left unread in the
//     socket after every paced read);
//   - tls_handshake: connections to a TLS API whose handshake failed or
//     never finished (another CA, no client certificate, plain HTTP, a
//     port probe, silence past the first-request timeout); net/http logs
//     them, once per 10 s;
//   - handshake_rate: connections to a TLS API closed after their first
//     bytes, before their TLS handshake, past Limits.MaxHandshakeRate or
//     Limits.MaxHandshakeRatePerSource;
//   - body_room: request bodies over 4 KiB ended, and their connections
//     closed, for arriving too slowly to be read within Limits.ReadTimeout
//     while others waited for room among the node's large bodies (32 MiB);
//   - reply_room: reads refused after waiting twice Limits.ReadTimeout
//     for room among the replies the node holds unsent (64 MiB, 16 MiB a
//     source; reply-room), those forwarded to this node as leader
//     included;
//   - reply_write: unary replies ended unwritten, their client not
//     having read them within Limits.ReadTimeout of their writing (an
//     HTTP/2 stream reset, an HTTP/1 connection closed);
//   - pending_bodies: requests refused at their headers, their source
//     or the node holding as many requests whose bodies have not arrived
//     as it may (pending-bodies: 4,096 node-wide, 1,024 a source);
//   - pending_evicted: requests whose body had not arrived 500 ms after
//     their headers, ended to give their place to a request of a source
//     holding fewer (pending-bodies).
//
// Reads paced by Limits.MaxAPIRate are not refusals (APIPacing counts
// them); only the connections closed for a lasting backlog are.
//
// Single requests refused for the auth token (401), size (413) or
// Content-Type (415) are not here: the metrics package counts them by
// status code.
func (n *Node) Refusals() []transport.Refusal {
	g := n.gossipNet
	var authSlow, authRefused, unauthCap, maxConns, perSource, frameRate, apiRate, failedTLS, hsRate uint64 // zeros without an API
	if c := n.apiConn; c != nil {
		authSlow, authRefused, unauthCap, maxConns = c.closedAuthSlow.Load(), c.closedAuthRefused.Load(), c.closedUnauthCap.Load(), c.closedMax.Load()
		perSource = c.closedPerSource.Load()
		failedTLS, hsRate = c.failedTLS.Load(), c.closedHandshakeRate.Load()
	}
	if f := n.apiFrames; f != nil {
		frameRate, apiRate = f.closed.Load(), f.backlogged.Load()
	}
	return append(n.mux.Refusals(),
		transport.Refusal{Port: PortGossip, Reason: "max_streams", Count: uint64(g.refused.Load())},
		transport.Refusal{Port: PortGossip, Reason: "too_long", Count: uint64(g.tooLong.Load())},
		transport.Refusal{Port: PortGossip, Reason: "outsider_budget", Count: uint64(g.overBudget.Load())},
		transport.Refusal{Port: PortGossip, Reason: "undecodable", Count: n.gossipUndecodable.Load()},
		transport.Refusal{Port: PortGossip, Reason: "encrypt_version", Count: uint64(g.badVsn.Load())},
		transport.Refusal{Port: PortAPI, Reason: "auth_timeout", Count: authSlow},
		transport.Refusal{Port: PortAPI, Reason: "auth_refused", Count: authRefused},
		transport.Refusal{Port: PortAPI, Reason: "wrong_token", Count: n.wrongTokens.Load()},
		transport.Refusal{Port: PortAPI, Reason: "open_body", Count: n.openRefused.Load()},
		transport.Refusal{Port: PortAPI, Reason: "max_unauthenticated", Count: unauthCap},
		transport.Refusal{Port: PortAPI, Reason: "max_conns", Count: maxConns},
		transport.Refusal{Port: PortAPI, Reason: "max_conns_per_source", Count: perSource},
		transport.Refusal{Port: PortAPI, Reason: "max_watches", Count: n.hub.refused.Load()},
		transport.Refusal{Port: PortAPI, Reason: "frame_rate", Count: frameRate},
		transport.Refusal{Port: PortAPI, Reason: "api_rate", Count: apiRate},
		transport.Refusal{Port: PortAPI, Reason: "tls_handshake", Count: failedTLS},
		transport.Refusal{Port: PortAPI, Reason: "handshake_rate", Count: hsRate},
		transport.Refusal{Port: PortAPI, Reason: "body_room", Count: n.bigBodies.reclaimedBodies.Load()},
		transport.Refusal{Port: PortAPI, Reason: "reply_room", Count: n.replies.refused.Load()},
		transport.Refusal{Port: PortAPI, Reason: "pending_bodies", Count: n.pending.refused.Load()},
		transport.Refusal{Port: PortAPI, Reason: "pending_evicted", Count: n.pending.evicted.Load()},
		transport.Refusal{Port: PortAPI, Reason: "reply_write", Count: n.replies.unwritten.Load()},
	)
}

// APIPacing reports how many client API reads (HTTP/2) and requests
// (HTTP/1) waited for their turn of Limits.MaxAPIRate since the node
// started, and how long they waited in all (the metrics package exports
// them as leasenode_api_paced_total and
// leasenode_api_paced_seconds_total). Zeros without an API.
func (n *Node) APIPacing() (paced uint64, waited time.Duration) {
	if b := n.apiWork; b != nil {
		return b.paced.Load(), time.Duration(b.waited.Load())
	}
	return 0, 0
}

// APILivenessChecks reports how many liveness checks (Status requests
// over HTTP/1.1, as lease.Remote sends them while a request of its
// waits) the node served out of their turn of the API budget since it
// started, and how many waited their turn, over their source's
// allowance (a hundredth of Limits.MaxAPIRate a second, at least 10).
func (n *Node) APILivenessChecks() (outOfTurn, paced uint64) {
	if b := n.apiWork; b != nil {
		return b.checked.Load(), b.checkPaced.Load()
	}
	return 0, 0
}
