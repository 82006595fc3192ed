package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: an agent at its --max-conns (1, held by a watch's stream)
// refuses the next client's connection, closing it at once. The client's
// error names the agent's --max-conns among the causes (new-user review
// M3: it said only "no node at --addr answered within 2s (--dial-timeout;
// raise it if the agents are still starting)): ... connection reset by
// peer", as if the agent were down).
func TestRefusedAtMaxConnsSaysWhy(t *testing.T) {
	t.Parallel()
	addr := addrs(cluster(t, 1, "--max-conns", "1"))
	// The watch itself may be refused while the agent still holds a
	// connection it has not seen close (the harness's readiness probe, or
	// the watch's own first request on a busy machine): start it again
	// until it holds the one connection.
	w := start(t, nil, "watch", "w/", "--addr", addr)
	nodetest.Eventually(t, 20*time.Second, func() error {
		if w.exited() {
			t.Logf("watch exited before it started; again. stderr: %q", w.stderr.String())
			w = start(t, nil, "watch", "w/", "--addr", addr)
		}
		if !strings.Contains(w.stderr.String(), "watching") {
			return errors.New("watch not started")
		}
		return nil
	})
	code, out, errOut := cli(t, "get", "k", "--addr", addr, "--timeout", "3s")
	t.Logf("get at --max-conns: exit %d, stdout %q, stderr %q", code, out, errOut)
	if code == 0 {
		t.Fatal("the agent admitted a second connection at --max-conns 1 (the watch's was idle?)")
	}
	if !strings.Contains(errOut, "--max-conns") {
		t.Errorf("get refused at the agent's --max-conns: stderr %q does not name --max-conns", errOut)
	}
}
