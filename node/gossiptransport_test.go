package node

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// bareGossipTransport is a gossipTransport without listeners, for take.
func bareGossipTransport() *gossipTransport {
	return &gossipTransport{log: slog.New(slog.DiscardHandler), limit: loglimit.New(),
		closing: make(chan struct{}), perIP: map[string]int{}}
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

// Open streams are limited per source address and in all; a closed one
// frees its slot at once.
func TestGossipStreamLimits(t *testing.T) {
	gt := bareGossipTransport()
	var held []*boundedConn
	for i := range gossipMaxStreamsPerIP {
		c := gt.take(fromIP("10.0.0.1"))
		if c == nil {
			t.Fatalf("stream %d from 10.0.0.1 refused under the per-address limit", i)
		}
		held = append(held, c)
	}
	if gt.take(fromIP("10.0.0.1")) != nil {
		t.Fatalf("stream %d from one address admitted; the limit is %d", gossipMaxStreamsPerIP+1, gossipMaxStreamsPerIP)
	}
	held[0].Close()
	held[0].Close() // twice frees once
	if held[0] = gt.take(fromIP("10.0.0.1")); held[0] == nil {
		t.Fatal("a closed stream did not free its slot")
	}
	for ip := 2; len(held) < gossipMaxStreams; ip++ {
		for range min(gossipMaxStreamsPerIP, gossipMaxStreams-len(held)) {
			c := gt.take(fromIP("10.0.0." + strconv.Itoa(ip)))
			if c == nil {
				t.Fatalf("stream %d refused under the global limit", len(held)+1)
			}
			held = append(held, c)
		}
	}
	if gt.take(fromIP("10.0.1.1")) != nil {
		t.Fatalf("stream %d admitted; the global limit is %d", gossipMaxStreams+1, gossipMaxStreams)
	}
	if got := gt.refused.Load(); got != 2 {
		t.Fatalf("refused = %d; want 2", got)
	}
	for _, c := range held {
		c.Close()
	}
	if gt.open != 0 || len(gt.perIP) != 0 {
		t.Fatalf("all closed, yet open = %d, per address %v", gt.open, gt.perIP)
	}
}

// pipeStream returns an admitted stream and the other end of it.
func pipeStream(t *testing.T, gt *gossipTransport) (*boundedConn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	bc := gt.take(a)
	if bc == nil {
		t.Fatal("stream refused")
	}
	_ = bc.SetDeadline(time.Now().Add(10 * time.Second)) // as memberlist does
	return bc, b
}

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
// within the limit reads on.
func TestGossipStreamByteLimit(t *testing.T) {
	gt := bareGossipTransport()

	bc, peer := pipeStream(t, gt)
	long := append([]byte{byte(6)}, make([]byte, gossipStreamMaxBytes+100)...) // a plain push/pull
	send(t, peer, long)
	got, err := io.ReadAll(bc)
	if !errors.Is(err, errGossipStreamTooLong) || len(got) != gossipStreamMaxBytes {
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
	got, err = io.ReadAll(io.LimitReader(bc, int64(len(body))))
	if err != nil || len(got) != len(body) {
		t.Fatalf("a stream at the limit: read %d of %d bytes, err %v", len(got), len(body), err)
	}
	if got := gt.tooLong.Load(); got != 3 {
		t.Fatalf("tooLong = %d; want 3", got)
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
	to string
}

func (d *dropUDPTo) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if a.Addr == d.to {
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
	port := 0
	gt, err := newGossipTransport("127.0.0.1", &port, quiet, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ca := memberlist.DefaultLocalConfig()
	ca.Name, ca.BindAddr, ca.BindPort, ca.AdvertisePort = "a", "127.0.0.1", port, port
	ca.Transport, ca.Logger = gt, quiet
	a, err := memberlist.Create(ca)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	aAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

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
