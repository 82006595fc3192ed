package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario: a watch the agent refuses at its --max-watches exits with the
// refusal and does not first say it is watching (new-user review L7).
func TestWatchRefusedDoesNotSayWatching(t *testing.T) {
	t.Parallel()
	addr := addrs(cluster(t, 1, "--max-watches", "1"))
	w := start(t, nil, "watch", "w/", "--addr", addr)
	nodetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(w.stderr.String(), "watching") {
			return errors.New("first watch not started")
		}
		return nil
	})
	code, _, errOut := cli(t, "watch", "w/", "--addr", addr, "--timeout", "3s")
	t.Logf("second watch: exit %d, stderr %q", code, errOut)
	if code == 0 || !strings.Contains(errOut, "max-watches") {
		t.Fatalf("second watch at --max-watches 1: exit %d, stderr %q; want a refusal naming --max-watches", code, errOut)
	}
	if strings.Contains(errOut, "watching \"") {
		t.Errorf("a refused watch said it was watching: %q", errOut)
	}
}
