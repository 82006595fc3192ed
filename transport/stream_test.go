package transport

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// raftNode is a real hashicorp/raft NetworkTransport over a Mux.
type raftNode struct {
	addr  raft.ServerAddress
	trans *raft.NetworkTransport
}

func startRaftTransport(t *testing.T, f *Faults) *raftNode {
	t.Helper()
	m, lns := startMux(t, MuxConfig{}, ProtoRaft, ProtoRPC)
	addr := m.Addr().String()
	stream := NewStreamLayer(lns[ProtoRaft], m.Addr(), &Dialer{LocalAddr: addr, Faults: f})
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 2,
		Timeout: 5 * time.Second,
	})
	t.Cleanup(func() {
		trans.CloseStreams() // pooled outbound conns; the peer's handlers then end
		_ = trans.Close()
	})
	return &raftNode{addr: raft.ServerAddress(addr), trans: trans}
}

// Raft's own transport exchanges AppendEntries over the stream layer, and
// cannot reach a partitioned peer.
func TestStreamLayerCarriesRaftAppendEntries(t *testing.T) {
	leakCheck(t)
	f := NewFaults()
	n1, n2 := startRaftTransport(t, f), startRaftTransport(t, f)
	if got := n1.trans.LocalAddr(); got != n1.addr {
		t.Fatalf("LocalAddr = %s, want the advertised %s", got, n1.addr)
	}

	// n2 answers whatever arrives on its consumer channel.
	stop := make(chan struct{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			select {
			case rpc := <-n2.trans.Consumer():
				req, ok := rpc.Command.(*raft.AppendEntriesRequest)
				if !ok {
					rpc.Respond(nil, errors.New("unexpected command"))
					continue
				}
				rpc.Respond(&raft.AppendEntriesResponse{
					RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax},
					Term:      req.Term,
					LastLog:   req.Entries[len(req.Entries)-1].Index,
					Success:   true,
				}, nil)
			case <-stop:
				return
			}
		}
	}()
	defer func() {
		close(stop)
		<-served
	}()

	req := &raft.AppendEntriesRequest{
		RPCHeader:    raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n1"), Addr: []byte(n1.addr)},
		Term:         7,
		PrevLogEntry: 10,
		PrevLogTerm:  6,
		Entries: []*raft.Log{
			{Index: 11, Term: 7, Type: raft.LogCommand, Data: []byte("acquire a")},
			{Index: 12, Term: 7, Type: raft.LogCommand, Data: []byte("acquire b")},
		},
		LeaderCommitIndex: 10,
	}
	var resp raft.AppendEntriesResponse
	if err := n1.trans.AppendEntries("n2", n2.addr, req, &resp); err != nil {
		t.Fatalf("AppendEntries: %v", err)
	}
	if !resp.Success || resp.Term != 7 || resp.LastLog != 12 {
		t.Fatalf("response = %+v", resp)
	}

	// Partitioned: raft's dial fails with ErrPartitioned.
	f.Isolate(string(n2.addr))
	n1.trans.CloseStreams() // drop the pooled conn so the next call dials
	err := n1.trans.AppendEntries("n2", n2.addr, req, &resp)
	if !errors.Is(err, ErrPartitioned) {
		t.Fatalf("AppendEntries across a partition: %v, want ErrPartitioned", err)
	}
	f.Heal()
	if err := n1.trans.AppendEntries("n2", n2.addr, req, &resp); err != nil {
		t.Fatalf("AppendEntries after Heal: %v", err)
	}
}

func TestStreamLayerAddr(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	adv := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 7000}
	if got := NewStreamLayer(ln, adv, nil).Addr(); got != adv {
		t.Fatalf("Addr = %v, want advertised %v", got, adv)
	}
	if got := NewStreamLayer(ln, nil, nil).Addr(); got != ln.Addr() {
		t.Fatalf("Addr = %v, want listener's %v", got, ln.Addr())
	}
}

// A Raft dial reaches only a node the configuration lists at the address:
// a node that took over a member's address is refused, not handed that
// member's AppendEntries and votes.
func TestStreamLayerRefusesAnotherNodeAtServersAddress(t *testing.T) {
	leakCheck(t)
	m, lns := startMux(t, MuxConfig{Hello: &Hello{NodeID: "n4"}}, ProtoRaft)
	go func() { // the answering side only accepts
		for {
			c, err := lns[ProtoRaft].Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := m.Addr().String()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewStreamLayer(ln, nil, &Dialer{Hello: &Hello{NodeID: "n1"}})
	defer s.Close()
	var listed []string
	s.ExpectPeers(func(a string) []string {
		if a != addr {
			t.Errorf("asked about %s, dialing %s", a, addr)
		}
		return listed
	})
	for _, tc := range []struct {
		listed []string
		ok     bool
	}{
		{nil, true},                  // not in the configuration: anyone
		{[]string{"n4"}, true},       // the server itself
		{[]string{"n3"}, false},      // another node took n3's address
		{[]string{"n3", "n4"}, true}, // both listed there
	} {
		listed = tc.listed
		c, err := s.Dial(raft.ServerAddress(addr), 5*time.Second)
		if tc.ok != (err == nil) {
			t.Fatalf("configuration lists %q at the address, n4 answers: Dial err = %v", tc.listed, err)
		}
		if err != nil {
			if !errors.Is(err, ErrWrongPeer) || !strings.Contains(err.Error(), `"n4" answered`) {
				t.Fatalf("Dial err = %v, want ErrWrongPeer naming n4", err)
			}
			continue
		}
		c.Close()
	}
}
