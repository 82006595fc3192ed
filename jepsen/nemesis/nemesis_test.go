package nemesis

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/control/controltest"
	"github.com/leasenode/leasenode/jepsen/history"
)

func TestMain(m *testing.M) {
	controltest.MaybeRun()
	os.Exit(m.Run())
}

func TestSelect(t *testing.T) {
	fs, dropped, err := Select("mixed", false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range fs {
		names = append(names, f.Name())
	}
	if slices.Contains(names, "partition-halves") || !slices.Contains(dropped, "one-way") {
		t.Fatalf("without namespaces partitions must be dropped: %v / %v", names, dropped)
	}
	if !slices.Contains(names, "pause-leader") || !slices.Contains(names, "clock-drift") {
		t.Fatalf("process faults missing: %v", names)
	}
	fs, _, err = Select("kill,pause-leader,kill-random", true)
	if err != nil || len(fs) != 3 {
		t.Fatalf("%v %v", fs, err)
	}
	if _, _, err := Select("bogus", true); err == nil {
		t.Fatal("unknown fault accepted")
	}
	all, _, _ := Select("mixed", true)
	if len(all) != len(All())-1 {
		t.Fatalf("mixed has %d faults, All %d: mixed is every fault but rogue-peer (the runner adds it when the agent authenticates its node port)", len(all), len(All()))
	}
}

func TestSafeRateError(t *testing.T) {
	if e := SafeRateError(0.01); e < 0.00502 || e > 0.00503 {
		t.Fatalf("δ for drift 1%% = %v, want 0.01/1.99", e)
	}
}

// TestScheduleOnLoopbackCluster runs the process faults against fake
// agents: every fault is recorded with its heal, and after HealAll every
// node runs again.
func TestScheduleOnLoopbackCluster(t *testing.T) {
	c, err := control.New(control.Options{Nodes: 3, Dir: t.TempDir(), Command: controltest.Command(), ReadyTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	env := &Env{Cluster: c, Rand: rand.New(rand.NewPCG(1, 2)), TTL: 100 * time.Millisecond, DriftBound: 0.01,
		Log: slog.New(slog.DiscardHandler)}
	rec := history.NewRecorder(history.NewClock(time.Now()), nil)
	faults, _, err := Select("kill,pause,membership", false)
	if err != nil {
		t.Fatal(err)
	}
	// Shorten the holds: wrap each fault.
	var quick []Fault
	for _, f := range faults {
		quick = append(quick, shortHold{f})
	}
	runCtx, stop := context.WithTimeout(ctx, 3*time.Second)
	n := Run(runCtx, env, rec, quick, Schedule{QuietMin: 50 * time.Millisecond, QuietMax: 100 * time.Millisecond})
	stop()
	if err := HealAll(ctx, env, rec); err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Fatalf("only %d faults in 3 s", n)
	}
	for _, node := range c.Nodes() {
		if st := node.Proc().State(); st != control.Running {
			t.Fatalf("%s is %s after HealAll", node.ID, st)
		}
	}
	ops, _, err := history.Pair(rec.Records())
	if err != nil {
		t.Fatal(err)
	}
	var faultsSeen, heals int
	for _, op := range ops {
		switch op.Invoke.Op {
		case history.Fault:
			faultsSeen++
			if op.Complete.Type == history.OK && len(op.Complete.Nodes) == 0 {
				t.Errorf("fault %s recorded without targets", op.Invoke.Fault)
			}
		case history.Heal:
			heals++
		}
	}
	if heals != faultsSeen+1 {
		t.Fatalf("%d faults but %d heals (one final)", faultsSeen, heals)
	}
}

type shortHold struct{ Fault }

func (shortHold) Hold(*Env) time.Duration { return 150 * time.Millisecond }

func TestRingKeepsMajorities(t *testing.T) {
	for _, n := range []int{5, 6, 7, 9} {
		keep := ringKeep(n)
		if 1+2*keep < n/2+1 {
			t.Errorf("n=%d: a node sees %d, less than a majority", n, 1+2*keep)
		}
		if 1+2*keep >= n {
			t.Errorf("n=%d: the ring cuts nothing", n)
		}
	}
}

// TestScheduleIsReproducible: the same seed draws the same faults, quiet
// spells and holds, and a fault's own random choices (a random victim)
// do not shift the faults after it.
func TestScheduleIsReproducible(t *testing.T) {
	faults, _, err := Select("mixed", true)
	if err != nil {
		t.Fatal(err)
	}
	env := &Env{TTL: 2 * time.Second, DriftBound: 0.01}
	s := Schedule{QuietMin: time.Second, QuietMax: 4 * time.Second, Seed: 42}
	var a, b []string
	for i := 0; i < 50; i++ {
		p := Plan(env, faults, s, i)
		a = append(a, p.Fault.Name()+" "+p.String())
		p.Rand.Uint64() // a fault that draws a victim
		q := Plan(env, faults, s, i)
		b = append(b, q.Fault.Name()+" "+q.String())
	}
	if !slices.Equal(a, b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	s.Seed = 43
	if Plan(env, faults, s, 0).String()+Plan(env, faults, s, 1).String() == a[0][strings.Index(a[0], " ")+1:]+a[1][strings.Index(a[1], " ")+1:] {
		t.Fatal("another seed drew the same schedule")
	}
}
