package node_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node/nodetest"
)

// A leader whose process is gone (its connections closed, its port
// refusing) makes the followers campaign early; afterwards every node's
// heartbeat timeout is back at its configured value.
func TestDeadLeaderCampaignEarly(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, _ := c.Leader()
	c.Kill(li)
	c.WaitForLeader()
	nodetest.Eventually(t, 10*time.Second, func() error {
		early := int64(0)
		for i := range 3 {
			if i == li {
				continue
			}
			n := c.Node(i)
			early += n.EarlyCampaigns()
			if got := n.Raft().ReloadableConfig().HeartbeatTimeout; got != nodetest.TestTiming.HeartbeatTimeout {
				return fmt.Errorf("n%d heartbeat timeout %v, want it restored to %v", i, got, nodetest.TestTiming.HeartbeatTimeout)
			}
		}
		if early == 0 {
			return errors.New("no follower campaigned early")
		}
		return nil
	})
}

// A leader that is alive but cut off (a partition: its connections close,
// its port still accepts) never makes anyone campaign early: only a
// refused redial counts as death.
func TestPartitionedLeaderNoEarlyCampaign(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 3})
	li, _ := c.Leader()
	var others []int
	for i := range 3 {
		if i != li {
			others = append(others, i)
		}
	}
	c.Partition([]int{li}, others)
	nodetest.Eventually(t, 15*time.Second, func() error {
		for _, i := range others {
			if c.Node(i).IsLeader() {
				return nil
			}
		}
		return errors.New("no new leader on the majority side")
	})
	for _, i := range others {
		if e := c.Node(i).EarlyCampaigns(); e != 0 {
			t.Fatalf("n%d campaigned early %d times while the leader was alive", i, e)
		}
	}
	c.Heal()
	c.WaitForLeader()
}
