package fsm_test

// A small script-driven harness in the spirit of CockroachDB's datadriven
// package, without the dependency. Each file in testdata/*.txt is a list of
// blocks separated by blank lines:
//
//	# a comment
//	acquire key=a holder=c1 req=1 ttl=5s at=100ms
//	----
//	granted key=a token=2 expiry=5.1s
//
// A block is a command line, optional input lines (the sub-commands of a
// batch), "----", and the expected output. Run with -rewrite to regenerate
// the expected output in place.
//
// Commands that become log entries (promote, acquire, extend, release,
// cancel, expire, batch, entry) are applied through FSM.Apply with the encoded
// command, at index = their ordinal among such commands in the file (1, 2,
// ...), so an acquire's fencing token is that ordinal. Stamps: epoch is the
// one of the last promote unless epoch=N is given; at=D is the stamp's Now
// and defaults to the previous command's.
//
//	promote epoch=E at=D
//	acquire key=K holder=H req=N ttl=D [delay=D] [value=V] [mode=M] [n=N]
//	        [more=K2[:M2],...] [keep=true] [at=D] [epoch=E]
//	                            (keep: KeepLockDelay)
//	                            (M: exclusive, shared, or semaphore with n=N;
//	                            more: further keys, :shared or :semN)
//	extend holder=H K:TOKEN... [at=D] [epoch=E]
//	release key=K holder=H token=N [at=D] [epoch=E]
//	cancel key=K holder=H req=N [at=D] [epoch=E]
//	expire [at=D] [epoch=E]
//	batch [at=D] [epoch=E]      (sub-commands on the following lines)
//	entry hex=BYTES [crc]       (raw entry bytes; crc appends their CRC-32C)
//	dump                        (clock, records, next expiry; no entry)
//	get key=K                   (the key's first record; no entry)
//	holdings key=K              (every record of the key; no entry)
//	events                      (drain the change feed; no entry)
//
// A key or value written "@N" stands for N bytes ("k" or "v" repeated), for
// the size limits; such keys print as <N bytes>.

import (
	"bufio"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasenode/leasenode/fsm"
	"github.com/leasenode/leasenode/internal/holdset"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata scripts and the fuzz seed corpus")

// TestScripts runs every testdata/*.txt script.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scripts in testdata")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			runScript(t, file)
		})
	}
}

// scriptBlock is one command with its expected output.
type scriptBlock struct {
	pre      []string // comments and blank lines before the command
	line     int
	cmd      string
	input    []string
	expected string
	actual   string
}

func parseScript(t *testing.T, file string) (blocks []*scriptBlock, trailer []string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(nil, 1<<20)
	var pre []string
	lineNo := 0
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		lineNo++
		return sc.Text(), true
	}
	for {
		l, ok := next()
		if !ok {
			break
		}
		if trimmed := strings.TrimSpace(l); trimmed == "" || strings.HasPrefix(trimmed, "#") {
			pre = append(pre, l)
			continue
		}
		b := &scriptBlock{pre: pre, line: lineNo, cmd: l}
		pre = nil
		sawSep := false
		for {
			in, ok := next()
			if !ok {
				break
			}
			if in == "----" {
				sawSep = true
				break
			}
			b.input = append(b.input, in)
		}
		if !sawSep {
			t.Fatalf("%s:%d: %q has no ---- line", file, b.line, l)
		}
		var exp []string
		for {
			out, ok := next()
			if !ok || out == "" {
				if ok {
					pre = append(pre, out)
				}
				break
			}
			exp = append(exp, out)
		}
		b.expected = strings.Join(exp, "\n")
		blocks = append(blocks, b)
	}
	return blocks, pre
}

func runScript(t *testing.T, file string) {
	blocks, trailer := parseScript(t, file)
	h := newHarness()
	for _, b := range blocks {
		out, err := h.run(b.cmd, b.input)
		if err != nil {
			t.Fatalf("%s:%d: %s: %v", file, b.line, b.cmd, err)
		}
		b.actual = strings.TrimRight(out, "\n")
		if !*rewrite && b.actual != b.expected {
			t.Errorf("%s:%d: %s\n--- expected:\n%s\n--- actual:\n%s", file, b.line, b.cmd, b.expected, b.actual)
		}
	}
	if !*rewrite {
		return
	}
	var sb strings.Builder
	for _, b := range blocks {
		for _, p := range b.pre {
			sb.WriteString(p + "\n")
		}
		sb.WriteString(b.cmd + "\n")
		for _, in := range b.input {
			sb.WriteString(in + "\n")
		}
		sb.WriteString("----\n")
		if b.actual != "" {
			sb.WriteString(b.actual + "\n")
		}
	}
	for _, p := range trailer {
		sb.WriteString(p + "\n")
	}
	if err := os.WriteFile(file, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// harness drives one FSM through a script.
type harness struct {
	f     *fsm.FSM
	index uint64
	epoch uint64
	at    time.Duration
	fatal []string
}

func newHarness() *harness {
	h := &harness{}
	h.f = fsm.New(fsm.Config{Events: true, OnFatal: func(err error) {
		h.fatal = append(h.fatal, err.Error())
	}})
	return h
}

// args is a parsed command line: its name, key=value pairs, and bare words.
type args struct {
	name  string
	kv    map[string]string
	words []string
}

func parseArgs(line string) args {
	f := strings.Fields(line)
	a := args{kv: map[string]string{}}
	if len(f) == 0 {
		return a
	}
	a.name = f[0]
	for _, w := range f[1:] {
		if k, v, ok := strings.Cut(w, "="); ok {
			a.kv[k] = v
		} else {
			a.words = append(a.words, w)
		}
	}
	return a
}

func (a args) str(k string) (string, error) {
	v, ok := a.kv[k]
	if !ok {
		return "", fmt.Errorf("missing %s=", k)
	}
	if n, ok := strings.CutPrefix(v, "@"); ok {
		size, err := strconv.Atoi(n)
		if err != nil {
			return "", fmt.Errorf("%s=%s: %v", k, v, err)
		}
		fill := "k"
		if k == "value" {
			fill = "v"
		}
		return strings.Repeat(fill, size), nil
	}
	return v, nil
}

func (a args) optStr(k string) string {
	if _, ok := a.kv[k]; !ok {
		return ""
	}
	v, _ := a.str(k)
	return v
}

func (a args) uint(k string) (uint64, error) {
	v, ok := a.kv[k]
	if !ok {
		return 0, fmt.Errorf("missing %s=", k)
	}
	return strconv.ParseUint(v, 10, 64)
}

func (a args) dur(k string) (time.Duration, error) {
	v, ok := a.kv[k]
	if !ok {
		return 0, fmt.Errorf("missing %s=", k)
	}
	return time.ParseDuration(v)
}

func (a args) optDur(k string) (time.Duration, error) {
	if _, ok := a.kv[k]; !ok {
		return 0, nil
	}
	return a.dur(k)
}

// stamp reads at= and epoch= (defaults: previous at, current epoch).
func (h *harness) stamp(a args) (fsm.Stamp, error) {
	if _, ok := a.kv["at"]; ok {
		at, err := a.dur("at")
		if err != nil {
			return fsm.Stamp{}, err
		}
		h.at = at
	}
	s := fsm.Stamp{Epoch: h.epoch, Now: h.at}
	if _, ok := a.kv["epoch"]; ok {
		e, err := a.uint("epoch")
		if err != nil {
			return fsm.Stamp{}, err
		}
		s.Epoch = e
	}
	return s, nil
}

// command builds the command a line names (not promote or batch).
func (h *harness) command(a args) (fsm.Command, error) {
	switch a.name {
	case "acquire":
		c := &fsm.Acquire{}
		var err error
		if c.Key, err = a.str("key"); err != nil {
			return nil, err
		}
		if c.Holder, err = a.str("holder"); err != nil {
			return nil, err
		}
		if c.ReqID, err = a.uint("req"); err != nil {
			return nil, err
		}
		if c.TTL, err = a.dur("ttl"); err != nil {
			return nil, err
		}
		if c.LockDelay, err = a.optDur("delay"); err != nil {
			return nil, err
		}
		if v := a.optStr("value"); v != "" {
			c.Value = []byte(v)
		}
		var err2 error
		if c.Mode, err2 = parseMode(a.optStr("mode")); err2 != nil {
			return nil, err2
		}
		if n, ok := a.kv["n"]; ok {
			v, err := strconv.ParseUint(n, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("n=%s: %v", n, err)
			}
			c.Limit = uint32(v)
		}
		switch k := a.optStr("keep"); k {
		case "true":
			c.KeepLockDelay = true
		case "":
		default:
			return nil, fmt.Errorf("keep=%s: want true or nothing", k)
		}
		if more := a.optStr("more"); more != "" {
			for _, w := range strings.Split(more, ",") {
				it, err := parseItem(w)
				if err != nil {
					return nil, err
				}
				c.More = append(c.More, it)
			}
		}
		return c, nil
	case "extend":
		c := &fsm.Extend{}
		var err error
		if c.Holder, err = a.str("holder"); err != nil {
			return nil, err
		}
		for _, w := range a.words {
			k, tok, ok := strings.Cut(w, ":")
			if !ok {
				return nil, fmt.Errorf("extend item %q: want key:token", w)
			}
			n, err := strconv.ParseUint(tok, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("extend item %q: %v", w, err)
			}
			c.Items = append(c.Items, fsm.ExtendItem{Key: k, Token: n})
		}
		return c, nil
	case "extend-all":
		// The listed key:token units are the holdings the client believes
		// it holds; the command carries only their sum.
		holder, err := a.str("holder")
		if err != nil {
			return nil, err
		}
		var sum holdset.Sum
		for _, w := range a.words {
			k, tok, ok := strings.Cut(w, ":")
			n, err := strconv.ParseUint(tok, 10, 64)
			if !ok || err != nil {
				return nil, fmt.Errorf("extend-all unit %q: want key:token", w)
			}
			sum.Add(k, n)
		}
		return &fsm.ExtendAll{Holder: holder, Count: sum.Count, Digest: sum.Digest}, nil
	case "release":
		c := &fsm.Release{}
		var err error
		if c.Key, err = a.str("key"); err != nil {
			return nil, err
		}
		if c.Holder, err = a.str("holder"); err != nil {
			return nil, err
		}
		if c.Token, err = a.uint("token"); err != nil {
			return nil, err
		}
		return c, nil
	case "cancel":
		c := &fsm.Cancel{}
		var err error
		if c.Key, err = a.str("key"); err != nil {
			return nil, err
		}
		if c.Holder, err = a.str("holder"); err != nil {
			return nil, err
		}
		if c.ReqID, err = a.uint("req"); err != nil {
			return nil, err
		}
		if a.optStr("of-epoch") != "" {
			if c.Epoch, err = a.uint("of-epoch"); err != nil {
				return nil, err
			}
		}
		return c, nil
	case "expire":
		return fsm.Expire{}, nil
	case "promote":
		return fsm.Promote{}, nil
	}
	return nil, fmt.Errorf("unknown command %q", a.name)
}

func (h *harness) run(line string, input []string) (string, error) {
	a := parseArgs(line)
	switch a.name {
	case "dump":
		return dumpFSM(h.f), nil
	case "get":
		k, err := a.str("key")
		if err != nil {
			return "", err
		}
		l, ok := h.f.Get(k)
		if !ok {
			return "not found", nil
		}
		return formatLease(&l), nil
	case "holdings":
		k, err := a.str("key")
		if err != nil {
			return "", err
		}
		hs := h.f.Holdings(k)
		if len(hs) == 0 {
			return "none", nil
		}
		var sb strings.Builder
		for i := range hs {
			sb.WriteString(formatLease(&hs[i]) + "\n")
		}
		return sb.String(), nil
	case "events":
		var sb strings.Builder
		for _, e := range h.f.Drain(nil) {
			sb.WriteString(formatEvent(e) + "\n")
		}
		if sb.Len() == 0 {
			return "none", nil
		}
		return sb.String(), nil
	case "entry":
		raw, err := hex.DecodeString(a.kv["hex"])
		if err != nil {
			return "", err
		}
		if slices.Contains(a.words, "crc") {
			raw = signed(raw)
		}
		return h.apply(raw), nil
	case "promote":
		e, err := a.uint("epoch")
		if err != nil {
			return "", err
		}
		s, err := h.stamp(a)
		if err != nil {
			return "", err
		}
		s.Epoch = e
		h.epoch = e
		return h.apply(fsm.Encode(s, fsm.Promote{})), nil
	case "batch":
		s, err := h.stamp(a)
		if err != nil {
			return "", err
		}
		b := &fsm.Batch{}
		for _, in := range input {
			sub, err := h.command(parseArgs(in))
			if err != nil {
				return "", fmt.Errorf("batch item %q: %v", in, err)
			}
			b.Cmds = append(b.Cmds, sub)
		}
		return h.apply(fsm.Encode(s, b)), nil
	}
	if len(input) > 0 {
		return "", fmt.Errorf("%s takes no input lines", a.name)
	}
	cmd, err := h.command(a)
	if err != nil {
		return "", err
	}
	s, err := h.stamp(a)
	if err != nil {
		return "", err
	}
	return h.apply(fsm.Encode(s, cmd)), nil
}

// apply applies data as the next entry and formats the response.
func (h *harness) apply(data []byte) string {
	h.index++
	out := h.f.Apply(&raft.Log{Type: raft.LogCommand, Index: h.index, Data: data})
	resp, ok := out.(*fsm.Response)
	if !ok {
		return fmt.Sprintf("unexpected Apply result %T", out)
	}
	var sb strings.Builder
	if len(resp.Results) == 0 {
		sb.WriteString("(nothing)\n")
	}
	for _, r := range resp.Results {
		sb.WriteString(formatResult(r) + "\n")
	}
	for _, f := range h.fatal {
		sb.WriteString("fatal: " + f + "\n")
	}
	h.fatal = nil
	return sb.String()
}

func showKey(k string) string {
	if len(k) > 32 {
		return fmt.Sprintf("<%d bytes>", len(k))
	}
	return k
}

func formatResult(r fsm.Result) string {
	parts := []string{r.Code.String()}
	if r.Key != "" {
		parts = append(parts, "key="+showKey(r.Key))
	}
	if r.Token != 0 {
		parts = append(parts, fmt.Sprintf("token=%d", r.Token))
	}
	if r.Holder != "" {
		parts = append(parts, "holder="+r.Holder)
	}
	if (r.Code == fsm.Granted || r.Code == fsm.Extended) && r.Key != "" { // an ExtendAll names no key
		parts = append(parts, "expiry="+r.Expiry.String())
	}
	if r.Code == fsm.Held {
		parts = append(parts, "wait="+r.Wait.String())
	}
	if r.Retry {
		parts = append(parts, "retry")
	}
	if r.Reason != "" {
		parts = append(parts, "("+r.Reason+")")
	}
	return strings.Join(parts, " ")
}

func formatLease(l *fsm.Lease) string {
	s := fmt.Sprintf("%s: %s holder=%s req=%d token=%d ttl=%v delay=%v expiry=%v",
		showKey(l.Key), l.State, l.Holder, l.ReqID, l.Token, l.TTL, l.LockDelay, l.Expiry)
	if len(l.Value) > 0 {
		v := string(l.Value)
		if len(v) > 32 {
			v = fmt.Sprintf("<%d bytes>", len(v))
		}
		s += " value=" + v
	}
	if l.Seen {
		s += " seen"
	}
	switch l.Mode {
	case fsm.ModeExclusive:
	case fsm.ModeSemaphore:
		s += fmt.Sprintf(" mode=semaphore/%d", l.Limit)
	default:
		s += " mode=" + l.Mode.String()
		if l.Limit != 0 {
			s += fmt.Sprintf(" n=%d", l.Limit)
		}
	}
	if l.Set != 0 {
		s += fmt.Sprintf(" set=%d:%s", l.Set, strings.Join(l.SetKeys, ","))
	}
	return s
}

// parseMode reads exclusive (or nothing), shared or semaphore.
func parseMode(m string) (fsm.Mode, error) {
	switch m {
	case "", "exclusive":
		return fsm.ModeExclusive, nil
	case "shared":
		return fsm.ModeShared, nil
	case "semaphore":
		return fsm.ModeSemaphore, nil
	}
	if n, err := strconv.Atoi(m); err == nil {
		return fsm.Mode(n), nil // a raw mode, for bad input
	}
	return 0, fmt.Errorf("mode=%s: want exclusive, shared, semaphore or a number", m)
}

// parseItem reads KEY, KEY:shared, KEY:exclusive or KEY:semN.
func parseItem(w string) (fsm.Item, error) {
	k, m, _ := strings.Cut(w, ":")
	it := fsm.Item{Key: k}
	if n, ok := strings.CutPrefix(m, "sem"); ok {
		v, err := strconv.ParseUint(n, 10, 32)
		if err != nil {
			return it, fmt.Errorf("item %q: %v", w, err)
		}
		it.Mode, it.Limit = fsm.ModeSemaphore, uint32(v)
		return it, nil
	}
	var err error
	it.Mode, err = parseMode(m)
	return it, err
}

func formatMark(m fsm.Mark) string {
	s := fmt.Sprintf("mark %s/%s: req=%d", showKey(m.Key), m.Holder, m.ReqID)
	if m.Ended {
		s += " ended"
	}
	return s + fmt.Sprintf(" due=%v", m.Due)
}

func formatEvent(e fsm.Event) string {
	s := fmt.Sprintf("%s index=%d", e.Type, e.Index)
	if e.Key != "" {
		s += " key=" + showKey(e.Key)
	}
	if e.Holder != "" {
		s += " holder=" + e.Holder
	}
	if e.Token != 0 {
		s += fmt.Sprintf(" token=%d", e.Token)
	}
	if len(e.Value) > 0 {
		s += " value=" + string(e.Value)
	}
	switch e.Mode {
	case fsm.ModeExclusive:
	case fsm.ModeSemaphore:
		s += fmt.Sprintf(" mode=semaphore/%d", e.Limit)
	default:
		s += " mode=" + e.Mode.String()
	}
	if e.Set != 0 {
		s += fmt.Sprintf(" set=%d", e.Set)
	}
	return s
}

// dumpFSM prints the clock, every record in key order, every request-id
// mark in (key, holder) order, and the next expiry.
func dumpFSM(f *fsm.FSM) string {
	st := f.Stats()
	var sb strings.Builder
	fmt.Fprintf(&sb, "epoch=%d now=%v applied=%d held=%d delayed=%d marks=%d\n", st.Epoch, st.Now, st.Applied, st.Held, st.Delayed, st.Marks)
	if st.Keys != st.Held+st.Delayed {
		fmt.Fprintf(&sb, "keys=%d\n", st.Keys)
	}
	leases, _ := f.List("", "", 1<<30)
	for i := range leases {
		sb.WriteString(formatLease(&leases[i]) + "\n")
	}
	for _, m := range fsm.AllMarks(f) {
		sb.WriteString(formatMark(m) + "\n")
	}
	if due, ok := f.NextExpiry(); ok {
		fmt.Fprintf(&sb, "next-expiry=%v\n", due)
	} else {
		sb.WriteString("next-expiry=none\n")
	}
	return sb.String()
}
