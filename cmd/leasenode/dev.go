package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/leasenode/leasenode/internal/local"
	"github.com/leasenode/leasenode/node"
)

const devSynopsis = `Runs a local cluster in this process, on 127.0.0.1: node i listens on
PORT-BASE+10i (Raft), +1 (gossip) and +2 (client API, /metrics, /readyz),
so the default API addresses are 127.0.0.1:7402, :7412 and :7422 and the
client commands' default --addr reaches it. Data lives in a temporary
directory (removed on exit) unless --data-dir is given. Ctrl-c stops it.`

func (ap *app) devCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev [flags]", Short: "run a local 3-node cluster in this process (ctrl-c stops it)", Long: devSynopsis, Args: nargs(0, 0)}
	fs := cmd.Flags()
	o := devOptions{
		nodes:    fs.Int("nodes", 3, "number of nodes"),
		portBase: fs.Int("port-base", 7400, "first port (see above)"),
		dataDir:  fs.String("data-dir", "", "keep the nodes' data here (default: a temporary directory)"),
		timing:   fs.String("timing", "fast", "Raft timeouts: fast (~0.5 s failover) or default (~1 s)"),
		logLevel: fs.String("log-level", "warn", "node logs on stderr: debug, info, warn or error"),
	}
	completeWords(cmd, "timing", "fast", "default")
	completeWords(cmd, "log-level", "debug", "info", "warn", "error")
	_ = cmd.MarkFlagDirname("data-dir")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
		return runDev(ctx, ap.sig, o)
	})
	return cmd
}

// devOptions are the flags of dev.
type devOptions struct {
	nodes, portBase           *int
	dataDir, timing, logLevel *string
}

func runDev(ctx context.Context, sig *signals, o devOptions) error {
	nodes, portBase, dataDir, timing, logLevel := o.nodes, o.portBase, o.dataDir, o.timing, o.logLevel
	if *nodes < 1 || *nodes > 9 {
		return usagef("--nodes %d: want 1 to 9", *nodes)
	}
	if *portBase < 1024 || *portBase+10**nodes > 65535 {
		return usagef("--port-base %d: want 1024 to %d", *portBase, 65535-10**nodes)
	}
	opts := local.Options{Nodes: *nodes, PortBase: *portBase, DataDir: *dataDir}
	switch *timing {
	case "fast":
		opts.Timing = node.FastLANTiming()
	case "default":
		opts.Timing = node.DefaultTiming()
	default:
		return usagef("--timing %q: want fast or default", *timing)
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	sctx, cancel := sig.cancelOn(ctx)
	c, err := local.Start(sctx, opts)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	addrs := strings.Join(c.APIAddrs(), ",")
	fmt.Printf("leasenode dev: %d nodes up, leader %s, data in %s\n\n", c.Size(), c.ID(c.Leader()), c.Dir())
	for i := 0; i < c.Size(); i++ {
		cfg := c.Config(i)
		fmt.Printf("  %s  api=%s  raft=%s  gossip=%s  metrics=http://%s/metrics\n", cfg.ID, cfg.APIAddr, cfg.BindAddr, cfg.GossipAddr, cfg.APIAddr)
	}
	fmt.Printf("\ntry, in another terminal:\n")
	if *portBase != 7400 {
		fmt.Printf("  export LEASENODE_ADDR=%s\n", addrs)
	}
	fmt.Printf("  leasenode status\n")
	fmt.Printf("  leasenode lock jobs/nightly -- sh -c 'echo \"token $LEASE_TOKEN\"; sleep 5'\n")
	fmt.Printf("  leasenode acquire jobs/report --ttl 30s\n")
	fmt.Printf("  leasenode list\n")
	fmt.Printf("  leasenode watch\n")
	fmt.Printf("  leasenode bench --workload uncontended --duration 5s\n")
	fmt.Printf("  curl -s http://%s/readyz\n", c.Config(0).APIAddr)
	fmt.Printf("\nctrl-c stops the cluster")
	if *dataDir == "" {
		fmt.Printf(" and removes its data")
	}
	fmt.Println(".")
	s := <-sig.C
	fmt.Fprintf(os.Stderr, "leasenode dev: %v: stopping\n", s)
	// The nodes stop together; their complaints about each other are noise.
	level.Set(slog.LevelError + 4)
	return nil
}
