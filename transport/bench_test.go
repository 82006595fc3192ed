package transport_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	"github.com/leasenode/leasenode/transport"
)

// BenchmarkRPCCall: one node-RPC round trip of a 256-byte request and
// reply over one pooled connection, in plain TCP and in cluster-key mode
// (mutual TLS 1.3), to show what TLS adds per message (the handshake is
// paid once, outside the timed loop).
//
//	go test -run '^$' -bench RPCCall -benchtime 3s ./transport/
func BenchmarkRPCCall(b *testing.B) {
	key := make([]byte, transport.ClusterKeySize)
	for _, mode := range []string{"plain", "cluster-key"} {
		b.Run(mode, func(b *testing.B) {
			var srvTLS, cliTLS *tls.Config
			if mode == "cluster-key" {
				var err error
				if srvTLS, _, err = transport.ClusterKeyTLS(key, "n1"); err != nil {
					b.Fatal(err)
				}
				if _, cliTLS, err = transport.ClusterKeyTLS(key, "n2"); err != nil {
					b.Fatal(err)
				}
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			m := transport.NewMux(ln, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"}})
			srv := transport.NewRPCServer(m.Listen(transport.ProtoRPC), func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
				return req, nil
			}, transport.RPCServerConfig{})
			go func() { _ = m.Serve() }()
			go func() { _ = srv.Serve() }()
			defer m.Close()
			defer srv.Close()
			c := transport.NewRPCClient(transport.RPCClientConfig{MaxConnsPerPeer: 1,
				Dialer: &transport.Dialer{TLS: cliTLS, Hello: &transport.Hello{NodeID: "n2"}}})
			defer c.Close()
			req := make([]byte, 256)
			addr := m.Addr().String()
			if _, err := c.CallNode(context.Background(), addr, "n1", 1, req); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(2 * len(req)))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Call(context.Background(), addr, 1, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDial: a new node-port connection (TCP, handshake, hello), plain
// and in cluster-key mode: what each pooled connection costs once.
func BenchmarkDial(b *testing.B) {
	key := make([]byte, transport.ClusterKeySize)
	for _, mode := range []string{"plain", "cluster-key"} {
		b.Run(mode, func(b *testing.B) {
			var srvTLS, cliTLS *tls.Config
			if mode == "cluster-key" {
				var err error
				if srvTLS, _, err = transport.ClusterKeyTLS(key, "n1"); err != nil {
					b.Fatal(err)
				}
				if _, cliTLS, err = transport.ClusterKeyTLS(key, "n2"); err != nil {
					b.Fatal(err)
				}
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			m := transport.NewMux(ln, transport.MuxConfig{TLS: srvTLS, Hello: &transport.Hello{NodeID: "n1"}})
			l := m.Listen(transport.ProtoRaft)
			go func() { _ = m.Serve() }()
			defer m.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			d := &transport.Dialer{TLS: cliTLS, Hello: &transport.Hello{NodeID: "n2"}}
			b.ResetTimer()
			for range b.N {
				c, err := d.Dial(context.Background(), m.Addr().String(), transport.ProtoRaft)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
