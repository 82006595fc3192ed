package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// bareGossipTransport is a gossipTransport without listeners, for take,
// to which every address is a known node's.
func bareGossipTransport() *gossipTransport {
	return &gossipTransport{log: slog.New(slog.DiscardHandler), limit: loglimit.New(),
		known:          func(net.IP) bool { return true },
		outsiderTokens: gossipOutsiderBurst, outsiderAt: time.Now(), now: time.Now,
		closing: make(chan struct{}), open: map[*boundedConn]struct{}{}, perIP: map[string]int{}}
}

// addrConn is a net.Conn from a given address that does nothing.
type addrConn struct {
	net.Conn
	from *net.TCPAddr
}

func (c addrConn) RemoteAddr() net.Addr               { return c.from }
func (c addrConn) SetReadDeadline(time.Time) error    { return nil }
func (c addrConn) Close() error                       { return nil }
func fromIP(ip string) addrConn                       { return addrConn{from: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}} }
func (c addrConn) Read([]byte) (int, error)           { return 0, io.EOF }
func (c addrConn) SetDeadline(time.Time) error        { return nil }
func (c addrConn) SetWriteDeadline(t time.Time) error { return nil }
func (c addrConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c addrConn) LocalAddr() net.Addr                { return c.from }

// Open streams are limited per source address and in all. Past a limit
// a new stream takes the slot of the oldest one still reading its first
// message (of its own address, at the per-address limit), which is
// closed; one that has read its encrypted first message whole keeps its
// slot, and when every candidate has, the new stream is refused. A
// closed stream frees its slot at once, and only once.
func TestGossipStreamLimits(t *testing.T) {
	gt := bareGossipTransport()
	take := func(ip string) *boundedConn {
		t.Helper()
		c := gt.take(fromIP(ip))
		if c == nil {
			t.Fatalf("stream %d (from %s) refused", len(gt.open)+1, ip)
		}
		return c
	}
	var a []*boundedConn // from 10.0.0.1, oldest first
	for range gossipMaxStreamsPerIP {
		a = append(a, take("10.0.0.1"))
	}
	// At the per-address limit: the address's oldest makes room.
	a = append(a, take("10.0.0.1"))
	if !a[0].evicted.Load() || len(gt.open) != gossipMaxStreamsPerIP || gt.perIP["10.0.0.1"] != gossipMaxStreamsPerIP {
		t.Fatalf("past the per-address limit: oldest evicted %v, open %d, from 10.0.0.1 %d; want true, %d, %d",
			a[0].evicted.Load(), len(gt.open), gt.perIP["10.0.0.1"], gossipMaxStreamsPerIP, gossipMaxStreamsPerIP)
	}
	a[0].Close() // memberlist closes it: no second release
	if len(gt.open) != gossipMaxStreamsPerIP {
		t.Fatalf("closing an evicted stream freed another slot: open %d", len(gt.open))
	}
	a = a[1:]
	// One that has read its first message whole is passed over.
	a[0].protected.Store(true)
	a = append(a, take("10.0.0.1"))
	if a[0].evicted.Load() || !a[1].evicted.Load() {
		t.Fatalf("evicted: protected %v, next oldest %v; want false, true", a[0].evicted.Load(), a[1].evicted.Load())
	}
	a = append(a[:1], a[2:]...)

	// Other addresses fill the global limit; past it the oldest of all
	// that is not protected (a[1]) makes room, whatever its address.
	var b []*boundedConn
	for ip := 2; len(gt.open) < gossipMaxStreams; ip++ {
		for range min(gossipMaxStreamsPerIP, gossipMaxStreams-len(gt.open)) {
			b = append(b, take("10.0.0."+strconv.Itoa(ip)))
		}
	}
	n := take("10.0.1.1")
	if !a[1].evicted.Load() || len(gt.open) != gossipMaxStreams {
		t.Fatalf("past the global limit: oldest unprotected evicted %v, open %d; want true, %d", a[1].evicted.Load(), len(gt.open), gossipMaxStreams)
	}
	for _, c := range b {
		if c.evicted.Load() {
			t.Fatal("a newer stream was evicted before the oldest")
		}
	}

	// When every candidate is protected, the new stream is refused.
	for c := range gt.open {
		c.protected.Store(true)
	}
	refused := gt.refused.Load()
	if gt.take(fromIP("10.0.0.1")) != nil || gt.take(fromIP("10.0.2.1")) != nil {
		t.Fatal("a stream admitted with every open one protected")
	}
	if got := gt.refused.Load() - refused; got != 2 {
		t.Fatalf("refused %d; want 2", got)
	}
	if got := gt.evicted.Load(); got != 3 {
		t.Fatalf("evicted = %d; want 3", got)
	}
	for c := range gt.open {
		c.Close()
	}
	n.Close()
	if len(gt.open) != 0 || len(gt.perIP) != 0 {
		t.Fatalf("all closed, yet open = %d, per address %v", len(gt.open), gt.perIP)
	}
}

// pipeStream returns an admitted stream from 10.0.0.1 and the other end
// of it.
func pipeStream(t *testing.T, gt *gossipTransport) (*boundedConn, net.Conn) {
	t.Helper()
	bc, b := pipeStreamFrom(gt, "10.0.0.1")
	if bc == nil {
		t.Fatal("stream refused")
	}
	t.Cleanup(func() { bc.Close(); b.Close() })
	_ = bc.SetDeadline(time.Now().Add(10 * time.Second)) // as memberlist does
	return bc, b
}

// pipeStreamFrom offers gt a stream from ip and returns it, nil if
// refused, and the other end of it.
func pipeStreamFrom(gt *gossipTransport, ip string) (*boundedConn, net.Conn) {
	a, b := net.Pipe()
	bc := gt.take(pipeFrom{a, &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}})
	if bc == nil {
		b.Close()
	}
	return bc, b
}

// pipeFrom is one end of a net.Pipe that says it comes from from.
type pipeFrom struct {
	net.Conn
	from *net.TCPAddr
}

func (c pipeFrom) RemoteAddr() net.Addr { return c.from }

// send writes p to w in the background; at the end of the test w is
// closed, which ends the write.
func send(t *testing.T, w net.Conn, p []byte) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = w.Write(p) }()
	t.Cleanup(func() { w.Close(); wg.Wait() })
}

// A stream reads up to gossipStreamMaxBytes and no further; an encrypted
// one that declares more fails as soon as its length has been read, one
// within the limit reads on, and is protected once read to its end.
func TestGossipStreamByteLimit(t *testing.T) {
	gt := bareGossipTransport()

	bc, peer := pipeStream(t, gt)
	long := append([]byte{byte(6)}, make([]byte, gossipStreamMaxBytes+100)...) // a plain push/pull
	send(t, peer, long)
	got, err := io.ReadAll(bc)
	if err == nil || !strings.Contains(err.Error(), "gossip_stream_max_bytes") || len(got) != gossipStreamMaxBytes {
		t.Fatalf("read %d bytes, err %v; want %d and the limit's error", len(got), err, gossipStreamMaxBytes)
	}
	bc.Close()

	for _, declared := range []uint32{gossipStreamMaxBytes - 4, 20971420} {
		bc, peer = pipeStream(t, gt)
		hdr := []byte{gossipEncryptMsg, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], declared)
		send(t, peer, append(hdr, make([]byte, 100)...))
		buf := make([]byte, 4096)
		n, err := io.ReadAtLeast(bc, buf, 5)
		if err == nil || !strings.Contains(err.Error(), "gossip_stream_max_bytes") || n != 0 {
			t.Fatalf("declared %d: read %d bytes, err %v; want a refusal naming the limit", declared, n, err)
		}
		bc.Close()
	}

	bc, peer = pipeStream(t, gt)
	hdr := []byte{gossipEncryptMsg, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], gossipStreamMaxBytes-5)
	body := append(hdr, bytes.Repeat([]byte{1}, gossipStreamMaxBytes-5)...)
	send(t, peer, body)
	got, err = io.ReadAll(io.LimitReader(bc, int64(len(body)-1)))
	if err != nil || len(got) != len(body)-1 || bc.protected.Load() {
		t.Fatalf("a stream at the limit: read %d of %d bytes, err %v, protected %v; want all but one, no error, not protected",
			len(got), len(body), err, bc.protected.Load())
	}
	// Read to the end of its encrypted message, it is protected from
	// being closed to make room (gossip-slots).
	if _, err := io.ReadFull(bc, make([]byte, 1)); err != nil || !bc.protected.Load() {
		t.Fatalf("the last byte of the message: err %v, protected %v; want nil, true", err, bc.protected.Load())
	}
	if got := gt.tooLong.Load(); got != 3 {
		t.Fatalf("tooLong = %d; want 3", got)
	}
}

// A stream from an address that is no known node's reads at most
// gossipOutsiderStreamMaxBytes, and all such streams together at most
// gossipOutsiderBurst plus gossipOutsiderBytesPerSecond a second: past
// that, their reads fail and new ones are refused at once, naming the
// limit, while a known node's streams read on. The budget refills with
// time.
func TestGossipOutsiderStreamBounds(t *testing.T) {
	gt := bareGossipTransport()
	gt.known = func(ip net.IP) bool { return ip.Equal(net.IPv4(10, 0, 0, 1)) }
	var clock atomic.Int64 // seconds after start; the budget refills only when the test moves it
	start := time.Now()
	gt.outsiderAt = start
	gt.now = func() time.Time { return start.Add(time.Duration(clock.Load()) * time.Second) }

	// Declared over the outsiders' cap: refused at its length.
	bc, peer := pipeStreamFrom(gt, "10.0.9.1")
	hdr := []byte{gossipEncryptMsg, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], gossipOutsiderStreamMaxBytes)
	send(t, peer, append(hdr, 1))
	if n, err := io.ReadAtLeast(bc, make([]byte, 64), 5); err == nil || !strings.Contains(err.Error(), "gossip_outsider_stream_max_bytes") || n != 0 {
		t.Fatalf("an outsider's stream declaring %d: read %d bytes, err %v; want a refusal naming the limit", gossipOutsiderStreamMaxBytes, n, err)
	}
	bc.Close()
	// A known node's declaring as much reads on.
	bc, peer = pipeStream(t, gt)
	send(t, peer, append(hdr, make([]byte, 100)...))
	if _, err := io.ReadFull(bc, make([]byte, 105)); err != nil {
		t.Fatalf("a known node's stream declaring %d: %v", gossipOutsiderStreamMaxBytes, err)
	}

	// Outsiders' plain streams of 60,000 bytes, read whole, until the
	// budget is spent, in the middle of one.
	const each = 60_000
	before := gt.outsiderRead.Load() // the refused stream's first bytes
	var read int64
	var err error
	for i := 0; err == nil; i++ {
		if i > 2*gossipOutsiderBurst/each {
			t.Fatalf("%d outsiders' streams read, %d bytes in all: no budget", i, read)
		}
		bc, peer = pipeStreamFrom(gt, fmt.Sprintf("10.0.%d.1", 10+i))
		if bc == nil {
			t.Fatalf("outsider's stream %d refused with %d bytes read", i, read)
		}
		send(t, peer, append([]byte{6}, make([]byte, each-1)...))
		var n int
		n, err = io.ReadFull(bc, make([]byte, each))
		read += int64(n)
		bc.Close()
	}
	if !errors.Is(err, errGossipOutsiderBudget) || before+read != gossipOutsiderBurst {
		t.Fatalf("outsiders read %d+%d bytes, then %v; want %d in all, then the budget's error", before, read, err, gossipOutsiderBurst)
	}
	if got := gt.outsiderRead.Load(); got != gossipOutsiderBurst {
		t.Fatalf("outsiderRead = %d; want %d", got, gossipOutsiderBurst)
	}
	// New outsiders are refused at once; a known node's stream is not.
	if bc, _ := pipeStreamFrom(gt, "10.0.99.1"); bc != nil {
		t.Fatal("an outsider's stream admitted with the budget spent")
	}
	if got := gt.overBudget.Load(); got != 2 {
		t.Fatalf("overBudget = %d; want 2 (a read, a new stream)", got)
	}
	bc, peer = pipeStream(t, gt)
	send(t, peer, append([]byte{6}, make([]byte, 100_000)...))
	if got, err := io.ReadAll(io.LimitReader(bc, 100_001)); err != nil || len(got) != 100_001 {
		t.Fatalf("a known node's stream with outsiders' budget spent: read %d, err %v", len(got), err)
	}

	// A second later, the rate's worth may be read again.
	clock.Add(1)
	if got := gt.outsiderBudget(); got != gossipOutsiderBytesPerSecond {
		t.Fatalf("a second later the budget holds %d bytes; want %d", got, gossipOutsiderBytesPerSecond)
	}
	if bc, _ := pipeStreamFrom(gt, "10.0.99.1"); bc == nil {
		t.Fatal("an outsider's stream refused with the budget refilled")
	} else {
		bc.Close()
	}
}

// A stream silent after it is accepted times out at firstBy, or at
// memberlist's own deadline when that comes first; once it has sent
// something, memberlist's deadline is the one.
func TestGossipStreamFirstBytes(t *testing.T) {
	gt := bareGossipTransport()

	bc, _ := pipeStream(t, gt)
	bc.mu.Lock()
	bc.firstBy = time.Now().Add(50 * time.Millisecond)
	bc.mu.Unlock()
	_ = bc.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err := bc.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "gossip_first_bytes_timeout") || time.Since(start) > 5*time.Second {
		t.Fatalf("silent stream: err %v after %v; want the first-bytes timeout", err, time.Since(start))
	}

	bc, _ = pipeStream(t, gt) // firstBy is 2 s away
	_ = bc.SetDeadline(time.Now().Add(50 * time.Millisecond))
	start = time.Now()
	if _, err := bc.Read(make([]byte, 10)); !errors.As(err, &ne) || !ne.Timeout() || time.Since(start) > time.Second {
		t.Fatalf("memberlist's shorter deadline: err %v after %v", err, time.Since(start))
	}

	bc, peer := pipeStream(t, gt)
	bc.mu.Lock()
	bc.firstBy = time.Now().Add(50 * time.Millisecond)
	bc.mu.Unlock()
	_ = bc.SetDeadline(time.Now().Add(10 * time.Second))
	send(t, peer, []byte{1})
	if _, err := bc.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// Past firstBy, reads wait on memberlist's deadline: a byte sent
	// after it still arrives.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-time.After(time.Until(bc.firstBy) + 50*time.Millisecond) // past firstBy, by design
		_, _ = peer.Write([]byte{2})
	}()
	defer wg.Wait()
	if _, err := bc.Read(make([]byte, 1)); err != nil {
		t.Fatalf("read after the first bytes, past firstBy: %v", err)
	}
}

// dropUDPTo is a transport that loses every packet to one address, so
// that probes of it fall back to TCP streams.
type dropUDPTo struct {
	*memberlist.NetTransport
	to     string
	healed atomic.Bool // packets to the address go through again
}

func (d *dropUDPTo) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if a.Addr == d.to && !d.healed.Load() {
		return time.Now(), nil
	}
	return d.NetTransport.WriteToAddress(b, a)
}

func (d *dropUDPTo) WriteTo(b []byte, addr string) (time.Time, error) {
	return d.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// memberlist's TCP fallback probes (streams) reach a node behind
// gossipTransport: with every UDP packet to it lost, the other member
// still finds it alive over TCP.
func TestGossipTransportTCPFallbackProbe(t *testing.T) {
	quiet := log.New(io.Discard, "", 0)
	a, gt, aAddr := wrappedMember(t, quiet, func(*memberlist.Config) {})
	defer a.Shutdown()

	var blog syncBuffer
	cb := memberlist.DefaultLocalConfig()
	cb.Name, cb.BindAddr, cb.BindPort = "b", "127.0.0.1", 0
	bnt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	cb.BindPort, cb.AdvertisePort = bnt.GetAutoBindPort(), bnt.GetAutoBindPort()
	cb.Transport = &dropUDPTo{NetTransport: bnt, to: aAddr}
	cb.Logger = log.New(&blog, "", 0)
	b, err := memberlist.Create(cb)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	if _, err := b.Join([]string{aAddr}); err != nil { // a push/pull stream
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(blog.String(), "Was able to connect to a over TCP but UDP probes failed") {
		if time.Now().After(deadline) {
			t.Fatalf("b never probed a over TCP; its log:\n%s", blog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, m := range b.Members() {
		if m.Name == "a" && m.State != memberlist.StateAlive {
			t.Fatalf("b sees a %v; want alive", m.State)
		}
	}
	if gt.refused.Load()+gt.tooLong.Load() != 0 {
		t.Fatalf("legitimate streams refused: %d at once, %d too long", gt.refused.Load(), gt.tooLong.Load())
	}
}

// Scenario (an outsider holding the gossip port's stream slots): more
// streams than the node's bound, from four loopback addresses that are no
// member's, each declaring an encrypted message of nearly the most an
// outsider may send (gossipOutsiderStreamMaxBytes) and
// trickling it a byte at a time, and each re-opened as soon as the node
// closes it: within every limit memberlist has (TCPTimeout, 10 s on a
// LAN) and the wrapper's. Meanwhile a new member joins a keyed cluster
// (a push/pull) and, its UDP to the node lost, probes it over TCP, and a
// second one joins: each gets through in a few seconds. When a
// stream past the bound was refused, the tricklers kept all of them out
// until their 10 s ran out, and then took the slots again.
func TestGossipTricklersCannotHoldStreamSlots(t *testing.T) {
	quiet := log.New(io.Discard, "", 0)
	key := bytes.Repeat([]byte{7}, 32)
	a, gt, aAddr := wrappedMember(t, quiet, func(c *memberlist.Config) {
		c.TCPTimeout = memberlist.DefaultLANConfig().TCPTimeout // a trickler holds a stream this long
		c.SecretKey = key
	})
	defer a.Shutdown()

	// The attack: 24 streams from 127.0.0.2-5 (6 each), until stopped.
	ctx, stop := context.WithCancel(context.Background())
	var attackers sync.WaitGroup
	var dialed atomic.Int64
	defer func() {
		stop()
		waitGroupWithin(t, &attackers, 10*time.Second, "the attackers to stop")
	}()
	const streams = gossipMaxStreams + 8
	for i := range streams {
		attackers.Add(1)
		go func() {
			defer attackers.Done()
			from := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%4))}
			for ctx.Err() == nil {
				trickle(ctx, from, aAddr, &dialed)
				select { // re-open it, a moment later
				case <-time.After(20 * time.Millisecond):
				case <-ctx.Done():
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, func() error {
		if n, open := dialed.Load(), gt.openStreams(); n < streams || open < gossipMaxStreams {
			return fmt.Errorf("the attackers opened %d streams; the node holds %d of them, want %d", n, open, gossipMaxStreams)
		}
		return nil
	})
	attacked := time.Now()

	// A member joins (a push/pull), whose UDP packets to a are lost.
	var blog syncBuffer
	b, bUDP := newKeyedMember(t, "b", key, log.New(&blog, "", 0), aAddr)
	defer b.Shutdown()
	joinWithin(t, b, aAddr, 5*time.Second)
	t.Logf("b joined %v after the attackers held every slot", time.Since(attacked).Round(time.Millisecond))
	// b probes a over TCP (a stream again) and finds it alive; before a
	// third member could answer for a (an indirect probe), which would
	// spare the TCP one.
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(blog.String(), "Was able to connect to a over TCP but UDP probes failed") {
			return fmt.Errorf("b has not probed a over TCP; its log:\n%s", blog.String())
		}
		return nil
	})
	t.Logf("b probed a over TCP %v after the attackers held every slot", time.Since(attacked).Round(time.Millisecond))
	bUDP.healed.Store(true) // so that b's liveness does not hang on c on a busy machine
	// Another member joins (a push/pull).
	c, _ := newKeyedMember(t, "c", key, quiet, "")
	defer c.Shutdown()
	joinWithin(t, c, aAddr, 5*time.Second)
	waitFor(t, 10*time.Second, func() error {
		for _, m := range [...]*memberlist.Memberlist{a, b, c} {
			alive, states := 0, []string{}
			for _, n := range m.Members() {
				if n.State == memberlist.StateAlive {
					alive++
				}
				states = append(states, fmt.Sprintf("%s %v", n.Name, n.State))
			}
			if alive != 3 {
				return fmt.Errorf("%s sees %d of 3 members alive: %v", m.LocalNode().Name, alive, states)
			}
		}
		return nil
	})
	// The attack went on all along.
	if open := gt.openStreams(); gt.evicted.Load() == 0 || dialed.Load() <= streams {
		t.Fatalf("the attack stopped: %d streams opened, %d closed to make room, %d open", dialed.Load(), gt.evicted.Load(), open)
	}
	t.Logf("attack: %d streams opened, %d closed to make room for newer ones, %d refused; %d open at the end",
		dialed.Load(), gt.evicted.Load(), gt.refused.Load()-gt.evicted.Load(), gt.openStreams())
}

// trickle opens a stream to addr from from, sends the header of an
// encrypted message of nearly gossipOutsiderStreamMaxBytes and then one byte of it
// every 50 ms, until the node closes it or ctx ends.
func trickle(ctx context.Context, from *net.TCPAddr, addr string, dialed *atomic.Int64) {
	d := net.Dialer{LocalAddr: from}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return // ctx ended, or the node's backlog was full: try again
	}
	dialed.Add(1)
	closed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, conn); close(closed) }()
	defer func() { conn.Close(); <-closed }()
	hdr := []byte{gossipEncryptMsg, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], uint32(gossipOutsiderStreamMaxBytes-len(hdr)))
	if _, err := conn.Write(hdr); err != nil {
		return
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if _, err := conn.Write([]byte{1}); err != nil {
				return
			}
		case <-closed:
			return
		case <-ctx.Done():
			return
		}
	}
}

// wrappedMember starts memberlist member "a" on 127.0.0.1 behind
// gossipTransport (the bounds under test), with its config as tweak
// leaves it, and returns it, its transport and its address.
func wrappedMember(t *testing.T, logger *log.Logger, tweak func(*memberlist.Config)) (*memberlist.Memberlist, *gossipTransport, string) {
	t.Helper()
	port := 0
	gt, err := newGossipTransport("127.0.0.1", &port, isLoopback1, logger, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := memberlist.DefaultLocalConfig()
	c.Name, c.BindAddr, c.BindPort, c.AdvertisePort = "a", "127.0.0.1", port, port
	c.Transport, c.Logger = gt, logger
	tweak(c)
	m, err := memberlist.Create(c)
	if err != nil {
		gt.Shutdown()
		t.Fatal(err)
	}
	return m, gt, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// isLoopback1 knows 127.0.0.1, the members' address, and no other.
func isLoopback1(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) }

// newKeyedMember starts a memberlist member on 127.0.0.1 with key. With
// dropUDPToAddr set it loses every packet it sends there until the
// returned dropUDPTo is healed.
func newKeyedMember(t *testing.T, name string, key []byte, logger *log.Logger, dropUDPToAddr string) (*memberlist.Memberlist, *dropUDPTo) {
	t.Helper()
	quiet := log.New(io.Discard, "", 0)
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	cfg := memberlist.DefaultLocalConfig()
	cfg.Name, cfg.BindAddr = name, "127.0.0.1"
	cfg.BindPort, cfg.AdvertisePort = nt.GetAutoBindPort(), nt.GetAutoBindPort()
	cfg.SecretKey, cfg.Logger, cfg.Transport = key, logger, nt
	drop := &dropUDPTo{NetTransport: nt, to: dropUDPToAddr}
	if dropUDPToAddr != "" {
		cfg.Transport = drop
	}
	m, err := memberlist.Create(cfg)
	if err != nil {
		nt.Shutdown()
		t.Fatal(err)
	}
	return m, drop
}

// joinWithin has m join addr (a push/pull stream), trying again until it
// succeeds or within has passed.
func joinWithin(t *testing.T, m *memberlist.Memberlist, addr string, within time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	for tries := 1; ; tries++ {
		_, err := m.Join([]string{addr})
		if err == nil {
			t.Logf("%s joined %s in %v (%d tries)", m.LocalNode().Name, addr, time.Since(start).Round(time.Millisecond), tries)
			return
		}
		select {
		case <-retry.C:
		case <-deadline.C:
			t.Fatalf("%s could not join %s in %v (%d tries): %v", m.LocalNode().Name, addr, time.Since(start).Round(time.Millisecond), tries, err)
		}
	}
}

// waitFor calls f until it returns nil, and fails the test with its last
// error if that takes longer than timeout.
func waitFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("after %v: %v", timeout, err)
		}
	}
}

// waitGroupWithin waits for wg, and fails the test if that takes longer
// than timeout.
func waitGroupWithin(t *testing.T, wg *sync.WaitGroup, timeout time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("waiting for %s: still running after %v", what, timeout)
	}
}

// openStreams is how many inbound streams t holds open.
func (t *gossipTransport) openStreams() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}
