// Package workload is the chaos harness's clients: workers that use the
// lease client (package lease) the way an application would — acquire a
// key (trying, waiting, or waiting with a timeout), write to a protected
// resource with the lease's fencing token while holding it, hold for a
// while, release — and record every operation in the history.
//
// It owns the workers, their misbehaviour and the simulated resource. It
// does not inject cluster faults (package nemesis) or judge (package
// checker).
//
// Two kinds of worker run side by side:
//
//   - steady workers dial the cluster with lease.Dial, the remote client
//     users get;
//   - chaotic workers run a lease.Client over a GatedBackend (the lease
//     package's own remote backend behind a switch the harness controls)
//     and misbehave: some
//     are paused while holding a lease (the worker blocks and its client
//     sends nothing, like a process in a long GC pause; it wakes up after
//     the lease is gone and writes with its stale token, which the
//     resource must refuse), some vanish without releasing (a crashed
//     client: its lease must expire), and some lose the network for a
//     while.
package workload

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/lease"
)

// Config configures a workload.
type Config struct {
	// Addrs are the nodes' client API addresses.
	Addrs []string
	// Keys the workers compete for.
	Keys []string
	// Steady and Chaotic are the numbers of workers of each kind.
	Steady, Chaotic int
	// TTL of every lease, and the clients' drift bound.
	TTL        time.Duration
	DriftBound float64
	// LockDelay asked for by some acquires (0: never).
	LockDelay time.Duration
	// Seed for the workers' choices.
	Seed uint64
	// PauseProb, VanishProb and CutProb: per holding period of a chaotic
	// worker, the chance it is paused, vanishes, or loses the network.
	PauseProb, VanishProb, CutProb float64
	// TakeoverKeys get one takeover chain each (see takeover.go): holders
	// killed while holding, waiters that must take over in time.
	TakeoverKeys []string
	// Shapes, if set, has the workers use the lock shapes too (a
	// semaphore, a read-write key, multi-key leases) beside Keys.
	Shapes *Shapes
	// TLS, if set, is the clients' TLS configuration (with a client
	// certificate when the agents require one).
	TLS *tls.Config
	// Log receives the workers' and clients' logs.
	Log *slog.Logger
}

// DefaultConfig returns a workload of 3 steady and 3 chaotic workers on 3
// keys with 2 s leases.
func DefaultConfig() Config {
	return Config{
		Keys: []string{"k0", "k1", "k2"}, Steady: 3, Chaotic: 3,
		TTL: 2 * time.Second, DriftBound: lease.DefaultDrift, LockDelay: 500 * time.Millisecond,
		PauseProb: 0.12, VanishProb: 0.06, CutProb: 0.08,
	}
}

// Resource is the protected resource simulated in the harness: it accepts
// a write for a key only if the write's token is at least the highest it
// has accepted for that key (lease.Fence's rule), and records each
// decision in the history under its lock, so the history's order is the
// resource's order.
type Resource struct {
	rec *history.Recorder

	mu      sync.Mutex
	highest map[string]uint64
	value   map[string]string
}

// NewResource returns an empty resource recording to rec.
func NewResource(rec *history.Recorder) *Resource {
	return &Resource{rec: rec, highest: map[string]uint64{}, value: map[string]string{}}
}

// Write offers a write of value to key with token on behalf of client;
// validUntil (harness time) is the client's belief and healthy whether the
// lease was healthy when it was read, for the record.
func (r *Resource) Write(client, key string, token uint64, validUntil int64, healthy bool, value string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.rec.Invoke(history.Record{Client: client, Op: history.Write, Key: key, Token: token, ValidUntil: validUntil, Healthy: healthy, Value: value})
	if token < r.highest[key] {
		r.rec.Complete(id, history.Record{Type: history.Fail, Err: history.ErrStaleToken, Token: token,
			Value: fmt.Sprintf("highest %d", r.highest[key])})
		return false
	}
	r.highest[key] = token
	r.value[key] = value
	r.rec.Complete(id, history.Record{Type: history.OK, Token: token})
	return true
}

// Read offers a fenced read of key by a shared holder with token
// (lease.Fence.CheckRead's rule: refused if a write with a higher token was
// accepted), recording the decision; it changes nothing.
func (r *Resource) Read(client, key string, token uint64, validUntil int64, healthy bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.rec.Invoke(history.Record{Client: client, Op: history.Read, Key: key, Token: token, ValidUntil: validUntil, Healthy: healthy})
	if token < r.highest[key] {
		r.rec.Complete(id, history.Record{Type: history.Fail, Err: history.ErrStaleToken, Token: token,
			Value: fmt.Sprintf("highest %d", r.highest[key])})
		return false
	}
	r.rec.Complete(id, history.Record{Type: history.OK, Token: token})
	return true
}

// Workload is a running set of workers.
type Workload struct {
	cfg   Config
	rec   *history.Recorder
	clock history.Clock
	res   *Resource

	wg       sync.WaitGroup
	watchers sync.WaitGroup

	mu        sync.Mutex
	abandoned []abandoned // clients of vanished workers
}

type abandoned struct {
	client *lease.Client
	gate   *Gate
}

// New prepares a workload recording to rec.
func New(cfg Config, rec *history.Recorder) *Workload {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Workload{cfg: cfg, rec: rec, clock: rec.Clock(), res: NewResource(rec)}
}

// Resource returns the simulated resource.
func (w *Workload) Resource() *Resource { return w.res }

// Run runs the workers until ctx ends, then has them release what they
// hold and close their clients, and waits for all of it.
func (w *Workload) Run(ctx context.Context) error {
	n := w.cfg.Steady + w.cfg.Chaotic
	errs := make([]error, n+len(w.cfg.TakeoverKeys))
	for i, key := range w.cfg.TakeoverKeys {
		ch := &chain{w: w, idx: i, key: key, rnd: rand.New(rand.NewPCG(w.cfg.Seed, 0x74616b00+uint64(i)))}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			errs[n+i] = ch.run(ctx)
		}()
	}
	for i := 0; i < n; i++ {
		wk := &worker{w: w, id: i + 1, chaotic: i >= w.cfg.Steady,
			rnd: rand.New(rand.NewPCG(w.cfg.Seed, uint64(i+1)))}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			errs[i] = wk.run(ctx)
		}()
	}
	w.wg.Wait()
	w.mu.Lock()
	abandoned := w.abandoned
	w.abandoned = nil
	w.mu.Unlock()
	for _, a := range abandoned {
		// The campaign is over: let the vanished clients' best-effort
		// releases of leases they lost long ago go out (they are no-ops)
		// instead of retrying against a cut gate.
		a.gate.Open()
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.client.Close(cctx)
		cancel()
	}
	done := make(chan struct{})
	go func() { w.watchers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2*w.cfg.TTL + 5*time.Second):
		w.cfg.Log.Warn("some leases did not end after the workload stopped")
	}
	return errors.Join(errs...)
}

type worker struct {
	w       *Workload
	id      int
	chaotic bool
	rnd     *rand.Rand

	gen    int
	name   string
	client *lease.Client
	gate   *Gate
}

func (wk *worker) cfg() Config { return wk.w.cfg }

// connect makes the worker's client (a new holder name per generation).
func (wk *worker) connect(ctx context.Context) error {
	wk.gen++
	wk.name = fmt.Sprintf("w%d", wk.id)
	if wk.gen > 1 {
		wk.name = fmt.Sprintf("w%d.%d", wk.id, wk.gen)
	}
	opts := []lease.Option{
		lease.WithHolder(wk.name), lease.WithTTL(wk.cfg().TTL), lease.WithDriftBound(wk.cfg().DriftBound),
		lease.WithLogger(wk.cfg().Log.With("holder", wk.name)),
	}
	if wk.cfg().TLS != nil {
		opts = append(opts, lease.WithTLS(wk.cfg().TLS))
	}
	if !wk.chaotic {
		for {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := lease.Dial(dctx, wk.cfg().Addrs, opts...)
			cancel()
			if err == nil {
				wk.client = c
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			wk.cfg().Log.Warn("dial failed; retrying", "worker", wk.name, "err", err)
			if !ctxtime.Sleep(ctx, 500*time.Millisecond) {
				return ctx.Err()
			}
		}
	}
	wk.gate = &Gate{}
	be, err := NewGatedBackend(wk.cfg().Addrs, wk.gate, wk.cfg().TLS)
	if err != nil {
		return err
	}
	c, err := lease.New(be, opts...)
	if err != nil {
		return err
	}
	wk.client = c
	return nil
}

func (wk *worker) run(ctx context.Context) error {
	if err := wk.connect(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() {
		if wk.client == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		wk.client.Close(cctx)
		cancel()
	}()
	for ctx.Err() == nil && wk.client != nil {
		items := []lease.Item{{Key: wk.cfg().Keys[wk.rnd.IntN(len(wk.cfg().Keys))]}}
		if sh := wk.cfg().Shapes; sh != nil && wk.rnd.Float64() < sh.Prob {
			items = sh.pick(wk.rnd)
		}
		l := wk.acquire(ctx, items)
		if wk.rnd.Float64() < 0.3 {
			keys := wk.cfg().Keys
			if sh := wk.cfg().Shapes; sh != nil && wk.rnd.IntN(2) == 0 {
				keys = sh.keys()
			}
			wk.get(ctx, keys[wk.rnd.IntN(len(keys))])
		}
		if sh := wk.cfg().Shapes; sh != nil && wk.rnd.Float64() < 0.15 {
			wk.list(ctx, sh.ListPrefix)
		}
		if l == nil {
			ctxtime.Sleep(ctx, time.Duration(20+wk.rnd.IntN(200))*time.Millisecond)
			continue
		}
		wk.hold(ctx, l)
	}
	return nil
}

// acquire records one acquire of items (one plain key, one key in a
// shape, or a set) in a random mode and returns the lease if granted.
func (wk *worker) acquire(ctx context.Context, items []lease.Item) *lease.Lease {
	var opts []lease.AcquireOption
	key := items[0].Key
	inv := history.Record{Client: wk.name, Op: history.Acquire, Key: key}
	set := len(items) > 1
	if set {
		for _, it := range items {
			inv.Items = append(inv.Items, historyItem(it))
		}
	} else {
		hi := historyItem(items[0])
		inv.Shape, inv.Limit = hi.Shape, hi.Limit
		if items[0].Shared {
			opts = append(opts, lease.Shared())
		}
		if items[0].Semaphore != 0 {
			opts = append(opts, lease.Semaphore(items[0].Semaphore))
		}
	}
	if wk.cfg().LockDelay > 0 && wk.rnd.IntN(3) == 0 {
		opts = append(opts, lease.LockDelay(wk.cfg().LockDelay))
		inv.LockDelay = int64(wk.cfg().LockDelay)
	}
	var (
		l   *lease.Lease
		err error
	)
	switch p := wk.rnd.Float64(); {
	case p < 0.4:
		inv.Mode = "try"
		id := wk.w.rec.Invoke(inv)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if set {
			l, err = wk.client.TryAcquireSet(cctx, items, opts...)
		} else {
			l, err = wk.client.TryAcquire(cctx, key, opts...)
		}
		cancel()
		if l == nil && err == nil {
			// Refused: the leader said another holder has it. (A lease
			// client's retry with the same request id after an unanswered
			// attempt would have returned our own grant instead.)
			wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: history.ErrHeld})
			return nil
		}
		return wk.acquired(id, l, err)
	case p < 0.8:
		inv.Mode = "timeout"
		id := wk.w.rec.Invoke(inv)
		maxWait := time.Duration(300+wk.rnd.IntN(3000)) * time.Millisecond
		if set {
			l, err = wk.client.AcquireSetTimeout(ctx, items, maxWait, opts...)
		} else {
			l, err = wk.client.AcquireTimeout(ctx, key, maxWait, opts...)
		}
		return wk.acquired(id, l, err)
	default:
		inv.Mode = "wait"
		id := wk.w.rec.Invoke(inv)
		cctx, cancel := context.WithTimeout(ctx, 3*wk.cfg().TTL)
		if set {
			l, err = wk.client.AcquireSet(cctx, items, opts...)
		} else {
			l, err = wk.client.Acquire(cctx, key, opts...)
		}
		cancel()
		return wk.acquired(id, l, err)
	}
}

func (wk *worker) acquired(id int64, l *lease.Lease, err error) *lease.Lease {
	if l != nil {
		wk.w.rec.Complete(id, history.Record{Type: history.OK, Token: l.Token(), ValidUntil: wk.w.clock.At(l.ValidUntil())})
		wk.watch(l)
		return l
	}
	var held *lease.HeldError
	switch {
	case err == nil:
		wk.w.rec.Complete(id, history.Record{Type: history.Info, Err: "no lease and no error"})
	case errors.As(err, &held):
		// Refused, or the wait ended (timeout, deadline) and the client's
		// Abandon of the request id answered "never granted, held by
		// another, or in its lock-delay" (and spent the id, so no late
		// copy of it can be granted).
		// A refusal, like a try-acquire's.
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: history.ErrHeld, Holder: holderName(held.Holder)})
	case errors.Is(err, lease.ErrInvalid):
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: err.Error()})
	default:
		// Timeouts, lost replies, no leader: the lease client retried with
		// the same request id and released anything it may have been
		// granted, but the grant may have happened. Indeterminate.
		wk.w.rec.Complete(id, history.Record{Type: history.Info, Err: err.Error()})
	}
	return nil
}

// watch records the moment the client itself concludes a lease is lost,
// and every validity the lease reports while it lasts: an Observe event
// whenever ValidUntil, read while the lease is healthy, has changed since
// the last reading (sampled every TTL/10), so the single-holder checker
// judges the client by every ValidUntil it reported (issue 9).
func (wk *worker) watch(l *lease.Lease) {
	wk.w.watchLease(wk.name, l)
}

func (w *Workload) watchLease(name string, l *lease.Lease) {
	key, token := l.Key(), l.Token()
	last := l.ValidUntil()
	w.watchers.Add(1)
	go func() {
		defer w.watchers.Done()
		tick := time.NewTicker(max(w.cfg.TTL/10, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				vu := l.ValidUntil()
				if vu.Equal(last) || !l.IsHealthy() {
					continue
				}
				last = vu
				w.rec.Event(history.Record{Client: name, Op: history.Observe, Key: key, Token: token,
					ValidUntil: w.clock.At(vu), Healthy: true})
				continue
			case <-l.Done():
			}
			break
		}
		err := l.Err()
		if errors.Is(err, lease.ErrReleased) {
			return
		}
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		w.rec.Event(history.Record{Client: name, Op: history.ExtendLost, Key: key, Token: token,
			ValidUntil: w.clock.At(l.ValidUntil()), Err: msg})
	}()
}

// hold keeps the lease for a while, writing to the resource with its
// token, then releases it — unless the worker is chaotic and misbehaves.
func (wk *worker) hold(ctx context.Context, l *lease.Lease) {
	ttl := wk.cfg().TTL
	holdFor := time.Duration(wk.rnd.Int64N(int64(2 * ttl)))
	until := time.Now().Add(holdFor)
	misbehave := ""
	if wk.chaotic {
		switch p := wk.rnd.Float64(); {
		case p < wk.cfg().PauseProb:
			misbehave = "pause"
		case p < wk.cfg().PauseProb+wk.cfg().VanishProb:
			misbehave = "vanish"
		case p < wk.cfg().PauseProb+wk.cfg().VanishProb+wk.cfg().CutProb:
			misbehave = "cut"
		}
	}
	seq := 0
	write := func() bool {
		// ValidUntil first, then IsHealthy: a healthy answer means the
		// validity read was reported by a live lease.
		vu := l.ValidUntil()
		if !l.IsHealthy() {
			return false
		}
		seq++
		if wk.rnd.IntN(5) == 0 {
			wk.checkToken(ctx, l)
		}
		wk.touch(l, wk.w.clock.At(vu), true, fmt.Sprintf("%s#%d", wk.name, seq))
		if sh := wk.cfg().Shapes; sh != nil && len(l.Keys()) > 1 && wk.rnd.IntN(4) == 0 {
			// Look at the set from the outside while it is held.
			wk.get(ctx, l.Keys()[wk.rnd.IntN(len(l.Keys()))])
		}
		return true
	}
	write()
	switch misbehave {
	case "pause":
		wk.pause(ctx, l)
		return
	case "vanish":
		wk.vanish(ctx, l)
		return
	case "cut":
		wk.cutFor(ctx, ttl+time.Duration(wk.rnd.Int64N(int64(ttl))))
	}
	for time.Now().Before(until) && ctx.Err() == nil {
		if !ctxtime.Sleep(ctx, time.Duration(100+wk.rnd.IntN(300))*time.Millisecond) {
			break
		}
		if !write() {
			break
		}
	}
	wk.release(l)
}

// pause simulates a process pause while holding: the client sends nothing
// and the worker does nothing for longer than the TTL; then the worker,
// which checked its lease before the pause, writes with its now stale
// token without checking again — the resource must refuse it once the
// next holder has written.
func (wk *worker) pause(ctx context.Context, l *lease.Lease) {
	d := wk.cfg().TTL*3/2 + time.Duration(wk.rnd.Int64N(int64(wk.cfg().TTL)))
	wk.w.rec.Event(history.Record{Client: wk.name, Op: history.Pause, Key: l.Key(), Token: l.Token(), Value: d.String()})
	wk.gate.Freeze()
	ctxtime.Sleep(ctx, d)
	wk.gate.Thaw()
	wk.w.rec.Event(history.Record{Client: wk.name, Op: history.Resume, Key: l.Key(), Token: l.Token()})
	vu := l.ValidUntil()
	wk.touch(l, wk.w.clock.At(vu), l.IsHealthy(), wk.name+"#after-pause")
	wk.release(l)
}

// touch uses the resource as the lease's holder: a write with the token to
// every key held exclusively, a fenced read of every key held shared
// (semaphore slots do not fence each other, so they touch nothing).
func (wk *worker) touch(l *lease.Lease, validUntil int64, healthy bool, value string) {
	for _, it := range l.Items() {
		switch {
		case it.Shared:
			wk.w.res.Read(wk.name, it.Key, l.Token(), validUntil, healthy)
		case it.Semaphore == 0:
			wk.w.res.Write(wk.name, it.Key, l.Token(), validUntil, healthy, value)
		}
	}
}

// vanish abandons the client without releasing, like a crashed process:
// its requests fail from now on, the lease must expire, and the worker
// comes back as a new holder.
func (wk *worker) vanish(ctx context.Context, l *lease.Lease) {
	wk.w.rec.Event(history.Record{Client: wk.name, Op: history.Vanish, Key: l.Key(), Token: l.Token()})
	wk.gate.Cut()
	wk.w.mu.Lock()
	wk.w.abandoned = append(wk.w.abandoned, abandoned{wk.client, wk.gate})
	wk.w.mu.Unlock()
	ctxtime.Sleep(ctx, time.Duration(wk.rnd.Int64N(int64(wk.cfg().TTL))))
	wk.client = nil
	if err := wk.connect(ctx); err != nil {
		wk.client = nil // ctx ended
	}
}

// cutFor cuts the worker's network for d; the worker keeps going and
// must see its lease lost if d exceeds its validity.
func (wk *worker) cutFor(ctx context.Context, d time.Duration) {
	g := wk.gate
	g.Cut()
	go func() {
		ctxtime.Sleep(ctx, d)
		g.Open()
	}()
}

// release records a release. It took effect only if this call ended the
// lease (Err is then ErrReleased); if the lease had already ended, nothing
// was sent.
func (wk *worker) release(l *lease.Lease) {
	id := wk.w.rec.Invoke(history.Record{Client: wk.name, Op: history.Release, Key: l.Key(), Token: l.Token()})
	ended := l.Err() != nil
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := l.Release(ctx)
	cancel()
	switch {
	case ended:
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: history.ErrNotHeld})
	case err == nil && errors.Is(l.Err(), lease.ErrReleased):
		wk.w.rec.Complete(id, history.Record{Type: history.OK})
	case err == nil:
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: history.ErrNotHeld})
	case errors.Is(err, lease.ErrInvalid):
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: err.Error()})
	default:
		wk.w.rec.Complete(id, history.Record{Type: history.Info, Err: err.Error()})
	}
}

// get reads every holding of key (the first one is what a plain Get
// returns: the register the linearizable model reads).
func (wk *worker) get(ctx context.Context, key string) {
	id := wk.w.rec.Invoke(history.Record{Client: wk.name, Op: history.Get, Key: key})
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	infos, err := wk.client.Holdings(cctx, key)
	cancel()
	switch {
	case err != nil:
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: err.Error()})
	case len(infos) == 0:
		wk.w.rec.Complete(id, history.Record{Type: history.OK})
	default:
		out := history.Record{Type: history.OK, Found: true, Holder: holderName(infos[0].Holder), Token: infos[0].Token}
		if wk.cfg().Shapes != nil {
			out.Holdings = holdings(infos)
		}
		wk.w.rec.Complete(id, out)
	}
}

// list reads every holding under prefix in one linearizable read.
func (wk *worker) list(ctx context.Context, prefix string) {
	id := wk.w.rec.Invoke(history.Record{Client: wk.name, Op: history.List, Value: prefix})
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	infos, err := wk.client.List(cctx, prefix)
	cancel()
	if err != nil {
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: err.Error()})
		return
	}
	wk.w.rec.Complete(id, history.Record{Type: history.OK, Holdings: holdings(infos)})
}

func (wk *worker) checkToken(ctx context.Context, l *lease.Lease) {
	vu := l.ValidUntil()
	id := wk.w.rec.Invoke(history.Record{Client: wk.name, Op: history.CheckToken, Key: l.Key(), Token: l.Token(),
		ValidUntil: wk.w.clock.At(vu), Healthy: l.IsHealthy()})
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	ok, err := wk.client.CheckToken(cctx, l.Key(), l.Token())
	cancel()
	if err != nil {
		wk.w.rec.Complete(id, history.Record{Type: history.Fail, Err: err.Error()})
		return
	}
	wk.w.rec.Complete(id, history.Record{Type: history.OK, Token: l.Token(), Current: ok})
}

// holderName is the client name in a holder as the cluster records it
// (name#incarnation, see lease.Client.Holder): the history names clients
// by the names workers give them, one Client per name and generation.
func holderName(holder string) string {
	name, _, _ := strings.Cut(holder, "#")
	return name
}
