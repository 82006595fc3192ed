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
// source's 1,200 such streams over 6 connections hold 1,024 and are
// refused the rest at their headers, naming the limit, while another
// source is served; and once they end, the source is served again. One
// token holder's 14,684 held streams took a leader from 42 to 633 MB and
// made it step down (outsider review s38).
func TestPendingBodiesAreBounded(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.AuthToken = "s3cret"
	}})
	_, l := c.Leader()
	addr := l.APIAddr()

	const conns, streams = 6, 200
	held := make([]*h2Conn, conns)
	for i := range held {
		h := dialH2(t, addr, nil)
		held[i] = h
		var b []byte
		for s := range streams {
			b = h2Frame(b, h2Headers, h2EndHeaders, uint32(2*s+1), h2Request("http", "Get", "s3cret")) // no body
		}
		if _, err := h.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	want := conns*streams - 1024
	nodetest.Eventually(t, 20*time.Second, func() error {
		var replies int64
		for _, h := range held {
			replies += h.replies.Load()
			if g := h.goAway.Load(); g != nil {
				t.Fatalf("the node sent GOAWAY %d %q to a connection opening streams", g.code, g.debug)
			}
		}
		if n := refusals(t, l, node.PortAPI, "pending_bodies"); n < uint64(want) || replies < int64(want) {
			return fmt.Errorf("%d refused as pending_bodies, %d answered; want %d", n, replies, want)
		}
		return nil
	})
	if n := refusals(t, l, node.PortAPI, "pending_bodies"); n != uint64(want) {
		t.Errorf("%d streams refused as pending_bodies, want %d (the source's 1,024 held)", n, want)
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
