package node

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/transport/pb"
)

// runFeed drains the FSM's change feed: it publishes every event to
// watchers and, on the leader, wakes the waiters of keys that were released
// or expired and kicks the reaper when new expiries appear. It is the only
// reader of the feed.
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
		n.hub.publish(events)
		ls := n.lead.Load()
		if ls == nil {
			continue
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
}

// watchHub fans applied events out to watchers.
type watchHub struct {
	mu       sync.Mutex
	watchers map[*watcher]struct{}
	closed   bool
	bytes    int64 // every watcher's backlog, as watcher.bytes counts it
}

// watcher buffers events for one Watch call; a goroutine moves them to the
// caller's channel so that publish never blocks the feed.
type watcher struct {
	prefix  string
	extends bool // wants EXTENDED events
	mu      sync.Mutex
	queue   []queued
	bytes   int64 // encoded size of the events queued or taken and not yet sent
	wake    chan struct{}
	reset   bool // fell behind: send RESET and stop
}

// queued is an event and its encoded size.
type queued struct {
	e    *pb.WatchEvent
	size int64
}

// A watcher that reads slower than events come is reset (sent RESET, then
// the stream ends; the client re-reads and watches again) once its backlog
// passes maxWatchBacklog events or maxWatchBacklogBytes, or once all
// watchers' backlogs together pass maxHubBacklogBytes: lease values make
// an event up to 64 KiB, so a count alone let one stalled watcher pin
// gigabytes. The initial listing is read and sent a page of
// watchInitialPage leases at a time, so a watcher that does not read
// holds at most a page of it (a whole listing of millions of leases was
// built before the first was sent).
const (
	maxWatchBacklog      = 65536
	maxWatchBacklogBytes = 16 << 20
	maxHubBacklogBytes   = 256 << 20
	watchInitialPage     = 64
)

func newWatchHub() *watchHub { return &watchHub{watchers: map[*watcher]struct{}{}} }

func (h *watchHub) watch(ctx context.Context, n *Node, req *pb.WatchRequest) <-chan *pb.WatchEvent {
	prefix, initial := req.GetPrefix(), req.GetInitial()
	w := &watcher{prefix: prefix, extends: req.GetExtends(), wake: make(chan struct{}, 1)}
	out := make(chan *pb.WatchEvent, 64)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		close(out)
		return out
	}
	h.watchers[w] = struct{}{}
	h.mu.Unlock()

	started := n.goRun("node.watch", func() {
		defer close(out)
		defer h.remove(w)
		send := func(e *pb.WatchEvent) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
			case <-n.ctx.Done():
			}
			return false
		}
		if initial {
			_, now := n.fsm.Clock()
			for after := ""; ; {
				page, next := n.fsm.List(prefix, after, watchInitialPage)
				for i := range page {
					if !send(&pb.WatchEvent{Type: pb.EventType_EVENT_TYPE_GRANTED, Index: page[i].Token, Lease: toPB(&page[i], now)}) {
						return
					}
				}
				if next == "" {
					break
				}
				after = next
			}
		}
		for {
			w.mu.Lock()
			batch, reset := w.queue, w.reset
			w.queue = nil
			w.mu.Unlock()
			for _, q := range batch {
				if !send(q.e) {
					return
				}
				h.sent(w, q.size)
			}
			if reset {
				send(&pb.WatchEvent{Type: pb.EventType_EVENT_TYPE_RESET})
				return
			}
			select {
			case <-w.wake:
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
	return out
}

// sent takes an event of size bytes off w's backlog.
func (h *watchHub) sent(w *watcher, size int64) {
	h.mu.Lock()
	w.mu.Lock()
	w.bytes -= size
	h.bytes -= size
	w.mu.Unlock()
	h.mu.Unlock()
}

func (h *watchHub) remove(w *watcher) {
	h.mu.Lock()
	delete(h.watchers, w)
	w.mu.Lock()
	h.bytes -= w.bytes
	w.bytes = 0
	w.mu.Unlock()
	h.mu.Unlock()
}

func (h *watchHub) publish(events []fsm.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.watchers) == 0 {
		return
	}
	pes := make([]queued, 0, len(events)) // shared by the watchers: read only
	for i := range events {
		if pe := watchEvent(&events[i]); pe != nil {
			pes = append(pes, queued{pe, int64(proto.Size(pe))})
		} else {
			pes = append(pes, queued{})
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
			if q.e == nil || e.Type == fsm.EventExtended && !w.extends {
				continue
			}
			if e.Type != fsm.EventRestored && !strings.HasPrefix(e.Key, w.prefix) {
				continue
			}
			if q.e.Type == pb.EventType_EVENT_TYPE_RESET || len(w.queue) >= maxWatchBacklog ||
				w.bytes+q.size > maxWatchBacklogBytes || h.bytes+q.size > maxHubBacklogBytes {
				w.reset = true
				break
			}
			w.queue = append(w.queue, q)
			w.bytes += q.size
			h.bytes += q.size
			added = true
		}
		reset := w.reset
		w.mu.Unlock()
		if added || reset {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
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
