package node_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// h2Conn is a raw HTTP/2 client connection to a node's client API, for
// sending frames no well-behaved client sends. It reads every frame the
// node sends, so the node's writes never stall, counts PING acks and
// replies, and notes a GOAWAY.
type h2Conn struct {
	net.Conn
	wmu     sync.Mutex    // serialises Write
	closed  chan struct{} // closed once the node closed the connection
	floods  sync.WaitGroup
	goAway  atomic.Pointer[h2GoAway]
	acks    atomic.Int64 // PING acks read
	replies atomic.Int64 // HEADERS frames read
	sent    atomic.Int64 // frames written by flood
}

// h2GoAway is a GOAWAY frame's error code and debug data.
type h2GoAway struct {
	code  uint32
	debug string
	at    time.Time // when it was read
}

// HTTP/2 frame types and flags the raw client sends.
const (
	h2Data, h2Headers, h2RSTStream, h2Settings, h2Ping, h2GoAwayType = 0, 1, 3, 4, 6, 7
	h2EndStream, h2Ack, h2EndHeaders                                 = 1, 1, 4
	h2EnhanceYourCalm                                                = 0xb
)

// dialH2 opens an HTTP/2 connection to addr: h2c, or over TLS with ALPN
// h2 if tlsCfg is set. It sends the preface and an empty SETTINGS frame.
func dialH2(t testing.TB, addr string, tlsCfg *tls.Config) *h2Conn {
	t.Helper()
	return dialH2With(t, &net.Dialer{Timeout: 5 * time.Second}, addr, tlsCfg)
}

// dialH2With is dialH2 through d (from its LocalAddr, say).
func dialH2With(t testing.TB, d *net.Dialer, addr string, tlsCfg *tls.Config) *h2Conn {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		cfg := tlsCfg.Clone()
		cfg.NextProtos = []string{"h2"}
		var tc *tls.Conn
		if tc, err = tls.DialWithDialer(d, "tcp", addr, cfg); err == nil {
			if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
				t.Fatalf("TLS to %s negotiated %q, want h2", addr, p)
			}
		}
		conn = tc
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	c := &h2Conn{Conn: conn, closed: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		conn.Close()
		ended := make(chan struct{})
		go func() {
			c.floods.Wait()
			<-c.closed
			close(ended)
		}()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Error("the raw HTTP/2 connection's reader or flood did not end")
		}
	})
	if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(h2Frame(nil, h2Settings, 0, 0, nil)); err != nil {
		t.Fatal(err)
	}
	return c
}

// read reads the node's frames until the connection ends: it acks the
// node's SETTINGS, and notes PING acks, HEADERS and a GOAWAY.
func (c *h2Conn) read() {
	defer close(c.closed)
	r := bufio.NewReader(c.Conn)
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			return
		}
		switch typ, flags := hdr[3], hdr[4]; {
		case typ == h2Settings && flags&h2Ack == 0:
			c.Write(h2Frame(nil, h2Settings, h2Ack, 0, nil))
		case typ == h2Ping && flags&h2Ack != 0:
			c.acks.Add(1)
		case typ == h2Headers:
			c.replies.Add(1)
		case typ == h2GoAwayType && len(payload) >= 8:
			c.goAway.Store(&h2GoAway{code: binary.BigEndian.Uint32(payload[4:8]), debug: string(payload[8:]), at: time.Now()})
		}
	}
}

// Write writes whole frames; concurrent writes do not interleave.
func (c *h2Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.Write(p)
}

// flood writes batch(0), batch(1)..., each of n frames, from a goroutine
// until the node sends GOAWAY or closes the connection, or d passes.
func (c *h2Conn) flood(batch func(i int) []byte, n int, d time.Duration) {
	c.floods.Go(func() { c.floodFor(batch, n, d) })
}

func (c *h2Conn) floodFor(batch func(i int) []byte, n int, d time.Duration) {
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		select {
		case <-c.closed:
			return
		default:
		}
		if c.goAway.Load() != nil {
			return
		}
		c.SetWriteDeadline(end)
		if _, err := c.Write(batch(i)); err != nil {
			return
		}
		c.sent.Add(int64(n))
	}
}

// h2Frame appends an HTTP/2 frame to b.
func h2Frame(b []byte, typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

// h2Request is the HPACK header block (no Huffman, no indexing) of a
// POST of the client API's method with a JSON body and the bearer token
// (none if empty).
func h2Request(scheme, method, token string) []byte {
	b := []byte{0x83} // :method POST
	if scheme == "https" {
		b = append(b, 0x87)
	} else {
		b = append(b, 0x86)
	}
	lit := func(b []byte, name []byte, value string) []byte {
		b = append(b, name...)
		return append(append(b, byte(len(value))), value...)
	}
	b = lit(b, []byte{0x01}, "x")                                  // :authority
	b = lit(b, []byte{0x04}, "/leasenode.v1.LeaseService/"+method) // :path
	b = lit(b, []byte{0x0f, 0x10}, "application/json")             // content-type
	if token != "" {
		b = lit(b, []byte{0x0f, 0x08}, "Bearer "+token) // authorization
	}
	return b
}

// budgetSetup is one way a trusted client reaches the client API over
// HTTP/2: h2c with the auth token, or TLS with a client certificate.
type budgetSetup struct {
	name   string
	tls    bool
	token  string
	scheme string
}

var budgetSetups = []budgetSetup{
	{name: "h2c with the token", token: "s3cret", scheme: "http"},
	{name: "TLS with a client certificate", tls: true, scheme: "https"},
}

// start starts a cluster of size nodes with their API as s needs, and
// returns it with the client TLS configuration (nil for h2c).
func (s budgetSetup) start(t testing.TB, size int, lg *logs, configure func(cfg *node.Config)) (*nodetest.Cluster, *tls.Config) {
	t.Helper()
	var ca *transporttest.CA
	if s.tls {
		ca = transporttest.NewCA(t)
	}
	c := nodetest.New(t, nodetest.Options{Size: size, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.AuthToken = s.token
		if ca != nil {
			cfg.TLSFiles = ca.Issue(t, cfg.ID, net.ParseIP("127.0.0.1"))
		}
		if lg != nil {
			cfg.Logger = lg.logger()
		}
		if configure != nil {
			configure(cfg)
		}
	}})
	if ca == nil {
		return c, nil
	}
	cfg, err := ca.IssueClient(t, "app").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c, cfg
}

// trusted opens a raw HTTP/2 connection to addr that has made a request
// the node answered, with the token if s has one.
func (s budgetSetup) trusted(t testing.TB, addr string, tlsCfg *tls.Config) *h2Conn {
	t.Helper()
	h := dialH2(t, addr, tlsCfg)
	req := h2Frame(nil, h2Headers, h2EndHeaders, 1, h2Request(s.scheme, "Status", s.token))
	if _, err := h.Write(h2Frame(req, h2Data, h2EndStream, 1, []byte("{}"))); err != nil {
		t.Fatal(err)
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		if h.replies.Load() == 0 {
			return errors.New("no reply to a request with the token yet")
		}
		return nil
	})
	return h
}

// closedForFrameRate waits until the node closed h, and checks that it
// said why first: GOAWAY ENHANCE_YOUR_CALM naming the limit.
func closedForFrameRate(t *testing.T, h *h2Conn) {
	t.Helper()
	select {
	case <-h.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("the node did not close the connection within 10 s (%d frames sent)", h.sent.Load())
	}
	g := h.goAway.Load()
	if g == nil {
		t.Fatalf("the node closed the connection after %d frames without a GOAWAY", h.sent.Load())
	}
	if g.code != h2EnhanceYourCalm || !strings.Contains(g.debug, "--max-frame-rate") {
		t.Fatalf("GOAWAY code %#x debug %q, want ENHANCE_YOUR_CALM (0xb) naming --max-frame-rate", g.code, g.debug)
	}
}

// status asks the node at addr for its status with a fresh client of
// setup s, and fails t unless it answers.
func (s budgetSetup) status(t *testing.T, addr string, tlsCfg *tls.Config) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	var opts []connect.ClientOption
	if s.token != "" {
		opts = append(opts, connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, r connect.AnyRequest) (connect.AnyResponse, error) {
				r.Header().Set("Authorization", "Bearer "+s.token)
				return next(ctx, r)
			}
		})))
	}
	api := pbconnect.NewLeaseServiceClient(&http.Client{Transport: tr, Timeout: 10 * time.Second}, s.scheme+"://"+addr, opts...)
	if _, err := api.Status(context.Background(), connect.NewRequest(&pb.StatusRequest{})); err != nil {
		t.Fatalf("a fresh client's Status: %v", err)
	}
}

// lowFrameRate sets a frame budget that a flood passes under the race
// detector too (a node built with it reads 10,000-odd frames a second on
// one connection on a 2-core machine, under the default budget).
func lowFrameRate(cfg *node.Config) { cfg.Limits.MaxFrameRate = 2000 }

// floodFrameRate sets a frame budget that a flood passes on a busy
// machine too: beside two busy loops a node read a rapid reset (a
// handler started for each HEADERS) slower than 2,000 frames a second,
// so the budget was never passed and the connection never closed.
func floodFrameRate(cfg *node.Config) { cfg.Limits.MaxFrameRate = 400 }

// A trusted client's HTTP/2 rapid reset (HEADERS then RST_STREAM, in a
// loop, on a connection that made a request with the token or has a
// client certificate) is cut after its burst: an outsider's made a
// leader step down 3 times. The node starts no more handlers than the
// budget lets frames through (its burst, and MaxFrameRate a second after
// it, where unbounded it started one for each of the tens of thousands
// of streams sent), sends GOAWAY ENHANCE_YOUR_CALM naming
// --max-frame-rate, counts a frame_rate refusal, logs it naming the flag
// and the frames, and serves a fresh client. Guards frame-budget.
func TestFrameBudgetClosesRapidReset(t *testing.T) {
	for _, s := range budgetSetups {
		t.Run(s.name, func(t *testing.T) {
			var lg logs
			var handlers atomic.Int64
			c, tlsCfg := s.start(t, 1, &lg, func(cfg *node.Config) {
				floodFrameRate(cfg)
				cfg.APIMiddleware = func(next http.Handler) http.Handler {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						handlers.Add(1)
						next.ServeHTTP(w, r)
					})
				}
			})
			_, l := c.Leader()
			lim := c.Config(0).Limits
			h := s.trusted(t, l.APIAddr(), tlsCfg)
			handlers.Store(0)

			block := h2Request(s.scheme, "Status", s.token)
			var b []byte
			start := time.Now()
			h.flood(func(i int) []byte {
				b = b[:0]
				for j := range 50 {
					id := uint32(3 + 2*(i*50+j))
					b = h2Frame(b, h2Headers, h2EndHeaders, id, block)
					b = h2Frame(b, h2RSTStream, 0, id, []byte{0, 0, 0, 8}) // CANCEL
				}
				return b
			}, 100, 20*time.Second)
			closedForFrameRate(t, h)
			el := h.goAway.Load().at.Sub(start)
			allowed := int64(node.FrameBurst(lim)) + int64(float64(lim.MaxFrameRate)*el.Seconds())
			if n := handlers.Load(); n > allowed {
				t.Errorf("the node started %d handlers in the %v before its GOAWAY, more than its frame budget lets through (%d frames)", n, el, allowed)
			} else {
				t.Logf("%d frames sent, %d handlers started in %v (budget %d frames) before the node's GOAWAY", h.sent.Load(), n, el.Round(time.Millisecond), allowed)
			}
			if n := refusals(t, l, node.PortAPI, "frame_rate"); n != 1 {
				t.Errorf("refusals for frame_rate: %d, want 1", n)
			}
			lg.waitFor(t, 5*time.Second, "HTTP/2 connection that sent more than", "--max-frame-rate", "headers=", "rst_stream=")
			s.status(t, l.APIAddr(), tlsCfg)
		})
	}
}

// A trusted client's PING flood is cut: 7.1 million PINGs on
// connections with the token stalled a cluster for up to 6.5 s. The node
// answers no more PINGs than the budget lets through (its burst, and
// MaxFrameRate a second after it). Guards frame-budget.
func TestFrameBudgetClosesPingFlood(t *testing.T) {
	for _, s := range budgetSetups {
		t.Run(s.name, func(t *testing.T) {
			var lg logs
			c, tlsCfg := s.start(t, 1, &lg, floodFrameRate)
			_, l := c.Leader()
			lim := c.Config(0).Limits
			h := s.trusted(t, l.APIAddr(), tlsCfg)

			ping := bytes.Repeat(h2Frame(nil, h2Ping, 0, 0, []byte("12345678")), 100)
			start := time.Now()
			h.flood(func(int) []byte { return ping }, 100, 20*time.Second)
			closedForFrameRate(t, h)
			el := h.goAway.Load().at.Sub(start)
			allowed := int64(node.FrameBurst(lim)) + int64(float64(lim.MaxFrameRate)*el.Seconds())
			if acks := h.acks.Load(); acks > allowed {
				t.Errorf("the node answered %d PINGs in the %v before its GOAWAY, more than its frame budget lets through (%d)", acks, el, allowed)
			} else {
				t.Logf("%d PINGs sent, %d answered in %v (budget %d) before the node's GOAWAY", h.sent.Load(), acks, el.Round(time.Millisecond), allowed)
			}
			if n := refusals(t, l, node.PortAPI, "frame_rate"); n != 1 {
				t.Errorf("refusals for frame_rate: %d, want 1", n)
			}
			lg.waitFor(t, 5*time.Second, "HTTP/2 connection that sent more than", "--max-frame-rate", "ping=")
			s.status(t, l.APIAddr(), tlsCfg)
		})
	}
}

// A heavy but well-behaved client is never cut with the default budget:
// lease.Client over TLS (HTTP/2, one connection until 256 streams are
// open) with 256 goroutines taking and releasing leases, others waiting
// for a held key and giving up (every give-up resets a stream), reading,
// and watching the keys; and raw h2c requests at 5,000 a second on one
// connection, about what one connection of a 2-core node serves at most
// (2 frames each: HEADERS and DATA); and a large reply read in small
// pieces. Guards frame-budget's margin.
func TestFrameBudgetSparesHeavyClient(t *testing.T) {
	t.Run("lease.Client over TLS", func(t *testing.T) {
		var lg logs
		c, tlsCfg := budgetSetups[1].start(t, 1, &lg, nil)
		_, l := c.Leader()
		cl, err := lease.Dial(context.Background(), []string{l.APIAddr()}, lease.WithTLS(tlsCfg))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close(context.Background())
		events, err := cl.Watch(t.Context(), "heavy/")
		if err != nil {
			t.Fatal(err)
		}
		held, err := cl.TryAcquire(context.Background(), "held")
		if err != nil || held == nil {
			t.Fatalf("TryAcquire held: %v %v", held, err)
		}
		other, err := lease.Dial(context.Background(), []string{l.APIAddr()}, lease.WithTLS(tlsCfg))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close(context.Background())

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var pairs, gaveUp, reads atomic.Int64
		errs := make(chan error, 512)
		var wg sync.WaitGroup
		for w := range 256 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					ls, err := cl.TryAcquire(ctx, fmt.Sprintf("heavy/%d/%d", w, i%8))
					if err != nil || ls == nil {
						if ctx.Err() == nil {
							errs <- fmt.Errorf("TryAcquire: %v %v", ls, err)
						}
						return
					}
					if err := ls.Release(context.Background()); err != nil {
						errs <- fmt.Errorf("Release: %v", err)
						return
					}
					pairs.Add(1)
				}
			})
		}
		for range 32 {
			wg.Go(func() {
				for ctx.Err() == nil {
					// Not granted: ErrTimeout, or an unknown outcome when
					// a slow node's answer missed the wait.
					if ls, err := other.AcquireTimeout(ctx, "held", 100*time.Millisecond); ls != nil || err == nil { // the shortest that waits
						errs <- fmt.Errorf("AcquireTimeout of a held key: %v %v", ls, err)
						return
					}
					gaveUp.Add(1)
				}
			})
		}
		for range 32 {
			wg.Go(func() {
				for ctx.Err() == nil {
					if _, err := cl.Get(ctx, "held"); err != nil && ctx.Err() == nil {
						errs <- fmt.Errorf("Get: %v", err)
						return
					}
					reads.Add(1)
				}
			})
		}
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-events:
				}
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		t.Logf("in 3 s: %d TryAcquire+Release, %d waits for a held key given up, %d Gets", pairs.Load(), gaveUp.Load(), reads.Load())
		if n := refusals(t, l, node.PortAPI, "frame_rate"); n != 0 {
			t.Fatalf("a heavy lease.Client was cut %d times for its frame rate: %q", n, lg.lines("--max-frame-rate"))
		}
		if !held.IsHealthy() {
			t.Fatal("the lease held throughout was lost")
		}
	})

	// Reading a large reply in small pieces sends two WINDOW_UPDATEs per
	// 4 KiB read (Go's client): a 64 MiB reply read 4 KiB at a time was
	// cut after 7 MB when they counted.
	t.Run("a 64 MiB reply over TLS read 4 KiB at a time", func(t *testing.T) {
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		c, tlsCfg := budgetSetups[1].start(t, 1, nil, func(cfg *node.Config) {
			cfg.HTTPHandlers = map[string]http.Handler{"/big": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for range 64 {
					w.Write(chunk)
				}
			})}
		})
		_, l := c.Leader()
		tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		start := time.Now()
		resp, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Get("https://" + l.APIAddr() + "/big")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("answered in HTTP/%d, want HTTP/2", resp.ProtoMajor)
		}
		buf := make([]byte, 4<<10)
		var got int64
		for {
			n, err := resp.Body.Read(buf)
			got += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", got, err)
			}
		}
		el := time.Since(start)
		t.Logf("%d MiB in %v (%.0f MB/s)", got>>20, el.Round(time.Millisecond), float64(got)/1e6/el.Seconds())
		if got != 64<<20 {
			t.Fatalf("read %d bytes, want 64 MiB", got)
		}
		if n := refusals(t, l, node.PortAPI, "frame_rate"); n != 0 {
			t.Fatalf("cut %d times for its frame rate", n)
		}
	})

	t.Run("raw h2c requests at 5,000 a second", func(t *testing.T) {
		s := budgetSetups[0]
		c, _ := s.start(t, 1, nil, nil)
		_, l := c.Leader()
		var dials atomic.Int32
		tr := &http.Transport{Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		dial := (&net.Dialer{Timeout: 5 * time.Second}).DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, network, addr)
		}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

		status := func() error {
			req, _ := http.NewRequest("POST", "http://"+l.APIAddr()+"/leasenode.v1.LeaseService/Status", strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+s.token)
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
				return fmt.Errorf("status: HTTP/%d %d", resp.ProtoMajor, resp.StatusCode)
			}
			return nil
		}
		if err := status(); err != nil { // one connection, before the load
			t.Fatal(err)
		}

		const rate, d = 5000, 2 * time.Second
		tick := make(chan struct{}, 256)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() { // 5 requests every millisecond
			defer close(tick)
			tk := time.NewTicker(time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
				}
				for range rate / 1000 {
					select {
					case tick <- struct{}{}:
					default: // the node is behind: no more in flight
					}
				}
			}
		})
		var done atomic.Int64
		errs := make(chan error, 128)
		for range 128 {
			wg.Go(func() {
				for range tick {
					if err := status(); err != nil {
						errs <- err
						return
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		t.Logf("%d requests in %v on %d connection(s)", done.Load(), d, dials.Load())
		if n := dials.Load(); n != 1 {
			t.Errorf("the requests went on %d connections, want them all on one", n)
		}
		if n := refusals(t, l, node.PortAPI, "frame_rate"); n != 0 {
			t.Fatalf("raw requests at %d a second were cut %d times for their frame rate", rate, n)
		}
	})
}
