package history

// Builder writes synthetic histories with explicit times, for checker
// tests and for the known-bad histories under jepsen/testdata. Times are
// given in milliseconds to keep tests readable.
//
//	b := history.NewBuilder()
//	b.AcquireOK(0, 5, "c1", "k", 10, 1000) // invoked at 0 ms, granted at 5 ms, token 10, valid until 1000 ms
//	b.ReleaseOK(400, 410, "c1", "k", 10)
//	h := b.Records()
type Builder struct {
	records []Record
	nextID  int64
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder { return &Builder{} }

// ms converts milliseconds to harness nanoseconds.
func ms(t int64) int64 { return t * 1e6 }

func (b *Builder) add(rec Record) {
	rec.Index = int64(len(b.records))
	b.records = append(b.records, rec)
}

// Op appends an invocation at start and a completion at end (both in ms);
// the completion is built from inv and then changed by done. It returns
// the operation's ID. The records are appended in call order, so callers
// that need interleaving use Invoke and Complete instead.
func (b *Builder) Op(start, end int64, inv Record, typ Type, done func(*Record)) int64 {
	id := b.Invoke(start, inv)
	out := inv
	out.Type = typ
	if done != nil {
		done(&out)
	}
	b.Complete(end, id, out)
	return id
}

// Invoke appends an invocation at t ms and returns its ID.
func (b *Builder) Invoke(t int64, inv Record) int64 {
	b.nextID++
	inv.ID = b.nextID
	inv.Type = Invoke
	inv.Time = ms(t)
	b.add(inv)
	return inv.ID
}

// Complete appends the completion of id at t ms; rec.Type must be set.
func (b *Builder) Complete(t int64, id int64, rec Record) {
	rec.ID = id
	rec.Time = ms(t)
	b.add(rec)
}

// Event appends an event at t ms.
func (b *Builder) Event(t int64, rec Record) {
	b.nextID++
	rec.ID = b.nextID
	rec.Type = Event
	rec.Time = ms(t)
	b.add(rec)
}

// AcquireOK appends a try-acquire granted with token, valid until
// validUntil ms.
func (b *Builder) AcquireOK(start, end int64, client, key string, token uint64, validUntil int64) int64 {
	return b.Op(start, end, Record{Client: client, Op: Acquire, Key: key, Mode: "try"}, OK, func(r *Record) {
		r.Token = token
		r.ValidUntil = ms(validUntil)
	})
}

// AcquireHeld appends a try-acquire answered "held by someone else".
func (b *Builder) AcquireHeld(start, end int64, client, key string) int64 {
	return b.Op(start, end, Record{Client: client, Op: Acquire, Key: key, Mode: "try"}, Fail, func(r *Record) { r.Err = ErrHeld })
}

// AcquireInfo appends an acquire with an unknown outcome.
func (b *Builder) AcquireInfo(start, end int64, client, key string) int64 {
	return b.Op(start, end, Record{Client: client, Op: Acquire, Key: key, Mode: "wait"}, Info, func(r *Record) { r.Err = "unknown outcome" })
}

// ReleaseOK appends a release of token that took effect.
func (b *Builder) ReleaseOK(start, end int64, client, key string, token uint64) int64 {
	return b.Op(start, end, Record{Client: client, Op: Release, Key: key, Token: token}, OK, nil)
}

// ReleaseInfo appends a release of token with an unknown outcome.
func (b *Builder) ReleaseInfo(start, end int64, client, key string, token uint64) int64 {
	return b.Op(start, end, Record{Client: client, Op: Release, Key: key, Token: token}, Info, func(r *Record) { r.Err = "unknown outcome" })
}

// GetOK appends a get that saw holder with token (found), or nothing
// (token 0 and holder "").
func (b *Builder) GetOK(start, end int64, client, key, holder string, token uint64) int64 {
	return b.Op(start, end, Record{Client: client, Op: Get, Key: key}, OK, func(r *Record) {
		r.Holder = holder
		r.Token = token
		r.Found = token != 0 || holder != ""
	})
}

// Write appends a fenced write of token, accepted or refused.
func (b *Builder) Write(start, end int64, client, key string, token uint64, accepted bool) int64 {
	typ := OK
	if !accepted {
		typ = Fail
	}
	return b.Op(start, end, Record{Client: client, Op: Write, Key: key, Token: token}, typ, func(r *Record) {
		if !accepted {
			r.Err = ErrStaleToken
		}
	})
}

// Lost appends an extend-lost event at t ms for token, with the lease's
// final validity validUntil ms.
func (b *Builder) Lost(t int64, client, key string, token uint64, validUntil int64) {
	b.Event(t, Record{Client: client, Op: ExtendLost, Key: key, Token: token, ValidUntil: ms(validUntil)})
}

// Observe appends a reading of a held lease at t ms: its ValidUntil
// (validUntil ms) and whether it was healthy.
func (b *Builder) Observe(t int64, client, key string, token uint64, validUntil int64, healthy bool) {
	b.Event(t, Record{Client: client, Op: Observe, Key: key, Token: token, ValidUntil: ms(validUntil), Healthy: healthy})
}

// Fault appends a fault from start to the heal at end (ms).
func (b *Builder) Fault(start, end int64, name string, nodes ...string) {
	b.Op(start, start, Record{Client: NemesisClient, Op: Fault, Fault: name, Nodes: nodes}, OK, nil)
	b.Op(end, end, Record{Client: NemesisClient, Op: Heal, Fault: name, Nodes: nodes}, OK, nil)
}

// AcquireShapeOK appends a try-acquire of items (one key in a shape, or a
// multi-key set) granted with token, valid until validUntil ms.
func (b *Builder) AcquireShapeOK(start, end int64, client string, items []Item, token uint64, validUntil int64) int64 {
	inv := Record{Client: client, Op: Acquire, Key: items[0].Key, Mode: "try"}
	if len(items) == 1 {
		inv.Shape, inv.Limit = items[0].Shape, items[0].Limit
	} else {
		inv.Items = items
	}
	return b.Op(start, end, inv, OK, func(r *Record) {
		r.Token = token
		r.ValidUntil = ms(validUntil)
	})
}

// GetHoldings appends a get of key that saw holdings.
func (b *Builder) GetHoldings(start, end int64, client, key string, holdings ...Holding) int64 {
	return b.Op(start, end, Record{Client: client, Op: Get, Key: key}, OK, func(r *Record) {
		r.Holdings = holdings
		if len(holdings) > 0 {
			r.Found, r.Holder, r.Token = true, holdings[0].Holder, holdings[0].Token
		}
	})
}

// ListOK appends a list of prefix that saw holdings.
func (b *Builder) ListOK(start, end int64, client, prefix string, holdings ...Holding) int64 {
	return b.Op(start, end, Record{Client: client, Op: List, Value: prefix}, OK, func(r *Record) { r.Holdings = holdings })
}

// Records returns the history built so far.
func (b *Builder) Records() []Record { return append([]Record(nil), b.records...) }
