package node

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/fsm"
)

// leaseSize, which sizes a reply before it is built, is never below the
// size of the lease as a reply encodes it (toPB), whatever its fields,
// and at an earlier now no smaller: a reply built from the state that
// was sized costs no more than was paid (reply-paid-before-built).
func TestLeaseSizeBoundsTheEncodedLease(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	dur := func() time.Duration {
		switch r.IntN(4) {
		case 0:
			return 0
		case 1:
			return time.Duration(r.IntN(1000)) * time.Second
		}
		return time.Duration(r.Int64N(int64(1000 * time.Hour)))
	}
	for i := range 20_000 {
		l := fsm.Lease{Key: strings.Repeat("k", r.IntN(300)), Holder: strings.Repeat("h", r.IntN(200)),
			Token: r.Uint64() >> r.IntN(64), TTL: dur(), LockDelay: dur(), Expiry: dur(),
			Value: make([]byte, r.IntN(70_000)), State: fsm.State(r.IntN(3)),
			Mode: fsm.Mode(r.IntN(3)), Limit: r.Uint32() >> r.IntN(32)}
		if r.IntN(2) == 0 {
			l.Set = l.Token
			for range r.IntN(64) {
				l.SetKeys = append(l.SetKeys, strings.Repeat("s", r.IntN(200)))
			}
		}
		now := dur()
		later := now + dur()
		got, want := leaseSize(&l, now), proto.Size(toPB(&l, now))
		if got < want {
			t.Fatalf("lease %d: leaseSize %d, encoded %d", i, got, want)
		}
		if got > want+8 {
			t.Fatalf("lease %d: leaseSize %d, encoded only %d", i, got, want)
		}
		if at := leaseSize(&l, later); at > got || at < proto.Size(toPB(&l, later)) {
			t.Fatalf("lease %d: leaseSize %d at %v, %d at the later %v", i, got, now, at, later)
		}
	}
}
