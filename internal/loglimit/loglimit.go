// Package loglimit keeps a log that strangers can make lines in bounded:
// one line of each kind per Every, with a count of those left out. The
// node's adapters for Raft's, memberlist's and net/http's logs use it, and
// the transport's Mux for the connections it refuses.
package loglimit

import (
	"strings"
	"sync"
	"time"
)

// Every is how often a line of one kind is logged when it repeats.
const Every = 10 * time.Second

// maxKinds bounds the kinds a Limiter remembers: kinds come from senders'
// bytes too.
const maxKinds = 1024

// Limiter lets one line of each kind through per Every and counts the
// others. The zero value is not usable; call New.
type Limiter struct {
	mu    sync.Mutex
	kinds map[string]*kindState
}

type kindState struct {
	last    time.Time
	skipped int
}

// New returns an empty Limiter.
func New() *Limiter { return &Limiter{kinds: map[string]*kindState{}} }

// Allow reports whether a line of kind may be logged now, and how many of
// its kind were not logged since the last one that was.
func (l *Limiter) Allow(kind string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	st := l.kinds[kind]
	if st == nil {
		if len(l.kinds) >= maxKinds {
			clear(l.kinds)
		}
		st = &kindState{}
		l.kinds[kind] = st
	}
	if !st.last.IsZero() && now.Sub(st.last) < Every {
		st.skipped++
		return false, 0
	}
	skipped := st.skipped
	st.last, st.skipped = now, 0
	return true, skipped
}

// Kind is what makes two log lines the same kind: the message up to the
// first detail a sender controls (its address, a quoted value, a number).
// net/http's "http: " and "http2: " prefixes are kept in front of it.
func Kind(msg string) string {
	prefix := ""
	for _, p := range []string{"http: ", "http2: "} {
		if rest, ok := strings.CutPrefix(msg, p); ok {
			prefix, msg = p, rest
			break
		}
	}
	if i := strings.IndexAny(msg, "\"0123456789:"); i >= 0 {
		msg = msg[:i]
	}
	if len(msg) > 64 {
		msg = msg[:64]
	}
	return prefix + msg
}

// Skipped is the attribute key under which a logged line carries the
// count of its kind left out before it.
const Skipped = "like_this_not_logged"
