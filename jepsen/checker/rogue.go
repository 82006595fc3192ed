package checker

import (
	"fmt"

	"github.com/leasenode/leasenode/jepsen/history"
)

// NodePortAuth checks a history for node-port-auth.
//
// Invariant node-port-auth: every byte on a node port comes from an
// authenticated node of the cluster (DESIGN.md's trust model): an
// outsider without the cluster key — or, with TLS, with only an API
// client certificate — is refused on node RPC, on Raft and on gossip, and
// no client is redirected to an address it claimed. The rogue-peer fault
// records each attempt (history.Rogue: OK = served); any served attempt
// is a violation, whatever its consequences (those show up in the other
// checkers: a released lease as single-holder, a forged leader as
// availability). Guarded by TestNodePortAuth* and the replayed
// testdata/node-port-auth.*.jsonl.
func NodePortAuth(records []history.Record) (Result, error) {
	ops, _, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return nodePortAuth(ops), nil
}

func nodePortAuth(ops []history.Operation) Result {
	r := newResult(NameNodePortAuth)
	var refused, served int
	for _, op := range ops {
		if op.Invoke.Op != history.Rogue {
			continue
		}
		switch op.Complete.Type {
		case history.OK:
			served++
			r.violate(Violation{Start: op.Invoke.Time, End: op.Complete.Time, Clients: []string{op.Invoke.Client}, Ops: []int64{op.Invoke.ID},
				Message: fmt.Sprintf("%s served an outsider: %s", op.Invoke.Node, op.Complete.Value)})
		default:
			refused++
			if refused <= 50 {
				r.Notes = append(r.Notes, fmt.Sprintf("refused at %s: %s on %s: %s", fmtT(op.Invoke.Time), op.Invoke.Value, op.Invoke.Node, op.Complete.Err))
			}
		}
	}
	r.Stats["attempts"] = int64(served + refused)
	r.Stats["refused"] = int64(refused)
	if served+refused == 0 {
		r.Summary = "no rogue attempts"
		return r
	}
	r.Summary = fmt.Sprintf("%d rogue attempts: %d refused, %d served", served+refused, refused, served)
	return r
}
