// Package nemesis injects faults into a running cluster on a schedule —
// a fault for a while, heal, a quiet spell, the next fault — and names
// each one in the history, so the checkers can tell which fault window
// an operation ran in.
//
// It owns the choice of faults and targets (random halves, the leader,
// ...) and their timing. It does not own the mechanics (package control
// kills, pauses and partitions) and never judges the outcome (package
// checker).
//
// Faults (names as they appear in histories and reports):
//
//   - partition-halves: the nodes split into a minority and a majority
//     that cannot talk to each other.
//   - isolate-leader: the current leader is cut off from every other node
//     (the harness's clients still reach it).
//   - majorities-ring: every node sees a majority, but no two see the same
//     one (five or more nodes; with three or four, a bridge: one node sees
//     both others, which cannot see each other).
//   - one-way: one node (often the leader) can receive but its packets to
//     the other nodes are dropped.
//   - kill-random, kill-leader: kill -9, then restart from the data dir.
//   - pause-random, pause-leader: SIGSTOP for longer than the lease TTL,
//     then SIGCONT (the etcd issue 15247 scenario).
//   - membership: a node is stopped gracefully (it leaves), then started
//     again (it rejoins).
//   - clock-drift: a rolling restart gives every node a leader-clock rate
//     within the clients' drift bound (--unsafe-clock-rate); heal restarts
//     them at the true rate. Within the bound the cluster must stay safe.
//   - rogue-peer: an outsider without the cluster's credentials tries the
//     node port (node RPC Status, List, Release, Leave; Raft AppendEntries
//     and TimeoutNow) and gossip (a new id, the leader's id); every
//     attempt is recorded, and each must be refused (node-port-auth). It
//     joins mixed when the agent authenticates its node port.
//   - leader-churn: leadership moves every TTL/2 for a while: the leader
//     is stopped (SIGSTOP) until another node serves as leader, then
//     resumed (issue 9: leases of dead holders must still expire on time
//     when leaders change faster than a TTL).
package nemesis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/history"
)

// Env is what faults act on.
type Env struct {
	// Cluster is the running cluster.
	Cluster *control.Cluster
	// Rand chooses targets and durations. Run replaces it for each fault
	// with that fault's own generator (see Schedule.Seed).
	Rand *rand.Rand
	// TTL is the workload's lease TTL: pauses last longer than it.
	TTL time.Duration
	// DriftBound is the clients' drift bound (0.01): clock-drift stays
	// within the safe rate error, bound/(2-bound).
	DriftBound float64
	// Log receives progress messages.
	Log *slog.Logger
	// Rec, if set, receives the events some faults record while they
	// last (leader-churn's moves, rogue-peer's attempts); Run sets it.
	Rec *history.Recorder
}

// Active is an injected fault, until healed.
type Active interface {
	// Nodes are the targets, for the history.
	Nodes() []string
	// Heal ends the fault.
	Heal(ctx context.Context) error
}

// Fault is one kind of fault.
type Fault interface {
	// Name as recorded in the history.
	Name() string
	// NeedsNetwork: the fault partitions (netns mode only).
	NeedsNetwork() bool
	// Inject chooses targets and injects the fault.
	Inject(ctx context.Context, env *Env) (Active, error)
	// Hold is how long to keep the fault before healing.
	Hold(env *Env) time.Duration
}

// All returns every fault kind.
func All() []Fault {
	return []Fault{
		partitionHalves{}, isolateLeader{}, majoritiesRing{}, oneWay{},
		kill{leader: false}, kill{leader: true},
		pause{leader: false}, pause{leader: true},
		membership{}, clockDrift{}, leaderChurn{}, roguePeer{},
	}
}

// Groups name sets of faults for the runner's -faults flag.
var Groups = map[string][]string{
	"none":       {},
	"partition":  {"partition-halves", "isolate-leader", "majorities-ring", "one-way"},
	"kill":       {"kill-random", "kill-leader"},
	"pause":      {"pause-random", "pause-leader"},
	"membership": {"membership"},
	"clock":      {"clock-drift"},
	"churn":      {"leader-churn"},
	"rogue":      {"rogue-peer"},
	"mixed": {"partition-halves", "isolate-leader", "majorities-ring", "one-way", "kill-random", "kill-leader",
		"pause-random", "pause-leader", "membership", "clock-drift", "leader-churn"},
}

// Select resolves a comma-separated list of fault and group names.
// Faults that need the network are dropped (and named in the second
// result) when partitions are not possible.
func Select(spec string, canPartition bool) ([]Fault, []string, error) {
	byName := map[string]Fault{}
	for _, f := range All() {
		byName[f.Name()] = f
	}
	var names []string
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if g, ok := Groups[part]; ok {
			names = append(names, g...)
			continue
		}
		if _, ok := byName[part]; !ok {
			var known []string
			for k := range Groups {
				known = append(known, k)
			}
			for k := range byName {
				known = append(known, k)
			}
			sort.Strings(known)
			return nil, nil, fmt.Errorf("unknown fault %q (known: %s)", part, strings.Join(known, ", "))
		}
		names = append(names, part)
	}
	var out []Fault
	var dropped []string
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		f := byName[n]
		if f.NeedsNetwork() && !canPartition {
			dropped = append(dropped, n)
			continue
		}
		out = append(out, f)
	}
	return out, dropped, nil
}

// Schedule sets the rhythm.
type Schedule struct {
	// Quiet is the healthy spell between faults: uniformly random in
	// [QuietMin, QuietMax].
	QuietMin, QuietMax time.Duration
	// Seed makes the schedule reproducible: fault i draws its quiet spell,
	// its kind, its hold and its random targets from a generator seeded
	// with (Seed, i) alone, so the same seed gives the same sequence of
	// faults whatever happened during earlier ones. What a seed cannot
	// reproduce: which node is the leader when a fault aimed at the
	// leader strikes, how long injecting and healing take (so how many
	// faults fit in the campaign), thread timing and the network — and so
	// the workload's operations and their outcomes.
	Seed uint64
}

func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// Planned is one fault of a schedule, as drawn from the seed.
type Planned struct {
	// N counts faults from 0.
	N int
	// Quiet is the healthy spell before it.
	Quiet time.Duration
	// Fault to inject, and Hold: how long to keep it.
	Fault Fault
	Hold  time.Duration
	// Rand drives the fault's own choices (targets).
	Rand *rand.Rand
}

// String describes the plan for the history and the schedule listing.
func (p Planned) String() string {
	return fmt.Sprintf("#%d after %v quiet, hold %v", p.N, p.Quiet.Round(time.Millisecond), p.Hold.Round(time.Millisecond))
}

// Plan draws fault n of the schedule from the seed.
func Plan(env *Env, faults []Fault, s Schedule, n int) Planned {
	r := rand.New(rand.NewPCG(s.Seed, 0x6e656d00+uint64(n)))
	p := Planned{N: n, Quiet: between(r, s.QuietMin, s.QuietMax), Fault: faults[r.IntN(len(faults))], Rand: r}
	saved := env.Rand
	env.Rand = r
	p.Hold = p.Fault.Hold(env)
	env.Rand = saved
	return p
}

// Run injects faults from faults, in the order the schedule's seed draws
// them, until ctx ends, then heals the last one. Every fault and heal is
// recorded in rec (the fault's invocation carries its plan in Value). It
// returns the number of faults injected.
func Run(ctx context.Context, env *Env, rec *history.Recorder, faults []Fault, s Schedule) int {
	if len(faults) == 0 {
		<-ctx.Done()
		return 0
	}
	n := 0
	env.Rec = rec
	for i := 0; ; i++ {
		p := Plan(env, faults, s, i)
		if !ctxtime.Sleep(ctx, p.Quiet) {
			return n
		}
		f := p.Fault
		env.Rand = p.Rand
		id := rec.Invoke(history.Record{Client: history.NemesisClient, Op: history.Fault, Fault: f.Name(), Value: p.String()})
		// Injection and healing run to completion even when ctx ends: a
		// half-injected fault must not outlive the campaign.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		act, err := f.Inject(ictx, env)
		cancel()
		if err != nil {
			env.Log.Warn("fault not injected", "fault", f.Name(), "err", err)
			var nodes []string
			if act != nil {
				nodes = act.Nodes()
			}
			rec.Complete(id, history.Record{Type: history.Fail, Fault: f.Name(), Nodes: nodes, Err: err.Error()})
			if act != nil {
				healOne(ctx, env, rec, f, act)
			}
			continue
		}
		n++
		rec.Complete(id, history.Record{Type: history.OK, Fault: f.Name(), Nodes: act.Nodes()})
		env.Log.Info("fault injected", "fault", f.Name(), "nodes", act.Nodes(), "plan", p.String())
		ctxtime.Sleep(ctx, p.Hold)
		healOne(ctx, env, rec, f, act)
		if ctx.Err() != nil {
			return n
		}
	}
}

func healOne(ctx context.Context, env *Env, rec *history.Recorder, f Fault, act Active) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	id := rec.Invoke(history.Record{Client: history.NemesisClient, Op: history.Heal, Fault: f.Name(), Nodes: act.Nodes()})
	if err := act.Heal(hctx); err != nil {
		env.Log.Warn("heal failed", "fault", f.Name(), "err", err)
		rec.Complete(id, history.Record{Type: history.Fail, Fault: f.Name(), Err: err.Error()})
		return
	}
	rec.Complete(id, history.Record{Type: history.OK, Fault: f.Name(), Nodes: act.Nodes()})
	env.Log.Info("fault healed", "fault", f.Name())
}

// HealAll is the final heal: remove every partition, resume paused nodes
// and start stopped ones with their usual flags. Recorded as a Heal of
// fault "final".
func HealAll(ctx context.Context, env *Env, rec *history.Recorder) error {
	id := rec.Invoke(history.Record{Client: history.NemesisClient, Op: history.Heal, Fault: "final"})
	var errs []error
	c := env.Cluster
	if err := c.HealNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, n := range c.Nodes() {
		switch n.Proc().State() {
		case control.Paused:
			if err := c.Resume(n); err != nil {
				errs = append(errs, err)
			}
		case control.Stopped:
			if err := c.StartNode(ctx, n, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		rec.Complete(id, history.Record{Type: history.Fail, Fault: "final", Err: err.Error()})
		return err
	}
	rec.Complete(id, history.Record{Type: history.OK, Fault: "final"})
	return nil
}

// leader finds the serving leader, retrying for a few seconds.
func leader(ctx context.Context, env *Env) (*control.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return env.Cluster.WaitLeader(ctx)
}

func running(env *Env) []*control.Node {
	var out []*control.Node
	for _, n := range env.Cluster.Nodes() {
		if n.Proc().State() == control.Running {
			out = append(out, n)
		}
	}
	return out
}

func ids(nodes []*control.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

func shuffled(env *Env, nodes []*control.Node) []*control.Node {
	out := slices.Clone(nodes)
	env.Rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
