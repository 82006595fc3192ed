package lease

import (
	"context"

	"github.com/leasenode/leasenode/transport/pb"
)

// EventType says what happened to a key.
type EventType string

// Event types.
const (
	Granted  EventType = "granted"
	Released EventType = "released"
	Expired  EventType = "expired"
	// Freed: a lock-delay ended; the key is free.
	Freed EventType = "freed"
	// Reset: the watch fell behind or the node restored a snapshot; re-read
	// the state with List. The channel closes after it.
	Reset EventType = "reset"
	// Broken: the stream ended before the watch did (not by its ctx nor
	// Close): a node's limit cut it (the agent's --max-conns, or a client
	// address's share of it, --max-frame-rate, --max-watches), or the node
	// stopped, restarted or shut down. Err says why, naming the limit
	// where it is known: "node ADDR is shutting down (it closed the
	// stream)" for a graceful stop, "connection to ADDR lost" for a
	// connection cut under the stream (a killed node, or a limit that
	// closes connections). The channel closes after it; watch again to
	// resume (raise the limit if it is one).
	Broken EventType = "broken"
	// Listed follows the Current events a stream begins with: they were
	// every holding up to its Index, so one a consumer knew of from an
	// earlier stream, granted at or below that Index and not among them,
	// has ended meanwhile (see Client.Watch). (Servers older than this
	// event send none.)
	Listed EventType = "listed"
)

// Event is one change to a lease record.
type Event struct {
	Type EventType
	// Index is the Raft index of the change.
	Index uint64
	Key   string
	// Holder, Token and Value describe the holding the event is about; a
	// key may have several (Shared, Semaphore), told apart by holder and
	// token. A Granted event for a holder replaces its earlier holding of
	// the key, if any.
	Holder string
	Token  uint64
	Value  []byte
	// Shared, Semaphore and Set describe the holding's shape (Set: the
	// token of its multi-key lease, 0 if alone).
	Shared    bool
	Semaphore int
	Set       uint64
	// Current marks an event of the listing a stream begins with: a
	// Granted one is a holding current when the watch started, granted at
	// Index, not a grant made since; an Expired one a key whose holding
	// (granted at Index) expired and whose lock-delay still runs: nobody
	// holds it, and a Freed event follows when the lock-delay ends. (False
	// from servers older than this field; servers of before the Expired
	// listing list such a key as a Granted event with no Holder.)
	Current bool
	// Err is why the stream broke (Broken events only).
	Err error
}

// Watch streams changes to keys starting with prefix, in the order the
// cluster applied them, beginning with one Granted event per current
// holding, marked Current (a key held by several holders has one per
// holder; a multi-key lease one per key), and one Expired event, marked
// Current, per key in its lock-delay. Extends are not reported (a
// grant stays in force until a Released or Expired event). The channel
// closes when ctx ends or the stream breaks (after a Reset event if it
// fell behind, or after a Broken event saying why, over the network);
// watch again to resume. Close ends it. Watch fails as a
// read does (ErrNoLeader after the retry timeout) when no node answers,
// so a loop that watches again does not spin while the cluster is down.
//
// A stream served by a follower reports a change once the follower has
// learnt that it committed: on an idle cluster up to twice the commit
// timeout (node.Timing.CommitTimeout, 1 s by default; 250 ms with fast
// timing) after the grant or release was answered; one served by the
// leader, at once. (A Client dialled over the network watches through
// the leader it knows; one embedded in a follower, through that follower.)
//
// Within one stream, events after the current holdings have increasing
// indexes above theirs. A watch started again may be served by a node that
// has not applied everything the earlier one had (after a leader change):
// skip its events whose Index is at or below the last one handled (as
// `leasenode watch` does), unless the earlier stream ended with Reset.
// Its listing ends with a Listed event, which is never to be skipped: a
// holding an earlier stream reported, granted at or below the Listed
// event's Index (its Token), and not named in the listing as held ended
// while no stream was open (its Released or Expired event went to no
// stream); one the listing names as Expired (Current: a key in its
// lock-delay) has ended too, and that event is not to be skipped either.
// One granted after that index may simply not have reached the node
// serving this stream yet: keep it (its Granted event comes later, and
// may be skipped by the rule above).
func (c *Client) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	if err := c.readable("watch", "prefix", prefix); err != nil {
		return nil, err
	}
	// Opening a stream says nothing of a cluster that is down: the stream
	// just ends, at once and without an event, and a caller watching
	// again in a loop (as the doc above says to) spun thousands of times
	// a second (new-user review). A read of one holding first, with the
	// retries of any read, says whether a node answers: if none does,
	// Watch returns that error (ErrNoLeader after the retry timeout).
	if _, err := retryRead(ctx, c, func(ctx context.Context) (*pb.ListResponse, error) {
		return c.b.List(ctx, &pb.ListRequest{Prefix: prefix, Limit: 1})
	}); err != nil {
		return nil, classify("watch", prefix, err)
	}
	// Close ends the stream, as it ends everything else of the Client.
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.closing, cancel)
	req := &pb.WatchRequest{Prefix: prefix, Initial: true, Listed: true}
	var in <-chan *pb.WatchEvent
	var ended func() error // why in closed, if the backend says
	var err error
	if r, ok := c.b.(*Remote); ok {
		in, ended, err = r.watchEnds(ctx, req)
	} else {
		in, err = c.b.Watch(ctx, req)
	}
	if err != nil {
		stop()
		cancel()
		return nil, classify("watch", prefix, err)
	}
	out := make(chan Event, 64)
	go func() {
		defer close(out)
		defer cancel()
		defer stop()
		for e := range in {
			l := e.GetLease()
			ev := Event{Type: eventType(e.GetType()), Index: e.GetIndex(), Key: l.GetKey(),
				Holder: l.GetHolder(), Token: l.GetToken(), Value: l.GetValue(), Set: l.GetSet(),
				Shared: l.GetMode() == pb.LeaseMode_LEASE_MODE_SHARED, Current: e.GetCurrent()}
			if l.GetMode() == pb.LeaseMode_LEASE_MODE_SEMAPHORE {
				ev.Semaphore = int(l.GetLimit())
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
		// A stream that broke says why, rather than closing as if the
		// watch had ended: a program past a node's limit learns which.
		if ended == nil || ctx.Err() != nil {
			return
		}
		if err := ended(); err != nil {
			select {
			case out <- Event{Type: Broken, Err: classify("watch", prefix, err)}:
			case <-ctx.Done():
			}
		}
	}()
	return out, nil
}

func eventType(t pb.EventType) EventType {
	switch t {
	case pb.EventType_EVENT_TYPE_GRANTED:
		return Granted
	case pb.EventType_EVENT_TYPE_RELEASED:
		return Released
	case pb.EventType_EVENT_TYPE_EXPIRED:
		return Expired
	case pb.EventType_EVENT_TYPE_FREED:
		return Freed
	case pb.EventType_EVENT_TYPE_LISTED:
		return Listed
	}
	return Reset
}
