package checker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

// TestOnlineReportsAsItGoes feeds a simulated 20-minute history with one
// violation at 12 minutes to Online a minute at a time, as the runner
// does: the violation is in verdicts.jsonl long before the history ends,
// every segment is decided, and the lines agree with the final check.
func TestOnlineReportsAsItGoes(t *testing.T) {
	cfg := defaultSim(5, 20*time.Minute)
	cfg.violateAt = 12 * time.Minute
	recs := simulate(cfg)
	var out bytes.Buffer
	o := &Online{Out: &out}
	var foundAt int64
	end := history.End(recs)
	var prefix []history.Record
	i := 0
	for now := int64(time.Minute); ; now += int64(time.Minute) {
		for i < len(recs) && recs[i].Time <= now {
			prefix = append(prefix, recs[i])
			i++
		}
		at := now
		if now > end {
			at = history.Infinity
		}
		lines, err := o.Advance(prefix, at)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			if l.Verdict == Invalid && foundAt == 0 {
				if l.Checker != NameLinearizable {
					t.Fatalf("unexpected violation: %+v", l)
				}
				foundAt = now
			}
			if l.Verdict == Unknown {
				t.Fatalf("undecided: %+v", l)
			}
		}
		if at == history.Infinity {
			break
		}
	}
	if foundAt == 0 || foundAt > int64(15*time.Minute) {
		t.Fatalf("the violation at 12 min was reported at %v", time.Duration(foundAt))
	}
	// Every line is JSON, and the segments decided online add up to the
	// final check's.
	ops, _, _ := history.Pair(recs)
	final, _ := linearizable(ops, Options{}.withDefaults())
	sc := bufio.NewScanner(&out)
	var n int
	var lin int
	for sc.Scan() {
		var l VerdictLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		n++
		if l.Checker == NameLinearizable && l.Verdict == Invalid {
			lin++
		}
	}
	if lin != len(final.Violations) {
		t.Fatalf("online found %d linearizable violations, the final check %d", lin, len(final.Violations))
	}
	t.Logf("%d verdict lines; violation at 12m reported at %v", n, time.Duration(foundAt))
}
