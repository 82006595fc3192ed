package lease_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport/transporttest"
)

// Scenario (new-user review): a node at a tiny --max-conns, its one
// connection held by a client's waiting acquire. The client's liveness
// checks need a connection of their own, and the node, at its limit,
// accepts each and closes it at once. A node that closes a connection is
// alive (a stopped process never closes one; a dead one refuses to
// connect): the wait is left alone, one Acquire request for all of it,
// and granted when the key is released, never ended as "stopped
// answering" (an unknown outcome, exit 6 in the CLI). Over TLS the node
// cuts the handshake, before net/http's GotConn.
func TestLivenessCheckRefusedAtMaxConnsIsAnAnswer(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := "plain"
		if withTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) { livenessAtMaxConns(t, withTLS) })
	}
}

func livenessAtMaxConns(t *testing.T, withTLS bool) {
	const peerTimeout = 300 * time.Millisecond
	ca := transporttest.NewCA(t)
	var acquires atomic.Int64
	c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Insecure: withTLS, Configure: func(i int, cfg *node.Config) {
		cfg.Limits.MaxConns = 1
		if withTLS {
			cfg.TLSFiles = ca.Issue(t, cfg.ID)
		}
		cfg.APIMiddleware = func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/Acquire") {
					acquires.Add(1)
				}
				h.ServeHTTP(w, r)
			})
		}
	}})
	_, l := c.Leader()
	// The holder is embedded: its release needs no connection.
	holder, err := lease.New(l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Close(context.Background()) })
	held, err := holder.TryAcquire(ctxT(t, 10*time.Second), "k", lease.TTL(30*time.Second))
	if err != nil || held == nil {
		t.Fatalf("holder: %v %v", held, err)
	}
	opts := []lease.Option{lease.WithPeerTimeout(peerTimeout)}
	if withTLS {
		var cfg *tls.Config
		if cfg, err = ca.IssueClient(t, "client").ClientConfig(); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, lease.WithTLS(cfg))
	}
	waiter, err := lease.Dial(ctxT(t, 10*time.Second), []string{l.APIAddr()}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = waiter.Close(ctx)
	})
	acquires.Store(0)
	refusedBefore := maxConnsRefusals(l)
	got := make(chan waitResult, 1)
	go func() {
		ls, err := waiter.Acquire(ctxT(t, 60*time.Second), "k", lease.TTL(30*time.Second))
		got <- waitResult{ls, err}
	}()
	// The wait outlasts several liveness checks, each refused.
	deadline := time.Now().Add(20 * time.Second)
	for maxConnsRefusals(l)-refusedBefore < 5 {
		select {
		case r := <-got:
			t.Fatalf("the waiting acquire ended while the key was held: %v %v", r.l, r.err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections refused at --max-conns in 20 s, want 5 liveness checks", maxConnsRefusals(l)-refusedBefore)
		}
	}
	t.Logf("%d connections refused at max-conns 1 during the wait; %d Acquire requests", maxConnsRefusals(l)-refusedBefore, acquires.Load())
	releaseAndGrantOnce(t, held, got, &acquires, "a liveness check the node refused at its --max-conns cut the wait short")
}

// maxConnsRefusals is how many client API connections n refused at its
// --max-conns.
func maxConnsRefusals(n *node.Node) uint64 {
	for _, r := range n.Refusals() {
		if r.Port == "api" && r.Reason == "max_conns" {
			return r.Count
		}
	}
	return 0
}
