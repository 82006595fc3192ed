package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/leasenode/leasenode/jepsen/checker"
)

// LedgerEntry is one line of the campaign ledger (jepsen/campaigns.jsonl):
// a campaign worth keeping, appended by the runner with -ledger and
// committed by whoever ran it, so the repository records how many
// campaign-hours each commit has survived.
type LedgerEntry struct {
	// Commit is the revision the agent was built from (Dirty: with
	// uncommitted changes).
	Commit string `json:"commit"`
	Dirty  bool   `json:"dirty,omitempty"`
	// Date is when the campaign started.
	Date time.Time `json:"date"`
	// Duration is how long the workload ran (Planned: asked for).
	Duration Seconds `json:"duration_s"`
	Planned  Seconds `json:"planned_s"`
	Nodes    int     `json:"nodes"`
	// Faults is the -faults spec; FaultKinds counts the faults injected.
	Faults     string         `json:"faults"`
	FaultKinds map[string]int `json:"fault_kinds,omitempty"`
	Unsafe     string         `json:"unsafe,omitempty"`
	// Control is netns or loopback; TLS and ClusterKey say how the node
	// ports were protected.
	Control    string `json:"control"`
	TLS        bool   `json:"tls,omitempty"`
	ClusterKey bool   `json:"cluster_key,omitempty"`
	Seed       int64  `json:"seed"`
	TTL        string `json:"ttl"`
	// Ops, OpsInfo (indeterminate) and Faults injected.
	Ops       int `json:"ops"`
	OpsInfo   int `json:"ops_indeterminate"`
	FaultsRun int `json:"faults_run"`
	// Checkers maps each checker to its verdict.
	Checkers map[string]LedgerVerdict `json:"checkers"`
	// Undecided counts checkers that did not decide.
	Undecided int `json:"undecided"`
	// Verdict is the campaign's (valid, invalid, unknown); Passed whether
	// it showed what it had to (for an unsafe mode: a violation).
	Verdict checker.Verdict `json:"verdict"`
	Passed  bool            `json:"passed"`
	// Report is where the output directory was.
	Report string `json:"report"`
	// Host describes the machine (cores).
	Host string `json:"host,omitempty"`
	// Note is free text (-ledger-note).
	Note string `json:"note,omitempty"`
}

// LedgerVerdict is one checker's line in a ledger entry.
type LedgerVerdict struct {
	Verdict    checker.Verdict `json:"verdict"`
	Violations int             `json:"violations,omitempty"`
	// Undecided: keys (linearizable) or parts the checker could not
	// decide.
	Undecided int `json:"undecided,omitempty"`
}

// Seconds is a duration written as seconds.
type Seconds float64

// D returns it as a time.Duration.
func (s Seconds) D() time.Duration { return time.Duration(float64(s) * float64(time.Second)) }

// NewLedgerEntry summarizes a campaign's results.
func NewLedgerEntry(r Results, commit string, dirty bool, out string) LedgerEntry {
	e := LedgerEntry{
		Commit: commit, Dirty: dirty, Date: r.Meta.Started.UTC().Truncate(time.Second),
		Duration: Seconds(r.Elapsed.Seconds()), Planned: Seconds(r.Meta.Duration.Seconds()),
		Nodes: r.Meta.Nodes, Faults: r.Meta.Faults, FaultKinds: r.Counts.FaultKinds, Unsafe: r.Meta.Unsafe,
		Control: r.Meta.Control, TLS: r.Meta.TLS, ClusterKey: r.Meta.ClusterKey, Seed: r.Meta.Seed, TTL: r.Meta.TTL.String(),
		Ops: r.Counts.Operations, OpsInfo: r.Counts.Info, FaultsRun: r.Counts.Faults,
		Checkers: map[string]LedgerVerdict{}, Verdict: r.Verdict, Passed: r.Passed, Report: out,
	}
	if w := r.Meta.WorkloadEnd; w > 0 {
		e.Duration = Seconds(w.Seconds())
	}
	for _, c := range r.Checkers {
		v := LedgerVerdict{Verdict: c.Verdict, Violations: len(c.Violations)}
		if n, ok := c.Stats["keys_unknown"]; ok {
			v.Undecided = int(n)
		} else if c.Verdict == checker.Unknown {
			v.Undecided = 1
		}
		if c.Verdict == checker.Unknown {
			e.Undecided++
		}
		e.Checkers[c.Name] = v
	}
	return e
}

// AppendLedger appends e to the ledger file at path (created if needed).
func AppendLedger(path string, e LedgerEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadLedger reads every entry of a ledger.
func ReadLedger(path string) ([]LedgerEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []LedgerEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for n := 1; sc.Scan(); n++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var e LedgerEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return out, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// CommitHours is the ledger summed up for one commit.
type CommitHours struct {
	Commit string
	// Campaigns and Hours count every safe campaign; Clean the ones that
	// passed with every checker decided (the hours that count), Failed
	// the ones with a violation.
	Campaigns, Clean, Failed int
	Hours, CleanHours        float64
	// Unsafe counts unsafe-mode campaigns and how many were caught.
	Unsafe, Caught int
	// Nodes lists the cluster sizes run, Faults the fault kinds injected.
	Nodes  []int
	Faults map[string]int
	First  time.Time
	Last   time.Time
}

// SummarizeLedger sums campaign-hours per commit, most recent first.
func SummarizeLedger(entries []LedgerEntry) []CommitHours {
	by := map[string]*CommitHours{}
	for _, e := range entries {
		key := e.Commit
		if e.Dirty {
			key += "+dirty"
		}
		c := by[key]
		if c == nil {
			c = &CommitHours{Commit: key, Faults: map[string]int{}, First: e.Date}
			by[key] = c
		}
		if e.Date.Before(c.First) {
			c.First = e.Date
		}
		if e.Date.After(c.Last) {
			c.Last = e.Date
		}
		if e.Unsafe != "" {
			c.Unsafe++
			if e.Passed {
				c.Caught++
			}
			continue
		}
		h := e.Duration.D().Hours()
		c.Campaigns++
		c.Hours += h
		switch {
		case e.Verdict == checker.Invalid:
			c.Failed++
		case e.Passed && e.Undecided == 0:
			c.Clean++
			c.CleanHours += h
		}
		found := false
		for _, n := range c.Nodes {
			found = found || n == e.Nodes
		}
		if !found {
			c.Nodes = append(c.Nodes, e.Nodes)
			sort.Ints(c.Nodes)
		}
		for k, n := range e.FaultKinds {
			c.Faults[k] += n
		}
	}
	out := make([]CommitHours, 0, len(by))
	for _, c := range by {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Last.After(out[j].Last) })
	return out
}

// WriteLedgerSummary prints SummarizeLedger as a table.
func WriteLedgerSummary(w io.Writer, entries []LedgerEntry) {
	sums := SummarizeLedger(entries)
	fmt.Fprintf(w, "%-19s %9s %9s %6s %6s %6s %8s  %-9s %s\n", "commit", "hours", "clean h", "runs", "clean", "failed", "unsafe", "nodes", "last")
	var total, clean float64
	for _, c := range sums {
		commit := c.Commit
		if len(commit) > 12 && !strings.HasSuffix(commit, "+dirty") {
			commit = commit[:12]
		} else if strings.HasSuffix(commit, "+dirty") && len(commit) > 18 {
			commit = commit[:12] + "+dirty"
		}
		var nodes []string
		for _, n := range c.Nodes {
			nodes = append(nodes, fmt.Sprint(n))
		}
		fmt.Fprintf(w, "%-19s %9.2f %9.2f %6d %6d %6d %4d/%-3d  %-9s %s\n", commit, c.Hours, c.CleanHours, c.Campaigns, c.Clean, c.Failed,
			c.Caught, c.Unsafe, strings.Join(nodes, ","), c.Last.Format("2006-01-02"))
		total += c.Hours
		clean += c.CleanHours
	}
	fmt.Fprintf(w, "%-19s %9.2f %9.2f   (%d campaigns in the ledger; clean: passed with every checker decided; unsafe: caught/run)\n", "all", total, clean, len(entries))
}
