package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// renderTable writes one Markdown table of the reports in files, one
// column per system, in the rows of README.md's "Beside etcd and
// ZooKeeper".
func renderTable(w io.Writer, files []string) error {
	var reps []Report
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r Report
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		reps = append(reps, r)
	}
	if len(reps) == 0 {
		return fmt.Errorf("-table needs report files (sbs -json)")
	}
	find := func(r Report, workload, metric string) *Result {
		for i := range r.Results {
			if r.Results[i].Workload == workload && (metric == "" || strings.HasPrefix(r.Results[i].Metric, metric)) {
				return &r.Results[i]
			}
		}
		return nil
	}
	clients := func(workload, metric string) int {
		for _, r := range reps {
			if x := find(r, workload, metric); x != nil {
				return x.Clients
			}
		}
		return 0
	}
	p := func(v *float64) string {
		if v == nil {
			return "–"
		}
		return fmt.Sprintf("%.1f ms", *v)
	}
	errs := func(x *Result) string {
		if x.Errors == 0 {
			return ""
		}
		return fmt.Sprintf(", %d errors", x.Errors)
	}
	type row struct {
		label string
		cell  func(Report) string
	}
	rows := []row{
		{fmt.Sprintf("uncontended, %d clients: acquire+release/s (p50, p99)", clients("uncontended", "acquire+release")), func(r Report) string {
			x := find(r, "uncontended", "acquire+release")
			if x == nil {
				return ""
			}
			return fmt.Sprintf("%s (%s, %s)%s", thousands(x.PerSec), p(x.P50ms), p(x.P99ms), errs(x))
		}},
		{"server CPU per pair, 3 nodes", func(r Report) string {
			x := find(r, "uncontended", "acquire+release")
			if x == nil || x.ServerCPU == nil || x.Count == 0 {
				return ""
			}
			return fmt.Sprintf("%s µs", thousands(*x.ServerCPU/float64(x.Count)*1e6))
		}},
		{"handoff, 4 clients on 1 key: acquisitions/s (gap p50, p99)", func(r Report) string {
			g, a := find(r, "handoff", "release"), find(r, "handoff", "acquire")
			if g == nil || a == nil {
				return ""
			}
			return fmt.Sprintf("%s (%s, %s)%s", thousands(a.PerSec), p(g.P50ms), p(g.P99ms), errs(a))
		}},
		{fmt.Sprintf("leader SIGKILL → next lock, %d clients", clients("failover", "kill")), func(r Report) string {
			x := find(r, "failover", "kill→first")
			if x == nil {
				return ""
			}
			if len(x.WindowsMs) == 0 {
				return "no window measured"
			}
			s := slices.Sorted(slices.Values(x.WindowsMs))
			if len(s) == 1 {
				return fmt.Sprintf("%s ms (1 kill)", thousands(s[0]))
			}
			return fmt.Sprintf("%s–%s ms, median %s of %d", thousands(s[0]), thousands(s[len(s)-1]), thousands(s[len(s)/2]), len(s))
		}},
		{keepaliveLabel(reps), func(r Report) string {
			x := find(r, "keepalive", "")
			if x == nil || x.ServerCPU == nil {
				return ""
			}
			s := fmt.Sprintf("%.2f s, %s MiB", *x.ServerCPU, thousands(deref(x.RSSMiB)))
			if x.Lost != nil && *x.Lost > 0 {
				s += fmt.Sprintf(", %d locks lost", *x.Lost)
			}
			return s
		}},
		{idleLabel(reps), func(r Report) string {
			x := find(r, "idle", "")
			if x == nil || x.ServerCPU == nil {
				return ""
			}
			return fmt.Sprintf("%.2f s, %s MiB", *x.ServerCPU, thousands(deref(x.RSSMiB)))
		}},
	}
	fmt.Fprint(w, "| workload |")
	for _, r := range reps {
		fmt.Fprintf(w, " %s |", displayName(r.System))
	}
	fmt.Fprint(w, "\n|---|")
	for range reps {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	for _, rw := range rows {
		fmt.Fprintf(w, "| %s |", rw.label)
		for _, r := range reps {
			fmt.Fprintf(w, " %s |", rw.cell(r))
		}
		fmt.Fprintln(w)
	}
	return nil
}

func keepaliveLabel(reps []Report) string {
	for _, r := range reps {
		for _, x := range r.Results {
			if x.Workload == "keepalive" {
				var locks, holders int
				var ttl string
				fmt.Sscanf(x.Note, "%d locks by %d clients, TTL %s", &locks, &holders, &ttl)
				return fmt.Sprintf("%s locks kept alive by %d clients, %s: server CPU, RSS (TTL %s)",
					thousands(float64(locks)), holders, fmtSec(x.Seconds), strings.TrimSuffix(ttl, ";"))
			}
		}
	}
	return "keepalive: server CPU, RSS"
}

func idleLabel(reps []Report) string {
	for _, r := range reps {
		for _, x := range r.Results {
			if x.Workload == "idle" {
				return fmt.Sprintf("idle, %s: server CPU, RSS", fmtSec(x.Seconds))
			}
		}
	}
	return "idle: server CPU, RSS"
}

func fmtSec(s float64) string { return strings.TrimSuffix(fmt.Sprintf("%.1f", s), ".0") + " s" }

func deref(v *float64) float64 {
	if v == nil {
		return 0
	}
	return *v
}

func displayName(s string) string {
	if s == "zookeeper" {
		return "ZooKeeper"
	}
	return s
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
