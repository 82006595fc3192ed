package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

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

// newFlags returns a flag set that reports errors instead of exiting and
// prints its usage (with the environment variable of each flag) on -h.
func newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		w := os.Stderr
		fmt.Fprintf(w, "usage: leasenode %s\n\n", synopsis)
		fmt.Fprintf(w, "flags (each also settable as %s<FLAG>, e.g. %s):\n", envPrefix, envName("data-dir"))
		fs.VisitAll(func(f *flag.Flag) {
			if len(f.Name) == 1 {
				return // short alias, listed with its long form
			}
			kind, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(w, "  --%s %s\n    \t%s", f.Name, kind, strings.ReplaceAll(usage, "\n", "\n    \t"))
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" && f.DefValue != "0" {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
		fmt.Fprint(w, exitCodesHelp)
	}
	return fs
}

// parseFlags parses args, allowing flags between positional arguments
// (`get KEY -o json`), then fills every flag not given on the command line
// from its environment variable. With stopAfter > 0, parsing stops after
// that many positional arguments and everything after them (or after a
// "--") is returned as rest, untouched: the command of `lock KEY -- CMD`.
func parseFlags(fs *flag.FlagSet, args []string, stopAfter int) (pos, rest []string, err error) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.Usage()
				return nil, nil, &exitError{code: 0}
			}
			return nil, nil, usagef("%s: %v (see leasenode %s -h)", fs.Name(), err, fs.Name())
		}
		left := fs.Args()
		consumed := len(args) - len(left)
		dashdash := consumed > 0 && args[consumed-1] == "--"
		if dashdash {
			if stopAfter > 0 && len(pos) >= stopAfter {
				rest = left
			} else {
				pos = append(pos, left...)
				if stopAfter > 0 && len(pos) > stopAfter {
					pos, rest = pos[:stopAfter], pos[stopAfter:]
				}
			}
			break
		}
		if len(left) == 0 {
			break
		}
		if stopAfter > 0 && len(pos) >= stopAfter {
			rest = left
			break
		}
		pos = append(pos, left[0])
		args = left[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || len(f.Name) == 1 || envErr != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = usagef("%s=%q: %v", envName(f.Name), v, err)
			}
		}
	})
	return pos, rest, envErr
}

// isSet reports whether flag name was given on the command line or in the
// environment.
func isSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	if !found {
		_, found = os.LookupEnv(envName(name))
	}
	return found
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
		return errors.New(`want a duration like 30s, or "forever"`)
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	w.d = d
	return nil
}
