package lease

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/leasenode/leasenode/transport/pb"
)

// Defaults of the client options.
const (
	DefaultTTL        = 10 * time.Second
	DefaultDrift      = 0.01
	DefaultBackoffMin = 20 * time.Millisecond
	DefaultBackoffMax = time.Second
)

type options struct {
	ttl          time.Duration
	extend       time.Duration // 0: ttl/3 of each lease
	expiring     time.Duration // 0: ttl/3 of each lease
	drift        float64
	backoffMin   time.Duration
	backoffMax   time.Duration
	retryTimeout time.Duration
	dialTimeout  time.Duration // 0: retryTimeout
	logger       *slog.Logger
	name         string // WithHolder, or host/pid
	holder       string // name#incarnation: what the cluster records
	tls          *tls.Config
	token        string
	peerTimeout  time.Duration
}

// Option configures a Client.
type Option func(*options)

// WithTTL sets the default lease TTL (default 10 s). Longer TTLs survive
// longer partitions of the client; shorter ones hand a crashed holder's
// key on sooner. The cluster takes TTLs (and lock-delays) of at most 24 h
// and at least its minimum (the agent's --min-ttl, 500 ms by default);
// an acquire outside them fails with ErrInvalid.
func WithTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithExtendInterval sets how often held leases are extended (default a
// third of each lease's TTL, so two extends can fail before the lease is
// in danger). It may be at most half of every TTL the client acquires
// with; a longer one is ErrInvalid (from New, or from an acquire with a
// shorter TTL), since a lease would run out between two extends.
func WithExtendInterval(d time.Duration) Option { return func(o *options) { o.extend = d } }

// WithExpiringThreshold sets when Lease.Expiring fires: when the remaining
// validity falls below d without a successful extend (default TTL/3). It
// must be shorter than every TTL the client acquires with.
func WithExpiringThreshold(d time.Duration) Option { return func(o *options) { o.expiring = d } }

// WithDriftBound sets the fraction by which this client shortens every
// lease to absorb clock-rate differences between itself and the leader
// (default 0.01). It must exceed twice the worst clock-rate error.
func WithDriftBound(f float64) Option { return func(o *options) { o.drift = f } }

// WithBackoff sets the retry back-off bounds for failed requests (default
// 20 ms to 1 s, doubling, with jitter).
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = min, max }
}

// WithRetryTimeout bounds how long a call keeps retrying while no leader
// can be reached, or while its attempts keep failing (default
// DefaultRetryTimeout); see RetryPolicy.
func WithRetryTimeout(d time.Duration) Option { return func(o *options) { o.retryTimeout = d } }

// WithDialTimeout bounds how long Dial keeps trying to reach some node
// (agents starting, a node restarting) before it gives up; by default the
// retry timeout (WithRetryTimeout). Calls on the Client keep the retry
// timeout.
func WithDialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithHolder sets the name part of the holder the cluster records for this
// client's leases (default host/pid): a label for people (Get, List,
// Watch show it). The cluster identifies the holder by the name plus this
// Client's incarnation (see Client.Holder), so reusing a name in another
// process or after a restart is safe: that Client is a different holder
// and waits for the old one's leases like anyone else.
func WithHolder(name string) Option { return func(o *options) { o.name = name } }

// WithTLS sets the TLS configuration for Dial (remote clients only).
func WithTLS(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithAuthToken sets the bearer token for Dial (remote clients only).
// Surrounding white space is trimmed, as the agent trims its
// --auth-token-file, so a token read from a file with its trailing newline
// works as it is. A token that still holds a control character (a line
// break inside it) cannot go in an HTTP header: New, NewRemote and Dial
// refuse it with ErrInvalid at once, without showing it.
func WithAuthToken(token string) Option {
	return func(o *options) { o.token = strings.TrimSpace(token) }
}

// WithPeerTimeout sets how long a node may leave a request unanswered
// before the client checks that the node is alive; the check may take
// twice as long (default DefaultPeerTimeout; remote clients only). All
// Clients of a process share what they hear of a node and the check in
// flight to it: one check a node a peer timeout, however many requests
// wait. A request to a node that fails the check ends at once, after
// three peer timeouts in all, as a request whose reply was
// lost (*UnresponsiveError; an acquire, extend or release is then retried
// with the same request id on another node), and that node is tried last
// for a while. Without the check, a request to a stopped process (SIGSTOP,
// a paused VM: its kernel keeps the connection open) waits until the call's
// own deadline or the retry timeout. A slow node is not a stopped one: any
// reply passes the check, and requests that wait for a lease are not cut
// short while the node answers. Zero turns the check off.
func WithPeerTimeout(d time.Duration) Option { return func(o *options) { o.peerTimeout = d } }

func buildOptions(opts []Option) (options, error) {
	o := options{
		ttl:          DefaultTTL,
		drift:        DefaultDrift,
		backoffMin:   DefaultBackoffMin,
		backoffMax:   DefaultBackoffMax,
		retryTimeout: DefaultRetryTimeout,
		peerTimeout:  DefaultPeerTimeout,
	}
	for _, f := range opts {
		f(&o)
	}
	if o.ttl <= 0 {
		return o, fmt.Errorf("%w: TTL %v must be > 0", ErrInvalid, o.ttl)
	}
	if !(o.drift >= 0 && o.drift < 0.5) { // NaN too
		return o, fmt.Errorf("%w: drift bound %v must be in [0, 0.5)", ErrInvalid, o.drift)
	}
	if o.extend < 0 || o.backoffMin <= 0 || o.backoffMax < o.backoffMin {
		return o, fmt.Errorf("%w: bad extend interval or back-off", ErrInvalid)
	}
	if o.expiring < 0 {
		return o, fmt.Errorf("%w: expiring threshold %v must be >= 0 (0: a third of each lease's TTL)", ErrInvalid, o.expiring)
	}
	if err := o.fits(o.ttl); err != nil {
		return o, err
	}
	if o.peerTimeout < 0 {
		return o, fmt.Errorf("%w: peer timeout %v must be >= 0 (0 turns the liveness check off)", ErrInvalid, o.peerTimeout)
	}
	if o.dialTimeout < 0 {
		return o, fmt.Errorf("%w: dial timeout %v must be > 0 (or 0: the retry timeout)", ErrInvalid, o.dialTimeout)
	}
	if o.retryTimeout <= 0 {
		return o, fmt.Errorf("%w: retry timeout %v must be > 0", ErrInvalid, o.retryTimeout)
	}
	if err := headerSafe(o.token); err != nil {
		return o, err
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if o.name == "" {
		host, _ := os.Hostname()
		o.name = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	if err := text("holder name", o.name); err != nil {
		return o, err
	}
	if strings.Contains(o.name, "#") {
		return o, fmt.Errorf("%w: holder name %q contains '#', which separates the incarnation", ErrInvalid, o.name)
	}
	o.holder = o.name + "#" + incarnation()
	if len(o.holder) > maxHolderLen {
		return o, fmt.Errorf("%w: holder name of %d bytes is too long (at most %d)", ErrInvalid, len(o.name), maxHolderLen-17)
	}
	return o, nil
}

// fits refuses an extend interval longer than half of a lease's ttl, and
// an expiring threshold as long as the ttl (it would fire after every
// extend). 0 is the default for both: a third of each lease's TTL.
func (o options) fits(ttl time.Duration) error {
	if o.extend > 0 && o.extend > ttl/2 {
		return fmt.Errorf("%w: extend interval %v is more than half the TTL %v: the lease would run out between two extends; shorten WithExtendInterval or lengthen the TTL",
			ErrInvalid, o.extend, ttl)
	}
	if o.expiring > 0 && o.expiring >= ttl {
		return fmt.Errorf("%w: expiring threshold %v is not shorter than the TTL %v: Expiring would fire after every extend; shorten WithExpiringThreshold",
			ErrInvalid, o.expiring, ttl)
	}
	return nil
}

// text refuses a key, prefix or holder name that is not valid UTF-8: the
// cluster's API carries them as strings, which must be. Checked before
// sending, so the error is ErrInvalid at once, not a retried failure.
func text(what, s string) error {
	if utf8.ValidString(s) {
		return nil
	}
	return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalid, what, s)
}

// headerSafe refuses an auth token that an HTTP header cannot carry: one
// with a control character other than a tab (what net/http refuses in a
// header value, on every request, as a failure to reach a node). The
// message says where, never the token: it is a secret.
func headerSafe(token string) error {
	for i := 0; i < len(token); i++ {
		if b := token[i]; b < ' ' && b != '\t' || b == 0x7f {
			return fmt.Errorf("%w: auth token contains a control character (byte 0x%02x at offset %d of %d), which an HTTP header cannot carry: give the token as one line of text (white space around it is trimmed)",
				ErrInvalid, b, i, len(token))
		}
	}
	return nil
}

// maxHolderLen is the cluster's limit on a holder (fsm.MaxHolderLen;
// lease must not import fsm's dependencies for one constant).
const maxHolderLen = 256

// incarnation returns 64 random bits in hex: what makes a holder unique to
// one Client.
func incarnation() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type acquireOptions struct {
	ttl       time.Duration
	value     []byte
	lockDelay time.Duration
	shared    bool
	semaphore int
	slotsSet  bool // Semaphore was given (its n may be out of range)
	// waitUntil, set by AcquireTimeout, is when a waiting attempt stops
	// queueing at the leader (each attempt sends the time left as its
	// max_wait); zero: until the call's context ends.
	waitUntil time.Time
}

// AcquireOption configures one acquire.
type AcquireOption func(*acquireOptions)

// TTL sets this lease's TTL (default: the client's).
func TTL(d time.Duration) AcquireOption { return func(o *acquireOptions) { o.ttl = d } }

// Value attaches a value to the lease (at most 64 KiB), readable by anyone
// with Get, List and Watch: who holds the key, an address for a leader.
func Value(v []byte) AcquireOption { return func(o *acquireOptions) { o.value = v } }

// LockDelay keeps the key unavailable for d after this lease expires
// without being released (Chubby's lock-delay): a holder that lost the
// lease without noticing gets time to stop before the next one starts.
// It holds against this Client too: once the lease is lost (its extends
// failed), the Client's next acquire of the key waits for the old
// holding's expiry plus d (HeldError.Own) instead of replacing it. A
// dropped lease is released by token once its validity has passed (no
// code can act on it), which frees the key at once.
func LockDelay(d time.Duration) AcquireOption { return func(o *acquireOptions) { o.lockDelay = d } }

// Shared asks for the key shared: any number of shared holders may hold it
// together, and no exclusive or semaphore holder beside them (the readers
// of a read-write lock). A writer (an exclusive Acquire) that waits for
// the key stops newer shared acquires behind it, so readers cannot starve
// it. Each shared holder gets its own fencing token; see the package doc
// for what a shared token means to a resource.
func Shared() AcquireOption { return func(o *acquireOptions) { o.shared = true } }

// Semaphore asks for one of n slots of the key: up to n holders may hold
// it together, each with its own fencing token and expiry (Consul's
// `lock -n`, Curator's semaphore). Every holder of the key must ask the
// same n while any holds it; another n is refused with ErrInvalid. n is 1
// to 65536.
func Semaphore(n int) AcquireOption {
	return func(o *acquireOptions) { o.semaphore, o.slotsSet = n, true }
}

// Item is one key of a multi-key lease (Client.AcquireSet) and the way it
// is held: exclusive by default, Shared (readers), or a slot of a
// semaphore of Semaphore holders.
type Item struct {
	Key       string
	Shared    bool
	Semaphore int
}

// maxSetKeys is the cluster's limit on the keys of one lease
// (fsm.MaxSetKeys), and maxSemaphore on a semaphore's n (fsm.MaxLimit).
const (
	maxSetKeys   = 64
	maxSemaphore = 1 << 16
)

// pbItem checks it and returns its wire form.
func (it Item) pb() (*pb.AcquireItem, error) {
	if it.Key == "" {
		return nil, fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if err := text("key", it.Key); err != nil {
		return nil, err
	}
	out := &pb.AcquireItem{Key: it.Key}
	switch {
	case it.Shared && it.Semaphore != 0:
		return nil, fmt.Errorf("%w: key %q: shared or a semaphore, not both", ErrInvalid, it.Key)
	case it.Shared:
		out.Mode = pb.LeaseMode_LEASE_MODE_SHARED
	case it.Semaphore != 0:
		if it.Semaphore < 1 || it.Semaphore > maxSemaphore {
			return nil, fmt.Errorf("%w: key %q: semaphore of %d, want 1 to %d", ErrInvalid, it.Key, it.Semaphore, maxSemaphore)
		}
		out.Mode, out.Limit = pb.LeaseMode_LEASE_MODE_SEMAPHORE, uint32(it.Semaphore)
	}
	return out, nil
}
