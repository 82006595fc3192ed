package checker

import (
	"fmt"
	"sort"

	"github.com/leasenode/leasenode/jepsen/history"
)

// MonotonicToken checks a history for monotonic-token.
//
// Invariant monotonic-token: the token of a grant is the Raft index of the
// entry that granted it (DESIGN.md rule 5), so (a) a grant that was
// invoked after another grant of the same key completed carries a larger
// token, (b) no token is granted twice, and (c) a resource that admits a
// write only if its token is at least the highest it has seen never
// accepts a stale one. (c) checks the harness's resource as much as the
// cluster; the interesting number is how many stale writes (from paused
// or vanished holders) it refused. Guarded by TestMonotonicToken* and the
// replayed testdata/monotonic-token-*.jsonl.
func MonotonicToken(records []history.Record) (Result, error) {
	ops, _, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return monotonicToken(ops), nil
}

func monotonicToken(ops []history.Operation) Result {
	r := newResult(NameMonotonicToken)
	grants := map[string][]history.Operation{}
	byToken := map[uint64]history.Operation{}
	maybe := map[holdKey]bool{} // (client, key) with an indeterminate acquire
	granted := map[holdKey]bool{}
	var nGrants int
	for _, op := range ops {
		inv, c := op.Invoke, op.Complete
		if inv.Op != history.Acquire {
			continue
		}
		items := inv.AcquireItems()
		switch c.Type {
		case history.Info:
			for _, it := range items {
				maybe[holdKey{client: inv.Client, key: it.Key}] = true
			}
		case history.OK:
			nGrants++
			for _, it := range items {
				// A multi-key grant is one token, the same on each key.
				grants[it.Key] = append(grants[it.Key], op)
				granted[holdKey{inv.Client, it.Key, c.Token}] = true
			}
			if prev, dup := byToken[c.Token]; dup {
				r.violate(Violation{
					Key: inv.Key, Start: prev.Complete.Time, End: c.Time,
					Clients: []string{prev.Invoke.Client, inv.Client}, Tokens: []uint64{c.Token},
					Ops: []int64{prev.Invoke.ID, inv.ID},
					Message: fmt.Sprintf("token %d granted twice: to %s on %q at %s and to %s on %q at %s",
						c.Token, prev.Invoke.Client, prev.Invoke.Key, fmtT(prev.Complete.Time), inv.Client, inv.Key, fmtT(c.Time)),
				})
			} else {
				byToken[c.Token] = op
			}
			if c.Token == 0 {
				r.violate(Violation{Key: inv.Key, Start: c.Time, End: c.Time, Clients: []string{inv.Client}, Ops: []int64{inv.ID},
					Message: fmt.Sprintf("%s was granted %q with token 0", inv.Client, inv.Key)})
			}
		}
	}

	// (a) real-time order: sweep grants by invocation, knowing the largest
	// token among grants completed before it.
	for _, key := range sortedKeys(grants) {
		gs := grants[key]
		byEnd := append([]history.Operation(nil), gs...)
		sort.SliceStable(byEnd, func(a, b int) bool { return byEnd[a].Complete.Time < byEnd[b].Complete.Time })
		byStart := append([]history.Operation(nil), gs...)
		sort.SliceStable(byStart, func(a, b int) bool { return byStart[a].Invoke.Time < byStart[b].Invoke.Time })
		var best *history.Operation
		j := 0
		for _, b := range byStart {
			for j < len(byEnd) && byEnd[j].Complete.Time < b.Invoke.Time {
				if best == nil || byEnd[j].Complete.Token > best.Complete.Token {
					best = &byEnd[j]
				}
				j++
			}
			if best != nil && best.Complete.Token >= b.Complete.Token {
				r.violate(Violation{
					Key: key, Start: best.Complete.Time, End: b.Complete.Time,
					Clients: []string{best.Invoke.Client, b.Invoke.Client},
					Tokens:  []uint64{best.Complete.Token, b.Complete.Token},
					Ops:     []int64{best.Invoke.ID, b.Invoke.ID},
					Message: fmt.Sprintf("%s was granted %q with token %d at %s, after %s's grant with token %d had completed at %s",
						b.Invoke.Client, key, b.Complete.Token, fmtT(b.Complete.Time), best.Invoke.Client, best.Complete.Token, fmtT(best.Complete.Time)),
				})
			}
		}
	}

	// (c) the resource, in the order it decided (completions are recorded
	// under its lock): writes, and shared holders' fenced reads, which
	// must be refused exactly when their token is below the highest
	// write accepted and record nothing.
	var writes []history.Operation
	for _, op := range ops {
		if (op.Invoke.Op == history.Write || op.Invoke.Op == history.Read) && (op.Complete.Type == history.OK || op.Complete.Type == history.Fail) {
			writes = append(writes, op)
		}
	}
	var reads, staleReads int64
	sort.SliceStable(writes, func(a, b int) bool { return writes[a].Complete.Index < writes[b].Complete.Index })
	highest := map[string]uint64{}
	var accepted, rejected int64
	for _, w := range writes {
		inv, c := w.Invoke, w.Complete
		h := highest[inv.Key]
		if inv.Op == history.Read {
			reads++
			switch {
			case c.Type == history.OK && inv.Token < h:
				r.violate(Violation{Key: inv.Key, Start: c.Time, End: c.Time, Clients: []string{inv.Client},
					Tokens: []uint64{inv.Token, h}, Ops: []int64{inv.ID},
					Message: fmt.Sprintf("the resource admitted %s's read of %q with token %d after it had accepted a write with token %d",
						inv.Client, inv.Key, inv.Token, h)})
			case c.Err == history.ErrStaleToken:
				staleReads++
				if inv.Token >= h {
					r.violate(Violation{Key: inv.Key, Start: c.Time, End: c.Time, Clients: []string{inv.Client},
						Tokens: []uint64{inv.Token, h}, Ops: []int64{inv.ID},
						Message: fmt.Sprintf("the resource refused %s's read of %q with token %d as stale, but the highest write it had accepted was %d",
							inv.Client, inv.Key, inv.Token, h)})
				}
			}
			continue
		}
		switch {
		case c.Type == history.OK:
			accepted++
			if inv.Token < h {
				r.violate(Violation{Key: inv.Key, Start: c.Time, End: c.Time, Clients: []string{inv.Client},
					Tokens: []uint64{inv.Token, h}, Ops: []int64{inv.ID},
					Message: fmt.Sprintf("the resource accepted %s's write to %q with token %d after it had accepted token %d",
						inv.Client, inv.Key, inv.Token, h)})
			}
			highest[inv.Key] = max(h, inv.Token)
			if !granted[holdKey{inv.Client, inv.Key, inv.Token}] && !maybe[holdKey{client: inv.Client, key: inv.Key}] {
				r.violate(Violation{Key: inv.Key, Start: c.Time, End: c.Time, Clients: []string{inv.Client},
					Tokens: []uint64{inv.Token}, Ops: []int64{inv.ID},
					Message: fmt.Sprintf("the resource accepted %s's write to %q with token %d, which was never granted to it",
						inv.Client, inv.Key, inv.Token)})
			}
		case c.Err == history.ErrStaleToken:
			rejected++
			if inv.Token >= h {
				r.violate(Violation{Key: inv.Key, Start: c.Time, End: c.Time, Clients: []string{inv.Client},
					Tokens: []uint64{inv.Token, h}, Ops: []int64{inv.ID},
					Message: fmt.Sprintf("the resource refused %s's write to %q with token %d as stale, but the highest it had accepted was %d",
						inv.Client, inv.Key, inv.Token, h)})
			}
		}
	}
	r.Stats["grants"] = int64(nGrants)
	r.Stats["writes_accepted"] = accepted
	r.Stats["writes_stale_rejected"] = rejected
	r.Stats["reads"] = reads
	r.Stats["reads_stale_rejected"] = staleReads
	r.Summary = fmt.Sprintf("%s, %d writes accepted, %d stale writes refused by the resource, %s",
		plural(nGrants, "grant", "grants"), accepted, rejected, plural(len(r.Violations), "violation", "violations"))
	return r
}
