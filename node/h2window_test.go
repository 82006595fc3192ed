package node_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// The client API's HTTP/2 server reads at most node.H2StreamWindow of a
// request body, and node.H2ConnWindow of a connection's, before a
// handler reads them: it announces its stream window, and a client that
// sends a connection's window of DATA to handlers that do not read, then
// one byte more on another stream, has that stream reset with
// FLOW_CONTROL_ERROR. net/http's
// defaults, 1 MiB each, let 1,024 connections put 1 GiB in the node's
// memory before the API budget saw it (outsider review s35). It logs the
// time a 64 KiB body (a stream's window; the most the node reads of a
// request to a Config.HTTPHandlers handler) takes to upload to a handler
// that reads it. Fails without (windows of 1 MiB announced).
func TestHTTP2UnreadUploadIsBounded(t *testing.T) {
	release := make(chan struct{})
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.HTTPHandlers = map[string]http.Handler{
			"POST /hold": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select { // the body unread
				case <-release:
				case <-r.Context().Done():
				}
			}),
			"POST /read": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, err := io.Copy(io.Discard, r.Body)
				fmt.Fprint(w, n, err)
			}),
		}
	}})
	t.Cleanup(func() { close(release) }) // before the node stops
	_, l := c.Leader()

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	defer tr.CloseIdleConnections()
	body := make([]byte, 64<<10)
	var took []time.Duration
	for range 21 {
		start := time.Now()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("http://"+l.APIAddr()+"/read", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprint(len(body), nil); resp.ProtoMajor != 2 || string(got) != want {
			t.Fatalf("upload over HTTP/%d: %q, want HTTP/2 and %q", resp.ProtoMajor, got, want)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("64 KiB uploads over h2c, one connection: fastest %v, median %v of %d", took[0], took[len(took)/2], len(took))

	conn, err := net.DialTimeout("tcp", l.APIAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(h2Frame([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), h2Settings, 0, 0, nil)); err != nil {
		t.Fatal(err)
	}
	// The node's SETTINGS come before its ack of ours. (Its connection's
	// WINDOW_UPDATE may come after: the window is the node's own from
	// the start.)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	streamWin := 65535
	for acked := false; !acked; {
		var hdr [9]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			t.Fatal(err)
		}
		switch typ, flags := hdr[3], hdr[4]; {
		case typ == h2Settings && flags&h2Ack != 0:
			acked = true
		case typ == h2Settings:
			for p := payload; len(p) >= 6; p = p[6:] {
				if binary.BigEndian.Uint16(p) == 4 { // SETTINGS_INITIAL_WINDOW_SIZE
					streamWin = int(binary.BigEndian.Uint32(p[2:]))
				}
			}
			conn.Write(h2Frame(nil, h2Settings, h2Ack, 0, nil))
		}
	}
	conn.SetReadDeadline(time.Time{})
	if streamWin != node.H2StreamWindow {
		t.Errorf("the node announced a window of %d bytes a stream, want %d", streamWin, node.H2StreamWindow)
	}

	// Streams 1, 3, ... to /hold, each sent its window of DATA until the
	// connection's is spent, then one byte more on the next.
	hold := func(stream uint32) []byte {
		block := append([]byte{0x83, 0x86, 0x41, 1, 'x', 0x44, 5}, "/hold"...)
		return h2Frame(nil, h2Headers, h2EndHeaders, stream, block)
	}
	var b []byte
	stream := uint32(1)
	for left := node.H2ConnWindow; left > 0; stream += 2 {
		b = append(b, hold(stream)...)
		for n := min(left, streamWin); n > 0; {
			chunk := min(n, 16<<10)
			b = h2Frame(b, h2Data, 0, stream, make([]byte, chunk))
			n, left = n-chunk, left-chunk
		}
	}
	b = append(b, hold(stream)...)
	b = h2Frame(b, h2Data, 0, stream, []byte{0})
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	// The node's answer: RST_STREAM of the last stream, FLOW_CONTROL_ERROR.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			t.Fatalf("a byte past the connection's window of %d, on stream %d: no RST_STREAM of it (%v)", node.H2ConnWindow, stream, err)
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			t.Fatal(err)
		}
		if hdr[3] != h2RSTStream || len(payload) < 4 {
			continue
		}
		s, code := binary.BigEndian.Uint32(hdr[5:])&0x7fffffff, binary.BigEndian.Uint32(payload)
		if s != stream || code != 3 { // FLOW_CONTROL_ERROR
			t.Fatalf("RST_STREAM of stream %d, code %d; want stream %d (a byte past the connection's window), code 3 (FLOW_CONTROL_ERROR)", s, code, stream)
		}
		return
	}
}
