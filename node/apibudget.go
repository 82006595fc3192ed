package node

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// apiBudget is the node's budget of client API work a second, shared by
// every API connection (Limits.MaxAPIRate requests a second): the frame
// budget bounds one connection, this bounds them all together. Thirty-two
// connections with the token, each flooding just under --max-frame-rate
// (rapid reset, PINGs or plain TryAcquire/Release), made a leader step
// down in 5 of 6 runs on a 2-core machine: nothing bounded what all of
// them together made the node do, and the API's goroutines starved
// Raft's heartbeats.
//
// Work is counted in units, apiUnitsPerRequest to a request: an HTTP/2
// HEADERS frame (a stream opened, a request's handler started) costs
// apiHeadersUnits, every other frame counted by the frame budget
// (DATA, PING, RST_STREAM, SETTINGS, WINDOW_UPDATE...) one, and an
// HTTP/1 request apiUnitsPerRequest, at its handler. The weights are
// measured (BenchmarkAPIFrameCost on a 2-core machine: 4.8 µs of CPU a
// PING, 42 µs a stream opened and reset, 58-67 µs a Status or Get
// request), so HEADERS+DATA, HEADERS+RST_STREAM and ten PINGs each cost
// a request.
//
// Past the budget the reader of a connection waits for its turn before
// it hands net/http's server what it read (HTTP/2), or the handler waits
// before it serves the request (HTTP/1, whose connection reads nothing
// more meanwhile), so TCP flow control pushes back on the sender. An
// HTTP/2 connection that still has unread bytes queued in its socket
// after every paced read for maxBacklog (it sends faster than its turns
// come, for seconds) is closed (frameConn.Read, refusal api_rate): its
// backlog, up to megabytes in the kernel's buffers, was otherwise served
// at the full budget for minutes after its client had gone (stop 31's
// outsider review: 32 such connections served for 125 s after their
// client exited, and the leader stepped down). A request-response client
// sharing the address has nothing queued after its read is served, so
// it is paced but never closed. Turns are fair between client addresses (IPv4
// addresses, IPv6 /64 prefixes), not connections: start-time fair
// queueing, where an address's waiting reads are tagged in virtual time
// by the units its earlier ones took, and the one with the earliest tag
// goes first; an address's own connections take turns in the order they
// asked. So one address that opens many connections gets one share, and
// a client whose address has not used its share goes next however many
// connections flood: it waits for at most one turn of each address
// ahead of it (a turn is one read, at most a few frames). Clients behind
// one address (a proxy, loopback) share its turns, first come first
// served.
//
// Invariant (api-budget): the client API's connections together pass
// net/http's server at most burst + rate*t units of work in any t seconds
// (HTTP/2 frames as they are read, HTTP/1 requests at their handler); a
// connection past it waits, and is closed only once it has kept a
// backlog through maxBacklog of paced reads. Guarded by
// TestAPIBudgetFairShares (the scheduler, on a fake clock) and
// TestAPIBudgetPacesFlooders (flooding connections and a lease.Client on
// a real node: the client is paced, the flooders closed).
type apiBudget struct {
	rate  int64         // units a second
	burst int64         // units at once
	every time.Duration // per unit: time.Second/rate
	clock apiClock
	log   *slog.Logger
	warn  *loglimit.Limiter
	perS  int // Limits.MaxAPIRate, for the log

	mu      sync.Mutex
	tokens  int64         // units that may pass now (below 0 after a read of more than burst)
	filled  time.Duration // clock.now() to which tokens were added
	sources map[string]*apiSource
	pruneAt int        // prune sources once there are this many
	ready   apiSources // sources with waiters, earliest start tag first
	vtime   int64      // virtual time: the start tag of the last turn given
	seq     uint64     // orders sources with equal tags by when they asked
	armed   bool       // a timer will dispatch again

	// paced counts the reads and requests that waited for their turn,
	// waited the time they waited (Node.APIPacing).
	paced  atomic.Uint64
	waited atomic.Int64
}

// Weights of the API budget (see apiBudget).
const (
	// apiUnitsPerRequest is the units of a request: Limits.MaxAPIRate
	// requests a second are this many times as many units.
	apiUnitsPerRequest = 10
	// apiHeadersUnits is the units of an HTTP/2 HEADERS frame; every
	// other frame costs 1.
	apiHeadersUnits = apiUnitsPerRequest - 1
	// apiUnitsPerKiB is what a KiB of request body costs past the first
	// apiFreeBodyBytes (bodyUnits): parsing a KiB took 40-75 µs, a
	// request's units about 60 µs.
	apiUnitsPerKiB   = 16
	apiFreeBodyBytes = 4 << 10
	// apiUnitsPerListed is what each holding of a reply (a List page, a
	// Get, a CheckToken) costs beyond the request's own units: a page of
	// 1,000 took ~10 ms to build and send, 150 requests' worth (outsider
	// review s33).
	apiUnitsPerListed = 2
)

// apiClock is the budget's clock: monotonic time since some origin, and
// a timer (a fake one in tests).
type apiClock interface {
	now() time.Duration
	afterFunc(d time.Duration, f func())
}

// realClock is the wall of a running node.
type realClock struct{ epoch time.Time }

func (c realClock) now() time.Duration                  { return time.Since(c.epoch) }
func (c realClock) afterFunc(d time.Duration, f func()) { time.AfterFunc(d, f) }

// apiSource is one client address's share.
type apiSource struct {
	key     string
	finish  int64        // virtual time at which its last turn ended
	start   int64        // the start tag of its next turn, while it waits
	waiters []*apiWaiter // its reads waiting, in the order they asked
	idx     int          // in ready, or -1
	seq     uint64
}

// apiWaiter is one read or request waiting for its turn.
type apiWaiter struct {
	cost    int64
	src     *apiSource
	granted chan struct{} // closed once its turn came
	done    bool          // its turn came (guarded by mu)
}

func newAPIBudget(perSecond int, clock apiClock, log *slog.Logger) *apiBudget {
	rate := int64(perSecond) * apiUnitsPerRequest
	// A tenth of a second at once, and at least a full turn of every
	// stream of a connection: the budget paces floods, not bursts.
	burst := max(rate/10, 4*apiUnitsPerRequest)
	return &apiBudget{rate: rate, burst: burst, every: max(time.Second/time.Duration(rate), 1), clock: clock,
		log: log, warn: loglimit.New(), perS: perSecond, tokens: burst, filled: clock.now(),
		sources: map[string]*apiSource{}, pruneAt: 64}
}

// sourceKey is the share a remote address draws from: its IP, or its
// /64 prefix for IPv6 (one host is usually given a whole /64).
func sourceKey(addr net.Addr) string { return transport.SourcePrefix(addr, 32) }

// addrSource is sourceKey of a "host:port" address.
func addrSource(hostport string) string {
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		return sourceKey(&net.TCPAddr{IP: net.ParseIP(host)})
	}
	return hostport
}

// apiUnitsPerKey is what a request pays for each key it changes beyond
// its first ten, which the request paid as it was read: the FSM renews,
// grants or frees every member of a set on every replica, so the work
// grows with the keys, not the bytes (one 24-byte extend by sum renewed
// 128,000 keys; a 64-key set's acquire and release were one request
// each: outsider review s32).
const apiUnitsPerKey = 1

// payExtend pays source's turns of the API budget for the keys req would
// renew (fsm.ExtendKeys, from this node's state). An extend over
// --max-extend-items pays nothing more: it is refused, or answered no,
// before any work (a charge for all its keys put the whole budget in
// debt, and stalled every client for seconds a request: outsider
// re-probe s32).
func (n *Node) payExtend(ctx context.Context, source string, req *pb.ExtendRequest) error {
	if n.apiWork == nil || len(req.GetItems()) > n.cfg.Limits.MaxExtendItems {
		return nil
	}
	var items []fsm.ExtendItem
	if req.GetAll() == nil {
		items = extendCmd(req).Items
	}
	keys := n.fsm.ExtendKeys(req.GetHolder(), items)
	if keys > n.cfg.Limits.MaxExtendItems {
		return nil
	}
	return n.payKeys(ctx, source, keys)
}

// payKeys waits for source's turns of the API budget for keys keys
// (apiUnitsPerKey each beyond the request's own units); see payUnits.
func (n *Node) payKeys(ctx context.Context, source string, keys int) error {
	return n.payUnits(ctx, source, int64(keys)*apiUnitsPerKey-apiUnitsPerRequest)
}

// payUnits waits for source's turns of the API budget for units more
// units, in pieces of at most the budget's burst, each at source's own
// turn: a large charge is that source's debt, never the other sources'
// wait. Without an API budget it does nothing.
func (n *Node) payUnits(ctx context.Context, source string, units int64) error {
	b := n.apiWork
	if b == nil {
		return nil
	}
	for units > 0 {
		piece := min(units, b.burst)
		if _, ok := b.wait(source, piece, ctx.Done()); !ok {
			return context.Cause(ctx)
		}
		units -= piece
	}
	return nil
}

// bodyUnits is what a request body of size bytes pays beyond its
// request's own units: apiUnitsPerKiB a KiB past the first
// apiFreeBodyBytes. Decoding is what costs, and it grows with the bytes:
// a 4 MiB Extend of empty items took 0.3 s of a leader's CPU to parse,
// and one of JSON 165 ms, each paid as one request until then (outsider
// review s33: 64 in flight from one address made the leader step down).
func bodyUnits(size int64) int64 {
	return max(size-apiFreeBodyBytes, 0) * apiUnitsPerKiB / 1024
}

// wait takes cost units for source key, waiting for its turn if others
// wait or the budget is spent, until cancel is closed. It reports
// whether the turn came (false: cancelled first).
func (b *apiBudget) wait(key string, cost int64, cancel <-chan struct{}) (paced, ok bool) {
	w := b.ask(key, cost)
	if w == nil {
		return false, true
	}
	t0 := b.clock.now()
	select {
	case <-w.granted:
	case <-cancel:
		if b.cancel(w) {
			return true, false
		}
	}
	b.paced.Add(1)
	b.waited.Add(int64(b.clock.now() - t0))
	if ok, skipped := b.warn.Allow("api_rate"); ok {
		args := []any{"max_api_rate", b.perS, "paced", b.paced.Load(), "waited", time.Duration(b.waited.Load()).Round(time.Millisecond)}
		if skipped > 0 {
			args = append(args, loglimit.Skipped, skipped)
		}
		b.log.Warn(fmt.Sprintf("client API connections together send more than the node's budget of %d requests a second (a PING or other control frame counts a tenth of one): their reads wait their turn, fairly between client addresses; raise the agent's --max-api-rate if the node has CPU to spare", b.perS), args...)
	}
	return true, true
}

// ask takes cost units for source key at once if nobody waits and the
// budget has them (nil), else queues a waiter for its turn.
func (b *apiBudget) ask(key string, cost int64) *apiWaiter {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked()
	s := b.sourceLocked(key)
	if len(b.ready) == 0 && b.tokens >= min(cost, b.burst) {
		b.tokens -= cost
		start := max(b.vtime, s.finish)
		s.finish, b.vtime = start+cost, start
		return nil
	}
	w := &apiWaiter{cost: cost, src: s, granted: make(chan struct{})}
	s.waiters = append(s.waiters, w)
	if s.idx < 0 {
		s.start, s.seq = max(b.vtime, s.finish), b.seq
		b.seq++
		heap.Push(&b.ready, s)
	}
	b.dispatchLocked()
	return w
}

// cancel takes w out of its queue, and reports whether it was still
// there (false: its turn came first).
func (b *apiBudget) cancel(w *apiWaiter) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w.done {
		return false
	}
	b.removeLocked(w)
	b.dispatchLocked()
	return true
}

// refillLocked adds the units earned since filled.
func (b *apiBudget) refillLocked() {
	if b.tokens >= b.burst {
		b.filled = b.clock.now()
		return
	}
	now := b.clock.now()
	add := int64((now - b.filled) / b.every)
	if b.tokens+add >= b.burst {
		b.tokens, b.filled = b.burst, now
	} else {
		b.tokens += add
		b.filled += time.Duration(add) * b.every
	}
}

// sourceLocked returns key's source, made if new. Sources that wait for
// nothing and are not ahead of virtual time are forgotten once there
// are many: they would start their next turn at vtime anyway.
func (b *apiBudget) sourceLocked(key string) *apiSource {
	if s := b.sources[key]; s != nil {
		return s
	}
	if len(b.sources) >= b.pruneAt {
		for k, s := range b.sources {
			if s.idx < 0 && s.finish <= b.vtime {
				delete(b.sources, k)
			}
		}
		b.pruneAt = max(64, 2*len(b.sources))
	}
	s := &apiSource{key: key, idx: -1}
	b.sources[key] = s
	return s
}

// dispatchLocked gives turns while the budget has units for the next
// waiter, and else arms a timer for when it will.
func (b *apiBudget) dispatchLocked() {
	for len(b.ready) > 0 {
		s := b.ready[0]
		w := s.waiters[0]
		need := min(w.cost, b.burst)
		if b.tokens < need {
			b.refillLocked()
		}
		if b.tokens < need {
			if !b.armed {
				b.armed = true
				d := time.Duration(need-b.tokens)*b.every - (b.clock.now() - b.filled)
				b.clock.afterFunc(max(d, time.Microsecond), b.tick)
			}
			return
		}
		b.tokens -= w.cost
		w.done = true
		close(w.granted)
		s.waiters = s.waiters[1:]
		b.vtime = s.start
		s.finish = s.start + w.cost
		if len(s.waiters) > 0 {
			s.start = s.finish
			heap.Fix(&b.ready, 0)
		} else {
			s.waiters = nil
			heap.Pop(&b.ready)
		}
	}
}

// tick is the timer's: it dispatches the turns the budget has earned.
func (b *apiBudget) tick() {
	b.mu.Lock()
	b.armed = false
	b.dispatchLocked()
	b.mu.Unlock()
}

// removeLocked takes a cancelled waiter out of its source's queue.
func (b *apiBudget) removeLocked(w *apiWaiter) {
	s := w.src
	for i, x := range s.waiters {
		if x == w {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			break
		}
	}
	if len(s.waiters) == 0 && s.idx >= 0 {
		heap.Remove(&b.ready, s.idx)
	}
}

// apiSources is a heap of sources by start tag, then by when they asked.
type apiSources []*apiSource

func (h apiSources) Len() int { return len(h) }
func (h apiSources) Less(i, j int) bool {
	if h[i].start != h[j].start {
		return h[i].start < h[j].start
	}
	return h[i].seq < h[j].seq
}
func (h apiSources) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *apiSources) Push(x any) {
	s := x.(*apiSource)
	s.idx = len(*h)
	*h = append(*h, s)
}
func (h *apiSources) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	s.idx = -1
	*h = old[:len(old)-1]
	return s
}

// paceHTTP1 is the API server's outermost handler: an HTTP/1 request
// waits for apiUnitsPerRequest of the API budget before it is served
// (its connection reads nothing more meanwhile); HTTP/2 requests were
// paced frame by frame as they were read.
func (b *apiBudget) paceHTTP1(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 {
			if _, ok := b.wait(addrSource(r.RemoteAddr), apiUnitsPerRequest, r.Context().Done()); !ok {
				return // the client went away
			}
		}
		next.ServeHTTP(w, r)
	})
}
