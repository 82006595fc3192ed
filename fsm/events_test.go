package fsm_test

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
)

// TestChangeFeedOrder: Changes signals and Drain delivers every kind of
// event in log order, through Apply and ApplyBatch alike.
func TestChangeFeedOrder(t *testing.T) {
	for _, batched := range []bool{false, true} {
		t.Run(fmt.Sprintf("batched=%v", batched), func(t *testing.T) {
			f := fsm.New(fsm.Config{Events: true})
			logs := []*raft.Log{
				entry(1, st(1, 0), fsm.Promote{}),
				entry(2, st(1, 0), &fsm.Acquire{Key: "a", Holder: "c1", ReqID: 1, TTL: 5 * s, LockDelay: s, Value: []byte("addr")}),
				entry(3, st(1, 0), acq("b", "c2", 1, 5*s, 0)),
				{Type: raft.LogNoop, Index: 4},
				entry(5, st(1, s), ext("c1", "a", 2, "b", 3)), // b is not c1's: no event
				entry(6, st(1, s), rel("b", "c2", 3)),
				entry(7, st(1, s), acq("a", "c3", 1, 5*s, 0)), // held: no event
				entry(8, st(1, 6*s), fsm.Expire{}),
				entry(9, st(1, 7*s), &fsm.Batch{Cmds: []fsm.Command{fsm.Expire{}, acq("a", "c3", 2, 5*s, 0)}}),
				entry(10, st(1, 7*s), acq("a", "c3", 2, 5*s, 0)), // retry: granted again, same token
				entry(11, st(2, 0), fsm.Promote{}),
			}
			want := []fsm.Event{
				{Type: fsm.EventPromoted, Index: 1},
				{Type: fsm.EventGranted, Index: 2, Key: "a", Holder: "c1", Token: 2, Value: []byte("addr")},
				{Type: fsm.EventGranted, Index: 3, Key: "b", Holder: "c2", Token: 3},
				{Type: fsm.EventExtended, Index: 5, Key: "a", Holder: "c1", Token: 2},
				{Type: fsm.EventReleased, Index: 6, Key: "b", Holder: "c2", Token: 3},
				{Type: fsm.EventExpired, Index: 8, Key: "a", Holder: "c1", Token: 2},
				{Type: fsm.EventFreed, Index: 9, Key: "a", Token: 2},
				{Type: fsm.EventGranted, Index: 9, Key: "a", Holder: "c3", Token: 9},
				{Type: fsm.EventGranted, Index: 10, Key: "a", Holder: "c3", Token: 9},
				{Type: fsm.EventPromoted, Index: 11},
			}
			if batched {
				f.ApplyBatch(logs[:5])
				f.ApplyBatch(logs[5:])
			} else {
				for _, l := range logs {
					f.Apply(l)
				}
			}
			select {
			case <-f.Changes():
			default:
				t.Fatal("no signal on Changes")
			}
			// Signals coalesce: one is pending at most.
			select {
			case <-f.Changes():
				t.Fatal("a second pending signal")
			default:
			}
			got := f.Drain(nil)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("events:\n got %+v\nwant %+v", got, want)
			}
			if again := f.Drain(nil); len(again) != 0 {
				t.Fatalf("second Drain: %+v", again)
			}
		})
	}
}

// TestChangeFeedNeverBlocks: Apply goes on when nobody drains or reads
// Changes; the events wait, in order, for the next Drain.
func TestChangeFeedNeverBlocks(t *testing.T) {
	f := fsm.New(fsm.Config{Events: true})
	one(t, f, 1, st(1, 0), fsm.Promote{})
	const n = 20000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range uint64(n) {
			f.Apply(entry(i+2, st(1, 0), acq(fmt.Sprintf("k%d", i), "c1", i+1, time.Hour, 0)))
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Apply blocked on an undrained change feed")
	}
	ev := f.Drain(make([]fsm.Event, 0, n+1))
	if len(ev) != n+1 {
		t.Fatalf("%d events, want %d", len(ev), n+1)
	}
	for i, e := range ev {
		if e.Index != uint64(i+1) {
			t.Fatalf("event %d has index %d", i, e.Index)
		}
	}
}

// TestChangeFeedOff: without Config.Events there is no channel and no
// event.
func TestChangeFeedOff(t *testing.T) {
	f := fsm.New(fsm.Config{})
	if f.Changes() != nil {
		t.Fatal("Changes is not nil with events off")
	}
	one(t, f, 1, st(1, 0), fsm.Promote{})
	one(t, f, 2, st(1, 0), acq("a", "c1", 1, s, 0))
	if err := restoreBytes(f, snapshotBytes(t, f)); err != nil {
		t.Fatal(err)
	}
	if ev := f.Drain(nil); len(ev) != 0 {
		t.Fatalf("events with the feed off: %+v", ev)
	}
}

// TestChangeFeedConcurrentDrain: a consumer that drains on every signal
// while entries are applied sees every event exactly once, in order.
func TestChangeFeedConcurrentDrain(t *testing.T) {
	f := fsm.New(fsm.Config{Events: true})
	const n = 5000
	got := make(chan []fsm.Event)
	stop := make(chan struct{})
	go func() {
		var all []fsm.Event
		for {
			select {
			case <-f.Changes():
				all = f.Drain(all)
			case <-stop:
				got <- f.Drain(all)
				return
			}
		}
	}()
	one(t, f, 1, st(1, 0), fsm.Promote{})
	for i := range uint64(n) {
		if i%2 == 0 {
			f.Apply(entry(i+2, st(1, 0), acq("k", "c1", i+1, time.Hour, 0)))
		} else {
			f.ApplyBatch([]*raft.Log{entry(i+2, st(1, 0), ext("c1", "k", int(i+1)))})
		}
	}
	close(stop)
	all := <-got
	if len(all) != n+1 {
		t.Fatalf("%d events, want %d", len(all), n+1)
	}
	for i, e := range all {
		if e.Index != uint64(i+1) {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
}
