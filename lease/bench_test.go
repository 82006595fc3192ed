package lease_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// Benchmarks run a 3-node cluster on loopback in this process (fsync on,
// default Raft timing) and the clients in the same process:
//
//	go test -run '^$' -bench . -benchtime 3s ./lease/

func benchClients(b *testing.B) (*nodetest.Cluster, map[string]func(b *testing.B) *lease.Client) {
	c := nodetest.New(b, nodetest.Options{Size: 3, API: true, Timing: node.DefaultTiming()})
	mk := func(b *testing.B, bk lease.Backend) *lease.Client {
		cl, err := lease.New(bk)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cl.Close(context.Background()) })
		return cl
	}
	return c, map[string]func(b *testing.B) *lease.Client{
		"leader":   func(b *testing.B) *lease.Client { _, l := c.Leader(); return mk(b, l) },
		"follower": func(b *testing.B) *lease.Client { _, f := c.Follower(); return mk(b, f) },
		"remote": func(b *testing.B) *lease.Client {
			var addrs []string
			for i := range c.Size() {
				addrs = append(addrs, c.Node(i).APIAddr())
			}
			cl, err := lease.Dial(context.Background(), addrs)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cl.Close(context.Background()) })
			return cl
		},
	}
}

// BenchmarkTryAcquireRelease: round trips of TryAcquire+Release, with 1 and
// 32 goroutines, through an embedded node (leader or follower) and remote
// (HTTP/2 in clear text, h2c; BenchmarkTryAcquireReleaseTLS: over TLS).
func BenchmarkTryAcquireRelease(b *testing.B) {
	for _, via := range []string{"leader", "follower", "remote"} {
		for _, workers := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/%d", via, workers), func(b *testing.B) {
				_, mk := benchClients(b)
				benchPairs(b, mk[via](b), workers)
			})
		}
	}
}

// BenchmarkTryAcquireReleaseTLS: as BenchmarkTryAcquireRelease's remote,
// on a cluster with mutual TLS: lease.Client speaks HTTP/2 (every request
// a stream of one connection), where the node counts every frame against
// its frame budget.
func BenchmarkTryAcquireReleaseTLS(b *testing.B) {
	for _, workers := range []int{1, 32} {
		b.Run(fmt.Sprintf("remote/%d", workers), func(b *testing.B) {
			ca := transporttest.NewCA(b)
			c := nodetest.New(b, nodetest.Options{Size: 3, API: true, Timing: node.DefaultTiming(), Configure: func(i int, cfg *node.Config) {
				cfg.TLSFiles = ca.Issue(b, cfg.ID, net.ParseIP("127.0.0.1"))
			}})
			var addrs []string
			for i := range c.Size() {
				addrs = append(addrs, c.Node(i).APIAddr())
			}
			tlsCfg, err := ca.IssueClient(b, "bench").ClientConfig()
			if err != nil {
				b.Fatal(err)
			}
			cl, err := lease.Dial(context.Background(), addrs, lease.WithTLS(tlsCfg))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cl.Close(context.Background()) })
			benchPairs(b, cl, workers)
		})
	}
}

// benchPairs runs b.N TryAcquire+Release pairs of cl from workers
// goroutines and reports their rate and latency.
func benchPairs(b *testing.B, cl *lease.Client, workers int) {
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; next.Add(1) <= int64(b.N); i++ {
				t0 := time.Now()
				l, err := cl.TryAcquire(context.Background(), fmt.Sprintf("b/%d/%d", w, i%16))
				if err != nil || l == nil {
					b.Errorf("TryAcquire: %v %v", l, err)
					return
				}
				if err := l.Release(context.Background()); err != nil {
					b.Errorf("Release: %v", err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(slices.Concat(lat...))
	b.ReportMetric(float64(b.N)/el.Seconds(), "pairs/s")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}

// BenchmarkHandoffGap: the time from one holder's Release call to the
// waiting Acquire of another client returning.
func BenchmarkHandoffGap(b *testing.B) {
	c, mks := benchClients(b)
	mk := mks["follower"]
	a, w := mk(b), mk(b)
	var gaps []time.Duration
	b.ResetTimer()
	l, err := a.Acquire(context.Background(), "gap")
	if err != nil {
		b.Fatal(err)
	}
	waiter, next := w, a
	for range b.N {
		got := make(chan *lease.Lease)
		go func() {
			nl, err := waiter.Acquire(context.Background(), "gap")
			if err != nil {
				b.Error(err)
			}
			got <- nl
		}()
		waitQueued(b, c)
		t0 := time.Now()
		if err := l.Release(context.Background()); err != nil {
			b.Fatal(err)
		}
		l = <-got
		gaps = append(gaps, time.Since(t0))
		waiter, next = next, waiter
	}
	b.StopTimer()
	l.Release(context.Background())
	p50, p99 := nodetest.Quantiles(gaps)
	b.ReportMetric(float64(p50.Microseconds())/1000, "gap-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "gap-p99-ms")
}

// BenchmarkSemaphoreHandoffGap: BenchmarkHandoffGap on a semaphore of 2
// whose other slot stays held: the time from one holder's Release call to
// the waiting Acquire of another client returning with the freed slot.
func BenchmarkSemaphoreHandoffGap(b *testing.B) {
	c, mks := benchClients(b)
	mk := mks["follower"]
	a, w, other := mk(b), mk(b), mk(b)
	sem := lease.Semaphore(2)
	keep, err := other.Acquire(context.Background(), "semgap", sem)
	if err != nil {
		b.Fatal(err)
	}
	defer keep.Release(context.Background())
	var gaps []time.Duration
	b.ResetTimer()
	l, err := a.Acquire(context.Background(), "semgap", sem)
	if err != nil {
		b.Fatal(err)
	}
	waiter, next := w, a
	for range b.N {
		got := make(chan *lease.Lease)
		go func() {
			nl, err := waiter.Acquire(context.Background(), "semgap", sem)
			if err != nil {
				b.Error(err)
			}
			got <- nl
		}()
		waitQueued(b, c)
		t0 := time.Now()
		if err := l.Release(context.Background()); err != nil {
			b.Fatal(err)
		}
		l = <-got
		gaps = append(gaps, time.Since(t0))
		waiter, next = next, waiter
	}
	b.StopTimer()
	l.Release(context.Background())
	p50, p99 := nodetest.Quantiles(gaps)
	b.ReportMetric(float64(p50.Microseconds())/1000, "gap-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "gap-p99-ms")
}

// waitQueued waits until the leader has one waiter queued.
func waitQueued(b *testing.B, c *nodetest.Cluster) {
	nodetest.Eventually(b, 5*time.Second, func() error {
		_, l := c.Leader()
		st, err := l.Status(context.Background(), &pb.StatusRequest{})
		if err != nil || st.Waiters != 1 {
			return fmt.Errorf("waiters %d %v", st.GetWaiters(), err)
		}
		return nil
	})
}

// BenchmarkKeepalive: one client holds N leases (TTL 3 s, extended every
// second in one batched request) for 10 s; reports extend requests/s and
// CPU seconds per minute for the whole process (cluster and client).
func BenchmarkKeepalive(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := nodetest.New(b, nodetest.Options{Size: 3, Timing: node.DefaultTiming()})
			_, l := c.Leader()
			cb := &cutBackend{Backend: l}
			cl, err := lease.New(cb, lease.WithTTL(3*time.Second))
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close(context.Background())
			var wg sync.WaitGroup
			sem := make(chan struct{}, 64)
			held := make([]*lease.Lease, n)
			for i := range n {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					held[i], _ = cl.TryAcquire(context.Background(), fmt.Sprintf("k/%06d", i))
				}()
			}
			wg.Wait()
			b.ResetTimer()
			for range b.N {
				calls0, cpu0, t0 := cb.extends.Load(), nodetest.CPUTime(), time.Now()
				time.Sleep(10 * time.Second)
				el := time.Since(t0)
				b.ReportMetric(float64(cb.extends.Load()-calls0)/el.Seconds(), "extend-req/s")
				b.ReportMetric((nodetest.CPUTime()-cpu0).Seconds()*60/el.Seconds(), "cpu-s/min")
			}
			for _, h := range held {
				if h == nil || !h.IsHealthy() {
					b.Fatal("a lease was lost during keepalive")
				}
			}
		})
	}
}
