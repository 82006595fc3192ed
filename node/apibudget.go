package node

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
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
// it is paced but never closed. Turns are fair between client sources
// as the connLimiter counts them (an IPv4 /24, an IPv6 /64: apiGroup),
// then between the addresses of a source (apiSource), not connections:
// start-time fair queueing at both levels, where a source's waiting
// reads are tagged in virtual time by the units its earlier ones took,
// and the one with the earliest tag goes first; in it, the address with
// the earliest tag of its own; an address's own connections take turns
// in the order they asked. So one address that opens many connections,
// or one /24 that sends from many addresses, gets one share (keyed by
// address, a /24's 32 addresses had 32 shares: outsider re-probe s34),
// and a client whose source has not used its share goes next however
// many connections flood: it waits for at most one turn of each source
// ahead of it (a turn is one read, at most a few frames). Inside a
// source an address with a backlog does not starve its neighbours.
// Clients behind one address (a proxy, loopback) share its turns, first
// come first served.
//
// A liveness check (a Status request over HTTP/1.1 with an empty body:
// lease.Remote asks one of a node that has left a request unanswered for
// its PeerTimeout) is served out of turn, up to apiChecksPerSecond of
// each source and apiChecksNodePerSecond of all sources together
// (askCheck); past that it waits its turn. One served out of turn
// counts in its source's fair share as a turn would (chargeLocked): the
// source's next turns come that much later.
//
// Invariant (api-budget): the client API's connections together pass
// net/http's server at most 2*burst + rate*t units of work in any t
// seconds (HTTP/2 frames as they are read, HTTP/1 requests at their
// handler; the second burst is the most liveness checks out of turn put
// the budget in debt), and of that, liveness checks served out of turn
// at most (1+t)*apiChecksNodePerSecond requests' units (a twentieth of
// the budget a second, at least one source's allowance: 50 checks a
// second at --max-api-rate 1000, 10 at 100), each also counted in its
// source's fair share; a
// connection past it waits, and is closed only once it has kept a
// backlog through maxBacklog of paced reads. Guarded by
// TestAPIBudgetFairShares (the scheduler, on a fake clock) and
// TestAPIBudgetPacesFlooders (flooding connections and a lease.Client on
// a real node: the client is paced, the flooders closed); by
// TestAPIBudgetSharesBySource and TestAPIBudgetSharesBySlash24 (a /24's
// many addresses share one turn); by TestLivenessChecksAreBounded and
// TestLivenessChecksGoAheadOfTheBudget (checks out of turn, bounded),
// TestLivenessChecksAreBoundedNodeWide (150 /24s' checks leave the
// queue its turns).
type apiBudget struct {
	rate  int64         // units a second
	burst int64         // units at once
	every time.Duration // per unit: time.Second/rate
	clock apiClock
	log   *slog.Logger
	warn  *loglimit.Limiter
	perS  int // Limits.MaxAPIRate, for the log

	mu      sync.Mutex
	tokens  int64                 // units that may pass now (below 0 after a read of more than burst, or a check out of turn)
	filled  time.Duration         // clock.now() to which tokens were added
	sources map[string]*apiSource // by address (sourceKey), or a named share
	groups  map[string]*apiGroup  // by /24 (IPv6 /64), or a named share
	pruneAt int                   // prune sources once there are this many
	ready   apiGroups             // groups with waiters, earliest start tag first
	vtime   int64                 // virtual time: the start tag of the last turn given
	seq     uint64                // orders groups with equal tags by when they asked

	armed bool // a timer will dispatch again

	// checks is the turns a group's liveness checks take out of turn
	// (see askCheck): checkBurst at once, checkEvery apart; and all
	// groups' together, allBurst at once, allEvery apart, allChecks of
	// them left at allChecksAt.
	checkBurst  int
	checkEvery  time.Duration
	allBurst    int
	allEvery    time.Duration
	allChecks   int
	allChecksAt time.Duration

	// paced counts the reads and requests that waited for their turn,
	// waited the time they waited (Node.APIPacing); checked the
	// liveness checks served out of turn, checkPaced those that waited
	// their group's turn past its allowance (Node.APILivenessChecks).
	paced      atomic.Uint64
	waited     atomic.Int64
	checked    atomic.Uint64
	checkPaced atomic.Uint64
}

// Weights of the API budget (see apiBudget).
const (
	// apiUnitsPerRequest is the units of a request: Limits.MaxAPIRate
	// requests a second are this many times as many units.
	apiUnitsPerRequest = 10
	// apiHeadersUnits is the units of an HTTP/2 HEADERS frame; every
	// other frame costs 1.
	apiHeadersUnits = apiUnitsPerRequest - 1
	// apiAbandonedUnits is charged, on top, to a request whose client
	// went away before it had sent its body (an HTTP/2 stream reset, a
	// connection closed): its handler ran, waited and unwound for
	// nothing, about ten requests' worth of a node's CPU. 66 /24s holding
	// 63 bodiless streams each and resetting every one after 400 ms
	// (3,300 a second, within every other limit at 1 request each) took a
	// leader's two cores, and it stepped down in 6 of 6 runs, 20 of 20
	// held leases lost twice (outsider review s40, N1).
	apiAbandonedUnits = 9 * apiUnitsPerRequest
	// apiUnitsPerKiB is what a KiB of request body costs past the first
	// apiFreeBodyBytes (bodyUnits): parsing a KiB took 40-75 µs, a
	// request's units about 60 µs.
	apiUnitsPerKiB   = 16
	apiFreeBodyBytes = 4 << 10
	// apiUnitsPerListed is what each holding of a reply (a List page, a
	// Get, a CheckToken) or of a Watch's initial listing costs beyond
	// the request's own units: a page of
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

// apiGroup is one client source's share (an IPv4 /24, an IPv6 /64, as
// the connLimiter counts them, or a named share: a forwarding node, the
// connections without the token): its turns are shared fairly by its
// addresses (apiSource).
type apiGroup struct {
	key     string
	finish  int64      // virtual time at which its last turn ended
	start   int64      // the start tag of its next turn, while it waits
	idx     int        // in apiBudget.ready, or -1
	seq     uint64     // orders groups with equal tags by when they asked
	members int        // its sources in apiBudget.sources
	ready   apiSources // its sources with waiters, earliest start tag first
	vtime   int64      // its virtual time: the start tag of the last turn one of its sources was given
	mseq    uint64     // orders its sources with equal tags
	// checks is the liveness checks it may have served out of turn now,
	// checksAt the clock.now() to which they were added (askCheck).
	checks   int
	checksAt time.Duration
}

// apiSource is one client address's share of its group's turns.
type apiSource struct {
	key     string
	group   *apiGroup
	finish  int64        // its group's virtual time at which its last turn ended
	start   int64        // the start tag of its next turn, while it waits
	waiters []*apiWaiter // its reads waiting, in the order they asked
	idx     int          // in group.ready, or -1
	seq     uint64
}

// apiWaiter is one read or request waiting for its turn.
type apiWaiter struct {
	cost    int64
	src     *apiSource
	granted chan struct{} // closed once its turn came
	done    bool          // its turn came (guarded by mu)
}

// apiChecksPerSecond is how many liveness checks (see askCheck) one
// group may have served out of turn a second, at most as many at once:
// a hundredth of the budget's requests, at least 10. A client checks a
// node at most once a PeerTimeout (default 1 s) while a request to it
// waits, so ten is ten clients of one /24 waiting at once; past it
// their checks wait their group's turn, as before.
func apiChecksPerSecond(perSecond int) int { return max(perSecond/100, 10) }

// apiChecksNodePerSecond is how many liveness checks all groups together
// may have served out of turn a second, at most as many at once: a
// twentieth of the budget's requests, at least one group's allowance.
// Without it 150 /24s, each within its own allowance, had 1,500 checks a
// second served out of turn at --max-api-rate 1000, more than the whole
// budget: the queue was never served, and a client of another /24 was
// starved (outsider review s35).
func apiChecksNodePerSecond(perSecond int) int {
	return max(perSecond/20, apiChecksPerSecond(perSecond))
}

func newAPIBudget(perSecond int, clock apiClock, log *slog.Logger) *apiBudget {
	rate := int64(perSecond) * apiUnitsPerRequest
	// A tenth of a second at once, and at least a full turn of every
	// stream of a connection: the budget paces floods, not bursts.
	burst := max(rate/10, 4*apiUnitsPerRequest)
	checks, all := apiChecksPerSecond(perSecond), apiChecksNodePerSecond(perSecond)
	return &apiBudget{rate: rate, burst: burst, every: max(time.Second/time.Duration(rate), 1), clock: clock,
		log: log, warn: loglimit.New(), perS: perSecond, tokens: burst, filled: clock.now(),
		sources: map[string]*apiSource{}, groups: map[string]*apiGroup{}, pruneAt: 64,
		checkBurst: checks, checkEvery: time.Second / time.Duration(checks),
		allBurst: all, allEvery: time.Second / time.Duration(all), allChecks: all, allChecksAt: clock.now()}
}

// groupKey is the group of a source key: the /24 of an IPv4 address (as
// transport.SourcePrefix with transport.HandshakeV4Bits, the
// connLimiter's sources), else the key itself (an IPv6 /64, a named
// share).
func groupKey(key string) string {
	if a, err := netip.ParseAddr(key); err == nil && a.Is4() {
		return netip.PrefixFrom(a, transport.HandshakeV4Bits).Masked().String()
	}
	return key
}

// sourceKey is the share a remote address draws from inside its source
// (groupKey): its IP, or its /64 prefix for IPv6 (one host is usually
// given a whole /64).
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

// apiPayPiece is the most units one turn of a large charge takes
// (payUnits): what 16 KiB of body costs (apiUnitsPerKiB), 25 requests'
// worth. Pieces of a whole burst (a tenth of a second of the budget)
// made a light source's request wait that long behind each source
// paying one ahead of it: 32 /24s listing large pages cut a lock loop
// beside them from ~180 to 7-8 operations a second, with stalls of 6.6 s
// (outsider review s35).
const apiPayPiece = 16 * apiUnitsPerKiB

// payUnits waits for source's turns of the API budget for units more
// units, in pieces of at most apiPayPiece (and the budget's burst), each
// at source's own turn: a large charge is that source's debt, never the
// other sources' wait, which is at most one piece per source paying.
// Without an API budget it does nothing.
func (n *Node) payUnits(ctx context.Context, source string, units int64) error {
	b := n.apiWork
	if b == nil {
		return nil
	}
	for units > 0 {
		piece := min(units, apiPayPiece, b.burst)
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
	return b.await(b.ask(key, cost), cancel)
}

// waitCheck is wait for a liveness check (see askCheck).
func (b *apiBudget) waitCheck(key string, cost int64, cancel <-chan struct{}) (ok bool) {
	outOfTurn, w := b.askCheck(key, cost)
	if outOfTurn {
		b.checked.Add(1)
		return true
	}
	if w != nil {
		b.checkPaced.Add(1)
		if ok, skipped := b.warn.Allow("api_checks"); ok {
			args := []any{"source", w.src.group.key, "max_api_rate", b.perS, "checks_per_second", b.checkBurst, "all_checks_per_second", b.allBurst, "checks_paced", b.checkPaced.Load()}
			if skipped > 0 {
				args = append(args, loglimit.Skipped, skipped)
			}
			b.log.Warn(fmt.Sprintf("liveness checks (Status requests over HTTP/1.1) from one client source (an IPv4 /24, an IPv6 /64) came faster than the %d a second it may have served out of turn (a hundredth of the agent's --max-api-rate %d, at least 10), or those of all sources faster than the %d a second they may together (a twentieth of it): the others wait their turn of the API budget, and a client whose check waits longer than twice its PeerTimeout takes the node for stopped; raise --max-api-rate if the node has CPU to spare", b.checkBurst, b.perS, b.allBurst), args...)
		}
	}
	_, ok = b.await(w, cancel)
	return ok
}

// await waits for w's turn (none if nil) until cancel is closed.
func (b *apiBudget) await(w *apiWaiter, cancel <-chan struct{}) (paced, ok bool) {
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
		b.log.Warn(fmt.Sprintf("client API connections together send more than the node's budget of %d requests a second (a PING or other control frame counts a tenth of one): their reads wait their turn, fairly between client sources (an IPv4 /24, an IPv6 /64) and then their addresses; raise the agent's --max-api-rate if the node has CPU to spare", b.perS), args...)
	}
	return true, true
}

// ask takes cost units for source key at once if nobody waits and the
// budget has them (nil), else queues a waiter for its turn.
func (b *apiBudget) ask(key string, cost int64) *apiWaiter {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.refilledSourceLocked(key)
	if b.tryTakeLocked(s, cost) {
		return nil
	}
	return b.queueLocked(s, cost)
}

// refilledSourceLocked refills the budget and returns key's source.
func (b *apiBudget) refilledSourceLocked(key string) *apiSource {
	b.refillLocked()
	return b.sourceLocked(key)
}

// tryTakeLocked gives s a turn of cost units at once if nobody waits and
// the budget has them.
func (b *apiBudget) tryTakeLocked(s *apiSource, cost int64) bool {
	if len(b.ready) == 0 && b.tokens >= min(cost, b.burst) {
		b.takeLocked(s, cost)
		return true
	}
	return false
}

// askCheck is ask for a liveness check (a client asking whether the node
// is alive while a request of its waits: paceHTTP1's isCheck): one its
// group has not used its allowance for (apiChecksPerSecond), while all
// groups together have not used theirs (apiChecksNodePerSecond), is
// served at once, out of turn, its units taken from the budget, which
// may go into debt by at most a burst for it, and counted in its
// group's and address's fair shares (chargeLocked); past the
// allowances, or the debt, it waits its turn as any request. It reports whether the check went
// out of turn, and the waiter (nil: served at once).
//
// A liveness check that waited its turn behind other clients of its
// address took longer than the client's PeerTimeout whenever they kept
// the node at --max-api-rate: the client took a live leader for a
// stopped one, and an Acquire waiting there gave up after its retry
// timeout (adversarial review s34). A check is a Status request, a few
// tens of microseconds with no body to speak of; the allowances bound
// what a flood of them gets past the queue (150 /24s each within its
// own starved the queue: outsider review s35), the budget still pays
// for every one, and so does its group's fair share.
func (b *apiBudget) askCheck(key string, cost int64) (outOfTurn bool, w *apiWaiter) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.refilledSourceLocked(key)
	if b.tryTakeLocked(s, cost) {
		return false, nil
	}
	g := s.group
	now := b.clock.now()
	refillChecks(&g.checks, &g.checksAt, b.checkBurst, b.checkEvery, now)
	refillChecks(&b.allChecks, &b.allChecksAt, b.allBurst, b.allEvery, now)
	if g.checks > 0 && b.allChecks > 0 && b.tokens-cost >= -b.burst {
		g.checks--
		b.allChecks--
		b.tokens -= cost
		b.chargeLocked(s, cost)
		return true, nil
	}
	return false, b.queueLocked(s, cost)
}

// refillChecks adds to *checks the checks earned since *at, one every
// every, up to burst.
func refillChecks(checks *int, at *time.Duration, burst int, every, now time.Duration) {
	if add := int((now - *at) / every); *checks+add >= burst {
		*checks, *at = burst, now
	} else {
		*checks += add
		*at += time.Duration(add) * every
	}
}

// chargeLocked counts cost units that s was given out of turn (a
// liveness check) in its and its group's fair shares, without giving a
// turn: their next turns start that much later in virtual time, so a
// source pays for its checks in its own turns, not the others'. A
// source or group that waits has its waiting turn's start tag moved;
// one that does not, its finish tag, from which its next turn starts.
func (b *apiBudget) chargeLocked(s *apiSource, cost int64) {
	g := s.group
	if g.idx >= 0 {
		g.start += cost
		heap.Fix(&b.ready, g.idx)
	} else {
		g.finish = max(b.vtime, g.finish) + cost
	}
	if s.idx >= 0 {
		s.start += cost
		heap.Fix(&g.ready, s.idx)
	} else {
		s.finish = max(g.vtime, s.finish) + cost
	}
}

// takeLocked gives s a turn of cost units at once (nobody waits).
func (b *apiBudget) takeLocked(s *apiSource, cost int64) {
	g := s.group
	b.tokens -= cost
	start := max(b.vtime, g.finish)
	g.finish, b.vtime = start+cost, start
	mstart := max(g.vtime, s.finish)
	s.finish, g.vtime = mstart+cost, mstart
}

// queueLocked queues a waiter of s for its turn.
func (b *apiBudget) queueLocked(s *apiSource, cost int64) *apiWaiter {
	g := s.group
	w := &apiWaiter{cost: cost, src: s, granted: make(chan struct{})}
	s.waiters = append(s.waiters, w)
	if s.idx < 0 {
		s.start, s.seq = max(g.vtime, s.finish), g.mseq
		g.mseq++
		heap.Push(&g.ready, s)
	}
	if g.idx < 0 {
		g.start, g.seq = max(b.vtime, g.finish), b.seq
		b.seq++
		heap.Push(&b.ready, g)
	}
	b.dispatchLocked()
	return w
}

// penalize charges source cost units after the fact, as its debt: the
// budget's (at most a burst into debt) and its fair share's, so that its
// next turns come that much later (chargeLocked).
func (b *apiBudget) penalize(source string, cost int64) {
	if cost <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.refilledSourceLocked(source)
	b.tokens = max(b.tokens-cost, -b.burst)
	b.chargeLocked(s, cost)
}

// refund gives back units paid for and not used (a body paid for before
// it was read that ended sooner), up to the burst, and lets the waiters
// they now cover have their turns. The payer's fair share keeps the
// charge: its next turns come no sooner.
func (b *apiBudget) refund(units int64) {
	if units <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked()
	b.tokens = min(b.tokens+units, b.burst)
	b.dispatchLocked()
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

// sourceLocked returns key's source, made (with its group) if new.
// Sources that wait for nothing and are not ahead of their group's
// virtual time (or whose group is behind the node's) are forgotten once
// there are many: they would start their next turn at its vtime anyway;
// and so are groups left without
// sources that are not ahead of virtual time and have their whole
// allowance of checks.
func (b *apiBudget) sourceLocked(key string) *apiSource {
	if s := b.sources[key]; s != nil {
		return s
	}
	if len(b.sources) >= b.pruneAt {
		for k, s := range b.sources {
			// A source charged for checks out of turn (chargeLocked)
			// is ahead of its group's virtual time until the group's
			// next turns; once the group waits for nothing and is
			// behind the node's, its debt is paid.
			g := s.group
			if s.idx < 0 && (s.finish <= g.vtime || g.idx < 0 && g.finish <= b.vtime) {
				delete(b.sources, k)
				g.members--
			}
		}
		now := b.clock.now()
		for k, g := range b.groups {
			full := g.checks+int((now-g.checksAt)/b.checkEvery) >= b.checkBurst
			if g.members == 0 && g.idx < 0 && g.finish <= b.vtime && full {
				delete(b.groups, k)
			}
		}
		b.pruneAt = max(64, 2*len(b.sources))
	}
	gk := groupKey(key)
	g := b.groups[gk]
	if g == nil {
		g = &apiGroup{key: gk, idx: -1, checks: b.checkBurst, checksAt: b.clock.now()}
		b.groups[gk] = g
	}
	g.members++
	s := &apiSource{key: key, group: g, idx: -1}
	b.sources[key] = s
	return s
}

// dispatchLocked gives turns while the budget has units for the next
// waiter, and else arms a timer for when it will: the group with the
// earliest start tag goes next, and in it the source with the earliest.
func (b *apiBudget) dispatchLocked() {
	for len(b.ready) > 0 {
		g := b.ready[0]
		s := g.ready[0]
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
		b.vtime = g.start
		g.finish = g.start + w.cost
		g.vtime = s.start
		s.finish = s.start + w.cost
		if len(s.waiters) > 0 {
			s.start = s.finish
			heap.Fix(&g.ready, 0)
		} else {
			s.waiters = nil
			heap.Pop(&g.ready)
		}
		if len(g.ready) > 0 {
			g.start = g.finish
			heap.Fix(&b.ready, 0)
		} else {
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
		g := s.group
		heap.Remove(&g.ready, s.idx)
		if len(g.ready) == 0 && g.idx >= 0 {
			heap.Remove(&b.ready, g.idx)
		}
	}
}

// fairHeap is a heap of sources or groups by start tag, then by when
// they asked.
type fairHeap[T interface {
	tags() (start int64, seq uint64, idx *int)
}] []T

func (h fairHeap[T]) Len() int { return len(h) }
func (h fairHeap[T]) Less(i, j int) bool {
	si, qi, _ := h[i].tags()
	sj, qj, _ := h[j].tags()
	if si != sj {
		return si < sj
	}
	return qi < qj
}
func (h fairHeap[T]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	_, _, ii := h[i].tags()
	_, _, ij := h[j].tags()
	*ii, *ij = i, j
}
func (h *fairHeap[T]) Push(x any) {
	t := x.(T)
	_, _, idx := t.tags()
	*idx = len(*h)
	*h = append(*h, t)
}
func (h *fairHeap[T]) Pop() any {
	old := *h
	t := old[len(old)-1]
	var zero T
	old[len(old)-1] = zero
	_, _, idx := t.tags()
	*idx = -1
	*h = old[:len(old)-1]
	return t
}

// apiSources is a heap of a group's sources, apiGroups of the groups.
type (
	apiSources = fairHeap[*apiSource]
	apiGroups  = fairHeap[*apiGroup]
)

func (s *apiSource) tags() (int64, uint64, *int) { return s.start, s.seq, &s.idx }
func (g *apiGroup) tags() (int64, uint64, *int)  { return g.start, g.seq, &g.idx }

// paceHTTP1 is, inside noteToken, the API server's handler: an HTTP/1 request
// waits for apiUnitsPerRequest of the API budget before it is served
// (its connection reads nothing more meanwhile); HTTP/2 requests were
// paced frame by frame as they were read. A liveness check (isCheck)
// may go out of turn (askCheck).
func (b *apiBudget) paceHTTP1(next http.Handler, isCheck func(*http.Request) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 {
			key, done := addrSource(r.RemoteAddr), r.Context().Done()
			var ok bool
			if isCheck != nil && isCheck(r) {
				ok = b.waitCheck(key, apiUnitsPerRequest, done)
			} else {
				_, ok = b.wait(key, apiUnitsPerRequest, done)
			}
			if !ok {
				return // the client went away
			}
		}
		next.ServeHTTP(w, r)
	})
}
