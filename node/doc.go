// Package node is one member of a leasenode cluster: hashicorp/raft with
// raft-wal storage (raft-boltdb for data dirs that have it) and file
// snapshots, memberlist gossip for discovery
// and membership, the leader's duties (Promote, reaper, FIFO waiter
// queues), forwarding from followers, and the client API server.
//
// A Go program embeds it with Start and uses the methods of *Node (Acquire,
// Extend, Release, Get, List, CheckToken, Watch, Members, Status) from any
// node; followers forward writes and consistent reads to the leader.
// Acquire takes every lock shape the fsm knows: exclusive, shared,
// semaphore(N), and several keys at once (AcquireRequest.Items); reads
// report every holding of a key (Holdings), keeping the first in the
// fields older clients read. The
// same operations are served on Config.APIAddr with connect-go, so one port
// speaks Connect (JSON over HTTP: curl works), gRPC and gRPC-Web. The
// package lease builds the user-facing client on top of either.
//
// It does not own the lease rules (package fsm) or the bytes on the wire
// (package transport). See DESIGN.md in this directory for the request
// path, goroutines and trade-offs.
//
// # Safety invariants kept here
//
// leader-clock: every command is stamped by the leader with (epoch, now),
// now being the leader's monotonic clock since its leadership began. No
// other clock (wall clock, follower clocks, client clocks) reaches the FSM.
//
// promote-before-serve: a new leader first applies every earlier entry
// (raft.Barrier), then commits Promote for its epoch (its Raft term), which
// moves every record into the new epoch keeping the time it had left at
// the last applied stamp; until Promote has applied it serves nothing and
// forwards nothing. The epoch clock starts when this node stored the last
// entry of the earlier terms (or, if it does not remember, when it saw
// the FSM clock reach that last stamp), and Promote is stamped with that
// origin (time 0). Together with fsm's no-early-expiry this means a lease
// never expires earlier than its holder's own validity: every stamp was
// read before its entry was sent, so before this node stored it, and
// every entry an earlier leader committed precedes the Barrier. Nor later
// than needed: the election does not count as time left, even when the
// old leader died before followers learnt its last entries committed, so
// a lease whose holder died expires about one TTL after its last extend
// however often leaders change (guarded by
// TestFailoverDoesNotAddTheElection,
// TestFailoverRightAfterAGrantDoesNotAddTheElection and jepsen's
// takeover-bound under leader-churn).
//
// one-leader-state: one leaderLoop per term publishes the leader state
// and, deferred, withdraws it; the next term's loop starts only after the
// previous one has ended (followLeadership). Guarded by
// TestLeadershipFlapsLeaveNoStaleState.
//
// commit-before-grant (DESIGN.md rule 3): every acquire, extend and
// release commits through Raft before it is answered; a deposed leader
// cannot commit, so it cannot grant or extend. There is no leader-local
// fast path. Consistent reads (Get, List, CheckToken) call VerifyLeader
// after the request arrived. Guarded by TestPartitionedMinorityCannotGrant.
//
// arrival-before-stamp: a grant's expiry is measured from a stamp taken
// after the request reached the leader, so it is never earlier than the
// client's own send time plus TTL; a queued grant reports W, the leader-
// clock time from the request's arrival to its stamp, and the client may
// count W only because the stamp is later than the arrival.
//
// expiry-is-a-proposal: the reaper proposes Expire; it never deletes
// locally, and the FSM re-checks what is due by its own clock, so a reaper
// running on a leader that has just been deposed cannot remove a lease that
// the new leader extended.
//
// unknown-outcome: a write that was handed to Raft (or forwarded) and whose
// result was not seen is reported as ErrUnknownOutcome, never as a
// retryable failure; only failures that certainly happened before the
// proposal (not leader, not sent) are ErrNotLeader/ErrNoLeader.
//
// fifo-no-barging: waiting acquirers are granted in arrival order at the
// leader, per key, whatever their shape: a waiter is proposed only from
// the front of every one of its keys' queues, waiters right behind an
// in-flight one that can share the key with it (readers, semaphore slots)
// are proposed at once, and a queued exclusive waiter stops every newer
// waiter behind it (no writer starvation); see waitQueues. A newcomer that
// finds waiters is queued (or, not waiting, refused) too, a new request of
// a key's own holder included; only a retry of the request that started
// the holder's holding of every key it names skips the queue
// (TestOwnKeyDoesNotCarryASetPastWaiters, TestHolderQueuesBehindWaiters).
//
// state-quota: the leader admits an acquire only if the state, plus what
// it admitted and has not applied yet (proposals in flight, queued
// waiters), stays within Limits.MaxLeases and MaxLeaseBytes; what a holder
// holds already counts once, and the request-id marks ended leases leave
// count in the bytes. The bound can be passed only by the grants of lost
// outcomes that apply after the loss was reported, and by the marks of
// Abandons, which are never refused (TestStateQuota,
// TestStateQuotaCountsWhatIsInFlight, TestStateQuotaCountsMarks).
//
// no-set-deadlock: clients waiting for overlapping sets of keys, named in
// any order, never wait for each other: every queue is ordered by one
// arrival sequence, so the oldest waiter is never behind a younger one
// anywhere, and a set is granted all or none (nothing is held while
// waiting). Guarded by TestMultiKeyWaitersNoDeadlock.
//
// waiter-outcome: a queued grant is settled when Raft resolves it, never
// by whoever proposed it; a waiter that leaves while its grant is in
// flight answers ErrUnknownOutcome, and the leader that proposed any
// acquire whose caller left before its outcome was known learns that
// outcome when Raft resolves the proposal and withdraws a fresh grant the
// proposal made
// (withdraw: an fsm Cancel naming the proposal's epoch and index, through
// whoever leads), so a grant nobody heard of never blocks a key for its
// TTL, and a grant of the same request made by another entry (in a later
// epoch, or earlier in the same one: a copy of an answered request that
// reaches the leader late, its caller gone) is never released by it. A
// caller still there when leadership ends with its entry in flight is told
// ErrUnknownOutcome and settles it (a retry takes the grant, an Abandon
// releases it): a withdrawal racing its retry released the grant into a
// lock-delay that no answer explained (a campaign on 025a9b7,
// jepsen/testdata/linearizable.bad.lock-delay-of-a-withdrawn-waiter-grant.jsonl).
// A retry of a request while an attempt of it
// still waits at the leader is answered with the request's outcome: the
// waiting attempt leaves the queue, or is settled if in flight, before
// the retry is judged, so a refusal is never followed by a grant of the
// same request. A client that gave up on an acquire settles it with
// Abandon, which does the same and then spends the request id in the log
// (an fsm Cancel naming no epoch, releasing the request's grant if it
// stands), so no copy of an attempt that reaches the leader later, from a
// paused node or a slow connection, can be granted after the answer.
// Guarded by TestAbandonedWaiterGrantIsWithdrawn,
// TestWithdrawAcrossLeaderChange, TestWithdrawLeavesAnotherEpochsGrant,
// TestWithdrawOnlyWhatTheLostEntryGranted,
// TestRetryOfQueuedWaiterIsJudgedAlone, TestAbandon and
// TestAbandonOfQueuedWaiter.
//
// fatal-stops-serving: a replica that meets an entry it cannot apply (a
// newer version, a checksum mismatch) applies nothing after it and serves
// nothing from then on; the node shuts down without leaving the cluster
// (Done, Err). Guarded by TestFatalEntryStopsServingAtOnce.
//
// read-time-left: consistent reads report time left by the leader's clock
// at read time; stale reads estimate it from when this node last saw the
// FSM clock move, so they count down rather than stand still.
//
// one-cluster-per-state: a node bootstraps only if no member it sees has
// Raft state, so a node started with BootstrapExpect beside a running or
// restored cluster joins it instead of founding a second one. It asks
// every member gossip does not call dead or left (bootstrap-asks-everyone),
// not only the BootstrapExpect lowest IDs its configuration takes: fresh
// nodes whose IDs sort before a restored node's (n1-n3 beside z9) asked
// only each other, founded a second cluster in the same gossip pool, and
// both granted the restored keys, with the same tokens (adversarial
// review). A member gossip has shown with a cluster id counts even while
// it is down, and a node that has seen one says so when asked
// (StatusResponse.seen_cluster): gossip passes a dead member on only to
// nodes that saw it alive, so nodes started after the restored node went
// down asked only the one that had seen it, which had no state to answer
// with. The decision to join is written to the data dir first
// (SeenClusterFile), so a restart, which empties the member table, keeps
// it, and the nodes that were told answer with it too: the one witness of
// a down restored node restarted, asked the others, heard nothing, and
// bootstrapped. TestBootstrapBesideARestoredNode,
// TestBootstrapBesideARunningCluster, TestBootstrapBesideADownRestoredNode. (Its counterpart for data that
// already belongs to a cluster is one-cluster-per-data-dir, below.)
//
// gossip-remembers-peers: a node keeps the gossip addresses of the
// members it has seen in its data dir (GossipPeersFile) and, while gossip
// shows it no other member, joins them after its --join seeds. A restart
// empties the member table; the others, whose probes the restarted node
// answers at the same address under the same name, never call it failed
// and so never rejoin it, and with its seeds down it learnt of them only
// when one of their periodic full syncs (15-30 s, a random member each)
// picked it: a node waiting to bootstrap waited 32-70 s so beside two
// busy loops. TestRestartedNodeFindsPeersPastDownSeeds.
//
// bootstrap-decides: a node waiting to bootstrap joins as soon as one
// member it asks answers that it has Raft state, whichever others cannot
// be asked; only bootstrapping needs every member's answer (peerWithState).
// While waiting it refuses every peer with a cluster id, including the
// nodes that bootstrapped with it as a voter; stopping at the first member
// it could not ask kept it waiting while that member was down or cut off,
// and the two live voters of three could elect nobody. Guarded by
// TestBootstrapPastAnUnreachableMember.
//
// tokens-survive-restore: Restore starts the new Raft log an index gap past
// the backup's and in a term above its epoch, so new grants carry tokens
// above those the old cluster granted after the backup, and the first
// leader's Promote is newer than the restored epoch.
//
// formats-readable: the leader proposes nothing in a command format newer
// than a server of the Raft configuration says in gossip that it reads
// (formatGate): an older node stops rather than apply such an
// entry, and two of three would lose the quorum mid-upgrade. A server
// gossip does not know (down since before this node started) counts with
// the format it was last seen to read (PeerFormatsFile), and one this
// node has never seen (it joined while that server was down) with
// fsm.OldestFormat: a replacement node that came to lead wrote format-5
// entries beside a down server that read format 4. A rule that
// only newer replicas know (fsm's lock-delay-kept) is asked for in the
// entry (fsm.Acquire.KeepLockDelay) once every server reads it. An
// extend by sum (fsm.ExtendAll, format 6) is answered no without a
// proposal until every server reads it: the client then names its leases.
// TestShapesWaitForEveryNodeToReadThem, TestLostLockDelayKeptFromItsOwnClient,
// TestFormatGateRemembersADownServer, TestFormatGateWaitsForAServerNeverSeen,
// lease's TestKeepaliveBySumWithAnOlderServer.
//
// # Trust invariants (DESIGN.md, "Trust")
//
// node-port-is-nodes: every Raft and node-RPC byte a node accepts comes
// from a node of its cluster. The node port is mutual TLS, from TLS files
// whose certificates carry the node role (an API client certificate from
// the same CA is refused) or from ClusterKey; Start refuses a plain node
// port or unkeyed gossip on any non-loopback address unless Insecure.
// handleRPC re-checks that the caller authenticated. Guarded by transport's
// TestNodePortRefusesClientCertificates and TestClusterKeyMode, and
// TestMutualTLS, TestExposedWithoutKeyRefused.
//
// one-cluster-per-data-dir: a cluster id is made at bootstrap (the same on
// every bootstrapping node, from the members' IDs and runs) or by Restore,
// kept in ClusterIDFile, and checked in the hello of every node-port
// connection, both ways. A node takes a peer's id only while it has no
// Raft state and does not wait to bootstrap, and writes it before the
// hello is answered, so Raft state never lands in a data dir of another
// cluster. Guarded by TestOtherClusterRefused and
// TestNewClusterOnDeadMembersAddress.
//
// one-node-per-data-dir: a data dir names its node in NodeIDFile (written
// on the first start; an older data dir adopts the ID it starts with), and
// Start refuses another ID on it. Guarded by TestDataDirKeepsItsNodeID.
//
// leave-only-self: the leave RPC removes only the node that asks, as named
// by its connection, not by its request. Guarded by TestLeaveOnlySelf.
//
// one-server-per-address: a Raft dial reaches only a node the
// configuration lists at the dialed address (StreamLayer.ExpectPeers:
// hashicorp/raft dials by address alone), and reconcile removes a server
// whose address a confirmed member now answers at before adding that
// member, so a new node on a dead voter's address is never sent its
// AppendEntries or asked for its vote (a voter with amnesia). Guarded by
// TestNewNodeOnMembersAddressReplacesIt and
// TestStreamLayerRefusesAnotherNodeAtServersAddress.
//
// api-budget: the client API's connections together pass net/http's
// server at most burst + Limits.MaxAPIRate work a second (HTTP/2 frames
// weighted by cost as they are read, HTTP/1 requests at their handler);
// past it reads wait their turn, fairly between client sources (an IPv4
// /24, an IPv6 /64, as the connection limits count them) and then their
// addresses, and no connection is closed for it (apiBudget); a liveness
// check goes out of turn within its source's small allowance. Guarded
// by TestAPIBudgetFairShares, TestAPIBudgetSharesBySource,
// TestAPIBudgetPacesFlooders and TestLivenessChecksAreBounded. A large
// charge (a reply's bytes, a body's, an extend's keys) is paid in pieces
// of apiPayPiece units at its source's turns, so another source waits at
// most one small piece of each (TestLightSourceWaitsSmallPiecesOfLargeCharges).
//
// reply-paid-before-built: a read's reply (Get, List, CheckToken, a
// Watch's listing page) is sized from the FSM without copying it, paid
// at its source's turns, and only then built, a List page of no more
// keys than were paid for: nothing large is held while a read waits for
// its turn (servePaidRead). Guarded by
// TestListsWaitingForTurnsHoldNoReplies,
// TestWatchListingsWaitingForTurnsHoldNoPages and
// TestLeaseSizeBoundsTheEncodedLease.
//
// reply-room: a reply's bytes are counted from before it is built until
// its handler has returned, in a room of 64 MiB node-wide, 16 MiB a
// client source (a forwarding node, for reads forwarded to the leader);
// a read past it waits for room, unbuilt, and is refused after twice the
// read timeout naming the limit; a unary reply not written within
// Limits.ReadTimeout of its beginning is ended (HTTP/2 stream reset), so
// replies nobody reads (a client granting no HTTP/2 window) hold at most
// their source's share (replyRoom). Guarded by
// TestUnreadRepliesAreBounded and TestUnwrittenReplyIsReset.
//
// handshake-rate: each TLS port starts at most burst +
// Limits.MaxHandshakeRate TLS handshakes a second from all sources, and
// burst + Limits.MaxHandshakeRatePerSource from one IPv4 /24 or IPv6
// /64; a connection past either is closed before the handshake is spent
// (transport.HandshakeLimit). Guarded by TestAPIHandshakeRate and
// transport's TestMuxHandshakeRate.
//
// gossip-is-only-a-hint: no API address (leader hints, redirects,
// Members) and no Raft membership comes from gossip alone: a member's API
// address is what that node said in its own Status, over an authenticated
// connection that had to belong to it (RPCClient.CallNode), for the Raft
// address and run gossip claims; reconcile adds only members confirmed that
// way, and changes a server's suffrage at the address Raft has, never
// gossip's. Guarded by TestGossipCannotRedirect and
// TestGossipCannotRedirectMemberTable.
package node
