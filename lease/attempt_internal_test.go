package lease

import (
	"testing"
	"time"
)

// One extend attempt leaves room for at least two more in the validity
// left (adversarial review s35: one attempt of min(10 s, validity left)
// used up a 15 s lease at a leader that never answered), yet never cuts
// off a slow link's measured round trip while the validity lasts, and
// leaves room for one more before any round trip was measured; one slow
// reply among fast ones is not a slow link.
func TestExtendAttemptLeavesRoomForTwoMore(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ttl, left time.Duration
		rtts      []time.Duration // the latest extends' round trips, oldest first
		atMost    time.Duration
		atLeast   time.Duration
	}{
		{"15 s lease at its first extend", 15 * time.Second, 10 * time.Second, ms(1), 5 * time.Second, 4 * time.Second},
		{"15 s lease after one failed attempt", 15 * time.Second, 5 * time.Second, ms(1), 2500 * time.Millisecond, 2 * time.Second},
		{"60 s lease", time.Minute, 40 * time.Second, ms(1), 10 * time.Second, 10 * time.Second},
		{"little left", 3 * time.Second, 300 * time.Millisecond, ms(1), 150 * time.Millisecond, 100 * time.Millisecond},
		{"slow link", 3 * time.Second, 2 * time.Second, ms(700, 800, 700), 2 * time.Second, 1400 * time.Millisecond},
		// One slow reply (a disk slowing before it hangs) is not a slow
		// link (adversarial review s36: an attempt of 8 s).
		{"one slow reply", 15 * time.Second, 10 * time.Second, ms(2, 3, 4000), 5 * time.Second, 4 * time.Second},
		{"no round trip known yet", 15 * time.Second, 10 * time.Second, nil, 6700 * time.Millisecond, 6600 * time.Millisecond},
	} {
		c := &Client{}
		for _, d := range tc.rtts {
			c.noteRTT(d)
		}
		h := &held{ttl: tc.ttl, validUntil: time.Now().Add(tc.left)}
		got := c.requestTimeout([]*held{h})
		if got > tc.atMost+10*time.Millisecond || got < tc.atLeast {
			t.Errorf("%s (TTL %v, %v left, round trips %v): attempt of %v, want %v to %v", tc.name, tc.ttl, tc.left, tc.rtts, got, tc.atLeast, tc.atMost)
		}
	}
}

func ms(v ...int) []time.Duration {
	var out []time.Duration
	for _, x := range v {
		out = append(out, time.Duration(x)*time.Millisecond)
	}
	return out
}
