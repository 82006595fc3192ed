package metrics

import (
	"errors"
	"fmt"
	"net/http"

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
// applied index must be within maxLag entries of the commit index it has
// learned from the leader.
func Ready(n *node.Node, maxLag uint64) error {
	r := n.Raft()
	state := r.State()
	switch state {
	case raft.Shutdown:
		return fmt.Errorf("raft is shut down")
	case raft.Candidate:
		return fmt.Errorf("election in progress (candidate, term %d)", r.CurrentTerm())
	case raft.Leader:
		if !n.IsLeader() {
			return fmt.Errorf("elected leader but not serving yet (establishing epoch %d)", r.CurrentTerm())
		}
	}
	if _, id := r.LeaderWithID(); id == "" {
		return fmt.Errorf("no leader known (%s, term %d)", state, r.CurrentTerm())
	}
	commit, applied := r.CommitIndex(), r.AppliedIndex()
	if l := lag(commit, applied); l > maxLag {
		return fmt.Errorf("catching up: applied index %d is %d entries behind commit index %d", applied, l, commit)
	}
	return nil
}
