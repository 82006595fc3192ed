package node

import (
	"context"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/transport/pb"
)

// A read's reply (Get, List, CheckToken, a Watch's listing page) pays
// the API budget for its holdings and bytes (replyCost) BEFORE it is
// built: its size is read from the FSM without copying anything
// (fsm.ViewList, fsm.ViewHoldings), the source's turns are paid for
// that, and only then is the reply built, a List page no larger than
// the keys paid for. It was built first and paid after: every List
// waiting for its turn held its page, values cloned (outsider review
// s35: 3,000 leases of 2,000-byte values, one /24 with 250 connections
// listing; 178 Lists parked in payUnits held 159 of the leader's 200 MB
// heap in bytes.Clone, the leader stepped down 4 times in 40 s and lost
// all 200 leases of a client beside the attack; RSS 929 MB).
//
// Invariant (reply-paid-before-built): a read served at the client API
// or for a forwarding node holds no copy of its reply's records while
// it waits for its turns; what the built reply costs beyond what was
// paid (it grew between sizing and building, or came from the leader
// through this follower, sized from this node's own state) is paid
// after, and is at most what changed meanwhile. Guarded by
// TestListsWaitingForTurnsHoldNoReplies.

// replyCost is what a read's reply costs beyond its request's own units
// (which it paid as it was read): apiUnitsPerListed a holding and its
// bytes (replyUnits). A List page of 1,000 keys, or a Get of a key with
// 3,000 shared holders (506 KB), cost 150 requests' work and more, paid
// as one (outsider reviews s33: 32 Lists in flight of keys with 1,000
// holders each made two leaders step down in a row), and a Get of a 64
// KiB value paid as much as one of an empty one (s34: 128 loops sent
// 2.6 GB in 30 s). Replies that carry no holdings cost nothing more.
func replyCost(reply any) int64 {
	h, ok := reply.(interface{ GetHoldings() []*pb.Lease })
	if !ok {
		return 0
	}
	units := int64(len(h.GetHoldings())) * apiUnitsPerListed
	if m, ok := reply.(proto.Message); ok {
		units += replyUnits(int64(proto.Size(m)))
	}
	return units - apiUnitsPerRequest
}

// replyUnits is what a reply's bytes cost beyond its holdings' units: as
// a request body's (bodyUnits), 16 units a KiB past the first 4 KiB.
// Encoding a reply costs about what decoding a body does, and more in
// JSON (values in base64): 128 watches re-reading a listing of 6,200
// leases of 2.9 KB at 2 units a lease took 105 MB/s of JSON from a
// leader, which stepped down four times (outsider re-probe s34).
func replyUnits(size int64) int64 { return bodyUnits(size) }

// listPaidKey carries the keys a List page was paid for (servePaidRead)
// in its context: listLocal builds no more.
type listPaidKey struct{}

// servePaidRead serves a read (serve) whose reply pays pay for its
// holdings and bytes (replyCost) before it is built: sized from this
// node's state (sizeRead), paid, then built, a List page of no more keys
// than were paid for; what the reply costs beyond (see
// reply-paid-before-built) is paid once it is built. A request that is
// not such a read, or a node without an API budget, is served as it is.
//
// Once paid, it takes room for the reply among the replies the node
// holds unsent (replyRoom) if ctx carries a hold for it (replyHold: the
// client API's unary calls, and reads forwarded to this node as leader),
// held until the reply is written or has failed (reply-room).
func servePaidRead[Resp any](ctx context.Context, n *Node, req any, pay func(context.Context, int64) error, serve func(context.Context) (Resp, error)) (Resp, error) {
	var zero Resp
	hold, _ := ctx.Value(replyHoldKey{}).(*replyHold)
	if n.apiWork == nil && hold == nil {
		return serve(ctx)
	}
	units, keys, size, ok := n.sizeRead(req)
	if !ok {
		return serve(ctx)
	}
	if err := pay(ctx, units); err != nil {
		return zero, err
	}
	if err := hold.take(ctx, size); err != nil {
		return zero, err
	}
	if _, list := req.(*pb.ListRequest); list {
		ctx = context.WithValue(ctx, listPaidKey{}, max(keys, 1))
	}
	resp, err := serve(ctx)
	if err != nil {
		return zero, err
	}
	if m, ok := any(resp).(proto.Message); ok {
		hold.grow(int64(proto.Size(m))) // what it grew by since it was sized
	}
	if extra := replyCost(resp) - units; extra > 0 {
		if err := pay(ctx, extra); err != nil {
			return zero, err
		}
	}
	return resp, nil
}

// sizeRead is what req's reply would cost (replyCost), sized from this
// node's state without copying it, its encoded size, and for a List the
// keys of its page; ok is false if req is no read whose reply carries holdings. Sizes are
// upper bounds of the encoded reply's (leaseSize), so that a reply built
// from the same state costs no more.
func (n *Node) sizeRead(req any) (units int64, keys int, size int64, ok bool) {
	_, now := n.fsm.Clock() // no later than a reply's: its remaining times are no shorter
	header := int64(proto.Size(n.header())) + 8
	var holdings int
	switch r := req.(type) {
	case *pb.GetRequest:
		n.fsm.ViewHoldings(r.GetKey(), func(hs []fsm.Lease) {
			for i := range hs {
				size += int64(leaseSize(&hs[i], now)) + 8
			}
			if len(hs) > 0 {
				size += int64(leaseSize(&hs[0], now)) + 8 // also the reply's lease
			}
			holdings = len(hs)
		})
		size += header + 8
	case *pb.CheckTokenRequest:
		n.fsm.ViewHoldings(r.GetKey(), func(hs []fsm.Lease) {
			var holder int
			for i := range hs {
				if hs[i].State == fsm.StateHeld {
					size += int64(leaseSize(&hs[i], now)) + 8
					holdings++
					holder = max(holder, len(hs[i].Holder))
				}
			}
			size += int64(holder) + 8
		})
		size += header + 32
	case *pb.ListRequest:
		keys, holdings, size = n.listSize(r, now)
		size += header + 8
	default:
		return 0, 0, 0, false
	}
	return int64(holdings)*apiUnitsPerListed + replyUnits(size) - apiUnitsPerRequest, keys, size, true
}

// listSize is the keys, holdings and bytes of the page listLocal would
// build for req from this node's state, by listLocal's own rule (a page
// ends between keys, before the one that would take it past
// Limits.MaxListBytes), read without copying anything.
func (n *Node) listSize(req *pb.ListRequest, now time.Duration) (keys, holdings int, size int64) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > maxListLimit {
		limit = maxListLimit
	}
	n.fsm.ViewList(req.GetPrefix(), req.GetAfter(), limit, func(hs []fsm.Lease) bool {
		keySize := int64(leaseSize(&hs[0], now)+8) * 2 // the key's lease, and among its holdings
		for i := 1; i < len(hs); i++ {
			keySize += int64(leaseSize(&hs[i], now) + 8)
		}
		if size+keySize > int64(n.cfg.Limits.MaxListBytes) && keys > 0 {
			return false
		}
		size += keySize
		keys++
		holdings += len(hs)
		return true
	})
	size += int64(len(req.GetPrefix()) + len(req.GetAfter()) + 16) // next, at most a key of the range
	return keys, holdings, size
}

// leaseSize is an upper bound of the encoded size of toPB(l, now),
// computed without building it (exact but for the remaining time's
// nanoseconds, counted at their longest); at an earlier now it is no
// smaller (remaining times are longer).
func leaseSize(l *fsm.Lease, now time.Duration) int {
	str := func(num protowire.Number, n int) int {
		if n == 0 {
			return 0
		}
		return protowire.SizeTag(num) + protowire.SizeBytes(n)
	}
	varint := func(num protowire.Number, v uint64) int {
		if v == 0 {
			return 0
		}
		return protowire.SizeTag(num) + protowire.SizeVarint(v)
	}
	dur := func(num protowire.Number, d time.Duration) int { // a durationpb.Duration, always set
		ns := d.Nanoseconds()
		secs, nanos := ns/1e9, int32(ns%1e9)
		return protowire.SizeTag(num) + protowire.SizeBytes(varint(1, uint64(secs))+varint(2, uint64(int64(nanos))))
	}
	size := str(1, len(l.Key)) + varint(3, l.Token) + dur(4, l.TTL) + dur(5, l.LockDelay) +
		str(6, len(l.Value)) + varint(9, uint64(l.Mode)) + varint(10, uint64(l.Limit)) + varint(11, l.Set)
	for _, k := range l.SetKeys {
		size += protowire.SizeTag(12) + protowire.SizeBytes(len(k))
	}
	// remaining: its seconds, and its nanoseconds at their longest
	remaining := func(d time.Duration) int {
		return protowire.SizeTag(8) + protowire.SizeBytes(varint(1, uint64(d/time.Second))+protowire.SizeTag(2)+protowire.SizeVarint(1e9-1))
	}
	switch l.State {
	case fsm.StateHeld:
		size += str(2, len(l.Holder)) + varint(7, uint64(pb.LeaseState_LEASE_STATE_HELD)) + remaining(max(l.Expiry-now, 0))
	case fsm.StateDelayed:
		size += varint(7, uint64(pb.LeaseState_LEASE_STATE_LOCK_DELAY)) + remaining(max(l.FreeAt()-now, 0))
	default:
		size += str(2, len(l.Holder))
	}
	return size
}
