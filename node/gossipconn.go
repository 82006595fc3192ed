package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport"
)

// Bounds on the inbound TCP streams of the gossip port.
//
// memberlist (v0.6.0) reads a stream before it authenticates anything: an
// encrypted one declares its length in its first bytes and memberlist
// buffers up to 20 MiB of it (decryptRemoteState) before the decryption
// that would reject a sender without the key. It accepts any number of
// streams at once and gives each TCPTimeout (10 s). An outsider probe
// opened 50 streams declaring 20 MiB each and took a leader from 31 MB to
// 1.2 GB of memory in 16 s; it lost its leadership and gossip marked
// healthy members failed. gossipTransport bounds that at the source.
const (
	// gossipMaxStreams is how many inbound gossip streams may be open at
	// once. A stream is counted until memberlist closes it (it is done),
	// so this is concurrency, not a rate: a legitimate stream (a push/pull,
	// a join, a TCP fallback probe, a user message) lasts a round trip or
	// two. Even a 1,000-node cluster sends a node a few push/pulls a
	// second (memberlist scales their interval up with the cluster's
	// size) and TCP probes only when UDP fails. Each open stream may
	// cost up to 3 × its byte bound of memory (memberlist's buffer,
	// which doubles as it grows, old and new held while it copies, then
	// the output of the decryption that fails): 16 streams from known
	// nodes' addresses bound this at about 48 MiB (24 MiB from one
	// address), from others' at 3 MiB.
	//
	// At the bound a new stream is not refused: it takes the slot of the
	// oldest stream still reading its first message, which is closed
	// (gossipTransport.take). Legitimate streams are short, so the oldest
	// is the one most likely held open on purpose; refusing newcomers
	// instead let anyone who trickles bytes into 16 streams keep joins,
	// push/pulls and TCP probes out for memberlist's TCPTimeout (10 s)
	// at a time, again and again.
	gossipMaxStreams = 16
	// gossipMaxStreamsPerIP is how many of those may come from one source
	// address, so that one sender cannot take them all: at it, a new
	// stream from that address takes the slot of that address's own
	// oldest stream still reading its first message. Loopback clusters
	// (tests, a laptop) share 127.0.0.1: a 5-node one needs at most the
	// push/pulls and probes of 4 peers at the same instant, and a node
	// joining adds one; 8 leaves room for that.
	gossipMaxStreamsPerIP = 8
	// gossipStreamMaxBytes is the most a node reads from one inbound
	// stream; a read past it fails, and memberlist drops the stream.
	// The biggest legitimate stream is a push/pull, which carries one
	// entry per member: its name (a node ID, at most 128 bytes), address
	// (16), port, incarnation, state and protocol versions (~15), its
	// metadata (at most memberlist.MetaMaxSize = 512 bytes; leasenode's
	// JSON meta is ~150 bytes) and msgpack field names and headers (~60):
	// at most ~730 bytes a member, plus a header, encryption (~35 bytes)
	// and no user state (LocalState returns nil). 1 MiB holds ~1,400
	// members at the largest IDs and metadata and ~4,000 at typical
	// ones, before memberlist's compression; leasenode's clusters are a
	// handful of Raft voters. The bound on memory is then about
	// gossipMaxStreams × 3 MiB instead of 20 MiB (three times that while
	// it is read and decrypted) × any number of streams.
	gossipStreamMaxBytes = 1 << 20
	// gossipOutsiderStreamMaxBytes is the most a node reads of one inbound
	// stream from an address that is no known node's (knownSources: the
	// servers of the Raft configuration and the members gossip told of,
	// by IP). Such a stream is a node joining for the first time, whose
	// push/pull carries the members it knows (itself, ~300 bytes, unless
	// it was a member before), or an outsider's. 64 KiB holds ~90
	// members at the largest IDs and metadata and ~250 at typical ones.
	gossipOutsiderStreamMaxBytes = 64 << 10
	// gossipOutsiderBytesPerSecond is how much a node reads a second of
	// all the inbound streams from addresses that are no known node's,
	// together, with a burst of gossipOutsiderBurst. The stream caps bound
	// memory; this bounds CPU: memberlist reads an encrypted message whole
	// and only then fails to decrypt it, and streams of a valid encryption
	// version declaring 1 MiB each cost a node 2.5 times its sender's CPU
	// (a lock loop beside them went from 130-177 to 3-7 operations a
	// second; outsider review s39, G1). A first join reads a few KB.
	// While outsiders have spent the budget, a node joining from an
	// address no member knows waits for the flood to end (its join is
	// refused, and retried); members, and nodes of the configuration, are
	// not affected.
	gossipOutsiderBytesPerSecond = 256 << 10
	gossipOutsiderBurst          = 512 << 10
	// gossipFirstBytesTimeout is how long a stream may stay silent after it
	// is accepted. A member writes at once after it dials, so a silent
	// one holds a slot for nothing; memberlist's own deadline
	// (TCPTimeout, 10 s on a LAN) still applies when it is shorter, and
	// after the first bytes.
	gossipFirstBytesTimeout = 2 * time.Second
)

// errGossipHTTP is what the read of a stream that starts like an HTTP
// request returns, after the client was answered.
var errGossipHTTP = errors.New("an HTTP client on the gossip port (answered that this is not the client API)")

// errGossipOutsiderBudget is what a read of a stream from an address that
// is no known node's returns while such streams have spent their budget.
var errGossipOutsiderBudget = fmt.Errorf("gossip streams from addresses that are no known node's have used leasenode's budget of %d bytes a second (gossip_outsider_bytes_per_second): refused before authentication; a node joining from this address is let in once the flood ends (its join is retried), and a member whose connections come from another address than the one it advertises should advertise the one it dials from (--gossip-advertise)", gossipOutsiderBytesPerSecond)

// gossipEncryptMsg is memberlist's encryptMsg: the type byte of an
// encrypted stream, which a 4-byte big-endian length follows (net.go,
// decryptRemoteState). leasenode sets no memberlist label, so it is a
// stream's first byte.
const gossipEncryptMsg = 10

// gossipMaxEncryptVersion is the newest encryption version memberlist
// writes and reads (the byte after an encrypted message's length): a
// stream that names a later one is refused before its message is read,
// which memberlist reads whole, up to its declared length, before it
// looks at that byte. Streams declaring a megabyte with version 143 cost
// a node four times the CPU they cost their sender (outsider review
// s38).
const gossipMaxEncryptVersion = 1

// gossipMsgHeader is the bytes of an encrypted stream's type and length.
const gossipMsgHeader = 5

// gossipTransport is memberlist's NetTransport with bounded inbound
// streams (see the constants above): at most gossipMaxStreams open at
// once and gossipMaxStreamsPerIP from one address; each may stay silent
// gossipFirstBytesTimeout and read at most gossipStreamMaxBytes. Past a
// bound a new stream takes the slot of the oldest one still reading its
// first message, which is closed; only when every open stream (of the
// address, at the per-address bound) has read its first message whole
// is the new one closed instead. Packets (UDP) and outbound streams are
// NetTransport's own.
//
// Invariant (gossip-slots): a stream that trickles or stalls cannot keep
// a new one out; it keeps its slot only until gossipMaxStreams newer
// streams arrive (fewer from its own address). Legitimate streams are
// short (a push/pull or a fallback ping is done in milliseconds), so a
// sender holding every slot loses its oldest to each join, push/pull or
// probe, which then reads its message at once and is protected: in a
// keyed cluster a stream's first message is one encrypted message of a
// declared length, and the wrapper sees it read whole. It cannot see
// memberlist decrypt it, but memberlist closes a stream whose message
// does not decrypt as soon as it has read it, so a protected stream that
// stays open is, in practice, authenticated by the keyring (or a replay
// of a captured one; memberlist's deadline, TCPTimeout, still ends it).
// Without a key nothing is authenticated and no stream is protected.
// The oldest of all goes first, not the oldest of the address holding
// the most: addresses are cheap (loopback, an IPv6 /64, many hosts), and
// a sender with enough of them could make a busy member's address the
// one holding the most and so close its millisecond-old stream at once;
// oldest-first closes a stream only once gossipMaxStreams newer ones
// came, whatever their addresses. gossipMaxStreamsPerIP still keeps one
// address from holding them all.
//
// memberlist itself waits on nothing unbounded once it has a stream: its
// handleConn sets one deadline, TCPTimeout, for the whole stream (reads
// and writes; never extended), and our byte bound keeps a slow push/pull
// state within 1 MiB. So a member's stream that has read its message and
// then stalls writing the answer to a peer that does not read it holds
// its slot until TCPTimeout at most; the delegates memberlist calls
// (gossipDelegate) only copy what they are given and never block.
// Guarded by TestGossipTricklersCannotHoldStreamSlots and
// TestGossipStreamLimits.
type gossipTransport struct {
	*memberlist.NetTransport
	log       *slog.Logger
	limit     *loglimit.Limiter
	wrongPort *transport.WrongPort // answers HTTP clients
	// known reports whether an address is a known node's (knownSources);
	// nil: none is.
	known func(net.IP) bool

	outsiderMu     sync.Mutex
	outsiderTokens float64          // bytes outsiders' streams may still read
	outsiderAt     time.Time        // when outsiderTokens was right
	now            func() time.Time // of the outsiders' budget

	streams   chan net.Conn // what memberlist reads (StreamCh)
	closing   chan struct{} // closed when Shutdown starts
	innerDone chan struct{} // closed when NetTransport has shut down
	shutOnce  sync.Once
	wg        sync.WaitGroup

	mu    sync.Mutex
	open  map[*boundedConn]struct{} // streams admitted and not yet closed
	perIP map[string]int            // of open, by source address
	seq   uint64                    // of the last stream admitted

	refused atomic.Int64 // streams closed at a limit on open streams: new ones, and older ones closed to make room
	evicted atomic.Int64 // of refused, the older ones closed to make room for a new one
	tooLong atomic.Int64 // streams that read, or declared, more than gossipStreamMaxBytes
	badVsn  atomic.Int64 // encrypted streams naming an encryption version memberlist has not
	// of outsiders' streams: those closed for their spent budget, and the
	// bytes read
	overBudget   atomic.Int64
	outsiderRead atomic.Int64
}

var _ memberlist.NodeAwareTransport = (*gossipTransport)(nil)

// newGossipTransport listens on host:port (port 0: any free port, which
// *port is set to) as memberlist's own transport would. known tells the
// addresses of known nodes (nil: none).
func newGossipTransport(host string, port *int, known func(net.IP) bool, stdlog *log.Logger, l *slog.Logger) (*gossipTransport, error) {
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: *port, Logger: stdlog}
	tries := 1
	if *port == 0 {
		tries = 10 // the TCP port it got may be taken for UDP: try another
	}
	var inner *memberlist.NetTransport
	var err error
	for range tries {
		if inner, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if *port == 0 {
		*port = inner.GetAutoBindPort()
	}
	t := &gossipTransport{NetTransport: inner, log: l, limit: loglimit.New(), known: known,
		outsiderTokens: gossipOutsiderBurst, outsiderAt: time.Now(), now: time.Now,
		wrongPort: transport.NewWrongPort(PortGossip, "a leasenode gossip port (memberlist)"),
		streams:   make(chan net.Conn), closing: make(chan struct{}), innerDone: make(chan struct{}),
		open: map[*boundedConn]struct{}{}, perIP: map[string]int{}}
	t.wg.Add(1)
	go t.admit()
	return t, nil
}

// StreamCh implements memberlist.Transport: the admitted streams.
func (t *gossipTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown implements memberlist.Transport. NetTransport's listener may
// be handing over a stream: admit keeps taking them (and closing them)
// until it has stopped.
func (t *gossipTransport) Shutdown() error {
	var err error
	t.shutOnce.Do(func() {
		close(t.closing)
		err = t.NetTransport.Shutdown()
		close(t.innerDone)
		t.wg.Wait()
	})
	return err
}

// admit takes NetTransport's accepted streams and hands on those within
// the limits.
func (t *gossipTransport) admit() {
	defer t.wg.Done()
	for {
		select {
		case c := <-t.NetTransport.StreamCh():
			bc := t.take(c)
			if bc == nil {
				continue
			}
			select {
			case t.streams <- bc:
			case <-t.closing:
				bc.Close()
			}
		case <-t.innerDone:
			return
		}
	}
}

// take admits c and returns it bounded, or closes it and returns nil.
// At a bound it closes the oldest stream still reading its first message
// (of c's address, at the per-address bound) to make room for c; only if
// there is none is c closed.
func (t *gossipTransport) take(c net.Conn) *boundedConn {
	ip, addr := "?", net.IP(nil)
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, addr = a.IP.String(), a.IP
	}
	outsider := t.known == nil || !t.known(addr)
	select {
	case <-t.closing:
		c.Close()
		return nil
	default:
	}
	if outsider && t.outsiderBudget() <= 0 {
		c.Close()
		t.overBudget.Add(1)
		t.warn("refused a gossip stream from an address that is no known node's: such streams have used their budget",
			"limit", "gossip_outsider_bytes_per_second", "max", gossipOutsiderBytesPerSecond, "from", ip)
		return nil
	}
	now := time.Now()
	t.mu.Lock()
	var over string
	var max int
	var victim *boundedConn
	switch {
	case t.perIP[ip] >= gossipMaxStreamsPerIP:
		// Within the address's own streams: the total stays the same.
		over, max = "gossip_max_streams_per_ip", gossipMaxStreamsPerIP
		victim = t.oldestLocked(ip)
	case len(t.open) >= gossipMaxStreams:
		over, max = "gossip_max_streams", gossipMaxStreams
		victim = t.oldestLocked("")
	}
	if over != "" && victim == nil {
		t.mu.Unlock()
		c.Close()
		t.refused.Add(1)
		t.warn("refused a gossip stream: too many open at once, each past its first message", "limit", over, "max", max, "from", ip)
		return nil
	}
	if victim != nil {
		t.dropLocked(victim)
		victim.evicted.Store(true)
	}
	t.seq++
	bc := &boundedConn{Conn: c, t: t, ip: ip, seq: t.seq, since: now, outsider: outsider, max: gossipStreamMaxBytes,
		firstBy: now.Add(gossipFirstBytesTimeout)}
	if outsider {
		bc.max = gossipOutsiderStreamMaxBytes
	}
	bc.left = bc.max
	t.open[bc] = struct{}{}
	t.perIP[ip]++
	t.mu.Unlock()
	_ = c.SetReadDeadline(bc.firstBy)
	if victim != nil {
		// memberlist's read of it fails now, and it closes it.
		victim.Conn.Close()
		t.refused.Add(1)
		t.evicted.Add(1)
		t.warn("closed the oldest gossip stream still reading its first message, to make room for a new one: too many open at once",
			"limit", over, "max", max, "closed_from", victim.ip, "closed_after", now.Sub(victim.since).Round(time.Millisecond), "from", ip)
	}
	return bc
}

// oldestLocked returns the open stream from ip (any address if ip is "")
// admitted first that has not read its first message whole, or nil.
// Called with t.mu held.
func (t *gossipTransport) oldestLocked(ip string) *boundedConn {
	var v *boundedConn
	for c := range t.open {
		if (ip == "" || c.ip == ip) && !c.protected.Load() && (v == nil || c.seq < v.seq) {
			v = c
		}
	}
	return v
}

// dropLocked frees c's slot, once. Called with t.mu held.
func (t *gossipTransport) dropLocked(c *boundedConn) {
	if _, ok := t.open[c]; !ok {
		return
	}
	delete(t.open, c)
	if t.perIP[c.ip]--; t.perIP[c.ip] <= 0 {
		delete(t.perIP, c.ip)
	}
}

// outsiderBudget returns the bytes outsiders' streams may read now.
func (t *gossipTransport) outsiderBudget() int64 {
	t.outsiderMu.Lock()
	defer t.outsiderMu.Unlock()
	if now := t.now(); now.After(t.outsiderAt) {
		t.outsiderTokens = min(gossipOutsiderBurst, t.outsiderTokens+now.Sub(t.outsiderAt).Seconds()*gossipOutsiderBytesPerSecond)
		t.outsiderAt = now
	}
	return int64(t.outsiderTokens)
}

// spendOutsider takes n bytes read from an outsider's stream from the
// budget. Reads run at once, each sized to what the budget held when it
// began, so it may go below zero, by at most a read of each open stream.
func (t *gossipTransport) spendOutsider(n int) {
	t.outsiderRead.Add(int64(n))
	t.outsiderMu.Lock()
	t.outsiderTokens -= float64(n)
	t.outsiderMu.Unlock()
}

func (t *gossipTransport) release(c *boundedConn) {
	t.mu.Lock()
	t.dropLocked(c)
	t.mu.Unlock()
}

// warn logs msg at most once per loglimit.Every, with the count of those
// not logged.
func (t *gossipTransport) warn(msg string, args ...any) {
	ok, skipped := t.limit.Allow(msg)
	if !ok {
		return
	}
	if skipped > 0 {
		args = append(args, loglimit.Skipped, skipped)
	}
	t.log.Warn(msg, args...)
}

// boundedConn is one admitted inbound stream: it reads at most
// gossipStreamMaxBytes (gossipOutsiderStreamMaxBytes from an address that
// is no known node's, within the budget of all such streams), its first
// bytes by firstBy, and frees its slot when closed. An encrypted stream
// that declares more than it may read fails as soon as its length is
// read, rather than after memberlist has buffered a megabyte of it; one
// that has been read to the end of the encrypted message it declared is
// protected from being closed to make room for a newer one (see
// gossipTransport).
type boundedConn struct {
	net.Conn
	t       *gossipTransport
	ip      string
	seq     uint64    // admission order
	since   time.Time // admitted
	firstBy time.Time
	// outsider: its address is no known node's; max is the most it reads
	outsider bool
	max      int64

	protected atomic.Bool // its first message, encrypted, has been read whole
	evicted   atomic.Bool // closed to make room for a newer stream

	mu       sync.Mutex
	left     int64     // bytes it may still read
	started  bool      // the first bytes have come
	deadline time.Time // the read deadline memberlist set
	hdr      [6]byte   // the stream's first bytes: type, length, and an encrypted message's version
	hdrN     int
	msgEnd   int64 // bytes to the end of its encrypted first message; 0 if not known
}

// Read reads at most the bytes left; past them it fails (and memberlist
// drops the stream).
func (c *boundedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	left := c.left
	c.mu.Unlock()
	if left <= 0 {
		c.t.tooLong.Add(1)
		c.t.warn("refused a gossip stream: too long", "limit", c.limitName(), "max", c.max, "from", c.ip)
		return 0, fmt.Errorf("gossip stream longer than leasenode's limit of %d bytes a stream (%s): refused before authentication", c.max, c.limitName())
	}
	if c.outsider {
		budget := c.t.outsiderBudget()
		if budget <= 0 {
			c.t.overBudget.Add(1)
			c.t.warn("closed a gossip stream from an address that is no known node's: such streams have used their budget",
				"limit", "gossip_outsider_bytes_per_second", "max", gossipOutsiderBytesPerSecond, "from", c.ip)
			return 0, errGossipOutsiderBudget
		}
		left = min(left, budget)
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	if c.outsider && n > 0 {
		c.t.spendOutsider(n)
	}
	c.mu.Lock()
	c.left -= int64(n)
	var declared int64 = -1
	if c.hdrN == 0 && n > 0 && transport.LooksHTTP(p[0]) {
		// A client pointed at the gossip port instead of the API: tell
		// it so (no memberlist message type is a letter).
		c.mu.Unlock()
		c.t.wrongPort.Answer(c.Conn, p[0], c.t.closing)
		return 0, errGossipHTTP
	}
	vsn := -1
	if was := c.hdrN; was < len(c.hdr) {
		c.hdrN += copy(c.hdr[c.hdrN:], p[:n])
		if was < gossipMsgHeader && c.hdrN >= gossipMsgHeader && c.hdr[0] == gossipEncryptMsg {
			declared = int64(binary.BigEndian.Uint32(c.hdr[1:]))
			c.msgEnd = gossipMsgHeader + declared
		}
		if c.hdrN == len(c.hdr) && c.hdr[0] == gossipEncryptMsg {
			vsn = int(c.hdr[gossipMsgHeader])
		}
	}
	if c.msgEnd > 0 && c.msgEnd <= c.max && c.max-c.left >= c.msgEnd {
		c.protected.Store(true)
	}
	if n > 0 && !c.started {
		// Past the first bytes: memberlist's own deadline from now on.
		c.started = true
		_ = c.Conn.SetReadDeadline(c.deadline)
	}
	started := c.started
	c.mu.Unlock()
	if vsn > gossipMaxEncryptVersion {
		c.t.badVsn.Add(1)
		c.t.warn("refused a gossip stream: unknown encryption version", "version", vsn, "from", c.ip)
		return 0, fmt.Errorf("gossip stream's encrypted message names encryption version %d, which memberlist does not know (at most %d): refused before reading it", vsn, gossipMaxEncryptVersion)
	}
	if declared > c.max-gossipMsgHeader {
		c.t.tooLong.Add(1)
		c.t.warn("refused a gossip stream: declares too long a message", "limit", c.limitName(), "max", c.max, "declared", declared, "from", c.ip)
		return 0, fmt.Errorf("gossip stream declares an encrypted message of %d bytes, over leasenode's limit of %d bytes a stream (%s): refused before authentication", declared, c.max, c.limitName())
	}
	var ne net.Error
	switch {
	case err == nil:
	case c.evicted.Load():
		err = fmt.Errorf("gossip stream closed to make room for a newer one: too many open at once (limits gossip_max_streams %d, gossip_max_streams_per_ip %d): %w", gossipMaxStreams, gossipMaxStreamsPerIP, err)
	case !started && errors.As(err, &ne) && ne.Timeout():
		err = fmt.Errorf("gossip stream sent nothing in leasenode's %v (limit gossip_first_bytes_timeout): %w", gossipFirstBytesTimeout, err)
	}
	return n, err
}

// limitName names the limit of c's length.
func (c *boundedConn) limitName() string {
	if c.outsider {
		return "gossip_outsider_stream_max_bytes"
	}
	return "gossip_stream_max_bytes"
}

// SetDeadline implements net.Conn; before the first bytes the read
// deadline stays no later than firstBy.
func (c *boundedConn) SetDeadline(d time.Time) error {
	if err := c.Conn.SetWriteDeadline(d); err != nil {
		return err
	}
	return c.SetReadDeadline(d)
}

// SetReadDeadline implements net.Conn, as SetDeadline.
func (c *boundedConn) SetReadDeadline(d time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = d
	if !c.started && (d.IsZero() || d.After(c.firstBy)) {
		d = c.firstBy
	}
	return c.Conn.SetReadDeadline(d)
}

// Close implements net.Conn and frees the stream's slot (if it was not
// freed already, to make room).
func (c *boundedConn) Close() error {
	c.t.release(c)
	return c.Conn.Close()
}
