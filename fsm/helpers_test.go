package fsm_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// tb is what the helpers need of a test: *testing.T, *testing.B and
// *rapid.T all have it.
type tb interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

var _ tb = (testing.TB)(nil)

const (
	ms = time.Millisecond
	s  = time.Second
)

// st is a Stamp.
func st(epoch uint64, now time.Duration) fsm.Stamp { return fsm.Stamp{Epoch: epoch, Now: now} }

// entry wraps an encoded command in a Raft command log entry.
func entry(index uint64, s fsm.Stamp, cmd fsm.Command) *raft.Log {
	return &raft.Log{Type: raft.LogCommand, Index: index, Term: s.Epoch, Data: fsm.Encode(s, cmd)}
}

// apply applies cmd through Apply, as Raft would, and returns the response.
func apply(t tb, f *fsm.FSM, index uint64, s fsm.Stamp, cmd fsm.Command) *fsm.Response {
	t.Helper()
	out := f.Apply(entry(index, s, cmd))
	r, ok := out.(*fsm.Response)
	if !ok {
		t.Fatalf("Apply(%d) returned %T, want *fsm.Response", index, out)
	}
	return r
}

// one applies cmd and returns its only result.
func one(t tb, f *fsm.FSM, index uint64, s fsm.Stamp, cmd fsm.Command) fsm.Result {
	t.Helper()
	r := apply(t, f, index, s, cmd)
	if len(r.Results) != 1 {
		t.Fatalf("entry %d (%s): %d results, want 1: %+v", index, cmd.Type(), len(r.Results), r.Results)
	}
	return r.Results[0]
}

func acq(key, holder string, req uint64, ttl, delay time.Duration) *fsm.Acquire {
	return &fsm.Acquire{Key: key, Holder: holder, ReqID: req, TTL: ttl, LockDelay: delay}
}

func ext(holder string, kt ...any) *fsm.Extend {
	c := &fsm.Extend{Holder: holder}
	for i := 0; i+1 < len(kt); i += 2 {
		c.Items = append(c.Items, fsm.ExtendItem{Key: kt[i].(string), Token: uint64(kt[i+1].(int))})
	}
	return c
}

func rel(key, holder string, token uint64) *fsm.Release {
	return &fsm.Release{Key: key, Holder: holder, Token: token}
}

// snapshotBytes returns the FSM's snapshot as written by Persist.
func snapshotBytes(t tb, f *fsm.FSM) []byte {
	t.Helper()
	b, err := persist(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// persist takes a snapshot and persists it to memory.
func persist(f *fsm.FSM) ([]byte, error) {
	snap, err := f.Snapshot()
	if err != nil {
		return nil, err
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		return nil, err
	}
	if !sink.closed {
		return nil, errors.New("persist did not close the sink")
	}
	return sink.Bytes(), nil
}

// restoreBytes restores f from b.
func restoreBytes(f *fsm.FSM, b []byte) error {
	return f.Restore(io.NopCloser(bytes.NewReader(b)))
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
	failWrite         bool
}

func (s *memSink) ID() string { return "mem" }

func (s *memSink) Write(p []byte) (int, error) {
	if s.failWrite {
		return 0, io.ErrShortWrite
	}
	return s.Buffer.Write(p)
}

func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// allLeases lists every record.
func allLeases(f *fsm.FSM) []fsm.Lease {
	l, _ := f.List("", "", 1<<30)
	return l
}
