// Package history records what the chaos harness saw: every operation's
// invocation and completion, with the harness's monotonic time, as one
// JSON object per line (JSONL).
//
// It owns the record format, the thread-safe Recorder that writes it while
// a campaign runs, the Reader that loads it back, and Pair, which matches
// invocations with completions. It does not judge anything: package
// checker does.
//
// # Records
//
// A client operation is two records sharing an ID: an Invoke record when
// the harness is about to call the cluster, and a completion: OK (it
// happened, with its result), Fail (it certainly did not happen) or Info
// (indeterminate: it may have happened, at any time after the invocation;
// DESIGN.md rule 8). An invocation with no completion at the end of a
// history is indeterminate too. Instantaneous observations (a lease lost
// by its client, a worker paused) are Event records.
//
// Time is nanoseconds since the harness started, on the harness's
// monotonic clock: the same clock the lease client uses for ValidUntil, so
// a client's belief ("I hold this lease until t") and the harness's
// timestamps are directly comparable.
package history

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Type says what a record is: an invocation, one of the three completions,
// or an instantaneous event.
type Type string

// Record types.
const (
	// Invoke: the operation is about to be sent.
	Invoke Type = "invoke"
	// OK: the operation happened, with the result in the record.
	OK Type = "ok"
	// Fail: the operation certainly did not happen (or, for a read or a
	// try-acquire, happened and reported that the key was held: see Err).
	Fail Type = "fail"
	// Info: indeterminate; the operation may or may not have happened.
	Info Type = "info"
	// Event: an instantaneous observation with no invocation.
	Event Type = "event"
)

// Op names an operation.
type Op string

// Client operations (Client is a worker's lease holder name).
const (
	// Acquire a lease: Mode says try, wait or timeout; OK carries Token and
	// ValidUntil.
	Acquire Op = "acquire"
	// Release a lease: Token names it.
	Release Op = "release"
	// Get reads a key's record linearizably: OK carries Holder and Token
	// (Token 0 and empty Holder: nobody holds it).
	Get Op = "get"
	// CheckToken asks whether Token is current: OK carries Current.
	CheckToken Op = "check-token"
	// Write is a fenced write to the simulated resource: OK if accepted,
	// Fail with Err "stale-token" if refused.
	Write Op = "write"
	// ExtendLost (an Event) is the client's own conclusion that a lease
	// is lost (its Done channel closed without a release); ValidUntil is
	// the lease's final validity.
	ExtendLost Op = "extend-lost"
	// Pause (an Event) marks a worker the harness blocks while it holds a
	// lease, as a GC pause would; Resume marks its wake-up.
	Pause  Op = "pause"
	Resume Op = "resume"
	// Vanish (an Event) marks a worker that abandoned its client without
	// releasing, as a crashed process would.
	Vanish Op = "vanish"
	// Observe (an Event) is a reading of a held lease: ValidUntil as
	// Lease.ValidUntil reported it, and Healthy as IsHealthy said just
	// after. Workers record one whenever the validity they see changes.
	Observe Op = "observe"
	// List reads every holding of the keys under a prefix (Value) in one
	// linearizable read: OK carries Holdings.
	List Op = "list"
	// Read is a shared holder's read of the simulated resource, fenced
	// (lease.Fence.CheckRead): OK if no write with a higher token was
	// accepted, Fail with Err "stale-token" otherwise. It records nothing
	// in the resource.
	Read Op = "read"
	// Crash (an Event) marks a holder the harness killed while holding:
	// its client stops extending and never releases, like a crashed
	// process. ValidUntil is the lease's validity at the crash, TTL and
	// LockDelay those of its grant. The takeover-bound checker times the
	// next grant of the key from it.
	Crash Op = "crash"
)

// Nemesis and probe operations.
const (
	// Fault starts a fault (Fault names it, Nodes lists its targets);
	// Heal ends the current fault. The window of a fault runs from the
	// Fault invocation to the Heal completion.
	Fault Op = "fault"
	Heal  Op = "heal"
	// LeaderMove (an Event) is one step of the leader-churn fault: Node
	// was the leader and was stopped until Value took over.
	LeaderMove Op = "leader-move"
	// LeaderStop (an Event) is the start of a leader-churn step: Node, the
	// leader, was stopped. Until the LeaderMove that follows (at most 5 s,
	// the step's limit) no node serves as leader.
	LeaderStop Op = "leader-stop"
	// Rogue is one attempt of the rogue-peer fault (an outsider without
	// the cluster's credentials): Value names the attempt, Node the
	// target; OK means the node served it, Fail that it was refused (Err
	// says how).
	Rogue Op = "rogue"
	// Serve is the recovery probe: invoked when the final heal starts, OK
	// when the cluster first grants and releases a lease again.
	Serve Op = "serve"
	// Digest (an Event) is a node's state digest after the final heal:
	// Node, Applied (Raft applied index) and Value (the digest).
	Digest Op = "digest"
)

// Reasons carried in Err of a Fail completion that the checkers interpret.
const (
	// ErrHeld: the key was held by another holder (a try-acquire that was
	// answered "held"). This is a fact about the key, not a failure to
	// reach the cluster.
	ErrHeld = "held"
	// ErrStaleToken: the resource refused a write with a stale token.
	ErrStaleToken = "stale-token"
	// ErrNotHeld: a release or write by a client whose lease had already
	// ended; nothing was sent.
	ErrNotHeld = "not-held"
)

// Client names used by the harness itself.
const (
	// NemesisClient is the Client of Fault and Heal records.
	NemesisClient = "nemesis"
	// ProbeClient is the Client of Serve and Digest records.
	ProbeClient = "probe"
)

// Record is one line of a history.
type Record struct {
	// Index is the record's position in the history (0, 1, ...).
	Index int64 `json:"i"`
	// ID pairs an invocation with its completion; Events have their own.
	ID int64 `json:"id"`
	// Time is nanoseconds since the harness started (monotonic).
	Time int64 `json:"t"`
	// Type is invoke, ok, fail, info or event.
	Type Type `json:"type"`
	// Client is the worker's lease holder name, or NemesisClient /
	// ProbeClient.
	Client string `json:"client"`
	// Op is the operation.
	Op Op `json:"op"`
	// Key is the lease key (the first key of a multi-key acquire).
	Key string `json:"key,omitempty"`
	// Shape of a single-key acquire: "" (exclusive), "shared" or
	// "semaphore" with Limit slots.
	Shape string `json:"shape,omitempty"`
	Limit int    `json:"limit,omitempty"`
	// Items of a multi-key acquire: every key with its shape, Key first.
	// Its grant's Token is every key's.
	Items []Item `json:"items,omitempty"`
	// Holdings a get or list observed: every holding of the key (get) or
	// of every key under the prefix (list).
	Holdings []Holding `json:"holdings,omitempty"`
	// Mode of an acquire: "try", "wait" or "timeout".
	Mode string `json:"mode,omitempty"`
	// LockDelay of an acquire (ns): how long the key stays blocked if this
	// grant expires instead of being released.
	LockDelay int64 `json:"lock_delay,omitempty"`
	// TTL of an acquire or of a crashed holder's lease (ns).
	TTL int64 `json:"ttl,omitempty"`
	// Token is the fencing token: granted (acquire OK), released, written,
	// read (get OK) or checked.
	Token uint64 `json:"token,omitempty"`
	// ValidUntil is the client's validity for the lease (harness time):
	// on an acquire OK, a write or check-token invocation, an Observe and
	// an ExtendLost event.
	ValidUntil int64 `json:"valid_until,omitempty"`
	// Healthy: the lease's IsHealthy was true right after ValidUntil was
	// read (writes, check-tokens, Observe events).
	Healthy bool `json:"healthy,omitempty"`
	// Holder is the holder a get observed (empty: none or lock-delay).
	Holder string `json:"holder,omitempty"`
	// Found is set on a get OK that saw a record.
	Found bool `json:"found,omitempty"`
	// Current is the answer of a check-token OK.
	Current bool `json:"current,omitempty"`
	// Value is a write's payload or a node's digest.
	Value string `json:"value,omitempty"`
	// Fault names a nemesis fault; Nodes are its targets.
	Fault string   `json:"fault,omitempty"`
	Nodes []string `json:"nodes,omitempty"`
	// Node and Applied identify a Digest.
	Node    string `json:"node,omitempty"`
	Applied uint64 `json:"applied,omitempty"`
	// Err says why an operation failed or is indeterminate.
	Err string `json:"err,omitempty"`
}

// Shapes of Record.Shape, Item.Shape and Holding.Shape ("" is exclusive).
const (
	ShapeShared    = "shared"
	ShapeSemaphore = "semaphore"
)

// Item is one key of an acquire and the shape it was asked in.
type Item struct {
	Key   string `json:"key"`
	Shape string `json:"shape,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// Holding is one holding a read observed. Holder is a client name as the
// history names clients; Set is the token of the multi-key grant it
// belongs to (0 if alone); Delayed marks a lock-delay remnant.
type Holding struct {
	Key     string `json:"key"`
	Holder  string `json:"holder,omitempty"`
	Token   uint64 `json:"token"`
	Shape   string `json:"shape,omitempty"`
	Limit   int    `json:"limit,omitempty"`
	Set     uint64 `json:"set,omitempty"`
	Delayed bool   `json:"delayed,omitempty"`
	// SetKeys are the keys the cluster lists for its grant (set only).
	SetKeys []string `json:"set_keys,omitempty"`
}

// AcquireItems returns the keys an acquire asked for, with their shapes:
// Items, or Key in Shape.
func (r Record) AcquireItems() []Item {
	if len(r.Items) > 0 {
		return r.Items
	}
	return []Item{{Key: r.Key, Shape: r.Shape, Limit: r.Limit}}
}

// Duration returns t (harness nanoseconds) as a time.Duration since the
// harness started.
func Duration(t int64) time.Duration { return time.Duration(t) }

// Clock converts the process's monotonic time to harness time.
type Clock struct {
	start time.Time
}

// NewClock starts a harness clock at start (use time.Now(), which carries
// a monotonic reading).
func NewClock(start time.Time) Clock { return Clock{start: start} }

// Now returns the harness time now.
func (c Clock) Now() int64 { return int64(time.Since(c.start)) }

// At converts t to harness time. A zero t gives 0.
func (c Clock) At(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return int64(t.Sub(c.start))
}

// Start returns the moment harness time 0 stands for.
func (c Clock) Start() time.Time { return c.start }

// Recorder appends records to a history: in memory, and as JSONL to an
// optional writer as they happen, so that a campaign that dies still
// leaves its history behind. It is safe for concurrent use; Index order is
// the order in which records were appended, which for records appended
// under a lock (the resource's writes) is also the order of the events.
type Recorder struct {
	clock Clock

	mu      sync.Mutex
	out     io.Writer
	w       *bufio.Writer
	enc     *json.Encoder
	records []Record
	nextID  int64
	err     error
	watch   func(Record)
}

// NewRecorder returns a Recorder using clock; w may be nil.
func NewRecorder(clock Clock, w io.Writer) *Recorder {
	r := &Recorder{clock: clock}
	if w != nil {
		r.out = w
		r.w = bufio.NewWriter(w)
		r.enc = json.NewEncoder(r.w)
	}
	return r
}

// Clock returns the recorder's clock.
func (r *Recorder) Clock() Clock { return r.clock }

// OnRecord sets f to be called (under the recorder's lock, so keep it
// short and never call the Recorder from it) with each record appended; the
// live progress line uses it.
func (r *Recorder) OnRecord(f func(Record)) {
	r.mu.Lock()
	r.watch = f
	r.mu.Unlock()
}

// append stamps rec (Index; Time when zero) and stores it. Callers hold mu.
func (r *Recorder) append(rec Record) Record {
	rec.Index = int64(len(r.records))
	if rec.Time == 0 {
		rec.Time = r.clock.Now()
	}
	r.records = append(r.records, rec)
	if r.enc != nil && r.err == nil {
		r.err = r.enc.Encode(rec)
	}
	if r.watch != nil {
		r.watch(rec)
	}
	return rec
}

// Invoke records an invocation and returns its ID, to be passed to
// Complete.
func (r *Recorder) Invoke(rec Record) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	rec.ID = r.nextID
	rec.Type = Invoke
	rec.Time = 0
	r.append(rec)
	return rec.ID
}

// Complete records the completion of invocation id. rec.Type must be OK,
// Fail or Info; Client, Op and Key are copied from the invocation when
// empty.
func (r *Recorder) Complete(id int64, rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec.ID = id
	rec.Time = 0
	if rec.Client == "" || rec.Op == "" {
		for i := len(r.records) - 1; i >= 0; i-- {
			if inv := r.records[i]; inv.ID == id && inv.Type == Invoke {
				if rec.Client == "" {
					rec.Client = inv.Client
				}
				if rec.Op == "" {
					rec.Op = inv.Op
				}
				if rec.Key == "" {
					rec.Key = inv.Key
				}
				break
			}
		}
	}
	r.append(rec)
}

// Event records an instantaneous observation. A non-zero rec.Time is kept
// (for events observed earlier than they are recorded).
func (r *Recorder) Event(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	rec.ID = r.nextID
	rec.Type = Event
	r.append(rec)
}

// Do records an invocation, runs f, and records the completion f returns.
// It is the usual way to record a whole operation.
func (r *Recorder) Do(inv Record, f func() Record) Record {
	id := r.Invoke(inv)
	out := f()
	r.Complete(id, out)
	return out
}

// Records returns a copy of the history so far.
func (r *Recorder) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.records...)
}

// Flush writes buffered records to the writer — and, if the writer has a
// Flush method (a gzip.Writer), flushes it too, so that what was recorded
// so far can be read back even if the process dies — and returns the
// first write error seen.
func (r *Recorder) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil && r.err == nil {
		r.err = r.w.Flush()
		if f, ok := r.out.(interface{ Flush() error }); ok && r.err == nil {
			r.err = f.Flush()
		}
	}
	return r.err
}

// Encode writes records as JSONL.
func Encode(w io.Writer, records []Record) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, rec := range records {
		if err := enc.Encode(rec); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Save writes records as JSONL to path, gzip-compressed if path ends in
// ".gz".
func Save(path string, records []Record) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var w io.Writer = f
	var zw *gzip.Writer
	if strings.HasSuffix(path, ".gz") {
		zw, _ = gzip.NewWriterLevel(f, gzip.BestCompression)
		w = zw
	}
	err = Encode(w, records)
	if zw != nil && err == nil {
		err = zw.Close()
	}
	if err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Decode parses a JSONL history, gzip-compressed or not. Blank lines are
// skipped; a truncated last line or compressed stream (a campaign killed
// mid-write) is an error naming the line that matches
// io.ErrUnexpectedEOF, returned with every record read before it.
func Decode(r io.Reader) ([]Record, error) {
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		defer zr.Close()
		return decodeJSONL(zr)
	}
	return decodeJSONL(br)
}

func decodeJSONL(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(trimSpace(b)) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) && se.Offset >= int64(len(b)) {
				err = fmt.Errorf("%w: %v", io.ErrUnexpectedEOF, err)
			}
			return out, fmt.Errorf("history line %d: %w", line, err)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("history line %d: %w", line+1, err)
	}
	return out, nil
}

// Load parses the JSONL history in path (compressed or not: see Decode).
func Load(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Decode(f)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Infinity is the End of an indeterminate operation: it may take effect
// at any time after its invocation.
const Infinity int64 = math.MaxInt64

// Operation is an invocation paired with its completion.
type Operation struct {
	// Invoke is the invocation record.
	Invoke Record
	// Complete is the completion; for an invocation that never completed
	// it is a synthesized Info record at the end of the history.
	Complete Record
	// Open: no completion was recorded (the history ended first).
	Open bool
}

// Type returns the completion type: OK, Fail or Info.
func (o Operation) Type() Type { return o.Complete.Type }

// Start returns the invocation time.
func (o Operation) Start() int64 { return o.Invoke.Time }

// End returns the completion time, or Infinity for an indeterminate
// operation.
func (o Operation) End() int64 {
	if o.Complete.Type == Info {
		return Infinity
	}
	return o.Complete.Time
}

// Pair matches invocations with completions by ID and returns the
// operations in invocation order, followed by the events in history order.
// Invocations without a completion become Info with the history's last
// time; a completion without an invocation is an error (a corrupt history).
func Pair(records []Record) (ops []Operation, events []Record, err error) {
	open := map[int64]int{}
	var last int64
	for _, rec := range records {
		last = max(last, rec.Time)
		switch rec.Type {
		case Invoke:
			if _, dup := open[rec.ID]; dup {
				return nil, nil, fmt.Errorf("record %d: second invocation with id %d", rec.Index, rec.ID)
			}
			open[rec.ID] = len(ops)
			ops = append(ops, Operation{Invoke: rec})
		case OK, Fail, Info:
			i, ok := open[rec.ID]
			if !ok {
				return nil, nil, fmt.Errorf("record %d: completion of id %d without an open invocation", rec.Index, rec.ID)
			}
			delete(open, rec.ID)
			ops[i].Complete = rec
		case Event:
			events = append(events, rec)
		default:
			return nil, nil, fmt.Errorf("record %d: unknown type %q", rec.Index, rec.Type)
		}
	}
	for _, i := range open {
		inv := ops[i].Invoke
		ops[i].Complete = Record{ID: inv.ID, Time: last, Type: Info, Client: inv.Client, Op: inv.Op, Key: inv.Key, Err: "no completion before the history ended"}
		ops[i].Open = true
	}
	sort.SliceStable(ops, func(a, b int) bool { return ops[a].Invoke.Index < ops[b].Invoke.Index })
	return ops, events, nil
}

// End returns the time of the last record (0 for an empty history).
func End(records []Record) int64 {
	var t int64
	for _, r := range records {
		t = max(t, r.Time)
	}
	return t
}

// Keys returns the sorted set of non-empty keys in records.
func Keys(records []Record) []string {
	seen := map[string]bool{}
	for _, r := range records {
		if r.Key != "" {
			seen[r.Key] = true
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Trim cuts a history down to the evidence around a violation: the
// operations and events of keys (every key if keys is empty) and the
// nemesis's records (faults, heals, rogue attempts) that overlap
// [from, to] (harness ns). An
// operation is kept whole, both records, if its interval overlaps the
// window (an invocation with no completion lasts for ever). Records keep
// their IDs and times and are renumbered (Index).
func Trim(records []Record, keys []string, from, to int64) []Record {
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	// An operation is relevant if any of its records names a wanted key:
	// its key, a key of a multi-key acquire, a key a list saw.
	names := func(r Record) bool {
		if want[r.Key] {
			return true
		}
		for _, it := range r.Items {
			if want[it.Key] {
				return true
			}
		}
		for _, h := range r.Holdings {
			if want[h.Key] {
				return true
			}
		}
		return false
	}
	named := map[int64]bool{}
	for _, r := range records {
		if r.Type != Event && names(r) {
			named[r.ID] = true
		}
	}
	relevant := func(r Record) bool {
		if r.Client == NemesisClient || r.Op == Rogue || len(want) == 0 {
			return true
		}
		if r.Type == Event {
			return names(r)
		}
		return named[r.ID]
	}
	type span struct{ start, end int64 }
	spans := map[int64]span{}
	for _, r := range records {
		switch r.Type {
		case Event:
		case Invoke:
			spans[r.ID] = span{r.Time, Infinity}
		default:
			if sp, ok := spans[r.ID]; ok {
				sp.end = r.Time
				spans[r.ID] = sp
			}
		}
	}
	var out []Record
	for _, r := range records {
		if !relevant(r) {
			continue
		}
		if r.Type == Event {
			if r.Time < from || r.Time > to {
				continue
			}
		} else if sp := spans[r.ID]; sp.start > to || sp.end < from {
			continue
		}
		r.Index = int64(len(out))
		out = append(out, r)
	}
	return out
}
