package lease

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/transport/pb"
)

// Errors of the lease package; test them with errors.Is.
var (
	// ErrHeld: another holder has the key. Errors that wrap it are
	// *HeldError and say who, and how long the key is not free unless
	// released (the rest of the grant and any lock-delay; longer if the
	// grant is extended).
	ErrHeld = errors.New("lease: held by another holder")
	// ErrNotHolder: the cluster says this client does not hold the lease
	// (it expired, or was released).
	ErrNotHolder = errors.New("lease: not the holder")
	// ErrLeaseLost: the lease could not be extended before its validity
	// ran out, or the cluster said it is no longer held. Do not touch the
	// protected resource any more. From TryAcquire and TryAcquireSet it
	// means the grant's answer arrived after its validity: it was
	// released, and nothing is held.
	ErrLeaseLost = errors.New("lease: lost")
	// ErrReleased: the lease was released by Release or Client.Close.
	ErrReleased = errors.New("lease: released")
	// ErrNoLeader: no cluster leader could be reached in time. Retryable.
	ErrNoLeader = errors.New("lease: no leader reachable")
	// ErrUnknownOutcome: a write was sent but its result could not be
	// learned (leader change mid-write, connection cut, deadline). It may
	// have taken effect.
	ErrUnknownOutcome = errors.New("lease: outcome unknown")
	// ErrTimeout: AcquireTimeout waited maxWait without being granted.
	ErrTimeout = errors.New("lease: timed out waiting")
	// ErrInvalid: the request breaks a limit (empty key, TTL out of range,
	// value too large).
	ErrInvalid = errors.New("lease: invalid request")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("lease: client closed")
	// ErrStaleToken: Fence refused a write carrying a token older than one
	// it has seen.
	ErrStaleToken = errors.New("lease: stale fencing token")
	// ErrTLSSetup: the client's TLS settings (WithTLS) do not fit the
	// node's: plain HTTP to a TLS port or the reverse, a node certificate
	// the client cannot verify, or a client certificate the node
	// requires and did not get. Retrying cannot help; the error says what
	// to set.
	ErrTLSSetup = errors.New("lease: TLS settings do not fit the node's")
	// ErrWrongPort: every address given answered as a leasenode node port
	// (Raft and node RPC), gossip or probe port, or as an HTTP server
	// without the call (404), not as the client API: give the agents'
	// --api addresses. Retrying cannot help.
	ErrWrongPort = errors.New("lease: not a client API address")
	// ErrTooManyWaiters: a waiting acquire (Acquire, AcquireTimeout) found
	// its key held while the node it went through, or the leader, served
	// its limit of waiting acquires (the agent's --max-waiters). It is not
	// retried (a waiter ends only when granted or given up): try again
	// later, use TryAcquire, or raise the limit. The error says which.
	ErrTooManyWaiters = errors.New("lease: too many waiting acquires")
	// ErrOverloaded: the nodes refused the call, before reading or
	// applying any of it, for as long as it retried (the retry timeout,
	// 10 s by default): too many requests wait for their bodies (on the
	// node, or from the caller's address's /24), or too many replies
	// wait to be read. Nothing was applied. Retryable: each refusal is
	// retried with back-off until then. Another client of the same
	// address or network holding requests open is the usual cause.
	ErrOverloaded = errors.New("lease: nodes overloaded")
	// ErrTooManyWatches: Watch was refused by every node it tried, each
	// serving its limit of watch streams (the agent's --max-watches) or
	// its limit for the caller's address (a quarter of it). The error
	// says which; end a watch, watch one shorter prefix instead of many,
	// or raise the limit. Watching again at once cannot help.
	ErrTooManyWatches = errors.New("lease: too many watches")
)

// TLSSetupError is ErrTLSSetup from one node: what did not fit, for a
// tool to name its own setting (the CLI's --tls-ca, say).
type TLSSetupError struct {
	Addr    string
	Problem TLSProblem
	Err     error // the transport's error
}

func (e *TLSSetupError) Error() string {
	return fmt.Sprintf("%v: %s: %s (%v)", ErrTLSSetup, e.Addr, e.Problem.hint(), e.Err)
}

// Unwrap makes errors.Is match ErrTLSSetup.
func (e *TLSSetupError) Unwrap() error { return ErrTLSSetup }

// TLSProblem is the way a client's TLS settings do not fit a node's.
type TLSProblem int

// The TLS problems (TLSProblemOf tells them).
const (
	// TLSUnverified: the node's certificate failed verification (an
	// unknown CA, or it does not name the address dialed).
	TLSUnverified TLSProblem = iota + 1
	// TLSClientCertRequired: the node refused the handshake: it takes
	// clients with a certificate of the cluster's CA.
	TLSClientCertRequired
	// TLSNodeIsPlain: TLS to a node that serves plain HTTP (or to a port
	// that does not speak TLS at all, as the gossip port).
	TLSNodeIsPlain
	// TLSNodeRequiresTLS: plain HTTP to a node that requires TLS.
	TLSNodeRequiresTLS
)

// hint says, in this package's terms, what to set.
func (p TLSProblem) hint() string {
	switch p {
	case TLSUnverified:
		return "the node's certificate failed verification: trust the CA that signed the cluster's certificates (WithTLS, RootCAs) and dial an address the certificate names (or set ServerName to a name it carries)"
	case TLSClientCertRequired:
		return "the node refused this client's TLS handshake: it takes clients with a certificate of the cluster's CA (WithTLS, Certificates); " +
			"if one was given, the address may be a node port, which takes node certificates only: dial the agents' client API addresses"
	case TLSNodeIsPlain:
		return "the address answered without TLS: a node serving plain HTTP (dial it without WithTLS), or a port that is not the client API (dial the agents' client API addresses)"
	case TLSNodeRequiresTLS:
		return "the node requires TLS: give WithTLS the cluster's CA (RootCAs) and, if it asks for client certificates, one of them (Certificates)"
	}
	return "TLS settings do not fit"
}

// HeldError is ErrHeld with details.
type HeldError struct {
	Key    string
	Holder string // empty while the key is in lock-delay, or when only waiters come first (Wait 0)
	// Own says the holder is this Client: a lease of it that is live, an
	// acquire of the key in progress in another goroutine, a dropped
	// lease until its validity has passed, or, in the cluster, a lost
	// lease until its expiry (its lock-delay follows, held by nobody).
	Own bool
	// Wait is how long the holder's current grant had left when asked (by
	// the leader's clock), or the lock-delay: the key is free no sooner
	// unless it is released, and later if the holder extends, as a live
	// holder does for as long as it runs. It is not a bound on the wait.
	Wait time.Duration
	// Err is what ended the attempt (ErrTimeout for AcquireTimeout).
	Err error
}

func (e *HeldError) Error() string {
	var msg string
	switch {
	case e.Own:
		msg = fmt.Sprintf("lease %q held by this Client (%s): by a lease of it that is live, an acquire of it in progress, a dropped lease until its validity passed, or a lost lease until its expiry (then it is in its lock-delay); not free for %v",
			e.Key, e.Holder, e.Wait.Round(100*time.Millisecond))
	case e.Holder != "":
		msg = fmt.Sprintf("lease %q held by %s: not free for %v unless released sooner (the rest of its grant, and its lock-delay if it has one), longer if extended", e.Key, e.Holder, e.Wait.Round(100*time.Millisecond))
	case e.Wait > 0:
		msg = fmt.Sprintf("lease %q held by nobody: in its lock-delay for %v more", e.Key, e.Wait.Round(100*time.Millisecond))
	default:
		// The cluster would admit this holding, but clients queued for
		// the key before it come first (fifo-no-barging).
		msg = fmt.Sprintf("lease %q: clients waiting for it since before this request come first", e.Key)
	}
	if e.Err != nil {
		msg = e.Err.Error() + ": " + msg
	}
	return msg
}

// Unwrap makes errors.Is match ErrHeld and e.Err.
func (e *HeldError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrHeld}
	}
	return []error{ErrHeld, e.Err}
}

// CommitStallError is a leader's refusal while it cannot commit: it
// leads (a quorum of voters answers its heartbeats, which touch no disk)
// but nothing it proposed has committed for For, because the voters in
// Behind have not stored its log (their disks hang, or the network drops
// what they are sent), or, with OwnDisk, its own log write hangs. Nothing
// was applied. It matches ErrNoLeader; retrying helps once the stall
// ends (a disk thaws, or a leader whose own disk hangs gives way to
// another), which is why the retry policy retries it until its timeout.
// Err is the leader's refusal in its own words.
type CommitStallError struct {
	Leader  string
	For     time.Duration
	Behind  []string
	OwnDisk bool
	Err     error
}

func (e *CommitStallError) Error() string {
	var msg string
	switch {
	case e.OwnDisk || len(e.Behind) == 0:
		msg = fmt.Sprintf("leader %s cannot commit: every other voter stored its entries, but its own log write has not returned for %v (its disk may be hung)", e.Leader, e.For.Round(100*time.Millisecond))
	case len(e.Behind) == 1:
		msg = fmt.Sprintf("leader %s cannot commit: voter %s has not stored its entries for %v (its disk, or the network)", e.Leader, e.Behind[0], e.For.Round(100*time.Millisecond))
	default:
		msg = fmt.Sprintf("leader %s cannot commit: voters %s have not stored its entries for %v (their disks, or the network)", e.Leader, strings.Join(e.Behind, ", "), e.For.Round(100*time.Millisecond))
	}
	if e.Err != nil {
		// The leader's own words carry each voter's Raft replies.
		words := describe(e.Err)
		if _, rest, ok := strings.Cut(words, " cannot commit: "); ok {
			words = rest
		}
		msg += "; the leader says: " + words
	}
	return msg
}

// Unwrap makes errors.Is match ErrNoLeader and the leader's refusal.
func (e *CommitStallError) Unwrap() []error { return []error{ErrNoLeader, e.Err} }

// stallOf is the commit stall a leader's refusal err describes (an
// embedded node's error, or a remote node's error detail), or nil.
func stallOf(err error) *CommitStallError {
	if err == nil {
		return nil
	}
	var cs *pb.CommitStall
	var s interface{ CommitStall() *pb.CommitStall }
	if errors.As(err, &s) {
		cs = s.CommitStall()
	} else if d := detailOf(err); d != nil {
		cs = d.GetCommitStall()
	}
	if cs == nil {
		return nil
	}
	return &CommitStallError{Leader: cs.GetLeaderId(), For: cs.GetStalledFor().AsDuration(),
		Behind: cs.GetVotersBehind(), OwnDisk: cs.GetOwnDisk(), Err: err}
}

// reasoner is implemented by the errors of an embedded node (package node
// declares them; lease must not import it).
type reasoner interface{ Reason() pb.Reason }

// explained reports whether err carries a node's own reason for failing
// (an embedded node's error, or a remote node's error detail), as opposed
// to this client's account of a node it could not reach, which
// noLeaderError tags REASON_NO_LEADER too.
func explained(err error) bool {
	if detailOf(err) != nil {
		return true
	}
	var ne *noLeaderError
	if errors.As(err, &ne) {
		return explained(ne.err)
	}
	var r reasoner
	return errors.As(err, &r)
}

// reasonOf classifies a backend error: from an embedded node through its
// Reason method, from a remote node through the connect error's detail.
func reasonOf(err error) pb.Reason {
	var r reasoner
	if errors.As(err, &r) {
		return r.Reason()
	}
	if d := detailOf(err); d != nil {
		return d.GetReason()
	}
	return pb.Reason_REASON_UNSPECIFIED
}

func detailOf(err error) *pb.ErrorDetail {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ed, ok := v.(*pb.ErrorDetail); ok {
				return ed
			}
		}
	}
	return nil
}

// classify maps a backend error to this package's sentinel, keeping the
// original text.
func classify(op, key string, err error) error {
	var ge *GiveUpError
	if errors.As(err, &ge) {
		return fmt.Errorf("%s %q: %w", op, key, err)
	}
	if st := stallOf(err); st != nil {
		return fmt.Errorf("%s %q: %w", op, key, st)
	}
	var sentinel error
	switch reasonOf(err) {
	case pb.Reason_REASON_NOT_LEADER, pb.Reason_REASON_NO_LEADER:
		sentinel = ErrNoLeader
	case pb.Reason_REASON_INVALID, pb.Reason_REASON_STALE_REQUEST:
		sentinel = ErrInvalid
	case pb.Reason_REASON_UNKNOWN_OUTCOME:
		sentinel = ErrUnknownOutcome
	case pb.Reason_REASON_CLOSED:
		sentinel = ErrNoLeader
	case pb.Reason_REASON_RESOURCE_EXHAUSTED:
		sentinel = ErrTooManyWaiters
		if op == "watch" {
			sentinel = ErrTooManyWatches
		}
	case pb.Reason_REASON_OVERLOADED:
		sentinel = ErrOverloaded
	}
	if sentinel == nil {
		return fmt.Errorf("%s %q: %w", op, key, err)
	}
	return fmt.Errorf("%s %q: %w: %s", op, key, sentinel, why(op, key, err))
}

// why is a node's own words for a refusal that classify names by a
// sentinel: what a connect error carries without its code ("invalid_argument:
// "), and without a leading "node: <sentinel>: " and "op "key": ", which
// only repeat what the caller's message says already.
func why(op, key string, err error) string {
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Message() != "" {
		msg = ce.Message()
	}
	msg = strings.TrimPrefix(msg, fmt.Sprintf("%s %q: ", op, key))
	if rest, ok := strings.CutPrefix(msg, "node: "); ok {
		if _, after, ok := strings.Cut(rest, ": "); ok {
			msg = after
		}
	}
	return msg
}
