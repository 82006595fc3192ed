package lease

import (
	"context"
	"fmt"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/transport/pb"
)

// DefaultPeerTimeout is how long a node may leave a request unanswered
// before the client checks that it is alive; the check may take twice as
// long (checkTimeouts; see WithPeerTimeout).
const DefaultPeerTimeout = time.Second

// checkTimeouts is how many peer timeouts a liveness check may take
// before the node is counted silent. One was too few: on a host at load
// 15 a live node's Status took over the default second, one late check
// cut a wait at a live leader, and with a 1 s retry timeout 3 of 40
// waiters gave up through leadership transfers (adversarial review
// s35). The cost is detection time: a stopped node now ends a request
// after its PeerTimeout of silence plus 2*PeerTimeout of an unanswered
// check, 3 s by default instead of 2 s. A longer check rather than a
// second one: a loaded node that answers in 1.5 s fails every check of
// 1 s, and a second check would be sent on a new connection while the
// first still waited.
const checkTimeouts = 2

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
	return fmt.Sprintf("node %s stopped answering: a liveness check got no reply within %v (twice lease.WithPeerTimeout's %v)", e.Addr, checkTimeouts*e.PeerTimeout, e.PeerTimeout)
}

// peer is what a Remote knows of one node's liveness. While requests to
// the node are in flight, one goroutine (watch) checks that the node still
// answers something: a request can wait for long for good reasons (a
// queued acquire, a slow disk), so its own silence proves nothing, but a
// live node answers a Status request at once. This is what an HTTP/2 PING
// does for gRPC's keepalive. The check goes over HTTP/1.1 (probe), on a
// connection of its own or an idle one: a stopped process answers it no
// more than the requests. What is heard from the node, and the check in
// flight, are the process's (node, see nodeLiveness), not this Remote's.
type peer struct {
	inflight map[*inflight]struct{}
	watching bool
	idle     chan struct{} // poked when inflight empties, to end watch early
	node     *nodeLiveness
	suspect  time.Time // tried last until then
	// slow: tried last until then, as it sat on a request that never
	// waits (Remote.slowed); unlike suspect, a liveness check's reply
	// does not clear it, only a reply to a request.
	slow time.Time
}

// nodeLiveness is what this process knows of one node's liveness,
// shared by all its Remotes (by scheme and address): when the node was
// last heard from, and the liveness check in flight to it. A program
// with 40 Clients, each with an Acquire waiting at the same leader,
// sent 40 checks a PeerTimeout from one address, four times its /24's
// allowance of checks served out of turn (node/apibudget.go): the rest
// waited their turn behind a neighbour flooding the node, past their
// PeerTimeout, and waiters gave up at a live leader (adversarial review
// s35). A reply heard by any of them now proves the node alive to all,
// and a Remote whose check is due joins the one in flight: one check a
// node a PeerTimeout, however many Clients wait.
type nodeLiveness struct {
	refs int // Remotes holding it; guarded by livenessMu

	mu    sync.Mutex
	heard time.Time  // last reply of any kind from the node
	call  *checkCall // the liveness check in flight, or nil
}

// checkCall is one liveness check in flight, which other Remotes of the
// process join (Remote.check).
type checkCall struct {
	done    chan struct{} // closed when it ended
	timeout time.Duration // how long it may take
	replied bool          // the node answered
	void    bool          // it ended because its Remote closed: it says nothing of the node
}

var (
	livenessMu sync.Mutex
	livenessOf = map[string]*nodeLiveness{} // by scheme and address
)

// holdLiveness returns the process's record of the node at key, made if
// new; releaseLiveness lets it go once no Remote holds it.
func holdLiveness(key string) *nodeLiveness {
	livenessMu.Lock()
	defer livenessMu.Unlock()
	nl := livenessOf[key]
	if nl == nil {
		nl = &nodeLiveness{}
		livenessOf[key] = nl
	}
	nl.refs++
	return nl
}

func releaseLiveness(key string, nl *nodeLiveness) {
	livenessMu.Lock()
	defer livenessMu.Unlock()
	if nl.refs--; nl.refs == 0 && livenessOf[key] == nl {
		delete(livenessOf, key)
	}
}

// lastHeard is when the node was last heard from, by any Remote.
func (nl *nodeLiveness) lastHeard() time.Time {
	nl.mu.Lock()
	defer nl.mu.Unlock()
	return nl.heard
}

// hear records a reply of any kind from the node at t.
func (nl *nodeLiveness) hear(t time.Time) {
	nl.mu.Lock()
	if t.After(nl.heard) {
		nl.heard = t
	}
	nl.mu.Unlock()
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
		if r.released {
			p.node = &nodeLiveness{} // closed: none of the process's to hold
		} else {
			p.node = holdLiveness(r.scheme + addr)
		}
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
// to anything, a liveness check included, by any Remote of the process):
// how long a request sent then was held by a live node. Without
// liveness checks (WithPeerTimeout(0)) nothing is heard during a
// request, so it is all the time since.
func (r *Remote) heardFor(addr string, since time.Time) time.Duration {
	if r.peerTimeout <= 0 {
		return time.Since(since)
	}
	r.mu.Lock()
	p := r.peers[addr]
	r.mu.Unlock()
	if p != nil {
		return max(p.node.lastHeard().Sub(since), 0)
	}
	return 0
}

// hear records a reply of any kind from addr.
func (r *Remote) hear(addr string) {
	now := time.Now()
	r.mu.Lock()
	p := r.peers[addr]
	if p != nil {
		p.suspect = time.Time{}
	}
	r.mu.Unlock()
	if p != nil {
		p.node.hear(now)
	}
}

// watch runs while requests to addr are in flight. When the node has
// been silent for peerTimeout (no reply since the oldest of them was
// sent, nor since the last check, to this Remote or any other of the
// process) it checks the node (check: a Status request, or the one
// another Remote has in flight); if that gets no reply within
// checkTimeouts*peerTimeout, it ends every request sent before the check
// with an *UnresponsiveError and has addr tried last for a while. A busy
// node is not silent: any reply to anything, even a refusal, counts.
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
		r.mu.Unlock()
		if heard := p.node.lastHeard(); heard.After(quiet) {
			quiet = heard
		}
		if wait := time.Until(quiet.Add(r.peerTimeout)); wait > 0 {
			t.Reset(wait)
			continue
		}
		checked := time.Now()
		if r.check(addr, p.node) {
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

// check says whether the node at addr answers a liveness check within
// checkTimeouts*peerTimeout. It joins the check another Remote of the
// process has in flight to it, if any (nodeLiveness): for no longer than
// its own timeout, and it sends its own if that one said nothing (its
// Remote closed) or was given less time. Otherwise it sends one (probe).
func (r *Remote) check(addr string, nl *nodeLiveness) bool {
	timeout := checkTimeouts * r.peerTimeout
	for {
		nl.mu.Lock()
		c := nl.call
		if c == nil {
			c = &checkCall{done: make(chan struct{}), timeout: timeout}
			nl.call = c
			nl.mu.Unlock()
			c.replied = r.probe(addr, timeout)
			c.void = !c.replied && r.stop.Err() != nil
			if c.replied {
				nl.hear(time.Now())
			}
			nl.mu.Lock()
			nl.call = nil
			nl.mu.Unlock()
			close(c.done)
			return c.replied
		}
		nl.mu.Unlock()
		t := time.NewTimer(timeout)
		select {
		case <-c.done:
			t.Stop()
		case <-t.C:
			return false // no reply within this Remote's timeout
		case <-r.stop.Done():
			t.Stop()
			return false
		}
		if c.replied || !c.void && c.timeout >= timeout {
			return c.replied
		}
	}
}

// probe sends addr a Status request and says whether the node answered
// within timeout: a response of any status, an error the node sent, or
// a connection it accepted and then closed. It goes over HTTP/1.1
// (Remote.checks), where a node serves it ahead of the queue of its API
// budget (up to a small allowance of its source's): behind other clients
// of the same address keeping the node at its --max-api-rate, it took
// longer than peerTimeout, and a waiting acquire at a live leader gave up
// (adversarial review s34).
//
// A connection the node accepted and closed (its --max-conns, or a
// source's share of it, all taken by this client's own waits) is an
// answer too, however the close shows: a stopped process's kernel
// accepts connections and then holds them without a byte, it never
// closes them, and a dead process's refuses them. Only silence until the
// timeout is silence. Counting only EOF and resets after GotConn took a
// TLS handshake the node cut (GotConn comes after it), a write that met
// the close (EPIPE) and a pooled connection closed as it was reused
// ("server closed idle connection") for silence: at --max-conns a
// healthy waiting acquire ended "stopped answering", an unknown outcome
// (new-user review). Guarded by TestLivenessCheckRefusedAtMaxConnsIsAnAnswer.
func (r *Remote) probe(addr string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(r.stop, timeout)
	defer cancel()
	var replied, connected atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		ConnectDone: func(_, _ string, err error) {
			if err == nil {
				connected.Store(true)
			}
		},
		GotConn:              func(httptrace.GotConnInfo) { connected.Store(true) },
		GotFirstResponseByte: func() { replied.Store(true) },
	})
	resp, err := r.probeClient(addr).Status(ctx, connect.NewRequest(&pb.StatusRequest{}))
	if err == nil {
		r.learn(resp.Msg.GetHeader())
	}
	closedByPeer := err != nil && ctx.Err() == nil && connected.Load()
	return replied.Load() || closedByPeer
}
