// Command sbs drives leasenode, etcd 3.4 or ZooKeeper 3.8, each with its
// own Go client, through the workloads of `leasenode bench` (see
// internal/bench), measuring the same things the same way, plus the CPU
// and memory of the three server processes. cluster.sh starts the
// clusters; sitting.sh runs everything and writes the table.
//
//	sbs -system etcd -cluster DIR [-workload all] [-duration 20s] [-json OUT.json]
//	sbs -system etcd -cluster DIR -wait-ready 60s
//	sbs -table leasenode.json etcd.json zookeeper.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/leasenode/leasenode/internal/bench"
)

// Workloads in the order "all" runs them.
var workloads = []string{"uncontended", "handoff", "keepalive", "idle", "failover"}

// config of one run.
type config struct {
	system     string
	sys        system
	dir        string // the cluster's directory (cluster.sh's DIR)
	script     string // cluster.sh, to restart a killed node
	endpoints  []string
	duration   time.Duration
	clients    int
	fclients   int
	locks      int
	holders    int
	hold       time.Duration
	idle       time.Duration
	idleSettle time.Duration
	kills      int
	ttl        time.Duration
	prefix     string
}

// Result is one measured quantity: bench.Result's fields (the same
// histograms and percentile rules) and the servers' resources.
type Result struct {
	bench.Result
	// ServerCPU is the utime+stime of the three server processes over
	// the workload's measured part, in seconds.
	ServerCPU *float64 `json:"server_cpu_s,omitempty"`
	// RSSMiB is the three server processes' resident memory at the end,
	// summed.
	RSSMiB *float64 `json:"server_rss_mib,omitempty"`
	// Lost counts locks the system no longer held at the end (keepalive).
	Lost *int `json:"lost,omitempty"`
	// WindowsMs are failover's windows, one per kill.
	WindowsMs []float64 `json:"windows_ms,omitempty"`
}

// Report is one system's results (the -json file).
type Report struct {
	System    string    `json:"system"`
	Version   string    `json:"version,omitempty"`
	Endpoints []string  `json:"endpoints"`
	Date      time.Time `json:"date"`
	Duration  string    `json:"duration"`
	Results   []Result  `json:"results"`
}

func main() {
	var c config
	var workload, jsonOut, eps, version string
	var waitReady time.Duration
	var table bool
	flag.StringVar(&c.system, "system", "", "leasenode, etcd or zookeeper")
	flag.StringVar(&c.dir, "cluster", "", "the cluster's directory (cluster.sh start SYSTEM DIR): node pid files, for CPU, RSS and failover")
	flag.StringVar(&eps, "endpoints", "", "client endpoints, comma-separated (default: cluster.sh's ports for -system)")
	flag.StringVar(&c.script, "cluster-script", "", "cluster.sh, to restart a killed node (default: next to this binary)")
	flag.StringVar(&workload, "workload", "all", "all, or a comma-separated list of "+strings.Join(workloads, ", "))
	flag.DurationVar(&c.duration, "duration", 20*time.Second, "length of uncontended and handoff, and of each failover kill cycle")
	flag.IntVar(&c.clients, "clients", 32, "uncontended: clients, each its own connection and key")
	flag.IntVar(&c.fclients, "failover-clients", 8, "failover: clients in acquire/release loops")
	flag.IntVar(&c.locks, "locks", 10000, "keepalive: locks held")
	flag.IntVar(&c.holders, "holders", 10, "keepalive: clients holding them")
	flag.DurationVar(&c.hold, "hold", 30*time.Second, "keepalive: how long the locks are held (measured)")
	flag.DurationVar(&c.idle, "idle", 30*time.Second, "idle: how long the servers are watched with no client")
	flag.DurationVar(&c.idleSettle, "idle-settle", 0, "idle: how long to wait first, for what earlier workloads left to end (0: two TTLs)")
	flag.IntVar(&c.kills, "kills", 3, "failover: leader SIGKILLs")
	flag.DurationVar(&c.ttl, "ttl", 10*time.Second, "lock TTL: leasenode's lease TTL, etcd's session TTL, ZooKeeper's session timeout")
	flag.StringVar(&jsonOut, "json", "", "write the report as JSON to this file")
	flag.StringVar(&version, "version-label", "", "server version, for the report")
	flag.DurationVar(&waitReady, "wait-ready", 0, "only wait (up to this long) until the cluster has a leader and grants a lock; exit 0 when it does")
	flag.BoolVar(&table, "table", false, "render the -json reports named as arguments as one Markdown table")
	flag.Parse()

	if table {
		if err := renderTable(os.Stdout, flag.Args()); err != nil {
			fatal(err)
		}
		return
	}
	if eps == "" {
		eps = map[string]string{
			"etcd":      "127.0.0.1:23379,127.0.0.1:23381,127.0.0.1:23383",
			"zookeeper": "127.0.0.1:24181,127.0.0.1:24182,127.0.0.1:24183",
			"leasenode": "127.0.0.1:26402,127.0.0.1:26412,127.0.0.1:26422",
		}[c.system]
	}
	c.endpoints = strings.Split(eps, ",")
	sys, err := newSystem(c.system, c.endpoints, c.ttl)
	if err != nil {
		fatal(err)
	}
	c.sys = sys
	c.prefix = fmt.Sprintf("sbs/%x", time.Now().UnixNano()%(1<<32))
	if c.script == "" {
		if exe, err := os.Executable(); err == nil {
			c.script = filepath.Join(filepath.Dir(exe), "cluster.sh")
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if waitReady > 0 {
		if err := c.waitReady(ctx, waitReady); err != nil {
			fatal(err)
		}
		return
	}
	list := workloads
	if workload != "all" {
		list = strings.Split(workload, ",")
	}
	rep := Report{System: c.system, Version: version, Endpoints: c.endpoints, Date: time.Now().UTC(), Duration: c.duration.String()}
	for _, w := range list {
		fmt.Fprintf(os.Stderr, "sbs: %s %s ...\n", c.system, w)
		res, err := c.run(ctx, w)
		if err != nil {
			fatal(fmt.Errorf("%s %s: %w", c.system, w, err))
		}
		for _, r := range res {
			fmt.Fprintln(os.Stderr, "  "+r.String())
		}
		rep.Results = append(rep.Results, res...)
	}
	if jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
			fatal(err)
		}
	}
}

func (c *config) run(ctx context.Context, w string) ([]Result, error) {
	switch w {
	case "uncontended":
		return c.uncontended(ctx)
	case "handoff":
		return c.handoff(ctx)
	case "keepalive":
		return c.keepalive(ctx)
	case "idle":
		return c.idleCPU(ctx)
	case "failover":
		return c.failover(ctx)
	}
	return nil, fmt.Errorf("unknown workload %q (want one of %v, or all)", w, workloads)
}

// waitReady waits until the cluster has a leader and a client takes and
// releases a lock.
func (c *config) waitReady(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		last = c.tryOnce(ctx)
		if last == nil {
			return nil
		}
		sleep(ctx, 250*time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v: %v", c.system, d, last)
}

func (c *config) tryOnce(ctx context.Context) error {
	if _, err := c.sys.leader(ctx); err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := c.sys.dial(actx)
	if err != nil {
		return err
	}
	defer l.close()
	h, err := l.lock(actx, c.prefix+"/ready", false)
	if err != nil {
		return err
	}
	return h.unlock(actx)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "sbs:", err)
	os.Exit(1)
}

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-28s n=%d", r.Workload, r.Metric, r.Count)
	if r.PerSec > 0 {
		fmt.Fprintf(&b, " %.1f/s", r.PerSec)
	}
	if r.P50ms != nil {
		fmt.Fprintf(&b, " p50=%.2fms", *r.P50ms)
	}
	if r.P99ms != nil {
		fmt.Fprintf(&b, " p99=%.2fms", *r.P99ms)
	}
	if r.Count > 0 {
		fmt.Fprintf(&b, " max=%.2fms", r.MaxMs)
	}
	if r.Errors > 0 {
		fmt.Fprintf(&b, " errors=%d %v", r.Errors, r.ErrorKinds)
	}
	if r.ServerCPU != nil {
		fmt.Fprintf(&b, " serverCPU=%.2fs", *r.ServerCPU)
	}
	if r.RSSMiB != nil {
		fmt.Fprintf(&b, " RSS=%.0fMiB", *r.RSSMiB)
	}
	if r.Lost != nil {
		fmt.Fprintf(&b, " lost=%d", *r.Lost)
	}
	if len(r.WindowsMs) > 0 {
		fmt.Fprintf(&b, " windows=%v", r.WindowsMs)
	}
	if r.Note != "" {
		fmt.Fprintf(&b, " (%s)", r.Note)
	}
	return b.String()
}
