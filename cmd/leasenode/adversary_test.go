package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	binenc "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
)

// The adversary suite (issue 10, "Prove it"): every probe of the issue,
// replayed against real agent processes on 127.0.0.1, each subtest named
// after the words. Each asserts that the probe is refused with an
// error naming the credential or limit, that nothing is lost (sentinel
// leases still held by their holders with their tokens on every node),
// that replicas never diverge (the same applied index and state digest on
// every node), and, for probes about size, that the agent's memory stays
// within a small multiple of the limit (VmRSS/VmHWM from /proc, logged).
//
// TestAdversary runs one cluster the way the README's "Cluster key"
// section sets it up (a cluster key file, an auth token from a file or the
// environment); TestAdversaryTLS one the way its "TLS" section does.
// Probes that an in-process test already replays exactly are not
// repeated here; node/ADVERSARY.md lists every probe with the test that
// replays it, the check it exercises, and what failed when that check was
// disabled:
//
//   - a garbage snapshot meta.json: node's TestDamagedDataDirRefused
//   - a node of another cluster restarted with --join to this one: node's
//     TestOtherClusterRefused
//   - a new cluster started on a dead member's address: node's
//     TestNewClusterOnDeadMembersAddress
//
// On loopback an agent without a cluster key or TLS runs its node port in
// the clear on purpose (leasenode dev, tests); off loopback it refuses to
// start without one (TestUsageAndUnreachable), so the outsider probes run
// against a keyed cluster, as every exposed cluster must be.

// advMaxConns is the adversary cluster's --max-conns.
const advMaxConns = 64

// advLimit is the agents' default --max-request-bytes.
const advLimit = 4 << 20

// adversary is the cluster under attack and what the suite knows of it.
type adversary struct {
	*view
	t         *testing.T // the top-level test, owner of the agents
	key       []byte
	clusterID string
	keyFile   string
	tokenFile string
	tokenEnv  []string // LEASENODE_AUTH_TOKEN=... for the CLI
	procs     []*proc  // every agent process started, for the log checks
	mem       memFigures
}

func TestAdversary(t *testing.T) {
	t.Parallel()
	c := &adversary{t: t, key: nodetest.NewClusterKey(t)}
	dir := t.TempDir()
	c.keyFile = filepath.Join(dir, "cluster.key")
	c.tokenFile = filepath.Join(dir, "token")
	token := randomHex(t, 16)
	c.tokenEnv = []string{"LEASENODE_AUTH_TOKEN=" + token}
	if err := os.WriteFile(c.keyFile, []byte(base64.StdEncoding.EncodeToString(c.key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The token reaches each agent another way: a file flag, the
	// environment, a file named by the environment.
	agents := clusterEach(t, 3, func(i int, a *agent) {
		// Each client API on a host of its own (127.0.0.1, .2, .3), as
		// on separate machines: a redirect to the leader changes host, and
		// clients that keep the token across it must do so on purpose.
		_, port, _ := net.SplitHostPort(a.api)
		a.api = net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i+1), port)
		a.args[slices.Index(a.args, "--api")+1] = a.api
		a.env = append(a.env, "LEASENODE_CLUSTER_KEY_FILE="+c.keyFile)
		switch i {
		case 0:
			a.args = append(a.args, "--auth-token-file", c.tokenFile)
		case 1:
			a.env = append(a.env, "LEASENODE_AUTH_TOKEN="+token)
		default:
			a.env = append(a.env, "LEASENODE_AUTH_TOKEN_FILE="+c.tokenFile)
		}
	}, "--timing", "default", "--log-level", "info", "--max-conns", strconv.Itoa(advMaxConns))
	for _, a := range agents {
		c.procs = append(c.procs, a.p)
	}
	c.view = newView(agents, nil, token)
	st, err := c.status(ctxT(t, 5*time.Second), agents[0])
	if err != nil || st.GetClusterId() == "" {
		t.Fatalf("status: %v %v", st, err)
	}
	c.clusterID = st.GetClusterId()
	c.takeSentinels(t, 12)

	t.Run("node port", func(t *testing.T) {
		t.Run("RPC Status Get List Release Acquire from an outsider without credentials", c.rpcFromOutsider)
		t.Run(`RPC Leave {"id":"n0"} of another node`, c.leaveOfAnother)
		t.Run("Raft TimeoutNow", c.timeoutNow)
		t.Run("forged AppendEntries of the next term carrying a Release", c.forgedAppendEntries)
	})
	t.Run("gossip", func(t *testing.T) {
		t.Run("join as evil lying about its applied index", c.evilJoin)
		t.Run("member claiming the leader's id with another API address", c.claimLeaderID)
	})
	t.Run("client API", func(t *testing.T) {
		t.Run("100 MB body", c.bigBody)
		t.Run("4 such at once", c.fourBigBodies)
		t.Run("300 KB gzip body inflating to 235 MB", c.gzipBomb)
		t.Run("one Extend of 100k items of 1 KB keys", c.hugeExtend)
		t.Run("TTL of 1 ns", c.tinyTTL)
		t.Run("headers then a body at 1 byte per 2 s, and many such connections", c.slowBodies)
		t.Run("List with limit 2^31-1 via a follower", c.hugeList)
	})
	t.Run("smaller", func(t *testing.T) {
		t.Run("bearer in lower case", c.lowerCaseBearer)
		t.Run("the README's curl backup example through a follower", c.curlBackup)
		t.Run("client request ids do not depend on the wall clock", c.requestIDs)
		t.Run("client commands read --auth-token-file", c.clientTokenFile)
	})
	t.Run("files and membership", func(t *testing.T) {
		t.Run("snapshot restore of a backup whose epoch is 2^64-1", c.absurdRestore)
		t.Run("the same --id started twice", c.duplicateID)
		t.Run("damaged data dir", c.damagedDataDir)
	})
	// Last: it reads every log the agents wrote during the suite.
	t.Run("smaller/--auth-token visible in ps and never logged", c.tokenHygiene)

	c.intact(t)
	c.mem.mu.Lock()
	t.Logf("memory of the size probes:\n  %s", strings.Join(c.mem.rows, "\n  "))
	c.mem.mu.Unlock()
}

// logOf returns everything agent a's current process wrote to stderr.
func logOf(a *agent) string { return a.p.stderr.String() }

// outsiders are the two ways to come at a cluster-key node port without
// the key: plain TCP, and mutual TLS with a key of one's own (a
// certificate with the node role, for the ID claimed, from another CA).
func (c *adversary) outsiders(t *testing.T, id string) []*outsider {
	t.Helper()
	_, own, err := transport.ClusterKeyTLS(nodetest.NewClusterKey(t), id)
	if err != nil {
		t.Fatal(err)
	}
	own.InsecureSkipVerify = true // it does not care who answers
	return []*outsider{
		{what: "no credentials", id: id, cluster: c.clusterID},
		{what: "a cluster key of its own", tls: own, id: id, cluster: c.clusterID},
	}
}

// refusalLogged waits until a's log shows the node port refusing
// the outsider, naming what the port needs.
func (c *adversary) refusalLogged(t *testing.T, a *agent, o *outsider) {
	t.Helper()
	want := []string{"refused a node-port connection"}
	if o.tls == nil {
		want = append(want, "plain TCP", "needs the cluster key or a node certificate")
	} else {
		want = append(want, "unknown authority", "needs a certificate with the node role from this cluster's CA")
	}
	waitLog(t, a, want...)
}

// waitLog waits until a line of a's log holds every one of want, and
// returns it; after 10 s it fails the test (and returns ""), but lets it
// go on to check what the missing line may have let through.
func waitLog(t *testing.T, a *agent, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, l := range strings.Split(logOf(a), "\n") {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(l, w)
			}
			if ok {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no line of %s's log holds %q", a.id, want)
			return ""
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rpcFromOutsider: the issue read every lease with node RPC Status, Get
// and List, and took a lease from its holder with Release then Acquire on
// the leader, with --auth-token set on the agents.
func (c *adversary) rpcFromOutsider(t *testing.T) {
	l := c.leader(t)
	s := c.sentinels[0]
	calls := []struct {
		name   string
		method uint8
		req    []byte
	}{
		{"Status", rpcStatus, nil},
		{"Get", rpcGet, marshal(t, &pb.GetRequest{Key: s.key})},
		{"List", rpcList, marshal(t, &pb.ListRequest{Limit: 100})},
		{"Release", rpcRelease, marshal(t, &pb.ReleaseRequest{Key: s.key, Holder: s.holder, Token: s.token})},
		{"Acquire", rpcAcquire, marshal(t, &pb.AcquireRequest{Key: s.key, Holder: "evil", RequestId: 1, Ttl: durationpb.New(time.Minute)})},
	}
	outsiders := c.outsiders(t, "evil")
	for _, o := range outsiders {
		for _, call := range calls {
			served, reply, err := o.call(l.raft, call.method, call.req)
			if served || err == nil {
				t.Errorf("node RPC %s from an outsider with %s was served by %s: reply %d bytes, err %v", call.name, o.what, l.id, len(reply), err)
				continue
			}
			t.Logf("node RPC %s, outsider with %s: refused: %v", call.name, o.what, err)
		}
	}
	c.intact(t)
	for _, o := range outsiders {
		c.refusalLogged(t, l, o)
	}
}

// leaveOfAnother: RPC Leave {"id":"n0"} removed a voter. An outsider
// claiming to be the victim is refused at the node port; a node of the
// cluster asking to remove another node is refused by leave-only-self.
func (c *adversary) leaveOfAnother(t *testing.T) {
	l, fs := c.followers(t)
	victim, caller := fs[0], fs[1]
	req, _ := json.Marshal(map[string]string{"id": victim.id})
	outsiders := c.outsiders(t, victim.id)
	for _, o := range outsiders {
		served, _, err := o.call(l.raft, rpcLeave, req)
		if served || err == nil {
			t.Errorf("Leave of %s from an outsider with %s was served: %v", victim.id, o.what, err)
		} else {
			t.Logf("Leave of %s, outsider with %s claiming to be %s: refused: %v", victim.id, o.what, victim.id, err)
		}
	}
	// A node of this cluster (it has the key) asks to remove another.
	_, cli, err := transport.ClusterKeyTLS(c.key, caller.id)
	if err != nil {
		t.Fatal(err)
	}
	rc := transport.NewRPCClient(transport.RPCClientConfig{
		Dialer: &transport.Dialer{TLS: cli, Hello: &transport.Hello{NodeID: caller.id, ClusterID: func() string { return c.clusterID }}},
		DecodeError: func(b []byte) error {
			var e pb.RPCError
			_ = proto.Unmarshal(b, &e)
			return errors.New(e.GetMessage())
		}})
	defer rc.Close()
	_, err = rc.CallNode(ctxT(t, 10*time.Second), l.raft, l.id, rpcLeave, req)
	if err == nil || !strings.Contains(err.Error(), "may only ask to remove itself") {
		t.Errorf("node %s asking the leader to remove %s: %v; want a refusal naming leave-only-self", caller.id, victim.id, err)
	} else {
		t.Logf("node %s asking to remove %s: refused: %v", caller.id, victim.id, err)
	}
	m, err := c.api(l).Members(ctxT(t, 5*time.Second), connect.NewRequest(&pb.MembersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	voters := 0
	for _, mm := range m.Msg.GetMembers() {
		if mm.GetRaft() == "voter" {
			voters++
		}
	}
	if voters != 3 {
		t.Errorf("voters after the refused leaves: %v", m.Msg.GetMembers())
	}
	c.intact(t)
	for _, o := range outsiders {
		c.refusalLogged(t, l, o)
	}
	waitLog(t, l, "refused a request to remove another node", "caller="+caller.id, "id="+victim.id)
}

// timeoutNow: Raft TimeoutNow forced an election on every call.
func (c *adversary) timeoutNow(t *testing.T) {
	_, fs := c.followers(t)
	before := c.terms(t)
	outsiders := c.outsiders(t, "evil")
	for _, o := range outsiders {
		tr, hdr := o.raft(t)
		for _, f := range fs {
			for range 3 {
				var resp raft.TimeoutNowResponse
				if err := tr.TimeoutNow(raft.ServerID(f.id), raft.ServerAddress(f.raft), &raft.TimeoutNowRequest{RPCHeader: hdr}, &resp); err == nil {
					t.Errorf("TimeoutNow from an outsider with %s was served by %s", o.what, f.id)
				}
			}
		}
	}
	c.sameTerms(t, before)
	c.intact(t)
	for _, o := range outsiders {
		for _, f := range fs {
			c.refusalLogged(t, f, o)
		}
	}
}

// forgedRelease is an AppendEntries of the next term that appends, right
// after the follower's last entry, a Release of s stamped in the current
// epoch, and commits it.
func forgedRelease(st *pb.StatusResponse, s sentinel, hdr raft.RPCHeader) *raft.AppendEntriesRequest {
	last, term := st.GetLastIndex(), st.GetTerm()
	data := fsm.Encode(fsm.Stamp{Epoch: st.GetHeader().GetEpoch()}, &fsm.Release{Key: s.key, Holder: s.holder, Token: s.token})
	return &raft.AppendEntriesRequest{RPCHeader: hdr, Term: term + 1, PrevLogEntry: last, PrevLogTerm: term,
		Entries:           []*raft.Log{{Index: last + 1, Term: term + 1, Type: raft.LogCommand, Data: data}},
		LeaderCommitIndex: last + 1}
}

// forgedAppendEntries: one AppendEntries (term+1) carrying a Release was
// accepted; that replica then held one lease fewer than the others, for
// ever, and later granted the key to a second holder.
func (c *adversary) forgedAppendEntries(t *testing.T) {
	_, fs := c.followers(t)
	f := fs[0]
	before := c.terms(t)
	s := c.sentinels[1]
	outsiders := c.outsiders(t, "evil")
	for _, o := range outsiders {
		st, err := c.status(ctxT(t, 5*time.Second), f)
		if err != nil {
			t.Fatal(err)
		}
		tr, hdr := o.raft(t)
		var resp raft.AppendEntriesResponse
		err = tr.AppendEntries(raft.ServerID(f.id), raft.ServerAddress(f.raft), forgedRelease(st, s, hdr), &resp)
		if err == nil {
			t.Errorf("forged AppendEntries from an outsider with %s was served by %s: success=%v term %d", o.what, f.id, resp.Success, resp.Term)
		} else {
			t.Logf("forged AppendEntries, outsider with %s: refused: %v", o.what, err)
		}
	}
	c.sameTerms(t, before)
	c.intact(t)
	for _, o := range outsiders {
		c.refusalLogged(t, f, o)
	}
}

// evilMeta is a memberlist delegate that only publishes metadata.
type evilMeta []byte

func (d evilMeta) NodeMeta(int) []byte             { return d }
func (d evilMeta) NotifyMsg([]byte)                {}
func (d evilMeta) GetBroadcasts(int, int) [][]byte { return nil }
func (d evilMeta) LocalState(bool) []byte          { return nil }
func (d evilMeta) MergeRemoteState([]byte, bool)   {}

// gossipAs joins the cluster's gossip as name with metadata md, keyed
// with key (nil: none); it returns the memberlist (nil if no node took the
// join) and the join's error. The member leaves when the test ends.
func (c *adversary) gossipAs(t *testing.T, name string, md map[string]any, key []byte) (*memberlist.Memberlist, error) {
	t.Helper()
	b, _ := json.Marshal(md)
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name
	host, port, _ := net.SplitHostPort(nodetest.FreeAddr(t, true))
	mc.BindAddr = host
	mc.BindPort, _ = strconv.Atoi(port)
	mc.AdvertisePort = mc.BindPort
	mc.SecretKey = key
	mc.Delegate = evilMeta(b)
	mc.LogOutput = io.Discard
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	var seeds []string
	for _, a := range c.agents {
		seeds = append(seeds, a.gossip)
	}
	n, err := ml.Join(seeds)
	if n == 0 {
		ml.Shutdown()
		if err == nil {
			err = errors.New("no node answered")
		}
		return nil, err
	}
	t.Cleanup(func() {
		_ = ml.Leave(time.Second)
		_ = ml.Shutdown()
	})
	return ml, err
}

// fakeNodePort serves node RPC on a loopback port with a certificate made
// from a cluster key of its own, answering Status as node id of this
// cluster, with an applied index far ahead of everyone's: a liar, if
// anyone would listen.
func (c *adversary) fakeNodePort(t *testing.T, id string) string {
	t.Helper()
	srv, _, err := transport.ClusterKeyTLS(nodetest.NewClusterKey(t), id)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := transport.NewMux(ln, transport.MuxConfig{TLS: srv, Hello: &transport.Hello{NodeID: id, ClusterID: func() string { return c.clusterID }}})
	rpcs := transport.NewRPCServer(mux.Listen(transport.ProtoRPC), func(ctx context.Context, method uint8, req []byte) ([]byte, error) {
		return proto.Marshal(&pb.StatusResponse{NodeId: id, ClusterId: c.clusterID, ApiAddr: "127.0.0.1:1", LastIndex: 1 << 50,
			Header: &pb.Header{NodeId: id, AppliedIndex: 1 << 50}})
	}, transport.RPCServerConfig{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = mux.Serve() }()
	go func() { defer wg.Done(); _ = rpcs.Serve() }()
	t.Cleanup(func() {
		rpcs.Close()
		mux.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// members returns the Raft role ("voter", "nonvoter", "none") and the API
// address of every member agent a lists.
func (c *adversary) members(t *testing.T, a *agent) map[string]*pb.Member {
	t.Helper()
	r, err := c.api(a).Members(ctxT(t, 5*time.Second), connect.NewRequest(&pb.MembersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*pb.Member{}
	for _, m := range r.Msg.GetMembers() {
		out[m.GetId()] = m
	}
	return out
}

// evilJoin: a process joining gossip as "evil" became a Raft voter within
// 1 s after lying about its applied index. Without the gossip key its
// join fails; with it (say the gossip key leaked, or TLS with a gossip key
// shared more widely) it is in gossip, but it cannot prove on the node
// port that it is a node of this cluster, so the leader never adds it.
func (c *adversary) evilJoin(t *testing.T) {
	md := map[string]any{"id": "evil", "raft": c.fakeNodePort(t, "evil"), "api": "127.0.0.1:1", "run": "evil",
		"cluster": c.clusterID, "applied": uint64(1 << 50)}
	if ml, err := c.gossipAs(t, "evil", md, nil); ml != nil {
		t.Errorf("gossip without the key: evil joined %d members", ml.NumMembers())
	} else {
		t.Logf("gossip join without the key: refused: %v", err)
	}
	gossipKey, err := transport.GossipKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	ml, err := c.gossipAs(t, "evil", md, gossipKey)
	if ml == nil {
		t.Fatalf("gossip join with the key: %v", err)
	}
	l := c.leader(t)
	line := waitLog(t, l, "member not verified", "id=evil")
	t.Logf("the leader tried evil: %s", line)
	// Reconcile runs on every gossip change and every second: watch it.
	never(t, 3*time.Second, func() error {
		if m := c.members(t, l)["evil"]; m == nil || m.GetRaft() != "none" || m.GetApiAddr() != "" {
			return fmt.Errorf("evil, an unverified gossip member, is %v", m)
		}
		return nil
	})
	c.intact(t)
}

// claimLeaderID: a gossip member claiming the leader's id with another API
// address made followers redirect clients there, and the CLI sent it the
// bearer token. With the gossip key: one member speaks for the leader's
// id, another gossips an API address of its own; neither address gets a
// single client connection, from the nodes' redirects, the CLI (status
// asks every member's API), snapshot save (follows a follower's redirect)
// or a lease.Client.
func (c *adversary) claimLeaderID(t *testing.T) {
	l, fs := c.followers(t)
	var conns, tokens atomic.Int64
	evilAPI, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			tokens.Add(1)
		}
		http.Error(w, "evil", http.StatusServiceUnavailable)
	}), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(evilAPI) }()
	defer func() {
		srv.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Error("evil API server did not stop")
		}
	}()
	gossipKey, err := transport.GossipKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"evil-as-" + l.id: l.id, "evil-api": "evil-api"} {
		md := map[string]any{"id": id, "raft": c.fakeNodePort(t, id), "api": evilAPI.Addr().String(), "run": "evil", "cluster": c.clusterID}
		if ml, err := c.gossipAs(t, name, md, gossipKey); ml == nil {
			t.Fatalf("gossip join as %s: %v", name, err)
		}
	}
	for _, f := range fs {
		t.Logf("%s: %s", f.id, waitLog(t, f, "ignoring gossip metadata", "from=evil-as-"+l.id, "speaks for node"))
	}
	waitLog(t, l, "member not verified", "id=evil-api")

	for _, a := range c.agents {
		st, err := c.status(ctxT(t, 5*time.Second), a)
		if err != nil {
			t.Fatal(err)
		}
		if h := st.GetHeader(); h.GetLeaderId() != l.id || h.GetLeaderAddr() != l.api {
			t.Errorf("%s's leader hint is %s at %s, want %s at %s", a.id, h.GetLeaderId(), h.GetLeaderAddr(), l.id, l.api)
		}
		for id, m := range c.members(t, a) {
			if m.GetApiAddr() == evilAPI.Addr().String() {
				t.Errorf("%s lists member %s with the evil API address", a.id, id)
			}
		}
	}
	f := fs[0]
	file := filepath.Join(t.TempDir(), "backup.lns")
	for _, args := range [][]string{
		{"status"}, {"members"}, {"get", c.sentinels[0].key}, {"list", "sentinel/"},
		{"acquire", "redirect/k", "--ttl", "1m", "--wait", "0"}, {"snapshot", "save", file},
	} {
		code, out, errOut := cliEnv(t, c.tokenEnv, append(args, "--addr", f.api)...)
		if code != 0 {
			t.Errorf("%v through follower %s: exit %d\n%s%s", args, f.id, code, out, errOut)
		}
	}
	cl, err := lease.Dial(ctxT(t, 10*time.Second), []string{f.api}, lease.WithAuthToken(c.token))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Acquire(ctxT(t, 10*time.Second), "redirect/client"); err != nil {
		t.Errorf("lease.Client through a follower: %v", err)
	}
	cl.Close(ctxT(t, 10*time.Second))
	if n, k := conns.Load(), tokens.Load(); n != 0 || k != 0 {
		t.Errorf("clients were sent to the evil API address: %d connections, %d requests with a bearer token", n, k)
	}
	c.intact(t)
}

// repeatReader yields chunk n times, then EOF, without holding more than
// chunk in memory.
type repeatReader struct {
	chunk []byte
	n     int
	off   int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := copy(p, r.chunk[r.off:])
	if r.off += k; r.off == len(r.chunk) {
		r.off, r.n = 0, r.n-1
	}
	return k, nil
}

// bodyOf is a JSON body: head, then chunk n times, then tail.
func bodyOf(head string, chunk []byte, n int, tail string) (io.Reader, int64) {
	return io.MultiReader(strings.NewReader(head), &repeatReader{chunk: chunk, n: n}, strings.NewReader(tail)),
		int64(len(head) + len(chunk)*n + len(tail))
}

// rawPost sends one Connect JSON request on its own connection: the head,
// then the body in the background, and reads the answer as soon as the
// node gives one, whether or not it read the whole body. It returns the
// status and up to 64 KB of the answer.
func rawPost(t *testing.T, addr, method string, header map[string]string, body io.Reader, length int64) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var head strings.Builder
	fmt.Fprintf(&head, "POST /leasenode.v1.LeaseService/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", method, addr, length)
	for k, v := range header {
		fmt.Fprintf(&head, "%s: %s\r\n", k, v)
	}
	head.WriteString("\r\n")
	if _, err := io.WriteString(conn, head.String()); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = io.Copy(conn, body) // until the node hangs up, or all of it
	}()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s to %s: no answer: %v", method, addr, err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	conn.Close()
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("the body writer did not stop after the connection closed")
	}
	return resp.StatusCode, string(b)
}

// refused checks an answer: not 200, and its text holds every one of want.
func refused(t *testing.T, what string, code int, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if code == http.StatusOK || !strings.Contains(body, w) {
			t.Errorf("%s: status %d, %.300s; want a refusal naming %q", what, code, body, want)
			return
		}
	}
	t.Logf("%s: refused: %d %.200s", what, code, body)
}

func (c *adversary) bearer() map[string]string {
	return map[string]string{"Authorization": "Bearer " + c.token}
}

var fill = bytes.Repeat([]byte{'a'}, 64<<10)

// bigBody: a 100 MB body was read in full (RSS 20 -> 462 MB, kept).
func (c *adversary) bigBody(t *testing.T) {
	l := c.leader(t)
	c.mem.bounded(t, l, 8*advLimit, func() {
		body, n := bodyOf(`{"key":"`, fill, 100<<20/len(fill), `","holder":"h","requestId":"1","ttl":"10s"}`)
		code, out := rawPost(t, l.api, "Acquire", c.bearer(), body, n)
		refused(t, "100 MB Acquire body", code, out, "resource_exhausted", "--max-request-bytes")
	})
	c.intact(t)
}

// fourBigBodies: 4 at once took 1.34 GB and the follower missed
// heartbeats.
func (c *adversary) fourBigBodies(t *testing.T) {
	_, fs := c.followers(t)
	f := fs[0]
	before := c.terms(t)
	c.mem.bounded(t, f, 4*8*advLimit, func() {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body, n := bodyOf(`{"key":"`, fill, 100<<20/len(fill), `","holder":"h","requestId":"1","ttl":"10s"}`)
				code, out := rawPost(t, f.api, "Acquire", c.bearer(), body, n)
				refused(t, "one of 4 concurrent 100 MB bodies", code, out, "resource_exhausted", "--max-request-bytes")
			}()
		}
		wg.Wait()
	})
	c.sameTerms(t, before)
	c.intact(t)
}

// gzipBomb: a 300 KB gzip body (235 MB inflated) took a node to 2.36 GB,
// also without a token, since the body was decoded before the token was
// checked. Gzip members concatenate (the reader takes them all): one
// member of 1 MiB of 'a', compressed once, repeated 235 times.
func (c *adversary) gzipBomb(t *testing.T) {
	l := c.leader(t)
	member := func(s []byte) []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		w.Write(s)
		w.Close()
		return b.Bytes()
	}
	mib := member(bytes.Repeat([]byte{'a'}, 1<<20))
	head := member([]byte(`{"key":"`))
	tail := member([]byte(`","holder":"h","requestId":"1","ttl":"10s"}`))
	size := int64(len(head) + 235*len(mib) + len(tail))
	t.Logf("gzip body: %d KB inflating to 235 MB", size>>10)
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   []string
	}{
		{"with a token", c.bearer(), []string{"invalid_argument", "compressed request bodies"}},
		{"without a token", nil, []string{"unauthenticated", "--auth-token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.mem.bounded(t, l, 8*advLimit, func() {
				h := map[string]string{"Content-Encoding": "gzip"}
				for k, v := range tc.header {
					h[k] = v
				}
				body := io.MultiReader(bytes.NewReader(head), &repeatReader{chunk: mib, n: 235}, bytes.NewReader(tail))
				code, out := rawPost(t, l.api, "Acquire", h, body, size)
				refused(t, "gzip bomb "+tc.name, code, out, tc.want...)
			})
		})
	}
	c.intact(t)
}

// hugeExtend: one Extend of 100k items of 1 KB keys (103 MB) wedged the
// cluster for over 2 minutes; 30k items gave "leadership lost".
func (c *adversary) hugeExtend(t *testing.T) {
	l := c.leader(t)
	before := c.terms(t)
	item := []byte(`{"key":"` + strings.Repeat("k", 1024) + `","token":"1"},`)
	c.mem.bounded(t, l, 8*advLimit, func() {
		body, n := bodyOf(`{"holder":"h","items":[`, item, 100_000, `{"key":"x","token":"1"}]}`)
		t.Logf("Extend body: %d MB", n>>20)
		code, out := rawPost(t, l.api, "Extend", c.bearer(), body, n)
		refused(t, "Extend of 100k items of 1 KB keys", code, out, "resource_exhausted", "--max-request-bytes")
	})
	var items []string
	for i := range 30_000 {
		items = append(items, fmt.Sprintf(`{"key":"k%d","token":"1"}`, i))
	}
	small := `{"holder":"h","items":[` + strings.Join(items, ",") + `]}`
	code, out := rawPost(t, l.api, "Extend", c.bearer(), strings.NewReader(small), int64(len(small)))
	refused(t, fmt.Sprintf("Extend of 30k items (%d KB)", len(small)>>10), code, out, "invalid_argument", "--max-extend-items")
	// The cluster keeps serving: a write commits, every node is ready.
	c.acquire(t, l, "after/extend", "h", time.Minute, nil)
	for _, a := range c.agents {
		if code, body := httpGet(a.api, "/readyz"); code != 200 {
			t.Errorf("%s /readyz: %d %s", a.id, code, body)
		}
	}
	c.sameTerms(t, before)
	c.intact(t)
}

// tinyTTL: a TTL of 1 ns was granted.
func (c *adversary) tinyTTL(t *testing.T) {
	l := c.leader(t)
	req := `{"key":"ttl/1ns","holder":"h","requestId":"1","ttl":"0.000000001s"}`
	code, out := rawPost(t, l.api, "Acquire", c.bearer(), strings.NewReader(req), int64(len(req)))
	refused(t, "TTL of 1 ns", code, out, "invalid_argument", "--min-ttl")
	r, err := c.api(l).Get(ctxT(t, 5*time.Second), connect.NewRequest(&pb.GetRequest{Key: "ttl/1ns"}))
	if err != nil || r.Msg.GetFound() {
		t.Errorf("ttl/1ns after the refusal: %v %v", r, err)
	}
	c.intact(t)
}

// slowBodies: headers followed by a body at 1 byte / 2 s were never timed
// out; ~20,000 such connections exhausted file descriptors and cost two
// leader changes. Here 2.5 x --max-conns of them go to the leader: its
// descriptors stay within the cap, the others keep serving (a follower
// forwards to the leader over node RPC), each connection is cut by the
// read timeout (10 s), no election happens, and the leader's API serves
// again once the attack ends.
func (c *adversary) slowBodies(t *testing.T) {
	l, fs := c.followers(t)
	pid := l.p.cmd.Process.Pid
	before := c.terms(t)
	// Every slot to the attacker: no idle keep-alive connection of this
	// test holds one.
	c.hc.CloseIdleConnections()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	fdBefore := fds(t, pid)
	const n = advMaxConns*2 + advMaxConns/2
	head := fmt.Sprintf("POST /leasenode.v1.LeaseService/Acquire HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", l.api, c.token)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var cut []time.Duration // how long each connection cut by the node lived
	var conns []net.Conn
	// endAttack stops the writers and closes every connection.
	endAttack := sync.OnceFunc(func() {
		close(stop)
		for _, conn := range conns {
			conn.Close()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("slow connections did not stop")
		}
	})
	defer endAttack()
	started := time.Now()
	for range n {
		conn, err := net.DialTimeout("tcp", l.api, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		opened := time.Now()
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { // a byte every 2 s
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Second):
				}
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		go func() { // until the node answers or hangs up
			defer wg.Done()
			_, _ = io.Copy(io.Discard, conn)
			select {
			case <-stop:
			default:
				mu.Lock()
				cut = append(cut, time.Since(opened))
				mu.Unlock()
			}
		}()
	}
	t.Logf("%d slow connections open after %v; leader %s had %d descriptors", n, time.Since(started).Round(time.Millisecond), l.id, fdBefore)

	// While the first wave holds every slot: the cap holds and the
	// cluster serves through the followers.
	maxFDs := 0
	for range 20 {
		maxFDs = max(maxFDs, fds(t, pid))
		time.Sleep(50 * time.Millisecond)
	}
	c.acquire(t, fs[0], "slow/during", "h", time.Minute, nil)
	maxFDs = max(maxFDs, fds(t, pid))
	// Past --max-conns: 16 for the node's own descriptors, and at most
	// 32 refused connections held for a moment while the node answers
	// them why (node's maxAnswers).
	if maxFDs > fdBefore+advMaxConns+16+32 {
		t.Errorf("connection cap did not hold: the leader had %d descriptors, %d before, --max-conns %d", maxFDs, fdBefore, advMaxConns)
	}
	t.Logf("leader descriptors during the attack: at most %d (%d before, --max-conns %d)", maxFDs, fdBefore, advMaxConns)

	// The node refuses those past the cap at once (every connection is
	// busy and of one source), cuts the first wave (every slot) at its
	// read timeout, and closes those connections: what is left of a body
	// is never read as another request.
	nodetest.Eventually(t, 25*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(cut) < n {
			return fmt.Errorf("the leader cut %d of %d slow connections so far", len(cut), n)
		}
		return nil
	})
	mu.Lock()
	wave := slices.Clone(cut)
	mu.Unlock()
	slices.Sort(wave)
	if last := wave[n-1]; last > 15*time.Second {
		t.Errorf("the %d slow connections were cut within %v, %v at the latest; want about the 10 s read timeout", n, wave[0], last)
	} else {
		t.Logf("the leader cut the %d slow connections after %v to %v (%v for the %dth)", n, wave[0].Round(time.Millisecond), last.Round(time.Millisecond), wave[n-advMaxConns].Round(time.Millisecond), n-advMaxConns+1)
	}
	if strings.Contains(logOf(l), "too many open files") {
		t.Error("the leader ran out of file descriptors")
	}
	// The attack ends; the leader serves again.
	endAttack()
	ended := time.Now()
	nodetest.Eventually(t, 15*time.Second, func() error {
		_, err := c.status(ctxT(t, 2*time.Second), l)
		return err
	})
	t.Logf("the attack lasted %v; the leader's API served again %v after it ended",
		ended.Sub(started).Round(time.Millisecond), time.Since(ended).Round(time.Millisecond))
	c.sameTerms(t, before)
	c.intact(t)
}

// hugeList: List with limit 2^31-1 via a follower: the reply exceeded the
// node RPC's 4 MiB message limit, was replaced by an error, retried and
// reported as "no leader". Here 80 leases of 60 KB (4.7 MB) come back in
// pages of at most --max-list-bytes (1 MiB).
func (c *adversary) hugeList(t *testing.T) {
	l, fs := c.followers(t)
	value := bytes.Repeat([]byte{'v'}, 60<<10)
	tokens := map[string]uint64{}
	for i := range 80 {
		k := fmt.Sprintf("big/%02d", i)
		tokens[k] = c.acquire(t, l, k, "lister", 10*time.Minute, value)
	}
	// Released after the probe: left held, their 4.8 MB were listed three
	// times by every later intact (seconds a listing under -race on a
	// busy host, past its deadline), and they expired ten minutes on,
	// one by one as they were taken, changing the state under the
	// listings of a later probe (damaged data dir: "state changed while
	// listing" for its whole wait).
	defer func() {
		for k, tok := range tokens {
			if _, err := c.api(l).Release(ctxT(t, 10*time.Second), connect.NewRequest(&pb.ReleaseRequest{Key: k, Holder: "lister", Token: tok})); err != nil {
				t.Errorf("release %s: %v", k, err)
			}
		}
		c.intact(t)
	}()
	after, pages, got, largest := "", 0, 0, 0
	for {
		r, err := c.api(fs[0]).List(ctxT(t, 10*time.Second), connect.NewRequest(&pb.ListRequest{Prefix: "big/", After: after, Limit: math.MaxInt32}))
		if err != nil {
			t.Fatalf("List with limit 2^31-1 via follower %s: %v", fs[0].id, err)
		}
		pages++
		got += len(r.Msg.GetLeases())
		largest = max(largest, proto.Size(r.Msg))
		if after = r.Msg.GetNext(); after == "" {
			break
		}
	}
	t.Logf("List via %s: %d leases in %d pages, the largest %d KB", fs[0].id, got, pages, largest>>10)
	if got != 80 || largest > 1<<20+64<<10 {
		t.Errorf("List: %d leases in %d pages of up to %d bytes; want all 80 in pages of at most 1 MiB", got, pages, largest)
	}
}

// lowerCaseBearer: "bearer" in lower case was refused.
func (c *adversary) lowerCaseBearer(t *testing.T) {
	for _, a := range c.agents {
		for auth, want := range map[string]int{"bearer " + c.token: 200, "BEARER " + c.token: 200, "": 401, "Bearer not-" + c.token[:8]: 401} {
			req, _ := http.NewRequest("POST", "http://"+a.api+"/leasenode.v1.LeaseService/Status", strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := c.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want || want == 401 && !strings.Contains(string(b), "--auth-token") {
				t.Errorf("%s, Authorization %q: %d %s; want %d", a.id, strings.Replace(auth, c.token, "TOKEN", 1), resp.StatusCode, b, want)
			}
		}
	}
}

// curlBackup: the README's `curl -L .../v1/backup` through a follower lost
// the Authorization header on the cross-port redirect (401). The README
// now says --location-trusted; its bytes must be a direct backup's.
func (c *adversary) curlBackup(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	l, fs := c.followers(t)
	// A follower redirects to the leader's API address once the leader
	// has confirmed it over node RPC (until then it answers 503).
	nodetest.Eventually(t, 10*time.Second, func() error {
		st, err := c.status(ctxT(t, 2*time.Second), fs[0])
		if err != nil || st.GetHeader().GetLeaderAddr() != l.api {
			return fmt.Errorf("%s's leader hint: %v %v", fs[0].id, st.GetHeader(), err)
		}
		return nil
	})
	dir := t.TempDir()
	curl := func(out, addr string, args ...string) (int, string) {
		args = append(args, "-sS", "--fail", "-H", "Authorization: Bearer "+c.token, "-o", filepath.Join(dir, out), "http://"+addr+"/v1/backup")
		cmd := exec.Command("curl", args...)
		b, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(b)
	}
	if code, out := curl("follower.lns", fs[0].api, "--location-trusted"); code != 0 {
		t.Fatalf("curl --location-trusted through follower %s: exit %d %s", fs[0].id, code, out)
	}
	if code, out := curl("leader.lns", l.api); code != 0 {
		t.Fatalf("curl from leader %s: exit %d %s", l.id, code, out)
	}
	code, out := curl("plain-L.lns", fs[0].api, "-L")
	t.Logf("plain curl -L through a follower (the README warns against it): exit %d %s", code, strings.TrimSpace(out))
	code, o, e := cliEnv(t, c.tokenEnv, "snapshot", "save", filepath.Join(dir, "cli.lns"), "--addr", fs[0].api)
	if code != 0 {
		t.Fatalf("snapshot save through a follower: %d %s%s", code, o, e)
	}
	// Each backup commits an entry first (it brings the state's clock to
	// the leader's now), so the files differ in their index and clock;
	// the leases in them are the same.
	leases := func(f string) []fsm.Lease {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		st := fsm.New(fsm.Config{})
		if err := st.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		l, _ := st.List("", "", 0)
		return l
	}
	want := leases("leader.lns")
	for _, f := range []string{"follower.lns", "cli.lns"} {
		if got := leases(f); len(want) == 0 || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %d leases, not the direct backup's %d", f, len(got), len(want))
		}
	}
	direct, _ := os.ReadFile(filepath.Join(dir, "leader.lns"))
	st, err := fsm.ReadBackup(bytes.NewReader(direct))
	if err != nil || st.Held < len(c.sentinels) {
		t.Errorf("backup: %+v %v", st, err)
	}
	t.Logf("backup through the follower: %d bytes, %d leases, equal to the leader's", len(direct), st.Held)
}

// requestIDs: client request ids started from the wall clock, so a
// backward clock step with a fixed holder name got "stale request"
// refusals. Request ids now count from 1 for each Client, whose holder is
// the name plus its own incarnation: a second Client with the same name
// (a restarted process, whatever its clock) is never stale.
func (c *adversary) requestIDs(t *testing.T) {
	var apis []string
	for _, a := range c.agents {
		apis = append(apis, a.api)
	}
	opts := []lease.Option{lease.WithHolder("fixed-name"), lease.WithAuthToken(c.token), lease.WithTTL(10 * time.Second)}
	first, err := lease.Dial(ctxT(t, 10*time.Second), apis, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// Ten acquires: were the two Clients one holder, the second's ids
	// 1..10 would all be stale.
	for range 10 {
		l, err := first.Acquire(ctxT(t, 10*time.Second), "ids/job")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	first.Close(ctxT(t, 10*time.Second))
	second, err := lease.Dial(ctxT(t, 10*time.Second), apis, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close(ctxT(t, 10*time.Second))
	l, err := second.Acquire(ctxT(t, 10*time.Second), "ids/job")
	if err != nil {
		t.Fatalf("a second Client named %q: %v (its first request id is 1, below the first Client's)", "fixed-name", err)
	}
	if first.Holder() == second.Holder() || first.HolderName() != second.HolderName() {
		t.Errorf("holders %q and %q: want one name, two holders", first.Holder(), second.Holder())
	}
	t.Logf("two Clients named fixed-name: holders %s and %s; the second got token %d", first.Holder(), second.Holder(), l.Token())
	_ = l.Release(ctxT(t, 10*time.Second))
}

// absurdRestore: `snapshot restore` of a backup whose epoch is 2^64-1 was
// accepted, and the node never served (its term wrapped). A backup with
// such an epoch (or applied index), checksummed as a real one would be, is
// refused with the number and the bound, and nothing is written.
func (c *adversary) absurdRestore(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.lns")
	if code, o, e := cliEnv(t, c.tokenEnv, "snapshot", "save", good, "--addr", addrs(c.agents)); code != 0 {
		t.Fatalf("snapshot save: %d %s%s", code, o, e)
	}
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"epoch", "applied index"} {
		bad := filepath.Join(dir, strings.ReplaceAll(field, " ", "-")+".lns")
		if err := os.WriteFile(bad, withHeader(t, b, field, math.MaxUint64), 0o600); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(dir, "restored-"+strings.ReplaceAll(field, " ", "-"))
		code, out, errOut := cli(t, "snapshot", "restore", bad, "--id", "r0", "--data-dir", data)
		if code == 0 || !strings.Contains(errOut, fmt.Sprintf("%s %d above", field, uint64(math.MaxUint64))) {
			t.Errorf("restore of a backup with %s 2^64-1: exit %d %s%s", field, code, out, errOut)
		} else {
			t.Logf("restore of a backup with %s 2^64-1: refused: %s", field, strings.TrimSpace(errOut))
		}
		if es, _ := os.ReadDir(data); len(es) > 0 {
			t.Errorf("the refused restore left %d files in %s", len(es), data)
		}
	}
}

// withHeader returns backup b with one field of its header frame set to v
// (and the frame's checksum made right).
func withHeader(t *testing.T, b []byte, field string, v uint64) []byte {
	t.Helper()
	const magic = "LNSNAP\x00\x01"
	if !bytes.HasPrefix(b, []byte(magic)) {
		t.Fatal("not a backup")
	}
	rest := b[len(magic):]
	n, k := binenc.Uvarint(rest)
	payload := rest[k : k+int(n)]
	after := rest[k+int(n)+4:]
	d := payload
	uv := func() uint64 { x, m := binenc.Uvarint(d); d = d[m:]; return x }
	version, epoch := uv(), uv()
	now, m := binenc.Varint(d)
	d = d[m:]
	applied, count, marks := uv(), uv(), uv()
	switch field {
	case "epoch":
		epoch = v
	case "applied index":
		applied = v
	}
	h := binenc.AppendUvarint(nil, version)
	h = binenc.AppendUvarint(h, epoch)
	h = binenc.AppendVarint(h, now)
	h = binenc.AppendUvarint(h, applied)
	h = binenc.AppendUvarint(h, count)
	h = binenc.AppendUvarint(h, marks)
	out := append([]byte(magic), binenc.AppendUvarint(nil, uint64(len(h)))...)
	out = append(out, h...)
	out = binenc.BigEndian.AppendUint32(out, crc32.Checksum(h, crc32.MakeTable(crc32.Castagnoli)))
	return append(out, after...)
}

// duplicateID: the same --id started twice: the duplicate kept running,
// unready, with only a memberlist "conflicting address" line.
func (c *adversary) duplicateID(t *testing.T) {
	_, fs := c.followers(t)
	orig := fs[0]
	var join []string
	for _, a := range c.agents {
		join = append(join, a.gossip)
	}
	dup := start(t, []string{"LEASENODE_CLUSTER_KEY_FILE=" + c.keyFile, "LEASENODE_AUTH_TOKEN_FILE=" + c.tokenFile},
		"agent", "--id", orig.id, "--data-dir", t.TempDir(), "--bind", nodetest.FreeAddr(t, false),
		"--gossip", nodetest.FreeAddr(t, true), "--api", nodetest.FreeAddr(t, false), "--join", strings.Join(join, ","), "--timing", "default")
	c.procs = append(c.procs, dup)
	code := dup.wait(t, 30*time.Second)
	if code == 0 || !strings.Contains(dup.stderr.String(), "already used by a live node") || !strings.Contains(dup.stderr.String(), orig.gossip) {
		t.Errorf("a second agent with --id %s: exit %d, stderr %s", orig.id, code, tail(dup.stderr.String(), 2000))
	} else {
		t.Logf("a second agent with --id %s: exit %d: %s", orig.id, code, lastLine(dup.stderr.String()))
	}
	c.intact(t)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// copyDir copies the regular files of from into to (recursively).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.RemoveAll(to); err != nil {
		t.Fatal(err)
	}
	err := filepath.Walk(from, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if info.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// damagedDataDir: a byte flipped inside a Raft log entry was replayed
// silently (that replica held a different key for ever); raft.db
// truncated to 0 bytes started a node that forgot its term and vote;
// damaged bbolt pages gave a Go panic. A follower is stopped, its data
// dir damaged one way at a time, and started: it must exit with an error
// naming the damage (a flipped entry: its checksum, once replayed); with
// its data dir as it was, it comes back and converges.
func (c *adversary) damagedDataDir(t *testing.T) {
	_, fs := c.followers(t)
	v := fs[0]
	const flip = "flip-me-please-0123456789"
	c.acquire(t, v, flip, "h", 10*time.Minute, nil)
	c.intact(t) // replicated to v
	v.p.kill(syscall.SIGTERM)
	if code := v.p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("%s: exit %d after SIGTERM", v.id, code)
	}
	saved := filepath.Join(t.TempDir(), "saved")
	copyDir(t, v.dir, saved)
	// The vote and term live in raft.db (raft-boltdb) or wal/wal-meta.db
	// (raft-wal, the default for new data dirs): both are bbolt files.
	// The log entries live in raft.db or in the WAL's segment files.
	stable, stableName := filepath.Join(v.dir, "raft.db"), "raft.db"
	if _, err := os.Stat(stable); err != nil {
		stable, stableName = filepath.Join(v.dir, "wal", "wal-meta.db"), "wal/wal-meta.db"
	}
	logFile := func() string { // the file holding the flip entry
		var found string
		filepath.WalkDir(v.dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && found == "" {
				if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(flip)) {
					found = path
				}
			}
			return nil
		})
		if found == "" {
			t.Fatal("the entry is in no file of the data dir")
		}
		return found
	}
	cases := []struct {
		name   string
		file   func() string
		damage func(b []byte) []byte
		want   []string
	}{
		{"a byte flipped inside a Raft log entry", logFile, func(b []byte) []byte {
			return bytes.ReplaceAll(b, []byte(flip), []byte("g"+flip[1:])) // still a valid key, another one
		}, []string{"checksum|dropped acknowledged entries"}}, // raft-wal reads a damaged last batch as torn: the node refuses to start
		{"raft.db truncated to 0 bytes", func() string { return stable }, func([]byte) []byte { return nil },
			[]string{stableName + " is empty", "vote"}},
		{"damaged bbolt pages", func() string { return stable }, damageBoltPages, []string{stableName + " is damaged"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			copyDir(t, saved, v.dir)
			db := tc.file()
			b, err := os.ReadFile(db)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(db, tc.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			p := start(t, v.env, v.args...)
			c.procs = append(c.procs, p)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				what := "its node serves nothing, yet the process lives on"
				if r, err := c.api(v).Get(ctxT(t, 2*time.Second), connect.NewRequest(&pb.GetRequest{Key: "g" + flip[1:], Stale: true})); err == nil {
					what = fmt.Sprintf("it serves (its state has %q, a key no other replica has: %v)", "g"+flip[1:], r.Msg.GetFound())
				}
				t.Fatalf("agent on a data dir with %s still runs after 30 s: %s", tc.name, what)
			}
			code := p.cmd.ProcessState.ExitCode()
			log := p.stderr.String()
			ok := code != 0 && !goPanic.MatchString(log)
			for _, w := range tc.want { // "a|b": either
				any := false
				for _, alt := range strings.Split(w, "|") {
					any = any || strings.Contains(log, alt)
				}
				ok = ok && any
			}
			if !ok {
				t.Errorf("agent on a data dir with %s: exit %d; want an error naming %q, no panic:\n%s", tc.name, code, tc.want, tail(log, 3000))
			} else {
				t.Logf("%s: exit %d: %s", tc.name, code, lastLine(log))
			}
		})
	}
	copyDir(t, saved, v.dir)
	v.p = start(c.t, v.env, v.args...) // it lives on after this subtest
	c.procs = append(c.procs, v.p)
	waitReady(t, v)
	c.intact(t)
	r, err := c.api(c.leader(t)).Get(ctxT(t, 5*time.Second), connect.NewRequest(&pb.GetRequest{Key: "g" + flip[1:]}))
	if err != nil || r.Msg.GetFound() {
		t.Errorf("the damaged key %q: %v %v", "g"+flip[1:], r, err)
	}
}

// goPanic matches the output of a Go panic (not an error that quotes one).
var goPanic = regexp.MustCompile(`(?m)^panic: |^goroutine \d+ \[`)

// damageBoltPages overwrites the header of every branch and leaf page of
// a bbolt file (a page whose header names its own index), as a disk that
// garbled them would: the tree no longer holds together.
func damageBoltPages(b []byte) []byte {
	size := int(binenc.LittleEndian.Uint32(b[24:])) // meta: page header (16), magic, version, page size
	for p := 2; (p+1)*size <= len(b); p++ {
		pg := b[p*size:]
		if flags := binenc.LittleEndian.Uint16(pg[8:]); binenc.LittleEndian.Uint64(pg) == uint64(p) && (flags == 0x01 || flags == 0x02) {
			for i := range 64 {
				pg[i] = 0xA5
			}
		}
	}
	return b
}

// clientTokenFile: a client command takes the token from a file (one
// line, its newline trimmed) as the agent does, so it need not show in ps;
// a file that cannot be a token is refused before anything is sent,
// naming the flag and the limit.
func (c *adversary) clientTokenFile(t *testing.T) {
	addr := "--addr=" + c.agents[1].api
	if code, out, errOut := run1(t, nil, "status", addr, "--auth-token-file", c.tokenFile); code != 0 || !strings.Contains(out, "leader (serving)") {
		t.Fatalf("status --auth-token-file: %d %q %q", code, out, errOut)
	}
	// A token exported in the shell gives way to the file on the command line.
	if code, _, errOut := run1(t, []string{"LEASENODE_AUTH_TOKEN=wrong"}, "status", addr, "--auth-token-file", c.tokenFile); code != 0 {
		t.Fatalf("--auth-token-file beside LEASENODE_AUTH_TOKEN: %d %q", code, errOut)
	}
	// A refused token's hint says which it was: a wrong one sent (by
	// the flag, the file or the environment), or none ("pass it with
	// --auth-token-file" read as if none had been sent; new-user review).
	wrongFile := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrongFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"acquire", "tok/k", "--auth-token", "wrong"}, "is wrong"},
		{nil, []string{"get", "tok/k", "--auth-token-file", wrongFile}, "is wrong"},
		{[]string{"LEASENODE_AUTH_TOKEN=wrong"}, []string{"status"}, "is wrong"},
		{nil, []string{"snapshot", "save", filepath.Join(t.TempDir(), "b.lns"), "--auth-token", "wrong"}, "is wrong"},
		{nil, []string{"acquire", "tok/k"}, "none was sent"},
		{nil, []string{"snapshot", "save", filepath.Join(t.TempDir(), "b.lns")}, "none was sent"},
	} {
		code, _, errOut := run1(t, tc.env, append(tc.args, addr)...)
		_, hint, _ := strings.Cut(errOut, "  hint: ")
		if code == 0 || !strings.Contains(hint, tc.want) || strings.Contains(errOut, "is wrong") == strings.Contains(errOut, "none was sent") {
			t.Errorf("%v %v: exit %d %q, want a hint saying %q", tc.env, tc.args, code, errOut, tc.want)
		}
	}
	// One that others may read works, with a warning.
	readable := filepath.Join(t.TempDir(), "token")
	tok, _ := os.ReadFile(c.tokenFile)
	if err := os.WriteFile(readable, tok, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readable, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if code, _, errOut := run1(t, nil, "status", addr, "--auth-token-file", readable); code != 0 || !strings.Contains(errOut, "chmod 600 "+readable) {
		t.Errorf("status --auth-token-file of mode 0644: %d %q, want it to work, with a warning", code, errOut)
	}
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 5000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--auth-token-file", big}, "longer than 4096 bytes"},
		{[]string{"--auth-token-file", filepath.Join(t.TempDir(), "none")}, "--auth-token-file: open"},
		{[]string{"--auth-token-file", c.tokenFile, "--auth-token", "x"}, "--auth-token and --auth-token-file: give one"},
	} {
		code, _, errOut := run1(t, nil, append([]string{"status", addr}, tc.args...)...)
		if code != exitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("status %v: exit %d %q, want exit %d naming %q", tc.args, code, errOut, exitUsage, tc.want)
		}
	}
}

// tokenHygiene: --auth-token on the command line shows in ps, and agents
// had no file or environment form. Every agent of the suite got its token
// from a file or the environment: no agent's command line holds it, and
// no agent logged it (nor a wrong token a client sent) at --log-level
// info, through every probe above.
func (c *adversary) tokenHygiene(t *testing.T) {
	for _, p := range c.procs {
		if strings.Contains(strings.Join(p.cmd.Args, " "), c.token) {
			t.Errorf("the token is on the command line of %v", p.cmd.Args)
		}
		if !p.exited() {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(c.token)) {
				t.Errorf("ps shows the token: %q", b)
			}
		}
		for _, secret := range []string{c.token, "not-" + c.token[:8]} {
			if strings.Contains(p.stderr.String(), secret) || strings.Contains(p.stdout.String(), secret) {
				t.Errorf("agent %v logged a token", p.cmd.Args[:4])
			}
		}
	}
	// Each agent did require the token (file flag, environment, file from
	// the environment): see "bearer in lower case".
	if !t.Failed() {
		t.Logf("%d agent processes: token in no command line and no log", len(c.procs))
	}
}

// TestAdversaryTLS: under mutual TLS an API client certificate (clientAuth,
// same CA) was accepted on the node port; TimeoutNow and the AppendEntries
// injection both worked. The README's TLS cluster refuses it, by its
// missing node role, for node RPC and for Raft, and the API still takes it.
func TestAdversaryTLS(t *testing.T) {
	t.Parallel()
	s := tlsCluster(t, "--timing", "default")
	cert, err := tls.LoadX509KeyPair(filepath.Join(s.dir, "client-ops.pem"), filepath.Join(s.dir, "client-ops-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(s.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var agents []*agent
	for _, a := range s.agents {
		agents = append(agents, &a.agent)
	}
	v := newView(agents, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, "")
	v.takeSentinels(t, 3) // the API takes the client certificate
	st, err := v.status(ctxT(t, 5*time.Second), agents[0])
	if err != nil {
		t.Fatal(err)
	}
	// Its hello names no node: under TLS the certificate speaks for it.
	o := &outsider{what: "an API client certificate", cluster: st.GetClusterId(),
		tls: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "127.0.0.1"}}
	l, fs := v.followers(t)
	before := v.terms(t)
	sn := v.sentinels[0]
	for _, call := range []struct {
		name   string
		method uint8
		req    []byte
	}{
		{"Status", rpcStatus, nil},
		{"List", rpcList, marshal(t, &pb.ListRequest{Limit: 100})},
		{"Release", rpcRelease, marshal(t, &pb.ReleaseRequest{Key: sn.key, Holder: sn.holder, Token: sn.token})},
		{"Leave", rpcLeave, []byte(`{"id":"` + fs[0].id + `"}`)},
	} {
		if served, _, err := o.call(l.raft, call.method, call.req); served || err == nil {
			t.Errorf("node RPC %s with an API client certificate was served: %v", call.name, err)
		} else {
			t.Logf("node RPC %s with an API client certificate: refused: %v", call.name, err)
		}
	}
	tr, hdr := o.raft(t)
	f := fs[0]
	var tn raft.TimeoutNowResponse
	if err := tr.TimeoutNow(raft.ServerID(f.id), raft.ServerAddress(f.raft), &raft.TimeoutNowRequest{RPCHeader: hdr}, &tn); err == nil {
		t.Errorf("TimeoutNow with an API client certificate was served by %s", f.id)
	} else {
		t.Logf("TimeoutNow with an API client certificate: refused: %v", err)
	}
	fst, err := v.status(ctxT(t, 5*time.Second), f)
	if err != nil {
		t.Fatal(err)
	}
	var ae raft.AppendEntriesResponse
	if err := tr.AppendEntries(raft.ServerID(f.id), raft.ServerAddress(f.raft), forgedRelease(fst, v.sentinels[1], hdr), &ae); err == nil {
		t.Errorf("a forged AppendEntries with an API client certificate was served by %s: success=%v", f.id, ae.Success)
	} else {
		t.Logf("forged AppendEntries with an API client certificate: refused: %v", err)
	}
	v.sameTerms(t, before)
	v.intact(t)
	for _, a := range []*agent{l, f} {
		t.Logf("%s: %s", a.id, waitLog(t, a, "refused a node-port connection", "lacks the node role", "client.leasenode"))
	}
}
