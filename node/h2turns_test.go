package node_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Many request bodies of one client in flight at once on one HTTP/2
// connection, each over the 4 KiB a body has for free: each waits for
// its source's turn to be read, and while it waits its first stream
// window of DATA holds as much of the connection's window. The body
// holding the turn must still receive the rest of its bytes: past
// node's maxWaitingBodies waiting, a body is refused at once, naming
// the limit. Eight Extends of 70 KB sent at once by one gRPC client
// waited for each other until the read timeout (10 s), and those that
// failed said their client had sent them too slowly.
func TestMultiplexedBodiesOfOneClientAreAllRead(t *testing.T) {
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true})
	_, l := c.Leader()
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	cl := pbconnect.NewLeaseServiceClient(&http.Client{Transport: tr}, "http://"+l.APIAddr(), connect.WithGRPC())
	req := &pb.ExtendRequest{Holder: "h"}
	for i := range 4000 { // ~70 KB
		req.Items = append(req.Items, &pb.ExtendItem{Key: fmt.Sprintf("key-%08d", i), Token: 1})
	}
	const calls = 8
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var took []time.Duration
	var errs []error
	for range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, err := cl.Extend(ctx, connect.NewRequest(req))
			mu.Lock()
			defer mu.Unlock()
			took = append(took, time.Since(start))
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	slices.Sort(took)
	t.Logf("%d Extends of %d KB at once on one h2c connection: fastest %v, slowest %v; %d refused", calls, proto.Size(req)>>10, took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), len(errs))
	for _, err := range errs {
		// Nothing of it was read: retryable, as overloaded.
		if connect.CodeOf(err) != connect.CodeUnavailable || reasonOf(err) != pb.Reason_REASON_OVERLOADED || !strings.Contains(err.Error(), "wait to be read on this HTTP/2 connection") {
			t.Errorf("an Extend failed: %v; want only refusals naming the bodies waiting on the connection, unavailable with REASON_OVERLOADED", err)
		}
	}
	if len(errs) == calls {
		t.Errorf("all %d Extends refused", calls)
	}
	if took[len(took)-1] > 5*time.Second {
		t.Errorf("a body of a multiplexed client waited %v", took[len(took)-1])
	}
}
