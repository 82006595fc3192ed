package demo

import (
	"strings"
	"testing"
	"time"
)

// The checks must be able to fail: feed them known-bad holdings.
func TestChecksCatchViolations(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	d := &demo{start: t0, res: newResource(), holdings: map[string][]holding{
		"ok": {
			{who: "a", token: 5, start: at(0), end: at(100)},
			{who: "b", token: 9, start: at(100), end: at(200)},
		},
		"overlap": {
			{who: "a", token: 5, start: at(0), end: at(300)},
			{who: "b", token: 9, start: at(250), end: at(400)},
		},
		"nested": {
			{who: "a", token: 5, start: at(0), end: at(1000)},
			{who: "b", token: 9, start: at(100), end: at(200)},
			{who: "c", token: 12, start: at(500), end: at(600)},
		},
		"token": {
			{who: "a", token: 9, start: at(0), end: at(100)},
			{who: "b", token: 5, start: at(200), end: at(300)},
		},
	}}
	r := d.check()
	got := strings.Join(r.Violations, "\n")
	for _, want := range []string{"single-holder: overlap", "single-holder: nested: b", "single-holder: nested: c", "monotonic-token: token"} {
		if !strings.Contains(got, want) {
			t.Errorf("no violation %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, ": ok:") || len(r.Violations) != 4 {
		t.Errorf("want exactly 4 violations, got:\n%s", got)
	}
}

func TestResourceFence(t *testing.T) {
	r := newResource()
	if err := r.write("k", "a", 5); err != nil {
		t.Fatal(err)
	}
	if err := r.write("k", "b", 9); err != nil {
		t.Fatal(err)
	}
	if err := r.write("k", "a", 5); err == nil {
		t.Fatal("stale token accepted")
	}
	if len(r.rejected) != 1 || r.rejected[0].highest != 9 || len(r.violations) != 0 {
		t.Fatalf("rejected %+v, violations %v", r.rejected, r.violations)
	}
}
