package fsm_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// workload returns n log entries from a fixed seed: promotes, acquires,
// extends, releases, expires and batches over a few dozen keys, with some
// non-command entries and some malformed ones mixed in. Indexes start at 1.
func workload(seed uint64, n int) []*raft.Log {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var logs []*raft.Log
	epoch := uint64(1)
	now := time.Duration(0)
	tokens := map[string]uint64{}
	holderOf := map[string]string{}
	req := uint64(0)
	var past []*fsm.Acquire
	key := func() string { return fmt.Sprintf("k%02d", rng.IntN(40)) }
	holder := func() string { return fmt.Sprintf("h%d", rng.IntN(6)) }
	for i := 1; i <= n; i++ {
		idx := uint64(i)
		now += time.Duration(rng.IntN(400)-50) * ms
		var cmd fsm.Command
		switch k := rng.IntN(100); {
		case i == 1 || k < 2:
			if i > 1 {
				epoch++
				now = time.Duration(rng.IntN(1000)) * ms
			}
			cmd = fsm.Promote{}
		case k < 5:
			typ := []raft.LogType{raft.LogNoop, raft.LogBarrier, raft.LogConfiguration}[rng.IntN(3)]
			logs = append(logs, &raft.Log{Type: typ, Index: idx, Data: []byte{1, 2, 3}})
			continue
		case k < 6:
			// Malformed but checksummed (a damaged checksum would stop
			// the FSM): a body cut short, or version 1 cut short.
			data := fsm.Encode(fsm.Stamp{Epoch: epoch, Now: now}, acq(key(), holder(), 1, s, 0))
			unsigned := data[:len(data)-4]
			data = signed(unsigned[:1+rng.IntN(len(unsigned)-1)])
			if rng.IntN(2) == 0 {
				data = asVersion1(data)
			}
			logs = append(logs, &raft.Log{Type: raft.LogCommand, Index: idx, Data: data})
			continue
		case k < 45 && len(past) > 0 && rng.IntN(6) == 0:
			// A delayed copy of an earlier acquire: mostly Stale now.
			c := *past[rng.IntN(len(past))]
			cmd = &c
		case k < 45:
			req++
			c := acq(key(), holder(), req, time.Duration(1+rng.IntN(5))*s, time.Duration(rng.IntN(3))*s)
			if rng.IntN(3) == 0 {
				c.Value = []byte(fmt.Sprintf("value-%d", i))
			}
			// Shapes: keys k00-k09 shared, k10-k19 semaphores of 3, and
			// some multi-key grants.
			switch n := c.Key[1] - '0'; {
			case n == 0 && rng.IntN(4) > 0:
				c.Mode = fsm.ModeShared
			case n == 1 && rng.IntN(4) > 0:
				c.Mode, c.Limit = fsm.ModeSemaphore, 3
			}
			for range rng.IntN(3) / 2 * (1 + rng.IntN(3)) {
				it := fsm.Item{Key: key()}
				if it.Key[1] == '0' {
					it.Mode = fsm.ModeShared
				}
				if it.Key != c.Key {
					c.More = append(c.More, it)
				}
			}
			if h, ok := holderOf[c.Key]; ok && rng.IntN(3) == 0 {
				c.Holder = h // a retry or renewal by the holder
				c.ReqID = req - uint64(rng.IntN(2))
			}
			holderOf[c.Key], tokens[c.Key] = c.Holder, idx
			past = append(past, c)
			cmd = c
		case k < 70:
			h := holder()
			c := &fsm.Extend{Holder: h}
			for range 1 + rng.IntN(4) {
				k := key()
				if rng.IntN(2) == 0 {
					c.Holder = holderOf[k]
				}
				c.Items = append(c.Items, fsm.ExtendItem{Key: k, Token: max(tokens[k], 1)})
			}
			if c.Holder == "" {
				c.Holder = h
			}
			cmd = c
		case k < 79:
			k := key()
			if h := holderOf[k]; h != "" {
				cmd = rel(k, h, tokens[k])
			} else {
				cmd = rel(k, holder(), 1)
			}
		case k < 82:
			k := key()
			cmd = &fsm.Cancel{Key: k, Holder: max(holderOf[k], holder()), ReqID: max(req-uint64(rng.IntN(3)), 1)}
		case k < 92:
			cmd = fsm.Expire{}
		default:
			k := key()
			req++
			cmd = &fsm.Batch{Cmds: []fsm.Command{
				fsm.Expire{},
				rel(k, max(holderOf[k], "h0"), max(tokens[k], 1)),
				acq(k, holder(), req, 2*s, 0),
			}}
		}
		e := epoch
		if rng.IntN(50) == 0 {
			e-- // a deposed leader's entry
		}
		logs = append(logs, &raft.Log{Type: raft.LogCommand, Index: idx, Data: fsm.Encode(fsm.Stamp{Epoch: e, Now: now}, cmd)})
	}
	return logs
}

// TestFSMDeterminism: fsm-determinism. Two FSMs fed the same entries, one
// through Apply and one through ApplyBatch in uneven chunks, give the same
// results and byte-identical snapshots; snapshot → Restore → snapshot is
// byte-identical, and the restored FSM goes on exactly like the original.
func TestFSMDeterminism(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			logs := workload(seed, 3000)
			first, rest := logs[:2000], logs[2000:]
			a := fsm.New(fsm.Config{Events: true})
			b := fsm.New(fsm.Config{})
			var outA, outB []interface{}
			for _, l := range first {
				outA = append(outA, a.Apply(l))
			}
			rng := rand.New(rand.NewPCG(seed, 0))
			for i := 0; i < len(first); {
				n := min(1+rng.IntN(64), len(first)-i)
				outB = append(outB, b.ApplyBatch(first[i:i+n])...)
				i += n
			}
			if !reflect.DeepEqual(outA, outB) {
				for i := range outA {
					if !reflect.DeepEqual(outA[i], outB[i]) {
						t.Fatalf("entry %d: Apply %+v, ApplyBatch %+v", i+1, outA[i], outB[i])
					}
				}
			}
			checkWorkloadCoverage(t, outA)
			snapA, snapB := snapshotBytes(t, a), snapshotBytes(t, b)
			if !bytes.Equal(snapA, snapB) {
				t.Fatal("Apply and ApplyBatch FSMs wrote different snapshots")
			}
			c := fsm.New(fsm.Config{})
			if err := restoreBytes(c, snapA); err != nil {
				t.Fatal(err)
			}
			if snapC := snapshotBytes(t, c); !bytes.Equal(snapA, snapC) {
				t.Fatal("snapshot → Restore → snapshot differs")
			}
			if a.Stats() != c.Stats() {
				t.Fatalf("stats: %+v vs restored %+v", a.Stats(), c.Stats())
			}
			// The restored FSM (whose expiry heap was rebuilt in another
			// shape) continues identically.
			for _, l := range rest {
				ra, rc := a.Apply(l), c.Apply(l)
				if !reflect.DeepEqual(ra, rc) {
					t.Fatalf("entry %d after restore: %+v vs %+v", l.Index, ra, rc)
				}
			}
			if !bytes.Equal(snapshotBytes(t, a), snapshotBytes(t, c)) {
				t.Fatal("original and restored FSMs diverged")
			}
		})
	}
}

// checkWorkloadCoverage makes sure the workload reaches the interesting
// outcomes, so the determinism test does not pass vacuously.
func checkWorkloadCoverage(t *testing.T, out []interface{}) {
	t.Helper()
	seen := map[fsm.Code]int{}
	for _, o := range out {
		if r, ok := o.(*fsm.Response); ok {
			for _, res := range r.Results {
				seen[res.Code]++
			}
		}
	}
	for _, c := range []fsm.Code{fsm.Granted, fsm.Extended, fsm.Released, fsm.Held, fsm.NotHeld,
		fsm.Stale, fsm.WrongEpoch, fsm.Invalid, fsm.Promoted, fsm.Expired} {
		if seen[c] == 0 {
			t.Errorf("workload never produced %v (%v)", c, seen)
		}
	}
}

// TestNonCommandEntries: configuration, no-op and barrier entries return
// nil and change nothing but the applied index, even when leases are due.
func TestNonCommandEntries(t *testing.T) {
	f := fsm.New(fsm.Config{Events: true})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "c1", 1, s, 0))
	one(t, f, 3, st(1, 5*s), acq("b", "c1", 2, s, 2*s)) // a is overdue
	f.Drain(nil)
	leases, stats := allLeases(f), f.Stats()
	due, _ := f.NextExpiry()
	types := []raft.LogType{raft.LogNoop, raft.LogBarrier, raft.LogConfiguration, raft.LogAddPeerDeprecated, raft.LogRemovePeerDeprecated}
	for i, typ := range types {
		idx := uint64(10 + i)
		data := fsm.Encode(st(1, time.Hour), fsm.Expire{}) // must not be decoded
		if out := f.Apply(&raft.Log{Type: typ, Index: idx, Data: data}); out != nil {
			t.Fatalf("%v: Apply returned %+v, want nil", typ, out)
		}
		stats.Applied = idx
		if got := f.Stats(); got != stats {
			t.Fatalf("%v: stats %+v, want %+v", typ, got, stats)
		}
		if got := allLeases(f); !reflect.DeepEqual(got, leases) {
			t.Fatalf("%v changed the records: %+v", typ, got)
		}
		if d, _ := f.NextExpiry(); d != due {
			t.Fatalf("%v: next expiry %v, want %v", typ, d, due)
		}
	}
	// The same through ApplyBatch, mixed with commands.
	out := f.ApplyBatch([]*raft.Log{
		{Type: raft.LogBarrier, Index: 20},
		entry(21, st(1, 5*s), fsm.Expire{}),
		{Type: raft.LogConfiguration, Index: 22, Data: []byte("junk")},
	})
	if out[0] != nil || out[2] != nil {
		t.Fatalf("ApplyBatch: %+v", out)
	}
	if r, ok := out[1].(*fsm.Response); !ok || len(r.Results) != 1 || r.Results[0].Key != "a" {
		t.Fatalf("ApplyBatch command result: %+v", out[1])
	}
	if got := f.Stats().Applied; got != 22 {
		t.Fatalf("applied %d, want 22", got)
	}
	for _, e := range f.Drain(nil) {
		if e.Index != 21 {
			t.Fatalf("event from a non-command entry: %+v", e)
		}
	}
	// A command entry without data is Invalid, not nil.
	r := f.Apply(&raft.Log{Type: raft.LogCommand, Index: 23})
	if resp, ok := r.(*fsm.Response); !ok || resp.Results[0].Code != fsm.Invalid {
		t.Fatalf("empty command entry: %+v", r)
	}
}
