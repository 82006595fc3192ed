package checker

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

// Recovery checks a history for recovery: the Serve probe, invoked at the
// final heal, completed OK within bound; and the last Digest event of
// every node shows the same applied index and state digest.
//
// Invariant recovery: after every fault is healed the cluster serves again
// within a bound (measured and reported: leader election, Promote, and the
// clients' backoff), and all replicas converge to one state (the FSM is a
// pure function of the log: fsm-determinism). Guarded by TestRecovery*
// and the replayed testdata/recovery-*.jsonl.
func Recovery(records []history.Record, bound time.Duration) (Result, error) {
	ops, events, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return recovery(ops, events, bound), nil
}

func recovery(ops []history.Operation, events []history.Record, bound time.Duration) Result {
	r := newResult(NameRecovery)
	var serve *history.Operation
	for i := range ops {
		if ops[i].Invoke.Op == history.Serve {
			serve = &ops[i]
		}
	}
	var parts []string
	switch {
	case serve == nil:
		r.Verdict = Unknown
		r.Notes = append(r.Notes, "no recovery probe in the history")
		parts = append(parts, "not probed")
	case serve.Complete.Type != history.OK:
		r.violate(Violation{Start: serve.Invoke.Time, End: serve.Complete.Time, Ops: []int64{serve.Invoke.ID},
			Message: fmt.Sprintf("the cluster did not serve after the final heal at %s: %s", fmtT(serve.Invoke.Time), serve.Complete.Err)})
		parts = append(parts, "never served")
	default:
		d := serve.Complete.Time - serve.Invoke.Time
		r.Stats["serve_ns"] = d
		parts = append(parts, fmt.Sprintf("served %s after the final heal (bound %s)", fmtT(d), bound))
		if d > int64(bound) {
			r.violate(Violation{Start: serve.Invoke.Time, End: serve.Complete.Time, Ops: []int64{serve.Invoke.ID},
				Message: fmt.Sprintf("the cluster took %s to serve after the final heal, more than the bound %s", fmtT(d), bound)})
		}
	}

	last := map[string]history.Record{}
	for _, ev := range events {
		if ev.Op == history.Digest {
			last[ev.Node] = ev
		}
	}
	if len(last) == 0 {
		if r.Verdict == Valid {
			r.Verdict = Unknown
		}
		r.Notes = append(r.Notes, "no state digests in the history")
		parts = append(parts, "no digests")
	} else {
		groups := map[string][]string{}
		var t int64
		for _, node := range sortedKeys(last) {
			ev := last[node]
			t = max(t, ev.Time)
			g := fmt.Sprintf("applied=%d digest=%s", ev.Applied, ev.Value)
			if ev.Err != "" {
				g = "unreachable: " + ev.Err
			}
			groups[g] = append(groups[g], node)
		}
		r.Stats["nodes"] = int64(len(last))
		if len(groups) == 1 {
			for g := range groups {
				if strings.HasPrefix(g, "unreachable") {
					r.violate(Violation{Start: t, End: t, Message: "no node reported its state after the final heal: " + g})
				} else {
					parts = append(parts, fmt.Sprintf("%d nodes converged (%s)", len(last), g))
					r.Stats["applied"] = int64(last[sortedKeys(last)[0]].Applied)
				}
			}
		} else {
			var desc []string
			for _, g := range sortedKeys(groups) {
				nodes := groups[g]
				sort.Strings(nodes)
				desc = append(desc, fmt.Sprintf("%v: %s", nodes, g))
			}
			r.violate(Violation{Start: t, End: t,
				Message: "nodes did not converge to one state after the final heal: " + strings.Join(desc, "; ")})
			parts = append(parts, "diverged")
		}
	}
	r.Summary = strings.Join(parts, ", ")
	return r
}
