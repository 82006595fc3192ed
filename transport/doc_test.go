package transport_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"go.uber.org/goleak"

	"github.com/leasenode/leasenode/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var errHeld = errors.New("held")

// One port, Raft and RPC side by side: a node serves RPC behind a Mux and
// another calls it; handler errors keep their identity across the wire.
func Example() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := transport.NewMux(ln, transport.MuxConfig{})
	raftLn := mux.Listen(transport.ProtoRaft) // for transport.NewStreamLayer
	defer raftLn.Close()
	srv := transport.NewRPCServer(mux.Listen(transport.ProtoRPC),
		func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
			if string(req) == "taken" {
				return nil, errHeld
			}
			return []byte("pong"), nil
		},
		transport.RPCServerConfig{EncodeError: func(error) []byte { return []byte{1} }})
	go func() { _ = mux.Serve() }()
	go func() { _ = srv.Serve() }()
	defer mux.Close()
	defer srv.Close()

	client := transport.NewRPCClient(transport.RPCClientConfig{
		DecodeError: func(b []byte) error { return errHeld },
	})
	defer client.Close()
	reply, err := client.Call(context.Background(), mux.Addr().String(), 1, []byte("ping"))
	fmt.Println(string(reply), err)
	_, err = client.Call(context.Background(), mux.Addr().String(), 1, []byte("taken"))
	fmt.Println(errors.Is(err, errHeld), errors.Is(err, transport.ErrNoReply))
	// Output:
	// pong <nil>
	// true false
}
