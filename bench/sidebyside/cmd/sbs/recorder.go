package main

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/leasenode/leasenode/internal/bench"
)

// recorder is internal/bench's: latencies into an HDR histogram (1 µs to
// 1 h, 3 significant digits), failures counted by kind, percentiles only
// from bench.MinSamplesP50 / bench.MinSamplesP99 samples.
type recorder struct {
	mu    sync.Mutex
	hist  *hdrhistogram.Histogram // microseconds
	kinds map[string]int
	ops   atomic.Int64
	errs  atomic.Int64
}

const (
	histMin    = 1
	histMax    = int64(time.Hour / time.Microsecond)
	histDigits = 3
)

func (r *recorder) add(d time.Duration) {
	r.ops.Add(1)
	us := min(max(d.Microseconds(), histMin), histMax)
	r.mu.Lock()
	if r.hist == nil {
		r.hist = hdrhistogram.New(histMin, histMax, histDigits)
	}
	_ = r.hist.RecordValue(us)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	r.errs.Add(1)
	r.mu.Lock()
	if r.kinds == nil {
		r.kinds = map[string]int{}
	}
	r.kinds[errorKind(err)]++
	r.mu.Unlock()
}

func (r *recorder) result(workload, metric string, clients int, elapsed time.Duration) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := bench.Result{Workload: workload, Metric: metric, Clients: clients, Seconds: round(elapsed.Seconds(), 2),
		Errors: int(r.errs.Load())}
	if len(r.kinds) > 0 {
		res.ErrorKinds = maps.Clone(r.kinds)
	}
	if r.hist == nil {
		return Result{Result: res}
	}
	n := r.hist.TotalCount()
	res.Count = int(n)
	if elapsed > 0 {
		res.PerSec = round(float64(n)/elapsed.Seconds(), 1)
	}
	usMs := func(us int64) float64 { return ms(time.Duration(us) * time.Microsecond) }
	if n >= bench.MinSamplesP50 {
		v := usMs(r.hist.ValueAtQuantile(50))
		res.P50ms = &v
	}
	if n >= bench.MinSamplesP99 {
		v := usMs(r.hist.ValueAtQuantile(99))
		res.P99ms = &v
	}
	res.MaxMs = usMs(r.hist.Max())
	return Result{Result: res}
}

// errorKind is bench.ErrorKind for leasenode's errors; etcd's and
// ZooKeeper's fall back to their message, cut short.
func errorKind(err error) string {
	switch {
	case errors.Is(err, errHeld):
		return "held"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	if k := bench.ErrorKind(err); k != "other" {
		return k
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(v float64, digits int) float64 {
	f := 1.0
	for range digits {
		f *= 10
	}
	return float64(int64(v*f+0.5)) / f
}
