package nemesis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/history"
)

// netActive is a set of blocks, healed by clearing all blocks.
type netActive struct {
	c     *control.Cluster
	nodes []string
}

func (a netActive) Nodes() []string { return a.nodes }

func (a netActive) Heal(ctx context.Context) error { return a.c.HealNetwork(ctx) }

// cut blocks both directions between every node of a and every node of b.
func cut(ctx context.Context, c *control.Cluster, a, b []*control.Node) error {
	for _, x := range a {
		for _, y := range b {
			if err := c.Block(ctx, x, y); err != nil {
				return err
			}
			if err := c.Block(ctx, y, x); err != nil {
				return err
			}
		}
	}
	return nil
}

func netHold(env *Env) time.Duration {
	// Long enough for leases on the losing side to expire and clients to
	// fail over: at least two TTLs.
	return between(env.Rand, 2*env.TTL, 2*env.TTL+8*time.Second)
}

type partitionHalves struct{}

func (partitionHalves) Name() string                { return "partition-halves" }
func (partitionHalves) NeedsNetwork() bool          { return true }
func (partitionHalves) Hold(env *Env) time.Duration { return netHold(env) }
func (partitionHalves) Inject(ctx context.Context, env *Env) (Active, error) {
	all := shuffled(env, env.Cluster.Nodes())
	minority := all[:len(all)/2]
	majority := all[len(all)/2:]
	// nodes: the minority first, then "|", then the majority.
	act := netActive{c: env.Cluster, nodes: append(append(ids(minority), "|"), ids(majority)...)}
	return act, cut(ctx, env.Cluster, minority, majority)
}

type isolateLeader struct{}

func (isolateLeader) Name() string                { return "isolate-leader" }
func (isolateLeader) NeedsNetwork() bool          { return true }
func (isolateLeader) Hold(env *Env) time.Duration { return netHold(env) }
func (isolateLeader) Inject(ctx context.Context, env *Env) (Active, error) {
	l, err := leader(ctx, env)
	if err != nil {
		return nil, err
	}
	var rest []*control.Node
	for _, n := range env.Cluster.Nodes() {
		if n != l {
			rest = append(rest, n)
		}
	}
	act := netActive{c: env.Cluster, nodes: []string{l.ID}}
	return act, cut(ctx, env.Cluster, []*control.Node{l}, rest)
}

type majoritiesRing struct{}

func (majoritiesRing) Name() string                { return "majorities-ring" }
func (majoritiesRing) NeedsNetwork() bool          { return true }
func (majoritiesRing) Hold(env *Env) time.Duration { return netHold(env) }
func (majoritiesRing) Inject(ctx context.Context, env *Env) (Active, error) {
	ring := shuffled(env, env.Cluster.Nodes())
	n := len(ring)
	act := netActive{c: env.Cluster, nodes: ids(ring)}
	if n < 3 {
		return act, errors.New("majorities-ring needs at least 3 nodes")
	}
	if n < 5 {
		// A bridge: ring[0] sees everyone; the others see only ring[0]
		// and (with four nodes) their own neighbour.
		var left, right []*control.Node
		for i, x := range ring[1:] {
			if i%2 == 0 {
				left = append(left, x)
			} else {
				right = append(right, x)
			}
		}
		return act, cut(ctx, env.Cluster, left, right)
	}
	// Each node keeps its nearest neighbours on both sides, enough for a
	// majority including itself.
	keep := ringKeep(n)
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			d := min(j-i, n-(j-i))
			if d > keep {
				if err := env.Cluster.Block(ctx, ring[i], ring[j]); err != nil {
					return act, err
				}
				if err := env.Cluster.Block(ctx, ring[j], ring[i]); err != nil {
					return act, err
				}
			}
		}
	}
	return act, nil
}

type oneWay struct{}

func (oneWay) Name() string                { return "one-way" }
func (oneWay) NeedsNetwork() bool          { return true }
func (oneWay) Hold(env *Env) time.Duration { return netHold(env) }
func (oneWay) Inject(ctx context.Context, env *Env) (Active, error) {
	var src *control.Node
	if env.Rand.IntN(2) == 0 {
		src, _ = leader(ctx, env)
	}
	if src == nil {
		all := env.Cluster.Nodes()
		src = all[env.Rand.IntN(len(all))]
	}
	act := netActive{c: env.Cluster, nodes: []string{src.ID}}
	for _, n := range env.Cluster.Nodes() {
		if n != src {
			if err := env.Cluster.Block(ctx, src, n); err != nil {
				return act, err
			}
		}
	}
	return act, nil
}

// procActive heals a process fault with a function.
type procActive struct {
	nodes []string
	heal  func(ctx context.Context) error
}

func (a procActive) Nodes() []string                { return a.nodes }
func (a procActive) Heal(ctx context.Context) error { return a.heal(ctx) }

func target(ctx context.Context, env *Env, wantLeader bool) (*control.Node, error) {
	if wantLeader {
		return leader(ctx, env)
	}
	rs := running(env)
	if len(rs) == 0 {
		return nil, errors.New("no running node")
	}
	return rs[env.Rand.IntN(len(rs))], nil
}

type kill struct{ leader bool }

func (k kill) Name() string {
	if k.leader {
		return "kill-leader"
	}
	return "kill-random"
}
func (kill) NeedsNetwork() bool { return false }
func (kill) Hold(env *Env) time.Duration {
	return between(env.Rand, time.Second, env.TTL+5*time.Second)
}
func (k kill) Inject(ctx context.Context, env *Env) (Active, error) {
	n, err := target(ctx, env, k.leader)
	if err != nil {
		return nil, err
	}
	act := procActive{nodes: []string{n.ID}, heal: func(ctx context.Context) error {
		return env.Cluster.StartNode(ctx, n, nil)
	}}
	return act, env.Cluster.Kill(n)
}

type pause struct{ leader bool }

func (p pause) Name() string {
	if p.leader {
		return "pause-leader"
	}
	return "pause-random"
}
func (pause) NeedsNetwork() bool { return false }

// Hold: longer than the TTL, so that every lease the paused leader had
// granted would have expired by the old leader's clock.
func (pause) Hold(env *Env) time.Duration {
	return between(env.Rand, env.TTL+env.TTL/2, 2*env.TTL+2*time.Second)
}
func (p pause) Inject(ctx context.Context, env *Env) (Active, error) {
	n, err := target(ctx, env, p.leader)
	if err != nil {
		return nil, err
	}
	act := procActive{nodes: []string{n.ID}, heal: func(context.Context) error { return env.Cluster.Resume(n) }}
	return act, env.Cluster.Pause(n)
}

type membership struct{}

func (membership) Name() string       { return "membership" }
func (membership) NeedsNetwork() bool { return false }
func (membership) Hold(env *Env) time.Duration {
	return between(env.Rand, 2*time.Second, env.TTL+8*time.Second)
}
func (membership) Inject(ctx context.Context, env *Env) (Active, error) {
	n, err := target(ctx, env, false)
	if err != nil {
		return nil, err
	}
	act := procActive{nodes: []string{n.ID}, heal: func(ctx context.Context) error {
		return env.Cluster.StartNode(ctx, n, nil)
	}}
	return act, env.Cluster.Stop(n, 10*time.Second)
}

// clockDrift restarts every node, one at a time, with a leader-clock rate
// within the safe error of the clients' drift bound, and heals by
// restarting them at rate 1.
type clockDrift struct{}

func (clockDrift) Name() string       { return "clock-drift" }
func (clockDrift) NeedsNetwork() bool { return false }
func (clockDrift) Hold(env *Env) time.Duration {
	return between(env.Rand, 3*env.TTL, 3*env.TTL+10*time.Second)
}

// SafeRateError is the largest clock-rate error the clients' drift bound
// absorbs: δ ≤ drift/(2−drift) (DESIGN.md's safety argument).
func SafeRateError(drift float64) float64 { return drift / (2 - drift) }

func (clockDrift) Inject(ctx context.Context, env *Env) (Active, error) {
	limit := SafeRateError(env.DriftBound) * 0.9
	var names []string
	rates := map[*control.Node]float64{}
	for _, n := range env.Cluster.Nodes() {
		r := 1 + (env.Rand.Float64()*2-1)*limit
		rates[n] = r
		names = append(names, fmt.Sprintf("%s@%.4f", n.ID, r))
	}
	act := procActive{nodes: names, heal: func(ctx context.Context) error {
		return rolling(ctx, env, func(*control.Node) []string { return nil })
	}}
	return act, rolling(ctx, env, func(n *control.Node) []string {
		return []string{"--unsafe-clock-rate", strconv.FormatFloat(rates[n], 'f', 5, 64)}
	})
}

// rolling restarts every node gracefully, one at a time, with new extra
// flags, waiting for a serving leader after each.
func rolling(ctx context.Context, env *Env, extra func(*control.Node) []string) error {
	for _, n := range env.Cluster.Nodes() {
		if n.Proc().State() != control.Stopped {
			if err := env.Cluster.Stop(n, 10*time.Second); err != nil {
				env.Log.Warn("stop for restart", "node", n.ID, "err", err)
			}
		}
		if err := env.Cluster.StartNode(ctx, n, extra(n)); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := env.Cluster.WaitLeader(wctx)
		cancel()
		if err != nil {
			return fmt.Errorf("after restarting %s: %w", n.ID, err)
		}
	}
	return nil
}

// ringKeep is how many neighbours per side a node of an n-node ring keeps:
// with the majority m = n/2+1, a node sees itself and keep per side, so
// keep = ceil((m-1)/2) = m/2.
func ringKeep(n int) int { return (n/2 + 1) / 2 }

// leaderChurn moves leadership every TTL/2 for its hold: it stops the
// current leader with SIGSTOP until another node serves as leader (so
// just past the election), resumes it (it comes back as a follower), and
// starts the next move TTL/2 after the last one began. The mechanism is
// the one available from outside any agent: a pause, not an API call. It
// is the issue 9 scenario: with leaders changing faster than a TTL, a
// lease whose holder died must still expire on time (Promote keeps each
// lease's remaining time; a full-TTL reset never expires it).
type leaderChurn struct{}

func (leaderChurn) Name() string       { return "leader-churn" }
func (leaderChurn) NeedsNetwork() bool { return false }
func (leaderChurn) Hold(env *Env) time.Duration {
	return between(env.Rand, 4*env.TTL, 8*env.TTL)
}

type churnActive struct {
	env    *Env
	cancel context.CancelFunc
	done   chan struct{}
	moves  atomic.Int64
}

func (a *churnActive) Nodes() []string { return []string{"leader every " + (a.env.TTL / 2).String()} }

func (a *churnActive) Heal(ctx context.Context) error {
	a.cancel()
	<-a.done
	var errs []error
	for _, n := range a.env.Cluster.Nodes() {
		if n.Proc().State() == control.Paused {
			errs = append(errs, a.env.Cluster.Resume(n))
		}
	}
	a.env.Log.Info("leader churn over", "moves", a.moves.Load())
	return errors.Join(errs...)
}

func (leaderChurn) Inject(ctx context.Context, env *Env) (Active, error) {
	if _, err := leader(ctx, env); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	a := &churnActive{env: env, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		period := env.TTL / 2
		for cctx.Err() == nil {
			began := time.Now()
			if err := a.move(cctx); err != nil && cctx.Err() == nil {
				env.Log.Warn("leader churn: move failed", "err", err)
			}
			ctxtime.Sleep(cctx, period-time.Since(began))
		}
	}()
	return a, nil
}

// churnStepLimit is how long a leader-churn step waits for another leader
// to serve before it resumes the one it stopped (history.LeaderStop).
const churnStepLimit = 5 * time.Second

// move stops the leader until another node serves as leader (at most
// churnStepLimit), then resumes it.
func (a *churnActive) move(ctx context.Context) error {
	c := a.env.Cluster
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	old, err := c.WaitLeader(lctx)
	cancel()
	if err != nil {
		return err
	}
	if err := c.Pause(old); err != nil {
		return err
	}
	defer c.Resume(old)
	if a.env.Rec != nil {
		a.env.Rec.Event(history.Record{Client: history.NemesisClient, Op: history.LeaderStop, Node: old.ID})
	}
	deadline := time.Now().Add(churnStepLimit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		n, err := c.Leader(sctx)
		if err == nil && n != old {
			if st, err := c.Status(sctx, n); err == nil && st.Serving {
				cancel()
				a.moves.Add(1)
				if a.env.Rec != nil {
					a.env.Rec.Event(history.Record{Client: history.NemesisClient, Op: history.LeaderMove, Node: old.ID, Value: n.ID})
				}
				return nil
			}
		}
		cancel()
		ctxtime.Sleep(ctx, 20*time.Millisecond)
	}
	return fmt.Errorf("no other leader within %v of stopping %s", churnStepLimit, old.ID)
}
