package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestAddrsAreDistinctListenableAndBelowEphemeral(t *testing.T) {
	_, hi := searchRange()
	seen := map[string]bool{}
	for range 100 {
		addr, err := Addr("127.0.0.1", true)
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, port, _ := net.SplitHostPort(addr)
		if p, _ := strconv.Atoi(port); p >= hi {
			t.Fatalf("%s is in the ephemeral range (from %d)", addr, hi)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on handed-out %s: %v", addr, err)
		}
		l.Close()
	}
}

func TestBlockSkipsBusyPorts(t *testing.T) {
	base, err := Block([]string{"127.0.0.1"}, 3, false)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+1)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if Free(l.Addr().String(), false) {
		t.Fatalf("%s reported free while listened on", l.Addr())
	}
	for range 50 {
		b, err := Block([]string{"127.0.0.1"}, 3, false)
		if err != nil {
			t.Fatal(err)
		}
		if b <= base+2 && base <= b+2 {
			t.Fatalf("block %d overlaps block %d handed out before", b, base)
		}
	}
}

func TestReservedBandsNeverHandedOut(t *testing.T) {
	for range 2000 {
		base, err := Block([]string{"127.0.0.1"}, 4, false)
		if err != nil {
			t.Fatal(err)
		}
		for p := base; p < base+4; p++ {
			if isReserved(p) {
				t.Fatalf("block %d..%d holds reserved port %d", base, base+3, p)
			}
		}
	}
	if !isReserved(17431) || !isReserved(7400) || isReserved(17500) || isReserved(7399) {
		t.Fatal("reserved bands are not what the package doc says")
	}
}
