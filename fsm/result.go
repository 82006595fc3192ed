package fsm

import (
	"fmt"
	"time"
)

// Code is the outcome of one command, or of one item of an Extend or Batch.
// Refusals are results, not errors: every replica computes the same one.
type Code uint8

// Result codes. Values are stable: node forwards them between versions.
const (
	// Granted: the caller holds the key. Result.Retry tells whether this
	// was the same request id again (same token, refreshed expiry).
	Granted Code = 1
	// Extended: the lease's expiry moved to Result.Expiry.
	Extended Code = 2
	// Released: the key is free.
	Released Code = 3
	// Held: another holder has the key, or it is in lock-delay after an
	// expiry. Result.Holder and Result.Wait say who and for how long at
	// most, unless it is released earlier. For Cancel: the request's grant
	// is live and stays (see FSM cancel).
	Held Code = 4
	// NotHeld: the caller does not hold the key with that token (never
	// did, released, expired, or a newer holding replaced it). For Cancel:
	// the request was never granted.
	NotHeld Code = 5
	// Stale: an acquire whose request id is lower than the one the record
	// was granted with, or than the holder's mark for the key, or equal to
	// a mark whose holding ended or that was cancelled: a newer request of
	// the same holder won, or this one is a delayed copy (see Mark). For
	// Cancel: the request id was spent already, its grant (if any) ended.
	// Reason says which.
	Stale Code = 6
	// WrongEpoch: the command was stamped by a leader whose epoch is over.
	WrongEpoch Code = 7
	// Invalid: the command breaks a limit or cannot be decoded.
	Invalid Code = 8
	// Promoted: a new epoch began.
	Promoted Code = 9
	// Expired: a lease or lock-delay was reaped. A key whose expiry and
	// lock-delay end are both due yields two: one with the holder, one
	// without.
	Expired Code = 10
	// Fatal: this replica met an entry it must not apply (written by a
	// newer version, or failing its checksum) at or before this one, and
	// applies nothing from there on. Reason names the first such entry.
	// The node must stop; the entry's outcome is unknown to the caller.
	Fatal Code = 11
)

var codeNames = [...]string{
	Granted: "granted", Extended: "extended", Released: "released",
	Held: "held", NotHeld: "not-held", Stale: "stale",
	WrongEpoch: "wrong-epoch", Invalid: "invalid", Promoted: "promoted",
	Expired: "expired", Fatal: "fatal",
}

func (c Code) String() string {
	if int(c) < len(codeNames) && codeNames[c] != "" {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// Result is the outcome for one key.
type Result struct {
	Code  Code
	Key   string
	Token uint64
	// Holder is the current holder for Held and NotHeld (empty if free).
	Holder string
	// Expiry is the lease's logical expiry in the current epoch, for
	// Granted and Extended.
	Expiry time.Duration
	// Wait is, for Held, the longest the key can stay unavailable unless
	// it is released earlier (remaining TTL plus lock-delay).
	Wait time.Duration
	// Retry is set on Granted when the request id matched the record's.
	Retry bool
	// Reason explains Invalid and WrongEpoch.
	Reason string
}

// Response is what Apply returns for a command entry: one Result per key
// touched (one for Acquire and Release; one per item for Extend and Batch;
// one per reaped lease or ended lock-delay for Expire; for Promote, Promoted
// first and then one per lease or lock-delay it reaped at the old clock),
// plus the FSM clock after the entry.
type Response struct {
	Index   uint64
	Epoch   uint64
	Now     time.Duration
	Results []Result
}

func invalid(key, format string, args ...any) Result {
	return Result{Code: Invalid, Key: key, Reason: fmt.Sprintf(format, args...)}
}

// Validate checks an acquire against the limits. It is what the FSM
// applies; node calls it at the API edge to refuse bad input before Raft.
func (c *Acquire) Validate() error {
	if err := checkKey(c.Key); err != nil {
		return err
	}
	if err := checkHolder(c.Holder); err != nil {
		return err
	}
	if c.ReqID == 0 {
		return fmt.Errorf("request id must be > 0")
	}
	if c.TTL <= 0 || c.TTL > MaxTTL {
		return fmt.Errorf("ttl %v out of range (0, %v]", c.TTL, MaxTTL)
	}
	if c.LockDelay < 0 || c.LockDelay > MaxTTL {
		return fmt.Errorf("lock-delay %v out of range [0, %v]", c.LockDelay, MaxTTL)
	}
	if len(c.Value) > MaxValueLen {
		return fmt.Errorf("value of %d bytes exceeds %d", len(c.Value), MaxValueLen)
	}
	if 1+len(c.More) > MaxSetKeys {
		return fmt.Errorf("acquire of %d keys, at most %d", 1+len(c.More), MaxSetKeys)
	}
	if len(c.More) == 0 {
		return Item{Key: c.Key, Mode: c.Mode, Limit: c.Limit}.validate()
	}
	seen := make(map[string]bool, 1+len(c.More))
	for _, it := range c.Items() {
		if err := it.validate(); err != nil {
			return err
		}
		if seen[it.Key] {
			return fmt.Errorf("key %q named twice", it.Key)
		}
		seen[it.Key] = true
	}
	return nil
}

// Validate checks an extend against the limits.
func (c *Extend) Validate() error {
	if err := checkHolder(c.Holder); err != nil {
		return err
	}
	if len(c.Items) == 0 || len(c.Items) > MaxBatch {
		return fmt.Errorf("extend of %d leases, want 1 to %d", len(c.Items), MaxBatch)
	}
	for _, it := range c.Items {
		if err := checkKey(it.Key); err != nil {
			return err
		}
		if it.Token == 0 {
			return fmt.Errorf("key %q: token must be > 0", it.Key)
		}
	}
	return nil
}

// Validate checks an extend-all against the limits.
func (c *ExtendAll) Validate() error {
	if err := checkHolder(c.Holder); err != nil {
		return err
	}
	if c.Count == 0 || c.Count > MaxBatch {
		return fmt.Errorf("extend of all %d leases, want 1 to %d", c.Count, MaxBatch)
	}
	return nil
}

// Validate checks a release against the limits.
func (c *Release) Validate() error {
	if err := checkKey(c.Key); err != nil {
		return err
	}
	if err := checkHolder(c.Holder); err != nil {
		return err
	}
	if c.Token == 0 {
		return fmt.Errorf("token must be > 0")
	}
	return nil
}

// Validate checks a cancel against the limits.
func (c *Cancel) Validate() error {
	if err := checkKey(c.Key); err != nil {
		return err
	}
	if err := checkHolder(c.Holder); err != nil {
		return err
	}
	if c.ReqID == 0 {
		return fmt.Errorf("request id must be > 0")
	}
	if c.Epoch > MaxEpoch {
		return fmt.Errorf("epoch %d above the limit %d", c.Epoch, uint64(MaxEpoch))
	}
	return nil
}

// Validate checks the batch's shape (its commands are checked as applied).
func (c *Batch) Validate() error {
	if len(c.Cmds) == 0 || len(c.Cmds) > MaxBatch {
		return fmt.Errorf("batch of %d commands, want 1 to %d", len(c.Cmds), MaxBatch)
	}
	acquires := 0
	for _, sub := range c.Cmds {
		switch sub.(type) {
		case *Acquire:
			acquires++
		case Promote, *Batch:
			return fmt.Errorf("batch may not contain %s", sub.Type())
		}
	}
	if acquires > 1 {
		return fmt.Errorf("batch holds %d acquires, at most 1 (one token per entry)", acquires)
	}
	return nil
}

func checkKey(k string) error {
	if k == "" {
		return fmt.Errorf("empty key")
	}
	if len(k) > MaxKeyLen {
		return fmt.Errorf("key of %d bytes exceeds %d", len(k), MaxKeyLen)
	}
	return nil
}

func checkHolder(h string) error {
	if h == "" {
		return fmt.Errorf("empty holder")
	}
	if len(h) > MaxHolderLen {
		return fmt.Errorf("holder of %d bytes exceeds %d", len(h), MaxHolderLen)
	}
	return nil
}
