package node

import (
	"container/list"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/transport/pb"
)

// commitStallAfter is how long a leader may go without committing any of
// the proposals it has in flight before it says that it cannot commit:
// five heartbeat timeouts (5 s with DefaultTiming), at least 3 s. A busy
// host's slow commits (seconds: slowCommit warns from 1 s; two clusters
// on one host once stalled 3.4 s) stay below it with default timing;
// a commit that is late is still progress, and any commit resets the
// count.
func commitStallAfter(t Timing) time.Duration {
	return max(5*t.HeartbeatTimeout, 3*time.Second)
}

// errOwnDiskHung fails the Raft messages of a leader whose own disk hangs
// (rejoinTransport.mute).
var errOwnDiskHung = errors.New("not sent: this leader's own log write hangs, it lets its followers elect another")

// commitWatch follows this node's proposals from Apply until Raft resolves
// them, to tell when it leads but cannot commit.
//
// hashicorp/raft keeps a leader while a quorum answers its heartbeats,
// which touch no disk: with one voter of three stopped and the other's
// disk hung (its log store's writes block), the leader keeps leading,
// answers every liveness check, and commits nothing. Requests waiting for
// a commit, and waiting acquires whose grant could not commit, then
// waited for their callers' whole contexts (forever with
// context.Background()), where a leader without a quorum steps down and
// its callers give up after their retry timeout (adversarial review: a
// waiting acquire with a 2 s retry timeout waited 21 s).
//
// Invariant commit-or-say: a leader that has had a proposal in flight for
// commitStallAfter, with nothing committed meanwhile, is stalled: it
// answers the client requests it holds (an in-flight grant, extend,
// release or withdrawal ErrUnknownOutcome, a queued wait ErrNotLeader:
// its wait was cut short, as by a leader change) and refuses new ones
// before proposing them (ErrNoLeader), each naming the voters that have
// not stored the newest entries, until a proposal commits or none is
// left in flight (its own expiry sweeps and promotion still propose). A client's retry policy counts those
// refusals as failures, so it gives up after its retry timeout, as
// without a quorum. When every other voter has stored its entries (its
// own log write hangs, inside Raft's leader loop, which then neither
// commits nor steps down while its heartbeats go on), it also fails every
// AppendEntries it sends until the stall ends, so that a healthy quorum
// elects another leader (TestLeaderOwnDiskHungFailsOver). A wait for a held key at a leader that commits
// (however long the key is held) is not touched. Guarded by
// TestWaitAtLeaderThatCannotCommitGivesUp and
// TestExtendAndReleaseAtLeaderThatCannotCommitSaySo.
type commitWatch struct {
	after   time.Duration
	onStall func() // called, in a goroutine of its own, when a stall begins

	mu        sync.Mutex
	inflight  list.List // proposal start times, oldest first
	committed time.Time // when a proposal last committed
	declared  bool      // onStall ran for the current stall
	own       bool      // the stall is this node's own disk's (every other voter stored the entries)
	stalledCh chan struct{}
	timer     *time.Timer
	armed     bool
}

func newCommitWatch(after time.Duration, onStall func()) *commitWatch {
	return &commitWatch{after: after, onStall: onStall, stalledCh: make(chan struct{})}
}

// begin registers a proposal handed to Raft now. end must be called
// once, when Raft resolved it, saying whether it committed.
func (w *commitWatch) begin() (end func(committed bool)) {
	if w == nil { // a Node made by a unit test
		return func(bool) {}
	}
	w.mu.Lock()
	e := w.inflight.PushBack(time.Now())
	w.armLocked()
	w.mu.Unlock()
	return func(committed bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.inflight.Remove(e)
		if committed {
			w.committed = time.Now()
		}
		if w.declared && (committed || w.inflight.Len() == 0) {
			w.declared, w.own = false, false
			w.stalledCh = make(chan struct{})
		}
		w.armLocked()
	}
}

// armLocked sets the timer for when the oldest proposal in flight would
// make a stall, if it is not set and there is one. w.mu is held.
func (w *commitWatch) armLocked() {
	if w.armed || w.declared || w.inflight.Len() == 0 {
		return
	}
	age, _ := w.ageLocked(time.Now())
	d := max(w.after-age, time.Millisecond)
	if w.timer == nil {
		w.timer = time.AfterFunc(d, w.check)
	} else {
		w.timer.Reset(d)
	}
	w.armed = true
}

// ageLocked is how long the node has gone without committing while a
// proposal waited: since the oldest proposal in flight, or the last
// commit if later. w.mu is held.
func (w *commitWatch) ageLocked(now time.Time) (time.Duration, bool) {
	front := w.inflight.Front()
	if front == nil {
		return 0, false
	}
	since := front.Value.(time.Time)
	if w.committed.After(since) {
		since = w.committed
	}
	return now.Sub(since), true
}

// check runs when the timer fires: it declares a stall, or sets the timer
// again.
func (w *commitWatch) check() {
	w.mu.Lock()
	w.armed = false
	age, ok := w.ageLocked(time.Now())
	if !ok || w.declared {
		w.mu.Unlock()
		return
	}
	if age < w.after {
		w.armLocked()
		w.mu.Unlock()
		return
	}
	w.declared = true
	close(w.stalledCh)
	w.mu.Unlock()
	if w.onStall != nil {
		w.onStall()
	}
}

// stalled reports whether the node cannot commit: for how long nothing
// committed while proposals waited, and how many wait.
func (w *commitWatch) stalled() (age time.Duration, waiting int, ok bool) {
	if w == nil {
		return 0, 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	age, some := w.ageLocked(time.Now())
	return age, w.inflight.Len(), some && (w.declared || age >= w.after)
}

// ownDiskHung reports whether the current stall is this node's own
// disk's: every other voter stored what it proposed, and its own log
// write has not returned (onCommitStall).
func (w *commitWatch) ownDiskHung() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.declared && w.own
}

// setOwn marks the current stall as this node's own disk's, if one is
// declared.
func (w *commitWatch) setOwn() {
	w.mu.Lock()
	w.own = w.declared
	w.mu.Unlock()
}

// stalledChan is closed when the next stall is declared (at once, if one
// is declared now).
func (w *commitWatch) stalledChan() <-chan struct{} {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stalledCh
}

// onCommitStall answers the waiting acquires of the serving leader state
// when the node is found unable to commit (invariant commit-or-say).
func (n *Node) onCommitStall() {
	detail := n.cannotCommitDetail()
	n.log.Warn("this leader cannot commit: waiting acquires are answered and new ones refused until it commits again", "component", "node.leader", "detail", detail)
	if len(n.votersBehind()) == 0 {
		// Every other voter stored the entries: this node's own log
		// write hangs, inside Raft's leader loop, which then neither
		// commits nor steps down, while its replication goroutines
		// keep the followers from an election (their heartbeats touch
		// no disk). It goes silent on Raft until the stall ends, so
		// that a healthy quorum elects another leader (adversarial
		// review s34b: no grant in 25 s, holders lost their leases,
		// with two healthy voters of three).
		n.commits.setOwn()
		n.log.Error("this leader's own disk hangs: it stops sending to its followers so that they elect another leader", "component", "node.leader")
		n.notifyChange()
		n.hub.endAll(&LeaderError{Err: ErrNoLeader, Detail: n.ownDiskHungDetail(true) + "; watch another node"})
	}
	if ls := n.lead.Load(); ls != nil {
		ls.queues.stall(
			&LeaderError{Err: ErrNotLeader, Detail: detail + "; this wait was cut short and may be sent again"},
			fmt.Errorf("%w: its grant was proposed and may still commit: %w", ErrUnknownOutcome, n.stallErr()))
	}
}

// cannotCommitErr is ErrNoLeader saying why this leader cannot commit, if
// it cannot (nil if it can).
func (n *Node) cannotCommitErr() error {
	if _, _, ok := n.commits.stalled(); !ok {
		return nil
	}
	return n.stallErr()
}

// stallErr is ErrNoLeader saying why this leader cannot commit, in words
// (Detail) and for clients to say in theirs (Stall, carried on the wire
// as ErrorDetail.commit_stall): a client that read only "no leader" told
// its user the cluster was electing one, or had too few voters up,
// while all three were up with their disks hung (new-user review).
func (n *Node) stallErr() *LeaderError {
	detail, stall := n.cannotCommit()
	return &LeaderError{Err: ErrNoLeader, Detail: detail, Stall: stall}
}

// cannotCommitDetail says for how long this leader has committed nothing
// and which voters have not stored its newest entries (cannotCommit).
func (n *Node) cannotCommitDetail() string {
	detail, _ := n.cannotCommit()
	return detail
}

// cannotCommit says for how long this leader has committed nothing and
// which voters have not stored its newest entries, as their last Raft
// replies said (a voter that answers heartbeats but stores nothing has a
// hung disk; one that refuses connections is stopped): in words, and as
// the wire's CommitStall.
func (n *Node) cannotCommit() (string, *pb.CommitStall) {
	age, waiting, _ := n.commits.stalled()
	stall := &pb.CommitStall{LeaderId: n.cfg.ID, StalledFor: durationpb.New(age)}
	msg := fmt.Sprintf("leader %s cannot commit: nothing it proposed has committed for %v (%d proposals waiting)", n.cfg.ID, age.Round(time.Millisecond), waiting)
	if behind := n.votersBehind(); len(behind) > 0 {
		var words []string
		for _, b := range behind {
			stall.VotersBehind = append(stall.VotersBehind, b.id)
			words = append(words, b.id+" ("+b.why+")")
		}
		msg += "; voters that have not stored its newest entries: " + strings.Join(words, ", ")
	} else {
		stall.OwnDisk = true
		msg += "; every other voter has stored them: this node's own disk may be hung"
	}
	return msg + "; it commits again once a quorum of voters stores the log", stall
}

// behindVoter is a voter that has not stored this leader's newest
// entries, and why as far as its last Raft replies tell.
type behindVoter struct{ id, why string }

// votersBehind lists the other voters that have not stored this leader's
// newest entries, with why as far as their last Raft replies tell.
func (n *Node) votersBehind() []behindVoter {
	var behind []behindVoter
	if n.raft == nil || n.raftTrans == nil {
		return nil
	}
	last := n.raft.LastIndex()
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter || string(s.ID) == n.cfg.ID {
			continue
		}
		id := string(s.ID)
		stored, heard, ok := n.raftTrans.stored(s.Address)
		switch {
		case n.raftTrans.refusing(s.Address):
			behind = append(behind, behindVoter{id, "refusing Raft connections: stopped"})
		case !ok:
			behind = append(behind, behindVoter{id, "no Raft reply yet"})
		case stored >= last:
		case time.Since(heard) > time.Second:
			behind = append(behind, behindVoter{id, fmt.Sprintf("stored the log to index %d of %d; no Raft reply for %v", stored, last, time.Since(heard).Round(time.Millisecond))})
		default:
			behind = append(behind, behindVoter{id, fmt.Sprintf("stored the log to index %d of %d, and answers heartbeats: its disk may be hung", stored, last)})
		}
	}
	return behind
}
