package report

import (
	"fmt"
	"hash/fnv"
	"html"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/leasenode/leasenode/jepsen/checker"
	"github.com/leasenode/leasenode/jepsen/history"
)

// timeline geometry
const (
	laneH     = 16
	keyPad    = 10
	labelW    = 110
	minWidth  = 1000
	maxWidth  = 24000
	pxPerSec  = 10
	axisH     = 34
	faultRowH = 18
)

type scale struct {
	end   int64
	width float64
}

func (s scale) x(t int64) float64 {
	if s.end <= 0 {
		return labelW
	}
	if t > s.end {
		t = s.end
	}
	if t < 0 {
		t = 0
	}
	return labelW + float64(t)/float64(s.end)*s.width
}

// palette holds distinct colours for the clients of a timeline.
var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2",
	"#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295", "#8cd17d"}

// clientColor gives a client a stable colour: from the palette by its
// index among the campaign's clients, or from a hash of its name.
func clientColor(client string) string {
	if i, ok := colorIndex[client]; ok {
		return palette[i%len(palette)]
	}
	h := fnv.New32a()
	h.Write([]byte(client))
	return fmt.Sprintf("hsl(%d,55%%,55%%)", h.Sum32()%360)
}

// colorIndex is set per rendering (renderHTML holds renderMu).
var colorIndex map[string]int

func esc(s string) string { return html.EscapeString(s) }

func dur(t int64) string {
	return time.Duration(t).Round(time.Millisecond).String()
}

// timeline draws one SVG for the whole campaign: an axis, a row of fault
// windows, then per key the holding periods as bars (overlapping ones
// stacked in separate lanes, which is what a single-holder violation looks
// like), stale writes refused as ticks, and violations in red.
func timeline(r Results, records []history.Record) template.HTML {
	end := int64(r.Elapsed)
	for _, rec := range records {
		end = max(end, rec.Time)
	}
	if end <= 0 {
		end = 1
	}
	width := float64(end) / 1e9 * pxPerSec
	width = max(min(width, maxWidth), minWidth)
	s := scale{end: end, width: width}

	keys := append([]string(nil), r.Meta.Keys...)
	seen := map[string]bool{}
	for _, k := range keys {
		seen[k] = true
	}
	for _, h := range r.Holds {
		if !seen[h.Key] {
			seen[h.Key] = true
			keys = append(keys, h.Key)
		}
	}
	sort.Strings(keys)

	type lanePlan struct {
		key   string
		holds []checker.Hold
		lane  []int
		lanes int
		y     float64
	}
	plans := make([]*lanePlan, 0, len(keys))
	y := float64(axisH + faultRowH + keyPad)
	for _, k := range keys {
		p := &lanePlan{key: k, y: y}
		var ends []int64
		for _, h := range r.Holds {
			if h.Key != k {
				continue
			}
			l := 0
			for l < len(ends) && ends[l] > h.Start {
				l++
			}
			if l == len(ends) {
				ends = append(ends, 0)
			}
			ends[l] = h.End
			p.holds = append(p.holds, h)
			p.lane = append(p.lane, l)
		}
		p.lanes = max(1, len(ends))
		y += float64(p.lanes*laneH + keyPad)
		plans = append(plans, p)
	}
	height := y + keyPad
	total := labelW + width + 20

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" class="timeline">`, total, height)
	// fault windows, shaded across everything
	for _, w := range r.Windows {
		if w.Fault == "none" {
			continue
		}
		x0, x1 := s.x(w.Start), s.x(w.End)
		fill := "#f5d9a8"
		if w.Failed {
			fill = "#ddd"
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%.0f" fill="%s" opacity="0.55"><title>%s</title></rect>`,
			x0, axisH, max(x1-x0, 1), height-axisH, fill,
			esc(fmt.Sprintf("%s %v %s-%s: %d ok, %d refused, %d failed, %d indeterminate", w.Fault, w.Nodes, dur(w.Start), dur(w.End), w.OK, w.Refused, w.Fail, w.Info)))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="fault">%s</text>`, x0+2, axisH+13, esc(w.Fault))
	}
	// axis
	step := niceStep(end, width)
	for t := int64(0); t <= end; t += step {
		x := s.x(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.0f" stroke="#eee"/>`, x, axisH-6, x, height)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="axis">%s</text>`, x+2, axisH-10, esc(time.Duration(t).Round(time.Second).String()))
	}
	fmt.Fprintf(&b, `<text x="4" y="%d" class="label">faults</text>`, axisH+13)
	// keys
	for _, p := range plans {
		fmt.Fprintf(&b, `<text x="4" y="%.0f" class="label">%s</text>`, p.y+12, esc(p.key))
		fmt.Fprintf(&b, `<line x1="%d" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#ccc"/>`, labelW, p.y-keyPad/2, total, p.y-keyPad/2)
		for i, h := range p.holds {
			x0, x1 := s.x(h.Start), s.x(h.End)
			yy := p.y + float64(p.lane[i]*laneH)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%d" rx="2" fill="%s" stroke="#333" stroke-width="0.3"><title>%s</title></rect>`,
				x0, yy+1, max(x1-x0, 1), laneH-3, clientColor(h.Client),
				esc(fmt.Sprintf("%s token %d: %s-%s (%s), ended by %s", h.Client, h.Token, dur(h.Start), dur(h.End), dur(h.End-h.Start), h.Ended)))
			if h.Ended == "lost" || h.Ended == "reported-validity" {
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#000" stroke-width="1.5"/>`, x1, yy+1, x1, yy+laneH-2)
			}
		}
	}
	keyY := map[string]*lanePlan{}
	for _, p := range plans {
		keyY[p.key] = p
	}
	// stale writes refused and worker pauses
	for _, rec := range records {
		p := keyY[rec.Key]
		if p == nil {
			continue
		}
		switch {
		case rec.Op == history.Write && rec.Type == history.Fail && rec.Err == history.ErrStaleToken:
			x := s.x(rec.Time)
			fmt.Fprintf(&b, `<path d="M%.1f %.0f l4 -6 l-8 0 z" fill="#06c"><title>%s</title></path>`, x, p.y+2,
				esc(fmt.Sprintf("stale write by %s with token %d refused at %s", rec.Client, rec.Token, dur(rec.Time))))
		case rec.Op == history.Pause && rec.Type == history.Event:
			x, y := s.x(rec.Time), p.y+float64(p.lanes*laneH)-2
			fmt.Fprintf(&b, `<g fill="#333"><title>%s</title><rect x="%.1f" y="%.0f" width="2" height="6"/><rect x="%.1f" y="%.0f" width="2" height="6"/></g>`,
				esc(fmt.Sprintf("%s paused at %s while holding %s (token %d)", rec.Client, dur(rec.Time), rec.Key, rec.Token)), x-3, y, x+1, y)
		}
	}
	// violations
	for _, c := range r.Checkers {
		for _, v := range c.Violations {
			x0, x1 := s.x(v.Start), s.x(v.End)
			y0, h := float64(axisH), height-axisH
			if p := keyY[v.Key]; p != nil {
				y0, h = p.y-2, float64(p.lanes*laneH+4)
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="red" fill-opacity="0.25" stroke="red" stroke-width="1.5"><title>%s</title></rect>`,
				x0-1, y0, max(x1-x0, 0)+2, h, esc(v.Checker+": "+v.Message))
			fmt.Fprintf(&b, `<path d="M%.1f %.0f l5 -8 l-10 0 z" fill="red"><title>%s</title></path>`, x0, y0, esc(v.Checker+": "+v.Message))
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func niceStep(end int64, width float64) int64 {
	target := float64(end) / (width / 90) // a label every ~90 px
	for _, s := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second,
		30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour} {
		if float64(s) >= target {
			return int64(s)
		}
	}
	return int64(time.Hour)
}

type pageData struct {
	R        Results
	Line     string
	Timeline template.HTML
	Vis      []visData
	Kinds    []string
	Status   string
}

type visData struct {
	Key  string
	File string
	Doc  string
}

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"dur": func(t int64) string { return dur(t) },
	"pct": func(f float64) string {
		if f < 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f%%", f*100)
	},
	"color": clientColor,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>leasenode jepsen: {{.R.Meta.Name}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
.verdict{padding:.6em 1em;border-radius:4px;font-weight:600}
.pass{background:#e3f6e3;border:1px solid #7c7} .fail{background:#fde2e2;border:1px solid #e66}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6} .valid{color:#080;font-weight:600} .invalid{color:#c00;font-weight:600} .unknown{color:#a60;font-weight:600}
.scroll{overflow-x:auto;border:1px solid #ddd;padding:4px}
svg.timeline text{font:11px system-ui,sans-serif} .axis{fill:#888} .fault{fill:#a60} .label{fill:#222;font-weight:600}
iframe{width:100%;height:600px;border:1px solid #ccc}
code{background:#f4f4f4;padding:0 3px}
</style></head><body>
<h1>leasenode jepsen — {{.R.Meta.Name}}</h1>
<p class="verdict {{.Status}}">{{.Line}}</p>
<table>
<tr><th>started</th><td>{{.R.Meta.Started.Format "2006-01-02 15:04:05 MST"}}</td><th>elapsed</th><td>{{.R.Elapsed}}</td></tr>
<tr><th>nodes</th><td>{{.R.Meta.Nodes}} ({{.R.Meta.Control}}{{with .R.Meta.ControlNote}}: {{.}}{{end}})</td><th>faults</th><td>{{.R.Meta.Faults}}</td></tr>
<tr><th>workload</th><td>{{.R.Meta.Workers}} workers on {{len .R.Meta.Keys}} keys, TTL {{.R.Meta.TTL}}</td><th>unsafe mode</th><td>{{if .R.Meta.Unsafe}}<b>{{.R.Meta.Unsafe}}</b>{{if .R.Meta.ExpectViolation}} (a violation is expected){{else}} (within the safety bound: no violation allowed){{end}}{{else}}none{{end}}</td></tr>
<tr><th>seed</th><td>{{.R.Meta.Seed}}</td><th>expected / got</th><td>{{.R.Expected}} / <span class="{{.R.Verdict}}">{{.R.Verdict}}</span></td></tr>
{{range $k, $v := .R.Meta.Extra}}<tr><th>{{$k}}</th><td colspan="3"><code>{{$v}}</code></td></tr>{{end}}
</table>

<h2>Checkers</h2>
<table><tr><th>checker</th><th>verdict</th><th>summary</th><th>notes</th></tr>
{{range .R.Checkers}}<tr><td>{{.Name}}</td><td class="{{.Verdict}}">{{.Verdict}}</td><td>{{.Summary}}</td><td>{{range .Notes}}{{.}}<br>{{end}}</td></tr>{{end}}
</table>

{{if .R.Checkers}}{{$any := false}}{{range .R.Checkers}}{{if .Violations}}{{$any = true}}{{end}}{{end}}{{if $any}}
<h2>Violations</h2>
<table><tr><th>checker</th><th>key</th><th>when</th><th>clients</th><th>tokens</th><th>history ops</th><th>what</th></tr>
{{range .R.Checkers}}{{$c := .Name}}{{range .Violations}}<tr><td>{{$c}}</td><td>{{.Key}}</td><td>{{dur .Start}}–{{dur .End}}</td><td>{{range .Clients}}{{.}} {{end}}</td><td>{{range .Tokens}}{{.}} {{end}}</td><td>{{range .Ops}}{{.}} {{end}}</td><td>{{.Message}}</td></tr>
{{end}}{{end}}</table>{{end}}{{end}}

<h2>Timeline</h2>
<p>One band per key; each bar is one client's holding period as the client itself believed it (from the grant to the earlier of its release and its own validity; a black end tick: the client saw the lease lost). Bars stacked in more than one lane overlap in time. Shaded: fault windows. Blue triangles: stale writes the resource refused. Two black bars under a band: a worker paused while holding (a simulated GC pause). Red: violations (hover for details).</p>
<div class="scroll">{{.Timeline}}</div>

<h2>Operations and faults</h2>
<table>
<tr><th>cluster operations</th><td>{{.R.Counts.Operations}}: {{.R.Counts.OK}} ok, {{.R.Counts.Refused}} refused (held), {{.R.Counts.Fail}} failed, {{.R.Counts.Info}} indeterminate</td></tr>
<tr><th>resource writes</th><td>{{.R.Counts.WritesOK}} accepted, {{.R.Counts.WritesStale}} refused as stale</td></tr>
<tr><th>client events</th><td>{{.R.Counts.Lost}} leases lost by their clients, {{.R.Counts.Pauses}} worker pauses, {{.R.Counts.Vanishes}} vanished workers</td></tr>
<tr><th>faults</th><td>{{.R.Counts.Faults}} injected ({{.R.Counts.FaultsFailed}} failed to inject){{range .Kinds}}<br>{{.}}{{end}}</td></tr>
</table>

<h2>Availability per fault window</h2>
<table><tr><th>fault</th><th>nodes</th><th>from</th><th>to</th><th>ok</th><th>refused</th><th>failed</th><th>indeterminate</th><th>served</th></tr>
{{range .R.Windows}}<tr><td>{{.Fault}}{{if .Failed}} (failed){{end}}</td><td>{{range .Nodes}}{{.}} {{end}}</td><td>{{dur .Start}}</td><td>{{dur .End}}</td><td>{{.OK}}</td><td>{{.Refused}}</td><td>{{.Fail}}</td><td>{{.Info}}</td><td>{{pct .Served}}</td></tr>
{{end}}</table>

{{range .Vis}}
<h2>Linearizability of key {{.Key}} (porcupine)</h2>
<p>Porcupine's visualization of the longest partial linearizations it found; also saved as <code>{{.File}}</code>.</p>
<iframe srcdoc="{{.Doc}}"></iframe>
{{end}}
<p style="color:#888">Files: <code>history.jsonl.gz</code> (every record), <code>verdicts.jsonl</code> (verdicts as the campaign went), <code>results.json</code>, <code>nodes/*/log</code> (agent logs).</p>
</body></html>
`))

var renderMu sync.Mutex

func renderHTML(w io.Writer, dir string, r Results, records []history.Record) error {
	renderMu.Lock()
	defer renderMu.Unlock()
	colorIndex = map[string]int{}
	var clients []string
	for _, h := range r.Holds {
		if _, ok := colorIndex[h.Client]; !ok {
			colorIndex[h.Client] = 0
			clients = append(clients, h.Client)
		}
	}
	sort.Strings(clients)
	for i, c := range clients {
		colorIndex[c] = i
	}
	d := pageData{R: r, Line: Line(r), Timeline: timeline(r, records), Status: "fail"}
	if r.Passed {
		d.Status = "pass"
	}
	for _, k := range sortedFaultKinds(r.Counts.FaultKinds) {
		d.Kinds = append(d.Kinds, fmt.Sprintf("%s: %d", k, r.Counts.FaultKinds[k]))
	}
	keys := make([]string, 0, len(r.Visualizations))
	for k := range r.Visualizations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		file := r.Visualizations[k]
		doc, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			doc = []byte("visualization missing: " + err.Error())
		}
		d.Vis = append(d.Vis, visData{Key: k, File: file, Doc: string(doc)})
	}
	return page.Execute(w, d)
}
