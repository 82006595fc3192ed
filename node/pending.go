package node

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// Requests whose bodies have not arrived. An HTTP/2 client may open a
// stream, send its headers with the auth token and never its body (or,
// on a streaming call, never end it): each such stream holds a handler
// goroutine, its request and its buffers, and nothing else bounded them
// but MaxStreams on each of a source's connections (a quarter of
// MaxConns of them). One token holder's 64 connections from 8 /24s held
// 14,684 streams (a gRPC reflection stream each, or a unary call whose
// body never came): a leader went from 42 to 633 MB and 14,282
// goroutines, stepped down, and 20 of 20 leases beside it were lost
// (outsider review s38).
//
// Invariant (pending-bodies): a request is counted from when its headers
// pass the auth token until its body has been read to its end or its
// handler returns, whichever comes first, in a count of
// maxPendingBodies node-wide of which one client source (IPv4 /24, IPv6
// /64) holds at most pendingPerSource; past the last quarter of the
// node's count only sources holding fewer than pendingFloor may add to
// it. Past either a request is refused at once, before a byte of its
// body is read (ErrTooManyPending, REASON_OVERLOADED: clients retry it
// with back-off), and a connection refused so maxRefused times in a row
// is closed after the answer (limitedConn.pendingRefused). A client's body
// follows its headers at once: only a request waiting for its source's
// turn of the API budget, or for room among large bodies, stays counted
// for long, and those are bounded by their own waits. Watches and
// waiting acquires leave the count once their request is read. Guarded
// by TestPendingBodiesAreBounded.
const (
	maxPendingBodies = 4096
	pendingPerSource = maxPendingBodies / 4
	pendingFloor     = 64
)

// pendingBodies counts the requests whose bodies have not arrived (see
// pending-bodies).
type pendingBodies struct {
	mu      sync.Mutex
	n       int
	bySrc   map[string]int
	refused atomic.Uint64 // pending_bodies
	log     *slog.Logger
	warn    *loglimit.Limiter
}

func newPendingBodies(log *slog.Logger) *pendingBodies {
	return &pendingBodies{bySrc: map[string]int{}, log: log, warn: loglimit.New()}
}

// take counts a request of src, and returns the function that gives it
// back (once, however often called), or the refusal.
func (p *pendingBodies) take(src string) (func(), error) {
	p.mu.Lock()
	own, pending := p.bySrc[src], p.n
	var err error
	switch {
	case own >= pendingPerSource:
		err = fmt.Errorf("%w: %d requests from your address's /24 (IPv6 /64) wait for their bodies, the most one source may (a quarter of the %d the agent takes at once, fixed): send each request's body with it, end streams you do not use", ErrTooManyPending, own, maxPendingBodies)
	case pending >= maxPendingBodies || pending >= maxPendingBodies-maxPendingBodies/4 && own >= pendingFloor:
		err = fmt.Errorf("%w: %d requests wait for their bodies on this agent (at most %d, fixed; the last quarter kept for sources with fewer than %d, and yours has %d): other clients hold them open; retry later", ErrTooManyPending, pending, maxPendingBodies, pendingFloor, own)
	}
	if err != nil {
		p.mu.Unlock()
		p.refused.Add(1)
		if ok, skipped := p.warn.Allow("pending_bodies"); ok {
			args := []any{"pending", pending, "max", maxPendingBodies, "source", src, "source_pending", own, "refused", p.refused.Load()}
			if skipped > 0 {
				args = append(args, loglimit.Skipped, skipped)
			}
			p.log.Warn("refused a request: too many requests wait for their bodies", args...)
		}
		return nil, err
	}
	p.n++
	p.bySrc[src]++
	p.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			p.n--
			if p.bySrc[src]--; p.bySrc[src] <= 0 {
				delete(p.bySrc, src)
			}
			p.mu.Unlock()
		})
	}, nil
}
