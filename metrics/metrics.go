// Package metrics exports the state of a leasenode node to Prometheus and
// answers health and readiness probes. The agent (cmd/leasenode) serves it
// on the client API port through node.Config.HTTPHandlers; a program that
// embeds a node can do the same, or register the collector in its own
// registry:
//
//	m := metrics.New(metrics.Options{})
//	cfg.HTTPHandlers = m.Handlers()     // /metrics, /healthz, /readyz
//	cfg.APIMiddleware = m.Middleware    // time client API requests
//	n, err := node.Start(ctx, cfg)
//	go m.Run(ctx, n)                    // attach the node, count events
//
// Gauges (leases, waiters, Raft state and indexes) are read from the node
// at scrape time; counters of events (grants, releases, expiries, extends)
// are the node's own counts of what it applied (node.Node.Applied), so
// every node of a cluster reports the same totals for the entries it
// applied since it started. Leader changes are counted from Raft's observations, and
// refusals at the trust boundary (leasenode_refusals_total, by port and
// reason) by the node itself (node.Node.Refusals). Client API
// latency (leasenode_api_request_duration_seconds, by method) is measured
// by Middleware, which the node wraps around its API handlers.
//
// It does not change the node, and owns no safety property: everything it
// reports is advisory. leasenode_build_info names the running build
// (internal/buildinfo).
package metrics

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/leasenode/leasenode/internal/buildinfo"
	"github.com/leasenode/leasenode/node"
	"github.com/leasenode/leasenode/transport/pb"
)

// Namespace prefixes every metric name.
const Namespace = "leasenode"

// DefaultMaxApplyLag is the largest number of committed but unapplied Raft
// entries a ready node may have.
const DefaultMaxApplyLag = 256

// Options configures a Metrics.
type Options struct {
	// MaxApplyLag is how far the applied index may trail the commit index
	// for /readyz to answer 200. Default DefaultMaxApplyLag.
	MaxApplyLag uint64
	// ProcessMetrics adds the Go runtime and process collectors to the
	// registry that Handler serves.
	ProcessMetrics bool
}

// Metrics is a prometheus.Collector for one node, plus the counters that
// Run keeps. Create it with New.
type Metrics struct {
	opts Options
	reg  *prometheus.Registry
	n    atomic.Pointer[node.Node] // set by Run

	leaderChanges prometheus.Counter
	requests      *prometheus.HistogramVec

	descGrants, descReleases, descExpiries, descExtends, descFreed,

	descLeases, descDelayed, descWaiters, descState, descServing,
	descTerm, descEpoch, descCommit, descApplied, descLast, descLag,
	descLastContact, descMembers, descRefusals, descPaced, descPacedSeconds, descCertExpiry *prometheus.Desc

	runOnce sync.Once
}

// New returns an unattached Metrics: its handlers can be given to
// node.Config.HTTPHandlers before the node starts. Run attaches the node.
// Its own registry (served by Handler) holds the collector.
func New(opts Options) *Metrics {
	if opts.MaxApplyLag == 0 {
		opts.MaxApplyLag = DefaultMaxApplyLag
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
	}
	m := &Metrics{
		opts:         opts,
		descGrants:   desc("grants_total", "Leases granted, counted from the entries this node applied since it started."),
		descReleases: desc("releases_total", "Leases released by their holder, counted from applied entries."),
		descExpiries: desc("expiries_total", "Leases that expired (reaped by the leader), counted from applied entries."),
		descExtends:  desc("extends_total", "Lease extensions applied (one per lease per extend), counted from applied entries."),
		descFreed:    desc("lock_delays_ended_total", "Keys freed at the end of a lock-delay, counted from applied entries."),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "leader_changes_total",
			Help: "Times this node observed a new Raft leader."}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "api_request_duration_seconds",
			Help:    "Client API request latency on this node, by method (\"other\": a path that is none) and HTTP status, refusals of the auth token (401), size (413) and Content-Type (415) included (Acquire includes time queued for a held key).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method", "code"}),
		descLeases:      desc("leases", "Keys held by a holder."),
		descDelayed:     desc("leases_delayed", "Keys blocked by a lock-delay after their holder was lost."),
		descWaiters:     desc("waiters", "Acquirers queued at this node (non-zero only on the leader)."),
		descState:       desc("raft_state", "Raft state of this node: 1 for the current state.", "state"),
		descServing:     desc("leader_serving", "1 if this node leads and its epoch is established (it serves requests)."),
		descTerm:        desc("raft_term", "Current Raft term."),
		descEpoch:       desc("epoch", "Lease epoch of the state machine (the term of the leader that last promoted)."),
		descCommit:      desc("raft_commit_index", "Raft commit index known to this node."),
		descApplied:     desc("raft_applied_index", "Raft index applied to the state machine on this node."),
		descLast:        desc("raft_last_index", "Last Raft index stored on this node."),
		descLag:         desc("apply_lag_entries", "Committed entries not yet applied on this node (commit - applied)."),
		descLastContact: desc("raft_last_contact_seconds", "Seconds since a follower last heard from the leader (0 on the leader)."),
		descMembers:     desc("members", "Nodes known to gossip, by status and Raft role.", "status", "role"),
		descRefusals: desc("refusals_total", "Connections, streams, packets and requests this node refused at its trust boundary since it started, by port (node, gossip, api) and reason (node.Node.Refusals).",
			"port", "reason"),
		descPaced:        desc("api_paced_total", "Client API reads (HTTP/2) and requests (HTTP/1) that waited for their turn of the node's API budget (agent --max-api-rate; node.Node.APIPacing): paced, not refused."),
		descPacedSeconds: desc("api_paced_seconds_total", "Time the paced client API reads and requests waited in all (node.Node.APIPacing)."),
		descCertExpiry:   desc("tls_cert_expiry_timestamp_seconds", "When the TLS certificate this node serves expires (Unix seconds; node.Node.CertExpiry): absent with a cluster key or no TLS. Alert well ahead: time() > leasenode_tls_cert_expiry_timestamp_seconds - 14*86400."),
	}
	m.reg = prometheus.NewRegistry()
	m.reg.MustRegister(m, BuildInfoCollector())
	if opts.ProcessMetrics {
		m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return m
}

// BuildInfoCollector returns the leasenode_build_info gauge: always 1,
// labelled with the running build (version, revision, modified, goversion),
// so a rolling upgrade can be followed in Prometheus
// (count by (version) (leasenode_build_info)). New registers it in the
// registry Handler serves; a program that registers Metrics in its own
// registry can register this too.
func BuildInfoCollector() prometheus.Collector {
	in := buildinfo.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "The running leasenode build: always 1, labelled with its version, VCS revision, dirty flag and Go version.",
		ConstLabels: prometheus.Labels{"version": in.Version, "revision": in.Revision,
			"modified": strconv.FormatBool(in.Modified), "goversion": in.GoVersion},
	})
	g.Set(1)
	return g
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.leaderChanges.Describe(ch)
	m.requests.Describe(ch)
	for _, d := range []*prometheus.Desc{m.descGrants, m.descReleases, m.descExpiries, m.descExtends, m.descFreed, m.descLeases, m.descDelayed, m.descWaiters, m.descState, m.descServing,
		m.descTerm, m.descEpoch, m.descCommit, m.descApplied, m.descLast, m.descLag, m.descLastContact, m.descMembers, m.descRefusals, m.descPaced, m.descPacedSeconds, m.descCertExpiry} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the node's state now.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.leaderChanges.Collect(ch)
	m.requests.Collect(ch)

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := m.n.Load()
	if n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st := n.FSM().Stats()
	gauge(m.descLeases, float64(st.Held))
	gauge(m.descDelayed, float64(st.Delayed))
	gauge(m.descEpoch, float64(st.Epoch))
	for _, r := range n.Refusals() {
		ch <- prometheus.MustNewConstMetric(m.descRefusals, prometheus.CounterValue, float64(r.Count), r.Port, r.Reason)
	}
	a := n.Applied()
	for d, v := range map[*prometheus.Desc]uint64{m.descGrants: a.Grants, m.descReleases: a.Releases,
		m.descExpiries: a.Expiries, m.descExtends: a.Extends, m.descFreed: a.Freed} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	paced, waited := n.APIPacing()
	ch <- prometheus.MustNewConstMetric(m.descPaced, prometheus.CounterValue, float64(paced))
	ch <- prometheus.MustNewConstMetric(m.descPacedSeconds, prometheus.CounterValue, waited.Seconds())
	if end, ok := n.CertExpiry(); ok {
		gauge(m.descCertExpiry, float64(end.Unix()))
	}
	if s, err := n.Status(ctx, &pb.StatusRequest{}); err == nil {
		gauge(m.descWaiters, float64(s.GetWaiters()))
	}
	r := n.Raft()
	state := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == state {
			v = 1
		}
		gauge(m.descState, v, s.String())
	}
	gauge(m.descServing, boolf(n.IsLeader()))
	gauge(m.descTerm, float64(r.CurrentTerm()))
	commit, applied := r.CommitIndex(), r.AppliedIndex()
	gauge(m.descCommit, float64(commit))
	gauge(m.descApplied, float64(applied))
	gauge(m.descLast, float64(r.LastIndex()))
	gauge(m.descLag, float64(lag(commit, applied)))
	contact := 0.0
	if state != raft.Leader {
		if lc := r.LastContact(); !lc.IsZero() {
			contact = time.Since(lc).Seconds()
		}
	}
	gauge(m.descLastContact, contact)
	if mem, err := n.Members(ctx, &pb.MembersRequest{}); err == nil {
		counts := map[[2]string]int{}
		for _, x := range mem.GetMembers() {
			counts[[2]string{x.GetStatus(), x.GetRaft()}]++
		}
		for k, v := range counts {
			gauge(m.descMembers, float64(v), k[0], k[1])
		}
	}
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func lag(commit, applied uint64) uint64 {
	if commit > applied {
		return commit - applied
	}
	return 0
}

// Run attaches n (from now on the collector and /readyz use it) and
// counts leader changes until ctx ends or the node closes (the event
// counters are the node's own: node.Node.Applied). Call it once, in its own goroutine, right
// after node.Start.
func (m *Metrics) Run(ctx context.Context, n *node.Node) {
	m.runOnce.Do(func() {
		m.Attach(n)
		m.run(ctx, n)
	})
}

// Attach makes the collector and /readyz use n, without counting leader
// changes (Run does both). Run calls it; call it directly
// only to serve before Run's goroutine is scheduled.
func (m *Metrics) Attach(n *node.Node) {
	m.n.Store(n)
}

func (m *Metrics) run(ctx context.Context, n *node.Node) {
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r := n.Raft()
	r.RegisterObserver(observer)
	defer r.DeregisterObserver(observer)
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.Done():
			return
		case o := <-obs:
			if lo, ok := o.Data.(raft.LeaderObservation); ok && lo.LeaderID != "" {
				m.leaderChanges.Inc()
			}
		}
	}
}

// Middleware wraps a client API handler and records each request's latency
// in leasenode_api_request_duration_seconds, labelled by method (the last
// element of the Connect/gRPC path, e.g. "Acquire") and HTTP status code.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rw, r)
		m.requests.WithLabelValues(methodOf(r.URL.Path), strconv.Itoa(rw.code)).Observe(time.Since(start).Seconds())
	})
}

// methods are the client API's procedures by path: the only values of the
// method label besides "other", so that requests for made-up paths (404)
// cannot add series without end.
var methods = func() map[string]string {
	m := map[string]string{}
	svc := pb.File_leasenode_proto.Services().ByName("LeaseService")
	for i := range svc.Methods().Len() {
		name := string(svc.Methods().Get(i).Name())
		m["/"+LeaseServiceName+"/"+name] = name
	}
	return m
}()

// methodOf returns the method label of a request for path.
func methodOf(path string) string {
	if name, ok := methods[path]; ok {
		return name
	}
	return "other"
}

// statusWriter records the status code; it passes Flush through so that
// streaming (Watch) keeps working.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Registry returns the registry that Handler serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition format (text,
// or protobuf as the scraper's Accept asks). It gathers at most once per
// GatherEvery, and serves scrapes that come sooner what it gathered
// last; at most MaxScrapesInFlight are served at once, and the scrapes
// past those get 503 at once. /metrics is served without the auth token
// on the client API port, and one gather costs about a millisecond of
// CPU: unbounded, 16 scrape loops took a core of a leader, and 3,300
// connections scraping once made it step down. Prometheus scrapes every
// 15 s or so, and needs none of this.
func (m *Metrics) Handler() http.Handler {
	return &scrapeCache{every: GatherEvery, byReq: map[[2]string]*scrape{},
		h: promhttp.HandlerFor(&cachedGatherer{g: m.reg, every: GatherEvery}, promhttp.HandlerOpts{
			MaxRequestsInFlight: MaxScrapesInFlight,
		})}
}

// scrapeCache serves again, for every, the reply h made last to a request
// with the same Accept and Accept-Encoding: encoding and compressing the
// gathered metrics cost most of a scrape (0.3 of its 0.9 ms, where a
// /healthz costs 0.04). It keeps the replies of at most maxScrapeKinds
// such pairs: a scraper sends the same one every time.
type scrapeCache struct {
	h     http.Handler
	every time.Duration

	mu    sync.Mutex
	byReq map[[2]string]*scrape
}

const maxScrapeKinds = 8

// scrape is one reply of promhttp, as sent.
type scrape struct {
	at     time.Time
	header http.Header
	body   []byte
}

func (c *scrapeCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := [2]string{r.Header.Get("Accept"), r.Header.Get("Accept-Encoding")}
	c.mu.Lock()
	s := c.byReq[key]
	c.mu.Unlock()
	if s == nil || time.Since(s.at) >= c.every {
		rec := &scrapeRecorder{header: http.Header{}, code: http.StatusOK}
		c.h.ServeHTTP(rec, r)
		if rec.code != http.StatusOK { // 503 past MaxScrapesInFlight, or an error: not kept
			copyHeader(w.Header(), rec.header)
			w.WriteHeader(rec.code)
			w.Write(rec.body.Bytes())
			return
		}
		s = &scrape{at: time.Now(), header: rec.header, body: rec.body.Bytes()}
		c.mu.Lock()
		if len(c.byReq) >= maxScrapeKinds {
			clear(c.byReq)
		}
		c.byReq[key] = s
		c.mu.Unlock()
	}
	copyHeader(w.Header(), s.header)
	w.Write(s.body)
}

func copyHeader(dst, src http.Header) {
	for k, v := range src {
		dst[k] = append([]string(nil), v...)
	}
}

// scrapeRecorder is the http.ResponseWriter that scrapeCache gives h.
type scrapeRecorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
	wrote  bool
}

func (r *scrapeRecorder) Header() http.Header { return r.header }

func (r *scrapeRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
}

func (r *scrapeRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}

const (
	// GatherEvery is how often Handler gathers the metrics at most.
	GatherEvery = time.Second
	// MaxScrapesInFlight is how many scrapes Handler serves at once.
	MaxScrapesInFlight = 2
)

// cachedGatherer gathers from g at most once per every, and returns what
// it gathered last until then. Callers share the families it returns,
// and only read them (promhttp encodes them; escaping copies).
type cachedGatherer struct {
	g     prometheus.Gatherer
	every time.Duration

	mu  sync.Mutex // held while gathering: concurrent callers wait for one gather
	at  time.Time  // when mfs were gathered; zero: never
	mfs []*dto.MetricFamily
	err error
}

func (c *cachedGatherer) Gather() ([]*dto.MetricFamily, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= c.every {
		c.mfs, c.err = c.g.Gather()
		c.at = time.Now()
	}
	return c.mfs, c.err
}

// Handlers returns the HTTP endpoints to serve next to the client API, by
// pattern, for node.Config.HTTPHandlers: /metrics, /healthz, /readyz and
// the gRPC health service (grpc.health.v1.Health, see Check). Like the
// HTTP probes they are not behind the auth token (load balancers and
// Kubernetes probes send none): they reveal readiness, no lease. Set
// node.Config.APIMiddleware to Middleware to time the API requests too,
// and serve ReflectionHandlers behind the token.
func (m *Metrics) Handlers() map[string]http.Handler {
	h := map[string]http.Handler{
		"/metrics": m.Handler(),
		"/healthz": http.HandlerFunc(Healthz),
		"/readyz":  http.HandlerFunc(m.Readyz),
	}
	path, health := grpchealth.NewHandler(m, openOptions()...)
	h[path] = health
	return h
}

// ReflectionHandlers returns gRPC server reflection (v1 and v1alpha,
// listing LeaseService and Health, so grpcurl and Postman need no .proto),
// by pattern, for node.Config.APIHandlers: behind the auth token, as the
// client API. Served without it, one stranger's 4,000 reflection streams
// held open (each reply a freshly marshalled descriptor, ~200 times its
// request) made a leader step down (outsider review rev-out37b).
func (m *Metrics) ReflectionHandlers() map[string]http.Handler {
	h := map[string]http.Handler{}
	reflector := grpcreflect.NewStaticReflector(LeaseServiceName, grpchealth.HealthV1ServiceName)
	path, refl := grpcreflect.NewHandlerV1(reflector, openOptions()...)
	h[path] = refl
	path, refl = grpcreflect.NewHandlerV1Alpha(reflector, openOptions()...)
	h[path] = refl
	return h
}

// openOptions are the options of the gRPC services served beside the
// client API: their messages are a few bytes, so they read at most
// openMessageBytes of one and no compressed ones (a gzip body of 970 KB
// inflated to 1 GB; outsider review rev-out37). The node caps the bodies
// as sent too (node.boundOpen) for the same reason: connect reads past its
// own cap to the end of the body.
func openOptions() []connect.HandlerOption {
	return []connect.HandlerOption{connect.WithReadMaxBytes(openMessageBytes), connect.WithCompression("gzip", nil, nil)}
}

// openMessageBytes is the largest message the health and reflection
// services read: a health check names a service, a reflection request a
// symbol or file.
const openMessageBytes = 16 << 10
