package node

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasenode/leasenode/internal/loglimit"
	"github.com/leasenode/leasenode/transport/pb/pbconnect"
)

// Replies held unsent. A read's reply (Get, List, CheckToken, a Watch's
// listing page) was paid for and built, then held by its handler for as
// long as its client took to read it: an HTTP/2 client that grants no
// flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0, answering PINGs)
// reads nothing, and nothing bounded the replies built and not yet
// written, per connection, source or node. One h2c connection opening a
// List of ~1 MiB (2.1 MB of JSON) every 700 ms took a leader from 35 to
// 870 MB in 60 s (237 replies held), four from four /24s to 2,094 MB in
// 100 s, and a follower, its clients' replies from the leader, to 383
// MB; nothing was refused or logged (outsider review of 91beb32).
//
// Invariant (reply-room): a reply's bytes are counted from before it is
// built until its handler has returned (written, or failed), in a room
// of maxReplyBytes node-wide of which one client source (IPv4 /24, IPv6
// /64; for a forwarded read, the forwarding node) holds at most
// replyShareBytes. Its size is known before it is built (sizeRead,
// listingSize: from the FSM, without copying it); a read past either
// waits for room, holding nothing (its reply is not built), until its
// call ends, and is refused after replyWaitFactor read timeouts naming
// the limit. A unary reply whose writing takes longer than the read
// timeout ends (replyWriter: a write deadline resets its HTTP/2 stream,
// or fails its HTTP/1 connection), so a reply its client does not read
// gives its room back within it. A follower holds room for a read it
// forwards before it forwards it, and the leader for the reply it builds
// for it until that is encoded, so the leader holds no more of a
// follower's replies than the follower has room for. Watch streams have
// no write deadline: a listing page holds its room until its events are
// handed on, and a watch whose client does not read holds one page of
// its source's share. Guarded by TestUnreadRepliesAreBounded and
// TestUnwrittenReplyIsReset.
//
// Sizes: a List page is at most Limits.MaxListBytes (1 MiB) encoded; a
// reply held unsent holds its message (about its encoded size) and its
// encoding: as large again in protobuf, about twice in JSON (values in
// base64, names and durations as text), in a buffer grown by doubling
// (replyHold.factor). 64 MiB holds 16 JSON pages of 1 MiB or 32 in
// protobuf, a source a quarter of them: a client paging through a
// listing holds one at a time, and a node serving many clients' pages
// at once waits for their bytes at the speed they read them. A reply
// counts at least replyFloorBytes, the write buffer net/http gives it.
const (
	maxReplyBytes   = 64 << 20
	replyShareBytes = maxReplyBytes / 4
	replyFloorBytes = 4 << 10
	// replyWaitFactor read timeouts is the longest a read waits for
	// room: every reply holding room is written or ended within one
	// read timeout of starting to be written, and the sources holding
	// least are served first (replyRoom.grantLocked).
	replyWaitFactor = 2
)

// replyRoom is the node's room for replies held unsent (see reply-room).
type replyRoom struct {
	mu     sync.Mutex
	budget int64            // maxReplyBytes
	share  int64            // replyShareBytes
	held   int64            // bytes held
	bySrc  map[string]int64 // bytes held by source
	queue  []*replyWaiter
	// starved: a waiter within its source's share waits for the node's
	// room, and newcomers queue behind it (a stream of small replies
	// never keeps a large one waiting).
	starved bool
	seq     uint64

	refused   atomic.Uint64 // reads refused after waiting for room (reply_room)
	unwritten atomic.Uint64 // unary replies ended unwritten (reply_write)
	log       *slog.Logger
	warn      *loglimit.Limiter
}

func newReplyRoom(log *slog.Logger) *replyRoom {
	return &replyRoom{budget: maxReplyBytes, share: replyShareBytes, bySrc: map[string]int64{}, log: log, warn: loglimit.New()}
}

// replyWaiter is a reply waiting for room.
type replyWaiter struct {
	src   string
	size  int64
	seq   uint64
	ready chan struct{} // closed once the room is its
	done  bool          // the room is its (guarded by replyRoom.mu)
}

// take takes size bytes of room for a reply of src (at least
// replyFloorBytes, at most a source's share), waiting until ctx ends or,
// if positive, for wait; it returns the bytes taken.
func (r *replyRoom) take(ctx context.Context, src string, size int64, wait time.Duration) (int64, error) {
	size = min(max(size, replyFloorBytes), r.share)
	r.mu.Lock()
	if !r.starved && r.fitsLocked(src, size) {
		r.addLocked(src, size)
		r.mu.Unlock()
		return size, nil
	}
	r.seq++
	w := &replyWaiter{src: src, size: size, seq: r.seq, ready: make(chan struct{})}
	r.queue = append(r.queue, w)
	r.grantLocked()
	r.mu.Unlock()
	var expired <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		expired = t.C
	}
	var err error
	select {
	case <-w.ready:
		return size, nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-expired:
	}
	r.mu.Lock()
	if w.done { // given as it gave up
		r.mu.Unlock()
		if err == nil {
			return size, nil
		}
		r.give(src, size)
		return 0, err
	}
	for i, x := range r.queue {
		if x == w {
			r.queue = append(r.queue[:i], r.queue[i+1:]...)
			break
		}
	}
	own := r.bySrc[src]
	r.grantLocked()
	r.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return 0, r.refuse(src, size, own, wait)
}

// refuse counts, logs and returns the refusal of a reply of size bytes
// of src, whose source held own, after waiting wait for room.
func (r *replyRoom) refuse(src string, size, own int64, wait time.Duration) error {
	r.refused.Add(1)
	if ok, skipped := r.warn.Allow("reply_room"); ok {
		args := []any{"room_bytes", r.budget, "source_bytes", r.share, "source", src, "source_held", own, "refused", r.refused.Load()}
		if skipped > 0 {
			args = append(args, loglimit.Skipped, skipped)
		}
		r.log.Warn("refused a read whose reply waited for room among the replies this node holds unsent: their clients do not read them (each is ended within the read timeout of its writing)", args...)
	}
	if own+size > r.share {
		return fmt.Errorf("%w: a reply of %d bytes waited %v for room: replies to your address's /24 (IPv6 /64) not yet read hold %d bytes, the most one source may (a quarter of the %d MiB the agent holds unsent, fixed): read the replies of your calls before making more, or make fewer at once", ErrTooManyReplies, size, wait, own, r.budget>>20)
	}
	return fmt.Errorf("%w: a reply of %d bytes waited %v for room among the replies the agent holds unsent (%d MiB node-wide, %d MiB a source, fixed): other clients are not reading theirs; retry later", ErrTooManyReplies, size, wait, r.budget>>20, r.share>>20)
}

// force counts size more bytes of src, at once: what a reply grew by
// since it was sized (at most what changed meanwhile).
func (r *replyRoom) force(src string, size int64) {
	r.mu.Lock()
	r.addLocked(src, size)
	r.mu.Unlock()
}

// give gives back size bytes of src.
func (r *replyRoom) give(src string, size int64) {
	if size <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held -= size
	if r.bySrc[src] -= size; r.bySrc[src] <= 0 {
		delete(r.bySrc, src)
	}
	r.grantLocked()
}

func (r *replyRoom) fitsLocked(src string, size int64) bool {
	return r.held+size <= r.budget && r.bySrc[src]+size <= r.share
}

func (r *replyRoom) addLocked(src string, size int64) {
	r.held += size
	r.bySrc[src] += size
}

// grantLocked gives room to waiters while it lasts: of those within
// their source's share, the one whose source holds least first (then
// the oldest), so that a source holding nothing is served before those
// whose unread replies fill the room, as soon as one of those ends.
func (r *replyRoom) grantLocked() {
	for {
		r.starved = false
		best := -1
		for i, w := range r.queue {
			if r.bySrc[w.src]+w.size > r.share {
				continue // waits for its own source's replies
			}
			if best < 0 {
				best = i
				continue
			}
			b := r.queue[best]
			if h, hb := r.bySrc[w.src], r.bySrc[b.src]; h < hb || h == hb && w.seq < b.seq {
				best = i
			}
		}
		if best < 0 {
			return
		}
		w := r.queue[best]
		if r.held+w.size > r.budget {
			r.starved = true
			return
		}
		r.queue = append(r.queue[:best], r.queue[best+1:]...)
		r.addLocked(w.src, w.size)
		w.done = true
		close(w.ready)
	}
}

// replyHoldKey carries a call's replyHold in its context.
type replyHoldKey struct{}

// replyHold is the room one call's reply holds (see reply-room): taken
// by servePaidRead once the reply is paid, before it is built, given
// back by whoever made the hold when the reply is written or has
// failed. A nil hold takes nothing.
type replyHold struct {
	room *replyRoom
	src  string
	// factor is the bytes held for an encoded byte: the message and its
	// encoding (2 in protobuf; 4 in JSON: twice as long, in a buffer
	// grown by doubling).
	factor int64
	wait   time.Duration // the longest take waits for room
	held   int64
}

// take takes room for a reply of size encoded bytes.
func (h *replyHold) take(ctx context.Context, size int64) error {
	if h == nil {
		return nil
	}
	got, err := h.room.take(ctx, h.src, size*h.factor, h.wait)
	h.held += got
	return err
}

// grow counts the built reply's size, if it is more than was taken.
func (h *replyHold) grow(size int64) {
	if h == nil || h.held == 0 {
		return
	}
	if extra := max(size*h.factor, replyFloorBytes) - h.held; extra > 0 {
		h.room.force(h.src, extra)
		h.held += extra
	}
}

// release gives back what h holds.
func (h *replyHold) release() {
	if h == nil {
		return
	}
	h.room.give(h.src, h.held)
	h.held = 0
}

// replyFactor is replyHold.factor for a request of r's Content-Type.
func replyFactor(r *http.Request) int64 {
	if strings.Contains(r.Header.Get("Content-Type"), "json") {
		return 4
	}
	return 2
}

// unaryCall reports whether r calls a unary procedure of the client API
// (any but Watch).
func unaryCall(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/"+pbconnect.LeaseServiceName+"/") && r.URL.Path != pbconnect.LeaseServiceWatchProcedure
}

// replyWriter is the ResponseWriter of a unary call of the client API:
// once its reply starts being written, it has timeout to be (see
// reply-room). A write deadline resets an HTTP/2 stream (freeing the
// handler's blocked write and the reply), or fails an HTTP/1
// connection's writes. The time a call waits before its answer (a
// waiting acquire) does not count.
type replyWriter struct {
	http.ResponseWriter
	timeout time.Duration
	begin   func() // called as writing begins
	started time.Time
	failed  bool // a write failed past the deadline
}

func (w *replyWriter) start() {
	if !w.started.IsZero() {
		return
	}
	w.started = time.Now()
	if w.timeout > 0 {
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(w.started.Add(w.timeout))
	}
	if w.begin != nil {
		w.begin()
	}
}

func (w *replyWriter) note(err error) {
	if err != nil && w.timeout > 0 && time.Since(w.started) >= w.timeout {
		w.failed = true
	}
}

// WriteHeader begins the reply.
func (w *replyWriter) WriteHeader(code int) {
	w.start()
	w.ResponseWriter.WriteHeader(code)
}

// Write writes to the reply.
func (w *replyWriter) Write(p []byte) (int, error) {
	w.start()
	n, err := w.ResponseWriter.Write(p)
	w.note(err)
	return n, err
}

// Flush sends what the reply has buffered.
func (w *replyWriter) Flush() {
	w.start()
	w.note(http.NewResponseController(w.ResponseWriter).Flush())
}

// Unwrap is for http.ResponseController.
func (w *replyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish sends the rest of a reply that began, under its deadline (net/
// http would send it after the handler returns: on HTTP/2 without one),
// and then lifts the deadline of an HTTP/1 connection, which serves its
// next request with it. It reports whether the reply was ended unwritten.
func (w *replyWriter) finish(http1 bool) bool {
	if w.started.IsZero() {
		return false
	}
	rc := http.NewResponseController(w.ResponseWriter)
	w.note(rc.Flush())
	if http1 && !w.failed {
		_ = rc.SetWriteDeadline(time.Time{})
	}
	return w.failed
}

// unwrittenReply counts and logs a unary reply ended unwritten.
func (r *replyRoom) unwrittenReply(src string, timeout time.Duration) {
	r.unwritten.Add(1)
	if ok, skipped := r.warn.Allow("reply_write"); ok {
		args := []any{"read_timeout", timeout, "source", src, "ended", r.unwritten.Load()}
		if skipped > 0 {
			args = append(args, loglimit.Skipped, skipped)
		}
		r.log.Warn("ended a reply its client did not read within the read timeout of its writing (HTTP/2: stream reset; HTTP/1: connection closed): clients must read their replies (an HTTP/2 client must grant flow-control window)", args...)
	}
}
