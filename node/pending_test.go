package node_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
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

	held := holdSourceShare(t, l)
	over := bodiless(t, addr, 16)
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

// bodiless opens a connection to addr and writes n streams on it whose
// headers carry the token and whose bodies never come.
func bodiless(t *testing.T, addr string, n int) *h2Conn {
	return bodilessFrom(t, nil, addr, n)
}

// bodilessFrom is bodiless from the local address src (nil: any).
func bodilessFrom(t *testing.T, src net.IP, addr string, n int) *h2Conn {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	h := dialH2With(t, d, addr, nil)
	var b []byte
	for s := range n {
		b = h2Frame(b, h2Headers, h2EndHeaders, uint32(2*s+1), h2Request("http", "Get", "s3cret")) // no body
	}
	if _, err := h.Write(b); err != nil {
		t.Fatal(err)
	}
	return h
}

// holdSourceShare holds 127.0.0.1's share of l's pending bodies (1,024
// bodiless streams) and returns their connections once l counts them
// all: each stream answered would be a refusal.
func holdSourceShare(t *testing.T, l *node.Node) []*h2Conn {
	var held []*h2Conn
	for _, n := range []int{200, 200, 200, 200, 200, 24} {
		held = append(held, bodiless(t, l.APIAddr(), n))
	}
	nodetest.Eventually(t, 20*time.Second, func() error {
		if n := l.PendingBodies(); n != 1024 {
			return fmt.Errorf("%d requests wait for their bodies, want the 1,024 sent", n)
		}
		return nil
	})
	return held
}

// A pending-bodies refusal comes before the request is read, so it is
// retried (REASON_OVERLOADED, unavailable), not final: a waiting Acquire
// of a free key and a Release, sent from a /24 whose share is held, are
// refused and retried until the streams end, then served. As
// resource_exhausted the Acquire gave up at once, named "too many
// waiting acquires", and the Release left its key held for its TTL
// (adversarial review s39).
func TestOverloadRefusalsAreRetried(t *testing.T) {
	l := tokenNode(t)
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{l.APIAddr()}, lease.WithAuthToken("s3cret"), lease.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	ls, err := cl.Acquire(ctxT(t, 10*time.Second), "held")
	if err != nil {
		t.Fatal(err)
	}
	held := holdSourceShare(t, l)
	base := refusals(t, l, node.PortAPI, "pending_bodies")
	acquired, released := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := cl.Acquire(ctxT(t, 30*time.Second), "free")
		acquired <- err
	}()
	go func() { released <- ls.Release(ctxT(t, 30*time.Second)) }()
	// Both refused, and each retried, before the streams end.
	nodetest.Eventually(t, 20*time.Second, func() error {
		if n := refusals(t, l, node.PortAPI, "pending_bodies") - base; n < 4 {
			return fmt.Errorf("%d refusals for pending bodies since the calls began, want 4", n)
		}
		return nil
	})
	for _, h := range held {
		h.Close()
	}
	for name, ch := range map[string]chan error{"waiting Acquire of a free key": acquired, "Release": released} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s refused for pending bodies, then served: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no answer 30 s after the streams ended", name)
		}
	}
	if h := holderOf(t, l, "held"); h != "" {
		t.Errorf("the released key is held by %s", h)
	}
}

// With the node's count of requests waiting for their bodies full, held
// by many /24s, a request of a /24 holding none takes the place of the
// oldest bodiless one of a /24 holding more (pending-bodies): 66 /24s
// holding 4,096 bodiless streams, each reopened at its read timeout,
// refused every other client, and 20 of 20 leases beside them were lost
// (outsider review s39). The read timeout here is a minute, so that
// nothing but that gives the place.
func TestPendingBodiesMakeRoomForOthers(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.AuthToken = "s3cret"
		cfg.Limits.ReadTimeout = time.Minute
	}})
	_, l := c.Leader()
	// Three /24s at their share (1,024), then 16 at the most a source may
	// hold in the last quarter (64): 4,096 in all.
	for s := 1; s <= 3; s++ {
		for _, n := range []int{200, 200, 200, 200, 200, 24} {
			bodilessFrom(t, net.IPv4(127, 0, byte(s), 1), l.APIAddr(), n)
		}
	}
	counted := func(want int) {
		t.Helper()
		nodetest.Eventually(t, 30*time.Second, func() error {
			if n := l.PendingBodies(); n != want {
				return fmt.Errorf("%d requests wait for their bodies, want the %d sent", n, want)
			}
			return nil
		})
	}
	counted(3072) // before the last quarter, which the three may not enter
	for s := 10; s < 26; s++ {
		bodilessFrom(t, net.IPv4(127, 0, byte(s), 1), l.APIAddr(), 64)
	}
	counted(4096)
	cl, err := lease.Dial(ctxT(t, 20*time.Second), []string{l.APIAddr()}, lease.WithAuthToken("s3cret"))
	if err != nil {
		t.Fatalf("a client of another /24 beside 4,096 bodiless streams: %v", err)
	}
	defer cl.Close(context.Background())
	start := time.Now()
	if _, err := cl.Acquire(ctxT(t, 20*time.Second), "free"); err != nil {
		t.Fatalf("an Acquire of another /24 beside 4,096 bodiless streams: %v", err)
	}
	t.Logf("served after %v", time.Since(start).Round(time.Millisecond))
	if n := refusals(t, l, node.PortAPI, "pending_evicted"); n == 0 {
		t.Error("no bodiless request gave its place")
	}
	if n := l.PendingBodies(); n > 4096 {
		t.Errorf("%d requests wait for their bodies, past the 4,096 the node takes", n)
	}
}
