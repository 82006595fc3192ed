package node

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// A port in use that lies in the ephemeral range is named as such: a
// self-connection or a closed connection in TIME_WAIT holds it with
// nothing listening, and "another agent?" alone sent a user looking for
// one (new-user review: agents on 35000-35100 refused to restart for 60 s).
func TestAddrInUseNamesTheEphemeralRange(t *testing.T) {
	lo, hi, ok := ephemeralPorts()
	if !ok {
		t.Fatal("no /proc/sys/net/ipv4/ip_local_port_range: the range is Linux's, as is this test's host")
	}
	in := &AddrError{Setting: "--api", Addr: fmt.Sprintf("127.0.0.1:%d", lo+(hi-lo)/2), Err: syscall.EADDRINUSE}
	if msg := in.Error(); !strings.Contains(msg, "ephemeral range") || !strings.Contains(msg, fmt.Sprintf("below %d", lo)) {
		t.Errorf("a port in the ephemeral range: %q", msg)
	}
	below := &AddrError{Setting: "--api", Addr: fmt.Sprintf("127.0.0.1:%d", lo-1), Err: syscall.EADDRINUSE}
	if msg := below.Error(); strings.Contains(msg, "ephemeral") || !strings.Contains(msg, "another agent?") {
		t.Errorf("a port below the ephemeral range: %q", msg)
	}
}
