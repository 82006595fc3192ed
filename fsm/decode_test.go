package fsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// seedCommand is one valid command for the fuzz corpus and decode tests.
type seedCommand struct {
	name  string
	stamp fsm.Stamp
	cmd   fsm.Command
}

// seedCommands holds every command type, with and without optional parts.
func seedCommands() []seedCommand {
	return []seedCommand{
		{"promote", st(1, 0), fsm.Promote{}},
		{"promote-big-stamp", st(1<<40, 1<<50), fsm.Promote{}},
		{"acquire", st(1, 100*ms), acq("a", "c1", 1, 5*s, 0)},
		{"acquire-value-delay", st(1, 100*ms), &fsm.Acquire{Key: "locks/db", Holder: "client-7f3a", ReqID: 1 << 33, TTL: 15 * s, LockDelay: 2 * s, Value: []byte("10.0.0.7:8080")}},
		{"acquire-negative-ttl", st(1, -5), acq("a", "c1", 1, -time.Second, -1)},
		{"extend", st(2, 3*s), ext("c1", "a", 2, "b", 3, "c", 1<<20)},
		{"extend-empty", st(2, 3*s), &fsm.Extend{Holder: "c1"}},
		{"release", st(2, 4*s), rel("a", "c1", 2)},
		{"cancel", st(2, 4*s), &fsm.Cancel{Key: "a", Holder: "c1", ReqID: 1 << 40}},
		{"expire", st(3, time.Hour), fsm.Expire{}},
		{"batch-handover", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{rel("a", "c1", 2), acq("a", "c2", 1, 5*s, 0)}}},
		{"batch-mixed", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{fsm.Expire{}, ext("c1", "b", 3), rel("c", "c2", 9), acq("c", "c3", 4, s, s)}}},
		{"batch-cancel", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 3}, acq("a", "c2", 1, s, 0)}}},
		{"batch-two-acquires", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{acq("x", "c1", 1, s, 0), acq("y", "c1", 2, s, 0)}}},
		{"batch-empty", st(3, 2*s), &fsm.Batch{}},
		{"acquire-shared", st(1, s), &fsm.Acquire{Key: "s", Holder: "c1", ReqID: 7, TTL: 5 * s, Mode: fsm.ModeShared}},
		{"acquire-semaphore", st(1, s), &fsm.Acquire{Key: "n", Holder: "c1", ReqID: 8, TTL: 5 * s, Mode: fsm.ModeSemaphore, Limit: 3}},
		{"acquire-set", st(1, s), &fsm.Acquire{Key: "a", Holder: "c9", ReqID: 9, TTL: 5 * s, LockDelay: s, Value: []byte("v"),
			More: []fsm.Item{{Key: "s", Mode: fsm.ModeShared}, {Key: "n", Mode: fsm.ModeSemaphore, Limit: 3}}}},
		{"acquire-bad-shape", st(1, s), &fsm.Acquire{Key: "a", Holder: "c1", ReqID: 9, TTL: 5 * s, Mode: 9, Limit: 1 << 31,
			More: []fsm.Item{{Key: "a"}, {Key: "", Mode: fsm.ModeSemaphore}}}},
		{"cancel-epoch", st(5, 4*s), &fsm.Cancel{Key: "a", Holder: "c1", ReqID: 1 << 40, Epoch: 4}},
		{"batch-cancel-epoch-shaped", st(5, 2*s), &fsm.Batch{Cmds: []fsm.Command{&fsm.Cancel{Key: "a", Holder: "c1", ReqID: 3, Epoch: 5},
			&fsm.Acquire{Key: "s", Holder: "c2", ReqID: 1, TTL: s, Mode: fsm.ModeShared}}}},
		{"acquire-keep-lock-delay", st(1, s), &fsm.Acquire{Key: "a", Holder: "c1", ReqID: 2, TTL: 5 * s, LockDelay: s, KeepLockDelay: true}},
		{"batch-handover-keep-shaped", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{rel("a", "c1", 2),
			&fsm.Acquire{Key: "a", Holder: "c2", ReqID: 3, TTL: s, Mode: fsm.ModeShared, KeepLockDelay: true}}}},
		{"extend-all", st(2, 3*s), &fsm.ExtendAll{Holder: "c1", Count: 3, Digest: 0x9e3779b97f4a7c15}},
		{"extend-all-none", st(2, 3*s), &fsm.ExtendAll{Holder: "c1"}},
		{"batch-extend-all", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{fsm.Expire{}, &fsm.ExtendAll{Holder: "c1", Count: 1, Digest: 1}}}},
		{"batch-handover-set", st(3, 2*s), &fsm.Batch{Cmds: []fsm.Command{rel("a", "c1", 2),
			&fsm.Acquire{Key: "a", Holder: "c2", ReqID: 3, TTL: s, More: []fsm.Item{{Key: "b", Mode: fsm.ModeShared}}}}}},
	}
}

// rawSeeds are interesting byte strings that are not valid commands: most
// as version 1 (no checksum), some as version 2 with a valid checksum over
// a malformed body, some damaged.
var rawSeeds = map[string][]byte{
	"empty":              {},
	"version-0":          {0, 1, 0, 0},
	"version-7":          {7},
	"version-255":        {255, 1, 1, 0},
	"unknown-type":       {1, 9, 0, 0},
	"nested-batch":       {1, 6, 0, 0, 1, 6, 0},
	"promote-inbatch":    {1, 6, 0, 0, 1, 1},
	"forged-count":       {1, 3, 0, 0, 2, 'c', '1', 0xe8, 0x07, 1, 1}, // 1000 items in 2 bytes
	"over-maxbatch":      {1, 6, 0, 0, 0xa1, 0x8d, 0x06},              // 100_001 commands
	"varint-overflow":    {1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0},
	"huge-string":        {1, 4, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'},
	"v2-short":           {2, 1, 0},
	"v2-bad-checksum":    {2, 1, 0, 0, 0, 0, 0, 0},
	"v2-unknown-type":    signed([]byte{2, 9, 0, 0}),
	"v2-nested-batch":    signed([]byte{2, 6, 0, 0, 1, 6, 0}),
	"v2-forged-count":    signed([]byte{2, 3, 0, 0, 2, 'c', '1', 0xe8, 0x07, 1, 1}),
	"v2-huge-string":     signed([]byte{2, 4, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'}),
	"v2-trailing":        signed([]byte{2, 5, 0, 0, 0}),
	"v2-version-damaged": func() []byte { b := signed([]byte{2, 5, 0, 0}); b[0] = 1; return b }(),
	"v3-version-damaged": func() []byte { b := signed([]byte{3, 5, 0, 0}); b[0] = 1; return b }(),
	"v3-limit-overflow":  signed([]byte{3, 2, 0, 0, 1, 'k', 1, 'h', 1, 2, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0x10, 0}),
	"v3-forged-items":    signed([]byte{3, 2, 0, 0, 1, 'k', 1, 'h', 1, 2, 0, 0, 0, 0, 0xe8, 0x07, 1, 'x'}),
	"v3-acquire-as-v2":   signed([]byte{2, 2, 0, 0, 1, 'k', 1, 'h', 1, 2, 0, 0, 1, 0, 0}),
	"v5-unknown-flags":   signed([]byte{5, 2, 0, 0, 1, 'k', 1, 'h', 1, 2, 0, 0, 0, 0, 0, 0x02}),
	"v5-missing-flags":   signed([]byte{5, 2, 0, 0, 1, 'k', 1, 'h', 1, 2, 0, 0, 0, 0, 0}),
	"v5-extend-all":      signed([]byte{5, 8, 0, 0, 1, 'h', 1, 0, 0, 0, 0, 0, 0, 0, 0}),
	"v6-count-overflow":  signed([]byte{6, 8, 0, 0, 1, 'h', 0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0, 0, 0, 0, 0, 0}),
	"v6-short-digest":    signed([]byte{6, 8, 0, 0, 1, 'h', 1, 0, 0, 0, 0, 0, 0, 0}),
}

// FuzzDecode: Decode never panics; what it accepts re-encodes to an equal
// command; applying any bytes never panics, gives one Invalid result for
// what Decode refuses (Fatal for what IsFatal), and is deterministic.
func FuzzDecode(f *testing.F) {
	for _, c := range seedCommands() {
		f.Add(fsm.Encode(c.stamp, c.cmd))
	}
	for _, b := range rawSeeds {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecodeApply(t, data)
		// The same bytes as the body of a version-2 entry with a valid
		// checksum, so the fuzzer reaches the version-2 body decoder too.
		checkDecodeApply(t, signed(append([]byte{2}, data...)))
		// And of versions 3, 5 and 6, for the shapes', flags' and
		// extend-all body decoders.
		checkDecodeApply(t, signed(append([]byte{3}, data...)))
		checkDecodeApply(t, signed(append([]byte{5}, data...)))
		checkDecodeApply(t, signed(append([]byte{6}, data...)))
	})
}

func checkDecodeApply(t *testing.T, data []byte) {
	{
		s, cmd, err := fsm.Decode(data)
		if err == nil {
			if cmd == nil {
				t.Fatal("Decode returned no command and no error")
			}
			again := fsm.Encode(s, cmd)
			s2, cmd2, err := fsm.Decode(again)
			if err != nil {
				t.Fatalf("re-encoded command does not decode: %v", err)
			}
			if s2 != s || !reflect.DeepEqual(cmd2, cmd) {
				t.Fatalf("re-encode changed the command:\n%#v %#v\n%#v %#v", s, cmd, s2, cmd2)
			}
			if !bytes.Equal(fsm.Encode(s2, cmd2), again) {
				t.Fatal("encoding is not stable")
			}
		} else if cmd != nil {
			t.Fatal("Decode returned a command with an error")
		}
		// Apply it to a fresh FSM (epoch 0) and to one with leases at
		// epoch 1, twice each: never a panic, always the same outcome.
		for _, base := range []func() *fsm.FSM{fuzzFresh, fuzzBase} {
			a, b := base(), base()
			ra := a.Apply(&raft.Log{Type: raft.LogCommand, Index: 100, Data: data})
			rb := b.Apply(&raft.Log{Type: raft.LogCommand, Index: 100, Data: bytes.Clone(data)})
			if !reflect.DeepEqual(ra, rb) || !reflect.DeepEqual(allLeases(a), allLeases(b)) || a.Stats() != b.Stats() {
				t.Fatal("fsm-determinism: the same entry applied twice gave different outcomes")
			}
			if a.Fatal() == nil && !bytes.Equal(snapshotBytes(t, a), snapshotBytes(t, b)) {
				t.Fatal("fsm-determinism: the same entry applied twice gave different snapshots")
			}
			resp, ok := ra.(*fsm.Response)
			if !ok {
				t.Fatalf("Apply returned %T", ra)
			}
			if err != nil {
				want := fsm.Invalid
				if fsm.IsFatal(err) {
					want = fsm.Fatal
				}
				if len(resp.Results) != 1 || resp.Results[0].Code != want {
					t.Fatalf("undecodable entry gave %+v, want %v", resp.Results, want)
				}
				if (a.Fatal() != nil) != fsm.IsFatal(err) {
					t.Fatalf("Fatal() = %v for decode error %v", a.Fatal(), err)
				}
			}
		}
	}
}

func fuzzFresh() *fsm.FSM { return fsm.New(fsm.Config{Events: true}) }

func fuzzBase() *fsm.FSM {
	f := fsm.New(fsm.Config{Events: true})
	f.ApplyCommand(1, st(1, 0), fsm.Promote{})
	f.ApplyCommand(2, st(1, 0), acq("a", "c1", 1, 5*s, 0))
	f.ApplyCommand(3, st(1, 0), acq("b", "c2", 1, 5*s, 2*s))
	f.ApplyCommand(4, st(1, 0), acq("c", "c1", 2, 1*s, 1*s))
	f.ApplyCommand(5, st(1, 2*s), fsm.Expire{})
	f.ApplyCommand(6, st(1, 2*s), &fsm.Acquire{Key: "s", Holder: "c1", ReqID: 3, TTL: 5 * s, Mode: fsm.ModeShared})
	f.ApplyCommand(7, st(1, 2*s), &fsm.Acquire{Key: "s", Holder: "c2", ReqID: 3, TTL: 5 * s, Mode: fsm.ModeShared})
	f.ApplyCommand(8, st(1, 2*s), &fsm.Acquire{Key: "n", Holder: "c3", ReqID: 1, TTL: 5 * s, Mode: fsm.ModeSemaphore, Limit: 3,
		More: []fsm.Item{{Key: "x"}, {Key: "y", Mode: fsm.ModeShared}}})
	return f
}

// TestFuzzSeedCorpus keeps testdata/fuzz/FuzzDecode in step with the seeds
// (go test -run TestFuzzSeedCorpus -rewrite regenerates it), so the corpus
// holds every command type even for tools that read only the directory.
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	want := map[string][]byte{}
	for _, c := range seedCommands() {
		want["seed-"+c.name] = fsm.Encode(c.stamp, c.cmd)
	}
	for name, b := range rawSeeds {
		want["seed-"+name] = b
	}
	for name, b := range want {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if *rewrite {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -rewrite)", err)
		}
		if string(got) != content {
			t.Fatalf("%s is out of date (run with -rewrite)", path)
		}
	}
}

// TestDecodeRoundTrip: every command type encodes and decodes to itself.
func TestDecodeRoundTrip(t *testing.T) {
	for _, c := range seedCommands() {
		data := fsm.Encode(c.stamp, c.cmd)
		s, cmd, err := fsm.Decode(data)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := c.cmd
		if b, ok := want.(*fsm.Batch); ok && b.Cmds == nil {
			want = &fsm.Batch{Cmds: []fsm.Command{}}
		}
		if s != c.stamp || !reflect.DeepEqual(cmd, want) {
			t.Fatalf("%s: decoded %+v %#v, want %+v %#v", c.name, s, cmd, c.stamp, want)
		}
	}
}

// TestDecodeTruncated: every proper prefix of every valid command fails to
// decode, so a cut entry can never pass for a shorter command: in version 2
// the checksum catches it, and a body cut short under a valid checksum, or
// a version-1 entry cut short, does not parse either.
func TestDecodeTruncated(t *testing.T) {
	for _, c := range seedCommands() {
		data := fsm.Encode(c.stamp, c.cmd)
		body := data[:len(data)-4]
		v1 := asVersion1(data)
		if data[0] >= 3 {
			// Shapes, flags and ExtendAll have no version-1 form; their
			// body read as version 2 has trailing bytes.
			v2 := bytes.Clone(body)
			v2[0] = 2
			// An ExtendAll (version 6) is an unknown type there.
			if _, _, err := fsm.Decode(signed(v2)); !errors.Is(err, fsm.ErrMalformed) && !(data[0] == 6 && errors.Is(err, fsm.ErrUnknownType)) {
				t.Fatalf("%s as version 2: %v", c.name, err)
			}
			v1 = nil
		}
		for n := range len(data) {
			if _, cmd, err := fsm.Decode(data[:n]); err == nil || cmd != nil {
				t.Fatalf("%s cut to %d of %d bytes decoded: %#v", c.name, n, len(data), cmd)
			}
		}
		for n := 1; n < len(body); n++ {
			if _, cmd, err := fsm.Decode(signed(body[:n])); err == nil || cmd != nil || fsm.IsFatal(err) {
				t.Fatalf("%s body cut to %d of %d bytes, re-signed: %#v, %v", c.name, n, len(body), cmd, err)
			}
			if n >= len(v1) {
				continue
			}
			if _, cmd, err := fsm.Decode(v1[:n]); err == nil || cmd != nil || fsm.IsFatal(err) {
				t.Fatalf("%s version 1 cut to %d of %d bytes: %#v, %v", c.name, n, len(v1), cmd, err)
			}
		}
		// And one byte more is trailing garbage.
		if _, _, err := fsm.Decode(signed(append(bytes.Clone(body), 0))); !errors.Is(err, fsm.ErrMalformed) {
			t.Fatalf("%s with a trailing byte, re-signed: %v", c.name, err)
		}
		if v1 == nil {
			continue
		}
		if _, _, err := fsm.Decode(append(bytes.Clone(v1), 0)); !errors.Is(err, fsm.ErrMalformed) &&
			!(strings.Contains(c.name, "cancel") && errors.Is(err, fsm.ErrUnknownType)) {
			t.Fatalf("%s version 1 with a trailing byte: %v", c.name, err)
		}
	}
}

// TestDecodeErrors: each kind of damage gets its sentinel.
func TestDecodeErrors(t *testing.T) {
	cases := map[string]error{
		"empty": fsm.ErrTruncated, "version-0": fsm.ErrMalformed, "version-7": fsm.ErrNewerVersion,
		"version-255": fsm.ErrNewerVersion, "unknown-type": fsm.ErrUnknownType,
		"nested-batch": fsm.ErrMalformed, "promote-inbatch": fsm.ErrMalformed,
		"forged-count": fsm.ErrTruncated, "over-maxbatch": fsm.ErrMalformed,
		"varint-overflow": fsm.ErrMalformed, "huge-string": fsm.ErrTruncated,
		"v2-short": fsm.ErrChecksum, "v2-bad-checksum": fsm.ErrChecksum,
		"v2-unknown-type": fsm.ErrUnknownType, "v2-nested-batch": fsm.ErrMalformed,
		"v2-forged-count": fsm.ErrTruncated, "v2-huge-string": fsm.ErrTruncated,
		"v2-trailing": fsm.ErrMalformed, "v2-version-damaged": fsm.ErrChecksum,
		"v3-version-damaged": fsm.ErrChecksum, "v3-limit-overflow": fsm.ErrMalformed,
		"v3-forged-items": fsm.ErrTruncated, "v3-acquire-as-v2": fsm.ErrMalformed,
		"v5-unknown-flags": fsm.ErrMalformed, "v5-missing-flags": fsm.ErrTruncated,
		"v5-extend-all": fsm.ErrUnknownType, "v6-count-overflow": fsm.ErrMalformed,
		"v6-short-digest": fsm.ErrTruncated,
	}
	if len(cases) != len(rawSeeds) {
		t.Fatalf("%d cases for %d raw seeds", len(cases), len(rawSeeds))
	}
	for name, want := range cases {
		if _, _, err := fsm.Decode(rawSeeds[name]); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	// More items than MaxBatch are refused, even when the bytes are there.
	b := binary.AppendUvarint([]byte{1, 3, 0, 0, 2, 'c', '1'}, fsm.MaxBatch+1)
	b = append(b, bytes.Repeat([]byte{1, 'k', 1}, fsm.MaxBatch+1)...)
	if _, _, err := fsm.Decode(b); !errors.Is(err, fsm.ErrMalformed) {
		t.Errorf("extend of MaxBatch+1 items: %v", err)
	}
	b = binary.AppendUvarint([]byte{1, 3, 0, 0, 2, 'c', '1'}, fsm.MaxBatch)
	b = append(b, bytes.Repeat([]byte{1, 'k', 1}, fsm.MaxBatch)...)
	if _, _, err := fsm.Decode(b); err != nil {
		t.Errorf("extend of MaxBatch items: %v", err)
	}
}

// TestNewerVersionIsFatal: an entry from a newer format version, however
// long, gets a Fatal result, is reported once through Config.OnFatal and
// stays reported by Fatal(); damaged entries of this version are not fatal.
func TestNewerVersionIsFatal(t *testing.T) {
	valid := fsm.Encode(st(1, s), acq("a", "c1", 1, 5*s, 0))
	newer := bytes.Clone(valid)
	newer[0] = fsm.FormatVersion + 1
	entries := [][]byte{{fsm.FormatVersion + 1}, {fsm.FormatVersion + 1, 3}, newer, {fsm.FormatVersion + 1, 99, 0xff}}
	for i, data := range entries {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/batch=%v", i, batch), func(t *testing.T) {
				var f *fsm.FSM
				var reported []error
				f = fsm.New(fsm.Config{OnFatal: func(err error) {
					reported = append(reported, err)
					// The callback may look at the FSM (to log its state,
					// say) without deadlocking.
					_ = f.Fatal()
					_ = f.Stats()
				}})
				one(t, f, 1, st(1, 0), fsm.Promote{})
				if f.Fatal() != nil {
					t.Fatal("Fatal before any bad entry")
				}
				// A malformed entry of this version is Invalid but not fatal.
				apply(t, f, 2, st(1, 0), fsm.Expire{})
				f.Apply(&raft.Log{Type: raft.LogCommand, Index: 3, Data: signed(valid[:len(valid)-5])})
				if f.Fatal() != nil || len(reported) != 0 {
					t.Fatalf("damaged entry reported as fatal: %v", f.Fatal())
				}
				log := &raft.Log{Type: raft.LogCommand, Index: 4, Data: data}
				var out interface{}
				done := make(chan struct{})
				go func() {
					defer close(done)
					if batch {
						out = f.ApplyBatch([]*raft.Log{log, entry(5, st(1, s), fsm.Expire{})})[0]
					} else {
						out = f.Apply(log)
					}
				}()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("Apply deadlocked in OnFatal")
				}
				resp, ok := out.(*fsm.Response)
				if !ok || len(resp.Results) != 1 || resp.Results[0].Code != fsm.Fatal {
					t.Fatalf("result %+v", out)
				}
				if len(reported) != 1 || !errors.Is(reported[0], fsm.ErrNewerVersion) {
					t.Fatalf("OnFatal got %v", reported)
				}
				if err := f.Fatal(); !errors.Is(err, fsm.ErrNewerVersion) || !strings.Contains(err.Error(), "entry 4") {
					t.Fatalf("Fatal() = %v", err)
				}
				if _, ok := f.Get("a"); ok {
					t.Fatal("the newer entry was applied")
				}
				// A later newer-version entry does not replace the first.
				f.Apply(&raft.Log{Type: raft.LogCommand, Index: 9, Data: []byte{fsm.FormatVersion + 1}})
				if err := f.Fatal(); !strings.Contains(err.Error(), "entry 4") {
					t.Fatalf("Fatal() = %v, want the first fatal entry", err)
				}
			})
		}
	}
}

// TestOnFatalWithoutCallback: a nil OnFatal is allowed; Fatal still tells.
func TestOnFatalWithoutCallback(t *testing.T) {
	f := fsm.New(fsm.Config{})
	var wg sync.WaitGroup
	wg.Go(func() {
		f.Apply(&raft.Log{Type: raft.LogCommand, Index: 1, Data: []byte{fsm.FormatVersion + 1, 1, 0, 0}})
	})
	wg.Wait()
	if !errors.Is(f.Fatal(), fsm.ErrNewerVersion) {
		t.Fatalf("Fatal() = %v", f.Fatal())
	}
}
