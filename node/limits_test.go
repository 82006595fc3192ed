package node_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// post sends one Connect-protocol JSON request with body and returns the
// HTTP status and the reply.
func post(t *testing.T, addr, method string, body io.Reader, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+"/leasenode.v1.LeaseService/"+method, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// endless is a body of n bytes that is never held in memory; read counts
// what the HTTP client took from it (its writer may still run after the
// reply came back).
type endless struct {
	n    int64
	read atomic.Int64
}

func (e *endless) Read(p []byte) (int, error) {
	r := e.read.Load()
	if r >= e.n {
		return 0, io.EOF
	}
	k := min(int64(len(p)), e.n-r)
	for i := range p[:k] {
		p[i] = 'a'
	}
	e.read.Add(k)
	return int(k), nil
}

func heapMB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapInuse) / (1 << 20)
}

// Bounded inputs (trust model): every oversized request is refused with
// the limit's name, the node's memory stays within a small multiple of
// the limit, and the cluster keeps serving.
func TestAPIInputsAreBounded(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.ReadTimeout = time.Second
	}})
	_, l := c.Leader()
	_, f := c.Follower()
	base := heapMB()

	t.Run("wrong Content-Type", func(t *testing.T) {
		for _, ct := range []string{"text/plain", "application/json; charset=utf-16"} {
			code, out := post(t, l.APIAddr(), "Status", strings.NewReader("{}"), http.Header{"Content-Type": {ct}})
			if code != http.StatusUnsupportedMediaType || !strings.Contains(out, "send application/json") {
				t.Errorf("%s: %d %q; want 415 saying what to send", ct, code, out)
			}
		}
		if code, out := post(t, l.APIAddr(), "Status", strings.NewReader("{}"), http.Header{"Content-Type": {"application/json; charset=UTF-8"}}); code != http.StatusOK {
			t.Errorf("application/json; charset=UTF-8: %d %q", code, out)
		}
	})

	t.Run("100 MB body", func(t *testing.T) {
		body := &endless{n: 100 << 20}
		code, out := post(t, l.APIAddr(), "Acquire", body, nil)
		if code == 0 && strings.Contains(out, "connection reset") && body.read.Load() <= 64<<20 {
			// The node answered and closed with the rest unread; on a
			// busy machine the client, still writing, can see the reset
			// before it reads the answer. The bound held.
			t.Logf("100 MB body: reset after %d MB sent, before the answer was read", body.read.Load()>>20)
			return
		}
		if code == http.StatusGatewayTimeout && strings.Contains(out, "deadline_exceeded") && body.read.Load() <= 64<<20 {
			// The test's 1 s ReadTimeout ran out before the client, on a
			// busy machine (-race beside two busy loops), had sent the
			// 4 MiB the limit needs: refused, with the bound held.
			t.Logf("100 MB body: read timeout after %d MB sent, before the limit was reached", body.read.Load()>>20)
			return
		}
		if code == http.StatusOK || body.read.Load() > 64<<20 || !strings.Contains(out, "--max-request-bytes") {
			t.Fatalf("a 100 MB body: status %d after the node read %d MB: %s", code, body.read.Load()>>20, out)
		}
		t.Logf("100 MB body: status %d after %d MB sent: %.100s", code, body.read.Load()>>20, out)
	})
	t.Run("gzip bomb", func(t *testing.T) {
		var z bytes.Buffer
		w := gzip.NewWriter(&z)
		fmt.Fprint(w, `{"key":"`)
		io.Copy(w, &endless{n: 16 << 20})
		fmt.Fprint(w, `"}`)
		w.Close()
		code, out := post(t, l.APIAddr(), "Acquire", &z, http.Header{"Content-Encoding": {"gzip"}})
		// Refused before a byte is inflated (a 10 KB body decoded to
		// 4 MiB paid as one request: outsider review s33).
		if code == http.StatusOK || !strings.Contains(out, "invalid_argument") || !strings.Contains(out, "compressed request bodies") {
			t.Fatalf("%d KB of gzip inflating to 16 MB: status %d: %s", z.Len()>>10, code, out)
		}
	})
	t.Run("extend items", func(t *testing.T) {
		req := &pb.ExtendRequest{Holder: "h"}
		for i := range 10_001 {
			req.Items = append(req.Items, &pb.ExtendItem{Key: fmt.Sprint("k", i), Token: 1})
		}
		_, err := f.Extend(ctxT(t, 10*time.Second), req)
		if err == nil || !strings.Contains(err.Error(), "--max-extend-items") {
			t.Fatalf("extend of 10,001 leases: %v", err)
		}
	})
	t.Run("ttl", func(t *testing.T) {
		_, err := f.Acquire(ctxT(t, 10*time.Second), &pb.AcquireRequest{Key: "k", Holder: "h", RequestId: 1, Ttl: durationpb.New(time.Nanosecond)})
		if err == nil || !strings.Contains(err.Error(), "--min-ttl") {
			t.Fatalf("a 1 ns TTL: %v", err)
		}
	})
	t.Run("ttl in JSON", func(t *testing.T) {
		// protojson refuses "100000h" before the API sees the TTL: the
		// refusal says how JSON durations are written and their limit
		// (outsider review #7: it said only "invalid
		// google.protobuf.Duration value").
		for _, ct := range []string{"application/json", "application/json; charset=utf-8"} {
			code, out := post(t, l.APIAddr(), "Acquire", strings.NewReader(`{"key":"k","holder":"h","requestId":"1","ttl":"100000h"}`),
				http.Header{"Content-Type": {ct}})
			if code != http.StatusBadRequest || !strings.Contains(out, "invalid_argument") || !strings.Contains(out, `seconds with an \"s\" suffix`) ||
				!strings.Contains(out, "at most 24h") {
				t.Errorf("a TTL of \"100000h\" as %s: status %d: %s; want invalid_argument saying JSON durations are seconds and the 24 h limit", ct, code, out)
			}
		}
		// A well-formed one still reaches the API's range check.
		code, out := post(t, l.APIAddr(), "Acquire", strings.NewReader(`{"key":"k","holder":"h","requestId":"1","ttl":"360000000s"}`), nil)
		if code != http.StatusBadRequest || !strings.Contains(out, "at most 24h0m0s") {
			t.Errorf(`a TTL of "360000000s": status %d: %s; want the range check's refusal`, code, out)
		}
	})
	t.Run("list limit", func(t *testing.T) {
		value := bytes.Repeat([]byte("v"), 60<<10)
		for i := range 40 {
			mustGrant(t, l, &pb.AcquireRequest{Key: fmt.Sprintf("big/%02d", i), Holder: "h", RequestId: uint64(i + 1),
				Ttl: durationpb.New(time.Minute), Value: value})
		}
		cl := pbconnect.NewLeaseServiceClient(http.DefaultClient, "http://"+f.APIAddr())
		after, pages, got := "", 0, 0
		for {
			var resp *connect.Response[pb.ListResponse]
			// A leader change on a busy machine answers Unavailable: ask
			// again, as a client does.
			nodetest.Eventually(t, 20*time.Second, func() error {
				var err error
				resp, err = cl.List(ctxT(t, 10*time.Second), connect.NewRequest(&pb.ListRequest{Prefix: "big/", After: after, Limit: 1<<31 - 1}))
				if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
					t.Fatalf("List with limit 2^31-1 through a follower: %v", err)
				}
				return err
			})
			pages++
			got += len(resp.Msg.Leases)
			if after = resp.Msg.Next; after == "" {
				break
			}
		}
		if got != 40 || pages < 3 {
			t.Fatalf("%d leases in %d pages; want all 40 in pages of at most 1 MiB", got, pages)
		}
	})
	t.Run("slow body", func(t *testing.T) {
		conn, err := net.Dial("tcp", l.APIAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /leasenode.v1.LeaseService/Acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		go trickle(conn, 200*time.Millisecond, stop) // until the node hangs up
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		// The node answers at its read timeout and closes the connection:
		// what is left of the body must never be read as a next request
		// (nor keep the connection for another header timeout).
		r := bufio.NewReader(conn)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("no answer to a body sent a byte at a time: %v", err)
		}
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		answered := time.Since(start)
		// The answer names the read limit, not a bare "i/o timeout"
		// (outsider review #7).
		if !strings.Contains(string(answer), "request body not received within 1s") || strings.Contains(string(answer), "i/o timeout") {
			t.Errorf("answer to a body sent a byte at a time: %d %s; want it to name the 1 s read limit", resp.StatusCode, answer)
		}
		// Hung up: an EOF, or a reset when the writer's next byte reached
		// the closed socket before this read (the test's own doing).
		if _, err := r.ReadByte(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) || !resp.Close {
			t.Fatalf("after answering %d, the node kept the connection (Connection: close %v, read %v)", resp.StatusCode, resp.Close, err)
		}
		if answered > 5*time.Second {
			t.Fatalf("a body sent a byte at a time was read for %v (ReadTimeout 1 s)", answered)
		}
	})
	t.Run("cluster still serves", func(t *testing.T) {
		mustGrant(t, l, acq("after", "h2", 1, time.Minute))
	})
	if grew := heapMB() - base; grew > 64 {
		t.Fatalf("heap grew by %.0f MB across the oversized requests (limit 4 MiB)", grew)
	}
	t.Logf("heap grew by %.1f MB", heapMB()-base)
}

// The auth token is checked before a byte of the body is read, and the
// scheme is case-insensitive.
func TestAuthBeforeBody(t *testing.T) {
	l := tokenNode(t)
	body := &endless{n: 100 << 20}
	code, out := post(t, l.APIAddr(), "Acquire", body, nil)
	if code == 0 && body.read.Load() <= 8<<20 && (strings.Contains(out, "connection reset") || strings.Contains(out, "broken pipe")) {
		// The node answered 401 and closed while the client was still
		// writing the body: on a busy machine the client may see the reset
		// before it reads the answer. Nothing more was read: refused before
		// the body. The answer itself, with a body that fits in a write:
		code, out = post(t, l.APIAddr(), "Acquire", strings.NewReader("{}"), nil)
	}
	if code != http.StatusUnauthorized || body.read.Load() > 8<<20 || !strings.Contains(out, "--auth-token") {
		t.Fatalf("no token: status %d after reading %d MB: %s", code, body.read.Load()>>20, out)
	}
	for _, h := range []string{"Bearer s3cret", "bearer s3cret", "BEARER  s3cret"} {
		code, out := post(t, l.APIAddr(), "Status", strings.NewReader("{}"), http.Header{"Authorization": {h}})
		if code != http.StatusOK {
			t.Fatalf("Authorization %q: %d %s", h, code, out)
		}
		var st map[string]any
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := lease.Dial(ctxT(t, 5*time.Second), []string{l.APIAddr()}, lease.WithAuthToken("wrong"))
	if err == nil {
		cl.Close(context.Background())
		t.Fatal("a wrong token was accepted")
	}
}

// EnablePprof serves the runtime's profiles behind the auth token, and
// nothing without it.
func TestPprofBehindToken(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.AuthToken = "s3cret"
		cfg.EnablePprof = i == 0
	}})
	addr := c.Node(0).APIAddr()
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(node.PprofPath+"heap", ""); code != http.StatusUnauthorized {
		t.Fatalf("heap profile without the token: %d, want 401", code)
	}
	if code, body := get(node.PprofPath+"goroutine?debug=1", "s3cret"); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("goroutine profile: %d %.200q", code, body)
	}
	if code, body := get(node.PprofPath+"profile?seconds=1", "s3cret"); code != 200 || len(body) == 0 {
		t.Fatalf("cpu profile: %d, %d bytes", code, len(body))
	}
	if code, body := get(node.PprofPath, "s3cret"); code != 200 || !strings.Contains(body, "heap") {
		t.Fatalf("index: %d %.200q", code, body)
	}
}

// Without EnablePprof there is no profiler.
func TestPprofOffByDefault(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true})
	resp, err := http.Get("http://" + c.Node(0).APIAddr() + node.PprofPath + "heap")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("heap profile with EnablePprof off: %d, want 404", resp.StatusCode)
	}
}

// Connections that made a request and then sit idle (kept alive) cannot
// lock other clients out of the API until IdleTimeout: at MaxConns, the
// connection idle longest makes room. A body declared larger than the
// limit is refused before a byte of it is read.
func TestAPIIdleConnectionsMakeRoom(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxConns = 8
		cfg.Limits.IdleTimeout = time.Hour
	}})
	_, l := c.Leader()
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 8 {
		conn, err := net.Dial("tcp", l.APIAddr())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, conn)
		fmt.Fprintf(conn, "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("status on connection %d: %v", len(idle), err)
		}
		resp.Body.Close()
	}
	// Every slot is taken by a connection idle between requests.
	start := time.Now()
	if code, out := post(t, l.APIAddr(), "Status", strings.NewReader("{}"), nil); code != http.StatusOK {
		t.Fatalf("status with %d idle connections open: %d %s", len(idle), code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("status waited %v for a slot held by idle connections", d)
	}

	conn, err := net.Dial("tcp", l.APIAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /leasenode.v1.LeaseService/Acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 1<<30)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a body declared 1 GiB was not refused at once: %v", err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || !strings.Contains(string(b), "--max-request-bytes") {
		t.Fatalf("a body declared 1 GiB: %d %s", resp.StatusCode, b)
	}
}

// Connections that never send a byte cannot lock clients out of the API
// either (an outsider's 1,100 made a Get take 2.35 s on average, 7.75 s at
// worst: each held its slot for the 10 s read timeout, and the attacker
// reconnected). At MaxConns a new connection takes the place of the one
// silent longest, and each must send its first request within about two
// seconds.
func TestAPISilentConnectionsMakeRoom(t *testing.T) {
	var lg logs
	const maxConns = 8
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxConns = maxConns
		cfg.Limits.IdleTimeout = time.Hour
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	start := time.Now()
	for range maxConns + 8 {
		conn, err := net.DialTimeout("tcp", l.APIAddr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, conn)
	}
	// Every slot is taken by a connection that has sent nothing, and more
	// wait behind them.
	hc := &http.Client{Timeout: 6 * time.Second}
	req, err := http.NewRequest("POST", "http://"+l.APIAddr()+"/leasenode.v1.LeaseService/Status", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("status with %d silent connections open: %v after %v", len(silent), err, time.Since(start))
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status with %d silent connections open: %d", len(silent), resp.StatusCode)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("status waited %v for a slot held by silent connections", d)
	} else {
		t.Logf("status answered after %v with %d silent connections open", d.Round(time.Millisecond), len(silent))
	}
	// The node closes each silent connection: to make room, or at its
	// first request's deadline.
	errs := make(chan error, len(silent))
	for _, conn := range silent {
		go func() { errs <- closedByNode(conn) }()
	}
	for range silent {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("silent connections still open after 15 s")
		}
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("the node closed the last of %d silent connections after %v, want about 2 s after each was admitted", len(silent), d)
	} else {
		t.Logf("the node closed the last of %d silent connections after %v", len(silent), d.Round(time.Millisecond))
	}
	if got := lg.lines("client API at its connection limit", "sent no request yet", "--max-conns"); len(got) != 1 {
		t.Errorf("connection-limit warnings about silent connections: %q, want 1", got)
	}
}

// closedByNode reads conn until the node closes it, and says so if it
// does not within 10 s.
func closedByNode(conn net.Conn) error {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("the node did not close the connection within 10 s")
	}
	return nil
}

// goAwayCode reads the HTTP/2 frames a server sends on conn until it
// closes conn, and returns the error code of its last GOAWAY frame (-1 if
// none came); an error if it was not closed within 10 s.
func goAwayCode(conn net.Conn) (int64, error) {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	code := int64(-1)
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return code, errors.New("the node did not close the connection within 10 s")
			}
			return code, nil
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			return code, nil
		}
		if hdr[3] == 7 && len(payload) >= 8 { // GOAWAY: last stream id, error code
			code = int64(binary.BigEndian.Uint32(payload[4:8]))
		}
	}
}

// net/http logs one line per connection that breaks HTTP/2 (the h2c
// preface and a broken HEADERS frame, in a loop, made 55,000 lines, 9 MB,
// in 20 s): the API's error log is limited at every level, one line of a
// kind per 10 s.
func TestAPIBrokenHTTP2FloodLogsBounded(t *testing.T) {
	var lg logs
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()
	// The h2c preface, an empty SETTINGS frame, and a HEADERS frame whose
	// header block is an index past HPACK's tables.
	garbage := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	garbage = append(garbage, 0, 0, 0, 4, 0, 0, 0, 0, 0)
	garbage = append(garbage, 0, 0, 1, 1, 5, 0, 0, 0, 1, 0xfe)
	// At once: the node holds each for a second after its GOAWAY.
	const n = 200
	errs := make(chan error, n)
	for range n {
		go func() {
			conn, err := net.DialTimeout("tcp", l.APIAddr(), 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			if _, err := conn.Write(garbage); err != nil {
				errs <- err
				return
			}
			errs <- closedByNode(conn)
		}()
	}
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("broken HTTP/2 connections still open after 30 s")
		}
	}
	if got := lg.lines("COMPRESSION_ERROR"); len(got) != 1 {
		t.Errorf("%d broken HTTP/2 connections logged %d lines, want 1: %.3000q", n, len(got), got)
	}
	if got := lg.lines("component=node.api"); len(got) > 2 {
		t.Errorf("%d broken HTTP/2 connections: node.api logged %d lines: %.3000q", n, len(got), got)
	}
}

// The cluster's state is bounded, as etcd's backend quota bounds its:
// past MaxLeases or MaxLeaseBytes the leader refuses new holdings, naming
// the limit, while renewals, extends and releases go on, so it drains.
func TestStateQuota(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxLeases = 3
		cfg.Limits.MaxLeaseBytes = 200
	}})
	_, l := c.Leader()
	_, f := c.Follower()
	var grants []*pb.AcquireResponse
	for i := range 3 {
		grants = append(grants, mustGrant(t, l, acq(fmt.Sprint("q", i), "h", 1, time.Minute)))
	}
	_, err := f.Acquire(ctxT(t, 10*time.Second), acq("q3", "h", 1, time.Minute))
	if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "--max-leases 3") {
		t.Fatalf("a fourth lease past MaxLeases 3: %v", err)
	}
	// The holder's own: a retry of its grant, its extend.
	if r, err := f.Acquire(ctxT(t, 10*time.Second), acq("q0", "h", 1, time.Minute)); err != nil || !r.Granted || r.Token != grants[0].Token {
		t.Fatalf("retry of a grant in a full cluster: %v %v", r, err)
	}
	if r, err := f.Extend(ctxT(t, 10*time.Second), &pb.ExtendRequest{Holder: "h", Items: []*pb.ExtendItem{{Key: "q1", Token: grants[1].Token}}}); err != nil || !r.Results[0].Ok {
		t.Fatalf("extend in a full cluster: %v %v", r, err)
	}
	if _, err := f.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: "q2", Holder: "h", Token: grants[2].Token}); err != nil {
		t.Fatal(err)
	}
	q3 := mustGrant(t, f, acq("q3", "h", 2, time.Minute))
	if _, err := f.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: "q3", Holder: "h", Token: q3.Token}); err != nil {
		t.Fatal(err)
	}

	// Bytes: at most 200 of keys, holders and values, and of the marks
	// of ended leases' keys and holders; q0 and q1 hold 6, the marks of
	// q2 and q3 another 6.
	if st := l.FSM().Stats(); st.Bytes != 6 || st.MarkBytes != 6 {
		t.Fatalf("Stats %+v, want 6 bytes of leases and 6 of marks", st)
	}
	big := acq("q4", "h", 1, time.Minute)
	big.Value = make([]byte, 186)
	if r, err := f.Acquire(ctxT(t, 10*time.Second), big); !errors.Is(err, node.ErrInvalid) ||
		!strings.Contains(err.Error(), "--max-lease-bytes 200") || !strings.Contains(err.Error(), "6 of keys and holders of request ids") {
		t.Fatalf("a value past MaxLeaseBytes: %v %v", r, err)
	}
	big.Value = big.Value[:185]
	mustGrant(t, f, big)
}

// A refusal at --max-lease-bytes is a size limit: the client API answers
// it resource_exhausted, as the README says of size limits (it answered
// invalid_argument, found by an outsider's review), through the leader
// and through a follower that forwarded it, naming the flag, while its
// wire reason stays REASON_INVALID (clients take it as final). A refusal
// at --max-leases, a count, stays invalid_argument.
func TestStateQuotaCodesOnTheAPI(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxLeases = 1
		cfg.Limits.MaxLeaseBytes = 100
	}})
	_, l := c.Leader()
	_, f := c.Follower()
	refusal := func(n *node.Node, req *pb.AcquireRequest) (connect.Code, pb.Reason, string) {
		t.Helper()
		cl := pbconnect.NewLeaseServiceClient(&http.Client{Timeout: 10 * time.Second}, "http://"+n.APIAddr())
		_, err := cl.Acquire(ctxT(t, 10*time.Second), connect.NewRequest(req))
		var ce *connect.Error
		if !errors.As(err, &ce) {
			t.Fatalf("acquire %q: %v, want a refusal", req.Key, err)
		}
		return ce.Code(), reasonOf(err), ce.Message()
	}
	big := acq("b", "h", 1, time.Minute)
	big.Value = make([]byte, 100)
	for name, n := range map[string]*node.Node{"leader": l, "follower": f} {
		code, reason, msg := refusal(n, big)
		if code != connect.CodeResourceExhausted || reason != pb.Reason_REASON_INVALID || !strings.Contains(msg, "--max-lease-bytes 100") {
			t.Errorf("past MaxLeaseBytes through the %s: %v, reason %v, %q; want resource_exhausted, REASON_INVALID, naming --max-lease-bytes", name, code, reason, msg)
		}
	}
	mustGrant(t, l, acq("a", "h", 1, time.Minute))
	for name, n := range map[string]*node.Node{"leader": l, "follower": f} {
		code, reason, msg := refusal(n, acq("c", "h", 1, time.Minute))
		if code != connect.CodeInvalidArgument || reason != pb.Reason_REASON_INVALID || !strings.Contains(msg, "--max-leases 1") {
			t.Errorf("past MaxLeases through the %s: %v, reason %v, %q; want invalid_argument naming --max-leases", name, code, reason, msg)
		}
	}
}

// A churn of acquires and releases of new keys holds no lease for long,
// but each leaves a request-id mark for MarkRetention: with long keys
// they would pass any bound but the FSM's MaxMarks count (2^20 marks of
// 1.3 KiB), so the byte quota counts them.
func TestStateQuotaCountsMarks(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxLeaseBytes = 64 << 10
	}})
	_, l := c.Leader()
	holder := strings.Repeat("h", fsm.MaxHolderLen)
	for i := 0; ; i++ {
		key := fmt.Sprintf("%04d%s", i, strings.Repeat("k", fsm.MaxKeyLen-4))
		r, err := l.Acquire(ctxT(t, 10*time.Second), acq(key, holder, 1, time.Minute))
		if errors.Is(err, node.ErrInvalid) && strings.Contains(err.Error(), "request ids") {
			if st := l.FSM().Stats(); st.Held != 0 || st.Bytes+st.MarkBytes > 64<<10 {
				t.Fatalf("refused with Stats %+v", st)
			}
			return
		}
		if err != nil || !r.Granted {
			t.Fatalf("acquire %d: %v %v", i, r, err)
		}
		if _, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: key, Holder: holder, Token: r.Token}); err != nil {
			t.Fatal(err)
		}
		if i > 100 {
			t.Fatalf("%d leases acquired and released under MaxLeaseBytes 64 KiB, with 1.3 KiB marks: Stats %+v", i, l.FSM().Stats())
		}
	}
}

// The quota counts what the leader admitted and has not applied yet, so
// concurrent acquires and waiters proposed together cannot overshoot it;
// a holder adding keys to its own, or a larger value, is counted too.
func TestStateQuotaCountsWhatIsInFlight(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxLeases = 3
		cfg.Limits.MaxLeaseBytes = 1 << 20
	}})
	_, l := c.Leader()
	held := func() int { st := l.FSM().Stats(); return st.Held + st.Delayed }

	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Acquire(ctxT(t, 10*time.Second), acq(fmt.Sprint("c", i), "h", 1, time.Minute))
		}()
	}
	wg.Wait()
	if n := held(); n > 3 {
		t.Fatalf("30 concurrent acquires under MaxLeases 3 left %d leases", n)
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		leases, _ := l.FSM().List("", "", 0)
		for _, lease := range leases {
			if _, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: lease.Key, Holder: lease.Holder, Token: lease.Token}); err != nil {
				return err
			}
		}
		if n := held(); n != 0 {
			return fmt.Errorf("%d leases left", n)
		}
		return nil
	})

	// Waiters are counted when their turn comes: ten shared readers
	// queue behind a writer; when it releases, the three the quota has
	// room for (the writer's holding among them) are granted together and
	// the other seven are refused then, naming the limit.
	w := mustGrant(t, l, acq("rw", "writer", 1, time.Minute))
	var granted, refused atomic.Int64
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := shapedAcq("rw", fmt.Sprint("reader", i), 1, shared, 0)
			r.Wait = true
			resp, err := l.Acquire(ctxT(t, 5*time.Second), r)
			switch {
			case err == nil && resp.Granted:
				granted.Add(1)
			case errors.Is(err, node.ErrInvalid) && strings.Contains(err.Error(), "--max-leases 3"):
				refused.Add(1)
			default:
				t.Errorf("reader %d: %v %v", i, resp, err)
			}
		}()
	}
	waitWaiters(t, l, 10)
	if _, err := l.Release(ctxT(t, 10*time.Second), &pb.ReleaseRequest{Key: "rw", Holder: "writer", Token: w.Token}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n := held(); n > 3 || granted.Load() != 3 || refused.Load() != 7 {
		t.Fatalf("readers granted %d, refused %d, %d leases; want 3, 7 and at most 3", granted.Load(), refused.Load(), n)
	}

	// A holder's own key does not carry new ones past the quota.
	own := l.FSM().Holdings("rw")[0]
	set := shapedAcq("rw", own.Holder, 2, shared, 0, &pb.AcquireItem{Key: "new1"}, &pb.AcquireItem{Key: "new2"})
	if _, err := l.Acquire(ctxT(t, 10*time.Second), set); !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "--max-leases") {
		t.Fatalf("a set adding two keys to a held one, in a full cluster: %v", err)
	}

	// Callers that give up while their entry is in flight leave their
	// share reserved until it is applied: the grants they leave behind,
	// withdrawn after, never take the state past the quota.
	for _, h := range l.FSM().Holdings("rw") {
		mustReleaseToken(t, l, h.Key, h.Holder, h.Token)
	}
	var peak atomic.Int64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), int64(held())))
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Microsecond):
			}
		}
	}()
	for round := range 3 {
		for i := range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(100+i*(10+round*10))*time.Microsecond)
				defer cancel()
				l.Acquire(ctx, acq(fmt.Sprint("lost/", round, "/", i), fmt.Sprint("h", i), 1, time.Hour))
			}()
		}
		wg.Wait()
		nodetest.Eventually(t, 20*time.Second, func() error {
			if _, pending := l.Withdrawals(); pending != 0 {
				return fmt.Errorf("%d lost outcomes pending", pending)
			}
			return nil
		})
		// What is left was granted before its caller's deadline.
		leases, _ := l.FSM().List("lost/", "", 0)
		for _, h := range leases {
			mustReleaseToken(t, l, h.Key, h.Holder, h.Token)
		}
	}
	close(stop)
	<-sampled
	if p := peak.Load(); p > 3 {
		t.Fatalf("callers giving up took the state to %d leases under MaxLeases 3", p)
	}
}

// A watcher that does not read is reset once its backlog passes a bound
// in bytes, not only in events: with 60 KiB values, 65,536 events were
// 4 GB held for one stalled watcher.
func TestStalledWatcherIsResetByBytes(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, l := c.Leader()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := l.Watch(ctx, &pb.WatchRequest{Prefix: "big/"})
	if err != nil {
		t.Fatal(err)
	}
	value := make([]byte, 60<<10)
	const pairs = 400 // 800 events, 24 MB of values: past 16 MiB
	for i := range pairs {
		r := acq(fmt.Sprint("big/", i), "h", 1, time.Minute)
		r.Value = value
		g := mustGrant(t, l, r)
		mustReleaseToken(t, l, r.Key, "h", g.Token)
	}
	n := 0
	for {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatalf("the stream ended after %d events without RESET", n)
			}
			if e.Type == pb.EventType_EVENT_TYPE_RESET {
				if n >= 2*pairs {
					t.Fatalf("RESET after all %d events", n)
				}
				t.Logf("RESET after %d of %d events", n, 2*pairs)
				return
			}
			n++
		case <-time.After(10 * time.Second):
			t.Fatalf("no RESET after %d events", n)
		}
	}
}

// Watchers that stopped reading do not get others reset: the events they
// hold are counted once however many hold them, and past the hub's bound
// the largest backlogs are reset (and dropped), not whoever comes next.
func TestStalledWatchersDoNotResetOthers(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, l := c.Leader()
	stall, cancelStall := context.WithCancel(context.Background())
	defer cancelStall()
	for range 20 {
		if _, err := l.Watch(stall, &pb.WatchRequest{Prefix: "s/"}); err != nil {
			t.Fatal(err)
		}
	}
	value := make([]byte, 60<<10)
	for i := range 320 { // 19 MiB of events, held by 20 watchers
		r := acq(fmt.Sprint("s/", i), "h", 1, time.Hour)
		r.Value = value
		mustGrant(t, l, r)
	}
	for i := range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		events, err := l.Watch(ctx, &pb.WatchRequest{Prefix: "other/"})
		if err != nil {
			t.Fatal(err)
		}
		r := acq(fmt.Sprint("other/", i), "h", 1, time.Hour)
		r.Value = value
		mustGrant(t, l, r)
		select {
		case e := <-events:
			if e.GetType() != pb.EventType_EVENT_TYPE_GRANTED {
				t.Fatalf("a watcher of another prefix, with nothing queued, got %v first", e.GetType())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		cancel()
	}
}

// A watch's initial listing, sent page by page to a slow reader, neither
// repeats a lease granted meanwhile (its queued GRANTED event carries it)
// nor states more time left than a lease has.
func TestWatchListingOfASlowReader(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1})
	_, l := c.Leader()
	const ttl = 10 * time.Second
	for i := range 200 {
		mustGrant(t, l, acq(fmt.Sprintf("w/%03d", i), "h", 1, ttl))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := l.Watch(ctx, &pb.WatchRequest{Prefix: "w/", Initial: true})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is read yet: the listing waits after its first events.
	mustGrant(t, l, acq("w/late", "h", 1, ttl))
	mustGrant(t, l, acq("w/zzz-marker", "h", 1, ttl))
	late := 0
	for n := 0; ; n++ {
		select {
		case e := <-events:
			if rem := e.GetLease().GetRemaining().AsDuration(); rem > ttl {
				t.Fatalf("%s listed with %v left, TTL %v", e.GetLease().GetKey(), rem, ttl)
			}
			switch e.GetLease().GetKey() {
			case "w/late":
				late++
			case "w/zzz-marker":
				if late != 1 {
					t.Fatalf("w/late sent %d times", late)
				}
				if n != 201 {
					t.Fatalf("%d events before the marker, want the 200 listed and w/late", n)
				}
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the stream stalled")
		}
	}
}

// Watches open on a node are bounded (an outsider with the token opened
// 15,379 on a leader: 30 -> 529 MB, 27,000 goroutines, two lost
// leaderships): past MaxWatches a Watch is refused resource_exhausted,
// naming --max-watches, and a watch that ends makes room for another.
func TestWatchesAreBounded(t *testing.T) {
	const max = 4
	var lg logs
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWatches = max
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()
	cl := pbconnect.NewLeaseServiceClient(&http.Client{}, "http://"+l.APIAddr())
	// watch opens a stream and waits for its first message: its headers
	// (the node sends them once the watch is registered) or its refusal.
	watch := func(ctx context.Context) error {
		s, err := cl.Watch(ctx, connect.NewRequest(&pb.WatchRequest{Prefix: "w/"}))
		if err != nil {
			return err
		}
		got := make(chan error, 1)
		go func() { s.Receive(); got <- s.Err() }()
		mustGrant(t, l, acq(fmt.Sprint("w/", time.Now().UnixNano()), "h", 1, time.Minute))
		select {
		case err := <-got:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("no event or refusal within 10 s")
		}
	}
	var cancels []context.CancelFunc
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()
	for i := range max {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		if err := watch(ctx); err != nil {
			t.Fatalf("watch %d of %d: %v", i+1, max, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancels = append(cancels, cancel)
	err := watch(ctx)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "--max-watches") {
		t.Fatalf("watch %d with MaxWatches %d: %v; want resource_exhausted naming --max-watches", max+1, max, err)
	}
	if _, err := l.Watch(ctx, &pb.WatchRequest{}); !errors.Is(err, node.ErrTooManyWatches) {
		t.Fatalf("in-process watch past the limit: %v, want ErrTooManyWatches", err)
	}
	if n := refusals(t, l, node.PortAPI, "max_watches"); n != 2 {
		t.Fatalf("refusals for max_watches: %d, want 2", n)
	}
	// Both refusals are counted; the log says so once per interval
	// (outsider review #6: 177 refusals, no line).
	if got := lg.lines("refused a Watch", "--max-watches", "max_watches=4"); len(got) != 1 {
		t.Fatalf("log lines for %d refused watches: %q, want 1 naming --max-watches", 2, got)
	}
	t.Logf("refused: %v", err)
	cancels[0]() // one ends: its place is free once the node sees it go
	nodetest.Eventually(t, 10*time.Second, func() error {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		return watch(ctx)
	})
}

// One client source (IPv4 /24, IPv6 /64) may hold at most a quarter of a
// node's watches (at least 64): past it its Watch is refused, naming the
// per-source limit, while another /24 still gets one (stop 31's outsider review: one
// token holder's 1,024 streams took every watch of the leader).
func TestWatchesPerSourceAreBounded(t *testing.T) {
	const max, perAddress = 256, 64
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWatches = max
	}})
	_, l := c.Leader()
	from := func(ip string) pbconnect.LeaseServiceClient {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return pbconnect.NewLeaseServiceClient(&http.Client{Transport: &http.Transport{DialContext: d.DialContext}}, "http://"+l.APIAddr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// open opens a stream and waits for its first event (a grant made
	// after it opened) or its refusal.
	open := func(cl pbconnect.LeaseServiceClient) error {
		s, err := cl.Watch(ctx, connect.NewRequest(&pb.WatchRequest{Prefix: "pw/"}))
		if err != nil {
			return err
		}
		got := make(chan error, 1)
		go func() { s.Receive(); got <- s.Err() }()
		mustGrant(t, l, acq(fmt.Sprint("pw/", time.Now().UnixNano()), "h", 1, time.Minute))
		select {
		case err := <-got:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("no event or refusal within 10 s")
		}
	}
	one := from("127.0.0.1")
	for i := range perAddress {
		if err := open(one); err != nil {
			t.Fatalf("watch %d of %d from one address: %v", i+1, perAddress, err)
		}
	}
	err := open(one)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "from your address") {
		t.Fatalf("watch %d from one address: %v; want resource_exhausted naming the per-address limit", perAddress+1, err)
	}
	if err := open(from("127.0.0.2")); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a watch from another address of the same /24: %v; want refused as from the same source", err)
	}
	if err := open(from("127.0.5.2")); err != nil {
		t.Fatalf("a watch from another /24: %v", err)
	}
}

// A refused request's body is never read: the node answers and closes
// the connection at once, whatever is left of the body. net/http read up
// to 256 KiB of it under ReadTimeout, the connection busy meanwhile, so
// an outsider without the token, trickling declared bodies over every
// slot, kept clients out for seconds (1,100 connections: fresh clients
// waited 2.8-7.9 s, 3 s leases were lost).
func TestRefusedBodiesAreNotRead(t *testing.T) {
	const maxConns = 8
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.AuthToken = "s3cret"
		cfg.Limits.MaxConns = maxConns
	}})
	_, l := c.Leader()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	// trickle sends a request declaring 200,000 bytes of body and then a
	// byte every 100 ms, and reports how long the node took to answer and
	// close the connection.
	trickle := func(path, header string) (time.Duration, int, error) {
		conn, err := net.DialTimeout("tcp", l.APIAddr(), 10*time.Second)
		if err != nil {
			return 0, 0, err
		}
		defer conn.Close()
		start := time.Now()
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 200000\r\n\r\n{", path, header)
		wg.Add(1)
		go func() {
			defer wg.Done()
			trickle(conn, 100*time.Millisecond, stop)
		}()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		r := bufio.NewReader(conn)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return time.Since(start), 0, fmt.Errorf("no answer: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		if _, err := r.ReadByte(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
			return time.Since(start), resp.StatusCode, fmt.Errorf("after answering %d the node kept the connection (read %v)", resp.StatusCode, err)
		}
		return time.Since(start), resp.StatusCode, nil
	}
	for _, tc := range []struct {
		path, header string
		code         int
	}{
		{"/leasenode.v1.LeaseService/Acquire", "Content-Type: application/json\r\n", http.StatusUnauthorized},
		{"/leasenode.v1.LeaseService/Acquire", "Content-Type: text/plain\r\nAuthorization: Bearer s3cret\r\n", http.StatusUnsupportedMediaType},
		{"/nowhere", "Content-Type: application/json\r\n", http.StatusNotFound},
	} {
		d, code, err := trickle(tc.path, tc.header)
		if err != nil || code != tc.code {
			t.Fatalf("POST %s, %q, trickling its body: %d after %v: %v; want %d", tc.path, tc.header, code, d, err, tc.code)
		}
		if d > 3*time.Second {
			t.Fatalf("POST %s, %q, trickling its body: answered and closed after %v (ReadTimeout 10 s)", tc.path, tc.header, d)
		}
		t.Logf("POST %s: %d and closed after %v", tc.path, code, d.Round(time.Millisecond))
	}

	// Twice the slots of such connections, again and again: a client
	// with the token is served at once.
	for range 2 * maxConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				trickle("/leasenode.v1.LeaseService/Acquire", "Content-Type: application/json\r\n")
			}
		}()
	}
	hc := &http.Client{Timeout: 20 * time.Second}
	var worst time.Duration
	for range 10 {
		start := time.Now()
		var resp *http.Response
		for {
			req, _ := http.NewRequest("POST", "http://"+l.APIAddr()+"/leasenode.v1.LeaseService/Status", strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer s3cret")
			var err error
			if resp, err = hc.Do(req); err == nil {
				break
			}
			// Closed to make room for one of the flood's new
			// connections before its request was read: a client
			// retries, as lease.Client does.
			if time.Since(start) > 20*time.Second {
				t.Fatal(err)
			}
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status with the token: %d", resp.StatusCode)
		}
		worst = max(worst, time.Since(start))
		hc.CloseIdleConnections() // a fresh connection each time, as a new client's
	}
	if worst > 2*time.Second {
		t.Fatalf("with %d connections trickling refused bodies, a client with the token waited up to %v", 2*maxConns, worst)
	}
	t.Logf("with %d connections trickling refused bodies, a client with the token waited at most %v", 2*maxConns, worst.Round(time.Millisecond))
}

// With an auth token, a connection must make a request with it within
// about 2 s of its admission, and before 16 requests are refused for the
// lack of it; otherwise the node closes it. HTTP/2 does work before any
// request reaches the token check: 2.65 million PINGs from 8 connections
// were answered in 15 s, and HEADERS+RST_STREAM floods made a leader step
// down. A connection that made one authenticated request is never closed
// for this. (The PING flood would meet the frame budget first: it is set
// out of reach, to test this bound alone; see TestFrameBudgetClosesPingFlood.)
func TestUnauthenticatedConnectionsAreClosed(t *testing.T) {
	var lg logs
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.AuthToken = "s3cret"
		cfg.Limits.IdleTimeout = time.Hour
		cfg.Limits.MaxFrameRate = 1 << 30
		cfg.Logger = lg.logger()
	}})
	_, l := c.Leader()

	t.Run("PING flood", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", l.APIAddr(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		// The h2c preface, an empty SETTINGS frame, then PINGs.
		if _, err := conn.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
			t.Fatal(err)
		}
		ping := []byte{0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}
		flood := bytes.Repeat(ping, 64)
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := conn.Write(flood); err != nil {
					return
				}
			}
		}()
		goaway, err := goAwayCode(conn)
		if err != nil {
			t.Fatal(err)
		}
		// Closed by the auth timeout, or earlier by net/http's own bound
		// on the control frames it has queued (a peer that does not read
		// its PING answers as fast as it sends PINGs: seen in CI on a
		// busy machine), which sends GOAWAY ENHANCE_YOUR_CALM.
		const enhanceYourCalm = 0xb
		if n := refusals(t, l, node.PortAPI, "auth_timeout"); n != 1 && goaway != enhanceYourCalm {
			t.Errorf("refusals for auth_timeout: %d, want 1 (GOAWAY code %#x)", n, goaway)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("a connection sending only PINGs was closed after %v, want about 2 s", d)
		} else {
			t.Logf("a connection sending only PINGs was closed after %v", d.Round(time.Millisecond))
		}
	})

	// h2c is a client speaking HTTP/2 without TLS that counts the
	// connections it opened.
	type h2c struct {
		hc    *http.Client
		conns atomic.Int32
	}
	newH2C := func() *h2c {
		c := &h2c{}
		tr := &http.Transport{}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		dial := (&net.Dialer{Timeout: 10 * time.Second}).DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.conns.Add(1)
			return dial(ctx, network, addr)
		}
		c.hc = &http.Client{Transport: tr, Timeout: 10 * time.Second}
		return c
	}
	status := func(c *h2c, token string) (int, error) {
		req, _ := http.NewRequest("POST", "http://"+l.APIAddr()+"/leasenode.v1.LeaseService/Status", strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("answered in HTTP/%d, want h2c", resp.ProtoMajor)
		}
		return resp.StatusCode, nil
	}

	t.Run("wrong token", func(t *testing.T) {
		cl := newH2C()
		defer cl.hc.CloseIdleConnections()
		refused := 0
		for range 20 {
			code, err := status(cl, "wrong")
			if err == nil && code != http.StatusUnauthorized {
				t.Fatalf("a wrong token: %d", code)
			}
			if err == nil {
				refused++
			}
		}
		// 16 refusals on the first connection, then it is closed: the
		// rest go on a second (one may be lost with the first).
		if n := cl.conns.Load(); n < 2 {
			t.Fatalf("20 requests with a wrong token (%d answered 401) went on %d connection(s), want it closed after 16", refused, n)
		}
		t.Logf("20 requests with a wrong token: %d answered 401, on %d connections", refused, cl.conns.Load())
		if n := refusals(t, l, node.PortAPI, "auth_refused"); n != 1 {
			t.Errorf("refusals for auth_refused: %d, want 1", n)
		}
		// Every request with a wrong token, not only the connections
		// closed for them (outsider review rev-out37: 4,450 guesses a
		// second went uncounted).
		if n := refusals(t, l, node.PortAPI, "wrong_token"); n != uint64(refused) {
			t.Errorf("refusals for wrong_token: %d, want %d", n, refused)
		}
	})

	t.Run("token", func(t *testing.T) {
		cl := newH2C()
		defer cl.hc.CloseIdleConnections()
		start := time.Now()
		n := 0
		// Past the budget, and past 16 requests, on one connection.
		for ; time.Since(start) < 3*time.Second || n < 20; n++ {
			code, err := status(cl, "s3cret")
			if err != nil || code != http.StatusOK {
				t.Fatalf("request %d with the token after %v: %d %v", n, time.Since(start), code, err)
			}
		}
		if got := cl.conns.Load(); got != 1 {
			t.Fatalf("a client with the token needed %d connections for %d requests over %v", got, n, time.Since(start))
		}
	})
	if got := lg.lines("without the auth token", "--auth-token"); len(got) != 1 {
		t.Errorf("warnings of connections closed without the token: %q, want 1", got)
	}
}

// trickle writes a byte to conn every interval until stop closes or a
// write fails: a body sent slowly.
func trickle(conn net.Conn, every time.Duration, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(every):
		}
		if _, err := conn.Write([]byte(" ")); err != nil {
			return
		}
	}
}

// waitWaiters waits until n's Status reports want waiters queued.
func waitWaiters(t *testing.T, n *node.Node, want uint64) {
	t.Helper()
	nodetest.Eventually(t, 10*time.Second, func() error {
		st, err := n.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			return err
		}
		if st.Waiters != want {
			return fmt.Errorf("%d waiters, want %d", st.Waiters, want)
		}
		return nil
	})
}

// Regression (review finding: waiters counted as leases): waiting
// acquires reserve no quota while they wait. With MaxLeases 3, one lease
// held and two clients waiting for it, a fresh key is still granted and a
// third waiter queues; the waiters of the one exclusive key are granted
// one after another by handoffs, which add no holding, though the cluster
// is at its limit; and a refusal counts holdings apart from what is in
// flight.
func TestStateQuotaWaitersReserveNothing(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxLeases = 3
	}})
	_, l := c.Leader()
	_, f := c.Follower()
	hot := mustGrant(t, l, acq("w/hot", "a", 1, time.Minute))
	type answer struct {
		holder string
		resp   *pb.AcquireResponse
		err    error
	}
	answers := make(chan answer, 3)
	wait := func(n *node.Node, holder string) {
		r := acq("w/hot", holder, 1, time.Minute)
		r.Wait = true
		resp, err := n.Acquire(ctxT(t, 20*time.Second), r)
		answers <- answer{holder, resp, err}
	}
	go wait(l, "w1")
	waitWaiters(t, l, 1)
	go wait(f, "w2") // forwarded: queued at the leader all the same
	waitWaiters(t, l, 2)

	fresh := mustGrant(t, f, acq("w/fresh", "b", 1, time.Minute))
	go wait(l, "w3")
	waitWaiters(t, l, 3)
	if st := l.FSM().Stats(); st.Held != 2 {
		t.Fatalf("Stats %+v, want the 2 holdings", st)
	}
	// The cluster is at its limit now: a fourth fresh key is refused,
	// and the refusal counts holdings, lock-delays and what is in flight
	// apart.
	mustGrant(t, l, acq("w/third", "b", 1, time.Minute))
	_, err := l.Acquire(ctxT(t, 10*time.Second), acq("w/fourth", "b", 1, time.Minute))
	if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "holds 3 leases and 0 lock-delays, and this leader admitted 0 more") ||
		!strings.Contains(err.Error(), "--max-leases 3") {
		t.Fatalf("a fourth lease past MaxLeases 3: %v", err)
	}

	// Each release hands the key to the next waiter in one entry: at the
	// limit, the handoff is granted, not refused.
	token, holder := hot.Token, "a"
	for i, want := range []string{"w1", "w2", "w3"} {
		mustReleaseToken(t, l, "w/hot", holder, token)
		select {
		case a := <-answers:
			if a.err != nil || !a.resp.Granted || a.holder != want {
				t.Fatalf("handoff %d at the limit: %s got %v %v; want %s granted", i, a.holder, a.resp, a.err, want)
			}
			token, holder = a.resp.Token, a.holder
		case <-time.After(10 * time.Second):
			t.Fatalf("handoff %d: no waiter answered", i)
		}
		if st := l.FSM().Stats(); st.Held+st.Delayed > 3 {
			t.Fatalf("Stats %+v past MaxLeases 3", st)
		}
	}
	mustReleaseToken(t, l, "w/hot", holder, token)
	mustReleaseToken(t, l, "w/fresh", "b", fresh.Token)
}

// A node serves at most Limits.MaxWaiters waiting acquires
// (bounded-waiters): those its API admitted, forwarded or not, and, on
// the leader, those forwarded to it. Past it a waiting acquire of a held
// key is refused resource_exhausted, naming the flag, and the Go client
// does not retry it; a try without waiting, or a wait for a free key, is
// served; once a waiter ends, a new one is admitted.
func TestMaxWaiters(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxWaiters = 4
	}})
	_, l := c.Leader()
	_, f := c.Follower()
	hot := mustGrant(t, l, acq("hot", "owner", 1, time.Minute))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancels []context.CancelFunc
	ended := make(chan error, 8)
	for i := range 4 {
		wctx, wcancel := context.WithCancel(ctx)
		cancels = append(cancels, wcancel)
		r := acq("hot", fmt.Sprint("w", i), 1, time.Minute)
		r.Wait = true
		go func() {
			_, err := f.Acquire(wctx, r)
			ended <- err
		}()
	}
	waitWaiters(t, l, 4)

	fifth := acq("hot", "w4", 1, time.Minute)
	fifth.Wait = true
	refusal := func(n *node.Node, who string) {
		t.Helper()
		start := time.Now()
		_, err := n.Acquire(ctxT(t, 10*time.Second), fifth)
		if !errors.Is(err, node.ErrTooManyWaiters) || !strings.Contains(err.Error(), "--max-waiters 4") {
			t.Fatalf("a fifth waiter at the %s: %v", who, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("the refusal at the %s took %v", who, d)
		}
	}
	// The follower serves 4; the leader serves the same 4, forwarded.
	refusal(f, "follower")
	refusal(l, "leader")
	if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != 4 {
		t.Fatalf("%d waiters queued, want 4", st.Waiters)
	}

	// Over the API: resource_exhausted, and lease's client gives up at
	// once (not retried for its whole retry budget).
	cl, err := lease.Dial(ctxT(t, 5*time.Second), []string{f.APIAddr()}, lease.WithRetryTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close(context.Background())
	start := time.Now()
	_, err = cl.AcquireTimeout(ctxT(t, 30*time.Second), "hot", 20*time.Second)
	if !errors.Is(err, lease.ErrTooManyWaiters) || !strings.Contains(err.Error(), "--max-waiters 4") {
		t.Fatalf("lease client's waiting acquire past the limit: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("lease client took %v to report the refusal: retried it", d)
	}
	body := strings.NewReader(`{"key":"hot","holder":"w9","requestId":"1","ttl":"60s","wait":true}`)
	if code, out := post(t, f.APIAddr(), "Acquire", body, nil); code != http.StatusTooManyRequests ||
		!strings.Contains(out, "resource_exhausted") || !strings.Contains(out, "--max-waiters 4") {
		t.Fatalf("a waiting acquire past the limit over HTTP: status %d %s", code, out)
	}

	// Tries are never refused: held answers held, free is granted; a
	// wait for a free key is granted too.
	if r, err := f.Acquire(ctxT(t, 10*time.Second), acq("hot", "w4", 2, time.Minute)); err != nil || r.Granted {
		t.Fatalf("a try of the held key past the limit: %v %v", r, err)
	}
	free := acq("free", "w4", 3, time.Minute)
	g := mustGrant(t, f, free)
	mustReleaseToken(t, f, "free", "w4", g.Token)
	free = acq("free", "w4", 4, time.Minute)
	free.Wait = true
	g = mustGrant(t, f, free)
	mustReleaseToken(t, f, "free", "w4", g.Token)

	// One waiter gives up: a new one is admitted and queued.
	cancels[0]()
	if err := <-ended; err == nil {
		t.Fatal("the waiter that gave up was answered without an error")
	}
	waitWaiters(t, l, 3)
	fifth.RequestId = 5
	go func() {
		_, err := f.Acquire(ctx, fifth)
		ended <- err
	}()
	waitWaiters(t, l, 4)
	mustReleaseToken(t, l, "hot", "owner", hot.Token)
}

// At the cap of connections without the token, the one closed comes from
// the address holding the most of them: one address's flood of
// connections that never send a request closes its own, not another
// client's that has not sent its first request yet (still in its TLS
// handshake, say). An outsider's churn on the TLS API port failed 71% of
// fresh clients that had a certificate and the token.
func TestUnauthenticatedFloodClosesItsOwn(t *testing.T) {
	l := tokenNode(t)
	_, port, _ := net.SplitHostPort(l.APIAddr())
	target := net.JoinHostPort("127.0.0.1", port)
	client, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// Every flood connection was admitted, and those past the cap
	// closed (the flood's own: each of the flood's, unheard for its
	// first beginGrace, was admitted past the cap, and the cap restored
	// after them), before the client's first request goes.
	silentFlood(t, l, target, func(int) net.IP { return net.IPv4(127, 0, 0, 2) })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	req := "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n" +
		"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
	if _, err := io.WriteString(client, req); err != nil {
		t.Fatalf("the client's connection was closed by the flood: %v", err)
	}
	status, err := bufio.NewReader(client).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("the client's request beside the flood: %q, %v", status, err)
	}
}

// Reads refuse a key or prefix longer than any key, as writes do: Get,
// List and CheckToken answered a 1 MiB key (outsider review).
func TestReadsRefuseKeysLongerThanAnyKey(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, BootstrapExpect: 1})
	_, n := c.Leader()
	long := strings.Repeat("k", fsm.MaxKeyLen+1)
	for name, call := range map[string]func() error{
		"get":        func() error { _, err := n.Get(ctxT(t, 5*time.Second), &pb.GetRequest{Key: long}); return err },
		"list":       func() error { _, err := n.List(ctxT(t, 5*time.Second), &pb.ListRequest{Prefix: long}); return err },
		"list after": func() error { _, err := n.List(ctxT(t, 5*time.Second), &pb.ListRequest{After: long}); return err },
		"checktoken": func() error {
			_, err := n.CheckToken(ctxT(t, 5*time.Second), &pb.CheckTokenRequest{Key: long, Token: 1})
			return err
		},
	} {
		if err := call(); !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "exceeds") {
			t.Errorf("%s of a %d-byte key: %v, want ErrInvalid naming the limit", name, len(long), err)
		}
	}
}

// At the cap of connections without the token, from as many source
// addresses as there are connections (the count per address ties), the
// one closed is one whose peer never answered what the node sent, not a
// client that did: an outsider's silent connections and replayed TLS
// ClientHellos from 249 addresses failed 9 of 35 fresh clients with the
// token, evicted mid-handshake as the oldest.
func TestUnauthenticatedFloodFromManyAddressesSparesAnsweringClient(t *testing.T) {
	l := tokenNode(t)
	_, port, _ := net.SplitHostPort(l.APIAddr())
	target := net.JoinHostPort("127.0.0.1", port)
	// A client past its handshake, before its first request: it read the
	// node's SETTINGS and answered them, and two PINGs, the second sent
	// after the first's ack, so the node has read an answer to what it
	// wrote.
	client := dialH2(t, target, nil)
	for want := int64(1); want <= 2; want++ {
		if _, err := client.Write(h2Frame(nil, h2Ping, 0, 0, make([]byte, 8))); err != nil {
			t.Fatal(err)
		}
		nodetest.Eventually(t, 10*time.Second, func() error {
			if client.acks.Load() < want {
				return errors.New("no PING ack yet")
			}
			return nil
		})
	}
	silentFlood(t, l, target, func(i int) net.IP { return net.IPv4(127, 0, 1, byte(2+i)) })
	req := h2Frame(nil, h2Headers, h2EndHeaders, 1, h2Request("http", "Status", "s3cret"))
	if _, err := client.Write(h2Frame(req, h2Data, h2EndStream, 1, []byte("{}"))); err != nil {
		t.Fatalf("the client's connection was closed by the flood: %v", err)
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		select {
		case <-client.closed:
			t.Fatal("the node closed the client's connection for the flood's")
		default:
		}
		if client.replies.Load() == 0 {
			return errors.New("no reply to the client's request yet")
		}
		return nil
	})
}

// At the cap of connections without the token, an outsider that
// finishes its TLS handshakes and then stays silent (here from 240
// addresses, 40 a second, each connection held until the node closes it)
// does not keep the answered rank past answeredGrace: fresh clients with
// the token, each a round trip of 150 ms from answering the node's first
// flight (a distant or loaded client), are not the ones closed while the
// flood's older silent connections wait. Without the grace the flood's
// connections ranked as answered until the 2 s auth timeout, and each
// client, not yet answered, was closed at the flood's next arrival.
func TestSilentHandshakeFloodSparesFreshClients(t *testing.T) {
	s := budgetSetup{name: "TLS with the token", tls: true, token: "s3cret", scheme: "https"}
	c, tlsCfg := s.start(t, 1, nil, nil)
	l := c.Node(0)
	addr := l.APIAddr()
	tlsCfg = tlsCfg.Clone()
	tlsCfg.ServerName = "127.0.0.1"

	// The flood resumes its TLS sessions, as a flooder saving its own
	// CPU would, and so costs the node no certificate signature nor
	// client chain to verify. With full handshakes a loaded host (-race,
	// two cores, six busy loops) finished 14-17 of them a second, 26-46
	// connections were open at once, and the cap was never reached: the
	// test failed before its first client (3 of 10 runs beside two busy
	// loops on a shared host, 3 of 5 beside six).
	floodCfg := tlsCfg.Clone()
	floodCfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		close(stop)
		mu.Lock()
		for _, f := range held {
			f.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		// 40 a second by the clock: the 80 connections of the auth
		// timeout's 2 s hold the cap of 64. A tick a loaded host
		// delivers late is made up at once (a Ticker drops it).
		start := time.Now()
		for i := 0; ; i++ {
			wait := time.NewTimer(time.Until(start.Add(time.Duration(i) * 25 * time.Millisecond)))
			select {
			case <-stop:
				wait.Stop()
				return
			case <-wait.C:
			}
			d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 5, byte(2+i%240))}}
			raw, err := d.Dial("tcp", addr)
			if err != nil {
				continue
			}
			mu.Lock()
			held = append(held, raw)
			mu.Unlock()
			wg.Add(1)
			go func() { // handshake, then silence until the node closes it
				defer wg.Done()
				f := tls.Client(raw, floodCfg)
				f.SetDeadline(time.Now().Add(10 * time.Second))
				if f.Handshake() == nil {
					io.Copy(io.Discard, f)
				}
				raw.Close()
			}()
		}
	}()
	// The flood fills the cap and churns it.
	nodetest.Eventually(t, 15*time.Second, func() error {
		if n := refusals(t, l, node.PortAPI, "max_unauthenticated"); n < 10 {
			return fmt.Errorf("%d closed at the cap so far", n)
		}
		return nil
	})
	const clients = 5
	failed := 0
	for range clients {
		raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		cl := tls.Client(&slowAnswer{Conn: raw, delay: 150 * time.Millisecond}, tlsCfg)
		req := "POST /leasenode.v1.LeaseService/Status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n" +
			"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
		var status string
		if err = cl.Handshake(); err == nil {
			if _, err = io.WriteString(cl, req); err == nil {
				status, err = bufio.NewReader(cl).ReadString('\n')
			}
		}
		if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
			failed++
			t.Logf("a fresh client beside the flood: %q, %v", status, err)
		}
		raw.Close()
	}
	if failed > 0 {
		t.Fatalf("%d of %d fresh clients with the token failed beside the silent handshake flood (%d closed at the cap)",
			failed, clients, refusals(t, l, node.PortAPI, "max_unauthenticated"))
	}
}

// slowAnswer is a client's connection that sends its first write at once
// and every later one after delay: a client a round trip away from its
// answer to the node's first TLS flight.
type slowAnswer struct {
	net.Conn
	delay  time.Duration
	writes int
}

func (c *slowAnswer) Write(b []byte) (int, error) {
	if c.writes++; c.writes > 1 {
		time.Sleep(c.delay)
	}
	return c.Conn.Write(b)
}

// silentFlood opens three times the cap of 64 connections without the
// token to target, the i-th from address from(i), sending nothing (they
// close at the end of the test), and waits until the node closed the two
// cap's worth that took no slot.
func silentFlood(t *testing.T, l *node.Node, target string, from func(i int) net.IP) {
	t.Helper()
	for i := range 3 * 64 {
		d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: from(i)}}
		f, err := d.Dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
	}
	nodetest.Eventually(t, 10*time.Second, func() error {
		if n := refusals(t, l, node.PortAPI, "max_unauthenticated"); n < 2*64 {
			return fmt.Errorf("%d closed at the cap so far", n)
		}
		return nil
	})
}
