// Package report presents a campaign's results: results.json for machines,
// a self-contained report.html for people (a timeline per key with holders
// as bars, fault windows shaded and violations marked, and porcupine's
// visualization of any key that is not linearizable), a one-line verdict
// for the terminal, and the live progress line shown while a campaign
// runs.
//
// It owns presentation only: it neither runs campaigns (package runner)
// nor judges histories (package checker).
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/leasenode/leasenode/jepsen/checker"
	"github.com/leasenode/leasenode/jepsen/history"
)

// Meta describes the campaign that produced a history.
type Meta struct {
	// Name of the campaign (for titles).
	Name string `json:"name"`
	// Started is the wall-clock start (only for display).
	Started time.Time `json:"started"`
	// Duration is the planned workload duration.
	Duration time.Duration `json:"duration"`
	// Nodes is the cluster size.
	Nodes int `json:"nodes"`
	// Faults is the nemesis mode (none, partition, kill, pause, ..., mixed).
	Faults string `json:"faults"`
	// Unsafe is the agents' unsafe mode ("" for a safe campaign).
	Unsafe string `json:"unsafe,omitempty"`
	// ExpectViolation: the unsafe mode must be caught (a campaign that
	// finds no violation then fails).
	ExpectViolation bool `json:"expect_violation,omitempty"`
	// Control is how nodes ran: "netns" or "loopback".
	Control string `json:"control"`
	// ControlNote explains a fallback (no root, no nft).
	ControlNote string `json:"control_note,omitempty"`
	// Seed of the campaign's randomness.
	Seed int64 `json:"seed"`
	// TTL of the workload's leases.
	TTL time.Duration `json:"ttl"`
	// Workers and Keys of the workload.
	Workers int      `json:"workers"`
	Keys    []string `json:"keys"`
	// TLS: the agents ran with mutual TLS; ClusterKey: with a cluster key
	// on their node ports.
	TLS        bool `json:"tls,omitempty"`
	ClusterKey bool `json:"cluster_key,omitempty"`
	// WorkloadEnd is how long the workload and the nemesis actually ran
	// (shorter than Duration if interrupted).
	WorkloadEnd time.Duration `json:"workload_end,omitempty"`
	// Extra holds anything else worth showing (flags, versions).
	Extra map[string]string `json:"extra,omitempty"`
}

// Counts are the operation and fault totals of a history.
type Counts struct {
	// Operations: client operations on the cluster (acquire, release, get,
	// check-token) by outcome.
	Operations int `json:"operations"`
	OK         int `json:"ok"`
	Refused    int `json:"refused"`
	Fail       int `json:"fail"`
	Info       int `json:"info"`
	// Writes to the simulated resource: accepted and refused as stale.
	WritesOK    int `json:"writes_ok"`
	WritesStale int `json:"writes_stale"`
	// Faults injected (by kind) and how many failed to inject.
	Faults       int            `json:"faults"`
	FaultKinds   map[string]int `json:"fault_kinds"`
	FaultsFailed int            `json:"faults_failed"`
	// Events: leases lost by their clients, worker pauses, vanishes.
	Lost     int `json:"lost"`
	Pauses   int `json:"pauses"`
	Vanishes int `json:"vanishes"`
	// Crashes: holders killed by the takeover chains; LeaderMoves: steps
	// of leader-churn; Rogue and RogueServed: rogue-peer attempts and how
	// many the cluster served.
	Crashes     int `json:"crashes,omitempty"`
	LeaderMoves int `json:"leader_moves,omitempty"`
	Rogue       int `json:"rogue,omitempty"`
	RogueServed int `json:"rogue_served,omitempty"`
}

// Count computes the totals of a history.
func Count(records []history.Record) Counts {
	c := Counts{FaultKinds: map[string]int{}}
	ops, events, _ := history.Pair(records)
	for _, op := range ops {
		inv, done := op.Invoke, op.Complete
		switch inv.Op {
		case history.Acquire, history.Release, history.Get, history.CheckToken:
			c.Operations++
			switch {
			case done.Type == history.OK:
				c.OK++
			case done.Type == history.Fail && done.Err == history.ErrHeld:
				c.Refused++
			case done.Type == history.Fail:
				c.Fail++
			default:
				c.Info++
			}
		case history.Write:
			if done.Type == history.OK {
				c.WritesOK++
			} else if done.Err == history.ErrStaleToken {
				c.WritesStale++
			}
		case history.Rogue:
			c.Rogue++
			if done.Type == history.OK {
				c.RogueServed++
			}
		case history.Fault:
			c.Faults++
			c.FaultKinds[inv.Fault]++
			if done.Type != history.OK {
				c.FaultsFailed++
			}
		}
	}
	for _, ev := range events {
		switch ev.Op {
		case history.ExtendLost:
			c.Lost++
		case history.Pause:
			c.Pauses++
		case history.Vanish:
			c.Vanishes++
		case history.Crash:
			c.Crashes++
		case history.LeaderMove:
			c.LeaderMoves++
		}
	}
	return c
}

// Results is the content of results.json.
type Results struct {
	Meta Meta `json:"meta"`
	// Verdict: valid, invalid or unknown (from the checkers).
	Verdict checker.Verdict `json:"verdict"`
	// Expected says what the campaign had to show: "valid" for a safe
	// campaign, "invalid" for an unsafe mode. Passed is whether it did.
	Expected checker.Verdict `json:"expected"`
	Passed   bool            `json:"passed"`
	// Elapsed is how long the campaign took (harness time of the last
	// record).
	Elapsed time.Duration `json:"elapsed"`
	Counts  Counts        `json:"counts"`
	// Checkers, Holds, Windows and Visualizations are the checkers'
	// results.
	Checkers       []checker.Result  `json:"checkers"`
	Holds          []checker.Hold    `json:"holds"`
	Windows        []checker.Window  `json:"windows"`
	Visualizations map[string]string `json:"visualizations,omitempty"`
}

// Build assembles the results of a campaign.
func Build(meta Meta, records []history.Record, res checker.Results) Results {
	expected := checker.Valid
	if meta.ExpectViolation {
		expected = checker.Invalid
	}
	passed := res.Verdict != checker.Invalid
	if expected == checker.Invalid {
		passed = res.Verdict == checker.Invalid
	}
	vis := map[string]string{}
	for k, p := range res.Visualizations {
		vis[k] = filepath.Base(p)
	}
	return Results{
		Meta: meta, Verdict: res.Verdict, Expected: expected, Passed: passed,
		Elapsed:  time.Duration(history.End(records)),
		Counts:   Count(records),
		Checkers: res.Checkers, Holds: res.Holds, Windows: res.Windows,
		Visualizations: vis,
	}
}

// Line is the one-line verdict for stdout.
func Line(r Results) string {
	var bad []string
	for _, c := range r.Checkers {
		if c.Verdict == checker.Invalid {
			bad = append(bad, fmt.Sprintf("%s: %d", c.Name, len(c.Violations)))
		}
	}
	var unknown []string
	for _, c := range r.Checkers {
		if c.Verdict == checker.Unknown {
			unknown = append(unknown, c.Name)
		}
	}
	c := r.Counts
	stats := fmt.Sprintf("%d ops (%d ok, %d refused, %d failed, %d indeterminate), %d writes (%d stale refused), %d faults, %s",
		c.Operations, c.OK, c.Refused, c.Fail, c.Info, c.WritesOK+c.WritesStale, c.WritesStale, c.Faults, r.Elapsed.Round(time.Second))
	var verdict string
	switch {
	case r.Meta.ExpectViolation && r.Passed:
		verdict = fmt.Sprintf("PASS unsafe mode %s caught: violations (%s)", r.Meta.Unsafe, strings.Join(bad, ", "))
	case r.Meta.ExpectViolation:
		verdict = fmt.Sprintf("FAIL unsafe mode %s NOT caught: no violation found", r.Meta.Unsafe)
	case r.Passed && len(unknown) > 0:
		verdict = fmt.Sprintf("PASS no violations (undecided: %s)", strings.Join(unknown, ", "))
	case r.Passed:
		verdict = "PASS no violations"
	default:
		verdict = fmt.Sprintf("FAIL violations (%s)", strings.Join(bad, ", "))
	}
	return fmt.Sprintf("jepsen: %s; %s", verdict, stats)
}

// Write writes results.json and report.html to dir; records (the history)
// add the resource's refusals and worker pauses to the timeline. The
// porcupine visualizations named in r must already be in dir: report.html
// embeds them, so it is self-contained.
func Write(dir string, r Results, records []history.Record) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "report.html"))
	if err != nil {
		return err
	}
	if err := renderHTML(f, dir, r, records); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Load reads a results.json.
func Load(path string) (Results, error) {
	var r Results
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

func sortedFaultKinds(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
