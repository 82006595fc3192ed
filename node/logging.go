package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/internal/loglimit"
)

// defaultLogger is what an embedded node logs to when Config.Logger is
// nil: warnings and errors on stderr, so a node that cannot form a cluster
// is never silent.
func defaultLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// hclogFor returns an hclog.Logger (what hashicorp/raft wants) that
// writes straight into l as component name: levels, messages and
// arguments keep their Go types (durations stay durations, servers stay
// structs) instead of a round trip through JSON text.
// Warnings and errors of one kind (component, message and peer) are
// logged at most once per loglimit.Every, with a count of those left
// out: Raft logs one per failed heartbeat to a lost peer, and one per bad
// frame a connection sends.
func hclogFor(l *slog.Logger, name string) hclog.Logger {
	return &hcAdapter{base: l, l: l.With("component", name), name: name, limit: loglimit.New()}
}

// hcAdapter implements hclog.Logger on top of a slog.Logger.
type hcAdapter struct {
	base    *slog.Logger // without component and implied args
	l       *slog.Logger
	name    string
	implied []any
	limit   *loglimit.Limiter // shared by the loggers derived from one
}

var _ hclog.Logger = (*hcAdapter)(nil)

// levelOf maps hclog levels to slog's; Trace is below Debug.
func levelOf(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Log implements hclog.Logger. Arguments are hclog's key-value pairs; an
// odd one out is kept under "extra" rather than dropped.
// A warning or error about a connection this node closed itself (a read
// that ends with net.ErrClosed: Raft's transport logs one per open
// connection when the node shuts down) is logged at Debug.
func (a *hcAdapter) Log(level hclog.Level, msg string, args ...any) {
	lv := levelOf(level)
	if lv >= slog.LevelWarn && closedByUs(args) {
		lv = slog.LevelDebug
	}
	if !a.l.Enabled(context.Background(), lv) {
		return
	}
	attrs := make([]slog.Attr, 0, len(args)/2+2)
	kind := a.name + ": " + msg
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			attrs = append(attrs, slog.Any("extra", args[i]))
			break
		}
		key, ok := args[i].(string)
		if !ok {
			key = "extra"
		}
		if key == "peer" {
			kind += fmt.Sprintf(" %v", args[i+1])
		}
		attrs = append(attrs, slog.Any(key, hcValue(args[i+1])))
	}
	if a.limit != nil && lv >= slog.LevelWarn {
		ok, skipped := a.limit.Allow(kind)
		if !ok {
			return
		}
		if skipped > 0 {
			attrs = append(attrs, slog.Int(loglimit.Skipped, skipped))
		}
	}
	a.l.LogAttrs(context.Background(), lv, msg, attrs...)
}

// closedByUs reports whether one of hclog's arguments is an error that
// says the connection was closed on this side, or that this node's Raft
// transport is shutting down ("failed to decode incoming command ...
// transport shutdown", logged at Error by a clean stop).
func closedByUs(args []any) bool {
	for _, v := range args {
		if err, ok := v.(error); ok && (errors.Is(err, net.ErrClosed) || errors.Is(err, raft.ErrTransportShutdown)) {
			return true
		}
	}
	return false
}

// hcValue renders hclog's formatting helpers (hclog.Fmt, Hex, Octal,
// Binary) as hclog would; other values keep their types.
func hcValue(v any) any {
	switch x := v.(type) {
	case hclog.Format:
		if len(x) > 0 {
			if f, ok := x[0].(string); ok {
				return fmt.Sprintf(f, x[1:]...)
			}
		}
		return fmt.Sprint(x...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(x))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(x))
	case hclog.Binary:
		return fmt.Sprintf("0b%b", int(x))
	}
	return v
}

func (a *hcAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hcAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hcAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hcAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hcAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hcAdapter) enabled(l hclog.Level) bool {
	return a.l.Enabled(context.Background(), levelOf(l))
}

// IsTrace implements hclog.Logger.
func (a *hcAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }

// IsDebug implements hclog.Logger.
func (a *hcAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }

// IsInfo implements hclog.Logger.
func (a *hcAdapter) IsInfo() bool { return a.enabled(hclog.Info) }

// IsWarn implements hclog.Logger.
func (a *hcAdapter) IsWarn() bool { return a.enabled(hclog.Warn) }

// IsError implements hclog.Logger.
func (a *hcAdapter) IsError() bool { return a.enabled(hclog.Error) }

// ImpliedArgs implements hclog.Logger.
func (a *hcAdapter) ImpliedArgs() []any { return a.implied }

// With implements hclog.Logger.
func (a *hcAdapter) With(args ...any) hclog.Logger {
	b := *a
	b.implied = append(append([]any(nil), a.implied...), args...)
	b.l = a.l.With(args...)
	return &b
}

// Name implements hclog.Logger.
func (a *hcAdapter) Name() string { return a.name }

// Named implements hclog.Logger: the sub-logger's component is
// "name.sub".
func (a *hcAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

// ResetNamed implements hclog.Logger.
func (a *hcAdapter) ResetNamed(name string) hclog.Logger {
	return &hcAdapter{base: a.base, l: a.base.With("component", name).With(a.implied...), name: name, implied: a.implied, limit: a.limit}
}

// SetLevel implements hclog.Logger; the slog handler decides levels, so it
// does nothing.
func (a *hcAdapter) SetLevel(hclog.Level) {}

// GetLevel implements hclog.Logger.
func (a *hcAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn} {
		if a.enabled(l) {
			return l
		}
	}
	return hclog.Error
}

// StandardLogger implements hclog.Logger.
func (a *hcAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(nil), "", 0)
}

// StandardWriter implements hclog.Logger.
func (a *hcAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &levelWriter{l: a.l, limit: a.limit}
}

// stdlogFor returns a *log.Logger (what memberlist and net/http want)
// writing into l as component name. memberlist prefixes its lines with
// "[LEVEL] ", which sets the level.
func stdlogFor(l *slog.Logger, name string) *log.Logger {
	return log.New(&levelWriter{l: l.With("component", name), limit: loglimit.New()}, "", 0)
}

// memberlistLog is stdlogFor(l, "memberlist") that also counts in
// foreign every warning or error about a packet or stream not made with
// this cluster's gossip key (gossipForeign), logged or not: memberlist
// reports those nowhere else.
func memberlistLog(l *slog.Logger, foreign *atomic.Uint64) *log.Logger {
	return log.New(&levelWriter{l: l.With("component", "memberlist"), limit: loglimit.New(), foreign: foreign}, "", 0)
}

// httpErrorLog returns the *log.Logger for an http.Server's ErrorLog,
// writing into l as component name. Its lines, which have no level and
// are logged at Info, are limited like warnings: net/http logs one per
// connection that misbehaves (a broken HTTP/2 frame, a failed TLS
// handshake), and a loop of those made 55,000 lines (9 MB) in 20 s.
func httpErrorLog(l *slog.Logger, name string) *log.Logger {
	return log.New(&levelWriter{l: l.With("component", name), limit: loglimit.New(), limitAll: true}, "", 0)
}

// levelWriter turns "[LEVEL] message" lines into slog records. With a
// limit, warnings, errors and lines without a level of one kind are
// logged at most once per
// loglimit.Every: memberlist logs an ERROR per packet it cannot decode,
// and anyone who can send UDP to the gossip port could otherwise fill
// the disk (2 MB/s seen in a probe).
type levelWriter struct {
	l        *slog.Logger
	limit    *loglimit.Limiter
	limitAll bool           // limit lines of every level, not only warnings and errors
	foreign  *atomic.Uint64 // if set, counts the gossipForeign warnings and errors
}

var linePrefixes = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn},
	{"[ERR] ", slog.LevelError}, {"[ERROR] ", slog.LevelError},
}

func (w *levelWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		level, msg, leveled := slog.LevelInfo, string(line), false
		for _, lp := range linePrefixes {
			if rest, ok := strings.CutPrefix(msg, lp.prefix); ok {
				level, msg, leveled = lp.level, rest, true
				break
			}
		}
		// memberlist names the component itself: "memberlist: msg".
		msg = strings.TrimPrefix(msg, "memberlist: ")
		if w.foreign != nil && level >= slog.LevelWarn && gossipForeign(msg) != "" {
			w.foreign.Add(1)
		}
		var attrs []any
		// A line without a level is limited too: memberlist logs "Could
		// not set the deadline" bare, once per stream a flood opens
		// (43,148 lines, 7.3 MB, in 75 s).
		if w.limit != nil && (level >= slog.LevelWarn || w.limitAll || !leveled) {
			ok, skipped := w.limit.Allow(lineKind(msg))
			if !ok {
				continue
			}
			if skipped > 0 {
				attrs = append(attrs, loglimit.Skipped, skipped)
			}
			if hint := gossipForeign(msg); hint != "" {
				attrs = append(attrs, "hint", hint)
			}
		}
		w.l.Log(context.Background(), level, msg, attrs...)
	}
	return len(p), nil
}

// lineKind is loglimit.Kind, but for memberlist's "failed to receive: "
// lines the kind is that of what follows: a stream from a node with
// another key must not hide behind one that just hung up, nor the other
// way round.
func lineKind(msg string) string {
	if rest, ok := strings.CutPrefix(msg, "failed to receive: "); ok {
		return "failed to receive: " + loglimit.Kind(rest)
	}
	return loglimit.Kind(msg)
}

// gossipForeign says what a memberlist line about a packet or stream not
// made with this cluster's gossip key means, or "" if it is about
// something else.
func gossipForeign(msg string) string {
	for _, s := range []string{"no installed keys could decrypt", "remote state is encrypted and encryption is not configured",
		"encryption is configured but remote state is not encrypted"} {
		if strings.Contains(msg, s) {
			return "a node with another cluster key (--cluster-key or --gossip-key), or none, tried to gossip with this one (the line's from names it): " +
				"give every agent the same key; or something not leasenode's writes to the gossip port"
		}
	}
	for _, s := range []string{"Decrypt packet failed", "unacceptable label", "not supported", "Failed to decrypt"} {
		if strings.Contains(msg, s) {
			return "packets not made with this cluster's gossip key (--cluster-key or --gossip-key): another cluster's, or not leasenode's"
		}
	}
	return ""
}
