package checker

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/jepsen/model"
)

// Linearizable checks a history for linearizable: per key, the acquire,
// release, get and check-token operations must be linearizable against
// package model. Indeterminate operations may take effect at any time
// after their invocation, or never. timeout bounds porcupine per key; a
// key it could not decide in time makes the verdict Unknown. If visDir is
// not empty, porcupine's visualization of every failing key is written
// there as lin-KEY.html; the returned map names the files.
//
// Invariant linearizable: the cluster behaves as one lease register per
// key — reads never see a released or superseded grant, a refusal never
// follows a release without a grant in between, and tokens grow in the
// order grants take effect. Guarded by TestLinearizable* and the replayed
// testdata/linearizable-*.jsonl.
func Linearizable(records []history.Record, timeout time.Duration, visDir string) (Result, map[string]string, error) {
	ops, _, err := history.Pair(records)
	if err != nil {
		return Result{}, nil, err
	}
	r, vis := linearizable(ops, Options{LinearizableTimeout: timeout, VisualizeDir: visDir}.withDefaults())
	return r, vis, nil
}

func linearizable(ops []history.Operation, opts Options) (Result, map[string]string) {
	r := newResult(NameLinearizable)
	m := model.Model()
	byKey := map[string][]porcupine.Operation{}
	var total int
	for _, op := range model.Operations(ops) {
		k := op.Input.(model.Input).Key
		byKey[k] = append(byKey[k], op)
		total++
	}
	vis := map[string]string{}
	var unknown []string
	for _, key := range sortedKeys(byKey) {
		kops := byKey[key]
		start := time.Now()
		res, info := porcupine.CheckOperationsVerbose(m, kops, opts.LinearizableTimeout)
		r.Stats["check_ns"] += int64(time.Since(start))
		switch res {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			unknown = append(unknown, key)
			continue
		}
		v := Violation{Key: key, Message: fmt.Sprintf("the operations on %q are not linearizable", key)}
		v.Start, v.End = history.Infinity, 0
		for _, op := range kops {
			v.Start = min(v.Start, op.Call)
			if op.Return != history.Infinity {
				v.End = max(v.End, op.Return)
			}
		}
		if stuck, n, ok := firstUnlinearized(info, kops); ok {
			in := stuck.Input.(model.Input)
			v.Start, v.End = stuck.Call, stuck.Call
			if stuck.Return != history.Infinity {
				v.End = stuck.Return
			}
			v.Ops = []int64{stuck.Metadata.(int64)}
			v.Clients = []string{in.Client}
			v.Message = fmt.Sprintf("the operations on %q are not linearizable: at most %d of %d could be ordered; the first that never fits is %q at %s",
				key, n, len(kops), model.Describe(in, stuck.Output.(model.Output)), fmtT(stuck.Call))
		}
		if opts.VisualizeDir != "" {
			path := filepath.Join(opts.VisualizeDir, "lin-"+safeName(key)+".html")
			if err := os.MkdirAll(opts.VisualizeDir, 0o755); err == nil {
				if err := porcupine.VisualizePath(m, info, path); err == nil {
					vis[key] = path
					v.Message += " (see " + filepath.Base(path) + ")"
				}
			}
		}
		r.violate(v)
	}
	r.Stats["operations"] = int64(total)
	r.Stats["keys"] = int64(len(byKey))
	r.Stats["keys_unknown"] = int64(len(unknown))
	if len(unknown) > 0 && r.Verdict == Valid {
		r.Verdict = Unknown
	}
	if len(unknown) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("porcupine did not decide %v within %v", unknown, opts.LinearizableTimeout))
	}
	r.Summary = fmt.Sprintf("%d operations on %s: %s not linearizable, %d undecided",
		total, plural(len(byKey), "key", "keys"), plural(len(r.Violations), "key", "keys"), len(unknown))
	return r, vis
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
