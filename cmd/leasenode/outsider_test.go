package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	binenc "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/leasenode/leasenode/node/nodetest"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Helpers of the adversary suite (adversary_test.go): an outsider on the
// node port, a view of a cluster of agents through their client API (leader,
// terms, state digests, sentinel leases), and agent memory from /proc.

// Node-RPC method numbers, as node/ops.go numbers them: the outsider
// speaks the wire protocol, not the node package.
const (
	rpcAcquire uint8 = 1
	rpcRelease uint8 = 3
	rpcGet     uint8 = 4
	rpcList    uint8 = 5
	rpcStatus  uint8 = 7
	rpcLeave   uint8 = 8
)

// outsider speaks on a node port as any process on the nodes' network
// could: TCP, TLS if it has some certificate (it never verifies the
// server: it does not care who answers), then the protocol byte and a
// hello naming whatever node and cluster it likes. The cluster id is no
// secret (`leasenode status` prints it), so the outsider presents the real
// one, and it claims to be the node whose name serves it best.
type outsider struct {
	what    string      // for messages: "no credentials", "a cluster key of its own", ...
	tls     *tls.Config // nil: plain TCP
	id      string      // the node ID in its hello
	cluster string      // the cluster id in its hello
}

// dial opens a node-port connection for proto and runs the hello; a node
// that refuses it (in TLS or in the hello) makes it fail.
func (o *outsider) dial(addr string, proto byte) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if o.tls != nil {
		tc := tls.Client(conn, o.tls)
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	hello := []byte{proto, 'L', 1, byte(len(o.id))}
	hello = append(hello, o.id...)
	hello = append(hello, byte(len(o.cluster)))
	hello = append(hello, o.cluster...)
	if _, err := conn.Write(hello); err != nil {
		conn.Close()
		return nil, fmt.Errorf("write hello: %w", err)
	}
	// The answer: magic, version, status, node, cluster, message.
	r := bufio.NewReader(conn)
	head := make([]byte, 3)
	str := func() (string, error) {
		n, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		b := make([]byte, n)
		_, err = io.ReadFull(r, b)
		return string(b), err
	}
	var node, msg string
	_, err = io.ReadFull(r, head)
	if err == nil {
		node, err = str()
	}
	if err == nil {
		_, err = str()
	}
	if err == nil {
		var n [2]byte
		if _, err = io.ReadFull(r, n[:]); err == nil {
			b := make([]byte, binenc.BigEndian.Uint16(n[:]))
			_, err = io.ReadFull(r, b)
			msg = string(b)
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read hello answer: %w", err)
	}
	if head[2] != 0 {
		conn.Close()
		return nil, fmt.Errorf("refused by %s in the hello: %s", node, msg)
	}
	if r.Buffered() > 0 {
		conn.Close()
		return nil, errors.New("bytes after the hello answer")
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// call sends one node-RPC request and reads the answer. served reports
// that a handler ran (a reply, or a handler's error): the node treated the
// outsider as a node.
func (o *outsider) call(addr string, method uint8, req []byte) (served bool, reply []byte, err error) {
	conn, err := o.dial(addr, transport.ProtoRPC)
	if err != nil {
		return false, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	// length, type 1 (request), call id, method, timeout, payload
	f := binenc.BigEndian.AppendUint32(nil, uint32(1+8+1+8+len(req)))
	f = append(f, 1)
	f = binenc.BigEndian.AppendUint64(f, 1)
	f = append(f, method)
	f = binenc.BigEndian.AppendUint64(f, uint64(3*time.Second))
	f = append(f, req...)
	if _, err := conn.Write(f); err != nil {
		return false, nil, fmt.Errorf("write request: %w", err)
	}
	var hdr [13]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return false, nil, fmt.Errorf("read reply: %w", err)
	}
	n := int(binenc.BigEndian.Uint32(hdr[:4])) - 9
	if n < 0 || n > 8<<20 {
		return false, nil, fmt.Errorf("reply frame of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return false, nil, fmt.Errorf("read reply: %w", err)
	}
	switch hdr[4] {
	case 2:
		return true, body, nil
	case 3:
		var e pb.RPCError
		if len(body) > 0 && proto.Unmarshal(body[1:], &e) == nil && e.GetMessage() != "" {
			return true, nil, fmt.Errorf("handler error: %s", e.GetMessage())
		}
		return true, nil, fmt.Errorf("handler error: %q", body)
	}
	return false, nil, fmt.Errorf("reply frame type %d", hdr[4])
}

// raft returns a hashicorp/raft NetworkTransport whose connections are
// the outsider's: the client half of Raft's own RPCs (AppendEntries,
// TimeoutNow), as in jepsen/nemesis/rogue.go.
func (o *outsider) raft(t *testing.T) (*raft.NetworkTransport, raft.RPCHeader) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &outsiderStream{Listener: ln, o: o}, MaxPool: 1, Timeout: 3 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Output: io.Discard}),
	})
	t.Cleanup(func() { tr.Close() })
	return tr, raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(o.id), Addr: []byte(ln.Addr().String())}
}

// outsiderStream is a raft.StreamLayer that dials as the outsider.
type outsiderStream struct {
	net.Listener
	o *outsider
}

func (s *outsiderStream) Dial(addr raft.ServerAddress, _ time.Duration) (net.Conn, error) {
	return s.o.dial(string(addr), transport.ProtoRaft)
}

// sentinel is a lease taken at the start of a scenario, to be found
// intact, with its holder and token, on every node at the end.
type sentinel struct {
	key, holder string
	token       uint64
}

// view reaches a cluster of agents through their client API.
type view struct {
	agents    []*agent
	hc        *http.Client
	scheme    string // "http://" or "https://"
	token     string // "" without an auth token
	sentinels []sentinel
}

func newView(agents []*agent, tc *tls.Config, token string) *view {
	v := &view{agents: agents, token: token, scheme: "http://",
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: tc != nil}}}
	if tc != nil {
		v.scheme = "https://"
	}
	return v
}

// api returns a typed client API client for agent a (with the token).
func (v *view) api(a *agent) pbconnect.LeaseServiceClient {
	var opts []connect.ClientOption
	if v.token != "" {
		opts = append(opts, connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				req.Header().Set("Authorization", "Bearer "+v.token)
				return next(ctx, req)
			}
		})))
	}
	return pbconnect.NewLeaseServiceClient(v.hc, v.scheme+a.api, opts...)
}

// live returns the agents whose process runs.
func (v *view) live() []*agent {
	var out []*agent
	for _, a := range v.agents {
		if !a.p.exited() {
			out = append(out, a)
		}
	}
	return out
}

func (v *view) status(ctx context.Context, a *agent) (*pb.StatusResponse, error) {
	r, err := v.api(a).Status(ctx, connect.NewRequest(&pb.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return r.Msg, nil
}

// leader returns the agent that serves as leader, waiting for one.
func (v *view) leader(t *testing.T) *agent {
	t.Helper()
	var l *agent
	nodetest.Eventually(t, 20*time.Second, func() error {
		for _, a := range v.live() {
			if st, err := v.status(ctxT(t, 2*time.Second), a); err == nil && st.GetServing() {
				l = a
				return nil
			}
		}
		return errors.New("no serving leader")
	})
	return l
}

// followers returns the live agents other than the leader.
func (v *view) followers(t *testing.T) (*agent, []*agent) {
	t.Helper()
	l := v.leader(t)
	var fs []*agent
	for _, a := range v.live() {
		if a != l {
			fs = append(fs, a)
		}
	}
	return l, fs
}

// terms returns every live agent's Raft term and the leader it knows, as
// "term/leader": unchanged terms mean no election happened.
func (v *view) terms(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	nodetest.Eventually(t, 10*time.Second, func() error {
		for _, a := range v.live() {
			st, err := v.status(ctxT(t, 2*time.Second), a)
			if err != nil {
				return fmt.Errorf("status of %s: %w", a.id, err)
			}
			out[a.id] = fmt.Sprintf("%d/%s", st.GetTerm(), st.GetHeader().GetLeaderId())
		}
		return nil
	})
	return out
}

// sameTerms fails the test if any node's term or leader changed since
// before (an election happened).
func (v *view) sameTerms(t *testing.T, before map[string]string) {
	t.Helper()
	after := v.terms(t)
	for id, b := range before {
		if a, ok := after[id]; ok && a != b {
			t.Errorf("leader change: term/leader of %s went from %s to %s (all: %v -> %v)", id, b, a, before, after)
			return
		}
	}
}

// acquire takes key for holder through agent a (RequestId 1, TTL ttl).
func (v *view) acquire(t *testing.T, a *agent, key, holder string, ttl time.Duration, value []byte) uint64 {
	t.Helper()
	r, err := v.api(a).Acquire(ctxT(t, 10*time.Second), connect.NewRequest(&pb.AcquireRequest{
		Key: key, Holder: holder, RequestId: 1, Ttl: durationpb.New(ttl), Value: value}))
	if err != nil || !r.Msg.GetGranted() {
		t.Fatalf("acquire %s for %s: %v %v", key, holder, r, err)
	}
	return r.Msg.GetToken()
}

// takeSentinels acquires n sentinel leases (TTL 10 minutes: nothing
// extends them, so nothing writes unless a probe does).
func (v *view) takeSentinels(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		a := v.agents[i%len(v.agents)]
		s := sentinel{key: fmt.Sprintf("sentinel/%02d", i), holder: fmt.Sprintf("keeper-%02d", i)}
		s.token = v.acquire(t, a, s.key, s.holder, 10*time.Minute, nil)
		v.sentinels = append(v.sentinels, s)
	}
}

// digest reads agent a's own state (stale List pages, answered without
// the leader) and returns its applied index and a SHA-256 over every
// record's key, holder, token, TTL, lock-delay, value and state (the
// advisory remaining time left out), as jepsen's control.Digest does.
func (v *view) digest(ctx context.Context, a *agent) (uint64, string, error) {
	var lines []string
	var applied uint64
	after := ""
	for page := 0; ; page++ {
		r, err := v.api(a).List(ctx, connect.NewRequest(&pb.ListRequest{Stale: true, Limit: 1000, After: after}))
		if err != nil {
			return 0, "", err
		}
		h := r.Msg.GetHeader().GetAppliedIndex()
		if page == 0 {
			applied = h
		} else if h != applied {
			return 0, "", fmt.Errorf("%s: state changed while listing", a.id)
		}
		for _, l := range r.Msg.GetLeases() {
			lines = append(lines, strings.Join([]string{l.GetKey(), l.GetHolder(), strconv.FormatUint(l.GetToken(), 10),
				l.GetTtl().AsDuration().String(), l.GetLockDelay().AsDuration().String(), string(l.GetValue()), l.GetState().String()}, "\x00"))
		}
		if after = r.Msg.GetNext(); after == "" {
			break
		}
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
		h.Write([]byte{'\n'})
	}
	return applied, hex.EncodeToString(h.Sum(nil))[:16], nil
}

// intact checks what every probe must leave as it was: the replicas
// converge (the same applied index and state digest on every live node),
// and every sentinel is held by its holder with its token on every node
// (its own state) and at the leader (a consistent read).
func (v *view) intact(t *testing.T) {
	t.Helper()
	var digest string
	// One try lists every node's whole state, and passes only if nothing
	// was written meanwhile: under -race on a busy host a try takes
	// seconds, so the wait allows for several (a restarted node catching
	// up, an expiry landing in a try).
	began, tries := time.Now(), 0
	nodetest.Eventually(t, 60*time.Second, func() error {
		tries++
		seen := map[string]string{}
		for _, a := range v.live() {
			applied, d, err := v.digest(ctxT(t, 5*time.Second), a)
			if err != nil {
				return err
			}
			seen[a.id] = fmt.Sprintf("%d:%s", applied, d)
			digest = d
		}
		for id, s := range seen {
			for id2, s2 := range seen {
				if s != s2 {
					return fmt.Errorf("replicas differ: %s has %s, %s has %s (applied:digest)", id, s, id2, s2)
				}
			}
		}
		return nil
	})
	for _, a := range v.live() {
		for _, s := range v.sentinels {
			for _, stale := range []bool{true, false} {
				r, err := v.api(a).Get(ctxT(t, 5*time.Second), connect.NewRequest(&pb.GetRequest{Key: s.key, Stale: stale}))
				if err != nil {
					t.Fatalf("get %s from %s (stale %v): %v", s.key, a.id, stale, err)
				}
				if l := r.Msg.GetLease(); !r.Msg.GetFound() || l.GetHolder() != s.holder || l.GetToken() != s.token {
					t.Fatalf("lease lost: %s on %s (stale %v) is %v, want holder %s token %d", s.key, a.id, stale, l, s.holder, s.token)
				}
			}
		}
	}
	t.Logf("intact: %d sentinel leases held with their tokens on %d nodes; state digest %s on every node (%d tries, %v)",
		len(v.sentinels), len(v.live()), digest, tries, time.Since(began).Round(time.Millisecond))
}

// procMem is an agent's resident memory from /proc/PID/status, in bytes:
// now (VmRSS) and its peak (VmHWM) since start or the last resetPeak.
type procMem struct{ rss, hwm int64 }

func readMem(t *testing.T, pid int) procMem {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var m procMem
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = kb << 10
		case "VmHWM:":
			m.hwm = kb << 10
		}
	}
	return m
}

// resetPeak sets pid's VmHWM to its current RSS (Linux: clear_refs 5),
// so that the peak read afterwards is the peak of what follows.
func resetPeak(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Logf("cannot reset the peak RSS of %d (%v); peaks include earlier ones", pid, err)
	}
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// memFigures collects the memory of size probes for the suite's summary.
type memFigures struct {
	mu   sync.Mutex
	rows []string
}

func (m *memFigures) add(row string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rows = append(m.rows, row)
}

// bounded runs probe against agent a and fails the test if a's peak RSS
// during it exceeds its RSS before by more than bound bytes; it logs (and
// records) RSS before and after and the peak.
func (m *memFigures) bounded(t *testing.T, a *agent, bound int64, probe func()) {
	t.Helper()
	pid := a.p.cmd.Process.Pid
	resetPeak(t, pid)
	before := readMem(t, pid)
	probe()
	after := readMem(t, pid)
	row := fmt.Sprintf("%s on %s: RSS %.1f MB before, %.1f MB after, peak %.1f MB (+%.1f MB; bound +%.0f MB)",
		t.Name(), a.id, mb(before.rss), mb(after.rss), mb(after.hwm), mb(after.hwm-before.rss), mb(bound))
	t.Log(row)
	m.add(row)
	if grew := after.hwm - before.rss; grew > bound {
		t.Errorf("memory not bounded: %s's peak RSS grew by %.1f MB, more than %.0f MB", a.id, mb(grew), mb(bound))
	}
}

// fds returns how many file descriptors pid has open.
func fds(t *testing.T, pid int) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// randomHex returns n random bytes in hex.
func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// never fails the test if f reports a violation at any poll during d: a
// bounded observation window for something that must not happen.
func never(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if err := f(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
