package transport

import (
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"
)

// HandshakeLimit bounds how fast a port starts TLS handshakes: a token
// bucket per source prefix (SourcePrefix with HandshakeV4Bits) and one for
// all sources together. A TLS 1.3 ClientHello makes the server do an
// X25519 exchange and an ECDSA signature before it learns anything about
// the client, about 0.4 ms of CPU on a 2-core host, and a ClientHello can
// be replayed without any crypto on the sender's side: an outsider's
// replay from 249 addresses drove a leader to 1.3 cores and cut a client's
// throughput by 85-95% (outsider review, session 30). Whoever holds the
// limit serves TLS with a configuration from Guard, which asks Allow once
// crypto/tls has read a whole ClientHello and before it does any crypto,
// and fails the handshake if it may not: the handshake is never spent.
// Only ClientHellos draw: not a connection's first byte, nor a record
// that is no ClientHello (a warning alert crypto/tls drops first draws
// nothing itself, the ClientHello after it draws), nor plain connections,
// which cost no crypto and are bounded by the ports' connection limits.
// Drawing at the first byte let a connection that sent one byte and reset,
// at no cost to anyone, take a token: from 20 /24s an outsider held the
// whole port's bucket, and 34 of 44 fresh TLS clients of another /24
// failed (outsider review, session 32).
//
// When the whole port's bucket is spent, a light prefix still gets a
// handshake, from a reserve: a bucket of a tenth of the total (at least 1
// a second), with a burst of one second's worth. A prefix is light while
// its light bucket, filled at lightRate (1 a second) up to lightBurst (2)
// and emptied by one for every handshake the prefix starts (down to 0,
// never below), holds a token: a source that has started about one
// handshake a second or fewer lately. Without it, whoever sent the most
// ClientHellos took the total and every other source raced them for each
// token refilled: from 3 /24s (200 a second each) an outsider held a
// 500-a-second total. The prefixes holding the total start a handshake
// each many times a second, so they never look light; an outsider who
// wants the reserve too needs a further prefix for each handshake a
// second of it (50 /24s for the 2-CPU default's 50), each kept to one a
// second. No scheme that counts by prefix stops an outsider with
// prefixes enough (IPv6 /64s are cheap), but this makes a lockout cost
// tens of /24s more, not 3. A source that is not light (a pool of
// connections reconnecting at once) competes for the total as before.
//
// On a node port, the addresses of the cluster's own nodes are known
// (Known): a handshake from one is counted by that address alone and
// never waits on its prefix, the total or the reserve, so no flood from
// elsewhere, nor from the nodes' own /24, keeps a node from reaching
// another (outsider review s32 #6: a candidate's vote requests were
// refused during a flood). A TCP source address cannot be forged, so an
// outsider gets this only from a node's own host.
//
// Checking the whole port's bucket (or the reserve) first, and taking
// from a source's bucket only what passed it, keeps the sources
// remembered bounded by what the port admitted in the last seconds,
// whatever the flood.
//
// Invariant (handshake-rate): a port with a HandshakeLimit starts at most
// totalBurst + reserveBurst + (total+reserve)*t TLS handshakes in any t
// seconds, reserve = max(1, total/10) and reserveBurst = reserve; at most
// sourceBurst + perSource*t from one prefix; at most lightBurst +
// lightRate*t from the reserve for one prefix; besides these, at most
// sourceBurst + perSource*t from each address Known reports; and a
// connection that has not sent a whole ClientHello takes none of them.
// Guarded by TestHandshakeLimitBuckets, TestHandshakeLimitReserve,
// TestHandshakeLimitKnownSources and the ports' handshake_rate tests
// (TestMuxHandshakeRate, TestAPIHandshakeRate, the *LightSource* and
// *KnownSources* port tests, and, for the last part,
// TestMuxOneByteConnectionsDrawNoHandshakes and
// TestAPIOneByteConnectionsDrawNoHandshakes).
type HandshakeLimit struct {
	// Known, if set before the limit is first used, reports whether ip
	// is a known peer's (a node port's cluster members): its handshakes
	// are counted in a bucket of its own, perSource a second with a
	// burst of two seconds' worth, and draw nothing from its prefix's,
	// the total or the reserve. It is called for every ClientHello, so
	// it must be cheap. Nil: none is known.
	Known func(ip net.IP) bool

	perSource, total, reserve             float64 // handshakes a second
	sourceBurst, totalBurst, reserveBurst float64 // at once
	now                                   func() time.Time
	mu                                    sync.Mutex
	all                                   bucket
	spare                                 bucket // the reserve
	sources                               map[string]*source
	pruneAt                               int
	known                                 map[string]*bucket // by address, for Known ones
}

// bucket is a token bucket filled up to its burst at its rate.
type bucket struct {
	tokens float64
	at     time.Time // when tokens was right
}

// source is a prefix's buckets: its own limit, and light, which tells
// whether it may draw from the reserve.
type source struct {
	bucket
	light bucket
}

// A prefix's light bucket: filled at lightRate a second up to lightBurst,
// less one for each handshake the prefix starts (not below 0). While it
// holds a token the prefix may take a handshake from the reserve.
const (
	lightRate  = 1
	lightBurst = 2
)

// HandshakeV4Bits is the IPv4 prefix a HandshakeLimit counts sources by:
// a /24. A handshake costs the server crypto however the sender got its
// address, and IPv4 addresses come to one party in blocks (a cloud host's
// secondary addresses, a subnet behind one router, all of 127.0.0.0/8 on
// loopback), so counting by address would let one host with 249
// addresses (the outsider's flood) take 249 sources' share and the whole
// port's budget; a /24 gives it one. Clients that share a /24 (one
// Kubernetes node's pods, one office) share 200 a second and a burst of
// 400 by default, far more than a pool of connections reconnecting needs.
// IPv6 is counted by /64, one host's or site's usual prefix.
const HandshakeV4Bits = 24

// NewHandshakeLimit returns a limit of perSource handshakes a second from
// one source prefix, with a burst of two seconds' worth (a host's
// connection pools reconnecting at once after a restart or a partition),
// and total a second from all sources together, with a burst of one
// second's worth, and a reserve of a tenth of total (at least 1) for
// light prefixes when total is spent. Both must be positive.
func NewHandshakeLimit(perSource, total int) *HandshakeLimit {
	return newHandshakeLimit(perSource, total, time.Now)
}

func newHandshakeLimit(perSource, total int, now func() time.Time) *HandshakeLimit {
	reserve := max(1, float64(total/10))
	h := &HandshakeLimit{perSource: float64(perSource), total: float64(total), reserve: reserve,
		sourceBurst: 2 * float64(perSource), totalBurst: float64(total), reserveBurst: reserve, now: now,
		sources: map[string]*source{}, pruneAt: 1024}
	h.all = bucket{tokens: h.totalBurst, at: now()}
	h.spare = bucket{tokens: h.reserveBurst, at: now()}
	return h
}

// PerSource returns the handshakes a second one source prefix may start.
func (h *HandshakeLimit) PerSource() int { return int(h.perSource) }

// Total returns the handshakes a second all sources together may start.
func (h *HandshakeLimit) Total() int { return int(h.total) }

// Allow reports whether a TLS handshake from remote may start now, and
// takes it from the buckets if so: from its prefix's and the whole
// port's, or, with the port's spent, the reserve's if the prefix is
// light. A nil HandshakeLimit allows every one.
func (h *HandshakeLimit) Allow(remote net.Addr) bool {
	if h == nil {
		return true
	}
	if h.Known != nil {
		if ip := remoteIP(remote); ip != nil && h.Known(ip) {
			return h.allowKnown(ip.String())
		}
	}
	key := SourcePrefix(remote, HandshakeV4Bits)
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	fromAll := h.all.fill(now, h.total, h.totalBurst) >= 1
	if !fromAll && h.spare.fill(now, h.reserve, h.reserveBurst) < 1 {
		return false
	}
	b := h.sources[key]
	if b == nil {
		if len(h.sources) >= h.pruneAt {
			h.pruneLocked(now)
		}
		b = &source{bucket: bucket{tokens: h.sourceBurst, at: now}, light: bucket{tokens: lightBurst, at: now}}
		h.sources[key] = b
	}
	if b.fill(now, h.perSource, h.sourceBurst) < 1 {
		return false
	}
	light := b.light.fill(now, lightRate, lightBurst) >= 1
	switch {
	case fromAll:
		h.all.tokens--
	case light:
		h.spare.tokens--
	default:
		return false
	}
	b.tokens--
	b.light.tokens = max(0, b.light.tokens-1)
	return true
}

// allowKnown is Allow for an address Known reports: its own bucket only.
func (h *HandshakeLimit) allowKnown(key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	b := h.known[key]
	if b == nil {
		if h.known == nil {
			h.known = map[string]*bucket{}
		}
		if len(h.known) >= 64 { // members come and go: forget the full
			for k, o := range h.known {
				if o.fill(now, h.perSource, h.sourceBurst) >= h.sourceBurst {
					delete(h.known, k)
				}
			}
		}
		b = &bucket{tokens: h.sourceBurst, at: now}
		h.known[key] = b
	}
	if b.fill(now, h.perSource, h.sourceBurst) < 1 {
		return false
	}
	b.tokens--
	return true
}

// ErrHandshakeRate is the error a handshake refused by a HandshakeLimit
// fails with, on the server's side (see Guard); the client gets an
// internal_error alert.
var ErrHandshakeRate = errors.New("transport: TLS handshake refused: past the port's handshakes a second (agent --max-handshake-rate or --max-handshake-rate-per-source)")

// Guard returns a clone of cfg whose server handshakes h must allow: its
// GetConfigForClient asks Allow for the connection's remote address once
// crypto/tls has read a whole ClientHello, before any key exchange or
// signature, and fails the handshake with ErrHandshakeRate if h does not
// allow it, after calling refused (if non-nil) with the connection
// crypto/tls was given. A GetConfigForClient of cfg is called after an
// allowed one. A nil h returns cfg itself.
func (h *HandshakeLimit) Guard(cfg *tls.Config, refused func(net.Conn)) *tls.Config {
	if h == nil || cfg == nil {
		return cfg
	}
	cfg = cfg.Clone()
	prev := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if !h.Allow(hello.Conn.RemoteAddr()) {
			if refused != nil {
				refused(hello.Conn)
			}
			return nil, ErrHandshakeRate
		}
		if prev != nil {
			return prev(hello)
		}
		return nil, nil
	}
	return cfg
}

// pruneLocked forgets the sources whose buckets are full again: new
// buckets for them would be the same.
func (h *HandshakeLimit) pruneLocked(now time.Time) {
	for k, b := range h.sources {
		if b.fill(now, h.perSource, h.sourceBurst) >= h.sourceBurst && b.light.fill(now, lightRate, lightBurst) >= lightBurst {
			delete(h.sources, k)
		}
	}
	h.pruneAt = max(1024, 2*len(h.sources))
}

// fill adds what rate earned since b.at, up to burst, and returns the
// tokens.
func (b *bucket) fill(now time.Time, rate, burst float64) float64 {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
		b.at = now
	}
	return b.tokens
}

// SourcePrefix returns the source a remote address is counted under: the
// IPv4 address masked to v4Bits, the IPv6 address masked to /64 (one
// host is usually given a whole /64), as "ip/bits"; or the address's
// string if it holds no IP. The client API's budget (v4Bits 32 inside HandshakeV4Bits) and
// HandshakeLimit (HandshakeV4Bits) share it.
func SourcePrefix(addr net.Addr, v4Bits int) string {
	ip := remoteIP(addr)
	if ip == nil {
		return addr.String()
	}
	if v4 := ip.To4(); v4 != nil {
		if v4Bits >= 32 {
			return v4.String()
		}
		return v4.Mask(net.CIDRMask(v4Bits, 32)).String() + "/" + strconv.Itoa(v4Bits)
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// remoteIP returns addr's IP, or nil if it holds none.
func remoteIP(addr net.Addr) net.IP {
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.IP
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return net.ParseIP(host)
	}
	return nil
}
