// Package lease is the Go client of leasenode: distributed leases (locks
// with expiry) with fencing tokens, kept alive in the background.
//
// A Client talks to a cluster either embedded (New over a *node.Node of
// this process; the node forwards to the leader) or remote (Dial the
// client API of any nodes). Its API follows the Rust crate dynamodb-lease:
//
//	l, err := client.TryAcquire(ctx, "jobs/nightly") // nil, nil if held elsewhere
//	l, err := client.Acquire(ctx, "jobs/nightly")    // waits FIFO at the leader
//	l, err := client.AcquireTimeout(ctx, "jobs/nightly", 30*time.Second)
//	if err != nil {
//		return err // l is nil
//	}
//	defer l.Release(context.WithoutCancel(ctx)) // even when ctx was cancelled
//	doWork(l.Context(), l.Token())
//
// # Shapes
//
// A key is exclusive by default: one holder at a time. Three more shapes
// keep every rule of an exclusive lease (one clock, fencing tokens, FIFO
// handoff at the leader, batched extends, lock-delay, held leases that
// survive a failover). The wait queue is the leader's memory: after a
// leader change, waiters queue again at the new leader in the order their
// retries arrive.
//
//	l, err := client.Acquire(ctx, "pool/gpu", lease.Semaphore(4)) // one of 4 slots
//	l, err := client.Acquire(ctx, "config", lease.Shared())       // a reader
//	l, err := client.Acquire(ctx, "config")                       // the writer
//	l, err := client.AcquireSet(ctx, []lease.Item{                // both, or neither
//		{Key: "accounts/alice"}, {Key: "accounts/bob"},
//	})
//
// Which to use:
//
//   - Exclusive: one actor at a time (a job runner, a leader, a writer).
//   - Semaphore(n): at most n actors at a time (n workers on a rate-limited
//     API, n concurrent migrations). Every holder of a key must ask the
//     same n while any holds it; each holder has its own token and expiry.
//   - Shared and exclusive: a read-write lock. Any number of Shared holders
//     together, or one exclusive holder. A writer that waits stops newer
//     readers behind it (they queue after it), so readers cannot starve
//     it; the readers already holding finish first.
//   - AcquireSet: several keys at once, each in its own shape, all or none
//     in one Raft entry (a transfer between two accounts, a job that needs
//     a database and a queue). Nothing is held while it waits, so it never
//     holds part of a set, and two clients taking {a, b} and {b, a} cannot
//     deadlock: the leader queues waiters in one arrival order on every
//     key. The set has one token (the same on every key), one expiry, and
//     is extended and released as one: Release, expiry or loss of the
//     Lease frees every key together. Prefer it to acquiring keys one by
//     one in a fixed order: that holds some keys while waiting for others.
//
// What a token means for a resource shared by readers and writers: tokens
// are Raft indexes, so every grant of a key, shared or not, has a token
// above every grant before it. A write carrying token T, accepted by a
// resource that records the highest token it has seen (Fence), therefore
// fences every reader and writer that holds a lower token: a reader paused
// past its lease cannot act on what it read once a writer has written.
// Readers must not record their tokens (readers do not exclude each
// other, and a reader with token 8 would be refused after one with token
// 10): they check theirs with Fence.CheckRead, which refuses a token below
// the highest write admitted and records nothing. For a set,
// Lease.TokenFor(key) is the token to send with writes to key, and
// CheckToken(key, token) is true while any live holding of key has it.
// The holders of a Semaphore are like readers here: up to n hold at once,
// each with its own token, so a resource must not Fence.Check their
// writes (a live holder with token 8 would be refused once one with
// token 10 had written); check each write with Client.CheckToken, or
// give each slot a resource of its own and fence that.
//
// # Safety
//
// A Lease is certainly held until ValidUntil: the send time of the request
// that was last granted or extended, plus the TTL (plus the time it waited
// in the leader's queue, for a queued grant), shortened by the drift bound
// (1% by default). The cluster never grants the key to anyone else before
// one full TTL after that request reached its leader, measured on the
// leader's clock, so as long as clock rates differ by less than the drift
// bound, two clients never both believe they hold a key. Wall-clock skew
// between machines does not matter.
//
// An extend attempt waits at most 10 s, TTL/3 and half the validity
// left (never less than twice the latest round trip, or, before any
// extend was answered, two thirds of the validity left), so that a node that takes extends and never answers leaves
// time for at least two more attempts, which a remote client sends to
// the other nodes first. If extends keep failing, Expiring fires when
// the remaining validity falls below TTL/3, and the lease is declared lost shortly before
// ValidUntil: Done closes, Context is cancelled, IsHealthy turns false.
// Code that acts for the lease must watch one of them.
//
// When a lease ends (Release, or declared lost), ValidUntil becomes the
// moment it ended and never moves again, even if an extend reply arrives
// later; IsHealthy is false from then on. After a loss the client releases
// the record in the background, but only once the ValidUntil in force
// before the loss has passed, so a value read before the loss stays true:
// the cluster cannot grant the key to anyone else before it.
//
// Clocks cannot protect a resource against a holder that is paused after
// it checked its lease. Nor do they see a host's suspend (a laptop's
// sleep, some VMs' suspend): validity is measured on Go's monotonic
// clock, which on Linux stops while the host is suspended, so right
// after a resume IsHealthy may say true of a lease that expired in the
// cluster meanwhile, until the next extend fails. Use the fencing token: Lease.Token strictly
// increases per key; send it with each write and let the resource refuse
// lower tokens (Fence), or ask the cluster with CheckToken.
//
// # Requests that lose their reply
//
// Every acquire carries a request id that strictly increases per Client.
// If a reply is lost, the client retries with the same id and the cluster
// answers with the same grant and token, so a lost reply never makes a
// client lose its own lease (the failure Amazon's Kinesis client hit). The
// cluster remembers each holder's ids per key after a holding ends, so a
// delayed copy of an old request can never start a holding nobody uses.
// If the leader that proposed a request could not report its outcome, it
// withdraws that id (only its own proposal's grant, never a grant another
// attempt of the request was answered with). A retry that finds its id
// spent (its grant expired unseen, or was withdrawn) goes on with a new
// id; if the call then ends without a grant it reports ErrUnknownOutcome,
// never a refusal: the first grant was applied and may have been seen. An
// acquire whose caller gave up (ctx, AcquireTimeout) while an attempt's
// outcome was unknown is settled with the cluster's Abandon: it spends the
// request id in the log, so a copy of the attempt that reaches the leader
// afterwards (held up in a paused node) is refused, never granted; it
// releases the grant if there was one; and only an answer that the request
// was never granted becomes a refusal (a *HeldError naming the holder).
// Settled so, with nothing held (the grant released, or withdrawn by the
// leader first), the call reports the context's error alone, unless an
// earlier id of it was found spent (ErrUnknownOutcome, as above). A
// refusal that follows an attempt whose reply was lost is settled the same
// way before it is reported, since that attempt may still be on its way.
// A write whose outcome cannot be settled is reported as
// ErrUnknownOutcome, never as a plain failure.
//
// # One Client, one holder
//
// Each Client is one holder: a name (WithHolder, default host/pid) plus an
// incarnation drawn at random by New, written name#incarnation
// (Client.Holder). Two Clients are never the same holder, so a process
// restarted under the same name, or a duplicate of it, waits for the old
// one's leases like any other client instead of taking them over. A
// per-key local guard keeps a Client from competing with itself:
// TryAcquire of a key it holds returns nil, and Acquire waits for its own
// lease's Release. All leases of a Client are extended by one background
// loop, in one request per tick: a sum of all of them (a count and a
// digest of their keys and tokens) that the cluster extends in one small
// entry if it holds exactly those leases for the Client, and otherwise,
// or on a cluster that predates it, requests naming the leases (at most
// 4,096 each, and 64 KiB: a node reads larger bodies only with room in a
// pool that other clients may hold), whose answers say which ended. A Lease
// dropped without Release is released by a cleanup when it is garbage
// collected, once the validity it had ends (a ValidUntil, Context or
// Token taken from it before may still be acted on), and left to expire
// by its TTL if the Client closes first: keep a reference to every Lease
// you mean to hold, and Release what you are done with.
//
// # How long a call takes
//
// A backend makes one attempt per request; RetryPolicy, the only retry
// loop, repeats attempts that certainly had no effect (no leader, not the
// leader, a request never written, a node refusing it as overloaded before
// reading it) and idempotent ones whose outcome is unknown, with back-off,
// until ctx ends or failures have lasted the retry timeout
// (WithRetryTimeout, default 10 s), then fails with an error matching
// ErrNoLeader (ErrOverloaded if the last refusal was the overload; or
// ErrUnknownOutcome if an attempt may have been applied). A leader that cannot commit (it leads, but too few voters
// store its log: their disks hang, or the network drops what they are
// sent) refuses requests before applying them; they are retried like "no
// leader", since the stall may end (a disk thaws, a leader whose own disk
// hangs gives way to another), and the error that ends them is then a
// *CommitStallError naming the leader and the voters behind, which still
// matches ErrNoLeader. So, with d the time until ctx's deadline and r the
// retry timeout:
//
//   - Release, Get, List, CheckToken: at most min(d, r plus one attempt,
//     itself bounded by r);
//   - TryAcquire: the same, and Acquire and AcquireTimeout: as long as the
//     wait (ctx, maxWait), but no more than r of continuous failures; for
//     all three, an attempt whose outcome was unknown when ctx ended adds
//     one settling round trip of at most 1 s (an Abandon: the leader that
//     proposed the attempt also withdraws it). If that settling fails, or
//     r ends on an attempt whose outcome is unknown, the call returns
//     ErrUnknownOutcome and the Client goes on settling it in the
//     background (and once more in Close), so that a grant nobody heard of
//     is released once the cluster commits again instead of blocking the
//     key for its TTL;
//   - Close: bounded by its ctx.
//
// A request to a node that stopped answering (its process stopped or cut
// off, its connections open) ends after about three times the peer
// timeout (WithPeerTimeout, default 1 s: a second of silence, then a
// liveness check unanswered for two) and counts as a lost reply, retried on
// another node; a node that answers the checks but held a request that
// never waits (all but a waiting acquire) until its caller gave up is
// tried after the other nodes for a while; a follower ends a request it forwarded as soon as Raft
// names another leader.
//
// The cluster answers "no leader" before a caller's deadline, saying what
// it sees (for example "waiting to bootstrap: 1 of 3 expected nodes
// seen").
//
// # Recipes
//
// Elector runs leader election (Run calls a function with a context that
// ends when leadership is lost; Observe follows the current leader and its
// value). Fence implements the resource side of fencing.
package lease
