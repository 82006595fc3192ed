package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/leasenode/leasenode/internal/bench"
	"github.com/leasenode/leasenode/internal/local"
)

const benchSynopsis = `Loads a cluster with the standard workloads and prints a table (or, with
-o json, a JSON document; --json-out also writes it to a file):
  uncontended  --clients clients each acquire and release their own key in a loop
  handoff      4 clients queue for one key; gap from a release to the next grant
  keepalive    --leases leases held by --holders holders, each extending all of
               its leases in one request, back to back
  failover     clients loop while the leader is crashed --kills times; the window
               with no successful operation. It must crash a leader, so it needs
               --self: bench then starts its own 3-node cluster in this process.
  semaphore    6 clients queue for a semaphore of 2; gap from a release to the next grant
  shared       --clients clients acquire and release one key shared, in a loop
  multi        --clients clients each acquire and release a set of 4 keys of their own
"all" runs every workload but failover against --addr (all of them with --self, which
takes no --addr). A live
progress line goes to stderr.`

func (ap *app) benchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bench [flags]", Short: "load a cluster with standard workloads and report latencies", Long: benchSynopsis, Args: nargs(0, 0)}
	cf := &clientFlags{}
	cf.register(cmd)
	fs := cmd.Flags()
	o := benchOptions{
		workload: fs.String("workload", "all", "workload to run: all, "+strings.Join(bench.Workloads, ", ")),
		duration: duration(fs, "duration", 5*time.Second, "how long each workload runs"),
		clients:  fs.Int("clients", 16, "concurrent clients of uncontended (failover uses at most 8)"),
		leases:   fs.Int("leases", 1000, "leases kept alive by keepalive"),
		holders:  fs.Int("holders", 10, "holders (concurrent extend loops) of keepalive"),
		kills:    fs.Int("kills", 3, "leader crashes of failover"),
		self:     fs.Bool("self", false, "start a 3-node cluster in this process and bench it (needed for failover)"),
		jsonOut:  fs.String("json-out", "", "also write the JSON results to this file"),
	}
	completeWords(cmd, "workload", append([]string{"all"}, bench.Workloads...)...)
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		if *o.self {
			// --self benches a cluster of its own: a cluster named too
			// would silently not be the one measured.
			for _, f := range []string{"addr", "tls-ca", "tls-cert", "auth-token", "auth-token-file"} {
				if cmd.Flags().Changed(f) {
					return usagef("--self starts and benches a cluster of its own: drop --%s, or drop --self to bench the cluster at --addr", f)
				}
			}
		}
		return runBench(ctx, ap.sig, cf, o)
	})
	return cmd
}

// benchOptions are the flags of bench.
type benchOptions struct {
	workload, jsonOut               *string
	duration                        *time.Duration
	clients, leases, holders, kills *int
	self                            *bool
}

func runBench(ctx context.Context, sig *signals, cf *clientFlags, o benchOptions) error {
	workload, duration, clients, leases, holders, kills, self, jsonOut := o.workload, o.duration, o.clients, o.leases, o.holders, o.kills, o.self, o.jsonOut
	var names []string
	switch *workload {
	case "all":
		for _, w := range bench.Workloads {
			if w != "failover" || *self {
				names = append(names, w)
			}
		}
	case "failover":
		if !*self {
			return usagef("%v", bench.ErrNeedsCluster)
		}
		names = []string{"failover"}
	default:
		names = strings.Split(*workload, ",")
	}
	for _, n := range names {
		found := false
		for _, w := range bench.Workloads {
			found = found || w == n
		}
		if !found {
			return usagef("--workload %q: want all, %s", n, strings.Join(bench.Workloads, ", "))
		}
	}
	ctx, cancel := sig.cancelOn(ctx)
	defer cancel()
	t, err := cf.tlsConfig()
	if err != nil {
		return err
	}
	cfg := bench.Config{Addrs: cf.addrs(), TLS: t, Token: cf.token, Duration: *duration, Clients: *clients,
		Leases: *leases, Holders: *holders, Kills: *kills}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		cfg.Progress = os.Stderr // a live line on a terminal only
	}
	target := strings.Join(cfg.Addrs, ",")
	if *self {
		fmt.Fprintln(os.Stderr, "bench: starting a 3-node cluster in this process (fast timing, fsync on)")
		c, err := local.Start(ctx, local.Options{Nodes: 3})
		if err != nil {
			return err
		}
		defer c.Close()
		cfg.Addrs, cfg.Cluster, cfg.TLS, cfg.Token = c.APIAddrs(), c, nil, ""
		target = "self (3 nodes in-process)"
	}
	var results []bench.Result
	for _, name := range names {
		if cfg.Progress == nil {
			fmt.Fprintf(os.Stderr, "bench: %s...\n", name)
		}
		rs, err := bench.Run(ctx, cfg, name)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, rs...)
	}
	doc := map[string]any{"target": target, "duration_seconds": duration.Seconds(), "results": results,
		"time": time.Now().UTC().Format(time.RFC3339)}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(doc, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if cf.json() {
		printJSON(doc)
		return nil
	}
	fmt.Printf("leasenode bench against %s, %v per workload\n\n", target, *duration)
	w := table(os.Stdout)
	fmt.Fprintln(w, "WORKLOAD\tMETRIC\tCLIENTS\tN\tPER SEC\tP50\tP99\tMAX\tERRORS")
	for _, r := range results {
		rate := "-"
		if r.PerSec > 0 {
			rate = fmt.Sprintf("%.0f", r.PerSec)
		}
		maxS := "-"
		if r.Count > 0 {
			maxS = msStr(r.MaxMs)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\n", r.Workload, r.Metric, r.Clients, r.Count, rate,
			pctStr(r.P50ms), pctStr(r.P99ms), maxS, r.Errors)
	}
	w.Flush()
	fmt.Printf("\nN is the number of samples; p50 needs %d, p99 %d (with fewer, \"-\": max is the honest figure).\n",
		bench.MinSamplesP50, bench.MinSamplesP99)
	for _, r := range results {
		if r.Note != "" {
			fmt.Printf("  %s: %s\n", r.Workload, r.Note)
		}
	}
	for _, r := range results {
		if r.Errors == 0 {
			continue
		}
		kinds := slices.Sorted(maps.Keys(r.ErrorKinds))
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%d %s", r.ErrorKinds[k], k))
		}
		fmt.Printf("  %s %s: %d errors: %s\n", r.Workload, r.Metric, r.Errors, strings.Join(parts, ", "))
	}
	if hasErrors(results) {
		fmt.Println("  (no leader: retried for --timeout without reaching one;\n" +
			"   unknown outcome: a reply was lost (a leader change), the request may have applied;\n" +
			"   held: the key was taken by another holder; refused: the cluster ended the lease;\n" +
			"   rpc CODE: any other refusal of a raw API call, by its gRPC code)")
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return context.Cause(ctx)
	}
	return nil
}

func hasErrors(rs []bench.Result) bool {
	for _, r := range rs {
		if r.Errors > 0 {
			return true
		}
	}
	return false
}

// pctStr formats a percentile, "-" when there were too few samples.
func pctStr(v *float64) string {
	if v == nil {
		return "-"
	}
	return msStr(*v)
}

func msStr(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0fms", v)
	}
	return fmt.Sprintf("%.2fms", v)
}
