// Package fsm is leasenode's deterministic lease state machine: the lease
// records, the logical clock that judges their expiry, epochs, fencing
// tokens, lock-delay, and snapshots. It implements raft.FSM and
// raft.BatchingFSM.
//
// It owns no I/O, no wall clock, no goroutines and no randomness: its state
// is a pure function of the Raft log. Time arrives inside commands as a
// Stamp (epoch, now) written by the leader that proposed them. It knows
// nothing of networking; node reads the change feed (Changes, Drain) to wake
// waiters and serve watches.
//
// # Holdings and shapes
//
// A key has zero or more holdings (Lease), each with its holder, request
// id, fencing token, TTL, lock-delay, expiry, value, state, Seen and
// grant epoch, and a Mode: Exclusive (alone on the key), Shared (beside
// other shared ones: readers), or Semaphore with a limit N (up to N of
// them, all of the same N). A holder has at most one holding per key. A
// holding that expires with a lock-delay leaves a remnant that keeps its place in its mode
// until the delay ends. One Acquire may name several keys (Acquire.More),
// each with its own mode: a multi-key grant, all or none in one entry,
// whose holdings share their token (Lease.Set) and expiry and live and end
// together.
//
// # Commands
//
// Promote starts an epoch. Acquire, Extend (a batch of one holder's leases),
// Release, Cancel (withdraw an acquire whose outcome its caller never
// learnt) and Expire (reap what is due) change records; Batch applies
// several of them atomically in one entry, so a leader can release a key and
// grant it to the next waiter in one Raft round trip. Every refusal is a
// typed Result (Held, NotHeld, Stale, WrongEpoch, Invalid), identical on
// every replica; Fatal answers every entry from one this replica must not
// apply on (fatal-stop).
//
// # Invariants
//
// fsm-determinism: replicas that apply the same entries hold the same state
// and write byte-identical snapshots. The clock is max(now, stamp.Now) within
// an epoch; iteration that reaches output (snapshots, Expire results) is in
// key, (key, holder) or (due, key) order; Decode never panics and rejects
// every malformed entry with the same Invalid result.
//
// fatal-stop: an entry this replica must not apply, one from a newer format
// version or one whose CRC-32C does not match its bytes (format version 2
// checksums every entry), would make it diverge whether applied or skipped.
// The FSM then applies nothing from that entry on (every later entry gets
// a Fatal result; state, clock and applied index stay at the last good
// entry), and reports it once through Config.OnFatal so the node stops.
//
// single-holder: an exclusive holding is granted only on a key with no
// record left at the FSM's now: every earlier holding was released while
// it was live, or its expiry plus lock-delay is <= now. An extend of a
// lease whose expiry has passed fails even if no Expire has reaped it yet
// (no-extend-after-expiry), so a lease cannot be revived at the instant
// someone else is granted it. Expire re-checks what is due by the FSM's
// own clock: a leader's stale view can never delete a lease that was
// extended meanwhile.
//
// extend-all-exact: an ExtendAll (format 6) extends its holder's live
// holdings only if they are exactly the set its client summed (count and
// an order-free digest of (least key, token) per grant, package
// internal/holdset); otherwise nothing changes. It reaps the holder's due
// holdings first, as an Extend would, so it extends nothing a per-lease
// Extend from the same client would not, and a holding the client gave up
// on makes the sums differ and is left to expire.
//
// shape-compatibility (single-holder for every shape): a holding is
// granted only beside records it is compatible with, remnants included:
// Exclusive on an empty key, Shared beside Shared only, Semaphore(N)
// beside fewer than N semaphore records of the same N only
// (semaphore-limit); asking a semaphore of N' for another N is Invalid
// ("key K is a semaphore of N'"), any other mismatch is Held. So a key
// never holds an exclusive holding beside another, a shared one beside a
// non-shared one, or more than N semaphore holdings; Restore refuses a
// snapshot that would.
//
// lock-delay-kept: a holding with a lock-delay leaves its key unavailable
// to everyone until its expiry plus lock-delay unless it is released by
// token (Release, or Cancel of a grant nobody saw). An acquire with
// KeepLockDelay (every acquire of a cluster whose servers all read format
// 5) does not replace its holder's own live holding that has a lock-delay,
// nor any member of its grant, with a new holding: it is Held until that
// holding ended, so the holder's Client cannot end a lost or dropped
// holding early by taking the key again and releasing that. Older entries
// keep the older rule (the holder's new request replaced its holdings), so
// every replica applies them alike.
//
// set-atomicity: no state ever holds part of a multi-key grant. It is
// granted iff every item is grantable at once, in one entry; its holdings
// share token (= Set = the entry's index), expiry, lock-delay, state and
// Seen; an Extend of any member extends all of them, a Release or Cancel
// of any member releases all of them, a newer request of the holder on
// any member replaces all of them, and since they share their due time,
// Expire, reapDue and Promote reap and rebase them in the same step.
//
// reaper-independence: no outcome depends on when the leader's reaper ran.
// Acquire, Extend, Release and Cancel first apply to their keys' records
// exactly what Expire would if it ran now (the same events; a set's
// members on other keys too), so a late release of an expired lease is
// NotHeld and its lock-delay still runs.
//
// no-early-expiry: commands stamped with another epoch are refused
// (WrongEpoch), and Promote keeps the time each record had left at the last
// applied stamp: it first reaps what is due at the old clock, exactly as an
// Expire would (an expired but unreaped lease is never revived), then sets
// expiry' = promote.now + (expiry - old now) for leases and lock-delays
// alike. It is never early: every committed stamp of an earlier epoch was
// read before the new leader was elected (a deposed leader cannot commit,
// and the new leader's log holds only entries it received before its
// election), and the new epoch's clock starts at the election. So since a
// grant or extend stamped t, at least (old now - t) has passed by the old
// clock plus the new clock's whole reading, on clocks whose rate is within
// the drift bound: counting the remainder from promote.now can only be
// late. It is not needlessly late either: a lease whose holder died expires
// on time even when leaders change faster than its TTL, which a full-TTL
// rebase never did.
//
// cancel-unseen: Cancel{key, holder, req, epoch} releases req's grant
// only if it is the key's live holding, was granted in epoch (the epoch of
// the leader whose proposal lost its outcome: Lease.GrantEpoch) and no
// retry of req was applied (Lease.Seen). The cancelling node vouches only
// that its own proposal's answer never reached its caller: a retry's
// answer might have reached it through another node, and a grant made in
// another epoch is another attempt's (the client's retry through the next
// leader, answered as a fresh grant once the first proposal was lost with
// its leader). In one epoch the earliest proposal of req is its first
// grant, so later attempts there are retries (Seen). Either way req is
// spent, so a copy still in flight is Stale and cannot grant the key to a
// caller that gave up on it.
//
// restore-bounds: Restore refuses (ErrCorruptSnapshot, naming the field)
// any header, record or mark whose numbers no sequence of commands can
// reach, or that could overflow later arithmetic: incompatible shapes on
// a key, a holder's second live holding of a key, a multi-key grant whose
// members disagree or that has fewer than two, epoch <= MaxEpoch (a
// Promote above it is Invalid), now in [0, MaxNow], applied <= MaxIndex,
// tokens in [1, applied], request ids > 0, a held lease's expiry in
// (0, now+TTL], a lock-delay's expiry in (-lock-delay, now] (Promote can
// carry it below 0), a mark due at a positive multiple of MarkGranule no
// later than roundUp(now+MarkRetention), at most MaxMarks marks. The rapid
// model restores every state it reaches.
//
// monotonic-token: the fencing token of a grant is the Raft index of the
// granting entry, on every key of a multi-key grant. Indexes strictly
// increase, so tokens strictly increase per key (a key's holdings have
// distinct tokens, the newest grant the highest) and cluster-wide; a
// Batch may hold at most one Acquire so one index names one grant.
// Extends keep the token. For a resource shared by readers and writers,
// a writer's token is above that of every reader granted before it, so a
// resource that refuses writes below the highest token it has seen
// fences stale readers and writers alike.
//
// request-id order: an Acquire carries a request id that strictly
// increases per holder. Against the holder's live holdings of its keys
// the same id is a retry (same token, refreshed expiry, for the whole
// grant; a retry naming other keys is Stale), a higher id a new holding
// with a new token (replacing those holdings and their grants), and a
// lower id is Stale. Without the last rule a delayed old
// request could replace the live holding of the same client under a new
// token, and a third client could be granted the key while the first still
// believes its old holding valid. The order outlives the holding: the FSM
// keeps a mark per (key, holder) (see Mark) with the highest request id
// applied (granted, retried or refused Held) and whether the holding it
// started has ended (released, expired, replaced by a higher id, or the
// request was cancelled). An acquire below the mark, or at it once ended,
// is Stale, checked before the live-record rules; otherwise a delayed
// request arriving after the holding ended would start a holding nobody
// uses and block the key for its TTL and lock-delay (issue 9).
//
// The bound is honest, not absolute: a mark is kept MarkRetention (15 min)
// after its last update, rounded up to MarkGranule (1 min), and at most
// MaxMarks (2^20) are kept (above that the one with the earliest (due, key,
// holder) goes). MarkRetention is about Linux's TCP retransmission give-up
// (~15.4 min with tcp_retries2=15), after which no delayed copy of a
// request can arrive over the connection that carried it; it does not
// cover a node that holds a request longer than that (a process paused
// for 20 minutes, say). A request that arrives more than MarkRetention
// after the (key, holder) mark was last updated, or after its mark was
// dropped at the cap, is treated as new: at worst it creates a holding
// nobody uses, blocking the key for its TTL plus lock-delay, and never a
// second believed holder (its client no longer waits for the answer, and
// the grant's token is new). The end of an expired holding is dated at its
// expiry, and a mark that is due counts as gone, so no outcome depends on
// when the reaper ran. Promote keeps what each mark had left (at most a
// full retention, rounded up to the granule).
//
// # Memory and cost
//
// A key's records are a slice in token order with counts by mode (a
// keyState, 64 bytes, with room for one record inline), so the
// compatibility of a new holding is O(1), and finding a holder's own
// holding of a key, or the key's due records, is a scan of that key's
// records: a shared key with a thousand readers costs about 8 µs per
// acquire or release where a lone lease costs about 1 µs
// (BenchmarkApplySharedKey). A multi-key grant costs about one lone grant
// per key (BenchmarkApplyAcquireSet). The keyState is what shapes cost an
// exclusive lease: about 75 bytes more per lease than before them (a
// million leases: 366 MB peak heap against 290 MB, BenchmarkPromote1M).
//
// Every record is in the due queue (due.go) in reap order, (due, key,
// token): lanes of records sorted by due, one per TTL and one per
// lock-delay, and a small heap of the lanes. A grant or an extend sets a
// due of now + TTL, and now never goes back, so it is an unlink and an
// append, O(1); the binary heap before it sifted every extended lease
// from the front of the order (it was due first) to the back, a cache
// miss per level, most of a follower's CPU in keepalive. Extending a
// million leases 100 at a time went from 0.46–0.74 to 0.96–1.25 million
// leases/s, ten thousand from 2.6–3.4 (and 1.2 in a disturbed run) to
// 3.1–4.1 million (BenchmarkApplyExtend1M, BenchmarkApplyExtend100,
// alternated in one sitting). The price: a record is 16 bytes larger, a restore sorts the
// records by due (a million: 1.4–2.0 s became 2.0–2.6 s,
// BenchmarkRestore1M), and Promote's rebase walks them through the key
// index instead of the heap's array (10–12 ms became 40–45 ms,
// BenchmarkPromote1M).
//
// A request-id mark costs 189 bytes with a 30-byte key and a 60-byte
// holder (the mark, its own copies of both strings, its btree and heap
// slots; BenchmarkMarkMemory). A live holding has no mark of its own (its
// record carries the request id), so marks are kept only for holdings that
// ended and for refused requests, each for 15 to 16 minutes, and at most
// 2^20 of them: about 200 MB at the cap, and 1.4 GB with the longest
// keys and holders, which is why node's byte quota counts them
// (Stats.MarkBytes). A snapshot grows by about 35
// bytes per mark.
//
// # Why this gives mutual exclusion
//
// A client measures its lease's validity from the moment it sent the
// request that was granted or extended, on its own monotonic clock, and
// shortens it by the drift bound (node and lease own that side). The FSM
// sets expiry to at least now+TTL on the leader's clock, where now is read
// after the request arrived, so on any clock whose rate stays within the
// bound the server's expiry falls after the client's validity ends. Another
// holder is granted the key only once the FSM's clock passes that expiry
// (single-holder); within an epoch the FSM clock is the leader's, and across
// epochs no-early-expiry carries the time left over to a clock that started
// later than the last stamp it was measured by. The two believed holdings
// therefore never overlap in real time. Fencing tokens cover what clocks
// cannot: a paused client's late write carries a smaller token than the
// next holder's.
package fsm
