package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// leaderState exists for one leadership term of this node, from the moment
// its Promote applied until leadership is lost. Its clock is the clock that
// judges expiry in its epoch.
type leaderState struct {
	n      *Node
	epoch  uint64
	start  time.Time // monotonic reading when leadership began
	rate   float64   // 1 unless UnsafeClockRate
	wall   bool      // UnsafeWallClock: stamp wall time + skew
	skew   time.Duration
	ctx    context.Context
	cancel context.CancelFunc
	queues *waitQueues
	reaper chan struct{} // kicks the reaper to re-read NextExpiry
}

// now is the leader's monotonic time since its epoch began.
func (ls *leaderState) now() time.Duration {
	if ls.wall {
		return time.Duration(time.Now().UnixNano()) + ls.skew
	}
	d := time.Since(ls.start)
	if ls.rate != 1 {
		d = time.Duration(float64(d) * ls.rate)
	}
	return d
}

// realDuration converts a leader-clock span into real time for timers.
func (ls *leaderState) realDuration(d time.Duration) time.Duration {
	if ls.rate != 1 {
		d = time.Duration(float64(d) / ls.rate)
	}
	return d
}

func (ls *leaderState) stamp() fsm.Stamp {
	return fsm.Stamp{Epoch: ls.epoch, Now: ls.now()}
}

func (ls *leaderState) stop(err error) {
	ls.cancel()
	ls.queues.failAll(err)
}

// runLeadership follows Raft's leadership notifications (NotifyCh: every
// transition, in order, unlike the lossy LeaderCh): on gaining
// leadership it establishes the epoch, on losing it revokes it. It is the
// only writer of n.lead.
func (n *Node) runLeadership() {
	var cancelEstablish context.CancelFunc
	defer func() {
		if cancelEstablish != nil {
			cancelEstablish()
		}
	}()
	notify := n.leaderNotify
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(observer)
	defer n.raft.DeregisterObserver(observer)
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-obs:
			n.notifyChange()
		case isLeader := <-notify:
			if cancelEstablish != nil {
				cancelEstablish()
				cancelEstablish = nil
			}
			n.revoke()
			if isLeader {
				ctx, cancel := context.WithCancel(n.ctx)
				cancelEstablish = cancel
				start := time.Now()
				n.wg.Add(1)
				go func() {
					defer n.wg.Done()
					n.establish(ctx, start)
				}()
			}
			n.notifyChange()
		}
	}
}

// establish makes this node serve as leader: Barrier (apply every entry of
// earlier terms), then Promote (start our epoch, rebase every expiry), then
// start the reaper and waiter queues. Until Promote has applied the node
// serves nothing: reads could miss earlier writes and writes would be
// judged by an earlier leader's clock.
//
// Invariant no-early-expiry (node side): the epoch clock starts (start) when
// Raft told us we lead, which is after every earlier leader lost the
// ability to commit; Promote rebases from that clock.
func (n *Node) establish(ctx context.Context, start time.Time) {
	log := n.log.With("component", "node.leader")
	for ctx.Err() == nil {
		if err := n.wait(n.raft.Barrier(n.cfg.Timing.ElectionTimeout * 10)); err != nil {
			log.Warn("barrier failed", "err", err)
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
				return
			}
			continue
		}
		break
	}
	if ctx.Err() != nil {
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	ls := &leaderState{
		n:      n,
		epoch:  n.raft.CurrentTerm(),
		start:  start,
		rate:   n.cfg.UnsafeClockRate,
		wall:   n.cfg.UnsafeWallClock,
		skew:   n.cfg.UnsafeClockSkew,
		ctx:    lctx,
		cancel: cancel,
		reaper: make(chan struct{}, 1),
	}
	if n.cfg.UnsafeSkipRebase {
		ls.start = n.started // UNSAFE: see Config.UnsafeSkipRebase
	}
	ls.queues = newWaitQueues(ls)
	resp, err := n.apply(ctx, ls.stamp(), fsm.Promote{})
	if err != nil || resp.Results[0].Code != fsm.Promoted {
		cancel()
		log.Warn("promote failed; stepping down", "err", err, "resp", resp)
		if err == nil {
			// Our term is not newer than the FSM's epoch: something is
			// badly wrong; let another node lead.
			n.raft.LeadershipTransfer()
		}
		return
	}
	if ctx.Err() != nil {
		cancel()
		return
	}
	n.lead.Store(ls)
	n.notifyChange()
	log.Info("leading", "epoch", ls.epoch, "promote_after", time.Since(start))
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.runReaper(ls)
	}()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.reconcile() // adopt gossip members right away
	}()
}

// revoke stops serving as leader: waiters fail with a retryable
// not-leader error, the reaper and timers stop.
func (n *Node) revoke() {
	if ls := n.lead.Swap(nil); ls != nil {
		ls.stop(n.notLeaderErr())
		n.log.Info("stopped leading", "epoch", ls.epoch)
	}
}

// apply proposes cmd with stamp s and waits for its result. Errors are
// classified for the caller:
//   - ErrNotLeader (certainly not applied): Raft refused before enqueuing,
//     or the FSM refused the stamp's epoch;
//   - ErrUnknownOutcome: the entry was handed to Raft but leadership was lost
//     or ctx ended before the result.
func (n *Node) apply(ctx context.Context, s fsm.Stamp, cmd fsm.Command) (*fsm.Response, error) {
	data := fsm.Encode(s, cmd)
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	f := n.raft.Apply(data, timeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }() // n.ctx ends before Raft shuts down: see wait
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnknownOutcome, ctx.Err())
	case <-n.ctx.Done():
		return nil, fmt.Errorf("%w: node closing", ErrUnknownOutcome)
	}
	switch {
	case err == nil:
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrEnqueueTimeout):
		return nil, n.notLeaderErr()
	case errors.Is(err, raft.ErrRaftShutdown):
		return nil, fmt.Errorf("%w: %v", ErrUnknownOutcome, ErrClosed)
	default: // ErrLeadershipLost and the like: it may still commit.
		return nil, fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
	}
	resp, ok := f.Response().(*fsm.Response)
	if !ok {
		return nil, fmt.Errorf("%w: unexpected apply response %T", ErrUnknownOutcome, f.Response())
	}
	if len(resp.Results) == 1 && resp.Results[0].Code == fsm.WrongEpoch {
		// Stamped by an epoch that a newer leader ended: certainly not
		// applied, and we are not the leader any more.
		return nil, n.notLeaderErr()
	}
	return resp, nil
}

// wait returns the result of a Raft future. hashicorp/raft never resolves
// a future that was still queued to its FSM when it shut down, so wait also
// returns raft.ErrRaftShutdown once this node's Raft is down. (The
// goroutine blocked in f.Error then stays blocked; that happens only for an
// entry committed in the instant before shutdown.)
func (n *Node) wait(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.raftDown:
		return raft.ErrRaftShutdown
	}
}

// runReaper proposes Expire whenever the FSM's next expiry comes due on the
// leader clock. Expiry is always a proposal, never a local delete: another
// node may be leader already, and only the log decides.
func (n *Node) runReaper(ls *leaderState) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		due, ok := n.fsm.NextExpiry()
		wait := time.Hour
		if ok {
			wait = ls.realDuration(due - ls.now())
		}
		if ok && wait <= 0 {
			if _, err := n.apply(ls.ctx, ls.stamp(), fsm.Expire{}); err != nil {
				if ls.ctx.Err() != nil {
					return
				}
				n.log.Debug("expire proposal failed", "err", err)
				wait = n.cfg.Timing.CommitTimeout
			} else {
				continue
			}
		}
		timer.Reset(wait)
		select {
		case <-ls.ctx.Done():
			return
		case <-ls.reaper:
			if !timer.Stop() {
				<-timer.C
			}
		case <-timer.C:
		}
	}
}

// kickReaper makes the reaper re-read NextExpiry (a new lease may expire
// sooner than what it waits for).
func (ls *leaderState) kickReaper() {
	select {
	case ls.reaper <- struct{}{}:
	default:
	}
}

// leaderHint returns the current leader's ID, client API address and
// Raft address. The ID and Raft address are Raft's; the API address is
// this node's own, or what the leader itself said over an authenticated
// connection to that Raft address (verifyMembers), never gossip's claim.
// Until then it is "": clients are told who leads but not where, and try
// their other addresses.
func (n *Node) leaderHint() (id, apiAddr, raftAddr string) {
	addr, sid := n.raft.LeaderWithID()
	id, raftAddr = string(sid), string(addr)
	if id == n.cfg.ID {
		return id, n.apiAddr, raftAddr
	}
	if id != "" {
		apiAddr = n.members.confirmedAPI(id, raftAddr)
	}
	return id, apiAddr, raftAddr
}

func (n *Node) notLeaderErr() error {
	id, api, _ := n.leaderHint()
	if id == "" || id == n.cfg.ID {
		return &LeaderError{Err: ErrNoLeader}
	}
	return &LeaderError{Err: ErrNotLeader, LeaderID: id, LeaderAddr: api}
}

// leader returns the serving leader state, waiting (bounded by ctx and a
// couple of election timeouts) while this node is the Raft leader but has
// not yet applied its Promote. nil means another node leads or none does.
func (n *Node) leader(ctx context.Context) *leaderState {
	deadline := time.NewTimer(4 * n.cfg.Timing.ElectionTimeout)
	defer deadline.Stop()
	for {
		ch := n.changes()
		if ls := n.lead.Load(); ls != nil {
			return ls
		}
		if n.raft.State() != raft.Leader {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		case <-deadline.C:
			return nil
		}
	}
}
