package fsm_test

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// Speed and memory targets live here, never in timed unit tests. Every
// Apply benchmark goes through Apply with encoded bytes, so decoding is
// included, as it is under Raft.

func benchKey(i int) string    { return "lease/" + strconv.Itoa(i) }
func benchHolder(i int) string { return "client-" + strconv.Itoa(i%1000) }

// reportRate reports commands (and optionally leases) per second.
func reportRate(b *testing.B, leasesPerCmd int) {
	sec := b.Elapsed().Seconds()
	if sec <= 0 {
		return
	}
	b.ReportMetric(float64(b.N)/sec, "cmds/s")
	if leasesPerCmd > 1 {
		b.ReportMetric(float64(b.N*leasesPerCmd)/sec, "leases/s")
	}
}

func mustCode(b *testing.B, out interface{}, want fsm.Code) {
	r, ok := out.(*fsm.Response)
	if !ok || len(r.Results) == 0 || r.Results[0].Code != want {
		b.Fatalf("got %+v, want %v", out, want)
	}
}

// BenchmarkApplyAcquire: grants of fresh keys (the FSM grows by one lease
// per op).
func BenchmarkApplyAcquire(b *testing.B) {
	f := fsm.New(fsm.Config{})
	f.ApplyCommand(1, st(1, 0), fsm.Promote{})
	logs := make([]raft.Log, b.N)
	for i := range logs {
		logs[i] = *entry(uint64(i+2), st(1, time.Duration(i)), acq(benchKey(i), benchHolder(i), uint64(i+1), time.Minute, 0))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range logs {
		f.Apply(&logs[i])
	}
	b.StopTimer()
	reportRate(b, 1)
	if b.N > 0 {
		mustCode(b, f.Apply(entry(uint64(b.N+2), st(1, 0), acq(benchKey(0), "x", 1, time.Minute, 0))), fsm.Held)
	}
}

// BenchmarkApplyExtend100: one holder extends 100 leases in one entry
// (the client's coalesced extend); 100 holders own 10,000 leases.
func BenchmarkApplyExtend100(b *testing.B) {
	const holders, per = 100, 100
	f := fsm.New(fsm.Config{})
	f.ApplyCommand(1, st(1, 0), fsm.Promote{})
	idx := uint64(1)
	cmds := make([][]byte, holders)
	for h := range holders {
		c := &fsm.Extend{Holder: benchHolder(h)}
		for i := range per {
			idx++
			k := benchKey(h*per + i)
			if r := f.ApplyCommand(idx, st(1, 0), acq(k, c.Holder, idx, time.Hour, 0)); r.Results[0].Code != fsm.Granted {
				b.Fatalf("setup: %+v", r.Results)
			}
			c.Items = append(c.Items, fsm.ExtendItem{Key: k, Token: idx})
		}
		cmds[h] = fsm.Encode(st(1, time.Second), c)
	}
	mustCode(b, f.Apply(&raft.Log{Type: raft.LogCommand, Index: idx + 1, Data: cmds[0]}), fsm.Extended)
	log := raft.Log{Type: raft.LogCommand}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		log.Index = idx + 2 + uint64(i)
		log.Data = cmds[i%holders]
		f.Apply(&log)
	}
	b.StopTimer()
	reportRate(b, per)
}

// BenchmarkApplyExtend1M: 10,000 holders of 100 leases each, a million in
// all (the soak of node's BenchmarkMillion), extend in turn, one entry of
// 100 items each, a logical millisecond apart: every extend moves its
// leases from the front of the expiry order to its end.
func BenchmarkApplyExtend1M(b *testing.B) {
	const holders, per = 10_000, 100
	f := fsm.New(fsm.Config{})
	f.ApplyCommand(1, st(1, 0), fsm.Promote{})
	idx := uint64(1)
	for h := range holders {
		for i := range per {
			idx++
			if r := f.ApplyCommand(idx, st(1, 0), acq(benchKey(h*per+i), benchHolder(h), idx, time.Hour, 0)); r.Results[0].Code != fsm.Granted {
				b.Fatalf("setup: %+v", r.Results)
			}
		}
	}
	entryFor := func(i int) []byte {
		h := i % holders
		c := &fsm.Extend{Holder: benchHolder(h)}
		for j := range per {
			c.Items = append(c.Items, fsm.ExtendItem{Key: benchKey(h*per + j), Token: uint64(2 + h*per + j)})
		}
		return fsm.Encode(st(1, time.Duration(1+i)*time.Millisecond), c)
	}
	const chunk = 4096
	data := make([][]byte, chunk)
	log := raft.Log{Type: raft.LogCommand, Index: idx}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%chunk == 0 { // encode the next entries outside the clock
			b.StopTimer()
			for j := range data {
				data[j] = entryFor(i + j)
			}
			b.StartTimer()
		}
		log.Index++
		log.Data = data[i%chunk]
		f.Apply(&log)
	}
	b.StopTimer()
	mustCode(b, f.Apply(&raft.Log{Type: raft.LogCommand, Index: log.Index + 1, Data: entryFor(b.N)}), fsm.Extended)
	reportRate(b, per)
}

// BenchmarkApplyRelease: releases of held leases (the FSM shrinks by one
// lease per op).
func BenchmarkApplyRelease(b *testing.B) {
	f := fsm.New(fsm.Config{})
	f.ApplyCommand(1, st(1, 0), fsm.Promote{})
	logs := make([]raft.Log, b.N)
	for i := range b.N {
		tok := uint64(i + 2)
		f.ApplyCommand(tok, st(1, 0), acq(benchKey(i), benchHolder(i), uint64(i+1), time.Minute, 0))
		logs[i] = *entry(uint64(b.N+2+i), st(1, 0), rel(benchKey(i), benchHolder(i), tok))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range logs {
		f.Apply(&logs[i])
	}
	b.StopTimer()
	reportRate(b, 1)
	if st := f.Stats(); st.Held != 0 {
		b.Fatalf("%d leases left", st.Held)
	}
}

// BenchmarkApplyAcquireSet: multi-key grants of fresh keys, k keys per
// entry (set-atomicity costs one check and one record per key); leases/s
// counts the keys granted.
func BenchmarkApplyAcquireSet(b *testing.B) {
	for _, k := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("keys=%d", k), func(b *testing.B) {
			f := fsm.New(fsm.Config{})
			f.ApplyCommand(1, st(1, 0), fsm.Promote{})
			logs := make([]raft.Log, b.N)
			for i := range logs {
				c := acq(benchKey(i*k), benchHolder(i), uint64(i+1), time.Minute, 0)
				for j := 1; j < k; j++ {
					c.More = append(c.More, fsm.Item{Key: benchKey(i*k + j)})
				}
				logs[i] = *entry(uint64(i+2), st(1, time.Duration(i)), c)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range logs {
				f.Apply(&logs[i])
			}
			b.StopTimer()
			reportRate(b, k)
			if b.N > 0 && f.Stats().Held != b.N*k {
				b.Fatalf("%d holdings, want %d", f.Stats().Held, b.N*k)
			}
		})
	}
}

// BenchmarkApplyReleaseSet: releases of 4-key grants (one Release frees
// the whole set).
func BenchmarkApplyReleaseSet(b *testing.B) {
	const k = 4
	f := fsm.New(fsm.Config{})
	f.ApplyCommand(1, st(1, 0), fsm.Promote{})
	logs := make([]raft.Log, b.N)
	for i := range b.N {
		tok := uint64(i + 2)
		c := acq(benchKey(i*k), benchHolder(i), uint64(i+1), time.Minute, 0)
		for j := 1; j < k; j++ {
			c.More = append(c.More, fsm.Item{Key: benchKey(i*k + j)})
		}
		f.ApplyCommand(tok, st(1, 0), c)
		logs[i] = *entry(uint64(b.N+2+i), st(1, 0), rel(benchKey(i*k+k-1), benchHolder(i), tok))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range logs {
		f.Apply(&logs[i])
	}
	b.StopTimer()
	reportRate(b, k)
	if st := f.Stats(); st.Held != 0 {
		b.Fatalf("%d leases left", st.Held)
	}
}

// BenchmarkApplySharedKey: shared grants and releases on one key that
// already has r readers (a holder's own holding is found by a scan of the
// key's holdings, so this is the cost of a crowded key).
func BenchmarkApplySharedKey(b *testing.B) {
	for _, readers := range []int{10, 1000} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			f := fsm.New(fsm.Config{})
			f.ApplyCommand(1, st(1, 0), fsm.Promote{})
			idx := uint64(1)
			for i := range readers {
				idx++
				c := acq("shared", "reader-"+strconv.Itoa(i), 1, time.Hour, 0)
				c.Mode = fsm.ModeShared
				f.ApplyCommand(idx, st(1, 0), c)
			}
			logs := make([]raft.Log, 2*b.N)
			for i := range b.N {
				c := acq("shared", "bench", uint64(i+1), time.Hour, 0)
				c.Mode = fsm.ModeShared
				tok := idx + uint64(2*i+1)
				logs[2*i] = *entry(tok, st(1, 0), c)
				logs[2*i+1] = *entry(tok+1, st(1, 0), rel("shared", "bench", tok))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range logs {
				f.Apply(&logs[i])
			}
			b.StopTimer()
			reportRate(b, 2)
			if st := f.Stats(); st.Held != readers {
				b.Fatalf("%d holdings, want %d", st.Held, readers)
			}
		})
	}
}

const million = 1_000_000

var (
	bigOnce sync.Once
	bigFSM  *fsm.FSM
	bigSnap []byte
)

// big returns a shared FSM with about a million leases (a tenth with a
// value, two thirds with a lock-delay, a few thousand in lock-delay) and
// its snapshot.
// It is built once per process with ApplyCommand, outside any timer.
func big(b *testing.B) (*fsm.FSM, []byte) {
	b.StopTimer()
	defer b.StartTimer()
	bigOnce.Do(func() {
		start := time.Now()
		f := fsm.New(fsm.Config{})
		f.ApplyCommand(1, st(1, 0), fsm.Promote{})
		value := []byte("10.0.0.17:8080")
		c := &fsm.Acquire{}
		for i := range million {
			*c = fsm.Acquire{Key: benchKey(i), Holder: benchHolder(i), ReqID: uint64(i + 1),
				TTL: time.Duration(10+i%50) * time.Second, LockDelay: time.Duration(i%3) * time.Second}
			if i%10 == 0 {
				c.Value = value
			}
			if i < 5000 {
				c.TTL = time.Second
			}
			f.ApplyCommand(uint64(i+2), st(1, 0), c)
		}
		f.ApplyCommand(million+2, st(1, 1500*time.Millisecond), fsm.Expire{})
		bigFSM = f
		snap, err := persist(f)
		if err != nil {
			panic(err)
		}
		bigSnap = snap
		runtime.GC()
		b.Logf("built %d leases (%d delayed) in %v; snapshot %.1f MB", f.Stats().Held+f.Stats().Delayed,
			f.Stats().Delayed, time.Since(start).Round(time.Millisecond), float64(len(snap))/(1<<20))
	})
	if bigFSM == nil {
		b.Fatal("building the 1M-lease FSM failed earlier")
	}
	return bigFSM, bigSnap
}

// heapPeak samples the heap's object bytes every half millisecond (with
// runtime/metrics, which does not stop the world) until stopped.
type heapPeak struct {
	stop, done chan struct{}
	peak       uint64
}

var heapMetric = "/memory/classes/heap/objects:bytes"

func heapNow() uint64 {
	s := []metrics.Sample{{Name: heapMetric}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startHeapPeak() *heapPeak {
	h := &heapPeak{stop: make(chan struct{}), done: make(chan struct{}), peak: heapNow()}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				h.peak = max(h.peak, heapNow())
				return
			case <-tick.C:
				h.peak = max(h.peak, heapNow())
			}
		}
	}()
	return h
}

func (h *heapPeak) Stop() uint64 {
	close(h.stop)
	<-h.done
	return h.peak
}

// measure runs op b.N times with a GC before each (untimed) and reports
// milliseconds per op, the peak heap, and the peak above the heap before
// the op.
func measure(b *testing.B, op func(i int)) {
	var peak, growth uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		runtime.GC()
		base := heapNow()
		h := startHeapPeak()
		b.StartTimer()
		op(i)
		b.StopTimer()
		p := h.Stop()
		peak = max(peak, p)
		growth = max(growth, p-min(p, base))
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(growth)/(1<<20), "extra-heap-MB")
}

// countSink is a raft.SnapshotSink that keeps nothing.
type countSink struct{ n int64 }

func (c *countSink) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
func (c *countSink) Close() error                { return nil }
func (c *countSink) Cancel() error               { return nil }
func (c *countSink) ID() string                  { return "count" }

// BenchmarkSnapshot1M: Snapshot (which holds the FSM's read lock and so
// stalls Apply) plus Persist of a million leases. lock-ms/op is the part
// under the lock.
func BenchmarkSnapshot1M(b *testing.B) {
	f, _ := big(b)
	var locked time.Duration
	var size int64
	measure(b, func(int) {
		start := time.Now()
		snap, err := f.Snapshot()
		locked += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		var sink countSink
		if err := snap.Persist(&sink); err != nil {
			b.Fatal(err)
		}
		snap.Release()
		size = sink.n
	})
	b.ReportMetric(float64(locked.Microseconds())/1000/float64(b.N), "lock-ms/op")
	b.ReportMetric(float64(size)/(1<<20), "snapshot-MB")
}

// BenchmarkRestore1M: Restore of a million-lease snapshot into a new FSM.
func BenchmarkRestore1M(b *testing.B) {
	src, snap := big(b)
	want := src.Stats()
	measure(b, func(int) {
		// (Only the stats outlive the op, so the next op's GC frees this
		// FSM and the peak measures one restore.)
		f := fsm.New(fsm.Config{})
		if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
			b.Fatal(err)
		}
		if got := f.Stats(); got.Held != want.Held || got.Delayed != want.Delayed || got.Applied != want.Applied {
			b.Fatalf("restored %+v, want %+v", got, want)
		}
	})
}

// BenchmarkPromote1M: the rebase of a million leases (and the expiry
// heap's rebuild) when a new leader's Promote applies.
func BenchmarkPromote1M(b *testing.B) {
	f, _ := big(b)
	epoch, _ := f.Clock()
	index := f.Stats().Applied
	measure(b, func(i int) {
		out := f.Apply(entry(index+uint64(i)+1, st(epoch+uint64(i)+1, 0), fsm.Promote{}))
		mustCode(b, out, fsm.Promoted)
	})
}

// BenchmarkMarkMemory: the memory a request-id mark costs, everything
// included (the mark, its own copies of a 30-byte key and a 60-byte holder
// as a decoded command leaves them, its slots in the btree and the heap),
// measured as live heap growth over 200,000 marks left by acquire+release
// pairs (which leave no record behind): bytes/mark. (A live holding has no
// mark of its own: its record carries the request id.)
func BenchmarkMarkMemory(b *testing.B) {
	const n = 200_000
	keys := make([]string, n)
	holders := make([]string, n)
	for i := range n {
		keys[i] = fmt.Sprintf("locks/%024d", i)
		holders[i] = fmt.Sprintf("client-%053d", i%1000)
		if len(keys[i]) != 30 || len(holders[i]) != 60 {
			b.Fatal("bad sizes")
		}
	}
	var perMark float64
	b.ReportAllocs()
	for range b.N {
		runtime.GC()
		before := heapNow()
		f := fsm.New(fsm.Config{})
		f.ApplyCommand(1, st(1, 0), fsm.Promote{})
		for i := range n {
			idx := uint64(2 + 2*i)
			// Fresh copies, as decoding each entry makes them.
			key, holder := strings.Clone(keys[i]), strings.Clone(holders[i])
			f.ApplyCommand(idx, st(1, 0), acq(key, holder, uint64(i+1), time.Minute, 0))
			f.ApplyCommand(idx+1, st(1, 0), rel(key, holder, idx))
		}
		runtime.GC()
		after := heapNow()
		if got := f.Stats(); got.Marks != n || got.Held != 0 {
			b.Fatalf("stats %+v", got)
		}
		runtime.KeepAlive(f)
		perMark = float64(after-before) / n
	}
	b.ReportMetric(perMark, "bytes/mark")
}
