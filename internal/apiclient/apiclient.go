// Package apiclient is a thin client of the leasenode client API (the
// connect-go service of transport/pb) for the command-line tools: raw
// requests by holder and token (release from a shell script), per-node
// status, membership, and the benchmark's raw extend loop. Programs use
// package lease instead, which keeps leases alive and settles unknown
// outcomes.
//
// Requests that need the leader go to the leader learned from the last
// reply, else to the configured addresses in order (any node forwards to
// the leader); a request that certainly did not reach a node (connection
// refused) is tried on the next address. A write whose connection broke
// after it was sent is reported as an unknown outcome, never retried.
package apiclient

import (
	"context"
	"crypto/tls"
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

// Errors of this package.
var (
	// ErrUnreachable: no configured address accepted a connection.
	ErrUnreachable = errors.New("cluster unreachable")
	// ErrUnknownOutcome: a write was sent but its reply was lost; it may
	// or may not have been applied.
	ErrUnknownOutcome = errors.New("outcome unknown")
)

// Options configures a Client.
type Options struct {
	// TLS, when set, makes the client use https with this configuration.
	TLS *tls.Config
	// Token is sent as "Authorization: Bearer <token>".
	Token string
}

// Client talks to the client API of a cluster.
type Client struct {
	addrs  []string
	http   *http.Client
	scheme string
	opts   []connect.ClientOption

	mu      sync.Mutex
	clients map[string]pbconnect.LeaseServiceClient
	leader  string
}

// New returns a client for the nodes at addrs (host:port of their client
// API). It does not connect yet.
func New(addrs []string, o Options) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no address given")
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("address %q: want host:port", a)
		}
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 256,
		TLSClientConfig:     o.TLS,
		ForceAttemptHTTP2:   o.TLS != nil,
	}
	c := &Client{
		addrs:   append([]string(nil), addrs...),
		http:    &http.Client{Transport: tr},
		scheme:  "http://",
		clients: map[string]pbconnect.LeaseServiceClient{},
	}
	if o.TLS != nil {
		c.scheme = "https://"
	}
	if o.Token != "" {
		c.opts = append(c.opts, connect.WithInterceptors(bearer(o.Token)))
	}
	return c, nil
}

// Addrs returns the configured addresses.
func (c *Client) Addrs() []string { return append([]string(nil), c.addrs...) }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// At returns the raw service client of one node.
func (c *Client) At(addr string) pbconnect.LeaseServiceClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.clients[addr]
	if s == nil {
		s = pbconnect.NewLeaseServiceClient(c.http, c.scheme+addr, c.opts...)
		c.clients[addr] = s
	}
	return s
}

func (c *Client) targets() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.addrs)+1)
	if c.leader != "" {
		out = append(out, c.leader)
	}
	for _, a := range c.addrs {
		if a != c.leader {
			out = append(out, a)
		}
	}
	return out
}

func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	c.leader = addr
	c.mu.Unlock()
}

type headered interface{ GetHeader() *pb.Header }

// call sends one request to the leader (or any node, which forwards),
// failing over while the request certainly was not delivered.
func call[Req, Resp any, PResp interface {
	*Resp
	headered
}](ctx context.Context, c *Client, write bool, req *Req,
	f func(pbconnect.LeaseServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Resp], error)) (*Resp, error) {
	tried := map[string]bool{}
	var lastErr error
	for hop := 0; hop < 2*len(c.addrs)+2; hop++ {
		addr := ""
		for _, a := range c.targets() {
			if !tried[a] {
				addr = a
				break
			}
		}
		if addr == "" {
			break
		}
		tried[addr] = true
		resp, err := f(c.At(addr), ctx, connect.NewRequest(req))
		if err == nil {
			if h := PResp(resp.Msg).GetHeader(); h.GetLeaderAddr() != "" {
				c.setLeader(h.GetLeaderAddr())
			}
			return resp.Msg, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		if d := Detail(err); d != nil {
			switch d.GetReason() {
			case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER, pb.Reason_REASON_CLOSED:
				if d.GetLeaderAddr() != "" && d.GetLeaderAddr() != addr {
					c.setLeader(d.GetLeaderAddr())
					delete(tried, d.GetLeaderAddr())
				}
				continue
			}
			return nil, err
		}
		if notSent(err) {
			continue
		}
		if write {
			return nil, fmt.Errorf("%w: %s: %v", ErrUnknownOutcome, addr, err)
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no address to try")
	}
	if notSent(lastErr) {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, strings.Join(c.addrs, ","), lastErr)
	}
	return nil, lastErr
}

// notSent reports whether err happened before the request reached a
// server (connection refused, no route), so another address may be tried.
func notSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "dial")
}

// Detail returns the leasenode error detail a node attached to err, or nil.
func Detail(err error) *pb.ErrorDetail {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ed, ok := v.(*pb.ErrorDetail); ok {
				return ed
			}
		}
	}
	return nil
}

// ReasonOf classifies err by the wire reason it carries: from a node's
// error detail, or from an error with a Reason method (package lease's
// and node's errors have one).
func ReasonOf(err error) pb.Reason {
	var r interface{ Reason() pb.Reason }
	if errors.As(err, &r) {
		return r.Reason()
	}
	return Detail(err).GetReason()
}

// Acquire sends one acquire request.
func (c *Client) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	return call(ctx, c, true, req, pbconnect.LeaseServiceClient.Acquire)
}

// Extend sends one extend request.
func (c *Client) Extend(ctx context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return call(ctx, c, true, req, pbconnect.LeaseServiceClient.Extend)
}

// Release sends one release request.
func (c *Client) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	return call(ctx, c, true, req, pbconnect.LeaseServiceClient.Release)
}

// Get reads one record.
func (c *Client) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	return call(ctx, c, false, req, pbconnect.LeaseServiceClient.Get)
}

// List reads every record under prefix, page by page.
func (c *Client) List(ctx context.Context, prefix string, stale bool) ([]*pb.Lease, error) {
	var out []*pb.Lease
	after := ""
	for {
		resp, err := call(ctx, c, false, &pb.ListRequest{Prefix: prefix, After: after, Limit: 1000, Stale: stale},
			pbconnect.LeaseServiceClient.List)
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetLeases()...)
		if resp.GetNext() == "" {
			return out, nil
		}
		after = resp.GetNext()
	}
}

// Members asks the first reachable node which nodes gossip knows.
func (c *Client) Members(ctx context.Context) (*pb.MembersResponse, error) {
	return call(ctx, c, false, &pb.MembersRequest{}, pbconnect.LeaseServiceClient.Members)
}

// Status asks the first reachable node about itself.
func (c *Client) Status(ctx context.Context) (*pb.StatusResponse, error) {
	return call(ctx, c, false, &pb.StatusRequest{}, pbconnect.LeaseServiceClient.Status)
}

// StatusAt asks the node at addr about itself.
func (c *Client) StatusAt(ctx context.Context, addr string) (*pb.StatusResponse, error) {
	resp, err := c.At(addr).Status(ctx, connect.NewRequest(&pb.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
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
