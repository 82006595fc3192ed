package transport

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// NewStreamLayer adapts a Mux sub-listener (normally Mux.Listen(ProtoRaft))
// and a Dialer to raft.StreamLayer, for raft.NewNetworkTransportWithConfig.
// Accept and Close are ln's; Addr returns advertise (ln.Addr() when
// advertise is nil), which must be the address other nodes dial; Dial uses
// d with ProtoRaft. Closing the stream layer closes only ln, not the Mux.
func NewStreamLayer(ln net.Listener, advertise net.Addr, d *Dialer) *StreamLayer {
	if d == nil {
		d = &Dialer{}
	}
	return &StreamLayer{Listener: ln, advertise: advertise, dialer: d, conns: map[*trackedConn]struct{}{}, dialed: map[*dialedConn]struct{}{}}
}

// StreamLayer is the raft.StreamLayer NewStreamLayer returns. It tracks
// the connections it accepted, so that Drain can wait until raft's
// handlers of incoming RPCs are done with them, and the ones it dialed, so
// that Close cuts them.
type StreamLayer struct {
	net.Listener
	advertise net.Addr
	dialer    *Dialer
	expected  func(address string) []string

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	wg     sync.WaitGroup
	dialed map[*dialedConn]struct{}
	closed bool
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// Accept returns the next incoming Raft connection, tracked until closed.
func (s *StreamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: s}
	s.mu.Lock()
	s.conns[tc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	return tc, nil
}

// Drain closes every accepted connection and waits (at most timeout) until
// whoever served each has closed it too. hashicorp/raft serves incoming
// RPCs (heartbeats among them) on the transport's own goroutines, which
// raft.Shutdown does not wait for and which write the stable store: a node
// drains its stream layer after shutting the transport down and before it
// closes its stores, or a heartbeat handled in that instant finds the store
// closed (raft panics on that). It reports whether every one finished.
func (s *StreamLayer) Drain(timeout time.Duration) bool {
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Conn.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// trackedConn is an accepted connection known to its StreamLayer until its
// owner closes it.
type trackedConn struct {
	net.Conn
	s    *StreamLayer
	once sync.Once
}

// Close closes the connection and tells the stream layer it is done.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.s.wg.Done()
	})
	return err
}

// Addr returns the advertised address.
func (s *StreamLayer) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

// ExpectPeers makes Dial check who answers: expected returns the node IDs
// that may be reached at an address (the Raft servers the configuration
// lists there; none means any), and a Dial that reaches another node
// fails with an error wrapping ErrWrongPeer. hashicorp/raft dials by
// address alone, so without it a node that took over a member's address
// (a new node started on a dead member's host and port) would get that
// member's AppendEntries and be asked for its votes: an empty log voting
// in the member's place, which can elect a leader without committed
// entries. Call it before the first Dial.
func (s *StreamLayer) ExpectPeers(expected func(address string) []string) {
	s.expected = expected
}

// Dial opens a Raft stream to address; timeout bounds the whole dial (the
// Dialer's own Timeout applies when it is zero). The connection is cut by
// Close.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := s.dialer.Dial(ctx, string(address), ProtoRaft)
	if err != nil {
		return nil, err
	}
	if s.expected != nil {
		if ids := s.expected(string(address)); len(ids) > 0 {
			if p, _ := PeerOf(c); !slices.Contains(ids, p.ID) {
				_ = c.Close()
				return nil, fmt.Errorf("transport: dial %s: %w: the Raft configuration has %q there, but node %q answered; remove the old server (leasenode remove) or give the new node its own address",
					address, ErrWrongPeer, ids, p.ID)
			}
		}
	}
	dc := &dialedConn{Conn: c, s: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	s.dialed[dc] = struct{}{}
	return dc, nil
}

// Close closes the listener and cuts every connection this layer dialed.
// hashicorp/raft's NetworkTransport.Close closes only the stream layer:
// its pooled connections would otherwise stay open until the process
// exits, so the peers of a node stopped in-process (Crash) would not see
// it go, and an RPC blocked on a stalled peer would hold up Raft's
// shutdown until its timeout.
func (s *StreamLayer) Close() error {
	err := s.Listener.Close()
	s.mu.Lock()
	s.closed = true
	dialed := s.dialed
	s.dialed = map[*dialedConn]struct{}{}
	s.mu.Unlock()
	for c := range dialed {
		_ = c.Conn.Close()
	}
	return err
}

// dialedConn is a connection a StreamLayer dialed, known to it until
// closed.
type dialedConn struct {
	net.Conn
	s *StreamLayer
}

// Close closes the connection and forgets it.
func (c *dialedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.dialed, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}
