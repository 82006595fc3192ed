package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/fsm"
)

// snapshotMagic is the documented magic of snapshot format 1.
const snapshotMagic = "LNSNAP\x00\x01"

// richFSM returns an FSM with n held leases (with values, some with
// lock-delay, some Seen) and a few keys in lock-delay, at epoch 3.
func richFSM(t tb, n int, cfg fsm.Config) *fsm.FSM {
	t.Helper()
	f := fsm.New(cfg)
	idx := uint64(1)
	one(t, f, idx, st(3, 0), fsm.Promote{})
	for i := range n {
		idx++
		c := acq(fmt.Sprintf("key/%06d", i), fmt.Sprintf("holder-%d", i%7), uint64(i+1), time.Duration(1+i%9)*s, time.Duration(i%3)*s)
		if i%2 == 0 {
			c.Value = []byte(strings.Repeat("v", i%50))
		}
		if r := one(t, f, idx, st(3, time.Duration(i)*ms), c); r.Code != fsm.Granted {
			t.Fatalf("setup: %+v", r)
		}
		if i%5 == 0 { // a retry: the lease is Seen
			idx++
			if r := one(t, f, idx, st(3, time.Duration(i)*ms), c); !r.Retry {
				t.Fatalf("setup retry: %+v", r)
			}
		}
	}
	// Let the shortest leases expire into lock-delay.
	idx++
	apply(t, f, idx, st(3, time.Duration(n)*ms+2500*ms), fsm.Expire{})
	if f.Stats().Delayed == 0 && n > 10 {
		t.Fatal("setup: no key in lock-delay")
	}
	return f
}

// frames returns the [start, end) offsets of each frame of a snapshot.
func frames(t tb, snap []byte) [][2]int {
	t.Helper()
	if !bytes.HasPrefix(snap, []byte(snapshotMagic)) {
		t.Fatal("snapshot without magic")
	}
	var out [][2]int
	for off := len(snapshotMagic); off < len(snap); {
		n, k := binary.Uvarint(snap[off:])
		if k <= 0 {
			t.Fatalf("bad frame length at %d", off)
		}
		end := off + k + int(n) + 4
		out = append(out, [2]int{off, end})
		off = end
	}
	return out
}

// frame encodes one frame with a valid checksum.
func frame(payload []byte) []byte {
	b := binary.AppendUvarint(nil, uint64(len(payload)))
	b = append(b, payload...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)))
}

// TestSnapshotRoundTrip: a snapshot restores the exact state, replacing
// whatever was there, and Restore announces itself on the change feed.
func TestSnapshotRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 3000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			src := richFSM(t, n, fsm.Config{})
			snap := snapshotBytes(t, src)
			if n == 3000 && len(frames(t, snap)) < 3 {
				t.Fatalf("want a multi-frame snapshot, got %d frames", len(frames(t, snap)))
			}
			dst := fsm.New(fsm.Config{Events: true})
			one(t, dst, 1, st(9, 0), fsm.Promote{})
			one(t, dst, 2, st(9, 0), acq("gone", "c1", 1, time.Hour, 0))
			dst.Drain(nil)
			if err := restoreBytes(dst, snap); err != nil {
				t.Fatal(err)
			}
			if got, want := dst.Stats(), src.Stats(); got != want {
				t.Fatalf("stats %+v, want %+v", got, want)
			}
			if got, want := allLeases(dst), allLeases(src); !reflect.DeepEqual(got, want) {
				t.Fatal("records differ after restore")
			}
			if got, want := fsm.AllMarks(dst), fsm.AllMarks(src); !reflect.DeepEqual(got, want) || n > 0 && len(want) == 0 {
				t.Fatalf("marks differ after restore: %d, want %d", len(got), len(want))
			}
			if _, ok := dst.Get("gone"); ok && n > 0 {
				t.Fatal("restore kept a record that is not in the snapshot")
			}
			d1, ok1 := src.NextExpiry()
			d2, ok2 := dst.NextExpiry()
			if d1 != d2 || ok1 != ok2 {
				t.Fatalf("next expiry %v %v, want %v %v", d2, ok2, d1, ok1)
			}
			if !bytes.Equal(snapshotBytes(t, dst), snap) {
				t.Fatal("snapshot of the restored FSM differs")
			}
			select {
			case <-dst.Changes():
			default:
				t.Fatal("Restore did not signal Changes")
			}
			ev := dst.Drain(nil)
			want := []fsm.Event{{Type: fsm.EventRestored, Index: src.Stats().Applied}}
			if !reflect.DeepEqual(ev, want) {
				t.Fatalf("events %+v, want %+v", ev, want)
			}
		})
	}
}

// TestRestoreVersion1: a snapshot written in format version 1 (before
// request-id marks; testdata/snapshot-v1.bin, written by the code of commit
// 5c0da17) still restores, to the same records and no marks, and
// ReadBackup reads it; the next snapshot is written in the current format.
func TestRestoreVersion1(t *testing.T) {
	v1, err := os.ReadFile("testdata/snapshot-v1.bin")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/snapshot-v1.leases")
	if err != nil {
		t.Fatal(err)
	}
	f := fsm.New(fsm.Config{})
	if err := restoreBytes(f, v1); err != nil {
		t.Fatal(err)
	}
	st := f.Stats()
	var sb strings.Builder
	fmt.Fprintf(&sb, "epoch=%d now=%v applied=%d held=%d delayed=%d\n", st.Epoch, st.Now, st.Applied, st.Held, st.Delayed)
	for _, l := range allLeases(f) {
		sb.WriteString(formatLeaseV1(&l) + "\n")
	}
	if sb.String() != string(want) {
		t.Fatalf("restored:\n%s\nwant:\n%s", sb.String(), want)
	}
	if st.Marks != 0 {
		t.Fatalf("%d marks from a version-1 snapshot", st.Marks)
	}
	for _, l := range allLeases(f) {
		if !l.Seen {
			t.Fatalf("%s restored from version 1 without Seen: Cancel could release it", l.Key)
		}
	}
	if got, err := fsm.ReadBackup(bytes.NewReader(v1)); err != nil || got != st {
		t.Fatalf("ReadBackup: %+v, %v; want %+v", got, err, st)
	}
	v2 := snapshotBytes(t, f)
	if bytes.Equal(v1, v2) {
		t.Fatal("the snapshot of a restored version-1 state is still version 1")
	}
	g := fsm.New(fsm.Config{})
	if err := restoreBytes(g, v2); err != nil || !reflect.DeepEqual(allLeases(f), allLeases(g)) {
		t.Fatalf("version 1 -> restore -> snapshot -> restore: %v", err)
	}
}

// formatLeaseV1 prints what a version-1 snapshot holds of a lease.
func formatLeaseV1(l *fsm.Lease) string {
	s := fmt.Sprintf("%s: %s holder=%s req=%d token=%d ttl=%v delay=%v expiry=%v",
		showKey(l.Key), l.State, l.Holder, l.ReqID, l.Token, l.TTL, l.LockDelay, l.Expiry)
	if len(l.Value) > 0 {
		v := string(l.Value)
		if len(v) > 32 {
			v = fmt.Sprintf("<%d bytes>", len(v))
		}
		s += " value=" + v
	}
	return s
}

// TestSnapshotIsPointInTime: what Persist writes is the state when
// Snapshot was called, whatever was applied since.
func TestSnapshotIsPointInTime(t *testing.T) {
	f := richFSM(t, 200, fsm.Config{})
	want := snapshotBytes(t, f)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	idx := f.Stats().Applied
	for i := range 100 {
		apply(t, f, idx+uint64(i)+1, st(3, time.Hour), acq(fmt.Sprintf("new/%d", i), "c", 1, s, 0))
	}
	apply(t, f, idx+200, st(4, 0), fsm.Promote{})
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !bytes.Equal(sink.Bytes(), want) {
		t.Fatal("persisted snapshot saw later changes")
	}
}

// TestSnapshotPersistError: a failing sink is cancelled, not closed.
func TestSnapshotPersistError(t *testing.T) {
	snap, err := richFSM(t, 10, fsm.Config{}).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{failWrite: true}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("Persist to a failing sink succeeded")
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("sink cancelled=%v closed=%v, want cancelled only", sink.cancelled, sink.closed)
	}
}

// corruptCase is a damaged snapshot.
type corruptCase struct {
	name string
	data []byte
}

// checkCorrupt restores each case into f and requires ErrCorruptSnapshot,
// an untouched state and no event.
func checkCorrupt(t *testing.T, f *fsm.FSM, cases []corruptCase) {
	t.Helper()
	before := snapshotBytes(t, f)
	f.Drain(nil)
	for _, c := range cases {
		rc := &closeTracker{Reader: bytes.NewReader(c.data)}
		err := f.Restore(rc)
		if !errors.Is(err, fsm.ErrCorruptSnapshot) {
			t.Fatalf("%s: Restore error %v, want ErrCorruptSnapshot", c.name, err)
		}
		if !rc.closed {
			t.Fatalf("%s: Restore did not close its reader", c.name)
		}
		if ev := f.Drain(nil); len(ev) != 0 {
			t.Fatalf("%s: failed Restore emitted %d events, first %+v", c.name, len(ev), ev[0])
		}
	}
	if after := snapshotBytes(t, f); !bytes.Equal(before, after) {
		t.Fatal("a failed Restore changed the state")
	}
}

type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

// TestRestoreCorrupt: every damaged snapshot is refused with
// ErrCorruptSnapshot and leaves the previous state intact.
func TestRestoreCorrupt(t *testing.T) {
	good := snapshotBytes(t, richFSM(t, 3000, fsm.Config{}))
	small := snapshotBytes(t, richFSM(t, 12, fsm.Config{}))
	target := func() *fsm.FSM { return richFSM(t, 50, fsm.Config{Events: true}) }

	t.Run("truncated", func(t *testing.T) {
		var cases []corruptCase
		cut := func(n int) {
			cases = append(cases, corruptCase{fmt.Sprintf("cut at %d of %d", n, len(good)), good[:n]})
		}
		for n := 0; n < len(good); n++ {
			if n < 200 || n > len(good)-100 || n%499 == 0 {
				cut(n)
			}
		}
		for _, fr := range frames(t, good) {
			for _, n := range []int{fr[0] - 1, fr[0], fr[0] + 1, fr[1] - 1} {
				if n >= 0 && n < len(good) {
					cut(n)
				}
			}
		}
		for n := range len(small) {
			cases = append(cases, corruptCase{fmt.Sprintf("small cut at %d", n), small[:n]})
		}
		checkCorrupt(t, target(), cases)
	})

	t.Run("flipped byte", func(t *testing.T) {
		var cases []corruptCase
		flip := func(src []byte, i int, mask byte) {
			b := bytes.Clone(src)
			b[i] ^= mask
			cases = append(cases, corruptCase{fmt.Sprintf("byte %d of %d ^ %#x", i, len(src), mask), b})
		}
		for i := range small {
			for _, m := range []byte{0x01, 0x80, 0xff} {
				flip(small, i, m)
			}
		}
		for i := 0; i < len(good); i += 997 {
			flip(good, i, 0x04)
		}
		for _, fr := range frames(t, good) {
			flip(good, fr[0], 0x01)   // frame length
			flip(good, fr[1]-1, 0x01) // checksum
		}
		checkCorrupt(t, target(), cases)
	})

	t.Run("garbage", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 7))
		cases := []corruptCase{
			{"empty stream", nil},
			{"wrong magic version", append([]byte("LNSNAP\x00\x02"), good[len(snapshotMagic):]...)},
			{"wrong magic", append([]byte("XNSNAP\x00\x01"), good[len(snapshotMagic):]...)},
			{"magic only", []byte(snapshotMagic)},
			{"text", []byte("this is not a snapshot at all")},
			{"trailing byte", append(bytes.Clone(good), 0)},
			{"trailing frame", append(bytes.Clone(small), frame([]byte{1, 0})...)},
			{"snapshot twice", append(bytes.Clone(small), small...)},
		}
		for i := range 200 {
			b := make([]byte, rng.IntN(2000))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			if i%2 == 1 {
				b = append([]byte(snapshotMagic), b...)
			}
			cases = append(cases, corruptCase{fmt.Sprintf("garbage %d", i), b})
		}
		checkCorrupt(t, target(), cases)
	})

	// Damage that the checksums cannot see: frames re-signed after the
	// change, so only Restore's own checks stand between them and the state.
	t.Run("valid checksums, bad content", func(t *testing.T) {
		hdr := func(version, epoch, now, applied, count uint64) []byte {
			b := binary.AppendUvarint(nil, version)
			b = binary.AppendUvarint(b, epoch)
			b = binary.AppendVarint(b, int64(now))
			b = binary.AppendUvarint(b, applied)
			return binary.AppendUvarint(b, count)
		}
		type rec struct {
			key, holder        string
			req, token         uint64
			ttl, delay, expiry time.Duration
			state              byte
		}
		ok := rec{"a", "c1", 1, 2, s, 0, s, 1}
		// recs writes version-1 records, recs2 version-2 ones (with flags).
		var flags []byte
		recs := func(rs ...rec) []byte {
			b := binary.AppendUvarint(nil, uint64(len(rs)))
			for _, r := range rs {
				b = binary.AppendUvarint(b, uint64(len(r.key)))
				b = append(b, r.key...)
				b = binary.AppendUvarint(b, uint64(len(r.holder)))
				b = append(b, r.holder...)
				b = binary.AppendUvarint(b, r.req)
				b = binary.AppendUvarint(b, r.token)
				b = binary.AppendVarint(b, int64(r.ttl))
				b = binary.AppendVarint(b, int64(r.delay))
				b = binary.AppendVarint(b, int64(r.expiry))
				b = append(b, r.state)
				b = append(b, flags...)
				b = append(b, 0) // empty value
			}
			return b
		}
		recs2 := func(rs ...rec) []byte {
			flags = []byte{0}
			defer func() { flags = nil }()
			return recs(rs...)
		}
		recsFlags := func(f byte, rs ...rec) []byte {
			flags = []byte{f}
			defer func() { flags = nil }()
			return recs(rs...)
		}
		snapOf := func(fs ...[]byte) []byte {
			b := []byte(snapshotMagic)
			for _, f := range fs {
				b = append(b, frame(f)...)
			}
			return b
		}
		with := func(mod func(*rec)) rec { r := ok; mod(&r); return r }
		b := ok
		b.key = "b"
		// The crafted snapshots are sound when unmodified.
		sound := snapOf(hdr(1, 1, 0, 5, 2), recs(ok), recs(b))
		probe := fsm.New(fsm.Config{})
		if err := restoreBytes(probe, sound); err != nil {
			t.Fatalf("crafted snapshot: %v", err)
		}
		if st := probe.Stats(); st.Held != 2 || st.Applied != 5 {
			t.Fatalf("crafted snapshot restored as %+v", st)
		}
		type mk struct {
			key, holder string
			req         uint64
			ended       byte
			due         time.Duration
		}
		okMark := mk{"a", "c1", 1, 0, 15 * time.Minute}
		marks := func(ms ...mk) []byte {
			b := binary.AppendUvarint(nil, uint64(len(ms)))
			for _, m := range ms {
				b = binary.AppendUvarint(b, uint64(len(m.key)))
				b = append(b, m.key...)
				b = binary.AppendUvarint(b, uint64(len(m.holder)))
				b = append(b, m.holder...)
				b = binary.AppendUvarint(b, m.req)
				b = append(b, m.ended)
				b = binary.AppendVarint(b, int64(m.due))
			}
			return b
		}
		hdr2 := func(epoch, now, applied, count, nmarks uint64) []byte {
			return binary.AppendUvarint(hdr(2, epoch, now, applied, count), nmarks)
		}
		withMark := func(mod func(*mk)) mk { m := okMark; mod(&m); return m }
		mb := withMark(func(m *mk) { m.holder = "c2" })
		sound2 := snapOf(hdr2(1, 0, 5, 1, 2), recs2(ok), marks(okMark), marks(mb))
		if err := restoreBytes(probe, sound2); err != nil {
			t.Fatalf("crafted version-2 snapshot: %v", err)
		}
		if st := probe.Stats(); st.Held != 1 || st.Marks != 2 {
			t.Fatalf("crafted version-2 snapshot restored as %+v", st)
		}
		cases := []corruptCase{
			{"snapshot version 3", snapOf(hdr(3, 1, 0, 5, 1), recs2(ok))},
			{"version 2 without a mark count", snapOf(hdr(2, 1, 0, 5, 1), recs2(ok))},
			{"version 2 record without flags", snapOf(hdr2(1, 0, 5, 1, 0), recs(ok))},
			{"record flags 2", snapOf(hdr2(1, 0, 5, 1, 0), recsFlags(2, ok))},
			{"record flags 0x81", snapOf(hdr2(1, 0, 5, 1, 0), recsFlags(0x81, ok))},
			{"mark count too high", snapOf(hdr2(1, 0, 5, 1, 3), recs2(ok), marks(okMark, mb))},
			{"mark count too low", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok), marks(okMark, mb))},
			{"marks missing", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok))},
			{"marks out of order", snapOf(hdr2(1, 0, 5, 1, 2), recs2(ok), marks(mb, okMark))},
			{"duplicate mark", snapOf(hdr2(1, 0, 5, 1, 2), recs2(ok), marks(okMark, okMark))},
			{"mark request id 0", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok), marks(withMark(func(m *mk) { m.req = 0 })))},
			{"mark ended 2", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok), marks(withMark(func(m *mk) { m.ended = 2 })))},
			{"mark empty key", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok), marks(withMark(func(m *mk) { m.key = "" })))},
			{"mark empty holder", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok), marks(withMark(func(m *mk) { m.holder = "" })))},
			{"mark frame trailing byte", snapOf(hdr2(1, 0, 5, 1, 1), recs2(ok), append(marks(okMark), 0))},
			{"header trailing byte", snapOf(append(hdr(1, 1, 0, 5, 1), 0), recs2(ok))},
			{"count too high", snapOf(hdr(1, 1, 0, 5, 3), recs2(ok), recs(b))},
			{"count too low", snapOf(hdr(1, 1, 0, 5, 1), recs(ok, b))},
			{"empty record frame", snapOf(hdr(1, 1, 0, 5, 1), recs(), recs2(ok))},
			{"keys out of order", snapOf(hdr(1, 1, 0, 5, 2), recs(b, ok))},
			{"duplicate key", snapOf(hdr(1, 1, 0, 5, 2), recs2(ok), recs2(ok))},
			{"empty key", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.key = "" })))},
			{"key too long", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.key = strings.Repeat("k", fsm.MaxKeyLen+1) })))},
			{"empty holder", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.holder = "" })))},
			{"token 0", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.token = 0 })))},
			{"state 0", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.state = 0 })))},
			{"state 3", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.state = 3 })))},
			{"ttl 0", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.ttl = 0 })))},
			{"ttl too long", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.ttl = fsm.MaxTTL + 1 })))},
			{"negative lock-delay", snapOf(hdr(1, 1, 0, 5, 1), recs(with(func(r *rec) { r.delay = -1 })))},
			{"record trailing byte", snapOf(hdr(1, 1, 0, 5, 1), append(recs2(ok), 0))},
			{"record cut short", snapOf(hdr(1, 1, 0, 5, 1), recs2(ok)[:10])},
			{"frame too large", append([]byte(snapshotMagic), binary.AppendUvarint(nil, 1<<40)...)},
			{"frame length overflow", append([]byte(snapshotMagic), bytes.Repeat([]byte{0xff}, 11)...)},
		}
		checkCorrupt(t, target(), cases)
	})
}

// TestRestoreReadError: an error from the stream is refused like damage.
func TestRestoreReadError(t *testing.T) {
	good := snapshotBytes(t, richFSM(t, 100, fsm.Config{}))
	f := richFSM(t, 5, fsm.Config{})
	before := snapshotBytes(t, f)
	r := io.MultiReader(bytes.NewReader(good[:len(good)/2]), &errReader{errors.New("disk on fire")})
	if err := f.Restore(io.NopCloser(r)); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("Restore: %v", err)
	}
	if !bytes.Equal(before, snapshotBytes(t, f)) {
		t.Fatal("state changed")
	}
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// TestBackup: a backup is the snapshot format with the stats of the state
// it holds, captured at one index however much is applied after;
// ReadBackup checks it and finds the same stats, and rejects damage.
func TestBackup(t *testing.T) {
	f := richFSM(t, 500, fsm.Config{})
	want := snapshotBytes(t, f)
	stats := f.Stats()
	b := f.Backup()
	apply(t, f, stats.Applied+1, st(3, time.Hour), acq("later", "c", 1, s, 0))
	if b.Stats != stats {
		t.Fatalf("backup stats %+v, want %+v", b.Stats, stats)
	}
	var buf bytes.Buffer
	if n, err := b.WriteTo(&buf); err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo: %d, %v (wrote %d)", n, err, buf.Len())
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("backup differs from the snapshot at the same index")
	}
	got, err := fsm.ReadBackup(bytes.NewReader(buf.Bytes()))
	if err != nil || got != stats {
		t.Fatalf("ReadBackup: %+v, %v; want %+v", got, err, stats)
	}
	if _, err := fsm.ReadBackup(bytes.NewReader(buf.Bytes()[:buf.Len()-3])); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("truncated backup: %v", err)
	}
}
