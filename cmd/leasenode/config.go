package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
)

// The agent's config file is TOML (github.com/BurntSushi/toml): typed
// values (a number is a number, a string is quoted: none of YAML's
// surprises such as `no` turning false), comments, and flat keys that
// are exactly the flag names, so a setting reads the same on the command
// line, in the environment and in the file:
//
//	id = "n1"
//	data-dir = "/var/lib/leasenode"
//	join = ["10.0.0.2:7401", "10.0.0.3:7401"]
//	bootstrap-expect = 3
//	min-ttl = "2s"
//
// Precedence: flags > environment > file > defaults. A key that is not a
// flag is an error naming the key and the file (with the flag probably
// meant), never silently ignored.

// unquotedHint returns a hint when line n of the file at path sets a key
// to a bare word that TOML cannot read (bind = 127.0.0.1:7400 reads as a
// bad float): string values are quoted. "" for anything else.
func unquotedHint(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if n < 1 || n > len(lines) {
		return ""
	}
	key, v, ok := strings.Cut(lines[n-1], "=")
	key, v = strings.TrimSpace(key), strings.TrimSpace(v)
	if !ok || key == "" || v == "" || strings.ContainsAny(v[:1], "\"'[{") || v == "true" || v == "false" {
		return ""
	}
	if _, err := strconv.ParseFloat(v, 64); err == nil {
		return ""
	}
	return fmt.Sprintf("quote string values: %s = %q", key, v)
}

// secretFlags hold secrets: --print-config shows them redacted.
var secretFlags = map[string]bool{"cluster-key": true, "gossip-key": true, "auth-token": true}

// redacted is what --print-config prints in place of a secret. An agent
// refuses it as a value, so that its output loaded back as a config file
// fails loudly instead of running with "<redacted>" as the token or key.
const redacted = "<redacted>"

// loadConfigFile sets every flag of fs not already set (by a flag or the
// environment) from the TOML file at path. Keys in skip may not appear in
// a file (--config itself).
func loadConfigFile(fs *pflag.FlagSet, path string, skip ...string) error {
	var raw map[string]any
	md, err := toml.DecodeFile(path, &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return &usageError{msg: fmt.Sprintf("--config %s: line %d: %s", path, pe.Position.Line, pe.Message), hint: unquotedHint(path, pe.Position.Line)}
		}
		return usagef("--config: %v", err)
	}
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" && !slices.Contains(skip, f.Name) {
			names = append(names, f.Name)
		}
	})
	// Keys in file order, so the first mistake is the one reported.
	for _, k := range md.Keys() {
		key := k.String()
		_, table := raw[k[0]].(map[string]any)
		if len(k) != 1 || table {
			return usagef("--config %s: unknown key %q: settings are top-level keys named as the flags (no tables)", path, key)
		}
		f := fs.Lookup(key)
		if f == nil || key == "help" || slices.Contains(skip, key) {
			ue := &usageError{msg: fmt.Sprintf("--config %s: unknown key %q", path, key)}
			if s := closest(strings.ReplaceAll(key, "_", "-"), names); s != "" {
				ue.hint = fmt.Sprintf("did you mean %q? The keys are the agent's flag names (leasenode agent --help)", s)
			} else {
				ue.hint = "the keys are the agent's flag names (leasenode agent --help)"
			}
			return ue
		}
		if f.Changed {
			continue // a flag or the environment wins
		}
		if err := tomlType(f, raw[key]); err != nil {
			return usagef("--config %s: %s: %v", path, key, err)
		}
		v, err := tomlValue(raw[key])
		if err != nil {
			return usagef("--config %s: %s: %v", path, key, err)
		}
		if err := fs.Set(key, v); err != nil {
			return &usageError{msg: fmt.Sprintf("--config %s: %s = %q: %v", path, key, v, err), hint: hintForValue(f)}
		}
		setSource(f, "file")
	}
	return nil
}

// tomlType refuses a value whose TOML type is not the flag's: a count is
// a number (3, not "3"), a switch a boolean (true, not "true" or "yes").
func tomlType(f *pflag.Flag, v any) error {
	switch f.Value.Type() {
	case "int", "int64", "uint", "uint32", "uint64":
		if _, ok := v.(int64); !ok {
			return fmt.Errorf("want a number (as %s = 3), not %#v", f.Name, v)
		}
	case "bool":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("want true or false (as %s = true), not %#v", f.Name, v)
		}
	}
	return nil
}

// tomlValue renders a TOML value as the flag text it stands for: lists
// are comma-separated (join = ["a:1", "b:2"] is --join a:1,b:2).
func tomlValue(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64), nil
	case bool:
		return strconv.FormatBool(v), nil
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			s, err := tomlValue(e)
			if err != nil {
				return "", err
			}
			if strings.Contains(s, ",") {
				return "", fmt.Errorf("list element %q contains a comma", s)
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("unsupported value %v (%T): use a string, number, boolean or list of strings", v, v)
}

// printEffectiveConfig writes the settings of fs as a TOML config file,
// each with where it came from and what notes says of it (a zero that
// means "derived"); secrets are redacted and the flags in skip left out.
func printEffectiveConfig(w io.Writer, fs *pflag.FlagSet, notes map[string]string, skip ...string) error {
	type row struct{ line, src string }
	var rows []row
	width := 0
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || slices.Contains(skip, f.Name) {
			return
		}
		if strings.HasPrefix(f.Name, "unsafe-") && !f.Changed {
			return // chaos-test switches: shown only when set
		}
		src := source(f)
		if src == "env" {
			src = "env " + envName(f.Name)
		}
		if note := notes[f.Name]; note != "" {
			src += " (" + note + ")"
		}
		line := f.Name + " = " + tomlLiteral(f)
		if secretFlags[f.Name] && f.Value.String() != "" {
			line = f.Name + ` = "` + redacted + `"`
		}
		rows = append(rows, row{line, src})
		width = max(width, len(line))
	})
	fmt.Fprintln(w, "# leasenode agent: effective settings (flags > environment > --config file > defaults)")
	for _, r := range rows {
		fmt.Fprintf(w, "%-*s  # %s\n", width, r.line, r.src)
	}
	return nil
}

// tomlLiteral renders a flag's value as a TOML literal of the type the
// config file takes.
func tomlLiteral(f *pflag.Flag) string {
	v := f.Value.String()
	switch f.Value.Type() {
	case "bool", "int", "int64", "uint64", "float64":
		return v
	}
	if f.Name == "join" {
		var parts []string
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, tomlString(p))
			}
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return tomlString(v)
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
