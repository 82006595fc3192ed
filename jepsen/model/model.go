// Package model is the sequential specification of one lease key that the
// linearizability checker (package checker, with porcupine) holds the
// cluster's history against.
//
// It owns the model and the translation of history operations into
// porcupine operations. It does not decide what counts as a violation of
// mutual exclusion in real time (that needs clocks; see checker's
// single-holder) and never talks to a cluster.
//
// # The model
//
// A key is a register holding (token, holder, status). Status is Free (never
// held, or released by its holder), Held, Expired, or LockDelay (an expired
// lease released by its holder after the reaper may have put the key in
// lock-delay). Expiry depends on
// clocks the model cannot see, so a Held key may become Expired before any
// operation: the model is nondeterministic, and porcupine's
// NondeterministicModel explores both. An Expired record may still be
// visible (not yet reaped, or in lock-delay) or already gone.
//
//   - acquire granted with token T: T is larger than every token granted
//     before it in the linearization (monotonic-token), and the key becomes
//     (T, client, Held). A grant while another holder's lease is Held is
//     allowed only through the nondeterministic expiry — real-time
//     exclusion is single-holder's job.
//   - acquire refused as held: the key is not Free. A refusal right after a
//     release, with no grant in between, is a violation.
//   - acquire indeterminate: either nothing happened, or the key became
//     Held by the client with a token unknown to the history but larger
//     than every earlier one (a "wild" token, fixed by a later read).
//   - a waiting acquire (wait or timeout mode), whatever its outcome, may
//     also have made grants its record does not show: the lease client
//     gives back a grant whose answer came after its validity and asks
//     again with a new request id. For each such grant a read proves,
//     package checker adds an indeterminate acquire of the client over
//     the waiting acquire's interval (see its witness).
//   - release of T by its holder: a Held key with token T becomes Free (an
//     Expired one becomes Free, or LockDelay if the grant asked for a
//     lock-delay); otherwise nothing changes (releasing a lease one no
//     longer holds is a no-op).
//   - get: found (T, holder) requires the key's current token to be T and
//     not Free; not found requires Free or Expired.
//   - check-token T: current requires token T and not Free; not current
//     requires another token or not Held.
//
// Operations that certainly failed (no leader, invalid) have no effect and
// are left out; indeterminate ones are given an infinite return time, so
// porcupine may place them anywhere after their invocation, and may
// choose either outcome.
package model

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/leasenode/leasenode/jepsen/history"
)

// Status is the state of a key's lease in the model.
type Status uint8

// Statuses.
const (
	// Free: never held, or released by its holder.
	Free Status = iota
	// Held: granted and possibly still valid.
	Held
	// Expired: granted, then (perhaps) expired; the record may or may not
	// still be visible.
	Expired
	// LockDelay: an expired lease's holder released it; the key may still
	// be blocked by lock-delay (a record without holder) or free.
	LockDelay
)

// String names the status.
func (s Status) String() string {
	switch s {
	case Free:
		return "free"
	case Held:
		return "held"
	case Expired:
		return "expired"
	case LockDelay:
		return "lock-delay"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// State is the model's state of one key. It is comparable.
type State struct {
	// Token is the last granted token; when Wild it is only a lower bound
	// (the last token known before an indeterminate grant).
	Token  uint64
	Wild   bool
	Holder string
	Status Status
	// Delay: the grant asked for a lock-delay, so its expiry may leave
	// the key blocked by a record without holder.
	Delay bool
}

// String describes the state for porcupine's visualization.
func (s State) String() string {
	tok := fmt.Sprint(s.Token)
	if s.Wild {
		tok = fmt.Sprintf(">%d", s.Token)
	}
	if s.Status == Free && s.Holder == "" {
		return fmt.Sprintf("free (last token %s)", tok)
	}
	return fmt.Sprintf("%s by %s token %s", s.Status, s.Holder, tok)
}

// Kind is the kind of a model operation.
type Kind uint8

// Kinds.
const (
	KindAcquire Kind = iota + 1
	KindRelease
	KindGet
	KindCheck
)

// Input is a model operation's input.
type Input struct {
	Kind   Kind
	Key    string
	Client string
	// Token released or checked.
	Token uint64
	// LockDelay: an acquire asked for a lock-delay.
	LockDelay bool
}

// Output is a model operation's result.
type Output struct {
	// Unknown: the operation is indeterminate.
	Unknown bool
	// Granted: an acquire was granted (with Token); false: refused as
	// held.
	Granted bool
	// Token granted, or read by a get.
	Token uint64
	// Found and Holder: what a get saw (Holder empty in lock-delay).
	Found  bool
	Holder string
	// Current: a check-token's answer.
	Current bool
}

// Model returns the porcupine model of one lease key. Operations of
// several keys may be given to it: it partitions them by key.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: partitionByKey,
		Init:      func() []interface{} { return []interface{}{State{}} },
		Step: func(state, input, output interface{}) []interface{} {
			return Step(state.(State), input.(Input), output.(Output))
		},
		DescribeOperation: func(input, output interface{}) string {
			return Describe(input.(Input), output.(Output))
		},
		DescribeState: func(state interface{}) string { return state.(State).String() },
		DescribeOperationMetadata: func(info interface{}) string {
			if id, ok := info.(int64); ok {
				return fmt.Sprintf("history op %d", id)
			}
			return fmt.Sprint(info)
		},
	}
	return nm.ToModel()
}

func partitionByKey(ops []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	for _, op := range ops {
		k := op.Input.(Input).Key
		byKey[k] = append(byKey[k], op)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		out = append(out, byKey[k])
	}
	return out
}

// Step returns every state the key can be in after the operation, or none
// if the operation's result is impossible from s.
func Step(s State, in Input, out Output) []interface{} {
	var next []interface{}
	for _, cur := range expand(s) {
		next = append(next, step(cur, in, out)...)
	}
	return next
}

// expand adds the states s may have reached by expiring.
func expand(s State) []State {
	if s.Status == Held {
		e := s
		e.Status = Expired
		return []State{s, e}
	}
	return []State{s}
}

func step(s State, in Input, out Output) []interface{} {
	if out.Unknown {
		// Either nothing happened, or the effect did.
		res := []interface{}{s}
		switch in.Kind {
		case KindAcquire:
			res = append(res, State{Token: s.Token, Wild: true, Holder: in.Client, Status: Held, Delay: in.LockDelay})
		case KindRelease:
			res = append(res, release(s, in)...)
		}
		return res
	}
	switch in.Kind {
	case KindAcquire:
		if !out.Granted {
			if s.Status == Free {
				return nil
			}
			return []interface{}{s}
		}
		if out.Token <= s.Token {
			return nil
		}
		return []interface{}{State{Token: out.Token, Holder: in.Client, Status: Held, Delay: in.LockDelay}}
	case KindRelease:
		return release(s, in)
	case KindGet:
		if !out.Found {
			if s.Status == Held {
				return nil
			}
			return []interface{}{s}
		}
		if s.Status == Free {
			return nil
		}
		if out.Holder != "" && (out.Holder != s.Holder || s.Status == LockDelay) {
			return nil
		}
		if s.Wild {
			if out.Token == 0 {
				return []interface{}{s}
			}
			if out.Token <= s.Token {
				return nil
			}
			s.Token, s.Wild = out.Token, false
			return []interface{}{s}
		}
		if out.Token != 0 && out.Token != s.Token {
			return nil
		}
		if out.Holder == "" && (s.Status == Held || !s.Delay) {
			// Lock-delay follows the expiry of a grant that asked for it,
			// never a held lease.
			return nil
		}
		return []interface{}{s}
	case KindCheck:
		if out.Current {
			if s.Status == Free || s.Status == LockDelay || s.Wild || s.Token != in.Token {
				return nil
			}
			return []interface{}{s}
		}
		if s.Status == Held && !s.Wild && s.Token == in.Token {
			return nil
		}
		return []interface{}{s}
	}
	return nil
}

// release applies a release of in.Token by in.Client that took effect.
func release(s State, in Input) []interface{} {
	if s.Wild || s.Token != in.Token || s.Holder != in.Client || s.Status == Free || s.Status == LockDelay {
		return []interface{}{s}
	}
	freed := State{Token: s.Token, Status: Free}
	if s.Status == Expired && s.Delay {
		// It may have been reaped into lock-delay before the release.
		return []interface{}{freed, State{Token: s.Token, Status: LockDelay, Delay: true}}
	}
	return []interface{}{freed}
}

// Describe renders an operation for porcupine's visualization.
func Describe(in Input, out Output) string {
	res := ""
	switch {
	case out.Unknown:
		res = "?"
	case in.Kind == KindAcquire && out.Granted:
		res = fmt.Sprintf("granted %d", out.Token)
	case in.Kind == KindAcquire:
		res = "held"
	case in.Kind == KindRelease:
		res = "ok"
	case in.Kind == KindGet && !out.Found:
		res = "none"
	case in.Kind == KindGet && out.Holder == "":
		res = fmt.Sprintf("lock-delay %d", out.Token)
	case in.Kind == KindGet:
		res = fmt.Sprintf("%s %d", out.Holder, out.Token)
	case in.Kind == KindCheck:
		res = fmt.Sprint(out.Current)
	}
	switch in.Kind {
	case KindAcquire:
		return fmt.Sprintf("%s acquire -> %s", in.Client, res)
	case KindRelease:
		return fmt.Sprintf("%s release %d -> %s", in.Client, in.Token, res)
	case KindGet:
		return fmt.Sprintf("%s get -> %s", in.Client, res)
	case KindCheck:
		return fmt.Sprintf("%s check %d -> %s", in.Client, in.Token, res)
	}
	return "?"
}

// Operations translates a history into porcupine operations, one client id
// per history Client (for the visualization); each operation's Metadata is
// its history ID (an int64). It leaves out operations
// that certainly had no effect and say nothing about the key (failed
// writes to the cluster, failed reads) and those the model does not cover
// (writes to the resource, events).
func Operations(ops []history.Operation) []porcupine.Operation {
	ids := map[string]int{}
	var out []porcupine.Operation
	for _, op := range ops {
		in, o, ok := translate(op)
		if !ok {
			continue
		}
		id, seen := ids[op.Invoke.Client]
		if !seen {
			id = len(ids)
			ids[op.Invoke.Client] = id
		}
		out = append(out, porcupine.Operation{
			ClientId: id,
			Input:    in,
			Output:   o,
			Call:     op.Start(),
			Return:   op.End(),
			Metadata: op.Invoke.ID,
		})
	}
	return out
}

func translate(op history.Operation) (Input, Output, bool) {
	inv, c := op.Invoke, op.Complete
	in := Input{Key: inv.Key, Client: inv.Client, Token: inv.Token, LockDelay: inv.LockDelay > 0}
	var out Output
	switch inv.Op {
	case history.Acquire:
		in.Kind = KindAcquire
	case history.Release:
		in.Kind = KindRelease
	case history.Get:
		in.Kind = KindGet
	case history.CheckToken:
		in.Kind = KindCheck
	default:
		return in, out, false
	}
	switch c.Type {
	case history.Info:
		if in.Kind == KindGet || in.Kind == KindCheck {
			return in, out, false // a read with no answer says nothing
		}
		out.Unknown = true
	case history.Fail:
		if in.Kind == KindAcquire && c.Err == history.ErrHeld {
			return in, out, true // refused: the key was held
		}
		return in, out, false
	case history.OK:
		switch in.Kind {
		case KindAcquire:
			out.Granted, out.Token = true, c.Token
		case KindGet:
			out.Found, out.Token, out.Holder = c.Found, c.Token, c.Holder
		case KindCheck:
			out.Current = c.Current
		}
	default:
		return in, out, false
	}
	return in, out, true
}

// Hash hashes a State for porcupine's cache (equal states hash equally).
func Hash(s State) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], s.Token)
	h.Write(b[:])
	flags := byte(s.Status)
	if s.Wild {
		flags |= 0x40
	}
	if s.Delay {
		flags |= 0x80
	}
	h.Write([]byte{flags})
	h.Write([]byte(s.Holder))
	return h.Sum64()
}

// KeyModel returns the porcupine model of one key's operations starting
// in any of the states init (nil: the key never held). Unlike Model it
// does not partition: give it the operations of one key.
func KeyModel(init []State) porcupine.Model {
	return keyModel(init, nil)
}

// kindEnd is the input of the sentinel operation Reach appends.
const kindEnd Kind = 0xff

func keyModel(init []State, end func(State)) porcupine.Model {
	if len(init) == 0 {
		init = []State{{}}
	}
	nm := porcupine.NondeterministicModel{
		Init: func() []interface{} {
			out := make([]interface{}, len(init))
			for i, s := range init {
				out[i] = s
			}
			return out
		},
		Step: func(state, input, output interface{}) []interface{} {
			in := input.(Input)
			if in.Kind == kindEnd {
				end(state.(State))
				return nil
			}
			return Step(state.(State), in, output.(Output))
		},
		Hash:              func(state interface{}) uint64 { return Hash(state.(State)) },
		DescribeOperation: func(input, output interface{}) string { return Describe(input.(Input), output.(Output)) },
		DescribeState:     func(state interface{}) string { return state.(State).String() },
		DescribeOperationMetadata: func(info interface{}) string {
			if id, ok := info.(int64); ok {
				return fmt.Sprintf("history op %d", id)
			}
			return fmt.Sprint(info)
		},
	}
	return nm.ToModel()
}

// Reach checks the operations of one key (a segment of its history) from
// the states init and returns every state the key can be in once all of
// them have taken effect: the union, over every linearization porcupine
// can find, of the state it ends in. The result is porcupine.Ok with a
// non-empty set, porcupine.Illegal (no linearization: the set is empty)
// or porcupine.Unknown (timeout).
//
// How: a sentinel operation, invoked after every other operation has
// returned, is appended; its step records the state it is offered and
// refuses. Porcupine must then exhaust its search: it tries every order
// the operations' intervals allow, pruning only configurations (set of
// operations linearized, set of states) it has already explored, whose
// continuations are identical. Every linearization of the whole segment
// therefore reaches the sentinel, and the recorded states are exactly
// the states the segment can end in.
func Reach(ops []porcupine.Operation, init []State, timeout time.Duration) (porcupine.CheckResult, []State) {
	if len(ops) == 0 {
		if len(init) == 0 {
			return porcupine.Ok, []State{{}}
		}
		return porcupine.Ok, append([]State(nil), init...)
	}
	var (
		mu   sync.Mutex
		seen = map[State]bool{}
		out  []State
	)
	m := keyModel(init, func(s State) {
		mu.Lock()
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
		mu.Unlock()
	})
	var last int64
	maxClient := 0
	for _, op := range ops {
		last = max(last, op.Return, op.Call)
		maxClient = max(maxClient, op.ClientId)
	}
	if last >= math.MaxInt64-2 {
		last = math.MaxInt64 - 2
	}
	all := append(append([]porcupine.Operation(nil), ops...), porcupine.Operation{
		ClientId: maxClient + 1, Input: Input{Kind: kindEnd}, Output: Output{}, Call: last + 1, Return: last + 2,
	})
	res := porcupine.CheckOperationsTimeout(m, all, timeout)
	if res == porcupine.Unknown {
		return porcupine.Unknown, nil
	}
	mu.Lock()
	defer mu.Unlock()
	if len(out) == 0 {
		return porcupine.Illegal, nil
	}
	sort.Slice(out, func(i, j int) bool { return stateLess(out[i], out[j]) })
	return porcupine.Ok, out
}

func stateLess(a, b State) bool {
	switch {
	case a.Token != b.Token:
		return a.Token < b.Token
	case a.Status != b.Status:
		return a.Status < b.Status
	case a.Holder != b.Holder:
		return a.Holder < b.Holder
	case a.Wild != b.Wild:
		return !a.Wild
	}
	return !a.Delay && b.Delay
}
