package history

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRecorderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	r := NewRecorder(NewClock(time.Now()), &buf)
	var seen int
	r.OnRecord(func(Record) { seen++ })
	id := r.Invoke(Record{Client: "c1", Op: Acquire, Key: "k", Mode: "try"})
	r.Complete(id, Record{Type: OK, Token: 7, ValidUntil: 123})
	r.Event(Record{Client: "c1", Op: ExtendLost, Key: "k", Token: 7, Time: 5})
	open := r.Invoke(Record{Client: "c2", Op: Release, Key: "k", Token: 7})
	_ = open
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	if seen != 4 {
		t.Fatalf("OnRecord saw %d records, want 4", seen)
	}
	got, err := Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("read %d records, want 4", len(got))
	}
	if c := got[1]; c.Client != "c1" || c.Op != Acquire || c.Key != "k" || c.Token != 7 || c.ID != got[0].ID {
		t.Fatalf("completion did not inherit the invocation: %+v", c)
	}
	if got[2].Time != 5 {
		t.Fatalf("event time %d, want the given 5", got[2].Time)
	}
	ops, events, err := Pair(got)
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 2 || len(events) != 1 {
		t.Fatalf("Pair: %d ops %d events, want 2 and 1", len(ops), len(events))
	}
	if ops[0].Type() != OK || ops[0].End() != got[1].Time {
		t.Fatalf("first op %+v", ops[0])
	}
	if ops[1].Type() != Info || ops[1].End() != Infinity {
		t.Fatalf("an open invocation must become indeterminate with an infinite end: %+v", ops[1])
	}
}

func TestRecorderConcurrentIndexesAreDense(t *testing.T) {
	r := NewRecorder(NewClock(time.Now()), nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				r.Do(Record{Client: "c", Op: Get, Key: "k"}, func() Record { return Record{Type: OK} })
			}
		}()
	}
	wg.Wait()
	recs := r.Records()
	if len(recs) != 1600 {
		t.Fatalf("%d records", len(recs))
	}
	for i, rec := range recs {
		if rec.Index != int64(i) {
			t.Fatalf("record %d has index %d", i, rec.Index)
		}
	}
	if _, _, err := Pair(recs); err != nil {
		t.Fatal(err)
	}
}

func TestPairRejectsCorruptHistories(t *testing.T) {
	cases := map[string][]Record{
		"completion without invocation": {{ID: 1, Type: OK}},
		"double invocation":             {{ID: 1, Type: Invoke}, {ID: 1, Type: Invoke}},
		"unknown type":                  {{ID: 1, Type: "bogus"}},
	}
	for name, recs := range cases {
		if _, _, err := Pair(recs); err == nil {
			t.Errorf("%s: Pair accepted it", name)
		}
	}
}

func TestDecodeReportsBadLine(t *testing.T) {
	_, err := Decode(strings.NewReader("{\"i\":0,\"id\":1,\"t\":0,\"type\":\"invoke\",\"client\":\"c\",\"op\":\"get\"}\n\n{\"i\":1,"))
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("want an error naming line 3, got %v", err)
	}
}

func TestBuilderSaveLoad(t *testing.T) {
	b := NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.Lost(900, "c1", "k", 10, 1000)
	b.Fault(100, 200, "kill", "n1")
	path := t.TempDir() + "/h.jsonl"
	if err := Save(path, b.Records()); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 || got[1].ValidUntil != 1000*1e6 || End(got) != 900*1e6 {
		t.Fatalf("unexpected history %+v", got)
	}
	if keys := Keys(got); len(keys) != 1 || keys[0] != "k" {
		t.Fatalf("Keys = %v", keys)
	}
}

// TestGzipHistorySurvivesACrash writes a compressed history as a campaign
// does (flushed as it goes, never closed, as if the harness died) and
// reads back everything flushed, with an error that says it was cut.
func TestGzipHistorySurvivesACrash(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	r := NewRecorder(NewClock(time.Now()), zw)
	for i := 0; i < 100; i++ {
		r.Event(Record{Client: "c", Op: Pause, Key: "k"})
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	flushed := buf.Len()
	r.Event(Record{Client: "c", Op: Resume, Key: "k"}) // buffered, lost in the crash
	got, err := Decode(bytes.NewReader(buf.Bytes()[:flushed]))
	if len(got) != 100 {
		t.Fatalf("read %d records after a crash, want the 100 flushed", len(got))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut stream must say so: %v", err)
	}
	// A finished one reads back whole.
	r.Flush()
	zw.Close()
	got, err = Decode(&buf)
	if err != nil || len(got) != 101 {
		t.Fatalf("%d records, %v", len(got), err)
	}
}

func TestSaveLoadGzip(t *testing.T) {
	path := t.TempDir() + "/h.jsonl.gz"
	recs := []Record{{Index: 0, ID: 1, Type: Event, Client: "c", Op: Pause}}
	if err := Save(path, recs); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil || len(got) != 1 || got[0].Op != Pause {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestTrimKeepsOperationsWhole(t *testing.T) {
	b := NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.AcquireOK(100, 2000, "c2", "other", 11, 3000)
	b.ReleaseOK(900, 1500, "c1", "k", 10)
	b.Lost(1200, "c1", "k", 10, 1000)
	b.Fault(1000, 1100, "kill-leader", "n1")
	got := Trim(b.Records(), []string{"k"}, int64(1000*time.Millisecond), int64(1300*time.Millisecond))
	var ops []string
	for _, r := range got {
		ops = append(ops, string(r.Type)+" "+string(r.Op))
	}
	want := "invoke release,ok release,event extend-lost,invoke fault,ok fault,invoke heal,ok heal"
	if strings.Join(ops, ",") != want {
		t.Fatalf("trimmed to %v, want %s", ops, want)
	}
	if _, _, err := Pair(got); err != nil {
		t.Fatal(err)
	}
}
