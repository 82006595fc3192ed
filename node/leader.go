package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/loglimit"
)

// leaderState exists for one leadership term of this node, from the moment
// its Promote applied until leadership is lost. Its clock is the clock that
// judges expiry in its epoch.
type leaderState struct {
	n      *Node
	epoch  uint64
	began  time.Time   // when Raft told this node it leads
	clock  leaderClock // judges expiry in this epoch
	ctx    context.Context
	cancel context.CancelFunc
	queues *waitQueues
	reaper chan struct{} // kicks the reaper to re-read NextExpiry
	// reserved is what acquires admitted by the quota add once applied.
	reserved struct {
		mu  sync.Mutex
		use quotaUse
	}
}

// now is the leader's time in its epoch.
func (ls *leaderState) now() time.Duration { return ls.clock.now() }

// realDuration converts a leader-clock span into real time for timers.
func (ls *leaderState) realDuration(d time.Duration) time.Duration { return ls.clock.realDuration(d) }

func (ls *leaderState) stamp() fsm.Stamp {
	return fsm.Stamp{Epoch: ls.epoch, Now: ls.now()}
}

func (ls *leaderState) stop(err error) {
	ls.cancel()
	ls.queues.failAll(err)
}

// runLeadership owns the answer to "is this node serving as leader?"
// (Consul's monitorLeadership). It follows Raft's leadership
// notifications (NotifyCh: every transition, in order, unlike the lossy
// LeaderCh) and runs one leaderLoop goroutine per term of leadership: on
// gaining leadership it starts one; on losing it, it cancels the running
// one and waits until it has ended, revoke included, before it handles the
// next notification. So at most one term's leader state exists at a time,
// and it is published and withdrawn by the same goroutine (the term's
// leaderLoop): n.lead has one writer at a time.
func (n *Node) runLeadership() {
	notify := n.leaderNotify
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(observer)
	defer n.raft.DeregisterObserver(observer)
	// Leader observations (a new leader elsewhere) only wake requests
	// waiting for one; raft drops them rather than block if we lag.
	n.goRun("node.observe", func() {
		for {
			select {
			case <-n.ctx.Done():
				return
			case <-obs:
				n.forwards.endStale(n.raftLeaderID())
				n.notifyChange()
			}
		}
	})
	followLeadership(n.ctx, notify, n.fatalCh, n.notifyChange, func(ctx context.Context) {
		if n.fatalErr() == nil {
			n.leaderLoop(ctx, time.Now())
		}
	})
}

// followLeadership runs term(ctx) once per term of leadership: on true it
// starts it in a goroutine; on false it cancels the running one and waits
// until it has returned before it reads the next notification. It returns
// when ctx ends or stop is closed, after the running term has returned.
// changed is called after each notification has been handled. A term's
// loop publishes its leader state and defers its withdrawal, so once a
// false has been handled no leader state of that term is visible
// (TestLeadershipFlapsLeaveNoStaleState).
func followLeadership(ctx context.Context, notify <-chan bool, stop <-chan struct{}, changed func(), term func(context.Context)) {
	var running *termLoop
	end := func() {
		if running != nil {
			running.stop()
			running = nil
		}
	}
	defer end()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			end()
			changed()
			return
		case isLeader := <-notify:
			end()
			if isLeader {
				running = startTerm(ctx, term)
			}
			changed()
		}
	}
}

// termLoop is one running term.
type termLoop struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startTerm(parent context.Context, term func(context.Context)) *termLoop {
	ctx, cancel := context.WithCancel(parent)
	t := &termLoop{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		term(ctx)
	}()
	return t
}

// stop ends the term and waits until its loop has ended, revoke included.
// Its Raft futures end at step-down or shutdown (see wait), so this is
// prompt.
func (t *termLoop) stop() {
	t.cancel()
	<-t.done
}

// leaderLoop is everything this node does as leader in one term, in order:
// establish (Barrier, Promote), publish the leader state, then run the
// reaper and reconcile membership until ctx ends; revoke is deferred, so
// the state it published is always withdrawn before the loop ends.
func (n *Node) leaderLoop(ctx context.Context, start time.Time) {
	ls := n.establish(ctx, start)
	if ls == nil {
		return
	}
	var reaper sync.WaitGroup
	defer reaper.Wait()
	defer n.revoke(ls)
	n.lead.Store(ls)
	n.notifyChange()
	n.log.Info("leading", "component", "node.leader", "epoch", ls.epoch, "promote_after", time.Since(start))
	reaper.Add(1)
	go func() {
		defer reaper.Done()
		n.runReaper(ls)
	}()
	// Adopt gossip members right away, then on every change, and every
	// second while something waits for time (a grace, a catch-up).
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(pollEvery(!n.reconcile(ls)))
		select {
		case <-ls.ctx.Done():
			return
		case <-n.members.leaderChanged:
		case <-timer.C:
		}
	}
}

// establish makes this node able to serve as leader: Barrier (apply every
// entry of earlier terms), then Promote (start our epoch, rebase every
// expiry). Until Promote has applied the node serves nothing: reads could
// miss earlier writes and writes would be judged by an earlier leader's
// clock. It returns nil if ctx ended or leadership could not be
// established.
//
// Invariant no-early-expiry (node side): the epoch clock starts (start) when
// Raft told us we lead, which is after every earlier leader lost the
// ability to commit; Promote rebases from that clock.
func (n *Node) establish(ctx context.Context, start time.Time) *leaderState {
	log := n.log.With("component", "node.leader")
	for ctx.Err() == nil {
		if err := n.wait(n.raft.Barrier(n.cfg.Timing.ElectionTimeout * 10)); err != nil {
			log.Warn("barrier failed", "err", err)
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
				return nil
			}
			continue
		}
		break
	}
	if ctx.Err() != nil {
		return nil
	}
	// The epoch's clock starts (reads 0) when this node stored the last
	// command of the earlier terms, if it remembers when
	// (lastStampOfEarlierTerm), else when it saw the FSM clock reach the
	// last stamp of the earlier epochs (the Barrier has applied every entry they committed), else
	// now; and Promote is stamped with that origin. So a lease keeps, from
	// the origin on, the time it had left at the last stamp. Never early:
	// every stamp was taken before its entry was sent, so before this node
	// stored or applied it, and no later one was committed (every
	// committed entry precedes the Barrier). Not needlessly late: the
	// election and the Barrier do not count as time left (stamping Promote
	// when it is proposed gave every lease that much more at every leader
	// change; a dead holder's lease then outlived its TTL by an election
	// per change, under churn by several). The receipt matters when the
	// old leader stopped (SIGSTOP, a crash) before telling followers that
	// its last entries were committed: they apply those only at the new
	// leader's Barrier, after the election, and counting from the apply
	// left a killed holder's key blocked an election longer per leader
	// change (a 5-node campaign with the leader moved every second: 5.33 s
	// against the 5 s takeover bound).
	origin, seen := n.clock.seen(n.fsm.Clock())
	if at, ok := n.logs.lastStampOfEarlierTerm(n.raft.CurrentTerm(), n.raft.LastIndex()); ok && (!seen || at.Before(origin)) {
		origin, seen = at, true
	}
	if !seen {
		origin = time.Now()
	}
	lctx, cancel := context.WithCancel(ctx)
	ls := &leaderState{
		n:      n,
		epoch:  n.raft.CurrentTerm(),
		began:  start,
		clock:  n.newLeaderClock(origin),
		ctx:    lctx,
		cancel: cancel,
		reaper: make(chan struct{}, 1),
	}
	ls.queues = newWaitQueues(ls)
	resp, err := n.apply(ctx, fsm.Stamp{Epoch: ls.epoch, Now: ls.clock.origin()}, fsm.Promote{})
	if err != nil || resp.Results[0].Code != fsm.Promoted {
		cancel()
		log.Warn("promote failed; stepping down", "err", err, "resp", resp)
		if err == nil {
			// Our term is not newer than the FSM's epoch: something is
			// badly wrong; let another node lead.
			n.raft.LeadershipTransfer()
		}
		return nil
	}
	if ctx.Err() != nil {
		cancel()
		return nil
	}
	return ls
}

// revoke withdraws ls: it is no longer returned to requests, its waiters
// fail with a retryable not-leader error (or ErrUnknownOutcome if their
// grant is in flight), and its reaper and timers stop. Only ls's own
// leaderLoop calls it.
func (n *Node) revoke(ls *leaderState) {
	n.lead.CompareAndSwap(ls, nil)
	err := n.lostLeadErr()
	if n.ctx.Err() != nil {
		err = ErrClosed
	}
	ls.stop(err)
	n.notifyChange()
	n.log.Info("stopped leading", "component", "node.leader", "epoch", ls.epoch)
}

// apply proposes cmd with stamp s and waits for its result, bounded by
// ctx. Errors are classified for the caller:
//   - ErrNotLeader (certainly not applied): Raft refused before enqueuing,
//     or the FSM refused the stamp's epoch;
//   - ErrUnknownOutcome: the entry was handed to Raft but leadership was
//     lost or ctx ended before the result.
func (n *Node) apply(ctx context.Context, s fsm.Stamp, cmd fsm.Command) (*fsm.Response, error) {
	return n.propose(s, cmd, applyTimeout(ctx)).wait(ctx, n)
}

// applyClient is apply for a client's request (extend, release, cancel,
// abandon), which keeps invariant commit-or-say as acquires do: a leader
// found unable to commit refuses it before proposing (ErrNoLeader naming
// the voters behind: certainly not applied), and answers one it proposed
// ErrUnknownOutcome once it is found so. An extend or release at such a
// leader waited for its caller's whole context before, and said nothing
// of why.
func (n *Node) applyClient(ctx context.Context, s fsm.Stamp, cmd fsm.Command) (*fsm.Response, error) {
	if err := n.cannotCommitErr(); err != nil {
		return nil, err
	}
	return n.propose(s, cmd, applyTimeout(ctx)).waitCommit(ctx, n)
}

// applyTimeout bounds the enqueueing of a proposal made for ctx.
func applyTimeout(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return 5 * time.Second
}

// proposal is one command handed to Raft. Its outcome is known when done
// is closed, whoever is (or is no longer) waiting for it.
type proposal struct {
	done chan struct{}
	resp *fsm.Response
	err  error
	// index is the entry's Raft index once Raft appended it (0 if it
	// never did, or the node closed first): an acquire's token, if the
	// entry granted it afresh.
	index uint64
}

// formatGate refuses cmd (ErrInvalid) if a server of the Raft
// configuration says in gossip that it reads only older command formats
// than cmd needs: it would stop (fsm.ErrNewerVersion) rather than apply
// it, and with two such nodes of three the cluster loses its quorum. That
// happens mid-upgrade when leadership moves to an upgraded node before
// the others are. A server gossip does not know (down since this node
// started) counts with the format it was last seen to read
// (PeerFormatsFile), and one this node has never seen at all (it joined
// while that server was down) with the oldest format: whatever it runs,
// it must be able to apply what is written while it is a server.
func (n *Node) formatGate(cmd fsm.Command) error {
	need := fsm.MinFormat(cmd)
	id, reads, seen := n.olderReader(need)
	if id == "" {
		return nil
	}
	what := "this request"
	switch cmd.(type) {
	case *fsm.Acquire:
		what = "a lock shape (shared, semaphore or several keys)"
	case *fsm.Cancel:
		what = "a withdrawal of a lost grant"
	}
	if !seen {
		return fmt.Errorf("%w: node %s, a server of the cluster, has not been seen by this leader since it joined, so it may run an older leasenode, which cannot apply %s (this needs command format %d): start node %s again, or wait until the cluster removes it (dead servers go after the agent's dead-server grace, 30 s by default), then retry",
			ErrInvalid, id, what, need, id)
	}
	return fmt.Errorf("%w: node %s runs an older leasenode, which cannot apply %s (it reads command format %d; this needs %d): upgrade every node, then retry",
		ErrInvalid, id, what, reads, need)
}

// olderReader returns a server of the Raft configuration (other than this
// node) that reads only command formats older than need, the newest it
// reads, and whether this node has seen it at all (see formatGate; one
// never seen counts as reading fsm.OldestFormat); "" if none does.
func (n *Node) olderReader(need byte) (id string, reads byte, seen bool) {
	if need <= fsm.OldestFormat {
		return "", 0, true
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return "", 0, true
	}
	for _, s := range f.Configuration().Servers {
		id := string(s.ID)
		if id == n.cfg.ID {
			continue
		}
		reads, seen := byte(0), false
		if m, known := n.members.get(id); known {
			reads, seen = m.Reads, true
		} else {
			reads, seen = n.formats.last(id)
		}
		if !seen {
			reads = fsm.OldestFormat
		}
		if reads < need {
			return id, reads, seen
		}
	}
	return "", 0, true
}

// keepLockDelayFormat is the command format of fsm.Acquire.KeepLockDelay.
const keepLockDelayFormat = 5

// keepLockDelay sets cmd.KeepLockDelay once every server reads the
// format that carries it (invariant lock-delay-kept of package fsm):
// until then the holder's new request replaces its own holdings as
// before, on every replica alike (and the waiter queues, which ask
// fsm.FSM.Admits with the same flag, judge it so too).
func (n *Node) keepLockDelay(cmd *fsm.Acquire) {
	id, _, _ := n.olderReader(keepLockDelayFormat)
	cmd.KeepLockDelay = id == ""
}

// propose hands cmd, stamped s, to Raft and returns at once; the proposal
// resolves when Raft has applied it or given up, whoever is still waiting.
// timeout bounds only the enqueueing.
func (n *Node) propose(s fsm.Stamp, cmd fsm.Command, timeout time.Duration) *proposal {
	p := &proposal{done: make(chan struct{})}
	go func() { // ends when the future resolves or Raft is down (see wait)
		defer close(p.done)
		start := time.Now()
		end := n.commits.begin()
		f := n.raft.Apply(fsm.Encode(s, cmd), timeout)
		p.resp, p.err = n.outcome(f)
		end(p.err == nil)
		if p.err == nil {
			n.noteCommit(time.Since(start))
		}
		if !errors.Is(p.err, ErrClosed) { // else f may not have resolved
			p.index = f.Index()
		}
	}()
	return p
}

// slowCommit is how long a proposal may take from Apply to applied on the
// leader before it is logged: on a healthy cluster a commit takes a round
// trip and two fsyncs, milliseconds.
const slowCommit = time.Second

// noteCommit logs (at most once per loglimit.Every) a commit that took d
// if d is slowCommit or more: the disk or CPU of a majority stalled, and a
// client whose TTL is not well above such stalls loses its leases
// (extends wait as long), with no election or other sign in the logs.
func (n *Node) noteCommit(d time.Duration) {
	if d < slowCommit {
		return
	}
	ok, skipped := n.slowCommits.Allow("slow commit")
	if !ok {
		return
	}
	args := []any{"took", d.Round(time.Millisecond)}
	if skipped > 0 {
		args = append(args, loglimit.Skipped, skipped)
	}
	n.log.Warn("a Raft commit was slow: a majority's disk (fsync) or CPU stalled; leases whose TTL is not well above such stalls are lost by their holders (extends wait as long); check the hosts' I/O and CPU pressure", args...)
}

// wait returns the proposal's outcome, or ErrUnknownOutcome if ctx or the
// node ends first.
func (p *proposal) wait(ctx context.Context, n *Node) (*fsm.Response, error) {
	select {
	case <-p.done:
		return p.resp, p.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnknownOutcome, ctx.Err())
	case <-n.ctx.Done():
		return nil, fmt.Errorf("%w: node closing", ErrUnknownOutcome)
	}
}

// waitCommit is wait, for a client's request: it also ends when this
// leader is found unable to commit (invariant commit-or-say), with
// ErrUnknownOutcome, as the entry may still commit once it can.
func (p *proposal) waitCommit(ctx context.Context, n *Node) (*fsm.Response, error) {
	select {
	case <-p.done:
		return p.resp, p.err
	case <-n.commits.stalledChan():
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnknownOutcome, ctx.Err())
	case <-n.ctx.Done():
		return nil, fmt.Errorf("%w: node closing", ErrUnknownOutcome)
	}
	select {
	case <-p.done: // resolved meanwhile
		return p.resp, p.err
	default:
	}
	return nil, fmt.Errorf("%w: the entry was proposed and may still commit: %w", ErrUnknownOutcome, n.stallErr())
}

// neverAppended reports whether Raft refused an Apply before appending
// the entry to the log: it can never commit, under this leader or another.
// Every other error leaves the outcome unknown (ErrLeadershipLost: the
// entry may still commit). The difference matters beyond the caller's
// answer: a lost outcome is withdrawn naming this leader's epoch, and if
// the entry was never appended, the client's retry may be granted afresh
// in the same epoch and answered; a withdrawal would then release it.
// Raft refuses new entries while a leadership transfer is in progress
// (ErrLeadershipTransferInProgress), and the leader may keep its term if
// the transfer fails.
func neverAppended(err error) bool {
	return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrEnqueueTimeout) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress)
}

// outcome waits for an Apply future and classifies its result (see
// apply).
func (n *Node) outcome(f raft.ApplyFuture) (*fsm.Response, error) {
	err := n.wait(f)
	switch {
	case err == nil:
	case errors.Is(err, raft.ErrEnqueueTimeout) && n.raft.State() == raft.Leader:
		// Still the leader, but its Raft loop did not take the entry (it
		// waits on a log write): not a lost lead, and no reason to start
		// the client's count of failures afresh (adversarial review
		// rev-adv37: it said "this node stopped leading").
		return nil, &LeaderError{Err: ErrNoLeader, Detail: fmt.Sprintf("leader %s (this node) did not take the request into its log in time: its log writes may be stalled (a stall is named once it lasts %v); nothing was applied", n.cfg.ID, ownDiskHangAfter(n.cfg.Timing))}
	case neverAppended(err):
		return nil, n.lostLeadErr()
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
		return nil, n.lostLeadErr()
	}
	if len(resp.Results) == 1 && resp.Results[0].Code == fsm.Fatal {
		// This replica stopped applying at an entry it cannot read; newer
		// replicas may still apply this one (onFatal closes the node).
		return nil, fmt.Errorf("%w: %s", ErrUnknownOutcome, resp.Results[0].Reason)
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
//
// Its first Expire is proposed at once, whatever is due: a stamp of the
// epoch's clock as it reads when proposed. Promote's stamp is the origin's
// reading, which stands for when this node stored the earlier terms' last
// stamp, before its election; a later leader takes the last stamp it
// stored as read when it stored it (lastStampOfEarlierTerm). Were
// Promote the last, each leader change would count this leader's
// election, and its whole tenure if no command followed, as time left:
// on an idle cluster a dead holder's key stayed blocked through every
// change (adversarial review rev-adv40: 9.93 s left of a 10 s TTL after
// a crash and a transfer, at most 6.61 s truly; with leadership moved
// every 1.5 s, the time left stayed at 2.4 s for six moves).
func (n *Node) runReaper(ls *leaderState) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	stampNow := true
	for {
		due, ok := n.fsm.NextExpiry()
		wait := time.Hour
		if ok {
			wait = ls.realDuration(due - ls.now())
		}
		if stampNow || ok && wait <= 0 {
			if _, err := n.apply(ls.ctx, ls.stamp(), fsm.Expire{}); err != nil {
				if ls.ctx.Err() != nil {
					return
				}
				n.log.Debug("expire proposal failed", "err", err)
				wait = n.cfg.Timing.CommitTimeout
			} else {
				stampNow = false
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
		return n.noLeaderErr()
	}
	return &LeaderError{Err: ErrNotLeader, LeaderID: id, LeaderAddr: api, Detail: n.ownDiskHungDetail(true)}
}

// lostLeadErr is ErrNotLeader from a node that was the leader while it
// served the request and is not now, naming the new leader if it knows
// one. Never ErrNoLeader, even before a new leader is known: a client
// tells "the leader changed while my wait was queued" (start the count
// of failures afresh; lease.RetryPolicy) from "no leader for as long as a
// node waits for one" (go on counting), or a waiting acquire gave up at
// the first leader change after a long wait.
func (n *Node) lostLeadErr() error {
	id, api, _ := n.leaderHint()
	if id == n.cfg.ID {
		id, api = "", ""
	}
	return &LeaderError{Err: ErrNotLeader, LeaderID: id, LeaderAddr: api, Detail: "this node stopped leading while it served the request"}
}

// noLeaderErr is ErrNoLeader saying what this node sees, so that a user
// can tell an election from a cluster that never formed.
func (n *Node) noLeaderErr() error {
	return &LeaderError{Err: ErrNoLeader, Detail: n.noLeaderDetail(true)}
}

// NoLeaderReason says what this node sees while it knows no leader: its
// Raft state and term and how many voters gossip finds alive, less those
// whose Raft port refused this node's last dial, which are stopped
// whatever gossip has yet to notice ("Candidate in term 7; 1 of 3 voters
// alive in gossip and not refusing Raft connections (2 refusing:
// stopped)"), or that it waits to
// bootstrap or to be added. It names no node: readiness probes, which
// answer without credentials, say it (ErrNoLeader's detail, for clients
// with the token, names them).
func (n *Node) NoLeaderReason() string { return n.noLeaderDetail(false) }

// noLeaderDetail is NoLeaderReason, naming this node and the members
// gossip finds alive if names.
func (n *Node) noLeaderDetail(names bool) string {
	why := n.raftDetail(names)
	if d := n.ownDiskHungDetail(names); d != "" {
		return d + "; " + why // first: nothing else changes while it hangs
	}
	return why
}

// raftDetail is noLeaderDetail without this node's own hung disk.
func (n *Node) raftDetail(names bool) string {
	var alive []string
	for _, m := range n.members.list() {
		if m.Status == statusAlive {
			alive = append(alive, m.ID)
		}
	}
	self, seen := "this node", ""
	if names {
		self, seen = "node "+n.cfg.ID, " ("+strings.Join(alive, ", ")+")"
	}
	if n.cluster.get() == "" && !n.hasState() {
		if _, _, err := n.gossipCluster(); err != nil {
			if names {
				return "not joining any cluster: " + err.Error()
			}
			return "not joining any cluster: gossip shows members of two clusters (the node's log names them)"
		}
	}
	if n.cfg.BootstrapExpect > 0 && !n.hasState() {
		if id := n.cluster.seenID(); id != "" {
			return fmt.Sprintf("waiting to be added to cluster %s, which a member belonged to (not bootstrapping: %s in the data dir; to found a new cluster instead, stop every node that says so and delete that file from each)",
				short(id), SeenClusterFile)
		}
		return fmt.Sprintf("waiting to bootstrap: %d of %d expected nodes seen%s", len(alive), n.cfg.BootstrapExpect, seen)
	}
	voters, reachable, refusing := 0, 0, 0
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage != raft.Voter {
				continue
			}
			voters++
			switch {
			case string(s.ID) != n.cfg.ID && n.raftTrans != nil && n.raftTrans.refusing(s.Address):
				refusing++ // certain, while gossip may take seconds to suspect it
			case slices.Contains(alive, string(s.ID)):
				reachable++
			}
		}
	}
	if voters == 0 {
		return self + " is in no cluster yet (not bootstrapped; waiting to be added by a leader)"
	}
	why := fmt.Sprintf("%s is %s in term %d; %d of %d voters alive in gossip", self, n.raft.State(), n.raft.CurrentTerm(), reachable, voters)
	if refusing > 0 {
		why += fmt.Sprintf(" and not refusing Raft connections (%d refusing: stopped)", refusing)
	}
	return why
}

// leader returns the serving leader state, waiting (bounded by ctx and a
// couple of election timeouts) while this node is the Raft leader but has
// not yet applied its Promote. nil means another node leads, none does, or
// this node has stopped serving.
func (n *Node) leader(ctx context.Context) *leaderState {
	ls, _, _ := n.route(ctx, false)
	return ls
}

// leaderWait bounds how long a request waits for a leader to be known
// before it is answered "no leader": about one failed election.
func (n *Node) leaderWait() time.Duration {
	return n.cfg.Timing.HeartbeatTimeout + 2*n.cfg.Timing.ElectionTimeout
}

// route finds where a request must go: this node's serving leader state,
// or (if remote) the Raft address of the leader another node is. It waits,
// bounded by ctx and leaderWait, while this node is leader but not yet
// serving, and (if remote) while no leader is known at all, so a request
// arriving during an election is served by the new leader instead of
// failing at once. It never waits for anything else.
func (n *Node) route(ctx context.Context, remote bool) (ls *leaderState, id, addr string) {
	// Bounds: about one election while no leader is known; while this node
	// is the Raft leader and establishing (Barrier, Promote), as long as
	// establish itself may take. Both end early enough to answer "no
	// leader" while the caller still listens: an answer that misses its
	// deadline looks like a lost reply (an unknown outcome) to the caller.
	start := time.Now()
	bound := func(d time.Duration) time.Duration {
		if dl, ok := ctx.Deadline(); ok {
			left := time.Until(dl)
			d = min(d, time.Since(start)+left-min(left/10, 100*time.Millisecond))
		}
		return d
	}
	noLeader, establishing := bound(n.leaderWait()), bound(10*n.cfg.Timing.ElectionTimeout)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		ch := n.changes()
		if n.fatalErr() != nil || n.ctx.Err() != nil {
			return nil, "", ""
		}
		if ls := n.serving(); ls != nil {
			return ls, "", ""
		}
		limit := noLeader
		hung := n.ownDiskHung()
		switch id, _, addr := n.leaderHint(); {
		case n.raft.State() == raft.Leader && !hung:
			limit = establishing // wait for Promote
		case !remote:
			return nil, "", ""
		case addr != "" && addr != n.cfg.AdvertiseAddr && !n.isGone(id):
			return nil, id, addr
		case hung:
			// Its own disk hangs: it will not learn of a leader by
			// waiting (it applies nothing); its refusal says why.
			return nil, "", ""
		}
		left := limit - time.Since(start)
		if left <= 0 {
			return nil, "", ""
		}
		timer.Reset(left)
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, "", ""
		case <-timer.C:
		}
	}
}
