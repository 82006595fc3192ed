package node_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// HTTP/2 streams whose headers carry the token and whose bodies never
// come are bounded per source and node-wide (pending-bodies): one
// source's streams hold 1,024, and past them are refused at their
// headers, naming the limit, while another source is served; a
// connection refused 16 times is closed; and once the streams end, the
// source is served again. One token holder's 14,684 held streams took a
// leader from 42 to 633 MB and made it step down (outsider review s38).
func TestPendingBodiesAreBounded(t *testing.T) {
	l := tokenNode(t)
	addr := l.APIAddr()

	// open writes n bodiless streams on a new connection.
	open := func(n int) *h2Conn {
		h := dialH2(t, addr, nil)
		var b []byte
		for s := range n {
			b = h2Frame(b, h2Headers, h2EndHeaders, uint32(2*s+1), h2Request("http", "Get", "s3cret")) // no body
		}
		if _, err := h.Write(b); err != nil {
			t.Fatal(err)
		}
		return h
	}
	var held []*h2Conn
	for _, n := range []int{200, 200, 200, 200, 200, 24} { // 1,024: the source's share
		held = append(held, open(n))
	}
	// Each answered stream is a refusal: wait until the node has taken
	// them all, then 16 more, refused, and their connection closed.
	nodetest.Eventually(t, 20*time.Second, func() error {
		if n := l.PendingBodies(); n != 1024 {
			return fmt.Errorf("%d requests wait for their bodies, want the 1,024 sent", n)
		}
		return nil
	})
	over := open(16)
	select {
	case <-over.closed:
	case <-time.After(20 * time.Second):
		t.Fatalf("a connection refused 16 times was not closed (%d answered)", over.replies.Load())
	}
	if n := refusals(t, l, node.PortAPI, "pending_bodies"); n != 16 {
		t.Errorf("%d streams refused as pending_bodies, want 16 (the source's 1,024 held)", n)
	}
	for i, h := range held {
		select {
		case <-h.closed:
			t.Fatalf("connection %d, holding the source's share, was closed", i)
		default:
		}
		if r := h.replies.Load(); r != 0 {
			t.Fatalf("connection %d, holding the source's share, had %d streams answered", i, r)
		}
	}

	status := func(src net.IP) (string, error) {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"+
			"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return "", err
		}
		body, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%s %s", resp.Status, body), nil
	}
	if got, err := status(net.IPv4(127, 0, 7, 2)); err != nil || !strings.HasPrefix(got, "200") {
		t.Fatalf("another source's Status beside the held streams: %q %v", got, err)
	}
	if got, err := status(net.IPv4(127, 0, 0, 1)); err != nil || !strings.Contains(got, "wait for their bodies") {
		t.Fatalf("the holding source's Status: %q %v; want refused naming the limit", got, err)
	}
	for _, h := range held {
		h.Close()
	}
	nodetest.Eventually(t, 20*time.Second, func() error {
		got, err := status(net.IPv4(127, 0, 0, 1))
		if err != nil || !strings.HasPrefix(got, "200") {
			return fmt.Errorf("the source's Status after its streams ended: %q %v", got, err)
		}
		return nil
	})
}
