package checker

import (
	"fmt"
	"sort"

	"github.com/leasenode/leasenode/jepsen/history"
)

// Hold is the interval in which one client believed it held one lease.
type Hold struct {
	Key    string `json:"key"`
	Client string `json:"client"`
	Token  uint64 `json:"token"`
	// Start is when the acquire returned the grant (harness ns).
	Start int64 `json:"start"`
	// End is the earliest of: the release's invocation, the end of the
	// client's belief once it lost the lease, and the end of the history.
	// The belief of a lost lease lasts until the earlier of the loss and
	// the lease's final ValidUntil — or until the latest ValidUntil the
	// client reported while healthy, if that is later: a user who read
	// ValidUntil may act on it until then.
	End int64 `json:"end"`
	// Ended says which bound ended it: release, lost, reported-validity
	// (a lost lease whose reported ValidUntil outlived the loss), or
	// history-end.
	Ended string `json:"ended"`
	// Reported is the latest ValidUntil the client reported while
	// healthy before the lease ended (0: none).
	Reported int64 `json:"reported,omitempty"`
	// Acquire is the history ID of the granting acquire.
	Acquire int64 `json:"acquire"`
	// Shape is how the hold shares its key: "" (exclusive), "shared" or
	// "semaphore" of Limit; SetKeys are every key of its multi-key grant
	// (nil if granted alone).
	Shape   string   `json:"shape,omitempty"`
	Limit   int      `json:"limit,omitempty"`
	SetKeys []string `json:"set,omitempty"`
}

type holdKey struct {
	client, key string
	token       uint64
}

// Holds computes every client's belief intervals from a paired history.
// An indeterminate acquire gives no interval: its client never learned it
// held anything. end is the history's last time.
//
// A grant is named by (client, its first key, token): releases, losses and
// observations name it so. A multi-key grant gives one hold per key, all
// ended together; a write or check-token on any of its keys counts as a
// reading of the grant's validity.
func Holds(ops []history.Operation, events []history.Record, end int64) []Hold {
	var holds []Hold
	idx := map[holdKey][]int{}       // grant → its holds
	grantOf := map[holdKey]holdKey{} // (client, any key of a grant, token) → grant
	// Holds start out ending with the history; a release or a loss ends
	// them (the earliest wins), and a loss may end one after the history
	// if the client had reported a later validity.
	bounded := map[int]bool{}
	cut := func(k holdKey, t int64, why string) {
		for _, i := range idx[k] {
			if bounded[i] && t > holds[i].End {
				continue
			}
			holds[i].End, holds[i].Ended = t, why
			bounded[i] = true
		}
	}
	for _, op := range ops {
		inv, c := op.Invoke, op.Complete
		if inv.Op == history.Acquire && c.Type == history.OK {
			g := holdKey{inv.Client, inv.Key, c.Token}
			items := inv.AcquireItems()
			var set []string
			if len(items) > 1 {
				for _, it := range items {
					set = append(set, it.Key)
				}
			}
			for _, it := range items {
				grantOf[holdKey{inv.Client, it.Key, c.Token}] = g
				idx[g] = append(idx[g], len(holds))
				holds = append(holds, Hold{Key: it.Key, Client: inv.Client, Token: c.Token,
					Start: c.Time, End: max(end, c.Time), Ended: "history-end", Acquire: inv.ID,
					Shape: it.Shape, Limit: it.Limit, SetKeys: set})
			}
		}
	}
	grant := func(client, key string, token uint64) holdKey {
		k := holdKey{client, key, token}
		if g, ok := grantOf[k]; ok {
			return g
		}
		return k
	}
	for _, op := range ops {
		if inv := op.Invoke; inv.Op == history.Release {
			cut(grant(inv.Client, inv.Key, inv.Token), inv.Time, "release")
		}
	}
	// Every ValidUntil the client reported while healthy, with the time
	// it was read: the grant, writes and check-tokens, Observe events.
	type reading struct{ at, validUntil int64 }
	readings := map[holdKey][]reading{}
	for _, op := range ops {
		inv, c := op.Invoke, op.Complete
		switch {
		case inv.Op == history.Acquire && c.Type == history.OK && c.ValidUntil != 0:
			k := holdKey{inv.Client, inv.Key, c.Token}
			readings[k] = append(readings[k], reading{c.Time, c.ValidUntil})
		case (inv.Op == history.Write || inv.Op == history.CheckToken || inv.Op == history.Read) && inv.Healthy && inv.ValidUntil != 0:
			k := grant(inv.Client, inv.Key, inv.Token)
			readings[k] = append(readings[k], reading{inv.Time, inv.ValidUntil})
		}
	}
	for _, ev := range events {
		if ev.Op == history.Observe && ev.Healthy && ev.ValidUntil != 0 {
			k := grant(ev.Client, ev.Key, ev.Token)
			readings[k] = append(readings[k], reading{ev.Time, ev.ValidUntil})
		}
	}
	for _, ev := range events {
		if ev.Op != history.ExtendLost {
			continue
		}
		k := grant(ev.Client, ev.Key, ev.Token)
		t := ev.Time
		if ev.ValidUntil != 0 && ev.ValidUntil < t {
			t = ev.ValidUntil
		}
		why := "lost"
		var reported int64
		for _, r := range readings[k] {
			if r.at <= ev.Time {
				reported = max(reported, r.validUntil)
			}
		}
		for _, i := range idx[k] {
			holds[i].Reported = reported
		}
		if reported > t {
			t, why = reported, "reported-validity"
		}
		cut(k, t, why)
	}
	for i := range holds {
		if holds[i].End < holds[i].Start {
			// Lost before the grant was even seen (validity already past
			// on arrival): an empty interval.
			holds[i].End = holds[i].Start
		}
	}
	sort.SliceStable(holds, func(a, b int) bool {
		if holds[a].Key != holds[b].Key {
			return holds[a].Key < holds[b].Key
		}
		return holds[a].Start < holds[b].Start
	})
	return holds
}

// overlaps calls f for every pair of holds of one key by different
// clients whose intervals overlap (a started before b), with the overlap.
func overlaps(holds []Hold, f func(key string, a, b Hold, from, to int64)) {
	byKey := map[string][]Hold{}
	for _, h := range holds {
		byKey[h.Key] = append(byKey[h.Key], h)
	}
	for _, key := range sortedKeys(byKey) {
		var active []Hold
		for _, h := range byKey[key] { // sorted by Start
			kept := active[:0]
			for _, a := range active {
				if a.End > h.Start {
					kept = append(kept, a)
				}
			}
			active = kept
			for _, a := range active {
				if a.Client == h.Client || h.End <= h.Start {
					continue
				}
				f(key, a, h, h.Start, min(a.End, h.End))
			}
			if h.End > h.Start {
				active = append(active, h)
			}
		}
	}
}

// SingleHolder checks a history for single-holder.
//
// Invariant single-holder: for any key, the real-time intervals in which
// two different clients each believe they hold it never overlap
// (DESIGN.md's safety argument). The intervals are the clients' own: from
// the moment the grant arrived to the earlier of the release's invocation
// and the end of the client's belief once the lease was lost — its final
// ValidUntil, unless it had reported a later ValidUntil while healthy
// (issue 9: clients are judged by every ValidUntil they report, since
// users gate their writes on it). The harness and the clients share one
// monotonic clock, so the comparison is exact. Guarded by TestSingleHolder* and the replayed
// testdata/single-holder-*.jsonl.
func SingleHolder(records []history.Record) (Result, []Hold, error) {
	ops, events, err := history.Pair(records)
	if err != nil {
		return Result{}, nil, err
	}
	holds := Holds(ops, events, history.End(records))
	return singleHolder(holds), holds, nil
}

func singleHolder(holds []Hold) Result {
	r := newResult(NameSingleHolder)
	keys := map[string]bool{}
	var believed int64
	n := 0
	for _, h := range holds {
		if h.Shape == "" {
			keys[h.Key] = true
			believed += h.End - h.Start
			n++
		}
	}
	overlaps(holds, func(key string, a, h Hold, from, to int64) {
		if a.Shape != "" || h.Shape != "" {
			return // shapes: shared-exclusive and at-most-n judge them
		}
		r.violate(Violation{
			Key: key, Start: from, End: to,
			Clients: []string{a.Client, h.Client},
			Tokens:  []uint64{a.Token, h.Token},
			Ops:     []int64{a.Acquire, h.Acquire},
			Message: fmt.Sprintf("%s (token %d, %s-%s) and %s (token %d, %s-%s) both believed they held %q for %s",
				a.Client, a.Token, fmtT(a.Start), fmtT(a.End), h.Client, h.Token, fmtT(h.Start), fmtT(h.End), key, fmtT(to-from)),
		})
	})
	r.Stats["holds"] = int64(n)
	r.Stats["keys"] = int64(len(keys))
	r.Stats["believed_ns"] = believed
	r.Summary = fmt.Sprintf("%s on %s, %s overlapping", plural(n, "exclusive holding period", "exclusive holding periods"),
		plural(len(keys), "key", "keys"), plural(len(r.Violations), "pair", "pairs"))
	return r
}
