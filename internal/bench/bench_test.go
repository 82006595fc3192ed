package bench

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/leasenode/leasenode/lease"
)

func TestErrorKind(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("acquire %q: %w", "k", lease.ErrNoLeader), "no leader"},
		{fmt.Errorf("x: %w: y", lease.ErrUnknownOutcome), "unknown outcome"},
		{&lease.HeldError{Key: "k"}, "held"},
		{errRefused, "refused (lease lost)"},
		{context.DeadlineExceeded, "timeout"},
		{connect.NewError(connect.CodeAborted, errors.New("leadership lost while committing")), "unknown outcome"},
		{connect.NewError(connect.CodeUnavailable, errors.New("no leader")), "no leader"},
		{connect.NewError(connect.CodeResourceExhausted, errors.New("over")), "rpc resource_exhausted"},
		{errors.New("boom"), "other"},
	} {
		if got := ErrorKind(c.err); got != c.want {
			t.Errorf("ErrorKind(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// Percentiles appear only when the samples allow them; every failure is
// counted by kind.
func TestRecorderResult(t *testing.T) {
	var r Recorder
	for i := range 99 {
		r.Add(time.Duration(i+1) * time.Millisecond)
	}
	r.Fail(lease.ErrNoLeader)
	r.Fail(lease.ErrNoLeader)
	r.Fail(lease.ErrUnknownOutcome)
	res := r.Result("w", "m", 1, time.Second)
	if res.Count != 99 || res.P50ms == nil || res.P99ms != nil {
		t.Fatalf("n=99: %+v", res)
	}
	if *res.P50ms < 49 || *res.P50ms > 51 || res.MaxMs < 98.9 || res.MaxMs > 99.1 {
		t.Errorf("p50 %v max %v, want ~50 and ~99", *res.P50ms, res.MaxMs)
	}
	if res.Errors != 3 || res.ErrorKinds["no leader"] != 2 || res.ErrorKinds["unknown outcome"] != 1 {
		t.Errorf("errors %d by kind %v", res.Errors, res.ErrorKinds)
	}
	r.Add(500 * time.Millisecond)
	res = r.Result("w", "m", 1, time.Second)
	if res.Count != 100 || res.P99ms == nil || *res.P99ms < 98.9 || *res.P99ms > 99.1 {
		t.Errorf("n=100: p99 %v, want ~99", res.P99ms)
	}
	var one Recorder
	one.Add(time.Millisecond)
	if res := one.Result("w", "m", 1, 0); res.P50ms != nil || res.P99ms != nil || res.MaxMs != 1 {
		t.Errorf("n=1: %+v", res)
	}
}
