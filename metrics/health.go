package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/node"
)

// Healthz answers 200 "ok" while the process serves HTTP at all: a
// liveness probe.
func Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// Readyz answers 200 "ready" when the node is ready (see Ready), else 503
// with a one-line reason: a readiness probe for load balancers and
// rolling upgrades.
func (m *Metrics) Readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	n := m.n.Load()
	err := errStarting
	if n != nil {
		err = Ready(n, m.opts.MaxApplyLag)
	}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ready")
}

var errStarting = errors.New("node is starting")

// Ready reports why n is not ready to serve, or nil: it must know a
// leader (and, if it is the leader, have established its epoch), and its
// applied index must be within maxLag entries of the leader's commit
// index (asked over node RPC, within a second).
func Ready(n *node.Node, maxLag uint64) error {
	r := n.Raft()
	state := r.State()
	// First: a node whose own disk hangs applies nothing, whatever its
	// Raft state says (a deposed leader stuck in its leader loop still
	// says Leader, or a term the cluster left long ago).
	if d := n.OwnDiskHung(); d != "" {
		return errors.New(d)
	}
	switch state {
	case raft.Shutdown:
		return fmt.Errorf("raft is shut down")
	case raft.Candidate:
		return fmt.Errorf("election in progress: %s", n.NoLeaderReason())
	case raft.Leader:
		if !n.IsLeader() {
			return fmt.Errorf("elected leader but not serving yet (establishing epoch %d)", r.CurrentTerm())
		}
	}
	if _, id := r.LeaderWithID(); id == "" {
		return fmt.Errorf("no leader known: %s", n.NoLeaderReason())
	}
	// The leader's commit index, not this node's: a follower learns the
	// leader's only as its own log catches up (a restarted node that was
	// out of the configuration read commit 0, applied 0: "ready").
	commit, err := n.LeaderCommitIndex()
	if err != nil {
		return fmt.Errorf("cannot learn the leader's commit index: %w", err)
	}
	applied := r.AppliedIndex()
	if l := lag(commit, applied); l > maxLag {
		return fmt.Errorf("catching up: applied index %d is %d entries behind the leader's commit index %d", applied, l, commit)
	}
	return nil
}

// LeaseServiceName is the client API's gRPC service name, as grpc.health.v1
// and reflection know it.
const LeaseServiceName = "leasenode.v1.LeaseService"

// Check implements grpchealth.Checker: the standard grpc.health.v1 probe
// that gRPC load balancers, grpc_health_probe and Kubernetes' grpc probes
// ask. The whole server ("") and LeaseService are SERVING exactly when
// /readyz answers 200, NOT_SERVING otherwise; any other service is
// NotFound.
func (m *Metrics) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	switch req.Service {
	case "", LeaseServiceName:
	default:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %q (this server has %q)", req.Service, LeaseServiceName))
	}
	n := m.n.Load()
	if n == nil || Ready(n, m.opts.MaxApplyLag) != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
