package node

import (
	"context"
	"strings"
	"sync"

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
}

// watcher buffers events for one Watch call; a goroutine moves them to the
// caller's channel so that publish never blocks the feed.
type watcher struct {
	prefix  string
	extends bool // wants EXTENDED events
	mu      sync.Mutex
	queue   []*pb.WatchEvent
	wake    chan struct{}
	reset   bool // fell behind: send RESET and stop
}

// maxWatchBacklog bounds a slow watcher's buffer before it is reset.
const maxWatchBacklog = 65536

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

	var first []*pb.WatchEvent
	if initial {
		_, now := n.fsm.Clock()
		after := ""
		for {
			page, next := n.fsm.List(prefix, after, 1000)
			for i := range page {
				first = append(first, &pb.WatchEvent{Type: pb.EventType_EVENT_TYPE_GRANTED, Index: page[i].Token, Lease: toPB(&page[i], now)})
			}
			if next == "" {
				break
			}
			after = next
		}
	}
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
		for _, e := range first {
			if !send(e) {
				return
			}
		}
		for {
			w.mu.Lock()
			batch, reset := w.queue, w.reset
			w.queue = nil
			w.mu.Unlock()
			for _, e := range batch {
				if !send(e) {
					return
				}
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

func (h *watchHub) remove(w *watcher) {
	h.mu.Lock()
	delete(h.watchers, w)
	h.mu.Unlock()
}

func (h *watchHub) publish(events []fsm.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		w.mu.Lock()
		added := false
		for i := range events {
			e := &events[i]
			if e.Type == fsm.EventExtended && !w.extends {
				continue
			}
			if pe := watchEvent(e); pe != nil && (e.Type == fsm.EventRestored || strings.HasPrefix(e.Key, w.prefix)) {
				if len(w.queue) >= maxWatchBacklog || pe.Type == pb.EventType_EVENT_TYPE_RESET {
					w.reset = true
					break
				}
				w.queue = append(w.queue, pe)
				added = true
			}
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
