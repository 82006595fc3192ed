// Package bench runs the standard leasenode workloads against a cluster
// (`leasenode bench`) and reports latency percentiles and throughput:
//
//   - uncontended: N clients, each acquiring and releasing its own key in
//     a loop (lease.Client: TryAcquire, Release);
//   - handoff: 4 clients contending for one key, each waiting for it,
//     then releasing it at once; measures the gap from a release to the
//     next grant (the FIFO queue hands the key over in the release's own
//     Raft entry);
//   - keepalive: L leases held by K holders, each holder extending all of
//     its leases in one request, back to back; measures extend requests
//     and lease extensions per second;
//   - failover: needs a cluster it may kill (an in-process one): clients
//     run acquire/release loops while the leader is crashed and restarted
//     several times; measures the window with no successful operation;
//   - semaphore: 6 clients contending for a semaphore of 2, each waiting
//     for a slot, then releasing it at once; measures the gap from a
//     release to the next grant of a slot (handoff's, for a semaphore);
//   - shared: N clients acquiring and releasing one key shared, in a loop
//     (uncontended's, with every client on one key);
//   - multi: N clients each acquiring and releasing a set of 4 keys of
//     their own in one request (AcquireSet).
//
// It measures what a client sees over the network; server-side latency is
// in the nodes' /metrics (leasenode_api_request_duration_seconds).
//
// Latencies go into HDR histograms (github.com/HdrHistogram/hdrhistogram-go:
// 1 µs to 1 h at 3 significant digits, constant memory however long the
// run, the standard of wrk2 and HdrHistogram users), and a percentile is
// reported only when the samples allow it: p50 from MinSamplesP50 samples,
// p99 from MinSamplesP99 (with fewer, the "p99" is just one of the
// largest samples, which is what made a failover p99 of 228 ms sit beside
// a max of 450 ms). Count (n) and max are always reported. Failures are
// counted by kind (ErrorKind), so "errors 10" says what they were.
package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/internal/local"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// Workloads lists the workload names in the order "all" runs them.
var Workloads = []string{"uncontended", "handoff", "keepalive", "failover", "semaphore", "shared", "multi"}

// Config configures a benchmark run.
type Config struct {
	// Addrs are client API addresses of the cluster.
	Addrs []string
	// TLS and Token reach a secured cluster.
	TLS   *tls.Config
	Token string
	// Duration of each workload (failover: of each kill cycle's load).
	Duration time.Duration
	// Clients is the number of concurrent clients of uncontended
	// (default 16) and failover (default 8).
	Clients int
	// Leases and Holders shape keepalive (default 1000 leases, 10
	// holders).
	Leases, Holders int
	// Kills is the number of leader crashes of failover (default 3).
	Kills int
	// Cluster is the in-process cluster failover may crash; nil refuses
	// the failover workload.
	Cluster *local.Cluster
	// Progress receives a live progress line (carriage returns); nil for
	// none.
	Progress io.Writer
	// Prefix starts every key the benchmark uses (default "bench/").
	Prefix string
}

// Result is one measured quantity of one workload.
type Result struct {
	Workload string  `json:"workload"`
	Metric   string  `json:"metric"`
	Clients  int     `json:"clients"`
	Count    int     `json:"count"` // n: the samples behind the percentiles
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"per_second"`
	// P50ms and P99ms are nil when Count is below MinSamplesP50 or
	// MinSamplesP99: too few samples to say.
	P50ms  *float64 `json:"p50_ms,omitempty"`
	P99ms  *float64 `json:"p99_ms,omitempty"`
	MaxMs  float64  `json:"max_ms"`
	Errors int      `json:"errors"`
	// ErrorKinds counts Errors by kind (see ErrorKind).
	ErrorKinds map[string]int `json:"errors_by_kind,omitempty"`
	Note       string         `json:"note,omitempty"`
}

// The fewest samples a percentile is reported from: a percentile p needs
// at least 1/(1-p) samples for one of them to lie above it.
const (
	MinSamplesP50 = 2
	MinSamplesP99 = 100
)

// ErrNeedsCluster: the failover workload needs a cluster it may crash.
var ErrNeedsCluster = errors.New("the failover workload crashes the leader, so it needs its own cluster: run bench --self (it starts a 3-node cluster in-process)")

func (c *Config) defaults() {
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.Clients <= 0 {
		c.Clients = 16
	}
	if c.Leases <= 0 {
		c.Leases = 1000
	}
	if c.Holders <= 0 {
		c.Holders = 10
	}
	if c.Kills <= 0 {
		c.Kills = 3
	}
	if c.Prefix == "" {
		c.Prefix = "bench/" + strconv.FormatInt(time.Now().UnixNano()%1e6, 36) + "/"
	}
}

// Run runs one workload by name.
func Run(ctx context.Context, cfg Config, workload string) ([]Result, error) {
	cfg.defaults()
	switch workload {
	case "uncontended":
		return uncontended(ctx, &cfg)
	case "handoff":
		return handoff(ctx, &cfg)
	case "keepalive":
		return keepalive(ctx, &cfg)
	case "failover":
		if cfg.Cluster == nil {
			return nil, ErrNeedsCluster
		}
		return failover(ctx, &cfg)
	case "semaphore":
		return semaphoreHandoff(ctx, &cfg)
	case "shared":
		return loop(ctx, &cfg, "shared", func(cl *lease.Client, i int) ([]lease.Item, []lease.AcquireOption) {
			return []lease.Item{{Key: cfg.Prefix + "shared"}}, []lease.AcquireOption{lease.Shared()}
		})
	case "multi":
		return loop(ctx, &cfg, "multi", func(cl *lease.Client, i int) ([]lease.Item, []lease.AcquireOption) {
			items := make([]lease.Item, 4)
			for k := range items {
				items[k] = lease.Item{Key: fmt.Sprintf("%sm/%d/%d", cfg.Prefix, i, k)}
			}
			return items, nil
		})
	}
	return nil, fmt.Errorf("unknown workload %q (want one of %v, or all)", workload, Workloads)
}

// dial opens n lease clients.
func (c *Config) dial(ctx context.Context, n int, opts ...lease.Option) ([]*lease.Client, func(), error) {
	if c.TLS != nil {
		opts = append(opts, lease.WithTLS(c.TLS))
	}
	if c.Token != "" {
		opts = append(opts, lease.WithAuthToken(c.Token))
	}
	var out []*lease.Client
	closeAll := func() {
		var wg sync.WaitGroup
		for _, cl := range out {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				cl.Close(cctx)
			}()
		}
		wg.Wait()
	}
	for range n {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cl, err := lease.Dial(dctx, c.Addrs, opts...)
		cancel()
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		out = append(out, cl)
	}
	return out, closeAll, nil
}

// Recorder collects latencies and failures from concurrent workers; its
// zero value is ready. The side-by-side harness (bench/sidebyside) records
// etcd's and ZooKeeper's workloads with it too.
type Recorder struct {
	mu    sync.Mutex
	hist  *hdrhistogram.Histogram // microseconds
	kinds map[string]int
	ops   atomic.Int64
	errs  atomic.Int64
}

// Range of the histograms: 1 µs to 1 h, 3 significant digits.
const (
	histMin    = 1
	histMax    = int64(time.Hour / time.Microsecond)
	histDigits = 3
)

// Add records one operation that took d.
func (r *Recorder) Add(d time.Duration) {
	r.ops.Add(1)
	us := min(max(d.Microseconds(), histMin), histMax)
	r.mu.Lock()
	if r.hist == nil {
		r.hist = hdrhistogram.New(histMin, histMax, histDigits)
	}
	_ = r.hist.RecordValue(us) // in range by construction
	r.mu.Unlock()
}

// Fail counts one failed operation, by the kind of err (ErrorKind).
func (r *Recorder) Fail(err error) { r.FailKind(ErrorKind(err)) }

// FailKind counts one failed operation of the kind named.
func (r *Recorder) FailKind(kind string) {
	r.errs.Add(1)
	r.mu.Lock()
	if r.kinds == nil {
		r.kinds = map[string]int{}
	}
	r.kinds[kind]++
	r.mu.Unlock()
}

// Result summarizes what was recorded as workload's metric, over elapsed:
// the count, the rate, p50 and p99 (from MinSamplesP50 and MinSamplesP99
// samples), the maximum and the failures by kind.
func (r *Recorder) Result(workload, metric string, clients int, elapsed time.Duration) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := Result{Workload: workload, Metric: metric, Clients: clients, Seconds: round(elapsed.Seconds(), 2),
		Errors: int(r.errs.Load())}
	if len(r.kinds) > 0 {
		res.ErrorKinds = maps.Clone(r.kinds)
	}
	if r.hist == nil {
		return res
	}
	n := r.hist.TotalCount()
	res.Count = int(n)
	if elapsed > 0 {
		res.PerSec = round(float64(n)/elapsed.Seconds(), 1)
	}
	usMs := func(us int64) float64 { return ms(time.Duration(us) * time.Microsecond) }
	if n >= MinSamplesP50 {
		v := usMs(r.hist.ValueAtQuantile(50))
		res.P50ms = &v
	}
	if n >= MinSamplesP99 {
		v := usMs(r.hist.ValueAtQuantile(99))
		res.P99ms = &v
	}
	res.MaxMs = usMs(r.hist.Max())
	return res
}

// ErrorKind names the kind of a failed operation, for the error
// breakdown: the lease package's sentinel it matches ("no leader",
// "unknown outcome", "held", "lost", "invalid", "timeout", "closed"), or
// "refused" for an extend the cluster answered not-ok, else "other".
func ErrorKind(err error) string {
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, errRefused):
		return "refused (lease lost)"
	case errors.Is(err, lease.ErrUnknownOutcome):
		return "unknown outcome"
	case errors.Is(err, lease.ErrNoLeader):
		return "no leader"
	case errors.Is(err, lease.ErrHeld):
		return "held"
	case errors.Is(err, lease.ErrLeaseLost):
		return "lost"
	case errors.Is(err, lease.ErrInvalid):
		return "invalid"
	case errors.Is(err, lease.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, lease.ErrClosed):
		return "closed"
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		// The raw API calls (keepalive's extends) carry the node's codes
		// (node.connectError): name them as the Client's errors are named.
		switch ce.Code() {
		case connect.CodeAborted:
			return "unknown outcome"
		case connect.CodeUnavailable:
			return "no leader"
		case connect.CodeDeadlineExceeded:
			return "timeout"
		}
		return "rpc " + ce.Code().String()
	}
	return "other"
}

// errRefused marks an extend item the cluster answered not-ok.
var errRefused = errors.New("extend refused: not the holder any more")

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(v float64, digits int) float64 {
	f := 1.0
	for range digits {
		f *= 10
	}
	return float64(int64(v*f+0.5)) / f
}

// progress prints a live line until stop is called.
func (c *Config) progress(name string, r *Recorder) (stop func()) {
	if c.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintf(c.Progress, "\r%-70s\r", "")
				return
			case <-t.C:
				el := time.Since(start)
				ops := r.ops.Load()
				fmt.Fprintf(c.Progress, "\r%-12s %5.1fs  ops=%-8d %8.0f/s  errors=%d   ", name, el.Seconds(), ops,
					float64(ops)/el.Seconds(), r.errs.Load())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func uncontended(ctx context.Context, cfg *Config) ([]Result, error) {
	clients, closeAll, err := cfg.dial(ctx, cfg.Clients)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var acq, rel, cycles Recorder
	stop := cfg.progress("uncontended", &cycles)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := cfg.Prefix + "u/" + strconv.Itoa(i)
			for rctx.Err() == nil {
				t0 := time.Now()
				l, err := cl.TryAcquire(rctx, key)
				if err != nil || l == nil {
					if err == nil {
						err = lease.ErrHeld // by someone else: a previous run's lease
					}
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
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	return []Result{
		acq.Result("uncontended", "acquire", cfg.Clients, elapsed),
		rel.Result("uncontended", "release", cfg.Clients, elapsed),
		cycles.Result("uncontended", "acquire+release", cfg.Clients, elapsed),
	}, nil
}

func handoff(ctx context.Context, cfg *Config) ([]Result, error) {
	const n = 4
	clients, closeAll, err := cfg.dial(ctx, n)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	key := cfg.Prefix + "handoff"
	var gaps, grants Recorder
	var mu sync.Mutex
	var releasedAt time.Time // when the last holder started releasing
	stop := cfg.progress("handoff", &grants)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rctx.Err() == nil {
				t0 := time.Now()
				l, err := cl.Acquire(rctx, key)
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
					gaps.Fail(err)
				}
				rc()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	g := gaps.Result("handoff", "release→next grant", n, elapsed)
	g.Note = "4 clients queue for one key; gap from a release to the next holder's grant"
	gr := grants.Result("handoff", "acquire (queued)", n, elapsed)
	return []Result{g, gr}, nil
}

func keepalive(ctx context.Context, cfg *Config) ([]Result, error) {
	var opts []lease.Option
	if cfg.TLS != nil {
		opts = append(opts, lease.WithTLS(cfg.TLS))
	}
	if cfg.Token != "" {
		opts = append(opts, lease.WithAuthToken(cfg.Token))
	}
	api, err := lease.NewRemote(cfg.Addrs, opts...)
	if err != nil {
		return nil, err
	}
	defer api.Close()
	per := max(cfg.Leases/cfg.Holders, 1)
	type holderState struct {
		name  string
		items []*pb.ExtendItem
	}
	holders := make([]*holderState, cfg.Holders)
	ttl := durationpb.New(30 * time.Second)
	var setup Recorder
	stopSetup := cfg.progress("keepalive setup", &setup)
	var g errGroup
	for h := range holders {
		hs := &holderState{name: fmt.Sprintf("bench-holder-%d-%d", h, rand.Int64())}
		holders[h] = hs
		g.do(func() error {
			for i := range per {
				key := fmt.Sprintf("%sk/%d/%d", cfg.Prefix, h, i)
				actx, cancel := context.WithTimeout(ctx, 10*time.Second)
				t0 := time.Now()
				req := &pb.AcquireRequest{Key: key, Holder: hs.name, RequestId: uint64(i + 1), Ttl: ttl}
				var resp *pb.AcquireResponse
				// Sent again with its id through a leader change (the
				// same grant, or none): a busy host's election is no
				// reason to fail the benchmark.
				err := lease.DefaultRetryPolicy().Do(actx, true, func(ctx context.Context) (err error) {
					resp, err = api.Acquire(ctx, req)
					return err
				})
				cancel()
				if err != nil {
					return fmt.Errorf("keepalive setup: acquire %s: %w", key, err)
				}
				if !resp.GetGranted() {
					return fmt.Errorf("keepalive setup: %s held by %s", key, resp.GetHolder())
				}
				setup.Add(time.Since(t0))
				hs.items = append(hs.items, &pb.ExtendItem{Key: key, Token: resp.GetToken()})
			}
			return nil
		})
	}
	err = g.wait()
	stopSetup()
	defer func() {
		var g errGroup
		for _, hs := range holders {
			g.do(func() error {
				for _, it := range hs.items {
					rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					api.Release(rctx, &pb.ReleaseRequest{Key: it.Key, Holder: hs.name, Token: it.Token})
					cancel()
				}
				return nil
			})
		}
		g.wait()
	}()
	if err != nil {
		return nil, err
	}
	var ext Recorder
	var extended, refused atomic.Int64
	stop := cfg.progress("keepalive", &ext)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, hs := range holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rctx.Err() == nil {
				t0 := time.Now()
				resp, err := api.Extend(rctx, &pb.ExtendRequest{Holder: hs.name, Items: hs.items})
				if err != nil {
					if rctx.Err() == nil && !isCtxErr(err) {
						ext.Fail(err)
					}
					continue
				}
				ext.Add(time.Since(t0))
				for _, r := range resp.GetResults() {
					if r.GetOk() {
						extended.Add(1)
					} else {
						refused.Add(1)
						ext.Fail(errRefused)
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	r := ext.Result("keepalive", "extend request", cfg.Holders, elapsed)
	r.Note = fmt.Sprintf("%d leases, %d per request; %.0f lease extensions/s; %d refused (lost)",
		per*cfg.Holders, per, float64(extended.Load())/elapsed.Seconds(), refused.Load())
	s := setup.Result("keepalive", "acquire (setup, sequential per holder)", cfg.Holders, 0)
	return []Result{r, s}, nil
}

func failover(ctx context.Context, cfg *Config) ([]Result, error) {
	c := cfg.Cluster
	n := min(cfg.Clients, 8)
	clients, closeAll, err := cfg.dial(ctx, n)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var ops Recorder
	var mu sync.Mutex
	var successes [][2]time.Time // start and end of each successful acquire
	stop := cfg.progress("failover", &ops)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := cfg.Prefix + "f/" + strconv.Itoa(i)
			for rctx.Err() == nil {
				t0 := time.Now()
				actx, ac := context.WithTimeout(rctx, 10*time.Second)
				l, err := cl.TryAcquire(actx, key)
				ac()
				if err != nil || l == nil {
					if err == nil {
						err = lease.ErrHeld
					}
					if rctx.Err() == nil && !isCtxErr(err) {
						ops.Fail(err)
					}
					continue
				}
				now := time.Now()
				ops.Add(now.Sub(t0))
				mu.Lock()
				successes = append(successes, [2]time.Time{t0, now})
				mu.Unlock()
				relCtx, rc := context.WithTimeout(context.Background(), 5*time.Second)
				l.Release(relCtx)
				rc()
			}
		}()
	}
	var windows, elections Recorder
	var kills []string
	for k := 0; k < cfg.Kills && ctx.Err() == nil; k++ {
		if !ctxtime.Sleep(ctx, cfg.Duration/2) {
			break
		}
		leader := c.Leader()
		if leader < 0 {
			continue
		}
		crashAt := time.Now()
		c.Crash(leader)
		if _, err := c.WaitLeader(ctx); err != nil {
			break
		}
		elections.Add(time.Since(crashAt))
		// The window: from the crash until the first acquire that started
		// after it succeeded (requests in flight at the crash may still
		// complete; they do not show the cluster available again).
		var first time.Time
		for ctx.Err() == nil && first.IsZero() {
			mu.Lock()
			for _, s := range successes {
				if !s[0].Before(crashAt) && (first.IsZero() || s[1].Before(first)) {
					first = s[1]
				}
			}
			mu.Unlock()
			ctxtime.Sleep(ctx, 10*time.Millisecond)
		}
		if !first.IsZero() {
			windows.Add(first.Sub(crashAt))
			kills = append(kills, c.ID(leader))
		}
		if !ctxtime.Sleep(ctx, cfg.Duration/2) {
			break
		}
		if err := c.Restart(ctx, leader); err != nil {
			cancel()
			wg.Wait()
			stop()
			return nil, fmt.Errorf("restart %s: %w", c.ID(leader), err)
		}
	}
	cancel()
	wg.Wait()
	stop()
	w := windows.Result("failover", "crash→first new success", n, 0)
	times := "times"
	if len(kills) == 1 {
		times = "time"
	}
	w.Note = fmt.Sprintf("leader crashed %d %s (%v); %d clients in acquire/release loops", len(kills), times, kills, n)
	e := elections.Result("failover", "crash→new leader serving", n, 0)
	return []Result{w, e}, nil
}

// isCtxErr reports an error caused by the run's deadline, not the cluster.
func isCtxErr(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// errGroup runs functions concurrently and keeps the first error.
type errGroup struct {
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

func (g *errGroup) do(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.once.Do(func() { g.err = err })
		}
	}()
}

func (g *errGroup) wait() error {
	g.wg.Wait()
	return g.err
}
