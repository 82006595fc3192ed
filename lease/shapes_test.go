package lease_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: a semaphore of 2 takes two clients, refuses a third at once
// (TryAcquire nil), makes a waiting one wait and hands it the slot freed
// by a release; another n is ErrInvalid.
func TestSemaphore(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		var cls []*lease.Client
		for range 4 {
			c, _ := e.newClient(t)
			cls = append(cls, c)
		}
		l0, err := cls[0].TryAcquire(ctxT(t, 10*time.Second), "sem", lease.Semaphore(2))
		if err != nil || l0 == nil {
			t.Fatalf("slot 1: %v %v", l0, err)
		}
		l1, err := cls[1].Acquire(ctxT(t, 10*time.Second), "sem", lease.Semaphore(2))
		if err != nil || l1.Token() <= l0.Token() {
			t.Fatalf("slot 2: %v %v", l1, err)
		}
		if l, err := cls[2].TryAcquire(ctxT(t, 10*time.Second), "sem", lease.Semaphore(2)); l != nil || err != nil {
			t.Fatalf("a third holder of 2 slots: %v %v", l, err)
		}
		_, err = cls[2].TryAcquire(ctxT(t, 10*time.Second), "sem", lease.Semaphore(3))
		if !errors.Is(err, lease.ErrInvalid) {
			t.Fatalf("another n: %v, want ErrInvalid", err)
		}
		// The refusal says it once, in the node's words, embedded or
		// remote alike: no wire code, no second "invalid request".
		const want = `acquire "sem": lease: invalid request: key "sem" is a semaphore of 2, not 3: every holder of a semaphore gives the same number of slots`
		if err.Error() != want {
			t.Fatalf("another n:\n got %q\nwant %q", err, want)
		}
		hs, err := cls[3].Holdings(ctxT(t, 10*time.Second), "sem")
		if err != nil || len(hs) != 2 || hs[0].Semaphore != 2 || hs[0].Holder != cls[0].Holder() || hs[1].Holder != cls[1].Holder() {
			t.Fatalf("holdings: %+v %v", hs, err)
		}
		got := make(chan *lease.Lease, 1)
		go func() {
			l, err := cls[2].Acquire(ctxT(t, 20*time.Second), "sem", lease.Semaphore(2))
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		waitWaiters(t, e.c, 1)
		start := time.Now()
		if err := l0.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		l2 := <-got
		t.Logf("semaphore handoff gap: %v", time.Since(start))
		if l2 == nil || l2.Token() <= l1.Token() || !l1.IsHealthy() {
			t.Fatalf("woken slot %v; other slot healthy %v", l2, l1.IsHealthy())
		}
	})
}

// Scenario: readers share a key; a writer waits for all of them; fencing
// with the writer's token refuses a reader that wakes up late.
func TestSharedReadersAndWriter(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		r1, _ := e.newClient(t)
		r2, _ := e.newClient(t)
		w, _ := e.newClient(t)
		a, err := r1.Acquire(ctxT(t, 10*time.Second), "doc", lease.Shared())
		if err != nil {
			t.Fatal(err)
		}
		b, err := r2.Acquire(ctxT(t, 10*time.Second), "doc", lease.Shared())
		if err != nil {
			t.Fatal(err)
		}
		if l, err := w.TryAcquire(ctxT(t, 10*time.Second), "doc"); l != nil || err != nil {
			t.Fatalf("writer beside readers: %v %v", l, err)
		}
		got := make(chan *lease.Lease, 1)
		go func() {
			l, err := w.Acquire(ctxT(t, 20*time.Second), "doc")
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		waitWaiters(t, e.c, 1)
		a.Release(ctxT(t, 10*time.Second))
		select {
		case <-got:
			t.Fatal("writer granted while a reader holds the key")
		case <-time.After(100 * time.Millisecond):
		}
		b.Release(ctxT(t, 10*time.Second))
		wl := <-got
		fence := lease.NewFence()
		if err := fence.Check("doc", wl.Token()); err != nil {
			t.Fatal(err)
		}
		if err := fence.Check("doc", a.Token()); !errors.Is(err, lease.ErrStaleToken) {
			t.Fatalf("a reader's older token after the writer's: %v", err)
		}
		if err := fence.CheckRead("doc", b.Token()); !errors.Is(err, lease.ErrStaleToken) {
			t.Fatalf("a reader's read after the writer's write: %v", err)
		}
		rf := lease.NewFence() // readers alone never refuse each other
		if rf.CheckRead("doc", b.Token()) != nil || rf.CheckRead("doc", a.Token()) != nil {
			t.Fatal("CheckRead refused a reader with no write admitted")
		}
		wl.Release(ctxT(t, 10*time.Second))
	})
}

// Scenario: a multi-key lease holds every key under one token, stays
// alive across several TTLs with one extend item per tick, refuses
// nothing partially, and its release frees every key at once.
func TestAcquireSet(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		const ttl = 2 * time.Second
		a, ab := e.newClient(t, lease.WithTTL(ttl))
		b, _ := e.newClient(t)
		other, err := b.Acquire(ctxT(t, 10*time.Second), "set/c")
		if err != nil {
			t.Fatal(err)
		}
		items := []lease.Item{{Key: "set/a"}, {Key: "set/b", Shared: true}, {Key: "set/c"}}
		if l, err := a.TryAcquireSet(ctxT(t, 10*time.Second), items); l != nil || err != nil {
			t.Fatalf("set with a held key: %v %v", l, err)
		}
		if hs, _ := b.Holdings(ctxT(t, 10*time.Second), "set/a"); len(hs) != 0 {
			t.Fatalf("part of a refused set is held: %+v", hs)
		}
		got := make(chan *lease.Lease, 1)
		go func() {
			l, err := a.AcquireSet(ctxT(t, 20*time.Second), items)
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		waitWaiters(t, e.c, 1)
		if hs, _ := b.Holdings(ctxT(t, 10*time.Second), "set/a"); len(hs) != 0 {
			t.Fatalf("a waiting set holds part of its keys: %+v", hs)
		}
		other.Release(ctxT(t, 10*time.Second))
		l := <-got
		if l == nil || !slices.Equal(l.Keys(), []string{"set/a", "set/b", "set/c"}) || l.TokenFor("set/b") != l.Token() || l.TokenFor("x") != 0 {
			t.Fatalf("set lease: %v keys %v", l, l.Keys())
		}
		for _, k := range l.Keys() {
			info, err := b.Get(ctxT(t, 10*time.Second), k)
			if err != nil || info == nil || info.Token != l.Token() || len(info.SetKeys) != 3 || info.Shared != (k == "set/b") {
				t.Fatalf("%s: %+v %v", k, info, err)
			}
		}
		// Readers may share set/b beside the set.
		if r, err := b.TryAcquire(ctxT(t, 10*time.Second), "set/b", lease.Shared()); err != nil || r == nil {
			t.Fatalf("reader beside the set: %v %v", r, err)
		}
		// Two TTLs later it is still held: one extend item per tick.
		before, extendsBefore := int64(0), int64(0)
		if ab != nil {
			before, extendsBefore = ab.items.Load(), ab.extends.Load()
		}
		start := time.Now()
		nodetest.Eventually(t, 20*time.Second, func() error {
			if !l.IsHealthy() {
				t.Fatalf("set lease lost: %v", l.Err())
			}
			if !l.ValidUntil().After(start.Add(2 * ttl)) {
				return fmt.Errorf("valid until %v after the start, want past two TTLs", l.ValidUntil().Sub(start))
			}
			return nil
		})
		if ab != nil {
			extends, items := ab.extends.Load()-extendsBefore, ab.items.Load()-before
			t.Logf("%d extends, %d items over two TTLs", extends, items)
			if items > extends {
				t.Fatalf("%d extend items in %d extends: a set costs one item", items, extends)
			}
		}
		if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"set/a", "set/c"} {
			if info, err := b.Get(ctxT(t, 10*time.Second), k); err != nil || info != nil {
				t.Fatalf("%s after the set's release: %+v %v", k, info, err)
			}
		}
		// Bad sets are refused before they are sent.
		if _, err := a.TryAcquireSet(ctxT(t, 10*time.Second), []lease.Item{{Key: "x"}, {Key: "x"}}); !errors.Is(err, lease.ErrInvalid) {
			t.Fatalf("a key twice: %v", err)
		}
		if _, err := a.TryAcquireSet(ctxT(t, 10*time.Second), items, lease.Shared()); !errors.Is(err, lease.ErrInvalid) {
			t.Fatalf("Shared() on a set: %v", err)
		}
		if _, err := a.TryAcquireSet(ctxT(t, 10*time.Second), []lease.Item{{Key: "x", Shared: true, Semaphore: 2}}); !errors.Is(err, lease.ErrInvalid) {
			t.Fatalf("shared and semaphore: %v", err)
		}
	})
}

// Scenario: one Client never competes with itself: TryAcquireSet of a set
// that names a key it holds is nil, nil; AcquireSet waits for that lease's
// release.
func TestSetLocalGuard(t *testing.T) {
	forBackends(t, func(t *testing.T, e *env) {
		a, _ := e.newClient(t)
		l, err := a.Acquire(ctxT(t, 10*time.Second), "g/b")
		if err != nil {
			t.Fatal(err)
		}
		items := []lease.Item{{Key: "g/a"}, {Key: "g/b"}}
		if s, err := a.TryAcquireSet(ctxT(t, 10*time.Second), items); s != nil || err != nil {
			t.Fatalf("set over own key: %v %v", s, err)
		}
		got := make(chan *lease.Lease, 1)
		go func() {
			s, err := a.AcquireSet(ctxT(t, 20*time.Second), []lease.Item{{Key: "g/b"}, {Key: "g/a"}})
			if err != nil {
				t.Error(err)
			}
			got <- s
		}()
		select {
		case <-got:
			t.Fatal("set granted over the client's own lease")
		case <-time.After(100 * time.Millisecond):
		}
		l.Release(ctxT(t, 10*time.Second))
		s := <-got
		if s == nil {
			t.FailNow()
		}
		s.Release(ctxT(t, 10*time.Second))
	})
}
