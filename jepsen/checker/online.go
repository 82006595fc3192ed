package checker

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/jepsen/model"
)

// Online checks a history while a campaign is still recording it, so
// that a long campaign reports as it goes and a harness that dies at
// hour three loses nothing decided before: each Advance decides what has
// settled and appends one JSON line per verdict to a writer (the
// campaign's verdicts.jsonl).
//
// What settles. A linearizable segment of a key (see linearizable.go) is
// final once the next segment of that key has begun more than Lag ago:
// no operation recorded later can fall into it. Online carries each key's
// states across the segments it has decided, so every Advance costs the
// new segments only. The other checkers are linear in the history; they
// are run on the whole history so far, and a violation is reported once
// it starts more than Lag ago (by then every record that could end one
// of its holding periods earlier has been written).
//
// The check at the end of the campaign (Check) is the authoritative one;
// it repeats the work from the start. An online line can only differ
// from it if a read more than Lag after an indeterminate acquire proves
// that acquire was granted (see witness): the online check had by then
// closed the acquire's segment with the horizon's bound.
type Online struct {
	// Opts are the checkers' options.
	Opts Options
	// Lag is how long a segment or a violation must lie in the past to be
	// decided; 0: twice the indeterminate horizon.
	Lag time.Duration
	// Out receives one JSON line per verdict (see VerdictLine).
	Out io.Writer

	keys     map[string]*onlineKey
	reported map[string]bool
	checked  int64 // the cut-off of the previous Advance
}

type onlineKey struct {
	reach     []model.State
	after     int64 // operations invoked after this are not decided yet
	synced    bool
	failed    bool
	segments  int
	undecided int
}

// VerdictLine is one line of verdicts.jsonl.
type VerdictLine struct {
	// Wall is the wall-clock time of the line (for people reading it
	// during a campaign); T is harness time.
	Wall time.Time `json:"wall"`
	T    int64     `json:"t"`
	// Final marks the lines of the check at the end of the campaign.
	Final   bool    `json:"final,omitempty"`
	Checker string  `json:"checker"`
	Key     string  `json:"key,omitempty"`
	Verdict Verdict `json:"verdict"`
	// From and To delimit what the line decided (harness ns): the
	// segments' operations, or the window of a cheap checker.
	From int64 `json:"from"`
	To   int64 `json:"to"`
	// Segments are the numbers (1-based, per key) of the segments
	// decided, and Ops their operations.
	Segments []int `json:"segments,omitempty"`
	Ops      int   `json:"ops,omitempty"`
	// CheckMS is porcupine's time on them.
	CheckMS int64 `json:"check_ms,omitempty"`
	// Summary or the violations found.
	Summary    string      `json:"summary,omitempty"`
	Violations []Violation `json:"violations,omitempty"`
}

func (o *Online) lag() int64 {
	if o.Lag > 0 {
		return int64(o.Lag)
	}
	h := o.Opts.withDefaults().IndeterminateHorizon
	if h < 0 {
		h = DefaultIndeterminateHorizon
	}
	return int64(2 * h)
}

// Advance decides what has settled in records (the history so far) at
// harness time now, writes the verdict lines and returns them. With now
// = history.Infinity everything is decided (the campaign is over).
func (o *Online) Advance(records []history.Record, now int64) ([]VerdictLine, error) {
	opts := o.Opts.withDefaults()
	if o.keys == nil {
		o.keys = map[string]*onlineKey{}
		o.reported = map[string]bool{}
	}
	cutoff := now
	if now != history.Infinity {
		cutoff = now - o.lag()
	}
	if cutoff <= o.checked {
		return nil, nil
	}
	ops, events, err := history.Pair(records)
	if err != nil {
		return nil, err
	}
	wall := time.Now()
	var lines []VerdictLine

	byKey := keyOperations(ops, opts.IndeterminateHorizon)
	for _, key := range sortedKeys(byKey) {
		kops, _, _, _ := witness(byKey[key])
		st := o.keys[key]
		if st == nil {
			st = &onlineKey{reach: []model.State{{}}, after: -1, synced: true}
			o.keys[key] = st
		}
		if st.failed {
			continue
		}
		var open []keyOp
		for _, ko := range kops {
			if ko.op.Call > st.after {
				open = append(open, ko)
			}
		}
		segs := segments(open)
		batch := VerdictLine{Wall: wall, T: now, Checker: NameLinearizable, Key: key, Verdict: Valid, From: -1}
		flush := func() {
			if batch.Ops > 0 {
				batch.Summary = fmt.Sprintf("segments %d-%d: %d operations linearizable", batch.Segments[0], batch.Segments[1], batch.Ops)
				lines = append(lines, batch)
			}
			batch = VerdictLine{Wall: wall, T: now, Checker: NameLinearizable, Key: key, Verdict: Valid, From: -1}
		}
		for i, seg := range segs {
			last := i == len(segs)-1
			if (last && now != history.Infinity) || (!last && segs[i+1][0].op.Call >= cutoff) {
				break
			}
			var to int64
			for _, ko := range seg {
				if ko.op.Return != history.Infinity {
					to = max(to, ko.op.Return)
				}
			}
			st.segments++
			st.after = max(to, seg[len(seg)-1].op.Call)
			if !st.synced {
				if !resyncs(seg) {
					st.undecided++
					flush()
					lines = append(lines, VerdictLine{Wall: wall, T: now, Checker: NameLinearizable, Key: key, Verdict: Unknown,
						From: seg[0].op.Call, To: to, Segments: []int{st.segments, st.segments}, Ops: len(seg),
						Summary: "not checked: the states before it are unknown (an earlier segment was undecided)"})
					continue
				}
				st.reach, st.synced = []model.State{{}}, true
			}
			pops := make([]porcupine.Operation, len(seg))
			for j, ko := range seg {
				pops[j] = ko.op
			}
			start := time.Now()
			res, next := model.Reach(pops, st.reach, opts.LinearizableTimeout)
			ms := time.Since(start).Milliseconds()
			switch res {
			case porcupine.Ok:
				st.reach = next
				if batch.From < 0 {
					batch.From, batch.Segments = seg[0].op.Call, []int{st.segments, st.segments}
				}
				batch.To, batch.Segments[1] = to, st.segments
				batch.Ops += len(seg)
				batch.CheckMS += ms
				continue
			case porcupine.Unknown:
				st.undecided++
				st.synced = false
				flush()
				lines = append(lines, VerdictLine{Wall: wall, T: now, Checker: NameLinearizable, Key: key, Verdict: Unknown,
					From: seg[0].op.Call, To: to, Segments: []int{st.segments, st.segments}, Ops: len(seg), CheckMS: ms,
					Summary: fmt.Sprintf("porcupine did not decide it within %v", opts.LinearizableTimeout)})
				continue
			}
			flush()
			v, _ := segmentViolation(key, seg, st.reach, Options{LinearizableTimeout: opts.LinearizableTimeout, IndeterminateHorizon: opts.IndeterminateHorizon})
			v.Checker = NameLinearizable
			st.failed = true
			lines = append(lines, VerdictLine{Wall: wall, T: now, Checker: NameLinearizable, Key: key, Verdict: Invalid,
				From: seg[0].op.Call, To: to, Segments: []int{st.segments, st.segments}, Ops: len(seg), CheckMS: ms,
				Summary: v.Message, Violations: []Violation{*v}})
			break
		}
		flush()
	}

	// The linear checkers, on everything so far.
	for _, r := range o.linear(ops, events, records, opts) {
		var fresh []Violation
		for _, v := range r.Violations {
			id := fmt.Sprintf("%s|%s|%d|%v|%v", r.Name, v.Key, v.Start, v.Clients, v.Tokens)
			if v.Start >= cutoff || o.reported[id] {
				continue
			}
			o.reported[id] = true
			fresh = append(fresh, v)
		}
		line := VerdictLine{Wall: wall, T: now, Checker: r.Name, Verdict: Valid, From: max(o.checked, 0), To: cutoff}
		if now == history.Infinity {
			line.To = history.End(records)
		}
		if len(fresh) > 0 {
			line.Verdict, line.Violations = Invalid, fresh
			line.Summary = fmt.Sprintf("%s since the last report", plural(len(fresh), "violation", "violations"))
		} else if r.Verdict == Unknown {
			line.Verdict, line.Summary = Unknown, r.Summary
		}
		lines = append(lines, line)
	}
	o.checked = cutoff
	return lines, o.write(lines)
}

// linear runs the checkers whose cost is linear in the history.
func (o *Online) linear(ops []history.Operation, events []history.Record, records []history.Record, opts Options) []Result {
	holds := Holds(ops, events, history.End(records))
	return []Result{singleHolder(holds), sharedExclusive(holds), semaphoreLimit(holds), setAtomicity(ops, holds),
		monotonicToken(ops), takeover(ops, events, Windows(ops), opts.Takeover), nodePortAuth(ops)}
}

func (o *Online) write(lines []VerdictLine) error {
	if o.Out == nil {
		return nil
	}
	for _, l := range lines {
		b, err := json.Marshal(l)
		if err != nil {
			return err
		}
		if _, err := o.Out.Write(append(b, '\n')); err != nil {
			return err
		}
	}
	if s, ok := o.Out.(interface{ Sync() error }); ok {
		return s.Sync()
	}
	return nil
}

// FinalLines turns the authoritative results of Check into verdict lines
// (Final set), for the end of verdicts.jsonl.
func FinalLines(res Results, end int64) []VerdictLine {
	wall := time.Now()
	var out []VerdictLine
	for _, c := range res.Checkers {
		out = append(out, VerdictLine{Wall: wall, T: end, Final: true, Checker: c.Name, Verdict: c.Verdict,
			From: 0, To: end, Summary: c.Summary, Violations: c.Violations})
	}
	return out
}

// WriteLines appends lines to w as JSON, one per line.
func WriteLines(w io.Writer, lines []VerdictLine) error {
	o := Online{Out: w}
	return o.write(lines)
}
