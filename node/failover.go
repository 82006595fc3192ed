package node

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// Fast failover on certain death (issue 12, lever 4).
//
// A follower starts an election only when it has heard nothing from the
// leader for HeartbeatTimeout, checked at random intervals of one to two
// HeartbeatTimeouts, and a peer refuses to vote while it still knows a
// leader; so with default timing a dead leader costs 1-3 s before anyone
// campaigns. When the leader's process is gone, though, a follower
// knows it at once: the leader's Raft connections to it close (the kernel
// closes a dead process's sockets), and a dial to the leader's address is
// refused (nothing listens on that port). On exactly that signal, and only
// while the follower has heard nothing newer from the leader, the follower
// lowers its HeartbeatTimeout (ReloadConfig: hashicorp/raft has no call to
// start an election) to the shortest Raft allows (LeaderLeaseTimeout)
// timed so that its next check finds the leader silent for that long: it
// campaigns about LeaderLeaseTimeout after the leader's last word instead
// of after one to three HeartbeatTimeouts. Meanwhile route treats that
// leader as unknown: requests wait for the next one instead of failing
// back to clients. Both followers see the same
// signal, so the voter's "I still know a leader" refusal clears too; each
// adds a random delay of up to a fifth of the timeout so that they rarely
// campaign at the same instant (a split vote costs one ElectionTimeout, as
// without this). The timeout is restored as soon as a leader other than
// the dead one is known, or after a bound.
//
// What it does not do: act on a timeout, a reset without a refused
// redial, gossip's suspicion, or anything a busy or partitioned but live
// leader can cause. A live leader's port accepts the redial (even when
// its process is stalled, the kernel completes the handshake), so no
// load, pause or partition shortens anything; a host that died entirely
// refuses nothing and gets the ordinary timeout.

// raftConnListener wraps the Raft listener so that the node hears when an
// inbound Raft connection from a peer ends.
type raftConnListener struct {
	net.Listener
	closed func(peer string)
}

func (l raftConnListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	p, _ := transport.PeerOf(c)
	return &raftConn{Conn: c, peer: p, closed: l.closed}, nil
}

// raftConn reports the first read error of an inbound Raft connection
// (the peer closed it, or it broke).
type raftConn struct {
	net.Conn
	peer   transport.Peer
	closed func(peer string)
	done   bool // only the connection's one reader touches it
}

func (c *raftConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && !c.done {
		c.done = true
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			c.closed(c.peer.ID)
		}
	}
	return n, err
}

// Peer keeps transport.PeerOf working on the wrapped connection.
func (c *raftConn) Peer() transport.Peer { return c.peer }

// raftConnClosed runs when an inbound Raft connection from peer ends. If
// peer is the leader this follower knows, it checks (once at a time)
// whether the leader's process is gone.
func (n *Node) raftConnClosed(peer string) {
	r := n.raftp.Load()
	if n.ctx.Err() != nil || peer == "" || r == nil {
		return
	}
	addr, id := r.LeaderWithID()
	if string(id) != peer || addr == "" || r.State() != raft.Follower {
		return
	}
	if !n.failover.CompareAndSwap(false, true) {
		return
	}
	n.goRun("node.failover", func() {
		defer n.failover.Store(false)
		n.leaderGone(string(id), string(addr))
	})
}

// leaderGone shortens this follower's heartbeat timeout if the leader id
// at addr certainly has no process any more, until another leader is
// known.
func (n *Node) leaderGone(id, addr string) {
	// The connection may close a moment before the listening socket does
	// (node.Crash closes Raft before the mux): look a few times.
	for try := 0; !refused(addr); try++ {
		if try == 3 {
			return
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-n.ctx.Done():
			return
		}
	}
	// Requests stop being forwarded to it: route waits for the next
	// leader instead of bouncing them back to clients, whose backoff
	// would otherwise add up to hundreds of milliseconds.
	n.goneLeader.Store(&id)
	defer func() {
		n.goneLeader.Store(nil)
		n.notifyChange()
	}()
	base := n.cfg.Timing.HeartbeatTimeout
	short := max(n.cfg.Timing.LeaderLeaseTimeout, base/4)
	if short >= base {
		return
	}
	// Campaign when the leader has been silent for short: set the timeout
	// then, so that raft's immediate re-check (it re-checks when the
	// timeout shrinks) finds the leader silent long enough. The followers
	// go one after another, the least up-to-date log first (campaignOrder).
	// Their logs are compared halfway there: by then each follower has
	// stored what the leader sent before it died (compared sooner, a
	// follower still storing the last batch looked shorter to one peer
	// and as long to the other, both ranked themselves second, and they
	// split the vote).
	if !ctxtime.Sleep(n.ctx, time.Until(n.raft.LastContact().Add(short/2))) {
		return
	}
	gap := short / 10
	stagger := rand.N(2 * gap)
	if rank, ok := n.campaignRank(id, short/5); ok {
		stagger = time.Duration(rank)*gap + rand.N(gap)
	}
	wait := time.Until(n.raft.LastContact().Add(short)) + stagger
	select {
	case <-time.After(max(wait, 0)):
	case <-n.ctx.Done():
		return
	}
	if _, cur := n.raft.LeaderWithID(); string(cur) != id || n.raft.State() != raft.Follower {
		return // a leader was elected meanwhile, or this node campaigns already
	}
	n.log.Info("the leader's process is gone (its Raft connection closed and its port refuses connections): campaigning early",
		"leader", id, "heartbeat_timeout", short)
	// The election timeout too: both followers campaign about now, and a
	// campaign that fails (the other still knew the leader, or has the
	// longer log, or they split the vote) is retried after one to two
	// election timeouts. At 1 s that retry was most of a slow failover
	// (1.6-2.5 s where a clean one took 0.5 s, agents under load).
	// Timeouts never bear on safety, only on how soon a vote is asked.
	baseElection := n.cfg.Timing.ElectionTimeout
	if !n.setTimeouts(short, min(short, baseElection)) {
		return
	}
	n.earlyCampaigns.Add(1)
	defer n.setTimeouts(base, baseElection)
	bound := time.NewTimer(10 * max(base, n.cfg.Timing.ElectionTimeout))
	defer bound.Stop()
	for {
		ch := n.changes()
		if _, cur := n.raft.LeaderWithID(); cur != "" && string(cur) != id {
			return
		}
		select {
		case <-ch:
		case <-bound.C:
			return
		case <-n.ctx.Done():
			return
		}
	}
}

// campaignOrder: the order in which the followers of a dead leader
// campaign. It bears only on how soon one wins, never on safety (Raft's
// vote rules decide who may win).
//
// A voter refuses to vote (and pre-vote) while it still knows a leader,
// and a candidate whose log is behind a voter's is refused by that voter.
// So when the follower with the longer log campaigns first, the other
// refuses it (it still knows the dead leader), then campaigns itself and
// is refused for its shorter log, and the election waits for a retry one
// to two election timeouts later: 1.26 s from the kill instead of 0.7 s,
// seen under load (a leader dies in the middle of replicating, so the
// followers' logs often differ by its last batch). If the follower with
// the shorter log goes first, its failed campaign clears its own leader,
// and the longer log's campaign that follows wins at once. Followers with
// equal logs win in either order, but not at the same instant (a split
// vote); their node IDs order them.

// campaignRank is this follower's place in campaignOrder among the voters
// other than the dead leader that answer within timeout (false if none
// does).
func (n *Node) campaignRank(dead string, timeout time.Duration) (int, bool) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0, false
	}
	type peerLog struct {
		id   string
		last uint64
	}
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	var (
		mu     sync.Mutex
		others []peerLog
		wg     sync.WaitGroup
	)
	for _, s := range f.Configuration().Servers {
		id := string(s.ID)
		if s.Suffrage != raft.Voter || id == dead || id == n.cfg.ID {
			continue
		}
		wg.Go(func() {
			out, err := n.rpc.CallNode(ctx, string(s.Address), id, methodStatus, nil)
			st := &pb.StatusResponse{}
			if err != nil || proto.Unmarshal(out, st) != nil {
				return
			}
			mu.Lock()
			others = append(others, peerLog{id, st.GetLastIndex()})
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(others) == 0 {
		return 0, false
	}
	mine := n.raft.LastIndex()
	rank := 0
	for _, o := range others {
		if campaignsBefore(o.id, o.last, n.cfg.ID, mine) {
			rank++
		}
	}
	return rank, true
}

// campaignsBefore reports whether a follower whose log ends at index a
// campaigns before one whose log ends at b: the shorter log first, then
// the lower node ID. (The last index stands for Raft's up-to-date order,
// term first: the followers of one leader almost always end in its term.)
func campaignsBefore(aID string, a uint64, bID string, b uint64) bool {
	if a != b {
		return a < b
	}
	return aID < bID
}

// isGone reports whether id is a leader whose process leaderGone found
// gone.
func (n *Node) isGone(id string) bool {
	p := n.goneLeader.Load()
	return p != nil && *p == id
}

// refused reports whether a TCP dial to addr is refused: no process
// listens there.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 250*time.Millisecond)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// setTimeouts sets Raft's HeartbeatTimeout and ElectionTimeout, keeping
// the other reloadable settings (compaction sets TrailingLogs). It reports
// whether Raft took them.
func (n *Node) setTimeouts(heartbeat, election time.Duration) bool {
	return n.reloadRaft(func(rc *raft.ReloadableConfig) { rc.HeartbeatTimeout, rc.ElectionTimeout = heartbeat, election })
}

// reloadRaft changes Raft's reloadable configuration; every change goes
// through it so that two read-modify-writes never undo each other.
func (n *Node) reloadRaft(change func(*raft.ReloadableConfig)) bool {
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	rc := n.raft.ReloadableConfig()
	change(&rc)
	if err := n.raft.ReloadConfig(rc); err != nil {
		n.log.Warn("raft config reload", "err", err)
		return false
	}
	return true
}

// Fast catch-up of a restarted follower.
//
// hashicorp/raft backs off after every failed AppendEntries to a follower,
// doubling from 10 ms up to 10.24 s, and only a successful one resets it;
// so a follower that was down for ten seconds or more waits up to ten
// more after it is back before the leader sends it anything. Under load
// that is tens of thousands of entries it lacks, and if the leader dies
// in that window the new leader must ship them all before its first
// commit: kills right after a restart took 1.2 s instead of 0.6 (a
// sitting's 8 clients, 27,000 entries behind 11 s after the restart).
//
// rejoinTransport keeps the backoff short where the cause is certain: an
// AppendEntries (or InstallSnapshot) whose dial is refused (no process listens at the peer's
// address: it is down, or restarting) is not failed at once but redialed
// every rejoinPoll, for up to rejoinWait, so failures count once per
// rejoinWait instead of once per attempt, and the first redial that
// connects after the peer is back carries the entries at once. A refused
// dial sent nothing, so sending it again is what Raft's retry would do.
// Other errors (a timeout, a broken connection, a wrong peer) return at
// once, as before.
type rejoinTransport struct {
	*raft.NetworkTransport
	stop <-chan struct{} // the node closes it before raft.Shutdown
	// mute, if set and true, fails every AppendEntries this node sends,
	// heartbeats included: a leader whose own disk hangs (commit-or-say)
	// goes silent so that its followers elect another.
	mute     func() bool
	redialed atomic.Int64 // refused dials sent again (for tests)

	// refusedMu guards refused: when each peer address last refused a
	// dial of Raft's (AppendEntries, a vote), deleted when one of them
	// reaches it again. A refusal is certain where gossip is slow: the
	// no-leader reason counted a killed voter "alive in gossip" for the
	// seconds its suspicion took (new-user review s32).
	refusedMu sync.Mutex
	refused   map[raft.ServerAddress]time.Time

	// storedMu guards acks: each peer's last AppendEntries reply (a
	// heartbeat's too), for a leader that cannot commit to say which
	// voters store nothing (cannotCommitDetail).
	storedMu sync.Mutex
	acks     map[raft.ServerAddress]peerAck
}

// peerAck is a peer's last AppendEntries reply: the last index of its log
// then, and when.
type peerAck struct {
	lastLog uint64
	at      time.Time
}

// stored returns the last index of target's log as its last AppendEntries
// reply said, and when that came; ok is false before any reply.
func (t *rejoinTransport) stored(target raft.ServerAddress) (lastLog uint64, at time.Time, ok bool) {
	t.storedMu.Lock()
	defer t.storedMu.Unlock()
	a, ok := t.acks[target]
	return a.lastLog, a.at, ok
}

// note records how a dial of target went: refused, or reached.
func (t *rejoinTransport) note(target raft.ServerAddress, err error) {
	t.refusedMu.Lock()
	defer t.refusedMu.Unlock()
	switch {
	case err == nil:
		delete(t.refused, target)
	case errors.Is(err, syscall.ECONNREFUSED):
		if t.refused == nil {
			t.refused = map[raft.ServerAddress]time.Time{}
		}
		if _, ok := t.refused[target]; !ok {
			t.refused[target] = time.Now()
		}
	}
}

// refusing reports whether target's last dial of Raft's was refused
// (and none reached it since), within rejoinWait.
func (t *rejoinTransport) refusing(target raft.ServerAddress) bool {
	t.refusedMu.Lock()
	defer t.refusedMu.Unlock()
	at, ok := t.refused[target]
	return ok && time.Since(at) < rejoinWait
}

// RequestVote is the NetworkTransport's, noting a refused dial.
func (t *rejoinTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	err := t.NetworkTransport.RequestVote(id, target, args, resp)
	t.note(target, err)
	return err
}

// RequestPreVote is the NetworkTransport's, noting a refused dial.
func (t *rejoinTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	err := t.NetworkTransport.RequestPreVote(id, target, args, resp)
	t.note(target, err)
	return err
}

const (
	rejoinPoll = 50 * time.Millisecond
	rejoinWait = 30 * time.Second
)

// AppendEntries is the NetworkTransport's, redialing a peer that refuses.
func (t *rejoinTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if t.mute != nil && t.mute() {
		return errOwnDiskHung
	}
	err := t.redial(func() error { return t.NetworkTransport.AppendEntries(id, target, args, resp) })
	t.note(target, err)
	if err == nil {
		t.storedMu.Lock()
		if t.acks == nil {
			t.acks = map[raft.ServerAddress]peerAck{}
		}
		t.acks[target] = peerAck{lastLog: resp.LastLog, at: time.Now()}
		t.storedMu.Unlock()
	}
	return err
}

// InstallSnapshot is the NetworkTransport's, redialing a peer that
// refuses: a follower down long enough for the leader to compact past it
// is sent a snapshot, and its failures feed the same backoff. A refused
// dial read nothing of data.
func (t *rejoinTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return t.redial(func() error { return t.NetworkTransport.InstallSnapshot(id, target, args, resp, data) })
}

// redial runs send, and again every rejoinPoll while its dial is refused,
// for up to rejoinWait or until the node stops.
func (t *rejoinTransport) redial(send func() error) error {
	err := send()
	if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	tick := time.NewTicker(rejoinPoll)
	defer tick.Stop()
	deadline := time.Now().Add(rejoinWait)
	for errors.Is(err, syscall.ECONNREFUSED) && time.Now().Before(deadline) && !t.IsShutdown() {
		select {
		case <-tick.C:
		case <-t.stop:
			return err
		}
		t.redialed.Add(1)
		err = send()
	}
	return err
}
