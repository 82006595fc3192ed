package node

import (
	"container/list"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
// it. A client's body follows its headers at once: only a request
// waiting for its source's turn of the API budget, or for room among
// large bodies, stays counted for long, and those are bounded by their
// own waits. So with the count full, a request of a source holding
// fewer takes the place of the oldest one counted for longer than
// evictAfter of a source holding more (its wait for its body ends, and
// it is refused saying so): sources below pendingFloor shared the last
// quarter, and 66 /24s holding 62 bodiless streams each filled it, so
// that every other client was refused until their read timeout, and 20
// of 20 leases beside them were lost (outsider review s39). Otherwise,
// past either limit, a request is refused at once, before a byte of its
// body is read (ErrTooManyPending, REASON_OVERLOADED: clients retry it
// with back-off), and a connection refused so maxRefused times in a
// row is closed after the answer (limitedConn.pendingRefused). Watches
// and waiting acquires leave the count once their request is read.
// Guarded by TestPendingBodiesAreBounded and
// TestPendingBodiesMakeRoomForOthers.
const (
	maxPendingBodies = 4096
	pendingPerSource = maxPendingBodies / 4
	pendingFloor     = 64
	// evictAfter: a request counted this long without its body may give
	// its place to a source holding fewer (a body sent with its headers
	// arrives within a round trip).
	evictAfter = 500 * time.Millisecond
	// evictLook: how many of the oldest counted requests a full count
	// looks at for one to give its place.
	evictLook = 64
)

// pendingBodies counts the requests whose bodies have not arrived (see
// pending-bodies), oldest first.
type pendingBodies struct {
	mu      sync.Mutex
	n       int
	bySrc   map[string]int
	order   list.List     // of *pendingReq, oldest first
	refused atomic.Uint64 // pending_bodies
	evicted atomic.Uint64 // pending_evicted
	log     *slog.Logger
	warn    *loglimit.Limiter
}

// pendingReq is one counted request.
type pendingReq struct {
	p     *pendingBodies
	src   string
	since time.Time
	elem  *list.Element // nil once it is no longer counted
	// end ends the request's wait for its body (it gave its place);
	// called under p.mu while the request is counted, so before its
	// handler has returned.
	end  func()
	gone atomic.Bool // it gave its place
}

func newPendingBodies(log *slog.Logger) *pendingBodies {
	return &pendingBodies{bySrc: map[string]int{}, log: log, warn: loglimit.New()}
}

// take counts a request of src, or refuses it. end is how the request's
// wait for its body ends if it gives its place (pending-bodies).
func (p *pendingBodies) take(src string, end func()) (*pendingReq, error) {
	now := time.Now()
	p.mu.Lock()
	own, pending := p.bySrc[src], p.n
	var err error
	switch {
	case own >= pendingPerSource:
		// What the node saw, not advice to the caller: every client of
		// the /24 (loopback, a NAT) is refused, and most of them are
		// not the one holding the streams (new-user review).
		err = fmt.Errorf("%w: %d requests from the caller's /24 (IPv6 /64) wait for their bodies, the most one source may (a quarter of the %d the agent takes at once, fixed): some client there sends request headers without their bodies or leaves streams open; a client that sends each body with its request is not the cause, and may retry later", ErrTooManyPending, own, maxPendingBodies)
	case pending >= maxPendingBodies-maxPendingBodies/4 && own >= pendingFloor:
		err = fmt.Errorf("%w: %d requests wait for their bodies on this agent (at most %d, fixed; the last quarter kept for sources with fewer than %d, and yours has %d): other clients hold them open; retry later", ErrTooManyPending, pending, maxPendingBodies, pendingFloor, own)
	case pending >= maxPendingBodies:
		if v := p.victimLocked(own, now); v != nil {
			p.dropLocked(v)
			v.gone.Store(true)
			v.end()
			p.evicted.Add(1)
		} else {
			err = fmt.Errorf("%w: %d requests wait for their bodies on this agent (at most %d, fixed), none of a source holding more than yours (%d) for longer than %v: retry later", ErrTooManyPending, pending, maxPendingBodies, own, evictAfter)
		}
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
	r := &pendingReq{p: p, src: src, since: now, end: end}
	r.elem = p.order.PushBack(r)
	p.n++
	p.bySrc[src]++
	p.mu.Unlock()
	return r, nil
}

// victimLocked returns the oldest of the first evictLook counted requests
// that has waited longer than evictAfter and whose source holds more
// than own, or nil.
func (p *pendingBodies) victimLocked(own int, now time.Time) *pendingReq {
	e := p.order.Front()
	for range evictLook {
		if e == nil {
			return nil
		}
		r := e.Value.(*pendingReq)
		if now.Sub(r.since) < evictAfter {
			return nil // the rest are younger
		}
		if p.bySrc[r.src] > own+1 {
			return r
		}
		e = e.Next()
	}
	return nil
}

// dropLocked stops counting r.
func (p *pendingBodies) dropLocked(r *pendingReq) {
	if r.elem == nil {
		return
	}
	p.order.Remove(r.elem)
	r.elem = nil
	p.n--
	if p.bySrc[r.src]--; p.bySrc[r.src] <= 0 {
		delete(p.bySrc, r.src)
	}
}

// arrived stops counting r: its body has arrived, or its handler
// returned. Safe to call more than once.
func (r *pendingReq) arrived() {
	r.p.mu.Lock()
	r.p.dropLocked(r)
	r.p.mu.Unlock()
}

// evictedErr is the refusal of a request that gave its place, or nil.
func (r *pendingReq) evictedErr() error {
	if r == nil || !r.gone.Load() {
		return nil
	}
	return fmt.Errorf("%w: this request's body had not arrived %v after its headers, while the agent's %d requests waiting for their bodies were full: it gave its place to a request of a source holding fewer; send each request's body with it", ErrTooManyPending, evictAfter, maxPendingBodies)
}
