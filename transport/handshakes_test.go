package transport

import (
	"net"
	"testing"
	"time"
)

// The buckets of a HandshakeLimit, on a fake clock: a source prefix gets
// its burst (two seconds' worth) and then its rate; addresses of one
// IPv4 /24 or IPv6 /64 share a bucket and those of others do not; the
// whole port's bucket bounds all sources together, and a refusal by it
// takes nothing from the source's; past it a fresh prefix gets one from
// the reserve (max(1, 6/10) = 1), a prefix that took two does not.
func TestHandshakeLimitBuckets(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newHandshakeLimit(2, 6, func() time.Time { return now }) // bursts 4 and 6
	addr := func(s string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(s), Port: 40000} }
	allowed := func(n int, addrs ...string) int {
		ok := 0
		for i := range n {
			if h.Allow(addr(addrs[i%len(addrs)])) {
				ok++
			}
		}
		return ok
	}
	for _, step := range []struct {
		what  string
		after time.Duration
		n     int
		addrs []string
		want  int
	}{
		{"a fresh source: its burst", 0, 10, []string{"10.1.2.3"}, 4},
		{"another address of its /24: one bucket", 0, 1, []string{"10.1.2.200"}, 0},
		{"another /24: what is left of the port's burst of 6", 0, 10, []string{"10.1.3.3"}, 2},
		{"a second later: the rate of 2", time.Second, 10, []string{"10.1.2.3"}, 2},
		{"the /24 refused by the port's bucket kept its own tokens", 0, 10, []string{"10.1.3.3"}, 4},
		{"past the port's bucket: a fresh prefix takes the reserve", 0, 2, []string{"2001:db8:0:1::5"}, 1},
		{"the reserve is spent", 0, 1, []string{"2001:db8:0:9::5"}, 0},
		{"two addresses of one IPv6 /64: one bucket", time.Second, 10, []string{"2001:db8:0:1::5", "2001:db8:0:1:ffff::9"}, 4},
		{"another /64", 0, 10, []string{"2001:db8:0:2::1"}, 2},
	} {
		now = now.Add(step.after)
		if got := allowed(step.n, step.addrs...); got != step.want {
			t.Fatalf("%s: %d of %d allowed, want %d", step.what, got, step.n, step.want)
		}
	}
	var nilLimit *HandshakeLimit
	if !nilLimit.Allow(addr("10.1.2.3")) {
		t.Fatal("a nil HandshakeLimit refused")
	}
}

// The reserve, on a fake clock: while five prefixes each ask for far
// more handshakes than the port's total (100 a second) and hold it (each
// about 20 a second of it, by turns), a
// prefix that has started none lately gets its handshake at its first
// ask, every second for 10 s, and so do three more that ask at once; the
// five never draw from the reserve; and all sources together start at
// most totalBurst + reserveBurst + (total+reserve)*t, with the reserve
// at 10 a second, even once 500 fresh prefixes ask once each every
// second as well. Fails without the reserve: the light prefixes race the
// flood for the total and lose.
func TestHandshakeLimitReserve(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newHandshakeLimit(60, 100, func() time.Time { return now })
	const total, reserve, seconds = 100, 10, 10
	heavy, started := 0, 0
	light := 0
	for tick := range seconds * 100 { // 10 ms ticks
		now = now.Add(10 * time.Millisecond)
		for i := range 5 {
			g := (tick + i) % 5 // by turns, as concurrent floods share the total
			for range 20 {      // 2,000 a second from each
				if h.Allow(&net.TCPAddr{IP: net.IPv4(10, 0, byte(g), 1)}) {
					heavy++
				}
			}
		}
		if tick%100 != 50 {
			continue
		}
		sec := tick / 100
		for k := range 4 {
			if !h.Allow(&net.TCPAddr{IP: net.IPv4(10, 9, byte(4*sec+k), 1)}) {
				t.Fatalf("second %d: light prefix %d of 4 refused while heavy prefixes hold the total", sec, k)
			}
			light++
		}
		if sec >= 5 {
			// Many fresh prefixes at once: the reserve bounds them.
			for k := range 500 {
				if h.Allow(&net.TCPAddr{IP: net.IPv4(10, 10+byte(sec), byte(k>>8), byte(k))}) {
					light++
				}
			}
		}
	}
	started = heavy + light
	if heavyMax := total + total*seconds; heavy > heavyMax {
		t.Fatalf("the heavy prefixes started %d handshakes in %d s, more than the total's %d: they drew from the reserve", heavy, seconds, heavyMax)
	}
	if bound := total + reserve + (total+reserve)*seconds; started > bound {
		t.Fatalf("%d handshakes started in %d s, want at most %d", started, seconds, bound)
	}
	t.Logf("%d handshakes by the heavy prefixes, %d by light ones, in %d s", heavy, light, seconds)
}

// Known addresses, on a fake clock: with the total, the reserve and the
// /24's bucket all spent by others of its /24, a known address still
// starts its burst (two seconds' worth) and then its rate, counted by
// itself; its neighbours gain nothing from it. Fails without Known (the
// node's handshakes are refused with its /24's).
func TestHandshakeLimitKnownSources(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newHandshakeLimit(2, 6, func() time.Time { return now }) // bursts 4 and 6, reserve 1
	node := net.ParseIP("10.1.2.7")
	h.Known = func(ip net.IP) bool { return ip.Equal(node) }
	addr := func(s string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(s), Port: 40000} }
	allowed := func(n int, a string) int {
		ok := 0
		for range n {
			if h.Allow(addr(a)) {
				ok++
			}
		}
		return ok
	}
	if got := allowed(10, "10.1.2.8") + allowed(10, "10.9.9.9") + allowed(10, "10.8.8.8"); got != 4+2+1 {
		t.Fatalf("others started %d handshakes, want 7 (the total's 6 and the reserve's 1)", got)
	}
	if got := allowed(10, "10.1.2.7"); got != 4 {
		t.Fatalf("a known address of the spent /24 started %d handshakes, want its burst of 4", got)
	}
	now = now.Add(time.Second)
	if got := allowed(10, "10.1.2.7"); got != 2 {
		t.Fatalf("a second later the known address started %d, want its rate of 2", got)
	}
	if got := allowed(10, "10.1.2.8"); got != 2 {
		t.Fatalf("a second later its /24 started %d, want its own rate of 2", got)
	}
}

// Sources are forgotten once their buckets are full again, so a flood
// from many prefixes leaves at most what the port admitted lately.
func TestHandshakeLimitForgetsSources(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newHandshakeLimit(1, 1_000_000, func() time.Time { return now })
	flood := func(from int) {
		for i := from; i < from+5000; i++ {
			if !h.Allow(&net.TCPAddr{IP: net.IPv4(10, byte(i>>8), byte(i), 1)}) {
				t.Fatal("refused a first handshake")
			}
		}
	}
	flood(0)
	now = now.Add(3 * time.Second) // every bucket is full again
	flood(5000)
	if n := len(h.sources); n >= 10000 {
		t.Fatalf("%d sources remembered, want those that refilled forgotten", n)
	}
}

// SourcePrefix: IPv4 by address or by /24, IPv6 by /64, and a string
// address as a TCPAddr.
func TestSourcePrefix(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		bits int
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3")}, 32, "10.1.2.3"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3")}, 24, "10.1.2.0/24"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3")}, 24, "10.1.2.0/24"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6")}, 24, "2001:db8:1:2::/64"},
		{&net.UnixAddr{Name: "/tmp/s", Net: "unix"}, 24, "/tmp/s"},
	} {
		if got := SourcePrefix(c.addr, c.bits); got != c.want {
			t.Errorf("SourcePrefix(%v, %d) = %q, want %q", c.addr, c.bits, got, c.want)
		}
	}
}
