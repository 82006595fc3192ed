package checker

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/jepsen/model"
)

// mutate breaks one random completed operation of a simulated history in
// a way the model may or may not be able to explain.
func mutate(r *rand.Rand, recs []history.Record) []history.Record {
	out := append([]history.Record(nil), recs...)
	for tries := 0; tries < 100; tries++ {
		i := r.IntN(len(out))
		rec := &out[i]
		switch {
		case rec.Type == history.OK && rec.Op == history.Get && rec.Found:
			rec.Token = uint64(r.IntN(int(rec.Token) + 5))
		case rec.Type == history.OK && rec.Op == history.Get:
			rec.Found, rec.Holder, rec.Token = true, fmt.Sprintf("w%d", 1+r.IntN(6)), uint64(1+r.IntN(100))
		case rec.Type == history.Fail && rec.Err == history.ErrHeld:
			rec.Type, rec.Err, rec.Token = history.OK, "", uint64(1+r.IntN(200))
		case rec.Type == history.OK && rec.Op == history.CheckToken:
			rec.Current = !rec.Current
		case rec.Type == history.OK && rec.Op == history.Acquire:
			rec.Token = uint64(r.IntN(int(rec.Token) + 1))
		default:
			continue
		}
		return out
	}
	return out
}

// TestSegmentedMatchesWholeKey is the split rule's test: on many short
// simulated histories, correct and mutated, deciding a key segment by
// segment (carrying the states each segment can end in) gives the same
// verdict as one porcupine search over the whole key with the same
// operation bounds.
func TestSegmentedMatchesWholeKey(t *testing.T) {
	n := 150
	if testing.Short() {
		n = 30
	}
	var invalid, valid, segs int
	for seed := uint64(1); seed <= uint64(n); seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		cfg := defaultSim(seed, time.Duration(10+r.IntN(30))*time.Second)
		cfg.clients, cfg.keys = 3+r.IntN(4), 1+r.IntN(2)
		cfg.infoProb = 0.05
		cfg.horizon = time.Duration(1+r.IntN(5)) * time.Second
		recs := simulate(cfg)
		if seed%2 == 0 {
			recs = mutate(r, recs)
		}
		ops, _, err := history.Pair(recs)
		if err != nil {
			t.Fatal(err)
		}
		byKey := keyOperations(ops, cfg.horizon)
		opts := Options{LinearizableTimeout: 20 * time.Second, IndeterminateHorizon: cfg.horizon}.withDefaults()
		for key, kops := range byKey {
			v := checkKey(key, append([]keyOp(nil), kops...), opts)
			if v.undecided > 0 {
				t.Fatalf("seed %d key %s: undecided", seed, key)
			}
			// The whole key at once, with the same bounds (witness
			// applied the same way).
			whole, _, _, _ := witness(append([]keyOp(nil), kops...))
			pops := make([]porcupine.Operation, len(whole))
			for i, ko := range whole {
				pops[i] = ko.op
			}
			res := porcupine.CheckOperationsTimeout(model.KeyModel(nil), pops, 20*time.Second)
			if res == porcupine.Unknown {
				t.Fatalf("seed %d key %s: whole-key search undecided", seed, key)
			}
			segs += v.segments
			if (v.violation == nil) != (res == porcupine.Ok) {
				t.Fatalf("seed %d key %s: segmented says violation=%v (%d segments), whole-key porcupine says %v",
					seed, key, v.violation != nil, v.segments, res)
			}
			if v.violation != nil {
				invalid++
			} else {
				valid++
			}
		}
	}
	t.Logf("%d keys linearizable, %d not, %d segments", valid, invalid, segs)
	if invalid == 0 || valid == 0 {
		t.Fatalf("the mutations must produce both verdicts: %d valid, %d invalid", valid, invalid)
	}
}

// TestSegmentedDecidesLongHistory checks a simulated history as long as a
// two-hour campaign's (about 50,000 operations on 3 keys, indeterminate
// ones among them) and reports how long it took; go test -v shows the
// figure quoted in jepsen/README.md.
func TestSegmentedDecidesLongHistory(t *testing.T) {
	d := 2 * time.Hour
	if testing.Short() || raceEnabled {
		d = 20 * time.Minute
	}
	recs := simulate(defaultSim(2, d))
	ops, _, err := history.Pair(recs)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, _ := linearizable(ops, Options{}.withDefaults())
	el := time.Since(start)
	t.Logf("simulated %v: %s in %v (porcupine %v); indeterminate: %d bounded by the horizon, %d witnessed",
		d, r.Summary, el.Round(time.Millisecond), time.Duration(r.Stats["check_ns"]).Round(time.Millisecond),
		r.Stats["indeterminate_horizon_bounded"], r.Stats["indeterminate_witnessed"])
	if r.Verdict != Valid {
		t.Fatalf("%s: %+v %v", r.Verdict, r.Violations, r.Notes)
	}
}

const longBad = "linearizable.bad.stale-read-after-two-hours.jsonl.gz"

func longBadHistory() []history.Record {
	cfg := defaultSim(3, 2*time.Hour)
	cfg.violateAt = 115 * time.Minute
	return simulate(cfg)
}

// TestLongKnownBad keeps testdata/linearizable.bad.stale-read-after-two-
// hours.jsonl.gz current (a simulated two-hour history, about 50,000
// operations with their indeterminate ones, and one read that goes back
// in time at 1h55m; replayed by TestReplayTestdata) and shows that only
// the segment-wise check decides it: porcupine over the whole key, as the
// checker did before segments, is still searching when its budget ends.
func TestLongKnownBad(t *testing.T) {
	recs := longBadHistory()
	path := filepath.Join(testdata, longBad)
	if *update {
		if err := history.Save(path, recs); err != nil {
			t.Fatal(err)
		}
	} else {
		saved, err := history.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(saved, recs) {
			t.Fatalf("%s is stale: run go test ./jepsen/checker -update", path)
		}
	}
	ops, _, err := history.Pair(recs)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, _ := linearizable(ops, Options{}.withDefaults())
	t.Logf("segment-wise: %s in %v", r.Summary, time.Since(start).Round(time.Millisecond))
	if r.Verdict != Invalid || len(r.Violations) != 1 || r.Violations[0].Start < int64(115*time.Minute) {
		t.Fatalf("want the one late violation: %s %+v", r.Verdict, r.Violations)
	}
	budget := 2 * time.Second
	var kops []porcupine.Operation
	for _, op := range model.Operations(ops) {
		if op.Input.(model.Input).Key == r.Violations[0].Key {
			kops = append(kops, op)
		}
	}
	if res := porcupine.CheckOperationsTimeout(model.KeyModel(nil), kops, budget); res != porcupine.Unknown {
		t.Fatalf("whole-key porcupine decided %v within %v: the long known-bad history no longer needs segments", res, budget)
	}
}

// TestWitnessBoundsIndeterminateGrant: an indeterminate try-acquire's
// open end is the first read that proves it was granted. A waiting one's
// is not: the grant read may be one it gave back (arrived after its
// validity) before asking again, with its own outcome still open; the
// read gets a companion grant within the acquire's interval instead.
func TestWitnessBoundsIndeterminateGrant(t *testing.T) {
	for _, mode := range []string{"try", "wait"} {
		b := history.NewBuilder()
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.ReleaseOK(100, 110, "c1", "k", 10)
		info := b.Op(120, 2000, history.Record{Client: "c2", Op: history.Acquire, Key: "k", Mode: mode}, history.Info, nil)
		b.GetOK(500, 510, "r", "k", "c2", 31)
		ops, _, err := history.Pair(b.Records())
		if err != nil {
			t.Fatal(err)
		}
		kops := keyOperations(ops, time.Minute)["k"]
		kops, n, companions, _ := witness(kops)
		wantN, wantEnd, wantCompanions := 1, int64(510e6), 0
		if mode == "wait" {
			wantN, wantEnd, wantCompanions = 0, 2000e6+int64(time.Minute), 1
		}
		if n != wantN || companions != wantCompanions {
			t.Fatalf("%s: bounded %d and added %d companions, want %d and %d", mode, n, companions, wantN, wantCompanions)
		}
		var ends []int64
		for _, ko := range kops {
			if ko.op.Metadata.(int64) == info {
				ends = append(ends, ko.op.Return)
			}
		}
		if ends[0] != wantEnd || len(ends) == 2 && ends[1] != 2000e6 {
			t.Fatalf("%s: the indeterminate acquire (and its companion) end at %v, want %v (and the acquire's completion)", mode, ends, wantEnd)
		}
	}
}

// TestHorizonUnboundedAcceptsLateEffect: with no horizon (the unbounded
// model) the refusal a minute after an indeterminate acquire is explained
// by a late grant; with the default horizon it is a violation (the
// testdata file refused-long-after-indeterminate).
func TestHorizonUnboundedAcceptsLateEffect(t *testing.T) {
	var s synthetic
	for _, x := range synthetics {
		if x.name == "refused-long-after-indeterminate" {
			s = x
		}
	}
	r, _, err := Linearizable(s.records(), time.Minute, "")
	if err != nil || r.Verdict != Invalid {
		t.Fatalf("bounded: %v %v", r.Verdict, err)
	}
	ops, _, _ := history.Pair(s.records())
	r, _ = linearizable(ops, Options{IndeterminateHorizon: -1}.withDefaults())
	if r.Verdict != Valid {
		t.Fatalf("unbounded: %v %+v", r.Verdict, r.Violations)
	}
}
