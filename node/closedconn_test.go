package node_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// waitingHandlers counts the HTTP/1 handlers of the process that wait for
// a turn: of the API budget (paceHTTP1, payUnits) or of their source's
// request bodies (bodySlot, bodyGate).
func waitingHandlers() int {
	return http1Handlers("(*apiBudget).await", "(*bodySlot).take", "(*bodyGate).room")
}

// http1Handlers counts the HTTP/1 handlers of the process whose stacks
// hold any of fns.
func http1Handlers(fns ...string) int {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "net/http.(*conn).serve") {
			continue
		}
		for _, w := range fns {
			if strings.Contains(g, w) {
				n++
				break
			}
		}
	}
	return n
}

// Invariant closed-conn-ends-requests: a handler whose connection the
// node closed stops waiting for its turn at once, and a request with the
// token that waits its turn keeps its connection. net/http's HTTP/1
// server cancels a request's context only from its background read,
// which begins once the body has been read: 800 connections sending
// 261 KB Extends, each waiting its turn longer than the auth deadline
// (its connection marked authenticated only once served), were closed
// under their handlers, redialed and queued again: 3,300 handlers
// waited on 220 connections, with partly read bodies, and a leader's RSS
// went from 30 to 300 MB (review s35, 580-770 MB on the reviewer's).
//
// Here one /24's 64 connections (--max-conns) each send a 200 KB Extend
// at the slowest API budget: one body at a time is read, the others wait
// for the source's turn before a byte of theirs is read or a buffer is
// taken for it. Then another /24's 32 clients connect, and
// the connection limiter closes 32 of the first /24's busy connections
// to admit them. The handlers of those stop waiting at once: no more
// handlers wait than connections are open.
func TestClosedConnectionsEndTheirWaits(t *testing.T) {
	const (
		maxConns = 64
		bodySize = 200 << 10
	)
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.AuthToken = "s3cret"
		cfg.Limits.MaxConns = maxConns
		cfg.Limits.MaxAPIRate = 100 // the slowest: a 200 KB body pays 3,136 units, 3 s of it
		cfg.Limits.ReadTimeout = time.Minute
	}})
	_, l := c.Leader()

	var closed atomic.Int64 // of the first /24's connections
	var wg sync.WaitGroup
	var raws []net.Conn
	defer func() {
		for _, r := range raws {
			r.Close()
		}
		wg.Wait()
	}()
	dial := func(ip string) net.Conn {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		raw, err := d.Dial("tcp", l.APIAddr())
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
		_ = raw.SetDeadline(time.Now().Add(2 * time.Minute))
		return raw
	}
	body := `{"holder":"h","items":[` + strings.Repeat(" ", bodySize)
	for i := range maxConns {
		raw := dial(fmt.Sprintf("127.0.21.%d", 1+i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = fmt.Fprintf(raw, "POST /leasenode.v1.LeaseService/Extend HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			_, _ = io.Copy(io.Discard, raw) // until the node closes it
			closed.Add(1)
		}()
	}
	nodetest.Eventually(t, 20*time.Second, func() error {
		if n := waitingHandlers(); n < maxConns-4 {
			return fmt.Errorf("%d handlers wait for their turn", n)
		}
		return nil
	})
	// Of one source's bodies, one is read at a time: the others wait
	// before connect takes a buffer for them (one recycled from an
	// earlier body keeps its size).
	if n := http1Handlers("(*connectUnaryUnmarshaler).UnmarshalFunc"); n > 1 {
		t.Errorf("%d handlers of one /24 hold partly read bodies as they wait their turns; one at a time may", n)
	}
	if n := closed.Load(); n > 0 {
		t.Fatalf("%d of %d connections closed while their requests, with the token, waited their turn", n, maxConns)
	}

	// Another /24's clients, one after the other, each with a request
	// with the token (a slot of a connection without one would go first).
	for i := range maxConns / 2 {
		raw := dial(fmt.Sprintf("127.0.22.%d", 1+i))
		fmt.Fprintf(raw, "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
		resp, err := http.ReadResponse(bufio.NewReader(raw), nil)
		if err != nil {
			t.Fatalf("status from the second /24: %v", err)
		}
		resp.Body.Close()
	}
	nodetest.Eventually(t, 20*time.Second, func() error {
		if n := closed.Load(); n < maxConns/2 {
			return fmt.Errorf("%d of the first /24's connections closed", n)
		}
		return nil
	})
	start := time.Now()
	var waiting int
	var open int64
	nodetest.Eventually(t, 5*time.Second, func() error {
		open, waiting = maxConns-closed.Load(), waitingHandlers()
		if int64(waiting) > open {
			return fmt.Errorf("%d handlers wait for their turn on %d open connections (%d closed by the limiter) %v after", waiting, open, maxConns-open, time.Since(start).Round(time.Millisecond))
		}
		return nil
	})
	t.Logf("%d of %d connections closed by the limiter; %d handlers wait on the %d open, %v after", maxConns-open, maxConns, waiting, open, time.Since(start).Round(time.Millisecond))
}

// An HTTP/2 connection keeps a buffer the size of the largest frame it
// has sent, up to the frame size the server allows: at net/http's 1 MiB,
// 482 connections with a frame of 1 MiB each took a leader from 111 to
// 559 MB (review s35). At HTTP/2's 16 KiB such a frame is refused and its
// connection closed. Each of 64 connections here sends a 1 MiB frame of
// an unknown type, then a PING: once the node has answered it or closed
// the connection, the node has read the frame.
func TestLargeHTTP2FramesHoldNoMemory(t *testing.T) {
	const (
		conns = 64
		frame = 1<<20 - 1
	)
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true})
	_, l := c.Leader()
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	hdr := func(length int, typ, flags byte) []byte {
		return []byte{byte(length >> 16), byte(length >> 8), byte(length), typ, flags, 0, 0, 0, 0}
	}
	var raws []net.Conn
	defer func() {
		for _, r := range raws {
			r.Close()
		}
	}()
	done := make(chan string, conns)
	for i := range conns {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.%d.1", 30+i))}}
		raw, err := d.Dial("tcp", l.APIAddr())
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
		_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
		go func() {
			w := bufio.NewWriter(raw)
			w.WriteString("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
			w.Write(hdr(0, 0x4, 0)) // SETTINGS
			w.Write(hdr(frame, 0xfe, 0))
			w.Write(make([]byte, frame))
			w.Write(hdr(8, 0x6, 0)) // PING
			w.Write(make([]byte, 8))
			_ = w.Flush()
		}()
		go func() {
			r := bufio.NewReader(raw)
			var h [9]byte
			for {
				if _, err := io.ReadFull(r, h[:]); err != nil {
					done <- "closed"
					return
				}
				if _, err := io.CopyN(io.Discard, r, int64(h[0])<<16|int64(h[1])<<8|int64(h[2])); err != nil {
					done <- "closed"
					return
				}
				if h[3] == 0x6 && h[4]&0x1 != 0 {
					done <- "answered"
					return
				}
			}
		}()
	}
	count := map[string]int{}
	for range conns {
		select {
		case s := <-done:
			count[s]++
		case <-time.After(30 * time.Second):
			t.Fatalf("the node neither answered nor closed the connections: %v", count)
		}
	}
	grown := int64(heap()) - int64(base)
	t.Logf("%d connections sent a %d KiB frame: %d answered, %d closed; heap grew %d KiB", conns, frame>>10, count["answered"], count["closed"], grown>>10)
	if per := grown / conns; per > 256<<10 {
		t.Errorf("each connection that sent a 1 MiB frame holds %d KiB", per>>10)
	}
}
