package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"time"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
)

// Snapshot format, version 4:
//
//	magic    "LNSNAP\x00\x01"
//	frame*   uvarint length, payload, crc32c(payload) big-endian
//
// The first frame is the header: uvarint version, uvarint epoch, varint
// now, uvarint applied, uvarint record count, uvarint mark count. Then
// record frames, each uvarint n and n records in (key, token) order: key,
// holder, uvarint reqID, uvarint token, varint ttl, varint lock-delay,
// varint expiry, byte state, byte flags (1: Seen; 2: a member of the
// multi-key grant whose token it carries; 4: a grant epoch follows; no
// other bit is defined), uvarint grant epoch if flag 4, byte mode, uvarint
// limit, value. Then mark frames, each uvarint n and n marks
// in (key, holder) order: key, holder, uvarint reqID, byte ended (0 or 1),
// varint due. The stream ends right after the frame holding the last mark
// (or record). Frames are checksummed one by one so restore streams with
// bounded memory and still rejects any flipped bit; the counts in the
// header catch truncation at a frame boundary.
//
// Version 3 (before Cancel named an epoch) has no flag 4. Version 2
// (before lock shapes) has no mode and no limit, no flag 2, and at most
// one record per key, in key order. A state is written in the lowest
// version that holds it (so that a replica of an earlier version can
// restore it, see FormatVersion): 4 if a record has a grant epoch (every
// grant made by this version has one), else 3 if it has shapes, else 2. Version 1 (before request-id marks and
// Cancel) has no mark count, no marks and no record flags; Restore still
// reads both, with Seen set on every version-1 record.
const (
	snapshotVersion = 4
	frameTarget     = 64 << 10
	maxFrame        = 16 << 20
)

var snapshotMagic = []byte("LNSNAP\x00\x01")

// Record flags: flagSeen marks a record whose granting request was retried
// (Lease.Seen), flagSet one that belongs to a multi-key grant (Lease.Set),
// flagEpoch one whose grant epoch follows (Lease.GrantEpoch).
const (
	flagSeen  = 1
	flagSet   = 2
	flagEpoch = 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptSnapshot is returned (wrapped) by Restore for any snapshot it
// cannot trust: bad magic, checksum mismatch, truncation, bad records.
var ErrCorruptSnapshot = errors.New("fsm: corrupt snapshot")

// Snapshot implements raft.FSM. Raft calls it on the applying goroutine, so
// the state cannot change while it runs; it encodes the whole state into
// checksummed frames in memory (about 48 bytes per lease and 35 per
// request-id mark) and Persist streams them out while Apply goes on.
// Encoding under the lock keeps the snapshot exactly the state at one
// index; it stalls Apply for about 120 ms for a million leases and a
// million marks (BenchmarkSnapshot1M; about 70 ms of it for the leases).
//
// While the FSM is stopped by a fatal entry (Fatal), Snapshot refuses: Raft
// would label the snapshot with an index past entries it never applied.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.Fatal(); err != nil {
		return nil, fmt.Errorf("fsm: no snapshot after a fatal entry: %w", err)
	}
	w, _ := f.encode()
	return w, nil
}

// Backup is the whole state at one applied index, encoded in the snapshot
// format: what Restore reads, on this or any later version of the package.
type Backup struct {
	// Stats describes the state the backup holds.
	Stats Stats
	w     *frameWriter
}

// WriteTo writes the backup to dst.
func (b *Backup) WriteTo(dst io.Writer) (int64, error) { return b.w.WriteTo(dst) }

// Backup captures the state for a backup. Like Snapshot it encodes under
// the lock and costs the encoded size (about 48 bytes per lease and 35 per
// mark) until the Backup is dropped.
func (f *FSM) Backup() *Backup {
	w, st := f.encode()
	return &Backup{Stats: st, w: w}
}

// ReadBackup reads and checks a whole backup (or raft snapshot) and
// returns the stats of the state it holds, without keeping the state.
func ReadBackup(r io.Reader) (Stats, error) {
	st, err := readSnapshot(bufio.NewReaderSize(r, 256<<10), false)
	if err != nil {
		return Stats{}, err
	}
	return Stats{Epoch: st.epoch, Now: st.now, Applied: st.applied,
		Held: st.nHeld, Delayed: st.nDelayed, Keys: len(st.keys), Marks: st.marks.tree.Len(), Bytes: st.nBytes, MarkBytes: st.marks.bytes}, nil
}

// encode encodes the state under the lock and returns it with its stats.
func (f *FSM) encode() (*frameWriter, Stats) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w := &frameWriter{}
	// The lowest version that can hold the state (see the format's doc).
	version := uint64(2)
	if f.nShaped > 0 || f.nHeld+f.nDelayed > len(f.keys) {
		version = 3
	}
	f.eachRecord(func(r *record) bool {
		if r.GrantEpoch != 0 {
			version = snapshotVersion
		}
		return version != snapshotVersion
	})
	hdr := binary.AppendUvarint(nil, version)
	hdr = binary.AppendUvarint(hdr, f.epoch)
	hdr = binary.AppendVarint(hdr, int64(f.now))
	hdr = binary.AppendUvarint(hdr, f.applied)
	hdr = binary.AppendUvarint(hdr, uint64(f.due.len()))
	hdr = binary.AppendUvarint(hdr, uint64(f.marks.tree.Len()))
	w.frame(hdr)
	var buf []byte
	n := 0
	flush := func() {
		if n > 0 {
			w.frame(append(binary.AppendUvarint(nil, uint64(n)), buf...))
			buf, n = buf[:0], 0
		}
	}
	f.order.Ascend(func(ks *keyState) bool {
		for _, r := range ks.recs {
			l := r.view()
			buf = appendRecord(buf, &l, version)
			n++
			if len(buf) >= frameTarget {
				flush()
			}
		}
		return true
	})
	flush()
	f.marks.tree.Ascend(func(m *mark) bool {
		buf = appendMark(buf, &m.Mark)
		n++
		if len(buf) >= frameTarget {
			flush()
		}
		return true
	})
	flush()
	return w, f.statsLocked()
}

func appendRecord(b []byte, l *Lease, version uint64) []byte {
	b = appendString(b, l.Key)
	b = appendString(b, l.Holder)
	b = binary.AppendUvarint(b, l.ReqID)
	b = binary.AppendUvarint(b, l.Token)
	b = binary.AppendVarint(b, int64(l.TTL))
	b = binary.AppendVarint(b, int64(l.LockDelay))
	b = binary.AppendVarint(b, int64(l.Expiry))
	b = append(b, byte(l.State))
	flags := byte(0)
	if l.Seen {
		flags |= flagSeen
	}
	if l.Set != 0 {
		flags |= flagSet
	}
	if version >= 4 && l.GrantEpoch != 0 {
		flags |= flagEpoch
	}
	b = append(b, flags)
	if flags&flagEpoch != 0 {
		b = binary.AppendUvarint(b, l.GrantEpoch)
	}
	if version >= 3 {
		b = append(b, byte(l.Mode))
		b = binary.AppendUvarint(b, uint64(l.Limit))
	}
	return appendString(b, string(l.Value))
}

func appendMark(b []byte, m *Mark) []byte {
	b = appendString(b, m.Key)
	b = appendString(b, m.Holder)
	b = binary.AppendUvarint(b, m.ReqID)
	ended := byte(0)
	if m.Ended {
		ended = 1
	}
	b = append(b, ended)
	return binary.AppendVarint(b, int64(m.Due))
}

// frameWriter holds an encoded snapshot as a list of framed chunks.
type frameWriter struct {
	chunks [][]byte
}

func (w *frameWriter) frame(payload []byte) {
	c := make([]byte, 0, len(payload)+binary.MaxVarintLen64+4)
	c = binary.AppendUvarint(c, uint64(len(payload)))
	c = append(c, payload...)
	c = binary.BigEndian.AppendUint32(c, crc32.Checksum(payload, crcTable))
	w.chunks = append(w.chunks, c)
}

// WriteTo writes the whole snapshot to dst.
func (w *frameWriter) WriteTo(dst io.Writer) (int64, error) {
	total, err := dst.Write(snapshotMagic)
	for _, c := range w.chunks {
		if err != nil {
			break
		}
		var n int
		n, err = dst.Write(c)
		total += n
	}
	return int64(total), err
}

// Persist implements raft.FSMSnapshot.
func (w *frameWriter) Persist(sink raft.SnapshotSink) error {
	if _, err := w.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (w *frameWriter) Release() { w.chunks = nil }

// Restore implements raft.FSM. It reads the snapshot as a stream, checks
// every frame, and replaces the state only if all of it is sound; on any
// error the previous state is left as it was. An FSM stopped by a fatal
// entry stays stopped: Restore refuses.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.Fatal(); err != nil {
		return fmt.Errorf("fsm: no restore after a fatal entry: %w", err)
	}
	st, err := readSnapshot(bufio.NewReaderSize(rc, 256<<10), f.cfg.unsafe())
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.epoch, f.now, f.applied = st.epoch, st.now, st.applied
	f.keys, f.order, f.due, f.nHeld, f.nDelayed, f.nShaped, f.nBytes = st.keys, st.order, st.due, st.nHeld, st.nDelayed, st.nShaped, st.nBytes
	f.marks = st.marks
	f.holders = make(map[string]*record)
	f.holderKeys = make(map[string]int)
	f.eachRecord(func(r *record) bool {
		if r.State == StateHeld {
			f.track(r)
		}
		return true
	})
	f.mu.Unlock()
	f.emit(Event{Type: EventRestored, Index: st.applied})
	f.notify()
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

// readSnapshot reads and checks a whole snapshot. lenient relaxes the
// bounds on expiries and mark due times to those that rule out overflow, for
// states reached with Config.UnsafeSkipRebase (see restoreBounds).
func readSnapshot(r *bufio.Reader, lenient bool) (*snapState, error) {
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil {
		return nil, corrupt("not a leasenode snapshot or backup: too short to hold one (%v)", err)
	}
	if string(magic) != string(snapshotMagic) {
		return nil, corrupt("not a leasenode snapshot or backup: it starts %q (bad magic)", magic)
	}
	var payload []byte
	next := func() (*decoder, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			if err == io.EOF {
				return nil, corrupt("truncated: missing frame")
			}
			return nil, corrupt("frame length: %v", err)
		}
		if n > maxFrame {
			return nil, corrupt("frame of %d bytes exceeds %d", n, maxFrame)
		}
		if uint64(cap(payload)) < n+4 {
			payload = make([]byte, n+4)
		}
		payload = payload[:n+4]
		if _, err := io.ReadFull(r, payload); err != nil {
			return nil, corrupt("truncated frame: %v", err)
		}
		body := payload[:n]
		if got, want := crc32.Checksum(body, crcTable), binary.BigEndian.Uint32(payload[n:]); got != want {
			return nil, corrupt("checksum mismatch")
		}
		return &decoder{b: body}, nil
	}

	d, err := next()
	if err != nil {
		return nil, err
	}
	version := d.uvarint()
	if d.err == nil && (version < 1 || version > snapshotVersion) {
		return nil, corrupt("snapshot version %d, this build reads 1 to %d", version, snapshotVersion)
	}
	st := newSnapState()
	st.epoch = d.uvarint()
	st.now = time.Duration(d.varint())
	st.applied = d.uvarint()
	count := d.uvarint()
	var markCount uint64
	if version >= 2 {
		markCount = d.uvarint()
	}
	if d.err != nil || len(d.b) != 0 {
		return nil, corrupt("bad header")
	}
	switch {
	case st.epoch > MaxEpoch:
		return nil, corrupt("epoch %d above MaxEpoch %d", st.epoch, uint64(MaxEpoch))
	case st.now < 0 || st.now > MaxNow:
		return nil, corrupt("now %d outside [0, MaxNow %d]", st.now, MaxNow)
	case st.applied > MaxIndex:
		return nil, corrupt("applied index %d above MaxIndex %d", st.applied, uint64(MaxIndex))
	case markCount > MaxMarks:
		return nil, corrupt("%d marks, above MaxMarks %d", markCount, MaxMarks)
	}
	b := restoreBounds{now: st.now, applied: st.applied, epoch: st.epoch, lenient: lenient, version: version}
	// Holder names repeat across records and marks: keep one copy.
	holders := make(map[string]string)
	intern := func(b []byte) string {
		h, ok := holders[string(b)]
		if !ok {
			h = string(b)
			holders[h] = h
		}
		return h
	}
	// items reads frames of n items each until total were read, calling
	// item for each with its position.
	items := func(what string, total uint64, item func(d *decoder, i uint64) error) error {
		for read := uint64(0); read < total; {
			d, err := next()
			if err != nil {
				return err
			}
			n := d.uvarint()
			if n == 0 || read+n > total {
				return corrupt("frame holds %d %ss, %d of %d read", n, what, read, total)
			}
			for i := uint64(0); i < n; i++ {
				if err := item(d, read+i); err != nil {
					return err
				}
			}
			if len(d.b) != 0 {
				return corrupt("%d trailing bytes in frame", len(d.b))
			}
			read += n
		}
		return nil
	}
	var prev *record
	sets := map[uint64]*grantSet{}
	// A million-lease restore spent about half its time in the GC marking
	// the state while it was built: the map is sized from the header
	// (capped: the count is not trusted yet) and records come a slab at a
	// time, like keyStates. A slab lives until its last record ends, so
	// memory after a restore falls back more slowly, never above what the
	// restore itself needed.
	st.keys = make(map[string]*keyState, min(count, 1<<20))
	var recs []record
	err = items("record", count, func(d *decoder, i uint64) error {
		if len(recs) == 0 {
			recs = make([]record, min(count-i, 1024))
		}
		r := &recs[0]
		recs = recs[1:]
		r.Key = d.string()
		r.Holder = intern(d.bytes())
		r.ReqID = d.uvarint()
		r.Token = d.uvarint()
		r.TTL = time.Duration(d.varint())
		r.LockDelay = time.Duration(d.varint())
		r.Expiry = time.Duration(d.varint())
		r.State = State(d.byte())
		r.Seen = true // version 1: Cancel never releases a restored record
		if version >= 2 {
			flags := d.byte()
			known := byte(flagSeen)
			if version >= 3 {
				known |= flagSet
			}
			if version >= 4 {
				known |= flagEpoch
			}
			if d.err == nil && flags&^known != 0 {
				return corrupt("record %d: unknown flags %#x", i, flags)
			}
			r.Seen = flags&flagSeen != 0
			if flags&flagSet != 0 {
				gs := sets[r.Token]
				if gs == nil {
					gs = &grantSet{}
					sets[r.Token] = gs
				}
				r.set = gs // checked and completed by linkSets
			}
			if flags&flagEpoch != 0 {
				if r.GrantEpoch = d.uvarint(); d.err == nil && r.GrantEpoch == 0 {
					return corrupt("record %d: grant epoch 0", i)
				}
			}
		}
		if version >= 3 {
			r.Mode = Mode(d.byte())
			r.Limit = d.limit()
		}
		if v := d.bytes(); len(v) > 0 {
			r.Value = append([]byte(nil), v...)
		}
		if d.err != nil {
			return corrupt("record %d: %v", i, d.err)
		}
		if err := r.check(prev, i, b); err != nil {
			return err
		}
		if prev != nil && prev.Key == r.Key {
			r.Key = prev.Key // share one copy of the key
		}
		prev = r
		if err := st.add(r, b); err != nil {
			return err
		}
		if r.set != nil {
			r.set.members = append(r.set.members, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := st.linkSets(sets, b); err != nil {
		return nil, err
	}
	var prevMark *mark
	err = items("mark", markCount, func(d *decoder, i uint64) error {
		m := &mark{hidx: -1}
		kb := d.bytes()
		if ks, ok := st.keys[string(kb)]; ok {
			m.Key = ks.key // share the record's copy
		} else {
			m.Key = string(kb)
		}
		m.Holder = intern(d.bytes())
		m.ReqID = d.uvarint()
		ended := d.byte()
		m.Due = time.Duration(d.varint())
		if d.err != nil {
			return corrupt("mark %d: %v", i, d.err)
		}
		if ended > 1 {
			return corrupt("mark %d: bad ended flag %d", i, ended)
		}
		m.Ended = ended == 1
		if err := m.check(prevMark, i, b); err != nil {
			return err
		}
		prevMark = m
		st.marks.tree.ReplaceOrInsert(m)
		st.marks.heap.add(m)
		st.marks.bytes += m.size()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return nil, corrupt("data after the last record")
	}
	st.due.build(st.queue)
	st.queue = nil
	st.marks.heap.init()
	return st, nil
}

// restoreBounds are the limits a restored record or mark must keep, given
// the snapshot's header.
//
// Invariant restore-bounds: Restore admits exactly the numbers the rules
// can reach, and nothing that could overflow later arithmetic (issue 9: a
// backup with valid checksums and Expiry = MaxInt64-1h plus a 24 h
// lock-delay wrapped negative and granted another holder at once). With
// now in [0, MaxNow], applied <= MaxIndex and epoch <= MaxEpoch:
//   - every record has a request id > 0 and a token in [1, applied] (a
//     token is the index of an applied entry);
//   - a held lease has 0 < expiry <= now + TTL: it was granted or extended
//     at some now' <= now (expiry = now' + TTL), and Promote keeps
//     expiry - now (> 0 after its reap, so > new now >= 0);
//   - a lock-delay has lock-delay > 0 and -lock-delay < expiry <= now: it
//     began when expiry <= now, and Promote keeps expiry - now, which
//     after its reap is > -lock-delay, so expiry may be negative but
//     expiry + lock-delay > 0;
//   - a mark is due at a positive multiple of MarkGranule no later than
//     roundUp(now + MarkRetention): set at roundUp(now' + MarkRetention)
//     for some now' <= now, and Promote keeps it at most that from its
//     new now, rounded up.
//
// States reached with the UNSAFE Config.UnsafeSkipRebase break the
// relative bounds (an expiry kept from a clock far ahead), so an FSM with
// that knob restores with lenient bounds that only rule out overflow:
// 0 < expiry <= MaxNow + MaxTTL for a lease, -lock-delay < expiry <=
// MaxNow + MaxTTL for a lock-delay, 0 < due <= MaxNow + MarkRetention +
// MarkGranule for a mark. Guarded by TestRestoreRangeChecks,
// TestRestoreUnsafeSkipRebase and TestModel (which restores every state
// it reaches).
type restoreBounds struct {
	now     time.Duration
	applied uint64
	epoch   uint64
	lenient bool
	version uint64
}

// check validates a decoded record; i is its position in the snapshot,
// prev the record before it (nil for the first).
func (r *record) check(prev *record, i uint64, b restoreBounds) error {
	switch {
	case checkKey(r.Key) != nil:
		return corrupt("record %d: %v", i, checkKey(r.Key))
	case prev != nil && (r.Key < prev.Key || r.Key == prev.Key && r.Token <= prev.Token):
		return corrupt("record %d: key %q token %d out of order", i, r.Key, r.Token)
	case b.version < 3 && prev != nil && r.Key == prev.Key:
		return corrupt("record %d: key %q twice in a version-%d snapshot", i, r.Key, b.version)
	case (Item{Key: r.Key, Mode: r.Mode, Limit: r.Limit}).validate() != nil:
		return corrupt("record %d: %v", i, (Item{Key: r.Key, Mode: r.Mode, Limit: r.Limit}).validate())
	case r.State != StateHeld && r.State != StateDelayed:
		return corrupt("record %d: bad state %d", i, r.State)
	case checkHolder(r.Holder) != nil:
		return corrupt("record %d: %v", i, checkHolder(r.Holder))
	case r.Token == 0 || r.Token > b.applied:
		return corrupt("record %d: token %d outside [1, applied %d]", i, r.Token, b.applied)
	case r.ReqID == 0:
		return corrupt("record %d: request id 0", i)
	case r.GrantEpoch > b.epoch:
		return corrupt("record %d: granted in epoch %d, after the snapshot's epoch %d", i, r.GrantEpoch, b.epoch)
	case r.TTL <= 0 || r.TTL > MaxTTL || r.LockDelay < 0 || r.LockDelay > MaxTTL:
		return corrupt("record %d: ttl or lock-delay out of range", i)
	case len(r.Value) > MaxValueLen:
		return corrupt("record %d: value too large", i)
	case r.State == StateDelayed && r.LockDelay == 0:
		return corrupt("record %d: in lock-delay with a lock-delay of 0", i)
	}
	// The upper bound on expiry; relative to now unless lenient.
	upper := MaxNow + MaxTTL
	if r.State == StateHeld && !b.lenient {
		upper = b.now + r.TTL
	} else if !b.lenient {
		upper = b.now
	}
	if r.State == StateHeld && (r.Expiry <= 0 || r.Expiry > upper) {
		return corrupt("record %d: expiry %d of a held lease outside (0, %d]", i, r.Expiry, upper)
	}
	if r.State == StateDelayed && (r.Expiry <= -r.LockDelay || r.Expiry > upper) {
		return corrupt("record %d: expiry %d of a lock-delay outside (%d, %d]", i, r.Expiry, -r.LockDelay, upper)
	}
	return nil
}

// check validates a decoded mark; prev is the one before it, i its
// position among the marks.
func (m *mark) check(prev *mark, i uint64, b restoreBounds) error {
	upper := roundUp(b.now + MarkRetention)
	if b.lenient {
		upper = MaxNow + MarkRetention + MarkGranule
	}
	switch {
	case checkKey(m.Key) != nil:
		return corrupt("mark %d: %v", i, checkKey(m.Key))
	case checkHolder(m.Holder) != nil:
		return corrupt("mark %d: %v", i, checkHolder(m.Holder))
	case prev != nil && !markLess(prev, m):
		return corrupt("mark %d: (%q, %q) out of order", i, m.Key, m.Holder)
	case m.ReqID == 0:
		return corrupt("mark %d: request id 0", i)
	case m.Due <= 0 || m.Due > upper:
		return corrupt("mark %d: due %d outside (0, %d]", i, m.Due, upper)
	case !b.lenient && m.Due%MarkGranule != 0:
		return corrupt("mark %d: due %d not a multiple of MarkGranule", i, m.Due)
	}
	return nil
}

// snapState is a state being built by Restore before it replaces the live
// one.
type snapState struct {
	epoch           uint64
	now             time.Duration
	applied         uint64
	keys            map[string]*keyState
	order           *btree.BTreeG[*keyState]
	due             dueQueue
	queue           []*record // every record, for due.build once all are read
	nHeld, nDelayed int
	nShaped         int
	nBytes          int64
	marks           markSet
	slab            []keyState // keyStates are allocated a slab at a time
}

func newSnapState() *snapState {
	return &snapState{keys: make(map[string]*keyState), order: newOrder(), due: newDueQueue(), marks: newMarkSet()}
}

// add appends a record, which comes after every record added before it in
// (key, token) order; the due queue is built once all are in. Unless b is
// lenient, the key's records must stay compatible (shape-compatibility)
// and its holder must have no other live holding of the key.
func (st *snapState) add(r *record, b restoreBounds) error {
	ks := st.keys[r.Key]
	if ks == nil {
		if len(st.slab) == 0 {
			st.slab = make([]keyState, 1024)
		}
		ks, st.slab = &st.slab[0], st.slab[1:]
		ks.key = r.Key
		st.keys[r.Key] = ks
		st.order.ReplaceOrInsert(ks)
	}
	if !b.lenient {
		if r.State == StateHeld && ks.live(r.Holder) != nil {
			return corrupt("key %q: two live holdings of %q", r.Key, r.Holder)
		}
		if len(ks.recs) > 0 && !compatible(ks, r) {
			return corrupt("key %q: a %s holding (token %d) beside %d exclusive, %d shared and %d semaphore records (limit %d)",
				r.Key, r.Mode, r.Token, ks.n[ModeExclusive], ks.n[ModeShared], ks.n[ModeSemaphore], ks.limit)
		}
	}
	ks.add(r)
	st.nBytes += r.size()
	st.queue = append(st.queue, r)
	if r.State == StateDelayed {
		st.nDelayed++
	} else {
		st.nHeld++
	}
	if r.shaped() {
		st.nShaped++
	}
	return nil
}

// compatible reports whether r may sit beside ks's records by the rules
// of compat, whatever their state.
func compatible(ks *keyState, r *record) bool {
	n := ks.n
	switch r.Mode {
	case ModeShared:
		return n[ModeExclusive] == 0 && n[ModeSemaphore] == 0
	case ModeSemaphore:
		return n[ModeExclusive] == 0 && n[ModeShared] == 0 && ks.limit == r.Limit && n[ModeSemaphore] < int32(r.Limit)
	}
	return false // exclusive: only on an empty key
}

// linkSets ties the members of each multi-key grant together, checking
// that they agree on everything a grant shares (set-atomicity): a set of
// 2 to MaxSetKeys members (a single one only if lenient: UnsafePartialSet
// makes them) with one holder, request id, TTL, lock-delay, expiry,
// state, Seen and value.
func (st *snapState) linkSets(sets map[uint64]*grantSet, b restoreBounds) error {
	tokens := make([]uint64, 0, len(sets))
	for token := range sets {
		tokens = append(tokens, token)
	}
	slices.Sort(tokens)
	for _, token := range tokens {
		gs := sets[token]
		if len(gs.members) > MaxSetKeys || len(gs.members) < 2 && !b.lenient {
			return corrupt("set %d: %d members, want 2 to %d", token, len(gs.members), MaxSetKeys)
		}
		first := gs.members[0]
		gs.keys = make([]string, len(gs.members))
		for i, m := range gs.members {
			if m.Holder != first.Holder || m.ReqID != first.ReqID || m.TTL != first.TTL ||
				m.LockDelay != first.LockDelay || m.Expiry != first.Expiry || m.State != first.State ||
				m.Seen != first.Seen || string(m.Value) != string(first.Value) {
				return corrupt("set %d: member on key %q differs from the one on %q", token, m.Key, first.Key)
			}
			gs.keys[i] = m.Key
		}

	}
	return nil
}
