package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leasenode/leasenode/internal/buildinfo"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/transport/pb"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr                   string
	tlsCA, tlsCert, tlsKey string
	token, tokenFile       string
	output                 string
	timeout, dialTimeout   time.Duration
	fs                     *pflag.FlagSet
}

func (c *clientFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	c.fs = fs
	fs.StringVar(&c.addr, "addr", "127.0.0.1:7402", "client API addresses of cluster nodes, comma-separated")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "CA bundle (PEM) to verify the nodes' certificates (enables TLS)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "client certificate (PEM), if the cluster requires mutual TLS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	fs.StringVar(&c.token, "auth-token", "", "auth token of the cluster (the agents' --auth-token; shows in ps: prefer --auth-token-file or the environment)")
	fs.StringVar(&c.tokenFile, "auth-token-file", "", "file holding the --auth-token (one line)")
	fs.StringVarP(&c.output, "output", "o", "table", "output format: table or json")
	durationVar(fs, &c.timeout, "timeout", 10*time.Second, "bound on each request, including waiting for a leader (a wait for a held key is --wait's, where there is one)")
	durationVar(fs, &c.dialTimeout, "dial-timeout", 2*time.Second, "how long to keep trying to reach some node at --addr (agents starting, a node restarting) before giving up")
	completeWords(cmd, "output", "table", "json")
	for _, f := range []string{"tls-cert", "tls-key", "tls-ca"} {
		_ = cmd.MarkFlagFilename(f, "pem")
	}
	_ = cmd.MarkFlagFilename("auth-token-file")
}

func (c *clientFlags) check() error {
	if c.output != "table" && c.output != "json" {
		return usagef("-o %q: want table or json", c.output)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return &usageError{msg: "--tls-cert and --tls-key go together", hint: "give both, a client certificate and its key (`leasenode tls cert create --client` makes them), or neither"}
	}
	if c.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	if c.dialTimeout <= 0 {
		return usagef("--dial-timeout must be positive")
	}
	tok, err := authToken(c.fs, c.token, c.tokenFile)
	if err != nil {
		return err
	}
	c.token, c.tokenFile = tok, ""
	return nil
}

func (c *clientFlags) json() bool { return c.output == "json" }

func (c *clientFlags) addrs() []string {
	var out []string
	for _, a := range strings.Split(c.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func (c *clientFlags) tlsConfig() (*tls.Config, error) {
	if c.tlsCA == "" && c.tlsCert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.tlsCA != "" {
		pem, err := os.ReadFile(c.tlsCA)
		if err != nil {
			return nil, usagef("--tls-ca: %v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, usagef("--tls-ca %s: no PEM certificate in it", c.tlsCA)
		}
	}
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, usagef("--tls-cert/--tls-key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// dial returns a lease client for the cluster.
func (c *clientFlags) dial(ctx context.Context, opts ...lease.Option) (*lease.Client, error) {
	t, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	if t != nil {
		opts = append(opts, lease.WithTLS(t))
	}
	if c.token != "" {
		opts = append(opts, lease.WithAuthToken(c.token))
	}
	// A leaderless cluster fails a request after --timeout, not never.
	opts = append(opts, lease.WithRetryTimeout(c.timeout))
	dctx, cancel := c.dialContext(ctx)
	defer cancel()
	cl, err := lease.Dial(dctx, c.addrs(), opts...)
	if err != nil {
		return nil, err
	}
	return cl, nil
}

// dialContext bounds reaching a first node by --dial-timeout (and
// --timeout): a mistyped --addr is refused at once, every time, and waiting
// the whole --timeout for it to start listening only delays the answer.
// Any node answers without a leader, so a cluster that lost its quorum is
// still reached, and its requests wait --timeout as before.
func (c *clientFlags) dialContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := min(c.timeout, c.dialTimeout)
	return context.WithTimeoutCause(ctx, d,
		fmt.Errorf("no node at --addr %s answered within %v (--dial-timeout; raise it if the agents are still starting)", c.addr, d))
}

// contact waits, up to --dial-timeout, until some node at --addr answers.
func (c *clientFlags) contact(ctx context.Context, api *lease.Remote) error {
	dctx, cancel := c.dialContext(ctx)
	defer cancel()
	_, err := retry(dctx, c, api.Status)
	return err
}

// api returns a raw API client for the cluster.
func (c *clientFlags) api() (*lease.Remote, error) {
	t, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	var opts []lease.Option
	if t != nil {
		opts = append(opts, lease.WithTLS(t))
	}
	if c.token != "" {
		opts = append(opts, lease.WithAuthToken(c.token))
	}
	cl, err := lease.NewRemote(c.addrs(), opts...)
	if err != nil {
		return nil, usagef("--addr: %v", err)
	}
	return cl, nil
}

// retry runs one request under lease's retry policy, bounded by
// --timeout: through an election it reaches the new leader; without a
// leader it fails with lease.ErrNoLeader (exit 3) when --timeout is up.
func retry[T any](ctx context.Context, cf *clientFlags, f func(context.Context) (T, error)) (T, error) {
	var v T
	err := lease.RetryPolicy{Timeout: cf.timeout}.Do(ctx, true, func(ctx context.Context) error {
		var err error
		v, err = f(ctx)
		return err
	})
	if err != nil {
		err = cf.explain(err)
	}
	return v, err
}

// listAll reads every holding under prefix, page by page: each holder of
// a shared or semaphore key is one (a server without lock shapes sends
// only one record per key).
func listAll(ctx context.Context, cf *clientFlags, r *lease.Remote, prefix string, stale bool) ([]*pb.Lease, error) {
	var out []*pb.Lease
	after := ""
	for {
		resp, err := retry(ctx, cf, func(ctx context.Context) (*pb.ListResponse, error) {
			return r.List(ctx, &pb.ListRequest{Prefix: prefix, After: after, Limit: 1000, Stale: stale})
		})
		if err != nil {
			return nil, err
		}
		page := resp.GetHoldings()
		if len(page) == 0 {
			page = resp.GetLeases()
		}
		out = append(out, page...)
		if resp.GetNext() == "" {
			return out, nil
		}
		after = resp.GetNext()
	}
}

// request opens the client API and a context bounded by --timeout and
// cancelled by a signal, once some node at --addr answers (what names
// the request in the error if none does); call done when finished.
func (c *clientFlags) request(ctx context.Context, sig *signals, what string) (context.Context, *lease.Remote, func(), error) {
	api, err := c.api()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := sig.cancelOn(ctx)
	ctx, cancelT := c.withTimeout(ctx)
	done := func() { cancelT(); cancel(); api.Close() }
	if err := c.contact(ctx, api); err != nil {
		done()
		return nil, nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return ctx, api, done, nil
}

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// leaseJSON is a lease record in -o json output. Mode is how the holding
// shares its key: "exclusive", "shared" (a reader) or "semaphore" (one of
// Limit slots).
type leaseJSON struct {
	Key       string  `json:"key"`
	State     string  `json:"state"`
	Mode      string  `json:"mode"`
	Limit     uint32  `json:"limit,omitempty"`
	Holder    string  `json:"holder,omitempty"`
	Token     uint64  `json:"token"`
	TTL       float64 `json:"ttl_seconds"`
	Remaining float64 `json:"remaining_seconds"`
	// LockDelay is the holding's lock-delay: how long the key stays
	// blocked after an expiry without release (absent when none).
	LockDelay float64 `json:"lock_delay_seconds,omitempty"`
	Value     string  `json:"value,omitempty"`
}

func leaseOut(l *pb.Lease) leaseJSON {
	state := "held"
	if l.GetState() == pb.LeaseState_LEASE_STATE_LOCK_DELAY {
		state = "lock-delay"
	}
	o := leaseJSON{Key: l.GetKey(), State: state, Mode: "exclusive", Holder: l.GetHolder(), Token: l.GetToken(),
		TTL: l.GetTtl().AsDuration().Seconds(), Remaining: l.GetRemaining().AsDuration().Seconds(),
		LockDelay: l.GetLockDelay().AsDuration().Seconds(), Value: string(l.GetValue())}
	switch l.GetMode() {
	case pb.LeaseMode_LEASE_MODE_SHARED:
		o.Mode = "shared"
	case pb.LeaseMode_LEASE_MODE_SEMAPHORE:
		o.Mode, o.Limit = "semaphore", l.GetLimit()
	}
	return o
}

// modeColumn is a holding's MODE in a table: exclusive, shared, or sem/N
// for one of N slots; it tells the rows of a key's several holders from a
// double grant.
func modeColumn(o leaseJSON) string {
	if o.Mode == "semaphore" {
		return fmt.Sprintf("sem/%d", o.Limit)
	}
	return o.Mode
}

// printLeases prints ls as a table on out, and the notes that explain
// some of its cells on notes (stderr: scripts that parse the table got an
// extra line after it; new-user review). stale says they came from a
// --stale read: a held lease with no time left there is one the node's
// own estimate of the leader's clock has passed, which no leader has
// reaped (or the node has not heard of its extends): its REMAINING is
// unknown, not 0s, and a note says why (new-user review L7: a --stale
// read without a quorum showed "held ... 0s").
func printLeases(out, notes io.Writer, ls []*pb.Lease, stale bool) {
	w := table(out)
	fmt.Fprintln(w, "KEY\tSTATE\tMODE\tHOLDER\tTOKEN\tTTL\tLOCK-DELAY\tREMAINING\tVALUE")
	unknown, delayed := false, false
	for _, l := range ls {
		o := leaseOut(l)
		remaining := l.GetRemaining().AsDuration().Round(time.Millisecond).String()
		if stale && l.GetState() == pb.LeaseState_LEASE_STATE_HELD && l.GetRemaining().AsDuration() <= 0 {
			remaining, unknown = "unknown", true
		}
		delayed = delayed || l.GetState() == pb.LeaseState_LEASE_STATE_LOCK_DELAY
		// LOCK-DELAY: text output hid it, and a key in its lock-delay
		// showed TTL 2s beside REMAINING 2.446s, the delay's time left
		// (new-user review).
		lockDelay := "-"
		if d := l.GetLockDelay().AsDuration(); d > 0 {
			lockDelay = d.String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%v\t%s\t%s\t%s\n", o.Key, o.State, modeColumn(o), dash(o.Holder), o.Token,
			l.GetTtl().AsDuration(), lockDelay, remaining, dash(o.Value))
	}
	w.Flush()
	if delayed {
		fmt.Fprintln(notes, "REMAINING of a key in lock-delay is what is left of its LOCK-DELAY: the key can be acquired after it (the lease expired without a release)")
	}
	if unknown {
		fmt.Fprintln(notes, "REMAINING unknown: by this node's clock the lease has expired, but no leader has reaped it and it may have been extended since (--stale reads the node's own copy; without --stale a leader answers)")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

const getSynopsis = `Shows the lease on KEY: holder, fencing token, TTL, lock-delay and time left (by the
leader's clock; advisory), one row for each holder of a shared or
semaphore key (MODE: exclusive, shared, or sem/N for one of N slots). A
free key prints "KEY is free" (exit 0); with --stale, "KEY is free as far as
NODE knows": the node asked may be behind the leader.`

func (ap *app) getCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "get KEY [--stale] [flags]", Short: "show the lease on a key", Long: getSynopsis, Args: nargs(1, 1)}
	cf := &clientFlags{}
	cf.register(cmd)
	stale := cmd.Flags().Bool("stale", false, "read from the node asked, without going through the leader")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runGet(ctx, ap.sig, cf, pos, stale)
	})
	return cmd
}

func runGet(ctx context.Context, sig *signals, cf *clientFlags, pos []string, stale *bool) error {
	ctx, api, done, err := cf.request(ctx, sig, fmt.Sprintf("get %q", pos[0]))
	if err != nil {
		return err
	}
	defer done()
	resp, err := retry(ctx, cf, func(ctx context.Context) (*pb.GetResponse, error) {
		return api.Get(ctx, &pb.GetRequest{Key: pos[0], Stale: *stale})
	})
	if err != nil {
		return fmt.Errorf("get %q: %w", pos[0], err)
	}
	// Every holding of the key (each holder of a shared or semaphore
	// key); a server without lock shapes sends only the lease.
	holdings := resp.GetHoldings()
	if len(holdings) == 0 && resp.GetLease() != nil {
		holdings = []*pb.Lease{resp.GetLease()}
	}
	if cf.json() {
		if !resp.GetFound() {
			free := map[string]any{"key": pos[0], "state": "free"}
			if *stale {
				free["stale"], free["node"] = true, resp.GetHeader().GetNodeId()
			}
			printJSON(free)
			return nil
		}
		// The first holding's fields, as before, and every holding.
		out := struct {
			leaseJSON
			Holdings []leaseJSON `json:"holdings"`
		}{leaseJSON: leaseOut(resp.GetLease())}
		for _, l := range holdings {
			out.Holdings = append(out.Holdings, leaseOut(l))
		}
		printJSON(out)
		return nil
	}
	if !resp.GetFound() {
		printFree(os.Stdout, pos[0], *stale, resp.GetHeader().GetNodeId())
		return nil
	}
	printLeases(os.Stdout, os.Stderr, holdings, *stale)
	return nil
}

// printFree says key is free: as the leader says, or, from a --stale
// read, as far as the node asked (node, its ID) knows. A lagging follower
// (the two others killed) said "q/long is free" of a key the two others
// had committed a 60 s lease on (new-user review).
func printFree(out io.Writer, key string, stale bool, node string) {
	if !stale {
		fmt.Fprintf(out, "%s is free\n", key)
		return
	}
	if node == "" {
		node = "the node asked"
	}
	fmt.Fprintf(out, "%s is free as far as %s knows (a stale read: %s may be behind the leader; without --stale a leader answers)\n", key, node, node)
}

const listSynopsis = `Lists the leases whose keys start with PREFIX (all without one), in key order:
one row for each holder of a shared or semaphore key (MODE: exclusive,
shared, or sem/N for one of N slots).`

func (ap *app) listCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "list [PREFIX] [--stale] [flags]", Short: "list leases under a prefix", Long: listSynopsis, Args: nargs(0, 1)}
	cf := &clientFlags{}
	cf.register(cmd)
	stale := cmd.Flags().Bool("stale", false, "read from the node asked, without going through the leader")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runList(ctx, ap.sig, cf, pos, stale)
	})
	return cmd
}

func runList(ctx context.Context, sig *signals, cf *clientFlags, pos []string, stale *bool) error {
	prefix := ""
	if len(pos) == 1 {
		prefix = pos[0]
	}
	ctx, api, done, err := cf.request(ctx, sig, fmt.Sprintf("list %q", prefix))
	if err != nil {
		return err
	}
	defer done()
	ls, err := listAll(ctx, cf, api, prefix, *stale)
	if err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	if cf.json() {
		out := make([]leaseJSON, 0, len(ls))
		for _, l := range ls {
			out = append(out, leaseOut(l))
		}
		printJSON(out)
		return nil
	}
	printLeases(os.Stdout, os.Stderr, ls, *stale)
	return nil
}

const releaseSynopsis = `Releases the lease on KEY if H holds it with fencing token T (as printed by
acquire). H is the full holder acquire printed, NAME#incarnation (lock
passes it to its command as LEASE_HOLDER), not the --holder name alone. A
lease that holds several keys (acquire --key) is released whole, by any of
its keys. Releasing a lease that expired or passed to someone else changes
nothing and exits 1.`

func (ap *app) releaseCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "release KEY --token T --holder H [flags]", Short: "release a lease by key, token and holder", Long: releaseSynopsis, Args: nargs(1, 1)}
	cf := &clientFlags{}
	cf.register(cmd)
	token := cmd.Flags().Uint64("token", 0, "fencing token of the lease (required)")
	holder := cmd.Flags().String("holder", "", "holder of the lease as acquire printed it, NAME#incarnation (required)")
	perInvocation(cmd.Flags(), "token", "holder")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runRelease(ctx, ap.sig, cf, pos, token, holder)
	})
	return cmd
}

func runRelease(ctx context.Context, sig *signals, cf *clientFlags, pos []string, token *uint64, holder *string) error {
	if *token == 0 || *holder == "" {
		return usagef("release needs --token and --holder (acquire prints both)")
	}
	ctx, api, done, err := cf.request(ctx, sig, fmt.Sprintf("release %q", pos[0]))
	if err != nil {
		return err
	}
	defer done()
	resp, err := retry(ctx, cf, func(ctx context.Context) (*pb.ReleaseResponse, error) {
		return api.Release(ctx, &pb.ReleaseRequest{Key: pos[0], Holder: *holder, Token: *token})
	})
	if err != nil {
		return fmt.Errorf("release %q: %w", pos[0], err)
	}
	if cf.json() {
		printJSON(map[string]any{"key": pos[0], "token": *token, "released": resp.GetReleased()})
	}
	if !resp.GetReleased() {
		now := "it expired, was released, or another holder has it"
		hint := ""
		if g, err := api.Get(ctx, &pb.GetRequest{Key: pos[0]}); err == nil {
			var hs []string
			for _, l := range g.GetHoldings() {
				hs = append(hs, fmt.Sprintf("%s with token %d", l.GetHolder(), l.GetToken()))
				if !strings.Contains(*holder, "#") && strings.HasPrefix(l.GetHolder(), *holder+"#") {
					hint = fmt.Sprintf("\n  hint: the holder is the full name acquire printed, with its #… incarnation: --holder %s", strconv.Quote(l.GetHolder()))
				}
			}
			switch {
			case len(hs) > 0:
				now = "it is held by " + strings.Join(hs, ", ")
			case !g.GetFound():
				now = "nobody holds it now"
			}
		}
		return &exitError{code: exitFailure, msg: fmt.Sprintf("%q was not released: %s does not hold it with token %d (%s)%s", pos[0], *holder, *token, now, hint)}
	}
	if !cf.json() {
		fmt.Printf("released %s (token %d)\n", pos[0], *token)
	}
	return nil
}

const membersSynopsis = `Lists the nodes the cluster's gossip knows, with their Raft role.`

func (ap *app) membersCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "members [flags]", Short: "list the nodes of the cluster, with their versions", Long: membersSynopsis, Args: nargs(0, 0)}
	cf := &clientFlags{}
	cf.register(cmd)
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runMembers(ctx, ap.sig, cf, pos)
	})
	return cmd
}

func runMembers(ctx context.Context, sig *signals, cf *clientFlags, pos []string) error {
	ctx, api, done, err := cf.request(ctx, sig, "members")
	if err != nil {
		return err
	}
	defer done()
	resp, err := retry(ctx, cf, api.Members)
	if err != nil {
		return fmt.Errorf("members: %w", err)
	}
	statuses := statusOfAll(ctx, api, resp.GetMembers())
	// No leader: the table's LEADER column is empty, which read as
	// nothing to worry about with exit 0 (new-user review). members
	// still exits 0 (it lists what the node knows); stderr says so.
	leader := slices.ContainsFunc(resp.GetMembers(), (*pb.Member).GetLeader)
	defer func() {
		if !leader {
			fmt.Fprintf(os.Stderr, "leasenode members: warning: node %s knows no leader: the cluster cannot serve requests until a quorum of its voters reach each other and elect one (STATUS above shows which are down; `leasenode status` shows each node's Raft state)\n",
				dash(resp.GetHeader().GetNodeId()))
		}
	}()
	if cf.json() {
		type member struct {
			ID      string `json:"id"`
			API     string `json:"api"`
			Raft    string `json:"raft"`
			Gossip  string `json:"gossip"`
			Status  string `json:"status"`
			Role    string `json:"role"`
			Leader  bool   `json:"leader"`
			Version string `json:"version,omitempty"`
		}
		out := []member{}
		for i, m := range resp.GetMembers() {
			out = append(out, member{m.GetId(), m.GetApiAddr(), m.GetRaftAddr(), m.GetGossipAddr(), m.GetStatus(), m.GetRaft(), m.GetLeader(),
				statuses[i].version()})
		}
		printJSON(out)
		return nil
	}
	w := table(os.Stdout)
	fmt.Fprintln(w, "ID\tAPI\tRAFT\tGOSSIP\tSTATUS\tROLE\tLEADER\tVERSION")
	for i, m := range resp.GetMembers() {
		leader := ""
		if m.GetLeader() {
			leader = "*"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.GetId(), dash(m.GetApiAddr()), m.GetRaftAddr(), m.GetGossipAddr(), m.GetStatus(), m.GetRaft(), leader,
			dash(statuses[i].version()))
	}
	w.Flush()
	return nil
}

// nodeStatus is one member's Status reply, or why there is none.
type nodeStatus struct {
	resp *pb.StatusResponse
	err  string
}

// apiNotConfirmed is the row of a live member whose API address the node
// asked has not confirmed yet; statusNotConfirmedNote explains it.
const apiNotConfirmed = "API address not confirmed yet"

// statusNotConfirmedNote explains apiNotConfirmed rows on stderr.
const statusNotConfirmedNote = "a member shown with \"" + apiNotConfirmed + "\" is one whose client API address the node that answered has not yet checked with the member itself (the nodes do within a second or two of a start or a join): run status again"

// unconfirmedAPI says why member m, listed without an API address, is
// not asked for its state.
func unconfirmedAPI(m *pb.Member) string {
	switch st := m.GetStatus(); st {
	case "alive", "":
		return apiNotConfirmed
	default:
		return "no API address: gossip has it " + st
	}
}

// version is the member's build, "?" if it could not be asked, "" from a
// version that predates the field.
func (s nodeStatus) version() string {
	if s.resp == nil {
		return "?"
	}
	if v := s.resp.GetVersion(); v != "" {
		return v
	}
	return "(older than " + buildinfo.Get().Short() + "?)"
}

// statusOfAll asks every member with a confirmed API address for its
// Status, all at once, each bounded by 2 s. A reply from another node
// than the member (its address was taken over) is no status of the
// member's: it says who answered instead.
func statusOfAll(ctx context.Context, api *lease.Remote, members []*pb.Member) []nodeStatus {
	out := make([]nodeStatus, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		if m.GetApiAddr() == "" {
			out[i].err = unconfirmedAPI(m)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			s, err := api.StatusAt(sctx, m.GetApiAddr())
			switch {
			case err != nil:
				out[i].err = "unreachable"
			case s.GetNodeId() != "" && s.GetNodeId() != m.GetId():
				// Another node took the address (a restart under another
				// --id): its data is not this member's.
				out[i].err = "address now answered by " + s.GetNodeId()
			default:
				out[i].resp = s
			}
		}()
	}
	wg.Wait()
	return out
}

// statusElectionWait is how long status waits for a leader in a cluster
// that had one: a few election timeouts at default timing.
const statusElectionWait = 3 * time.Second

// statusRoundLeft is the least of --timeout a round of status's polling
// begins with: a round begun with a few milliseconds left ended with its
// Members call cut by the deadline, and status reported that ("no leader
// reachable (gave up after 3ms: --timeout 4s ran out)") instead of what
// the rounds before had seen (not bootstrapped, no leader; new-user
// review).
const statusRoundLeft = 500 * time.Millisecond

// pollAgain sleeps d and reports whether status should poll again: false
// if ctx ends first, or would leave less than statusRoundLeft for the
// next round.
func pollAgain(ctx context.Context, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d+statusRoundLeft {
		return false
	}
	return ctxtime.Sleep(ctx, d)
}

// statusConfirmWait is how long status waits, once a leader is known, for
// the API addresses of live members to be confirmed (a cluster just
// started).
const statusConfirmWait = 2 * time.Second

const statusSynopsis = `Asks every member (found through the first reachable --addr) for its Raft
state, indexes and lease counts, and prints the cluster id each node's data
belongs to. A member whose API address no node has confirmed (over
authenticated node RPC) is listed but not asked: "API address not confirmed
yet" just after a start, which status waits up to 2 s to clear. Waits for a
leader (up to --timeout while the cluster has never elected one, 3 s once it
has) and exits 3 if no node knows one.

STATE is the node's Raft role. "leader (serving)" is a leader that has
established its term (its first entries of the term applied) and answers
requests; a leader shown without "(serving)" was just elected and is still
establishing it (requests wait for it, briefly). "(cannot commit)" and
"(own disk hangs)" replace "(serving)" for a leader that cannot serve, with
why below the table.

status is informational: it exits 0 while some node knows a leader, even
with other members shown unreachable (the cluster serves while a quorum
does; stderr then says how many were not heard from). The check is "leasenode
health --addr API" for each agent: it exits 0 only when that agent is
ready, 1 when it is not, 3 when it cannot be reached.`

func (ap *app) statusCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "status [flags]", Short: "show every node's Raft state, lease counts and version", Long: statusSynopsis, Args: nargs(0, 0)}
	cf := &clientFlags{}
	cf.register(cmd)
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runStatus(ctx, ap.sig, cf, pos)
	})
	return cmd
}

func runStatus(ctx context.Context, sig *signals, cf *clientFlags, pos []string) error {
	ctx, api, done, err := cf.request(ctx, sig, "status")
	if err != nil {
		return err
	}
	defer done()
	type row struct {
		ID      string `json:"id"`
		API     string `json:"api"`
		Error   string `json:"error,omitempty"`
		State   string `json:"raft_state,omitempty"`
		Serving bool   `json:"serving"`
		// CannotCommit: a leader that has committed nothing for longer
		// than its stall bound says why (acquires there fail).
		CannotCommit string `json:"cannot_commit,omitempty"`
		// OwnDiskHung: a node (leader or not) whose own Raft log
		// write has not returned says how long it has waited, and
		// where (it applies nothing, serves as leader no longer).
		OwnDiskHung string `json:"own_disk_hung,omitempty"`
		Leader      string `json:"leader,omitempty"`
		Term        uint64 `json:"term"`
		Epoch       uint64 `json:"epoch"`
		Commit      uint64 `json:"commit_index"`
		Applied     uint64 `json:"applied_index"`
		LastIndex   uint64 `json:"last_index"`
		Leases      uint64 `json:"leases"`
		Delayed     uint64 `json:"delayed"`
		Waiters     uint64 `json:"waiters"`
		ClusterID   string `json:"cluster_id,omitempty"`
		Version     string `json:"version,omitempty"`
	}
	var (
		rows                 []row
		leaderKnown, hadTerm bool
	)
	// Until some node knows a leader, or --timeout: agents just started
	// take an election to agree on one, and status is how scripts wait
	// for a cluster. A cluster that had a leader (a term) and has none
	// gets statusElectionWait: an election takes a second or two, a lost
	// quorum waits for ever, and the table says which nodes answer.
	start := time.Now()
	for {
		mem, err := retry(ctx, cf, api.Members)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		rows, leaderKnown = nil, false
		statuses := statusOfAll(ctx, api, mem.GetMembers())
		for i, m := range mem.GetMembers() {
			r := row{ID: m.GetId(), API: m.GetApiAddr()}
			s := statuses[i].resp
			if s == nil {
				r.Error = statuses[i].err
				rows = append(rows, r)
				continue
			}
			r.Version = statuses[i].version()
			h := s.GetHeader()
			r.State, r.Serving, r.Leader = s.GetRaftState(), s.GetServing(), h.GetLeaderId()
			r.Term, r.Epoch, r.Commit, r.Applied, r.LastIndex = s.GetTerm(), h.GetEpoch(), s.GetCommitIndex(), h.GetAppliedIndex(), s.GetLastIndex()
			r.Leases, r.Delayed, r.Waiters = s.GetLeases(), s.GetDelayed(), s.GetWaiters()
			r.ClusterID = s.GetClusterId()
			r.CannotCommit = s.GetCannotCommit()
			r.OwnDiskHung = s.GetOwnDiskHung()
			leaderKnown = leaderKnown || r.Leader != ""
			hadTerm = hadTerm || r.Term > 0
			rows = append(rows, r)
		}
		// A leader is known: still wait up to statusConfirmWait from the
		// start for live members whose API address is not confirmed yet
		// (just after a start the nodes confirm each other within a
		// second or two, and the first status showed a row without its
		// state; new-user review).
		waitConfirm := false
		for _, st := range statuses {
			waitConfirm = waitConfirm || st.err == apiNotConfirmed
		}
		if leaderKnown && (!waitConfirm || time.Since(start) >= statusConfirmWait) ||
			!leaderKnown && hadTerm && time.Since(start) >= statusElectionWait || !pollAgain(ctx, 200*time.Millisecond) {
			break
		}
	}
	// Not bootstrapped: some node answered, and none has Raft state (a
	// term, a committed entry).
	answered, bootstrapped := false, false
	for _, r := range rows {
		answered = answered || r.Error == ""
		bootstrapped = bootstrapped || r.Error == "" && (r.Term > 0 || r.Commit > 0)
	}
	bootstrapped = bootstrapped || !answered
	if cf.json() {
		printJSON(rows)
	} else {
		w := table(os.Stdout)
		fmt.Fprintln(w, "NODE\tAPI\tSTATE\tLEADER\tTERM\tEPOCH\tCOMMIT\tAPPLIED\tLEASES\tDELAYED\tWAITERS\tVERSION")
		for _, r := range rows {
			if r.Error != "" {
				fmt.Fprintf(w, "%s\t%s\t%s\t\t\t\t\t\t\t\t\t\n", r.ID, dash(r.API), r.Error)
				continue
			}
			state := strings.ToLower(r.State)
			switch {
			case r.OwnDiskHung != "":
				state += " (own disk hangs)" // why: below the table
			case r.CannotCommit != "":
				state += " (cannot commit)" // why: below the table
			case r.Serving:
				state += " (serving)"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", r.ID, r.API, state, dash(r.Leader),
				r.Term, r.Epoch, r.Commit, r.Applied, r.Leases, r.Delayed, r.Waiters, r.Version)
		}
		w.Flush()
		// One line per cluster id: more than one means a node whose data
		// belongs to another cluster (the nodes refuse each other).
		var ids []string
		byID := map[string][]string{}
		for _, r := range rows {
			if r.Error == "" {
				if byID[r.ClusterID] == nil {
					ids = append(ids, r.ClusterID)
				}
				byID[r.ClusterID] = append(byID[r.ClusterID], r.ID)
			}
		}
		if len(ids) > 0 {
			fmt.Println()
		}
		// One line per version while they differ: a rolling upgrade is
		// done when this line is gone and VERSION is the new one everywhere.
		var versions []string
		byVersion := map[string][]string{}
		for _, r := range rows {
			if r.Error == "" {
				if byVersion[r.Version] == nil {
					versions = append(versions, r.Version)
				}
				byVersion[r.Version] = append(byVersion[r.Version], r.ID)
			}
		}
		// A leader that cannot commit refuses every write: say why
		// (new-user review M4: status said "(serving)" meanwhile).
		for _, r := range rows {
			if r.OwnDiskHung != "" {
				fmt.Printf("%s: %s\n", r.ID, r.OwnDiskHung)
			} else if r.CannotCommit != "" {
				fmt.Printf("%s: %s\n", r.ID, r.CannotCommit)
			}
		}
		if len(versions) > 1 {
			var parts []string
			for _, v := range versions {
				parts = append(parts, v+" on "+strings.Join(byVersion[v], ", "))
			}
			fmt.Printf("mixed versions (an upgrade in progress?): %s\n", strings.Join(parts, "; "))
		}
		for _, id := range ids {
			shown := id
			if shown == "" {
				shown = "(none: made by a version without cluster ids)"
				if !bootstrapped {
					shown = "(none yet: not bootstrapped)"
				}
			}
			if len(ids) == 1 {
				fmt.Printf("cluster %s\n", shown)
			} else {
				fmt.Printf("cluster %s: %s\n", shown, strings.Join(byID[id], ", "))
			}
		}
	}
	silent := 0
	for _, r := range rows {
		if r.Error != "" {
			silent++
		}
	}
	if silent > 0 && leaderKnown {
		// Exit 0 still: the cluster serves (new-user review: a node shown
		// unreachable with exit 0 looked like a missed failure).
		fmt.Fprintf(os.Stderr, "leasenode status: %d of %d members are shown without their state (above: why); status exits 0 while a node knows a leader: check each agent with `leasenode health --addr API`\n",
			silent, len(rows))
		for _, r := range rows {
			if r.Error == apiNotConfirmed {
				fmt.Fprintf(os.Stderr, "leasenode status: %s\n", statusNotConfirmedNote)
				break
			}
		}
	}
	if !leaderKnown {
		if !bootstrapped {
			return &exitError{code: exitUnreachable, msg: "no node knows a leader: the cluster has not bootstrapped yet (its agents wait for --bootstrap-expect nodes to see each other through --join; their logs say how many they see)"}
		}
		n := 0
		for _, r := range rows {
			if r.Error == "" {
				n++
			}
		}
		return &exitError{code: exitUnreachable, msg: fmt.Sprintf("no node knows a leader: %d of %d members answered (a quorum of voters must reach each other to elect one; an election in progress takes a second or two)", n, len(rows))}
	}
	return nil
}

const watchSynopsis = `Prints the current leases under PREFIX (held, or lock-delay for a key in
its lock-delay), then every change (granted, released, expired, freed) as
the cluster applies it, until interrupted. With -o json, one JSON object
per line: time, type (the same words), index, key, holder, token, value,
and current (true for the leases listed at the start).`

func (ap *app) watchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "watch [PREFIX] [flags]", Short: "stream lease changes under a prefix", Long: watchSynopsis, Args: nargs(0, 1)}
	cf := &clientFlags{}
	cf.register(cmd)
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runWatch(ctx, ap.sig, cf, pos)
	})
	return cmd
}

// watchSeen skips what a watch started again repeats. A stream that broke
// is watched again, perhaps through a node that has not applied as much
// yet: its listing and first events may be older than what the streams
// before showed (a key released, then "granted" again), so its events at
// or below the highest index shown before it are skipped. (Within a
// stream the listing comes in key order, not index order: nothing of the
// stream itself is skipped.) After a reset the state is listed afresh.
//
// It also keeps the holdings shown as held, so that one that ended while
// no stream was open (its release went to no stream) is shown as ended
// when the next stream's listing, complete at its Listed event, lacks it.
type watchSeen struct {
	seen    uint64 // the highest index shown
	floor   uint64 // seen when the current stream started
	streams int
	held    map[string]lease.Event // shown as held, by key and token
	listed  map[string]bool        // the current stream's listing so far
}

// restart is called as a new stream starts.
func (w *watchSeen) restart() {
	w.floor = w.seen
	w.streams++
	w.listed = map[string]bool{}
	if w.held == nil {
		w.held = map[string]lease.Event{}
	}
}

func holdingID(e lease.Event) string { return e.Key + "\x00" + strconv.FormatUint(e.Token, 10) }

// track notes e in the holdings shown and returns those that ended
// between streams (at the Listed event of any stream but the first: shown
// held, granted at or before the listing's index, and not listed), in key
// order.
func (w *watchSeen) track(e lease.Event) []lease.Event {
	switch e.Type {
	case lease.Granted:
		if e.Current {
			w.listed[holdingID(e)] = true
		}
		w.held[holdingID(e)] = e
	case lease.Released, lease.Expired:
		if h, ok := w.held[holdingID(e)]; ok && e.Current {
			// The listing names a holding shown as held as expired
			// into its lock-delay: it ended while no stream was open.
			delete(w.held, holdingID(e))
			return []lease.Event{h}
		}
		delete(w.held, holdingID(e))
	case lease.Listed:
		if w.streams == 1 {
			return nil
		}
		var ended []lease.Event
		for id, h := range w.held {
			// A grant after the listing's index may just not have
			// reached the node serving this stream yet (its event
			// comes later): not ended.
			if !w.listed[id] && h.Token <= e.Index {
				ended = append(ended, h)
				delete(w.held, id)
			}
		}
		slices.SortFunc(ended, func(a, b lease.Event) int { return strings.Compare(a.Key, b.Key) })
		return ended
	}
	return nil
}

// show reports whether e is news, and notes it.
func (w *watchSeen) show(e lease.Event) bool {
	switch {
	case e.Type == lease.Reset:
		w.seen, w.floor = 0, 0
		return true
	case e.Index <= w.floor:
		return false
	}
	w.seen = max(w.seen, e.Index)
	return true
}

// The names watch gives the listing's events, in text and JSON alike
// (-o json said "granted" with "current":true where the text said "held";
// new-user review): a holding from before the watch began, and a key in
// its lock-delay, named as get and list name its state.
const (
	watchHeld      = "held"
	watchLockDelay = "lock-delay"
)

// watchType is the name watch prints for e: held or lock-delay for the
// listing's events (Current), the event's own type for a change.
// watchJSON is one line of `watch -o json`: every line has the fields
// the README lists, "ended" lines too (they had no "current"; new-user
// review). current is true only for the leases listed at the start.
func watchJSON(typ string, e lease.Event, current bool) map[string]any {
	return map[string]any{"time": time.Now().Format(time.RFC3339Nano), "type": typ, "index": e.Index,
		"key": e.Key, "holder": e.Holder, "token": e.Token, "value": string(e.Value), "current": current}
}

func watchType(e lease.Event) string {
	switch {
	case e.Current && e.Type == lease.Expired:
		return watchLockDelay
	case e.Current && e.Type == lease.Granted:
		return watchHeld
	}
	return string(e.Type)
}

func runWatch(ctx context.Context, sig *signals, cf *clientFlags, pos []string) error {
	prefix := ""
	if len(pos) == 1 {
		prefix = pos[0]
	}
	ctx, cancel := sig.cancelOn(ctx)
	defer cancel()
	cl, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close(context.Background())
	enc := json.NewEncoder(os.Stdout)
	var seen watchSeen
	for first := true; ctx.Err() == nil; first = false {
		// Watch reads one holding first: with no leader it fails after
		// the retry timeout (exit 3 the first time; later, the stream is
		// sought again until ctrl-c).
		// Bounded by --timeout as every request is (it gave up after 18 s
		// while the hint said --timeout, 10s; new-user review): the
		// bound ends once the stream is open, not the stream.
		wctx, cancelW := context.WithCancelCause(ctx)
		bound := time.AfterFunc(cf.timeout, func() { cancelW(timeoutCause{cf.timeout}) })
		events, err := cl.Watch(wctx, prefix)
		bound.Stop()
		if err != nil {
			cancelW(nil)
			err = cf.explain(err)
			if !first && ctx.Err() != nil {
				return nil // ctrl-c while reconnecting ends it as while streaming
			}
			if first || !errors.Is(err, lease.ErrNoLeader) && !errors.Is(err, lease.ErrOverloaded) {
				return err
			}
			fmt.Fprintf(os.Stderr, "leasenode watch: %v; trying again\n", err)
			continue
		}
		if first {
			// Once a node took the stream, not before: a refusal (its
			// --max-watches) was printed after "watching" (new-user
			// review L7).
			fmt.Fprintf(os.Stderr, "watching %q (current leases first, as held, then every change; ctrl-c stops)\n", prefix)
		} else {
			fmt.Fprintln(os.Stderr, "leasenode watch: watching again")
		}
		seen.restart()
		for e := range events {
			if e.Type == lease.Broken { // the last event: why the stream ended
				fmt.Fprintf(os.Stderr, "leasenode watch: %v\n", e.Err)
				continue
			}
			for _, h := range seen.track(e) {
				if cf.json() {
					_ = enc.Encode(watchJSON("ended", h, false))
					continue
				}
				fmt.Printf("%s  %-8s  %s  holder=%s token=%d (released or expired while the watch reconnected)\n",
					time.Now().Format("15:04:05.000"), "ended", h.Key, dash(h.Holder), h.Token)
			}
			if e.Type == lease.Listed || !seen.show(e) {
				continue
			}
			now := time.Now().Format("15:04:05.000")
			typ := watchType(e)
			if cf.json() {
				_ = enc.Encode(watchJSON(typ, e, e.Current))
				continue
			}
			switch typ {
			case string(lease.Reset):
				fmt.Printf("%s  reset     (the watch fell behind or a snapshot was restored; re-reading)\n", now)
			case watchLockDelay:
				fmt.Printf("%s  %-8s  %s  token=%d (expired; its lock-delay runs)\n", now, typ, e.Key, e.Token)
			default:
				fmt.Printf("%s  %-8s  %s  holder=%s token=%d\n", now, typ, e.Key, dash(e.Holder), e.Token)
			}
		}
		cancelW(nil)
		if ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "leasenode watch: stream ended; reconnecting")
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return nil
}
