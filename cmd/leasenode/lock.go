package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/lease"
)

// leaseFlags are the flags of the commands that take a lease.
type leaseFlags struct {
	ttl       time.Duration
	wait      waitFlag
	value     string
	lockDelay time.Duration
	holder    string
	shape     shapeFlags
}

func (l *leaseFlags) register(fs *pflag.FlagSet) {
	l.wait.d = forever
	durationVar(fs, &l.ttl, "ttl", 10*time.Second, "lease TTL: how long the key stays held if this process dies (at most "+shortDuration(fsm.MaxTTL)+")")
	fs.Var(&l.wait, "wait", `how long to wait for a held key ("forever", or 0 to fail at once with exit 4)`)
	fs.StringVar(&l.value, "value", "", "value to attach to the lease (shown by get, list and watch)")
	durationVar(fs, &l.lockDelay, "lock-delay", 0, "keep the key blocked this long after the lease expires without release (at most "+shortDuration(fsm.MaxTTL)+")")
	fs.StringVar(&l.holder, "holder", "", "name part of the holder (default host/pid): the cluster records NAME#incarnation,\nrandom per run, as acquire prints it and lock passes it in LEASE_HOLDER")
	l.shape.register(fs)
	perInvocation(fs, "value", "holder")
}

// check refuses, before any connection, flags that break a limit of the
// lease state (fsm's, which every node enforces): a --ttl of 25h exited 3
// with no cluster reachable and 2 from the server with one (new-user
// review). key is the command's KEY; --key adds more. The least TTL is
// the agents' --min-ttl, which only they know.
func (l *leaseFlags) check(key string) error {
	items, err := l.shape.items(key)
	if err != nil {
		return err
	}
	switch {
	case l.ttl <= 0:
		return &usageError{msg: fmt.Sprintf("--ttl %v: must be positive", l.ttl), hint: "give how long the key stays held if this process dies: --ttl 30s"}
	case l.ttl > fsm.MaxTTL:
		return &usageError{msg: fmt.Sprintf("--ttl %v: at most %v", shortDuration(l.ttl), shortDuration(fsm.MaxTTL)),
			hint: fmt.Sprintf("give --ttl %v or less; a longer hold is kept alive by its process: `leasenode lock KEY -- CMD`, or `acquire KEY --hold forever`", shortDuration(fsm.MaxTTL))}
	case l.lockDelay < 0:
		return usagef("--lock-delay %v: must not be negative (0: none)", l.lockDelay)
	case l.lockDelay > fsm.MaxTTL:
		return &usageError{msg: fmt.Sprintf("--lock-delay %v: at most %v", shortDuration(l.lockDelay), shortDuration(fsm.MaxTTL)), hint: fmt.Sprintf("give --lock-delay %v or less", shortDuration(fsm.MaxTTL))}
	case len(l.value) > fsm.MaxValueLen:
		return &usageError{msg: fmt.Sprintf("--value of %d bytes: at most %d", len(l.value), fsm.MaxValueLen),
			hint: "keep large data elsewhere and put its address in --value"}
	}
	for _, it := range items {
		if len(it.Key) == 0 {
			return usagef("an empty key: name one")
		}
		if len(it.Key) > fsm.MaxKeyLen {
			return &usageError{msg: fmt.Sprintf("key %.40q... of %d bytes: at most %d", it.Key, len(it.Key), fsm.MaxKeyLen), hint: "use a shorter key (a hash of a long name, say)"}
		}
	}
	return nil
}

// shortDuration is d as a user would type it: 24h, not 24h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func (l *leaseFlags) options() []lease.Option {
	opts := []lease.Option{lease.WithTTL(l.ttl)}
	if l.holder != "" {
		opts = append(opts, lease.WithHolder(l.holder))
	}
	return opts
}

// acquire takes key, waiting as --wait says; timeout (--timeout) bounds
// every step that is not the wait itself.
func (l *leaseFlags) acquire(ctx context.Context, c *lease.Client, key string, timeout time.Duration) (*lease.Lease, error) {
	opts := []lease.AcquireOption{lease.TTL(l.ttl)}
	if l.value != "" {
		opts = append(opts, lease.Value([]byte(l.value)))
	}
	if l.lockDelay > 0 {
		opts = append(opts, lease.LockDelay(l.lockDelay))
	}
	items, err := l.shape.items(key)
	if err != nil {
		return nil, err
	}
	// First without waiting: most keys are free, and a held one is worth
	// saying so before the wait begins.
	if l.wait.d != forever && l.wait.d > 0 {
		timeout = min(timeout, l.wait.d) // --wait bounds the whole acquire
	}
	start := time.Now()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	ls, err := tryItems(tctx, c, items, opts...)
	var he *lease.HeldError
	if err == nil && ls == nil {
		he = &lease.HeldError{Key: key}
		if info, gerr := c.Get(tctx, key); gerr == nil && info != nil {
			// As the cluster's refusal counts it (what --wait 500ms
			// says): the rest of the grant, then its lock-delay.
			he.Holder, he.Wait = info.Holder, info.Remaining
			if !info.LockDelay {
				he.Wait += info.Delay
			}
		}
	}
	cancel()
	switch {
	case err != nil || ls != nil:
	case l.wait.d == 0:
		err = he
	default:
		held := fmt.Sprintf("held by %s: not free for %v unless released sooner (the rest of its grant, and its lock-delay if it has one), longer if extended", he.Holder, he.Wait.Round(100*time.Millisecond))
		switch {
		case he.Holder != "":
		case he.Wait > 0:
			held = fmt.Sprintf("in its lock-delay after an expiry for %v more", he.Wait.Round(100*time.Millisecond))
		default:
			held = "not held, but clients waiting for it since before come first"
		}
		bound := "until it is free"
		if l.wait.d != forever {
			bound = "at most " + l.wait.d.String()
		}
		fmt.Fprintf(os.Stderr, "waiting for %q, %s (waiting %s, first in line first served)\n", key, held, bound)
		if l.wait.d == forever {
			ls, err = waitItems(ctx, c, items, opts...)
		} else {
			ls, err = waitItemsTimeout(ctx, c, items, max(l.wait.d-time.Since(start), time.Millisecond), opts...)
		}
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			var in *interrupted
			if errors.As(cause, &in) {
				return nil, cause
			}
		}
		var held *lease.HeldError
		if l.shape.n > 0 && (errors.Is(err, lease.ErrInvalid) || errors.As(err, &held)) {
			if sc := semaphoreConflict(ctx, c, items, l.shape.n, timeout); sc != nil {
				sc.err = err
				return nil, sc
			}
		}
		return nil, err
	}
	return ls, nil
}

// semaphoreConflictError is an acquire -n N refused because its holders
// hold the key as a semaphore of another N: a conflict with the key's
// state (exit 4, as for a held key), not bad usage: it is free for any N
// once they are gone.
type semaphoreConflictError struct {
	key        string
	have, want int
	err        error // the cluster's refusal
}

// Error says it in the CLI's words: the cluster's refusal begins "lease:
// invalid request:", which read as bad usage of a command that exits 4
// (new-user review L5).
func (e *semaphoreConflictError) Error() string {
	return fmt.Sprintf("%q is held as a semaphore of %d, not %d: every holder of a semaphore gives the same number of slots (use -n %d, or wait until its holders release it or expire)", e.key, e.have, e.want, e.have)
}

func (e *semaphoreConflictError) Unwrap() error { return e.err }

// semaphoreConflict asks whether a key of items is held as a semaphore
// of another size than n, and returns the conflict if one is.
func semaphoreConflict(ctx context.Context, c *lease.Client, items []lease.Item, n int, timeout time.Duration) *semaphoreConflictError {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, it := range items {
		if info, err := c.Get(ctx, it.Key); err == nil && info != nil && info.Semaphore > 0 && info.Semaphore != n {
			return &semaphoreConflictError{key: it.Key, have: info.Semaphore, want: n}
		}
	}
	return nil
}

const lockSynopsis = `Acquires KEY (waiting for it, FIFO, unless --wait says otherwise), runs CMD
with LEASE_KEY, LEASE_TOKEN (the fencing token: pass it along with every
write CMD makes) and LEASE_HOLDER in its environment, and keeps the lease
alive while CMD runs. When CMD ends, the lease is released and lock exits
with CMD's exit code. A leader election in the cluster does not disturb CMD:
the lease survives failover.

Shapes: -n N takes one of N slots of KEY (a semaphore: up to N holders),
--shared takes it as a reader (any number of readers, no writer beside
them), and --key KEY2 (repeated) takes further keys together with KEY, all
or none, under one token (LEASE_KEYS lists them).

If the lease is lost (the cluster could not be reached for a whole TTL, or
the cluster says it is gone), lock sends SIGTERM to CMD's process group,
SIGKILL after --grace, and exits 5. SIGINT and SIGTERM sent to lock are
passed on to CMD; a second one, more than 200 ms after the first, kills CMD's
process group (SIGKILL), releases the lease and exits 130 (143 for SIGTERM).

So that no one else is granted KEY while CMD may still run, lock takes the
lease with a lock-delay of --grace unless --lock-delay is given: after an
expiry (not after a release) the key stays blocked that long (Consul's
sessions keep a 15 s lock-delay for the same reason). --lock-delay 0 turns
it off; CMD must then fence its writes.

While lock itself is paused (SIGSTOP) or killed (SIGKILL) it cannot stop
CMD, which runs on after the lease expired: CMD must fence its writes with
LEASE_TOKEN. LEASE_VALID_UNTIL is the moment (unix milliseconds, this
host's wall clock) until which the lease was certainly held as CMD started;
the file named by LEASE_VALID_UNTIL_FILE holds the same figure, rewritten
after each extend, and not while lock is paused: a CMD that checks it before
each write stops on its own.`

func (ap *app) lockCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lock KEY [flags] [--] CMD [ARGS...]",
		Short: "run a command while holding a lease: lock KEY -- CMD ARGS...",
		Long:  lockSynopsis,
		// The flags end at CMD, whatever follows (its own -flags): lock
		// parses its own command line (parseLockArgs).
		DisableFlagParsing: true,
	}
	cf := &clientFlags{}
	cf.register(cmd)
	lf := &leaseFlags{}
	lf.register(cmd.Flags())
	grace := duration(cmd.Flags(), "grace", 5*time.Second, "time between SIGTERM and SIGKILL when the lease is lost; also lock's --lock-delay unless given")
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
		pos, argv, err := parseLockArgs(cmd, args)
		if err != nil || pos == nil {
			return err
		}
		if err := cf.check(); err != nil {
			return err
		}
		if len(pos) != 1 || len(argv) == 0 {
			return &usageError{msg: "want a KEY and a command", hint: "usage: leasenode lock KEY [flags] -- CMD [ARGS...]"}
		}
		if *grace < 0 {
			return usagef("--grace %v: must not be negative (0 sends SIGKILL right after SIGTERM)", *grace)
		}
		if !cmd.Flags().Changed("lock-delay") {
			// After a loss CMD runs on for up to --grace: the key stays
			// blocked that long after the expiry, so that no other holder
			// overlaps it (adversarial review s38). The lease is declared
			// lost by its client's validity, before the cluster's expiry,
			// so CMD is killed before the key can be granted again.
			lf.lockDelay = min(*grace, fsm.MaxTTL)
		}
		return runLock(ctx, ap.sig, cf, lf, *grace, pos, argv)
	})
	return cmd
}

// parseLockArgs parses lock's command line: flags anywhere before CMD
// (before and after KEY), then CMD and its arguments untouched, after a
// "--" or not. It returns nil pos after printing the help (-h).
func parseLockArgs(cmd *cobra.Command, args []string) (pos, argv []string, err error) {
	fs := cmd.Flags()
	fs.SetInterspersed(false)
	if fs.Lookup("help") == nil {
		fs.BoolP("help", "h", false, "help for lock")
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, pflag.ErrHelp) {
				return nil, nil, cmd.Help()
			}
			return nil, nil, flagError(cmd, err)
		}
		if h, _ := fs.GetBool("help"); h {
			return nil, nil, cmd.Help()
		}
		left := fs.Args()
		if fs.ArgsLenAtDash() >= 0 { // "--": what follows is KEY (if not yet given) and CMD
			if len(pos) == 0 && len(left) > 0 {
				pos, left = left[:1], left[1:]
			}
			argv = left
			break
		}
		if len(left) == 0 {
			break
		}
		if len(pos) == 0 {
			pos, args = left[:1], left[1:]
			continue
		}
		argv = left
		break
	}
	if err := bindEnv(fs); err != nil {
		return nil, nil, err
	}
	if pos == nil {
		pos = []string{}
	}
	return pos, argv, nil
}

func runLock(ctx context.Context, sig *signals, cf *clientFlags, lf *leaseFlags, grace time.Duration, pos, argv []string) error {
	key := pos[0]
	// A command that cannot run is found out before the lease is taken,
	// and exits as a shell would: 127 not found, 126 not executable.
	if _, err := exec.LookPath(argv[0]); err != nil {
		code := 127
		if errors.Is(err, fs.ErrPermission) {
			code = 126
		}
		return &exitError{code: code, msg: fmt.Sprintf("%v (nothing was acquired)", err)}
	}
	if err := lf.check(key); err != nil {
		return err // a usage error, before any connection
	}

	actx, cancelA := sig.cancelOn(ctx)
	defer cancelA()
	cl, err := cf.dial(actx, lf.options()...)
	if err != nil {
		return err
	}
	// A lost lease's best-effort release may wait for an unreachable
	// cluster: give it a moment, not its full timeout.
	defer closeWithin(cl, time.Second)
	l, err := lf.acquire(actx, cl, key, cf.timeout)
	cancelA()
	if err != nil {
		printHeldJSON(cf, err)
		return err
	}

	vu, err := newValidUntilFile(l)
	if err != nil {
		releaseQuietly(l)
		return err
	}
	defer vu.remove()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LEASE_KEY="+key, "LEASE_TOKEN="+strconv.FormatUint(l.Token(), 10), "LEASE_HOLDER="+cl.Holder(),
		"LEASE_VALID_UNTIL="+strconv.FormatInt(vu.written, 10), "LEASE_VALID_UNTIL_FILE="+vu.path)
	cmd.Env = append(cmd.Env, lf.shape.env(l)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Its own process group, so that stopping it reaches its children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		releaseQuietly(l)
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	pid := cmd.Process.Pid
	var firstSig time.Time // when the first SIGINT/SIGTERM came, if one did
	tick := time.NewTicker(validUntilPoll(l.TTL()))
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			vu.update(l)
		case s := <-sig.C:
			switch {
			case firstSig.IsZero():
				// Passed on: CMD decides how to stop, and may take its
				// time (or ignore it); say so, and how to stop waiting.
				firstSig = time.Now()
				_ = syscall.Kill(-pid, s.(syscall.Signal))
				fmt.Fprintf(os.Stderr, "leasenode lock: %v passed to %s; waiting for %s (pid %d) to exit; interrupt again to kill it\n",
					sigName(s), argv[0], argv[0], pid)
			case time.Since(firstSig) < sameSignal:
				// A copy of the first (sent to lock and its group at
				// once), not an operator's second Ctrl-C.
			default:
				// The second: stop waiting for CMD. SIGKILL its group,
				// release the lease, exit as interrupted by s.
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				<-exited
				releaseQuietly(l)
				in := &interrupted{s}
				return &exitError{code: in.code(), msg: fmt.Sprintf("second %s: killed %s (pid %d) and released %q", sigName(s), argv[0], pid, key)}
			}
		case err := <-exited:
			code := childCode(cmd, err)
			releaseQuietly(l)
			return &exitError{code: code}
		case <-l.Done():
			vu.update(l) // the moment it ended: CMD must write no more
			fmt.Fprintf(os.Stderr, "leasenode lock: lease on %q lost (%v); stopping %s (SIGTERM, SIGKILL after %v)\n", key, l.Err(), argv[0], grace)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			t := time.NewTimer(grace)
			select {
			case <-exited:
				t.Stop()
			case <-t.C:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
			return &exitError{code: exitLost, msg: fmt.Sprintf("lease on %q lost while %s was running; it was stopped", key, argv[0])}
		}
	}
}

// validUntilFile is the file LEASE_VALID_UNTIL_FILE names: the lease's
// validity, as unix milliseconds on this host's wall clock, rewritten
// (atomically, by rename) as extends move it. It is conservative: the
// client's ValidUntil counts from the send time of the extend request,
// and the file lags it by up to one poll. While lock itself is paused
// (SIGSTOP, a swapped-out host) the file is not rewritten, so the moment
// it names passes: a command that checks it before each write stops
// writing by itself, which lock cannot make it do while paused.
type validUntilFile struct {
	dir, path string
	written   int64 // the value in the file
}

// newValidUntilFile writes l's validity to a new file in a private
// temporary directory.
func newValidUntilFile(l *lease.Lease) (*validUntilFile, error) {
	dir, err := os.MkdirTemp("", "leasenode-lock-")
	if err != nil {
		return nil, fmt.Errorf("lock: a directory for LEASE_VALID_UNTIL_FILE: %w (set TMPDIR to a writable directory)", err)
	}
	v := &validUntilFile{dir: dir, path: filepath.Join(dir, "valid_until"), written: -1}
	if err := v.write(validUntilMillis(l)); err != nil {
		v.remove()
		return nil, fmt.Errorf("lock: write LEASE_VALID_UNTIL_FILE: %w", err)
	}
	return v, nil
}

// validUntilMillis is l's ValidUntil (monotonic) as unix milliseconds on
// the wall clock, rounded down.
func validUntilMillis(l *lease.Lease) int64 {
	return time.Now().Add(time.Until(l.ValidUntil())).UnixMilli()
}

// update rewrites the file if l's validity moved; a failed write is
// reported once and leaves the older, earlier value (still safe).
func (v *validUntilFile) update(l *lease.Lease) {
	ms := validUntilMillis(l)
	// Rewritten when an extend moved it, or when the lease ended (it
	// moves back); not for the drift of the two clocks' difference.
	if ms > v.written+validUntilSlack || ms < v.written {
		if err := v.write(ms); err != nil {
			fmt.Fprintf(os.Stderr, "leasenode lock: LEASE_VALID_UNTIL_FILE: %v (it keeps an earlier moment)\n", err)
		}
	}
}

// validUntilSlack: a later validity by less than this is not worth a
// rewrite (the monotonic and wall clocks drift apart by a few ms).
const validUntilSlack = 10

func (v *validUntilFile) write(ms int64) error {
	tmp := v.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(ms, 10)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, v.path); err != nil {
		return err
	}
	v.written = ms
	return nil
}

func (v *validUntilFile) remove() { _ = os.RemoveAll(v.dir) }

// validUntilPoll is how often lock looks for a moved validity: a
// twentieth of the TTL, between 50 ms and 1 s (extends come every third
// of it).
func validUntilPoll(ttl time.Duration) time.Duration {
	return min(max(ttl/20, 50*time.Millisecond), time.Second)
}

// sigName names a signal as users know it: SIGINT, SIGTERM.
func sigName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// childCode is the exit code lock reports for a finished child: its own,
// or 128+N if signal N killed it.
func childCode(cmd *exec.Cmd, err error) int {
	if err == nil {
		return 0
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if code := cmd.ProcessState.ExitCode(); code >= 0 {
		return code
	}
	return exitFailure
}

// closeWithin closes c, waiting at most d for its releases.
func closeWithin(c *lease.Client, d time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		c.Close(ctx)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

func releaseQuietly(l *lease.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Release(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "leasenode: release %q: %v (it expires after its TTL)\n", l.Key(), err)
	}
}

const acquireSynopsis = `Acquires KEY and prints its fencing token and holder. A held key is waited
for as --wait says (default: as long as it takes; --wait 0 exits 4 at
once, and a wait that runs out exits 4 too). Once it holds the key,
acquire exits and leaves the lease to expire after --ttl (it is not
extended): a time-bounded lock for shell scripts, released early with
  leasenode release KEY --token T --holder H
With --hold D, acquire stays in the foreground, keeps the lease alive for
D ("forever" until interrupted), then releases it; SIGINT/SIGTERM release it
early (exit 0). If the lease is lost while held, acquire exits 5.`

func (ap *app) acquireCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "acquire KEY [flags]", Short: "acquire a lease and print its token", Long: acquireSynopsis, Args: nargs(1, 1)}
	cf := &clientFlags{}
	cf.register(cmd)
	lf := &leaseFlags{}
	lf.register(cmd.Flags())
	hold := &waitFlag{}
	cmd.Flags().Var(hold, "hold", `keep the lease alive this long, then release it ("forever": until interrupted)`)
	cmd.RunE = ap.action(func(ctx context.Context, cmd *cobra.Command, pos []string) error {
		if err := cf.check(); err != nil {
			return err
		}
		return runAcquire(ctx, ap.sig, cf, lf, *hold, pos)
	})
	return cmd
}

// printHeldJSON prints, with -o json, who holds the key an acquire was
// refused (or, refused for its -n, the key's semaphore size): scripts read it from stdout; the exit code (4) and stderr stay
// as without -o json. holder_remaining_seconds is how long the key is not
// free unless released: the rest of the holder's grant and its lock-delay,
// if it has one (the holder extends the grant while it runs; wait_seconds,
// the older name, says the same).
func printHeldJSON(cf *clientFlags, err error) {
	if sc := (*semaphoreConflictError)(nil); cf.json() && errors.As(err, &sc) {
		// Refused for its -n: the key is a semaphore of another size.
		printJSON(map[string]any{"key": sc.key, "acquired": false, "semaphore": sc.have, "requested": sc.want, "error": sc.Error()})
		return
	}
	if he := (*lease.HeldError)(nil); cf.json() && errors.As(err, &he) {
		printJSON(map[string]any{"key": he.Key, "acquired": false, "holder": he.Holder,
			"holder_remaining_seconds": he.Wait.Seconds(), "wait_seconds": he.Wait.Seconds()})
	}
}

// leftHeld keeps the lease acquire leaves held when it exits (without
// --hold) reachable until the process ends.
var leftHeld *lease.Lease

func runAcquire(ctx context.Context, sig *signals, cf *clientFlags, lf *leaseFlags, hold waitFlag, pos []string) error {
	key := pos[0]
	if err := lf.check(key); err != nil {
		return err // a usage error, before any connection
	}
	actx, cancelA := sig.cancelOn(ctx)
	defer cancelA()
	cl, err := cf.dial(actx, lf.options()...)
	if err != nil {
		return err
	}
	l, err := lf.acquire(actx, cl, key, cf.timeout)
	cancelA()
	if err != nil {
		// Within a second, as lock: an acquire whose outcome is unknown
		// leaves Close an Abandon to send, which against a cluster that
		// lost its quorum took the retry timeout again (23 s for a
		// --timeout of 10 s: new-user review nu37).
		closeWithin(cl, time.Second)
		printHeldJSON(cf, err)
		return err
	}
	// Every key of a set (acquire K --key K2), one row each: one lease,
	// one token; "key" stays the first for scripts that read it.
	keys := l.Keys()
	if cf.json() {
		printJSON(map[string]any{"key": key, "keys": keys, "token": l.Token(), "holder": cl.Holder(), "ttl_seconds": l.TTL().Seconds(),
			"valid_for_seconds": time.Until(l.ValidUntil()).Seconds(), "held_for_seconds": hold.d.Seconds()})
	} else {
		w := table(os.Stdout)
		fmt.Fprintln(w, "KEY\tTOKEN\tHOLDER\tTTL")
		for _, k := range keys {
			fmt.Fprintf(w, "%s\t%d\t%s\t%v\n", k, l.Token(), cl.Holder(), l.TTL())
		}
		w.Flush()
	}
	if hold.d == 0 {
		what, early := "lease", "release it early with"
		if len(keys) > 1 {
			what = fmt.Sprintf("lease on %d keys (%s)", len(keys), strings.Join(keys, ", "))
			early = "release it early (all of its keys) with"
		}
		fmt.Fprintf(os.Stderr, "%s held until it expires in %v (not extended); %s:\n  leasenode release %s --token %d --holder %s\n",
			what, l.TTL(), early, strconv.Quote(key), l.Token(), strconv.Quote(cl.Holder()))
		// Exit without Client.Close, which would release the lease, and
		// with l reachable: a Lease the collector finds dropped is
		// released at once.
		leftHeld = l
		return nil
	}
	defer closeWithin(cl, time.Second)
	var timeout <-chan time.Time
	if hold.d != forever {
		t := time.NewTimer(hold.d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-timeout:
	case <-sig.C:
	case <-l.Done():
		return fmt.Errorf("lease on %q: %w", key, l.Err())
	}
	rctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	defer cancel()
	if err := l.Release(rctx); err != nil {
		return err
	}
	if !cf.json() {
		fmt.Fprintf(os.Stderr, "released %s\n", strings.Join(keys, ", "))
	}
	return nil
}
