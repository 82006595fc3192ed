// Package demo is the showcase behind `leasenode demo`: a 3-node cluster in
// this process, workers in the same process that reach it over the
// network (lease.Dial, the path any program takes), competing for a few
// keys and writing to a toy resource guarded by fencing tokens. Mid-run the
// leader is crashed and later restarted; one worker pauses past its TTL
// and then tries a write with its stale token, which the fence refuses.
//
// It prints a timeline and a summary and checks, from what the workers
// themselves believed (Lease.IsHealthy and ValidUntil), the invariants the
// chaos harness checks at scale: single-holder (no two workers believe
// they hold one key at once), monotonic-token (grants of a key carry
// increasing tokens) and fence (the resource never accepts a token lower
// than one it has seen). Any violation makes Run report it.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/internal/local"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// Options configures a run.
type Options struct {
	// Short runs a ~12 s version (for CI) instead of ~35 s.
	Short bool
	// Out receives the timeline and summary.
	Out io.Writer
	// Cluster, when set, shapes the in-process cluster (ports, logger).
	Cluster local.Options
}

// Result is what a run found.
type Result struct {
	// Violations lists every broken invariant; empty on success.
	Violations []string
	// Failover is the longest window without a successful acquire or
	// extend, seen by the clients.
	Failover time.Duration
	// StaleRejected counts writes the fence refused.
	StaleRejected int
	// Holdings counts holding periods compared by the single-holder check.
	Holdings int
}

// plan is the schedule of a run, as offsets from its start.
type plan struct {
	total, crash, restart, pause time.Duration
}

var (
	keys = []string{"demo/printer", "demo/billing", "demo/reports"}
	ttl  = 2 * time.Second
)

// demo is one run's state.
type demo struct {
	out   io.Writer
	start time.Time
	c     *local.Cluster
	res   *resource

	mu        sync.Mutex
	holdings  map[string][]holding // by key
	successes []time.Time          // successful grants and extends
	lost      int
	lines     int
}

// holding is one period in which a worker believed it held a key.
type holding struct {
	who        string
	token      uint64
	start, end time.Time
}

// Run runs the demo.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	p := plan{total: 32 * time.Second, crash: 9 * time.Second, restart: 14 * time.Second, pause: 18 * time.Second}
	if opts.Short {
		p = plan{total: 11 * time.Second, crash: 3 * time.Second, restart: 5500 * time.Millisecond, pause: 5 * time.Second}
	}
	d := &demo{out: opts.Out, res: newResource(), holdings: map[string][]holding{}}
	fmt.Fprintf(d.out, "leasenode demo: a 3-node cluster in this process; 4 workers compete for %d keys and\n", len(keys))
	fmt.Fprintf(d.out, "write to a toy resource that checks fencing tokens. The leader is crashed and restarted\n")
	fmt.Fprintf(d.out, "mid-run, and worker-5 freezes past its TTL, then tries to write with its old token.\n\n")

	d.start = time.Now()
	copts := opts.Cluster
	copts.Nodes = 3
	c, err := local.Start(ctx, copts)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	defer c.Close()
	d.c = c
	d.say("cluster", "3 nodes up (%s); leader %s", strings.Join(c.APIAddrs(), " "), c.ID(c.Leader()))

	t0 := time.Now() // the plan's offsets count from here
	runCtx, cancel := context.WithTimeout(ctx, p.total)
	defer cancel()
	var wg sync.WaitGroup
	var clients []*lease.Client
	var cmu sync.Mutex
	dial := func(opts ...lease.Option) (*lease.Client, error) {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		cl, err := lease.Dial(dctx, c.APIAddrs(), append([]lease.Option{lease.WithTTL(ttl)}, opts...)...)
		if err == nil {
			cmu.Lock()
			clients = append(clients, cl)
			cmu.Unlock()
		}
		return cl, err
	}
	defer func() {
		for _, cl := range clients {
			cctx, cc := context.WithTimeout(context.Background(), 2*time.Second)
			cl.Close(cctx)
			cc()
		}
	}()

	// A probe keeps one lease and extends it every 100 ms: each success
	// marks the cluster as available, so the longest gap is the failover.
	probe, err := dial(lease.WithExtendInterval(100 * time.Millisecond))
	if err != nil {
		return nil, err
	}
	wg.Add(1)
	go func() { defer wg.Done(); d.probe(runCtx, probe) }()

	for i := 1; i <= 4; i++ {
		cl, err := dial()
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() { defer wg.Done(); d.worker(runCtx, fmt.Sprintf("worker-%d", i), cl) }()
	}
	// A frozen process extends nothing: worker-5's extends never leave it.
	sleepRemote, err := lease.NewRemote(c.APIAddrs(), lease.WithTTL(ttl))
	if err != nil {
		return nil, err
	}
	defer sleepRemote.Close()
	sleeper, err := lease.New(frozen{sleepRemote}, lease.WithTTL(ttl))
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cc := context.WithTimeout(context.Background(), 2*time.Second)
		sleeper.Close(cctx)
		cc()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if ctxtime.Sleep(runCtx, p.pause-time.Since(t0)) {
			d.sleeper(runCtx, "worker-5", sleeper)
		}
	}()

	var crashed int = -1
	var crashAt time.Time
	var elected time.Duration
	if ctxtime.Sleep(runCtx, p.crash-time.Since(t0)) {
		// The leader of the moment: on a loaded host an election may be
		// on just then (the crash was skipped when none served).
		crashed, _ = c.WaitLeader(runCtx)
		if crashed >= 0 {
			crashAt = time.Now()
			d.say("chaos", "CRASH leader %s (no leadership transfer, no goodbye)", c.ID(crashed))
			c.Crash(crashed)
			if i, err := c.WaitLeader(runCtx); err == nil {
				elected = time.Since(crashAt)
				d.say("cluster", "%s elected and serving after %v; every lease keeps the time it had left", c.ID(i), elected.Round(time.Millisecond))
			}
		}
	}
	if crashed >= 0 && ctxtime.Sleep(runCtx, p.restart-time.Since(t0)) {
		if err := c.Restart(runCtx, crashed); err != nil {
			d.say("chaos", "restart %s failed: %v", c.ID(crashed), err)
		} else {
			d.say("chaos", "RESTART %s from its data directory; it rejoins as a follower", c.ID(crashed))
		}
	}
	wg.Wait()
	d.say("demo", "time is up; workers released their leases")

	r := d.check()
	r.Failover = d.failover()
	d.summary(r, c, crashed, crashAt, elected)
	return r, nil
}

// at returns the offset from the start of the run.
func (d *demo) at(t time.Time) string { return fmt.Sprintf("%6.2fs", t.Sub(d.start).Seconds()) }

func (d *demo) say(who, format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "%s  %-9s %s\n", d.at(time.Now()), who, fmt.Sprintf(format, args...))
}

func (d *demo) success(t time.Time) {
	d.mu.Lock()
	d.successes = append(d.successes, t)
	d.mu.Unlock()
}

func (d *demo) record(key string, h holding) {
	d.mu.Lock()
	d.holdings[key] = append(d.holdings[key], h)
	d.mu.Unlock()
}

func (d *demo) probe(ctx context.Context, cl *lease.Client) {
	for ctx.Err() == nil {
		l, err := cl.AcquireTimeout(ctx, "demo/probe", time.Second)
		if err != nil {
			ctxtime.Sleep(ctx, 50*time.Millisecond)
			continue
		}
		d.success(time.Now())
		last := l.ValidUntil()
		t := time.NewTicker(10 * time.Millisecond)
		for ctx.Err() == nil && l.IsHealthy() {
			select {
			case <-ctx.Done():
			case <-t.C:
				if v := l.ValidUntil(); v.After(last) {
					last = v
					d.success(time.Now())
				}
			}
		}
		t.Stop()
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l.Release(rctx)
		cancel()
	}
}

// worker competes for random keys and writes while it holds one.
func (d *demo) worker(ctx context.Context, who string, cl *lease.Client) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(len(who))))
	for ctx.Err() == nil {
		key := keys[rng.IntN(len(keys))]
		l, err := cl.AcquireTimeout(ctx, key, 2*time.Second)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, lease.ErrTimeout) {
				d.say(who, "acquire %s failed (will retry): %v", key, err)
				ctxtime.Sleep(ctx, 100*time.Millisecond)
			}
			continue
		}
		h := holding{who: who, token: l.Token(), start: time.Now()}
		d.success(h.start)
		d.say(who, "acquired %-13s token=%d", key, l.Token())
		writes, lostIt := 0, false
		hold := time.Duration(300+rng.IntN(700)) * time.Millisecond
		deadline := time.Now().Add(hold)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if !l.IsHealthy() {
				lostIt = true
				break
			}
			if err := d.res.write(key, who, l.Token()); err != nil {
				d.violation("fence refused %s's write with token %d while it held %s: %v", who, l.Token(), key, err)
			} else {
				writes++
			}
			ctxtime.Sleep(ctx, 100*time.Millisecond)
		}
		if lostIt || !l.IsHealthy() {
			h.end = earliest(time.Now(), l.ValidUntil())
			d.record(key, h)
			d.mu.Lock()
			d.lost++
			d.mu.Unlock()
			d.say(who, "LOST %s (token=%d): %v; stopped writing", key, l.Token(), l.Err())
			continue
		}
		h.end = time.Now()
		d.record(key, h)
		d.say(who, "releases %-13s token=%d after %d writes", key, l.Token(), writes)
		rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if err := l.Release(rctx); err != nil {
			d.say(who, "release of %s failed (it expires after its TTL): %v", key, err)
		}
		cancel()
		ctxtime.Sleep(ctx, time.Duration(rng.IntN(150))*time.Millisecond)
	}
}

// sleeper takes a key, writes once, then freezes (no extends, no checks)
// until another worker has written with a newer token, then wakes and
// writes with its stale token: the fence must refuse it.
func (d *demo) sleeper(ctx context.Context, who string, cl *lease.Client) {
	key := keys[0]
	l, err := cl.Acquire(ctx, key)
	if err != nil {
		d.say(who, "could not acquire %s: %v", key, err)
		return
	}
	h := holding{who: who, token: l.Token(), start: time.Now()}
	d.success(h.start)
	d.say(who, "acquired %-13s token=%d", key, l.Token())
	if err := d.res.write(key, who, l.Token()); err != nil {
		d.violation("fence refused %s's first write with token %d: %v", who, l.Token(), err)
	}
	d.say(who, "FREEZES (like a GC or VM pause): no extends, no checks, still believes it holds %s", key)
	// The worker's belief ends when its lease's validity does: by then
	// Done has closed, though a frozen process would not notice.
	<-l.Done()
	h.end = earliest(time.Now(), l.ValidUntil())
	d.record(key, h)
	waitUntil := time.Now().Add(4 * ttl)
	for d.res.highest(key) <= l.Token() && time.Now().Before(waitUntil) && ctx.Err() == nil {
		ctxtime.Sleep(ctx, 20*time.Millisecond)
	}
	if d.res.highest(key) <= l.Token() {
		d.say(who, "wakes; nobody took %s meanwhile, so there is no stale write to show", key)
		return
	}
	d.say(who, "wakes after %v and writes to %s with its old token=%d", time.Since(h.start).Round(time.Millisecond), key, l.Token())
	if err := d.res.write(key, who, l.Token()); err != nil {
		d.say("resource", "REJECTED stale write from %s: %v", who, err)
	} else {
		d.violation("the fence accepted %s's stale token %d for %s", who, l.Token(), key)
	}
}

// frozen is a Backend whose extends never reach the cluster, as those of
// a process frozen by a GC or VM pause do not.
type frozen struct{ lease.Backend }

func (frozen) Extend(context.Context, *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return nil, &lease.NotSentError{Err: errors.New("frozen: this process extends nothing")}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (d *demo) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	d.res.mu.Lock()
	d.res.violations = append(d.res.violations, msg)
	d.res.mu.Unlock()
	d.say("VIOLATION", "%s", msg)
}

// check runs the single-holder and monotonic-token checks over what the
// workers believed.
func (d *demo) check() *Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := &Result{}
	d.res.mu.Lock()
	r.Violations = append(r.Violations, d.res.violations...)
	r.StaleRejected = len(d.res.rejected)
	d.res.mu.Unlock()
	for _, key := range sortedKeys(d.holdings) {
		hs := d.holdings[key]
		r.Holdings += len(hs)
		// single-holder: sorted by start, each holding must begin after
		// every earlier one ended.
		sort.Slice(hs, func(i, j int) bool { return hs[i].start.Before(hs[j].start) })
		var prev *holding
		for i := range hs {
			h := &hs[i]
			if prev != nil && h.start.Before(prev.end) {
				r.Violations = append(r.Violations, fmt.Sprintf("single-holder: %s: %s (token %d, %s..%s) overlaps %s (token %d, %s..%s)",
					key, h.who, h.token, d.at(h.start), d.at(h.end), prev.who, prev.token, d.at(prev.start), d.at(prev.end)))
			}
			if prev != nil && h.token <= prev.token {
				r.Violations = append(r.Violations, fmt.Sprintf("monotonic-token: %s: token %d granted after %d", key, h.token, prev.token))
			}
			if prev == nil || h.end.After(prev.end) {
				prev = h
			}
		}
	}
	return r
}

// failover is the longest gap between successful acquires and extends.
func (d *demo) failover() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	ts := slices.Clone(d.successes)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	var longest time.Duration
	for i := 1; i < len(ts); i++ {
		longest = max(longest, ts[i].Sub(ts[i-1]))
	}
	return longest
}

func (d *demo) summary(r *Result, c *local.Cluster, crashed int, crashAt time.Time, elected time.Duration) {
	w := d.out
	fmt.Fprintf(w, "\nsummary after %.1f s\n", time.Since(d.start).Seconds())
	fmt.Fprintf(w, "  %-14s %7s %8s %11s %16s\n", "key", "grants", "holders", "last token", "writes accepted")
	d.mu.Lock()
	for _, key := range keys {
		hs := d.holdings[key]
		who := map[string]bool{}
		var last uint64
		for _, h := range hs {
			who[h.who] = true
			last = max(last, h.token)
		}
		fmt.Fprintf(w, "  %-14s %7d %8d %11d %16d\n", key, len(hs), len(who), last, d.res.count(key))
	}
	lost := d.lost
	d.mu.Unlock()
	if crashed >= 0 {
		fmt.Fprintf(w, "  leader crash      %s crashed at %s; a new leader served %v later\n", c.ID(crashed), strings.TrimSpace(d.at(crashAt)), elected.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "  failover          longest window with no successful acquire or extend: %v\n", r.Failover.Round(time.Millisecond))
	fmt.Fprintf(w, "  stale writes      %d rejected by the fence", r.StaleRejected)
	d.res.mu.Lock()
	for _, rj := range d.res.rejected {
		fmt.Fprintf(w, " (%s: token %d < %d)", rj.who, rj.token, rj.highest)
	}
	d.res.mu.Unlock()
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  leases lost       %d (a worker that lost a lease stopped writing at once)\n", lost)
	fmt.Fprintf(w, "  checks            single-holder over %d holding periods, monotonic-token, fence\n", r.Holdings)
	fmt.Fprintf(w, "violations: %d\n", len(r.Violations))
	for _, v := range r.Violations {
		fmt.Fprintf(w, "  - %s\n", v)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// resource is the toy protected resource: it accepts a write only with a
// token at least as high as any it has seen for the key (lease.Fence).
type resource struct {
	fence *lease.Fence

	mu         sync.Mutex
	highestOK  map[string]uint64 // our own record, to check the fence
	accepted   map[string]int
	rejected   []rejection
	violations []string
}

type rejection struct {
	who            string
	token, highest uint64
}

func newResource() *resource {
	return &resource{fence: lease.NewFence(), highestOK: map[string]uint64{}, accepted: map[string]int{}}
}

func (r *resource) write(key, who string, token uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	highest := r.highestOK[key]
	if err := r.fence.Check(key, token); err != nil {
		r.rejected = append(r.rejected, rejection{who, token, highest})
		return err
	}
	if token < highest {
		r.violations = append(r.violations, fmt.Sprintf("fence: accepted token %d for %s after %d", token, key, highest))
	}
	r.highestOK[key] = max(highest, token)
	r.accepted[key]++
	return nil
}

func (r *resource) highest(key string) uint64 { return r.fence.Highest(key) }

func (r *resource) count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accepted[key]
}
