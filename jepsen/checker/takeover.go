package checker

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

// TakeoverOptions bound how long a key whose holder was killed may stay
// unavailable to a client waiting for it.
type TakeoverOptions struct {
	// Election is one election: from a leader's loss to a new leader that
	// serves (failure detection, vote, Barrier and Promote); 0: 1 s.
	Election time.Duration
	// Slack absorbs what the bound does not model: the round trip of the
	// killed holder's last extend, the leader's reaper and waiter queue,
	// and the waiter's own retries when the leader it waits at changes
	// (under leader churn, one churn period); 0: 1.5 s.
	Slack time.Duration
	// Drift is the clients' drift bound (0: lease.DefaultDrift, 1 %).
	Drift float64
}

func (o TakeoverOptions) withDefaults() TakeoverOptions {
	if o.Election == 0 {
		o.Election = time.Second
	}
	if o.Slack == 0 {
		o.Slack = 1500 * time.Millisecond
	}
	if o.Drift == 0 {
		o.Drift = 0.01
	}
	return o
}

// takeoverFaults are the fault windows in which the bound is judged: no
// fault, and leader churn (the point of the check). Other faults may
// legitimately keep the waiter from the leader (a partition, a stopped
// node it waits at) and excuse a slow takeover.
var takeoverFaults = map[string]bool{"none": true, "leader-churn": true}

// Takeover checks a history for takeover-bound.
//
// Invariant takeover-bound: when a holder dies (the harness kills it: its
// client stops extending and never releases), a client waiting for the
// key is granted it within TTL + lock-delay (if the dead holder's grant
// asked for one) + one election + Slack of the dead holder's last
// successful extend — also while leadership changes every TTL/2
// (leader-churn). Where the history shows when no node served as leader
// (leader-churn's steps: history.LeaderStop to the LeaderMove after it),
// the election is the time without a leader after TTL + lock-delay, if
// that is longer: nothing can be granted then, and under churn on a
// loaded host one step's election took 1.5 s and the next leader was
// stopped 60 ms after it served (a 3-node campaign: 5.18 s against a 5 s
// bound, 3.1 s of it without a leader). The time without a leader before
// then is not excused: a lease must keep its remaining time through it
// (a server counting an election per leader change as time left fails
// here as before). A leader change must keep each lease's remaining time
// (DESIGN.md rule 2): a server that restarts a full TTL on every change
// never expires a dead holder's lease while leaders change faster than a
// TTL, and fails this check. The last successful extend is anchored at
// the later of the grant's completion and ValidUntil − TTL·(1 − drift) at
// the crash (the send time of the extend that set that validity, by the
// client's rule 6), or of an extend sent before the crash and answered
// after it (the dead client's later Observe). Crashes during other
// faults, without a waiter, or too close to the end of the campaign are
// counted as not judged. Guarded by TestTakeover* and the replayed
// testdata/takeover-bound.*.jsonl.
func Takeover(records []history.Record, opts TakeoverOptions) (Result, error) {
	ops, events, err := history.Pair(records)
	if err != nil {
		return Result{}, err
	}
	return takeover(ops, events, Windows(ops), opts), nil
}

func takeover(ops []history.Operation, events []history.Record, windows []Window, opts TakeoverOptions) Result {
	opts = opts.withDefaults()
	r := newResult(NameTakeover)
	grants := map[string][]history.Operation{} // per key, OK acquires by completion
	acquires := map[string][]history.Operation{}
	byToken := map[string]history.Operation{}
	var end int64
	for _, op := range ops {
		end = max(end, op.Invoke.Time)
		if op.Complete.Type != history.Info || !op.Open {
			end = max(end, op.Complete.Time)
		}
		if op.Invoke.Op != history.Acquire {
			continue
		}
		k := op.Invoke.Key
		acquires[k] = append(acquires[k], op)
		if op.Complete.Type == history.OK {
			grants[k] = append(grants[k], op)
			byToken[fmt.Sprintf("%s|%d", k, op.Complete.Token)] = op
		}
	}
	for _, gs := range grants {
		sort.Slice(gs, func(a, b int) bool { return gs[a].Complete.Time < gs[b].Complete.Time })
	}
	gaps := leaderless(events, end)
	var crashes, judged, stretched int
	excused := map[string]int{}
	var delays []time.Duration
	var worst time.Duration
	var stillborn int // takeover grants whose validity had passed on arrival
	for _, ev := range events {
		if ev.Op != history.Crash {
			continue
		}
		crashes++
		ttl := time.Duration(ev.TTL)
		anchor := ev.Time
		if g, ok := byToken[fmt.Sprintf("%s|%d", ev.Key, ev.Token)]; ok {
			anchor = g.Complete.Time
		}
		// An extend sent before the crash may be answered after it (the
		// client's later Observe shows its validity): the server extended
		// the lease then, so that send counts as the last extend.
		valid := ev.ValidUntil
		for _, o := range events {
			if o.Op == history.Observe && o.Client == ev.Client && o.Key == ev.Key && o.Token == ev.Token && o.Time >= ev.Time {
				valid = max(valid, o.ValidUntil)
			}
		}
		if valid != 0 {
			anchor = max(anchor, valid-int64(float64(ttl)*(1-opts.Drift)))
		}
		anchor = min(anchor, ev.Time)
		expiry := anchor + int64(ttl+time.Duration(ev.LockDelay))
		election, deadline := opts.Election, int64(0)
		for range 16 { // the deadline only grows; the gaps are few
			d := expiry + int64(election+opts.Slack)
			if d == deadline {
				break
			}
			deadline = d
			election = max(opts.Election, overlap(gaps, expiry, deadline))
		}
		bound := time.Duration(deadline - anchor)
		if election > opts.Election {
			stretched++
		}
		// The next grant of the key to another client after the crash.
		var next *history.Operation
		for i, g := range grants[ev.Key] {
			if g.Complete.Time > ev.Time && g.Invoke.Client != ev.Client && g.Complete.Token > ev.Token {
				next = &grants[ev.Key][i]
				break
			}
		}
		// Judged only if a client was waiting through the deadline (or
		// was granted), in windows of no fault or leader churn.
		waiting := false
		for _, a := range acquires[ev.Key] {
			if a.Invoke.Client == ev.Client || a.Invoke.Time > deadline {
				continue
			}
			if a.Complete.Type == history.OK && a.Complete.Time > ev.Time || a.Complete.Time > deadline || a.Open {
				waiting = true
			}
		}
		var why string
		switch {
		case deadline > end:
			why = "the campaign ended before the deadline"
		case !waiting:
			why = "no client was waiting"
		default:
			for _, w := range windows {
				if w.End >= ev.Time && w.Start <= deadline && !takeoverFaults[w.Fault] {
					why = "during " + w.Fault
					break
				}
			}
		}
		if next != nil && next.Complete.Time <= deadline {
			why = "" // in time is in time, whatever else happened
		}
		if why != "" {
			excused[why]++
			continue
		}
		judged++
		if next != nil && next.Complete.ValidUntil != 0 && next.Complete.ValidUntil <= next.Complete.Time {
			stillborn++
		}
		if next != nil {
			d := time.Duration(next.Complete.Time - anchor)
			delays = append(delays, d)
			worst = max(worst, d)
			if next.Complete.Time <= deadline {
				continue
			}
		}
		msg := fmt.Sprintf("%s was killed at %s holding %q (token %d, last extend at %s); ", ev.Client, fmtT(ev.Time), ev.Key, ev.Token, fmtT(anchor))
		v := Violation{Key: ev.Key, Start: anchor, Tokens: []uint64{ev.Token}, Clients: []string{ev.Client}, Ops: []int64{ev.ID}}
		if next != nil {
			v.End = next.Complete.Time
			v.Clients = append(v.Clients, next.Invoke.Client)
			v.Tokens = append(v.Tokens, next.Complete.Token)
			v.Ops = append(v.Ops, next.Invoke.ID)
			what := "election"
			if election > opts.Election {
				what = "time without a leader after TTL + lock-delay"
			}
			msg += fmt.Sprintf("%s was granted it only at %s, %s after the last extend, more than the bound %s (TTL %s + lock-delay %s + %s %s + slack %s)",
				next.Invoke.Client, fmtT(next.Complete.Time), fmtT(next.Complete.Time-anchor), bound, ttl, time.Duration(ev.LockDelay), what, election, opts.Slack)
		} else {
			v.End = end
			msg += fmt.Sprintf("no waiting client was granted it by the end of the history, %s after the last extend (bound %s)", fmtT(end-anchor), bound)
		}
		v.Message = msg
		r.violate(v)
	}
	sort.Slice(delays, func(a, b int) bool { return delays[a] < delays[b] })
	r.Stats["crashes"] = int64(crashes)
	r.Stats["judged"] = int64(judged)
	r.Stats["worst_ns"] = int64(worst)
	if len(delays) > 0 {
		r.Stats["median_ns"] = int64(delays[len(delays)/2])
	}
	var ex []string
	var nEx int
	for _, k := range sortedKeys(excused) {
		ex = append(ex, fmt.Sprintf("%d %s", excused[k], k))
		nEx += excused[k]
	}
	r.Stats["not_judged"] = int64(nEx)
	r.Stats["stillborn"] = int64(stillborn)
	r.Stats["leaderless_stretched"] = int64(stretched)
	if stretched > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d bounds counted more than one election: the time without a serving leader after TTL + lock-delay (leader-churn steps) was longer", stretched))
	}
	if stillborn > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d takeover grants arrived with their validity already over (the waiter's client could not use them: the wait its leader reported did not cover the whole wait)", stillborn))
	}
	if len(ex) > 0 {
		r.Notes = append(r.Notes, "not judged: "+strings.Join(ex, ", "))
	}
	switch {
	case crashes == 0:
		r.Summary = "no holder was killed"
	default:
		r.Summary = fmt.Sprintf("%s, %d judged (%d not), takeover after the last extend: median %s, worst %s, %s late",
			plural(crashes, "killed holder", "killed holders"), judged, nEx, time.Duration(r.Stats["median_ns"]).Round(time.Millisecond),
			worst.Round(time.Millisecond), plural(len(r.Violations), "takeover", "takeovers"))
	}
	return r
}

// gap is a span of a history in which no node served as leader.
type gap struct{ from, to int64 }

// leaderless returns the spans without a serving leader that the history
// shows, in order: from each LeaderStop to the LeaderMove after it, or
// the next LeaderStop, or churnStepLimit (the step gave up and resumed
// the leader), or end.
func leaderless(events []history.Record, end int64) []gap {
	var out []gap
	for i, ev := range events {
		if ev.Op != history.LeaderStop {
			continue
		}
		g := gap{from: ev.Time, to: min(end, ev.Time+int64(churnStepLimit))}
		for _, next := range events[i+1:] {
			if next.Op == history.LeaderMove || next.Op == history.LeaderStop {
				g.to = min(g.to, max(next.Time, ev.Time))
				break
			}
		}
		out = append(out, g)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].from < out[b].from })
	return out
}

// churnStepLimit is how long a leader-churn step waits for another leader
// before it resumes the one it stopped (nemesis).
const churnStepLimit = 5 * time.Second

// overlap is how much of [from, to] the gaps cover.
func overlap(gaps []gap, from, to int64) time.Duration {
	var d int64
	for _, g := range gaps {
		if lo, hi := max(g.from, from), min(g.to, to); hi > lo {
			d += hi - lo
		}
	}
	return time.Duration(d)
}
