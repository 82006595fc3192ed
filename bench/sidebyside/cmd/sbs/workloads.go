package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// dialN opens n lockers at once, each its own connection.
func (c *config) dialN(ctx context.Context, n int) ([]locker, func(), error) {
	out := make([]locker, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			out[i], errs[i] = c.sys.dial(dctx)
		})
	}
	wg.Wait()
	closeAll := func() {
		var wg sync.WaitGroup
		for _, l := range out {
			if l != nil {
				wg.Go(l.close)
			}
		}
		wg.Wait()
	}
	for _, err := range errs {
		if err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	return out, closeAll, nil
}

// cpuWindow measures the servers' CPU over f.
func (c *config) cpuWindow(f func()) (*float64, error) {
	before, err := c.serverCPU()
	if err != nil {
		return nil, err
	}
	f()
	after, err := c.serverCPU()
	if err != nil {
		return nil, err
	}
	d := round(after-before, 2)
	return &d, nil
}

// uncontended: N clients, each acquiring and releasing its own key in a
// loop (bench's uncontended, at 32 clients); plus the servers' CPU.
func (c *config) uncontended(ctx context.Context) ([]Result, error) {
	lockers, closeAll, err := c.dialN(ctx, c.clients)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var acq, rel, cycles recorder
	rctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	var elapsed time.Duration
	cpu, err := c.cpuWindow(func() {
		start := time.Now()
		var wg sync.WaitGroup
		for i, l := range lockers {
			wg.Go(func() {
				key := c.prefix + "/u/" + strconv.Itoa(i)
				for rctx.Err() == nil {
					t0 := time.Now()
					h, err := l.lock(rctx, key, false)
					if err != nil {
						if rctx.Err() == nil && !isCtxErr(err) {
							acq.fail(err)
						}
						continue
					}
					t1 := time.Now()
					acq.add(t1.Sub(t0))
					relCtx, rc := context.WithTimeout(context.Background(), 5*time.Second)
					err = h.unlock(relCtx)
					rc()
					if err != nil {
						rel.fail(err)
						continue
					}
					rel.add(time.Since(t1))
					cycles.add(time.Since(t0))
				}
			})
		}
		wg.Wait()
		elapsed = time.Since(start)
	})
	if err != nil {
		return nil, err
	}
	cy := cycles.result("uncontended", "acquire+release", c.clients, elapsed)
	cy.ServerCPU = cpu
	if cy.Count > 0 {
		cy.Note = fmt.Sprintf("server CPU %.0f µs per pair (3 nodes)", *cpu/float64(cy.Count)*1e6)
	}
	return []Result{
		acq.result("uncontended", "acquire", c.clients, elapsed),
		rel.result("uncontended", "release", c.clients, elapsed),
		cy,
	}, nil
}

// handoff: 4 clients queue for one key, each releasing it at once; the gap
// from a release's start to the next holder's grant.
func (c *config) handoff(ctx context.Context) ([]Result, error) {
	const n = 4
	lockers, closeAll, err := c.dialN(ctx, n)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	key := c.prefix + "/handoff"
	var gaps, grants recorder
	var mu sync.Mutex
	var releasedAt time.Time
	rctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, l := range lockers {
		wg.Go(func() {
			for rctx.Err() == nil {
				t0 := time.Now()
				h, err := l.lock(rctx, key, true)
				if err != nil {
					if rctx.Err() == nil && !isCtxErr(err) {
						grants.fail(err)
					}
					continue
				}
				now := time.Now()
				grants.add(now.Sub(t0))
				mu.Lock()
				if !releasedAt.IsZero() {
					gaps.add(now.Sub(releasedAt))
				}
				releasedAt = time.Now()
				mu.Unlock()
				relCtx, rc := context.WithTimeout(context.Background(), 5*time.Second)
				if err := h.unlock(relCtx); err != nil {
					gaps.fail(err)
				}
				rc()
			}
		})
	}
	// The ZooKeeper recipe cannot be cancelled: a waiter wakes only when
	// the holder releases, so the last holder's release frees it; the
	// gaps after the deadline are not counted (rctx is done).
	wg.Wait()
	elapsed := time.Since(start)
	g := gaps.result("handoff", "release→next grant", n, elapsed)
	g.Note = "4 clients queue for one key; gap from a release to the next holder's grant"
	return []Result{g, grants.result("handoff", "acquire (queued)", n, elapsed)}, nil
}

// keepalive: L locks held by K clients for the hold time, kept alive by
// each system's own means; the servers' CPU over the hold, their RSS, and
// the locks lost by the end.
func (c *config) keepalive(ctx context.Context) ([]Result, error) {
	lockers, closeAll, err := c.dialN(ctx, c.holders)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	for _, l := range lockers {
		if e, ok := l.(*etcdLocker); ok {
			e.perLock = true
		}
	}
	per := max(c.locks/c.holders, 1)
	helds := make([][]held, c.holders)
	var setup recorder
	var setupErr atomic.Value
	t0 := time.Now()
	var wg sync.WaitGroup
	const lanes = 4 // concurrent acquires per holder during setup
	var hmu sync.Mutex
	for h, l := range lockers {
		for lane := range lanes {
			wg.Go(func() {
				for i := lane; i < per && ctx.Err() == nil; i += lanes {
					key := fmt.Sprintf("%s/k/%d/%d", c.prefix, h, i)
					actx, cancel := context.WithTimeout(ctx, 30*time.Second)
					s := time.Now()
					hd, err := l.lock(actx, key, false)
					cancel()
					if err != nil {
						setupErr.CompareAndSwap(nil, fmt.Errorf("keepalive setup: lock %s: %w", key, err))
						return
					}
					setup.add(time.Since(s))
					hmu.Lock()
					helds[h] = append(helds[h], hd)
					hmu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	setupTime := time.Since(t0)
	defer func() {
		var wg sync.WaitGroup
		for _, hs := range helds {
			wg.Go(func() {
				for _, hd := range hs {
					rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					hd.unlock(rctx)
					cancel()
				}
			})
		}
		wg.Wait()
	}()
	if err, _ := setupErr.Load().(error); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "  keepalive: %d locks taken in %.1f s; holding %v\n", per*c.holders, setupTime.Seconds(), c.hold)
	cpu, err := c.cpuWindow(func() { sleep(ctx, c.hold) })
	if err != nil {
		return nil, err
	}
	rss, err := c.serverRSS()
	if err != nil {
		return nil, err
	}
	var lost atomic.Int64
	for _, hs := range helds {
		wg.Go(func() {
			for _, hd := range hs {
				if hd.lost(ctx) {
					lost.Add(1)
				}
			}
		})
	}
	wg.Wait()
	nLost := int(lost.Load())
	r := setup.result("keepalive", "held "+c.hold.String(), c.holders, 0)
	r.Seconds = round(c.hold.Seconds(), 2)
	r.ServerCPU, r.RSSMiB, r.Lost = cpu, &rss, &nLost
	r.Note = fmt.Sprintf("%d locks by %d clients, TTL %v; latencies are the setup's acquires (%.1f s)",
		per*c.holders, c.holders, c.ttl, setupTime.Seconds())
	return []Result{r}, nil
}

// idleCPU: the servers' CPU with no client at all, after idleSettle (by
// default two TTLs) for what earlier workloads left to end: the locks of
// keepalive expire within their TTL, and their expiries are work.
func (c *config) idleCPU(ctx context.Context) ([]Result, error) {
	settle := c.idleSettle
	if settle == 0 {
		settle = 2 * c.ttl
	}
	sleep(ctx, settle)
	cpu, err := c.cpuWindow(func() { sleep(ctx, c.idle) })
	if err != nil {
		return nil, err
	}
	rss, err := c.serverRSS()
	if err != nil {
		return nil, err
	}
	var r Result
	r.Workload, r.Metric, r.Seconds = "idle", "no clients", round(c.idle.Seconds(), 2)
	r.ServerCPU, r.RSSMiB = cpu, &rss
	return []Result{r}, nil
}

// failover: clients loop acquire/release on keys of their own while the
// leader process is SIGKILLed, then restarted before the next kill; the
// window from the kill to the end of the first acquire started after it.
func (c *config) failover(ctx context.Context) ([]Result, error) {
	lockers, closeAll, err := c.dialN(ctx, c.fclients)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var ops recorder
	var mu sync.Mutex
	var successes [][2]time.Time
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i, l := range lockers {
		wg.Go(func() {
			base := c.prefix + "/f/" + strconv.Itoa(i)
			key, gen := base, 0
			for rctx.Err() == nil {
				t0 := time.Now()
				actx, ac := context.WithTimeout(rctx, 10*time.Second)
				h, err := l.lock(actx, key, false)
				ac()
				if err != nil {
					if rctx.Err() == nil {
						ops.fail(err)
						sleep(rctx, 10*time.Millisecond) // a refused connection fails at once
					}
					// A fresh key after a failure: an acquire whose answer
					// was lost may have left the lock taken by this very
					// client (ZooKeeper's recipe then queues behind its
					// own znode for as long as the session lives).
					gen++
					key = base + "." + strconv.Itoa(gen)
					continue
				}
				now := time.Now()
				ops.add(now.Sub(t0))
				mu.Lock()
				successes = append(successes, [2]time.Time{t0, now})
				mu.Unlock()
				relCtx, rc := context.WithTimeout(context.Background(), 5*time.Second)
				h.unlock(relCtx)
				rc()
			}
		})
	}
	var windows, elections recorder
	var winMs []float64
	var killed []string
	var ferr error
	for k := 0; k < c.kills && ctx.Err() == nil; k++ {
		if !sleep(ctx, c.duration/2) {
			break
		}
		lctx, lc := context.WithTimeout(ctx, 5*time.Second)
		leader, err := c.sys.leader(lctx)
		lc()
		if err != nil {
			continue
		}
		pid, err := c.nodePID(leader)
		if err != nil {
			ferr = err
			break
		}
		crashAt := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			ferr = fmt.Errorf("kill node%d (pid %d): %w", leader+1, pid, err)
			break
		}
		// A new leader: poll the survivors (up to 2 minutes).
		for end := time.Now().Add(2 * time.Minute); ctx.Err() == nil && time.Now().Before(end); {
			pctx, pc := context.WithTimeout(ctx, 5*time.Second)
			l, err := c.sys.leader(pctx)
			pc()
			if err == nil && l != leader {
				elections.add(time.Since(crashAt))
				break
			}
			sleep(ctx, 20*time.Millisecond)
		}
		var first time.Time
		deadline := time.Now().Add(2 * time.Minute)
		for ctx.Err() == nil && first.IsZero() && time.Now().Before(deadline) {
			mu.Lock()
			for _, s := range successes {
				if !s[0].Before(crashAt) && (first.IsZero() || s[1].Before(first)) {
					first = s[1]
				}
			}
			mu.Unlock()
			sleep(ctx, 10*time.Millisecond)
		}
		if !first.IsZero() {
			windows.add(first.Sub(crashAt))
			winMs = append(winMs, ms(first.Sub(crashAt)))
			killed = append(killed, fmt.Sprintf("node%d", leader+1))
		}
		if !sleep(ctx, c.duration/2) {
			break
		}
		if err := c.restart(ctx, leader); err != nil {
			ferr = err
			break
		}
	}
	cancel()
	wg.Wait()
	if ferr != nil {
		return nil, ferr
	}
	w := windows.result("failover", "kill→first new success", c.fclients, 0)
	w.WindowsMs = winMs
	sorted := slices.Sorted(slices.Values(winMs))
	med := ""
	if len(sorted) > 0 {
		med = fmt.Sprintf("; median %.0f ms", sorted[len(sorted)/2])
	}
	w.Note = fmt.Sprintf("leader SIGKILLed %d times (%v)%s; %d clients in acquire/release loops", len(killed), killed, med, c.fclients)
	return []Result{w, elections.result("failover", "kill→new leader", c.fclients, 0),
		ops.result("failover", "acquire during failover", c.fclients, 0)}, nil
}

// restart starts node i again with cluster.sh and waits until it is back
// and the cluster grants a lock.
func (c *config) restart(ctx context.Context, i int) error {
	cmd := exec.CommandContext(ctx, c.script, "restart", c.system, c.dir, strconv.Itoa(i+1))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("restart node%d: %w", i+1, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for wctx.Err() == nil {
		if c.sys.up(wctx, i) {
			return c.waitReady(ctx, 60*time.Second)
		}
		sleep(wctx, 100*time.Millisecond)
	}
	return fmt.Errorf("node%d not back after 60 s", i+1)
}
