package transport

import (
	"net"
	"sync"
)

// Faults is a shared, in-process network switchboard for multi-node tests
// (the first of the three fault-injection layers: transport hooks, named
// failpoints, process-level nemeses). All nodes of a test cluster point
// their Dialers at the same *Faults; it decides which dials may happen and
// closes live connections that a new partition cuts.
//
// Addresses are the nodes' advertised Mux addresses, compared as strings:
// use exactly the strings the nodes advertise and dial. Every connection has
// a dialing side whose Dialer registered it as (from=LocalAddr, to=addr), so
// cutting registered connections covers both directions of traffic.
//
// Faults only affects connections made through a Dialer that points at it;
// it does not delay or reorder bytes. The zero value is not usable; call
// NewFaults.
type Faults struct {
	mu       sync.Mutex
	group    map[string]int // address -> 1-based group index from Partition
	isolated map[string]bool
	stalled  map[string]bool
	thaw     chan struct{} // closed and replaced by Heal
	conns    map[*faultConn]struct{}
}

// NewFaults returns a Faults with a healthy network.
func NewFaults() *Faults {
	return &Faults{
		group:    make(map[string]int),
		isolated: make(map[string]bool),
		stalled:  make(map[string]bool),
		thaw:     make(chan struct{}),
		conns:    make(map[*faultConn]struct{}),
	}
}

// Partition replaces the current faults (including Isolate) with groups:
// nodes in different groups cannot talk. New dials between them fail with
// ErrPartitioned and existing connections between them are closed at once.
// Addresses not named in any group stay reachable from all. An address named
// in several groups belongs to the last.
func (f *Faults) Partition(groups ...[]string) {
	f.mu.Lock()
	f.group = make(map[string]int)
	f.isolated = make(map[string]bool)
	for i, g := range groups {
		for _, addr := range g {
			f.group[addr] = i + 1
		}
	}
	cut := f.cutLocked()
	f.mu.Unlock()
	closeAll(cut)
}

// Isolate cuts addr from every other address, named in a partition or not,
// in addition to the current faults, and closes its connections.
func (f *Faults) Isolate(addr string) {
	f.mu.Lock()
	f.isolated[addr] = true
	cut := f.cutLocked()
	f.mu.Unlock()
	closeAll(cut)
}

// Stall makes addr look like a stopped process (SIGSTOP, a paused VM) to
// its peers: bytes stop moving both ways on every connection to or from
// it, old and new, but nothing is closed and dials still connect, as a
// kernel keeps a stopped process's sockets. Reads return what had arrived
// only once Heal thaws the address; writes return at once and are sent
// then.
func (f *Faults) Stall(addr string) {
	f.mu.Lock()
	f.stalled[addr] = true
	f.mu.Unlock()
}

// Heal removes every fault and lets stalled connections move again.
// Connections closed by earlier faults stay closed; their owners redial.
func (f *Faults) Heal() {
	f.mu.Lock()
	f.group = make(map[string]int)
	f.isolated = make(map[string]bool)
	f.stalled = make(map[string]bool)
	close(f.thaw)
	f.thaw = make(chan struct{})
	f.mu.Unlock()
}

func (f *Faults) isStalled(c *faultConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stalled[c.from] || f.stalled[c.to]
}

// hold waits while c's ends are stalled, or until c is closed.
func (f *Faults) hold(c *faultConn) {
	for {
		f.mu.Lock()
		stalled := f.stalled[c.from] || f.stalled[c.to]
		thaw := f.thaw
		f.mu.Unlock()
		if !stalled {
			return
		}
		select {
		case <-thaw:
		case <-c.done:
			return
		}
	}
}

// Allowed reports whether a node advertised as from may currently talk to
// to. A node may always talk to itself.
func (f *Faults) Allowed(from, to string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allowedLocked(from, to)
}

func (f *Faults) allowedLocked(from, to string) bool {
	if from == to {
		return true
	}
	if f.isolated[from] || f.isolated[to] {
		return false
	}
	gf, okf := f.group[from]
	gt, okt := f.group[to]
	return !okf || !okt || gf == gt
}

// cutLocked unregisters and returns the connections that are no longer
// allowed.
func (f *Faults) cutLocked() []*faultConn {
	var cut []*faultConn
	for c := range f.conns {
		if !f.allowedLocked(c.from, c.to) {
			delete(f.conns, c)
			cut = append(cut, c)
		}
	}
	return cut
}

// closeAll closes the raw TCP connections under cut: like a cable pulled,
// without a TLS close_notify that could block on a full send buffer.
func closeAll(cut []*faultConn) {
	for _, c := range cut {
		_ = c.raw.Close()
	}
}

// track registers a freshly dialed connection. It re-checks Allowed under
// the lock, so a partition that began during the dial cannot miss it.
func (f *Faults) track(from, to string, conn, raw net.Conn) (net.Conn, error) {
	c := &faultConn{Conn: conn, raw: raw, f: f, from: from, to: to, done: make(chan struct{})}
	f.mu.Lock()
	if !f.allowedLocked(from, to) {
		f.mu.Unlock()
		_ = raw.Close()
		return nil, ErrPartitioned
	}
	f.conns[c] = struct{}{}
	f.mu.Unlock()
	return c, nil
}

// faultConn is a dialed connection registered with a Faults.
type faultConn struct {
	net.Conn          // what the Dialer returns (TLS or TCP)
	raw      net.Conn // the TCP connection under Conn
	f        *Faults
	from, to string
	done     chan struct{} // closed by Close
	once     sync.Once
	wmu      sync.Mutex
	held     []byte // written while stalled, sent on Heal
}

// Read returns what arrived, once neither end is stalled.
func (c *faultConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.f.hold(c)
	}
	return n, err
}

// Write sends p, or while an end is stalled keeps it to send on Heal and
// returns at once, as a kernel's send buffer takes a write to a stopped
// peer.
func (c *faultConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.f.isStalled(c) {
		if len(c.held) == 0 {
			go c.sendHeld()
		}
		c.held = append(c.held, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// sendHeld sends the writes kept while stalled, once thawed.
func (c *faultConn) sendHeld() {
	c.f.hold(c)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.flushLocked()
}

func (c *faultConn) flushLocked() error {
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = nil
	return err
}

// Peer returns the peer of the dialed connection (see PeerOf).
func (c *faultConn) Peer() Peer {
	p, _ := PeerOf(c.Conn)
	return p
}

// Close unregisters the connection and closes it.
func (c *faultConn) Close() error {
	c.f.mu.Lock()
	delete(c.f.conns, c)
	c.f.mu.Unlock()
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}
