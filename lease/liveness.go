package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptrace"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/transport/pb"
)

// DefaultPeerTimeout is how long a node may leave a request unanswered
// before the client checks that it is alive, and how long that check may
// take (see WithPeerTimeout).
const DefaultPeerTimeout = time.Second

// suspectFor is how long a node that failed a liveness check is tried
// after every other address (unless it answers first).
const suspectFor = 10 * time.Second

// slowAfter is how long a request that never waits (all but a waiting
// acquire) may sit unanswered at a node until its caller gives up before
// that node is tried after every other address for suspectFor: a node
// that answers liveness checks but not the request (a leader whose disk
// hangs) was asked again at once, since it was the first address, and a
// lease's last attempts never reached the healthy nodes (adversarial
// review s35). A node tried last is still tried when the others fail,
// and a reply to a request makes it first again.
const slowAfter = 100 * time.Millisecond

// isWait reports whether req may wait at the node for long by design (a
// waiting acquire), so that its silence says nothing about the node.
func isWait(req any) bool {
	w, ok := req.(interface{ GetWait() bool })
	return ok && w.GetWait()
}

// slowed has addr tried last for suspectFor: it sat on a request that
// never waits until its caller gave up (see slowAfter).
func (r *Remote) slowed(addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.peers[addr]
	if p == nil {
		p = &peer{inflight: map[*inflight]struct{}{}, idle: make(chan struct{}, 1)}
		r.peers[addr] = p
	}
	p.slow = time.Now().Add(suspectFor)
}

// UnresponsiveError ends a request to a node that did not answer it, nor a
// liveness check sent to it after the request had waited PeerTimeout: the
// process is stopped (SIGSTOP, a VM paused) or cut off. Its kernel may
// still hold the connection open, so nothing else would end the request.
// If the request was written the node may still apply it when it wakes:
// for a write the error matches ErrUnknownOutcome.
type UnresponsiveError struct {
	Addr        string
	PeerTimeout time.Duration
}

func (e *UnresponsiveError) Error() string {
	return fmt.Sprintf("node %s stopped answering: a liveness check got no reply within %v (lease.WithPeerTimeout)", e.Addr, e.PeerTimeout)
}

// peer is what a Remote knows of one node's liveness. While requests to
// the node are in flight, one goroutine (watch) checks that the node still
// answers something: a request can wait for long for good reasons (a
// queued acquire, a slow disk), so its own silence proves nothing, but a
// live node answers a Status request at once. This is what an HTTP/2 PING
// does for gRPC's keepalive. The check goes over HTTP/1.1 (probe), on a
// connection of its own or an idle one: a stopped process answers it no
// more than the requests.
type peer struct {
	inflight map[*inflight]struct{}
	watching bool
	idle     chan struct{} // poked when inflight empties, to end watch early
	heard    time.Time     // last reply of any kind from the node
	suspect  time.Time     // tried last until then
	// slow: tried last until then, as it sat on a request that never
	// waits (Remote.slowed); unlike suspect, a liveness check's reply
	// does not clear it, only a reply to a request.
	slow time.Time
}

type inflight struct {
	since  time.Time
	cancel context.CancelCauseFunc
}

// suspect says whether addr failed a liveness check lately, or sat on a
// request (Remote.slowed). r.mu is held.
func (r *Remote) suspect(addr string, now time.Time) bool {
	p := r.peers[addr]
	return p != nil && (now.Before(p.suspect) || now.Before(p.slow))
}

// track registers a request about to be sent to addr. The returned
// context ends with an *UnresponsiveError cause if the node stops
// answering; done must be called when the request has ended, saying
// whether the node replied (any response byte).
func (r *Remote) track(ctx context.Context, addr string) (context.Context, func(replied bool)) {
	if r.peerTimeout <= 0 {
		return ctx, func(bool) {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	f := &inflight{since: time.Now(), cancel: cancel}
	r.mu.Lock()
	p := r.peers[addr]
	if p == nil {
		p = &peer{inflight: map[*inflight]struct{}{}, idle: make(chan struct{}, 1)}
		r.peers[addr] = p
	}
	p.inflight[f] = struct{}{}
	if !p.watching {
		p.watching = true
		go r.watch(addr, p)
	}
	r.mu.Unlock()
	return ctx, func(replied bool) {
		if replied {
			r.hear(addr)
		}
		r.mu.Lock()
		if replied {
			p.slow = time.Time{} // it answers requests again
		}
		delete(p.inflight, f)
		if len(p.inflight) == 0 {
			select {
			case p.idle <- struct{}{}:
			default:
			}
		}
		r.mu.Unlock()
		cancel(nil)
	}
}

// heardFor returns how long after since addr was last heard from (a reply
// to anything, a liveness check included): how long a request sent then
// was held by a live node. Without liveness checks (WithPeerTimeout(0))
// nothing is heard during a request, so it is all the time since.
func (r *Remote) heardFor(addr string, since time.Time) time.Duration {
	if r.peerTimeout <= 0 {
		return time.Since(since)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.peers[addr]; p != nil {
		return max(p.heard.Sub(since), 0)
	}
	return 0
}

// hear records a reply of any kind from addr.
func (r *Remote) hear(addr string) {
	r.mu.Lock()
	if p := r.peers[addr]; p != nil {
		p.heard, p.suspect = time.Now(), time.Time{}
	}
	r.mu.Unlock()
}

// watch runs while requests to addr are in flight. When the node has
// been silent for peerTimeout (no reply since the oldest of them was
// sent, nor since the last check) it sends a Status request; if that gets
// no reply within peerTimeout either, it ends every request sent before
// the check with an *UnresponsiveError and has addr tried last for a
// while. A busy node is not silent: any reply to anything, even a
// refusal, counts.
func (r *Remote) watch(addr string, p *peer) {
	t := time.NewTimer(r.peerTimeout)
	defer t.Stop()
	for {
		select {
		case <-r.stop.Done():
		case <-p.idle:
		case <-t.C:
		}
		r.mu.Lock()
		if len(p.inflight) == 0 || r.stop.Err() != nil {
			p.watching = false
			r.mu.Unlock()
			return
		}
		quiet := time.Now() // silent since: the oldest request or the last reply, whichever is later
		for f := range p.inflight {
			if f.since.Before(quiet) {
				quiet = f.since
			}
		}
		if p.heard.After(quiet) {
			quiet = p.heard
		}
		r.mu.Unlock()
		if wait := time.Until(quiet.Add(r.peerTimeout)); wait > 0 {
			t.Reset(wait)
			continue
		}
		checked := time.Now()
		if r.probe(addr) {
			r.hear(addr)
		} else {
			r.mu.Lock()
			if r.stop.Err() == nil {
				p.suspect = time.Now().Add(suspectFor)
				err := &UnresponsiveError{Addr: addr, PeerTimeout: r.peerTimeout}
				for f := range p.inflight {
					if f.since.Before(checked) {
						f.cancel(err)
					}
				}
			}
			r.mu.Unlock()
		}
		t.Reset(r.peerTimeout)
	}
}

// probe sends addr a Status request and says whether any reply came back
// within peerTimeout: a response, or an error the node sent. It goes
// over HTTP/1.1 (Remote.checks), where a node serves it ahead of the
// queue of its API budget (up to a small allowance of its source's):
// behind other clients of the same address keeping the node at its
// --max-api-rate, it took longer than peerTimeout, and a waiting acquire
// at a live leader gave up (adversarial review s34).
func (r *Remote) probe(addr string) bool {
	ctx, cancel := context.WithTimeout(r.stop, r.peerTimeout)
	defer cancel()
	var replied, connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn:              func(httptrace.GotConnInfo) { connected.Store(true) },
		GotFirstResponseByte: func() { replied.Store(true) },
	})
	resp, err := r.probeClient(addr).Status(ctx, connect.NewRequest(&pb.StatusRequest{}))
	if err == nil {
		r.learn(resp.Msg.GetHeader())
	}
	// A connection the node accepted and closed at once (its
	// --max-conns, or a source's share of it, all taken by this client's
	// own waits) is an answer too: a stopped process's kernel accepts
	// connections and then holds them, it never closes them.
	closedByPeer := err != nil && ctx.Err() == nil && connected.Load() &&
		(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET))
	return replied.Load() || closedByPeer
}
