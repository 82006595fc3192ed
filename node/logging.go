package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogFor returns an hclog.Logger (what hashicorp/raft wants) that writes
// into l. hclog renders JSON lines; slogWriter parses each back into one
// slog record with its level, message and fields.
func hclogFor(l *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.Debug,
		JSONFormat: true,
		Output:     &slogWriter{l: l.With("component", name)},
	})
}

// stdlogFor returns a *log.Logger (what memberlist wants) writing into l.
// memberlist prefixes lines with "[LEVEL] ".
func stdlogFor(l *slog.Logger, name string) *log.Logger {
	return log.New(&slogWriter{l: l.With("component", name), plain: true}, "", 0)
}

type slogWriter struct {
	l     *slog.Logger
	plain bool
}

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		if len(line) > 0 {
			w.line(line)
		}
	}
	return len(p), nil
}

func (w *slogWriter) line(line []byte) {
	if w.plain {
		level, msg := slog.LevelInfo, string(line)
		for prefix, lv := range map[string]slog.Level{
			"[DEBUG] ": slog.LevelDebug, "[INFO] ": slog.LevelInfo,
			"[WARN] ": slog.LevelWarn, "[ERR] ": slog.LevelError, "[ERROR] ": slog.LevelError,
		} {
			if strings.HasPrefix(msg, prefix) {
				level, msg = lv, strings.TrimPrefix(msg, prefix)
				break
			}
		}
		w.l.Log(context.Background(), level, msg)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		w.l.Info(string(line))
		return
	}
	level := slog.LevelInfo
	switch m["@level"] {
	case "trace", "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	if !w.l.Enabled(context.Background(), level) {
		return
	}
	msg, _ := m["@message"].(string)
	attrs := make([]any, 0, 2*len(m))
	for k, v := range m {
		if !strings.HasPrefix(k, "@") {
			attrs = append(attrs, k, v)
		}
	}
	w.l.Log(context.Background(), level, msg, attrs...)
}

var _ io.Writer = (*slogWriter)(nil)
