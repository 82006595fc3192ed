// Command jepsen runs a chaos campaign against real leasenode agents:
// partitions, kills, pauses, membership changes and clock drift while
// workers acquire, hold, write with fencing tokens and release leases; then
// it checks the history and writes results.json and report.html.
//
//	go run ./jepsen/cmd/jepsen -nodes 3 -duration 2m -faults mixed -out DIR
//	go run ./jepsen/cmd/jepsen -unsafe skip-rebase -duration 1m -out DIR   # must find a violation
//
// It prints one verdict line on stdout and exits 0 on success, 1 on a
// violation (or when an unsafe mode was not caught), 2 when the campaign
// could not run. Root with iproute2 (and nftables) runs every node in its
// own network namespace; otherwise nodes are loopback processes and only
// process faults run. See jepsen/README.md.
package main

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/jepsen/nemesis"
	"github.com/leasenode/leasenode/jepsen/report"
	"github.com/leasenode/leasenode/jepsen/runner"
)

func main() {
	cfg := runner.DefaultConfig()
	fs := flag.NewFlagSet("jepsen", flag.ExitOnError)
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "cluster size")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long the workload and the nemesis run")
	groups := slices.Sorted(maps.Keys(nemesis.Groups))
	fs.StringVar(&cfg.Faults, "faults", "", "comma-separated faults or groups ("+strings.Join(groups, ", ")+"); default mixed, or the unsafe mode's own choice")
	fs.StringVar(&cfg.Out, "out", "", "output directory (history.jsonl, results.json, report.html, nodes/*/log); default jepsen/store/<time>")
	fs.StringVar(&cfg.Unsafe, "unsafe", "", "start the agents in an unsafe mode and expect a violation: "+strings.Join(runner.UnsafeModeNames(), ", "))
	fs.Uint64Var(&cfg.Seed, "seed", 0, "random seed (0: pick one; it is printed in the report)")
	fs.DurationVar(&cfg.TTL, "ttl", cfg.TTL, "lease TTL of the workload")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "workers (half steady lease.Dial clients, half chaotic ones that get paused, vanish or lose the network)")
	fs.IntVar(&cfg.Keys, "keys", cfg.Keys, "keys the workers compete for")
	fs.BoolVar(&cfg.Shapes, "shapes", cfg.Shapes, "the workers also use the lock shapes (a semaphore s0, a read-write key rw0, multi-key leases over m0-m2) for half of their acquires")
	fs.IntVar(&cfg.TakeoverKeys, "takeover-keys", cfg.TakeoverKeys, "takeover chains (holders killed while holding, a waiter that must take over within TTL + lock-delay + one election + slack: takeover-bound), one key each (t0, ...)")
	fs.DurationVar(&cfg.TakeoverSlack, "takeover-slack", 0, "takeover-bound's slack on top of TTL + lock-delay + one election (0: 1.5s)")
	fs.StringVar(&cfg.Binary, "bin", "", "prebuilt leasenode binary (default: go build ./cmd/leasenode)")
	fs.BoolVar(&cfg.Race, "race", false, "build the agent with -race")
	fs.StringVar(&cfg.Timing, "timing", cfg.Timing, "agent --timing: default or fast")
	fs.BoolVar(&cfg.Loopback, "loopback", false, "run nodes as loopback processes even as root (no partitions)")
	fs.BoolVar(&cfg.TLS, "tls", false, "run the agents with mutual TLS (certificates generated for the campaign, or from -tls-dir); the rogue peer then presents an API client certificate")
	fs.StringVar(&cfg.TLSDir, "tls-dir", "", "with -tls: use ca.pem, nI.pem, nI-key.pem, client.pem and client-key.pem from this directory")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", cfg.ClusterKey, "auto (a fresh key for every agent when `leasenode agent --help` lists --cluster-key), on or off; the rogue peer never has it")
	fs.BoolVar(&cfg.KeepData, "keep-data", false, "keep the nodes' data directories after a passing campaign (always kept after a failing one)")
	fs.DurationVar(&cfg.ServeBound, "serve-bound", cfg.ServeBound, "recovery: longest time to serve again after the final heal")
	fs.DurationVar(&cfg.LinTimeout, "lin-timeout", cfg.LinTimeout, "porcupine time budget per segment of a key's history")
	fs.DurationVar(&cfg.LinHorizon, "lin-horizon", 0, "how long after its client gave up an indeterminate operation may still take effect (unless a later read proves later); 0: the longer of 30s and 3·TTL+20s; negative: unbounded")
	fs.DurationVar(&cfg.CheckEvery, "check-every", 30*time.Second, "how often settled verdicts are appended to verdicts.jsonl while the campaign runs")
	fs.StringVar(&cfg.Ledger, "ledger", "", "append the campaign's line to this ledger (jepsen/campaigns.jsonl) when it ends")
	fs.StringVar(&cfg.LedgerNote, "ledger-note", "", "free text for the ledger line")
	summary := fs.Bool("ledger-summary", false, "print cumulative campaign-hours per commit from -ledger (default jepsen/campaigns.jsonl) and exit")
	check := fs.String("check", "", "check a saved history (history.jsonl.gz, also one a crashed campaign left) instead of running a campaign; the report goes to -out (default: the history's directory)")
	printSchedule := fs.Bool("print-schedule", false, "print the faults -seed draws for -duration and -faults, and exit")
	trim := fs.String("trim", "", "cut the history HISTORY down to -trim-keys and -trim-window and write it to -trim-out (to save a failing one under jepsen/testdata)")
	trimKeys := fs.String("trim-keys", "", "with -trim: comma-separated keys (default all)")
	trimWindow := fs.String("trim-window", "", "with -trim: FROM:TO in harness time, e.g. 41s:58s")
	trimOut := fs.String("trim-out", "", "with -trim: the output file (.jsonl or .jsonl.gz)")
	quiet := fs.Bool("quiet", false, "no live progress line")
	cleanup := fs.Bool("cleanup-stale", false, "delete namespaces (ljep-*) and processes left by a campaign that was killed with SIGKILL, then exit; only when no campaign runs")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: jepsen [flags]\n\nRuns a chaos campaign against leasenode agents and checks it.\n\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if *cleanup {
		names, err := control.CleanupStale()
		fmt.Fprintf(os.Stderr, "jepsen: deleted %d stale namespaces %v\n", len(names), names)
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			os.Exit(runner.ExitError)
		}
		os.Exit(0)
	}
	switch {
	case *summary:
		path := cfg.Ledger
		if path == "" {
			path = defaultLedger()
		}
		entries, err := report.ReadLedger(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			os.Exit(runner.ExitError)
		}
		report.WriteLedgerSummary(os.Stdout, entries)
		os.Exit(0)
	case *check != "":
		os.Exit(runner.Recheck(*check, cfg))
	case *printSchedule:
		if cfg.Faults == "" {
			cfg.Faults = "mixed"
		}
		if err := runner.PrintSchedule(os.Stdout, cfg); err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			os.Exit(runner.ExitError)
		}
		os.Exit(0)
	case *trim != "":
		os.Exit(trimHistory(*trim, *trimKeys, *trimWindow, *trimOut))
	}
	if cfg.Out == "" {
		cfg.Out = defaultOut()
	}
	if *quiet {
		cfg.Progress = nil
	}
	os.Exit(runner.Main(cfg, os.Args[1:]))
}

// defaultLedger is jepsen/campaigns.jsonl in the module.
func defaultLedger() string {
	if root, err := control.ModuleRoot("."); err == nil {
		return filepath.Join(root, "jepsen", "campaigns.jsonl")
	}
	return "campaigns.jsonl"
}

func trimHistory(path, keys, window, out string) int {
	if out == "" || window == "" {
		fmt.Fprintln(os.Stderr, "jepsen: -trim needs -trim-window FROM:TO and -trim-out FILE")
		return runner.ExitError
	}
	from, to, ok := strings.Cut(window, ":")
	f, err1 := time.ParseDuration(from)
	t, err2 := time.ParseDuration(to)
	if !ok || err1 != nil || err2 != nil || t < f {
		fmt.Fprintf(os.Stderr, "jepsen: -trim-window %q: want FROM:TO durations, e.g. 41s:58s\n", window)
		return runner.ExitError
	}
	records, err := history.Load(path)
	if err != nil && len(records) == 0 {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return runner.ExitError
	}
	var ks []string
	if keys != "" {
		ks = strings.Split(keys, ",")
	}
	cut := history.Trim(records, ks, int64(f), int64(t))
	if err := history.Save(out, cut); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return runner.ExitError
	}
	fmt.Fprintf(os.Stderr, "jepsen: wrote %d of %d records to %s\n", len(cut), len(records), out)
	return 0
}

// defaultOut is jepsen/store/<time> in the module (ignored by git), or
// ./jepsen-store/<time> outside it.
func defaultOut() string {
	stamp := time.Now().Format("20060102-150405")
	if root, err := control.ModuleRoot("."); err == nil {
		return filepath.Join(root, "jepsen", "store", stamp)
	}
	return filepath.Join("jepsen-store", stamp)
}
