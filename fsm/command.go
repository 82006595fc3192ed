package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// FormatVersion is the version of the command encoding this package writes.
// Rule: adding a command type, or changing a body, bumps it; an unknown type
// at a known version is therefore damage (Invalid), never news.
// An entry with a higher version was written by a newer leasenode; applying
// it could diverge from replicas that understand it, so the FSM reports it
// through Config.OnFatal instead of guessing.
//
// Version 2 ends every entry with a CRC-32C (Castagnoli, big-endian) of all
// its preceding bytes, and adds Cancel. Version 3 adds lock shapes to the
// Acquire body (mode, limit, further keys). Version 4 adds to Cancel the
// epoch of the proposal it withdraws. Version 5 adds to the Acquire body a
// byte of flags (Acquire.KeepLockDelay). Version 6 adds ExtendAll. Decode
// still reads version 1 (no checksum, no Cancel), 2 (every acquire
// exclusive, on one key), 3, 4 and 5.
//
// Encode writes the lowest version that can express the command: an
// entry without shapes, withdrawals or flags stays readable by a
// version-2 replica, so a rolling upgrade keeps every replica applying
// until one is used (then a replica of the older version stops at the
// entry, loudly, as fatal-stop requires).
const FormatVersion = 6

// checksumLen is the size of the CRC-32C that ends a version-2 entry.
const checksumLen = 4

// Limits on command fields. The node checks them at the API edge; the FSM
// checks them again so that a bad entry yields the same Invalid result on
// every replica.
const (
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 1024
	// MaxHolderLen is the longest holder name, in bytes.
	MaxHolderLen = 256
	// MaxValueLen is the largest value attached to a lease, in bytes.
	MaxValueLen = 64 << 10
	// MaxTTL is the longest TTL and the longest lock-delay a lease may ask
	// for. Longer would let a lost client block a key for more than a day.
	MaxTTL = 24 * time.Hour
	// MaxBatch is the largest number of items in one Extend or Batch.
	MaxBatch = 100_000
	// MaxNow is the latest stamp time accepted (about 146 years), so that
	// now plus any TTL cannot overflow.
	MaxNow = time.Duration(1 << 62)
	// MaxEpoch is the highest epoch a Promote may start (2^48 Raft terms: a
	// new term every millisecond would take 8,900 years to reach it), so
	// epoch arithmetic can never wrap. A Promote above it is Invalid, and
	// Restore refuses a snapshot whose epoch is above it.
	MaxEpoch = 1 << 48
	// MaxIndex is the highest applied index a snapshot may carry (2^62),
	// leaving room for node's restore to add an index gap.
	MaxIndex = 1 << 62
)

// Type identifies a command on the wire. Values are stable: they are
// stored in Raft logs and must never be renumbered.
type Type uint8

// Command types.
const (
	TypePromote Type = 1
	TypeAcquire Type = 2
	TypeExtend  Type = 3
	TypeRelease Type = 4
	TypeExpire  Type = 5
	TypeBatch   Type = 6
	TypeCancel  Type = 7 // since FormatVersion 2
	// TypeExtendAll is ExtendAll, since FormatVersion 6.
	TypeExtendAll Type = 8
)

func (t Type) String() string {
	switch t {
	case TypePromote:
		return "promote"
	case TypeAcquire:
		return "acquire"
	case TypeExtend:
		return "extend"
	case TypeRelease:
		return "release"
	case TypeExpire:
		return "expire"
	case TypeBatch:
		return "batch"
	case TypeCancel:
		return "cancel"
	case TypeExtendAll:
		return "extend-all"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Stamp is what the leader writes on every command: its epoch and its
// monotonic time since the epoch began. It is the FSM's only source of time.
type Stamp struct {
	Epoch uint64
	Now   time.Duration
}

// Command is one state-machine command. The concrete types are Promote,
// Acquire, Extend, ExtendAll, Release, Cancel, Expire and Batch.
type Command interface {
	// Type reports the command's wire type.
	Type() Type
	appendBody(b []byte) []byte
}

// Promote starts epoch Stamp.Epoch (the proposing leader's Raft term) at
// Stamp.Now. It first reaps what is due at the old clock, exactly as an
// Expire would, then moves every record into the new epoch keeping the time
// it had left: expiry' = Stamp.Now + (expiry - old now), for leases and
// lock-delays alike. A leader proposes it after its Barrier and serves
// nothing until it has applied.
type Promote struct{}

// Acquire asks for Key, in Mode (Limit: a semaphore's N), and for every
// item of More along with it, on behalf of Holder: all of them in one
// grant, or none. ReqID strictly increases per holder: the same ReqID as
// the holding's is a retry of the same grant, a higher one a new holding
// period, a lower one is refused as stale. TTL, LockDelay and Value apply
// to every key of the grant.
type Acquire struct {
	Key       string
	Holder    string
	ReqID     uint64
	TTL       time.Duration
	LockDelay time.Duration
	Value     []byte
	// Mode is how the holding of Key shares it (since FormatVersion 3;
	// ModeExclusive by default), and Limit a semaphore's N (0 otherwise).
	Mode  Mode
	Limit uint32
	// More names the further keys of a multi-key acquire (since
	// FormatVersion 3): at most MaxSetKeys keys in all, no key twice.
	More []Item
	// KeepLockDelay (since FormatVersion 5) keeps the holder's own live
	// holdings that have a lock-delay: a new request of the holder does
	// not replace them (and every member of their grants) but is Held
	// until they end, as another holder's request would be. Without it a
	// Client that lost or dropped such a holding could take the key again
	// and release it, skipping the lock-delay that guards the old
	// holding's user. The leader sets it once every server reads version
	// 5; entries without it keep the older rule on every replica.
	KeepLockDelay bool
}

// Flags of the version-5 Acquire body.
const acquireKeepLockDelay = 1

// Items returns every key of the acquire with its mode: Key first, then
// More.
func (c *Acquire) Items() []Item {
	out := make([]Item, 0, 1+len(c.More))
	out = append(out, Item{Key: c.Key, Mode: c.Mode, Limit: c.Limit})
	return append(out, c.More...)
}

// shaped reports whether the acquire needs FormatVersion 3.
func (c *Acquire) shaped() bool { return c.Mode != ModeExclusive || c.Limit != 0 || len(c.More) > 0 }

// Extend renews many leases of one holder in one entry.
type Extend struct {
	Holder string
	Items  []ExtendItem
}

// ExtendAll renews every live holding of Holder, if they are exactly
// the Count holdings whose units sum to Digest (holdset.Sum, one unit per
// grant: its least key and its token); otherwise nothing changes and the
// result is NotHeld. It lets a client keep thousands of leases alive with
// one small entry (since FormatVersion 6; see FSM invariant
// extend-all-exact).
type ExtendAll struct {
	Holder string
	Count  uint32
	Digest uint64
}

// ExtendItem names one lease to extend.
type ExtendItem struct {
	Key   string
	Token uint64
}

// Release frees Key if Holder holds it with Token.
type Release struct {
	Key    string
	Holder string
	Token  uint64
}

// Cancel withdraws request ReqID of Holder for Key: the leader of epoch
// Epoch proposed that acquire and could not tell its caller the outcome,
// and the caller will not use it; or, with Epoch 0, the holder itself gave
// up on the request without learning its outcome (node's Abandon). If the
// request's grant is the key's live holding, was made in Epoch
// (Lease.GrantEpoch) and nobody can have learnt of it (no retry of the
// same request id was applied: see Lease.Seen), it is released as by
// Release; otherwise nothing changes, and the result says what became of
// the request (Held, Stale or NotHeld: see the codes). Either way the
// request id is spent: a later arrival of it, or of an older one, is
// Stale. Epoch 0 (also every version 2 or 3 entry) names no epoch and
// matches any grant, as those versions did.
type Cancel struct {
	Key    string
	Holder string
	ReqID  uint64
	Epoch  uint64
}

// Expire reaps every lease and lock-delay due at the command's time, and
// every request-id mark whose retention ended. It names no keys on purpose:
// the FSM decides what is due, so a stale decision of an old leader can
// never remove a lease extended meanwhile.
type Expire struct{}

// Batch applies several commands atomically in one entry, in order, with
// the batch's stamp. It lets a leader release a key and grant it to the
// head waiter in one Raft round trip. It may hold at most one Acquire,
// because the fencing token is the entry's index and names one grant, and
// no Promote or nested Batch; Release, Cancel, Extend and Expire as many
// times as needed.
type Batch struct {
	Cmds []Command
}

// Type implements Command.
func (Promote) Type() Type { return TypePromote }

// Type implements Command.
func (*Acquire) Type() Type { return TypeAcquire }

// Type implements Command.
func (*Extend) Type() Type { return TypeExtend }

// Type implements Command.
func (*ExtendAll) Type() Type { return TypeExtendAll }

// Type implements Command.
func (*Release) Type() Type { return TypeRelease }

// Type implements Command.
func (*Cancel) Type() Type { return TypeCancel }

// Type implements Command.
func (Expire) Type() Type { return TypeExpire }

// Type implements Command.
func (*Batch) Type() Type { return TypeBatch }

// Encode returns the wire form of cmd with stamp s, in FormatVersion:
// version, type, stamp, body, and the CRC-32C of all of them.
//
// The version is the lowest that can express cmd (see FormatVersion): 6
// for an ExtendAll, 5 if an Acquire in it has flags, 4 if a Cancel in it
// names an epoch, 3 if an Acquire in it has a shape, else 2.
func Encode(s Stamp, cmd Command) []byte {
	ver := minVersion(cmd)
	b := make([]byte, 0, 32)
	b = append(b, ver, byte(cmd.Type()))
	b = binary.AppendUvarint(b, s.Epoch)
	b = binary.AppendVarint(b, int64(s.Now))
	b = appendBody(b, cmd, ver)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// MinFormat is the lowest format version that can express cmd: a node
// must read at least that version to apply it (see FormatVersion).
func MinFormat(cmd Command) byte { return minVersion(cmd) }

// OldestFormat is the lowest format version any node reads: a node that
// does not say what it reads (every version before the gossip metadata
// carried it) is taken to read only this.
const OldestFormat = 2

// minVersion is the lowest format version that can express cmd.
func minVersion(cmd Command) byte {
	switch c := cmd.(type) {
	case *Acquire:
		switch {
		case c.KeepLockDelay:
			return 5
		case c.shaped():
			return 3
		}
	case *Cancel:
		if c.Epoch != 0 {
			return 4
		}
	case *ExtendAll:
		return 6
	case *Batch:
		ver := byte(2)
		for _, sub := range c.Cmds {
			ver = max(ver, minVersion(sub))
		}
		return ver
	}
	return 2
}

// appendBody appends cmd's body in version ver.
func appendBody(b []byte, cmd Command, ver byte) []byte {
	switch c := cmd.(type) {
	case *Acquire:
		return c.appendBodyVersion(b, ver)
	case *Cancel:
		return c.appendBodyVersion(b, ver)
	case *Batch:
		b = binary.AppendUvarint(b, uint64(len(c.Cmds)))
		for _, sub := range c.Cmds {
			b = append(b, byte(sub.Type()))
			b = appendBody(b, sub, ver)
		}
		return b
	}
	return cmd.appendBody(b)
}

func (Promote) appendBody(b []byte) []byte { return b }
func (Expire) appendBody(b []byte) []byte  { return b }

func (c *Acquire) appendBody(b []byte) []byte { return c.appendBodyVersion(b, FormatVersion) }

// appendBodyVersion appends the body of version ver: version 3 adds mode,
// limit and the further items after the value, version 5 a byte of flags.
func (c *Acquire) appendBodyVersion(b []byte, ver byte) []byte {
	b = appendString(b, c.Key)
	b = appendString(b, c.Holder)
	b = binary.AppendUvarint(b, c.ReqID)
	b = binary.AppendVarint(b, int64(c.TTL))
	b = binary.AppendVarint(b, int64(c.LockDelay))
	b = appendString(b, string(c.Value))
	if ver < 3 {
		return b
	}
	b = append(b, byte(c.Mode))
	b = binary.AppendUvarint(b, uint64(c.Limit))
	b = binary.AppendUvarint(b, uint64(len(c.More)))
	for _, it := range c.More {
		b = appendString(b, it.Key)
		b = append(b, byte(it.Mode))
		b = binary.AppendUvarint(b, uint64(it.Limit))
	}
	if ver < 5 {
		return b
	}
	var flags byte
	if c.KeepLockDelay {
		flags |= acquireKeepLockDelay
	}
	return append(b, flags)
}

func (c *Extend) appendBody(b []byte) []byte {
	b = appendString(b, c.Holder)
	b = binary.AppendUvarint(b, uint64(len(c.Items)))
	for _, it := range c.Items {
		b = appendString(b, it.Key)
		b = binary.AppendUvarint(b, it.Token)
	}
	return b
}

func (c *ExtendAll) appendBody(b []byte) []byte {
	b = appendString(b, c.Holder)
	b = binary.AppendUvarint(b, uint64(c.Count))
	return binary.BigEndian.AppendUint64(b, c.Digest)
}

func (c *Release) appendBody(b []byte) []byte {
	b = appendString(b, c.Key)
	b = appendString(b, c.Holder)
	return binary.AppendUvarint(b, c.Token)
}

func (c *Cancel) appendBody(b []byte) []byte { return c.appendBodyVersion(b, FormatVersion) }

// appendBodyVersion appends the body of version ver: version 4 adds the
// epoch.
func (c *Cancel) appendBodyVersion(b []byte, ver byte) []byte {
	b = appendString(b, c.Key)
	b = appendString(b, c.Holder)
	b = binary.AppendUvarint(b, c.ReqID)
	if ver < 4 {
		return b
	}
	return binary.AppendUvarint(b, c.Epoch)
}

func (c *Batch) appendBody(b []byte) []byte { return appendBody(b, c, FormatVersion) }

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Decoding errors. ErrNewerVersion means the entry came from a newer
// leasenode, and ErrChecksum that an entry's bytes are not those that were
// written: both are fatal (IsFatal), since skipping the entry as Invalid
// could make this replica diverge from those that apply it. The others mean
// that a version-1 entry, or a body whose checksum matched, is malformed:
// every replica refuses it alike, with an Invalid result.
var (
	ErrNewerVersion = errors.New("fsm: command written by a newer version")
	ErrChecksum     = errors.New("fsm: command checksum mismatch")
	ErrTruncated    = errors.New("fsm: command truncated")
	ErrUnknownType  = errors.New("fsm: unknown command type")
	ErrMalformed    = errors.New("fsm: malformed command")
)

// IsFatal reports whether a Decode error means the replica must stop
// rather than refuse the entry as Invalid: ErrNewerVersion or ErrChecksum.
func IsFatal(err error) bool {
	return errors.Is(err, ErrNewerVersion) || errors.Is(err, ErrChecksum)
}

// Decode parses the wire form of a command, of FormatVersion or older. It
// never panics, whatever the bytes, and allocates no more than a small
// multiple of len(data).
func Decode(data []byte) (Stamp, Command, error) {
	s, cmd, err := decode(data)
	if err != nil && !IsFatal(err) && len(data) > checksumLen && data[0] < 2 {
		// A checksummed entry whose version byte was damaged to 0 or 1
		// (the body then never parses: the checksum is left over).
		for v := byte(2); v <= FormatVersion; v++ {
			if damagedVersion(data, v) {
				return Stamp{}, nil, fmt.Errorf("%w: version byte %d, but the entry checks as version %d", ErrChecksum, data[0], v)
			}
		}
	}
	return s, cmd, err
}

// damagedVersion reports whether data would be a sound checksummed entry
// with v as its first byte.
func damagedVersion(data []byte, v byte) bool {
	n := len(data) - checksumLen
	sum := crc32.Update(crc32.Update(0, crcTable, []byte{v}), crcTable, data[1:n])
	return sum == binary.BigEndian.Uint32(data[n:])
}

func decode(data []byte) (Stamp, Command, error) {
	d := decoder{b: data}
	// The version comes first and is judged alone: a newer version may lay
	// out everything after it differently, so reading on could report a
	// newer entry as merely damaged (Invalid) instead of stopping the node.
	ver := d.byte()
	if d.err != nil {
		return Stamp{}, nil, d.err
	}
	if ver == 0 {
		return Stamp{}, nil, fmt.Errorf("%w: version 0", ErrMalformed)
	}
	if ver > FormatVersion {
		return Stamp{}, nil, fmt.Errorf("%w: version %d, this build knows %d", ErrNewerVersion, ver, FormatVersion)
	}
	if ver >= 2 {
		// The checksum is judged before anything else is read, so a
		// damaged entry is never mistaken for a malformed or a valid one.
		if len(data) < 1+checksumLen {
			return Stamp{}, nil, fmt.Errorf("%w: %d bytes, too short for a checksum", ErrChecksum, len(data))
		}
		n := len(data) - checksumLen
		if got, want := crc32.Checksum(data[:n], crcTable), binary.BigEndian.Uint32(data[n:]); got != want {
			return Stamp{}, nil, fmt.Errorf("%w: crc32c %08x, entry says %08x", ErrChecksum, got, want)
		}
		d.b = data[1:n]
	}
	d.version = ver
	typ := Type(d.byte())
	s := Stamp{Epoch: d.uvarint(), Now: time.Duration(d.varint())}
	if d.err != nil {
		return Stamp{}, nil, d.err
	}
	cmd := d.body(typ, true)
	if d.err != nil {
		return Stamp{}, nil, d.err
	}
	if len(d.b) != 0 {
		return Stamp{}, nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b))
	}
	return s, cmd, nil
}

type decoder struct {
	b       []byte
	err     error
	version byte // of the command entry being decoded (0 for snapshots)
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail(ErrTruncated)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		if n == 0 {
			d.fail(ErrTruncated)
		} else {
			d.fail(fmt.Errorf("%w: varint overflow", ErrMalformed))
		}
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		if n == 0 {
			d.fail(ErrTruncated)
		} else {
			d.fail(fmt.Errorf("%w: varint overflow", ErrMalformed))
		}
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

// limit reads a semaphore limit, which must fit in 32 bits.
func (d *decoder) limit() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail(fmt.Errorf("%w: limit %d overflows", ErrMalformed, v))
		return 0
	}
	return uint32(v)
}

// count reads a collection length and checks it against the bytes left,
// each element needing at least min bytes, so a forged length cannot make
// the decoder allocate more than the input justifies.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > MaxBatch {
		d.fail(fmt.Errorf("%w: %d items, at most %d", ErrMalformed, n, MaxBatch))
		return 0
	}
	if n*uint64(min) > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return 0
	}
	return int(n)
}

func (d *decoder) body(typ Type, top bool) Command {
	switch typ {
	case TypePromote:
		if !top {
			d.fail(fmt.Errorf("%w: promote inside a batch", ErrMalformed))
			return nil
		}
		return Promote{}
	case TypeExpire:
		return Expire{}
	case TypeAcquire:
		c := &Acquire{Key: d.string(), Holder: d.string(), ReqID: d.uvarint()}
		c.TTL = time.Duration(d.varint())
		c.LockDelay = time.Duration(d.varint())
		if v := d.bytes(); len(v) > 0 {
			c.Value = append([]byte(nil), v...)
		}
		if d.version >= 3 {
			c.Mode = Mode(d.byte())
			c.Limit = d.limit()
			if n := d.count(3); n > 0 {
				c.More = make([]Item, n)
				for i := range c.More {
					c.More[i] = Item{Key: d.string(), Mode: Mode(d.byte()), Limit: d.limit()}
				}
			}
		}
		if d.version >= 5 {
			flags := d.byte()
			if flags&^acquireKeepLockDelay != 0 {
				d.fail(fmt.Errorf("%w: acquire flags %#x", ErrMalformed, flags))
			}
			c.KeepLockDelay = flags&acquireKeepLockDelay != 0
		}
		return c
	case TypeExtend:
		c := &Extend{Holder: d.string()}
		n := d.count(2)
		if n > 0 {
			c.Items = make([]ExtendItem, n)
			for i := range c.Items {
				c.Items[i] = ExtendItem{Key: d.string(), Token: d.uvarint()}
			}
		}
		return c
	case TypeExtendAll:
		if d.version < 6 {
			break // unknown before version 6
		}
		c := &ExtendAll{Holder: d.string()}
		n := d.uvarint()
		if n > 1<<32-1 {
			d.fail(fmt.Errorf("%w: count %d overflows", ErrMalformed, n))
			return nil
		}
		c.Count = uint32(n)
		if len(d.b) < 8 {
			d.fail(ErrTruncated)
			return nil
		}
		c.Digest = binary.BigEndian.Uint64(d.b)
		d.b = d.b[8:]
		return c
	case TypeRelease:
		return &Release{Key: d.string(), Holder: d.string(), Token: d.uvarint()}
	case TypeCancel:
		if d.version < 2 {
			break // unknown in version 1
		}
		c := &Cancel{Key: d.string(), Holder: d.string(), ReqID: d.uvarint()}
		if d.version >= 4 {
			c.Epoch = d.uvarint()
		}
		return c
	case TypeBatch:
		if !top {
			d.fail(fmt.Errorf("%w: nested batch", ErrMalformed))
			return nil
		}
		n := d.count(1)
		c := &Batch{Cmds: make([]Command, 0, n)}
		for i := 0; i < n && d.err == nil; i++ {
			if sub := d.body(Type(d.byte()), false); sub != nil {
				c.Cmds = append(c.Cmds, sub)
			}
		}
		return c
	}
	d.fail(fmt.Errorf("%w: %d", ErrUnknownType, uint8(typ)))
	return nil
}
