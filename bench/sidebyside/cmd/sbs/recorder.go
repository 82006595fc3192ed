package main

import (
	"context"
	"errors"
	"time"

	"github.com/leasenode/leasenode/internal/bench"
)

// recorder is bench.Recorder, naming etcd's and ZooKeeper's failures too
// (errorKind) and returning sbs's Result.
type recorder struct{ bench.Recorder }

func (r *recorder) add(d time.Duration) { r.Add(d) }
func (r *recorder) fail(err error)      { r.FailKind(errorKind(err)) }

func (r *recorder) result(workload, metric string, clients int, elapsed time.Duration) Result {
	return Result{Result: r.Recorder.Result(workload, metric, clients, elapsed)}
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
