package checker

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/leasenode/leasenode/jepsen/history"
)

// SharedExclusive checks a history for shared-exclusive.
//
// Invariant shared-exclusive: on any key, no client believes it holds a
// shared or semaphore holding while another client believes it holds an
// exclusive one, and no shared holding overlaps a semaphore one (the
// shapes' compatibility rule, fsm's shape-compatibility, judged by the
// clients' own belief intervals as single-holder judges two exclusive
// ones; a multi-key grant contributes one interval per key). Guarded by
// TestShapeCheckers and the replayed testdata/shared-exclusive.*.jsonl.
func SharedExclusive(records []history.Record) (Result, error) {
	ops, events, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return sharedExclusive(Holds(ops, events, history.End(records))), nil
}

func shapeName(s string, limit int) string {
	switch s {
	case "":
		return "exclusive"
	case history.ShapeSemaphore:
		return fmt.Sprintf("semaphore of %d", limit)
	}
	return s
}

func sharedExclusive(holds []Hold) Result {
	r := newResult(NameSharedExclusive)
	keys := map[string]bool{}
	n := 0
	for _, h := range holds {
		if h.Shape == history.ShapeShared {
			keys[h.Key] = true
			n++
		}
	}
	overlaps(holds, func(key string, a, h Hold, from, to int64) {
		if a.Shape == h.Shape || a.Shape != "" && h.Shape != "" && a.Shape != history.ShapeShared && h.Shape != history.ShapeShared {
			return // same shape: single-holder or at-most-n judge it
		}
		r.violate(Violation{
			Key: key, Start: from, End: to,
			Clients: []string{a.Client, h.Client},
			Tokens:  []uint64{a.Token, h.Token},
			Ops:     []int64{a.Acquire, h.Acquire},
			Message: fmt.Sprintf("%s (%s, token %d, %s-%s) and %s (%s, token %d, %s-%s) both believed they held %q for %s",
				a.Client, shapeName(a.Shape, a.Limit), a.Token, fmtT(a.Start), fmtT(a.End),
				h.Client, shapeName(h.Shape, h.Limit), h.Token, fmtT(h.Start), fmtT(h.End), key, fmtT(to-from)),
		})
	})
	r.Stats["shared_holds"] = int64(n)
	r.Stats["shared_keys"] = int64(len(keys))
	r.Summary = fmt.Sprintf("%s on %s, %s beside an incompatible holder",
		plural(n, "shared holding period", "shared holding periods"), plural(len(keys), "key", "keys"),
		plural(len(r.Violations), "pair", "pairs"))
	return r
}

// SemaphoreLimit checks a history for at-most-n.
//
// Invariant at-most-n: at no instant do more than N different clients
// believe they hold a slot of a semaphore of N (judged by their own
// belief intervals); and no two clients believe they hold slots of one
// key in semaphores of different N. Guarded by TestShapeCheckers and the
// replayed testdata/at-most-n.*.jsonl.
func SemaphoreLimit(records []history.Record) (Result, error) {
	ops, events, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return semaphoreLimit(Holds(ops, events, history.End(records))), nil
}

func semaphoreLimit(holds []Hold) Result {
	r := newResult(NameSemaphoreLimit)
	byKey := map[string][]Hold{}
	for _, h := range holds {
		if h.Shape == history.ShapeSemaphore && h.End > h.Start {
			byKey[h.Key] = append(byKey[h.Key], h)
		}
	}
	n, peak := 0, 0
	for _, key := range sortedKeys(byKey) {
		var active []Hold
		for _, h := range byKey[key] { // sorted by Start
			n++
			kept := active[:0]
			for _, a := range active {
				if a.End > h.Start {
					kept = append(kept, a)
				}
			}
			active = append(kept, h)
			clients := map[string]bool{}
			limit, end := h.Limit, h.End
			for _, a := range active {
				clients[a.Client] = true
				end = min(end, a.End)
				if a.Limit != h.Limit && a.Client != h.Client {
					r.violate(Violation{Key: key, Start: h.Start, End: min(a.End, h.End),
						Clients: []string{a.Client, h.Client}, Tokens: []uint64{a.Token, h.Token}, Ops: []int64{a.Acquire, h.Acquire},
						Message: fmt.Sprintf("%s held %q as a semaphore of %d while %s held it as a semaphore of %d",
							a.Client, key, a.Limit, h.Client, h.Limit)})
				}
				limit = min(limit, a.Limit)
			}
			peak = max(peak, len(clients))
			if len(clients) <= limit {
				continue
			}
			var names []string
			var tokens []uint64
			var ids []int64
			for _, a := range active {
				names, tokens, ids = append(names, a.Client), append(tokens, a.Token), append(ids, a.Acquire)
			}
			r.violate(Violation{Key: key, Start: h.Start, End: end, Clients: names, Tokens: tokens, Ops: ids,
				Message: fmt.Sprintf("%d clients (%s) believed they held a slot of %q, a semaphore of %d, at %s",
					len(clients), strings.Join(names, ", "), key, limit, fmtT(h.Start))})
		}
	}
	r.Stats["semaphore_holds"] = int64(n)
	r.Stats["peak_holders"] = int64(peak)
	r.Summary = fmt.Sprintf("%s on %s (at most %d at once), %s",
		plural(n, "slot holding period", "slot holding periods"), plural(len(byKey), "key", "keys"), peak,
		plural(len(r.Violations), "violation", "violations"))
	return r
}

// SetAtomicity checks a history for set-atomicity.
//
// Invariant set-atomicity: no client ever holds part of a multi-key
// lease, as every linearizable read shows: (a) a list (one read of many
// keys) that shows a set's token on some of its keys shows it on every
// one of its keys under the list's prefix; (b) a get of one of a set's
// keys, made entirely while the set's client believed it held the set,
// shows the client holding that key with the set's token (the cluster
// holds a set from its grant until its release or expiry, and the
// client's belief ends no later than either). The keys of a set are those
// its acquire asked for (and those the cluster reports with a holding).
// Guarded by TestShapeCheckers and the replayed
// testdata/set-atomicity.*.jsonl.
func SetAtomicity(records []history.Record) (Result, error) {
	ops, events, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return setAtomicity(ops, Holds(ops, events, history.End(records))), nil
}

// setGrant is one multi-key grant and its client's belief interval.
type setGrant struct {
	client     string
	token      uint64
	keys       []string
	start, end int64
	acquire    int64
}

func setAtomicity(ops []history.Operation, holds []Hold) Result {
	r := newResult(NameSetAtomicity)
	byToken := map[uint64]*setGrant{}
	for _, h := range holds {
		if len(h.SetKeys) < 2 {
			continue
		}
		if g := byToken[h.Token]; g == nil {
			byToken[h.Token] = &setGrant{client: h.Client, token: h.Token, keys: h.SetKeys, start: h.Start, end: h.End, acquire: h.Acquire}
		}
	}
	// (a) lists.
	lists := 0
	for _, op := range ops {
		inv, c := op.Invoke, op.Complete
		if inv.Op != history.List || c.Type != history.OK {
			continue
		}
		lists++
		shown := map[uint64]map[string]bool{} // set token → keys it holds in this list
		declared := map[uint64][]string{}
		for _, h := range c.Holdings {
			if h.Set == 0 && byToken[h.Token] == nil || h.Delayed {
				continue
			}
			if shown[h.Token] == nil {
				shown[h.Token] = map[string]bool{}
			}
			shown[h.Token][h.Key] = true
			if len(declared[h.Token]) == 0 {
				declared[h.Token] = h.SetKeys
			}
		}
		for _, tok := range sortedTokens(shown) {
			keys := slices.Clone(declared[tok])
			if g := byToken[tok]; g != nil {
				keys = append(keys, g.keys...)
			}
			var missing []string
			for _, k := range keys {
				if strings.HasPrefix(k, inv.Value) && !shown[tok][k] && !slices.Contains(missing, k) {
					missing = append(missing, k)
				}
			}
			if len(missing) == 0 {
				continue
			}
			v := Violation{Start: inv.Time, End: c.Time, Tokens: []uint64{tok}, Ops: []int64{inv.ID},
				Message: fmt.Sprintf("a list of %q at %s-%s showed set %d on %v but not on %v",
					inv.Value, fmtT(inv.Time), fmtT(c.Time), tok, sortedSet(shown[tok]), missing)}
			if g := byToken[tok]; g != nil {
				v.Key, v.Clients, v.Ops = missing[0], []string{g.client}, []int64{g.acquire, inv.ID}
				v.Message = fmt.Sprintf("%s's set %v (token %d): %s", g.client, g.keys, tok, v.Message)
			}
			r.violate(v)
		}
	}
	// (b) gets inside a set's belief interval, key by key, in a sweep.
	grantsByKey := map[string][]*setGrant{}
	for _, g := range byToken {
		for _, k := range g.keys {
			grantsByKey[k] = append(grantsByKey[k], g)
		}
	}
	getsByKey := map[string][]history.Operation{}
	for _, op := range ops {
		if op.Invoke.Op == history.Get && op.Complete.Type == history.OK && grantsByKey[op.Invoke.Key] != nil {
			getsByKey[op.Invoke.Key] = append(getsByKey[op.Invoke.Key], op)
		}
	}
	checked := 0
	for _, key := range sortedKeys(getsByKey) {
		gs := grantsByKey[key]
		sort.Slice(gs, func(a, b int) bool { return gs[a].start < gs[b].start })
		gets := getsByKey[key]
		sort.SliceStable(gets, func(a, b int) bool { return gets[a].Invoke.Time < gets[b].Invoke.Time })
		var active []*setGrant
		next := 0
		for _, get := range gets {
			inv, c := get.Invoke, get.Complete
			for next < len(gs) && gs[next].start <= inv.Time {
				active = append(active, gs[next])
				next++
			}
			kept := active[:0]
			for _, g := range active {
				if g.end > inv.Time {
					kept = append(kept, g)
				}
			}
			active = kept
			holdings := c.Holdings
			if len(holdings) == 0 && c.Found {
				holdings = []history.Holding{{Key: key, Holder: c.Holder, Token: c.Token}} // a get without holdings
			}
			for _, g := range active {
				if c.Time > g.end {
					continue // not entirely inside the belief
				}
				checked++
				held := false
				for _, h := range holdings {
					held = held || h.Token == g.token && (h.Holder == "" || h.Holder == g.client) && !h.Delayed
				}
				if held {
					continue
				}
				r.violate(Violation{Key: key, Start: inv.Time, End: c.Time, Clients: []string{g.client, inv.Client},
					Tokens: []uint64{g.token}, Ops: []int64{g.acquire, inv.ID},
					Message: fmt.Sprintf("%s believed it held its set %v (token %d, %s-%s), but %s's get of %q at %s-%s showed %s",
						g.client, g.keys, g.token, fmtT(g.start), fmtT(g.end), inv.Client, key, fmtT(inv.Time), fmtT(c.Time), describeHoldings(holdings))})
			}
		}
	}
	r.Stats["sets"] = int64(len(byToken))
	r.Stats["lists"] = int64(lists)
	r.Stats["gets_inside_sets"] = int64(checked)
	r.Summary = fmt.Sprintf("%s, %s and %s inside a set's holding checked, %s",
		plural(len(byToken), "set granted", "sets granted"), plural(lists, "list", "lists"),
		plural(checked, "get", "gets"), plural(len(r.Violations), "partial set", "partial sets"))
	return r
}

func sortedTokens[V any](m map[uint64]V) []uint64 {
	out := make([]uint64, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func describeHoldings(hs []history.Holding) string {
	if len(hs) == 0 {
		return "it free"
	}
	var parts []string
	for _, h := range hs {
		who := h.Holder
		if h.Delayed {
			who = "lock-delay"
		}
		parts = append(parts, fmt.Sprintf("%s/%d", who, h.Token))
	}
	return "only " + strings.Join(parts, ", ")
}
