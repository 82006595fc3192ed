package nemesis

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// Node RPC method numbers, as node/ops.go numbers them (methodAcquire = 1,
// ...): the rogue speaks the wire protocol, not the node package.
const (
	rpcRelease uint8 = 3
	rpcList    uint8 = 5
	rpcStatus  uint8 = 7
	rpcLeave   uint8 = 8
)

// RogueClient is the Client of the rogue peer's records.
const RogueClient = "rogue"

// roguePeer runs an outsider against the cluster (issue 10): a process on
// the nodes' network that has none of the cluster's credentials — no
// cluster key, and when the campaign runs with TLS, only an API client
// certificate from the same CA. It tries, recording each attempt as a
// history.Rogue operation (OK: the cluster served it; Fail: refused):
//
//   - on the node port (first byte 2, node RPC): Status, List, Release of
//     a lease it found held (which takes the lease from its holder: a
//     single-holder violation if the cluster obeys), and Leave of a
//     made-up node;
//   - on the node port (first byte 1, hashicorp/raft's NetworkTransport as
//     a client): a forged AppendEntries heartbeat of the next term to a
//     follower (accepted, the follower takes the rogue for its leader and
//     the real one steps down; it carries no entry, so no replica's log
//     changes) and a TimeoutNow (an election if served);
//   - on the gossip port (memberlist): a join with a new node id, and one
//     claiming the leader's id with the rogue's own API address, which a
//     listener counts clients being redirected to until the fault heals.
//
// Against agents that authenticate their node ports (a cluster key, or
// TLS certificates that carry a node role) every attempt must be refused;
// the node-port-auth checker fails on any that was served.
type roguePeer struct{}

func (roguePeer) Name() string       { return "rogue-peer" }
func (roguePeer) NeedsNetwork() bool { return false }
func (roguePeer) Hold(env *Env) time.Duration {
	return between(env.Rand, env.TTL, 3*env.TTL)
}

type rogue struct {
	env   *Env
	tls   *tls.Config
	suf   string
	n     int64
	lists []*memberlist.Memberlist
	api   net.Listener
	conns atomic.Int64
	wg    sync.WaitGroup
}

var rogueSeq atomic.Int64

func (roguePeer) Inject(ctx context.Context, env *Env) (Active, error) {
	r := &rogue{env: env, n: rogueSeq.Add(1)}
	if a := env.Cluster.TLS(); a != nil {
		tc, err := a.ClientConfig()
		if err != nil {
			return nil, err
		}
		r.tls, r.suf = tc, " (API client certificate)"
	}
	l, err := leader(ctx, env)
	if err != nil {
		return nil, err
	}
	var follower *control.Node
	for _, n := range running(env) {
		if n != l {
			follower = n
			break
		}
	}
	r.nodeRPC(ctx, l)
	if follower != nil {
		r.raftRPC(ctx, follower)
	}
	r.gossip(l)
	return r, nil
}

func (r *rogue) Nodes() []string { return []string{"outsider at " + r.env.Cluster.HarnessIP()} }

// Heal leaves gossip and reports whether clients were redirected to the
// rogue's address.
func (r *rogue) Heal(ctx context.Context) error {
	for _, ml := range r.lists {
		ml.Leave(time.Second)
		ml.Shutdown()
	}
	if r.api != nil {
		r.api.Close()
		r.wg.Wait()
		n := r.conns.Load()
		r.attempt("gossip-redirect", "clients", func() (bool, string, error) {
			if n == 0 {
				return false, "", errors.New("no client connected to the rogue's API address")
			}
			return true, fmt.Sprintf("%d client connections to the rogue's API address (the cluster believed its claim to be the leader)", n), nil
		})
	}
	return nil
}

// attempt records one attempt: f says whether the cluster served it, a
// detail, and the error that refused it.
func (r *rogue) attempt(name, node string, f func() (served bool, detail string, err error)) {
	suf := r.suf
	if strings.HasPrefix(name, "gossip") {
		suf = "" // gossip has no TLS: the certificate plays no part
	}
	rec := r.env.Rec
	var id int64
	if rec != nil {
		id = rec.Invoke(history.Record{Client: RogueClient, Op: history.Rogue, Value: name + suf, Node: node})
	}
	served, detail, err := f()
	out := history.Record{Type: history.Fail, Client: RogueClient, Op: history.Rogue, Value: name + suf, Node: node}
	if served {
		out.Type, out.Value = history.OK, name+suf+": "+detail
	}
	if err != nil {
		out.Err = err.Error()
	}
	r.env.Log.Info("rogue attempt", "attempt", name+suf, "node", node, "served", served, "detail", detail, "err", err)
	if rec != nil {
		rec.Complete(id, out)
	}
}

// servedErr: a handler's own error (decoded from the wire) means the node
// served the request; a transport failure means it did not get through.
func servedErr(err error) bool {
	var re *transport.RemoteError
	return errors.As(err, &re)
}

func (r *rogue) nodeRPC(ctx context.Context, l *control.Node) {
	cli := transport.NewRPCClient(transport.RPCClientConfig{Dialer: &transport.Dialer{TLS: r.tls, Timeout: 2 * time.Second}})
	defer cli.Close()
	call := func(method uint8, req proto.Message, resp proto.Message) (bool, error) {
		b, err := proto.Marshal(req)
		if err != nil {
			return false, err
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		out, err := cli.Call(cctx, l.BindAddr, method, b)
		if err != nil {
			return servedErr(err), err
		}
		if resp != nil {
			if err := proto.Unmarshal(out, resp); err != nil {
				return true, fmt.Errorf("undecodable reply: %w", err)
			}
		}
		return true, nil
	}
	r.attempt("rpc-status", l.ID, func() (bool, string, error) {
		var st pb.StatusResponse
		ok, err := call(rpcStatus, &pb.StatusRequest{}, &st)
		return ok, fmt.Sprintf("%s is %s in term %d with %d leases", st.GetNodeId(), st.GetRaftState(), st.GetTerm(), st.GetLeases()), err
	})
	var victim *pb.Lease
	r.attempt("rpc-list", l.ID, func() (bool, string, error) {
		var ls pb.ListResponse
		ok, err := call(rpcList, &pb.ListRequest{Limit: 100}, &ls)
		for _, x := range ls.GetLeases() {
			if x.GetHolder() != "" && x.GetKey() != "jepsen-probe" && !strings.HasPrefix(x.GetKey(), "t") && (victim == nil || r.env.Rand.IntN(2) == 0) {
				victim = x
			}
		}
		return ok, fmt.Sprintf("%d leases with holders and tokens", len(ls.GetLeases())), err
	})
	if victim != nil {
		r.attempt("rpc-release", l.ID, func() (bool, string, error) {
			var rr pb.ReleaseResponse
			ok, err := call(rpcRelease, &pb.ReleaseRequest{Key: victim.GetKey(), Holder: victim.GetHolder(), Token: victim.GetToken()}, &rr)
			return ok, fmt.Sprintf("released=%v: %q held by %s (token %d)", rr.GetReleased(), victim.GetKey(), victim.GetHolder(), victim.GetToken()), err
		})
	}
	r.attempt("rpc-leave", l.ID, func() (bool, string, error) {
		b, _ := json.Marshal(map[string]string{"id": fmt.Sprintf("rogue-%d", r.n)})
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := cli.Call(cctx, l.BindAddr, rpcLeave, b)
		if err == nil {
			return true, "a made-up node's leave was accepted", nil
		}
		return servedErr(err), "answered by the handler", err
	})
}

// raftRPC uses hashicorp/raft's own NetworkTransport as a client.
func (r *rogue) raftRPC(ctx context.Context, f *control.Node) {
	ln, err := net.Listen("tcp", net.JoinHostPort(r.env.Cluster.HarnessIP(), "0"))
	if err != nil {
		r.attempt("raft", f.ID, func() (bool, string, error) { return false, "", fmt.Errorf("rogue listener: %w", err) })
		return
	}
	stream := transport.NewStreamLayer(ln, nil, &transport.Dialer{TLS: r.tls, Timeout: 2 * time.Second})
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 1, Timeout: 2 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Output: io.Discard}),
	})
	defer tr.Close()
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(fmt.Sprintf("rogue-%d", r.n)), Addr: []byte(ln.Addr().String())}
	target := raft.ServerAddress(f.BindAddr)
	r.attempt("raft-append-entries", f.ID, func() (bool, string, error) {
		// A heartbeat of the next term: a follower that accepts it takes
		// the rogue for its leader (and the real leader, rejected, steps
		// down). It carries no entry, so no replica's log changes.
		var term uint64
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if st, err := r.env.Cluster.Status(sctx, f); err == nil {
			term = st.Term
		}
		cancel()
		var resp raft.AppendEntriesResponse
		err := tr.AppendEntries(raft.ServerID(f.ID), target, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: term + 1}, &resp)
		if err != nil {
			return false, "", err
		}
		return true, fmt.Sprintf("a forged heartbeat of term %d: success=%v, term %d (no entries: no log changed)", term+1, resp.Success, resp.Term), nil
	})
	r.attempt("raft-timeout-now", f.ID, func() (bool, string, error) {
		var resp raft.TimeoutNowResponse
		err := tr.TimeoutNow(raft.ServerID(f.ID), target, &raft.TimeoutNowRequest{RPCHeader: hdr}, &resp)
		if err != nil {
			return false, "", err
		}
		return true, fmt.Sprintf("%s was told to start an election now", f.ID), nil
	})
}

type rogueMeta []byte

func (m rogueMeta) NodeMeta(int) []byte                  { return m }
func (rogueMeta) NotifyMsg([]byte)                       {}
func (rogueMeta) GetBroadcasts(int, int) [][]byte        { return nil }
func (rogueMeta) LocalState(bool) []byte                 { return nil }
func (rogueMeta) MergeRemoteState(buf []byte, join bool) {}

// gossip joins with a new id, then as the leader with the rogue's own API
// address (a listener counts the clients redirected to it).
func (r *rogue) gossip(l *control.Node) {
	var seeds []string
	for _, n := range r.env.Cluster.Nodes() {
		seeds = append(seeds, n.GossipAddr)
	}
	ip := r.env.Cluster.HarnessIP()
	api, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err == nil {
		r.api = api
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "rogue", http.StatusServiceUnavailable)
			}), ErrorLog: log.New(io.Discard, "", 0)}
			srv.Serve(countingListener{api, &r.conns})
		}()
	}
	apiAddr := ip + ":1"
	if r.api != nil {
		apiAddr = r.api.Addr().String()
	}
	join := func(name, id, raftAddr string) (bool, string, error) {
		meta, _ := json.Marshal(map[string]string{"id": id, "raft": raftAddr, "api": apiAddr})
		mc := memberlist.DefaultLocalConfig()
		mc.Name = name
		mc.BindAddr, mc.BindPort = ip, 0
		mc.Delegate = rogueMeta(meta)
		mc.LogOutput = io.Discard
		ml, err := memberlist.Create(mc)
		if err != nil {
			return false, "", fmt.Errorf("rogue memberlist: %w", err)
		}
		r.lists = append(r.lists, ml)
		n, err := ml.Join(seeds)
		if n == 0 {
			if err == nil {
				err = errors.New("no node answered")
			}
			return false, "", err
		}
		return true, fmt.Sprintf("joined through %d of %d nodes as %q; sees %d members", n, len(seeds), id, ml.NumMembers()), nil
	}
	r.attempt("gossip-join", "gossip", func() (bool, string, error) {
		return join(fmt.Sprintf("rogue-%d", r.n), fmt.Sprintf("rogue-%d", r.n), ip+":1")
	})
	r.attempt("gossip-claim-leader-id", l.ID, func() (bool, string, error) {
		return join(fmt.Sprintf("rogue-%d-as-%s", r.n, l.ID), l.ID, l.BindAddr)
	})
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
