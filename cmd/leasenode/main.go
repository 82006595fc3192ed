// Command leasenode runs leasenode nodes and talks to clusters.
//
//	leasenode agent ...           run one node of a cluster (a daemon)
//	leasenode dev                 a 3-node cluster in one process, for trying things
//	leasenode demo [--short]      a one-minute showcase with a leader crash
//	leasenode lock KEY -- CMD     run CMD while holding KEY
//	leasenode acquire|release|get|list|watch|members|status|bench
//	leasenode snapshot save|restore  back up a cluster, seed a new one from a backup
//	leasenode tls ca|cert create     make the files for mutual TLS
//
// Run `leasenode help` for the commands, `leasenode CMD -h` for the flags
// of one, and see README.md. The package is kept thin: it maps flags to
// the configuration of the packages node, lease, metrics and the internal
// local, demo and bench packages, and formats their results.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Exit codes, documented in `leasenode help`.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitUnreachable = 3
	exitHeld        = 4
	exitLost        = 5
	exitUnknown     = 6
)

const exitCodesHelp = `
exit codes:
  0  ok
  1  error (see the message)
  2  bad usage: unknown command or flag, invalid value
  3  cluster unreachable, or no leader elected in time
  4  key held by someone else (the message names the holder and the time left)
  5  lease lost while running (lock: the command was stopped)
  6  outcome unknown: the request was sent but its reply was lost; check with get
  lock exits with its command's own exit code when the command ends by itself
  (128+N if a signal N killed it); a command interrupted by SIGINT/SIGTERM while
  waiting exits 130/143.
`

type command struct {
	name, summary string
	run           func(ctx context.Context, sig *signals, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"agent", "run one node of a cluster (daemon)", runAgent},
		{"dev", "run a local 3-node cluster in this process (ctrl-c stops it)", runDev},
		{"demo", "run a self-contained showcase: workers, fencing, a leader crash", runDemo},
		{"lock", "run a command while holding a lease: lock KEY -- CMD ARGS...", runLock},
		{"acquire", "acquire a lease and print its token", runAcquire},
		{"release", "release a lease by key, token and holder", runRelease},
		{"get", "show the lease on a key", runGet},
		{"list", "list leases under a prefix", runList},
		{"watch", "stream lease changes under a prefix", runWatch},
		{"members", "list the nodes of the cluster", runMembers},
		{"status", "show every node's Raft state and lease counts", runStatus},
		{"bench", "load a cluster with standard workloads and report latencies", runBench},
		{"snapshot", "back up a cluster's leases (save) or seed a new cluster from a backup (restore)", runSnapshot},
		{"tls", "make a CA, node certificates and API client certificates (tls ca create, tls cert create)", runTLS},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "leasenode: distributed leases with fencing tokens")
	fmt.Fprintln(w, "\nusage: leasenode COMMAND [flags] [args]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `leasenode COMMAND -h` for its flags. Every flag can also be set from the")
	fmt.Fprintln(w, "environment as LEASENODE_<FLAG> (e.g. LEASENODE_ADDR, LEASENODE_DATA_DIR).")
	fmt.Fprint(w, exitCodesHelp)
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		usage(os.Stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name != name {
			continue
		}
		sig := newSignals()
		defer sig.stop()
		err := c.run(context.Background(), sig, args[1:])
		return report(name, err)
	}
	fmt.Fprintf(os.Stderr, "leasenode: unknown command %q (run `leasenode help`)\n", name)
	return exitUsage
}

// report prints err (if any) and returns the exit code for it.
func report(cmd string, err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(os.Stderr, "leasenode %s: %s\n", cmd, ee.msg)
		}
		return ee.code
	}
	code := exitCode(err)
	fmt.Fprintf(os.Stderr, "leasenode %s: %v\n", cmd, err)
	if hint := hintFor(err); hint != "" {
		fmt.Fprintf(os.Stderr, "  hint: %s\n", hint)
	}
	return code
}

// signals delivers SIGINT and SIGTERM to the running command instead of
// killing the process.
type signals struct {
	C chan os.Signal
}

func newSignals() *signals {
	s := &signals{C: make(chan os.Signal, 4)}
	signal.Notify(s.C, syscall.SIGINT, syscall.SIGTERM)
	return s
}

func (s *signals) stop() { signal.Stop(s.C) }

// cancelOn returns a context cancelled by the first signal.
func (s *signals) cancelOn(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		select {
		case sg := <-s.C:
			cancel(&interrupted{sg})
		case <-done:
		}
	}()
	var once sync.Once
	return ctx, func() { once.Do(func() { close(done); cancel(nil) }) }
}

// interrupted is the cause of a context cancelled by a signal.
type interrupted struct{ sig os.Signal }

func (i *interrupted) Error() string { return "interrupted by " + i.sig.String() }

// code is 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
func (i *interrupted) code() int {
	if s, ok := i.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return exitFailure
}
