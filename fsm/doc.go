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
// # Commands
//
// Promote starts an epoch. Acquire, Extend (a batch of one holder's leases),
// Release and Expire (reap what is due) change records; Batch applies
// several of them atomically in one entry, so a leader can release a key and
// grant it to the next waiter in one Raft round trip. Every refusal is a
// typed Result (Held, NotHeld, Stale, WrongEpoch, Invalid), identical on
// every replica.
//
// # Invariants
//
// fsm-determinism: replicas that apply the same entries hold the same state
// and write byte-identical snapshots. The clock is max(now, stamp.Now) within
// an epoch; iteration that reaches output (snapshots, Expire results) is in
// key or (due, key) order; Decode never panics and rejects every malformed
// entry with the same Invalid result.
//
// fatal-stop: an entry this replica must not apply, one from a newer format
// version or one whose CRC-32C does not match its bytes (format version 2
// checksums every entry), would make it diverge whether applied or skipped.
// The FSM then applies nothing from that entry on (every later entry gets
// a Fatal result; state, clock and applied index stay at the last good
// entry), and reports it once through Config.OnFatal so the node stops.
//
// single-holder: a key is granted to another holder only when the record's
// expiry plus lock-delay is <= the FSM's now, or after the holder released
// it while it was live. An extend of a lease whose expiry has passed fails
// even if no Expire has reaped it yet (no-extend-after-expiry), so a lease
// cannot be revived at the instant someone else is granted it. Expire
// re-checks what is due by the FSM's own clock: a leader's stale view can
// never delete a lease that was extended meanwhile.
//
// reaper-independence: no outcome depends on when the leader's reaper ran.
// Acquire, Extend, Release and Cancel first apply to their key's record
// exactly what Expire would if it ran now (the same events), so a late
// release of an expired lease is NotHeld and its lock-delay still runs.
//
// no-early-expiry: commands stamped with another epoch are refused
// (WrongEpoch), and Promote keeps the time each record had left at the last
// applied stamp: it first reaps what is due at the old clock, exactly as an
// Expire would (an expired but unreaped lease is never revived), then sets
// expiry' = promote.now + (expiry - old now) for leases and lock-delays
// alike. It is never early: every committed stamp of an earlier epoch was
// read before the new leader was elected (a deposed leader cannot commit),
// and the new epoch's clock starts at the election, so more real time has
// passed since each grant or extend than the old clock plus the new one
// show. It is not needlessly late either: a lease whose holder died expires
// on time even when leaders change faster than its TTL, which a full-TTL
// rebase never did.
//
// monotonic-token: the fencing token of a grant is the Raft index of the
// granting entry. Indexes strictly increase, so tokens strictly increase per
// key and cluster-wide; a Batch may hold at most one Acquire so one index
// names one grant. Extends keep the token.
//
// request-id order: an Acquire carries a request id that strictly
// increases per holder. From the holder listed in the record the same id is
// a retry (same token, refreshed expiry), a higher id a new holding with a
// new token, and a lower id is Stale. Without the last rule a delayed old
// request could replace the live holding of the same client under a new
// token, and a third client could be granted the key while the first still
// believes its old holding valid.
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
// later than the last stamp it was measured by. The two
// believed holdings therefore never overlap in real time. Fencing tokens
// cover what clocks cannot: a paused client's late write carries a smaller
// token than the next holder's.
package fsm
