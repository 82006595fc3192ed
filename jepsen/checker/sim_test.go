package checker

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

// sim generates histories of a correct lease cluster: a register per key
// with TTL expiry, lock-delay, FIFO waiters and cluster-wide tokens (a
// Raft index that extends advance too), driven by sequential clients whose
// operations take effect at a random point inside their interval.
// Indeterminate operations (the client gave up) take effect or not, at a
// random time up to most of the horizon after their completion record —
// some of them granted and later seen by a get. It is what a long
// campaign's linearizable operations look like, at any length, so the
// checker's speed and the segmentation can be measured and tested without
// running a cluster for hours. violateAt > 0 makes the first get after it
// that can be served stale return the superseded grant (a read that goes
// back in time): exactly one violation.
type simConfig struct {
	seed      uint64
	keys      int
	clients   int
	duration  time.Duration
	ttl       time.Duration
	lockDelay time.Duration
	think     time.Duration // mean pause between a client's operations
	infoProb  float64       // chance a write (acquire, release) is indeterminate
	horizon   time.Duration // indeterminate effects land within 0.8·horizon of completion
	violateAt time.Duration
}

func defaultSim(seed uint64, d time.Duration) simConfig {
	return simConfig{seed: seed, keys: 3, clients: 6, duration: d, ttl: 2 * time.Second, lockDelay: 500 * time.Millisecond,
		think: 700 * time.Millisecond, infoProb: 0.012, horizon: DefaultIndeterminateHorizon}
}

type simEvent struct {
	t   int64
	seq int64
	fn  func()
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].t != q[j].t {
		return q[i].t < q[j].t
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type simKey struct {
	name       string
	holder     string
	token      uint64
	held       bool
	expiry     int64
	delay      bool  // the current grant asked for lock-delay
	delayUntil int64 // lock-delay after an expiry (holder gone)
	// granted: the completion time of the current grant's operation (0:
	// not known to have completed), and the grant before it.
	grantedAt            int64
	prevHolder           string
	prevToken            uint64
	waiters              []*simWaiter
	lastGrantCompletedAt int64
}

type simWaiter struct {
	client   string
	delay    bool
	deadline int64
	done     bool
	grant    func(tok uint64)
}

type simulator struct {
	cfg      simConfig
	r        *rand.Rand
	q        simQueue
	seq      int64
	now      int64
	index    uint64
	keys     []*simKey
	records  []history.Record
	nextID   int64
	violated bool
}

func (s *simulator) at(t int64, fn func()) {
	s.seq++
	heap.Push(&s.q, &simEvent{t: t, seq: s.seq, fn: fn})
}

func (s *simulator) ms(lo, hi float64) int64 {
	return int64((lo + s.r.Float64()*(hi-lo)) * 1e6)
}

func (s *simulator) record(rec history.Record) {
	s.records = append(s.records, rec)
}

func (s *simulator) newID() int64 {
	s.nextID++
	return s.nextID
}

func (s *simulator) invoke(t int64, rec history.Record) int64 {
	rec.ID, rec.Type, rec.Time = s.newID(), history.Invoke, t
	s.record(rec)
	return rec.ID
}

func (s *simulator) complete(t, id int64, inv history.Record, typ history.Type, f func(*history.Record)) {
	out := history.Record{ID: id, Time: t, Type: typ, Client: inv.Client, Op: inv.Op, Key: inv.Key}
	if f != nil {
		f(&out)
	}
	s.record(out)
}

// settle brings k up to time t: expiry, the end of lock-delay, and grants
// to waiters once the key is free.
func (s *simulator) settle(k *simKey, t int64) {
	if k.held && t >= k.expiry {
		k.held = false
		if k.delay {
			k.delayUntil = k.expiry + int64(s.cfg.lockDelay)
		}
	}
	for !k.held && t >= k.delayUntil && len(k.waiters) > 0 {
		w := k.waiters[0]
		k.waiters = k.waiters[1:]
		if w.done {
			continue
		}
		w.done = true
		tok := s.grant(k, w.client, w.delay, t)
		w.grant(tok)
	}
}

func (s *simulator) grant(k *simKey, client string, delay bool, t int64) uint64 {
	s.index++
	k.prevHolder, k.prevToken = k.holder, k.token
	k.holder, k.token, k.held, k.delay, k.delayUntil = client, s.index, true, delay, 0
	k.expiry = t + int64(s.cfg.ttl)
	k.grantedAt = 0
	return s.index
}

func (s *simulator) free(k *simKey, t int64) bool {
	s.settle(k, t)
	return !k.held && t >= k.delayUntil
}

// wake schedules a settle at the moment k may become free.
func (s *simulator) wake(k *simKey) {
	t := k.expiry
	if !k.held {
		t = k.delayUntil
	}
	s.at(max(t, s.now), func() { s.settle(k, s.now) })
}

type simClient struct {
	base        string
	incarnation int
	name        string
	held        *simKey
	token       uint64
	gen         int // bumps when a holding ends, to stop its extends
}

func simulate(cfg simConfig) []history.Record {
	s := &simulator{cfg: cfg, r: rand.New(rand.NewPCG(cfg.seed, 0x5151))}
	for i := 0; i < cfg.keys; i++ {
		s.keys = append(s.keys, &simKey{name: fmt.Sprintf("k%d", i)})
	}
	end := int64(cfg.duration)
	for i := 0; i < cfg.clients; i++ {
		c := &simClient{base: fmt.Sprintf("w%d", i+1)}
		c.name = c.base
		s.at(s.ms(0, 500), func() { s.step(c) })
	}
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(*simEvent)
		if e.t > end+int64(2*cfg.horizon) {
			break
		}
		s.now = e.t
		e.fn()
	}
	sort.SliceStable(s.records, func(i, j int) bool { return s.records[i].Time < s.records[j].Time })
	for i := range s.records {
		s.records[i].Index = int64(i)
	}
	return s.records
}

func (s *simulator) next(c *simClient) {
	if s.now > int64(s.cfg.duration) {
		return
	}
	think := time.Duration(s.r.ExpFloat64() * float64(s.cfg.think))
	s.at(s.now+int64(think)+1, func() { s.step(c) })
}

// step is one client action.
func (s *simulator) step(c *simClient) {
	if c.held != nil {
		k := c.held
		switch p := s.r.Float64(); {
		case p < 0.15:
			s.get(c, k)
		case p < 0.3:
			s.check(c, k)
		case p < 0.35:
			// Vanish: stop extending, never release; the abandoned client
			// sees its lease lost just before the cluster can expire it.
			s.settle(k, s.now)
			vu := k.expiry - int64(s.cfg.ttl/50)
			s.record(history.Record{ID: s.newID(), Time: vu, Type: history.Event, Client: c.name, Op: history.ExtendLost,
				Key: k.name, Token: c.token, ValidUntil: vu})
			c.held, c.gen = nil, c.gen+1
			c.incarnation++
			c.name = fmt.Sprintf("%s.%d", c.base, c.incarnation+1) // comes back as a new holder
			s.next(c)
		default:
			s.release(c, k)
		}
		return
	}
	k := s.keys[s.r.IntN(len(s.keys))]
	if s.r.Float64() < 0.25 {
		s.get(c, s.keys[s.r.IntN(len(s.keys))])
		return
	}
	s.acquire(c, k)
}

func (s *simulator) holding(c *simClient, k *simKey, tok uint64) {
	c.held, c.token, c.gen = k, tok, c.gen+1
	gen := c.gen
	// Extend every TTL/3 while held (each extend is a Raft entry).
	var extend func()
	extend = func() {
		if c.gen != gen || c.held != k {
			return
		}
		s.settle(k, s.now)
		s.index++
		if k.held && k.holder == c.name && k.token == tok {
			k.expiry = s.now + int64(s.cfg.ttl)
			s.at(s.now+int64(s.cfg.ttl/3), extend)
		}
	}
	s.at(s.now+int64(s.cfg.ttl/3), extend)
}

func (s *simulator) acquire(c *simClient, k *simKey) {
	t0 := s.now
	delay := s.r.IntN(3) == 0
	inv := history.Record{Client: c.name, Op: history.Acquire, Key: k.name}
	if delay {
		inv.LockDelay = int64(s.cfg.lockDelay)
	}
	if s.r.Float64() < s.cfg.infoProb {
		inv.Mode = "wait"
		id := s.invoke(t0, inv)
		done := t0 + s.ms(500, 4000)
		s.at(done, func() {
			s.complete(s.now, id, inv, history.Info, func(r *history.Record) { r.Err = "unknown outcome" })
			s.next(c)
		})
		if s.r.IntN(2) == 0 {
			eff := t0 + s.ms(1, float64(done-t0)/1e6+0.8*float64(s.cfg.horizon)/1e6)
			s.at(eff, func() {
				if s.free(k, s.now) || k.holder == inv.Client {
					s.grant(k, inv.Client, delay, s.now) // a phantom grant nobody extends
					s.wake(k)
				}
			})
		}
		return
	}
	wait := s.r.Float64() < 0.4
	if wait {
		inv.Mode = "wait"
	} else {
		inv.Mode = "try"
	}
	id := s.invoke(t0, inv)
	eff := t0 + s.ms(0.5, 20)
	s.at(eff, func() {
		ok := func(tok uint64) {
			c.held = k // reserve, so the client does nothing else
			// The client's conservative validity: from the grant (the
			// waited time included), less 1% drift.
			vu := s.now + int64(float64(s.cfg.ttl)*0.99)
			s.at(s.now+s.ms(0.5, 20), func() {
				if k.token == tok {
					k.grantedAt = s.now
				}
				s.complete(s.now, id, inv, history.OK, func(r *history.Record) { r.Token = tok; r.ValidUntil = vu })
				s.holding(c, k, tok)
				s.next(c)
			})
		}
		if s.free(k, s.now) || (k.held && k.holder == c.name) {
			ok(s.grant(k, c.name, delay, s.now))
			s.wake(k)
			return
		}
		if !wait {
			s.at(s.now+s.ms(0.5, 20), func() {
				s.complete(s.now, id, inv, history.Fail, func(r *history.Record) { r.Err = history.ErrHeld })
				s.next(c)
			})
			return
		}
		w := &simWaiter{client: c.name, delay: delay, deadline: s.now + s.ms(300, 3000)}
		c.held = k // busy waiting
		w.grant = func(tok uint64) {
			ok(tok)
			s.wake(k)
		}
		k.waiters = append(k.waiters, w)
		s.wake(k)
		s.at(w.deadline, func() {
			if w.done {
				return
			}
			w.done = true
			c.held = nil
			s.at(s.now+s.ms(0.5, 20), func() {
				s.complete(s.now, id, inv, history.Fail, func(r *history.Record) { r.Err = history.ErrHeld })
				s.next(c)
			})
		})
	})
}

func (s *simulator) release(c *simClient, k *simKey) {
	tok := c.token
	t0 := s.now
	inv := history.Record{Client: c.name, Op: history.Release, Key: k.name, Token: tok}
	id := s.invoke(t0, inv)
	c.held, c.gen = nil, c.gen+1
	effect := func() {
		s.settle(k, s.now)
		s.index++
		if k.held && k.holder == inv.Client && k.token == tok {
			k.held = false
			s.settle(k, s.now)
		}
	}
	if s.r.Float64() < s.cfg.infoProb {
		done := t0 + s.ms(500, 4000)
		s.at(done, func() {
			s.complete(s.now, id, inv, history.Info, func(r *history.Record) { r.Err = "unknown outcome" })
			s.next(c)
		})
		if s.r.IntN(2) == 0 {
			s.at(t0+s.ms(1, float64(done-t0)/1e6+0.8*float64(s.cfg.horizon)/1e6), effect)
		}
		return
	}
	s.at(t0+s.ms(0.5, 20), func() {
		effect()
		s.at(s.now+s.ms(0.5, 20), func() {
			s.complete(s.now, id, inv, history.OK, nil)
			s.next(c)
		})
	})
}

func (s *simulator) get(c *simClient, k *simKey) {
	t0 := s.now
	inv := history.Record{Client: c.name, Op: history.Get, Key: k.name}
	id := s.invoke(t0, inv)
	s.at(t0+s.ms(0.5, 20), func() {
		s.settle(k, s.now)
		var holder string
		var tok uint64
		found := false
		switch {
		case k.held:
			holder, tok, found = k.holder, k.token, true
		case s.now < k.delayUntil:
			tok, found = k.token, true
		}
		if s.cfg.violateAt > 0 && !s.violated && s.now > int64(s.cfg.violateAt) && k.held && k.prevToken != 0 &&
			k.grantedAt != 0 && k.grantedAt < t0 {
			// The current grant completed before this get was invoked:
			// returning the grant it superseded goes back in time.
			s.violated = true
			holder, tok = k.prevHolder, k.prevToken
		}
		s.at(s.now+s.ms(0.5, 20), func() {
			s.complete(s.now, id, inv, history.OK, func(r *history.Record) { r.Holder, r.Token, r.Found = holder, tok, found })
			s.next(c)
		})
	})
}

func (s *simulator) check(c *simClient, k *simKey) {
	tok := c.token
	t0 := s.now
	inv := history.Record{Client: c.name, Op: history.CheckToken, Key: k.name, Token: tok}
	id := s.invoke(t0, inv)
	s.at(t0+s.ms(0.5, 20), func() {
		s.settle(k, s.now)
		cur := k.held && k.token == tok
		s.at(s.now+s.ms(0.5, 20), func() {
			s.complete(s.now, id, inv, history.OK, func(r *history.Record) { r.Token, r.Current = tok, cur })
			s.next(c)
		})
	})
}
