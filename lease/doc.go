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
//	defer l.Release(ctx)
//	doWork(l.Context(), l.Token())
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
// If extends keep failing, Expiring fires when the remaining validity
// falls below TTL/3, and the lease is declared lost shortly before
// ValidUntil: Done closes, Context is cancelled, IsHealthy turns false.
// Code that acts for the lease must watch one of them.
//
// Clocks cannot protect a resource against a holder that is paused after
// it checked its lease. Use the fencing token: Lease.Token strictly
// increases per key; send it with each write and let the resource refuse
// lower tokens (Fence), or ask the cluster with CheckToken.
//
// # Requests that lose their reply
//
// Every acquire carries a request id that strictly increases per Client.
// If a reply is lost, the client retries with the same id and the cluster
// answers with the same grant and token, so a lost reply never makes a
// client lose its own lease (the failure Amazon's Kinesis client hit). A
// write whose outcome cannot be settled is reported as ErrUnknownOutcome,
// never as a plain failure.
//
// # One Client, one holder
//
// Each Client is one holder (a random id with host and pid). A per-key
// local guard keeps a Client from competing with itself: TryAcquire of a
// key it holds returns nil, and Acquire waits for its own lease's Release.
// All leases of a Client are extended by one background loop, in one
// batched request per tick. A Lease dropped without Release is released
// by a cleanup when it is garbage collected.
//
// # Recipes
//
// Elector runs leader election (Run calls a function with a context that
// ends when leadership is lost; Observe follows the current leader and its
// value). Fence implements the resource side of fencing.
package lease
