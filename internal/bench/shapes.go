package bench

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/leasenode/leasenode/lease"
)

// loop is uncontended's acquire/release loop for the lock shapes: each
// client acquires what what gives it (one key with options, or a set) and
// releases it at once.
func loop(ctx context.Context, cfg *Config, name string, what func(cl *lease.Client, i int) ([]lease.Item, []lease.AcquireOption)) ([]Result, error) {
	clients, closeAll, err := cfg.dial(ctx, cfg.Clients)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var acq, rel, cycles Recorder
	stop := cfg.progress(name, &cycles)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i, cl := range clients {
		items, opts := what(cl, i)
		wg.Go(func() {
			for rctx.Err() == nil {
				t0 := time.Now()
				var l *lease.Lease
				var err error
				if len(items) > 1 {
					l, err = cl.TryAcquireSet(rctx, items, opts...)
				} else {
					l, err = cl.TryAcquire(rctx, items[0].Key, opts...)
				}
				if err != nil || l == nil {
					if rctx.Err() == nil && !isCtxErr(err) {
						acq.Fail(err)
					}
					continue
				}
				t1 := time.Now()
				acq.Add(t1.Sub(t0))
				relCtx, rc := context.WithTimeout(context.Background(), 5*time.Second)
				err = l.Release(relCtx)
				rc()
				if err != nil {
					rel.Fail(err)
					continue
				}
				rel.Add(time.Since(t1))
				cycles.Add(time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	metric := "acquire"
	if name == "multi" {
		metric = "acquire set of 4"
	}
	return []Result{
		acq.Result(name, metric, cfg.Clients, elapsed),
		rel.Result(name, "release", cfg.Clients, elapsed),
		cycles.Result(name, metric+"+release", cfg.Clients, elapsed),
	}, nil
}

// semaphoreHandoff is handoff for a semaphore of 2 with 6 clients: the gap
// from a release to the next grant of a waiting client.
func semaphoreHandoff(ctx context.Context, cfg *Config) ([]Result, error) {
	const n, slots = 6, 2
	clients, closeAll, err := cfg.dial(ctx, n)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	key := cfg.Prefix + "semaphore"
	var gaps, grants Recorder
	var mu sync.Mutex
	var releasedAt time.Time // when the last holder started releasing
	stop := cfg.progress("semaphore", &grants)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Go(func() {
			for rctx.Err() == nil {
				t0 := time.Now()
				l, err := cl.Acquire(rctx, key, lease.Semaphore(slots))
				if err != nil {
					if rctx.Err() == nil && !isCtxErr(err) {
						grants.Fail(err)
					}
					continue
				}
				now := time.Now()
				grants.Add(now.Sub(t0))
				mu.Lock()
				if !releasedAt.IsZero() {
					gaps.Add(now.Sub(releasedAt))
				}
				releasedAt = time.Now()
				mu.Unlock()
				relCtx, rc := context.WithTimeout(context.Background(), 5*time.Second)
				if err := l.Release(relCtx); err != nil {
					grants.Fail(err)
				}
				rc()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	return []Result{
		grants.Result("semaphore", "acquire (waiting, "+strconv.Itoa(slots)+" slots)", n, elapsed),
		gaps.Result("semaphore", "release→next grant", n, elapsed),
	}, nil
}
