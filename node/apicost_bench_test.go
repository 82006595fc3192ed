package node_test

import (
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
)

// BenchmarkAPIFrameCost measures the node's CPU (user+system, this whole
// process: the raw clients only write prebuilt frames and read the
// replies) per HTTP/2 frame or request on the client API, from 4 raw h2c
// connections with the token, with the frame budget out of the way: a
// PING, a stream opened and reset at once (HEADERS+RST_STREAM of a
// Status), and whole requests (HEADERS+DATA of Status and of Get, each
// answered). The weights of the API budget (Limits.MaxAPIRate) come from
// these:
//
//	go test ./node -run '^$' -bench APIFrameCost -benchtime 200000x
func BenchmarkAPIFrameCost(b *testing.B) {
	const conns = 4
	s := budgetSetups[0]
	run := func(b *testing.B, op func(h *h2Conn, n int)) {
		c, _ := s.start(b, 1, nil, func(cfg *node.Config) { cfg.Limits.MaxFrameRate = 1 << 30 })
		_, l := c.Leader()
		hs := make([]*h2Conn, conns)
		for i := range hs {
			hs[i] = s.trusted(b, l.APIAddr(), nil)
			// The raw client hands back no window: open the
			// connection's for the replies once.
			if _, err := hs[i].Write(h2Frame(nil, h2WindowUpdate, 0, 0, []byte{0x7f, 0xff, 0, 0})); err != nil {
				b.Fatal(err)
			}
		}
		cpu0 := cpuTime()
		b.ResetTimer()
		var wg sync.WaitGroup
		for i, h := range hs {
			n := b.N / conns
			if i == 0 {
				n += b.N % conns
			}
			wg.Go(func() { op(h, n) })
		}
		wg.Wait()
		b.StopTimer()
		b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N)/1000, "cpu-µs/op")
	}
	// pings sends n PINGs and waits for their acks.
	pings := func(h *h2Conn, n int) {
		want := h.acks.Load() + int64(n)
		var batch []byte
		for range 100 {
			batch = h2Frame(batch, h2Ping, 0, 0, []byte("12345678"))
		}
		for sent := 0; sent < n; sent += 100 {
			k := min(100, n-sent)
			if _, err := h.Write(batch[:17*k]); err != nil {
				b.Error(err)
				return
			}
		}
		waitCount(b, &h.acks, want)
	}
	b.Run("ping", func(b *testing.B) { run(b, pings) })
	b.Run("headers+rst_stream", func(b *testing.B) {
		run(b, func(h *h2Conn, n int) {
			block := h2Request(s.scheme, "Status", s.token)
			var batch []byte
			for i := 0; i < n; i += 50 {
				batch = batch[:0]
				for j := range min(50, n-i) {
					id := uint32(3 + 2*(i+j))
					batch = h2Frame(batch, h2Headers, h2EndHeaders, id, block)
					batch = h2Frame(batch, h2RSTStream, 0, id, []byte{0, 0, 0, 8})
				}
				if _, err := h.Write(batch); err != nil {
					b.Error(err)
					return
				}
			}
			pings(h, 1) // frames are read in order: all were read once its ack comes
		})
	})
	for _, req := range []struct{ method, body string }{{"Status", "{}"}, {"Get", `{"key":"k"}`}} {
		b.Run("request "+req.method, func(b *testing.B) {
			run(b, func(h *h2Conn, n int) {
				block := h2Request(s.scheme, req.method, s.token)
				var batch []byte
				for i := 0; i < n; i += 32 {
					batch = batch[:0]
					k := min(32, n-i)
					for j := range k {
						id := uint32(3 + 2*(i+j))
						batch = h2Frame(batch, h2Headers, h2EndHeaders, id, block)
						batch = h2Frame(batch, h2Data, h2EndStream, id, []byte(req.body))
					}
					want := h.replies.Load() + int64(k)
					if _, err := h.Write(batch); err != nil {
						b.Error(err)
						return
					}
					waitCount(b, &h.replies, want)
				}
			})
		})
	}
}

// h2WindowUpdate is the WINDOW_UPDATE frame type.
const h2WindowUpdate = 8

// cpuTime is this process's CPU time so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitCount waits until c reaches want, polling every 100 µs (a
// benchmark's wait: Eventually's backoff would idle the node).
func waitCount(b testing.TB, c interface{ Load() int64 }, want int64) {
	for deadline := time.Now().Add(30 * time.Second); c.Load() < want; time.Sleep(100 * time.Microsecond) {
		if time.Now().After(deadline) {
			b.Errorf("%d of %d after 30 s", c.Load(), want)
			return
		}
	}
}
