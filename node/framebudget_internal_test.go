package node

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// frame returns an HTTP/2 frame of type typ on stream with a payload of
// n bytes.
func frame(typ byte, stream uint32, n int) []byte {
	b := []byte{byte(n >> 16), byte(n >> 8), byte(n), typ, 0}
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, make([]byte, n)...)
}

// memConn is a net.Conn that reads from a buffer and writes to another,
// with deadlines that do nothing.
type memConn struct {
	net.Conn // nil: only the methods below are called
	in       io.Reader
	mu       sync.Mutex
	out      bytes.Buffer
	remote   net.Addr // RemoteAddr; nil: the zero address
}

func (c *memConn) Read(p []byte) (int, error) { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}
func (c *memConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
func (c *memConn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return &net.TCPAddr{}
}
func (c *memConn) Close() error { return nil }

// The cursor finds every frame header however the stream is cut: the
// server reads 9-byte headers then payloads, TLS hands over records, a
// plain socket whatever arrived.
func TestFrameCursorFindsHeadersAcrossReads(t *testing.T) {
	var stream []byte
	var want []byte
	for i, n := range []int{0, 8, 1, 9, 16384, 4, 0, 100} {
		typ := byte(i % 10)
		stream = append(stream, frame(typ, uint32(i), n)...)
		want = append(want, typ)
	}
	for size := 1; size <= len(stream); size += 1 + size/8 {
		var f frameCursor
		var got []byte
		for p := stream; len(p) > 0; {
			piece := p[:min(size, len(p))]
			p = p[len(piece):]
			for {
				var ok bool
				if piece, ok = f.next(piece); !ok {
					break
				}
				got = append(got, f.hdr[3])
			}
		}
		if !bytes.Equal(got, want) || !f.atBoundary() {
			t.Fatalf("pieces of %d bytes: headers of types %v (at a boundary: %v), want %v", size, got, f.atBoundary(), want)
		}
	}
}

// A connection may send burst frames at once, then rate a second; the
// frame past it fails the read, counts a refusal and sends GOAWAY
// ENHANCE_YOUR_CALM with the highest stream the client opened.
func TestFrameConnBudget(t *testing.T) {
	b := newFrameBudget(1000, 1, slog.New(slog.DiscardHandler)) // burst 100
	var now time.Duration
	b.now = func() time.Duration { return now }
	if b.burst != 100 {
		t.Fatalf("burst %d, want 100 (a tenth of the rate)", b.burst)
	}
	var in []byte
	for i := range 151 {
		in = append(in, frame(frameHeaders, uint32(2*i+1), 3)...)
	}
	mc := &memConn{in: bytes.NewReader(in)}
	c := b.wrap(mc)
	read := func(frames int) error {
		for range frames {
			var hdr [9]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, make([]byte, 3)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := read(100); err != nil {
		t.Fatalf("the burst's 100 frames: %v", err)
	}
	now += 50 * time.Millisecond // 50 more frames
	if err := read(50); err != nil {
		t.Fatalf("50 frames 50 ms after the burst: %v", err)
	}
	if err := read(1); !errors.Is(err, errFrameRate) {
		t.Fatalf("the frame past the budget: %v, want errFrameRate", err)
	}
	if n := b.closed.Load(); n != 1 {
		t.Fatalf("refusals: %d, want 1", n)
	}
	out := mc.written()
	if len(out) < 17 || out[3] != frameGoAway || binary.BigEndian.Uint32(out[9:13]) != 299 || binary.BigEndian.Uint32(out[13:17]) != 0xb {
		t.Fatalf("written %x, want GOAWAY with last stream 299 (the refused frame's stream 301 never opened), ENHANCE_YOUR_CALM", out)
	}
	if _, err := c.Read(make([]byte, 9)); !errors.Is(err, errFrameRate) {
		t.Fatalf("a read after the refusal: %v, want errFrameRate", err)
	}
	if n, err := c.Write([]byte("dropped")); n != 7 || err != nil || !bytes.Equal(mc.written(), out) {
		t.Fatalf("a write after the GOAWAY: %d %v, wrote %q", n, err, mc.written()[len(out):])
	}

	// A long quiet spell refills the burst, not more.
	c2 := b.wrap(&memConn{in: bytes.NewReader(in)})
	c2.tokens = 0
	now += time.Hour
	if !c2.take() || c2.tokens != b.burst-1 {
		t.Fatalf("after an hour: %d frames left, want the burst %d less one", c2.tokens, b.burst)
	}
}

// A GOAWAY never cuts a frame of the server's in two: refused while the
// server has written half a frame, the connection sends it after the
// server's write that completes the frame.
func TestFrameConnGoAwayAfterWholeFrames(t *testing.T) {
	b := newFrameBudget(1000, 1, slog.New(slog.DiscardHandler)) // burst 100
	b.now = func() time.Duration { return 0 }
	var in []byte
	for range 101 {
		in = append(in, frame(framePing, 0, 8)...)
	}
	mc := &memConn{in: bytes.NewReader(in)}
	c := b.wrap(mc)
	reply := frame(framePing, 0, 8)
	c.Write(reply[:5])

	refused := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, c); refused <- err }()
	deadline := time.Now().Add(10 * time.Second)
	for c.calm.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the connection was not refused within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	if got := mc.written(); len(got) != 5 {
		t.Fatalf("GOAWAY written after half a frame: %x", got)
	}
	c.Write(reply[5:])
	select {
	case err := <-refused:
		if !errors.Is(err, errFrameRate) {
			t.Fatalf("reads ended with %v, want errFrameRate", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reads did not end within 10 s of the GOAWAY")
	}
	got := mc.written()
	if !bytes.Equal(got[:len(reply)], reply) || len(got) < len(reply)+17 || got[len(reply)+3] != frameGoAway {
		t.Fatalf("written %x, want the whole PING ack then a GOAWAY", got)
	}
}

// loopReader reads the same frames over and over.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	if r.off += n; r.off == len(r.b) {
		r.off = 0
	}
	return n, nil
}

// BenchmarkFrameConnRead reads frames as net/http's HTTP/2 server does
// (a 9-byte header, then the payload) from memory, bare and through a
// frameConn: the frameConn's cost per frame, which must not allocate.
func BenchmarkFrameConnRead(b *testing.B) {
	var stream []byte
	for i := range 64 {
		stream = append(stream, frame(frameHeaders, uint32(2*i+1), 60)...)
		stream = append(stream, frame(frameData, uint32(2*i+1), 40)...)
	}
	for _, via := range []string{"bare", "frameConn"} {
		b.Run(via, func(b *testing.B) {
			var r io.Reader = &loopReader{b: stream}
			if via == "frameConn" {
				r = newFrameBudget(1<<30, 256, slog.New(slog.DiscardHandler)).wrap(&memConn{in: r})
			}
			var hdr [9]byte
			payload := make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					b.Fatal(err)
				}
				n := int(hdr[2])
				if _, err := io.ReadFull(r, payload[:n]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// WINDOW_UPDATEs are free while they hand back no more than the window
// of the DATA the server wrote, one per windowCredit bytes of it; past
// that they count as any frame.
func TestFrameConnWindowCredit(t *testing.T) {
	b := newFrameBudget(1000, 1, slog.New(slog.DiscardHandler)) // burst 100
	b.now = func() time.Duration { return 0 }
	var in []byte
	for range 250 {
		in = append(in, frame(frameWindowUpdate, 1, 4)...)
	}
	c := b.wrap(&memConn{in: bytes.NewReader(in)})
	c.Write(frame(frameData, 1, 100*windowCredit))  // the server's reply
	c.Write(frame(frameHeaders, 1, 3*windowCredit)) // no credit: not DATA
	var hdr [13]byte
	n := 0
	var err error
	for ; n < 250; n++ {
		if _, err = io.ReadFull(c, hdr[:]); err != nil {
			break
		}
	}
	if want := 100 + int(b.burst); n != want || !errors.Is(err, errFrameRate) {
		t.Fatalf("%d WINDOW_UPDATEs read, then %v; want %d (100 free for the DATA written, then the burst), then errFrameRate", n, err, want)
	}
}
