package transport

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// WrongPort answers an HTTP client that dialed a port that is not the
// client API (a node port, a gossip port): a plain HTTP 421 whose body is
// a Connect error naming the port, so that curl prints it and a Connect
// client (the lease package's, the CLI's) reads it as the error's message
// instead of a reset connection. Its header Leasenode-Port names the
// port's kind, so that a client can tell it from any node's refusal
// (connect.Error.Meta) without matching the text. Answers are bounded:
// at most wrongPortAnswers a second (past it such connections are only
// closed), each written within wrongPortWrite.
type WrongPort struct {
	answer []byte

	mu     sync.Mutex
	n      int       // answers since since
	window time.Time // start of the current second of answers
}

// Bounds on wrong-port answers.
const (
	wrongPortAnswers = 8
	wrongPortWrite   = time.Second
	// wrongPortLinger is how long the write side stays half-closed before
	// the connection closes: closing with the request unread sends a
	// reset, which may make the client drop the answer unread.
	wrongPortLinger = 100 * time.Millisecond
)

// NewWrongPort returns the answerer of a port of kind port (its
// Leasenode-Port header: PortNode, "gossip"), described to the user as
// what ("a leasenode node port (Raft and node RPC)").
func NewWrongPort(port, what string) *WrongPort {
	body := `{"code":"failed_precondition","message":"this is ` + what + `, not the client API: ` +
		`clients use the agent's --api address"}` + "\n"
	return &WrongPort{answer: []byte("HTTP/1.1 421 Misdirected Request\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nLeasenode-Port: " + port + "\r\nConnection: close\r\n\r\n" + body)}
}

// Answer answers conn, whose first byte (already read) was first, if that
// byte starts an HTTP method and the budget allows, and reports whether it
// did. It reads nothing more from conn; it lingers until done closes or
// wrongPortLinger passes, so that the answer is read before the close.
func (w *WrongPort) Answer(conn net.Conn, first byte, done <-chan struct{}) bool {
	if !LooksHTTP(first) || !w.allow() {
		return false
	}
	_ = conn.SetWriteDeadline(time.Now().Add(wrongPortWrite))
	if _, err := conn.Write(w.answer); err != nil {
		return false
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		select {
		case <-time.After(wrongPortLinger):
		case <-done:
		}
	}
	return true
}

// allow reports whether another answer fits in this second's budget.
func (w *WrongPort) allow() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now := time.Now(); now.Sub(w.window) >= time.Second {
		w.window, w.n = now, 0
	}
	if w.n >= wrongPortAnswers {
		return false
	}
	w.n++
	return true
}

// LooksHTTP reports whether b starts an HTTP/1 method (GET, POST, PUT,
// HEAD, DELETE, OPTIONS, CONNECT, TRACE, PATCH) or HTTP/2's preface (PRI):
// no leasenode node-port protocol byte or memberlist message type is one
// of these letters.
func LooksHTTP(b byte) bool { return strings.IndexByte("GPHDOCT", b) >= 0 }
