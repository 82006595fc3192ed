package main

import (
	"container/list"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// maxProbeConns bounds the connections the --http port keeps open: probes
// and scrapes need a handful. Past it a new connection takes the place of
// an older one: a flood of connections that send nothing (19,800 of them
// held 16,500 of a leader's file descriptors and made it step down, in an
// outsider's probe) cannot keep kubelet or Prometheus out for long.
const maxProbeConns = 64

// probeListener is a listener that keeps at most max connections open.
// To admit a new one it closes the oldest idle keep-alive connection (its
// request was answered), else the oldest that has sent no request yet,
// and one serving a request only if every one is: closing the oldest
// whatever it did failed 5 of 31 /readyz probes beside a churn of silent
// connections (outsider review), cut off mid-answer.
type probeListener struct {
	net.Listener
	max int
	log *slog.Logger

	mu      sync.Mutex
	open    list.List // of *probeConn, oldest first
	evicted *loglimit.Limiter
}

func (l *probeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &probeConn{Conn: c, l: l, state: http.StateNew}
	l.mu.Lock()
	var evict *probeConn
	var evictState http.ConnState
	if l.open.Len() >= l.max {
		evict = l.victimLocked()
		l.open.Remove(evict.elem)
		evict.elem = nil
		evictState = evict.state
	}
	pc.elem = l.open.PushBack(pc)
	l.mu.Unlock()
	if evict != nil {
		evict.Conn.Close()
		if ok, skipped := l.evicted.Allow("max_conns"); ok && l.log != nil {
			args := []any{"max_conns", l.max, "closed", evict.RemoteAddr().String(), "state", evictState.String()}
			if skipped > 0 {
				args = append(args, loglimit.Skipped, skipped)
			}
			l.log.Warn("--http has as many connections open as it keeps: closed one to admit another (probes and scrapes need a handful; many silent connections are a client misbehaving or a flood)", args...)
		}
	}
	return pc, nil
}

// victimLocked is the connection to close for a new one (see
// probeListener). Called with l.mu held and the list full.
func (l *probeListener) victimLocked() *probeConn {
	var fresh *probeConn
	for e := l.open.Front(); e != nil; e = e.Next() {
		switch c := e.Value.(*probeConn); c.state {
		case http.StateIdle:
			return c
		case http.StateNew:
			if fresh == nil {
				fresh = c
			}
		}
	}
	if fresh != nil {
		return fresh
	}
	return l.open.Front().Value.(*probeConn)
}

// connState is the server's http.Server.ConnState: it keeps each
// connection's state for victimLocked.
func (l *probeListener) connState(c net.Conn, s http.ConnState) {
	if pc, ok := c.(*probeConn); ok {
		l.mu.Lock()
		pc.state = s
		l.mu.Unlock()
	}
}

// probeConn is an admitted connection; Close takes it off the list.
type probeConn struct {
	net.Conn
	l     *probeListener
	elem  *list.Element  // nil once off the list
	state http.ConnState // as the server last reported it (l.mu)
}

func (c *probeConn) Close() error {
	c.l.mu.Lock()
	if c.elem != nil {
		c.l.open.Remove(c.elem)
		c.elem = nil
	}
	c.l.mu.Unlock()
	return c.Conn.Close()
}
