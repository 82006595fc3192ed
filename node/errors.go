package node

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/transport/pb"
)

// Errors returned by Node's operations. They survive forwarding between
// nodes (carried as a pb.Reason, never matched by string), so errors.Is
// works on every node.
var (
	// ErrNotLeader: this node is not the leader. Retryable; the error is a
	// *LeaderError naming the leader when known.
	ErrNotLeader error = &reasonError{pb.Reason_REASON_NOT_LEADER, "node: not the leader"}
	// ErrNoLeader: the cluster has no leader right now (election, or no
	// quorum). Retryable.
	ErrNoLeader error = &reasonError{pb.Reason_REASON_NO_LEADER, "node: no leader"}
	// ErrInvalid: the request breaks a limit (empty key, TTL out of range,
	// value too large...). Not retryable.
	ErrInvalid error = &reasonError{pb.Reason_REASON_INVALID, "node: invalid request"}
	// ErrUnknownOutcome: the write was sent but its result is unknown (the
	// leader lost leadership mid-apply, a connection broke, the deadline
	// passed). It may or may not have been applied; an acquire can be
	// resolved by retrying with the same request id.
	ErrUnknownOutcome error = &reasonError{pb.Reason_REASON_UNKNOWN_OUTCOME, "node: outcome unknown"}
	// ErrStaleRequest: an acquire's request id is older than the one the
	// holder's current holding was granted with.
	ErrStaleRequest error = &reasonError{pb.Reason_REASON_STALE_REQUEST, "node: stale request id"}
	// ErrClosed: the node is shutting down.
	ErrClosed error = &reasonError{pb.Reason_REASON_CLOSED, "node: closed"}
	// ErrFatal: the node met a Raft entry it cannot apply (written by a
	// newer version, or damaged) and stopped rather than diverge, or its
	// log store failed to write (a full disk) and it stopped rather than
	// fall behind for good while it looked well. It is reported by
	// Node.Err; requests to such a node fail with ErrClosed.
	ErrFatal = errors.New("node: stopped: it cannot apply or store the Raft log")
	// ErrUnauthenticated: the API call lacked the configured auth token.
	ErrUnauthenticated error = &reasonError{pb.Reason_REASON_UNAUTHENTICATED, "node: unauthenticated"}
	// ErrTooManyWatches: the node has Limits.MaxWatches watches open, or
	// the caller's source its share of them; the client API answers it
	// resource_exhausted, which a client takes as final, not as a
	// stream to open again at once.
	ErrTooManyWatches error = &reasonError{pb.Reason_REASON_RESOURCE_EXHAUSTED, "node: too many watches"}
	// ErrTooManyWaiters: a waiting acquire would pass Limits.MaxWaiters,
	// the waiting acquires this node serves at once; the client API
	// answers it resource_exhausted. Not retryable at once: a waiter
	// ends only when it is granted or gives up.
	ErrTooManyWaiters error = &reasonError{pb.Reason_REASON_RESOURCE_EXHAUSTED, "node: too many waiting acquires"}
	// ErrTooManyReplies: a read's reply waited too long for room among
	// the replies the node holds unsent (their clients had not read
	// them), or its source held its share of that room. Nothing was
	// applied (it is a read): REASON_OVERLOADED, which clients retry with
	// back-off, and the client API answers unavailable.
	ErrTooManyReplies error = &reasonError{pb.Reason_REASON_OVERLOADED, "node: too many unread replies"}
	// ErrTooManyPending: too many requests of the caller's source, or of
	// the node, wait for their bodies (see pending-bodies); refused at
	// its headers, before its body is read, so nothing was applied:
	// REASON_OVERLOADED, answered unavailable. (As resource_exhausted,
	// final, it ended a waiting Acquire at once and left a refused
	// Release's key held for its TTL: adversarial review s39.)
	ErrTooManyPending error = &reasonError{pb.Reason_REASON_OVERLOADED, "node: too many requests waiting for their bodies"}
	// ErrBodyRefused: a request's body over 4 KiB was not read: it waited
	// the read timeout for its source's turn or for room among the large
	// bodies, arrived too slowly to keep its room, or was one too many
	// waiting on its HTTP/2 connection. Nothing of it was applied:
	// REASON_OVERLOADED, answered unavailable (as resource_exhausted
	// without a reason the lease client took it as a maybe-applied
	// failure, and an Extend's as a batch too large to send).
	ErrBodyRefused error = &reasonError{pb.Reason_REASON_OVERLOADED, "node: request body not read"}
)

// AddrError is Start's refusal of an address it cannot listen on (in use,
// not this host's), found before anything is written to the data dir.
// Setting names the Config field (BindAddr, GossipAddr, APIAddr), so that
// a program can name its own flag.
type AddrError struct {
	Setting, Addr string
	Err           error
}

func (e *AddrError) Error() string {
	if errors.Is(e.Err, syscall.EADDRINUSE) {
		if lo, hi, ok := ephemeralPorts(); ok {
			if _, p, err := net.SplitHostPort(e.Addr); err == nil {
				if port, err := strconv.Atoi(p); err == nil && lo <= port && port <= hi {
					return fmt.Sprintf("%s %s is in use (another agent? The port is in this host's ephemeral range, %d-%d, where every outgoing connection takes its source port, and a closed one holds it for a minute: choose a port below %d)",
						e.Setting, e.Addr, lo, hi, lo)
				}
			}
		}
		return fmt.Sprintf("%s %s is in use (another agent?)", e.Setting, e.Addr)
	}
	return fmt.Sprintf("%s %s: %v", e.Setting, e.Addr, e.Err)
}

// ephemeralPorts is the kernel's range of source ports for outgoing
// connections (Linux; ok false elsewhere).
func ephemeralPorts() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil
}

func (e *AddrError) Unwrap() error { return e.Err }

// reasonError is a sentinel that knows its wire reason. Its Reason method
// lets packages that must not import node (lease) classify node errors
// with errors.As, exactly as they classify errors from a remote node.
type reasonError struct {
	reason pb.Reason
	msg    string
}

func (e *reasonError) Error() string { return e.msg }

// Reason reports the wire reason of the error.
func (e *reasonError) Reason() pb.Reason { return e.reason }

// LeaderError is ErrNotLeader or ErrNoLeader with a hint of where the
// leader is, or (no leader) what the answering node sees.
type LeaderError struct {
	Err        error // ErrNotLeader or ErrNoLeader
	LeaderID   string
	LeaderAddr string // the leader's client API address
	// Detail says why there is no leader, as the answering node sees it
	// (e.g. "waiting to bootstrap: 1 of 3 expected nodes seen").
	Detail string
	// Stall is set on ErrNoLeader from a leader that cannot commit (it
	// leads, but nothing it proposed has committed for a while): which
	// voters are behind, for how long. It crosses the wire as
	// ErrorDetail.commit_stall.
	Stall *pb.CommitStall
}

// CommitStall is e.Stall: a package that must not import node (lease)
// finds it with errors.As on an interface with this method.
func (e *LeaderError) CommitStall() *pb.CommitStall { return e.Stall }

func (e *LeaderError) Error() string {
	msg := e.Err.Error()
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.LeaderID == "" {
		return msg
	}
	return fmt.Sprintf("%s (leader is %s at %s)", msg, e.LeaderID, e.LeaderAddr)
}

func (e *LeaderError) Unwrap() error { return e.Err }

var reasons = []struct {
	err    error
	reason pb.Reason
}{
	// Unknown outcome first: an error that is both (a waiter cut off by a
	// leader change while its grant was in flight) must not look retryable
	// as if nothing happened.
	{ErrUnknownOutcome, pb.Reason_REASON_UNKNOWN_OUTCOME},
	{ErrNotLeader, pb.Reason_REASON_NOT_LEADER},
	{ErrNoLeader, pb.Reason_REASON_NO_LEADER},
	{ErrInvalid, pb.Reason_REASON_INVALID},
	{ErrStaleRequest, pb.Reason_REASON_STALE_REQUEST},
	{ErrClosed, pb.Reason_REASON_CLOSED},
	{ErrUnauthenticated, pb.Reason_REASON_UNAUTHENTICATED},
	{ErrTooManyWaiters, pb.Reason_REASON_RESOURCE_EXHAUSTED},
	{ErrTooManyWatches, pb.Reason_REASON_RESOURCE_EXHAUSTED},
	{ErrTooManyReplies, pb.Reason_REASON_OVERLOADED},
	{ErrTooManyPending, pb.Reason_REASON_OVERLOADED},
	{ErrBodyRefused, pb.Reason_REASON_OVERLOADED},
}

// ErrorDetail describes err for the wire.
func ErrorDetail(err error) *pb.ErrorDetail {
	d := &pb.ErrorDetail{}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			d.Reason = r.reason
			break
		}
	}
	var le *LeaderError
	if errors.As(err, &le) {
		d.LeaderId, d.LeaderAddr, d.CommitStall = le.LeaderID, le.LeaderAddr, le.Stall
	}
	var sl *sizeLimitError
	d.SizeLimit = errors.As(err, &sl)
	return d
}

// sizeLimitError is ErrInvalid for a size limit of the cluster's state
// (Limits.MaxLeaseBytes). The client API answers it resource_exhausted, as
// the README says of size limits (it answered invalid_argument, found by
// an outsider's review), while its wire reason stays REASON_INVALID:
// clients take it as final, as they always have. ErrorDetail's SizeLimit
// carries it across the node RPC, so a follower that forwarded the request
// answers the same code.
type sizeLimitError struct{ err error }

func (e *sizeLimitError) Error() string { return e.err.Error() }
func (e *sizeLimitError) Unwrap() error { return e.err }

// ErrorFromDetail rebuilds an error from its wire form, so that errors.Is
// recognises the sentinel it started from.
func ErrorFromDetail(d *pb.ErrorDetail, msg string) error {
	for _, r := range reasons {
		if d.GetReason() == r.reason {
			if r.err == ErrNotLeader || r.err == ErrNoLeader {
				le := &LeaderError{Err: r.err, LeaderID: d.GetLeaderId(), LeaderAddr: d.GetLeaderAddr(), Stall: d.GetCommitStall()}
				if msg != "" && msg != le.Error() {
					le.Detail = strings.TrimPrefix(strings.TrimPrefix(msg, r.err.Error()), ": ")
				}
				return le
			}
			var err error = &remoteError{err: r.err, msg: msg}
			if msg == "" || msg == r.err.Error() {
				err = r.err
			}
			if d.GetSizeLimit() {
				err = &sizeLimitError{err: err}
			}
			return err
		}
	}
	return errors.New(msg)
}

// remoteError keeps a remote node's message and the sentinel it carried.
type remoteError struct {
	err error
	msg string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }

func encodeRPCError(err error) []byte {
	b, _ := proto.Marshal(&pb.RPCError{Detail: ErrorDetail(err), Message: err.Error()})
	return b
}

func decodeRPCError(b []byte) error {
	var e pb.RPCError
	if err := proto.Unmarshal(b, &e); err != nil {
		return fmt.Errorf("undecodable error from peer: %w", err)
	}
	return ErrorFromDetail(e.GetDetail(), e.GetMessage())
}
