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

	"github.com/leasenode/leasenode/jepsen/nemesis"
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
	fs.StringVar(&cfg.Binary, "bin", "", "prebuilt leasenode binary (default: go build ./cmd/leasenode)")
	fs.BoolVar(&cfg.Race, "race", false, "build the agent with -race")
	fs.StringVar(&cfg.Timing, "timing", cfg.Timing, "agent --timing: default or fast")
	fs.BoolVar(&cfg.Loopback, "loopback", false, "run nodes as loopback processes even as root (no partitions)")
	fs.BoolVar(&cfg.KeepData, "keep-data", false, "keep the nodes' data directories after a passing campaign (always kept after a failing one)")
	fs.DurationVar(&cfg.ServeBound, "serve-bound", cfg.ServeBound, "recovery: longest time to serve again after the final heal")
	fs.DurationVar(&cfg.LinTimeout, "lin-timeout", cfg.LinTimeout, "porcupine time budget per key")
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
	if cfg.Out == "" {
		cfg.Out = defaultOut()
	}
	if *quiet {
		cfg.Progress = nil
	}
	os.Exit(runner.Main(cfg, os.Args[1:]))
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
