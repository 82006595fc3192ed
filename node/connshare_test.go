package node_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport"
)

// rawClient is one HTTP/1.1 connection to a node's API, dialed from a
// chosen local address, on which the test writes requests by hand.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRaw connects to addr from ip (a loopback address: Linux routes all
// of 127.0.0.0/8 to lo); the connection closes at the end of the test.
// closedOf returns, for each of cs that no longer answers a request,
// its index and error.
func closedOf(cs []*rawClient) []string {
	var lost []string
	for i, c := range cs {
		if err := c.status(); err != nil {
			lost = append(lost, fmt.Sprintf("%d: %v", i, err))
		}
	}
	return lost
}

func dialRaw(t *testing.T, ip, addr string) *rawClient {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{conn: conn, br: bufio.NewReader(conn)}
}

// send writes a Connect JSON request for method with body, keeping the
// connection alive.
func (c *rawClient) send(method, body string) error {
	_, err := fmt.Fprintf(c.conn, "POST /leasenode.v1.LeaseService/%s HTTP/1.1\r\nHost: leasenode\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		method, len(body), body)
	return err
}

// status asks for Status on c and reads the answer, within 10 s.
func (c *rawClient) status() error {
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.conn.SetDeadline(time.Time{})
	if err := c.send("Status", "{}"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, out)
	}
	return nil
}

// floodSource opens n connections to l's API, the i-th from from(i),
// each holding a waiting acquire of a held key (busy, with no end), as an
// outsider's token holder did (outsider review s32 #5), and returns a
// channel that receives once for each of them the node closes.
func floodSource(t *testing.T, l *node.Node, n int, from func(i int) string) <-chan struct{} {
	t.Helper()
	mustGrant(t, l, acq("hot", "owner", 1, time.Minute))
	closed := make(chan struct{}, n)
	for i := range n {
		c := dialRaw(t, from(i), l.APIAddr())
		if err := c.send("Acquire", fmt.Sprintf(`{"key":"hot","holder":"f%d","requestId":"1","ttl":"60s","wait":true}`, i)); err != nil {
			t.Fatal(err)
		}
		go func() {
			// Ends when the node closes it, or at the end of the test.
			if _, err := io.Copy(io.Discard, c.conn); err == nil || !errors.Is(err, net.ErrClosed) {
				closed <- struct{}{}
			}
		}()
	}
	waitWaiters(t, l, uint64(n))
	return closed
}

// oneSource is floodSource's from for one /24, 127.0.1.0.
func oneSource(i int) string { return fmt.Sprintf("127.0.1.%d", 1+i%200) }

// One client source (an IPv4 /24) may hold a quarter of --max-conns (at
// least 64): with MaxConns 128, a source holding 64 busy connections
// (each a waiting acquire) has one more, from another address of its
// /24, refused at once, counted as max_conns_per_source and logged
// naming the flag, while a client of another source is served. An
// outsider's token holder held 1,006 busy connections from one address,
// nearly all of --max-conns (outsider review s32 #5). Fails without the
// share (the 65th connection is served).
func TestConnsPerSourceAreBounded(t *testing.T) {
	var lg logs
	const maxConns, share = 128, 64
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxConns = maxConns
		cfg.Limits.IdleTimeout = time.Hour
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()
	floodSource(t, l, share, oneSource)

	start := time.Now()
	if err := dialRaw(t, "127.0.1.250", l.APIAddr()).status(); err == nil {
		t.Fatalf("connection %d from one /24 was served; want it refused at the source's share of %d", share+1, share)
	} else if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("connection %d from one /24 was refused after %v; want at once", share+1, d)
	} else {
		t.Logf("connection %d from one /24: %v after %v", share+1, err, d.Round(time.Millisecond))
	}
	if n := refusals(t, l, node.PortAPI, "max_conns_per_source"); n != 1 {
		t.Fatalf("max_conns_per_source refusals: %d, want 1", n)
	}
	lg.waitFor(t, 5*time.Second, "refused a client API connection", "a quarter of the agent's --max-conns 128")
	if err := dialRaw(t, "127.0.2.1", l.APIAddr()).status(); err != nil {
		t.Fatalf("a client of another /24: %v", err)
	}
}

// At --max-conns the connection closed to admit a new one comes from the
// source holding the most connections, busy or not, before another
// sources' idle ones: with MaxConns 128, one source holding 64 busy
// connections and clients of 8 other sources holding 63 idle keep-alive
// connections, 8 new clients of yet another source each get a slot, the
// 7 past the limit closing 7 of the busy source's connections, and every
// idle connection is still served. The agent closed the idle ones, which
// were the legitimate clients': 5 of 55 fresh curls failed and a lock
// loop stalled 2-4 s 18 times (outsider review s32 #5). Fails without
// (the idle connections are closed).
func TestConnLimitClosesTheCrowdedSourceFirst(t *testing.T) {
	var lg logs
	const maxConns, share, fresh = 128, 64, 8
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxConns = maxConns
		cfg.Limits.IdleTimeout = time.Hour
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()
	closed := floodSource(t, l, share, oneSource)

	idle := make([]*rawClient, maxConns-share-1)
	for i := range idle {
		idle[i] = dialRaw(t, fmt.Sprintf("127.0.%d.1", 2+i%8), l.APIAddr())
		if err := idle[i].status(); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
	for i := range fresh {
		if err := dialRaw(t, "127.0.20.1", l.APIAddr()).status(); err != nil {
			t.Fatalf("new client %d of a third source at the limit: %v", i, err)
		}
	}
	lost := closedOf(idle)
	if len(lost) > 0 {
		t.Fatalf("%d of the %d idle connections were closed at the limit, while one source held %d busy: %s",
			len(lost), len(idle), share, strings.Join(lost, "; "))
	}
	deadline := time.After(10 * time.Second)
	for range fresh - 1 {
		select {
		case <-closed:
		case <-deadline:
			t.Fatalf("the node closed fewer than %d of the crowded source's connections", fresh-1)
		}
	}
	if n := refusals(t, l, node.PortAPI, "max_conns"); n != fresh-1 {
		t.Fatalf("max_conns: %d, want %d", n, fresh-1)
	}
	lg.waitFor(t, 5*time.Second, "client source (IPv4 /24, IPv6 /64) holding the most connections", "--max-conns")
}

// At --max-conns a new connection displaces one only from a source
// holding more than a fair share (--max-conns over the active sources,
// at least a sixteenth of it), else it is refused, counted as max_conns
// and logged naming the flag: with MaxConns 128 (a sixteenth: 8), a
// client source holding 8 idle keep-alive connections and 17 other /24s
// holding 120 busy ones, 7 or 8 each, fill the limit, and 8 new
// connections of those /24s are each refused while the client's 8 idle
// connections are all still served. 50 /24s holding 22 busy connections
// each, fewer than the client /24's 25, made the agent close the
// client's idle connections: 8 of 51 fresh curls failed and a lock loop
// stalled 2 s 14 times (outsider review s32 N5). Fails without (the idle
// connections are closed).
func TestConnLimitKeepsFairShares(t *testing.T) {
	var lg logs
	const maxConns, legit, sources, fresh = 128, 8, 17, 8
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxConns = maxConns
		cfg.Limits.IdleTimeout = time.Hour
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()
	idle := make([]*rawClient, legit)
	for i := range idle {
		idle[i] = dialRaw(t, fmt.Sprintf("127.0.30.%d", 1+i), l.APIAddr())
		if err := idle[i].status(); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
	floodSource(t, l, maxConns-legit, func(i int) string { return fmt.Sprintf("127.0.%d.%d", 1+i%sources, 1+i/sources) })

	for i := range fresh {
		if err := dialRaw(t, fmt.Sprintf("127.0.%d.200", 2+i), l.APIAddr()).status(); err == nil {
			t.Fatalf("new connection %d of a /24 holding 7 busy ones was served at the limit; want it refused", i)
		}
	}
	lost := closedOf(idle)
	if len(lost) > 0 {
		t.Fatalf("%d of the client source's %d idle connections, its fair share, were closed at the limit for %d /24s' busy ones: %s",
			len(lost), legit, sources, strings.Join(lost, "; "))
	}
	if n := refusals(t, l, node.PortAPI, "max_conns"); n != fresh {
		t.Fatalf("max_conns: %d, want %d", n, fresh)
	}
	lg.waitFor(t, 5*time.Second, "refused a client API connection", "fair share", "--max-conns")
}

// At --max-conns the fair share's floor (a sixteenth of it) protects a
// source's working connections only: with MaxConns 128, 15 /24s holding
// 8 connections each (the floor), every one of them idle, or stalled on
// a request body of which one byte of 100 came (ReadTimeout a minute),
// and one /24 holding 8 busy ones (waiting acquires) fill the limit, and
// clients of 4 other /24s are each served, an idle or stalled connection
// closed for each, while the busy /24 keeps all 8. 16 /24s each keeping
// a sixteenth of --max-conns busy with bodies trickling in locked every
// other source out (outsider review s35). Fails without (the clients are
// refused until the deadline).
func TestConnLimitAdmitsPastIdleAndStalledShares(t *testing.T) {
	for _, mode := range []string{"stalled", "idle"} {
		t.Run(mode, func(t *testing.T) {
			var lg logs
			const maxConns, sources, floor, clients = 128, 15, 8, 4
			c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
				cfg.Limits.MaxConns = maxConns
				cfg.Limits.IdleTimeout = time.Hour
				cfg.Limits.ReadTimeout = time.Minute
				cfg.Logger = lg.logger()
			}})
			_, l := c.Leader()
			for i := range sources * floor {
				rc := dialRaw(t, fmt.Sprintf("127.0.%d.%d", 40+i%sources, 1+i/sources), l.APIAddr())
				if mode == "idle" {
					if err := rc.status(); err != nil {
						t.Fatalf("connection %d: %v", i, err)
					}
					continue
				}
				if _, err := fmt.Fprintf(rc.conn, "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: leasenode\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
					t.Fatal(err)
				}
			}
			working := transport.SourcePrefix(&net.TCPAddr{IP: net.IPv4(127, 0, 60, 1)}, transport.HandshakeV4Bits)
			floodSource(t, l, floor, func(i int) string { return fmt.Sprintf("127.0.60.%d", 1+i) })
			nodetest.Eventually(t, 10*time.Second, func() error {
				open, idle, busy := l.APIConns()
				want := map[string]int{"idle": idle, "stalled": busy - floor}[mode]
				if open != maxConns || want != sources*floor {
					return fmt.Errorf("%d connections open, %d idle, %d busy; want %d, %d of them %s", open, idle, busy, maxConns, sources*floor, mode)
				}
				return nil
			})
			start := time.Now()
			for i := range clients {
				nodetest.Eventually(t, 15*time.Second, func() error {
					return dialRaw(t, fmt.Sprintf("127.0.%d.1", 100+i), l.APIAddr()).status()
				})
				t.Logf("client %d of a new /24 served %v after the limit was full", i, time.Since(start).Round(time.Millisecond))
			}
			if open, _, _ := l.APIConns(); open != maxConns {
				t.Fatalf("%d connections open, want %d", open, maxConns)
			}
			if n := l.APIConnsOf(working); n != floor {
				t.Fatalf("the /24 of %d busy connections, at the fair share's floor, holds %d", floor, n)
			}
			lg.waitFor(t, 5*time.Second, "idle or stalled one", "--max-conns")
		})
	}
}
