package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/transport/pb"
)

const snapshotSynopsis = `save writes every lease of a running cluster to FILE (- for stdout): a
consistent read on the leader, checked after download. The same is served
as GET /v1/backup on any node's API address (curl -L follows a follower's
redirect to the leader).

restore turns FILE into the data directory of the first node of a new
cluster, offline, with a new cluster id. Give it the flags you will start
that agent with (its help lists those that shape the restore; it takes
every agent flag); then start the agent, and the other nodes with --join,
empty data directories and without --bootstrap-expect. Restored leases keep their holders and tokens and the
time they had left when the backup was taken; new tokens start --index-gap above the backup's, so
they stay above any token the old cluster granted after the backup. Leases
granted after the backup are not in it: restore only after the old cluster
has been down longer than the longest TTL in use.`

func (ap *app) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot save|restore FILE",
		Short: "back up a cluster's leases (save) or seed a new cluster from a backup (restore)",
		Long:  snapshotSynopsis,
		Args:  cobra.ArbitraryArgs,
		RunE:  ap.action(subcommandNeeded),
	}
	save := &cobra.Command{Use: "save FILE [flags]", Short: "write every lease of a running cluster to FILE (- for stdout)", Long: snapshotSynopsis, Args: nargs(1, 1)}
	cf := &clientFlags{}
	cf.register(save)
	save.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return snapshotSave(ctx, ap.sig, cf, pos)
	})
	restore := &cobra.Command{Use: "restore FILE --id ID --data-dir DIR [agent flags]", Short: "make FILE the data directory of the first node of a new cluster (offline)",
		Long: snapshotSynopsis, Args: nargs(1, 1)}
	a := newAgentFlags(restore.Flags())
	a.completions(restore)
	// It takes every agent flag (give it the agent's command line), but
	// only these shape what it writes or are checked with them; the rest
	// (and the --unsafe-* switches) stay out of its help, as agent --help
	// leaves out the --unsafe-* ones.
	restore.Flags().VisitAll(func(f *pflag.Flag) {
		if !restoreFlags[f.Name] {
			f.Hidden = true
		}
	})
	gap := restore.Flags().Uint64("index-gap", node.DefaultRestoreIndexGap, "Raft entries skipped past the backup's index, so new fencing tokens stay above the old cluster's")
	output := restore.Flags().StringP("output", "o", "table", "output format: table or json")
	restore.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		return snapshotRestore(a, *gap, *output, pos)
	})
	cmd.AddCommand(save, restore)
	return cmd
}

// restoreFlags are the agent flags snapshot restore's help shows: what it
// writes into the data directory (the node's id and Raft address, the log
// store) and what the agent's settings check beside them (a non-loopback
// address needs the cluster key or TLS).
var restoreFlags = map[string]bool{
	"id": true, "data-dir": true, "bind": true, "advertise": true, "log-store": true, "config": true,
	"cluster-key": true, "cluster-key-file": true, "insecure": true, "tls-ca": true, "tls-cert": true, "tls-key": true,
}

// subcommandNeeded is the action of a command that only groups others:
// it names the mistyped subcommand, or asks for one.
func subcommandNeeded(_ context.Context, cmd *cobra.Command, args []string) error {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	if len(args) == 0 {
		return &usageError{msg: fmt.Sprintf("want a subcommand: %s", strings.Join(names, " or ")), hint: "usage: " + cmd.UseLine()}
	}
	ue := &usageError{msg: fmt.Sprintf("unknown subcommand %q (want %s)", args[0], strings.Join(names, " or "))}
	if s := closest(args[0], names); s != "" {
		ue.hint = fmt.Sprintf("did you mean %q?", s)
	}
	return ue
}

// backupJSON is the -o json output of snapshot save and restore.
type backupJSON struct {
	File    string `json:"file"`
	Index   uint64 `json:"index"`
	Epoch   uint64 `json:"epoch"`
	Leases  int    `json:"leases"`
	Delayed int    `json:"lock_delayed"`
	Bytes   int64  `json:"bytes,omitempty"`
	DataDir string `json:"data_dir,omitempty"`
	// ClusterID is the new cluster's id (restore only).
	ClusterID string `json:"cluster_id,omitempty"`
}

// saveFileError explains why the temporary file beside FILE could not be
// made, in terms of FILE and its directory: the temporary name (FILE.N.tmp)
// means nothing to the user.
func saveFileError(file string, err error) error {
	dir := filepath.Dir(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("cannot write %s: directory %s does not exist (create it first)", file, dir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot write %s: no permission to create files in %s", file, dir)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cannot write %s: %v", file, err)
}

func snapshotSave(ctx context.Context, sig *signals, cf *clientFlags, pos []string) error {
	tlsCfg, err := cf.tlsConfig()
	if err != nil {
		return err
	}
	ctx, cancel := sig.cancelOn(ctx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, cf.timeout)
	defer cancelT()

	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	hc := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tlsCfg, DialContext: (&net.Dialer{Timeout: 3 * time.Second}).DialContext},
		// A follower redirects to the leader, maybe on another host: keep
		// the token, which net/http drops across hosts.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > 3 {
				return errors.New("too many redirects")
			}
			req.Header.Set("Authorization", via[0].Header.Get("Authorization"))
			return nil
		},
	}
	defer hc.CloseIdleConnections()

	// The file first: a path that cannot be written fails before the
	// cluster is asked for a backup.
	out := backupJSON{File: pos[0]}
	var w io.Writer = os.Stdout
	var tmp *os.File
	if out.File != "-" {
		// Write beside the target and rename, so FILE is whole or absent.
		if tmp, err = os.CreateTemp(filepath.Dir(out.File), filepath.Base(out.File)+".*.tmp"); err != nil {
			return saveFileError(out.File, err)
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		w = tmp
	}
	resp, err := getBackup(ctx, hc, scheme, cf.addrs(), cf.token)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	var stats fsm.Stats
	go func() {
		var err error
		stats, err = fsm.ReadBackup(pr)
		pr.CloseWithError(err)
		checked <- err
	}()
	out.Bytes, err = io.Copy(io.MultiWriter(w, pw), resp.Body)
	pw.CloseWithError(err)
	if cerr := <-checked; err == nil && cerr != nil {
		err = fmt.Errorf("the backup received does not check out: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if tmp != nil {
		if err := tmp.Sync(); err != nil {
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		if err := os.Rename(tmp.Name(), out.File); err != nil {
			return err
		}
	}
	out.Index, out.Epoch, out.Leases, out.Delayed = stats.Applied, stats.Epoch, stats.Held, stats.Delayed
	if cf.json() {
		printJSON(out)
	} else if out.File != "-" {
		fmt.Printf("saved %s (%s in lock-delay) at index %d, epoch %d: %d bytes to %s\n",
			count(out.Leases, "lease"), count(out.Delayed, "key"), out.Index, out.Epoch, out.Bytes, out.File)
	}
	return nil
}

// getBackup asks the nodes at addrs in turn for a backup, until one
// answers with it or ctx ends; a cluster without a leader is asked again.
func getBackup(ctx context.Context, hc *http.Client, scheme string, addrs []string, token string) (*http.Response, error) {
	var last error
	for {
		// setup is the TLS mismatch or wrong port of every address
		// this round, nil once one answered otherwise: final, as for
		// the other commands (exit 2, not 3 after --timeout).
		var setup error
		setupOnly := true
		for _, addr := range addrs {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+node.BackupPath, nil)
			if err != nil {
				return nil, usagef("--addr %q: %v", addr, err)
			}
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				last = err
				if p := lease.TLSProblemOf(err, scheme == "https"); p != 0 {
					setup = &lease.TLSSetupError{Addr: addr, Problem: p, Err: err}
				} else {
					setupOnly = false
				}
				continue
			}
			if resp.StatusCode == http.StatusOK {
				return resp, nil
			}
			port := resp.Header.Get("Leasenode-Port")
			msg := bodyText(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusBadRequest && scheme == "http" && strings.Contains(msg, "HTTPS server"):
				// What Go's server answers plain HTTP on a TLS port with.
				setup = &lease.TLSSetupError{Addr: addr, Problem: lease.TLSNodeRequiresTLS, Err: fmt.Errorf("%s: %s", resp.Status, msg)}
				last = setup
				continue
			case resp.StatusCode == http.StatusMisdirectedRequest && port != "":
				setup = fmt.Errorf("%w: %s is a leasenode %s port, not the client API: give the agents' --api addresses", lease.ErrWrongPort, addr, port)
				last = setup
				continue
			}
			setupOnly = false
			if resp.StatusCode == http.StatusUnauthorized {
				// Its hint, as the other commands', says whether the
				// token sent is wrong or none was.
				return nil, &unauthenticatedError{fmt.Errorf("%s: %s", addr, msg)}
			}
			last = fmt.Errorf("%s: %s: %s", addr, resp.Status, msg)
		}
		if setupOnly && setup != nil {
			return nil, setup
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v (last error: %v)", lease.ErrNoLeader, context.Cause(ctx), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// unauthenticatedError is a node's 401 to a plain HTTP request (a
// backup): it carries the reason the API's refusals do, for the hint.
type unauthenticatedError struct{ err error }

func (e *unauthenticatedError) Error() string     { return e.err.Error() }
func (e *unauthenticatedError) Unwrap() error     { return e.err }
func (e *unauthenticatedError) Reason() pb.Reason { return pb.Reason_REASON_UNAUTHENTICATED }

// bodyText is an error reply's text: the message of a JSON error (the
// API's 401 is Connect's {"code":…,"message":…}), else the body itself,
// at most 512 bytes of it.
func bodyText(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 512))
	var e struct{ Message string }
	if json.Unmarshal(b, &e) == nil && e.Message != "" {
		return e.Message
	}
	return strings.TrimSpace(string(b))
}

func snapshotRestore(a *agentFlags, gap uint64, output string, pos []string) error {
	if output != "table" && output != "json" {
		return usagef("-o %q: want table or json", output)
	}
	if gap == 0 {
		return usagef("--index-gap must be positive")
	}
	if err := a.load(); err != nil {
		return err
	}
	cfg, err := a.config()
	if err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	if err := notABackup(pos[0], br); err != nil {
		return err
	}
	st, err := node.Restore(cfg, br, gap)
	if err != nil {
		return err
	}
	clusterID, err := node.ClusterID(cfg.DataDir)
	if err != nil {
		return err
	}
	out := backupJSON{File: pos[0], Index: st.Applied, Epoch: st.Epoch, Leases: st.Held, Delayed: st.Delayed, DataDir: cfg.DataDir, ClusterID: clusterID}
	if output == "json" {
		printJSON(out)
		return nil
	}
	fmt.Printf("restored %s (%s in lock-delay) from %s into %s; Raft resumes after index %d.\n",
		count(out.Leases, "lease"), count(out.Delayed, "key"), out.File, out.DataDir, out.Index)
	fmt.Printf("It founds a new cluster, id %s.\n", clusterID)
	fmt.Printf("Start this node with `leasenode agent` and the same flags, then the others with --join, empty data dirs and without --bootstrap-expect.\n")
	return nil
}

// notABackup refuses a file that holds a node's JSON error answer instead
// of a backup: what curl saves from /v1/backup without --fail (a wrong
// token, a follower's redirect not followed). The backup format's own
// check would only say "bad magic".
func notABackup(name string, r *bufio.Reader) error {
	head, _ := r.Peek(512)
	if len(head) == 0 || head[0] != '{' {
		return nil
	}
	var e struct{ Code, Message string }
	if json.Unmarshal(head, &e) != nil && !bytes.Contains(head, []byte(`"code"`)) {
		return nil
	}
	why := strings.TrimSpace(e.Code + ": " + e.Message)
	if e.Code == "" {
		why = strings.TrimSpace(string(head))
	}
	return fmt.Errorf("%s is not a backup: it holds a node's error response (%s), as curl saves one without --fail; take the backup again (leasenode snapshot save, or curl --fail)", name, why)
}

// count is n and noun, plural unless n is 1 ("1 lease", "3 leases").
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
