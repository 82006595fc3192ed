package transporttest

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// OneByteFlood opens connections to addr from 127.0.10+g.x (Linux loopback) for g below
// prefixes, each sending one TLS handshake-record byte and resetting, in
// a goroutine per prefix, until stop is called (or the test ends); stop
// returns how many were sent. It first waits until seen (the server's
// count of those connections closed) has reached 100, so the flood has
// begun to tell.
func OneByteFlood(t testing.TB, addr string, prefixes int, seen func() uint64) (stop func() uint64) {
	return Flood(t, addr, prefixes, []byte{22}, false, seen)
}

// Flood opens connections to addr from 127.0.10+g.x (Linux loopback) for g below
// prefixes, two goroutines a prefix, each writing payload, reading the
// first byte of the answer if await (or until the server closes), and
// resetting, until stop is called (or the test ends); stop returns how
// many were sent. It first waits until seen has reached 100.
func Flood(t testing.TB, addr string, prefixes int, payload []byte, await bool, seen func() uint64) (stop func() uint64) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Uint64
	for w := range 2 * prefixes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := w % prefixes
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				d := &net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, byte(10+g), byte(1+(w/prefixes)*125+i%125))}}
				c, err := d.Dial("tcp", addr)
				if err != nil {
					continue
				}
				if _, err := c.Write(payload); err == nil {
					sent.Add(1)
				}
				if await {
					_ = c.SetReadDeadline(time.Now().Add(time.Second))
					var b [1]byte
					_, _ = c.Read(b[:])
				}
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // a reset
				}
				c.Close()
			}
		}()
	}
	var once sync.Once
	stop = func() uint64 {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
		return sent.Load()
	}
	t.Cleanup(func() { stop() })
	for deadline := time.Now().Add(10 * time.Second); seen() < 100; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("the server saw %d of %d flood connections in 10 s", seen(), sent.Load())
		}
	}
	return stop
}

// ClientHello returns the first flight, a ClientHello record, that a TLS
// client with cfg sends: an outsider's replay needs no crypto.
func ClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	cli, srv := net.Pipe()
	defer srv.Close()
	go func() {
		_ = tls.Client(cli, cfg).Handshake() // fails once srv closes
		cli.Close()
	}()
	var hdr [5]byte
	if _, err := io.ReadFull(srv, hdr[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(srv, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr[:], body...)
}

// DialsDuringFlood calls dial n times in a row while a flood started by
// Flood or OneByteFlood runs, closes what each returns, stops the flood,
// and fails t if any dial failed, saying how many of n (who, e.g. "dials
// from another /24") failed during a flood of how many (what, e.g.
// "ClientHellos"), and the last error.
func DialsDuringFlood(t testing.TB, n int, who, what string, stop func() uint64, dial func() (io.Closer, error)) {
	t.Helper()
	failed := 0
	var last error
	for range n {
		c, err := dial()
		if err != nil {
			failed++
			last = err
			continue
		}
		c.Close()
	}
	sent := stop()
	if failed > 0 {
		t.Fatalf("%d of %d %s failed during a flood of %d %s (last: %v)", failed, n, who, sent, what, last)
	}
	t.Logf("%d %s during a flood of %d %s", n, who, sent, what)
}
