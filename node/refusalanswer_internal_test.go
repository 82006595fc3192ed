package node

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A connection refused at --max-conns is told why before it is closed:
// an HTTP/1.1 client gets a 503 with Connection: close, Retry-After and a
// body naming max_conns and --max-conns; an h2c client (prior knowledge)
// SETTINGS and a GOAWAY whose debug data names them. Before, both read a
// bare EOF (curl: "Empty reply from server").
func TestRefusedConnectionsAreToldWhy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newConnLimiter(ln, 1, time.Minute, slog.New(slog.DiscardHandler))
	accepted := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Accept did not return after the listener closed")
		}
	})
	dial := func() net.Conn {
		t.Helper()
		conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		return conn
	}
	// One busy connection holds the only slot.
	dial()
	select {
	case c := <-accepted:
		defer c.Close()
		l.state(c, http.StateActive)
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection was not admitted")
	}

	conn := dial()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("HTTP/1.1 client refused at --max-conns: %v, want a 503", err)
	}
	body, _ := io.ReadAll(resp.Body)
	t.Logf("HTTP/1.1: %s %q %q", resp.Status, resp.Header, body)
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close || resp.Header.Get("Retry-After") == "" ||
		resp.Header.Get("Leasenode-Refusal") != "max_conns" ||
		!strings.Contains(string(body), "max_conns") || !strings.Contains(string(body), "--max-conns") {
		t.Fatalf("HTTP/1.1 client refused at --max-conns: %s %q %q, want 503, Connection: close, Retry-After, naming max_conns and --max-conns",
			resp.Status, resp.Header, body)
	}

	conn = dial()
	hdrs := []byte{0x82, 0x86, 0x41, 1, 'x', 0x44, 8}
	hdrs = append(hdrs, "/healthz"...)
	out := append([]byte(h2Preface), 0, 0, 0, 4, 0, 0, 0, 0, 0) // SETTINGS
	out = append(out, 0, 0, byte(len(hdrs)), 1, 5, 0, 0, 0, 1)  // HEADERS, END_STREAM|END_HEADERS, stream 1
	conn.Write(append(out, hdrs...))
	var debug []byte
	r := bufio.NewReader(conn)
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			break
		}
		if hdr[3] == frameGoAway && len(payload) >= 8 {
			if code := binary.BigEndian.Uint32(payload[4:8]); code != 0xb {
				t.Errorf("GOAWAY error code %#x, want ENHANCE_YOUR_CALM", code)
			}
			debug = payload[8:]
		}
	}
	t.Logf("h2c: GOAWAY debug %q", debug)
	if !bytes.Contains(debug, []byte("max_conns")) || !bytes.Contains(debug, []byte("--max-conns")) {
		t.Fatalf("h2c client refused at --max-conns: GOAWAY debug data %q, want it to name max_conns and --max-conns", debug)
	}
}
