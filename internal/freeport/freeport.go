// Package freeport hands out ports for local clusters and tests that must
// know a node's address before the node listens: peers list it as a seed,
// and a restarted node comes back on the same address.
//
// Asking the kernel for port 0 and closing the listener is not enough: the
// port comes from the ephemeral range, where every outgoing connection also
// takes its source port, so on a busy host some connection takes it before
// the node binds it ("address already in use"). Ports here are chosen at
// random below that range, checked free for TCP (and UDP when asked), and
// never handed out twice by one process.
//
// Ports with a fixed meaning are never handed out: the agent's defaults
// (7400–7499, what `leasenode dev` and a hand-started agent bind) and the
// band the lease package's examples bind (17400–17499). A test in one
// package choosing 17431 while an example in another package, running
// at the same time, binds it made the example fail with "address already
// in use".
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// reserved are the bands [lo, hi) with a fixed meaning; see the package doc.
var reserved = [][2]int{{7400, 7500}, {17400, 17500}}

func isReserved(port int) bool {
	for _, r := range reserved {
		if r[0] <= port && port < r[1] {
			return true
		}
	}
	return false
}

// Addr returns host:port with a port free on host for TCP and, with udp,
// for UDP as well.
func Addr(host string, udp bool) (string, error) {
	base, err := Block([]string{host}, 1, udp)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(base)), nil
}

// Block returns a base port such that base, base+1, ..., base+n-1 are free
// on every host, for TCP and, with udp, for UDP as well.
func Block(hosts []string, n int, udp bool) (int, error) {
	lo, hi := searchRange()
	if n < 1 || n > hi-lo {
		return 0, fmt.Errorf("freeport: cannot find %d consecutive ports", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for range 200 {
		base := lo + rand.IntN(hi-lo-n+1)
		if blockFree(hosts, base, n, udp) {
			for p := base; p < base+n; p++ {
				given[p] = true
			}
			return base, nil
		}
	}
	return 0, errors.New("freeport: no free ports found")
}

func blockFree(hosts []string, base, n int, udp bool) bool {
	for p := base; p < base+n; p++ {
		if given[p] || isReserved(p) {
			return false
		}
		for _, h := range hosts {
			if !free(net.JoinHostPort(h, strconv.Itoa(p)), udp) {
				return false
			}
		}
	}
	return true
}

// Free reports whether addr can be listened on for TCP and, with udp,
// for UDP too.
func Free(addr string, udp bool) bool {
	mu.Lock()
	defer mu.Unlock()
	return free(addr, udp)
}

func free(addr string, udp bool) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	if udp {
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}

// searchRange is where ports are chosen: from 10000 up to the start of the
// kernel's ephemeral range (Linux: /proc/sys/net/ipv4/ip_local_port_range;
// IANA's 49152 elsewhere).
func searchRange() (lo, hi int) {
	lo, hi = 10000, 49152
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if start, err := strconv.Atoi(f[0]); err == nil {
				hi = start
			}
		}
	}
	if hi-lo < 1000 { // the ephemeral range covers nearly everything
		lo, hi = 20000, 30000
	}
	return lo, hi
}
