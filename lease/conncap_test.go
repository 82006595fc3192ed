package lease_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// One Client's many requests at once share a bounded number of
// connections to a node: a program's 1,000 TryAcquires at once opened
// 1,000 HTTP/1.1 connections, past the node's --max-conns share of one
// client source, and thousands were refused and retried (outsider review
// s36). Here 200 at once against a node admitting 64 connections: none
// refused, all granted.
func TestManyRequestsAtOnceShareConnections(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(_ int, cfg *node.Config) {
		cfg.Limits.MaxConns = 64
	}})
	_, l := c.Leader()
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{l.APIAddr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close(ctxT(t, 10*time.Second)) })
	const calls = 200
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	start := time.Now()
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls, err := cl.TryAcquire(ctxT(t, 30*time.Second), fmt.Sprintf("many/%03d", i))
			if err == nil && ls == nil {
				err = fmt.Errorf("many/%03d not granted", i)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var refused uint64
	for _, r := range l.Refusals() {
		if r.Port == node.PortAPI {
			refused += r.Count
		}
	}
	t.Logf("%d TryAcquires at once from one Client: all answered in %v; %d API connections refused", calls, time.Since(start).Round(time.Millisecond), refused)
	if refused > 0 {
		t.Errorf("the node refused %d of one Client's connections: %v", refused, l.Refusals())
	}
}
