package main

import (
	"strings"
	"testing"
)

// Error texts name no Go function or API (new-user review): net/http's
// readLoopPeekFailLocked and request prefix, a TLS alert in Go's words,
// lease.WithPeerTimeout.
func TestPlainWords(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`127.0.0.1:7000/readyz: Get "https://127.0.0.1:7000/readyz": readLoopPeekFailLocked: remote error: tls: bad certificate`,
			`127.0.0.1:7000/readyz: the node refused the TLS handshake (TLS alert: bad certificate)`},
		{`lease: the outcome is unknown: node 127.0.0.1:7402 stopped answering: a liveness check got no reply within 2s (twice lease.WithPeerTimeout's 1s)`,
			`lease: the outcome is unknown: node 127.0.0.1:7402 stopped answering: a liveness check got no reply within 2s (two checks of 1s each)`},
		{`remote error: tls: certificate required`, `the node refused the TLS handshake (TLS alert: certificate required)`},
		{`no leader: node u0 is Candidate in term 3`, `no leader: node u0 is Candidate in term 3`},
		// A --max-waiters refusal names the Go call; the CLI's is --wait 0.
		{`"k" is held, and node v1 serves 1 waiting acquires, its limit (agent --max-waiters 1): retry later, use TryAcquire, or raise the limit on every agent`,
			`"k" is held, and node v1 serves 1 waiting acquires, its limit (agent --max-waiters 1): retry later, use --wait 0 (no wait in the queue: exit 4 at once while the key is held), or raise the limit on every agent`},
	} {
		got := plainWords(c.in)
		if got != c.want {
			t.Errorf("plainWords(%q)\n = %q\nwant %q", c.in, got, c.want)
		}
		for _, bad := range []string{"readLoopPeekFailLocked", "lease.With", "remote error", "TryAcquire"} {
			if strings.Contains(got, bad) {
				t.Errorf("plainWords(%q) = %q keeps %q", c.in, got, bad)
			}
		}
	}
}
