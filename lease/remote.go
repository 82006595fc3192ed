package lease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Dial returns a Client for a cluster reached over the network at addrs
// (host:port of any nodes' client API; one is enough, more give failover).
// Requests go straight to the leader, learned from every reply's header;
// when the leader cannot be reached the client tries the other addresses.
// Dial checks that some node answers before returning.
func Dial(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	r, err := NewRemote(addrs, opts...)
	if err != nil {
		return nil, err
	}
	if _, err := r.Status(ctx); err != nil {
		r.Close()
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
	http   *http.Client
	scheme string
	token  string
	seeds  []string

	mu      sync.Mutex
	clients map[string]pbconnect.LeaseServiceClient
	leader  string // API address of the leader, from the last reply
}

// NewRemote returns a Remote for the nodes at addrs. Of the options only
// WithTLS and WithAuthToken apply. It does not contact the cluster.
func NewRemote(addrs []string, opts ...Option) (*Remote, error) {
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: no addresses to dial", ErrInvalid)
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: address %q: %v", ErrInvalid, a, err)
		}
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSClientConfig:     o.tls,
		ForceAttemptHTTP2:   o.tls != nil,
	}
	r := &Remote{
		http:    &http.Client{Transport: tr},
		scheme:  "http://",
		token:   o.token,
		seeds:   append([]string(nil), addrs...),
		clients: map[string]pbconnect.LeaseServiceClient{},
	}
	if o.tls != nil {
		r.scheme = "https://"
	}
	return r, nil
}

// Close releases idle connections.
func (r *Remote) Close() { r.http.CloseIdleConnections() }

// Addrs returns the configured node addresses.
func (r *Remote) Addrs() []string { return append([]string(nil), r.seeds...) }

func (r *Remote) client(addr string) pbconnect.LeaseServiceClient {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clients[addr]
	if c == nil {
		var opts []connect.ClientOption
		if r.token != "" {
			opts = append(opts, connect.WithInterceptors(bearer(r.token)))
		}
		c = pbconnect.NewLeaseServiceClient(r.http, r.scheme+addr, opts...)
		r.clients[addr] = c
	}
	return c
}

// targets lists addresses to try: the known leader first, then the seeds.
func (r *Remote) targets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.seeds)+1)
	if r.leader != "" {
		out = append(out, r.leader)
	}
	for _, s := range r.seeds {
		if s != r.leader {
			out = append(out, s)
		}
	}
	return out
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

// call runs one request against the leader, following not-leader hints
// and failing over between addresses while the request certainly was not
// processed. A write whose connection failed after it was sent is not
// retried here: it is reported as an unknown outcome.
func call[Req, Resp any, PResp interface {
	*Resp
	headered
}](ctx context.Context, r *Remote, write bool, req *Req,
	f func(pbconnect.LeaseServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error)) (*Resp, error) {
	var zero *Resp
	var lastErr error
	tried := map[string]bool{}
	for hop := 0; hop < 8; hop++ {
		var addr string
		for _, a := range r.targets() {
			if !tried[a] {
				addr = a
				break
			}
		}
		if addr == "" {
			break
		}
		tried[addr] = true
		resp, err := f(r.client(addr), ctx, connect.NewRequest(req))
		if err == nil {
			r.learn(PResp(resp.Msg).GetHeader())
			return resp.Msg, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		if d := detailOf(err); d != nil {
			switch d.GetReason() {
			case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER, pb.Reason_REASON_CLOSED:
				r.forget(addr)
				if d.GetLeaderAddr() != "" && d.GetLeaderAddr() != addr {
					r.mu.Lock()
					r.leader = d.GetLeaderAddr()
					r.mu.Unlock()
					delete(tried, d.GetLeaderAddr())
				}
				continue
			}
			return zero, err
		}
		if notSent(err) {
			r.forget(addr)
			continue
		}
		if write {
			return zero, fmt.Errorf("%w: %s: %v", ErrUnknownOutcome, addr, err)
		}
		r.forget(addr)
	}
	if lastErr == nil {
		lastErr = errors.New("no address to try")
	}
	if ctx.Err() != nil {
		return zero, fmt.Errorf("%w: %v", context.Cause(ctx), lastErr)
	}
	return zero, &noLeaderError{err: lastErr}
}

// noLeaderError reports that no node could serve the request; it carries
// REASON_NO_LEADER so callers retry.
type noLeaderError struct{ err error }

func (e *noLeaderError) Error() string     { return "no reachable leader: " + e.err.Error() }
func (e *noLeaderError) Unwrap() error     { return e.err }
func (e *noLeaderError) Reason() pb.Reason { return pb.Reason_REASON_NO_LEADER }

// notSent reports whether err happened before the request could reach a
// server (connection refused, unknown host), so retrying elsewhere is safe.
func notSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "dial")
}

// Status asks any node (the leader first, if known) to describe itself.
func (r *Remote) Status(ctx context.Context) (*pb.StatusResponse, error) {
	return call(ctx, r, false, &pb.StatusRequest{}, pbconnect.LeaseServiceClient.Status)
}

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

// Watch implements Backend. It streams from one node (any: every node applies every change).
func (r *Remote) Watch(ctx context.Context, req *pb.WatchRequest) (<-chan *pb.WatchEvent, error) {
	var lastErr error
	for _, addr := range r.targets() {
		stream, err := r.client(addr).Watch(ctx, connect.NewRequest(req))
		if err != nil {
			lastErr = err
			continue
		}
		out := make(chan *pb.WatchEvent, 64)
		go func() {
			defer close(out)
			defer stream.Close()
			for stream.Receive() {
				select {
				case out <- stream.Msg():
				case <-ctx.Done():
					return
				}
			}
		}()
		return out, nil
	}
	return nil, &noLeaderError{err: lastErr}
}

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
