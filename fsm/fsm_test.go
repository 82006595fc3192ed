package fsm_test

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// TestSingleHolderTakeover: a key goes to another holder only once its
// expiry, plus lock-delay if the holder expired rather than released, is
// <= the FSM's now; a release frees it at once.
func TestSingleHolderTakeover(t *testing.T) {
	type step struct {
		at  time.Duration
		cmd fsm.Command
	}
	cases := []struct {
		name  string
		delay time.Duration
		steps []step        // between the grant (index 2, at 0, ttl 5s) and the probe
		at    time.Duration // of the probe: acquire by c2
		want  fsm.Result
	}{
		{name: "before expiry", at: 5*s - 1,
			want: fsm.Result{Code: fsm.Held, Key: "a", Token: 2, Holder: "c1", Wait: 1}},
		{name: "at expiry, unreaped", at: 5 * s,
			want: fsm.Result{Code: fsm.Granted, Key: "a", Token: 3, Expiry: 10 * s}},
		{name: "after expiry, reaped", steps: []step{{6 * s, fsm.Expire{}}}, at: 6 * s,
			want: fsm.Result{Code: fsm.Granted, Key: "a", Token: 4, Expiry: 11 * s}},
		// The acquire reaps the expired lease first, as Expire would: the
		// same answer as after the reaper ran.
		{name: "lock-delay, unreaped", delay: 2 * s, at: 5 * s,
			want: fsm.Result{Code: fsm.Held, Key: "a", Token: 2, Wait: 2 * s}},
		{name: "lock-delay, reaped", delay: 2 * s, steps: []step{{5 * s, fsm.Expire{}}}, at: 7*s - 1,
			want: fsm.Result{Code: fsm.Held, Key: "a", Token: 2, Wait: 1}},
		{name: "lock-delay over, unreaped", delay: 2 * s, at: 7 * s,
			want: fsm.Result{Code: fsm.Granted, Key: "a", Token: 3, Expiry: 12 * s}},
		{name: "lock-delay over, reaped", delay: 2 * s, steps: []step{{5 * s, fsm.Expire{}}}, at: 7 * s,
			want: fsm.Result{Code: fsm.Granted, Key: "a", Token: 4, Expiry: 12 * s}},
		{name: "released", delay: 2 * s, steps: []step{{1 * s, rel("a", "c1", 2)}}, at: 1 * s,
			want: fsm.Result{Code: fsm.Granted, Key: "a", Token: 4, Expiry: 6 * s}},
		{name: "released by another", steps: []step{{1 * s, rel("a", "c2", 2)}}, at: 1 * s,
			want: fsm.Result{Code: fsm.Held, Key: "a", Token: 2, Holder: "c1", Wait: 4 * s}},
		{name: "extended", steps: []step{{4 * s, ext("c1", "a", 2)}}, at: 8 * s,
			want: fsm.Result{Code: fsm.Held, Key: "a", Token: 2, Holder: "c1", Wait: 1 * s}},
		{name: "stale expire decision", steps: []step{{4 * s, ext("c1", "a", 2)}, {5 * s, fsm.Expire{}}}, at: 5 * s,
			want: fsm.Result{Code: fsm.Held, Key: "a", Token: 2, Holder: "c1", Wait: 4 * s}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fsm.New(fsm.Config{})
			one(t, f, 1, st(1, 0), fsm.Promote{})
			if r := one(t, f, 2, st(1, 0), acq("a", "c1", 1, 5*s, tc.delay)); r.Code != fsm.Granted {
				t.Fatalf("grant: %+v", r)
			}
			idx := uint64(3)
			for _, sp := range tc.steps {
				apply(t, f, idx, st(1, sp.at), sp.cmd)
				idx++
			}
			got := one(t, f, idx, st(1, tc.at), acq("a", "c2", 1, 5*s, 0))
			if got != tc.want {
				t.Fatalf("acquire by c2 at %v:\n got %+v\nwant %+v", tc.at, got, tc.want)
			}
			l, ok := f.Get("a")
			if !ok {
				t.Fatal("no record for a")
			}
			wantHolder := "c1"
			if got.Code == fsm.Granted {
				wantHolder = "c2"
			}
			if l.Holder != wantHolder {
				t.Fatalf("holder %q, want %q", l.Holder, wantHolder)
			}
		})
	}
}

// TestRequestIDOrder: from the listed holder, the same request id is a
// retry, a higher one a new holding with a new token, a lower one Stale.
func TestRequestIDOrder(t *testing.T) {
	cases := []struct {
		name string
		req  uint64
		at   time.Duration
		want fsm.Result
		// the record afterwards
		wantReq, wantToken uint64
		wantExpiry         time.Duration
	}{
		{"retry", 5, 2 * s, fsm.Result{Code: fsm.Granted, Key: "a", Token: 2, Expiry: 12 * s, Retry: true}, 5, 2, 12 * s},
		// An expired holding counts as reaped, and its request id is
		// spent: the same id again is a delayed copy.
		{"same id after expiry, unreaped", 5, 30 * s, fsm.Result{Code: fsm.Stale, Key: "a"}, 5, 2, 11 * s},
		{"new holding", 6, 2 * s, fsm.Result{Code: fsm.Granted, Key: "a", Token: 3, Expiry: 12 * s}, 6, 3, 12 * s},
		{"much newer", 1 << 40, 2 * s, fsm.Result{Code: fsm.Granted, Key: "a", Token: 3, Expiry: 12 * s}, 1 << 40, 3, 12 * s},
		{"stale", 4, 2 * s, fsm.Result{Code: fsm.Stale, Key: "a", Token: 2, Holder: "c1"}, 5, 2, 11 * s},
		{"lower id after expiry, unreaped", 1, 30 * s, fsm.Result{Code: fsm.Stale, Key: "a"}, 5, 2, 11 * s},
		{"higher id after expiry, unreaped", 6, 30 * s, fsm.Result{Code: fsm.Granted, Key: "a", Token: 3, Expiry: 40 * s}, 6, 3, 40 * s},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fsm.New(fsm.Config{})
			one(t, f, 1, st(1, 0), fsm.Promote{})
			one(t, f, 2, st(1, 1*s), acq("a", "c1", 5, 10*s, 0))
			got := one(t, f, 3, st(1, tc.at), acq("a", "c1", tc.req, 10*s, 0))
			got.Reason = ""
			if got != tc.want {
				t.Fatalf("\n got %+v\nwant %+v", got, tc.want)
			}
			l, ok := f.Get("a")
			if !ok && tc.want.Code == fsm.Stale && tc.at > 11*s {
				return // the expired holding was reaped; nothing left to extend
			}
			if l.ReqID != tc.wantReq || l.Token != tc.wantToken || l.Expiry != tc.wantExpiry {
				t.Fatalf("record %+v, want req %d token %d expiry %v", l, tc.wantReq, tc.wantToken, tc.wantExpiry)
			}
			// The holding's current token extends; any other is refused.
			if r := one(t, f, 4, st(1, tc.at), ext("c1", "a", int(tc.wantToken))); r.Code != fsm.Extended && tc.wantExpiry > tc.at {
				t.Fatalf("extend with current token: %+v", r)
			}
			if tc.wantToken != 2 {
				if r := one(t, f, 5, st(1, tc.at), ext("c1", "a", 2)); r.Code != fsm.NotHeld {
					t.Fatalf("extend with the replaced token: %+v", r)
				}
			}
		})
	}
}

// TestNoEarlyExpiryPromoteKeepsRemaining: no-early-expiry. Promote first
// reaps what is due at the old clock, exactly as an Expire would (an
// expired but unreaped lease is never revived), then moves every record
// into the new epoch with the time it had left at the old clock:
// expiry' = new now + (expiry - old now), lock-delays likewise, however
// far apart the two clocks are.
func TestNoEarlyExpiryPromoteKeepsRemaining(t *testing.T) {
	type lease struct {
		key        string
		ttl, delay time.Duration
	}
	leases := []lease{
		{"held", 10 * s, 0},
		{"held-delay", 10 * s, 4 * s},
		{"short", 1 * s, 6 * s},
		{"short-nodelay", 2 * s, 0},
	}
	for _, oldNow := range []time.Duration{0, 1 * s, 3 * s, 9 * s, 10 * s, 12 * s, 1000 * s} {
		for _, newNow := range []time.Duration{0, 1 * ms, 2 * s, 5000 * s} {
			name := fmt.Sprintf("old=%v/new=%v", oldNow, newNow)
			f := fsm.New(fsm.Config{Events: true})
			one(t, f, 1, st(7, 0), fsm.Promote{})
			for i, l := range leases {
				one(t, f, uint64(2+i), st(7, 0), acq(l.key, "c1", uint64(1+i), l.ttl, l.delay))
			}
			// Move the clock to oldNow without reaping anything.
			one(t, f, 10, st(7, oldNow), acq("clock", "c2", 1, fsm.MaxTTL, 0))
			f.Drain(nil)
			r := apply(t, f, 11, st(8, newNow), fsm.Promote{})
			if r.Results[0].Code != fsm.Promoted {
				t.Fatalf("%s: promote: %+v", name, r)
			}
			if e, now := f.Clock(); e != 8 || now != newNow {
				t.Fatalf("%s: clock after promote: epoch %d now %v", name, e, now)
			}
			// What Expire at oldNow would have reaped, in (due, key) order.
			var wantReaped []string
			for _, l := range leases {
				if l.ttl <= oldNow {
					wantReaped = append(wantReaped, l.key+" expired")
				}
			}
			for _, l := range leases {
				if l.delay > 0 && l.ttl+l.delay <= oldNow {
					wantReaped = append(wantReaped, l.key+" freed")
				}
			}
			slices.SortStableFunc(wantReaped, func(a, b string) int {
				due := func(x string) time.Duration {
					for _, l := range leases {
						if strings.HasPrefix(x, l.key+" ") {
							if strings.HasSuffix(x, "freed") {
								return l.ttl + l.delay
							}
							return l.ttl
						}
					}
					return 0
				}
				return cmp.Compare(due(a), due(b))
			})
			var gotReaped []string
			for _, res := range r.Results[1:] {
				what := res.Key + " expired"
				if res.Holder == "" {
					what = res.Key + " freed"
				}
				gotReaped = append(gotReaped, what)
			}
			if !slices.Equal(gotReaped, wantReaped) {
				t.Errorf("%s: promote reaped %v, want %v", name, gotReaped, wantReaped)
			}
			var gotEvents []string
			for _, e := range f.Drain(nil) {
				if e.Type != fsm.EventPromoted {
					gotEvents = append(gotEvents, e.Key+" "+e.Type.String())
				}
			}
			if !slices.Equal(gotEvents, wantReaped) {
				t.Errorf("%s: events %v, want %v", name, gotEvents, wantReaped)
			}
			// The rest keep their remaining time.
			want := map[string]time.Duration{} // key -> FreeAt
			for _, l := range leases {
				if l.ttl+l.delay > oldNow && (l.ttl > oldNow || l.delay > 0) {
					want[l.key] = newNow + l.ttl + l.delay - oldNow
				}
			}
			want["clock"] = newNow + fsm.MaxTTL
			got := map[string]time.Duration{}
			for _, l := range allLeases(f) {
				got[l.Key] = l.FreeAt()
				var ttl time.Duration
				for _, x := range leases {
					if x.key == l.Key {
						ttl = x.ttl
					}
				}
				if l.Key != "clock" && l.Expiry != newNow+ttl-oldNow {
					t.Errorf("%s: %s expiry %v, want %v", name, l.Key, l.Expiry, newNow+ttl-oldNow)
				}
				if wantHeld := ttl > oldNow || l.Key == "clock"; (l.State == fsm.StateHeld) != wantHeld {
					t.Errorf("%s: %s in state %v", name, l.Key, l.State)
				}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: free-at %v, want %v", name, got, want)
			}
			// restore-bounds: the shifted state (lock-delays may now expire
			// before 0) passes Restore's checks.
			if _, err := fsm.ReadBackup(bytes.NewReader(snapshotBytes(t, f))); err != nil {
				t.Errorf("%s: snapshot after the promote: %v", name, err)
			}
			// Nothing is reaped or handed over a moment before its free-at,
			// and everything is free at it. (Probed in free-at order: the
			// clock only moves forward.)
			delete(want, "clock")
			keys := slices.SortedFunc(maps.Keys(want), func(a, b string) int { return cmp.Compare(want[a], want[b]) })
			for i, k := range keys {
				free := want[k]
				idx := uint64(20 + 2*i)
				if r := one(t, f, idx, st(8, free-1), acq(k, "c9", 1, s, 0)); r.Code != fsm.Held || r.Wait != 1 {
					t.Errorf("%s: %s just before %v: %+v", name, k, free, r)
				}
				if r := one(t, f, idx+1, st(8, free), acq(k, "c9", 1, s, 0)); r.Code != fsm.Granted {
					t.Errorf("%s: %s at %v: %+v", name, k, free, r)
				}
			}
		}
	}
}

// TestPromoteExpiresAbandonedUnderChurn: a lease nobody extends expires
// after its TTL of epoch time however often the leader changes (issue 9:
// a full-TTL rebase kept abandoned leases alive for ever when leaders
// changed faster than the TTL), and a lease whose holder extends through
// every leader keeps its holder.
func TestPromoteExpiresAbandonedUnderChurn(t *testing.T) {
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("abandoned", "c1", 1, 10*s, 0))
	one(t, f, 3, st(1, 0), acq("kept", "c2", 1, 10*s, 0))
	idx := uint64(4)
	// A new leader every 3 s of epoch time (each starting its clock at
	// 200 ms); c2 extends once per epoch.
	for epoch := uint64(2); epoch <= 6; epoch++ {
		apply(t, f, idx, st(epoch-1, 3*s), fsm.Expire{})
		one(t, f, idx+1, st(epoch, 200*ms), fsm.Promote{})
		if r := one(t, f, idx+2, st(epoch, 300*ms), ext("c2", "kept", 3)); r.Code != fsm.Extended {
			t.Fatalf("epoch %d: extend of kept: %+v", epoch, r)
		}
		idx += 3
		l, ok := f.Get("abandoned")
		// 10 s of epoch time: 3 s in epoch 1, 2.8 s in each later one.
		left := 10*s - 3*s - time.Duration(epoch-2)*(2800*ms)
		if left > 0 != ok || ok && l.Expiry != 200*ms+left {
			t.Fatalf("epoch %d: abandoned %+v, %v; want %v left", epoch, l, ok, left)
		}
	}
	if l, ok := f.Get("kept"); !ok || l.Holder != "c2" || l.Token != 3 {
		t.Fatalf("kept: %+v, %v", l, ok)
	}
}

// TestUnsafeSkipRebase: the UNSAFE knob keeps the old no-rebase
// behaviour: Promote neither reaps nor moves anything, the new epoch's
// clock judges the old one's expiries.
func TestUnsafeSkipRebase(t *testing.T) {
	f := fsm.New(fsm.Config{UnsafeSkipRebase: true})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "c1", 1, 10*s, 0))
	one(t, f, 3, st(1, 0), acq("b", "c1", 2, 1*s, 0))
	one(t, f, 4, st(1, 5*s), acq("c", "c1", 3, 1*s, 0))
	if r := apply(t, f, 5, st(2, 20*s), fsm.Promote{}); len(r.Results) != 1 || r.Results[0].Code != fsm.Promoted {
		t.Fatalf("promote: %+v", r)
	}
	got := map[string]time.Duration{}
	for _, l := range allLeases(f) {
		got[l.Key] = l.Expiry
	}
	if want := map[string]time.Duration{"a": 10 * s, "b": 1 * s, "c": 6 * s}; !reflect.DeepEqual(got, want) {
		t.Fatalf("expiries %v, want %v", got, want)
	}
}

// TestNoExtendAfterExpiry: a lease whose expiry is <= now cannot be
// extended even if nobody reaped it.
func TestNoExtendAfterExpiry(t *testing.T) {
	cases := []struct {
		name  string
		delay time.Duration
		clock []time.Duration // stamps of expires run before the extend
		at    time.Duration
		want  fsm.Code
	}{
		{"just before", 0, nil, 5*s - 1, fsm.Extended},
		{"at expiry", 0, nil, 5 * s, fsm.NotHeld},
		{"after", 0, nil, 6 * s, fsm.NotHeld},
		{"at expiry with lock-delay", 3 * s, nil, 5 * s, fsm.NotHeld},
		{"stamped early, clock already past", 0, []time.Duration{}, 4 * s, fsm.NotHeld},
		{"reaped into lock-delay", 3 * s, []time.Duration{5 * s}, 5 * s, fsm.NotHeld},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fsm.New(fsm.Config{})
			one(t, f, 1, st(1, 0), fsm.Promote{})
			one(t, f, 2, st(1, 0), acq("a", "c1", 1, 5*s, tc.delay))
			idx := uint64(3)
			if tc.clock != nil && len(tc.clock) == 0 {
				// Move the FSM clock past expiry with an unrelated command.
				one(t, f, idx, st(1, 5*s), acq("other", "c2", 1, s, 0))
				idx++
			}
			for _, at := range tc.clock {
				apply(t, f, idx, st(1, at), fsm.Expire{})
				idx++
			}
			held, split := f.ExtendSplit("c1", []fsm.ExtendItem{{Key: "a", Token: 2}}, tc.at)
			r := one(t, f, idx, st(1, tc.at), ext("c1", "a", 2))
			// What a leader answers without proposing is what applying
			// it gives (adversarial review s36: an expired holding's
			// holder was named).
			if len(held) == 1 && r.Code != fsm.Extended || len(held) == 0 && (split[0].Code != r.Code || split[0].Holder != r.Holder || split[0].Token != r.Token) {
				t.Errorf("ExtendSplit: held %v, %+v; applied: %+v", held, split[0], r)
			}
			if r.Code != tc.want {
				t.Fatalf("extend: %+v, want %v", r, tc.want)
			}
			if r.Code == fsm.Extended && r.Expiry != tc.at+5*s {
				t.Fatalf("extended to %v, want %v", r.Expiry, tc.at+5*s)
			}
			if r.Code == fsm.NotHeld && r.Holder != "" {
				t.Fatalf("an expired lease reported as held: %+v", r)
			}
		})
	}
}

// TestMonotonicToken: tokens are the granting entry's index, strictly
// increasing per key and cluster-wide; retries and extends keep them.
func TestMonotonicToken(t *testing.T) {
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	var last uint64
	perKey := map[string]uint64{}
	check := func(idx uint64, r fsm.Result, retry bool) {
		t.Helper()
		if r.Code != fsm.Granted {
			t.Fatalf("entry %d: %+v", idx, r)
		}
		if retry {
			if r.Token != perKey[r.Key] || !r.Retry {
				t.Fatalf("retry at %d: %+v, want token %d", idx, r, perKey[r.Key])
			}
			return
		}
		if r.Token != idx || r.Token <= last || r.Token <= perKey[r.Key] {
			t.Fatalf("grant at %d: token %d (last %d, key's last %d)", idx, r.Token, last, perKey[r.Key])
		}
		last, perKey[r.Key] = r.Token, r.Token
	}
	idx := uint64(2)
	now := time.Duration(0)
	for round := range 20 {
		for i, k := range []string{"a", "b", "c"} {
			h := []string{"c1", "c2"}[(round+i)%2]
			check(idx, one(t, f, idx, st(1, now), acq(k, h, uint64(round+1), s, 0)), false)
			idx++
			check(idx, one(t, f, idx, st(1, now), acq(k, h, uint64(round+1), s, 0)), true)
			idx++
			if r := one(t, f, idx, st(1, now), ext(h, k, int(perKey[k]))); r.Token != perKey[k] {
				t.Fatalf("extend changed the token: %+v", r)
			}
			idx++
		}
		now += 2 * s // everything expires; the next round takes over
	}
}

// TestWrongEpoch: commands stamped with another epoch change nothing.
func TestWrongEpoch(t *testing.T) {
	cmds := []fsm.Command{
		acq("b", "c2", 1, s, 0),
		ext("c1", "a", 2),
		rel("a", "c1", 2),
		fsm.Expire{},
		&fsm.Batch{Cmds: []fsm.Command{rel("a", "c1", 2), acq("a", "c2", 1, s, 0)}},
	}
	for _, cmd := range cmds {
		for _, epoch := range []uint64{0, 1, 3, 1 << 63} {
			f := fsm.New(fsm.Config{})
			one(t, f, 1, st(2, 0), fsm.Promote{})
			one(t, f, 2, st(2, 0), acq("a", "c1", 1, 5*s, 0))
			before := allLeases(f)
			r := apply(t, f, 3, st(epoch, 100*s), cmd)
			if len(r.Results) != 1 || r.Results[0].Code != fsm.WrongEpoch || r.Epoch != 2 || r.Now != 0 {
				t.Fatalf("%s at epoch %d: %+v", cmd.Type(), epoch, r)
			}
			if after := allLeases(f); !reflect.DeepEqual(before, after) {
				t.Fatalf("%s at epoch %d changed the state: %+v", cmd.Type(), epoch, after)
			}
			if e, now := f.Clock(); e != 2 || now != 0 {
				t.Fatalf("%s at epoch %d moved the clock to %d/%v", cmd.Type(), epoch, e, now)
			}
		}
	}
}

// TestClockTakesMax: within an epoch the clock never goes back, whatever
// the stamps say.
func TestClockTakesMax(t *testing.T) {
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 5*s), fsm.Promote{})
	stamps := []time.Duration{4 * s, 7 * s, 6 * s, 0, 7 * s, 8 * s, -time.Hour}
	want := []time.Duration{5 * s, 7 * s, 7 * s, 7 * s, 7 * s, 8 * s, 8 * s}
	for i, at := range stamps {
		r := apply(t, f, uint64(i+2), st(1, at), fsm.Expire{})
		if r.Now != want[i] {
			t.Fatalf("stamp %v: now %v, want %v", at, r.Now, want[i])
		}
	}
	// A lease granted under a backwards stamp still runs from the max.
	if r := one(t, f, 20, st(1, 1*s), acq("a", "c1", 1, s, 0)); r.Expiry != 9*s {
		t.Fatalf("granted %+v, want expiry 9s", r)
	}
}

// TestInvalidInput: every limit gives Invalid and changes nothing.
func TestInvalidInput(t *testing.T) {
	long := func(n int) string { return strings.Repeat("k", n) }
	ok := acq("a", "c1", 1, s, 0)
	with := func(mod func(*fsm.Acquire)) *fsm.Acquire { c := *ok; mod(&c); return &c }
	cases := []struct {
		name string
		cmd  fsm.Command
	}{
		{"empty key", with(func(c *fsm.Acquire) { c.Key = "" })},
		{"key over 1KiB", with(func(c *fsm.Acquire) { c.Key = long(fsm.MaxKeyLen + 1) })},
		{"empty holder", with(func(c *fsm.Acquire) { c.Holder = "" })},
		{"holder too long", with(func(c *fsm.Acquire) { c.Holder = long(fsm.MaxHolderLen + 1) })},
		{"request id 0", with(func(c *fsm.Acquire) { c.ReqID = 0 })},
		{"ttl 0", with(func(c *fsm.Acquire) { c.TTL = 0 })},
		{"ttl negative", with(func(c *fsm.Acquire) { c.TTL = -s })},
		{"ttl over MaxTTL", with(func(c *fsm.Acquire) { c.TTL = fsm.MaxTTL + 1 })},
		{"lock-delay negative", with(func(c *fsm.Acquire) { c.LockDelay = -1 })},
		{"lock-delay over MaxTTL", with(func(c *fsm.Acquire) { c.LockDelay = fsm.MaxTTL + 1 })},
		{"value over 64KiB", with(func(c *fsm.Acquire) { c.Value = make([]byte, fsm.MaxValueLen+1) })},
		{"extend no items", &fsm.Extend{Holder: "c1"}},
		{"extend empty holder", ext("", "a", 2)},
		{"extend empty key", ext("c1", "", 2)},
		{"extend token 0", ext("c1", "a", 0)},
		{"extend key over 1KiB", ext("c1", "a", 2, long(fsm.MaxKeyLen+1), 2)},
		{"release empty key", rel("", "c1", 2)},
		{"release empty holder", rel("a", "", 2)},
		{"release token 0", rel("a", "c1", 0)},
		{"empty batch", &fsm.Batch{}},
		{"batch with two acquires", &fsm.Batch{Cmds: []fsm.Command{acq("x", "c1", 9, s, 0), acq("y", "c1", 10, s, 0)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := fsm.New(fsm.Config{Events: true})
			one(t, f, 1, st(1, 0), fsm.Promote{})
			one(t, f, 2, st(1, 0), acq("a", "c1", 1, 5*s, 0))
			f.Drain(nil)
			before := allLeases(f)
			r := one(t, f, 3, st(1, s), tc.cmd)
			if r.Code != fsm.Invalid || r.Reason == "" {
				t.Fatalf("%+v, want invalid with a reason", r)
			}
			if after := allLeases(f); !reflect.DeepEqual(before, after) {
				t.Fatalf("state changed: %+v", after)
			}
			if ev := f.Drain(nil); len(ev) != 0 {
				t.Fatalf("events: %+v", ev)
			}
			if v, ok := tc.cmd.(interface{ Validate() error }); ok && v.Validate() == nil {
				t.Fatalf("Validate accepts what the FSM refuses")
			}
		})
	}
	// The limits themselves are allowed.
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	c := &fsm.Acquire{Key: long(fsm.MaxKeyLen), Holder: long(fsm.MaxHolderLen), ReqID: 1,
		TTL: fsm.MaxTTL, LockDelay: fsm.MaxTTL, Value: make([]byte, fsm.MaxValueLen)}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if r := one(t, f, 2, st(1, 0), c); r.Code != fsm.Granted {
		t.Fatalf("at the limits: %+v", r)
	}
}

// TestBatchHandover: a release and the grant to the next holder in one
// entry; the token is the batch's index.
func TestBatchHandover(t *testing.T) {
	f := fsm.New(fsm.Config{Events: true})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "c1", 1, 5*s, 3*s))
	r := apply(t, f, 3, st(1, s), &fsm.Batch{Cmds: []fsm.Command{rel("a", "c1", 2), acq("a", "c2", 1, 5*s, 0)}})
	want := []fsm.Result{
		{Code: fsm.Released, Key: "a", Token: 2},
		{Code: fsm.Granted, Key: "a", Token: 3, Expiry: 6 * s},
	}
	if !reflect.DeepEqual(r.Results, want) {
		t.Fatalf("got %+v\nwant %+v", r.Results, want)
	}
	if l, _ := f.Get("a"); l.Holder != "c2" || l.Token != 3 {
		t.Fatalf("record %+v", l)
	}
	// Without the release first, the acquire in the batch is refused.
	r = apply(t, f, 4, st(1, s), &fsm.Batch{Cmds: []fsm.Command{acq("a", "c3", 1, 5*s, 0), rel("a", "c2", 3)}})
	if r.Results[0].Code != fsm.Held || r.Results[1].Code != fsm.Released {
		t.Fatalf("%+v", r.Results)
	}
	if _, ok := f.Get("a"); ok {
		t.Fatal("a still held")
	}
}

// TestList: prefix, pagination and order.
func TestList(t *testing.T) {
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	keys := []string{"a", "b/1", "b/2", "b/3", "b/4", "b/5", "ba", "c"}
	for i, k := range keys {
		one(t, f, uint64(i+2), st(1, 0), acq(k, "c1", uint64(i+1), s, 0))
	}
	names := func(ls []fsm.Lease) string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Key)
		}
		return strings.Join(out, ",")
	}
	cases := []struct {
		prefix, after string
		limit         int
		want, next    string
	}{
		{"", "", 0, "a,b/1,b/2,b/3,b/4,b/5,ba,c", ""},
		{"b/", "", 0, "b/1,b/2,b/3,b/4,b/5", ""},
		{"b/", "", 2, "b/1,b/2", "b/2"},
		{"b/", "b/2", 2, "b/3,b/4", "b/4"},
		{"b/", "b/4", 2, "b/5", ""},
		{"b/", "b/5", 2, "", ""},
		{"b/", "b/5", 1, "", ""},
		{"b/", "a", 2, "b/1,b/2", "b/2"},
		{"b/", "c", 2, "", ""},
		{"b", "", 10, "b/1,b/2,b/3,b/4,b/5,ba", ""},
		{"", "b/5", 0, "ba,c", ""},
		{"", "", 8, "a,b/1,b/2,b/3,b/4,b/5,ba,c", ""},
		{"", "", 7, "a,b/1,b/2,b/3,b/4,b/5,ba", "ba"},
		{"zz", "", 0, "", ""},
	}
	for _, tc := range cases {
		got, next := f.List(tc.prefix, tc.after, tc.limit)
		if names(got) != tc.want || next != tc.next {
			t.Errorf("List(%q, %q, %d) = %q, %q; want %q, %q", tc.prefix, tc.after, tc.limit, names(got), next, tc.want, tc.next)
		}
	}
}

// TestStats counts held and delayed records.
func TestStats(t *testing.T) {
	f := fsm.New(fsm.Config{})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "c1", 1, s, 5*s))
	one(t, f, 3, st(1, 0), acq("b", "c1", 2, 10*s, 0))
	apply(t, f, 4, st(1, 2*s), fsm.Expire{})
	got := f.Stats()
	// One mark: a's holding ended (expired into lock-delay); b's is live
	// and needs none. Bytes: keys and holders ("a"+"c1", "b"+"c1"); the
	// mark's: "a"+"c1".
	want := fsm.Stats{Epoch: 1, Now: 2 * s, Applied: 4, Held: 1, Delayed: 1, Keys: 2, Marks: 1, Bytes: 6, MarkBytes: 3}
	if got != want {
		t.Fatalf("%+v, want %+v", got, want)
	}
	if due, ok := f.NextExpiry(); !ok || due != 6*s {
		t.Fatalf("next expiry %v %v", due, ok)
	}
}
