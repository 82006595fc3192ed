package node

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport/pb"
)

// runFeed drains the FSM's change feed: on the leader it wakes the
// waiters of keys that were released or expired and kicks the reaper when
// new expiries appear; then it publishes every event to watchers. It is
// the only reader of the feed.
func (n *Node) runFeed() {
	var events []fsm.Event
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.fsm.Changes():
		}
		events = n.fsm.Drain(events[:0])
		n.clock.estimate(n.fsm.Clock()) // note when the clock moved (stale reads)
		n.wake(events)
		n.applied.count(events)
		n.hub.publish(events)
	}
}

// AppliedCounts counts the changes this node applied since it started,
// by kind, from the entries of every leader (a follower counts them too).
// A snapshot restored in place of the log is not counted.
type AppliedCounts struct {
	Grants   uint64 // holdings granted (one per key of a multi-key lease)
	Extends  uint64 // holdings extended (one per holding per extend)
	Releases uint64 // holdings released by their holder
	Expiries uint64 // holdings that ran out
	Freed    uint64 // lock-delays that ended
}

// appliedCounter keeps AppliedCounts; runFeed is its only writer.
type appliedCounter struct {
	grants, extends, releases, expiries, freed atomic.Uint64
}

func (c *appliedCounter) count(events []fsm.Event) {
	var g, x, r, e, f uint64
	for i := range events {
		switch events[i].Type {
		case fsm.EventGranted:
			g++
		case fsm.EventExtended:
			x++
		case fsm.EventReleased:
			r++
		case fsm.EventExpired:
			e++
		case fsm.EventFreed:
			f++
		}
	}
	c.grants.Add(g)
	c.extends.Add(x)
	c.releases.Add(r)
	c.expiries.Add(e)
	c.freed.Add(f)
}

// Applied returns the changes this node applied since it started, by
// kind: what the metrics package exports as counters. Reading them costs
// nothing per change (a Watch with Extends, which metrics used before,
// built and queued a message for every extended lease: a third of a
// keepalive-heavy node's CPU for a counter).
func (n *Node) Applied() AppliedCounts {
	c := &n.applied
	return AppliedCounts{Grants: c.grants.Load(), Extends: c.extends.Load(), Releases: c.releases.Load(),
		Expiries: c.expiries.Load(), Freed: c.freed.Load()}
}

// wake runs the leader's duties for applied events: it pumps the waiters
// of keys that were released or expired, and kicks the reaper when new
// expiries appear. runFeed calls it before it publishes the events to
// watchers: a lock's handoff never waits for the fan-out (an outsider's
// 15,379 watches made it wait long enough for 3 s leases to be lost).
// Watchers lose nothing by it: they get every event, in log order, from
// the one goroutine that publishes them.
func (n *Node) wake(events []fsm.Event) {
	ls := n.lead.Load()
	if ls == nil {
		return
	}
	kick := false
	for i := range events {
		switch e := &events[i]; e.Type {
		case fsm.EventReleased, fsm.EventExpired, fsm.EventFreed:
			ls.queues.pump(e.Key)
			kick = true // the holding's request-id mark must be reaped in time
		case fsm.EventGranted, fsm.EventPromoted, fsm.EventRestored:
			kick = true
		}
	}
	if kick {
		ls.kickReaper()
	}
}

// watchHub fans applied events out to watchers.
type watchHub struct {
	mu       sync.Mutex
	watchers map[*watcher]struct{}
	closed   bool
	last     uint64        // the highest index published
	bytes    atomic.Int64  // the events some watcher still holds, each counted once
	refused  atomic.Uint64 // watches refused at their limit (Limits.MaxWatches)
	// bySource counts the open watches of each client source (API
	// watches only: see watchSourceKey).
	bySource map[string]int
	// refusedLog limits the warnings about those refusals to one per
	// loglimit.Every: a client looping on Watch would otherwise write a
	// line per call.
	refusedLog *loglimit.Limiter
}

// watcher buffers events for one Watch call; a goroutine moves them to the
// caller's channel so that publish never blocks the feed.
type watcher struct {
	source  string // the client source of an API watch, "" if embedded
	prefix  string
	extends bool // wants EXTENDED events
	mu      sync.Mutex
	queue   []*shared
	bytes   int64 // encoded size of the events queued or taken and not yet sent
	wake    chan struct{}
	reset   bool          // fell behind: its backlog is dropped, RESET goes next
	resetCh chan struct{} // closed on reset: ends a send the reader leaves waiting
	end     error         // why the node ended the stream (endAll), nil if it did not
	endCh   chan struct{} // closed by endAll: the stream ends at once
}

// shared is one published event, held by the watchers that have not sent
// it yet; the hub counts its bytes once, while any holds it.
type shared struct {
	e    *pb.WatchEvent // read only
	size int64
	refs atomic.Int32
}

// A watcher that reads slower than events come is reset (its backlog is
// dropped and it is sent RESET, then the stream ends; the client re-reads
// and watches again) once its backlog passes maxWatchBacklog events or
// maxWatchBacklogBytes. Past maxHubBacklogBytes of events held for all
// watchers, the watchers with the largest backlogs are reset until the
// rest fit: lease values make an event up to 64 KiB, so a count alone let
// one stalled watcher pin gigabytes, and resetting whoever came next let
// a few stalled watchers reset everyone else. The initial listing is read
// and sent a page of watchInitialPage leases at a time, so a watcher that
// does not read holds at most a page of it (a whole listing of millions
// of leases was built before the first was sent).
const (
	maxWatchBacklog      = 65536
	maxWatchBacklogBytes = 16 << 20
	maxHubBacklogBytes   = 256 << 20
	watchInitialPage     = 64
)

// watchSourceKey carries the client source of an API Watch (an IPv4 /24
// or an IPv6 /64, as the handshake bound groups them: one party gets
// IPv4 addresses in blocks) in its context.
type watchSourceKey struct{}

// watchPayKey carries the API budget's source key of an API Watch (its
// address: addrSource, as a List's servePaidRead) in its context: its
// initial listing pays apiUnitsPerListed a lease at that source's turns.
// Embedded watches carry none and pay nothing.
type watchPayKey struct{}

// watchesPerSource is the most watches one client source may have open
// on a node whose limit is limit: a quarter of it, and at least 64 (all
// of it, below 64), so that one token holder cannot take every watch of
// a node (stop 31's outsider review: 1,024 streams from one holder took
// the leader's whole --max-watches and a core; then 4 addresses of one
// /24 did, until sources were counted by /24).
func watchesPerSource(limit int) int { return max(limit/4, min(limit, 64)) }

func newWatchHub() *watchHub {
	return &watchHub{watchers: map[*watcher]struct{}{}, bySource: map[string]int{}, refusedLog: loglimit.New()}
}

// watch registers a watcher of req's prefix and starts its goroutine. It
// refuses a watch past max open on this node (Limits.MaxWatches): each
// costs its goroutines and buffers (about 33 KB seen from a client), and
// publish visits every watcher for every batch of events, so an unbounded
// number (an outsider opened 15,379 on one leader: 30 -> 529 MB, 27,000
// goroutines, two lost leaderships) starves the node.
//
// ended says, once the channel has closed, why the node ended the stream
// (endAll), or nil.
func (h *watchHub) watch(ctx context.Context, n *Node, req *pb.WatchRequest, max int) (_ <-chan *pb.WatchEvent, ended func() error, _ error) {
	prefix, initial := req.GetPrefix(), req.GetInitial()
	source, _ := ctx.Value(watchSourceKey{}).(string)
	paySource, _ := ctx.Value(watchPayKey{}).(string)
	w := &watcher{source: source, prefix: prefix, extends: req.GetExtends(), wake: make(chan struct{}, 1), resetCh: make(chan struct{}), endCh: make(chan struct{})}
	ended = func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.end
	}
	out := make(chan *pb.WatchEvent, 64)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		close(out)
		return out, ended, nil
	}
	perSource := watchesPerSource(max)
	if len(h.watchers) >= max || source != "" && h.bySource[source] >= perSource {
		node := len(h.watchers) >= max
		h.mu.Unlock()
		h.refused.Add(1)
		// Logged like the other refusals at the trust boundary (the
		// README promises one line per kind per interval): counted but
		// silent, an operator saw only the metric (outsider review #6).
		if ok, skipped := h.refusedLog.Allow("max_watches"); ok {
			args := []any{"max_watches", max, "per_client_address", perSource, "source", source}
			if skipped > 0 {
				args = append(args, loglimit.Skipped, skipped)
			}
			n.log.Warn("refused a Watch: this node has as many watches open as its limit (agent --max-watches), or the client's source (IPv4 /24, IPv6 /64) a quarter of them; clients must end one, watch a shorter prefix once instead of many, or raise the limit on this agent", args...)
		}
		if node {
			return nil, nil, fmt.Errorf("%w: %d watches open on this node, its limit (agent --max-watches): end one, watch a shorter prefix once instead of many, or raise the limit", ErrTooManyWatches, max)
		}
		return nil, nil, fmt.Errorf("%w: %d watches open on this node from your address's /24 (IPv6 /64), the most one source may have (a quarter of the agent's --max-watches %d, at least 64): end one, watch a shorter prefix once instead of many, or raise the limit", ErrTooManyWatches, perSource, max)
	}
	h.watchers[w] = struct{}{}
	if source != "" {
		h.bySource[source]++
	}
	since := h.last // events after it reach w's queue
	h.mu.Unlock()

	started := n.goRun("node.watch", func() {
		defer close(out)
		defer h.remove(w)
		// send hands e to the caller, unless the call ends or w is reset
		// first (a reader that stopped reading holds nothing after that).
		send := func(e *pb.WatchEvent) bool {
			select {
			case out <- e:
				return true
			case <-w.resetCh:
			case <-w.endCh:
			case <-ctx.Done():
			case <-n.ctx.Done():
			}
			return false
		}
		sendReset := func() {
			select {
			case out <- &pb.WatchEvent{Type: pb.EventType_EVENT_TYPE_RESET}:
			case <-ctx.Done():
			case <-n.ctx.Done():
			}
		}
		if initial {
			// The listing pays for its leases as a List's reply does
			// (replyCost: apiUnitsPerListed each, beyond the
			// request's own units), page by page before the page is
			// sent, at its client's turns: it was one request's worth
			// however large, and 128 watches re-reading an 18 MB
			// listing made a leader step down (outsider review s34).
			// Watches are served by the node the client chose, never
			// forwarded: the node that lists is the one that is paid.
			pctx, stop := context.WithCancel(ctx)
			defer stop()
			defer context.AfterFunc(n.ctx, stop)()
			//
			// A page is sized from the FSM without copying it
			// (listingSize), paid, and only then built, of no more keys
			// than were paid for (reply-paid-before-built): built
			// first, each watch waiting for its turn held its page.
			credit := int64(apiUnitsPerRequest) // the Watch's own, paid as it was read
			pay := func(units int64) bool {
				units, credit = units-credit, 0
				if units < 0 {
					credit = -units
				}
				return n.payUnits(pctx, paySource, units) == nil
			}
			// A page holds room among the replies the node holds
			// unsent (reply-room), in its source's share, from before
			// it is built until its events are handed on; it waits for
			// it until the call ends.
			var hold *replyHold
			if paySource != "" && source != "" {
				hold = &replyHold{room: n.replies, src: source, factor: 2}
				defer hold.release()
			}
			for after := ""; ; {
				limit, paid := watchInitialPage, int64(0)
				if paySource != "" {
					var keys int
					var size int64
					keys, paid, size = n.listingSize(prefix, after)
					if keys > 0 {
						limit = keys
					} else {
						limit = 1
					}
					if !pay(paid) {
						return // the call ended, or the node
					}
					hold.release() // the previous page's: its events are handed on
					if hold.take(pctx, size) != nil {
						return
					}
				}
				page, next := n.fsm.List(prefix, after, limit)
				_, now := n.fsm.Clock() // after the read: time left is never overstated
				if paySource != "" {
					// What it grew by since it was sized.
					if extra := listingUnits(page, now) - paid; extra > 0 && !pay(extra) {
						return
					}
					hold.grow(listedBytes(page, now))
				}
				for i := range page {
					if page[i].Token > since {
						continue // granted since w was registered: its event is queued
					}
					// A key in its lock-delay is listed as the expiry
					// that began it (its Freed event follows), never as
					// held: nobody holds it.
					typ := pb.EventType_EVENT_TYPE_GRANTED
					if page[i].State == fsm.StateDelayed {
						typ = pb.EventType_EVENT_TYPE_EXPIRED
					}
					if !send(&pb.WatchEvent{Type: typ, Index: page[i].Token, Lease: toPB(&page[i], now), Current: true}) {
						if h.isReset(w) {
							sendReset()
						}
						return
					}
				}
				if next == "" {
					break
				}
				after = next
			}
			hold.release() // the last page's: its events are handed on
			if req.GetListed() && !send(&pb.WatchEvent{Type: pb.EventType_EVENT_TYPE_LISTED, Index: since}) {
				if h.isReset(w) {
					sendReset()
				}
				return
			}
		}
		for {
			w.mu.Lock()
			batch, reset := w.queue, w.reset
			w.queue = nil
			w.mu.Unlock()
			for i, q := range batch {
				ok := send(q.e)
				h.done(w, q)
				if !ok {
					for _, rest := range batch[i+1:] {
						h.done(w, rest)
					}
					if h.isReset(w) {
						reset = true
						break
					}
					return
				}
			}
			if reset {
				sendReset()
				return
			}
			select {
			case <-w.wake:
			case <-w.endCh:
				return
			case <-ctx.Done():
				return
			case <-n.ctx.Done():
				return
			}
		}
	})
	if !started { // the node is closing
		h.remove(w)
		close(out)
	}
	return out, ended, nil
}

// endAll ends every watch stream open now, at once, saying why (err):
// the node stopped applying (invariant own-disk-says).
func (h *watchHub) endAll(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		w.mu.Lock()
		if w.end == nil {
			w.end = err
			close(w.endCh)
		}
		w.mu.Unlock()
	}
}

// isReset reports whether w was reset.
func (h *watchHub) isReset(w *watcher) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reset
}

// done takes q off w's backlog: sent, or dropped.
func (h *watchHub) done(w *watcher, q *shared) {
	w.mu.Lock()
	w.bytes -= q.size
	w.mu.Unlock()
	h.release(q)
}

// release drops one watcher's hold on q.
func (h *watchHub) release(q *shared) {
	if q.refs.Add(-1) == 0 {
		h.bytes.Add(-q.size)
	}
}

// resetLocked resets w: its queued backlog is dropped at once (the events
// its sender has taken are dropped as it gets to them), and RESET goes
// next. w.mu is held.
func (h *watchHub) resetLocked(w *watcher) {
	if w.reset {
		return
	}
	w.reset = true
	close(w.resetCh)
	for _, q := range w.queue {
		w.bytes -= q.size
		h.release(q)
	}
	w.queue = nil
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (h *watchHub) remove(w *watcher) {
	h.mu.Lock()
	if _, ok := h.watchers[w]; ok && w.source != "" {
		if h.bySource[w.source]--; h.bySource[w.source] <= 0 {
			delete(h.bySource, w.source)
		}
	}
	delete(h.watchers, w)
	h.mu.Unlock()
	w.mu.Lock()
	for _, q := range w.queue {
		h.release(q)
	}
	w.queue, w.bytes = nil, 0
	w.mu.Unlock()
}

func (h *watchHub) publish(events []fsm.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range events {
		h.last = max(h.last, events[i].Index)
	}
	if len(h.watchers) == 0 {
		return
	}
	pes := make([]*shared, len(events)) // nil: no event for watchers
	for i := range events {
		if pe := watchEvent(&events[i]); pe != nil {
			pes[i] = &shared{e: pe, size: int64(proto.Size(pe))}
		}
	}
	for w := range h.watchers {
		w.mu.Lock()
		if w.reset { // going: its RESET is on its way
			w.mu.Unlock()
			continue
		}
		added := false
		for i := range events {
			e, q := &events[i], pes[i]
			if q == nil || e.Type == fsm.EventExtended && !w.extends {
				continue
			}
			if e.Type != fsm.EventRestored && !strings.HasPrefix(e.Key, w.prefix) {
				continue
			}
			if q.e.Type == pb.EventType_EVENT_TYPE_RESET || len(w.queue) >= maxWatchBacklog || w.bytes+q.size > maxWatchBacklogBytes {
				h.resetLocked(w)
				break
			}
			if q.refs.Add(1) == 1 {
				h.bytes.Add(q.size)
			}
			w.queue = append(w.queue, q)
			w.bytes += q.size
			added = true
		}
		w.mu.Unlock()
		if added {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
	for h.bytes.Load() > maxHubBacklogBytes && h.resetLargestLocked() {
	}
}

// resetLargestLocked resets the watcher with the largest backlog, and
// reports whether there was one to reset. h.mu is held.
func (h *watchHub) resetLargestLocked() bool {
	var big *watcher
	var most int64
	for w := range h.watchers {
		w.mu.Lock()
		if !w.reset && w.bytes > most {
			big, most = w, w.bytes
		}
		w.mu.Unlock()
	}
	if big == nil {
		return false
	}
	big.mu.Lock()
	h.resetLocked(big)
	big.mu.Unlock()
	return true
}

func (h *watchHub) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
}

func watchEvent(e *fsm.Event) *pb.WatchEvent {
	var t pb.EventType
	switch e.Type {
	case fsm.EventGranted:
		t = pb.EventType_EVENT_TYPE_GRANTED
	case fsm.EventExtended:
		t = pb.EventType_EVENT_TYPE_EXTENDED
	case fsm.EventReleased:
		t = pb.EventType_EVENT_TYPE_RELEASED
	case fsm.EventExpired:
		t = pb.EventType_EVENT_TYPE_EXPIRED
	case fsm.EventFreed:
		t = pb.EventType_EVENT_TYPE_FREED
	case fsm.EventRestored:
		t = pb.EventType_EVENT_TYPE_RESET
	default:
		return nil
	}
	return &pb.WatchEvent{Type: t, Index: e.Index, Lease: &pb.Lease{
		Key: e.Key, Holder: e.Holder, Token: e.Token, Value: e.Value,
		Mode: pb.LeaseMode(e.Mode), Limit: e.Limit, Set: e.Set,
	}}
}

// listingUnits is what a page of a watch's initial listing costs: as a
// List page's reply (replyCost), apiUnitsPerListed a lease and its
// bytes (replyUnits): each an event of the lease (leaseSize) and its
// fixed fields.
func listingUnits(page []fsm.Lease, now time.Duration) int64 {
	return int64(len(page))*apiUnitsPerListed + replyUnits(listedBytes(page, now))
}

// listedBytes is an upper bound of the encoded size of the events that
// list page in a watch's initial listing (listedSize).
func listedBytes(page []fsm.Lease, now time.Duration) int64 {
	var size int64
	for i := range page {
		size += listedSize(&page[i], now)
	}
	return size
}

// listedSize is an upper bound of the encoded size of the event that
// lists l in a watch's initial listing (type, index, current, and l).
func listedSize(l *fsm.Lease, now time.Duration) int64 { return int64(leaseSize(l, now)) + 24 }

// listingSize is the keys of the next page of a watch's initial listing
// of prefix after after (up to watchInitialPage), what it costs
// (listingUnits) and its encoded size (listedBytes), read from the FSM
// without copying anything.
func (n *Node) listingSize(prefix, after string) (keys int, units, size int64) {
	_, now := n.fsm.Clock() // before the page's: time left is no shorter
	var leases int
	n.fsm.ViewList(prefix, after, watchInitialPage, func(hs []fsm.Lease) bool {
		for i := range hs {
			size += listedSize(&hs[i], now)
		}
		keys++
		leases += len(hs)
		return true
	})
	return keys, int64(leases)*apiUnitsPerListed + replyUnits(size), size
}
