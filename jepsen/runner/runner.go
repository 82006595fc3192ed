// Package runner drives one chaos campaign end to end: build the agent,
// set up the nodes (network namespaces when it can, loopback processes
// otherwise), run the workload and the nemesis for the planned duration,
// heal, probe recovery, check the history and write the report.
//
// It owns the campaign's order of events and its exit code. Everything
// else is delegated: control (processes, namespaces), nemesis (faults),
// workload (clients), checker (verdicts), report (presentation).
//
// In netns mode the campaign runs in two processes: the supervisor, in the
// host's namespace, creates the namespaces, re-executes the harness inside
// the hub namespace (so that its clients reach the nodes' private
// addresses natively, leader redirects included), waits, and deletes the
// namespaces whatever happened. The supervised process does the campaign.
package runner

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/leasenode/leasenode/internal/ctxtime"
	"github.com/leasenode/leasenode/jepsen/checker"
	"github.com/leasenode/leasenode/jepsen/control"
	"github.com/leasenode/leasenode/jepsen/history"
	"github.com/leasenode/leasenode/jepsen/nemesis"
	"github.com/leasenode/leasenode/jepsen/report"
	"github.com/leasenode/leasenode/jepsen/workload"
	"github.com/leasenode/leasenode/lease"
	"github.com/leasenode/leasenode/node"
)

// Exit codes of a campaign.
const (
	// ExitPass: no violation (or, in an unsafe mode, the expected one).
	ExitPass = 0
	// ExitViolation: a violation in a safe campaign, or none in an unsafe
	// mode that must be caught.
	ExitViolation = 1
	// ExitError: the harness could not run the campaign.
	ExitError = 2
	// ExitInterrupted: stopped early by a signal (after the first one the
	// campaign still heals, checks and reports; a violation found then
	// still exits 1).
	ExitInterrupted = 130
)

// Config describes a campaign.
type Config struct {
	// Nodes is the cluster size.
	Nodes int
	// Duration of the workload and nemesis.
	Duration time.Duration
	// Faults is a comma-separated list of fault and group names (see
	// nemesis.Groups); "" means the unsafe mode's choice, else mixed.
	Faults string
	// Out is the output directory.
	Out string
	// Unsafe names an unsafe agent mode (see UnsafeModes); "" is safe.
	Unsafe string
	// Seed drives every random choice; 0 picks one.
	Seed uint64
	// TTL of the workload's leases.
	TTL time.Duration
	// Workers (half steady, half chaotic) and Keys of the workload.
	Workers int
	Keys    int
	// Shapes has the workers use the lock shapes too (workload.Shapes: a
	// semaphore s0, a read-write key rw0, sets over m0-m2) for half of
	// their acquires.
	Shapes bool
	// TakeoverKeys is how many takeover chains run (holders killed while
	// holding, waiters that must take over in time: takeover-bound), each
	// on a key of its own; TakeoverSlack is that checker's slack (0: its
	// default).
	TakeoverKeys  int
	TakeoverSlack time.Duration
	// Binary is a prebuilt agent; "" builds ./cmd/leasenode.
	Binary string
	// Race builds the agent with -race.
	Race bool
	// Timing is the agents' --timing.
	Timing string
	// Loopback forces loopback processes even as root.
	Loopback bool
	// TLS runs the agents with mutual TLS: certificates generated for the
	// campaign, or those in TLSDir (ca.pem, nI.pem, nI-key.pem,
	// client.pem, client-key.pem).
	TLS    bool
	TLSDir string
	// ClusterKey is auto (a fresh key for every agent if the agent has
	// --cluster-key), on (insist) or off.
	ClusterKey string
	// KeepData keeps the nodes' data directories after a passing campaign
	// (they are always kept after a failing one).
	KeepData bool
	// ServeBound is the recovery bound; LinTimeout bounds porcupine per
	// segment of a key's history; LinHorizon is the indeterminate
	// operations' horizon (checker.Options.IndeterminateHorizon).
	ServeBound time.Duration
	LinTimeout time.Duration
	LinHorizon time.Duration
	// CheckEvery is how often the online check appends verdicts to
	// verdicts.jsonl while the campaign runs (0: every 30 s).
	CheckEvery time.Duration
	// Ledger, if set, is the campaign ledger (jepsen/campaigns.jsonl) the
	// campaign appends its line to; LedgerNote goes into that line.
	Ledger     string
	LedgerNote string
	// Progress receives the live progress line (nil: none).
	Progress io.Writer
	// Stdout receives the one-line verdict.
	Stdout io.Writer
}

// DefaultConfig is a short campaign: 3 nodes, 2 minutes, mixed faults.
func DefaultConfig() Config {
	return Config{
		Nodes: 3, Duration: 2 * time.Minute, Faults: "mixed", TTL: 2 * time.Second,
		Workers: 6, Keys: 3, Shapes: true, TakeoverKeys: 1, Timing: "fast", ClusterKey: "auto", ServeBound: 30 * time.Second, LinTimeout: time.Minute,
		Stdout: os.Stdout, Progress: os.Stderr,
	}
}

// UnsafeMode starts the agents with a flag that breaks mutual exclusion
// (or, for clock-rate-within, one that must not).
type UnsafeMode struct {
	// Describe says what it breaks.
	Describe string
	// ExpectViolation: a campaign in this mode must find a violation.
	ExpectViolation bool
	// Faults are the faults used when -faults is not given: the ones that
	// expose this mode soonest.
	Faults string
	// Stagger starts the nodes one after another, this far apart (so their
	// process clocks differ, as they would in production).
	Stagger func(ttl time.Duration) time.Duration
	// Args for every node; NodeArgs per node (1-based).
	Args     func(nodes int, ttl time.Duration) []string
	NodeArgs func(node int, ttl time.Duration) []string
	// Shapes: the mode breaks a lock shape, so the workload must use
	// them whatever -shapes says.
	Shapes bool
}

// UnsafeModes are the modes -unsafe accepts.
var UnsafeModes = map[string]UnsafeMode{
	"skip-rebase": {
		Describe:        "--unsafe-skip-rebase: Promote does not rebase expiries, so a new leader judges old expiries by an unrelated clock",
		ExpectViolation: true,
		// Nodes started at different times (and restarted by kills) have
		// clocks of different ages; leader changes then move expiries
		// between them.
		Faults:  "kill-leader",
		Stagger: func(ttl time.Duration) time.Duration { return 2 * ttl },
		Args:    func(int, time.Duration) []string { return []string{"--unsafe-skip-rebase"} },
	},
	"wall-clock": {
		Describe:        "--unsafe-wall-clock with node i's wall clock skewed by (i-1)·TTL: expiry judged by skewed wall clocks, no rebase",
		ExpectViolation: true,
		// Skew only bites when leadership moves to a node whose clock is
		// ahead: move it often. (With mixed faults a 90 s run missed it.)
		Faults: "kill-leader,pause-leader",
		Args:   func(int, time.Duration) []string { return []string{"--unsafe-wall-clock"} },
		NodeArgs: func(i int, ttl time.Duration) []string {
			return []string{"--unsafe-clock-skew", (time.Duration(i-1) * ttl).String()}
		},
	},
	"extend-no-commit": {
		Describe:        "--unsafe-extend-no-commit: the leader answers extends without committing them, so a deposed leader keeps extending",
		ExpectViolation: true,
		Args:            func(int, time.Duration) []string { return []string{"--unsafe-extend-no-commit"} },
	},
	"clock-rate": {
		Describe:        "--unsafe-clock-rate 2: every leader clock runs twice as fast as real time, far beyond the 1% drift bound",
		ExpectViolation: true,
		Args:            func(int, time.Duration) []string { return []string{"--unsafe-clock-rate", "2"} },
	},
	"semaphore-overgrant": {
		Describe:        "--unsafe-semaphore-overgrant: a semaphore of N is granted to N+1 holders (at-most-n must catch it)",
		ExpectViolation: true,
		Args:            func(int, time.Duration) []string { return []string{"--unsafe-semaphore-overgrant"} },
		Shapes:          true,
	},
	"shared-beside-exclusive": {
		Describe:        "--unsafe-shared-beside-exclusive: shared holdings are granted beside an exclusive one (shared-exclusive must catch it)",
		ExpectViolation: true,
		Args:            func(int, time.Duration) []string { return []string{"--unsafe-shared-beside-exclusive"} },
		Shapes:          true,
	},
	"partial-set": {
		Describe:        "--unsafe-partial-set: a multi-key acquire is granted on its free keys only and answered granted (set-atomicity must catch it)",
		ExpectViolation: true,
		Args:            func(int, time.Duration) []string { return []string{"--unsafe-partial-set"} },
		Shapes:          true,
	},
	"clock-rate-within": {
		Describe:        "--unsafe-clock-rate 1.004 / 0.996 (alternating by node): within the 1% drift bound, so the cluster must stay safe",
		ExpectViolation: false,
		NodeArgs: func(i int, _ time.Duration) []string {
			if i%2 == 0 {
				return []string{"--unsafe-clock-rate", "0.996"}
			}
			return []string{"--unsafe-clock-rate", "1.004"}
		},
	},
}

// UnsafeModeNames lists the modes, sorted.
func UnsafeModeNames() []string {
	var out []string
	for k := range UnsafeModes {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Validate checks a Config before anything starts.
func (c Config) Validate() error {
	var errs []error
	if c.Nodes < 1 || c.Nodes > 50 {
		errs = append(errs, fmt.Errorf("-nodes %d: want 1..50", c.Nodes))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("-duration %v: want > 0", c.Duration))
	}
	if c.TTL < 500*time.Millisecond {
		errs = append(errs, fmt.Errorf("-ttl %v: want at least 500ms (the lease client's retries need room)", c.TTL))
	}
	if c.Workers < 1 || c.Keys < 1 {
		errs = append(errs, fmt.Errorf("-workers %d -keys %d: want at least 1 each", c.Workers, c.Keys))
	}
	switch c.ClusterKey {
	case "", "auto", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("-cluster-key %q: want auto, on or off", c.ClusterKey))
	}
	if c.TakeoverKeys < 0 {
		errs = append(errs, fmt.Errorf("-takeover-keys %d: want 0 or more", c.TakeoverKeys))
	}
	if c.Unsafe != "" {
		if _, ok := UnsafeModes[c.Unsafe]; !ok {
			errs = append(errs, fmt.Errorf("-unsafe %q: known modes are %s", c.Unsafe, strings.Join(UnsafeModeNames(), ", ")))
		}
	}
	if _, _, err := nemesis.Select(c.Faults, true); err != nil {
		errs = append(errs, fmt.Errorf("-faults: %w", err))
	}
	if c.Out == "" {
		errs = append(errs, errors.New("-out is required"))
	}
	return errors.Join(errs...)
}

// Environment variables passed to the supervised campaign process.
const (
	envBinary = "LEASENODE_JEPSEN_BINARY"
	envOut    = "LEASENODE_JEPSEN_OUT"
	envNote   = "LEASENODE_JEPSEN_NOTE"
	envLedger = "LEASENODE_JEPSEN_LEDGER"
)

// Main runs a campaign from the top: it is what cmd/jepsen calls. argv are
// the command's arguments, passed unchanged to the supervised process in
// netns mode. It returns the exit code.
func Main(cfg Config, argv []string) int {
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Faults == "" {
		cfg.Faults = "mixed"
		if m, ok := UnsafeModes[cfg.Unsafe]; ok && m.Faults != "" {
			cfg.Faults = m.Faults
		}
	}
	if nwEnv := os.Getenv(control.Env); nwEnv != "" {
		nw, err := control.DecodeNetwork(nwEnv)
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			return ExitError
		}
		cfg.Binary, cfg.Out, cfg.Ledger = os.Getenv(envBinary), os.Getenv(envOut), os.Getenv(envLedger)
		return Campaign(cfg, nw, os.Getenv(envNote))
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	out, err := filepath.Abs(cfg.Out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	cfg.Out = out
	if cfg.Ledger != "" {
		if cfg.Ledger, err = filepath.Abs(cfg.Ledger); err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			return ExitError
		}
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	if cfg.Binary == "" {
		root, err := control.ModuleRoot(".")
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			return ExitError
		}
		fmt.Fprintf(os.Stderr, "jepsen: building the agent (go build ./cmd/leasenode)...\n")
		bin, err := control.Build(context.Background(), root, filepath.Join(cfg.Out, "bin"), cfg.Race)
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			return ExitError
		}
		cfg.Binary = bin
	}
	if cfg.Binary, err = filepath.Abs(cfg.Binary); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	caps := control.Detect()
	if cfg.Loopback {
		caps = control.Capabilities{Note: "loopback forced by -loopback: process faults only (kill, pause, membership, clock drift)"}
	}
	if !caps.Netns {
		fmt.Fprintf(os.Stderr, "jepsen: %s\n", caps.Note)
		return Campaign(cfg, nil, caps.Note)
	}
	if caps.Note != "" {
		fmt.Fprintf(os.Stderr, "jepsen: %s\n", caps.Note)
	}
	return supervise(cfg, caps, argv)
}

// supervise creates the namespaces, runs the campaign inside the hub, and
// deletes the namespaces afterwards — also after a crash or ctrl-c.
func supervise(cfg Config, caps control.Capabilities, argv []string) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	// Catch signals before creating anything, so that nothing escapes
	// cleanup.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	nw, err := control.CreateNetwork(context.Background(), control.NewRunID(), cfg.Nodes, caps.Firewall)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	defer func() {
		if err := nw.Destroy(); err != nil {
			fmt.Fprintln(os.Stderr, "jepsen: cleanup:", err)
		}
	}()
	args := append([]string{"netns", "exec", nw.Hub, self}, argv...)
	cmd := exec.Command("ip", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The campaign runs in its own process group: the supervisor decides
	// how a ctrl-c reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	note := fmt.Sprintf("network namespaces %s, firewall %s", nw.Hub, nw.Firewall)
	if caps.Note != "" {
		note += "; " + caps.Note
	}
	cmd.Env = append(os.Environ(), control.Env+"="+nw.Encode(), envBinary+"="+cfg.Binary, envOut+"="+cfg.Out, envNote+"="+note, envLedger+"="+cfg.Ledger)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	interrupts := 0
	for {
		select {
		case err := <-done:
			if err == nil {
				return ExitPass
			}
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() >= 0 {
				return ee.ExitCode()
			}
			fmt.Fprintln(os.Stderr, "jepsen: campaign process:", err)
			return ExitError
		case <-sigs:
			interrupts++
			if interrupts == 1 {
				fmt.Fprintln(os.Stderr, "\njepsen: interrupted: healing, stopping the nodes and writing the report (ctrl-c again to abort)")
				cmd.Process.Signal(syscall.SIGINT)
				continue
			}
			fmt.Fprintln(os.Stderr, "\njepsen: aborting")
			cmd.Process.Kill()
			<-done
			return ExitInterrupted
		}
	}
}

// Campaign runs one campaign in this process: nw is nil in loopback mode.
func Campaign(cfg Config, nw *control.Network, note string) int {
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64() >> 1
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	logFile, err := os.Create(filepath.Join(cfg.Out, "harness.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The history is kept compressed and flushed every few seconds, and
	// verdicts are appended to verdicts.jsonl as segments settle: a
	// harness that dies loses only the last seconds.
	hf, err := os.Create(filepath.Join(cfg.Out, "history.jsonl.gz"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	defer hf.Close()
	zw := gzip.NewWriter(hf)
	vf, err := os.OpenFile(filepath.Join(cfg.Out, "verdicts.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	defer vf.Close()

	clock := history.NewClock(time.Now())
	rec := history.NewRecorder(clock, zw)
	copts := checkerOptions(cfg)
	copts.VisualizeDir = cfg.Out
	online := &checker.Online{Opts: copts, Out: vf}
	var prog *report.Progress
	if cfg.Progress != nil {
		prog = report.NewProgress(cfg.Progress, clock, cfg.Duration)
		rec.OnRecord(prog.Observe)
	}

	// First ctrl-c: stop the workload early and finish properly. Second:
	// stop the nodes and leave.
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	var interrupted atomic.Bool
	var cl *control.Cluster
	var clMu sync.Mutex
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for range sigs {
			n++
			if n == 1 {
				interrupted.Store(true)
				log.Warn("interrupted")
				cancelRun()
				continue
			}
			clMu.Lock()
			if cl != nil {
				cl.Close()
			}
			clMu.Unlock()
			os.Exit(ExitInterrupted)
		}
	}()

	mode := UnsafeModes[cfg.Unsafe]
	opts := control.Options{Nodes: cfg.Nodes, Binary: cfg.Binary, Dir: cfg.Out, Network: nw, Timing: cfg.Timing}
	extra := map[string]string{}
	keyed, err := clusterKey(cfg, &opts, extra)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	faultSpec := cfg.Faults
	if hasGroup(cfg.Faults, "mixed") && !strings.Contains(cfg.Faults, "rogue") {
		if keyed {
			faultSpec += ",rogue-peer"
			extra["rogue-peer"] = "in mixed: the agents authenticate their node port (--cluster-key)"
		} else {
			extra["rogue-peer"] = "left out of mixed: the agent has no --cluster-key, so its node port serves anyone (-faults rogue-peer shows it)"
		}
	}
	faults, dropped, err := nemesis.Select(faultSpec, nw != nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	for _, f := range faults {
		if f.Name() == "clock-drift" {
			opts.Unsafe = true // the fault restarts nodes with --unsafe-clock-rate
		}
	}
	if cfg.TLS {
		if cfg.TLSDir != "" {
			opts.TLS = &control.TLSAssets{Dir: cfg.TLSDir}
			extra["tls"] = "mutual TLS with the certificates in " + cfg.TLSDir
		} else {
			opts.NewTLS = filepath.Join(cfg.Out, "tls")
			extra["tls"] = "mutual TLS with certificates generated for the campaign (tls/)"
		}
	}
	if cfg.Unsafe != "" {
		opts.Unsafe = true
		if mode.Args != nil {
			opts.Args = mode.Args(cfg.Nodes, cfg.TTL)
		}
		if mode.NodeArgs != nil {
			opts.NodeArgs = map[int][]string{}
			for i := 1; i <= cfg.Nodes; i++ {
				opts.NodeArgs[i] = mode.NodeArgs(i, cfg.TTL)
			}
		}
	}
	c, err := control.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		return ExitError
	}
	clMu.Lock()
	cl = c
	clMu.Unlock()
	defer c.Close()

	keys := make([]string, cfg.Keys)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	var shapes *workload.Shapes
	if cfg.Shapes || mode.Shapes {
		shapes = workload.DefaultShapes()
	}
	meta := report.Meta{
		Name:    fmt.Sprintf("%d nodes, %v, faults %s", cfg.Nodes, cfg.Duration, cfg.Faults),
		Started: time.Now(), Duration: cfg.Duration, Nodes: cfg.Nodes, Faults: cfg.Faults,
		Unsafe: cfg.Unsafe, ExpectViolation: cfg.Unsafe != "" && mode.ExpectViolation,
		Control: "loopback", ControlNote: note, Seed: int64(cfg.Seed), TTL: cfg.TTL,
		Workers: cfg.Workers, Keys: keys, TLS: cfg.TLS, ClusterKey: keyed,
		Extra: extra,
	}
	if shapes != nil {
		meta.Keys = append(meta.Keys, shapes.Semaphore, shapes.RW)
		meta.Keys = append(meta.Keys, shapes.Set...)
		extra["shapes"] = fmt.Sprintf("%s a semaphore of %d, %s shared/exclusive, sets over %s (%.0f%% of acquires)",
			shapes.Semaphore, shapes.Limit, shapes.RW, strings.Join(shapes.Set, ","), shapes.Prob*100)
	}
	extra["agent"], extra["timing"] = cfg.Binary, cfg.Timing
	if faultSpec != cfg.Faults {
		extra["faults run"] = faultSpec
	}
	if nw != nil {
		meta.Control = "netns"
	}
	if cfg.Unsafe != "" {
		meta.Name += ", unsafe " + cfg.Unsafe
		meta.Extra["unsafe mode"] = mode.Describe
	}
	if len(dropped) > 0 {
		meta.Extra["faults not available"] = strings.Join(dropped, ", ") + " (need network namespaces)"
	}

	fmt.Fprintf(os.Stderr, "jepsen: starting %d nodes (%s) in %s\n", cfg.Nodes, meta.Control, cfg.Out)
	startCtx, cancelStart := context.WithTimeout(runCtx, 90*time.Second+time.Duration(cfg.Nodes)*10*time.Second)
	if mode.Stagger != nil {
		for i, n := range c.Nodes() {
			if i > 0 && !ctxtime.Sleep(startCtx, mode.Stagger(cfg.TTL)) {
				break
			}
			if err = c.StartNode(startCtx, n, nil); err != nil {
				break
			}
		}
	} else {
		err = c.Start(startCtx)
	}
	if err == nil {
		_, err = c.WaitLeader(startCtx)
	}
	cancelStart()
	if err != nil {
		fmt.Fprintf(os.Stderr, "jepsen: the cluster did not start: %v\n(see %s/nodes/*/log)\n", err, cfg.Out)
		return ExitError
	}

	// The campaign.
	wcfg := workload.DefaultConfig()
	wcfg.Addrs, wcfg.Keys, wcfg.TTL, wcfg.Seed = c.APIAddrs(), keys, cfg.TTL, cfg.Seed
	wcfg.Shapes = shapes
	wcfg.Steady, wcfg.Chaotic = (cfg.Workers+1)/2, cfg.Workers/2
	for i := 0; i < cfg.TakeoverKeys; i++ {
		wcfg.TakeoverKeys = append(wcfg.TakeoverKeys, "t"+strconv.Itoa(i))
	}
	wcfg.Log = log.With("component", "workload")
	if a := c.TLS(); a != nil {
		if wcfg.TLS, err = a.ClientConfig(); err != nil {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			return ExitError
		}
	}
	wl := workload.New(wcfg, rec)
	nenv := &nemesis.Env{Cluster: c, Rand: rand.New(rand.NewPCG(cfg.Seed, 0x6e656d)), TTL: cfg.TTL,
		DriftBound: lease.DefaultDrift, Log: log.With("component", "nemesis")}
	ctx, cancel := context.WithTimeout(runCtx, cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	stopProgress := func() {}
	if prog != nil {
		pctx, stopProg := context.WithCancel(context.Background())
		wg.Add(1)
		go func() {
			defer wg.Done()
			prog.Run(pctx, time.Second)
		}()
		stopProgress = func() { stopProg(); wg.Wait() }
		defer stopProgress()
	}
	var nFaults int
	var wlErr error
	var inner sync.WaitGroup
	inner.Add(2)
	go func() {
		defer inner.Done()
		wlErr = wl.Run(ctx)
	}()
	go func() {
		defer inner.Done()
		nFaults = nemesis.Run(ctx, nenv, rec, faults, nemesis.Schedule{QuietMin: cfg.TTL, QuietMax: 2*cfg.TTL + 2*time.Second, Seed: cfg.Seed})
	}()
	evidence := keepEvidence(rec, online, cfg.CheckEvery, log)
	inner.Wait()
	meta.WorkloadEnd = time.Duration(clock.Now())
	stopProgress()
	stopProgress = func() {}
	if wlErr != nil {
		log.Warn("workload", "err", wlErr)
	}
	log.Info("campaign over", "faults", nFaults)

	// Recovery: final heal, time to serve, convergence.
	healCtx, cancelHeal := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancelHeal()
	// Time to serve counts from the start of the final heal, so it
	// includes restarting and resuming nodes and the election.
	serve := rec.Invoke(history.Record{Client: history.ProbeClient, Op: history.Serve})
	if err := nemesis.HealAll(healCtx, nenv, rec); err != nil {
		log.Warn("final heal", "err", err)
	}
	release := probeServe(healCtx, c, rec, serve, cfg, log)
	probeDigests(healCtx, c, rec, cfg, log)
	release()
	c.Close()
	evidence()
	if err := rec.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: writing history:", err)
	}
	if err := zw.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: writing history:", err)
	}
	if interrupted.Load() {
		meta.Extra["interrupted"] = "yes: stopped early by a signal"
	}

	if _, err := online.Advance(rec.Records(), history.Infinity); err != nil {
		log.Warn("online check", "err", err)
	}
	checkStart := time.Now()
	res, err := checker.Check(rec.Records(), copts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: checking:", err)
		return ExitError
	}
	meta.Extra["checking time"] = time.Since(checkStart).Round(time.Millisecond).String()
	if err := checker.WriteLines(vf, checker.FinalLines(res, history.End(rec.Records()))); err != nil {
		log.Warn("verdicts", "err", err)
	}
	r := report.Build(meta, rec.Records(), res)
	if err := report.Write(cfg.Out, r, rec.Records()); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: writing the report:", err)
	}
	fmt.Fprintln(cfg.Stdout, report.Line(r))
	fmt.Fprintf(os.Stderr, "jepsen: report: %s\n", filepath.Join(cfg.Out, "report.html"))
	if cfg.Ledger != "" {
		commit, dirty := control.Revision(cfg.Binary)
		e := report.NewLedgerEntry(r, commit, dirty, cfg.Out)
		e.Note, e.Host = cfg.LedgerNote, fmt.Sprintf("%d cores", runtime.NumCPU())
		if err := report.AppendLedger(cfg.Ledger, e); err != nil {
			fmt.Fprintln(os.Stderr, "jepsen: ledger:", err)
		} else {
			fmt.Fprintf(os.Stderr, "jepsen: appended to the ledger %s (commit it)\n", cfg.Ledger)
		}
	}
	if !r.Passed {
		fmt.Fprintf(os.Stderr, "jepsen: kept the nodes' data directories for inspection: %s\n", filepath.Join(cfg.Out, "nodes"))
		return ExitViolation
	}
	if !cfg.KeepData {
		for _, n := range c.Nodes() {
			os.RemoveAll(n.DataDir)
		}
	}
	if interrupted.Load() {
		return ExitInterrupted // checked, but shorter than planned
	}
	return ExitPass
}

// clusterKey decides whether the agents get a cluster key (-cluster-key
// auto: whenever `leasenode agent --help` lists --cluster-key) and sets it
// in opts: a fresh key (32 random bytes, base64), in a file if the agent
// takes --cluster-key-file (so it does not show in ps). The rogue peer
// never has it. It reports whether a key is in use.
func clusterKey(cfg Config, opts *control.Options, extra map[string]string) (bool, error) {
	if cfg.ClusterKey == "off" {
		extra["cluster key"] = "off (-cluster-key off)"
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	flags, err := control.AgentFlags(ctx, cfg.Binary)
	if err != nil {
		return false, err
	}
	if !flags["cluster-key"] && !flags["cluster-key-file"] {
		if cfg.ClusterKey == "on" {
			return false, fmt.Errorf("-cluster-key on: %s agent --help lists no --cluster-key", cfg.Binary)
		}
		extra["cluster key"] = "none: the agent has no --cluster-key (its node port is not authenticated)"
		return false, nil
	}
	key := control.NewClusterKey()
	if flags["cluster-key-file"] {
		path := filepath.Join(cfg.Out, "cluster.key")
		if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
			return false, err
		}
		opts.ClusterKeyFile = path
		extra["cluster key"] = "a fresh key for every agent (--cluster-key-file cluster.key)"
	} else {
		opts.ClusterKey = key
		extra["cluster key"] = "a fresh key for every agent (--cluster-key)"
	}
	return true, nil
}

func hasGroup(spec, group string) bool {
	for _, p := range strings.Split(spec, ",") {
		if strings.TrimSpace(p) == group {
			return true
		}
	}
	return false
}

// checkerOptions maps the campaign's configuration to the checkers'. One
// election for takeover-bound: failure detection (up to two heartbeat
// timeouts), the vote and the new leader's Barrier and Promote (two
// election timeouts): 1 s with -timing fast (node.FastLANTiming, 250 ms
// timeouts), 4 s with default (1 s each).
func checkerOptions(cfg Config) checker.Options {
	t := node.DefaultTiming()
	if cfg.Timing == "fast" {
		t = node.FastLANTiming()
	}
	election := 2*t.HeartbeatTimeout + 2*t.ElectionTimeout
	return checker.Options{LinearizableTimeout: cfg.LinTimeout, IndeterminateHorizon: linHorizon(cfg), ServeBound: cfg.ServeBound,
		Takeover: checker.TakeoverOptions{Election: election, Slack: cfg.TakeoverSlack, Drift: lease.DefaultDrift}}
}

// linHorizon is -lin-horizon, or by default the longer of 30 s and
// 3·TTL + 20 s: longer than any fault's hold (a partition holds at most
// 2·TTL + 8 s) plus a request's timeouts, so a request the cluster still
// applies after its client gave up lands within it.
func linHorizon(cfg Config) time.Duration {
	if cfg.LinHorizon != 0 {
		return cfg.LinHorizon
	}
	return max(checker.DefaultIndeterminateHorizon, 3*cfg.TTL+20*time.Second)
}

// keepEvidence flushes the history every few seconds and runs the online
// check every interval until the returned function is called (which stops
// both and waits).
func keepEvidence(rec *history.Recorder, online *checker.Online, interval time.Duration, log *slog.Logger) (stop func()) {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		flush := time.NewTicker(5 * time.Second)
		defer flush.Stop()
		check := time.NewTicker(interval)
		defer check.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-flush.C:
				if err := rec.Flush(); err != nil {
					log.Warn("flushing the history", "err", err)
				}
			case <-check.C:
				lines, err := online.Advance(rec.Records(), rec.Clock().Now())
				if err != nil {
					log.Warn("online check", "err", err)
				}
				for _, l := range lines {
					if l.Verdict != checker.Valid {
						log.Warn("online verdict", "checker", l.Checker, "key", l.Key, "verdict", l.Verdict, "summary", l.Summary)
					}
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// probeServe completes the Serve probe id when the cluster grants a lease
// again. The lease is kept (so the state digests cover a held record)
// until the returned function releases it.
func probeServe(ctx context.Context, c *control.Cluster, rec *history.Recorder, id int64, cfg Config, log *slog.Logger) (release func()) {
	deadline := time.Now().Add(2 * cfg.ServeBound)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var cli *lease.Client
		var l *lease.Lease
		last = func() error {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			var err error
			opts := []lease.Option{lease.WithHolder("jepsen-probe"), lease.WithTTL(30 * time.Second)}
			if a := c.TLS(); a != nil {
				tc, err := a.ClientConfig()
				if err != nil {
					return err
				}
				opts = append(opts, lease.WithTLS(tc))
			}
			cli, err = lease.Dial(cctx, c.APIAddrs(), opts...)
			if err != nil {
				return err
			}
			l, err = cli.AcquireTimeout(cctx, "jepsen-probe", 2*time.Second, lease.Value([]byte("recovery probe")))
			return err
		}()
		if last == nil {
			rec.Complete(id, history.Record{Type: history.OK})
			return func() {
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				l.Release(cctx)
				cli.Close(cctx)
			}
		}
		if cli != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			cli.Close(cctx)
			cancel()
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Warn("cluster did not serve after the final heal", "err", last)
	msg := "gave up"
	if last != nil {
		msg = last.Error()
	}
	rec.Complete(id, history.Record{Type: history.Fail, Err: msg})
	return func() {}
}

// probeDigests waits until every node reports the same applied index and
// state digest twice in a row (or gives up), then records each node's last
// answer.
func probeDigests(ctx context.Context, c *control.Cluster, rec *history.Recorder, cfg Config, log *slog.Logger) {
	type obs struct {
		applied uint64
		digest  string
		n       int
		err     error
	}
	deadline := time.Now().Add(2*cfg.TTL + 60*time.Second)
	var last []obs
	stable := 0
	for {
		cur := make([]obs, len(c.Nodes()))
		var wg sync.WaitGroup
		for i, n := range c.Nodes() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				a, d, cnt, err := c.Digest(cctx, n)
				cur[i] = obs{a, d, cnt, err}
			}()
		}
		wg.Wait()
		same := true
		for _, o := range cur {
			if o.err != nil || o.applied != cur[0].applied || o.digest != cur[0].digest {
				same = false
			}
		}
		if same && last != nil && last[0].applied == cur[0].applied {
			stable++
		} else {
			stable = 0
		}
		last = cur
		if stable >= 1 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i, n := range c.Nodes() {
		o := last[i]
		r := history.Record{Client: history.ProbeClient, Op: history.Digest, Node: n.ID, Applied: o.applied, Value: o.digest}
		if o.err != nil {
			r.Err = o.err.Error()
		}
		rec.Event(r)
		log.Info("digest", "node", n.ID, "applied", o.applied, "digest", o.digest, "records", o.n, "err", o.err)
	}
}

// Recheck checks a saved history — a finished campaign's, or what a
// crashed one left (history.jsonl.gz is flushed every few seconds; a cut
// stream is read up to the cut) — with cfg's checker options, prints the
// verdict line and the checking time, and writes results.json and
// report.html to cfg.Out (the history's directory if empty).
func Recheck(path string, cfg Config) int {
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	records, err := history.Load(path)
	if err != nil {
		if !errors.Is(err, io.ErrUnexpectedEOF) || len(records) == 0 {
			fmt.Fprintln(os.Stderr, "jepsen:", err)
			return ExitError
		}
		fmt.Fprintf(os.Stderr, "jepsen: %v: checking the %d records before the cut\n", err, len(records))
	}
	if cfg.Out == "" {
		cfg.Out = filepath.Dir(path)
	}
	meta := report.Meta{Name: "re-check of " + path, Started: time.Now(), Control: "recheck", Extra: map[string]string{"history": path}}
	if old, err := report.Load(filepath.Join(filepath.Dir(path), "results.json")); err == nil {
		meta = old.Meta
		meta.Name = "re-check of " + meta.Name
	}
	start := time.Now()
	copts := checkerOptions(cfg)
	copts.VisualizeDir = cfg.Out
	res, err := checker.Check(records, copts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: checking:", err)
		return ExitError
	}
	took := time.Since(start)
	if meta.Extra == nil {
		meta.Extra = map[string]string{}
	}
	meta.Extra["checking time"] = took.Round(time.Millisecond).String()
	r := report.Build(meta, records, res)
	if err := report.Write(cfg.Out, r, records); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen: writing the report:", err)
	}
	fmt.Fprintln(cfg.Stdout, report.Line(r))
	for _, c := range res.Checkers {
		fmt.Fprintf(os.Stderr, "  %-16s %-8s %s\n", c.Name, c.Verdict, c.Summary)
	}
	fmt.Fprintf(os.Stderr, "jepsen: checked %d records in %v; report: %s\n", len(records), took.Round(time.Millisecond), filepath.Join(cfg.Out, "report.html"))
	if !r.Passed {
		return ExitViolation
	}
	return ExitPass
}

// PrintSchedule lists the faults a seed draws for a campaign of cfg's
// duration (counting quiet spells and holds only: injecting and healing
// take extra time at run time, so a real campaign may run fewer).
func PrintSchedule(w io.Writer, cfg Config) error {
	faults, dropped, err := nemesis.Select(cfg.Faults, !cfg.Loopback)
	if err != nil {
		return err
	}
	if len(faults) == 0 {
		return errors.New("no faults selected")
	}
	env := &nemesis.Env{TTL: cfg.TTL, DriftBound: lease.DefaultDrift}
	s := nemesis.Schedule{QuietMin: cfg.TTL, QuietMax: 2*cfg.TTL + 2*time.Second, Seed: cfg.Seed}
	fmt.Fprintf(w, "seed %d, faults %s, %v:\n", cfg.Seed, cfg.Faults, cfg.Duration)
	var t time.Duration
	for i := 0; t < cfg.Duration; i++ {
		p := nemesis.Plan(env, faults, s, i)
		t += p.Quiet
		fmt.Fprintf(w, "  at ~%-9v %-17s %s\n", t.Round(time.Second), p.Fault.Name(), p)
		t += p.Hold
	}
	if len(dropped) > 0 {
		fmt.Fprintf(w, "not available without namespaces: %s\n", strings.Join(dropped, ", "))
	}
	return nil
}
