package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/metrics"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/transport"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

const agentSynopsis = `Runs one node of a cluster. Start three with --bootstrap-expect 3 and --join
pointing at each other's gossip address; they elect a leader once they all
see each other. Prints one line to stdout once listening:
  leasenode agent ready api=IP:PORT raft=IP:PORT gossip=IP:PORT [http=IP:PORT]
and serves the client API, /metrics, /healthz and /readyz on --api (and the
last three, in plain HTTP, on --http if given).

Only nodes of this cluster may talk on --bind and --gossip. On any address
but loopback, give every node the same cluster key:
  head -c 32 /dev/urandom | base64 > cluster.key    # once, copy to each node
  leasenode agent --cluster-key-file cluster.key ...
(or LEASENODE_CLUSTER_KEY), or TLS certificates with the node role
(leasenode tls -h) and a --gossip-key or cluster key. Without either the
agent refuses to start unless --insecure.

An agent whose node stops on a Raft entry it cannot apply (written by a
newer version, or damaged on disk: its checksum fails) exits with 1,
naming the entry.

SIGINT or SIGTERM stop the agent gracefully and exit 0: it hands leadership
to another voter first and stays a member of the cluster (a voter stays a
voter), as a restart or upgrade needs, if it is back within
--dead-server-grace (30s): a node down longer is removed by the leader; with --leave-on-stop it also leaves
the cluster for good (for a node that is retired). A second signal exits at
once with 130 (SIGINT) or 143 (SIGTERM).

Settings come from flags, then the environment (LEASENODE_<FLAG>), then a
TOML file given with --config, whose keys are the flag names:
  id = "n1"
  data-dir = "/var/lib/leasenode"
  join = ["10.0.0.2:7401", "10.0.0.3:7401"]
  bootstrap-expect = 3
  cluster-key-file = "/etc/leasenode/cluster.key"
A key that is not a flag is an error. --print-config prints the effective
settings (secrets redacted) and exits, and says what is missing or wrong.
The --unsafe-* switches of chaos tests are left out of this help (see
jepsen/README.md).`

// agentFlags are the flags of `leasenode agent`.
type agentFlags struct {
	id, dataDir                  string
	bind, advertise              string
	gossip, gossipAdvertise      string
	api, apiAdvertise            string
	http                         string
	join                         string
	bootstrapExpect, voters      int
	timing                       string
	tlsCert, tlsKey, tlsCA       string
	gossipKey, authToken         string
	authTokenFile                string
	maxRequestBytes, maxBytes    int64
	maxExtendItems, maxConns     int
	maxWatches                   int
	maxWaiters                   int
	maxFrameRate                 int
	maxAPIRate                   int
	maxHandshakeRate             int
	maxHandshakeRatePerSource    int
	maxLeases                    int
	minTTL                       time.Duration
	deadServerGrace              time.Duration
	clusterKey, clusterKeyFile   string
	insecure                     bool
	logLevel, logFormat          string
	unsafeClockRate              float64
	unsafeSkipRebase, unsafeWall bool
	unsafeClockSkew              time.Duration
	unsafeExtendNoCommit, noSync bool
	shutdownTimeout              time.Duration
	leaveOnStop                  bool
	enablePprof                  bool
	logStore                     string
	tlsServerName                string
	configFile                   string
	fs                           *pflag.FlagSet
	unsafeNames                  []string
	shapes                       unsafeShapeFlags
}

// newAgentFlags defines the agent's flags on fs (snapshot restore takes
// the same flags as the agent it prepares).
func newAgentFlags(fs *pflag.FlagSet) *agentFlags {
	a := &agentFlags{fs: fs}
	fs.StringVar(&a.id, "id", "", "node ID: unique in the cluster and stable across restarts (required)")
	fs.StringVar(&a.dataDir, "data-dir", "", "directory for the Raft log and snapshots (required)")
	fs.StringVar(&a.bind, "bind", "127.0.0.1:7400", "IP:PORT for Raft and node-to-node RPC (TCP)")
	fs.StringVar(&a.advertise, "advertise", "", "IP:PORT other nodes use to reach --bind (default --bind)")
	fs.StringVar(&a.gossip, "gossip", "127.0.0.1:7401", "IP:PORT for gossip (UDP and TCP)")
	fs.StringVar(&a.gossipAdvertise, "gossip-advertise", "", "IP:PORT other nodes use to reach --gossip (default --gossip)")
	fs.StringVar(&a.api, "api", "127.0.0.1:7402", "IP:PORT for the client API, /metrics, /healthz and /readyz")
	fs.StringVar(&a.apiAdvertise, "api-advertise", "", "HOST:PORT clients use to reach --api (default --api); a DNS name works, e.g. a\nKubernetes pod's, which a TLS certificate can carry when IPs change")
	fs.StringVar(&a.http, "http", "", "IP:PORT for /healthz, /readyz and /metrics in plain HTTP, no client certificate\nor token (for probes and Prometheus when --api needs TLS); default: none")
	fs.StringVar(&a.join, "join", "", "gossip addresses of other nodes, comma-separated (HOST:PORT[,HOST:PORT]); a DNS name\njoins every address it resolves to (a Kubernetes headless Service)")
	fs.IntVar(&a.bootstrapExpect, "bootstrap-expect", 0, "bootstrap a new cluster once this many nodes see each other (0: join an existing one)")
	fs.IntVar(&a.voters, "voters", 3, "Raft voters the leader keeps; other nodes are non-voting replicas (odd)")
	durationVar(fs, &a.deadServerGrace, "dead-server-grace", 30*time.Second, "how long a node may stay down before the leader removes it from the cluster (a voter\nstopped for a restart or upgrade must be back within it to stay one)")
	fs.StringVar(&a.timing, "timing", "default", "Raft timeouts: default (LAN: ~1 s to replace a dead leader, 1-3 s a hung one) or fast (one machine, ~0.5 s)")
	fs.StringVar(&a.clusterKey, "cluster-key", "", "base64 of 32 random bytes, the same on every node: only holders of it reach --bind\n(mutual TLS derived from it) and gossip; prefer --cluster-key-file or the environment\n(a command line shows in ps)")
	fs.StringVar(&a.clusterKeyFile, "cluster-key-file", "", "file holding the --cluster-key (make one: head -c 32 /dev/urandom | base64 > FILE)")
	fs.BoolVar(&a.insecure, "insecure", false, "allow an unauthenticated node port and gossip on non-loopback addresses (no cluster\nkey or TLS): anyone who reaches them can read and take every lease")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "this node's certificate (PEM) with the node role (leasenode tls cert create --node):\nmutual TLS for Raft, RPC and the API")
	fs.StringVar(&a.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	fs.StringVar(&a.tlsCA, "tls-ca", "", "CA bundle (PEM) that peers' and clients' certificates must chain to")
	fs.StringVar(&a.tlsServerName, "tls-server-name", "", "name checked in other nodes' certificates instead of the address dialed, e.g.\nnode.leasenode (every node certificate carries it): for nodes whose IPs change (Kubernetes)")
	fs.StringVar(&a.gossipKey, "gossip-key", "", "base64 AES key (16, 24 or 32 bytes) encrypting gossip; same on every node\n(default: derived from the cluster key)")
	fs.StringVar(&a.authToken, "auth-token", "", `token clients must send ("Authorization: Bearer TOKEN") on the client API (visible in ps: prefer --auth-token-file or LEASENODE_AUTH_TOKEN)`)
	fs.StringVar(&a.authTokenFile, "auth-token-file", "", "file holding the --auth-token (one line)")
	fs.Int64Var(&a.maxRequestBytes, "max-request-bytes", 4<<20, "largest client request, as sent and decompressed")
	fs.IntVar(&a.maxLeases, "max-leases", 2_000_000, "most leases and lock-delays the cluster holds; past it new acquires are refused (extends and releases go on)")
	fs.Int64Var(&a.maxBytes, "max-lease-bytes", 256<<20, "most bytes of keys, holders and values the cluster's leases hold, with the keys and holders of request ids kept 15 min after a lease ends; past it new acquires are refused")
	fs.IntVar(&a.maxExtendItems, "max-extend-items", 10_000, "most keys one Extend request may renew (each key of a multi-key lease counts)")
	fs.IntVar(&a.maxConns, "max-conns", 1024, "most concurrent client API connections; one client source (IPv4 /24, IPv6 /64) may hold a quarter of them (at least 64); at the limit, one of the source holding the most, or the one idle longest, is closed to admit a new one")
	fs.IntVar(&a.maxFrameRate, "max-frame-rate", 20_000, "most HTTP/2 frames a second one client API connection may send (a tenth of it at once; a request\nis 2-3); past it, token or not, the connection is sent GOAWAY ENHANCE_YOUR_CALM and closed")
	fs.IntVar(&a.maxAPIRate, "max-api-rate", 10_000, "most client API requests a second this agent serves, all connections together (a PING or other\ncontrol frame counts a tenth of one); past it reads are paced, fairly between client /24s (IPv6 /64s)\nand their addresses, not refused")
	fs.IntVar(&a.maxHandshakeRate, "max-handshake-rate", node.DefaultHandshakeRate(), "most TLS handshakes a second each TLS port (API, node) starts, from all sources together\n(burst: one second's worth; default 250 per CPU, at least 500); a whole ClientHello counts, and one past it is refused before any crypto")
	fs.IntVar(&a.maxHandshakeRatePerSource, "max-handshake-rate-per-source", 200, "most TLS handshakes a second each TLS port starts from one IPv4 /24 or IPv6 /64\n(burst: two seconds' worth); a whole ClientHello counts, and one past it is refused before any crypto")
	fs.IntVar(&a.maxWatches, "max-watches", node.DefaultLimits(node.DefaultTiming()).MaxWatches, "most Watch streams open on this agent at once (past it a Watch is refused until one ends; each event is sent to every watcher of its key by the leader: raise it where the leader has the cores)")
	fs.IntVar(&a.maxWaiters, "max-waiters", 8192, "most waiting acquires this agent serves at once: its clients' (forwarded or not), and as leader those forwarded to it; one client source (IPv4 /24, IPv6 /64) may hold a quarter of them (at least 64), through any node, and past its first 64 only while a quarter is free, and one forwarding node half; past any a waiting acquire of a held key is refused resource_exhausted (a try without waiting never is); each costs about 11-18 KB")
	durationVar(fs, &a.minTTL, "min-ttl", 0, "shortest lease TTL a client may ask for; 0: the Raft leader lease timeout, 500ms (250ms with --timing fast)")
	fs.StringVar(&a.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&a.logFormat, "log-format", "text", "text or json (logs go to stderr)")
	durationVar(fs, &a.shutdownTimeout, "shutdown-timeout", 10*time.Second, "bound on the graceful stop after SIGINT/SIGTERM")
	fs.BoolVar(&a.enablePprof, "enable-pprof", false, "serve Go's profiler under /debug/pprof/ on --api, behind the auth token (like etcd's --enable-pprof)")
	fs.StringVar(&a.logStore, "log-store", "", "Raft log store of a NEW data dir: wal (default: one fsync per append) or boltdb; an existing data dir keeps its own")
	fs.BoolVar(&a.leaveOnStop, "leave-on-stop", false, "leave the cluster for good on SIGINT/SIGTERM (retiring a node); default: stay a member, as for a restart")
	fs.BoolVar(&a.noSync, "unsafe-no-sync", false, "UNSAFE: do not fsync the Raft log (benchmarks only; needs LEASENODE_UNSAFE=1)")
	fs.Float64Var(&a.unsafeClockRate, "unsafe-clock-rate", 0, "UNSAFE: scale the leader clock (chaos tests only; needs LEASENODE_UNSAFE=1)")
	fs.BoolVar(&a.unsafeSkipRebase, "unsafe-skip-rebase", false, "UNSAFE: do not rebase expiries on leader change (chaos tests; needs LEASENODE_UNSAFE=1)")
	fs.BoolVar(&a.unsafeWall, "unsafe-wall-clock", false, "UNSAFE: judge expiry by the wall clock (chaos tests; needs LEASENODE_UNSAFE=1)")
	durationVar(fs, &a.unsafeClockSkew, "unsafe-clock-skew", 0, "UNSAFE: add this skew to the wall clock of --unsafe-wall-clock (needs LEASENODE_UNSAFE=1)")
	fs.BoolVar(&a.unsafeExtendNoCommit, "unsafe-extend-no-commit", false, "UNSAFE: answer extends without committing them (chaos tests; needs LEASENODE_UNSAFE=1)")
	a.unsafeNames = []string{"unsafe-no-sync", "unsafe-clock-rate", "unsafe-skip-rebase", "unsafe-wall-clock", "unsafe-clock-skew", "unsafe-extend-no-commit"}
	fs.StringVar(&a.configFile, "config", "", "TOML file of settings, keys named as the flags (data-dir = \"/var/lib/leasenode\");\nflags and the environment win over it")
	a.unsafeNames = append(a.unsafeNames, a.shapes.register(fs)...)
	return a
}

// completions registers completions of the agent's flags on cmd.
func (a *agentFlags) completions(cmd *cobra.Command) {
	completeWords(cmd, "timing", "default", "fast")
	completeWords(cmd, "log-level", "debug", "info", "warn", "error")
	completeWords(cmd, "log-format", "text", "json")
	_ = cmd.MarkFlagFilename("config", "toml")
	for _, f := range []string{"tls-cert", "tls-key", "tls-ca"} {
		_ = cmd.MarkFlagFilename(f, "pem")
	}
	_ = cmd.MarkFlagDirname("data-dir")
}

// load fills the settings given neither as flags nor in the environment
// from --config (call it after bindEnv).
func (a *agentFlags) load() error {
	if a.configFile == "" {
		return nil
	}
	return loadConfigFile(a.fs, a.configFile, "config", "print-config")
}

// isSet reports whether flag name was given on the command line, in the
// environment or in the config file.
func (a *agentFlags) isSet(name string) bool { return a.fs.Changed(name) }

// config maps the flags to a node.Config; errors are usage errors.
func (a *agentFlags) config() (node.Config, error) {
	cfg := node.DefaultConfig()
	if a.id == "" {
		return cfg, usagef("--id is required (or %s): a unique, stable name for this node", envName("id"))
	}
	if a.dataDir == "" {
		return cfg, usagef("--data-dir is required (or %s): where this node keeps its Raft log", envName("data-dir"))
	}
	for name := range secretFlags {
		if f := a.fs.Lookup(name); f != nil && f.Value.String() == redacted {
			return cfg, usagef("--%s is %q (from the %s), the placeholder --print-config prints instead of the secret: put the real one in its place",
				name, redacted, source(f))
		}
	}
	var unsafe []string
	for _, name := range a.unsafeNames {
		if a.isSet(name) {
			unsafe = append(unsafe, "--"+name)
		}
	}
	if len(unsafe) > 0 && os.Getenv("LEASENODE_UNSAFE") != "1" {
		return cfg, usagef("%s breaks the safety of leases and exists only for chaos tests; set LEASENODE_UNSAFE=1 to allow it",
			strings.Join(unsafe, ", "))
	}
	cfg.ID, cfg.DataDir = a.id, a.dataDir
	cfg.BindAddr, cfg.AdvertiseAddr = a.bind, a.advertise
	cfg.GossipAddr, cfg.GossipAdvertiseAddr = a.gossip, a.gossipAdvertise
	cfg.APIAddr, cfg.APIAdvertiseAddr = a.api, a.apiAdvertise
	if a.join != "" {
		for _, j := range strings.Split(a.join, ",") {
			if j = strings.TrimSpace(j); j != "" {
				cfg.Join = append(cfg.Join, j)
			}
		}
	}
	cfg.BootstrapExpect, cfg.Voters = a.bootstrapExpect, a.voters
	if a.deadServerGrace <= 0 {
		return cfg, usagef("--dead-server-grace %v: must be positive (30s by default)", a.deadServerGrace)
	}
	cfg.DeadServerGrace = a.deadServerGrace
	cfg.LeaveOnClose = a.leaveOnStop
	cfg.EnablePprof, cfg.LogStore = a.enablePprof, a.logStore
	switch a.timing {
	case "default":
		cfg.Timing = node.DefaultTiming()
	case "fast":
		cfg.Timing = node.FastLANTiming()
	default:
		return cfg, usagef("--timing %q: want default or fast", a.timing)
	}
	cfg.TLSFiles = transport.TLSFiles{CertFile: a.tlsCert, KeyFile: a.tlsKey, CAFile: a.tlsCA, ServerName: a.tlsServerName}
	if (cfg.TLSFiles.Enabled() || a.tlsServerName != "") && (a.tlsCert == "" || a.tlsKey == "" || a.tlsCA == "") {
		return cfg, usagef("TLS needs all of --tls-cert, --tls-key and --tls-ca")
	}
	if a.clusterKey != "" && a.clusterKeyFile != "" {
		switch stronger(a.fs, "cluster-key", "cluster-key-file") {
		case "cluster-key":
			a.clusterKeyFile = ""
		case "cluster-key-file":
			a.clusterKey = ""
		}
	}
	switch {
	case a.clusterKey != "" && a.clusterKeyFile != "":
		return cfg, usagef("give --cluster-key or --cluster-key-file, not both")
	case a.clusterKey != "":
		key, err := transport.ParseClusterKey(a.clusterKey)
		if err != nil {
			return cfg, usagef("--cluster-key: %v", err)
		}
		cfg.ClusterKey = key
	case a.clusterKeyFile != "":
		b, err := readSecretFile("cluster-key-file", a.clusterKeyFile)
		if err != nil {
			return cfg, err
		}
		key, err := transport.ParseClusterKey(b)
		if err != nil {
			return cfg, usagef("--cluster-key-file %s: %v", a.clusterKeyFile, err)
		}
		cfg.ClusterKey = key
	}
	cfg.Insecure = a.insecure
	if a.gossipKey != "" {
		key, err := base64.StdEncoding.DecodeString(a.gossipKey)
		if err != nil {
			return cfg, usagef("--gossip-key: not base64: %v (make one with: head -c 32 /dev/urandom | base64)", err)
		}
		cfg.GossipKey = key
	}
	tok, err := authToken(a.fs, a.authToken, a.authTokenFile)
	if err != nil {
		return cfg, err
	}
	cfg.AuthToken = tok
	cfg.Limits = node.Limits{MaxRequestBytes: a.maxRequestBytes, MaxExtendItems: a.maxExtendItems, MaxConns: a.maxConns, MinTTL: a.minTTL,
		MaxWatches: a.maxWatches, MaxWaiters: a.maxWaiters, MaxLeases: a.maxLeases, MaxLeaseBytes: a.maxBytes, MaxFrameRate: a.maxFrameRate, MaxAPIRate: a.maxAPIRate,
		MaxHandshakeRate: a.maxHandshakeRate, MaxHandshakeRatePerSource: a.maxHandshakeRatePerSource}
	cfg.NoSync = a.noSync
	if a.unsafeClockRate != 0 || a.unsafeSkipRebase || a.unsafeWall || a.unsafeClockSkew != 0 || a.unsafeExtendNoCommit {
		cfg.Testing = &node.TestingKnobs{ClockRate: a.unsafeClockRate, SkipRebase: a.unsafeSkipRebase,
			WallClock: a.unsafeWall, ClockSkew: a.unsafeClockSkew, ExtendNoCommit: a.unsafeExtendNoCommit}
	}
	a.shapes.apply(&cfg)
	logger, err := newLogger(a.logLevel, a.logFormat)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = logger
	if err := cfg.Validate(); err != nil {
		return cfg, usagef("%s", configFlags.Replace(err.Error()))
	}
	return cfg, nil
}

// configFlags names, in node.Config's errors, the agent flag for each
// field (longest names first, so Limits.MaxLeaseBytes is not taken for
// MaxLeases).
var configFlags = strings.NewReplacer(
	"Limits.MaxRequestBytes", "--max-request-bytes",
	"Limits.MaxExtendItems", "--max-extend-items",
	"Limits.MaxLeases", "--max-leases",
	"Limits.MaxWatches", "--max-watches",
	"Limits.MaxWaiters", "--max-waiters",
	"Limits.MaxFrameRate", "--max-frame-rate",
	"Limits.MaxAPIRate", "--max-api-rate",
	"Limits.MaxHandshakeRatePerSource", "--max-handshake-rate-per-source",
	"Limits.MaxHandshakeRate", "--max-handshake-rate",
	"MaxLeaseBytes", "--max-lease-bytes",
	"Limits.MinTTL", "--min-ttl",
	"BootstrapExpect", "--bootstrap-expect",
	"AdvertiseAddr", "--advertise",
	"GossipAddr", "--gossip",
	"BindAddr", "--bind",
	"APIAddr", "--api",
	"LogStore", "--log-store",
	"Voters", "--voters",
	"DeadServerGrace", "--dead-server-grace",
	"ClusterKey", "--cluster-key",
	"GossipKey", "--gossip-key",
)

// newLogger builds the stderr logger of --log-level and --log-format.
func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

func (ap *app) agentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent --id ID --data-dir DIR [flags]",
		Short: "run one node of a cluster (daemon)",
		Long:  agentSynopsis,
		Args:  nargs(0, 0),
	}
	a := newAgentFlags(cmd.Flags())
	a.completions(cmd)
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if strings.HasPrefix(f.Name, "unsafe-") {
			f.Hidden = true
		}
	})
	printConfig := cmd.Flags().Bool("print-config", false, "print the effective settings (flags > environment > --config file > defaults; secrets\nredacted) as TOML and exit")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
		if err := a.load(); err != nil {
			return err
		}
		cfg, err := a.config()
		if *printConfig {
			// Printed even when settings are missing or wrong (a unit file
			// that sets some by environment only): the error follows.
			var notes map[string]string
			if a.minTTL == 0 {
				lease := node.DefaultTiming().LeaderLeaseTimeout
				if a.timing == "fast" {
					lease = node.FastLANTiming().LeaderLeaseTimeout
				}
				notes = map[string]string{"min-ttl": fmt.Sprintf("0s: the leader lease timeout of this --timing, %v", lease)}
			}
			if perr := printEffectiveConfig(ap.stdout, a.fs, notes, "config", "print-config"); perr != nil {
				return perr
			}
			if err != nil {
				return fmt.Errorf("these settings cannot start an agent yet: %w", err)
			}
			return nil
		}
		if err != nil {
			return err
		}
		return runAgent(ctx, ap.sig, a, cfg)
	})
	return cmd
}

func runAgent(ctx context.Context, sig *signals, a *agentFlags, cfg node.Config) error {
	if err := checkHTTPAddr(a.http, cfg); err != nil {
		return err
	}
	m := metrics.New(metrics.Options{ProcessMetrics: true})
	cfg.HTTPHandlers = m.Handlers()
	cfg.APIHandlers = m.ReflectionHandlers()
	cfg.APIMiddleware = m.Middleware
	probes, err := serveProbes(a.http, m.Handlers(), cfg.Logger)
	if err != nil {
		return err
	}
	defer probes.Close()

	startCtx, cancelStart := sig.cancelOn(ctx)
	n, err := node.Start(startCtx, cfg)
	cancelStart()
	var addrErr *node.AddrError
	if errors.As(err, &addrErr) {
		// Found before the data dir was touched: name the flag.
		return fmt.Errorf("start: %s", configFlags.Replace(addrErr.Error()))
	}
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	m.Attach(n)
	runCtx, stopMetrics := context.WithCancel(ctx)
	defer stopMetrics()
	metricsDone := make(chan struct{})
	go func() {
		defer close(metricsDone)
		m.Run(runCtx, n)
	}()
	gossip := cfg.GossipAdvertiseAddr
	if gossip == "" {
		gossip = cfg.GossipAddr
	}
	extra := ""
	if a.http != "" {
		extra = " http=" + probes.Addr()
	}
	fmt.Printf("leasenode agent ready api=%s raft=%s gossip=%s%s\n", n.APIAddr(), n.RaftAddr(), gossip, extra)

	var first os.Signal
	select {
	case first = <-sig.C:
	case <-n.Done():
		// The node stopped on its own: it met a Raft entry it cannot
		// apply (newer version, checksum mismatch) and logged it. A
		// process that lingered on would look alive to a supervisor
		// while it serves nothing; exit so it is seen and restarted.
		stopMetrics()
		<-metricsDone
		return fmt.Errorf("node stopped: %w", n.Err())
	}
	what := fmt.Sprintf("stopping (this node stays a member of the cluster if it is back within %v, --dead-server-grace; later the leader removes it)", cfg.DeadServerGrace)
	if cfg.LeaveOnClose {
		what = "leaving the cluster for good (--leave-on-stop)"
	}
	cfg.Logger.Info(what+"; signal again to exit at once", "signal", first.String())
	closed := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(context.Background(), a.shutdownTimeout)
		defer cancel()
		closed <- n.Close(cctx)
	}()
	firstAt := time.Now()
	for {
		select {
		case err := <-closed:
			stopMetrics()
			<-metricsDone
			if err != nil {
				return fmt.Errorf("close: %w", err)
			}
			cfg.Logger.Info("stopped")
			return nil
		case second := <-sig.C:
			if time.Since(firstAt) < sameSignal {
				// One signal sent twice: to the process and to its
				// group (GNU timeout, some supervisors), not an
				// operator's second Ctrl-C.
				continue
			}
			return exitAtOnce(second)
		}
	}
}

// sameSignal: a signal that follows the first within this is taken for a
// copy of it, not a request to exit at once.
const sameSignal = 200 * time.Millisecond

// exitAtOnce is the agent's answer to a second signal while it stops.
func exitAtOnce(second os.Signal) error {
	code := exitFailure
	if s, ok := second.(syscall.Signal); ok {
		code = 128 + int(s)
	}
	return &exitError{code: code, msg: "second " + second.String() + ": exiting at once"}
}

// checkHTTPAddr refuses an --http address on the port of --bind, --gossip
// or --api (node.Config.Validate checks those three against each other).
func checkHTTPAddr(addr string, cfg node.Config) error {
	if addr == "" {
		return nil
	}
	hh, hp, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("--http %q: %v", addr, err)
	}
	for _, o := range []struct{ flag, addr string }{{"--bind", cfg.BindAddr}, {"--gossip", cfg.GossipAddr}, {"--api", cfg.APIAddr}} {
		oh, op, err := net.SplitHostPort(o.addr)
		if err != nil || hp == "0" || op != hp {
			continue
		}
		hip, oip := net.ParseIP(hh), net.ParseIP(oh)
		if hh == oh || hh == "" || oh == "" || hip != nil && oip != nil && (hip.Equal(oip) || hip.IsUnspecified() || oip.IsUnspecified()) {
			return usagef("--http %s and %s %s are one port: each needs its own", addr, o.flag, o.addr)
		}
	}
	return nil
}

// probeServer serves /healthz, /readyz and /metrics on --http: plain HTTP,
// no client certificate, no token, so that Kubernetes probes and Prometheus
// reach them when the API port requires mutual TLS.
type probeServer struct {
	srv *http.Server
	ln  net.Listener
}

// serveProbes starts the --http listener; with addr "" it serves nothing.
func serveProbes(addr string, handlers map[string]http.Handler, log *slog.Logger) (*probeServer, error) {
	p := &probeServer{}
	if addr == "" {
		return p, nil
	}
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("--http %s is in use (another agent?)", addr)
	}
	if err != nil {
		return nil, usagef("--http %s: %v", addr, err)
	}
	mux := http.NewServeMux()
	for pattern, h := range handlers {
		mux.Handle(pattern, h)
	}
	// A client pointed here is told at once which port it reached, as on
	// the node and gossip ports (it retried a 404 for --timeout).
	mux.Handle("/"+pbconnect.LeaseServiceName+"/", http.HandlerFunc(notTheAPI))
	// Probes and scrapes send their request at once: 2 s for its headers,
	// and at most maxProbeConns open.
	p.srv = &http.Server{Handler: probesOnly(mux), ReadHeaderTimeout: 2 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	pl := &probeListener{Listener: ln, max: maxProbeConns, log: log, evicted: loglimit.New()}
	p.srv.ConnState = pl.connState
	p.ln = pl
	go func() {
		if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("--http server stopped", "err", err)
		}
	}()
	return p, nil
}

// probesOnly answers at once, and closes the connection, a request on
// the --http port that is not a GET or HEAD without a body: no probe
// sends one, and a body trickled in would keep the connection busy, and
// ranked last for eviction, for as long as ReadTimeout (stop 31's
// outsider review: slow-body POSTs cut 5 of 39 /readyz probes). Client
// API requests (POSTs) get notTheAPI's answer, which reads no body
// either.
func probesOnly(next http.Handler) http.Handler {
	api := "/" + pbconnect.LeaseServiceName + "/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, api):
		case r.Method != http.MethodGet && r.Method != http.MethodHead || r.ContentLength != 0:
			w.Header().Set("Connection", "close")
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the agent's --http port serves GET /healthz, /readyz and /metrics, without a request body", http.StatusMethodNotAllowed)
			// net/http would read the rest of a small body before it
			// closes: end the connection's reads now.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
			return
		}
		next.ServeHTTP(w, r)
	})
}

// notTheAPI answers a client API request on the --http port: 421, with a
// Connect error naming the port (header Leasenode-Port: http, which the
// lease package reads as ErrWrongPort).
func notTheAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Leasenode-Port", "http")
	w.WriteHeader(http.StatusMisdirectedRequest)
	_, _ = io.WriteString(w, `{"code":"failed_precondition","message":"this is the agent's --http port (probes and metrics), not the client API: clients use the agent's --api address"}`+"\n")
	// The rest of a body already sent is read (so that the client gets
	// this answer, not a reset); one still trickling in is not waited for.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(100 * time.Millisecond))
}

// Addr returns the address served ("" if none).
func (p *probeServer) Addr() string {
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// Close stops the server.
func (p *probeServer) Close() {
	if p.srv != nil {
		_ = p.srv.Close()
	}
}
