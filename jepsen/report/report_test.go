package report

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/jepsen/checker"
	"github.com/leasenode/leasenode/jepsen/history"
)

func badHistory() []history.Record {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.Fault(300, 2000, "pause-leader", "n1")
	b.AcquireOK(590, 600, "c2", "k", 12, 1600)
	b.Write(610, 611, "c2", "k", 12, true)
	b.Write(900, 901, "c1", "k", 10, false)
	b.Lost(1000, "c1", "k", 10, 1000)
	b.ReleaseOK(1200, 1210, "c2", "k", 12)
	b.GetOK(1300, 1310, "r", "k", "c2", 12) // stale read: not linearizable
	return b.Records()
}

func TestWriteReportWithViolations(t *testing.T) {
	dir := t.TempDir()
	recs := badHistory()
	res, err := checker.Check(recs, checker.Options{VisualizeDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	meta := Meta{Name: "test", Started: time.Now(), Nodes: 3, Faults: "pause", Control: "loopback", Workers: 2, Keys: []string{"k", "idle"}, TTL: time.Second}
	r := Build(meta, recs, res)
	if r.Passed || r.Verdict != checker.Invalid {
		t.Fatalf("a bad history passed: %+v", r)
	}
	if err := Write(dir, r, recs); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"single-holder", "pause-leader", "both believed", "<svg", "srcdoc=", "stale write by c1", "FAIL"} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	if bytes.Contains(page, []byte("<script src=")) || bytes.Contains(page, []byte("<link ")) {
		t.Errorf("report.html must be self-contained")
	}
	back, err := Load(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if back.Verdict != checker.Invalid || back.Counts.WritesStale != 1 || back.Counts.Faults != 1 || len(back.Visualizations) != 1 {
		t.Fatalf("results.json round trip: %+v", back.Counts)
	}
	if line := Line(r); !strings.HasPrefix(line, "jepsen: FAIL violations (single-holder: 1, linearizable: 1)") {
		t.Fatalf("line %q", line)
	}
}

func TestUnsafeModeExpectsViolation(t *testing.T) {
	recs := badHistory()
	res, err := checker.Check(recs, checker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := Build(Meta{Unsafe: "skip-rebase", ExpectViolation: true}, recs, res)
	if !r.Passed || !strings.Contains(Line(r), "PASS unsafe mode skip-rebase caught") {
		t.Fatalf("unsafe mode with violations must pass: %s", Line(r))
	}
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	good := b.Records()
	res, _ = checker.Check(good, checker.Options{})
	r = Build(Meta{Unsafe: "skip-rebase", ExpectViolation: true}, good, res)
	if r.Passed || !strings.Contains(Line(r), "NOT caught") {
		t.Fatalf("unsafe mode without violations must fail: %s", Line(r))
	}
}

func TestProgressLine(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, history.NewClock(time.Now()), time.Minute)
	for _, rec := range badHistory() {
		p.Observe(rec)
	}
	p.Observe(history.Record{Type: history.Invoke, Op: history.Fault, Fault: "kill", Nodes: []string{"n2"}})
	line := p.Line()
	for _, want := range []string{"ops ok 4", "stale writes refused 1", "now: kill n2", "faults 2"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	p.Finish()
	if !strings.Contains(buf.String(), "ops ok") {
		t.Fatalf("Finish printed %q", buf.String())
	}
}

func TestLedgerAppendAndSummary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "campaigns.jsonl")
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	mk := func(commit string, d time.Duration, v checker.Verdict, unsafe string) Results {
		r := Results{Meta: Meta{Started: day, Duration: d, Nodes: 5, Faults: "mixed", Unsafe: unsafe, WorkloadEnd: d},
			Verdict: v, Passed: v == checker.Valid, Counts: Counts{FaultKinds: map[string]int{"kill-leader": 3}},
			Checkers: []checker.Result{{Name: checker.NameLinearizable, Verdict: v, Stats: map[string]int64{"keys_unknown": 0}}}}
		if unsafe != "" {
			r.Passed = v == checker.Invalid
		}
		return r
	}
	for _, e := range []LedgerEntry{
		NewLedgerEntry(mk("aaa", time.Hour, checker.Valid, ""), "aaa", false, "/tmp/a"),
		NewLedgerEntry(mk("aaa", 90*time.Minute, checker.Valid, ""), "aaa", false, "/tmp/b"),
		NewLedgerEntry(mk("aaa", 30*time.Minute, checker.Unknown, ""), "aaa", false, "/tmp/c"),
		NewLedgerEntry(mk("aaa", 2*time.Minute, checker.Invalid, "skip-rebase"), "aaa", false, "/tmp/d"),
		NewLedgerEntry(mk("bbb", time.Hour, checker.Invalid, ""), "bbb", true, "/tmp/e"),
	} {
		if err := AppendLedger(path, e); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := ReadLedger(path)
	if err != nil || len(entries) != 5 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	sums := map[string]CommitHours{}
	for _, c := range SummarizeLedger(entries) {
		sums[c.Commit] = c
	}
	a := sums["aaa"]
	if a.Hours != 3 || a.CleanHours != 2.5 || a.Campaigns != 3 || a.Clean != 2 || a.Unsafe != 1 || a.Caught != 1 {
		t.Fatalf("aaa: %+v", a)
	}
	if b := sums["bbb+dirty"]; b.Failed != 1 || b.CleanHours != 0 {
		t.Fatalf("bbb: %+v", b)
	}
	var buf bytes.Buffer
	WriteLedgerSummary(&buf, entries)
	if !strings.Contains(buf.String(), "aaa") || !strings.Contains(buf.String(), "2.50") {
		t.Fatalf("summary:\n%s", buf.String())
	}
}
