// Package checker judges a chaos campaign's history (package history).
//
// It owns the named safety checks the harness reports and the data they
// are computed from (belief intervals, fault windows). It does not run
// anything or draw anything: package runner drives a campaign and package
// report renders the results.
//
// Checkers, by the names used across the project (STYLE.md point 12):
//
//   - single-holder (SingleHolder): for every key, the real-time intervals
//     in which two different clients each believed they held it never
//     overlap.
//   - shared-exclusive (SharedExclusive): no shared (or semaphore) holder
//     beside an exclusive one, nor shared beside semaphore, by the same
//     belief intervals.
//   - at-most-n (SemaphoreLimit): at no instant more than N clients believe
//     they hold a slot of a semaphore of N.
//   - set-atomicity (SetAtomicity): no read ever shows part of a
//     multi-key lease, and every get made while a client believed it held
//     a set shows the set on that key.
//   - monotonic-token (MonotonicToken): grant tokens strictly increase per
//     key in real-time grant order, no token is granted twice, and the
//     simulated resource never accepted a write with a token older than
//     one it had accepted before.
//   - linearizable (Linearizable): acquire, release, get and check-token of
//     each key are linearizable against package model, with porcupine.
//   - recovery (Recovery): after the final heal the cluster serves within a
//     bound, and every node reaches the same state digest.
//   - takeover-bound (Takeover): a key whose holder was killed is granted
//     to a waiting client within TTL + lock-delay + one election (+ slack)
//     of the dead holder's last extend, also under leader churn.
//   - node-port-auth (NodePortAuth): every attempt of the rogue peer (an
//     outsider without the cluster's credentials) was refused.
//   - availability (Availability): ok / fail / indeterminate counts per
//     fault window; informational, never a violation.
//
// Each is shown to fail on known-bad histories saved under jepsen/testdata
// (see checker_test.go): a check that cannot fail proves nothing.
package checker

import (
	"fmt"
	"sort"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

// Verdict is a checker's conclusion.
type Verdict string

// Verdicts.
const (
	// Valid: no violation found.
	Valid Verdict = "valid"
	// Invalid: at least one violation.
	Invalid Verdict = "invalid"
	// Unknown: the check could not conclude (porcupine timed out, or the
	// data it needs is missing). Reported, but not a violation.
	Unknown Verdict = "unknown"
)

// Names of the checkers.
const (
	NameSingleHolder    = "single-holder"
	NameSharedExclusive = "shared-exclusive"
	NameSemaphoreLimit  = "at-most-n"
	NameSetAtomicity    = "set-atomicity"
	NameMonotonicToken  = "monotonic-token"
	NameLinearizable    = "linearizable"
	NameRecovery        = "recovery"
	NameTakeover        = "takeover-bound"
	NameNodePortAuth    = "node-port-auth"
	NameAvailability    = "availability"
)

// Violation is one piece of evidence against a property.
type Violation struct {
	// Checker is the name of the checker that found it.
	Checker string `json:"checker"`
	// Key is the lease key concerned (empty for cluster-wide ones).
	Key string `json:"key,omitempty"`
	// Start and End delimit it in harness time (ns); End == Start for a
	// point.
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	// Clients involved.
	Clients []string `json:"clients,omitempty"`
	// Tokens involved.
	Tokens []uint64 `json:"tokens,omitempty"`
	// Ops are the history IDs of the operations involved.
	Ops []int64 `json:"ops,omitempty"`
	// Message explains it to a human.
	Message string `json:"message"`
}

// Result is what one checker concluded.
type Result struct {
	// Name is the checker's name (single-holder, ...).
	Name string `json:"name"`
	// Verdict is valid, invalid or unknown.
	Verdict Verdict `json:"verdict"`
	// Summary is one line for humans.
	Summary string `json:"summary"`
	// Violations found (empty when valid).
	Violations []Violation `json:"violations,omitempty"`
	// Stats are checker-specific numbers (counts, durations in ns).
	Stats map[string]int64 `json:"stats,omitempty"`
	// Notes are observations that are not violations.
	Notes []string `json:"notes,omitempty"`
}

func newResult(name string) Result {
	return Result{Name: name, Verdict: Valid, Stats: map[string]int64{}}
}

func (r *Result) violate(v Violation) {
	v.Checker = r.Name
	r.Verdict = Invalid
	r.Violations = append(r.Violations, v)
}

// Options tunes Check.
type Options struct {
	// LinearizableTimeout bounds porcupine per segment of a key's
	// history; 0: one minute.
	LinearizableTimeout time.Duration
	// IndeterminateHorizon is how long after its completion record an
	// indeterminate operation may still take effect, unless a later read
	// proves it did later (see linearizable.go); 0:
	// DefaultIndeterminateHorizon; negative: no bound (whole-key search,
	// which long histories do not finish).
	IndeterminateHorizon time.Duration
	// ServeBound is the longest the cluster may take to serve again after
	// the final heal; 0: 30 s.
	ServeBound time.Duration
	// VisualizeDir, if set, receives porcupine's visualization
	// (lin-KEY.html) for every key found not linearizable.
	VisualizeDir string
	// Takeover bounds takeover-bound.
	Takeover TakeoverOptions
}

func (o Options) withDefaults() Options {
	if o.LinearizableTimeout == 0 {
		o.LinearizableTimeout = time.Minute
	}
	if o.IndeterminateHorizon == 0 {
		o.IndeterminateHorizon = DefaultIndeterminateHorizon
	}
	if o.ServeBound == 0 {
		o.ServeBound = 30 * time.Second
	}
	return o
}

// Results is the outcome of Check.
type Results struct {
	// Verdict is Invalid if any checker is, else Unknown if any is, else
	// Valid.
	Verdict Verdict `json:"verdict"`
	// Checkers in a fixed order.
	Checkers []Result `json:"checkers"`
	// Holds are the belief intervals single-holder judged.
	Holds []Hold `json:"holds"`
	// Windows are the fault windows availability counted.
	Windows []Window `json:"windows"`
	// Visualizations maps a key to its porcupine visualization file.
	Visualizations map[string]string `json:"visualizations,omitempty"`
}

// Violations returns every violation of every checker.
func (r Results) Violations() []Violation {
	var out []Violation
	for _, c := range r.Checkers {
		out = append(out, c.Violations...)
	}
	return out
}

// Get returns the result of the named checker.
func (r Results) Get(name string) (Result, bool) {
	for _, c := range r.Checkers {
		if c.Name == name {
			return c, true
		}
	}
	return Result{}, false
}

// Check runs every checker on a history.
func Check(records []history.Record, opts Options) (Results, error) {
	opts = opts.withDefaults()
	ops, events, err := history.Pair(records)
	if err != nil {
		return Results{}, err
	}
	holds := Holds(ops, events, history.End(records))
	sh := singleHolder(holds)
	sx := sharedExclusive(holds)
	sl := semaphoreLimit(holds)
	sa := setAtomicity(ops, holds)
	mt := monotonicToken(ops)
	lin, vis := linearizable(ops, opts)
	rec := recovery(ops, events, opts.ServeBound)
	windows := Windows(ops)
	tk := takeover(ops, events, windows, opts.Takeover)
	npa := nodePortAuth(ops)
	av := availability(windows)
	res := Results{
		Checkers:       []Result{sh, sx, sl, sa, mt, lin, rec, tk, npa, av},
		Holds:          holds,
		Windows:        windows,
		Visualizations: vis,
	}
	res.Verdict = Combine(res.Checkers...)
	return res, nil
}

// Combine returns Invalid if any result is invalid, else Unknown if any is
// unknown, else Valid.
func Combine(rs ...Result) Verdict {
	v := Valid
	for _, r := range rs {
		switch r.Verdict {
		case Invalid:
			return Invalid
		case Unknown:
			v = Unknown
		}
	}
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fmtT renders harness time for messages.
func fmtT(t int64) string {
	if t == history.Infinity {
		return "∞"
	}
	return time.Duration(t).Round(time.Millisecond).String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
