package node_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
)

// Benchmarks run a 3-node cluster on loopback in this process, fsync on,
// default Raft timing, sharing this machine's cores with the load. The
// node port runs mutual TLS from a cluster key, as nodetest clusters do;
// -bench.insecure runs it in plain TCP, to measure what TLS costs.
//
//	go test -run '^$' -bench . -benchtime 5s ./node/

var benchInsecure = flag.Bool("bench.insecure", false, "benchmarks: plain TCP between nodes (no cluster key)")

func benchCluster(b *testing.B) *nodetest.Cluster {
	return nodetest.New(b, nodetest.Options{Size: 3, Timing: node.DefaultTiming(), Insecure: *benchInsecure})
}

// BenchmarkUncontended: 32 concurrent clients on distinct keys, each doing
// acquire+release through the leader. Reports pairs/s and acquire p50/p99.
func BenchmarkUncontended(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const workers = 32
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	b.ResetTimer()
	start, cpu0 := time.Now(), nodetest.CPUTime()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holder := fmt.Sprintf("bench-%d", w)
			for req := uint64(1); next.Add(1) <= int64(b.N); req++ {
				key := fmt.Sprintf("u/%d/%d", w, req%64)
				t0 := time.Now()
				r, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: key, Holder: holder, RequestId: req, Ttl: durationpb.New(10 * time.Second)})
				if err != nil || !r.Granted {
					b.Errorf("acquire: %v %v", r, err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: key, Holder: holder, Token: r.Token}); err != nil {
					b.Errorf("release: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(slices.Concat(lat...))
	b.ReportMetric(float64(b.N)/el.Seconds(), "pairs/s")
	b.ReportMetric(float64((nodetest.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(p50.Microseconds())/1000, "acq-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "acq-p99-ms")
}

// BenchmarkHandoff: 4 clients contend for one key, each waiting in the
// leader's queue, holding briefly and releasing. Reports acquisitions/s and
// the gap from a release call to the next holder's grant.
func BenchmarkHandoff(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const workers = 4
	var count atomic.Int64
	var mu sync.Mutex
	var gaps []time.Duration
	var releasedAt time.Time
	b.ResetTimer()
	start, cpu0 := time.Now(), nodetest.CPUTime()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holder := fmt.Sprintf("h-%d", w)
			for req := uint64(1); ; req++ {
				r, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: "hot", Holder: holder, RequestId: req, Ttl: durationpb.New(10 * time.Second), Wait: true})
				if err != nil || !r.Granted {
					b.Errorf("acquire: %v %v", r, err)
					return
				}
				now := time.Now()
				mu.Lock()
				if !releasedAt.IsZero() {
					gaps = append(gaps, now.Sub(releasedAt))
				}
				mu.Unlock()
				done := count.Add(1) > int64(b.N)
				mu.Lock()
				releasedAt = time.Now()
				mu.Unlock()
				if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: "hot", Holder: holder, Token: r.Token}); err != nil {
					b.Errorf("release: %v", err)
					return
				}
				if done {
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(gaps)
	b.ReportMetric(float64(b.N)/el.Seconds(), "acq/s")
	b.ReportMetric(float64((nodetest.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(p50.Microseconds())/1000, "gap-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "gap-p99-ms")
}

// BenchmarkKeepalive10k: 10 holders keep 1,000 leases each alive (TTL
// 10 s, one batched extend per holder every TTL/3) for 10 s. Reports the
// CPU seconds the whole process (three nodes and the clients) spent.
func BenchmarkKeepalive10k(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const holders, per = 10, 1000
	ttl := 10 * time.Second
	items := make([][]*pb.ExtendItem, holders)
	var wg sync.WaitGroup
	for h := range holders {
		items[h] = make([]*pb.ExtendItem, per)
		for part := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := part; i < per; i += 4 {
					key := fmt.Sprintf("ka/%d/%d", h, i)
					r, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: key, Holder: fmt.Sprint(h), RequestId: uint64(i + 1), Ttl: durationpb.New(ttl)})
					if err != nil || !r.Granted {
						b.Error(r, err)
						return
					}
					items[h][i] = &pb.ExtendItem{Key: key, Token: r.Token}
				}
			}()
		}
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	b.ResetTimer()
	for range b.N {
		cpu0 := nodetest.CPUTime()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			tick := time.Now()
			for h := range holders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := l.Extend(context.Background(), &pb.ExtendRequest{Holder: fmt.Sprint(h), Items: items[h]})
					if err != nil {
						b.Errorf("extend: %v", err)
						return
					}
					for _, res := range r.Results {
						if !res.Ok {
							b.Errorf("lease %s lost", res.Key)
							return
						}
					}
				}()
			}
			wg.Wait()
			time.Sleep(time.Until(tick.Add(ttl / 3)))
		}
		b.ReportMetric((nodetest.CPUTime() - cpu0).Seconds(), "cpu-s/10s")
	}
}

// BenchmarkFailover: kill the leader while clients acquire; reports the
// longest window without a successful acquire.
func BenchmarkFailover(b *testing.B) {
	for _, tc := range []struct {
		name   string
		timing node.Timing
	}{{"default", node.DefaultTiming()}, {"fastlan", node.FastLANTiming()}} {
		b.Run(tc.name, func(b *testing.B) {
			var gaps []time.Duration
			for range b.N {
				c := nodetest.New(b, nodetest.Options{Size: 3, Timing: tc.timing})
				li, _ := c.Leader()
				var lastOK atomic.Int64
				var worst atomic.Int64
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for w := range 3 {
					if w == li {
						continue
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						n := c.Node(w)
						for req := uint64(1); ctx.Err() == nil; req++ {
							actx, acancel := context.WithTimeout(ctx, time.Second)
							r, err := n.Acquire(actx, &pb.AcquireRequest{Key: fmt.Sprintf("f/%d/%d", w, req), Holder: "f", RequestId: req, Ttl: durationpb.New(time.Minute)})
							acancel()
							if err == nil && r.Granted {
								now := time.Now().UnixNano()
								if prev := lastOK.Swap(now); prev != 0 {
									for {
										cur := worst.Load()
										if now-prev <= cur || worst.CompareAndSwap(cur, now-prev) {
											break
										}
									}
								}
							}
						}
					}()
				}
				nodetest.Eventually(b, 5*time.Second, func() error {
					if lastOK.Load() == 0 {
						return fmt.Errorf("no acquire yet")
					}
					return nil
				})
				c.Kill(li)
				c.WaitForLeader()
				before := worst.Load()
				nodetest.Eventually(b, 5*time.Second, func() error {
					if time.Since(time.Unix(0, lastOK.Load())) > 50*time.Millisecond || worst.Load() == before && before < int64(100*time.Millisecond) {
						return fmt.Errorf("waiting for acquires to resume")
					}
					return nil
				})
				cancel()
				wg.Wait()
				gaps = append(gaps, time.Duration(worst.Load()))
			}
			// Every kill's gap, not only the last one's.
			slices.Sort(gaps)
			b.ReportMetric(float64(gaps[len(gaps)/2].Milliseconds()), "gap-p50-ms")
			b.ReportMetric(float64(gaps[len(gaps)-1].Milliseconds()), "gap-max-ms")
		})
	}
}

// BenchmarkIdle: CPU seconds an idle 3-node cluster spends per 10 s
// (heartbeats, gossip): the floor under BenchmarkKeepalive10k.
func BenchmarkIdle(b *testing.B) {
	c := benchCluster(b)
	c.WaitForLeader()
	b.ResetTimer()
	for range b.N {
		cpu0 := nodetest.CPUTime()
		time.Sleep(10 * time.Second)
		b.ReportMetric((nodetest.CPUTime() - cpu0).Seconds(), "cpu-s/10s")
	}
}

// BenchmarkMillion fills a 3-node cluster with 1,000,000 leases (TTL 1 h,
// so none expires while it runs), then reports the process heap and RSS
// (three nodes share this process), the time for a restarted follower to
// catch up, and the failover time with 1M leases to Promote.
//
//	go test -run '^$' -bench Million -benchtime 1x -timeout 30m ./node/
//
// millionSoak, when set, keeps the million leases alive for that long
// with batched extends before the restart and failover phases:
//
//	go test -run '^$' -bench Million -benchtime 1x -timeout 60m ./node/ -args -million.soak 10m
var millionSoak = flag.Duration("million.soak", 0, "BenchmarkMillion: keep the leases alive this long (TTL 2 min, extended every 40 s)")

// BenchmarkMillion fills a cluster with a million leases (64 holders),
// reports memory, optionally keeps them alive for -million.soak and checks
// none was lost, then measures a follower restart and a leader failover.
func BenchmarkMillion(b *testing.B) {
	c := nodetest.New(b, nodetest.Options{Size: 3, Timing: node.DefaultTiming(), Configure: func(i int, cfg *node.Config) {
		cfg.SnapshotThreshold = 200000
		if *millionSoak > 0 {
			// Extend entries are large (~0.5 MB): Config.LogBytes bounds
			// the log. Raft checks its count threshold at the default
			// interval, not nodetest's every second.
			cfg.SnapshotInterval = 30 * time.Second
		}
	}})
	_, l := c.Leader()
	const total, workers = 1_000_000, 64
	ttl := time.Hour
	if *millionSoak > 0 {
		ttl = 2 * time.Minute
	}
	held := make([][]*pb.ExtendItem, workers) // per holder: key and token
	firstAt := make([]time.Time, workers)     // per holder: its first grant
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := uint64(1); ; req++ {
				i := next.Add(1)
				if i > total {
					return
				}
				key := fmt.Sprintf("m/%07d", i)
				r, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: key, Holder: fmt.Sprint("h", w), RequestId: req, Ttl: durationpb.New(ttl)})
				if err != nil || !r.Granted {
					b.Errorf("acquire: %v %v", r, err)
					return
				}
				if len(held[w]) == 0 {
					firstAt[w] = time.Now()
				}
				held[w] = append(held[w], &pb.ExtendItem{Key: key, Token: r.Token})
			}
		}()
	}
	wg.Wait()
	b.Logf("filled %d leases in %v", total, time.Since(start))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB-3-nodes")
	b.ReportMetric(float64(rssKB())/1024, "rss-MB-3-nodes")
	if *millionSoak > 0 {
		soakMillion(b, l, held, firstAt, ttl, *millionSoak)
	}

	// A follower restart: caught up once it has applied everything the
	// leader had committed when it came back. Its path is the log if its
	// snapshot is still its own afterwards, else an installed snapshot.
	fi, _ := c.Follower()
	snap0 := raftStat(c.Node(fi), "last_snapshot_index")
	c.Kill(fi)
	t0 := time.Now()
	c.Restart(fi)
	b.ReportMetric(time.Since(t0).Seconds(), "follower-start-s")
	_, l = c.Leader()
	target := raftStat(l, "commit_index")
	nodetest.Eventually(b, 5*time.Minute, func() error {
		// The FSM's own index: Raft's applied_index counts entries handed
		// to the FSM's goroutine, not applied by it.
		if got := c.Node(fi).FSM().Stats().Applied; got < target {
			return fmt.Errorf("restarted follower applied %d of %d", got, target)
		}
		return nil
	})
	b.ReportMetric(time.Since(t0).Seconds(), "follower-restart-s")
	path := "log"
	if raftStat(c.Node(fi), "last_snapshot_index") != snap0 {
		path = "snapshot"
	}
	b.Logf("restarted follower caught up by %s (entries to index %d)", path, target)

	li, _ := c.Leader()
	c.Kill(li)
	t0 = time.Now()
	ni, nl := c.Leader()
	b.ReportMetric(time.Since(t0).Seconds()*1000, "failover-elected-ms")
	if _, err := nl.Acquire(context.Background(), &pb.AcquireRequest{Key: "after", Holder: "x", RequestId: 1, Ttl: durationpb.New(time.Minute)}); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(time.Since(t0).Seconds()*1000, "failover-ms")
	b.Logf("new leader: n%d (restarted: %v)", ni, ni == fi)
	if got := nl.FSM().Stats().Held; got < total {
		b.Fatalf("after failover %d leases, want %d", got, total)
	}
}

func raftStat(n *node.Node, name string) uint64 {
	v, _ := strconv.ParseUint(n.Raft().Stats()[name], 10, 64)
	return v
}

// soakMillion keeps every holder's leases alive for d like a lease.Client
// does: one batched extend per a third of the TTL, holders in random
// phase, failed requests retried with back-off. A holder's first round
// falls within a third of the TTL of its first grant (at once if the fill
// took longer), so no lease expires before the soak reaches it. Then it
// checks that every lease is still held by its holder with its token.
func soakMillion(b *testing.B, l *node.Node, held [][]*pb.ExtendItem, firstAt []time.Time, ttl, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cpu0, t0 := nodetest.CPUTime(), time.Now()
	var extended, failed, retries atomic.Int64
	var wg sync.WaitGroup
	for w, items := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Rounds fall at firstAt + phase + k*every; the ones the fill
			// overran collapse into one round at once.
			every := ttl / 3
			due := firstAt[w].Add(time.Duration(rand.Int64N(int64(every))))
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(due)):
				}
				// As lease.Client does: one round of requests of at most
				// 4096 leases each (node.Limits.MaxExtendItems is 10,000).
				rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
				for !due.After(time.Now()) {
					due = due.Add(every)
				}
				for start := 0; start < len(items); start += 4096 {
					r, err := l.Extend(rctx, &pb.ExtendRequest{Holder: fmt.Sprint("h", w), Items: items[start:min(start+4096, len(items))]})
					if err != nil {
						retries.Add(1)
						due = time.Now().Add(200 * time.Millisecond)
						break
					}
					for _, res := range r.Results {
						if res.Ok {
							extended.Add(1)
						} else {
							failed.Add(1)
						}
					}
				}
				rcancel()
			}
		}()
	}
	wg.Wait()
	secs := time.Since(t0).Seconds()
	b.ReportMetric(float64(extended.Load())/secs, "soak-lease-extends/s")
	b.ReportMetric(float64(retries.Load()), "soak-extend-retries")
	b.ReportMetric((nodetest.CPUTime()-cpu0).Seconds()/secs*60, "soak-cpu-s/min")
	b.ReportMetric(float64(rssKB())/1024, "soak-max-rss-MB-3-nodes")
	lost := failed.Load()
	for w, items := range held {
		for _, it := range items {
			if got, ok := l.FSM().Get(it.Key); !ok || got.Holder != fmt.Sprint("h", w) || got.Token != it.Token {
				lost++
			}
		}
	}
	b.ReportMetric(float64(lost), "soak-lost")
	if lost > 0 {
		b.Errorf("%d leases lost or failed to extend during a %v soak", lost, d)
	}
}

func rssKB() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss
}

// BenchmarkSemaphoreHandoff: 6 clients contend for a semaphore of 2, each
// waiting in the leader's queue, holding briefly and releasing. Reports
// acquisitions/s and the gap from a release call to the next grant of a
// waiting client (BenchmarkHandoff's numbers, for an exclusive key).
func BenchmarkSemaphoreHandoff(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const workers = 6
	var count atomic.Int64
	var mu sync.Mutex
	var gaps []time.Duration
	var releasedAt time.Time
	b.ResetTimer()
	start, cpu0 := time.Now(), nodetest.CPUTime()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			holder := fmt.Sprintf("s-%d", w)
			for req := uint64(1); ; req++ {
				r, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: "sem", Holder: holder, RequestId: req,
					Ttl: durationpb.New(10 * time.Second), Wait: true, Mode: pb.LeaseMode_LEASE_MODE_SEMAPHORE, Limit: 2})
				if err != nil || !r.Granted {
					b.Errorf("acquire: %v %v", r, err)
					return
				}
				now := time.Now()
				mu.Lock()
				if !releasedAt.IsZero() && r.Waited.AsDuration() > 0 {
					gaps = append(gaps, now.Sub(releasedAt))
				}
				mu.Unlock()
				done := count.Add(1) > int64(b.N)
				mu.Lock()
				releasedAt = time.Now()
				mu.Unlock()
				if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: "sem", Holder: holder, Token: r.Token}); err != nil {
					b.Errorf("release: %v", err)
					return
				}
				if done {
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(gaps)
	b.ReportMetric(float64(b.N)/el.Seconds(), "acq/s")
	b.ReportMetric(float64((nodetest.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(p50.Microseconds())/1000, "gap-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "gap-p99-ms")
}

// BenchmarkShared: 32 concurrent readers acquire one key shared and
// release it (BenchmarkUncontended's numbers, on distinct exclusive
// keys), so the key always has many holders. Reports pairs/s and acquire
// p50/p99.
func BenchmarkShared(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const workers = 32
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	b.ResetTimer()
	start, cpu0 := time.Now(), nodetest.CPUTime()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			holder := fmt.Sprintf("reader-%d", w)
			for req := uint64(1); next.Add(1) <= int64(b.N); req++ {
				t0 := time.Now()
				r, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: "shared", Holder: holder, RequestId: req,
					Ttl: durationpb.New(10 * time.Second), Mode: pb.LeaseMode_LEASE_MODE_SHARED})
				if err != nil || !r.Granted {
					b.Errorf("acquire: %v %v", r, err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: "shared", Holder: holder, Token: r.Token}); err != nil {
					b.Errorf("release: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(slices.Concat(lat...))
	b.ReportMetric(float64(b.N)/el.Seconds(), "pairs/s")
	b.ReportMetric(float64((nodetest.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(p50.Microseconds())/1000, "acq-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "acq-p99-ms")
}

// BenchmarkSharedDrain: 16 readers wait behind a writer; each op is the
// time from the writer's release call until all 16 are granted (the queue
// proposes them together, one entry each, pipelined).
func BenchmarkSharedDrain(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const readers = 16
	var drains []time.Duration
	b.ResetTimer()
	for i := range b.N {
		w, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: "drain", Holder: "writer", RequestId: uint64(i + 1), Ttl: durationpb.New(10 * time.Second)})
		if err != nil || !w.Granted {
			b.Fatalf("writer: %v %v", w, err)
		}
		type grant struct {
			holder string
			token  uint64
		}
		grants := make(chan grant, readers)
		for r := range readers {
			go func() {
				holder := fmt.Sprintf("r%d", r)
				resp, err := l.Acquire(context.Background(), &pb.AcquireRequest{Key: "drain", Holder: holder, RequestId: uint64(i + 1),
					Ttl: durationpb.New(10 * time.Second), Wait: true, Mode: pb.LeaseMode_LEASE_MODE_SHARED})
				if err != nil || !resp.Granted {
					b.Errorf("reader: %v %v", resp, err)
				}
				grants <- grant{holder, resp.GetToken()}
			}()
		}
		nodetest.Eventually(b, 10*time.Second, func() error {
			if st, _ := l.Status(context.Background(), &pb.StatusRequest{}); st.Waiters != readers {
				return fmt.Errorf("%d waiters", st.Waiters)
			}
			return nil
		})
		t0 := time.Now()
		if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: "drain", Holder: "writer", Token: w.Token}); err != nil {
			b.Fatal(err)
		}
		got := make([]grant, 0, readers)
		for range readers {
			select {
			case g := <-grants:
				got = append(got, g)
			case <-time.After(10 * time.Second):
				b.Fatal("readers not granted")
			}
		}
		drains = append(drains, time.Since(t0))
		for _, g := range got {
			if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: "drain", Holder: g.holder, Token: g.token}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(drains)
	b.ReportMetric(float64(p50.Microseconds())/1000, "drain16-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "drain16-p99-ms")
}

// BenchmarkMultiKey: 32 concurrent clients each acquire sets of 4 keys
// (distinct per client: uncontended) and release them. Reports sets/s and
// keys/s beside BenchmarkUncontended's single keys.
func BenchmarkMultiKey(b *testing.B) {
	c := benchCluster(b)
	_, l := c.Leader()
	const workers, keys = 32, 4
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	b.ResetTimer()
	start, cpu0 := time.Now(), nodetest.CPUTime()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			holder := fmt.Sprintf("set-%d", w)
			for req := uint64(1); next.Add(1) <= int64(b.N); req++ {
				base := fmt.Sprintf("m/%d/%d", w, req%16)
				r := &pb.AcquireRequest{Key: base + "/0", Holder: holder, RequestId: req, Ttl: durationpb.New(10 * time.Second)}
				for k := 1; k < keys; k++ {
					r.Items = append(r.Items, &pb.AcquireItem{Key: fmt.Sprintf("%s/%d", base, k)})
				}
				t0 := time.Now()
				resp, err := l.Acquire(context.Background(), r)
				if err != nil || !resp.Granted {
					b.Errorf("acquire: %v %v", resp, err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				if _, err := l.Release(context.Background(), &pb.ReleaseRequest{Key: r.Key, Holder: holder, Token: resp.Token}); err != nil {
					b.Errorf("release: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	p50, p99 := nodetest.Quantiles(slices.Concat(lat...))
	b.ReportMetric(float64(b.N)/el.Seconds(), "sets/s")
	b.ReportMetric(float64(b.N*keys)/el.Seconds(), "keys/s")
	b.ReportMetric(float64((nodetest.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(p50.Microseconds())/1000, "acq-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "acq-p99-ms")
}
