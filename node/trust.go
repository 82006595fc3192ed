package node

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/leasenode/leasenode/transport"
)

// ClusterIDFile is the file in the data directory that holds the id of the
// cluster the directory's Raft state belongs to (hex, one line). It is
// written at bootstrap (before Raft's own state), by Restore, and when a
// new node adopts the id of the cluster it joins, before any Raft byte
// reaches it.
const ClusterIDFile = "cluster-id"

// SeenClusterFile is the file in the data directory of a node that has no
// cluster id yet and decided not to bootstrap (BootstrapExpect) because a
// member belongs to a cluster already, or said it had seen one: that
// cluster's id (hex, one line). While it has no Raft state the node joins
// that cluster rather than bootstrap, across restarts, and tells the nodes
// that ask it (StatusResponse.seen_cluster), which decide the same. To
// found a new cluster instead, stop every node that decided so and delete
// the file from each (one node alone with an empty data dir learns the
// decision back from the others).
const SeenClusterFile = "seen-cluster"

// nodePortTLS builds the node port's TLS configurations and the API's:
// from TLSFiles (node port and API), from ServerTLS/ClientTLS (likewise),
// or from ClusterKey (node port only; the API stays plain). It checks that
// a node certificate is for this node's ID. All nil: plain TCP.
func nodePortTLS(cfg Config) (server, client, api *tls.Config, err error) {
	switch {
	case cfg.TLSFiles.Enabled():
		if server, err = cfg.TLSFiles.ServerConfig(); err != nil {
			return nil, nil, nil, err
		}
		if client, err = cfg.TLSFiles.ClientConfig(); err != nil {
			return nil, nil, nil, err
		}
		if err := checkOwnCert(server, cfg.ID, cfg.TLSFiles.CertFile); err != nil {
			return nil, nil, nil, err
		}
		return server, client, server, nil
	case cfg.ServerTLS != nil:
		if len(cfg.ServerTLS.Certificates) > 0 {
			if err := checkOwnCert(cfg.ServerTLS, cfg.ID, "ServerTLS"); err != nil {
				return nil, nil, nil, err
			}
		}
		return cfg.ServerTLS, cfg.ClientTLS, cfg.ServerTLS, nil
	case len(cfg.ClusterKey) > 0:
		server, client, err = transport.ClusterKeyTLS(cfg.ClusterKey, cfg.ID)
		return server, client, nil, err
	}
	return nil, nil, nil, nil
}

// checkOwnCert refuses to start with a certificate that peers would refuse:
// one without the node role, or for another node.
func checkOwnCert(c *tls.Config, id, name string) error {
	got, err := transport.ConfigNodeID(c)
	if err != nil {
		return fmt.Errorf("%s: %w; make a node certificate with `leasenode tls cert create --node %s --ip IP`", name, err, id)
	}
	if got != id {
		return fmt.Errorf("%s is the certificate of node %q, but this node's ID is %q", name, got, id)
	}
	return nil
}

// checkExposure refuses to run an unauthenticated node port or gossip on
// an address other hosts can reach, unless cfg.Insecure; with Insecure it
// logs a warning. Loopback-only nodes (tests, `leasenode dev`) need no
// set-up.
func checkExposure(cfg Config, log *slog.Logger) error {
	nodePortOpen := !cfg.TLSFiles.Enabled() && cfg.ServerTLS == nil && len(cfg.ClusterKey) == 0
	gossipOpen := len(cfg.GossipKey) == 0 && len(cfg.ClusterKey) == 0
	if !nodePortOpen && !gossipOpen {
		return nil
	}
	var exposed []string
	for _, a := range []string{cfg.BindAddr, cfg.GossipAddr, cfg.APIAddr} {
		if a != "" && !isLoopback(a) {
			exposed = append(exposed, a)
		}
	}
	what := "the node port (Raft, node RPC) and gossip"
	fix := "set ClusterKey (agent: --cluster-key-file FILE or LEASENODE_CLUSTER_KEY; make one with `head -c 32 /dev/urandom | base64`), or TLS (--tls-cert, --tls-key, --tls-ca) with a gossip key"
	switch {
	case !nodePortOpen:
		what = "gossip (TLS protects only the node port)"
		fix = "set GossipKey (--gossip-key) or ClusterKey (--cluster-key-file), which also keys gossip"
	case !gossipOpen:
		what = "the node port (Raft, node RPC)"
		fix = "set ClusterKey (--cluster-key-file) or TLS (--tls-cert, --tls-key, --tls-ca)"
	}
	if len(exposed) == 0 {
		log.Warn("unauthenticated on loopback: "+what+" accept any local process, including other users' and containers "+
			"sharing this network namespace, which can join or disrupt the cluster; unless this host is yours alone, "+fix+".",
			"bind", cfg.BindAddr, "gossip", cfg.GossipAddr)
		return nil
	}
	if cfg.Insecure {
		log.Warn("INSECURE: "+what+" accept anyone who can reach them: any process on the network can read every lease, "+
			"take leases from their holders and join or disrupt the cluster. "+fix+".", "addresses", exposed)
		return nil
	}
	return fmt.Errorf("%s would accept anyone who can reach %s: %s; or set Insecure (--insecure) to run unauthenticated anyway",
		what, strings.Join(exposed, ", "), fix)
}

// isLoopback reports whether host:port binds only a loopback address.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// clusterIdentity is this node's cluster id and the rules by which it
// judges the ids peers present in the hello (transport.Hello.Check).
//
// Invariant one-cluster-per-data-dir: a node exchanges Raft and RPC bytes
// only with nodes whose cluster id equals its own, or where one side has
// none yet and may take the other's. A node takes an id only while it has
// no Raft state and is not waiting to bootstrap, and writes it to disk
// before the hello that brought it is answered, so Raft state never
// arrives in a data dir without its cluster's id. Otherwise a node that
// belonged to another cluster, or a new cluster started on a dead
// member's address, would be merged into this one (the probes);
// TestOtherClusterRefused and TestNewClusterOnDeadMembersAddress guard
// it.
type clusterIdentity struct {
	dir      string
	self     string // this node's ID
	log      *slog.Logger
	hasState func() bool          // whether this node has Raft state now
	isMember func(id string) bool // whether id is in this node's gossip pool
	// mayTake, if set, says why this node must take no cluster id from
	// a peer now (gossip shows members of two clusters), or nil; settle,
	// if set, waits until gossip has shown this node its pool.
	mayTake func() error
	settle  func()

	mu      sync.Mutex
	id      string
	seen    string              // SeenClusterFile's id, "" if none
	waiting bool                // waiting to bootstrap: see check
	logged  map[string]struct{} // peer and reason of refusals logged loudly
	changed chan struct{}       // capacity 1: the id changed (gossip metadata)
}

// maxLogged bounds clusterIdentity.logged: past it, refusals are logged
// loudly again (from an empty set) rather than remembered without end.
const maxLogged = 1024

func newClusterIdentity(dir, self string, log *slog.Logger, waiting bool, hasState func() bool, isMember func(string) bool) (*clusterIdentity, error) {
	id, err := readClusterID(dir)
	if err != nil {
		return nil, err
	}
	seen, err := readIDFile(dir, SeenClusterFile)
	if err != nil {
		return nil, err
	}
	return &clusterIdentity{dir: dir, self: self, log: log, hasState: hasState, isMember: isMember, id: id, seen: seen, waiting: waiting,
		logged: map[string]struct{}{}, changed: make(chan struct{}, 1)}, nil
}

// seenID returns the id of a cluster this node decided to join rather
// than bootstrap beside ("" if none; see SeenClusterFile).
func (c *clusterIdentity) seenID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen
}

// noteSeen records id as the cluster this node joins rather than
// bootstrap beside (SeenClusterFile), durably, before the node acts on it.
func (c *clusterIdentity) noteSeen(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == "" || id == c.seen {
		return nil
	}
	if err := writeIDFile(c.dir, SeenClusterFile, id); err != nil {
		return fmt.Errorf("write %s: %w", SeenClusterFile, err)
	}
	c.seen = id
	return nil
}

// get returns the cluster id ("" while none).
func (c *clusterIdentity) get() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// bootstrapped records the id this node bootstraps with, before Raft's
// BootstrapCluster writes any state.
func (c *clusterIdentity) bootstrapped(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiting = false
	return c.setLocked(id)
}

// joining records that this node will not bootstrap: it joins the cluster
// of a member that has state (or that the others bootstrap), so it may
// take that cluster's id when a member presents it.
func (c *clusterIdentity) joining() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiting = false
}

func (c *clusterIdentity) setLocked(id string) error {
	if id == c.id {
		return nil
	}
	if err := writeClusterID(c.dir, id); err != nil {
		return err
	}
	c.id = id
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return nil
}

// check is the hello's judge (transport.Hello.Check). inbound is true for
// a node that dialed us. It refuses:
//   - a peer without an ID, or with this node's own ID (two processes
//     started with one --id);
//   - a peer of another cluster (both ids set and different);
//   - while this node has no id: a peer that presents one if this node
//     has Raft state (made without an id: it belongs to an older cluster,
//     not to that one), or, inbound, if this node waits to bootstrap
//     (BootstrapExpect, no Raft state, not yet decided to join): a new
//     cluster must not be absorbed by an old one that still dials a dead
//     member's address. Outbound the waiting node goes on without taking
//     the id: it is only asking members for their state, and must learn
//     that one has some to decide to join;
//   - while this node has no id, inbound, a peer that is not in its gossip
//     pool: an old cluster that still dials a dead member's address is
//     not the cluster this node joins (it took the old cluster's id and
//     then its log as that dead member's, a voter with amnesia, when the
//     old leader's connection came before its own cluster's: seen in
//     busy-machine runs of TestNewClusterOnDeadMembersAddress).
//
// Otherwise a node without an id takes the peer's and writes it to disk
// first. Empty matches empty: clusters made by versions without cluster ids
// keep running without one.
func (c *clusterIdentity) check(p transport.Peer, inbound bool) error {
	if p.ID == "" {
		return errors.New("the node port needs the peer's node ID in its hello")
	}
	if p.ID == c.self {
		err := fmt.Errorf("node %s is also %s: two nodes run with the same ID; stop one and give each node a unique --id", p.ID, c.self)
		c.refused(p, err, true)
		return err
	}
	if c.settle != nil && c.get() == "" {
		c.settle() // outside the lock: judge no peer on half a gossip pool
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	own := c.id
	switch {
	case p.ClusterID == own, p.ClusterID == "":
		// Same cluster, or the peer has no id yet: it takes ours (or
		// refuses on its side).
		return nil
	case own != "":
		if inbound {
			// This node's log names the peer and leaves this node's data
			// dir alone. The answer names both nodes, not "you": the
			// dialer may be the misplaced node or a node of the healthy
			// cluster that dialed it (a member of its gossip pool), and
			// "your data dir …; start with an empty --data-dir" told the
			// healthy one's operator to wipe it.
			c.refusedLocked(p, fmt.Sprintf("refused node %s: its data dir belongs to cluster %s, ours is %s; %s must start with an empty --data-dir to join this cluster",
				p.ID, short(p.ClusterID), short(own), p.ID), true)
			return fmt.Errorf("node %s's data dir belongs to cluster %s, node %s's to cluster %s; to join %s's cluster, %s must start with an empty --data-dir; to join %s's, %s must",
				p.ID, short(p.ClusterID), c.self, short(own), c.self, p.ID, p.ID, c.self)
		}
		err := fmt.Errorf("node %s belongs to cluster %s, this node's data dir to cluster %s; to join that cluster start this node with an empty --data-dir",
			p.ID, short(p.ClusterID), short(own))
		c.refusedLocked(p, err.Error(), true)
		return err
	case c.hasState():
		err := fmt.Errorf("node %s has Raft state without a cluster id (made by an older leasenode, or copied), so it is not a member of cluster %s; to join that cluster start it with an empty --data-dir",
			c.self, short(p.ClusterID))
		c.refusedLocked(p, err.Error(), true)
		return err
	case c.seen != "" && p.ClusterID != c.seen:
		// It decided to join the cluster a member showed it (and may
		// have told others so): taking another one's id would make it
		// a voter of a cluster that serves the same keys beside that.
		err := fmt.Errorf("node %s decided to join cluster %s (a member of its gossip pool belonged to it; %s in its data dir), so it takes no member of cluster %s (node %s); to join %s instead, stop node %s and start it with an empty --data-dir",
			c.self, short(c.seen), SeenClusterFile, short(p.ClusterID), p.ID, short(p.ClusterID), c.self)
		c.refusedLocked(p, err.Error(), true)
		return err
	case c.waiting && inbound:
		err := fmt.Errorf("node %s is waiting to bootstrap a new cluster (--bootstrap-expect) and takes no member of cluster %s yet",
			c.self, short(p.ClusterID))
		c.refusedLocked(p, err.Error(), false)
		return err
	case c.waiting:
		return nil
	case inbound && c.isMember != nil && !c.isMember(p.ID):
		err := fmt.Errorf("node %s has no cluster id yet and takes one only from a member of its gossip pool; %s (cluster %s) is not one",
			c.self, p.ID, short(p.ClusterID))
		c.refusedLocked(p, err.Error(), false)
		return err
	}
	if c.mayTake != nil {
		if why := c.mayTake(); why != nil {
			err := fmt.Errorf("node %s has no cluster id yet and takes none from %s now: %v", c.self, p.ID, why)
			c.refusedLocked(p, err.Error(), false) // two clusters are logged loudly by mayTake
			return err
		}
	}
	if err := c.setLocked(p.ClusterID); err != nil {
		return fmt.Errorf("node %s cannot record cluster id %s: %v", c.self, short(p.ClusterID), err)
	}
	c.log.Info("joined cluster: took its id from a member", "cluster", p.ClusterID, "from", p.ID)
	return nil
}

// refusedBy is the Dialer's transport.Hello.Refused: a peer refused us.
//
// A refusal for another cluster is logged in this node's words ("this
// node"), naming each node's cluster and what each would do: which of
// the two is misplaced only the operator knows (both dial each other).
func (c *clusterIdentity) refusedBy(e *transport.RefusedError) {
	loud := !strings.Contains(e.Message, "waiting to bootstrap")
	msg := fmt.Sprintf("refused by %s: %s", e.PeerID, e.Message)
	if own := c.get(); own != "" && e.PeerClusterID != "" && e.PeerClusterID != own {
		msg = fmt.Sprintf("refused by %s: node %s's data dir belongs to cluster %s, this node's to cluster %s; to join this cluster, %s must start with an empty --data-dir; to join %s's, this node must",
			e.PeerID, e.PeerID, short(e.PeerClusterID), short(own), e.PeerID, e.PeerID)
	}
	c.refused(transport.Peer{ID: e.PeerID, ClusterID: e.PeerClusterID}, errors.New(msg), loud)
}

func (c *clusterIdentity) refused(p transport.Peer, err error, loud bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refusedLocked(p, err.Error(), loud)
}

// refusedLocked logs a refusal, msg in this node's words: loudly the
// first time for a peer and reason, at debug level after that (Raft
// redials every few hundred milliseconds).
func (c *clusterIdentity) refusedLocked(p transport.Peer, msg string, loud bool) {
	log := c.log.With("component", "node.trust", "peer", p.ID, "peer_cluster", p.ClusterID, "cluster", c.id)
	key := p.ID + "\x00" + msg
	if _, seen := c.logged[key]; seen {
		log.Debug("node-port connection refused", "reason", msg)
		return
	}
	if len(c.logged) >= maxLogged {
		clear(c.logged)
	}
	c.logged[key] = struct{}{}
	if loud {
		line := "REFUSED node-port connection: " + msg
		if rest, ok := strings.CutPrefix(msg, "refused "); ok { // it says what was refused
			line = "REFUSED " + rest
		}
		log.Error(line, "authenticated", p.Authenticated)
	} else {
		log.Info("node-port connection refused", "reason", msg)
	}
}

// short abbreviates a cluster id for messages (logs carry it in full).
func short(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

// bootstrapClusterID is the id every bootstrapping node computes from the
// same members: the hex SHA-256 of their sorted (ID, run) pairs. The runs
// (random per process start, from gossip) make it new for every cluster
// bootstrapped, even with the same IDs.
func bootstrapClusterID(members []member) string {
	pairs := make([]string, len(members))
	for i, m := range members {
		pairs[i] = m.ID + "\x00" + m.Run
	}
	sort.Strings(pairs)
	h := sha256.New()
	for _, p := range pairs {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// newClusterID returns a random cluster id (for a restore).
func newClusterID() string {
	b := make([]byte, sha256.Size)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// readClusterID reads ClusterIDFile from dir; "" if there is none.
func readClusterID(dir string) (string, error) {
	return readIDFile(dir, ClusterIDFile)
}

// readIDFile reads the one-line id file name from dir; "" if there is
// none. An id is at most 128 bytes: a longer file is damaged.
func readIDFile(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	id := strings.TrimSpace(string(b))
	if len(id) > 128 {
		return "", fmt.Errorf("the id in %s is %d bytes or longer: damaged? (delete it, or start with an empty data dir)", path, len(id))
	}
	return id, nil
}

// writeClusterID replaces ClusterIDFile in dir atomically and durably.
func writeClusterID(dir, id string) error {
	if err := writeIDFile(dir, ClusterIDFile, id); err != nil {
		return fmt.Errorf("write cluster id: %w", err)
	}
	return nil
}

// writeIDFile replaces the one-line file name in dir atomically and
// durably: write a temporary file, fsync it, rename it over the old one,
// fsync the directory.
func writeIDFile(dir, name, id string) error {
	path := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename: nothing to remove
	if _, err := tmp.WriteString(id + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Certificate expiry. A node certificate made by `leasenode tls cert
// create` is valid for a year (--days), and a node serves the one it
// loaded at start until it restarts: the day it expires, every peer and
// client refuses it, on every node made the same day at once (new-user
// review nu37). The node says so a month ahead, daily, and
// leasenode_tls_cert_expiry_timestamp_seconds shows it.

// certWarnAhead is how long before its certificate expires a node starts
// warning, and certWarnEvery how often it warns from then.
const (
	certWarnAhead = 30 * 24 * time.Hour
	certWarnEvery = 24 * time.Hour
)

// CertExpiry reports when the TLS certificate this node serves on its
// node port (and API) expires: the earliest NotAfter of the chain it
// presents. false without one from TLSFiles or ServerTLS (a cluster key's
// certificates are derived anew at every start).
func (n *Node) CertExpiry() (time.Time, bool) {
	if !n.cfg.TLSFiles.Enabled() && n.cfg.ServerTLS == nil {
		return time.Time{}, false
	}
	return certExpiry(n.nodeServerTLS)
}

// certExpiry returns the earliest NotAfter of c's certificates' chains.
func certExpiry(c *tls.Config) (time.Time, bool) {
	var first time.Time
	if c == nil {
		return first, false
	}
	for _, cert := range c.Certificates {
		for _, der := range cert.Certificate {
			x, err := x509.ParseCertificate(der)
			if err != nil {
				continue
			}
			if first.IsZero() || x.NotAfter.Before(first) {
				first = x.NotAfter
			}
		}
	}
	return first, !first.IsZero()
}

// watchCertExpiry warns, from certWarnAhead before the node's certificate
// expires, once at start and then every certWarnEvery, until the node
// stops.
func (n *Node) watchCertExpiry() {
	end, ok := n.CertExpiry()
	if !ok {
		return
	}
	what := "ServerTLS"
	if n.cfg.TLSFiles.Enabled() {
		what = n.cfg.TLSFiles.CertFile
	}
	for {
		left := time.Until(end)
		wait := left - certWarnAhead
		if wait <= 0 {
			msg := fmt.Sprintf("this node's TLS certificate expires in %v: peers and clients refuse it from then; make a new one (`leasenode tls cert create --node %s ...`, valid for --days) and restart this node with it before then", left.Round(time.Hour), n.cfg.ID)
			if left <= 0 {
				msg = fmt.Sprintf("this node's TLS certificate expired %v ago: peers and clients refuse it; make a new one (`leasenode tls cert create --node %s ...`) and restart this node with it", (-left).Round(time.Minute), n.cfg.ID)
			}
			if left <= 0 {
				n.log.Error(msg, "cert", what, "not_after", end.UTC().Format(time.RFC3339))
				return
			}
			n.log.Warn(msg, "cert", what, "not_after", end.UTC().Format(time.RFC3339))
			wait = min(certWarnEvery, left)
		}
		select {
		case <-time.After(wait):
		case <-n.ctx.Done():
			return
		}
	}
}
