package lease_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: a node serving watches stops, gracefully (SIGTERM) or killed.
// The Broken event that ends each watch says which, in the client's words
// (new-user review M2: a graceful stop read "invalid_argument: protocol
// error: incomplete envelope: http2: server sent GOAWAY ... NO_ERROR", 1 s
// after it began, and a kill "invalid_argument: protocol error: incomplete
// envelope: unexpected EOF"). A graceful stop ends the stream at once with
// "node X is shutting down (it closed the stream)"; a kill reads
// "connection to X lost".
func TestWatchOfAStoppingNodeSaysWhy(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3, API: true})
	var addrs []string
	for i := range c.Size() {
		addrs = append(addrs, c.Config(i).APIAddr)
	}
	// A Remote sends a watch to the leader it knows: the node stopped
	// below is the leader.
	watch := func() <-chan lease.Event {
		cl, err := lease.Dial(ctxT(t, 10*time.Second), addrs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close(context.Background()) })
		events, err := cl.Watch(ctxT(t, 60*time.Second), "w/")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-events:
			if e.Type != lease.Listed {
				t.Fatalf("event %+v, want the end of an empty listing", e)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no Listed event")
		}
		return events
	}
	broken := func(events <-chan lease.Event, how string) string {
		select {
		case e, ok := <-events:
			if !ok || e.Type != lease.Broken || e.Err == nil {
				t.Fatalf("%s: event %+v (open %v), want Broken saying why", how, e, ok)
			}
			msg := e.Err.Error()
			for _, bad := range []string{"invalid_argument", "protocol error", "envelope"} {
				if strings.Contains(msg, bad) {
					t.Errorf("%s: Broken says %q, which names %q: a stopped node is no invalid argument", how, msg, bad)
				}
			}
			return msg
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: watch still open 30 s later", how)
		}
		return ""
	}
	li := c.WaitForLeader()
	stopped := watch()
	start := time.Now()
	stopDone := make(chan struct{})
	go func() { defer close(stopDone); c.Stop(li) }()
	msg := broken(stopped, "graceful stop")
	took := time.Since(start)
	select {
	case <-stopDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the graceful stop did not end in 30 s")
	}
	want := "node " + c.Config(li).APIAddr + " is shutting down (it closed the stream)"
	if !strings.Contains(msg, want) {
		t.Errorf("graceful stop: Broken says %q, want it to say %q", msg, want)
	}
	t.Logf("graceful stop: %q, %v after the stop began", msg, took.Round(time.Millisecond))

	li = c.WaitForLeader()
	killed := watch()
	c.Kill(li)
	msg = broken(killed, "kill")
	// In process a killed node's handlers may still end their streams
	// (its context ends first), or the connection is cut under them, as
	// a killed process's is.
	lost := "connection to " + c.Config(li).APIAddr + " lost"
	closing := "node " + c.Config(li).APIAddr + " is shutting down"
	if !strings.Contains(msg, lost) && !strings.Contains(msg, closing) {
		t.Errorf("kill: Broken says %q, want it to say %q (or %q)", msg, lost, closing)
	}
	t.Logf("kill: %q", msg)
}
