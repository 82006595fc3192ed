package main

import (
	"context"
	"errors"

	"github.com/leasenode/leasenode/internal/apiclient"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var ue *usageError
	var in *interrupted
	switch reason := apiclient.ReasonOf(err); {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &in):
		return in.code()
	case errors.Is(err, lease.ErrHeld):
		return exitHeld
	case errors.Is(err, lease.ErrLeaseLost):
		return exitLost
	case errors.Is(err, lease.ErrUnknownOutcome), errors.Is(err, apiclient.ErrUnknownOutcome),
		reason == pb.Reason_REASON_UNKNOWN_OUTCOME:
		return exitUnknown
	case errors.Is(err, lease.ErrNoLeader), errors.Is(err, apiclient.ErrUnreachable),
		reason == pb.Reason_REASON_NO_LEADER, reason == pb.Reason_REASON_NOT_LEADER,
		reason == pb.Reason_REASON_CLOSED, errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	case errors.Is(err, lease.ErrInvalid), reason == pb.Reason_REASON_INVALID:
		return exitUsage
	}
	return exitFailure
}

// hintFor suggests what to do about err, or "".
func hintFor(err error) string {
	switch code := exitCode(err); {
	case apiclient.ReasonOf(err) == pb.Reason_REASON_UNAUTHENTICATED:
		return "the cluster requires a token: pass --auth-token or set LEASENODE_AUTH_TOKEN"
	case code == exitUnreachable:
		return "is the cluster running? Check --addr (or LEASENODE_ADDR); `leasenode dev` starts a local one on 127.0.0.1:7402"
	case code == exitUnknown:
		return "the request may or may not have taken effect; check with `leasenode get KEY`"
	}
	return ""
}
