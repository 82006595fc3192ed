package node

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// ownDiskHangAfter is how long one of this node's Raft log writes may go
// without returning before the node says that its own disk hangs: three
// heartbeat timeouts (3 s with DefaultTiming), at least 3 s. A loaded
// host's slow writes (1-2 s: slowCommit warns from 1 s) stay below it;
// a frozen or failed disk (fsfreeze, a dead NFS or iSCSI target, a
// controller reset) passes it. It is shorter than commitStallAfter (5 s),
// which needs a proposal waiting and every other voter to have stored it
// before it calls the hang the leader's own: this bound times the write
// itself, from when Raft handed it to the store, at any node.
func ownDiskHangAfter(t Timing) time.Duration {
	return max(3*t.HeartbeatTimeout, 3*time.Second)
}

// writeWatch times this node's Raft log writes, to tell when its own disk
// hangs: a write in flight for ownDiskHangAfter.
//
// Invariant own-disk-says: a node whose own log write has not returned
// for ownDiskHangAfter applies nothing (hashicorp/raft writes the log
// inside its one main goroutine, leader or follower), so it stops
// serving as leader (serving; its Raft messages are muted so that the
// followers elect another, rejoinTransport.mute), ends every watch stream
// it serves with the reason and refuses new ones (a stream there went
// silent while the new leader granted: new-user review of 91beb32), and
// says so in Status, readiness and its refusals, naming its data dir and
// how long the write has waited, until the write returns. Guarded by
// TestWatchAtLeaderWithHungDiskEnds and TestFollowerWithHungDiskSaysSo.
type writeWatch struct {
	after  time.Duration
	onHang func() // called, in the timer's goroutine, when a hang begins
	onEnd  func() // called when the writes of a hang return

	mu       sync.Mutex
	next     uint64
	inflight map[uint64]time.Time // start of each write in flight
	timer    *time.Timer
	armed    bool
	hung     atomic.Bool // a hang is declared (read on every request: serving)
}

func newWriteWatch(after time.Duration, onHang, onEnd func()) *writeWatch {
	return &writeWatch{after: after, onHang: onHang, onEnd: onEnd, inflight: map[uint64]time.Time{}}
}

// begin registers a write handed to the store now; the returned func is
// called when it returned.
func (w *writeWatch) begin() (end func()) {
	if w == nil {
		return func() {}
	}
	w.mu.Lock()
	id := w.next
	w.next++
	w.inflight[id] = time.Now()
	if !w.armed && !w.hung.Load() {
		if w.timer == nil {
			w.timer = time.AfterFunc(w.after, w.check)
		} else {
			w.timer.Reset(w.after)
		}
		w.armed = true
	}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.inflight, id)
		ended := false
		if w.hung.Load() {
			if age, ok := w.oldestLocked(time.Now()); !ok || age < w.after {
				w.hung.Store(false)
				ended = true
				if ok {
					w.armLocked(w.after - age)
				}
			}
		}
		w.mu.Unlock()
		if ended && w.onEnd != nil {
			w.onEnd()
		}
	}
}

// armLocked sets the timer to check again in d. w.mu is held.
func (w *writeWatch) armLocked(d time.Duration) {
	w.timer.Reset(max(d, time.Millisecond))
	w.armed = true
}

// oldestLocked is how long the oldest write in flight has waited. w.mu is
// held.
func (w *writeWatch) oldestLocked(now time.Time) (time.Duration, bool) {
	var oldest time.Time
	for _, at := range w.inflight {
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	if oldest.IsZero() {
		return 0, false
	}
	return now.Sub(oldest), true
}

// check runs when the timer fires: it declares a hang, or sets the timer
// again for the oldest write in flight.
func (w *writeWatch) check() {
	w.mu.Lock()
	w.armed = false
	age, ok := w.oldestLocked(time.Now())
	if !ok || w.hung.Load() {
		w.mu.Unlock()
		return
	}
	if age < w.after {
		w.armLocked(w.after - age)
		w.mu.Unlock()
		return
	}
	w.hung.Store(true)
	w.mu.Unlock()
	if w.onHang != nil {
		w.onHang()
	}
}

// waited reports whether a hang is declared, and how long the oldest
// write in flight has waited.
func (w *writeWatch) waited() (time.Duration, bool) {
	if w == nil || !w.hung.Load() {
		return 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	age, ok := w.oldestLocked(time.Now())
	return age, ok && w.hung.Load()
}

// ownDiskHung reports whether this node's own disk hangs: a log write of
// its has waited ownDiskHangAfter (writeWatch), or, as leader, nothing it
// proposed has committed for commitStallAfter while every other voter
// stored it (commitWatch).
func (n *Node) ownDiskHung() bool {
	return n.disk != nil && n.disk.hung.Load() || n.commits.ownDiskHung()
}

// ownDiskHungDetail says that this node's own disk hangs, how long its
// write has waited and in which data dir (not if !names: readiness
// probes answer without credentials), or "" if it does not.
func (n *Node) ownDiskHungDetail(names bool) string {
	self, where := "this node", ""
	if names {
		self, where = "node "+n.cfg.ID, " in data dir "+n.cfg.DataDir
	}
	role := "it applies nothing and serves no watch"
	if n.raft != nil && n.raft.State() == raft.Leader {
		role = "it stopped serving as leader (its followers elect another) and serves no watch"
	}
	if age, ok := n.disk.waited(); ok {
		return fmt.Sprintf("%s's own disk hangs: its Raft log write%s has waited %v (the bound is %v); %s until the write returns: check the disk (a frozen file system, a failed device)",
			self, where, age.Round(time.Millisecond), n.disk.after, role)
	}
	if n.commits.ownDiskHung() {
		age, _, _ := n.commits.stalled()
		return fmt.Sprintf("%s's own disk hangs: every other voter stored its newest entries and nothing it proposed has committed for %v (its own log write%s has not returned); %s until it commits: check the disk (a frozen file system, a failed device)",
			self, age.Round(time.Millisecond), where, role)
	}
	return ""
}

// OwnDiskHung says that this node's own disk hangs (how long its Raft
// log write has waited), or "" if it does not. It names neither the node
// nor its data dir: readiness probes say it without credentials.
func (n *Node) OwnDiskHung() string { return n.ownDiskHungDetail(false) }

// onOwnDiskHang runs when this node's own disk is found hung: it says so,
// wakes the requests waiting for a leader (route), and ends every watch
// stream it serves (invariant own-disk-says).
func (n *Node) onOwnDiskHang() {
	detail := n.ownDiskHungDetail(true)
	if detail == "" {
		return // it returned meanwhile
	}
	n.log.Error("this node's own disk hangs: it stops serving as leader and ends its watch streams until its write returns", "component", "node.disk", "detail", detail)
	n.notifyChange()
	n.hub.endAll(&LeaderError{Err: ErrNoLeader, Detail: detail + "; watch another node"})
}

// onOwnDiskBack runs when this node's hung log writes returned.
func (n *Node) onOwnDiskBack() {
	n.log.Warn("this node's own disk is back: its Raft log write returned", "component", "node.disk")
	n.notifyChange()
}
