// Command leasenode runs leasenode nodes and talks to clusters.
//
//	leasenode agent ...           run one node of a cluster (a daemon)
//	leasenode dev                 a 3-node cluster in one process, for trying things
//	leasenode demo [--short]      a one-minute showcase with a leader crash
//	leasenode lock KEY -- CMD     run CMD while holding KEY
//	leasenode acquire|release|get|list|watch|members|status|bench|health
//	leasenode snapshot save|restore  back up a cluster, seed a new one from a backup
//	leasenode tls ca|cert create     make the files for mutual TLS
//	leasenode version             the build: module version, VCS revision, Go version
//	leasenode completion bash|zsh|fish  shell completion
//
// Run `leasenode help` for the commands, `leasenode CMD --help` for the
// flags of one, and see README.md. The command line is built on
// github.com/spf13/cobra and pflag (GNU-style --flags, suggestions for
// mistyped commands, shell completion; the CLI convention of kubectl,
// etcdctl, helm and docker). The package is kept thin: it maps flags (and,
// for the agent, the environment and a TOML config file) to the
// configuration of the packages node, lease, metrics and the internal
// local, demo and bench packages, and formats their results.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/leasenode/leasenode/internal/buildinfo"
	"github.com/leasenode/leasenode/lease"
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
  1  error (see the message); also a refusal at an agent's --max-waiters or
     --max-watches (retrying at once would add to the load they bound)
  2  bad usage: unknown command or flag, invalid value; TLS flags that do not
     fit the nodes, or --addr at a port that is not a client API (--bind, gossip)
  3  cluster unreachable, or no leader elected in time, or the nodes refused
     the request for their load (overloaded) until --timeout
  4  key held by someone else (the message names the holder and the time left),
     or -n N on a key its holders hold as a semaphore of another N
  5  lease lost while running (lock: the command was stopped)
  6  outcome unknown: the request was sent but its reply was lost; check with get
  lock exits 127 if its command is not found, 126 if it cannot be run (nothing
  is acquired then), and with its command's own exit code when the command ends by itself
  (128+N if a signal N killed it); a command interrupted by SIGINT/SIGTERM while
  waiting exits 130/143.
`

const rootLong = `leasenode: distributed leases with fencing tokens.

A flag on the command line wins over the environment (below). The agent
also reads a TOML file (leasenode agent --config).
Shell completion: leasenode completion bash|zsh|fish --help.
` + exitCodesHelp

const envNote = `
Every flag can also be set as LEASENODE_<FLAG>, in capitals with underscores
(--some-flag as LEASENODE_SOME_FLAG), except those that name what one command
acts on: --key, --token, --holder and --value.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// app is one run of the command line.
type app struct {
	sig    *signals
	stdout io.Writer
	ran    *cobra.Command // the command whose RunE ran, if any
}

// action adapts a command's function to cobra: it records that the
// command ran (its errors are reported by exit code, not as usage errors)
// and passes the signals and a context.
func (a *app) action(f func(ctx context.Context, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a.ran = cmd
		return f(cmd.Context(), cmd, args)
	}
}

// newRoot builds the command tree.
func (a *app) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "leasenode",
		Short:         "distributed leases with fencing tokens",
		Long:          rootLong,
		Version:       buildinfo.Get().Short(),
		SilenceErrors: true, // report prints errors, first and short
		SilenceUsage:  true, // no usage dump after an error
		// Without a command: the help, on stderr, exit 2.
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SetOut(os.Stderr)
			_ = cmd.Help()
			return &exitError{code: exitUsage}
		},
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			warnUnknownEnv(cmd.Root(), cmd.ErrOrStderr())
			if cmd.DisableFlagParsing {
				return nil // the command parses (and binds) its own flags
			}
			return bindEnv(cmd.Flags())
		},
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
	}
	root.SetVersionTemplate(buildinfo.Get().String() + "\n")
	root.SetFlagErrorFunc(flagError)
	root.SetUsageTemplate(root.UsageTemplate() + envNote)
	help := root.HelpFunc()
	root.SetHelpFunc(func(cmd *cobra.Command, args []string) {
		noteEnv(cmd.Flags())
		help(cmd, args)
	})
	root.SetOut(a.stdout)
	root.AddGroup(&cobra.Group{ID: "cluster", Title: "Run a cluster:"},
		&cobra.Group{ID: "lease", Title: "Use leases:"},
		&cobra.Group{ID: "ops", Title: "Operate a cluster:"})
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add("cluster", a.agentCmd(), a.devCmd(), a.demoCmd())
	add("lease", a.lockCmd(), a.acquireCmd(), a.releaseCmd(), a.getCmd(), a.listCmd(), a.watchCmd())
	add("ops", a.membersCmd(), a.statusCmd(), a.healthCmd(), a.benchCmd(), a.snapshotCmd(), a.tlsCmd(), a.versionCmd())
	root.SetHelpCommandGroupID("ops")
	root.SetCompletionCommandGroupID("ops")
	return root
}

func run(args []string, stdout, stderr io.Writer) int {
	// The signals stay caught until the process exits: a copy of the
	// first (sent to the process and to its group) that arrives after an
	// agent stopped must not kill it by the default action (exit status
	// "signal: interrupt" instead of 0).
	a := &app{sig: newSignals(), stdout: stdout}
	root := a.newRoot()
	root.SetArgs(args)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(context.Background())
	if err == nil {
		return exitOK
	}
	if a.ran == nil {
		// Cobra refused the command line before any command ran: an
		// unknown command or flag, a bad value or argument count.
		var ee *exitError
		if errors.As(err, &ee) {
			return report(stderr, cmd, err)
		}
		var ue *usageError
		if !errors.As(err, &ue) {
			ue = &usageError{msg: err.Error()}
			if strings.HasPrefix(ue.msg, "unknown command ") && !cmd.HasParent() {
				// Cobra's own text spreads the suggestion over lines.
				ue.msg = fmt.Sprintf("unknown command %q", firstWord(args))
				if h, ok := keepAliveWords[firstWord(args)]; ok {
					ue.hint = h
				} else if s := root.SuggestionsFor(firstWord(args)); len(s) > 0 {
					ue.hint = fmt.Sprintf("did you mean %q?", s[0])
				}
				cmd = root
			}
		}
		err = ue
	}
	return report(stderr, cmd, err)
}

// keepAliveWords are commands users look for to extend a lease, with the
// hint for each: a lease is extended by the process that holds it (lock,
// acquire --hold), which counts its validity from each request's send
// time; a shell loop of extends would not know when its lease ends.
var keepAliveWords = func() map[string]string {
	h := "a lease is kept alive by the process holding it: `leasenode lock KEY -- CMD` while CMD runs, " +
		"or `leasenode acquire KEY --hold 5m` (--hold forever: until interrupted); a plain acquire's lease is not extended and expires after --ttl"
	m := map[string]string{}
	for _, w := range []string{"extend", "keepalive", "keep-alive", "renew", "refresh", "heartbeat"} {
		m[w] = h
	}
	return m
}()

// firstWord returns the first argument that is not a flag.
func firstWord(args []string) string {
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			return a
		}
	}
	return ""
}

// report prints err (if any) first and short, and returns the exit code
// for it. The message is prefixed with the command once: an error that
// already starts with the command's name ("acquire \"k\": ...") is not
// prefixed again.
func report(w io.Writer, cmd *cobra.Command, err error) int {
	if err == nil {
		return exitOK
	}
	name := "leasenode"
	if cmd != nil && cmd.HasParent() {
		name = cmd.CommandPath()
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(w, "%s: %s\n", name, plainWords(ee.msg))
		}
		return ee.code
	}
	code := exitCode(err)
	msg := strings.TrimRight(err.Error(), "\n")
	if te := (*lease.TLSSetupError)(nil); errors.As(err, &te) {
		// lease's text names the library's options (WithTLS, RootCAs);
		// the hint below names the flags: keep only what failed where.
		what := fmt.Sprintf("%v: %s (%v)", lease.ErrTLSSetup, te.Addr, te.Err)
		if te.Problem == lease.TLSNodeRequiresTLS && te.Err != nil {
			// Not "(internal: 400 Bad Request)": what the node's answer
			// means (new-user review); the hint names the flags.
			what = fmt.Sprintf("%v: %s serves its API over TLS, and this command spoke plain HTTP to it (it answered %v)", lease.ErrTLSSetup, te.Addr, strings.TrimPrefix(te.Err.Error(), "internal: "))
		}
		msg = strings.Replace(msg, te.Error(), what, 1)
	}
	msg = plainWords(msg)
	line := name + ": " + msg
	if cmd != nil && cmd.HasParent() {
		// "get \"k\": ..." and "status: ..." already name the command:
		// "leasenode get \"k\": ...", never "leasenode get: get \"k\": ...".
		if verb := cmd.Name(); strings.HasPrefix(msg, verb+" ") || strings.HasPrefix(msg, verb+":") {
			line = cmd.Parent().CommandPath() + " " + msg
		}
	}
	fmt.Fprintln(w, line)
	var ue *usageError
	if errors.As(err, &ue) {
		// A hint says what to do; the pointer to --help is for the rest.
		// Every usage error ends with the CLI's hint line, never
		// cobra's "Run '... --help' for usage." (new-user review).
		if ue.hint != "" {
			fmt.Fprintf(w, "  hint: %s\n", ue.hint)
		} else if cmd != nil {
			fmt.Fprintf(w, "  hint: `%s --help` lists its flags and what each needs\n", cmd.CommandPath())
		}
	} else if hint := hintFor(err, verbOf(cmd), tokenSent(cmd), timeoutSet(cmd)); hint != "" {
		fmt.Fprintf(w, "  hint: %s\n", hint)
	}
	return code
}

// tokenSent says whether cmd sent an auth token: its --auth-token holds
// the token once the command checked its flags, from the flag, the file
// of --auth-token-file or LEASENODE_AUTH_TOKEN (clientFlags.check).
func tokenSent(cmd *cobra.Command) bool {
	if cmd == nil {
		return false
	}
	f := cmd.Flags().Lookup("auth-token")
	return f != nil && f.Value.String() != ""
}

// timeoutSet is the --timeout cmd's user set, by flag or environment
// (bindEnv sets a flag from its variable), or "" if it is the default or
// cmd has none.
func timeoutSet(cmd *cobra.Command) string {
	if cmd == nil {
		return ""
	}
	f := cmd.Flags().Lookup("timeout")
	if f == nil || !f.Changed {
		return ""
	}
	return f.Value.String()
}

// verbOf is cmd's name ("get"), or "" without one.
func verbOf(cmd *cobra.Command) string {
	if cmd == nil {
		return ""
	}
	return cmd.Name()
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

func (i *interrupted) Error() string {
	switch i.sig {
	case os.Interrupt:
		return "interrupted (SIGINT)"
	case syscall.SIGTERM:
		return "interrupted (SIGTERM)"
	}
	return "interrupted by " + i.sig.String()
}

// code is 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
func (i *interrupted) code() int {
	if s, ok := i.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return exitFailure
}
