package checker

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/jepsen/model"
)

// DefaultIndeterminateHorizon is how long after its completion record an
// indeterminate operation may still take effect, unless a later read
// proves it took effect later (see Options.IndeterminateHorizon).
const DefaultIndeterminateHorizon = 30 * time.Second

// Linearizable checks a history for linearizable: per key, the acquire,
// release, get and check-token operations must be linearizable against
// package model. Indeterminate operations may take effect after their
// invocation, or never (see Options.IndeterminateHorizon for how late).
// timeout bounds porcupine per segment; a key with a segment it could not
// decide in time makes the verdict Unknown. If visDir is not empty,
// porcupine's visualization of every failing key is written there as
// lin-KEY.html; the returned map names the files.
//
// Invariant linearizable: the cluster behaves as one lease register per
// key — reads never see a released or superseded grant, a refusal never
// follows a release without a grant in between, and tokens grow in the
// order grants take effect. Guarded by TestLinearizable*, TestSegment* and
// the replayed testdata/linearizable.*.jsonl[.gz].
func Linearizable(records []history.Record, timeout time.Duration, visDir string) (Result, map[string]string, error) {
	ops, _, err := history.Pair(records)
	if err != nil {
		return Result{}, nil, err
	}
	r, vis := linearizable(ops, Options{LinearizableTimeout: timeout, VisualizeDir: visDir}.withDefaults())
	return r, vis, nil
}

// # Deciding long histories: segments
//
// Porcupine's search grows with the number of operations that may be
// ordered in more than one way, and an indeterminate operation with an
// open end can be ordered after everything that follows it: a whole-key
// search over an hour of operations does not finish. The check therefore
// cuts each key's history into segments and decides them one after the
// other, carrying the set of states the key can be in across each cut.
//
// Open ends. An indeterminate operation A (its client saw no answer) is
// given a finite end, its bound: the end of a later get that can only be
// explained by A's grant (A's client as holder with a token no granted
// acquire of that client carries: A certainly took effect before that get
// returned), or else A's completion record plus the horizon H (what the
// cluster can still do with a request its client gave up on: a request
// delayed in a forwarding hop or a paused node, then served; H is longer
// than every fault's hold plus request timeouts). With a bound the model
// is a restriction of the unbounded one: every linearization it accepts,
// the unbounded model accepts too, so a key judged linearizable is
// linearizable — the bound can only make the check stricter. A violation
// found under it stands unless the cluster applied a request more than H
// after its client had given up (then the report says that the segment
// held such operations). An invocation with no completion at all (the
// history ended first) keeps an infinite end.
//
// Cuts. A cut is a time p such that every operation of the key invoked
// before p has returned (ended, or reached its bound) before p, and every
// other one is invoked after p. Linearizability respects real time: an
// operation that returned before another was invoked precedes it in every
// linearization. So every linearization of the history H = H1·H2 split at
// p is a linearization of H1 followed by one of H2, and
//
//	H is linearizable from the states S
//	⇔ some s ∈ Reach(H1, S) lets H2 be linearized from s
//	⇔ H2 is linearizable from the set Reach(H1, S),
//
// where Reach(H1, S) is the set of states some linearization of H1 from
// S ends in. model.Reach computes that set exactly with porcupine (a
// sentinel operation after the segment makes its search exhaustive; see
// its comment), and model.KeyModel starts the next segment in every state
// of the set (porcupine's nondeterministic models take a set of initial
// states). By induction over the segments, the key is linearizable iff
// every segment is, each from the set its predecessor can end in. A split
// point therefore cannot hide a violation: an order that crosses the cut
// is forbidden by real time, and every state the key can be in at the cut
// is carried across it. Nothing is approximated: "lease state known" at a
// cut means known as a set, which expiry (a nondeterministic step) makes
// necessary anyway.
//
// Undecided segments. If porcupine runs out of time on a segment, the
// states after it are unknown: the key is undecided, and checking resumes
// at the first later segment that begins with a grant ordered before all
// of its other operations (a grant's resulting state does not depend on
// the state before it, so checking from there is exact again).

// keyOp is one model operation of a key with the history facts the
// segmentation needs.
type keyOp struct {
	op porcupine.Operation
	// horizon: the end came from the horizon (not a witness or a
	// completion).
	horizon bool
	// waits: an acquire that waited (mode wait or timeout), which may
	// have made grants that arrived too late and were given back before
	// its outcome (see witness).
	waits bool
	// end is the operation's completion time (Infinity if it has none),
	// before any horizon or witness bound.
	end int64
}

// keyVerdict is the outcome of checking one key.
type keyVerdict struct {
	key       string
	ops       int
	segments  int
	maxSeg    int
	undecided int
	horizon   int // indeterminate ops bounded by the horizon
	witnessed int // indeterminate grants proven by a later read
	// companions: grants a waiting acquire gave back, proven by a read
	companions int
	late       []string
	checkNS    int64
	violation  *Violation
	vis        string
}

func linearizable(ops []history.Operation, opts Options) (Result, map[string]string) {
	r := newResult(NameLinearizable)
	byKey := keyOperations(ops, opts.IndeterminateHorizon)
	keys := sortedKeys(byKey)
	verdicts := make([]keyVerdict, len(keys))
	sem := make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for i, key := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			verdicts[i] = checkKey(key, byKey[key], opts)
		}()
	}
	wg.Wait()

	vis := map[string]string{}
	var unknown []string
	var total, segments, maxSeg, undecidedSegs, horizon, witnessed, companions int
	for _, v := range verdicts {
		total += v.ops
		segments += v.segments
		maxSeg = max(maxSeg, v.maxSeg)
		undecidedSegs += v.undecided
		horizon += v.horizon
		witnessed += v.witnessed
		companions += v.companions
		r.Stats["check_ns"] += v.checkNS
		r.Notes = append(r.Notes, v.late...)
		if v.undecided > 0 {
			unknown = append(unknown, v.key)
		}
		if v.vis != "" {
			vis[v.key] = v.vis
		}
		if v.violation != nil {
			r.violate(*v.violation)
		}
	}
	r.Stats["operations"] = int64(total)
	r.Stats["keys"] = int64(len(keys))
	r.Stats["keys_unknown"] = int64(len(unknown))
	r.Stats["segments"] = int64(segments)
	r.Stats["segments_undecided"] = int64(undecidedSegs)
	r.Stats["segment_max_ops"] = int64(maxSeg)
	r.Stats["indeterminate_horizon_bounded"] = int64(horizon)
	r.Stats["indeterminate_witnessed"] = int64(witnessed)
	r.Stats["waiting_grants_witnessed"] = int64(companions)
	if len(unknown) > 0 && r.Verdict == Valid {
		r.Verdict = Unknown
	}
	if len(unknown) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("porcupine did not decide %d segments of %v within %v each", undecidedSegs, unknown, opts.LinearizableTimeout))
	}
	r.Summary = fmt.Sprintf("%d operations on %s in %s (largest %d): %s not linearizable, %d undecided",
		total, plural(len(keys), "key", "keys"), plural(segments, "segment", "segments"), maxSeg,
		plural(len(r.Violations), "key", "keys"), len(unknown))
	return r, vis
}

// keyOperations translates the history into model operations per key and
// gives every indeterminate operation its bound (see the comment above).
func keyOperations(ops []history.Operation, horizon time.Duration) map[string][]keyOp {
	byID := make(map[int64]history.Operation, len(ops))
	for _, op := range ops {
		byID[op.Invoke.ID] = op
	}
	byKey := map[string][]keyOp{}
	for _, op := range model.Operations(exclusiveOnly(ops)) {
		k := op.Input.(model.Input).Key
		h := byID[op.Metadata.(int64)]
		ko := keyOp{op: op, end: h.Complete.Time,
			waits: h.Invoke.Op == history.Acquire && (h.Invoke.Mode == "wait" || h.Invoke.Mode == "timeout")}
		if h.Open {
			ko.end = history.Infinity
		}
		if op.Output.(model.Output).Unknown {
			switch {
			case h.Open || horizon < 0:
				ko.op.Return = history.Infinity
			default:
				ko.op.Return = h.Complete.Time + int64(horizon)
				ko.horizon = true
			}
		}
		byKey[k] = append(byKey[k], ko)
	}
	for _, kops := range byKey {
		sort.SliceStable(kops, func(a, b int) bool { return kops[a].op.Call < kops[b].op.Call })
	}
	return byKey
}

// exclusiveOnly drops the operations on keys that any acquire asked for
// in a shape or as part of a set: the model is a register with one holder
// (shared-exclusive, at-most-n and set-atomicity judge those keys).
func exclusiveOnly(ops []history.Operation) []history.Operation {
	shaped := map[string]bool{}
	for _, op := range ops {
		if inv := op.Invoke; inv.Op == history.Acquire && (inv.Shape != "" || len(inv.Items) > 0) {
			for _, it := range inv.AcquireItems() {
				shaped[it.Key] = true
			}
		}
	}
	if len(shaped) == 0 {
		return ops
	}
	out := make([]history.Operation, 0, len(ops))
	for _, op := range ops {
		if !shaped[op.Invoke.Key] {
			out = append(out, op)
		}
	}
	return out
}

// witness explains, by what later reads proved, grants the history does
// not show: a get that saw client c hold the key with a token no granted
// acquire of c carries proves a grant of that token to c, made by one of
// two kinds of operation of c invoked before the get returned.
//
//   - An indeterminate acquire (its own grant). If it is the only
//     candidate, it certainly took effect before the get returned: that
//     is its bound, even if later than the horizon. If there are several,
//     the latest indeterminate one is given at least the get's return as
//     its bound (an earlier one would explain the get no better: the get
//     proves c's grant is the last grant before it).
//   - A waiting acquire (mode wait or timeout), whatever its outcome: a
//     grant whose answer came after its validity is given back by the
//     lease client (released, or left to expire if the release fails),
//     which then asks again with a new request id, so one call can make
//     grants before its outcome that its record does not show (a get saw
//     w2 holding token 103 while w2's waiting acquire, granted 107 in the
//     end, was in progress). Such a grant is given a companion: an
//     indeterminate acquire of c over the waiting acquire's own interval
//     (invocation to completion), which the model may apply or not. Only
//     waiting acquires that can have made the grant get one: those
//     invoked before every operation that shows a larger token returned
//     and completed after every operation that shows a smaller one was
//     invoked (tokens grow in the order grants take effect), and granted
//     in the end, if at all, a larger token than the one seen.
//
// A companion only adds an effect the lease client can cause (and the
// model may leave it out), and only where a read proves a grant that
// nothing else explains, so it accepts no history the protocol forbids. It
// returns kops with the companions (sorted by invocation), how many
// indeterminate acquires it bounded, how many companions it added, and
// notes for the bounds past the horizon.
func witness(kops []keyOp) ([]keyOp, int, int, []string) {
	known := map[string]map[uint64]bool{}
	for _, ko := range kops {
		in, out := ko.op.Input.(model.Input), ko.op.Output.(model.Output)
		if in.Kind == model.KindAcquire && out.Granted {
			if known[in.Client] == nil {
				known[in.Client] = map[uint64]bool{}
			}
			known[in.Client][out.Token] = true
		}
	}
	n := 0
	var notes []string
	var companions []keyOp
	added := map[companionKey]bool{}
	for _, g := range kops {
		in, out := g.op.Input.(model.Input), g.op.Output.(model.Output)
		if in.Kind != model.KindGet || !out.Found || out.Holder == "" || out.Token == 0 || known[out.Holder][out.Token] {
			continue
		}
		lo, hi := tokenWindow(kops, out.Token)
		hi = min(hi, g.op.Return)
		best, candidates := -1, 0
		for i, a := range kops {
			ain, aout := a.op.Input.(model.Input), a.op.Output.(model.Output)
			if ain.Kind != model.KindAcquire || ain.Client != out.Holder || a.op.Call >= g.op.Return {
				continue
			}
			if aout.Unknown {
				best = i
				candidates++
			}
			if a.waits && a.op.Call < hi && a.end > lo && (!aout.Granted || aout.Token > out.Token) {
				candidates++
				if ck := (companionKey{i, out.Token}); !added[ck] {
					added[ck] = true
					c := a
					c.op.Output = model.Output{Unknown: true}
					c.op.Return, c.horizon = a.end, false
					companions = append(companions, c)
				}
			}
		}
		if best < 0 {
			continue
		}
		a := &kops[best]
		switch {
		case a.op.Return == g.op.Return:
			continue
		case a.op.Return > g.op.Return && candidates > 1:
			continue
		case a.op.Return < g.op.Return && a.horizon:
			notes = append(notes, fmt.Sprintf("%s's indeterminate acquire of %q (invoked at %s) was granted later than its horizon: a get returning at %s saw token %d",
				out.Holder, a.op.Input.(model.Input).Key, fmtT(a.op.Call), fmtT(g.op.Return), out.Token))
		}
		a.op.Return, a.horizon = g.op.Return, false
		n++
	}
	if len(companions) == 0 {
		return kops, n, 0, notes
	}
	all := append(append(make([]keyOp, 0, len(kops)+len(companions)), kops...), companions...)
	sort.SliceStable(all, func(a, b int) bool { return all[a].op.Call < all[b].op.Call })
	return all, n, len(companions), notes
}

// companionKey names one companion: the waiting acquire (its index in the
// key's operations) and the token a read saw.
type companionKey struct {
	op    int
	token uint64
}

// tokenWindow returns when a grant of token can have taken effect, by
// the tokens the operations show (granted, or read as the key's current
// one): after the invocation of every operation that shows a smaller
// token (lo), before the return of every one that shows a larger token
// (hi).
func tokenWindow(kops []keyOp, token uint64) (lo, hi int64) {
	hi = history.Infinity
	for _, ko := range kops {
		in, out := ko.op.Input.(model.Input), ko.op.Output.(model.Output)
		shown := uint64(0)
		switch {
		case in.Kind == model.KindAcquire && out.Granted:
			shown = out.Token
		case in.Kind == model.KindGet && out.Found:
			shown = out.Token
		}
		switch {
		case shown == 0:
		case shown < token:
			lo = max(lo, ko.op.Call)
		case shown > token:
			hi = min(hi, ko.op.Return)
		}
	}
	return lo, hi
}

// segments cuts a key's operations (sorted by call) where every earlier
// operation returned before the next one was invoked.
func segments(kops []keyOp) [][]keyOp {
	var out [][]keyOp
	start := 0
	var maxReturn int64
	for i, ko := range kops {
		if i > start && maxReturn < ko.op.Call {
			out = append(out, kops[start:i])
			start = i
		}
		if i == start {
			maxReturn = ko.op.Return
		} else {
			maxReturn = max(maxReturn, ko.op.Return)
		}
	}
	if start < len(kops) {
		out = append(out, kops[start:])
	}
	return out
}

// resyncs reports whether a segment begins with a grant that precedes all
// its other operations, so that checking can restart there from any
// state with a smaller token.
func resyncs(seg []keyOp) bool {
	first := seg[0].op
	in, out := first.Input.(model.Input), first.Output.(model.Output)
	if in.Kind != model.KindAcquire || !out.Granted {
		return false
	}
	for _, ko := range seg[1:] {
		if ko.op.Call <= first.Return {
			return false
		}
	}
	return true
}

func checkKey(key string, kops []keyOp, opts Options) keyVerdict {
	v := keyVerdict{key: key, ops: len(kops)}
	var lateNotes []string
	kops, v.witnessed, v.companions, lateNotes = witness(kops)
	v.late = lateNotes
	for _, ko := range kops {
		if ko.horizon {
			v.horizon++
		}
	}
	reach := []model.State{{}}
	synced := true
	segs := segments(kops)
	v.segments = len(segs)
	for _, seg := range segs {
		v.maxSeg = max(v.maxSeg, len(seg))
		if !synced {
			if !resyncs(seg) {
				v.undecided++
				continue
			}
			reach, synced = []model.State{{}}, true
		}
		pops := make([]porcupine.Operation, len(seg))
		for i, ko := range seg {
			pops[i] = ko.op
		}
		start := time.Now()
		res, next := model.Reach(pops, reach, opts.LinearizableTimeout)
		v.checkNS += int64(time.Since(start))
		switch res {
		case porcupine.Ok:
			reach = next
			continue
		case porcupine.Unknown:
			v.undecided++
			synced = false
			continue
		}
		v.violation, v.vis = segmentViolation(key, seg, reach, opts)
		// The rest of the key is not checked: one violation per key is
		// the evidence, and the states after it are meaningless.
		break
	}
	return v
}

// segmentViolation explains a segment that is not linearizable from the
// states reach: the first operation no linearization could include, and
// porcupine's visualization of the segment.
func segmentViolation(key string, seg []keyOp, reach []model.State, opts Options) (*Violation, string) {
	pops := make([]porcupine.Operation, len(seg))
	var horizonOps int
	for i, ko := range seg {
		pops[i] = ko.op
		if ko.horizon {
			horizonOps++
		}
	}
	m := model.KeyModel(reach)
	_, info := porcupine.CheckOperationsVerbose(m, pops, opts.LinearizableTimeout)
	v := Violation{Key: key}
	v.Start, v.End = history.Infinity, 0
	for _, op := range pops {
		v.Start = min(v.Start, op.Call)
		if op.Return != history.Infinity {
			v.End = max(v.End, op.Return)
		}
	}
	var states []string
	for _, s := range reach {
		states = append(states, s.String())
	}
	where := fmt.Sprintf("the segment %s-%s of %d operations, starting in {%s}", fmtT(v.Start), fmtT(v.End), len(pops), strings.Join(states, "; "))
	v.Message = fmt.Sprintf("the operations on %q are not linearizable: %s", key, where)
	if stuck, n, ok := firstUnlinearized(info, pops); ok {
		in := stuck.Input.(model.Input)
		v.Start, v.End = stuck.Call, stuck.Call
		if stuck.Return != history.Infinity {
			v.End = stuck.Return
		}
		v.Ops = []int64{stuck.Metadata.(int64)}
		v.Clients = []string{in.Client}
		v.Message = fmt.Sprintf("the operations on %q are not linearizable: in %s, at most %d of %d could be ordered; the first that never fits is %q at %s",
			key, where, n, len(pops), model.Describe(in, stuck.Output.(model.Output)), fmtT(stuck.Call))
	}
	if horizonOps > 0 {
		v.Message += fmt.Sprintf(" (assuming its %d indeterminate operations took effect, if at all, within %v of their completion)",
			horizonOps, opts.IndeterminateHorizon)
	}
	path := ""
	if opts.VisualizeDir != "" {
		p := filepath.Join(opts.VisualizeDir, "lin-"+safeName(key)+".html")
		if err := os.MkdirAll(opts.VisualizeDir, 0o755); err == nil {
			if err := porcupine.VisualizePath(m, info, p); err == nil {
				path = p
				v.Message += " (see " + filepath.Base(p) + ")"
			}
		}
	}
	return &v, path
}

// firstUnlinearized finds, for a failing history, the longest partial
// linearization porcupine found and the earliest-invoked operation it
// could not include: the place to start reading.
func firstUnlinearized(info porcupine.LinearizationInfo, ops []porcupine.Operation) (porcupine.Operation, int, bool) {
	parts := info.PartialLinearizationsOperations()
	var longest []porcupine.Operation
	for _, p := range parts {
		for _, lin := range p {
			if len(lin) > len(longest) {
				longest = lin
			}
		}
	}
	in := map[int64]bool{}
	for _, op := range longest {
		if id, ok := op.Metadata.(int64); ok {
			in[id] = true
		}
	}
	var best porcupine.Operation
	found := false
	for _, op := range ops {
		id, ok := op.Metadata.(int64)
		if !ok || in[id] {
			continue
		}
		if !found || op.Call < best.Call {
			best, found = op, true
		}
	}
	return best, len(longest), found
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(key string) string {
	s := unsafeChars.ReplaceAllString(key, "_")
	if s == "" {
		s = "_"
	}
	return s
}
