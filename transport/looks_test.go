package transport

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A refused node-port connection says what the peer seems to speak: HTTP
// (a client at the wrong port) or TLS (a node with a key talking to one
// without).
func TestLooksLike(t *testing.T) {
	for _, tc := range []struct {
		first byte
		want  string
	}{
		{'P', "client API port"}, {'G', "client API port"}, {0x16, "--cluster-key-file"}, {0, ""}, {ProtoRaft, ""},
	} {
		got := looksLike(tc.first)
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("looksLike(%#x) = %q, want it to mention %q", tc.first, got, tc.want)
		}
	}
}

// A client pointed at the node port gets a short HTTP answer saying so
// (it waited out its retries and read "connection reset by peer"), with
// TLS on the node port and without; past wrongPortAnswers a second the
// rest are only closed.
func TestNodePortAnswersHTTP(t *testing.T) {
	key := make([]byte, ClusterKeySize)
	_, _ = rand.Read(key)
	srv, _, err := ClusterKeyTLS(key, "n1")
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]MuxConfig{"plain": {}, "cluster key": {TLS: srv}} {
		t.Run(name, func(t *testing.T) {
			m, _ := startMux(t, cfg, ProtoRaft, ProtoRPC)
			get := func() (*http.Response, error) {
				c, err := net.Dial("tcp", m.Addr().String())
				if err != nil {
					return nil, err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.WriteString(c, "POST /lease.v1.LeaseService/Get HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"); err != nil {
					return nil, err
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					return nil, err
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body = io.NopCloser(bytes.NewReader(body))
				return resp, err
			}
			resp, err := get()
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusMisdirectedRequest || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Leasenode-Port") != "node" ||
				!strings.Contains(string(body), "node port") || !strings.Contains(string(body), "--api") {
				t.Fatalf("answer %s %q: %s", resp.Status, resp.Header.Get("Content-Type"), body)
			}
			answered := 1
			for range 3 * wrongPortAnswers {
				if _, err := get(); err == nil {
					answered++
				}
			}
			if answered > 2*wrongPortAnswers { // the budget may renew once meanwhile
				t.Fatalf("%d answers in a burst, want at most %d a second", answered, wrongPortAnswers)
			}
		})
	}
}
