package local

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/internal/freeport"
)

// A port picked free and taken by another process before a node binds it
// costs a start, not the cluster: Start picks other ports.
func TestStartPicksOtherPortsWhenOneIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var handedOut atomic.Bool
	pickAddr = func(host string, udp bool) (string, error) {
		if !udp && handedOut.CompareAndSwap(false, true) {
			return taken.Addr().String(), nil // "free" when picked, bound before the node binds it
		}
		return freeport.Addr(host, udp)
	}
	defer func() { pickAddr = freeport.Addr }()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Nodes: 1})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer c.Close()
	if !handedOut.Load() {
		t.Fatal("the taken port was never handed out")
	}
	for _, a := range c.APIAddrs() {
		if a == taken.Addr().String() {
			t.Fatalf("a node serves on the taken port %s", a)
		}
	}
}

// With fixed ports the error names them and nothing is tried again.
func TestStartNamesTakenFixedPorts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	base := taken.Addr().(*net.TCPAddr).Port - 2 // node 1's API port is the taken one
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Nodes: 1, PortBase: base})
	if err == nil {
		c.Close()
		t.Fatal("started on a taken port")
	}
	if !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("error does not name the taken port %s: %v", taken.Addr(), err)
	}
}
