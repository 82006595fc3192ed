package checker

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

var update = flag.Bool("update", false, "rewrite jepsen/testdata from the synthetic histories in this file")

const testdata = "../testdata"

// synthetic is a history built in code with the verdict one checker must
// reach. Every one is saved as jepsen/testdata/CHECKER.VERDICT.NAME.jsonl
// (run `go test ./jepsen/checker -update` after changing one) and replayed
// from there by TestReplayTestdata, together with histories saved from
// real campaigns.
type synthetic struct {
	name    string
	checker string
	valid   bool
	build   func(b *history.Builder)
}

func (s synthetic) file() string {
	v := "bad"
	if s.valid {
		v = "good"
	}
	return s.checker + "." + v + "." + s.name + ".jsonl"
}

var synthetics = []synthetic{
	// single-holder
	{"release-then-grant", NameSingleHolder, true, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.AcquireHeld(100, 105, "c2", "k")
		b.ReleaseOK(400, 410, "c1", "k", 10)
		b.AcquireOK(405, 420, "c2", "k", 12, 1400)
		b.Lost(1300, "c2", "k", 12, 1300)
	}},
	{"grant-after-validity", NameSingleHolder, true, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.Lost(1002, "c1", "k", 10, 1000) // noticed late; validity is what counts
		b.AcquireOK(900, 1000, "c2", "k", 12, 2000)
		b.ReleaseOK(1500, 1510, "c2", "k", 12)
	}},
	{"same-client-reacquires", NameSingleHolder, true, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.Lost(500, "c1", "k", 10, 1000) // refused extend: lost before validity
		b.AcquireOK(600, 610, "c1", "k", 14, 1600)
		b.ReleaseOK(700, 710, "c1", "k", 14)
	}},
	{"overlap-before-expiry", NameSingleHolder, false, func(b *history.Builder) {
		// c2 is granted at 600 ms while c1 believes its lease valid until
		// 1000 ms: what an early expiry (a leader clock running fast, a
		// skipped Promote rebase) looks like.
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.AcquireOK(590, 600, "c2", "k", 12, 1600)
		b.Lost(1000, "c1", "k", 10, 1000)
		b.ReleaseOK(1200, 1210, "c2", "k", 12)
	}},
	{"overlap-extended-by-deposed-leader", NameSingleHolder, false, func(b *history.Builder) {
		// c1 kept extending through a deposed leader and believes until
		// 3000 ms; the new leader granted c2 at 1500 ms.
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.Event(1400, history.Record{Client: history.NemesisClient, Op: history.Fault, Fault: "isolate-leader"})
		b.AcquireOK(1000, 1500, "c2", "k", 20, 2500)
		b.Lost(3000, "c1", "k", 10, 3000)
	}},

	{"reported-valid-until-after-grant", NameSingleHolder, false, func(b *history.Builder) {
		// Issue 9 item 1: c1 reported ValidUntil 1600 ms while healthy,
		// declared the lease lost 100 ms early and released it at once;
		// c2, waiting, was granted at 1520 ms while c1's reported
		// validity was still in the future. A user gating writes on
		// ValidUntil overlaps c2.
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.Observe(600, "c1", "k", 10, 1600, true)
		b.Invoke(1000, history.Record{Client: "c2", Op: history.Acquire, Key: "k", Mode: "wait"})
		b.Lost(1500, "c1", "k", 10, 1600)
		b.Complete(1520, 3, history.Record{Type: history.OK, Client: "c2", Op: history.Acquire, Key: "k", Token: 12, ValidUntil: 3500 * 1e6})
		b.ReleaseOK(2000, 2010, "c2", "k", 12)
	}},
	{"reported-valid-until-then-released", NameSingleHolder, true, func(b *history.Builder) {
		// A release ends the belief whatever ValidUntil said, and a
		// reading taken while unhealthy (a late extend reply after the
		// loss) promises nothing.
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.Observe(600, "c1", "k", 10, 1600, true)
		b.ReleaseOK(800, 810, "c1", "k", 10)
		b.AcquireOK(805, 820, "c2", "k", 12, 2500)
		b.Observe(1000, "c2", "k", 12, 3000, true)
		b.Lost(2400, "c2", "k", 12, 2500)
		b.Observe(2450, "c2", "k", 12, 4000, false)
		b.AcquireOK(2500, 2510, "c3", "k", 14, 4500)
	}},

	// monotonic-token
	{"stale-writes-refused", NameMonotonicToken, true, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.Write(10, 11, "c1", "k", 10, true)
		b.Event(20, history.Record{Client: "c1", Op: history.Pause, Key: "k"})
		b.AcquireOK(900, 1005, "c2", "k", 12, 2000)
		b.Write(1010, 1011, "c2", "k", 12, true)
		b.Event(1500, history.Record{Client: "c1", Op: history.Resume, Key: "k"})
		b.Write(1501, 1502, "c1", "k", 10, false) // the paused holder's stale write
		b.Lost(1503, "c1", "k", 10, 1000)
	}},
	{"concurrent-grants-any-order", NameMonotonicToken, true, func(b *history.Builder) {
		// Overlapping acquires may complete in any order.
		b.Invoke(0, history.Record{Client: "c1", Op: history.Acquire, Key: "k", Mode: "wait"})
		b.AcquireOK(1, 50, "c2", "k", 10, 1000)
		b.Complete(60, 1, history.Record{Type: history.OK, Client: "c1", Op: history.Acquire, Key: "k", Token: 9, ValidUntil: 2000 * 1e6})
	}},
	{"token-goes-backwards", NameMonotonicToken, false, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 20, 1000)
		b.ReleaseOK(100, 105, "c1", "k", 20)
		b.AcquireOK(200, 205, "c2", "k", 15, 1200)
	}},
	{"token-granted-twice", NameMonotonicToken, false, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "a", 20, 1000)
		b.AcquireOK(0, 5, "c2", "b", 20, 1000)
	}},
	{"resource-accepted-stale-write", NameMonotonicToken, false, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.AcquireOK(1000, 1005, "c2", "k", 12, 2000)
		b.Write(1010, 1011, "c2", "k", 12, true)
		b.Write(1020, 1021, "c1", "k", 10, true)
	}},

	// linearizable
	{"indeterminate-ops", NameLinearizable, true, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.GetOK(10, 15, "r", "k", "c1", 10)
		b.ReleaseInfo(100, 300, "c1", "k", 10) // maybe released
		b.AcquireHeld(150, 160, "c2", "k")     // before it took effect
		b.AcquireInfo(400, 500, "c2", "k")     // maybe granted
		b.GetOK(600, 610, "r", "k", "c2", 31)  // it was
		b.AcquireOK(2000, 2010, "c3", "k", 40, 3000)
		b.GetOK(2100, 2110, "r", "k", "c3", 40)
		b.GetOK(2100, 2110, "r", "missing", "", 0)
	}},
	{"read-after-release", NameLinearizable, false, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.ReleaseOK(100, 110, "c1", "k", 10)
		b.GetOK(200, 210, "r", "k", "c1", 10)
	}},
	{"refused-after-release", NameLinearizable, false, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.ReleaseOK(100, 110, "c1", "k", 10)
		b.AcquireHeld(200, 210, "c2", "k")
	}},
	{"grant-witnessed-past-horizon", NameLinearizable, true, func(b *history.Builder) {
		// c2's acquire was answered by nobody; a read a minute later, past
		// the horizon, proves it was granted: it took effect after c4's
		// holding (40 s), which explains the refusal at 45 s.
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.ReleaseOK(100, 110, "c1", "k", 10)
		b.AcquireInfo(120, 2000, "c2", "k")
		b.AcquireOK(40000, 40010, "c4", "k", 20, 42000)
		b.ReleaseOK(40100, 40110, "c4", "k", 20)
		b.AcquireHeld(45000, 45010, "c3", "k")
		b.GetOK(60000, 60010, "r", "k", "c2", 31)
	}},
	{"refused-long-after-indeterminate", NameLinearizable, false, func(b *history.Builder) {
		// Only a grant of c2's indeterminate acquire after c4's holding,
		// 40 s after its client gave up and never seen by anyone, could
		// explain the refusal at 45 s: past the horizon, so it is a
		// refusal after a release.
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.AcquireInfo(10, 2000, "c2", "k")
		b.ReleaseOK(100, 110, "c1", "k", 10)
		b.AcquireOK(40000, 40010, "c4", "k", 20, 42000)
		b.ReleaseOK(40100, 40110, "c4", "k", 20)
		b.AcquireHeld(45000, 45010, "c3", "k")
	}},
	{"grant-given-back-by-a-waiting-acquire", NameLinearizable, true, func(b *history.Builder) {
		// The shape of a TestWorkloadAgainstCorrectServer failure: c2's
		// waiting acquire was granted 13, whose answer came after its
		// validity; the client released it and asked again with a new
		// request id, granted 17. r read c2 holding 13 meanwhile, a grant
		// c2's record does not show; the indeterminate acquires of c4
		// and c5 cannot explain it.
		b.AcquireOK(0, 5, "c1", "k", 10, 600)
		b.ReleaseOK(20, 30, "c1", "k", 10)
		b.AcquireInfo(40, 2310, "c5", "k")
		b.AcquireInfo(50, 1315, "c4", "k")
		b.Op(800, 2350, history.Record{Client: "c2", Op: history.Acquire, Key: "k", Mode: "wait"}, history.OK, func(r *history.Record) {
			r.Token, r.ValidUntil = 17, 2950*1e6
		})
		b.GetOK(1315, 2240, "r", "k", "c2", 13)
		b.GetOK(2400, 2410, "r", "k", "c2", 17)
		b.ReleaseOK(2700, 2710, "c2", "k", 17)
	}},
	{"read-of-a-given-back-grant-after-a-later-grant", NameLinearizable, false, func(b *history.Builder) {
		// A grant c2's waiting acquire gave back was made before its
		// final grant (17): once a read saw 17, none can see 13.
		b.Op(800, 2350, history.Record{Client: "c2", Op: history.Acquire, Key: "k", Mode: "wait"}, history.OK, func(r *history.Record) {
			r.Token, r.ValidUntil = 17, 2950*1e6
		})
		b.GetOK(2400, 2410, "r", "k", "c2", 17)
		b.GetOK(2500, 2510, "r", "k", "c2", 13)
	}},
	{"read-of-a-grant-before-the-wait", NameLinearizable, false, func(b *history.Builder) {
		// c3's grant of 15 was answered before c2 began to wait: a grant
		// c2's wait gave back has a larger token, never 13.
		b.AcquireOK(0, 5, "c3", "k", 15, 600)
		b.ReleaseOK(100, 110, "c3", "k", 15)
		b.Op(200, 2000, history.Record{Client: "c2", Op: history.Acquire, Key: "k", Mode: "timeout"}, history.Fail, func(r *history.Record) {
			r.Err = history.ErrHeld
		})
		b.GetOK(500, 510, "r", "k", "c2", 13)
	}},
	{"read-goes-back-in-time", NameLinearizable, false, func(b *history.Builder) {
		b.AcquireOK(0, 5, "c1", "k", 10, 1000)
		b.AcquireOK(1000, 1005, "c2", "k", 12, 2000)
		b.GetOK(1100, 1110, "r", "k", "c2", 12)
		b.GetOK(1200, 1210, "r", "k", "c1", 10)
	}},

	// takeover-bound
	{"waiter-takes-over-after-expiry", NameTakeover, true, func(b *history.Builder) {
		// t1 holds (TTL 2 s, last extend at 520 ms: ValidUntil 2.5 s at
		// the crash); t2 waits and is granted at 2.8 s, within TTL +
		// election + slack of the last extend. The second crash happens
		// during a partition, which excuses a slow takeover.
		b.AcquireOK(0, 5, "t1", "k", 10, 1980)
		t2 := b.Invoke(600, history.Record{Client: "t2", Op: history.Acquire, Key: "k", Mode: "wait"})
		b.Event(1000, history.Record{Client: "t1", Op: history.Crash, Key: "k", Token: 10, ValidUntil: 2500e6, TTL: 2000e6})
		b.Lost(2450, "t1", "k", 10, 2500)
		b.Complete(2800, t2, history.Record{Type: history.OK, Client: "t2", Op: history.Acquire, Key: "k", Token: 14, ValidUntil: 4700e6})
		t3 := b.Invoke(2900, history.Record{Client: "t3", Op: history.Acquire, Key: "k", Mode: "wait"})
		b.Fault(3000, 9000, "partition-halves", "n1", "|", "n2", "n3")
		b.Event(3100, history.Record{Client: "t2", Op: history.Crash, Key: "k", Token: 14, ValidUntil: 4700e6, TTL: 2000e6})
		b.Lost(4650, "t2", "k", 14, 4700)
		b.Complete(10000, t3, history.Record{Type: history.OK, Client: "t3", Op: history.Acquire, Key: "k", Token: 30, ValidUntil: 12000e6})
		b.ReleaseOK(11000, 11010, "t3", "k", 30)
	}},
	{"extend-answered-after-crash", NameTakeover, true, func(b *history.Builder) {
		// t1's extend sent at 3.99 s is answered after its crash at 4 s
		// (its later Observe: ValidUntil 5.99 s), so the server extended
		// the lease then: t2's grant at 8.3 s is within the bound of that
		// extend, though not of the one the crash record shows (3.52 s).
		b.AcquireOK(0, 5, "t1", "k", 10, 1980)
		t2 := b.Invoke(600, history.Record{Client: "t2", Op: history.Acquire, Key: "k", Mode: "wait"})
		b.Event(4000, history.Record{Client: "t1", Op: history.Crash, Key: "k", Token: 10, ValidUntil: 5500e6, TTL: 2000e6})
		b.Observe(4100, "t1", "k", 10, 5990, true)
		b.Lost(5950, "t1", "k", 10, 5990)
		b.Complete(8300, t2, history.Record{Type: history.OK, Client: "t2", Op: history.Acquire, Key: "k", Token: 14, ValidUntil: 10300e6})
		b.ReleaseOK(9000, 9010, "t2", "k", 14)
	}},
	{"dead-holder-kept-by-leader-churn", NameTakeover, false, func(b *history.Builder) {
		// t1 dies at 1 s with its last extend at 520 ms; leadership
		// changes every second and each new leader gives the lease a full
		// TTL again, so t2 is granted only after the churn ends, at 14 s.
		b.AcquireOK(0, 5, "t1", "k", 10, 1980)
		t2 := b.Invoke(600, history.Record{Client: "t2", Op: history.Acquire, Key: "k", Mode: "wait", LockDelay: 500e6})
		b.Fault(800, 12000, "leader-churn", "leader every 1s")
		b.Event(1000, history.Record{Client: "t1", Op: history.Crash, Key: "k", Token: 10, ValidUntil: 2500e6, TTL: 2000e6})
		b.Lost(2450, "t1", "k", 10, 2500)
		b.Complete(14000, t2, history.Record{Type: history.OK, Client: "t2", Op: history.Acquire, Key: "k", Token: 90, ValidUntil: 16000e6})
		b.ReleaseOK(15000, 15010, "t2", "k", 90)
	}},

	{"no-leader-after-expiry-excused", NameTakeover, true, func(b *history.Builder) {
		// The E3 campaign's shape: t1's last extend at 520 ms (TTL 2 s,
		// lock-delay 500 ms: free from 3.02 s). Just before then the
		// leader is stopped and the election takes 1.4 s; the next leader
		// is stopped 50 ms after it serves, and the one after serves at
		// 5.6 s; t2 is granted at 5.65 s, past TTL + lock-delay + one
		// election + slack (5.52 s) but within it counting the 2.5 s
		// without a leader after 3.02 s.
		takeoverUnderChurn(b, 1000, [][2]int64{{3000, 4400}, {4450, 5600}}, 5650)
	}},
	{"no-leader-before-expiry-not-excused", NameTakeover, false, func(b *history.Builder) {
		// As above, but the time without a leader comes before 3.02 s
		// (two steps of 0.8 s) and a leader serves from 2.8 s to 3.5 s
		// and from 3.9 s: a server that counts each election as time left
		// grants at 5.9 s, past 5.52 s (0.8 s without a leader after
		// 3.02 s is less than one election).
		takeoverUnderChurn(b, 900, [][2]int64{{1000, 1800}, {2000, 2800}, {3500, 3900}, {4500, 4900}}, 5900)
	}},

	// node-port-auth
	{"every-attempt-refused", NameNodePortAuth, true, func(b *history.Builder) {
		for i, a := range []string{"rpc-status", "rpc-list", "raft-append-entries", "gossip-join"} {
			b.Op(int64(100*i), int64(100*i+5), history.Record{Client: "rogue", Op: history.Rogue, Value: a, Node: "n1"}, history.Fail,
				func(r *history.Record) { r.Err = "transport: dial n1: cluster key handshake refused" })
		}
	}},
	{"rpc-release-served", NameNodePortAuth, false, func(b *history.Builder) {
		b.Op(100, 105, history.Record{Client: "rogue", Op: history.Rogue, Value: "rpc-status", Node: "n1"}, history.Fail,
			func(r *history.Record) { r.Err = "refused" })
		b.Op(200, 205, history.Record{Client: "rogue", Op: history.Rogue, Value: "rpc-release", Node: "n1"}, history.OK,
			func(r *history.Record) { r.Value = `rpc-release: released=true: "k1" held by w2 (token 57)` })
	}},

	// recovery
	{"converged", NameRecovery, true, func(b *history.Builder) {
		b.Fault(0, 1000, "partition-halves", "n1", "n2")
		serve := b.Invoke(1000, history.Record{Client: history.ProbeClient, Op: history.Serve})
		b.Complete(2500, serve, history.Record{Type: history.OK, Client: history.ProbeClient, Op: history.Serve})
		for _, n := range []string{"n1", "n2", "n3"} {
			b.Event(3000, history.Record{Client: history.ProbeClient, Op: history.Digest, Node: n, Applied: 812, Value: "9f2c"})
		}
	}},
	{"diverged", NameRecovery, false, func(b *history.Builder) {
		serve := b.Invoke(1000, history.Record{Client: history.ProbeClient, Op: history.Serve})
		b.Complete(1100, serve, history.Record{Type: history.OK, Client: history.ProbeClient, Op: history.Serve})
		b.Event(3000, history.Record{Client: history.ProbeClient, Op: history.Digest, Node: "n1", Applied: 812, Value: "9f2c"})
		b.Event(3000, history.Record{Client: history.ProbeClient, Op: history.Digest, Node: "n2", Applied: 812, Value: "9f2c"})
		b.Event(3000, history.Record{Client: history.ProbeClient, Op: history.Digest, Node: "n3", Applied: 812, Value: "77aa"})
	}},
	{"slow-to-serve", NameRecovery, false, func(b *history.Builder) {
		serve := b.Invoke(1000, history.Record{Client: history.ProbeClient, Op: history.Serve})
		b.Complete(41000, serve, history.Record{Type: history.OK, Client: history.ProbeClient, Op: history.Serve})
		b.Event(42000, history.Record{Client: history.ProbeClient, Op: history.Digest, Node: "n1", Applied: 9, Value: "aa"})
	}},
	{"never-served", NameRecovery, false, func(b *history.Builder) {
		serve := b.Invoke(1000, history.Record{Client: history.ProbeClient, Op: history.Serve})
		b.Complete(31000, serve, history.Record{Type: history.Fail, Client: history.ProbeClient, Op: history.Serve, Err: "no leader"})
	}},

	// shared-exclusive
	{"readers-together-then-writer", NameSharedExclusive, true, func(b *history.Builder) {
		shared := []history.Item{{Key: "rw", Shape: history.ShapeShared}}
		b.AcquireShapeOK(0, 5, "r1", shared, 10, 1000)
		b.AcquireShapeOK(100, 105, "r2", shared, 11, 1100)
		b.ReleaseOK(800, 810, "r1", "rw", 10)
		b.ReleaseOK(900, 910, "r2", "rw", 11)
		b.AcquireOK(905, 915, "w", "rw", 14, 2000)
		b.ReleaseOK(1500, 1510, "w", "rw", 14)
	}},
	{"reader-beside-writer", NameSharedExclusive, false, func(b *history.Builder) {
		// What --unsafe-shared-beside-exclusive looks like: r is granted
		// a shared holding while w believes it holds the key alone.
		b.AcquireOK(0, 5, "w", "rw", 10, 1000)
		b.AcquireShapeOK(400, 410, "r", []history.Item{{Key: "rw", Shape: history.ShapeShared}}, 12, 1400)
		b.ReleaseOK(800, 810, "w", "rw", 10)
		b.ReleaseOK(900, 910, "r", "rw", 12)
	}},

	// at-most-n
	{"two-slots-of-two", NameSemaphoreLimit, true, func(b *history.Builder) {
		sem := []history.Item{{Key: "s", Shape: history.ShapeSemaphore, Limit: 2}}
		b.AcquireShapeOK(0, 5, "c1", sem, 10, 1000)
		b.AcquireShapeOK(100, 105, "c2", sem, 11, 1100)
		b.ReleaseOK(500, 510, "c1", "s", 10)
		b.AcquireShapeOK(505, 515, "c3", sem, 13, 1500)
		b.Lost(1100, "c2", "s", 11, 1100)
		b.ReleaseOK(1400, 1410, "c3", "s", 13)
	}},
	{"three-holders-of-two", NameSemaphoreLimit, false, func(b *history.Builder) {
		// What --unsafe-semaphore-overgrant looks like.
		sem := []history.Item{{Key: "s", Shape: history.ShapeSemaphore, Limit: 2}}
		b.AcquireShapeOK(0, 5, "c1", sem, 10, 1000)
		b.AcquireShapeOK(100, 105, "c2", sem, 11, 1100)
		b.AcquireShapeOK(200, 205, "c3", sem, 12, 1200)
		b.ReleaseOK(500, 510, "c1", "s", 10)
		b.ReleaseOK(600, 610, "c2", "s", 11)
		b.ReleaseOK(700, 710, "c3", "s", 12)
	}},

	// set-atomicity
	{"set-seen-whole", NameSetAtomicity, true, func(b *history.Builder) {
		set := []history.Item{{Key: "m0"}, {Key: "m1", Shape: history.ShapeShared}}
		b.AcquireShapeOK(0, 5, "x", set, 10, 1000)
		b.GetHoldings(200, 210, "y", "m1",
			history.Holding{Key: "m1", Holder: "z", Token: 8, Shape: history.ShapeShared},
			history.Holding{Key: "m1", Holder: "x", Token: 10, Shape: history.ShapeShared, Set: 10})
		b.ListOK(300, 310, "y", "m",
			history.Holding{Key: "m0", Holder: "x", Token: 10, Set: 10},
			history.Holding{Key: "m1", Holder: "x", Token: 10, Shape: history.ShapeShared, Set: 10})
		b.ReleaseOK(500, 510, "x", "m0", 10)
		b.GetHoldings(600, 610, "y", "m1") // released: free, and not inside the set's holding
	}},
	{"get-shows-part-of-set", NameSetAtomicity, false, func(b *history.Builder) {
		// What --unsafe-partial-set looks like: x was granted {m0, m1}
		// while y held m1; x believes it holds both, a get shows m1 is
		// y's.
		b.AcquireOK(0, 5, "y", "m1", 9, 1200)
		b.AcquireShapeOK(100, 105, "x", []history.Item{{Key: "m0"}, {Key: "m1"}}, 10, 1100)
		b.GetHoldings(200, 210, "z", "m1", history.Holding{Key: "m1", Holder: "y", Token: 9})
		b.ReleaseOK(500, 510, "x", "m0", 10)
		b.ReleaseOK(600, 610, "y", "m1", 9)
	}},
	{"list-shows-part-of-set", NameSetAtomicity, false, func(b *history.Builder) {
		// A set released on one key only: a list shows it on m1 and not
		// on m0, after its client let it go.
		b.AcquireShapeOK(0, 5, "x", []history.Item{{Key: "m0"}, {Key: "m1"}}, 10, 1000)
		b.ReleaseOK(300, 310, "x", "m0", 10)
		b.ListOK(400, 410, "y", "m", history.Holding{Key: "m1", Holder: "x", Token: 10, Set: 10})
	}},
}

func (s synthetic) records() []history.Record {
	b := history.NewBuilder()
	s.build(b)
	return b.Records()
}

// TestSynthetic checks every synthetic history against its checker, and
// that the saved copy under testdata is current.
func TestSynthetic(t *testing.T) {
	for _, s := range synthetics {
		t.Run(s.checker+"/"+s.name, func(t *testing.T) {
			recs := s.records()
			res, err := Check(recs, Options{VisualizeDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			assertVerdict(t, res, s.checker, s.valid)
			var buf bytes.Buffer
			if err := history.Encode(&buf, recs); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(testdata, s.file())
			if *update {
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			saved, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(saved, buf.Bytes()) {
				t.Fatalf("%s is missing or stale: run go test ./jepsen/checker -update", path)
			}
		})
	}
}

// TestReplayTestdata replays every history under jepsen/testdata with the
// verdict its name states: CHECKER.good.NAME.jsonl must pass CHECKER,
// CHECKER.bad.NAME.jsonl must fail it. Histories saved from real
// campaigns (unsafe modes) live there too.
func TestReplayTestdata(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testdata, "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	gz, _ := filepath.Glob(filepath.Join(testdata, "*.jsonl.gz"))
	files = append(files, gz...)
	if len(files) == 0 {
		t.Fatal("no histories under jepsen/testdata")
	}
	var bad int
	for _, f := range files {
		parts := strings.SplitN(filepath.Base(f), ".", 3)
		if len(parts) != 3 || (parts[1] != "good" && parts[1] != "bad") {
			t.Errorf("%s: name must be CHECKER.good|bad.NAME.jsonl[.gz]", f)
			continue
		}
		if parts[1] == "bad" {
			bad++
		}
		t.Run(strings.TrimSuffix(strings.TrimSuffix(filepath.Base(f), ".gz"), ".jsonl"), func(t *testing.T) {
			recs, err := history.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			res, err := Check(recs, Options{VisualizeDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			assertVerdict(t, res, parts[0], parts[1] == "good")
			if parts[0] == NameLinearizable && parts[1] == "bad" && len(res.Visualizations) == 0 {
				t.Errorf("no porcupine visualization written for a non-linearizable history")
			}
		})
	}
	for _, name := range []string{NameSingleHolder, NameSharedExclusive, NameSemaphoreLimit, NameSetAtomicity,
		NameMonotonicToken, NameLinearizable, NameRecovery, NameTakeover, NameNodePortAuth} {
		if m, _ := filepath.Glob(filepath.Join(testdata, name+".bad.*.jsonl")); len(m) == 0 {
			t.Errorf("no known-bad history for %s: a check that cannot fail proves nothing", name)
		}
	}
}

func assertVerdict(t *testing.T, res Results, checker string, valid bool) {
	t.Helper()
	r, ok := res.Get(checker)
	if !ok {
		t.Fatalf("no result for %s", checker)
	}
	want := Invalid
	if valid {
		want = Valid
	}
	if r.Verdict != want {
		t.Fatalf("%s: verdict %s, want %s: %s %+v", checker, r.Verdict, want, r.Summary, r.Violations)
	}
	if !valid && (len(r.Violations) == 0 || r.Violations[0].Message == "") {
		t.Fatalf("%s: invalid without an explained violation", checker)
	}
	if !valid && res.Verdict != Invalid {
		t.Fatalf("overall verdict %s with %s invalid", res.Verdict, checker)
	}
	for _, other := range res.Checkers {
		if other.Name != checker && other.Verdict == Invalid && valid {
			t.Errorf("a good history for %s fails %s: %+v", checker, other.Name, other.Violations)
		}
	}
}

func TestSingleHolderReportsTheOverlap(t *testing.T) {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.AcquireOK(590, 600, "c2", "k", 12, 1600)
	b.Lost(1000, "c1", "k", 10, 1000)
	res, holds, err := SingleHolder(b.Records())
	if err != nil {
		t.Fatal(err)
	}
	if len(holds) != 2 || holds[0].Ended != "lost" || holds[1].Ended != "history-end" {
		t.Fatalf("holds %+v", holds)
	}
	if len(res.Violations) != 1 {
		t.Fatalf("violations %+v", res.Violations)
	}
	v := res.Violations[0]
	if v.Start != 600e6 || v.End != 1000e6 || v.Key != "k" || len(v.Clients) != 2 {
		t.Fatalf("violation %+v, want k from 600ms to 1000ms between c1 and c2", v)
	}
}

func TestSingleHolderTouchingIntervalsDoNotOverlap(t *testing.T) {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.Lost(1000, "c1", "k", 10, 1000)
	b.AcquireOK(990, 1000, "c2", "k", 12, 2000)
	res, _, err := SingleHolder(b.Records())
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != Valid {
		t.Fatalf("%+v", res)
	}
}

func TestLinearizableUndecidedIsUnknown(t *testing.T) {
	// Many concurrent indeterminate acquires and reads: porcupine gets a
	// tiny budget and cannot decide.
	b := history.NewBuilder()
	for i := 0; i < 40; i++ {
		b.Invoke(int64(i), history.Record{Client: string(rune('a' + i%26)), Op: history.Acquire, Key: "k"})
	}
	for i := 0; i < 40; i++ {
		b.GetOK(100+int64(i), 5000, "r"+string(rune('a'+i%26)), "k", "a", uint64(1000-i))
	}
	res, _, err := Linearizable(b.Records(), time.Nanosecond, "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict == Valid {
		t.Fatalf("undecidable in 1ns yet %s", res.Verdict)
	}
}

func TestAvailabilityWindows(t *testing.T) {
	b := history.NewBuilder()
	b.AcquireOK(0, 5, "c1", "k", 10, 1000)
	b.Fault(100, 200, "kill-leader", "n1")
	b.AcquireHeld(110, 120, "c2", "k")
	b.AcquireInfo(150, 300, "c3", "k")
	b.Op(250, 260, history.Record{Client: "c2", Op: history.Get, Key: "k"}, history.Fail, func(r *history.Record) { r.Err = "no leader" })
	res, ws, err := Availability(b.Records())
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 3 {
		t.Fatalf("windows %+v", ws)
	}
	if ws[0].OK != 1 || ws[1].Fault != "kill-leader" || ws[1].Refused != 1 || ws[1].Info != 1 || ws[2].Fail != 1 {
		t.Fatalf("windows %+v", ws)
	}
	if res.Verdict != Valid || res.Stats["info"] != 1 {
		t.Fatalf("%+v", res)
	}
	if ws[1].Served() != 0.5 {
		t.Fatalf("served %v", ws[1].Served())
	}
}

// TestRogueReleaseIsTwoViolations: the history saved from a rogue-peer
// campaign against agents without node-port authentication fails
// node-port-auth (the node served the outsider) and single-holder (the
// lease it released was granted to another while its holder still held
// it).
func TestRogueReleaseIsTwoViolations(t *testing.T) {
	recs, err := history.Load(filepath.Join(testdata, "single-holder.bad.rogue-peer-rpc-release.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Check(recs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{NameNodePortAuth, NameSingleHolder} {
		if r, _ := res.Get(name); r.Verdict != Invalid {
			t.Errorf("%s: %s (%s)", name, r.Verdict, r.Summary)
		}
	}
}

// takeoverUnderChurn builds a takeover under leader-churn: t1 holds k
// (TTL 2 s, lock-delay 500 ms, last extend at 520 ms) and dies at
// crashAt ms while t2 waits for it; the churn's steps stop the leader at
// step[0] and another serves at step[1]; t2 is granted k at grantAt.
func takeoverUnderChurn(b *history.Builder, crashAt int64, steps [][2]int64, grantAt int64) {
	b.AcquireOK(0, 5, "t1", "k", 10, 1980)
	t2 := b.Invoke(600, history.Record{Client: "t2", Op: history.Acquire, Key: "k", Mode: "wait", LockDelay: 500e6})
	b.Fault(800, 12000, "leader-churn", "leader every 1s")
	b.Event(crashAt, history.Record{Client: "t1", Op: history.Crash, Key: "k", Token: 10, ValidUntil: 2500e6, TTL: 2000e6, LockDelay: 500e6})
	b.Lost(2450, "t1", "k", 10, 2500)
	for _, step := range steps {
		b.Event(step[0], history.Record{Client: history.NemesisClient, Op: history.LeaderStop, Node: "n1"})
		b.Event(step[1], history.Record{Client: history.NemesisClient, Op: history.LeaderMove, Node: "n1", Value: "n2"})
	}
	b.Complete(grantAt, t2, history.Record{Type: history.OK, Client: "t2", Op: history.Acquire, Key: "k", Token: 90, ValidUntil: (grantAt + 2000) * 1e6})
	b.ReleaseOK(6000, 6010, "t2", "k", 90)
}
