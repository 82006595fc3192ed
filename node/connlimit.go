package node

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimiter admits at most max client API connections. At the limit a
// new connection takes the place of the one that has been idle (between
// requests, kept alive) the longest, which is closed: idle connections,
// cheap for anyone to open and leave, must not lock every other client
// out until IdleTimeout. If none is idle, the new connection waits for a
// slot. Busy connections (a request in flight, a waiting acquire, a
// watch) are never closed. The first refusal of each minute is logged.
type connLimiter struct {
	net.Listener
	max int
	log *slog.Logger

	mu       sync.Mutex
	open     map[net.Conn]*limitedConn // by the conn net/http reports
	freed    chan struct{}             // a slot was freed (capacity 1)
	done     chan struct{}             // closed by Close
	closing  sync.Once
	lastWarn time.Time
	shed     int // idle connections closed since the last warning
}

func newConnLimiter(ln net.Listener, max int, log *slog.Logger) *connLimiter {
	return &connLimiter{Listener: ln, max: max, log: log, open: map[net.Conn]*limitedConn{},
		freed: make(chan struct{}, 1), done: make(chan struct{})}
}

// Close closes the listener and ends an Accept waiting for a slot.
func (l *connLimiter) Close() error {
	l.closing.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn is one admitted connection.
type limitedConn struct {
	net.Conn
	l         *connLimiter
	idleSince time.Time // zero while busy or not yet past its first request
	once      sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c) })
	return c.Conn.Close()
}

// Accept waits for a connection and a slot for it.
func (l *connLimiter) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &limitedConn{Conn: raw, l: l}
	for {
		l.mu.Lock()
		if len(l.open) < l.max {
			l.open[raw] = c
			l.mu.Unlock()
			return c, nil
		}
		victim := l.idlest()
		if victim != nil {
			delete(l.open, victim.Conn)
			l.open[raw] = c
			l.shed++
			l.warnLocked("closing the connection idle longest to admit a new one")
			l.mu.Unlock()
			victim.once.Do(func() {})
			victim.Conn.Close()
			return c, nil
		}
		l.warnLocked("every connection is busy; new ones wait for a slot")
		l.mu.Unlock()
		select {
		case <-l.freed:
		case <-l.done:
			raw.Close()
			return nil, net.ErrClosed
		}
	}
}

// idlest returns the admitted connection idle the longest, or nil.
// Called with l.mu held.
func (l *connLimiter) idlest() *limitedConn {
	var v *limitedConn
	for _, c := range l.open {
		if !c.idleSince.IsZero() && (v == nil || c.idleSince.Before(v.idleSince)) {
			v = c
		}
	}
	return v
}

func (l *connLimiter) warnLocked(what string) {
	if time.Since(l.lastWarn) < time.Minute {
		return
	}
	l.lastWarn = time.Now()
	l.log.Warn("client API at its connection limit: "+what+" (raise agent --max-conns if the clients are yours)",
		"max_conns", l.max, "idle_closed", l.shed)
	l.shed = 0
}

func (l *connLimiter) release(c *limitedConn) {
	l.mu.Lock()
	if l.open[c.Conn] == c {
		delete(l.open, c.Conn)
	}
	l.mu.Unlock()
	select {
	case l.freed <- struct{}{}:
	default:
	}
}

// state is the http.Server's ConnState hook: it marks connections idle
// and busy.
func (l *connLimiter) state(nc net.Conn, st http.ConnState) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	lc, ok := nc.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if st == http.StateIdle {
		lc.idleSince = time.Now()
	} else {
		lc.idleSince = time.Time{}
	}
}
