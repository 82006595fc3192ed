package node

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// A stalled commit is logged (an outsider review saw two clusters on one
// host stop committing for 3.4 s, losing 3 s leases, with nothing in any
// log), once per loglimit.Every however many there are; a quick one is
// not.
func TestSlowCommitLogged(t *testing.T) {
	var buf bytes.Buffer
	n := &Node{log: slog.New(slog.NewTextHandler(&buf, nil)), slowCommits: loglimit.New()}
	n.noteCommit(slowCommit / 2)
	if buf.Len() != 0 {
		t.Fatalf("a quick commit was logged: %s", buf.String())
	}
	n.noteCommit(2 * slowCommit)
	n.noteCommit(3 * slowCommit)
	out := buf.String()
	if strings.Count(out, "a Raft commit was slow") != 1 || !strings.Contains(out, "took=2s") || !strings.Contains(out, "level=WARN") {
		t.Errorf("want one warning for the first slow commit, got:\n%s", out)
	}
}
