package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// usageError is a bad command line: exit code 2.
type usageError struct {
	msg  string
	hint string // optional: printed on its own line after msg
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// exitError ends the program with a given code and an optional message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// envPrefix prefixes the environment variable of every flag:
// --data-dir is also LEASENODE_DATA_DIR.
const envPrefix = "LEASENODE_"

// envName returns the environment variable that sets flag name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// sourceKey is the flag annotation that records where a flag's value came
// from: "flag", "env" or "file" (absent: the default).
const sourceKey = "leasenode-source"

// source returns where f's value came from.
func source(f *pflag.Flag) string {
	if s := f.Annotations[sourceKey]; len(s) > 0 {
		return s[0]
	}
	if f.Changed {
		return "flag"
	}
	return "default"
}

// stronger returns which of the flags x and y of fs was set from the
// stronger source (flag > environment > config file), or "" if from the
// same.
func stronger(fs *pflag.FlagSet, x, y string) string {
	rank := func(name string) int {
		switch source(fs.Lookup(name)) {
		case "flag":
			return 3
		case "env":
			return 2
		case "file":
			return 1
		}
		return 0
	}
	switch rx, ry := rank(x), rank(y); {
	case rx > ry:
		return x
	case ry > rx:
		return y
	}
	return ""
}

// maxSecretFileBytes bounds what a secret file flag (--cluster-key-file,
// --auth-token-file) reads: a key or a token is one short line.
const maxSecretFileBytes = 4 << 10

// readSecretFile reads the secret in the file of flag --name, at most
// maxSecretFileBytes, without the surrounding white space (the newline
// an editor or echo adds). An empty file is an error.
func readSecretFile(name, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", usagef("--%s: %v", name, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(os.Stderr, "leasenode: warning: --%s %s can be read by other users (mode %#o): chmod 600 %s\n", name, path, fi.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	switch {
	case err != nil:
		return "", usagef("--%s: %v", name, err)
	case len(b) > maxSecretFileBytes:
		return "", usagef("--%s %s: longer than %d bytes; it should hold one line, the secret alone", name, path, maxSecretFileBytes)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", usagef("--%s %s is empty", name, path)
	}
	return s, nil
}

// authToken returns the auth token of --auth-token (token) or
// --auth-token-file (file) of fs. Given both, the one from the stronger
// source wins (LEASENODE_AUTH_TOKEN exported in a shell is no conflict
// with a --auth-token-file on the command line); from the same source
// they are an error.
func authToken(fs *pflag.FlagSet, token, file string) (string, error) {
	if token != "" && file != "" {
		switch stronger(fs, "auth-token-file", "auth-token") {
		case "auth-token":
			file = ""
		case "":
			return "", usagef("--auth-token and --auth-token-file: give one")
		}
	}
	if file == "" {
		return token, nil
	}
	return readSecretFile("auth-token-file", file)
}

func setSource(f *pflag.Flag, s string) {
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations[sourceKey] = []string{s}
}

// perInvocationKey is the flag annotation of a flag that names what one
// command acts on (--key, --token, --holder, --value): the environment
// does not set it, since an exported LEASENODE_KEY would silently add a
// key to every later acquire, and LEASENODE_TOKEN release a lease nobody
// named.
const perInvocationKey = "leasenode-per-invocation"

// perInvocation marks the flags names of fs as per invocation.
func perInvocation(fs *pflag.FlagSet, names ...string) {
	for _, n := range names {
		f := fs.Lookup(n)
		if f.Annotations == nil {
			f.Annotations = map[string][]string{}
		}
		f.Annotations[perInvocationKey] = []string{"true"}
	}
}

func isPerInvocation(f *pflag.Flag) bool { return len(f.Annotations[perInvocationKey]) > 0 }

// bindEnv fills every flag of fs not given on the command line from its
// environment variable (LEASENODE_<FLAG>), except the per-invocation ones.
// Flags given on the command line win; a bad value in the environment is
// a usage error naming the variable.
func bindEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Name == "version" || isPerInvocation(f) {
			return
		}
		if f.Changed {
			if source(f) == "default" || source(f) == "flag" {
				setSource(f, "flag")
			}
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, &usageError{msg: fmt.Sprintf("%s=%q: %v", envName(f.Name), v, err), hint: hintForValue(f)})
			return
		}
		setSource(f, "env")
	})
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// noteEnv marks, in the help of fs, each flag its environment variable
// sets now, with the value in force, so that the default shown is not
// taken for it (new-user review: `--addr ... (default
// "127.0.0.1:7402")` with LEASENODE_ADDR set elsewhere). The value of a
// secret (secretFlag) is not shown.
func noteEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok || isPerInvocation(f) || strings.Contains(f.Usage, name) {
			return
		}
		if secretFlag(f.Name) {
			f.Usage += " [set now by " + name + "]"
		} else {
			f.Usage += fmt.Sprintf(" [set now by %s to %q, in force over the default]", name, v)
		}
	})
}

// secretFlag says whether flag name holds a secret (a token, a key), whose
// value help must not print.
func secretFlag(name string) bool {
	return !strings.HasSuffix(name, "-file") && name != "tls-key" &&
		(strings.Contains(name, "token") || strings.Contains(name, "key") || strings.Contains(name, "secret"))
}

// warnUnknownEnv warns about each LEASENODE_ variable that sets nothing but
// is a letter or two from one that would (LEASENODE_DATADIR for
// LEASENODE_DATA_DIR, say): a typo, where a config file's unknown key is
// an error. Only near misses: other LEASENODE_ variables (a test
// harness's) are none of its business. The variable of a per-invocation
// flag (LEASENODE_KEY) is warned about too: it sets nothing.
func warnUnknownEnv(root *cobra.Command, w io.Writer) {
	known := map[string]bool{"LEASENODE_UNSAFE": true, "LEASENODE_BIN": true} // the chaos switch; the harness's binary
	perCall := map[string]string{}                                            // variable -> flag
	var names []string
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if isPerInvocation(f) {
					perCall[envName(f.Name)] = f.Name
					return
				}
				if n := envName(f.Name); !known[n] {
					known[n] = true
					names = append(names, n)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || known[name] {
			continue
		}
		if flag, ok := perCall[name]; ok {
			fmt.Fprintf(w, "leasenode: warning: %s sets nothing: --%s names what one command acts on; give it on the command line\n", name, flag)
			continue
		}
		if s := closest(name, names); s != "" {
			fmt.Fprintf(w, "leasenode: warning: %s sets nothing (did you mean %s?)\n", name, s)
		}
	}
}

// flagError turns a flag parsing error into a short usage error with a hint:
// what a value must look like, or the flag that was probably meant.
func flagError(cmd *cobra.Command, err error) error {
	ue := &usageError{msg: err.Error()}
	var inv *pflag.InvalidValueError
	var nx *pflag.NotExistError
	switch {
	case errors.As(err, &inv):
		ue.msg = fmt.Sprintf("--%s %q: %v", inv.GetFlag().Name, inv.GetValue(), errors.Unwrap(err))
		ue.hint = hintForValue(inv.GetFlag())
	case errors.As(err, &nx):
		name := strings.TrimLeft(nx.GetSpecifiedName(), "-")
		if s := flagIntent(cmd, name); strings.HasPrefix(s, "no ") {
			ue.hint = s
		} else if s != "" {
			ue.hint = "did you mean " + s + "?"
		} else if s := closestFlag(cmd, name); s != "" {
			ue.hint = "did you mean --" + s + "?"
		} else if len(name) == 1 {
			ue.hint = "the one-letter flags of " + cmd.Name() + " are " + shorthands(cmd) + "; `leasenode " + cmd.Name() + " --help` lists all"
		} else {
			ue.hint = "`leasenode " + cmd.Name() + " --help` lists its flags"
		}
	}
	return ue
}

// hintForValue says what f's values look like, for an error message.
func hintForValue(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "duration":
		return "durations need a unit: 5s, 500ms, 2m, 1h30m"
	case "duration|forever":
		return `want a duration with a unit (5s, 500ms, 2m) or "forever"`
	case "int", "int64", "uint64":
		return "want a whole number"
	case "bool":
		return "want true or false (or just --" + f.Name + ")"
	}
	return ""
}

// flagIntents maps flags users of other tools type to what cmd calls
// them (new-user review L7: --json, --count, --adress had no "did you
// mean"). A suggestion is made only if cmd has the flag.
var flagIntents = map[string]struct{ flag, say string }{
	"json":      {"output", "-o json"},
	"yaml":      {"output", "-o json"},
	"format":    {"output", "-o json"},
	"count":     {"n", "-n N (a semaphore of N slots)"},
	"slots":     {"n", "-n N (a semaphore of N slots)"},
	"limit":     {"n", "-n N (a semaphore of N slots)"},
	"semaphore": {"n", "-n N (a semaphore of N slots)"},
	"address":   {"addr", "--addr"},
	"adress":    {"addr", "--addr"},
	"endpoints": {"addr", "--addr"},
	"endpoint":  {"addr", "--addr"},
	"server":    {"addr", "--addr"},
	"host":      {"addr", "--addr"},
	"token":     {"auth-token", "--auth-token (or --auth-token-file)"},
	// etcdctl's and curl's TLS flags.
	"cacert":   {"tls-ca", "--tls-ca (the CA bundle that verifies the nodes)"},
	"cafile":   {"tls-ca", "--tls-ca (the CA bundle that verifies the nodes)"},
	"ca":       {"tls-ca", "--tls-ca (the CA bundle that verifies the nodes)"},
	"cert":     {"tls-cert", "--tls-cert (a client certificate, with --tls-key)"},
	"certfile": {"tls-cert", "--tls-cert (a client certificate, with --tls-key)"},
	"key":      {"tls-key", "--tls-key (the key of --tls-cert; a lease's key is the KEY argument)"},
	"keyfile":  {"tls-key", "--tls-key (the key of --tls-cert)"},
	"insecure": {"tls-ca", "no such flag: the client uses TLS only with --tls-ca (or LEASENODE_TLS_CA): leave it out for agents serving plain HTTP, " +
		"or give it the cluster's CA (made by `leasenode tls ca create`); node certificates are always verified"},
	"insecure-skip-tls-verify": {"tls-ca", "no such flag: give --tls-ca the cluster's CA; certificates are always verified"},
}

// argIntents maps flags users of other tools type to a positional
// argument of cmd (its Use line names it), or, without one, to what to do
// instead.
var argIntents = map[string]struct{ arg, say string }{
	"prefix":   {"PREFIX", "no flag: the prefix is an argument, `leasenode %s PREFIX`"},
	"rev":      {"", "no such flag: leasenode keeps no history of revisions: get and list show the current leases, and watch prints them, then every change"},
	"revision": {"", "no such flag: leasenode keeps no history of revisions: get and list show the current leases, and watch prints them, then every change"},
}

// flagIntent returns what cmd calls the flag name means elsewhere, or "".
func flagIntent(cmd *cobra.Command, name string) string {
	if ai, ok := argIntents[strings.ToLower(name)]; ok {
		switch {
		case ai.arg == "":
			return ai.say
		case strings.Contains(cmd.Use, ai.arg):
			return fmt.Sprintf(ai.say, cmd.Name())
		}
		return ""
	}
	in, ok := flagIntents[strings.ToLower(name)]
	if !ok {
		return ""
	}
	if cmd.Flags().Lookup(in.flag) != nil || len(in.flag) == 1 && cmd.Flags().ShorthandLookup(in.flag) != nil {
		return in.say
	}
	return ""
}

// shorthands lists cmd's one-letter flags ("-n, -o").
func shorthands(cmd *cobra.Command) string {
	var out []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Shorthand != "" {
			out = append(out, "-"+f.Shorthand)
		}
	})
	if len(out) == 0 {
		return "none"
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// closestFlag returns the flag of cmd closest to name (for "did you mean"),
// or "".
func closestFlag(cmd *cobra.Command, name string) string {
	var names []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	if s := closest(name, names); s != "" {
		return s
	}
	for _, n := range names {
		if len(name) >= 3 && strings.HasPrefix(n, name) {
			return n
		}
	}
	return ""
}

// closest returns the candidate nearest to name within 2 edits, or "".
func closest(name string, candidates []string) string {
	sort.Strings(candidates)
	best, bestD := "", 3
	for _, c := range candidates {
		if d := levenshtein(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// durationValue is a time.Duration flag whose error says what it wants.
type durationValue time.Duration

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration")
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Type() string   { return "duration" }

// durationVar defines a duration flag (a number with a unit: 5s, 500ms).
func durationVar(fs *pflag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationValue)(p), name, usage)
}

// duration defines a duration flag and returns its variable.
func duration(fs *pflag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	p := new(time.Duration)
	durationVar(fs, p, name, value, usage)
	return p
}

// forever is the value of a waitFlag that never times out.
const forever time.Duration = -1

// waitFlag is a duration that also accepts "forever".
type waitFlag struct{ d time.Duration }

func (w *waitFlag) String() string {
	if w == nil || w.d == forever {
		return "forever"
	}
	return w.d.String()
}

func (w *waitFlag) Set(s string) error {
	if s == "forever" || s == "inf" {
		w.d = forever
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New(`want a duration with a unit, like 30s, or "forever"`)
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	w.d = d
	return nil
}

func (w *waitFlag) Type() string { return "duration|forever" }

// completeWords registers fixed completions for flag name of cmd.
func completeWords(cmd *cobra.Command, name string, words ...string) {
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(words, cobra.ShellCompDirectiveNoFileComp))
}

// args returns a cobra.PositionalArgs that accepts min to max positional
// arguments, with the usage line in its error.
func nargs(min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || len(args) > max {
			what := "wrong number of arguments"
			if max == 0 {
				what = fmt.Sprintf("takes no arguments, got %q", args)
			}
			return &usageError{msg: what, hint: "usage: " + cmd.UseLine()}
		}
		return nil
	}
}
