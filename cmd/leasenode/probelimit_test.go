package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
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

// A probe being answered is not the connection closed for a new one: a
// churn of silent connections took the place of the oldest whatever it
// did, and cut 5 of 31 /readyz probes off mid-answer (outsider review).
// Silent ones go first.
func TestProbePortKeepsARequestInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	p, err := serveProbes("127.0.0.1:0", map[string]http.Handler{
		"/slow": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			close(entered)
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
			io.WriteString(w, "ok")
		}),
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	answered := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Get("http://" + p.Addr() + "/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		answered <- err
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the probe's request did not arrive")
	}
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for range 3 * maxProbeConns {
		c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	close(release)
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("a probe answered beside %d silent connections: %v", len(silent), err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the probe was not answered")
	}
}

// A request with a body, or not a GET or HEAD, is answered at once on the
// --http port, and its connection closed, whatever of its body is still
// to come (outsider review s31: slow-body POSTs held connections that
// were evicted last, and probes were cut instead).
func TestProbePortAnswersBodiesAtOnce(t *testing.T) {
	p, err := serveProbes("127.0.0.1:0", map[string]http.Handler{
		"/readyz": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }),
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 100,000 bytes announced, one sent.
	if _, err := io.WriteString(c, "POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c) // the answer, then the server's close
	if err != nil {
		t.Fatalf("no answer and close within 5 s: %v (read %q)", err, got)
	}
	if !strings.HasPrefix(string(got), "HTTP/1.1 405") || !strings.Contains(string(got), "GET /healthz, /readyz and /metrics") {
		t.Fatalf("answer %q, want 405 naming what the port serves", got)
	}
}
