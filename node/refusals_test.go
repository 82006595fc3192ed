package node_test

import (
	"testing"

	"github.com/leasenode/leasenode/node"
)

// refusals returns n's count of refusals at port for reason, failing t if
// n does not report that reason.
func refusals(t *testing.T, n *node.Node, port, reason string) uint64 {
	t.Helper()
	for _, r := range n.Refusals() {
		if r.Port == port && r.Reason == reason {
			return r.Count
		}
	}
	t.Fatalf("no refusals reported for port %q, reason %q", port, reason)
	return 0
}
