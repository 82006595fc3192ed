package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// The --http port keeps at most maxProbeConns connections: connections
// that send nothing cannot keep a probe out (an outsider's flood held
// 16,500 of a leader's file descriptors through it).
func TestProbePortBoundsConnections(t *testing.T) {
	p, err := serveProbes("127.0.0.1:0", map[string]http.Handler{
		"/healthz": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }),
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 3 * maxProbeConns {
		c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + p.Addr() + "/healthz")
	if err != nil {
		t.Fatalf("a probe beside %d silent connections: %v", len(idle), err)
	}
	resp.Body.Close()
	l := p.ln.(*probeListener)
	l.mu.Lock()
	open := l.open.Len()
	l.mu.Unlock()
	if open > maxProbeConns {
		t.Fatalf("%d connections open, want at most %d", open, maxProbeConns)
	}
}
