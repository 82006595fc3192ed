package node

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
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

// A flood of one kind of warning (memberlist logs an ERROR per packet it
// cannot decode, and anyone can send UDP to the gossip port) is logged
// once per loglimit.Every, with a hint, whatever the senders' bytes; other
// kinds and other levels pass.
func TestLogFloodIsLimited(t *testing.T) {
	var buf bytes.Buffer
	l := stdlogFor(slog.New(slog.NewTextHandler(&buf, nil)), "memberlist")
	for i := range 10_000 {
		l.Printf("[ERR] memberlist: Decrypt packet failed: unsupported encryption version %d from=10.0.0.%d:7946", i%256, i%250)
		l.Printf("[ERR] memberlist: discarding packet with unacceptable label \"\\x%02x\": from=10.0.0.1:7946", i%256)
		// memberlist logs this one with no level, once per stream a flood
		// opens (43,148 lines in 75 s in an outsider's probe).
		l.Printf("Err: Could not set the deadline: set tcp 127.0.0.1:7401->127.0.0.1:%d: use of closed network connection", 40000+i%20000)
	}
	l.Print("[WARN] memberlist: Was able to connect to n3 over TCP but UDP probes failed")
	l.Print("[INFO] memberlist: joined")
	l.Print("[INFO] memberlist: joined")
	out := buf.String()
	if n := strings.Count(out, "Decrypt packet failed"); n != 1 {
		t.Errorf("%d decrypt failures logged, want 1:\n%.2000s", n, out)
	}
	if n := strings.Count(out, "unacceptable label"); n != 1 {
		t.Errorf("%d label refusals logged, want 1", n)
	}
	if n := strings.Count(out, "Could not set the deadline"); n != 1 {
		t.Errorf("%d bare deadline lines logged, want 1", n)
	}
	for _, want := range []string{"gossip key", "UDP probes failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "msg=joined"); n != 2 {
		t.Errorf("info lines limited: %d of 2 logged", n)
	}

	// Raft's: one per bad frame a connection sends, one per failed
	// heartbeat to each lost peer.
	buf.Reset()
	h := hclogFor(slog.New(slog.NewTextHandler(&buf, nil)), "raft-net")
	for i := range 10_000 {
		h.Error("failed to decode incoming command", "error", fmt.Errorf("msgpack decode error [pos %d]", i))
		h.Named("sub").Error("failed to heartbeat to", "peer", fmt.Sprint("10.0.0.", i%2), "error", "refused")
	}
	h.Info("entering follower state")
	h.Info("entering follower state")
	out = buf.String()
	for want, n := range map[string]int{"failed to decode": 1, "peer=10.0.0.0": 1, "peer=10.0.0.1": 1, "entering follower state": 2} {
		if got := strings.Count(out, want); got != n {
			t.Errorf("%d lines with %q, want %d:\n%.2000s", got, want, n, out)
		}
	}
}

// A read on a connection this node closed (what Raft's transport logs for
// every open connection at a graceful shutdown), or its transport shutting
// down, is not an error; another
// connection error still is.
func TestLogClosedByUsIsDebug(t *testing.T) {
	var buf bytes.Buffer
	h := hclogFor(slog.New(slog.NewTextHandler(&buf, nil)), "raft-net")
	closed := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	h.Error("failed to decode incoming command", "error", closed)
	h.Warn("failed to decode incoming command", "error", fmt.Errorf("conn: %w", closed))
	h.Error("failed to decode incoming command", "error", raft.ErrTransportShutdown) // this node stopping
	if buf.Len() != 0 {
		t.Errorf("a connection closed by this node is logged above Debug:\n%s", buf.String())
	}
	h.Error("failed to decode incoming command", "error", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET})
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("a reset connection is not logged as an error: %q", buf.String())
	}
}

// A failed join's memberlist error gets a hint in the agent's terms.
func TestJoinHint(t *testing.T) {
	for msg, want := range map[string]string{
		"1 error occurred:\n\t* Failed to join 127.0.0.1:7401: No installed keys could decrypt the message": "--cluster-key",
		"Failed to join 127.0.0.1:7402: received invalid msgType (72), expected pushPullMsg (6)":            "not their --api",
		"Failed to join 127.0.0.1:7401: dial tcp 127.0.0.1:7401: connect: connection refused":               "may not have started",
		// A key holder joining an --api port: the HTTP answer is not
		// encrypted. Both possible causes are named.
		"Failed to join 127.0.0.1:7402: encryption is configured but remote state is not encrypted": "not their --api",
		"Failed to join 127.0.0.1:7401: encryption is configured but remote state is not encrypted": "same --cluster-key",
	} {
		if got := joinHint(fmt.Errorf("%s", msg)); !strings.Contains(got, want) {
			t.Errorf("hint for %q: %q, want %q in it", msg, got, want)
		}
	}
}

// The error of a failed join, a multierror from memberlist that spans
// lines, is logged on one line, each of its errors kept.
func TestJoinErrorOnOneLine(t *testing.T) {
	cfg := memberlist.DefaultLocalConfig()
	cfg.Name, cfg.BindAddr, cfg.BindPort, cfg.AdvertisePort = "joiner", "127.0.0.1", 0, 0
	cfg.LogOutput = io.Discard
	ml, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	var dead [2]string // nothing listens there
	for i := range dead {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead[i] = ln.Addr().String()
		ln.Close()
	}
	_, err = ml.Join(dead[:])
	if err == nil || !strings.Contains(err.Error(), "\n") {
		t.Fatalf("join of %v: %v; want memberlist's multi-line error (has it changed?)", dead, err)
	}
	got := oneLine(err)
	if strings.ContainsAny(got, "\n\t") || strings.Count(got, "connection refused") != 2 ||
		!strings.Contains(got, dead[0]) || !strings.Contains(got, dead[1]) || strings.Contains(got, "occurred") {
		t.Errorf("oneLine(%q) = %q; want both failures on one line", err, got)
	}
}

// A stream from a node with another key: memberlist's ERROR line gets the
// hint, once per loglimit.Every, and another receive failure does not
// hide it; every one is counted, logged or not.
func TestGossipKeyMismatchHinted(t *testing.T) {
	var buf bytes.Buffer
	var foreign atomic.Uint64
	l := memberlistLog(slog.New(slog.NewTextHandler(&buf, nil)), &foreign)
	l.Print("[ERR] memberlist: failed to receive: EOF from=127.0.0.1:40000")
	for i := range 100 {
		l.Printf("[ERR] memberlist: failed to receive: no installed keys could decrypt the message from=127.0.0.1:%d", 40000+i)
	}
	out := buf.String()
	if n := strings.Count(out, "no installed keys could decrypt"); n != 1 {
		t.Fatalf("%d key mismatches logged, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "another cluster key") {
		t.Fatalf("no hint:\n%s", out)
	}
	if n := foreign.Load(); n != 100 {
		t.Fatalf("%d undecodable streams counted, want 100", n)
	}
}

// README's recipe lists every node's gossip address on every node: the
// node's own is left out of the seeds (its answer hid the others'
// failures), bound or advertised, or on any local address when bound to
// all.
func TestSeedsLeaveOutSelf(t *testing.T) {
	n := &Node{cfg: Config{Join: []string{"127.0.0.1:7401", "127.0.0.1:7411", "10.1.2.3:7401", "10.9.9.9:7421"}},
		gossipSelf: []string{"127.0.0.1:7401", "10.9.9.9:7421"}}
	got := strings.Join(n.seeds(t.Context()), ",")
	if want := "127.0.0.1:7411,10.1.2.3:7401"; got != want {
		t.Fatalf("seeds %s, want %s", got, want)
	}
	n.gossipSelf = []string{"0.0.0.0:7401"}
	got = strings.Join(n.seeds(t.Context()), ",")
	if want := "127.0.0.1:7411,10.1.2.3:7401,10.9.9.9:7421"; got != want {
		t.Fatalf("bound to 0.0.0.0: seeds %s, want %s", got, want)
	}
}

// A node that waits long to bootstrap says so as a warning, with what to
// check; at first it is news only.
func TestBootstrapWaitWarns(t *testing.T) {
	if level, _, _ := bootstrapWait(time.Second, 1, 3); level != slog.LevelInfo {
		t.Fatalf("after 1s: level %v", level)
	}
	level, msg, args := bootstrapWait(bootstrapWarnAfter, 1, 3)
	hint := fmt.Sprint(args...)
	if level != slog.LevelWarn || !strings.Contains(msg, "still waiting") || !strings.Contains(hint, "sees 1 of the 3") ||
		!strings.Contains(hint, "--cluster-key") || !strings.Contains(hint, "--gossip addresses") {
		t.Fatalf("after %v: %v %q %v", bootstrapWarnAfter, level, msg, hint)
	}
}
