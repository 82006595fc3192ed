package report

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/leasenode/leasenode/jepsen/history"
)

// Progress keeps the live progress line of a running campaign: elapsed
// time, operations ok / refused / failed / indeterminate, stale writes
// refused, and the fault in force. Feed it every record with Observe
// (history.Recorder.OnRecord) and let Run print it.
type Progress struct {
	out   io.Writer
	tty   bool
	clock history.Clock
	total time.Duration

	mu                      sync.Mutex
	ok, refused, fail, info int
	stale, lost, faults     int
	fault                   string
	lastLen                 int
}

// NewProgress returns a Progress printing to out; total is the planned
// duration (for "12s/2m0s").
func NewProgress(out io.Writer, clock history.Clock, total time.Duration) *Progress {
	tty := false
	if f, ok := out.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &Progress{out: out, tty: tty, clock: clock, total: total, fault: "none"}
}

// Observe counts one record. It is cheap and never blocks.
func (p *Progress) Observe(rec history.Record) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch rec.Op {
	case history.Acquire, history.Release, history.Get, history.CheckToken:
		switch {
		case rec.Type == history.OK:
			p.ok++
		case rec.Type == history.Fail && rec.Err == history.ErrHeld:
			p.refused++
		case rec.Type == history.Fail:
			p.fail++
		case rec.Type == history.Info:
			p.info++
		}
	case history.Write:
		if rec.Type == history.Fail && rec.Err == history.ErrStaleToken {
			p.stale++
		}
	case history.ExtendLost:
		p.lost++
	case history.Fault:
		if rec.Type == history.Invoke {
			p.faults++
		}
		if rec.Type == history.Invoke || rec.Type == history.OK {
			p.fault = rec.Fault
			if len(rec.Nodes) > 0 {
				p.fault += " " + strings.Join(rec.Nodes, ",")
			}
		}
	case history.Heal:
		if rec.Type != history.Invoke {
			p.fault = "none"
		}
	}
}

// Line returns the current progress line.
func (p *Progress) Line() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	el := time.Duration(p.clock.Now()).Round(time.Second)
	return fmt.Sprintf("[%s/%s] ops ok %d refused %d failed %d indeterminate %d | stale writes refused %d | leases lost %d | faults %d, now: %s",
		el, p.total, p.ok, p.refused, p.fail, p.info, p.stale, p.lost, p.faults, p.fault)
}

// Run prints the line every interval until ctx ends: rewritten in place on
// a terminal, as a new line every ten intervals otherwise (CI logs).
func (p *Progress) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			p.Finish()
			return
		case <-t.C:
			n++
			if p.tty {
				p.print(true)
			} else if n%10 == 0 {
				p.print(false)
			}
		}
	}
}

func (p *Progress) print(inPlace bool) {
	line := p.Line()
	if inPlace {
		p.mu.Lock()
		pad := max(p.lastLen-len(line), 0)
		p.lastLen = len(line)
		p.mu.Unlock()
		fmt.Fprintf(p.out, "\r%s%s", line, strings.Repeat(" ", pad))
		return
	}
	fmt.Fprintln(p.out, line)
}

// Finish prints the final line (ending the in-place line on a terminal).
func (p *Progress) Finish() {
	if p.tty {
		p.print(true)
		fmt.Fprintln(p.out)
		return
	}
	p.print(false)
}
