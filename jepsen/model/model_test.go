package model

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/leasenode/leasenode/jepsen/history"
)

func TestStepTable(t *testing.T) {
	held := State{Token: 10, Holder: "c1", Status: Held}
	free := State{Token: 10, Status: Free}
	wild := State{Token: 10, Wild: true, Holder: "c2", Status: Held}
	acq := func(c string) Input { return Input{Kind: KindAcquire, Key: "k", Client: c} }
	rel := func(c string, tok uint64) Input { return Input{Kind: KindRelease, Key: "k", Client: c, Token: tok} }
	get := Input{Kind: KindGet, Key: "k", Client: "r"}
	chk := func(tok uint64) Input { return Input{Kind: KindCheck, Key: "k", Client: "r", Token: tok} }
	cases := []struct {
		name  string
		s     State
		in    Input
		out   Output
		legal bool
	}{
		{"grant from free", State{}, acq("c1"), Output{Granted: true, Token: 5}, true},
		{"grant needs a larger token", free, acq("c2"), Output{Granted: true, Token: 10}, false},
		{"grant over a held lease (expiry)", held, acq("c2"), Output{Granted: true, Token: 11}, true},
		{"refused while held", held, acq("c2"), Output{}, true},
		{"refused while free", free, acq("c2"), Output{}, false},
		{"refused initially", State{}, acq("c2"), Output{}, false},
		{"release by holder", held, rel("c1", 10), Output{}, true},
		{"release by other is a no-op", held, rel("c2", 10), Output{}, true},
		{"get sees holder", held, get, Output{Found: true, Holder: "c1", Token: 10}, true},
		{"get sees wrong token", held, get, Output{Found: true, Holder: "c1", Token: 9}, false},
		{"get sees wrong holder", held, get, Output{Found: true, Holder: "c3", Token: 10}, false},
		{"get sees nothing (expired)", held, get, Output{}, true},
		{"get sees lock-delay (expired)", State{Token: 10, Holder: "c1", Status: Held, Delay: true}, get, Output{Found: true, Token: 10}, true},
		{"no lock-delay without asking", held, get, Output{Found: true, Token: 10}, false},
		{"refused after releasing an expired lease in lock-delay", State{Token: 10, Status: LockDelay, Delay: true}, acq("c2"), Output{}, true},
		{"get sees released record", free, get, Output{Found: true, Holder: "c1", Token: 10}, false},
		{"get fixes a wild token", wild, get, Output{Found: true, Holder: "c2", Token: 12}, true},
		{"wild token must exceed the bound", wild, get, Output{Found: true, Holder: "c2", Token: 9}, false},
		{"wild holder must match", wild, get, Output{Found: true, Holder: "c1", Token: 12}, false},
		{"check current", held, chk(10), Output{Current: true}, true},
		{"check current of a freed token", free, chk(10), Output{Current: true}, false},
		{"check not current (expired)", held, chk(10), Output{}, true},
		{"unknown acquire", free, acq("c2"), Output{Unknown: true}, true},
	}
	for _, c := range cases {
		got := len(Step(c.s, c.in, c.out)) > 0
		if got != c.legal {
			t.Errorf("%s: legal=%v, want %v (next states %v)", c.name, got, c.legal, Step(c.s, c.in, c.out))
		}
	}
}

func TestReleaseFreesOnlyTheHoldersToken(t *testing.T) {
	held := State{Token: 10, Holder: "c1", Status: Held}
	for _, next := range Step(held, Input{Kind: KindRelease, Key: "k", Client: "c1", Token: 10}, Output{}) {
		if next.(State).Status == Held {
			t.Fatalf("release by the holder left it held: %v", next)
		}
	}
	for _, next := range Step(held, Input{Kind: KindRelease, Key: "k", Client: "c1", Token: 9}, Output{}) {
		if next.(State).Status == Free {
			t.Fatalf("release of an old token freed the key: %v", next)
		}
	}
}

func check(t *testing.T, b *history.Builder) porcupine.CheckResult {
	t.Helper()
	ops, _, err := history.Pair(b.Records())
	if err != nil {
		t.Fatal(err)
	}
	return porcupine.CheckOperationsTimeout(Model(), Operations(ops), 10*time.Second)
}

func TestPorcupineAcceptsIndeterminateGrantSeenLater(t *testing.T) {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.ReleaseOK(100, 110, "c1", "k", 10)
	b.AcquireInfo(120, 130, "c2", "k")     // unknown outcome
	b.GetOK(200, 210, "c3", "k", "c2", 14) // ... it was granted
	b.AcquireHeld(220, 230, "c3", "k")
	if res := check(t, b); res != porcupine.Ok {
		t.Fatalf("got %v, want Ok", res)
	}
}

func TestPorcupineRejectsStaleRead(t *testing.T) {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.ReleaseOK(100, 110, "c1", "k", 10)
	b.GetOK(200, 210, "c3", "k", "c1", 10) // sees the released grant
	if res := check(t, b); res != porcupine.Illegal {
		t.Fatalf("got %v, want Illegal", res)
	}
}

func TestPorcupinePartitionsByKey(t *testing.T) {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "a", 10, 1000)
	b.AcquireOK(0, 5, "c2", "b", 11, 1000)
	b.GetOK(10, 20, "c3", "a", "c1", 10)
	b.GetOK(10, 20, "c3", "b", "c2", 11)
	if res := check(t, b); res != porcupine.Ok {
		t.Fatalf("got %v, want Ok", res)
	}
}
