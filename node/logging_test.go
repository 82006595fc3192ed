package node

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Raft's and memberlist's logs keep their types and levels: a duration is
// a duration, a server a struct with its suffrage by name, hclog.Fmt is
// rendered, Trace is below Debug, and memberlist's "[WARN] memberlist: "
// prefix becomes the level.
func TestLogAdaptersKeepTypes(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := hclogFor(l, "raft")
	h.Warn("failed to contact", "server-id", "n2", "time", 1516*time.Millisecond,
		"peer", raft.Server{ID: "n2", Address: "127.0.0.1:7400", Suffrage: raft.Voter}, "servers", hclog.Fmt("%d servers", 3))
	h.Trace("not shown at debug")
	h.Named("net").Info("sub")
	stdlogFor(l, "memberlist").Print("[WARN] memberlist: Was able to connect to n3 over TCP but UDP probes failed")
	out := buf.String()
	for _, want := range []string{
		`level=WARN msg="failed to contact" component=raft server-id=n2 time=1.516s`,
		`peer="{Suffrage:Voter ID:n2 Address:127.0.0.1:7400}"`,
		`servers="3 servers"`,
		`msg=sub component=raft.net`,
		`level=WARN msg="Was able to connect to n3 over TCP but UDP probes failed" component=memberlist`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not shown") {
		t.Errorf("trace logged at debug level:\n%s", out)
	}
}
