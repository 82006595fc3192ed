package lease

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Dial returns a Client for a cluster reached over the network at addrs
// (host:port of any nodes' client API; one is enough, more give failover).
// Requests go straight to the leader, learned from every reply's header;
// when the leader cannot be reached the client tries the other addresses.
// Dial checks that some node answers before returning, trying for up to
// the retry timeout (WithRetryTimeout) or until ctx ends.
func Dial(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	r, err := NewRemote(addrs, opts...)
	if err != nil {
		return nil, err
	}
	// Nodes starting alongside the caller (a service manager starting both)
	// may not listen yet: try as any request would, for up to the retry
	// timeout. A refusal (a wrong token, say) ends it at once.
	dial := cmp.Or(o.dialTimeout, o.retryTimeout)
	retry := RetryPolicy{Timeout: dial, BackoffMin: o.backoffMin, BackoffMax: o.backoffMax, Name: "retry timeout"}
	if o.dialTimeout != 0 {
		retry.Name = "dial timeout"
	}
	if err := retry.Do(ctx, true, func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, dial)
		defer cancel()
		_, err := r.Status(actx)
		return err
	}); err != nil {
		r.Close()
		var ge *GiveUpError
		var ns *NotSentError
		if errors.As(err, &ge) && ge.Answer == nil && errors.As(ge.Last, &ns) {
			// No node answered at all.
			return nil, fmt.Errorf("dial %s: %w; check that each address is a node's client API address (agent --api) and that the agents run", strings.Join(addrs, ","), err)
		}
		return nil, fmt.Errorf("dial %s: %w", strings.Join(addrs, ","), err)
	}
	c, err := New(r, opts...)
	if err != nil {
		r.Close()
		return nil, err
	}
	c.closer = r.Close
	return c, nil
}

// Remote is a Backend that reaches a cluster through the client API of
// its nodes (what Dial uses). Tools use it directly for raw requests,
// Status and Members. Requests go to the leader learned from reply
// headers; a request that certainly did not reach a node is tried on the
// next address; a write whose reply was lost fails with an error matching
// ErrUnknownOutcome and is never retried here.
type Remote struct {
	http *http.Client // short requests (see NewRemote)
	// streams sends watches and waiting acquires: HTTP/2, h2c without
	// TLS, many streams on a connection.
	streams *http.Client
	// checks sends liveness checks (probe): over HTTP/1.1 always, which
	// the node serves ahead of its API budget's queue; with TLS, http
	// speaks HTTP/2, whose frames the node paces as it reads them,
	// behind other clients of the address.
	checks      *http.Client
	scheme      string
	token       string
	seeds       []string
	peerTimeout time.Duration // see WithPeerTimeout; 0: no liveness checks
	stop        context.Context
	halt        context.CancelFunc

	mu      sync.Mutex
	clients map[string]pbconnect.LeaseServiceClient
	long    map[string]pbconnect.LeaseServiceClient // on streams
	probes  map[string]pbconnect.LeaseServiceClient // on checks
	leader  string                                  // API address of the leader, from the last reply
	peers   map[string]*peer
	// released: Close let go of the process's liveness records
	// (nodeLiveness) its peers held; peers made later hold none.
	released bool
}

// NewRemote returns a Remote for the nodes at addrs. Of the options only
// WithTLS, WithAuthToken and WithPeerTimeout apply. It does not contact
// the cluster.
func NewRemote(addrs []string, opts ...Option) (*Remote, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: no addresses to dial", ErrInvalid)
	}
	for _, a := range addrs {
		if strings.Contains(a, "://") {
			return nil, fmt.Errorf("%w: address %q: give host:port, without a scheme (TLS is set apart: WithTLS, the CLI's --tls-ca)", ErrInvalid, a)
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: address %q: %v (want host:port, as 127.0.0.1:7402)", ErrInvalid, a, err)
		}
	}
	// Short requests go over a pool of connections (http): over TLS,
	// HTTP/2; without, HTTP/1.1, which gave more pairs a second than one
	// multiplexed h2c connection (node/DESIGN.md). Requests that may
	// hold a stream for long, watches and waiting acquires, go over
	// HTTP/2 either way (streams; in clear text h2c.go's transport), so
	// that hundreds of them share a connection or a few instead of each
	// holding one of the node's --max-conns. Liveness checks go over
	// HTTP/1.1 always (checks), which a node serves ahead of its API
	// budget's queue.
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	h1 := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxConnsPerHost:     maxConnsPerNode,
		MaxIdleConnsPerHost: maxConnsPerNode,
		IdleConnTimeout:     90 * time.Second,
	}
	// Checks have connections of their own: they must not queue behind
	// the requests they check on.
	var tr, streams, checks http.RoundTripper = h1, newPlainTransport(), &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
	}
	if o.tls != nil {
		h2 := &http.Transport{
			DialContext:         dialer.DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			TLSClientConfig:     o.tls,
			ForceAttemptHTTP2:   true,
		}
		tls1 := o.tls.Clone()
		tls1.NextProtos = []string{"http/1.1"}
		h1.MaxConnsPerHost, h1.MaxIdleConnsPerHost = 0, 2 // checks only
		h1.TLSClientConfig = tls1
		h1.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // not nil: no HTTP/2
		tr, streams, checks = h2, h2, h1
	}
	r := &Remote{
		http:        &http.Client{Transport: tr},
		streams:     &http.Client{Transport: streams},
		checks:      &http.Client{Transport: checks},
		long:        map[string]pbconnect.LeaseServiceClient{},
		probes:      map[string]pbconnect.LeaseServiceClient{},
		scheme:      "http://",
		token:       o.token,
		seeds:       append([]string(nil), addrs...),
		peerTimeout: o.peerTimeout,
		clients:     map[string]pbconnect.LeaseServiceClient{},
		peers:       map[string]*peer{},
	}
	r.stop, r.halt = context.WithCancel(context.Background())
	if o.tls != nil {
		r.scheme = "https://"
	}
	return r, nil
}

// maxConnsPerNode bounds the HTTP/1.1 connections a Remote opens to one
// node for its short requests; more requests at once wait for one. A
// program's 1,000 TryAcquires at once opened 1,000 connections, past the
// node's share of --max-conns for one client source and its cap on
// connections that have not yet sent the auth token: thousands were
// refused and retried (outsider review s36). 32 carry more requests a
// second than a node commits.
const maxConnsPerNode = 32

// Close releases idle connections and stops the liveness checks.
func (r *Remote) Close() {
	r.halt()
	r.mu.Lock()
	if !r.released {
		r.released = true
		for addr, p := range r.peers {
			releaseLiveness(r.scheme+addr, p.node)
		}
	}
	r.mu.Unlock()
	r.http.CloseIdleConnections()
	r.streams.CloseIdleConnections()
	r.checks.CloseIdleConnections()
}

// Addrs returns the configured node addresses.
func (r *Remote) Addrs() []string { return append([]string(nil), r.seeds...) }

func (r *Remote) client(addr string) pbconnect.LeaseServiceClient {
	return r.clientOn(r.clients, r.http, addr)
}

// streamClient is client for requests that may hold a stream for long:
// over HTTP/2 (see streams).
func (r *Remote) streamClient(addr string) pbconnect.LeaseServiceClient {
	return r.clientOn(r.long, r.streams, addr)
}

// probeClient is client for liveness checks: over HTTP/1.1 (see checks).
func (r *Remote) probeClient(addr string) pbconnect.LeaseServiceClient {
	return r.clientOn(r.probes, r.checks, addr)
}

func (r *Remote) clientOn(clients map[string]pbconnect.LeaseServiceClient, hc *http.Client, addr string) pbconnect.LeaseServiceClient {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := clients[addr]
	if c == nil {
		var opts []connect.ClientOption
		if r.token != "" {
			opts = append(opts, connect.WithInterceptors(bearer(r.token)))
		}
		c = pbconnect.NewLeaseServiceClient(hc, r.scheme+addr, opts...)
		clients[addr] = c
	}
	return c
}

// targets lists addresses to try: the known leader first, then the
// seeds; an address that failed a liveness check lately goes last.
func (r *Remote) targets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	out := make([]string, 0, len(r.seeds)+1)
	var late []string
	add := func(a string) {
		if r.suspect(a, now) {
			late = append(late, a)
		} else {
			out = append(out, a)
		}
	}
	if r.leader != "" {
		add(r.leader)
	}
	for _, s := range r.seeds {
		if s != r.leader {
			add(s)
		}
	}
	return append(out, late...)
}

func (r *Remote) learn(h *pb.Header) {
	if h.GetLeaderAddr() == "" {
		return
	}
	r.mu.Lock()
	r.leader = h.GetLeaderAddr()
	r.mu.Unlock()
}

func (r *Remote) forget(addr string) {
	r.mu.Lock()
	if r.leader == addr {
		r.leader = ""
	}
	r.mu.Unlock()
}

// headered is every reply type.
type headered interface{ GetHeader() *pb.Header }

// NotSentError reports that a request was never written to a connection
// (no connection could be made, or it broke before the request went out),
// so it certainly had no effect and may be sent anywhere again. It is
// decided by what the HTTP transport reports having written
// (httptrace.WroteRequest), never by matching error text.
type NotSentError struct {
	Addr string
	Err  error
}

func (e *NotSentError) Error() string { return fmt.Sprintf("not sent to %s: %v", e.Addr, e.Err) }
func (e *NotSentError) Unwrap() error { return e.Err }

// call makes one attempt at a request: to the leader if known, else to the
// configured addresses in turn, moving on only while the request certainly
// had no effect (not written, or refused by a node that is not the leader,
// following its hint). It never sleeps and never repeats a request that
// may have been applied: retrying over time is RetryPolicy's job. A write
// whose reply was lost fails with an error matching ErrUnknownOutcome.
func call[Req, Resp any, PResp interface {
	*Resp
	headered
}](ctx context.Context, r *Remote, write bool, req *Req,
	f func(pbconnect.LeaseServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error)) (*Resp, error) {
	return callOn[Req, Resp, PResp](ctx, r, r.client, write, req, f)
}

// callOn is call, over the clients that on returns (Remote.streamClient
// for a request that may wait long: a waiting acquire, and only then).
func callOn[Req, Resp any, PResp interface {
	*Resp
	headered
}](ctx context.Context, r *Remote, on func(string) pbconnect.LeaseServiceClient, write bool, req *Req,
	f func(pbconnect.LeaseServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error)) (*Resp, error) {
	var lastErr error
	var answer error   // the last refusal a node explained (no leader: why)
	led := false       // a node answered not leader
	var setupErr error // the last TLS mismatch or wrong port
	setupOnly := true  // every address failed on one
	tried := map[string]bool{}
	// Each address at most once, plus the leaders that refusals point to
	// (bounded: two nodes that name each other must not loop).
	for hops := 2*len(r.seeds) + 2; hops > 0; hops-- {
		addr := r.next(tried)
		if addr == "" {
			break
		}
		tried[addr] = true
		var wrote, replied atomic.Bool
		tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest:         func(i httptrace.WroteRequestInfo) { wrote.Store(i.Err == nil) },
			GotFirstResponseByte: func() { replied.Store(true) },
		})
		tctx, done := r.track(tctx, addr)
		sub := time.Now()
		resp, err := f(on(addr), tctx, connect.NewRequest(req))
		done(replied.Load())
		var ue *UnresponsiveError
		if err != nil && ctx.Err() == nil && errors.As(context.Cause(tctx), &ue) {
			err = ue // the node stopped answering: say so, not "canceled"
		}
		if err == nil {
			r.learn(PResp(resp.Msg).GetHeader())
			return resp.Msg, nil
		}
		if p, port := TLSProblemOf(err, r.scheme == "https://"), wrongPort(err); p != 0 || port != "" {
			// Final only if every address says so: one node still on
			// the old setup (a rolling switch to TLS) must not stop the
			// call from reaching the others.
			if p != 0 {
				setupErr = &TLSSetupError{Addr: addr, Problem: p, Err: err}
				lastErr = fmt.Errorf("%s: %s (%v)", addr, p.hint(), err) // retryable while other addresses may answer
			} else {
				setupErr = fmt.Errorf("%w: %s is a %s, not the client API: give the agents' --api addresses", ErrWrongPort, addr, port)
				lastErr = setupErr
			}
			r.forget(addr)
			if ctx.Err() != nil {
				return nil, setupErr
			}
			continue
		}
		setupOnly = false
		if d := detailOf(err); d != nil {
			switch d.GetReason() {
			case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER, pb.Reason_REASON_CLOSED:
				// Refused before anything was applied.
				lastErr, answer = err, err
				led = led || d.GetReason() == pb.Reason_REASON_NOT_LEADER
				r.redirect(addr, d.GetLeaderAddr(), tried)
				if ctx.Err() != nil {
					return nil, err
				}
				continue
			}
			return nil, err
		}
		if !wrote.Load() {
			lastErr = &NotSentError{Addr: addr, Err: err}
			r.forget(addr)
			if ctx.Err() != nil {
				return nil, lastErr
			}
			continue
		}
		r.forget(addr)
		if ctx.Err() != nil && !replied.Load() && time.Since(sub) >= slowAfter && !isWait(req) {
			// A request that never waits sat at a node until its caller
			// gave up: try the others first for a while (see slowAfter).
			r.slowed(addr)
		}
		if write {
			// How long this node held the request while it was heard
			// from (a wait there), not the attempt's whole time: a
			// stopped node, silent all along, held no wait, nor did the
			// nodes that answered "no leader" before it.
			waited := r.heardFor(addr, sub)
			return nil, &heldFor{err: fmt.Errorf("%w: %s: %w", ErrUnknownOutcome, addr, err), waited: waited}
		}
		return nil, &noLeaderError{err: err}
	}
	if lastErr == nil {
		lastErr = errors.New("no address to try")
	}
	if setupOnly && setupErr != nil {
		return nil, setupErr
	}
	if answer != nil {
		// A node that said why there is no leader (an election in
		// progress, no quorum) tells more than one that refused the
		// connection after it.
		lastErr = answer
	}
	return nil, &noLeaderError{err: lastErr, led: led}
}

// heldFor is a failed attempt's error with how long the node that ended
// it held the request while alive (RetryPolicy's "a wait cut short").
type heldFor struct {
	err    error
	waited time.Duration
}

func (e *heldFor) Error() string                { return e.err.Error() }
func (e *heldFor) Unwrap() error                { return e.err }
func (e *heldFor) attemptWaited() time.Duration { return e.waited }

// wrongPort says which port of an agent answered an HTTP request if err
// is its wrong-port answer (marked Leasenode-Port: node or gossip), and
// returns "" otherwise: the address is not a client API.
func wrongPort(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return ""
	}
	switch ce.Meta().Get("Leasenode-Port") {
	case "node":
		return "node port (Raft and node RPC)"
	case "gossip":
		return "gossip port"
	case "http":
		return "probe and metrics port (--http)"
	}
	if ce.Code() == connect.CodeUnimplemented && strings.Contains(ce.Message(), "404") {
		// Connect's reading of a plain HTTP 404: no handler of the call's
		// path, so no leasenode client API (or one too old for the call).
		// Retrying cannot help either way.
		return "server that answered HTTP 404 (no leasenode client API there, or an agent older than this call)"
	}
	return ""
}

// TLSProblemOf says how err, from a request to a node made with TLS
// (usedTLS) or without, shows that the client's TLS settings do not fit
// the node's; 0 if it does not. Tools that make their own HTTP requests to
// a node (a health probe) classify their errors with it as Remote does.
func TLSProblemOf(err error, usedTLS bool) TLSProblem {
	var verr *tls.CertificateVerificationError
	var ce *connect.Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &verr):
		return TLSUnverified
	case strings.Contains(err.Error(), "remote error: tls: "): // an alert from the node
		return TLSClientCertRequired
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"),
		strings.Contains(err.Error(), "first record does not look like a TLS handshake"): // a port that does not speak HTTP (gossip)
		return TLSNodeIsPlain
	case !usedTLS && errors.As(err, &ce) && strings.Contains(ce.Message(), "400 Bad Request"):
		// What Go's server answers plain HTTP on a TLS port with.
		return TLSNodeRequiresTLS
	}
	return 0
}

// next returns the first address not yet tried: the known leader, then
// the configured addresses.
func (r *Remote) next(tried map[string]bool) string {
	for _, a := range r.targets() {
		if !tried[a] {
			return a
		}
	}
	return ""
}

// redirect follows a not-leader refusal from addr: forget addr as leader
// and, if it named another leader we have not been sent to yet, try that
// next (unless it failed a liveness check lately: the refusing node may
// not have noticed yet).
func (r *Remote) redirect(addr, leader string, tried map[string]bool) {
	r.forget(addr)
	if leader == "" || leader == addr {
		return
	}
	r.mu.Lock()
	r.leader = leader
	stopped := r.suspect(leader, time.Now())
	r.mu.Unlock()
	if !stopped {
		delete(tried, leader)
	}
}

// noLeaderError reports that no node could serve the request; it carries
// REASON_NO_LEADER so callers retry.
// led says a node of the attempt answered "not leader" (a leader that
// stepped down, its waiters cut): the reason is then NOT_LEADER, so a
// waiting acquire does not count its wait there as a run of failures.
type noLeaderError struct {
	err error
	led bool
}

func (e *noLeaderError) Error() string { return "no reachable leader: " + e.err.Error() }
func (e *noLeaderError) Unwrap() error { return e.err }
func (e *noLeaderError) Reason() pb.Reason {
	if e.led {
		return pb.Reason_REASON_NOT_LEADER
	}
	return pb.Reason_REASON_NO_LEADER
}

// Status asks any node (the leader first, if known) to describe itself.
// A node that has not answered within statusHedge is not waited for
// alone: the next address is asked too, and so on, and the first answer
// is taken. Status is how Dial and the CLI find the cluster, and a stopped
// node first in the list (SIGSTOP, a paused VM: its kernel still accepts
// the connection) held them past their dial timeout before the liveness
// check gave up on it (new-user review s38); a Status changes nothing, so
// asking two nodes costs only the second answer.
func (r *Remote) Status(ctx context.Context) (*pb.StatusResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		s   *pb.StatusResponse
		err error
	}
	// The first try goes through call, which goes on to the other
	// addresses when one certainly fails and whose error says best why
	// none answered; the hedges each ask one node, and only their answers
	// count.
	first := make(chan answer, 1)
	go func() {
		s, err := call(ctx, r, false, &pb.StatusRequest{}, pbconnect.LeaseServiceClient.Status)
		first <- answer{s, err}
	}()
	hedged := make(chan *pb.StatusResponse, len(r.seeds)+1)
	order := r.targets()
	hedge := time.NewTimer(statusHedge)
	defer hedge.Stop()
	for next := 1; ; {
		select {
		case a := <-first:
			return a.s, a.err
		case s := <-hedged:
			r.learn(s.GetHeader())
			return s, nil
		case <-hedge.C:
			if next < len(order) {
				addr := order[next]
				next++
				go func() {
					if s, err := r.StatusAt(ctx, addr); err == nil {
						hedged <- s
					}
				}()
				hedge.Reset(statusHedge)
			}
		}
	}
}

// statusHedge is how long Status waits for one node before asking the
// next as well: a Status is answered from the node's memory, in a
// millisecond when it is well, and in tens on a loaded host.
const statusHedge = 300 * time.Millisecond

// StatusAt asks the node at addr to describe itself.
func (r *Remote) StatusAt(ctx context.Context, addr string) (*pb.StatusResponse, error) {
	resp, err := r.client(addr).Status(ctx, connect.NewRequest(&pb.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// Members lists the cluster's nodes as gossip sees them.
func (r *Remote) Members(ctx context.Context) (*pb.MembersResponse, error) {
	return call(ctx, r, false, &pb.MembersRequest{}, pbconnect.LeaseServiceClient.Members)
}

// Acquire implements Backend.
func (r *Remote) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if req.GetWait() {
		// It may wait for minutes: a stream of its own, not a
		// connection (streams).
		return callOn(ctx, r, r.streamClient, true, req, pbconnect.LeaseServiceClient.Acquire)
	}
	return call(ctx, r, true, req, pbconnect.LeaseServiceClient.Acquire)
}

// Extend implements Backend.
func (r *Remote) Extend(ctx context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return call(ctx, r, true, req, pbconnect.LeaseServiceClient.Extend)
}

// Release implements Backend.
func (r *Remote) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	return call(ctx, r, true, req, pbconnect.LeaseServiceClient.Release)
}

// Abandon implements Backend.
func (r *Remote) Abandon(ctx context.Context, req *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	return call(ctx, r, true, req, pbconnect.LeaseServiceClient.Abandon)
}

// Get implements Backend.
func (r *Remote) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	return call(ctx, r, false, req, pbconnect.LeaseServiceClient.Get)
}

// List implements Backend.
func (r *Remote) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	return call(ctx, r, false, req, pbconnect.LeaseServiceClient.List)
}

// CheckToken implements Backend.
func (r *Remote) CheckToken(ctx context.Context, req *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error) {
	return call(ctx, r, false, req, pbconnect.LeaseServiceClient.CheckToken)
}

// Watch implements Backend. It streams from one node (any: every node
// applies every change). The stream ends if that node stops answering
// (see WithPeerTimeout).
//
// Opening a stream reports no error for a node that is gone: the refused
// connection shows only when the stream ends, before its first event. Such
// a stream is that node's failure, not the watch's: the next address is
// tried on the same channel (the caller has seen nothing yet, and the next
// node sends the current holdings again), and the node stops being the
// leader this Remote sends to first. Otherwise every watch after a leader
// died was opened to the dead leader and ended at once, for as long as no
// other request taught this Remote the new one. A node's refusal (its
// --max-watches) is tried elsewhere too; Watch waits for the first event
// (up to firstEventWait) and returns the refusal if every node refused,
// rather than a channel that closes at once.
func (r *Remote) Watch(ctx context.Context, req *pb.WatchRequest) (<-chan *pb.WatchEvent, error) {
	out, _, err := r.watchEnds(ctx, req)
	return out, err
}

// watchEnds is Watch, and also returns why the channel closed once it has:
// nil if ctx ended, or the stream ended after a Reset event; else the
// stream's error (a node's limit, a broken connection), or errWatchEnded.
// Client.Watch reports it (Event Broken) instead of closing in silence.
func (r *Remote) watchEnds(ctx context.Context, req *pb.WatchRequest) (<-chan *pb.WatchEvent, func() error, error) {
	tried := map[string]bool{}
	var refusal error      // the last node's refusal of the stream (final), if any
	var broke error        // why the last stream ended before its first event, if not a refusal
	var cause func() error // why the open stream's context ended (a liveness check's UnresponsiveError)
	open := func() (string, *connect.ServerStreamForClient[pb.WatchEvent], func(bool), error) {
		var lastErr error
		for _, addr := range r.targets() {
			if tried[addr] {
				continue
			}
			tried[addr] = true
			// The stream is a request in flight for as long as it is open: a
			// node that stops answering ends it (the caller watches again).
			sctx, done := r.track(ctx, addr)
			stream, err := r.streamClient(addr).Watch(sctx, connect.NewRequest(req))
			if err != nil {
				done(false)
				if ue := (*UnresponsiveError)(nil); errors.As(context.Cause(sctx), &ue) {
					err = ue
				}
				lastErr = err
				continue
			}
			cause = func() error { return context.Cause(sctx) }
			return addr, stream, done, nil
		}
		if refusal != nil {
			return "", nil, nil, refusal
		}
		return "", nil, nil, &noLeaderError{err: cmp.Or(lastErr, broke, errors.New("no address to try"))}
	}
	addr, stream, done, err := open()
	if err != nil {
		return nil, nil, err
	}
	out := make(chan *pb.WatchEvent, 64)
	var ended error // why out closed (see watch); written before it closes
	// first carries the stream's fate until its first event: nil once one
	// came, else why every node's stream ended before one (a refusal, such
	// as a node's --max-watches, comes as the stream's error).
	first := make(chan error, 1)
	// report never blocks: Watch may have returned at firstEventWait
	// without reading first, and a first event since then filled it
	// (review s32b: the channel then never closed).
	report := func(err error) {
		select {
		case first <- err:
		default:
		}
	}
	go func() {
		defer close(out)
		for {
			got := 0
			reset := false // the last event was Reset, after which a stream ends
			for stream.Receive() {
				if got == 0 {
					report(nil)
				}
				got++
				r.hear(addr)
				reset = stream.Msg().GetType() == pb.EventType_EVENT_TYPE_RESET
				select {
				case out <- stream.Msg():
				case <-ctx.Done():
					stream.Close()
					done(false)
					return
				}
			}
			serr := stream.Err()
			stream.Close()
			done(false)
			if serr != nil && classifyAttempt(serr) == final {
				refusal = serr // that node refused; another may not
			} else if serr != nil {
				r.forget(addr)
				broke = watchBroke(addr, serr) // said if no other node opens one
			}
			if got > 0 || serr == nil || ctx.Err() != nil {
				report(cmp.Or(serr, ctx.Err(), errWatchEmpty)) // dropped once an event came
				if ue := (*UnresponsiveError)(nil); serr != nil && errors.As(cause(), &ue) {
					serr = ue // the node stopped answering: say so, not "canceled"
				}
				if ctx.Err() == nil && !reset {
					ended = watchBroke(addr, serr)
				}
				return
			}
			if addr, stream, done, err = open(); err != nil {
				report(err)
				return
			}
		}
	}()
	t := time.NewTimer(firstEventWait)
	defer t.Stop()
	select {
	case err := <-first:
		if err != nil {
			return nil, nil, err
		}
	case <-t.C: // an older server sends no listing: the stream is open
	case <-ctx.Done():
	}
	return out, func() error { return ended }, nil
}

// watchBroke says why the stream from addr ended before its watch did:
// err, the stream's error (nil: the node ended it, as one shutting down
// does). A refusal the node explained (its --max-watches) names itself, as
// does a GOAWAY naming the limit the connection passed (--max-frame-rate);
// a connection that just closed does not, so the limits that close one
// are named here.
//
// The words are the client's, not the transport's: a node that shuts down
// gracefully ends the stream with REASON_CLOSED ("node X is shutting down
// (it closed the stream)"); a connection cut under the stream ("connection
// to X lost") is no invalid_argument, which connect-go calls a stream that
// ended mid-message ("protocol error: incomplete envelope"), nor is it
// the node's word (new-user review: a SIGTERM read "invalid_argument:
// protocol error: incomplete envelope: http2: server sent GOAWAY").
func watchBroke(addr string, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("node %s ended the watch stream (a node shutting down does): %w", addr, errWatchEnded)
	case reasonOf(err) == pb.Reason_REASON_CLOSED:
		return fmt.Errorf("node %s is shutting down (it closed the stream): %w", addr, errWatchEnded)
	case detailOf(err) != nil, errors.As(err, new(*UnresponsiveError)):
		return err
	}
	cause := err
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Unwrap() != nil {
		cause = ce.Unwrap() // what the transport said, without connect's code
		for {
			inner := errors.Unwrap(cause)
			if inner == nil {
				break
			}
			cause = inner
		}
	}
	return &brokenStreamError{addr: addr, cause: cause, err: err}
}

// brokenStreamError is a watch stream whose connection was cut under it.
type brokenStreamError struct {
	addr  string
	cause error // the transport's innermost error (EOF, a reset, a GOAWAY)
	err   error // the stream's error as the connect client gave it
}

func (e *brokenStreamError) Error() string {
	return fmt.Sprintf("connection to %s lost: %v (a node closes a client's connection when it stops or restarts, and at its limits: the agent's --max-conns, or a client address's share of it, --max-frame-rate, --max-api-rate; its log names the one)", e.addr, e.cause)
}

func (e *brokenStreamError) Unwrap() error { return e.err }

// firstEventWait bounds how long Watch waits for a stream's first event
// (its listing) before it returns the channel: servers older than the
// Listed event send nothing for a prefix with no holdings.
const firstEventWait = 2 * time.Second

// errWatchEmpty: every stream ended cleanly before its first event (a
// node shutting down).
var errWatchEmpty = errors.New("the watch stream ended before its first event")

// errWatchEnded: a node ended a stream cleanly after its first event,
// without a Reset.
var errWatchEnded = errors.New("the watch stream ended")

// bearer adds "Authorization: Bearer <token>" to every request.
type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
