package node_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node/nodetest"
)

// Scenario (bootstrap-decides): three nodes bootstrap together
// (BootstrapExpect 3) while n0 and n1 cannot reach each other's node port;
// gossip carries all three. n2 reaches both, finds neither has Raft
// state, and bootstraps the three of them. n0 and n1 cannot ask each
// other, but n2 answers them that it has state: that settles it, they
// join. They used to give up their whole decision on the member they
// could not ask and wait to bootstrap for ever, refusing n2 (a node
// waiting to bootstrap takes nobody with a cluster id), although n2's
// configuration counts them as voters: n2 could not win an election, and
// two reachable voters of three served nothing. In a running cluster the
// same wait left the two survivors leaderless when the leader was killed
// or cut off before the slowest node had decided (TestLeaderKillKeepsLeases
// and TestPartitionedMinorityCannotGrant, seen on busy machines).
func TestBootstrapPastAnUnreachableMember(t *testing.T) {
	// New waits for a serving leader: before, none ever came.
	c := nodetest.New(t, nodetest.Options{Size: 3, BeforeStart: func(c *nodetest.Cluster) {
		c.Partition([]int{0}, []int{1})
	}})
	c.Heal()
	nodetest.Eventually(t, 20*time.Second, func() error {
		for i := range c.Size() {
			n := c.Node(i)
			if n.Raft().LastIndex() == 0 {
				return fmt.Errorf("n%d has no Raft state yet: %s", i, c.Describe())
			}
			if v, _ := countVoters(suffrage(t, n)); v != 3 {
				return fmt.Errorf("n%d's configuration %v: want 3 voters", i, suffrage(t, n))
			}
		}
		return nil
	})
	for i := range c.Size() {
		mustGrant(t, c.Node(i), acq(fmt.Sprintf("b%d", i), "c1", 1, time.Minute))
	}
}
