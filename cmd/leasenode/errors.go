package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"syscall"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var ue *usageError
	var in *interrupted
	var sc *semaphoreConflictError
	switch reason := reasonOf(err); {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &in):
		return in.code()
	case errors.Is(err, lease.ErrHeld), errors.As(err, &sc):
		return exitHeld
	case errors.Is(err, lease.ErrLeaseLost):
		return exitLost
	case errors.Is(err, lease.ErrUnknownOutcome),
		reason == pb.Reason_REASON_UNKNOWN_OUTCOME:
		return exitUnknown
	case errors.Is(err, lease.ErrNoLeader), errors.Is(err, lease.ErrOverloaded),
		reason == pb.Reason_REASON_NO_LEADER, reason == pb.Reason_REASON_NOT_LEADER,
		reason == pb.Reason_REASON_CLOSED, reason == pb.Reason_REASON_OVERLOADED,
		errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	case errors.Is(err, lease.ErrInvalid), reason == pb.Reason_REASON_INVALID:
		return exitUsage
	case errors.Is(err, lease.ErrTLSSetup), errors.Is(err, lease.ErrWrongPort):
		// TLS flags that do not fit the nodes, or --addr at a port that
		// is not the client API, are settings to fix, as health says
		// with 2: every command exits alike (new-user review: status,
		// get and acquire exited 1 where health exited 2). After the
		// unreachable case: an address list of which only some are
		// wrong ends as no leader reached.
		return exitUsage
	}
	return exitFailure
}

// hintFor suggests what to do about err, or "", to a user of the command
// named verb ("get", "status"): a hint never sends status's user to
// `leasenode status`. tokenSent says whether the command sent an auth
// token: a refused one is the wrong token, not a missing one. timeout is
// the --timeout the user set (by flag or environment), or "" for the
// default: a hint does not suggest the value the user already gave
// (new-user review: "shorten it with --timeout 2s" after --timeout 3s).
func hintFor(err error, verb string, tokenSent bool, timeout string) string {
	if te := (*lease.TLSSetupError)(nil); errors.As(err, &te) {
		return tlsHint(te.Problem)
	}
	status := " and `leasenode status`"
	showsAll := "; `leasenode status` shows every node"
	if verb == "status" {
		status, showsAll = "", ""
	}
	if st := (*lease.CommitStallError)(nil); errors.As(err, &st) {
		return stallHint(st, verb, timeout)
	}
	timeoutIs := "10s by default"
	if timeout != "" {
		timeoutIs = timeout + " here"
	}
	na := (*noAnswerError)(nil)
	errors.As(err, &na)
	switch code := exitCode(err); {
	case reasonOf(err) == pb.Reason_REASON_UNAUTHENTICATED && tokenSent:
		// "pass it with --auth-token-file" read as if no token had been
		// sent (new-user review).
		return wrongTokenHint
	case reasonOf(err) == pb.Reason_REASON_UNAUTHENTICATED:
		return noTokenHint
	case code == exitUnreachable && na != nil && na.answered && !na.noLeader:
		return "the nodes answer and one knows a leader, but the request was not answered within --timeout (above: what they say): the leader may be cut off from its followers or overloaded" + showsAll +
			"; a longer --timeout lets a node say why"
	case code == exitUnreachable && (detailReason(err) == pb.Reason_REASON_NO_LEADER || na != nil && na.noLeader):
		hint := "a node answered but knows no leader (above: why): the cluster is electing one, or too few of its voters are up for a quorum" + showsAll
		if verb != "status" { // status waits 3 s in a cluster that had a leader
			hint += "; a request waits for a leader up to --timeout (" + timeoutIs + "; --wait bounds only a wait for a held key)"
			if timeout == "" {
				hint += ": shorten it with --timeout 2s"
			}
		}
		if verb == "get" || verb == "list" {
			hint += "; --stale reads the local copy of the node asked, without a leader (it may be behind)"
		}
		return hint
	case code == exitUnreachable && (errors.Is(err, lease.ErrOverloaded) || reasonOf(err) == pb.Reason_REASON_OVERLOADED):
		// A node was reached and refused for its load: not "no leader
		// could be reached ... check --addr", which sent a user whose
		// leader was flooded by another client to look for a down
		// cluster (new-user review).
		return "the nodes were reached and refused the request for their load (above: what the node saw); nothing was applied, and it was retried until --timeout (" + timeoutIs + "). " +
			"This CLI sends each request's body with it, so what fills the limit is other clients' requests or streams, possibly from the same address range (a limit per /24 counts every client there, loopback included): " +
			"retry later; the agents' logs (\"refused a request\") and leasenode_refusals_total by reason on their --http /metrics say which limit, and the limits that are flags (--max-conns, --max-waiters, ...) can be raised"
	case code == exitUnreachable && cutAtOnce(err):
		return "a node accepted the connection and closed it before answering (above: the last error): an agent at its connection limit does that, its --max-conns or a client source's share of it (a quarter; its log says \"refused a client API connection\" and which), and so does one that is stopping; raise the agent's --max-conns, or close idle clients; check --addr (or LEASENODE_ADDR)" + status
	case code == exitUnreachable:
		return "no leader could be reached (the reason, if a node gave one, is above): check --addr (or LEASENODE_ADDR)" + status + "; `leasenode dev` starts a local cluster on 127.0.0.1:7402"
	case errors.Is(err, lease.ErrTooManyWaiters):
		return "the agent refused a waiting acquire at its --max-waiters (exit 1: waiting again at once would add to the load the limit bounds): " +
			"--wait 0 takes the key only if it is free, without waiting in the leader's queue (exit 4 while it is held); `leasenode status` shows each node's WAITERS"
	case errors.Is(err, lease.ErrTooManyWatches):
		return "the agent refused the watch at its --max-watches (exit 1): end a watch, watch one shorter prefix instead of several, or raise --max-watches on the agents"
	case code == exitUnknown:
		return "the request may or may not have taken effect; check with `leasenode get KEY` once the cluster has a leader (a lease this command may have been granted and could not give back expires after its --ttl)"
	}
	return ""
}

// The hints for a request the cluster refused for its token: one sent
// (by --auth-token, --auth-token-file or LEASENODE_AUTH_TOKEN) that is
// not the cluster's, or none.
const (
	wrongTokenHint = "the token sent (--auth-token, --auth-token-file or LEASENODE_AUTH_TOKEN, whichever was set) is wrong: " +
		"the right one is the agents' --auth-token, usually in the file their --auth-token-file (or config file) names; " +
		"pass that file with --auth-token-file FILE, and check that LEASENODE_AUTH_TOKEN is not set to an old token"
	noTokenHint = "the cluster requires a token and none was sent: pass the agents' token (the file their --auth-token-file names) " +
		"with --auth-token-file FILE, or set LEASENODE_AUTH_TOKEN (--auth-token TOKEN works too, but shows in ps)"
)

// stallHint says what to do about a leader that cannot commit (above: which
// voters are behind), to a user of verb: not "the cluster is electing a
// leader", which sent a user whose three voters were all up (their disks
// hung) looking for an election (new-user review).
func stallHint(st *lease.CommitStallError, verb, timeout string) string {
	var hint string
	if st.OwnDisk || len(st.Behind) == 0 {
		hint = fmt.Sprintf("leader %s's own disk seems hung (every other voter stored its log): check that disk; it stops sending to its followers so that they elect another leader, within seconds", st.Leader)
	} else {
		have, their := "have", "their"
		if len(st.Behind) == 1 {
			have, their = "has", "its"
		}
		behind := strings.Join(st.Behind, ", ")
		hint = fmt.Sprintf("every voter may be up, but a quorum must store the leader's log and %s %s not: check %s disks (full, hung or frozen) and the network between %s and %s",
			behind, have, their, behind, st.Leader)
	}
	if verb != "status" {
		hint += "; `leasenode status` shows each node's log index"
	}
	timeoutIs := "10s by default"
	if timeout != "" {
		timeoutIs = timeout + " here"
	}
	hint += "; nothing was applied, and the request was retried for --timeout (" + timeoutIs + ") in case the stall ended"
	if verb == "get" || verb == "list" {
		hint += "; --stale reads the local copy of the node asked, without the leader (it may be behind)"
	}
	return hint
}

// detailReason is the reason a node put in err's error detail, if one did:
// unlike reasonOf, not the client's own tag for a node it could not reach.
// For retries that gave up it is the reason of the last answer a node gave
// (GiveUpError.Answer): the last attempt of a read in a leaderless
// cluster usually ends with the deadline, after a node said "no leader".
func detailReason(err error) pb.Reason {
	var ge *lease.GiveUpError
	if errors.As(err, &ge) && ge.Answer != nil {
		if r := detailReason(ge.Answer); r != pb.Reason_REASON_UNSPECIFIED {
			return r
		}
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		for _, d := range ce.Details() {
			if v, err := d.Value(); err == nil {
				if ed, ok := v.(*pb.ErrorDetail); ok {
					return ed.GetReason()
				}
			}
		}
	}
	return pb.Reason_REASON_UNSPECIFIED
}

// reasonOf classifies err by the wire reason it carries: from an error
// with a Reason method (lease's and node's errors), or from the error
// detail a node attached to a connect error.
func reasonOf(err error) pb.Reason {
	var r interface{ Reason() pb.Reason }
	if errors.As(err, &r) {
		return r.Reason()
	}
	return detailReason(err)
}

// tlsHint says which flags to set for a TLS problem (lease's error names
// the library's options, not these flags).
func tlsHint(p lease.TLSProblem) string {
	switch p {
	case lease.TLSUnverified:
		return "give --tls-ca the CA that signed the nodes' certificates, and dial (--addr) an address their certificates name; " +
			"for another address, remake them with `leasenode tls cert create --node ID --ip IP --dns NAME`"
	case lease.TLSClientCertRequired:
		return "the cluster takes clients with a certificate of its CA: give --tls-cert and --tls-key (made by `leasenode tls cert create --client --name NAME`); " +
			"if you gave them, --addr may be a node port (--bind), which takes node certificates only: give the agents' --api addresses"
	case lease.TLSNodeIsPlain:
		return "the address answered without TLS: the agent serves plain HTTP (leave out --tls-ca, --tls-cert and --tls-key, and unset LEASENODE_TLS_CA, LEASENODE_TLS_CERT and LEASENODE_TLS_KEY if set), or --addr is not an --api address (a gossip or --http port)"
	case lease.TLSNodeRequiresTLS:
		return "the node requires TLS: give --tls-ca (the cluster's CA) and, if it asks for client certificates, --tls-cert and --tls-key"
	}
	return ""
}

// cutAtOnce reports whether err ends with a connection that a node
// accepted and then closed (reset or EOF) before its reply: what an agent
// at its --max-conns does to a connection it refuses (node/connlimit.go),
// which read as an agent that is down (new-user review M3).
func cutAtOnce(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// goInternals are phrases of Go's and lease's error texts that name Go
// functions or APIs, which a CLI user cannot act on (new-user review):
// plainWords drops or rewords them.
var goInternals = []struct {
	re   *regexp.Regexp
	with string
}{
	// net/http's name for the read that saw the node's TLS alert.
	{regexp.MustCompile(`readLoopPeekFailLocked: `), ""},
	// A TLS alert the node sent: what it refused, in words.
	{regexp.MustCompile(`remote error: tls: ([a-z ]+)`), "the node refused the TLS handshake (TLS alert: $1)"},
	// lease's liveness error names its Go option; the CLI has no flag for it.
	{regexp.MustCompile(` \(twice lease\.WithPeerTimeout's ([^)]*)\)`), " (two checks of ${1} each)"},
	// net/http's request prefix: Get "https://127.0.0.1:7402/readyz": ...
	{regexp.MustCompile(`(Get|Post|Put) "https?://[^"]*": `), ""},
	// A node's --max-waiters refusal names the Go client's call that does
	// not wait; the CLI's is --wait 0 (new-user review).
	{regexp.MustCompile(`\buse TryAcquire\b`), "use --wait 0 (no wait in the queue: exit 4 at once while the key is held)"},
}

// plainWords is msg without the Go internals in goInternals.
func plainWords(msg string) string {
	for _, g := range goInternals {
		msg = g.re.ReplaceAllString(msg, g.with)
	}
	return msg
}
