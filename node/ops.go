package node

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/buildinfo"
	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// Node-to-node RPC methods: a follower forwards the client's request,
// unchanged, to the leader.
const (
	methodAcquire uint8 = iota + 1
	methodExtend
	methodRelease
	methodGet
	methodList
	methodCheckToken
	methodStatus
	// methodLeave: a node leaving gracefully asks the leader to remove it
	// from the Raft configuration (request: its ID).
	methodLeave
	// methodCancel: withdraw an acquire whose outcome its caller never
	// learned (request: a CancelRequest naming key, holder, request id and
	// the epoch of the lost proposal; see withdraw).
	methodCancel
	// methodAbandon: settle an acquire its caller gave up on (request: an
	// AbandonRequest; see Abandon).
	methodAbandon
)

// Acquire asks for req.Key on behalf of req.Holder. Without req.Wait a key
// held by another holder is refused at once (Granted false, with the
// holder and how long it may stay unavailable). With req.Wait the request
// queues FIFO at the leader until granted or ctx ends, or, with
// req.MaxWait, until that much has passed since it queued there: then it
// is answered as a refused try (a grant already in flight is answered as
// such). The reply's Waited is the time it spent queued on the leader's
// clock (DESIGN.md rule 6).
// Callable on any node: followers forward to the leader.
func (n *Node) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if _, err := acquireCmd(req); err != nil {
		return nil, err
	}
	if err := text("holder", req.GetHolder(), "key", req.GetKey()); err != nil {
		return nil, err
	}
	if err := printable("holder", req.GetHolder(), "key", req.GetKey()); err != nil {
		return nil, err
	}
	for _, it := range req.GetItems() {
		if err := text("key", it.GetKey()); err != nil {
			return nil, err
		}
		if err := printable("key", it.GetKey()); err != nil {
			return nil, err
		}
	}
	if ttl, min := req.GetTtl().AsDuration(), n.cfg.Limits.MinTTL; ttl < min {
		return nil, fmt.Errorf("%w: ttl %v is below the minimum %v (agent --min-ttl)", ErrInvalid, ttl, min)
	}
	// A client of the API waits within its source's share; an embedded
	// caller (no source) only within the node's limit. The source goes
	// with the request if it is forwarded, for the leader to count it by
	// (handleRPC); whatever the caller put there is replaced.
	//
	// The node works on its own copy: an acquire whose outcome is lost
	// withdraws its grant by the request's id after this call returns
	// (lostOutcome), and an embedded caller's retry may have changed the
	// id in its message by then (a spent id renewed): the withdrawal
	// then spent the id the caller held its live grant by (adversarial
	// review s38).
	source, _ := ctx.Value(waiterSourceKey{}).(string)
	req = proto.CloneOf(req)
	req.ClientSource = source
	return n.waiterSlot(waitClaim{source: source}, req, func(req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
		return leaderCall(ctx, n, methodAcquire, req, &pb.AcquireResponse{}, n.acquireLocal, true)
	})
}

// waiterSourceKey carries the client source of an API Acquire (an IPv4
// /24 or an IPv6 /64, as watchSourceKey's) in its context, for
// waiterSlot to count its waits by. Embedded callers set none.
type waiterSourceKey struct{}

// waitersPerSource is the most waiting acquires one client source may
// have on a node whose limit (Limits.MaxWaiters) is limit: a quarter of
// it, at least 64 (all of it, below 64), as watchesPerSource. One token
// holder's 8,186 waits from one address took a leader's whole
// --max-waiters, and a lock loop beside it was refused 595 times in 30 s
// (outsider review s32 #4).
func waitersPerSource(limit int) int { return max(limit/4, waitersFloor(limit)) }

// waitersFloor is how many waiting acquires every source may have while
// the node serves fewer than limit (64, or all of them below 64): a
// source's waits past it are admitted only while a quarter of the limit
// is free (waitersReserve), so that the sources that fill their shares
// (4 /24s, a quarter each) leave that quarter to the sources that wait a
// little (a lock loop: one at a time).
func waitersFloor(limit int) int { return min(limit, 64) }

// waitersReserve is the part of limit that a source's waits past
// waitersFloor may not take: a quarter. Four /24s of one token holder
// filled a leader's --max-waiters with a quarter each, and a lock loop
// beside them was refused 340 times in 30 s (outsider review s32 N4);
// now the fourth gets its floor, and 31 more /24s would be needed to fill
// the reserve.
func waitersReserve(limit int) int { return limit / 4 }

// waitersPerNode is the most waiting acquires one node may forward to a
// leader whose limit is limit: half of it, at least 64 (all of it, below
// 64), so that one follower's clients cannot take the leader's whole
// --max-waiters.
func waitersPerNode(limit int) int { return max(limit/2, waitersFloor(limit)) }

// waitClaim is what one waiting acquire counts against besides the node's
// limit: its client source (an IPv4 /24 or IPv6 /64; "" for an embedded
// caller, or a wait forwarded without one), and, on the leader, the node
// that forwarded it ("node <id>"; "" if none).
type waitClaim struct {
	source, via string
}

// waitRefusal says which bound a waiting acquire met (waiterCount.take).
type waitRefusal int

const (
	waitAdmitted  waitRefusal = iota
	waitAtLimit               // the node serves Limits.MaxWaiters
	waitAtShare               // its source has waitersPerSource
	waitAtReserve             // its source has waitersFloor, and only waitersReserve is free
	waitAtNode                // its forwarding node has waitersPerNode
)

// waiterCount counts the waiting acquires a node serves, in all, by
// client source and by forwarding node (see waiterSlot).
type waiterCount struct {
	mu    sync.Mutex
	total int
	by    map[string]int // client sources and "node <id>"s
}

// take counts a waiter of c if the node serves fewer than limit waiters,
// c.via has fewer than waitersPerNode, and c.source fewer than
// waitersPerSource, and fewer than waitersFloor or more than
// waitersReserve are free. It reports which bound it met if not.
func (w *waiterCount) take(c waitClaim, limit int) waitRefusal {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch has := w.by[c.source]; {
	case w.total >= limit:
		return waitAtLimit
	case c.via != "" && w.by[c.via] >= waitersPerNode(limit):
		return waitAtNode
	case c.source == "": // an embedded caller's, or forwarded without one: admitted
	case has >= waitersPerSource(limit):
		return waitAtShare
	case has >= waitersFloor(limit) && w.total >= limit-waitersReserve(limit):
		return waitAtReserve
	}
	w.total++
	if w.by == nil {
		w.by = map[string]int{}
	}
	for _, k := range []string{c.source, c.via} {
		if k != "" {
			w.by[k]++
		}
	}
	return waitAdmitted
}

// put uncounts a waiter that take counted.
func (w *waiterCount) put(c waitClaim) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total--
	for _, k := range []string{c.source, c.via} {
		if k == "" {
			continue
		}
		if w.by[k]--; w.by[k] <= 0 {
			delete(w.by, k)
		}
	}
}

// waiterSlot runs call for req, counting a waiting acquire (Wait set)
// against Limits.MaxWaiters and c's shares of it while it runs (see
// waiterCount.take). Past any of them the acquire is tried once without
// waiting: a grant is answered as such, and a refusal as
// ErrTooManyWaiters, naming the bound it met, its size and the flag. A
// TryAcquire is never counted nor refused. Node.Acquire counts what this
// node's API admitted (before forwarding it, if it does); the leader's
// handleRPC counts the waiters forwarded to it, which hold their calls
// open there, by the client source the forwarding node sends with them
// and by that node.
//
// Invariant bounded-waiters: a node serves at most MaxWaiters waiting
// acquires at once, so a client that opens thousands of waits (20,000
// took a follower up 350 MB and 20,000 goroutines, and the leader up
// 230 MB until it lost its leadership) is refused instead of starving
// the node; one client source at most a quarter of them
// (waitersPerSource), however many nodes it sends them through, and past
// its first 64 only while a quarter is free (waitersReserve), so that a
// few sources cannot take them all from the others; and one forwarding
// node at most half (waitersPerNode). Guarded by TestMaxWaiters,
// TestWaitersPerSourceAreBounded and TestForwardedWaitsCountBySource.
func (n *Node) waiterSlot(c waitClaim, req *pb.AcquireRequest, call func(*pb.AcquireRequest) (*pb.AcquireResponse, error)) (*pb.AcquireResponse, error) {
	if !req.GetWait() {
		return call(req)
	}
	limit := n.cfg.Limits.MaxWaiters
	refused := n.waiting.take(c, limit)
	if refused == waitAdmitted {
		defer n.waiting.put(c)
		return call(req)
	}
	try := proto.CloneOf(req)
	try.Wait = false
	resp, err := call(try)
	if err != nil || resp.GetGranted() {
		return resp, err
	}
	key := resp.GetHeldKey()
	if key == "" {
		key = req.GetKey()
	}
	switch refused {
	case waitAtShare:
		return nil, fmt.Errorf("%w: %q is held, and node %s serves %d waiting acquires from your address's /24 (IPv6 /64), through any node, the most one source may have (a quarter of the agent's --max-waiters %d, at least 64): end one, retry later, use TryAcquire, or raise the limit on every agent",
			ErrTooManyWaiters, key, n.cfg.ID, waitersPerSource(limit), limit)
	case waitAtReserve:
		return nil, fmt.Errorf("%w: %q is held, and node %s serves %d or more waiting acquires from your address's /24 (IPv6 /64), through any node, and at most %d of the agent's --max-waiters %d are free, the quarter kept for sources with fewer than %d: end one, retry later, use TryAcquire, or raise the limit on every agent",
			ErrTooManyWaiters, key, n.cfg.ID, waitersFloor(limit), waitersReserve(limit), limit, waitersFloor(limit))
	case waitAtNode:
		return nil, fmt.Errorf("%w: %q is held, and node %s serves %d waiting acquires forwarded by %s, the most one node may forward (half of the leader's --max-waiters %d): retry later, use TryAcquire, or raise the limit on every agent",
			ErrTooManyWaiters, key, n.cfg.ID, waitersPerNode(limit), c.via, limit)
	}
	return nil, fmt.Errorf("%w: %q is held, and node %s serves %d waiting acquires, its limit (agent --max-waiters %d): retry later, use TryAcquire, or raise the limit on every agent",
		ErrTooManyWaiters, key, n.cfg.ID, limit, limit)
}

// withdraw makes sure that an acquire this leader proposed in epoch, and
// whose outcome it could not report (ErrUnknownOutcome: its caller left,
// or its leadership ended, while the entry was in flight), does not stay
// granted to a caller that never heard of it: it proposes an fsm Cancel of
// the request id and epoch through whoever leads (this node or the next
// leader), retrying until it is applied or the grant would have expired
// anyway. Cancel releases the grant only if it was made in epoch (so
// another attempt of the same request, granted by a later leader and
// answered, is left alone) and its holder has not retried the request in
// the meantime (then the holder knows of it and keeps it), and makes any
// later arrival of that id Stale; so the holder's own retries stay safe,
// and a lost grant never blocks the key for a whole TTL. Only the node
// that proposed withdraws: a node that forwarded the request and lost the
// leader's answer cannot tell which epoch, if any, granted it, and leaves
// the grant to the holder's retry or to its TTL.
func (n *Node) withdraw(req *pb.AcquireRequest, epoch, index uint64) {
	select {
	case n.withdrawals <- struct{}{}:
	default:
		n.log.Warn("too many withdrawals in flight; this one is left to expire", "key", req.GetKey())
		return
	}
	n.withdrawn.Add(1)
	c := &pb.CancelRequest{Key: req.GetKey(), Holder: req.GetHolder(), RequestId: req.GetRequestId(), Epoch: epoch, Index: index}
	bound := req.GetTtl().AsDuration() + req.GetLockDelay().AsDuration() + n.leaderWait()
	started := n.goRun("node.withdraw", func() {
		defer func() { <-n.withdrawals }()
		ctx, cancel := context.WithTimeout(n.ctx, max(bound, 10*time.Second))
		defer cancel()
		delay := 10 * time.Millisecond
		for {
			_, err := leaderCall(ctx, n, methodCancel, c, &pb.ReleaseResponse{}, n.cancelLocal, true)
			if err == nil || errors.Is(err, ErrInvalid) {
				return
			}
			if !ctxtime.Sleep(ctx, delay) {
				n.log.Info("could not withdraw an acquire with an unknown outcome; it expires after its TTL",
					"key", c.Key, "request_id", c.RequestId, "err", err)
				return
			}
			delay = min(2*delay, time.Second)
		}
	})
	if !started {
		<-n.withdrawals // the node is closing; the grant expires with its TTL
	}
}

// cancelLocal applies the Cancel of withdraw on the leader. A withdrawal
// that names the index of its entry leaves alone a grant of the request
// that another entry made: that entry's attempt may have been answered.
// The check is stable: the withdrawn epoch is over or is this leader's,
// whose entries for the request are settled before it withdraws
// (lostOutcome), so no grant of that epoch can appear or change later.
func (n *Node) cancelLocal(ctx context.Context, ls *leaderState, req *pb.CancelRequest) (*pb.ReleaseResponse, error) {
	cmd := &fsm.Cancel{Key: req.GetKey(), Holder: req.GetHolder(), ReqID: req.GetRequestId(), Epoch: req.GetEpoch()}
	if err := cmd.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// A node of an older version could not apply a withdrawal: the grant
	// is left to its TTL, as a forwarding node leaves one (withdraw stops
	// on ErrInvalid). An epoch-less Cancel would release a grant another
	// epoch made and answered.
	if err := n.formatGate(cmd); err != nil {
		return nil, err
	}
	if idx := req.GetIndex(); idx != 0 {
		for _, l := range n.fsm.Holdings(cmd.Key) {
			if l.Holder == cmd.Holder && l.ReqID == cmd.ReqID && l.GrantEpoch == cmd.Epoch && l.Token != idx {
				return &pb.ReleaseResponse{Header: n.header()}, nil
			}
		}
	}
	resp, err := n.applyClient(ctx, ls.stamp(), cmd)
	if err != nil {
		return nil, err
	}
	return &pb.ReleaseResponse{Header: n.header(), Released: resp.Results[0].Code == fsm.Released}, nil
}

// Abandon settles an acquire whose caller gave up while an attempt's
// outcome was unknown (protocol rule 7). It spends the request id through
// the log (an fsm Cancel naming no epoch), so no attempt of the request
// can be granted once it is answered, however late a copy of it reaches
// the leader; it releases the request's grant if that stands; and it says
// what became of the request (see pb.AbandonOutcome). An attempt still
// waiting in the leader's queue leaves it first, or, if its proposal is in
// flight, is settled first (invariant waiter-outcome). Callable on any
// node: followers forward to the leader.
func (n *Node) Abandon(ctx context.Context, req *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	if err := abandonCmd(req).Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := text("holder", req.GetHolder(), "key", req.GetKey()); err != nil {
		return nil, err
	}
	return leaderCall(ctx, n, methodAbandon, req, &pb.AbandonResponse{}, n.abandonLocal, true)
}

func abandonCmd(req *pb.AbandonRequest) *fsm.Cancel {
	return &fsm.Cancel{Key: req.GetKey(), Holder: req.GetHolder(), ReqID: req.GetRequestId()}
}

func (n *Node) abandonLocal(ctx context.Context, ls *leaderState, req *pb.AbandonRequest) (*pb.AbandonResponse, error) {
	cmd := abandonCmd(req)
	if err := cmd.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := settleWaiting(ctx, ls, &fsm.Acquire{Key: cmd.Key, Holder: cmd.Holder, ReqID: cmd.ReqID}); err != nil {
		return nil, err
	}
	resp, err := n.applyClient(ctx, ls.stamp(), cmd)
	if err != nil {
		return nil, err
	}
	out := &pb.AbandonResponse{Header: n.header()}
	switch res := resp.Results[0]; res.Code {
	case fsm.Released:
		out.Outcome = pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED
	case fsm.Held:
		// Granted, and a retry of it was answered (Seen), so the Cancel
		// kept it; the holder says it never used it: release it by token.
		rel, err := n.releaseLocal(ctx, ls, &pb.ReleaseRequest{Key: cmd.Key, Holder: cmd.Holder, Token: res.Token})
		if err != nil {
			return nil, err
		}
		out.Outcome = pb.AbandonOutcome_ABANDON_OUTCOME_ENDED
		if rel.GetReleased() {
			out.Outcome = pb.AbandonOutcome_ABANDON_OUTCOME_RELEASED
		}
	case fsm.Stale:
		out.Outcome = pb.AbandonOutcome_ABANDON_OUTCOME_ENDED
	case fsm.NotHeld:
		out.Outcome = pb.AbandonOutcome_ABANDON_OUTCOME_NOT_GRANTED
		// Who holds the key, and how long it may stay unavailable: also
		// when nobody holds it but its lock-delay runs, so that the
		// client can report a refusal, as for a try-acquire then.
		if free, wait, _ := n.fsm.Admits(fsm.Item{Key: cmd.Key}, cmd.Holder, true, ls.now(), 0, 0); !free || res.Holder != "" {
			out.Holder, out.Wait = res.Holder, durationpb.New(wait)
		}
	default:
		return nil, fmt.Errorf("%w: %s", ErrInvalid, res.Reason)
	}
	return out, nil
}

// Extend renews every listed lease of req.Holder by its full TTL, in one
// Raft entry. Each item's result says whether it was extended. With
// req.All instead of items, it renews every live lease of the holder if
// they are exactly the leases req.All sums (fsm.ExtendAll), and says so
// in AllExtended; a sum of more leases than --max-extend-items, or a
// cluster with a server that reads an older command format, answers no
// without proposing anything, and the client names its leases.
func (n *Node) Extend(ctx context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if all := req.GetAll(); all != nil {
		if len(req.GetItems()) > 0 {
			return nil, fmt.Errorf("%w: an extend names either its leases (items) or a sum of all of them (all), not both", ErrInvalid)
		}
		if err := extendAllCmd(req).Validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if err := text("holder", req.GetHolder()); err != nil {
			return nil, err
		}
		if all.GetCount() > uint32(n.cfg.Limits.MaxExtendItems) {
			return &pb.ExtendResponse{Header: n.header()}, nil
		}
		return leaderCall(ctx, n, methodExtend, req, &pb.ExtendResponse{}, n.extendLocal, true)
	}
	if got, max := len(req.GetItems()), n.cfg.Limits.MaxExtendItems; got > max {
		return nil, fmt.Errorf("%w: extend of %d leases exceeds the limit of %d per request (agent --max-extend-items); send them in several requests (lease.Client does)",
			ErrInvalid, got, max)
	}
	if err := extendCmd(req).Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := text("holder", req.GetHolder()); err != nil {
		return nil, err
	}
	for _, it := range req.GetItems() {
		if err := text("key", it.GetKey()); err != nil {
			return nil, err
		}
	}
	return leaderCall(ctx, n, methodExtend, req, &pb.ExtendResponse{}, n.extendLocal, true)
}

// Release frees req.Key if req.Holder holds it with req.Token; otherwise it
// is a no-op that answers Released false. If acquirers wait for the key,
// the release and the grant to the first of them are one Raft entry.
func (n *Node) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	if err := releaseCmd(req).Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := text("holder", req.GetHolder(), "key", req.GetKey()); err != nil {
		return nil, err
	}
	return leaderCall(ctx, n, methodRelease, req, &pb.ReleaseResponse{}, n.releaseLocal, true)
}

// Get reads one record: linearizably through the leader, or from this
// node's own state with req.Stale.
func (n *Node) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	if req.GetKey() == "" {
		return nil, fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if err := text("key", req.GetKey()); err != nil {
		return nil, err
	}
	if req.GetStale() {
		return n.getLocal(ctx, nil, req)
	}
	return leaderCall(ctx, n, methodGet, req, &pb.GetResponse{}, n.getLocal, false)
}

// List reads up to req.Limit records (at most and by default 1000, and no
// more than Limits.MaxListBytes of them) under req.Prefix after req.After,
// in key order; Next is the After of the following page.
func (n *Node) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	if req.GetLimit() < 0 {
		return nil, fmt.Errorf("%w: negative limit", ErrInvalid)
	}
	if err := text("prefix", req.GetPrefix(), "after", req.GetAfter()); err != nil {
		return nil, err
	}
	if req.GetStale() {
		return n.listLocal(ctx, nil, req)
	}
	return leaderCall(ctx, n, methodList, req, &pb.ListResponse{}, n.listLocal, false)
}

// maxListLimit is the most leases one List page holds (and the default);
// Limits.MaxListBytes may end a page sooner.
const maxListLimit = 1000

// CheckToken tells, linearizably, whether req.Token is the key's current
// fencing token and the lease has not expired by the leader's clock: the
// check a resource makes before accepting a write (Chubby's sequencer).
func (n *Node) CheckToken(ctx context.Context, req *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error) {
	if req.GetKey() == "" {
		return nil, fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if err := text("key", req.GetKey()); err != nil {
		return nil, err
	}
	return leaderCall(ctx, n, methodCheckToken, req, &pb.CheckTokenResponse{}, n.checkTokenLocal, false)
}

// Status describes this node.
func (n *Node) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st := n.fsm.Stats()
	resp := &pb.StatusResponse{
		Header:      n.header(),
		NodeId:      n.cfg.ID,
		RaftState:   n.raft.State().String(),
		Term:        n.raft.CurrentTerm(),
		CommitIndex: n.raft.CommitIndex(),
		LastIndex:   n.raft.LastIndex(),
		Leases:      uint64(st.Held),
		Delayed:     uint64(st.Delayed),
		ApiAddr:     n.apiAddr,
		ClusterId:   n.cluster.get(),
		Version:     buildinfo.Get().Short(),
	}
	if resp.ClusterId == "" {
		_, resp.SeenCluster, _ = n.seenCluster() // none while gossip shows two
	}
	resp.OwnDiskHung = n.ownDiskHungDetail(true)
	if ls := n.serving(); ls != nil {
		resp.Serving = true
		resp.Waiters = uint64(ls.queues.count())
		// A leader that cannot commit still serves reads and refuses
		// every write: status says so (new-user review M4: it showed
		// "(serving)" while every acquire there failed).
		if _, _, ok := n.commits.stalled(); ok {
			resp.CannotCommit = n.cannotCommitDetail()
		}
	}
	return resp, nil
}

// Members lists the nodes gossip knows, with their role in Raft.
func (n *Node) Members(ctx context.Context, _ *pb.MembersRequest) (*pb.MembersResponse, error) {
	roles := map[string]string{}
	addrs := map[string]string{}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			addrs[string(s.ID)] = string(s.Address)
			if s.Suffrage == raft.Voter {
				roles[string(s.ID)] = "voter"
			} else {
				roles[string(s.ID)] = "nonvoter"
			}
		}
	}
	leaderID, _, _ := n.leaderHint()
	resp := &pb.MembersResponse{Header: n.header()}
	for _, m := range n.members.list() {
		role := roles[m.ID]
		if role == "" {
			if m.Status == statusLeft {
				continue // departed for good: neither in gossip nor in Raft
			}
			role = "none"
		}
		// Addresses from Raft and from the node itself (see
		// verifyMembers), never gossip's word alone: clients send their
		// credentials to the API addresses listed here.
		raftAddr, api := m.Raft, ""
		if a, ok := addrs[m.ID]; ok {
			raftAddr = a
		}
		if m.ID == n.cfg.ID {
			api = n.apiAddr
		} else {
			api = n.members.confirmedAPI(m.ID, raftAddr)
		}
		resp.Members = append(resp.Members, &pb.Member{
			Id: m.ID, RaftAddr: raftAddr, ApiAddr: api, GossipAddr: m.Gossip,
			Status: m.Status, Raft: role, Leader: m.ID == leaderID,
		})
	}
	sort.Slice(resp.Members, func(i, j int) bool { return resp.Members[i].Id < resp.Members[j].Id })
	return resp, nil
}

// Watch streams changes to records under req.Prefix as this node applies
// them, starting with the current records if req.Initial, with EXTENDED
// events only if req.Extends. The channel is
// closed when ctx ends or the node closes; a watcher that falls behind gets
// a RESET event and then the channel closes (watch again and re-List).
// Past Limits.MaxWatches open on this node, it fails with
// ErrTooManyWatches. A node whose own disk hangs applies nothing: it
// refuses a watch (ErrNoLeader, saying so), and ends those open when the
// hang is found (invariant own-disk-says).
func (n *Node) Watch(ctx context.Context, req *pb.WatchRequest) (<-chan *pb.WatchEvent, error) {
	ch, _, err := n.watch(ctx, req)
	return ch, err
}

// watch is Watch, and also returns why the node ended the stream once its
// channel has closed (nil: its caller's ctx ended, it fell behind, or the
// node closed).
func (n *Node) watch(ctx context.Context, req *pb.WatchRequest) (<-chan *pb.WatchEvent, func() error, error) {
	if n.ctx.Err() != nil {
		return nil, nil, ErrClosed
	}
	if err := text("prefix", req.GetPrefix()); err != nil {
		return nil, nil, err
	}
	if d := n.ownDiskHungDetail(true); d != "" {
		return nil, nil, &LeaderError{Err: ErrNoLeader, Detail: d + "; watch another node"}
	}
	ch, ended, err := n.hub.watch(ctx, n, req, n.cfg.Limits.MaxWatches)
	if err == nil && n.ownDiskHung() {
		n.hub.endAll(&LeaderError{Err: ErrNoLeader, Detail: n.ownDiskHungDetail(true) + "; watch another node"}) // found hung as it registered
	}
	return ch, ended, err
}

// ownHolding returns holder's live holding of key, or nil: held, and not
// expired by the leader's clock (a holding past its expiry that the reaper
// has not reached yet is no longer the holder's: its acquire queues).
func (n *Node) ownHolding(ls *leaderState, key, holder string) *fsm.Lease {
	now := ls.now()
	for _, l := range n.fsm.Holdings(key) {
		if l.State == fsm.StateHeld && l.Holder == holder && l.Expiry > now {
			return &l
		}
	}
	return nil
}

// quotaUse is what acquires add to the state, as the quota counts it.
type quotaUse struct {
	leases int
	bytes  int64
}

// quota refuses an acquire that would take the state past
// Limits.MaxLeases or MaxLeaseBytes (which counts the request-id marks too:
// an acquire, granted or refused, leaves one for MarkRetention once it
// ends, so a churn of long keys is bounded by it and not only by the FSM's
// MaxMarks count), counting what this leader admitted and has not applied
// yet (proposals in flight), so concurrent acquires cannot overshoot
// together. It counts only what the acquire adds: nothing for a holding
// the holder has already, but a larger value; and, with release (a
// holding released in the same entry, see waitQueues.claimHead), one
// holding less. So a holder's retry or renewal goes on, as do extends,
// releases and handoffs to a waiter, and a full cluster drains as its
// leases end. On success it reserves the acquire's share; unreserve
// returns it once the acquire was applied or given up.
//
// A queued waiter reserves nothing while it waits (it may wait long, and
// the waiters of an exclusive key can add one holding at a time): the
// queue asks quota when it proposes the waiter. pending reports a refusal
// that the grant itself would undo: records of its keys that are due (an
// expired holding, a lock-delay that ended) would be reaped by the grant,
// and are counted until the reaper's Expire applies. The queue waits for
// that instead of refusing (see waitQueues.proposable).
func (n *Node) quota(ls *leaderState, cmd *fsm.Acquire, items []fsm.Item, release *fsm.Release) (unreserve func(), pending bool, err error) {
	var add, due quotaUse
	now := ls.now()
	for _, it := range items {
		if own := n.ownHolding(ls, it.Key, cmd.Holder); own != nil {
			add.bytes += int64(len(cmd.Value) - len(own.Value))
			continue
		}
		add.leases++
		add.bytes += int64(len(it.Key) + len(cmd.Holder) + len(cmd.Value))
		for _, l := range n.fsm.Holdings(it.Key) {
			switch {
			case release != nil && l.State == fsm.StateHeld && l.Token == release.Token && l.Holder == release.Holder:
				// Released in the same entry: the holding leaves a
				// request-id mark of its key and holder.
				add.leases--
				add.bytes -= int64(len(l.Value))
			case l.FreeAt() <= now:
				due.leases++
				due.bytes += int64(len(l.Value))
			}
		}
	}
	add.bytes = max(add.bytes, 0)
	lim, r := n.cfg.Limits, &ls.reserved
	r.mu.Lock()
	defer r.mu.Unlock()
	// The state is read under the reservations' lock: read before it, it
	// could miss an acquire that was applied, and its reservation
	// returned, in between (seen beside two busy loops: 4 leases under
	// MaxLeases 3). Applied before returned, so under the lock an acquire
	// is counted at least once.
	st := n.fsm.Stats()
	leases, bytes := st.Held+st.Delayed+r.use.leases, st.Bytes+st.MarkBytes+r.use.bytes
	switch {
	case add.leases > 0 && leases+add.leases > lim.MaxLeases:
		pending = leases+add.leases-due.leases <= lim.MaxLeases
		return nil, pending, fmt.Errorf("%w: the cluster holds %d leases and %d lock-delays, and this leader admitted %d more not yet applied: %d of its limit (agent --max-leases %d); release leases or raise the limit on every agent (waiting acquires are counted only once their turn comes)",
			ErrInvalid, st.Held, st.Delayed, r.use.leases, leases, lim.MaxLeases)
	case add.bytes > 0 && bytes+add.bytes > lim.MaxLeaseBytes:
		pending = bytes+add.bytes-due.bytes <= lim.MaxLeaseBytes
		return nil, pending, &sizeLimitError{fmt.Errorf("%w: the cluster's state holds %d bytes of keys, holders and values of leases, and %d of keys and holders of request ids, kept %v after a lease ends; this leader admitted %d more not yet applied; %d more would pass its limit (agent --max-lease-bytes %d): release leases, wait, or raise the limit on every agent",
			ErrInvalid, st.Bytes, st.MarkBytes, fsm.MarkRetention, r.use.bytes, add.bytes, lim.MaxLeaseBytes)}
	}
	r.use.leases += add.leases
	r.use.bytes += add.bytes
	return func() {
		r.mu.Lock()
		r.use.leases -= add.leases
		r.use.bytes -= add.bytes
		r.mu.Unlock()
	}, false, nil
}

// text refuses a request whose strings (name, value pairs) are not valid
// UTF-8. The client API's messages carry strings, which must be UTF-8, so
// a key stored through the embedded API that is not would make every Get,
// List and Watch that meets it fail to encode, for every client.
func text(fields ...string) error {
	for i := 0; i+1 < len(fields); i += 2 {
		// No key is longer than fsm.MaxKeyLen, so no longer key, prefix
		// or position names one: refused as a write's key is (reads
		// took a 1 MiB key; outsider review).
		if len(fields[i+1]) > fsm.MaxKeyLen {
			return fmt.Errorf("%w: %s of %d bytes exceeds %d (the longest key)", ErrInvalid, fields[i], len(fields[i+1]), fsm.MaxKeyLen)
		}
		if !utf8.ValidString(fields[i+1]) {
			return fmt.Errorf("%w: %s %q is not valid UTF-8 (keys, prefixes and holders are text)", ErrInvalid, fields[i], fields[i+1])
		}
	}
	return nil
}

// printable refuses an acquire whose key or holder (name, value pairs)
// holds a control character or a bidirectional override: they are shown
// to operators (list, watch, logs), where a newline forges a row and an
// override reverses what is read. Only new holdings are checked: keys
// stored before this check stay reachable by Get, List and Release.
func printable(fields ...string) error {
	for i := 0; i+1 < len(fields); i += 2 {
		for at, r := range fields[i+1] {
			if unicode.IsControl(r) || bidiControl(r) {
				return fmt.Errorf("%w: %s %q has %U at byte %d: keys and holders are printable text, without control characters or bidirectional overrides",
					ErrInvalid, fields[i], fields[i+1], r, at)
			}
		}
	}
	return nil
}

// bidiControl reports whether r changes the direction of the text around
// it (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069).
func bidiControl(r rune) bool {
	return r == 0x061C || r == 0x200E || r == 0x200F || r >= 0x202A && r <= 0x202E || r >= 0x2066 && r <= 0x2069
}

// leaderCall makes one attempt at a request: it runs local on this node
// if it leads, or forwards req once to the leader. It waits (bounded, see
// route) for a leader to be known, but never retries: a failure that
// certainly happened before the request was applied is a *LeaderError
// (ErrNotLeader with the leader's address, or ErrNoLeader) for the client
// to retry under its own policy (lease.RetryPolicy); a write whose reply
// was lost is ErrUnknownOutcome.
func leaderCall[Req, Resp proto.Message](ctx context.Context, n *Node, method uint8, req Req, resp Resp,
	local func(context.Context, *leaderState, Req) (Resp, error), write bool) (Resp, error) {
	var zero Resp
	if err := n.serviceErr(); err != nil {
		return zero, err
	}
	if err := ctx.Err(); err != nil {
		return zero, err // a caller already gone: nothing is proposed or forwarded
	}
	ls, id, addr := n.route(ctx, true)
	if ls != nil {
		return local(ctx, ls, req)
	}
	if addr == "" {
		if err := n.serviceErr(); err != nil {
			return zero, err
		}
		return zero, n.noLeaderErr()
	}
	if err := n.forward(ctx, id, addr, method, req, resp, write); err != nil {
		return zero, err
	}
	return resp, nil
}

// forwards tracks the requests this node has forwarded to the leader and
// not yet had answered, so that they end when Raft stops naming that node
// leader. A leader that stopped answering (a paused process, a partition)
// keeps its connections open, and the rest of the cluster replaces it
// after an election; without this, its forwarded requests would wait for
// their callers' deadlines, and their callers with them, long after a new
// leader serves. A forward cut short this way has an unknown outcome, as
// any forward whose reply was lost: the client retries it with the same
// request id, now at the new leader.
type forwards struct {
	mu sync.Mutex
	m  map[*forwarded]struct{}
}

type forwarded struct {
	leader string // Raft ID of the node the request went to
	cancel context.CancelCauseFunc
}

// errLeaderChanged ends forwards to a node Raft no longer names leader.
var errLeaderChanged = errors.New("leader changed while the request was in flight")

// start registers a forward to leader; done must be called when it ends.
func (fs *forwards) start(ctx context.Context, leader string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	f := &forwarded{leader: leader, cancel: cancel}
	fs.mu.Lock()
	if fs.m == nil {
		fs.m = map[*forwarded]struct{}{}
	}
	fs.m[f] = struct{}{}
	fs.mu.Unlock()
	return ctx, func() {
		fs.mu.Lock()
		delete(fs.m, f)
		fs.mu.Unlock()
		cancel(nil)
	}
}

// endStale ends every forward to a node other than leader (the Raft ID
// Raft names now; "" while there is none).
func (fs *forwards) endStale(leader string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for f := range fs.m {
		if f.leader != leader {
			f.cancel(errLeaderChanged)
		}
	}
}

// raftLeaderID is the Raft ID of the node Raft names leader ("" if none).
func (n *Node) raftLeaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// forward sends req once to the leader over node RPC, to the node Raft
// names as leader (id) at addr and no other (CallNode).
func (n *Node) forward(ctx context.Context, id, addr string, method uint8, req, resp proto.Message, write bool) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	fctx, done := n.forwards.start(ctx, id)
	if n.raftLeaderID() != id {
		// Raft named another leader between route and start.
		done()
		return &LeaderError{Err: ErrNoLeader, Detail: fmt.Sprintf("leader %s replaced before the request was sent", id)}
	}
	out, err := n.rpc.CallNode(fctx, addr, id, method, data)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(fctx), errLeaderChanged) {
		err = fmt.Errorf("%w: %w", errLeaderChanged, err)
	}
	done()
	switch {
	case err == nil:
	case errors.Is(err, transport.ErrNotSent):
		return &LeaderError{Err: ErrNoLeader, Detail: fmt.Sprintf("leader at %s unreachable: %v", addr, err)}
	case errors.Is(err, transport.ErrNoReply):
		if write {
			return fmt.Errorf("%w: forwarded to %s: %v", ErrUnknownOutcome, addr, err)
		}
		return &LeaderError{Err: ErrNoLeader, Detail: fmt.Sprintf("leader at %s did not answer: %v", addr, err)}
	default:
		return err
	}
	if err := proto.Unmarshal(out, resp); err != nil {
		return fmt.Errorf("%w: bad reply from leader: %v", ErrUnknownOutcome, err)
	}
	return nil
}

// handleRPC serves requests forwarded by other nodes. It never forwards
// again: a node that is not the leader answers not-leader with its hint.
//
// Invariant node-port-is-nodes: every request here comes from a node of
// this cluster. The Mux lets no connection through without a certificate
// with the node role (TLS files) or made from the cluster key, and a hello
// of this cluster; the check below only makes sure of it. Without TLS or a
// key (loopback or Insecure) the caller's ID is a claim. Tests:
// transport's TestNodePortRefusesClientCertificates and TestClusterKeyMode,
// node's TestOtherClusterRefused.
func (n *Node) handleRPC(ctx context.Context, method uint8, data []byte) ([]byte, error) {
	peer, ok := transport.PeerFrom(ctx)
	if !ok || peer.ID == "" || n.authPeers && !peer.Authenticated {
		return nil, fmt.Errorf("%w: node RPC from an unauthenticated peer", ErrInvalid)
	}
	switch method {
	case methodAcquire:
		// A waiter forwarded here counts against this node's
		// MaxWaiters too: its call stays open here while it waits. It
		// counts against its client's source, which the forwarding node
		// sends (Node.Acquire), as one sent here directly does, so that
		// a source gets one share of this node whichever nodes it sends
		// its waits through (outsider review s32 N4: two /24s through
		// three nodes filled the leader); and against the forwarding
		// node's own share, so that one follower's clients cannot take
		// it all. A source that is not a prefix (a node of an older
		// version sends none) counts only against the node's share.
		return serveRPC(ctx, n, data, &pb.AcquireRequest{}, func(ctx context.Context, ls *leaderState, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
			c := waitClaim{via: "node " + peer.ID}
			if _, err := netip.ParsePrefix(req.GetClientSource()); err == nil {
				c.source = req.GetClientSource()
			}
			return n.waiterSlot(c, req, func(req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
				return n.acquireLocal(ctx, ls, req)
			})
		})
	case methodExtend:
		return serveRPC(ctx, n, data, &pb.ExtendRequest{}, func(ctx context.Context, ls *leaderState, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
			if err := n.payExtend(ctx, "node "+peer.ID, req); err != nil {
				return nil, err
			}
			return n.extendLocal(ctx, ls, req)
		})
	case methodRelease:
		return serveRPC(ctx, n, data, &pb.ReleaseRequest{}, n.releaseLocal)
	case methodGet:
		return serveRPC(ctx, n, data, &pb.GetRequest{}, n.getLocal)
	case methodList:
		return serveRPC(ctx, n, data, &pb.ListRequest{}, n.listLocal)
	case methodCheckToken:
		return serveRPC(ctx, n, data, &pb.CheckTokenRequest{}, n.checkTokenLocal)
	case methodCancel:
		return serveRPC(ctx, n, data, &pb.CancelRequest{}, n.cancelLocal)
	case methodAbandon:
		return serveRPC(ctx, n, data, &pb.AbandonRequest{}, n.abandonLocal)
	case methodLeave:
		return nil, n.serveLeave(ctx, data)
	case methodStatus:
		resp, err := n.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			return nil, err
		}
		return proto.Marshal(resp)
	}
	return nil, fmt.Errorf("%w: unknown rpc method %d", ErrInvalid, method)
}

func serveRPC[Req, Resp proto.Message](ctx context.Context, n *Node, data []byte, req Req,
	local func(context.Context, *leaderState, Req) (Resp, error)) ([]byte, error) {
	if b := n.apiWork; b != nil {
		// A forwarded request is the leader's work as much as one sent
		// to it: it draws on this node's API budget, a share for each
		// forwarding node (whose own clients it paced, fairly by
		// address), so that the leader serves no more than its
		// --max-api-rate however many nodes forward to it.
		peer, _ := transport.PeerFrom(ctx)
		if _, ok := b.wait("node "+peer.ID, apiUnitsPerRequest, ctx.Done()); !ok {
			return nil, context.Cause(ctx)
		}
		// Its bytes too, before they are decoded (bodyUnits).
		if err := n.payUnits(ctx, "node "+peer.ID, bodyUnits(int64(len(data)))); err != nil {
			return nil, err
		}
	}
	if err := proto.Unmarshal(data, req); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	ls := n.leader(ctx)
	if ls == nil {
		return nil, n.notLeaderErr()
	}
	// A read's reply pays before it is built, as at the API
	// (servePaidRead), at the forwarding node's turns, and holds room
	// among the replies this node holds unsent, in the forwarding node's
	// share, until it is encoded (reply-room: the forwarding node held
	// room for it before it asked).
	peer, _ := transport.PeerFrom(ctx)
	pay := func(ctx context.Context, units int64) error { return n.payUnits(ctx, "node "+peer.ID, units) }
	hold := &replyHold{room: n.replies, src: "node " + peer.ID, factor: 2, wait: replyWaitFactor * n.cfg.Limits.ReadTimeout}
	defer hold.release()
	ctx = context.WithValue(ctx, replyHoldKey{}, hold)
	resp, err := servePaidRead(ctx, n, any(req), pay, func(ctx context.Context) (Resp, error) { return local(ctx, ls, req) })
	if err != nil {
		return nil, err
	}
	return proto.Marshal(resp)
}

func (n *Node) acquireLocal(ctx context.Context, ls *leaderState, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	arrival := ls.now()
	cmd, err := acquireCmd(req)
	if err != nil {
		return nil, err
	}
	if err := n.formatGate(cmd); err != nil {
		return nil, err
	}
	n.keepLockDelay(cmd)
	items := cmd.Items()
	if max := n.cfg.Limits.MaxExtendItems; len(items) > max {
		// Granted, it could never be extended: one extend naming it
		// renews all its keys, over the limit (review s32b).
		return nil, fmt.Errorf("%w: acquire of %d keys: one lease of more keys than an extend may renew (agent --max-extend-items %d) could never be extended", ErrInvalid, len(items), max)
	}
	// A retry of the request that started the holder's holding of every
	// key does not queue behind anyone: it is the same grant. A new request
	// of the holder (a new id) queues like any newcomer, although the
	// holder's live holding would not stop it: else a client whose release
	// failed, or whose lease it lost or dropped, could take the key again
	// ahead of the clients queued for it, and again. A set that adds a key
	// it does not hold queues too.
	ownAll := func() bool {
		for _, it := range items {
			if own := n.ownHolding(ls, it.Key, cmd.Holder); own == nil || own.ReqID != cmd.ReqID {
				return false
			}
		}
		return true
	}
	// A leader that cannot commit neither queues nor proposes (invariant
	// commit-or-say): the grant could not commit, and the caller's retry
	// policy counts the refusal as a failure.
	if err := n.cannotCommitErr(); err != nil {
		return nil, fmt.Errorf("acquire %q: %w", cmd.Key, err)
	}
	// A retry of an attempt still waiting here is judged alone.
	if err := settleWaiting(ctx, ls, cmd); err != nil {
		return nil, err
	}
	if !ls.queues.busy(items) || ownAll() {
		res, waited, queue, err := n.acquireNow(ctx, ls, req, cmd, items, arrival)
		if err != nil {
			return nil, err
		}
		if !queue && (res.Code != fsm.Held || !req.GetWait()) {
			return n.acquireReply(res, waited, cmd.TTL)
		}
	} else if !req.GetWait() {
		// Waiters come first: a newcomer never barges ahead of them.
		return n.acquireReply(n.queuedHeld(ls, cmd, items), 0, cmd.TTL)
	}
	// Queued, the waiter reserves no quota: the queue asks for it when
	// the waiter's turn comes (see Node.quota).
	w := &waiter{cmd: cmd, items: items, arrival: arrival, done: make(chan waitResult, 1)}
	var patience <-chan time.Time
	if d := req.GetMaxWait().AsDuration(); req.GetMaxWait() != nil && d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		patience = t.C
	}
	r := ls.queues.wait(ctx, w, patience)
	if r.outwaited {
		// Answered as a try refused now: who holds the key, for how long.
		return n.acquireReply(n.queuedHeld(ls, cmd, items), 0, cmd.TTL)
	}
	if r.err != nil {
		// The queue returns an in-flight grant's reservation itself, once
		// its entry resolves.
		return nil, n.lostOutcome(ls, req, r.lost, r.err, func() {})
	}
	if ctx.Err() != nil && r.res.Code == fsm.Granted {
		// Granted as its caller left: see unheard.
		if !r.res.Retry {
			n.withdraw(req, ls.epoch, r.res.Token) // a fresh grant's token is its entry's index
		}
		return nil, unheard(ctx)
	}
	return n.acquireReply(r.res, r.waited, cmd.TTL)
}

// acquireNow proposes cmd at once, within the state quota, and returns
// the FSM's result and how long it waited since arrival. queue is set,
// with no result, when the quota refused a waiting acquire whose keys are
// held anyway: it queues instead, as if refused Held, and the quota is
// asked again when its turn comes (a handoff adds no holding).
func (n *Node) acquireNow(ctx context.Context, ls *leaderState, req *pb.AcquireRequest, cmd *fsm.Acquire, items []fsm.Item, arrival time.Duration) (res fsm.Result, waited time.Duration, queue bool, err error) {
	unreserve, _, err := n.quota(ls, cmd, items, nil)
	if err != nil {
		if req.GetWait() && n.heldNow(ls, cmd, items) {
			return fsm.Result{}, 0, true, nil
		}
		return fsm.Result{}, 0, false, err
	}
	s := ls.stamp()
	p := n.propose(s, cmd, applyTimeout(ctx))
	resp, err := p.waitCommit(ctx, n)
	if err != nil {
		if ctx.Err() == nil {
			// Leadership ended with the entry in flight, and the
			// caller is here to be told: it settles the outcome (a
			// retry with the same id takes the grant, an Abandon
			// releases it). A withdrawal racing that retry released
			// the grant into its lock-delay, which no answer
			// explained (as for waiters; see failAll).
			p = nil
		}
		// Applied or given up, the state, not the reservation, counts
		// it. A caller that leaves while its entry is in flight leaves
		// the reservation to lostOutcome, until the entry resolves: else
		// callers that give up at once could fill the state past the
		// quota.
		return fsm.Result{}, 0, false, n.lostOutcome(ls, req, p, err, unreserve)
	}
	if ctx.Err() != nil {
		// Committed as its caller left: see unheard.
		return fsm.Result{}, 0, false, n.lostOutcome(ls, req, p, unheard(ctx), unreserve)
	}
	unreserve()
	return resp.Results[0], s.Now - arrival, false, nil
}

// unheard is the answer to an acquire whose caller left (ctx ended) as
// its entry committed: over the API its answer is never written (the
// connection or stream is gone, or the client's deadline passed), so a
// grant is withdrawn as one whose caller left while it was in flight
// (invariant waiter-outcome), and the caller, if it is still there (an
// embedded one), is told ErrUnknownOutcome. Answered "granted", such a
// grant held the key for its whole TTL, nobody knowing of it (outsider
// review s36: waiting acquires whose clients gave up after 20-320 ms).
func unheard(ctx context.Context) error {
	return fmt.Errorf("%w: gave up waiting (%v) as the grant was committed; it is withdrawn", ErrUnknownOutcome, ctx.Err())
}

// heldNow reports whether the FSM would refuse cmd as held now, on any
// of its keys.
func (n *Node) heldNow(ls *leaderState, cmd *fsm.Acquire, items []fsm.Item) bool {
	now := ls.now()
	for _, it := range items {
		if ok, _, bad := n.fsm.Admits(it, cmd.Holder, cmd.KeepLockDelay, now, 0, 0); !ok && bad == "" {
			return true
		}
	}
	return false
}

// settleWaiting makes way for a new attempt of cmd's request (a retry, or
// its Abandon): an earlier attempt still waiting in this leader's queues
// leaves them, and one whose proposal is in flight is settled first (see
// waitQueues.supersede; invariant waiter-outcome). It fails with
// ErrUnknownOutcome if ctx ends first.
func settleWaiting(ctx context.Context, ls *leaderState, cmd *fsm.Acquire) error {
	for {
		settled := ls.queues.supersede(cmd)
		if settled == nil {
			return nil
		}
		select {
		case <-settled:
		case <-ls.n.commits.stalledChan():
			// Its proposal may not resolve for long (invariant
			// commit-or-say); this attempt was not applied.
			return fmt.Errorf("acquire %q: an earlier attempt of this request is being committed: %w", cmd.Key, ls.n.stallErr())
		case <-ctx.Done():
			return fmt.Errorf("acquire %q: %w: an earlier attempt of this request was being committed (%v)", cmd.Key, ErrUnknownOutcome, ctx.Err())
		}
	}
}

// lostOutcome settles an acquire this leader proposed (p) whose caller
// left before its outcome was known (err is ErrUnknownOutcome), and
// returns err. (p is nil when the caller is still there to be told: it
// settles the outcome itself, protocol rule 7.) The outcome is learnt in the background, when Raft resolves
// p. Only a fresh grant made by p is withdrawn: if p turned out to be a
// retry of the request (an earlier entry had granted it, and another
// attempt may have been answered with that grant), or a refusal, there is
// nothing of p's to withdraw. Withdrawing before knowing released, in a
// campaign, a grant its holder had been answered with and was using: a
// copy of its request, held up in a stopped node, reached the leader with
// its caller gone, and the Cancel got into the log ahead of the copy
// (stop 22). If p's outcome stays unknown (leadership lost after Raft
// appended it), the next leader withdraws it, naming p's index, so that
// it too releases only what p granted. The acquire's quota reservation is
// released (unreserve) once p resolved and the state counts what it did.
func (n *Node) lostOutcome(ls *leaderState, req *pb.AcquireRequest, p *proposal, err error, unreserve func()) error {
	if !errors.Is(err, ErrUnknownOutcome) || p == nil {
		unreserve()
		return err
	}
	n.lostPending.Add(1)
	started := n.goRun("node.lost-outcome", func() {
		defer n.lostPending.Add(-1)
		defer unreserve()
		select {
		case <-p.done:
		case <-n.ctx.Done():
			return // the grant, if any, expires with its TTL
		}
		switch {
		case p.err == nil:
			if res := p.resp.Results[len(p.resp.Results)-1]; res.Code == fsm.Granted && !res.Retry {
				n.withdraw(req, ls.epoch, p.index)
			}
		case errors.Is(p.err, ErrUnknownOutcome) && !errors.Is(p.err, ErrClosed):
			n.withdraw(req, ls.epoch, p.index)
		}
	})
	if !started {
		n.lostPending.Add(-1)
		unreserve()
	}
	return err
}

// queuedHeld is the Held answer to a non-waiting acquire of keys others
// wait for: the first key that is held, who holds it and how long it may
// stay unavailable (the first key and no holder if only waiters stand in
// the way).
func (n *Node) queuedHeld(ls *leaderState, cmd *fsm.Acquire, items []fsm.Item) fsm.Result {
	res := fsm.Result{Code: fsm.Held, Key: cmd.Key}
	now := ls.now()
	for _, it := range items {
		ok, wait, _ := n.fsm.Admits(it, cmd.Holder, cmd.KeepLockDelay, now, 0, 0)
		if ok {
			continue
		}
		res.Key, res.Wait = it.Key, wait
		if l, found := n.fsm.Get(it.Key); found && l.State == fsm.StateHeld {
			res.Holder, res.Token = l.Holder, l.Token
		}
		break
	}
	return res
}

func (n *Node) acquireReply(res fsm.Result, waited, ttl time.Duration) (*pb.AcquireResponse, error) {
	switch res.Code {
	case fsm.Granted:
		return &pb.AcquireResponse{Header: n.header(), Granted: true, Token: res.Token, Retry: res.Retry,
			Waited: durationpb.New(waited), Ttl: durationpb.New(ttl)}, nil
	case fsm.Held:
		return &pb.AcquireResponse{Header: n.header(), Holder: res.Holder, Wait: durationpb.New(res.Wait),
			Ttl: durationpb.New(ttl), HeldKey: res.Key}, nil
	case fsm.Stale:
		return nil, fmt.Errorf("%w: %s", ErrStaleRequest, res.Reason)
	default:
		return nil, fmt.Errorf("%w: %s", ErrInvalid, res.Reason)
	}
}

func (n *Node) extendLocal(ctx context.Context, ls *leaderState, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if req.GetAll() != nil {
		return n.extendAllLocal(ctx, ls, req)
	}
	cmd := extendCmd(req)
	if err := cmd.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if k := n.cfg.Testing; k != nil && k.ExtendNoCommit {
		return n.unsafeExtend(ls, cmd), nil
	}
	if keys, max := n.fsm.ExtendKeys(cmd.Holder, cmd.Items), n.cfg.Limits.MaxExtendItems; keys > max {
		return nil, fmt.Errorf("%w: extend of %d leases renews %d keys (every key of a multi-key lease counts), more than the limit of %d per request (agent --max-extend-items); send them in several requests (lease.Client does)",
			ErrInvalid, len(cmd.Items), keys, max)
	}
	// Only the items the holder holds are proposed; the others are
	// answered from the state (fsm.ExtendSplit), once this node has
	// confirmed that it still leads: a deposed leader whose loop hangs in
	// a log write still says it leads, and its state misses what the new
	// leader granted; it answered a live lease "not held", and the client
	// dropped it (adversarial review s36).
	held, results := n.fsm.ExtendSplit(cmd.Holder, cmd.Items, ls.now())
	if len(held) < len(cmd.Items) {
		if err := n.verify(ctx, ls); err != nil {
			return nil, err
		}
		held, results = n.fsm.ExtendSplit(cmd.Holder, cmd.Items, ls.now())
	}
	now := ls.now()
	if len(held) > 0 {
		sub := cmd
		if len(held) < len(cmd.Items) {
			sub = &fsm.Extend{Holder: cmd.Holder, Items: make([]fsm.ExtendItem, len(held))}
			for j, i := range held {
				sub.Items[j] = cmd.Items[i]
			}
		}
		resp, err := n.applyClient(ctx, ls.stamp(), sub)
		if err != nil {
			return nil, err
		}
		if len(resp.Results) != len(sub.Items) {
			return nil, fmt.Errorf("%w: %s", ErrInvalid, resp.Results[0].Reason)
		}
		for j, i := range held {
			results[i] = resp.Results[j]
		}
		now = resp.Now
	}
	out := &pb.ExtendResponse{Header: n.header(), Results: make([]*pb.ExtendResult, len(results))}
	for i, r := range results {
		er := &pb.ExtendResult{Key: cmd.Items[i].Key, Token: cmd.Items[i].Token, Ok: r.Code == fsm.Extended}
		if er.Ok {
			er.Ttl = durationpb.New(r.Expiry - now)
		} else {
			er.Holder, er.CurrentToken = r.Holder, r.Token
		}
		out.Results[i] = er
	}
	return out, nil
}

// extendAllLocal proposes an fsm.ExtendAll, once every server of the
// configuration reads the format that carries it (else it answers no
// at once, and the client names its leases). UNSAFE ExtendNoCommit
// answers no too, so that its clients send the per-lease extends it
// answers from local state.
func (n *Node) extendAllLocal(ctx context.Context, ls *leaderState, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	cmd := extendAllCmd(req)
	if err := cmd.Validate(); err != nil || len(req.GetItems()) > 0 {
		return nil, fmt.Errorf("%w: extend of all leases: %v (with %d items)", ErrInvalid, err, len(req.GetItems()))
	}
	no := &pb.ExtendResponse{Header: n.header()}
	if k := n.cfg.Testing; k != nil && k.ExtendNoCommit {
		return no, nil
	}
	if id, _, _ := n.olderReader(fsm.MinFormat(cmd)); id != "" {
		return no, nil
	}
	if n.fsm.ExtendKeys(cmd.Holder, nil) > n.cfg.Limits.MaxExtendItems {
		return no, nil // the members of its sets count: named, in chunks
	}
	resp, err := n.applyClient(ctx, ls.stamp(), cmd)
	if err != nil {
		return nil, err
	}
	switch r := resp.Results[0]; r.Code {
	case fsm.Extended:
		return &pb.ExtendResponse{Header: n.header(), AllExtended: true}, nil
	case fsm.NotHeld:
		return no, nil
	default:
		return nil, fmt.Errorf("%w: %s", ErrInvalid, r.Reason)
	}
}

// unsafeExtend answers an extend from local state without committing it.
// UNSAFE (TestingKnobs.ExtendNoCommit): a deposed leader keeps saying yes.
func (n *Node) unsafeExtend(ls *leaderState, cmd *fsm.Extend) *pb.ExtendResponse {
	out := &pb.ExtendResponse{Header: n.header()}
	now := ls.now()
	for _, it := range cmd.Items {
		r := &pb.ExtendResult{Key: it.Key, Token: it.Token}
		for _, l := range n.fsm.Holdings(it.Key) {
			if l.State == fsm.StateHeld && l.Holder == cmd.Holder && l.Token == it.Token && l.Expiry > now {
				r.Ok, r.Ttl = true, durationpb.New(l.TTL)
			}
		}
		out.Results = append(out.Results, r)
	}
	return out
}

func (n *Node) releaseLocal(ctx context.Context, ls *leaderState, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	cmd := releaseCmd(req)
	if err := cmd.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := n.cannotCommitErr(); err != nil {
		return nil, err // before a waiter's grant is proposed with it (commit-or-say)
	}
	if p := ls.queues.claimHead(cmd.Key, cmd); p != nil {
		// Released and granted to the first waiter in one entry; the
		// queue settles the grant whatever happens to this caller.
		resp, err := p.waitCommit(ctx, n)
		if err != nil {
			return nil, err
		}
		return &pb.ReleaseResponse{Header: n.header(), Released: resp.Results[0].Code == fsm.Released}, nil
	}
	resp, err := n.applyClient(ctx, ls.stamp(), cmd)
	if err != nil {
		return nil, err
	}
	return &pb.ReleaseResponse{Header: n.header(), Released: resp.Results[0].Code == fsm.Released}, nil
}

// verify confirms, for a consistent read, that this node still leads: a
// quorum answered after the read began. ls is nil for stale reads.
//
// It ends with ctx, and when this node is found unable to commit
// (cannotCommitErr): hashicorp/raft answers VerifyLeader from its leader
// loop, which a hung log write of the leader's own holds, and a read at
// such a leader waited past its caller's deadline, for as long as the
// disk hung (adversarial review s35).
func (n *Node) verify(ctx context.Context, ls *leaderState) error {
	if ls == nil {
		return nil
	}
	stalled := n.commits.stalledChan()
	if err := n.cannotCommitErr(); err != nil {
		return err
	}
	f := n.raft.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return n.notLeaderErr()
		}
		return nil
	case <-stalled:
		return n.cannotCommitErr()
	case <-n.raftDown:
		return n.notLeaderErr()
	case <-ctx.Done():
		return fmt.Errorf("%w: leadership not confirmed in time (%v): %w", ErrNoLeader, ctx.Err(), n.notLeaderErr())
	}
}

func (n *Node) getLocal(ctx context.Context, ls *leaderState, req *pb.GetRequest) (*pb.GetResponse, error) {
	if err := n.verify(ctx, ls); err != nil {
		return nil, err
	}
	hs := n.fsm.Holdings(req.GetKey())
	now := n.readNow(ls)
	resp := &pb.GetResponse{Header: n.header(), Found: len(hs) > 0}
	for i := range hs {
		resp.Holdings = append(resp.Holdings, toPB(&hs[i], now))
	}
	if resp.Found {
		resp.Lease = resp.Holdings[0]
	}
	return resp, nil
}

func (n *Node) listLocal(ctx context.Context, ls *leaderState, req *pb.ListRequest) (*pb.ListResponse, error) {
	if err := n.verify(ctx, ls); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit <= 0 || limit > maxListLimit {
		limit = maxListLimit
	}
	if paid, ok := ctx.Value(listPaidKey{}).(int); ok && paid < limit {
		limit = paid // no more keys than it paid for (servePaidRead)
	}
	leases, next := n.fsm.List(req.GetPrefix(), req.GetAfter(), limit)
	now := n.readNow(ls)
	resp := &pb.ListResponse{Header: n.header(), Next: next, Leases: make([]*pb.Lease, 0, len(leases))}
	size := 0
	for i := 0; i < len(leases); {
		// One key at a time: its first holding in leases, all of them in
		// holdings; a page ends between keys.
		j := i + 1
		for j < len(leases) && leases[j].Key == leases[i].Key {
			j++
		}
		first := toPB(&leases[i], now)
		group := []*pb.Lease{first}
		keySize := 2 * (proto.Size(first) + 8)
		for k := i + 1; k < j; k++ {
			l := toPB(&leases[k], now)
			group = append(group, l)
			keySize += proto.Size(l) + 8
		}
		if size+keySize > n.cfg.Limits.MaxListBytes && len(resp.Leases) > 0 {
			// The page is full by bytes: the next one starts here.
			resp.Next = resp.Leases[len(resp.Leases)-1].GetKey()
			break
		}
		size += keySize
		resp.Leases = append(resp.Leases, first)
		resp.Holdings = append(resp.Holdings, group...)
		i = j
	}
	return resp, nil
}

func (n *Node) checkTokenLocal(ctx context.Context, ls *leaderState, req *pb.CheckTokenRequest) (*pb.CheckTokenResponse, error) {
	if err := n.verify(ctx, ls); err != nil {
		return nil, err
	}
	resp := &pb.CheckTokenResponse{Header: n.header()}
	now := ls.now()
	hs := n.fsm.Holdings(req.GetKey())
	for i := range hs {
		l := &hs[i]
		if l.State != fsm.StateHeld || l.Expiry <= now {
			continue // expired by the leader's clock, reaped or not
		}
		if resp.CurrentToken == 0 {
			resp.CurrentToken, resp.Holder = l.Token, l.Holder
		}
		resp.Current = resp.Current || l.Token == req.GetToken()
		resp.Holdings = append(resp.Holdings, toPB(l, now))
	}
	return resp, nil
}

func (n *Node) header() *pb.Header {
	id, api, _ := n.leaderHint()
	st := n.fsm.Stats()
	return &pb.Header{LeaderId: id, LeaderAddr: api, NodeId: n.cfg.ID, Epoch: st.Epoch, AppliedIndex: st.Applied}
}

// readNow is the logical time at which a read judges time left. A
// consistent read (ls set) uses the leader's own clock at read time, the
// clock that judges expiry. A stale read on any node estimates it: the
// FSM's clock as of the last entry this node applied, plus the time that
// has passed here since it saw that clock move (see clockSeen), so an idle
// or cut-off node's answers count down instead of standing still.
func (n *Node) readNow(ls *leaderState) time.Duration {
	if ls != nil {
		return ls.now()
	}
	return n.clock.estimate(n.fsm.Clock())
}

// clockSeen tracks when this node last saw the FSM's logical clock move,
// for stale reads (readNow). It is local bookkeeping, not replicated
// state.
type clockSeen struct {
	mu    sync.Mutex
	epoch uint64
	now   time.Duration
	at    time.Time
}

// seen returns when this node first saw the FSM clock at (epoch, now),
// if the last value it saw is that one.
func (c *clockSeen) seen(epoch uint64, now time.Duration) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at, !c.at.IsZero() && epoch == c.epoch && now == c.now
}

// estimate returns now advanced by the local time since the clock was
// last seen at (epoch, now); an unseen clock is taken as seen now.
func (c *clockSeen) estimate(epoch uint64, now time.Duration) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch || now != c.now {
		c.epoch, c.now, c.at = epoch, now, time.Now()
	}
	return now + time.Since(c.at)
}

func toPB(l *fsm.Lease, now time.Duration) *pb.Lease {
	out := &pb.Lease{
		Key: l.Key, Holder: l.Holder, Token: l.Token, Value: l.Value,
		Ttl: durationpb.New(l.TTL), LockDelay: durationpb.New(l.LockDelay),
		Mode: pb.LeaseMode(l.Mode), Limit: l.Limit, Set: l.Set, SetKeys: l.SetKeys,
	}
	switch l.State {
	case fsm.StateHeld:
		out.State = pb.LeaseState_LEASE_STATE_HELD
		out.Remaining = durationpb.New(max(l.Expiry-now, 0))
	case fsm.StateDelayed:
		out.State = pb.LeaseState_LEASE_STATE_LOCK_DELAY
		out.Holder = ""
		out.Remaining = durationpb.New(max(l.FreeAt()-now, 0))
	}
	return out
}

// protoDuration shows d as the client gave it (1000h0m0s, not 3600000s),
// in seconds only past what a time.Duration holds.
func protoDuration(d *durationpb.Duration) string {
	if s := d.GetSeconds(); s > math.MaxInt64/int64(time.Second) || s < math.MinInt64/int64(time.Second) {
		return fmt.Sprintf("%ds", s)
	}
	return d.AsDuration().String()
}

func acquireCmd(req *pb.AcquireRequest) (*fsm.Acquire, error) {
	if req.GetTtl() == nil {
		return nil, fmt.Errorf("%w: ttl is required", ErrInvalid)
	}
	for _, d := range []struct {
		name string
		d    *durationpb.Duration
	}{{"ttl", req.GetTtl()}, {"lock-delay", req.GetLockDelay()}} {
		if d.d.GetSeconds() > int64(fsm.MaxTTL/time.Second) { // before AsDuration saturates it
			return nil, fmt.Errorf("%w: %s %s out of range: at most %v", ErrInvalid, d.name, protoDuration(d.d), fsm.MaxTTL)
		}
	}
	cmd := &fsm.Acquire{
		Key: req.GetKey(), Holder: req.GetHolder(), ReqID: req.GetRequestId(),
		TTL: req.GetTtl().AsDuration(), LockDelay: req.GetLockDelay().AsDuration(), Value: req.GetValue(),
		Mode: fsm.Mode(req.GetMode()), Limit: req.GetLimit(),
	}
	if len(req.GetItems()) >= fsm.MaxSetKeys {
		return nil, fmt.Errorf("%w: acquire of %d keys, at most %d", ErrInvalid, 1+len(req.GetItems()), fsm.MaxSetKeys)
	}
	for _, it := range req.GetItems() {
		cmd.More = append(cmd.More, fsm.Item{Key: it.GetKey(), Mode: fsm.Mode(it.GetMode()), Limit: it.GetLimit()})
	}
	if err := cmd.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return cmd, nil
}

func extendCmd(req *pb.ExtendRequest) *fsm.Extend {
	cmd := &fsm.Extend{Holder: req.GetHolder(), Items: make([]fsm.ExtendItem, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		cmd.Items[i] = fsm.ExtendItem{Key: it.GetKey(), Token: it.GetToken()}
	}
	return cmd
}

func extendAllCmd(req *pb.ExtendRequest) *fsm.ExtendAll {
	all := req.GetAll()
	return &fsm.ExtendAll{Holder: req.GetHolder(), Count: all.GetCount(), Digest: all.GetDigest()}
}

func releaseCmd(req *pb.ReleaseRequest) *fsm.Release {
	return &fsm.Release{Key: req.GetKey(), Holder: req.GetHolder(), Token: req.GetToken()}
}
