package node

import (
	"compress/gzip"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// startAPI serves the client protocol on cfg.APIAddr: connect-go handlers,
// so one port speaks Connect (JSON or protobuf over HTTP/1.1 or 2; usable
// with curl), gRPC and gRPC-Web. Plain-text HTTP/2 (h2c) is accepted for
// gRPC clients without TLS.
func (n *Node) startAPI() error {
	if n.cfg.APIAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", n.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("listen api %s: %w", n.cfg.APIAddr, err)
	}
	n.apiLn = ln
	n.apiAddr = n.cfg.APIAdvertiseAddr
	if n.apiAddr == "" {
		n.apiAddr = ln.Addr().String()
	}
	mux := http.NewServeMux()
	n.MountAPI(mux)
	for pattern, h := range n.cfg.HTTPHandlers {
		mux.Handle(pattern, n.boundOpen(h))
	}
	for pattern, h := range n.cfg.APIHandlers {
		mux.Handle(pattern, n.guard(h))
	}
	if n.cfg.EnablePprof {
		n.mountPprof(mux)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	lim := n.cfg.Limits
	conns := newConnLimiter(ln, lim.MaxConns, min(lim.ReadTimeout, firstRequestTimeout), n.log.With("component", "node.api"))
	if n.cfg.AuthToken != "" {
		conns.authBy = conns.first // a client sends its first request at once
	}
	if n.apiTLS != nil {
		conns.tlsAPI = true
		// Only TLS handshakes are bounded: a plain connection costs no
		// crypto, and the connection limits bound it.
		conns.handshakes = transport.NewHandshakeLimit(lim.MaxHandshakeRatePerSource, lim.MaxHandshakeRate)
	}
	// A ClientHello draws from the handshake limit, not a first byte
	// (transport.HandshakeLimit.Guard), and one it allowed marks its
	// connection begun (connLimiter.noteHellos).
	apiTLS := conns.handshakes.Guard(conns.noteHellos(n.apiTLS), conns.refusedHello)
	n.apiLn, n.apiConn = conns, conns
	n.apiWork = newAPIBudget(lim.MaxAPIRate, realClock{time.Now()}, n.log.With("component", "node.api"))
	n.api = &http.Server{
		Handler:           countRequests(n.noteToken(n.apiWork.paceHTTP1(unreadBodies(mux), n.livenessCheck))),
		ReadHeaderTimeout: min(lim.ReadTimeout, 10*time.Second),
		ReadTimeout:       lim.ReadTimeout, // headers and body; never WriteTimeout: waits and watches are long (a unary reply has ReadTimeout once it begins: replyWriter)
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    64 << 10, // past it net/http answers a bare 431 itself (no hook to name the limit): the README names it
		TLSConfig:         apiTLS,
		Protocols:         &protocols,
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: int(lim.MaxStreams),
			// HTTP/2's default and least: a connection keeps a buffer
			// the size of the largest frame it has read, and at
			// net/http's 1 MiB, 482 connections with one frame of 1 MiB
			// each took a leader from 111 to 559 MB (review s35).
			MaxReadFrameSize: 16 << 10,
			// Flow control bounds the body bytes a stream, and a
			// connection, may have sent that no handler has read: the
			// HTTP/2 server takes them whatever the handler waits for
			// (its turn of the API budget or of its source's bodies).
			// At the default 1 MiB, 800 connections sending 261 KB
			// Extends with a stream each held all of them while they
			// waited, and took a leader to 600-790 MB (review s35).
			MaxReceiveBufferPerStream:     h2StreamWindow,
			MaxReceiveBufferPerConnection: h2ConnWindow},
		ErrorLog:    httpErrorLog(n.log, "node.api"),
		ConnState:   conns.state,
		ConnContext: connContext,
	}
	n.apiFrames = newFrameBudget(lim.MaxFrameRate, lim.MaxStreams, n.log.With("component", "node.api"))
	n.apiFrames.api = n.apiWork
	if err := n.apiFrames.install(n.api); err != nil {
		ln.Close()
		return err
	}
	ln = n.apiLn
	n.goRun("node.api", func() {
		var err error
		if n.apiTLS != nil {
			err = n.api.ServeTLS(ln, "", "")
		} else {
			err = n.api.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("api server stopped", "err", err)
		}
	})
	return nil
}

// h2StreamWindow and h2ConnWindow are the HTTP/2 flow-control windows
// of the client API: the most of a request body, and of all a
// connection's, its HTTP/2 server reads into memory before a handler
// reads it; reading returns the credit. net/http's defaults, 1 MiB each,
// let 1,024 connections put up to 1 GiB in the node's memory before the
// API budget saw a byte of it (outsider review s35); now 256 MiB at
// most. A stream's window is HTTP/2's initial 64 KiB: enough for a body
// across a datacenter (64 KiB a round trip, 1 MiB in 16 round trips), and
// the handlers read a body as they pay for it, 16 KiB at a time
// (bodyChunk); a connection's is four streams' worth, so that streams
// waiting for their turns leave room for the one that holds it.
const (
	h2StreamWindow = 64 << 10
	h2ConnWindow   = 256 << 10
)

// MountAPI registers the client protocol handlers and BackupPath on mux,
// for programs that serve them on their own HTTP server.
func (n *Node) MountAPI(mux *http.ServeMux) {
	lim := n.cfg.Limits
	opts := []connect.HandlerOption{
		// Replies are small, or read near where they are made; gzip would
		// cost more CPU than the bytes it saves (it was 20% of the API's
		// CPU, and then 12% of a leader's keeping 10,000 leases alive:
		// extend replies of a thousand leases are ~30 KiB). Pages of List
		// near its 1 MiB limit still compress.
		connect.WithCompressMinBytes(256 << 10),
		// Bounds every request message once decompressed, so a small
		// gzip bomb is refused after MaxRequestBytes, not inflated.
		connect.WithReadMaxBytes(int(lim.MaxRequestBytes)),
		// A duration JSON cannot hold is refused saying how to write one.
		connect.WithCodec(jsonCodec{name: "json"}),
		connect.WithCodec(jsonCodec{name: "json; charset=utf-8"}),
		// A request is decoded when an interceptor sees it: its large-body
		// slot, if it took one, is free for the next.
		connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				decoded(ctx)
				return next(ctx, req)
			}
		})),
		// gzip for replies (large List pages). Compressed requests are
		// refused by guard before they are read; the decompressor, which
		// connect registers with the compressor, stops at the limit and
		// names it should one get past (connect's own would go on
		// inflating a bomb only to count its size).
		connect.WithCompression("gzip", nil, nil),
		connect.WithCompression("gzip",
			func() connect.Decompressor { return &limitedGzip{max: lim.MaxRequestBytes} },
			func() connect.Compressor { return gzip.NewWriter(io.Discard) }),
	}
	path, h := pbconnect.NewLeaseServiceHandler(&apiServer{n: n}, opts...)
	h = n.guard(h)
	if n.cfg.APIMiddleware != nil {
		h = n.cfg.APIMiddleware(h) // sees the guard's refusals too
	}
	mux.Handle(path, h)
	mux.Handle("GET "+BackupPath, n.guard(http.HandlerFunc(n.serveBackup)))
}

// PprofPath is where Config.EnablePprof serves Go's profiles.
const PprofPath = "/debug/pprof/"

// mountPprof serves the runtime's profiles under PprofPath behind the
// auth token, in the paths and formats of net/http/pprof, so `go tool
// pprof http://HOST:PORT/debug/pprof/profile?seconds=30` works (with a
// token, fetch it with curl -H "Authorization: Bearer $TOKEN" first).
// net/http/pprof itself is not imported: it would register its handlers
// on http.DefaultServeMux of every program that embeds a node.
func (n *Node) mountPprof(mux *http.ServeMux) {
	mux.Handle("GET "+PprofPath+"{$}", n.guard(http.HandlerFunc(servePprofIndex)))
	mux.Handle("GET "+PprofPath+"profile", n.guard(http.HandlerFunc(servePprofCPU)))
	mux.Handle("GET "+PprofPath+"{name}", n.guard(http.HandlerFunc(servePprofNamed)))
}

func servePprofIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "profile?seconds=N (CPU, default 30)")
	for _, p := range pprof.Profiles() {
		fmt.Fprintf(w, "%s (%d)\n", p.Name(), p.Count())
	}
}

// servePprofCPU records a CPU profile for ?seconds= (default 30, at most
// 300) or until the client goes away.
func servePprofCPU(w http.ResponseWriter, r *http.Request) {
	secs, err := strconv.Atoi(r.FormValue("seconds"))
	if err != nil || secs <= 0 {
		secs = 30
	}
	secs = min(secs, 300)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="profile"`)
	if err := pprof.StartCPUProfile(w); err != nil {
		http.Error(w, "cpu profile: "+err.Error(), http.StatusInternalServerError)
		return
	}
	t := time.NewTimer(time.Duration(secs) * time.Second)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}
	pprof.StopCPUProfile()
}

// servePprofNamed writes a named profile (heap, allocs, goroutine, mutex,
// block, threadcreate): ?debug=N as net/http/pprof, ?gc=1 runs a GC
// before a heap profile.
func servePprofNamed(w http.ResponseWriter, r *http.Request) {
	p := pprof.Lookup(r.PathValue("name"))
	if p == nil {
		http.Error(w, "unknown profile", http.StatusNotFound)
		return
	}
	debug, _ := strconv.Atoi(r.FormValue("debug"))
	if p.Name() == "heap" && r.FormValue("gc") != "" {
		runtime.GC()
	}
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	_ = p.WriteTo(w, debug)
}

// livenessCheck reports whether r is a liveness check, which the API
// budget may serve out of turn (apiBudget.askCheck): a Status request,
// with a body of a few bytes at most (an empty message) and the auth
// token if the node has one, as lease.Remote sends one to a node that
// has left a request unanswered for its PeerTimeout. Status is answered
// from the node's own state, in tens of microseconds.
func (n *Node) livenessCheck(r *http.Request) bool {
	if r.Method != http.MethodPost || r.URL.Path != pbconnect.LeaseServiceStatusProcedure || r.ContentLength < 0 || r.ContentLength > maxCheckBytes {
		return false
	}
	return n.cfg.AuthToken == "" || bearerOK(r.Header.Get("Authorization"), n.cfg.AuthToken)
}

// maxCheckBytes is the largest body a liveness check may have: a
// StatusRequest is empty ("{}" in JSON).
const maxCheckBytes = 64

// guard runs before the client protocol reads a byte of a request body:
// it checks the auth token (a request without it is answered
// unauthenticated, in the caller's own protocol, and its body is never
// read; on startAPI's server its connection counts the refusal and is
// closed at the connLimiter's bound, and a request with it marks its
// connection authenticated), and caps the body as sent at Limits.MaxRequestBytes (plus room
// for framing where messages are enveloped), failing the read past it
// with an error that names the limit.
func (n *Node) guard(next http.Handler) http.Handler {
	token := n.cfg.AuthToken
	max := n.cfg.Limits.MaxRequestBytes
	errw := connect.NewErrorWriter()
	refuse := func(w http.ResponseWriter, r *http.Request, err error, status int) {
		refuseUnread(errw, w, r, err, status)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" && !bearerOK(r.Header.Get("Authorization"), token) {
			err := fmt.Errorf("%w: send Authorization: Bearer TOKEN (the agents' --auth-token or --auth-token-file; clients pass --auth-token-file, --auth-token or LEASENODE_AUTH_TOKEN)", ErrUnauthenticated)
			if r.Header.Get("Authorization") != "" {
				err = fmt.Errorf("%w: the token sent is not the cluster's (the agents' --auth-token or --auth-token-file); check the client's --auth-token-file, --auth-token or LEASENODE_AUTH_TOKEN", ErrUnauthenticated)
				n.wrongToken(r)
			}
			refuse(w, r, connectError(err), http.StatusUnauthorized)
			return // noteToken counts it against the connection
		}
		if r.Method == http.MethodPost && !rpcContentType(r.Header.Get("Content-Type")) {
			refuseBody(w, r)
			http.Error(w, fmt.Sprintf("Content-Type %q is not one this API takes: send application/json or application/proto (Connect; JSON in UTF-8), application/connect+json or +proto (streams), application/grpc or application/grpc-web",
				r.Header.Get("Content-Type")), http.StatusUnsupportedMediaType)
			return
		}
		if enc := requestEncoding(r.Header); enc != "" {
			// Refused before a byte is read: a 10 KB gzip body inflated
			// to 4 MiB cost the node 400 times what it paid (outsider
			// review s33); the clients never compress.
			refuse(w, r, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("compressed request bodies (%s) are not accepted: send the body uncompressed (replies may still be compressed: Accept-Encoding)", enc)),
				http.StatusUnsupportedMediaType)
			return
		}
		limit := max // a Connect unary body is the message itself
		if ct := r.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/grpc") || strings.HasPrefix(ct, "application/connect+") {
			limit += 64 << 10 // enveloped messages: room for framing
		}
		if r.ContentLength > limit {
			// Declared too large: refused before a byte of it is read.
			refuse(w, r, requestTooLarge(max, fmt.Sprintf(" (Content-Length %d)", r.ContentLength)), http.StatusRequestEntityTooLarge)
			return
		}
		// A request that gives its place ends its wait for its body
		// (pending-bodies): under the count's lock, so while its handler
		// runs.
		pend, err := n.pending.take(peerSource(r.RemoteAddr), func() { _ = http.NewResponseController(w).SetReadDeadline(time.Now()) })
		if err != nil {
			refuse(w, r, connectError(err), http.StatusTooManyRequests)
			if lc := requestConn(r); lc != nil && lc.pendingRefused() {
				_ = http.NewResponseController(w).Flush()
				lc.Close() // HTTP/2: its other streams with it
			}
			return
		}
		defer pend.arrived()
		if lc := requestConn(r); lc != nil {
			lc.pendingAdmitted()
		}
		slot := &bodySlot{g: n.bigBodies, src: peerSource(r.RemoteAddr), ctx: r.Context()}
		defer slot.release()
		r = r.WithContext(context.WithValue(r.Context(), bodySlotKey{}, slot))
		source := addrSource(r.RemoteAddr)
		lb := &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit), max: max, timeout: n.cfg.Limits.ReadTimeout, slot: slot, length: r.ContentLength, limit: limit, pend: pend,
			pay: func(units int64) error { return n.payUnits(r.Context(), source, units) }}
		// What the body paid for ahead of its bytes and never read (it
		// ended sooner, or failed) goes back to the budget: streams
		// declaring 64 KiB and sending 10 bytes each paid 16 KiB of
		// units apiece and drained the node's budget with 60 KB/s, and a
		// lock loop beside 200 /24s of them went from 145-264 to 6-18
		// operations a second (outsider review s40, N2).
		defer func() {
			b := n.apiWork
			if b == nil {
				return
			}
			b.refund(bodyUnits(lb.paid) - bodyUnits(lb.read))
			if !lb.whole() && r.Context().Err() != nil {
				b.penalize(source, apiAbandonedUnits)
			}
		}()
		if r.ProtoMajor == 1 {
			lb.header = w.Header()
		}
		lb.h2 = r.ProtoMajor == 2
		if lc := requestConn(r); lc != nil {
			lb.conn, lb.watch = lc, lc.watchBody()
			defer lc.unwatchBody(lb.watch)
			slot.holder = newRoomHolder(lc, lb.watch, r.ProtoMajor == 1)
		}
		if room := lb.room(); room > 0 {
			// A body of declared length that pays for its bytes waits
			// for its source's turn and its room here, before connect
			// takes a buffer for it: a buffer recycled from an earlier
			// body keeps that body's size, and 785 Extends of 261 KB
			// from 8 /24s waiting for their turns mid-read held 56 MB
			// of them (review s35).
			if err := lb.hold(room); err != nil {
				refuse(w, r, err, http.StatusTooManyRequests)
				return
			}
			lb.held = room
		}
		r.Body = lb
		if !unaryCall(r) {
			next.ServeHTTP(w, r)
			return
		}
		// A unary call's reply holds room among the replies the node
		// holds unsent from before it is built (servePaidRead) until it
		// is written or has failed, and has the read timeout to be
		// written once it begins (reply-room).
		src := peerSource(r.RemoteAddr)
		hold := &replyHold{room: n.replies, src: src, factor: replyFactor(r), wait: replyWaitFactor * n.cfg.Limits.ReadTimeout}
		defer hold.release()
		rw := &replyWriter{ResponseWriter: w, timeout: n.cfg.Limits.ReadTimeout}
		if lb.conn != nil {
			rw.begin = func() { lb.conn.replyWriting(lb.watch) }
		}
		next.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), replyHoldKey{}, hold)))
		if rw.finish(r.ProtoMajor == 1) {
			n.replies.unwrittenReply(src, rw.timeout)
		}
	})
}

// wrongToken counts a request whose bearer token is not the cluster's,
// and logs it (once per loglimit.Every, with the count left out): 4,450
// guesses a second went unseen but for a latency series by status code
// (outsider review rev-out37), since each 401 closes its HTTP/1
// connection before the connection's refusal count is reached.
func (n *Node) wrongToken(r *http.Request) {
	n.wrongTokens.Add(1)
	if ok, skipped := n.tokenWarn.Allow("wrong_token"); ok {
		n.log.Warn("refused a client API request with a wrong auth token: a client with an old or mistyped token, or someone guessing (a token of 32 random bytes cannot be guessed: head -c 32 /dev/urandom | base64)",
			"source", addrSource(r.RemoteAddr), "path", r.URL.Path, "like_this_not_logged", skipped)
	}
}

// openBodyLimit caps the request bodies of the handlers served beside
// the API without the auth token (Config.HTTPHandlers: the gRPC health
// service, the HTTP probes and metrics), whose requests are a few bytes. Unbounded, they read any body to its end, inflating gzip:
// one 970 KB gzip request to the health service took a node to 1.77 GB,
// one to each agent took the cluster to 2.09 GB apiece and lost every
// lease (outsider review rev-out37).
const openBodyLimit = 64 << 10

// boundOpen serves next, one of Config.HTTPHandlers, with its request
// body capped at openBodyLimit as sent: a compressed body, or one whose
// declared length passes it, is refused before a byte is read, and the
// read of one of unknown length fails past it (the handler ends, the rest
// is never read or drained). Refusals are in the caller's protocol when
// it is an RPC (as guard's: invalid_argument for a compressed body,
// resource_exhausted for a large one), and counted (Refusals: open_body).
func (n *Node) boundOpen(next http.Handler) http.Handler {
	errw := connect.NewErrorWriter()
	refuse := func(w http.ResponseWriter, r *http.Request, err error, status int) {
		n.openRefused.Add(1)
		refuseUnread(errw, w, r, err, status)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if enc := requestEncoding(r.Header); enc != "" {
			refuse(w, r, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("compressed request bodies (%s) are not accepted by %s: send the body uncompressed", enc, r.URL.Path)),
				http.StatusUnsupportedMediaType)
			return
		}
		if r.ContentLength > openBodyLimit {
			refuse(w, r, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("a request body of %d bytes to %s passes the %d KiB the endpoints served without the auth token read (a fixed limit): their requests are a few bytes",
				r.ContentLength, r.URL.Path, openBodyLimit>>10)), http.StatusRequestEntityTooLarge)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &openBody{ReadCloser: http.MaxBytesReader(w, r.Body, openBodyLimit), refused: &n.openRefused}
		}
		next.ServeHTTP(w, r)
	})
}

// openBody is a body of unknown length to a Config.HTTPHandlers handler:
// its read fails past openBodyLimit, counted once as a refusal.
type openBody struct {
	io.ReadCloser
	refused *atomic.Uint64
	counted bool
}

func (b *openBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if _, over := errors.AsType[*http.MaxBytesError](err); over && !b.counted {
		b.counted = true
		b.refused.Add(1)
	}
	return n, err
}

// refuseUnread answers r with err, its body unread (refuseBody): in the
// protocol's own error format if it is an RPC, else as plain HTTP with
// status.
func refuseUnread(errw *connect.ErrorWriter, w http.ResponseWriter, r *http.Request, err error, status int) {
	refuseBody(w, r)
	if errw.IsSupported(r) {
		_ = errw.Write(w, r, err)
	} else {
		http.Error(w, err.Error(), status)
	}
}

// refuseBody is called by a handler that answers a request without
// reading its body (a refusal): on HTTP/1 the connection closes right
// after the reply, and what is left of the body is never read. net/http
// would otherwise read up to 256 KiB of it, to reuse the connection, under
// ReadTimeout, with the connection busy and so never the one closed to
// make room: an outsider's 1,100 connections, each a request without the
// token trickling its declared 200,000 bytes at a byte a second, held
// every slot, made fresh clients wait 2.8-7.9 s and lost 3 s leases.
// On HTTP/2 the stream is reset when the handler returns.
func refuseBody(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 {
		return
	}
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// noteToken is the API server's outermost handler but countRequests: a request that carries
// the auth token, on any path (a /metrics scrape, a health check, gRPC
// reflection, which guard does not see), marks its connection
// authenticated, so that the connLimiter never closes it for the lack of
// one; any other request, served or refused, counts toward the
// connection's maxRefused, and the last one closes it after its answer.
// It runs before an HTTP/1 request waits for its turn of the API budget
// (paceHTTP1): marked after it, a request with the token that waited
// longer than the auth deadline (2 s) had its connection closed under
// it, and its client redialed and queued another: 800 connections
// sending 261 KB Extends so kept 3,300 handlers waiting on 220
// connections (review s35).
func (n *Node) noteToken(next http.Handler) http.Handler {
	token := n.cfg.AuthToken
	if token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lc := requestConn(r)
		if lc == nil {
			next.ServeHTTP(w, r)
			return
		}
		if bearerOK(r.Header.Get("Authorization"), token) {
			lc.authenticated()
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
		if lc.unauthedRequest() {
			_ = http.NewResponseController(w).Flush()
			lc.Close() // HTTP/2: its other streams with it
		}
	})
}

// unreadBodies is, inside paceHTTP1, the API server's handler: on HTTP/1, a
// request whose handler returned without reading its body to the end
// (the mux's 404 and 405, a probe given a body) has the rest refused as
// refuseBody does: the reply's write fails to read more of it, and the
// connection closes after the reply.
func unreadBodies(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 || r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		b := &eofBody{ReadCloser: r.Body}
		r.Body = b
		next.ServeHTTP(w, r)
		if !b.eof {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		}
	})
}

// eofBody notes whether its body was read to the end.
type eofBody struct {
	io.ReadCloser
	eof bool
}

func (b *eofBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// rpcContentType reports whether ct is a Content-Type the client API's
// protocols (Connect, gRPC, gRPC-Web, with the proto and JSON codecs)
// take; connect answers others with a bare 415 that says nothing.
func rpcContentType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return false
	}
	switch mt {
	case "application/json", "application/proto", "application/connect+json", "application/connect+proto",
		"application/grpc", "application/grpc+proto", "application/grpc+json",
		"application/grpc-web", "application/grpc-web+proto", "application/grpc-web+json":
		return true
	}
	return false
}

// limitedBody is a request body capped by http.MaxBytesReader: past the
// cap, reads fail with a resource_exhausted error that names the limit,
// which connect passes to the client as it is.
//
// On HTTP/1 a body that fails before its end (the cap, or ReadTimeout on
// a client sending a byte now and then) also closes the connection after
// the reply. net/http would otherwise keep it: its own check cannot see
// through a wrapped body once the handler closed it, so it would read
// what is left of the body as the next request, and a slow client would
// keep its connection slot for another header timeout (found by the
// adversary suite: cut after 26 s instead of the 10 s read timeout).
//
// A body not received within the read timeout fails with a
// deadline_exceeded error that names that limit: the bare "read tcp
// ...: i/o timeout" net/http gives did not say which limit, nor that the
// client was too slow (found by an outsider's review).
type limitedBody struct {
	io.ReadCloser
	max     int64
	timeout time.Duration // Limits.ReadTimeout
	header  http.Header   // the response's, on HTTP/1; nil on HTTP/2
	// pay, if set, pays the API budget for the body's bytes (bodyUnits)
	// before they are read (allow); slot is taken once the body is large.
	pay        func(units int64) error
	slot       *bodySlot
	length     int64 // the declared Content-Length, -1 if unknown
	limit      int64 // the most bytes it may have (MaxBytesReader's cap)
	read, paid int64 // bytes read, and paid for (paid >= read)
	eof        bool  // the body was read to its end
	held       int64 // room the slot holds for the body, with its source's turn (see room)
	// conn and watch, on startAPI's server, note the body's progress
	// for the connLimiter (limitedConn.stalled).
	conn  *limitedConn
	watch *bodyWatch
	h2    bool // sent over HTTP/2
	// pend is the request's count among those whose bodies have not
	// arrived (pending-bodies), given back once the body is read to its
	// end.
	pend *pendingReq
}

// Waiting bodies of an HTTP/2 connection: a body that waits for its
// source's turn or for room (bodySlot.hold) is unread, and the stream
// window of it its client sent holds as much of its connection's window;
// past maxWaitingBodies of them the connection's window is full, and a
// body of the connection that holds the turn can receive no more of its
// bytes: eight Extends of 70 KB sent at once by one gRPC client on one
// connection waited for each other until the read timeout (10 s), and
// five failed saying their client sent them too slowly. A body past
// maxWaitingBodies is refused at once (its stream reset gives back the
// window its bytes held), naming the limit.
const maxWaitingBodies = h2ConnWindow/h2StreamWindow - 1

// hold takes b's slot's turn and room for size bytes (bodySlot.hold),
// refused at once if it would be one more than maxWaitingBodies of its
// HTTP/2 connection waiting.
func (b *limitedBody) hold(size int64) error {
	if b.h2 && b.conn != nil {
		if !b.conn.waitBody() {
			return bodyRefused("%d request bodies over %d KiB already wait to be read on this HTTP/2 connection: the agent reads one such body at a time from a client source (IPv4 /24, IPv6 /64), and a connection's flow-control window (%d KiB) holds the first %d KiB of at most %d waiting; send fewer large requests at once on one connection (use more connections, or wait for replies)",
				maxWaitingBodies, apiFreeBodyBytes>>10, h2ConnWindow>>10, h2StreamWindow>>10, maxWaitingBodies)
		}
		defer b.conn.doneWaiting()
	}
	return b.slot.hold(size, b.timeout)
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.pay != nil && len(p) > 0 {
		var err error
		if p, err = b.allow(p); err != nil {
			if b.header != nil {
				b.header.Set("Connection", "close")
			}
			return 0, err
		}
	}
	if b.watch != nil {
		b.conn.bodyRead(b.watch, true, 0)
	}
	n, err := b.ReadCloser.Read(p)
	if b.watch != nil {
		b.conn.bodyRead(b.watch, false, n)
	}
	if err != nil && err != io.EOF && b.header != nil {
		b.header.Set("Connection", "close")
	}
	if err == io.EOF {
		b.eof = true
		if b.pend != nil {
			b.pend.arrived()
		}
	}
	if b.pay != nil && n > 0 {
		b.read += int64(n)
		if b.read > bigBodyBytes && (err == io.EOF || b.length > 0 && b.read >= b.length) {
			// All here: one of the node's few decodes.
			if serr := b.slot.take(true, 0); serr != nil {
				return n, serr
			}
		}
	}
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case err != nil && err != io.EOF && b.pend.evictedErr() != nil:
		err = connectError(b.pend.evictedErr())
	case err != nil && err != io.EOF && b.slot.reclaimed():
		err = b.slot.g.reclaimedErr(b.timeout)
	case errors.As(err, &mbe):
		err = requestTooLarge(b.max, "")
	case errors.As(err, &ne) && ne.Timeout():
		err = bodyTooSlow(b.timeout)
	}
	return n, err
}

// bodyChunk is how many bytes of a body limitedBody pays for at once,
// before it reads them.
const bodyChunk = 16 << 10

// allow pays, before a byte of it is read, for the part of the body the
// next read may take, and returns p cut to it: the bytes a request has
// in memory are bytes it has paid for, and a sender past its turns
// waits with its bytes in its socket. Read paid after reading, so
// connect's growing buffer took all the socket held first, and 200 /24s
// sending 4 MiB Extends took a leader from 121 to 789 MB (outsider
// review s34). Past bigBodyBytes it first takes its source's large-body
// turn and room for the whole body among the node's large bodies
// (bodySlot.hold).
func (b *limitedBody) allow(p []byte) ([]byte, error) {
	if b.length >= 0 && b.read >= b.length {
		return p, nil // all of it read: what is left is the EOF
	}
	if room := b.room(); room > b.held {
		if err := b.hold(room); err != nil {
			return nil, err
		}
		b.held = room
	}
	if b.paid <= b.read {
		c := int64(bodyChunk)
		if b.length >= 0 {
			c = min(c, b.length-b.read)
		}
		if b.length < 0 {
			// Room for a body of unknown length grows at these sizes.
			for _, at := range []int64{apiFreeBodyBytes, bigBodyBytes} {
				if b.read < at {
					c = min(c, at-b.read)
					break
				}
			}
		}
		if due := bodyUnits(b.read+c) - bodyUnits(b.read); due > 0 {
			if err := b.pay(due); err != nil {
				return nil, err
			}
		}
		b.paid = b.read + c
	}
	return p[:min(int64(len(p)), b.paid-b.read)], nil
}

// whole reports whether b's body was read to its end (or had none).
func (b *limitedBody) whole() bool {
	return b.eof || b.length == 0 || b.length > 0 && b.read >= b.length
}

// room is the room among the node's request bodies (bodySlot.hold) b
// must hold before it reads on: none for a body of at most
// apiFreeBodyBytes, which never pays; all of a larger one's declared
// length; for one of unknown length, bigBodyBytes once it is past
// apiFreeBodyBytes, and its cap once it is past bigBodyBytes.
func (b *limitedBody) room() int64 {
	switch {
	case b.length >= 0 && b.length <= apiFreeBodyBytes:
		return 0
	case b.length >= 0:
		return b.length
	case b.read >= bigBodyBytes:
		return b.limit
	case b.read >= apiFreeBodyBytes:
		return bigBodyBytes
	}
	return 0
}

// bodyTooSlow is the refusal of a request whose body did not arrive
// within Limits.ReadTimeout. Connect answers deadline_exceeded with HTTP
// 504 (it has no code for 408); the message says the limit is this
// agent's, not a gateway's.
func bodyTooSlow(timeout time.Duration) error {
	return connect.NewError(connect.CodeDeadlineExceeded,
		fmt.Errorf("request body not received within %v, the agent's limit for reading a request (fixed at 10 s for the agent; Limits.ReadTimeout in a Go program): the client, or a proxy in between, sent it too slowly; send the whole body at once", timeout))
}

// requestEncoding returns the compression a request says its body (or
// its messages) carry, "" if none: Content-Encoding (Connect unary),
// Connect-Content-Encoding (Connect streams), Grpc-Encoding (gRPC).
func requestEncoding(h http.Header) string {
	for _, k := range []string{"Content-Encoding", "Connect-Content-Encoding", "Grpc-Encoding"} {
		if v := h.Get(k); v != "" && !strings.EqualFold(v, "identity") {
			return k + ": " + v
		}
	}
	return ""
}

// Large request bodies: past bigBodyBytes a request's body is read only
// while no other large body of its source (IPv4 /24, IPv6 /64) is, and
// once it is all read it is decoded only in one of maxBigBodies slots
// node-wide, until its message is decoded: the memory and CPU of decoding
// large requests is bounded node-wide (64 decodes of 4 MiB in flight took
// a leader to 1.9 GB: outsider review s33), while a source that trickles
// its bodies holds only its own turn (two global slots taken as bodies
// began, by one source's slow ones, made another's 300 KB extends wait
// for the read timeout, and a client of 9,000 leases lost all of them:
// outsider re-probe s33).
//
// Every body that pays for its bytes (past apiFreeBodyBytes) is read the
// same way, one at a time per source, holding room for all of it (its
// Content-Length; one of unknown length holds bigBodyBytes past
// apiFreeBodyBytes, then its cap past bigBodyBytes): 800 connections of
// 8 /24s sending 261 KB Extends had all their bodies partly read at
// once, each paying its next turn, and took a leader from 30 to 240-300
// MB (review s35, 580-770 MB on the reviewer's). A body of declared
// length waits for both before connect takes a buffer for it (guard).
// Requests of at most apiFreeBodyBytes never wait.
//
// A large body read past bigBodyBytes also takes room for all of it
// (its Content-Length, else the cap) among maxLargeBodyBytes node-wide,
// before a byte more of it is read, and holds it until its message is
// decoded: with a turn each, 200 /24s sending 4 MiB Extends held 200
// bodies at once, and took a leader from 121 to 507-789 MB; it stepped
// down, and a holder lost its 3,000 leases (outsider review s34). The
// room is given first come first served, and a source waits for it
// with its one turn, so sources take it in turn. A body that waits for
// it longer than the read timeout is refused, naming the limit.
//
// While others wait for room, a body that holds room and cannot arrive
// in time gives it up (bodyGate.reclaim): its read ends with an error
// naming the limit, its connection is closed. 24 /24s trickling 4 MB
// bodies held all of the room up to the read timeout, and redialed;
// others' bodies waited behind them for theirs, and were refused
// (outsider review s35).
const (
	bigBodyBytes      = 256 << 10
	maxBigBodies      = 2
	maxLargeBodyBytes = 32 << 20
)

// bodyGate is the node's large-body turns: one per source, room for
// budget bytes of them at once, and maxBigBodies decoding.
type bodyGate struct {
	mu       sync.Mutex
	srcs     map[string]*srcToken
	decoding chan struct{}
	budget   int64         // bytes of large bodies held at once (maxLargeBodyBytes)
	held     int64         // bytes of large bodies held
	queue    []*roomWaiter // waiting for room, first come first served
	// holders are the bodies holding room whose arrival can be watched
	// (reclaim).
	holders map[*roomHolder]struct{}
	// reclaimedBodies counts the bodies whose room was reclaimed
	// (Node.Refusals: body_room); warn limits their log lines.
	reclaimedBodies atomic.Uint64
	log             *slog.Logger
	warn            *loglimit.Limiter
}

// Reclaiming room: while others wait for room, a body holding it whose
// bytes arrived, over its last reclaimGrace of waiting for them (not for
// its turns of the API budget), at less than half the rate that would
// bring the rest of it before the read timeout, is reclaimed: it could
// not arrive in time, or its client is not sending it (a sender that
// sent most of a body at once, then trickles the rest, is caught as one
// that trickles all of it). A client that sends its body at once, as
// every client of the API does, is never reclaimed. The waiters look
// every reclaimEvery.
const (
	reclaimGrace = time.Second
	reclaimEvery = 250 * time.Millisecond
)

// roomHolder is a body that holds (or may hold) room, as the gate
// watches it.
type roomHolder struct {
	// pace reports the body's bytes, the time its reads waited for
	// them, and its age, at a time (limitedConn.bodyPace).
	pace func(time.Time) (got int64, waited, age time.Duration)
	// end ends the body's read in progress and its connection.
	end  func()
	done atomic.Bool // reclaimed

	// Guarded by bodyGate.mu: the room it holds, and the start of the
	// window its rate is measured over (bytes, time waited).
	size      int64
	markGot   int64
	markWaits time.Duration
}

// newRoomHolder returns the holder of the body w watches on c: its read
// in progress ends with a read deadline on HTTP/1 (the request is then
// answered, naming the limit, and the connection closed after it),
// with the connection on HTTP/2 (net/http gives no way to reset one
// stream from outside).
func newRoomHolder(c *limitedConn, w *bodyWatch, http1 bool) *roomHolder {
	return &roomHolder{
		pace: func(now time.Time) (int64, time.Duration, time.Duration) { return c.bodyPace(w, now) },
		end: func() {
			if http1 {
				_ = c.Conn.SetReadDeadline(time.Now())
				return
			}
			c.Close()
		},
	}
}

// hopeless reports whether h, at now, is too slow to arrive within
// timeout of its first read (see reclaimGrace), and moves its window on
// once it spans reclaimGrace. Called with bodyGate.mu held.
func (h *roomHolder) hopeless(now time.Time, timeout time.Duration) bool {
	got, waited, age := h.pace(now)
	span := waited - h.markWaits
	if span < reclaimGrace {
		return false
	}
	rate := float64(got-h.markGot) / span.Seconds()
	h.markGot, h.markWaits = got, waited
	left := h.size - got
	return left > 0 && 2*rate*max(timeout-age, 0).Seconds() < float64(left)
}

// reclaim takes back, at now, the room of the bodies that hold it and
// cannot arrive within timeout (see reclaimGrace): a waiter for room
// asks.
func (g *bodyGate) reclaim(now time.Time, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	var ended []*roomHolder
	g.mu.Lock()
	for h := range g.holders {
		if h.hopeless(now, timeout) {
			h.done.Store(true)
			delete(g.holders, h)
			ended = append(ended, h)
		}
	}
	g.mu.Unlock()
	for _, h := range ended {
		h.end()
		g.reclaimedBodies.Add(1)
		if ok, skipped := g.warn.Allow("body_room"); ok {
			args := []any{"room_bytes", g.budget, "reclaimed", g.reclaimedBodies.Load()}
			if skipped > 0 {
				args = append(args, loglimit.Skipped, skipped)
			}
			g.log.Warn("ended a request body too slow to arrive within the read timeout, to give its room among the large bodies to others waiting for it (clients must send a body at once)", args...)
		}
	}
}

// bodyRefused is the refusal of a request whose body was not read
// (ErrBodyRefused), in the client API's terms.
func bodyRefused(format string, args ...any) error {
	return connectError(fmt.Errorf("%w: "+format, append([]any{ErrBodyRefused}, args...)...))
}

// reclaimedErr is the refusal of a body whose room was reclaimed.
func (g *bodyGate) reclaimedErr(timeout time.Duration) error {
	return bodyRefused("request body arriving too slowly to be read within %v (the agent's read timeout) while others waited for room among the request bodies over %d KiB the agent holds at once (%d MiB node-wide, fixed): its room was given to them; send the whole body at once", timeout, apiFreeBodyBytes>>10, g.budget>>20)
}

// roomWaiter is a large body waiting for room (bodyGate.room).
type roomWaiter struct {
	size  int64
	ready chan struct{} // closed once the room is its
	done  bool          // the room is its (guarded by bodyGate.mu)
}

// room takes size bytes of the gate's budget (at most all of it), once
// those ahead have theirs, waiting until ctx ends or for timeout (if
// positive).
func (g *bodyGate) room(ctx context.Context, size int64, timeout time.Duration) (int64, error) {
	size = min(size, g.budget)
	g.mu.Lock()
	if len(g.queue) == 0 && g.held+size <= g.budget {
		g.held += size
		g.mu.Unlock()
		return size, nil
	}
	w := &roomWaiter{size: size, ready: make(chan struct{})}
	g.queue = append(g.queue, w)
	g.mu.Unlock()
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	look := time.NewTicker(reclaimEvery)
	defer look.Stop()
	var err error
wait:
	for {
		select {
		case <-w.ready:
			return size, nil
		case <-ctx.Done():
			err = context.Cause(ctx)
			break wait
		case <-expired:
			err = bodyRefused("a request body of %d bytes waited %v (the read timeout) for room among the request bodies over %d KiB the agent holds at once, %d MiB node-wide (fixed): other clients are sending many; retry later, or send smaller requests", size, timeout, apiFreeBodyBytes>>10, g.budget>>20)
			break wait
		case now := <-look.C:
			g.reclaim(now, timeout)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.done {
		g.held -= size // given as it gave up
	} else {
		for i, x := range g.queue {
			if x == w {
				g.queue = append(g.queue[:i], g.queue[i+1:]...)
				break
			}
		}
	}
	g.grantLocked()
	return 0, err
}

// unroom gives back size bytes of the budget.
func (g *bodyGate) unroom(size int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held -= size
	g.grantLocked()
}

// grantLocked gives room to the waiters first in line while it lasts.
func (g *bodyGate) grantLocked() {
	for len(g.queue) > 0 && g.held+g.queue[0].size <= g.budget {
		w := g.queue[0]
		g.queue = g.queue[1:]
		g.held += w.size
		w.done = true
		close(w.ready)
	}
}

// srcToken is a source's turn to read a large body, with the count of
// its requests that hold or want it.
type srcToken struct {
	turn chan struct{} // capacity 1
	refs int
}

func (g *bodyGate) token(src string) *srcToken {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.srcs[src]
	if t == nil {
		t = &srcToken{turn: make(chan struct{}, 1)}
		g.srcs[src] = t
	}
	t.refs++
	return t
}

func (g *bodyGate) untoken(src string, t *srcToken) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t.refs--; t.refs == 0 {
		delete(g.srcs, src)
	}
}

// bodySlot is one request's claim on its source's turn and a decoding
// slot.
type bodySlot struct {
	g     *bodyGate
	src   string
	ctx   context.Context // the request's: a wait ends with it
	mu    sync.Mutex
	tok   *srcToken // held
	dec   bool      // a decoding slot held
	bytes int64     // room held among the large bodies (bodyGate.room)
	// holder, if set, lets the gate watch the body while it holds room
	// (bodyGate.reclaim).
	holder *roomHolder
}

// reclaimed reports whether the gate took back the body's room.
func (s *bodySlot) reclaimed() bool { return s.holder != nil && s.holder.done.Load() }

// bodySlotKey carries a request's *bodySlot in its context.
type bodySlotKey struct{}

// take takes the source's turn, waiting for it at most timeout (if
// positive), and a decoding slot too once the body is complete.
func (s *bodySlot) take(complete bool, timeout time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok == nil {
		t := s.g.token(s.src)
		var expired <-chan time.Time
		if timeout > 0 {
			tm := time.NewTimer(timeout)
			defer tm.Stop()
			expired = tm.C
		}
		select {
		case t.turn <- struct{}{}:
			s.tok = t
		case <-s.ctx.Done():
			s.g.untoken(s.src, t)
			return context.Cause(s.ctx)
		case <-expired:
			s.g.untoken(s.src, t)
			return bodyRefused("a request body over %d KiB waited %v (the read timeout) for its client source's turn (an IPv4 /24, an IPv6 /64 reads one such body at a time, paced by the agent's --max-api-rate): other clients of the source are sending many; retry later, send smaller requests, or raise --max-api-rate if the node has CPU to spare", apiFreeBodyBytes>>10, timeout)
		}
	}
	if complete && !s.dec {
		select {
		case s.g.decoding <- struct{}{}:
			s.dec = true
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
	return nil
}

// hold takes the source's turn and room for a body of size bytes (what
// it holds already counted), waiting for each at most timeout (if
// positive).
func (s *bodySlot) hold(size int64, timeout time.Duration) error {
	if err := s.take(false, timeout); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	more := min(size, s.g.budget) - s.bytes
	if more <= 0 {
		return nil
	}
	got, err := s.g.room(s.ctx, more, timeout)
	s.bytes += got
	if h := s.holder; h != nil && got > 0 {
		s.g.mu.Lock()
		if !h.done.Load() {
			if _, ok := s.g.holders[h]; !ok {
				// Its rate is measured from here: the wait for room is not its.
				h.markGot, h.markWaits, _ = h.pace(time.Now())
			}
			h.size = s.bytes
			s.g.holders[h] = struct{}{}
		}
		s.g.mu.Unlock()
	}
	return err
}

func (s *bodySlot) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bytes > 0 {
		if s.holder != nil {
			s.g.mu.Lock()
			delete(s.g.holders, s.holder)
			s.g.mu.Unlock()
		}
		s.g.unroom(s.bytes)
		s.bytes = 0
	}
	if s.dec {
		s.dec = false
		<-s.g.decoding
	}
	if s.tok != nil {
		<-s.tok.turn
		s.g.untoken(s.src, s.tok)
		s.tok = nil
	}
}

// decoded releases the large-body slot of the request ctx belongs to, if
// it holds one: its message is decoded.
func decoded(ctx context.Context) {
	if s, ok := ctx.Value(bodySlotKey{}).(*bodySlot); ok {
		s.release()
	}
}

// limitedGzip is the API's gzip decompressor: it inflates at most max
// bytes of a request, then fails with an error naming the limit.
type limitedGzip struct {
	gzip.Reader
	max, left int64
}

// Reset implements connect.Decompressor.
func (z *limitedGzip) Reset(r io.Reader) error {
	z.left = z.max
	return z.Reader.Reset(r)
}

func (z *limitedGzip) Read(p []byte) (int, error) {
	if int64(len(p)) > z.left+1 {
		p = p[:z.left+1]
	}
	n, err := z.Reader.Read(p)
	if z.left -= int64(n); z.left < 0 {
		return n, requestTooLarge(z.max, " once decompressed")
	}
	return n, err
}

// requestTooLarge is the refusal of a request over Limits.MaxRequestBytes.
func requestTooLarge(max int64, how string) error {
	return connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("request of more than %d bytes%s: over the limit (agent --max-request-bytes)", max, how))
}

// bearerOK reports whether an Authorization header carries token. The
// scheme is case-insensitive (RFC 9110 §11.1).
func bearerOK(header, token string) bool {
	scheme, got, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) == 1
}

// connectError maps a node error to a connect error carrying an
// ErrorDetail, so remote clients can tell retryable from final failures.
func connectError(err error) error {
	if err == nil {
		return nil
	}
	code := connect.CodeUnknown
	d := ErrorDetail(err)
	switch d.GetReason() {
	case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER:
		code = connect.CodeUnavailable
	case pb.Reason_REASON_INVALID:
		code = connect.CodeInvalidArgument
	case pb.Reason_REASON_UNKNOWN_OUTCOME:
		code = connect.CodeAborted
	case pb.Reason_REASON_STALE_REQUEST:
		code = connect.CodeFailedPrecondition
	case pb.Reason_REASON_CLOSED, pb.Reason_REASON_OVERLOADED:
		code = connect.CodeUnavailable
	case pb.Reason_REASON_UNAUTHENTICATED:
		code = connect.CodeUnauthenticated
	case pb.Reason_REASON_RESOURCE_EXHAUSTED:
		code = connect.CodeResourceExhausted
	default:
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			code = connect.CodeDeadlineExceeded
		case errors.Is(err, context.Canceled):
			code = connect.CodeCanceled
		}
	}
	if d.GetSizeLimit() {
		code = connect.CodeResourceExhausted // sizeLimitError
	}
	ce := connect.NewError(code, err)
	if det, derr := connect.NewErrorDetail(d); derr == nil {
		ce.AddDetail(det)
	}
	return ce
}

// apiServer adapts Node's methods to the generated handler interface.
type apiServer struct{ n *Node }

func unary[Req, Resp any](ctx context.Context, req *connect.Request[Req], f func(context.Context, *Req) (*Resp, error)) (*connect.Response[Resp], error) {
	resp, err := f(ctx, req.Msg)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(resp), nil
}

// read serves a read whose reply pays for its holdings and bytes at its
// client address's turns before it is built (servePaidRead).
func read[Req, Resp any](ctx context.Context, n *Node, req *connect.Request[Req], f func(context.Context, *Req) (*Resp, error)) (*connect.Response[Resp], error) {
	source := addrSource(req.Peer().Addr)
	pay := func(ctx context.Context, units int64) error { return n.payUnits(ctx, source, units) }
	resp, err := servePaidRead(ctx, n, any(req.Msg), pay, func(ctx context.Context) (*Resp, error) { return f(ctx, req.Msg) })
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(resp), nil
}

func (s *apiServer) Acquire(ctx context.Context, r *connect.Request[pb.AcquireRequest]) (*connect.Response[pb.AcquireResponse], error) {
	if src := peerSource(r.Peer().Addr); src != "" {
		ctx = context.WithValue(ctx, waiterSourceKey{}, src) // its waits count by source (waiterSlot)
	}
	if n := len(r.Msg.GetItems()); n > 0 { // a set: its other keys too (one over fsm.MaxSetKeys is refused)
		if err := s.n.payKeys(ctx, addrSource(r.Peer().Addr), min(1+n, fsm.MaxSetKeys)); err != nil {
			return nil, connectError(err)
		}
	}
	return unary(ctx, r, s.n.Acquire)
}

func (s *apiServer) Extend(ctx context.Context, r *connect.Request[pb.ExtendRequest]) (*connect.Response[pb.ExtendResponse], error) {
	if err := s.n.payExtend(ctx, addrSource(r.Peer().Addr), r.Msg); err != nil {
		return nil, connectError(err)
	}
	return unary(ctx, r, s.n.Extend)
}

func (s *apiServer) Release(ctx context.Context, r *connect.Request[pb.ReleaseRequest]) (*connect.Response[pb.ReleaseResponse], error) {
	// A set's release frees every member: its other keys pay too.
	if keys := s.n.fsm.ExtendKeys(r.Msg.GetHolder(), []fsm.ExtendItem{{Key: r.Msg.GetKey(), Token: r.Msg.GetToken()}}); keys > 1 {
		if err := s.n.payKeys(ctx, addrSource(r.Peer().Addr), keys); err != nil {
			return nil, connectError(err)
		}
	}
	return unary(ctx, r, s.n.Release)
}

func (s *apiServer) Abandon(ctx context.Context, r *connect.Request[pb.AbandonRequest]) (*connect.Response[pb.AbandonResponse], error) {
	return unary(ctx, r, s.n.Abandon)
}

func (s *apiServer) Get(ctx context.Context, r *connect.Request[pb.GetRequest]) (*connect.Response[pb.GetResponse], error) {
	return read(ctx, s.n, r, s.n.Get)
}

func (s *apiServer) List(ctx context.Context, r *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	return read(ctx, s.n, r, s.n.List)
}

func (s *apiServer) CheckToken(ctx context.Context, r *connect.Request[pb.CheckTokenRequest]) (*connect.Response[pb.CheckTokenResponse], error) {
	return read(ctx, s.n, r, s.n.CheckToken)
}

func (s *apiServer) Members(ctx context.Context, r *connect.Request[pb.MembersRequest]) (*connect.Response[pb.MembersResponse], error) {
	return unary(ctx, r, s.n.Members)
}

func (s *apiServer) Status(ctx context.Context, r *connect.Request[pb.StatusRequest]) (*connect.Response[pb.StatusResponse], error) {
	return unary(ctx, r, s.n.Status)
}

func (s *apiServer) Watch(ctx context.Context, r *connect.Request[pb.WatchRequest], stream *connect.ServerStream[pb.WatchEvent]) error {
	decoded(ctx)
	if src := peerSource(r.Peer().Addr); src != "" {
		ctx = context.WithValue(ctx, watchSourceKey{}, src)
	}
	// Its initial listing pays for its leases at the turns a List of
	// this request would (replyCost).
	ctx = context.WithValue(ctx, watchPayKey{}, addrSource(r.Peer().Addr))
	// A graceful stop ends the stream with ErrClosed at once (Node.stopping):
	// the API's drain would otherwise wait its second for it and then cut
	// the connection, which the client could only call broken.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.n.stopping, cancel)()
	ch, ended, err := s.n.watch(ctx, r.Msg)
	if err != nil {
		return connectError(err)
	}
	// Send the response headers now: a client's Watch returns once they
	// arrive, and on a quiet prefix the first event may be a long time
	// coming.
	if err := stream.Send(nil); err != nil {
		return err
	}
	for e := range ch {
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	if s.n.stopping.Err() != nil {
		return connectError(fmt.Errorf("%w: node %s is shutting down (it closed the stream; watch another node)", ErrClosed, s.n.cfg.ID))
	}
	if err := ended(); err != nil {
		return connectError(err) // its own disk hangs: it applies nothing
	}
	if ctx.Err() != nil {
		return nil
	}
	return connectError(ErrClosed)
}

// peerSource is the client source of a request from addr, a connect
// Peer's "host:port": its IPv4 /24 or IPv6 /64 (transport.SourcePrefix
// with HandshakeV4Bits), or "" if addr names no host.
func peerSource(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return transport.SourcePrefix(&net.TCPAddr{IP: net.ParseIP(host)}, transport.HandshakeV4Bits)
}
