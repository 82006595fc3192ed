package main

import (
	"container/list"
	"net"
	"sync"
)

// maxProbeConns bounds the connections the --http port keeps open: probes
// and scrapes need a handful. Past it a new connection takes the place of
// the oldest: a flood of connections that send nothing (19,800 of them
// held 16,500 of a leader's file descriptors and made it step down, in an
// outsider's probe) cannot keep kubelet or Prometheus out for long.
const maxProbeConns = 64

// probeListener is a listener that keeps at most max connections open,
// closing the oldest to admit a new one.
type probeListener struct {
	net.Listener
	max int

	mu   sync.Mutex
	open list.List // of *probeConn, oldest first
}

func (l *probeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &probeConn{Conn: c, l: l}
	l.mu.Lock()
	var evict *probeConn
	if l.open.Len() >= l.max {
		evict = l.open.Remove(l.open.Front()).(*probeConn)
		evict.elem = nil
	}
	pc.elem = l.open.PushBack(pc)
	l.mu.Unlock()
	if evict != nil {
		evict.Conn.Close()
	}
	return pc, nil
}

// probeConn is an admitted connection; Close takes it off the list.
type probeConn struct {
	net.Conn
	l    *probeListener
	elem *list.Element // nil once off the list
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
