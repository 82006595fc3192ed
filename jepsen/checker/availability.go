package checker

import (
	"fmt"
	"sort"

	"github.com/leasenode/leasenode/jepsen/history"
)

// Window is a stretch of the campaign with one fault in force (or none),
// with the outcomes of the client operations invoked in it.
type Window struct {
	// Fault names the fault; "none" between faults.
	Fault string   `json:"fault"`
	Nodes []string `json:"nodes,omitempty"`
	// Start and End in harness ns: from the fault's invocation to its
	// heal's completion.
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	// Failed: the nemesis could not inject it.
	Failed bool `json:"failed,omitempty"`
	// OK, Refused (a try-acquire answered "held": the cluster served it),
	// Fail and Info count cluster operations (acquire, release, get,
	// check-token) invoked in the window.
	OK      int `json:"ok"`
	Refused int `json:"refused"`
	Fail    int `json:"fail"`
	Info    int `json:"info"`
}

// Served returns the fraction of the window's operations the cluster
// answered (OK or Refused), or -1 when there were none.
func (w Window) Served() float64 {
	n := w.OK + w.Refused + w.Fail + w.Info
	if n == 0 {
		return -1
	}
	return float64(w.OK+w.Refused) / float64(n)
}

// Windows cuts a paired history into fault windows and counts the client
// operations invoked in each.
func Windows(ops []history.Operation) []Window {
	var end int64
	for _, op := range ops {
		end = max(end, op.Invoke.Time)
		if op.Complete.Type != history.Info {
			end = max(end, op.Complete.Time)
		}
	}
	var faults []Window
	var open *Window
	for _, op := range ops {
		inv, c := op.Invoke, op.Complete
		switch inv.Op {
		case history.Fault:
			if open != nil {
				open.End = inv.Time
				faults = append(faults, *open)
			}
			nodes := c.Nodes
			if len(nodes) == 0 {
				nodes = inv.Nodes
			}
			open = &Window{Fault: inv.Fault, Nodes: nodes, Start: inv.Time, End: end, Failed: c.Type != history.OK}
		case history.Heal:
			if open != nil {
				open.End = max(open.Start, c.Time)
				faults = append(faults, *open)
				open = nil
			}
		}
	}
	if open != nil {
		faults = append(faults, *open)
	}
	var ws []Window
	t := int64(0)
	for _, f := range faults {
		if f.Start > t {
			ws = append(ws, Window{Fault: "none", Start: t, End: f.Start})
		}
		ws = append(ws, f)
		t = f.End
	}
	if end > t || len(ws) == 0 {
		ws = append(ws, Window{Fault: "none", Start: t, End: max(end, t)})
	}
	for _, op := range ops {
		switch op.Invoke.Op {
		case history.Acquire, history.Release, history.Get, history.CheckToken:
		default:
			continue
		}
		at := op.Invoke.Time
		i := sort.Search(len(ws), func(i int) bool { return ws[i].End > at })
		if i == len(ws) {
			i = len(ws) - 1
		}
		w := &ws[i]
		switch c := op.Complete; {
		case c.Type == history.OK:
			w.OK++
		case c.Type == history.Fail && c.Err == history.ErrHeld:
			w.Refused++
		case c.Type == history.Fail:
			w.Fail++
		default:
			w.Info++
		}
	}
	return ws
}

// Availability summarizes fault windows: operations answered and not,
// per fault kind. It never finds a violation (a lease store may refuse to
// serve during a partition: that is the price of safety), but a healthy
// window with nothing served is noted.
func Availability(records []history.Record) (Result, []Window, error) {
	ops, _, err := history.Pair(records)
	if err != nil {
		return Result{}, nil, err
	}
	ws := Windows(ops)
	return availability(ws), ws, nil
}

func availability(ws []Window) Result {
	r := newResult(NameAvailability)
	var ok, refused, fail, info int
	perFault := map[string]*Window{}
	for _, w := range ws {
		ok += w.OK
		refused += w.Refused
		fail += w.Fail
		info += w.Info
		agg := perFault[w.Fault]
		if agg == nil {
			agg = &Window{Fault: w.Fault}
			perFault[w.Fault] = agg
		}
		agg.OK += w.OK
		agg.Refused += w.Refused
		agg.Fail += w.Fail
		agg.Info += w.Info
		if w.Fault == "none" && w.End-w.Start > 5e9 && w.OK+w.Refused == 0 && w.Fail+w.Info > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("nothing served in the healthy window %s-%s (%d failed, %d indeterminate)",
				fmtT(w.Start), fmtT(w.End), w.Fail, w.Info))
		}
	}
	for _, name := range sortedKeys(perFault) {
		a := perFault[name]
		r.Notes = append(r.Notes, fmt.Sprintf("%s: %d ok, %d refused (held), %d failed, %d indeterminate", name, a.OK, a.Refused, a.Fail, a.Info))
	}
	r.Stats["ok"], r.Stats["refused"], r.Stats["fail"], r.Stats["info"] = int64(ok), int64(refused), int64(fail), int64(info)
	r.Stats["windows"] = int64(len(ws))
	r.Summary = fmt.Sprintf("%d ok, %d refused (held), %d failed, %d indeterminate over %s",
		ok, refused, fail, info, plural(len(ws), "window", "windows"))
	return r
}
