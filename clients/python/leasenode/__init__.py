"""leasenode: a Python client for leasenode clusters (distributed leases
with fencing tokens), using only the standard library.

It speaks the Connect protocol's JSON form (POST
/leasenode.v1.LeaseService/METHOD, Content-Type application/json) over
HTTP/1.1 with http.client: no generated code, no C extension, nothing to
install but this package. (gRPC in Python needs grpcio, a compiled
extension, and generated stubs; the same server speaks both.)

It follows the same rules as the Go package lease, written down in
transport/pb/leasenode.proto ("Rules for a client in any language"):

    client = leasenode.Client(["127.0.0.1:7402", "127.0.0.1:7412"], ttl=10)
    with client.lock("jobs/nightly") as lease:   # waits FIFO; released on exit
        write(data, fencing_token=lease.token)   # the resource refuses older tokens
        if not lease.is_healthy():               # stop when the lease is lost
            ...
    # LeaseLostError here if the lease was lost during the block
    client.close()

A Client is one holder (name#incarnation). It keeps its leases alive in a
background thread (one Extend request for all of them every ttl/3), and a
lease whose extends keep failing is declared lost a little before its
validity ends: lease.done is set, lease.is_healthy() is False, and code
acting for the lease must stop. Validity is measured on this process's
monotonic clock from the moment the granted request was sent, shortened by
the drift bound; wall-clock time never matters. A `with` block over a lease
that ends normally although the lease was lost during it raises
LeaseLostError once the lease is released, so that code after it knows its
critical section may have overlapped another holder's (as `leasenode lock`
exits 5); an exception of the block is never replaced.
"""

import base64
import http.client
import itertools
import json
import os
import random
import secrets
import select
import socket
import ssl as _ssl
import threading
import time

__all__ = [
    "Client", "Lease", "Info", "LeaseError", "HeldError", "AcquireTimeoutError",
    "HeldTimeoutError", "NoLeaderError", "NoLeaderTimeoutError",
    "UnknownOutcomeError", "LeaseLostError", "InvalidError", "StaleRequestError",
    "UnauthenticatedError", "ClosedError", "TLSSetupError", "OverloadedError",
]

DEFAULT_TTL = 10.0
DEFAULT_DRIFT = 0.01
DEFAULT_RETRY_TIMEOUT = 10.0
# How long a node may leave a request unanswered before the client checks
# that it is alive, and how long the check may take (as Go's
# lease.DefaultPeerTimeout). A stopped process (SIGSTOP, a paused VM) keeps
# its connections open: without the check a request to it waits for its
# whole timeout.
DEFAULT_PEER_TIMEOUT = 1.0
# How long a client keeps trying its addresses while none has ever
# answered (as the CLI's --dial-timeout): a wrong address fails in 2 s,
# not after the whole retry timeout.
DEFAULT_DIAL_TIMEOUT = 2.0
SUSPECT_FOR = 10.0  # a node that failed the check is tried last this long
STOP_POLL = 0.25  # how soon a waiting acquire notices that its client closed
HANDSHAKE_VERDICT = 1.0  # how long a check waits for a node to refuse this client's TLS handshake
BACKOFF_MIN, BACKOFF_MAX = 0.02, 1.0
EXTEND_CHUNK = 4096
# The longest acquire whose Abandon answer "never granted" is believed: the
# cluster remembers a spent request id for 15 minutes after its grant ended.
ABANDON_WINDOW = 600.0
SERVICE = "/leasenode.v1.LeaseService/"

# Reasons of leasenode.v1.Reason (ErrorDetail.reason).
REASON_UNSPECIFIED = 0
REASON_NOT_LEADER = 1
REASON_NO_LEADER = 2
REASON_INVALID = 3
REASON_UNKNOWN_OUTCOME = 4
REASON_CLOSED = 5
REASON_STALE_REQUEST = 6
REASON_UNAUTHENTICATED = 7
REASON_RESOURCE_EXHAUSTED = 8  # final: a node's --max-waiters
REASON_OVERLOADED = 9  # retried: refused before anything was read or applied
_REASON_NAMES = {"REASON_" + n: v for n, v in [
    ("UNSPECIFIED", 0), ("NOT_LEADER", 1), ("NO_LEADER", 2), ("INVALID", 3),
    ("UNKNOWN_OUTCOME", 4), ("CLOSED", 5), ("STALE_REQUEST", 6), ("UNAUTHENTICATED", 7),
    ("RESOURCE_EXHAUSTED", 8), ("OVERLOADED", 9)]}


class LeaseError(Exception):
    """Base of this package's errors."""


class HeldError(LeaseError):
    """Another holder has the key (holder is '' during a lock-delay, or
    when only clients queued first stand before this one, wait 0). wait
    is how long the holder's current grant had left (or the lock-delay):
    the key is free no sooner unless released, and later if the holder
    extends, as a live holder does. It is not a bound on the wait."""

    def __init__(self, key, holder="", wait=0.0, msg=""):
        self.key, self.holder, self.wait = key, holder, wait
        if holder:
            default = "lease %r held by %s: not free for %.1fs unless released sooner (the rest of its grant, and its lock-delay if it has one), longer if extended" % (key, holder, wait)
        elif wait > 0:
            default = "lease %r held by nobody: in its lock-delay for %.1fs more" % (key, wait)
        else:
            # Nobody holds it, but clients queued for it come first.
            default = "lease %r: clients waiting for it since before this request come first" % (key,)
        super().__init__(msg or default)


class AcquireTimeoutError(LeaseError):
    """acquire()'s timeout passed without a grant. Raised as such when no
    refusal is known: the key was free, no leader answered in time, or a
    grant that came too late was released (the call may have held the key
    for a moment). When the key was seen held or in its lock-delay, the
    error is a HeldTimeoutError, which is a HeldError too."""

    def __init__(self, key, msg):
        self.key = key
        LeaseError.__init__(self, msg)


class HeldTimeoutError(AcquireTimeoutError, HeldError):
    """acquire()'s timeout passed while another holder had the key (holder
    is '' during a lock-delay): both an AcquireTimeoutError and a
    HeldError."""

    def __init__(self, key, holder, wait, msg):
        HeldError.__init__(self, key, holder, wait, msg)


class NoLeaderError(LeaseError):
    """No leader could be reached in time; nothing was applied. Retryable."""


class OverloadedError(NoLeaderError):
    """The nodes refused the call as overloaded (too many requests waiting
    for their bodies, or replies waiting to be read) for the whole retry
    timeout; nothing was applied. Retryable: a NoLeaderError, so code that
    retries those retries this too."""


class NoLeaderTimeoutError(AcquireTimeoutError, NoLeaderError):
    """acquire()'s timeout passed with no leader reachable: both an
    AcquireTimeoutError and a NoLeaderError, so code that catches
    NoLeaderError for "the cluster is down" catches it too."""


class UnknownOutcomeError(LeaseError):
    """A write was sent but its result was lost: it may have taken effect."""


class LeaseLostError(LeaseError):
    """The lease could not be extended in time, or the cluster ended it.

    Raised by a `with` block over a lease (client.lock(), or a Lease from
    acquire()/try_acquire()) that ends normally although the lease was lost
    during it: the block's work may have overlapped another holder's. key
    and token name the lease; __cause__ is why it was lost."""

    def __init__(self, msg, key=None, token=None):
        super().__init__(msg)
        self.key, self.token = key, token


class InvalidError(LeaseError, ValueError):
    """The request or an argument breaks a rule or a limit (empty key, TTL
    out of range, an auth token with a line break inside...). It is a
    ValueError too, as Python's bad arguments are."""


class StaleRequestError(InvalidError):
    """The request id is lower than one the cluster saw (or was withdrawn)."""


class UnauthenticatedError(LeaseError):
    """The cluster requires an auth token (Authorization: Bearer)."""


class TLSSetupError(LeaseError):
    """This client's TLS settings do not fit the cluster's (TLS to a plain
    port, plain HTTP to a TLS one, a certificate that does not verify, a
    client certificate required): raised at once, not retried, saying what
    to set."""


class ClosedError(LeaseError):
    """The client was closed."""


class _SpentError(UnknownOutcomeError):
    """The acquire's request id was spent before its reply arrived."""


class _NotSent(Exception):
    """A request never reached a node: it certainly had no effect."""


class _TLSMismatch(_NotSent):
    """A node's TLS setup does not fit this client's: nothing was sent."""


def _tls_hint(e):
    """What to set when a TLS handshake failed with e, or None."""
    text = str(e)
    if isinstance(e, _ssl.SSLCertVerificationError):
        return "the node's certificate failed verification: load the CA that signed the cluster's certificates into ssl_context, and dial an address the certificate names"
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "the address answered without TLS: the agent serves plain HTTP (leave out ssl_context, or give the agents --tls-cert and --tls-key), or it is not an --api address (a gossip or --http port)"
    if "CERTIFICATE_REQUIRED" in text:
        return "the node requires a client certificate: load one signed by the cluster's CA into ssl_context (ssl_context.load_cert_chain(cert, key); `leasenode tls cert create --client` makes one)"
    if "BAD_CERTIFICATE" in text or "UNKNOWN_CA" in text or "CERTIFICATE_UNKNOWN" in text or "UNSUPPORTED_CERTIFICATE" in text:
        return "the node refused this client's certificate: it takes client certificates signed by the cluster's CA (ssl_context.load_cert_chain(cert, key); `leasenode tls cert create --client` makes one)"
    if "HANDSHAKE_FAILURE" in text or "PROTOCOL_VERSION" in text:
        return "the node refused this client's TLS handshake: ssl_context must allow TLS 1.3 and hold the cluster's CA and a client certificate it signed"
    return None


def _tls_reason(e):
    """An SSLError in words ("alert certificate required"), without the
    ssl module's source location."""
    reason = getattr(e, "reason", None)
    if not reason:
        return str(e)
    for prefix in ("TLSV13_", "TLSV1_", "SSLV3_"):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    return "TLS " + reason.lower().replace("_", " ")


class _Closing(Exception):
    """The client closed while a request waited: its outcome is unknown."""


class _RPCError(Exception):
    """A node answered with an error."""

    def __init__(self, code, message, reason, leader_addr):
        super().__init__("%s: %s" % (code, message))
        self.code, self.message, self.reason, self.leader_addr = code, message, reason, leader_addr


class _Unknown(Exception):
    """A request was sent but its reply was lost."""


class _Unsupported(Exception):
    """The cluster predates Abandon."""


# --- wire helpers -----------------------------------------------------------

# What Go's strings.TrimSpace trims (unicode.IsSpace): the agent trims its
# --auth-token-file so, and the Go client its WithAuthToken. str.strip()
# without arguments also trims \x1c-\x1f, which Go keeps.
_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200b)) + "\u2028\u2029\u202f\u205f\u3000"


def _auth_token(token):
    """token with surrounding white space trimmed (a token read from a file
    keeps its newline), or InvalidError, without the secret in it, if an
    HTTP header cannot carry what is left."""
    if token is None:
        return None
    token = token.strip(_SPACE)
    for i, ch in enumerate(token):
        if (ch < " " and ch != "\t") or ch == "\x7f":
            raise InvalidError("auth token contains a control character (%r at offset %d of %d), which an HTTP header "
                               "cannot carry: give the token as one line of text (white space around it is trimmed)"
                               % (ch, i, len(token)))
        if ord(ch) > 0xff:
            raise InvalidError("auth token contains a character an HTTP header cannot carry (U+%04X at offset %d of %d): "
                               "use ASCII" % (ord(ch), i, len(token)))
    return token


def _seconds(what, v):
    """v as seconds (a float), or InvalidError if it is not a number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidError("%s %r: want a number of seconds (10, 0.5), not %s" % (what, v, type(v).__name__))
    return float(v)


def _dur(seconds):
    """A proto3 JSON Duration: seconds with 9 fractional digits."""
    if seconds == int(seconds):
        return "%ds" % int(seconds)
    return "%.9fs" % seconds


def _secs(d):
    """Seconds of a proto3 JSON Duration ("1.5s"), 0 for None."""
    if not d:
        return 0.0
    return float(d.rstrip("s"))


def _varint(b, i):
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return result, i
        shift += 7


def _error_detail(value_b64):
    """Decodes a leasenode.v1.ErrorDetail (protobuf): reason, leader_addr."""
    b = base64.b64decode(value_b64 + "=" * (-len(value_b64) % 4))
    reason, leader_addr, i = 0, "", 0
    while i < len(b):
        tag, i = _varint(b, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(b, i)
            if field == 1:
                reason = v
        elif wire == 2:
            n, i = _varint(b, i)
            if field == 3:
                leader_addr = b[i:i + n].decode()
            i += n
        else:
            break
    return reason, leader_addr


def _unauthenticated(addr, sent):
    """The message for a request node addr refused for its token: sent
    says whether this client sent one (a wrong token, not a missing one)."""
    if sent:
        return ("node %s refused the token sent (Client's token=, or LEASENODE_AUTH_TOKEN if token= was not given): "
                "it is not the cluster's, the agents' --auth-token (usually in the file their --auth-token-file names); "
                "pass that, e.g. token=open(path).read()" % addr)
    return ("node %s requires an auth token and none was sent: pass the cluster's token as Client(..., token=...) "
            "(e.g. token=open(path).read() of the file the agents' --auth-token-file names), or set LEASENODE_AUTH_TOKEN" % addr)


def _tls_mismatches(mismatched):
    """One message for the addresses whose TLS settings did not fit, each
    named: "a: why" for one, "a, b: why" when they said the same, else
    each in turn (it named only the last address tried; new-user review)."""
    whys = {}
    for addr, e in mismatched:
        text = str(e)
        why = text[len(addr) + 2:] if text.startswith(addr + ": ") else text
        whys.setdefault(why, []).append(addr)
    return "; ".join("%s: %s" % (", ".join(addrs), why) for why, addrs in whys.items())


class _Transport:
    """One attempt per call: to the leader if known, else to each address,
    moving on only while the request certainly had no effect."""

    def __init__(self, addrs, token=None, ssl_context=None, timeout=DEFAULT_RETRY_TIMEOUT,
                 peer_timeout=DEFAULT_PEER_TIMEOUT, dial_timeout=DEFAULT_DIAL_TIMEOUT):
        if isinstance(addrs, str):
            addrs = [a for a in addrs.split(",") if a.strip()]
        if not addrs:
            raise InvalidError("no addresses to dial")
        if peer_timeout < 0:
            raise InvalidError("peer_timeout %r must be >= 0 (0 turns the liveness check off)" % peer_timeout)
        self.seeds = [a.strip() for a in addrs]
        self.token, self.ssl, self.timeout = _auth_token(token), ssl_context, timeout
        self.peer_timeout = peer_timeout
        if dial_timeout < 0:
            raise InvalidError("dial_timeout %r must be >= 0 (0 tries for the whole retry timeout)" % dial_timeout)
        self.dial_timeout = dial_timeout
        self._answered = False  # some node answered once: a later silence is an outage, not a wrong address
        self._silent_since = None
        self.leader = None
        self._lock = threading.Lock()
        self._idle = {}  # addr -> [HTTPConnection]
        self._closed = False  # close() ran: connections are closed after use, not kept
        self._suspect = {}  # addr -> monotonic time until which it is tried last
        self.stopping = threading.Event()  # set by Client.close: waiting acquires end

    def _conn(self, addr, timeout):
        with self._lock:
            pool = self._idle.get(addr)
            if pool:
                c = pool.pop()
                c.timeout = timeout
                if c.sock is not None:
                    c.sock.settimeout(timeout)
                return c, True
        host, port = addr.rsplit(":", 1)
        host = host.strip("[]")
        if self.ssl is not None:
            c = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=self.ssl)
        else:
            c = http.client.HTTPConnection(host, int(port), timeout=timeout)
        return c, False

    def _put(self, addr, c):
        with self._lock:
            if not self._closed:
                self._idle.setdefault(addr, []).append(c)
                return
        # Closed: a request that finished after close() (an acquire that was
        # waiting settles with Abandon, a background release) would leave
        # its connection in a pool nobody closes.
        c.close()

    def close(self):
        with self._lock:
            self._closed = True
            for pool in self._idle.values():
                for c in pool:
                    c.close()
            self._idle.clear()

    def _targets(self):
        """The leader first, then the seeds; a node that failed a liveness
        check lately last."""
        now = time.monotonic()
        with self._lock:
            out = [self.leader] if self.leader else []
            out += [s for s in self.seeds if s not in out]
            return sorted(out, key=lambda a: self._suspect.get(a, 0) > now)

    def _headers(self, timeout):
        headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1",
                   "User-Agent": "leasenode-python/1"}
        if timeout is not None:  # None: a wait with no end (no deadline sent)
            headers["Connect-Timeout-Ms"] = str(max(int(timeout * 1000), 1))
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        return headers

    def _await_reply(self, c, addr, deadline, interruptible=False):
        """Waits until the node starts its reply on c. While it is silent,
        checks every peer_timeout that it is alive (a Status request on
        another connection; any reply counts, so a busy node passes and a
        long wait for a lease is never cut short); if the check gets no
        reply either, the node is stopped or cut off: raises _Unknown and
        has it tried last for a while. An interruptible request (a waiting
        acquire) raises _Closing when the client closes."""
        if c.sock is None or not (self.peer_timeout or interruptible):
            return
        checked = time.monotonic()
        while True:
            if interruptible and self.stopping.is_set():
                raise _Closing("the client closed while the request waited")
            wait = self.peer_timeout or 3600.0
            if interruptible:
                wait = min(wait, STOP_POLL)
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return  # getresponse times out as before
            pending = getattr(c.sock, "pending", lambda: 0)()
            if pending or select.select([c.sock], [], [], wait)[0]:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if not self.peer_timeout or time.monotonic() - checked < self.peer_timeout:
                continue
            checked = time.monotonic()
            if not self._alive(addr):
                with self._lock:
                    self._suspect[addr] = time.monotonic() + SUSPECT_FOR
                raise _Unknown("node %s stopped answering: a liveness check got no reply within %gs (peer_timeout)"
                               % (addr, self.peer_timeout))

    def _alive(self, addr):
        """Whether addr answers anything to a Status request within
        peer_timeout."""
        c, _ = self._conn(addr, self.peer_timeout)
        try:
            c.request("POST", SERVICE + "Status", body=b"{}", headers=self._headers(self.peer_timeout))
            c.getresponse().read()
            ok = True
        except (OSError, http.client.HTTPException):
            ok = False
        c.close()
        if ok:
            with self._lock:
                self._suspect.pop(addr, None)
        return ok

    def _raise_if_refused(self, addr, e):
        """Raises _TLSMismatch if a request on a fresh TLS connection failed
        with e because the node refused this client's TLS handshake. In TLS
        1.3 the client's side of the handshake ends before the node has
        checked the client's certificate, so the node's refusal (an alert,
        or only a closed connection when the request crossed it) comes
        where a reply was awaited: the node never read the request, so
        nothing was applied and the outcome is not unknown. An alert says
        so by itself; a bare EOF or reset is checked with a second
        handshake that sends nothing and waits for the node's verdict."""
        if self.ssl is None or isinstance(e, socket.timeout):
            return  # a node that took too long did accept the handshake
        hint = _tls_hint(e) if isinstance(e, _ssl.SSLError) else None
        if hint:
            raise _TLSMismatch("%s: %s (%s)" % (addr, hint, _tls_reason(e)))
        host, port = addr.rsplit(":", 1)
        c = http.client.HTTPSConnection(host.strip("[]"), int(port), timeout=HANDSHAKE_VERDICT, context=self.ssl)
        try:
            c.connect()
            c.sock.recv(1)  # an accepted handshake sends nothing more: this times out
        except _ssl.SSLError as probe:
            hint = _tls_hint(probe)
            if hint:
                raise _TLSMismatch("%s: %s (%s)" % (addr, hint, _tls_reason(probe))) from None
        except OSError:
            pass
        finally:
            c.close()

    def post(self, addr, method, body, timeout):
        """One request to one node; returns the decoded reply or raises
        _NotSent, _Unknown or _RPCError."""
        data = json.dumps(body).encode()
        headers = self._headers(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout + 1.0
        for fresh_try in (0, 1):
            c, reused = self._conn(addr, None if timeout is None else timeout + 1.0)
            try:
                if c.sock is None:
                    c.connect()
            except (OSError, _ssl.SSLError) as e:
                c.close()
                hint = _tls_hint(e) if isinstance(e, _ssl.SSLError) else None
                if hint:
                    raise _TLSMismatch("%s: %s (%s)" % (addr, hint, _tls_reason(e)))
                raise _NotSent("%s: %s" % (addr, e))
            try:
                c.request("POST", SERVICE + method, body=data, headers=headers)
                self._await_reply(c, addr, deadline, interruptible=method == "Acquire")
                resp = c.getresponse()
                payload = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                c.close()
                if not reused:
                    self._raise_if_refused(addr, e)
                if reused and fresh_try == 0 and method in ("Get", "List", "CheckToken", "Status", "Members"):
                    continue  # a read on a connection the server had closed: try a fresh one
                raise _Unknown("%s: %s" % (addr, e))
            except (OSError, http.client.HTTPException) as e:
                c.close()
                if not reused:
                    self._raise_if_refused(addr, e)
                raise _Unknown("%s: %s" % (addr, e))
            except (_Unknown, _Closing):
                c.close()
                raise
            with self._lock:
                self._suspect.pop(addr, None)
                self._answered = True
            if resp.will_close:
                c.close()
            else:
                self._put(addr, c)
            break
        if resp.status == 200:
            reply = json.loads(payload or b"{}")
            leader = (reply.get("header") or {}).get("leaderAddr")
            if leader:
                with self._lock:
                    self.leader = leader
            return reply
        if resp.status == 400 and b"HTTP request to an HTTPS server" in payload:
            raise _TLSMismatch("%s: the node requires TLS: pass ssl_context with the cluster's CA" % addr)
        try:
            err = json.loads(payload)
        except ValueError:
            err = {"code": "http %d" % resp.status, "message": payload.decode(errors="replace")}
        reason, leader_addr = REASON_UNSPECIFIED, ""
        for d in err.get("details") or []:
            if d.get("type") == "leasenode.v1.ErrorDetail":
                try:
                    reason, leader_addr = _error_detail(d.get("value", ""))
                except (ValueError, IndexError):
                    reason = _REASON_NAMES.get((d.get("debug") or {}).get("reason"), REASON_UNSPECIFIED)
        if reason == REASON_UNSPECIFIED and err.get("code") == "unauthenticated":
            reason = REASON_UNAUTHENTICATED
        message = err.get("message", "")
        if reason == REASON_UNAUTHENTICATED:
            # The node's words name the CLI's flags (--auth-token-file):
            # say it in this client's terms, and which node refused.
            message = _unauthenticated(addr, bool(self.token))
        raise _RPCError(err.get("code", ""), message, reason, leader_addr)

    def call(self, method, body, timeout):
        """One attempt: leader first, then the other addresses while the
        request certainly had no effect (not sent, not the leader)."""
        tried, last, tls_only = set(), None, True
        mismatched = []  # (addr, _TLSMismatch), in the order tried
        for _ in range(2 * len(self.seeds) + 2):
            addr = next((a for a in self._targets() if a not in tried), None)
            if addr is None:
                break
            tried.add(addr)
            try:
                return self.post(addr, method, body, timeout)
            except _TLSMismatch as e:
                # Final only if every address says so: one node still on
                # the old setup must not stop a rolling switch to TLS.
                last = e
                mismatched.append((addr, e))
                self._forget(addr)
                continue
            except _NotSent as e:
                tls_only = False
                last = e
                self._forget(addr)
            except _RPCError as e:
                tls_only = False
                if e.reason not in (REASON_NOT_LEADER, REASON_NO_LEADER, REASON_CLOSED):
                    raise
                last = e
                self._forget(addr)
                if e.leader_addr and e.leader_addr != addr:
                    with self._lock:
                        self.leader = e.leader_addr
                        stopped = self._suspect.get(e.leader_addr, 0) > time.monotonic()
                    if not stopped:  # the refusing node may not have noticed yet
                        tried.discard(e.leader_addr)
            except _Unknown:
                self._forget(addr)
                raise
        if tls_only and isinstance(last, _TLSMismatch):
            raise TLSSetupError(_tls_mismatches(mismatched))
        with self._lock:
            never = not self._answered and self.dial_timeout > 0
            if never and self._silent_since is None:
                self._silent_since = time.monotonic()
            silent = never and time.monotonic() - self._silent_since
        if silent and silent >= self.dial_timeout:
            raise NoLeaderError("no node at %s answered within %gs (dial_timeout): %s; check that each address is a node's "
                                "client API address (agent --api) and that the agents run" % (",".join(self.seeds), self.dial_timeout, last))
        raise _NotSent("no reachable leader: %s" % (last,))

    def _forget(self, addr):
        with self._lock:
            if self.leader == addr:
                self.leader = None


# --- retry policy ---------------------------------------------------------------

_NOT_APPLIED, _UNKNOWN, _FINAL = 0, 1, 2


def _classify(e):
    if isinstance(e, _NotSent):
        return _NOT_APPLIED
    if isinstance(e, _Unknown):
        return _UNKNOWN
    if isinstance(e, _RPCError):
        if e.reason in (REASON_NOT_LEADER, REASON_NO_LEADER, REASON_CLOSED, REASON_OVERLOADED):
            return _NOT_APPLIED
        if e.reason == REASON_UNKNOWN_OUTCOME:
            return _UNKNOWN
        if e.reason == REASON_UNSPECIFIED and e.code in ("deadline_exceeded", "unavailable", "canceled"):
            return _UNKNOWN
        return _FINAL
    return _FINAL


def _final_error(op, key, e):
    if isinstance(e, _RPCError):
        msg = "%s %r: %s" % (op, key, e.message)
        if e.reason == REASON_STALE_REQUEST:
            return StaleRequestError(msg)
        if e.reason == REASON_INVALID:
            return InvalidError(msg)
        if e.reason == REASON_UNAUTHENTICATED:
            return UnauthenticatedError(msg)
        return LeaseError("%s (%s)" % (msg, e.code))
    return LeaseError("%s %r: %s" % (op, key, e))


class _Retry:
    """The one retry loop: retries what certainly had no effect, and what
    may have when the caller says it is idempotent, with exponential
    back-off and full jitter, until failures have lasted `timeout` or the
    caller's deadline passes."""

    def __init__(self, timeout=DEFAULT_RETRY_TIMEOUT, bmin=BACKOFF_MIN, bmax=BACKOFF_MAX):
        self.timeout, self.bmin, self.bmax = timeout, bmin, bmax

    def run(self, op, key, f, idempotent=True, deadline=None):
        streak, saw_unknown, cur = None, False, self.bmin
        while True:
            began = time.monotonic()
            try:
                return f()
            except (_NotSent, _Unknown, _RPCError) as e:
                kind = _classify(e)
                if kind == _FINAL:
                    raise _final_error(op, key, e) from e
                if kind == _UNKNOWN and not idempotent:
                    raise UnknownOutcomeError("%s %r: %s" % (op, key, e)) from e
                saw_unknown = saw_unknown or kind == _UNKNOWN
                streak = streak or began
                wait = cur / 2 + random.uniform(0, cur / 2)
                cur = min(cur * 2, self.bmax)
                now = time.monotonic()
                if now - streak + wait > self.timeout or (deadline is not None and now >= deadline):
                    cls = UnknownOutcomeError if saw_unknown else NoLeaderError
                    if not saw_unknown and isinstance(e, _RPCError) and e.reason == REASON_OVERLOADED:
                        cls = OverloadedError
                    raise cls("%s %r: gave up after %.3fs: %s" % (op, key, now - streak, e)) from e
                if deadline is not None:
                    wait = min(wait, deadline - now)  # the last attempt goes at the deadline
                time.sleep(wait)


# --- leases -----------------------------------------------------------------------

class Info:
    """A lease record as the cluster reports it (remaining is advisory)."""

    def __init__(self, d):
        self.key = d.get("key", "")
        self.holder = d.get("holder", "")
        self.token = int(d.get("token", 0))
        self.ttl = _secs(d.get("ttl"))
        self.value = base64.b64decode(d["value"]) if d.get("value") else b""
        self.lock_delay = d.get("state") == "LEASE_STATE_LOCK_DELAY"
        self.remaining = _secs(d.get("remaining"))

    def __repr__(self):
        return "Info(key=%r, holder=%r, token=%d, remaining=%.3f)" % (self.key, self.holder, self.token, self.remaining)


class Lease:
    """A held lease, kept alive by its Client until released or lost.

    token is the fencing token: send it with every write to the protected
    resource. valid_until (time.monotonic() seconds) is the moment until
    which the lease is certainly held; done is a threading.Event set when
    the lease ends (released or lost), and error says why."""

    def __init__(self, client, key, token, ttl, value, sent, valid_for):
        self._client = client
        self.key, self.token, self.ttl, self.value = key, token, ttl, value
        self._lock = threading.Lock()
        self._valid_until = sent + valid_for * (1 - client.drift)
        self._last_sent = sent
        self.done = threading.Event()
        self.expiring = threading.Event()
        self.error = None
        self._unreleased = False  # release() ended it but could not delete the record

    @property
    def valid_until(self):
        with self._lock:
            return self._valid_until

    def remaining(self):
        """Seconds the lease is certainly held (0 when ended)."""
        with self._lock:
            if self.error is not None:
                return 0.0
            return max(self._valid_until - time.monotonic(), 0.0)

    def is_healthy(self):
        """True while the lease is held and within its validity."""
        with self._lock:
            return self.error is None and time.monotonic() < self._valid_until

    def release(self):
        """Ends the lease and deletes its record. If the delete fails, the
        error is raised, the lease stays ended, the record is released in
        the background, and release() again tries once more. Releasing a
        lease that ended otherwise (lost, released) does nothing."""
        first = self._client._end(self, None)
        with self._lock:
            again = self._unreleased
        if not first and not again:
            return
        try:
            self._client._release_record(self)
        except LeaseError:
            with self._lock:
                retry, self._unreleased = not self._unreleased, True
            if retry:
                self._client._release_later(self)
            raise
        with self._lock:
            self._unreleased = False

    def _lost(self):
        """Why the lease was lost, or None while it is healthy or after it
        was released: an error of the keepalive, or its validity having
        passed unnoticed (the process was stopped, the keepalive starved)."""
        with self._lock:
            if self.error is ReleasedMarker:
                return None
            if self.error is not None:
                return self.error
            if time.monotonic() >= self._valid_until:
                return LeaseLostError("lease %r lost: its validity passed before the keepalive extended it "
                                      "(the process was stopped or starved)" % self.key, self.key, self.token)
        return None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """Releases the lease. If the lease was lost during the block (the
        keepalive declared it lost, or its validity passed), a block that
        ended normally raises LeaseLostError after the release: the work it
        did may have overlapped another holder's. A block that raised keeps
        its exception; the loss is added to it as a note (Python 3.11+),
        and so is a failed release, which is retried in the background."""
        lost = self._lost()
        try:
            self.release()
        except LeaseError as e:
            if exc is None and lost is None:
                raise
            if exc is not None and hasattr(exc, "add_note"):
                exc.add_note("leasenode: releasing lease %r (token %d) on the way out failed: %s" % (self.key, self.token, e))
        if lost is None:
            return False
        msg = ("lease %r (token %d) was lost during the with block, which may have overlapped another holder: %s"
               % (self.key, self.token, lost))
        if exc is not None:
            if hasattr(exc, "add_note"):
                exc.add_note("leasenode: " + msg)
            return False  # the block's own exception propagates
        raise LeaseLostError(msg, self.key, self.token) from lost

    def __repr__(self):
        return "Lease(key=%r, token=%d, healthy=%s)" % (self.key, self.token, self.is_healthy())


class Client:
    """One holder: acquires, keeps and releases leases on a cluster.

    addrs: client API addresses ("host:port", a list or a comma-separated
    string; default $LEASENODE_ADDR or 127.0.0.1:7402). name: the holder's
    name for people (default host/pid); the holder is name#incarnation,
    random per Client. token: the cluster's auth token (default
    $LEASENODE_AUTH_TOKEN). ssl_context: for a TLS cluster (an
    ssl.SSLContext with the CA and, for mutual TLS, a client certificate).
    peer_timeout: how long a node may leave a request unanswered before the
    client checks that it is alive (default 1 s; 0 turns it off): a request
    to a node that fails the check ends as if its reply were lost (an
    acquire, extend or release is retried with the same request id,
    elsewhere first), where it would wait its whole timeout on a stopped
    process. dial_timeout: how long the client tries its addresses while no
    node has ever answered (default 2 s, as the CLI's --dial-timeout; 0
    tries for the whole retry_timeout): a wrong address fails with
    NoLeaderError naming it. retry_timeout: how long a call retries while
    no leader answers (an election, a lost quorum, overload refusals)
    before it raises NoLeaderError or OverloadedError (default 10 s, as
    the CLI's --timeout; a call with no leader returns after about that
    plus its last attempt). ttl: the default lease TTL (seconds, 10).
    drift: the clock-rate error a lease's validity allows for (0.01).
    extend_interval: how often the keepalive extends each lease (seconds;
    default a third of its TTL).
    """

    def __init__(self, addrs=None, name=None, ttl=DEFAULT_TTL, drift=DEFAULT_DRIFT, token=None,
                 ssl_context=None, retry_timeout=DEFAULT_RETRY_TIMEOUT, extend_interval=None,
                 peer_timeout=DEFAULT_PEER_TIMEOUT, dial_timeout=DEFAULT_DIAL_TIMEOUT, **unknown):
        if unknown:
            # timeout= is the CLI's --timeout and acquire()'s argument:
            # name the option that bounds a call (new-user review).
            name = sorted(unknown)[0]
            hint = ""
            if name == "timeout":
                hint = (": retry_timeout= (seconds, default %g) bounds how long each call retries without a leader, "
                        "and acquire(key, timeout=...) how long it waits for a held key" % DEFAULT_RETRY_TIMEOUT)
            raise TypeError("Client() got an unexpected keyword argument %r%s" % (name, hint))
        ttl = _seconds("ttl", ttl)
        if ttl <= 0:
            raise InvalidError("ttl %r must be > 0" % ttl)
        if not 0 <= drift < 0.5:
            raise InvalidError("drift %r must be in [0, 0.5)" % drift)
        name = name or "%s/%d" % (socket.gethostname(), os.getpid())
        if "#" in name:
            raise InvalidError("holder name %r contains '#', which separates the incarnation" % name)
        self.holder = name + "#" + secrets.token_hex(8)
        self.ttl, self.drift, self.extend_interval = float(ttl), drift, extend_interval
        self._t = _Transport(addrs or os.environ.get("LEASENODE_ADDR", "127.0.0.1:7402"),
                             token if token is not None else os.environ.get("LEASENODE_AUTH_TOKEN"),
                             ssl_context, retry_timeout, peer_timeout, dial_timeout)
        self._retry = _Retry(retry_timeout)
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        self._lock = threading.Lock()
        self._held = {}  # key -> Lease
        self._closed = False
        self._wake = threading.Event()
        self._loop = threading.Thread(target=self._keepalive, name="leasenode-keepalive", daemon=True)
        self._loop.start()

    # -- acquiring ---------------------------------------------------------------

    def _next_id(self):
        with self._ids_lock:
            return next(self._ids)

    def try_acquire(self, key, ttl=None, value=b"", lock_delay=0.0):
        """Acquires key if free and returns the Lease, else None at once."""
        try:
            return self._acquire(key, ttl, value, lock_delay, wait=None)
        except HeldError:
            return None

    def acquire(self, key, timeout=None, ttl=None, value=b"", lock_delay=0.0):
        """Waits (FIFO at the leader) until key is granted; timeout (seconds,
        None: forever) bounds the wait, then AcquireTimeoutError is raised:
        a HeldTimeoutError (also a HeldError) naming the holder when the key
        was held or in its lock-delay."""
        return self._acquire(key, ttl, value, lock_delay, wait=timeout if timeout is not None else float("inf"))

    def lock(self, key, timeout=None, ttl=None, value=b"", lock_delay=0.0):
        """acquire() as a context manager: the lease is released on exit.
        If the lease was lost during the block (not extended within its
        validity, or ended by the cluster), a block that ends normally
        raises LeaseLostError after the release, since its work may have
        overlapped another holder's; an exception of the block itself
        propagates unchanged but for a note saying the lease was lost."""
        return self.acquire(key, timeout=timeout, ttl=ttl, value=value, lock_delay=lock_delay)

    def _acquire(self, key, ttl, value, lock_delay, wait):
        if not key:
            raise InvalidError("acquire: empty key")
        if self._closed:
            raise ClosedError("client closed")
        with self._lock:
            if key in self._held:
                raise HeldError(key, self.holder, self._held[key].remaining(), "this client already holds %r" % key)
        ttl = self.ttl if ttl is None else _seconds("acquire %r: ttl" % key, ttl)
        if ttl <= 0:
            raise InvalidError("acquire %r: ttl %r must be > 0" % (key, ttl))
        if isinstance(value, str):
            value = value.encode()
        req = {"key": key, "holder": self.holder, "requestId": str(self._next_id()), "ttl": _dur(ttl)}
        if value:
            req["value"] = base64.b64encode(value).decode()
        if lock_delay:
            req["lockDelay"] = _dur(lock_delay)
        deadline = None if wait is None or wait == float("inf") else time.monotonic() + wait
        if wait is not None:
            req["wait"] = True
        state = {"sent": 0.0, "maybe": False, "spent": 0, "began": time.monotonic()}

        def attempt():
            state["sent"] = time.monotonic()
            if wait is None:
                timeout = self._retry.timeout
            elif deadline is None:
                timeout = None  # wait as long as it takes
            else:
                timeout = max(deadline - state["sent"], 0.001)
            try:
                return self._t.call("Acquire", req, timeout)
            except _RPCError as e:
                if e.reason == REASON_STALE_REQUEST and state["spent"] < 8:
                    # The id is spent: an earlier attempt was applied and its
                    # grant, if any, ended unseen (expired, or withdrawn after
                    # its reply was lost). Go on with a new id; if the call
                    # then ends without a grant, its outcome is unknown.
                    state["spent"] += 1
                    state["maybe"] = False  # the spent id's copies are refused
                    req["requestId"] = str(self._next_id())
                    raise _NotSent(str(e))
                if _classify(e) == _UNKNOWN:
                    state["maybe"] = True
                raise
            except _Unknown:
                state["maybe"] = True
                raise

        try:
            try:
                resp = self._retry.run("acquire", key, attempt, idempotent=True, deadline=deadline)
            except _Closing as e:
                # close() ended the wait: settle the attempt, which may
                # have been granted meanwhile, so nothing is left held.
                try:
                    self._abandon(req, state["began"])
                except LeaseError:
                    pass
                raise ClosedError("acquire %r: the client closed while it waited" % key) from e
            except (NoLeaderError, UnknownOutcomeError) as e:
                if deadline is not None and time.monotonic() >= deadline - 0.01:
                    if state["maybe"]:
                        return self._resolve_abandoned(req, state["began"])
                    if isinstance(e, NoLeaderError):
                        raise NoLeaderTimeoutError(key, "acquire %r: timed out, no leader reachable: %s" % (key, e)) from e
                    raise AcquireTimeoutError(key, "acquire %r: timed out waiting: %s" % (key, e)) from e
                if state["maybe"]:
                    # The retry timeout ended on an attempt that may still
                    # be applied: settle it when the cluster can commit, so
                    # that a grant nobody hears of does not block the key
                    # for its TTL (as the Go client).
                    self._abandon_later(req, state["began"])
                    raise UnknownOutcomeError("%s (a grant of this call, if one is applied later, is released: "
                                              "this client goes on settling the call until it is closed)" % e) from e
                raise
            if not resp.get("granted"):
                if wait is not None:  # the wait ended at its deadline
                    refused = _timed_out(key, resp.get("holder", ""), _secs(resp.get("wait")))
                else:
                    refused = HeldError(key, resp.get("holder", ""), _secs(resp.get("wait")))
                if state["maybe"] and not state["spent"]:
                    self._settle_refusal(req, state["began"], refused)
                raise refused
        except (HeldError, AcquireTimeoutError, NoLeaderError, InvalidError) as e:
            if state["spent"]:
                raise _SpentError("acquire %r: an earlier attempt of this call was applied before its reply reached this "
                                  "client and its grant, if any, has ended; this client does not hold the key: %s" % (key, e)) from e
            raise
        granted_ttl = _secs(resp.get("ttl")) or ttl
        lease = Lease(self, key, int(resp["token"]), granted_ttl, value, state["sent"],
                      _secs(resp.get("waited")) + granted_ttl)
        with self._lock:
            closed = self._closed
            if not closed:
                self._held[key] = lease
        if closed:
            # Granted as the client closed: nothing would extend it.
            try:
                self._release_raw(key, lease.token, timeout=1.0)
            except LeaseError:
                pass
            raise ClosedError("acquire %r: granted as the client closed, and released" % key)
        self._wake.set()
        return lease

    def _resolve_abandoned(self, req, began):
        """The caller gave up while an attempt's outcome was unknown: settle
        it (_abandon) and raise what the caller is owed."""
        key = req["key"]
        granted, holder, wait = self._abandon(req, began)
        if granted:
            # Rule 7: not a refusal; the call held the key for a moment.
            raise AcquireTimeoutError(key, "acquire %r: timed out waiting (a late grant was released)" % key)
        raise _timed_out(key, holder, wait)

    def _settle_refusal(self, req, began, refused):
        """refused answered req after an attempt whose reply was lost: a
        copy of that attempt may still reach the leader and be granted after
        the refusal. _abandon spends the id; if an attempt was granted after
        all, the outcome is unknown."""
        try:
            granted, _, _ = self._abandon(req, began)
        except UnknownOutcomeError as e:
            raise UnknownOutcomeError("%s; but an earlier attempt whose reply was lost may have been granted: %s"
                                      % (refused, e)) from e
        if granted:
            raise UnknownOutcomeError("%s; but an earlier attempt whose reply was lost was granted after it "
                                      "(released)" % refused)
        raise refused

    def _abandon(self, req, began):
        """Settles req (protocol rule 7): Abandon spends its request id in
        the cluster's log, so no attempt still in flight can be granted
        afterwards, and releases the grant if there was one. Returns
        (granted, holder, wait): whether an attempt was granted (and is
        released now), else who holds the key. Raises UnknownOutcomeError if
        an attempt may have been granted and its grant has ended."""
        key = req["key"]
        ab = {"key": key, "holder": req["holder"], "requestId": req["requestId"]}

        def abandon():
            try:
                return self._t.call("Abandon", ab, 1.0)
            except _RPCError as e:
                if e.code == "unimplemented" or e.reason == REASON_INVALID:
                    raise _Unsupported(str(e)) from e
                raise

        try:
            resp = _Retry(1.0).run("abandon", key, abandon)
        except _Unsupported:
            return self._retry_abandoned(req)
        except LeaseError as e:
            self._abandon_later(req, began)
            raise UnknownOutcomeError("acquire %r: could not settle an attempt whose reply was lost: %s (this client "
                                      "goes on settling the call until it is closed)" % (key, e))
        outcome = resp.get("outcome", "")
        if outcome == "ABANDON_OUTCOME_RELEASED":
            return True, "", 0.0
        if outcome != "ABANDON_OUTCOME_NOT_GRANTED":
            raise UnknownOutcomeError("acquire %r: an attempt may have been granted, and if so its grant has "
                                      "ended (%s)" % (key, outcome))
        if time.monotonic() - began > ABANDON_WINDOW:
            raise UnknownOutcomeError("acquire %r: the call ran %.0fs, longer than the cluster is sure to remember "
                                      "a grant of it (%.0fs)" % (key, time.monotonic() - began, ABANDON_WINDOW))
        return False, resp.get("holder", ""), _secs(resp.get("wait"))

    def _abandon_later(self, req, began):
        """Settles req in the background after _abandon could not: an
        attempt of it may still be applied once the cluster commits again,
        and nobody would release its grant. An applied Abandon releases a
        grant before it and refuses one after it. Tries until the cluster
        answers, while it may remember the call (ABANDON_WINDOW), or until
        close()."""
        ab = {"key": req["key"], "holder": req["holder"], "requestId": req["requestId"]}

        def later():
            while not self._closed and time.monotonic() - began < ABANDON_WINDOW:
                try:
                    self._retry.run("abandon", ab["key"], lambda: self._t.call("Abandon", ab, self._retry.timeout))
                    return
                except (NoLeaderError, UnknownOutcomeError):
                    continue
                except LeaseError:
                    return  # refused for good (an older cluster, invalid)
        threading.Thread(target=later, name="leasenode-settle", daemon=True).start()

    def _retry_abandoned(self, req):
        """Settles req as clusters older than Abandon allow: ask once more
        with the same id, without waiting; release a grant. It cannot stop a
        copy of an attempt that reaches the leader after it was answered."""
        r = dict(req)
        r.pop("wait", None)
        try:
            resp = _Retry(1.0).run("acquire", req["key"], lambda: self._t.call("Acquire", r, 1.0))
        except StaleRequestError as e:
            raise UnknownOutcomeError("acquire %r: its request id was spent (granted and ended, or withdrawn): %s"
                                      % (req["key"], e))
        except LeaseError as e:
            raise UnknownOutcomeError("acquire %r: could not settle an attempt whose reply was lost: %s" % (req["key"], e))
        if resp.get("granted"):
            self._release_raw(req["key"], int(resp["token"]))
            return True, "", 0.0
        return False, resp.get("holder", ""), _secs(resp.get("wait"))

    # -- keepalive -----------------------------------------------------------------

    def _keepalive(self):
        retry_at, cur = 0.0, BACKOFF_MIN
        while not self._closed:
            self._wake.clear()  # before looking: a wake after this is not lost
            now = time.monotonic()
            nxt = now + 3600.0
            with self._lock:
                leases = list(self._held.values())
            due, ripe = [], []
            for l in leases:
                with l._lock:
                    valid, last = l._valid_until, l._last_sent
                end_at = valid - min(l.ttl / 20, 0.1)
                if now >= end_at:
                    self._end(l, LeaseLostError("lease %r lost: not extended within its validity" % l.key), release=True)
                    continue
                nxt = min(nxt, end_at)
                warn_at = valid - l.ttl / 3
                if now >= warn_at:
                    l.expiring.set()
                else:
                    nxt = min(nxt, warn_at)
                interval = self.extend_interval or l.ttl / 3
                age = now - last
                if age >= interval:
                    due.append(l)
                elif age >= interval / 2:
                    ripe.append(l)
                    nxt = min(nxt, last + interval)
                else:
                    nxt = min(nxt, last + interval)
            if due:
                due += ripe
                if now < retry_at:
                    nxt = min(nxt, retry_at)
                elif self._extend(due):
                    cur = BACKOFF_MIN
                    continue
                else:
                    retry_at = time.monotonic() + cur / 2 + random.uniform(0, cur / 2)
                    cur = min(cur * 2, BACKOFF_MAX)
                    nxt = min(nxt, retry_at)
            self._wake.wait(max(nxt - time.monotonic(), 0.0))

    def _extend(self, leases):
        """One batched Extend per chunk; True if every chunk was answered."""
        ok = True
        for i in range(0, len(leases), EXTEND_CHUNK):
            chunk = leases[i:i + EXTEND_CHUNK]
            req = {"holder": self.holder, "items": [{"key": l.key, "token": str(l.token)} for l in chunk]}
            sent = time.monotonic()
            timeout = max(min(min(l.remaining() for l in chunk), 10.0), 0.05)
            try:
                resp = self._t.call("Extend", req, timeout)
            except (_NotSent, _Unknown, _RPCError):
                ok = False
                continue
            for l, r in zip(chunk, resp.get("results") or []):
                with l._lock:
                    lapsed = sent >= l._valid_until
                if lapsed:
                    # Sent after the validity ended (the process was stopped
                    # between the keepalive's check and the send): the lease
                    # was not certainly held for a while, whatever the
                    # cluster answers now.
                    self._end(l, LeaseLostError("lease %r lost: not extended within its validity" % l.key), release=True)
                    continue
                if not r.get("ok"):
                    self._end(l, LeaseLostError("lease %r lost: the cluster says it is held by %r (token %s)" % (
                        l.key, r.get("holder", ""), r.get("currentToken", "0"))), release=True)
                    continue
                valid = sent + l.ttl * (1 - self.drift)
                with l._lock:
                    if l.error is not None:
                        continue  # ended while the reply was on its way
                    l._valid_until = max(l._valid_until, valid)
                    l._last_sent = sent
                l.expiring.clear()
        return ok

    def _end(self, lease, err, release=False):
        """Ends lease: validity ends now, done is set; with release, the
        record is deleted in the background once the old validity has
        passed (nobody can still be acting on it)."""
        now = time.monotonic()
        with lease._lock:
            if lease.error is not None:
                return False
            lease.error = err or ReleasedMarker
            was_valid = lease._valid_until
            lease._valid_until = min(lease._valid_until, now)
        lease.done.set()
        with self._lock:
            if self._held.get(lease.key) is lease:
                del self._held[lease.key]
        if release:
            def later():
                time.sleep(max(was_valid - time.monotonic(), 0.0))
                try:
                    self._release_raw(lease.key, lease.token, timeout=5.0)
                except LeaseError:
                    pass
            threading.Thread(target=later, name="leasenode-release", daemon=True).start()
        return True

    def _release_record(self, lease):
        return self._release_raw(lease.key, lease.token)

    def _release_later(self, lease):
        """Releases lease's record in the background after release() failed
        to, trying for up to one TTL (by then the record has expired)."""
        def later():
            try:
                self._release_raw(lease.key, lease.token, timeout=5.0, retry=_Retry(lease.ttl))
                with lease._lock:
                    lease._unreleased = False
            except LeaseError:
                pass
        threading.Thread(target=later, name="leasenode-release", daemon=True).start()

    def _release_raw(self, key, token, timeout=None, retry=None):
        req = {"key": key, "holder": self.holder, "token": str(token)}
        retry = retry or self._retry
        resp = retry.run("release", key, lambda: self._t.call("Release", req, timeout or retry.timeout),
                         idempotent=True)
        return bool(resp.get("released"))

    # -- reads -----------------------------------------------------------------------

    def get(self, key):
        """The current record of key (linearizable), or None."""
        resp = self._retry.run("get", key, lambda: self._t.call("Get", {"key": key}, self._retry.timeout))
        return Info(resp["lease"]) if resp.get("found") else None

    def list(self, prefix=""):
        """Every record whose key starts with prefix, in key order."""
        out, after = [], ""
        while True:
            req = {"prefix": prefix, "after": after, "limit": 1000}
            resp = self._retry.run("list", prefix, lambda: self._t.call("List", req, self._retry.timeout))
            out += [Info(l) for l in resp.get("leases") or []]
            after = resp.get("next", "")
            if not after:
                return out

    def check_token(self, key, token):
        """Whether token is key's current fencing token (linearizable)."""
        req = {"key": key, "token": str(token)}
        resp = self._retry.run("check token", key, lambda: self._t.call("CheckToken", req, self._retry.timeout))
        return bool(resp.get("current"))

    def status(self):
        """The Status reply of some node (the leader first, if known)."""
        return self._retry.run("status", "", lambda: self._t.call("Status", {}, self._retry.timeout))

    def close(self):
        """Releases every lease of this client and stops its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._t.stopping.set()  # waiting acquires end with ClosedError
            leases = list(self._held.values())
        for l in leases:
            try:
                l.release()
            except LeaseError:
                pass
        self._wake.set()
        self._loop.join(timeout=5)
        self._t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _timed_out(key, holder, wait):
    """What an acquire whose wait ended unanswered raises: a refusal if the
    key was held or in its lock-delay (as Go's AcquireTimeout: ErrTimeout
    and a HeldError), else the bare timeout."""
    if holder or wait:
        return HeldTimeoutError(key, holder, wait, "acquire %r: timed out waiting; held by %s"
                                % (key, holder or "nobody (lock-delay)"))
    return AcquireTimeoutError(key, "acquire %r: timed out waiting (no holder named)" % key)


class _Released(LeaseError):
    """The lease was released."""


ReleasedMarker = _Released("lease released")
