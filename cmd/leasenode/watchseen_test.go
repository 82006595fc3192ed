package main

import (
	"testing"

	"github.com/leasenode/leasenode/lease"
)

// A watch started again through a node that lags the one before repeats
// older state (the new-user review: "released w/k0", then "granted w/k0"
// again after a leader kill): what the streams before showed is skipped,
// nothing of a stream's own listing (key order, not index order), and
// everything after a reset.
func TestWatchAgainSkipsWhatWasShown(t *testing.T) {
	var w watchSeen
	var shown []uint64
	stream := func(events ...lease.Event) {
		w.restart()
		for _, e := range events {
			if w.show(e) {
				shown = append(shown, e.Index)
			}
		}
	}
	granted := func(key string, index uint64) lease.Event {
		return lease.Event{Type: lease.Granted, Key: key, Index: index, Token: index}
	}
	released := func(key string, index uint64) lease.Event {
		return lease.Event{Type: lease.Released, Key: key, Index: index}
	}
	stream(granted("k0", 10), granted("k1", 5), released("k0", 12))
	stream(granted("k0", 10), granted("k1", 5), released("k0", 12), granted("k2", 13))
	stream(lease.Event{Type: lease.Reset})
	stream(granted("k1", 5), granted("k2", 13))
	want := []uint64{10, 5, 12, 13, 0, 5, 13}
	if len(shown) != len(want) {
		t.Fatalf("shown %v, want %v", shown, want)
	}
	for i := range want {
		if shown[i] != want[i] {
			t.Fatalf("shown %v, want %v", shown, want)
		}
	}
}

// A holding that ended while no stream was open (its release went to no
// stream) is shown as ended at the next stream's Listed event, when its
// listing lacks it (adversarial review: a consumer kept a released key as
// held). A holding granted after the listing's index is not: the node
// serving the new stream may not have applied it yet.
func TestWatchAgainShowsWhatEndedBetweenStreams(t *testing.T) {
	var w watchSeen
	var ended []string
	stream := func(events ...lease.Event) {
		w.restart()
		for _, e := range events {
			for _, h := range w.track(e) {
				ended = append(ended, h.Key)
			}
		}
	}
	held := func(key string, token uint64, current bool) lease.Event {
		return lease.Event{Type: lease.Granted, Key: key, Index: token, Token: token, Current: current}
	}
	listed := func(index uint64) lease.Event { return lease.Event{Type: lease.Listed, Index: index} }
	stream(held("a", 5, true), held("b", 6, true), listed(6), held("c", 9, false))
	if len(ended) != 0 {
		t.Fatalf("the first stream ended %v", ended)
	}
	// a was released, c is granted at 9 but the new node has applied only 8.
	stream(held("b", 6, true), listed(8))
	if len(ended) != 1 || ended[0] != "a" {
		t.Fatalf("ended %v, want [a]", ended)
	}
	stream(held("b", 6, true), held("c", 9, true), listed(9))
	if len(ended) != 1 {
		t.Fatalf("ended %v after a listing with b and c, want only [a]", ended)
	}
	// b expired into its lock-delay while no stream was open: the next
	// listing names it Expired (stop 31's adversarial review: it stayed
	// held until its lock-delay ended).
	stream(lease.Event{Type: lease.Expired, Key: "b", Index: 6, Token: 6, Current: true}, held("c", 9, true), listed(9))
	if len(ended) != 2 || ended[1] != "b" {
		t.Fatalf("ended %v, want [a b]", ended)
	}
}

// watchType names the listing's events as get names states, and changes
// by their type, for text and JSON alike.
func TestWatchType(t *testing.T) {
	for _, c := range []struct {
		e    lease.Event
		want string
	}{
		{lease.Event{Type: lease.Granted, Current: true}, "held"},
		{lease.Event{Type: lease.Expired, Current: true}, "lock-delay"},
		{lease.Event{Type: lease.Granted}, "granted"},
		{lease.Event{Type: lease.Expired}, "expired"},
		{lease.Event{Type: lease.Freed}, "freed"},
		{lease.Event{Type: lease.Reset}, "reset"},
	} {
		if got := watchType(c.e); got != c.want {
			t.Errorf("watchType(%+v) = %q, want %q", c.e, got, c.want)
		}
	}
}

// Every `watch -o json` line has the README's fields, an "ended" line
// (current false) as the others (it lacked "current"; new-user review).
func TestWatchJSONLinesHaveEveryField(t *testing.T) {
	want := []string{"time", "type", "index", "key", "holder", "token", "value", "current"}
	for _, c := range []struct {
		typ     string
		current bool
	}{{"ended", false}, {"held", true}, {"granted", false}} {
		line := watchJSON(c.typ, lease.Event{Key: "k", Token: 3}, c.current)
		if len(line) != len(want) {
			t.Errorf("%s line %v, want the fields %v", c.typ, line, want)
		}
		for _, f := range want {
			if _, ok := line[f]; !ok {
				t.Errorf("%s line %v lacks %q", c.typ, line, f)
			}
		}
		if line["current"] != c.current || line["type"] != c.typ {
			t.Errorf("%s line %v: want type %s, current %v", c.typ, line, c.typ, c.current)
		}
	}
}
