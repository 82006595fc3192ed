package node_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/node/nodetest"
)

// With an auth token, a connection that has not shown the token within
// 2 s is closed, but never under a reply in flight, and a request that
// carries the token on any path (a /metrics scrape, a health check, which
// the token is not asked of) counts: a 3 s reply of such a path was cut
// at 2 s.
func TestSlowReplyOfAnUnguardedPathIsNotCut(t *testing.T) {
	for _, auth := range []string{"", "Authorization: Bearer s3cret\r\n"} {
		c := nodetest.New(t, nodetest.Options{Size: 1, API: true, Configure: func(i int, cfg *node.Config) {
			cfg.AuthToken = "s3cret"
			cfg.HTTPHandlers = map[string]http.Handler{
				// A scrape that takes 3 s on a busy node.
				"/slowmetrics": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					for i := range 30 {
						fmt.Fprintf(w, "metric_%d 1\n", i)
						w.(http.Flusher).Flush()
						time.Sleep(100 * time.Millisecond)
					}
					fmt.Fprintln(w, "# EOF")
				}),
			}
		}})
		_, l := c.Leader()
		conn, err := net.DialTimeout("tcp", l.APIAddr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(conn, "GET /slowmetrics HTTP/1.1\r\nHost: x\r\n%s\r\n", auth)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		conn.Close()
		if err != nil || !strings.Contains(string(body), "# EOF") {
			t.Fatalf("a 3 s reply of an unguarded path (%q) was cut after %d bytes: %v", strings.TrimSpace(auth), len(body), err)
		}
	}
}
