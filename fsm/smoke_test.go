package fsm

import (
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	f := New(Config{Events: true})
	s := Stamp{Epoch: 1, Now: 0}
	if r := f.ApplyCommand(1, s, Promote{}); r.Results[0].Code != Promoted {
		t.Fatal(r)
	}
	r := f.ApplyCommand(2, s, &Acquire{Key: "a", Holder: "c1", ReqID: 1, TTL: 5 * time.Second})
	if r.Results[0].Code != Granted || r.Results[0].Token != 2 {
		t.Fatalf("%+v", r.Results)
	}
	r = f.ApplyCommand(3, Stamp{1, time.Second}, &Acquire{Key: "a", Holder: "c2", ReqID: 1, TTL: 5 * time.Second})
	if r.Results[0].Code != Held || r.Results[0].Wait != 4*time.Second {
		t.Fatalf("%+v", r.Results)
	}
	r = f.ApplyCommand(4, Stamp{1, 6 * time.Second}, &Acquire{Key: "a", Holder: "c2", ReqID: 1, TTL: 5 * time.Second})
	if r.Results[0].Code != Granted || r.Results[0].Token != 4 {
		t.Fatalf("%+v", r.Results)
	}
	ev := f.Drain(nil)
	if len(ev) != 3 {
		t.Fatalf("%+v", ev)
	}
}
