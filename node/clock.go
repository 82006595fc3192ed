package node

import "time"

// leaderClock is the clock that judges expiry in one epoch: the leader's
// own monotonic time since it won the election (DESIGN.md rule 1). It is
// the only place where the chaos harness's UNSAFE clocks differ from the
// real one (TestingKnobs), so every other line of the node reads the safe
// path.
type leaderClock interface {
	// now is the leader's time in its epoch.
	now() time.Duration
	// realDuration converts a span of leader time into real time, for
	// timers.
	realDuration(d time.Duration) time.Duration
	// origin is the reading that stamps Promote: 0, the epoch's start,
	// for a clock that counts from it.
	origin() time.Duration
}

// monotonicClock counts real time since start (the election).
type monotonicClock struct{ start time.Time }

func (c monotonicClock) now() time.Duration                         { return time.Since(c.start) }
func (c monotonicClock) realDuration(d time.Duration) time.Duration { return d }
func (c monotonicClock) origin() time.Duration                      { return 0 }

// newLeaderClock returns the clock of an epoch that starts at start (see
// establish): the monotonic clock, unless a TestingKnobs clock is set.
func (n *Node) newLeaderClock(start time.Time) leaderClock {
	k := n.cfg.Testing
	switch {
	case k == nil:
		return monotonicClock{start}
	case k.WallClock:
		return wallClock{skew: k.ClockSkew}
	case k.SkipRebase:
		// The clock counts from process start, not from the election.
		return scaledClock{start: n.started, rate: k.rate(), fromProcess: true}
	case k.rate() != 1:
		return scaledClock{start: start, rate: k.rate()}
	}
	return monotonicClock{start}
}

// scaledClock runs at rate times real time. UNSAFE beyond the clients'
// drift bound (TestingKnobs.ClockRate).
type scaledClock struct {
	start       time.Time
	rate        float64
	fromProcess bool // UNSAFE SkipRebase: Promote stamped with the clock's reading
}

func (c scaledClock) now() time.Duration {
	return time.Duration(float64(time.Since(c.start)) * c.rate)
}

func (c scaledClock) realDuration(d time.Duration) time.Duration {
	return time.Duration(float64(d) / c.rate)
}

func (c scaledClock) origin() time.Duration {
	if c.fromProcess {
		return c.now()
	}
	return 0
}

// wallClock is the wall clock plus a skew. UNSAFE under skew
// (TestingKnobs.WallClock).
type wallClock struct{ skew time.Duration }

func (c wallClock) now() time.Duration                         { return time.Duration(time.Now().UnixNano()) + c.skew }
func (c wallClock) realDuration(d time.Duration) time.Duration { return d }
func (c wallClock) origin() time.Duration                      { return c.now() }
