package transport

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// NewStreamLayer adapts a Mux sub-listener (normally Mux.Listen(ProtoRaft))
// and a Dialer to raft.StreamLayer, for raft.NewNetworkTransportWithConfig.
// Accept and Close are ln's; Addr returns advertise (ln.Addr() when
// advertise is nil), which must be the address other nodes dial; Dial uses
// d with ProtoRaft. Closing the stream layer closes only ln, not the Mux.
func NewStreamLayer(ln net.Listener, advertise net.Addr, d *Dialer) raft.StreamLayer {
	if d == nil {
		d = &Dialer{}
	}
	return &streamLayer{Listener: ln, advertise: advertise, dialer: d}
}

type streamLayer struct {
	net.Listener
	advertise net.Addr
	dialer    *Dialer
}

// Addr returns the advertised address.
func (s *streamLayer) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

// Dial opens a Raft stream to address; timeout bounds the whole dial (the
// Dialer's own Timeout applies when it is zero).
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return s.dialer.Dial(ctx, string(address), ProtoRaft)
}
