package workload

import (
	"context"
	"crypto/tls"
	"sync"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// Gate stands between one lease.Client and the network, so the harness can
// fail that client without touching the cluster: Cut makes every request
// fail before it is sent (a client-side partition, or a crashed client
// process when never reopened); Freeze holds every request, and every
// reply that arrives, until Thaw (a process pause as seen from the
// cluster: nothing arrives from the client, its extends stop, and answers
// to requests in flight are handled late).
type Gate struct {
	mu     sync.Mutex
	cut    bool
	frozen chan struct{} // non-nil while frozen; closed by Thaw
}

// Cut makes requests fail at once until Open.
func (g *Gate) Cut() { g.mu.Lock(); g.cut = true; g.mu.Unlock() }

// Open undoes Cut.
func (g *Gate) Open() { g.mu.Lock(); g.cut = false; g.mu.Unlock() }

// Freeze makes requests and replies wait until Thaw.
func (g *Gate) Freeze() {
	g.mu.Lock()
	if g.frozen == nil {
		g.frozen = make(chan struct{})
	}
	g.mu.Unlock()
}

// Thaw releases what Freeze held.
func (g *Gate) Thaw() {
	g.mu.Lock()
	if g.frozen != nil {
		close(g.frozen)
		g.frozen = nil
	}
	g.mu.Unlock()
}

// gateError is what a closed gate returns: retryable, and the request
// certainly was not sent.
type gateError struct{ what string }

func (e gateError) Error() string     { return "jepsen gate: " + e.what }
func (e gateError) Reason() pb.Reason { return pb.Reason_REASON_NO_LEADER }

// out lets a request out: it waits while frozen (until ctx ends) and fails
// while cut.
func (g *Gate) out(ctx context.Context) error {
	for {
		g.mu.Lock()
		cut, frozen := g.cut, g.frozen
		g.mu.Unlock()
		if frozen != nil {
			select {
			case <-frozen:
				continue
			case <-ctx.Done():
				return gateError{"frozen until the deadline"}
			}
		}
		if cut {
			return gateError{"cut"}
		}
		return nil
	}
}

// in lets a reply in: a frozen process handles it only after it thaws.
func (g *Gate) in() {
	g.mu.Lock()
	frozen := g.frozen
	g.mu.Unlock()
	if frozen != nil {
		<-frozen
	}
}

// GatedBackend is the lease package's own remote backend (lease.Remote,
// what lease.Dial uses) behind a Gate.
type GatedBackend struct {
	gate *Gate
	r    *lease.Remote
}

var _ lease.Backend = (*GatedBackend)(nil)

// NewGatedBackend returns a backend for the nodes at addrs behind gate;
// tlsConfig (nil: plain) is the client TLS configuration.
func NewGatedBackend(addrs []string, gate *Gate, tlsConfig *tls.Config) (*GatedBackend, error) {
	var opts []lease.Option
	if tlsConfig != nil {
		opts = append(opts, lease.WithTLS(tlsConfig))
	}
	r, err := lease.NewRemote(addrs, opts...)
	if err != nil {
		return nil, err
	}
	return &GatedBackend{gate: gate, r: r}, nil
}

// Close drops idle connections.
func (b *GatedBackend) Close() { b.r.Close() }

func gated[Req, Resp any](ctx context.Context, g *Gate, req *Req, f func(context.Context, *Req) (*Resp, error)) (*Resp, error) {
	if err := g.out(ctx); err != nil {
		return nil, err
	}
	resp, err := f(ctx, req)
	g.in()
	return resp, err
}

// Acquire implements lease.Backend.
func (b *GatedBackend) Acquire(ctx context.Context, r *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	return gated(ctx, b.gate, r, b.r.Acquire)
}

// Extend implements lease.Backend.
func (b *GatedBackend) Extend(ctx context.Context, r *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return gated(ctx, b.gate, r, b.r.Extend)
}

// Release implements lease.Backend.
func (b *GatedBackend) Release(ctx context.Context, r *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	return gated(ctx, b.gate, r, b.r.Release)
}

// Abandon implements lease.Backend.
func (b *GatedBackend) Abandon(ctx context.Context, r *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	return gated(ctx, b.gate, r, b.r.Abandon)
}

// Get implements lease.Backend.
func (b *GatedBackend) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	return gated(ctx, b.gate, r, b.r.Get)
}

// List implements lease.Backend.
func (b *GatedBackend) List(ctx context.Context, r *pb.ListRequest) (*pb.ListResponse, error) {
	return gated(ctx, b.gate, r, b.r.List)
}

// CheckToken implements lease.Backend.
func (b *GatedBackend) CheckToken(ctx context.Context, r *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error) {
	return gated(ctx, b.gate, r, b.r.CheckToken)
}

// Watch implements lease.Backend.
func (b *GatedBackend) Watch(ctx context.Context, r *pb.WatchRequest) (<-chan *pb.WatchEvent, error) {
	if err := b.gate.out(ctx); err != nil {
		return nil, err
	}
	return b.r.Watch(ctx, r)
}
