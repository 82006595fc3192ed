"""Tests of the leasenode Python client against a real cluster.

Run against any cluster: LEASENODE_ADDR=127.0.0.1:7402 python3 -m unittest
discover -s clients/python/tests (with `leasenode dev` running), or through
`go test ./cmd/leasenode -run TestPythonClient`, which starts one.
"""

import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import leasenode  # noqa: E402

ADDRS = os.environ.get("LEASENODE_ADDR", "127.0.0.1:7402")
PREFIX = "py/%d/" % os.getpid()


def client(**kw):
    kw.setdefault("name", "pytest")
    return leasenode.Client(ADDRS, **kw)


class RetryPolicyTest(unittest.TestCase):
    """The retry loop alone (no cluster)."""

    @staticmethod
    def overloaded():
        return leasenode._RPCError("unavailable", "node: too many requests waiting for their bodies", leasenode.REASON_OVERLOADED, "")

    def test_overloaded_is_retried(self):
        # Refused at its headers, before anything was read: retried, not
        # final (it ended a waiting acquire at once, and left a refused
        # release's key held for its TTL).
        calls = []

        def f():
            calls.append(1)
            if len(calls) < 3:
                raise self.overloaded()
            return "served"
        self.assertEqual(leasenode._Retry(timeout=5, bmin=0.001, bmax=0.002).run("release", "k", f, idempotent=False), "served")
        self.assertEqual(len(calls), 3)

    def test_client_timeout_names_retry_timeout(self):
        # timeout= is the CLI's --timeout and acquire()'s argument: the
        # constructor's TypeError names the option that bounds a call.
        with self.assertRaises(TypeError) as cm:
            leasenode.Client("127.0.0.1:1", timeout=3)
        self.assertIn("retry_timeout=", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            leasenode.Client("127.0.0.1:1", bogus=1)
        self.assertIn("'bogus'", str(cm.exception))

    def test_tls_mismatch_names_each_address(self):
        # It named only the last address tried.
        e = lambda addr, why: leasenode._TLSMismatch("%s: %s" % (addr, why))
        msg = leasenode._tls_mismatches([("a:1", e("a:1", "plain HTTP (x)")), ("b:2", e("b:2", "plain HTTP (x)")),
                                         ("c:3", e("c:3", "requires a client certificate"))])
        self.assertEqual(msg, "a:1, b:2: plain HTTP (x); c:3: requires a client certificate")

    def test_unauthenticated_says_the_python_option(self):
        # The node's words name the CLI's --auth-token-file: the client
        # names the node and its own option instead.
        for sent in (True, False):
            msg = leasenode._unauthenticated("10.0.0.1:7402", sent)
            self.assertIn("10.0.0.1:7402", msg)
            self.assertIn("token=", msg)
            self.assertNotIn("client's --auth-token-file", msg)
            self.assertIn("refused the token sent" if sent else "none was sent", msg)

    def test_overloaded_gives_up_as_overloaded(self):
        def f():
            raise self.overloaded()
        with self.assertRaises(leasenode.OverloadedError) as cm:
            leasenode._Retry(timeout=0.05, bmin=0.001, bmax=0.002).run("get", "k", f)
        self.assertIsInstance(cm.exception, leasenode.NoLeaderError)


TLS_ADDRS = os.environ.get("LEASENODE_TLS_ADDR", "")


@unittest.skipUnless(TLS_ADDRS, "LEASENODE_TLS_ADDR is not set: no mutual-TLS cluster to test against "
                     "(go test ./cmd/leasenode -run TestPythonClientTLS starts one)")
class TLSClusterTest(unittest.TestCase):
    """Against a cluster that requires client certificates:
    LEASENODE_TLS_ADDR, LEASENODE_TLS_CA, LEASENODE_TLS_CERT and
    LEASENODE_TLS_KEY (a client certificate of the cluster's CA)."""

    def context(self, cert=True):
        ctx = ssl.create_default_context(cafile=os.environ["LEASENODE_TLS_CA"])
        if cert:
            ctx.load_cert_chain(os.environ["LEASENODE_TLS_CERT"], os.environ["LEASENODE_TLS_KEY"])
        return ctx

    def test_no_client_certificate_fails_at_once(self):
        # The node refuses the handshake after the client's side of it has
        # ended (TLS 1.3): a read and a write both raise TLSSetupError at
        # once, saying to load a client certificate, never
        # UnknownOutcomeError (the request was never read).
        c = leasenode.Client(TLS_ADDRS, name="nocert", ssl_context=self.context(cert=False), retry_timeout=10)
        self.addCleanup(c.close)
        for name, call in (("get", lambda: c.get(PREFIX + "tls-nocert")),
                           ("try_acquire", lambda: c.try_acquire(PREFIX + "tls-nocert")),
                           ("list", lambda: c.list(PREFIX))):
            t0 = time.monotonic()
            with self.assertRaises(leasenode.TLSSetupError, msg=name) as cm:
                call()
            self.assertLess(time.monotonic() - t0, 5, name)
            self.assertNotIsInstance(cm.exception, leasenode.UnknownOutcomeError, name)
            self.assertIn("requires a client certificate", str(cm.exception), name)
            self.assertIn("load_cert_chain", str(cm.exception), name)
            self.assertNotIn("_ssl.c", str(cm.exception), name)

    def test_a_bare_eof_is_checked_with_a_second_handshake(self):
        # The refusal may show only as an EOF (the request crossed the
        # node's alert): a second handshake that sends nothing hears the
        # node's verdict. Accepted: the failure stays what it was.
        addr = TLS_ADDRS.split(",")[0]
        eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
        t = leasenode._Transport(TLS_ADDRS, ssl_context=self.context(cert=False))
        with self.assertRaises(leasenode._TLSMismatch) as cm:
            t._raise_if_refused(addr, eof)
        self.assertIn("requires a client certificate", str(cm.exception))
        self.assertIsNone(leasenode._Transport(TLS_ADDRS, ssl_context=self.context())._raise_if_refused(addr, eof))

    def test_client_certificate_works(self):
        c = leasenode.Client(TLS_ADDRS, name="cert", ssl_context=self.context())
        self.addCleanup(c.close)
        self.assertIsNone(c.get(PREFIX + "tls-cert"))
        lease = c.try_acquire(PREFIX + "tls-cert")
        self.assertIsNotNone(lease)
        lease.release()


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()

    def new(self, **kw):
        c = client(**kw)
        self.clients.append(c)
        return c

    def test_tls_to_a_plain_node_fails_at_once(self):
        c = self.new(ssl_context=ssl.create_default_context(), retry_timeout=5)
        t0 = time.monotonic()
        with self.assertRaises(leasenode.TLSSetupError) as cm:
            c.try_acquire(PREFIX + "tls")
        self.assertLess(time.monotonic() - t0, 2)
        self.assertIn("plain HTTP", str(cm.exception))

    def test_auth_token_from_a_file(self):
        # A token read with open(f).read() keeps its newline: trimmed, as
        # the agent trims its --auth-token-file.
        token = os.environ.get("LEASENODE_AUTH_TOKEN", "")
        c = self.new(token=token + "\n")
        self.assertIsNone(c.get(PREFIX + "token-from-file"))
        # A line break inside cannot go in a header: refused at once, as a
        # bad argument, without the secret in the message.
        for bad in ("s3c\nret", "s3c\x00ret"):
            with self.assertRaises(leasenode.InvalidError) as cm:
                leasenode.Client(ADDRS, token=bad)
            self.assertIsInstance(cm.exception, ValueError)
            self.assertIn("auth token contains a control character", str(cm.exception))
            self.assertNotIn("s3c", str(cm.exception))

    def test_wrong_token_names_the_node_and_token_option(self):
        if not os.environ.get("LEASENODE_AUTH_TOKEN"):
            self.skipTest("the cluster has no auth token (LEASENODE_AUTH_TOKEN is unset)")
        c = self.new(token="not-the-cluster-token", retry_timeout=2)
        with self.assertRaises(leasenode.UnauthenticatedError) as cm:
            c.get(PREFIX + "wrong-token")
        msg = str(cm.exception)
        self.assertIn("token=", msg)
        self.assertNotIn("client's --auth-token-file", msg)
        self.assertTrue(any(a.strip() in msg for a in ADDRS.split(",")), msg)

    def test_ttl_is_a_number_of_seconds(self):
        with self.assertRaises(leasenode.InvalidError) as cm:
            leasenode.Client(ADDRS, ttl="10s")
        self.assertIn("want a number of seconds", str(cm.exception))
        c = self.new()
        with self.assertRaises(leasenode.InvalidError):
            c.try_acquire(PREFIX + "ttl-str", ttl="10s")

    def test_holder_is_name_and_incarnation(self):
        a, b = self.new(name="same"), self.new(name="same")
        self.assertTrue(a.holder.startswith("same#"))
        self.assertNotEqual(a.holder, b.holder)
        with self.assertRaises(leasenode.InvalidError):
            leasenode.Client(ADDRS, name="bad#name")

    def test_lock_context_manager_and_fencing_token(self):
        c = self.new()
        key = PREFIX + "ctx"
        with c.lock(key, value="worker-1") as l:
            self.assertGreater(l.token, 0)
            self.assertTrue(l.is_healthy())
            info = c.get(key)
            self.assertEqual((info.holder, info.token, info.value), (c.holder, l.token, b"worker-1"))
            self.assertTrue(c.check_token(key, l.token))
            first = l.token
        self.assertFalse(l.is_healthy())
        self.assertTrue(l.done.is_set())
        self.assertIsNone(c.get(key))
        self.assertFalse(c.check_token(key, first))
        # A new holding gets a higher token.
        with c.lock(key) as l2:
            self.assertGreater(l2.token, first)

    def test_lock_raises_when_the_lease_was_lost_in_the_block(self):
        # The block runs on while the client is cut off: the lease is
        # declared lost, and the block, ending normally, raises so that
        # code after it knows its work may have overlapped another holder.
        c = self.new(ttl=1.0, retry_timeout=0.5)
        key = PREFIX + "lost-in-block"
        seeds = c._t.seeds
        with self.assertRaises(leasenode.LeaseLostError) as cm:
            with c.lock(key) as l:
                c._t.seeds, c._t.leader = ["127.0.0.1:1"], None
                self.assertTrue(l.done.wait(5), "lease not declared lost")
        c._t.seeds = seeds
        self.assertEqual((cm.exception.key, cm.exception.token), (key, l.token))
        self.assertIn("lost during the with block", str(cm.exception))
        self.assertIsInstance(cm.exception.__cause__, leasenode.LeaseLostError)
        self.assertFalse(l.is_healthy())

    def test_lock_keeps_the_blocks_own_exception_when_lost(self):
        # The block raised: its exception propagates, not LeaseLostError;
        # the loss is added to it as a note.
        c = self.new(ttl=1.0, retry_timeout=0.5)
        seeds = c._t.seeds
        with self.assertRaises(ZeroDivisionError) as cm:
            with c.lock(PREFIX + "lost-and-raised") as l:
                c._t.seeds, c._t.leader = ["127.0.0.1:1"], None
                self.assertTrue(l.done.wait(5), "lease not declared lost")
                1 / 0
        c._t.seeds = seeds
        if hasattr(cm.exception, "add_note"):
            self.assertTrue(any("lost during the with block" in n for n in cm.exception.__notes__),
                            getattr(cm.exception, "__notes__", None))

    def test_lock_keeps_the_blocks_own_exception_when_release_fails(self):
        # A release that fails on the way out of a block that raised does
        # not replace the block's exception (it is retried in the
        # background, and the failure is added as a note).
        c = self.new()
        key = PREFIX + "raised-release-failed"
        call = c._t.call

        def fail_release(method, body, timeout):
            if method == "Release":
                raise leasenode._NotSent("test: no node reachable")
            return call(method, body, timeout)

        with self.assertRaises(KeyError):
            with c.lock(key):
                c._t.call, c._retry.timeout = fail_release, 0.3
                raise KeyError("the block's own")
        c._t.call = call
        deadline = time.monotonic() + 15
        while c.get(key) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIsNone(c.get(key), "not released in the background")

    def test_lock_released_in_the_block_is_not_lost(self):
        c = self.new()
        key = PREFIX + "released-in-block"
        with c.lock(key) as l:
            l.release()
        self.assertIsNone(c.get(key))
        with c.acquire(key) as l2:  # a Lease from acquire() is a context manager too
            self.assertTrue(l2.is_healthy())
        self.assertIsNone(c.get(key))

    def test_lock_in_a_stopped_process_raises_when_it_resumes(self):
        # A child process holds a lock and is stopped (SIGSTOP) past its
        # TTL; another client takes the key over after the expiry. Resumed,
        # the child's with-block ends normally and must raise
        # LeaseLostError (as `leasenode lock` exits 5), not carry on.
        key = PREFIX + "stopped-in-block"
        child_code = r"""
import sys
sys.path.insert(0, sys.argv[1])
import leasenode
c = leasenode.Client(name="pychild", ttl=2)
try:
    with c.lock(sys.argv[2]) as l:
        print("held", l.token, flush=True)
        sys.stdin.readline()
    print("finished", flush=True)
except leasenode.LeaseLostError as e:
    print("lost", e, flush=True)
    sys.exit(5)
finally:
    c.close()
"""
        env = dict(os.environ, LEASENODE_ADDR=ADDRS)
        p = subprocess.Popen([sys.executable, "-c", child_code, os.path.join(os.path.dirname(__file__), ".."), key],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=30)
            self.assertTrue(first.startswith("held "), first)
            child_token = int(first.split()[1])
            os.kill(p.pid, signal.SIGSTOP)
            b = self.new()
            lb = b.acquire(key, timeout=30)  # granted once the child's lease expired
            self.assertGreater(lb.token, child_token)
            os.kill(p.pid, signal.SIGCONT)
            p.stdin.write("\n")
            p.stdin.flush()
            self.assertEqual(p.wait(30), 5, "the child's with-block did not raise LeaseLostError")
            last = lines.get(timeout=5)
            self.assertTrue(last.startswith("lost ") and "lost during the with block" in last, last)
            # The child's release on the way out did not touch b's holding.
            self.assertTrue(lb.is_healthy())
            self.assertEqual((b.get(key).holder, b.get(key).token), (b.holder, lb.token))
            lb.release()
        finally:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait(10)
            p.stdin.close()
            p.stdout.close()

    def test_validity_from_send_time_with_drift(self):
        c = self.new(ttl=5, drift=0.01)
        before = time.monotonic()
        l = c.try_acquire(PREFIX + "validity")
        after = time.monotonic()
        self.assertIsNotNone(l)
        # sent is between before and after; valid_until = sent + (waited + ttl)*(1-drift).
        self.assertGreaterEqual(l.valid_until, before + 5 * 0.99)
        self.assertLessEqual(l.valid_until, after + 5 * 0.99 + 0.01)
        l.release()

    def test_keepalive_extends(self):
        c = self.new(ttl=1.0)
        l = c.try_acquire(PREFIX + "keepalive")
        first_valid = l.valid_until
        deadline = time.monotonic() + 10
        while l.valid_until <= first_valid + 1.0:  # extended at least once past the first TTL
            self.assertTrue(l.is_healthy(), l.error)
            self.assertLess(time.monotonic(), deadline, "not extended")
            l.done.wait(0.05)
        self.assertTrue(l.is_healthy())
        self.assertEqual(c.get(l.key).token, l.token)
        l.release()

    def test_held_elsewhere(self):
        a, b = self.new(), self.new()
        key = PREFIX + "held"
        l = a.try_acquire(key, ttl=30)
        self.assertIsNone(b.try_acquire(key))
        t0 = time.monotonic()
        with self.assertRaises(leasenode.HeldError) as cm:
            b.acquire(key, timeout=0.5)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn(a.holder, str(cm.exception))
        self.assertIsInstance(cm.exception, leasenode.AcquireTimeoutError)
        self.assertEqual(cm.exception.holder, a.holder)
        # Rule 7: the timed-out acquire was settled with Abandon, which
        # spent its request id: a late copy of it is refused, never granted.
        late = {"key": key, "holder": b.holder, "requestId": str(b._next_id() - 1), "ttl": "10s", "wait": True}
        with self.assertRaises(leasenode.StaleRequestError):
            b._retry.run("acquire", key, lambda: b._t.call("Acquire", late, 5))
        # One client never competes with itself.
        self.assertIsNone(a.try_acquire(key))
        l.release()

    def test_refusal_after_a_lost_reply_is_settled(self):
        # The first attempt is held up on its way (its reply lost: outcome
        # unknown), the retry is refused: the refusal stands only once
        # Abandon spent the id, so the held-up copy, arriving after the
        # holder released, is refused instead of granted.
        a, b = self.new(), self.new()
        key = PREFIX + "late-copy"
        la = a.try_acquire(key, ttl=30)
        call, held_up = b._t.call, []

        def lose_first(method, body, timeout):
            if method == "Acquire" and not held_up:
                held_up.append(dict(body))
                raise leasenode._Unknown("test: reply lost")
            return call(method, body, timeout)

        b._t.call = lose_first
        self.assertIsNone(b.try_acquire(key))
        b._t.call = call
        la.release()
        with self.assertRaises(leasenode.StaleRequestError):
            b._retry.run("acquire", key, lambda: call("Acquire", held_up[0], 5))
        self.assertNotEqual(getattr(b.get(key), "holder", ""), b.holder)

    def test_timed_out_acquire_whose_grant_came_late_is_not_a_refusal(self):
        # Rule 7: the attempt is granted but its reply is lost, and the
        # caller's timeout passes before a retry gets through. Abandon
        # releases the grant (RELEASED): a timeout, not "held by another".
        b = self.new()
        key = PREFIX + "late-grant"
        call, sent = b._t.call, []

        def reply_lost(method, body, timeout):
            if method == "Acquire":
                if not sent:
                    sent.append(call(method, body, timeout))
                raise leasenode._Unknown("test: reply lost")
            return call(method, body, timeout)

        b._t.call = reply_lost
        with self.assertRaises(leasenode.AcquireTimeoutError) as cm:
            b.acquire(key, timeout=0.5)
        b._t.call = call
        self.assertTrue(sent and sent[0].get("granted"), sent)
        self.assertNotIsInstance(cm.exception, leasenode.HeldError)
        self.assertIn("released", str(cm.exception))
        self.assertIsNone(b.get(key))  # Abandon released the grant
        l = self.new().try_acquire(key)
        self.assertIsNotNone(l)
        l.release()

    def test_unsettled_acquire_is_settled_in_the_background(self):
        # The attempt is granted but its reply is lost, and the settling
        # Abandon cannot get through either (a leader that cannot commit):
        # the caller hears an unknown outcome, and once Abandons get through
        # the client releases the grant nobody heard of, instead of leaving
        # the key held for its TTL (adversarial review rev-adv37, Go's).
        b = self.new()
        key = PREFIX + "unsettled"
        call, sent, cut = b._t.call, [], [True]

        def stalled(method, body, timeout):
            if method == "Acquire":
                if not sent:
                    sent.append(call(method, body, timeout))
                raise leasenode._Unknown("test: reply lost")
            if method == "Abandon" and cut[0]:
                raise leasenode._NotSent("test: the leader cannot commit")
            return call(method, body, timeout)

        b._t.call = stalled
        with self.assertRaises(leasenode.UnknownOutcomeError) as cm:
            b.acquire(key, ttl=30, timeout=0.5)
        self.assertTrue(sent and sent[0].get("granted"), sent)
        self.assertIn("goes on settling", str(cm.exception))
        self.assertEqual(getattr(b.get(key), "holder", ""), b.holder)  # the grant nobody heard of
        cut[0] = False
        deadline = time.monotonic() + 20
        while b.get(key) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIsNone(b.get(key), "the grant of an unsettled acquire was never released")

    def test_timed_out_acquire_without_a_leader_is_not_a_refusal(self):
        b = self.new()
        call = b._t.call

        def not_sent(method, body, timeout):
            if method == "Acquire":
                raise leasenode._NotSent("test: no node reachable")
            return call(method, body, timeout)

        b._t.call = not_sent
        t0 = time.monotonic()
        with self.assertRaises(leasenode.AcquireTimeoutError) as cm:
            b.acquire(PREFIX + "no-leader", timeout=0.5)
        self.assertNotIsInstance(cm.exception, leasenode.HeldError)
        self.assertIsInstance(cm.exception, leasenode.NoLeaderError)  # "the cluster is down" catches it
        self.assertGreaterEqual(time.monotonic() - t0, 0.49)  # it waited out its timeout
        self.assertLess(time.monotonic() - t0, 5)

    def test_close_ends_a_waiting_acquire(self):
        # close() ends an acquire waiting in another thread with ClosedError
        # and leaves nothing held: the key is free once its holder lets go.
        a, b = self.new(), self.new()
        key = PREFIX + "close-wait"
        la = a.try_acquire(key, ttl=30)
        got = []
        t = threading.Thread(target=lambda: got.append(self._catch(lambda: b.acquire(key, timeout=30))))
        t.start()
        deadline = time.monotonic() + 10
        while b._t.call("Status", {}, 5).get("waiters", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        b.close()
        t.join(10)
        self.assertFalse(t.is_alive(), "the waiting acquire did not end when its client closed")
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIsInstance(got[0], leasenode.ClosedError)
        la.release()
        c = self.new()
        l = None
        while l is None and time.monotonic() < deadline + 10:
            l = c.try_acquire(key)
            if l is None:
                time.sleep(0.05)
        self.assertIsNotNone(l, "the key stayed held after the closed client's acquire")
        l.release()

    def test_failed_release_is_retried(self):
        # A release that fails leaves the lease ended; release() again tries
        # once more, and without it the background release frees the key.
        a, b = self.new(), self.new()
        for key, again in ((PREFIX + "rel-again", True), (PREFIX + "rel-later", False)):
            l = a.try_acquire(key, ttl=60)
            call = a._t.call

            def fail_release(method, body, timeout, call=call):
                if method == "Release":
                    raise leasenode._NotSent("test: no node reachable")
                return call(method, body, timeout)

            a._t.call = fail_release
            a._retry.timeout = 0.3
            with self.assertRaises(leasenode.LeaseError):
                l.release()
            self.assertFalse(l.is_healthy())
            a._t.call = call
            if again:
                l.release()
            deadline, got = time.monotonic() + 15, None
            while got is None and time.monotonic() < deadline:
                got = b.try_acquire(key)
                if got is None:
                    time.sleep(0.05)
            self.assertIsNotNone(got, "%s stayed held after a failed release (again=%s)" % (key, again))
            got.release()

    @staticmethod
    def _catch(f):
        try:
            return f()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            return e

    def test_stopped_node_is_left_behind(self):
        # A node that accepts connections and never answers, as a stopped
        # process looks (its kernel completes the handshake), listed
        # first: the liveness check ends the request to it and the call
        # goes on to a live node, long before the retry timeout.
        stopped = socket.socket()
        stopped.bind(("127.0.0.1", 0))
        stopped.listen(16)
        addr = "127.0.0.1:%d" % stopped.getsockname()[1]
        held = []

        def accept():
            while True:
                try:
                    held.append(stopped.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        try:
            c = leasenode.Client([addr] + ADDRS.split(","), name="pytest", retry_timeout=600, peer_timeout=0.2)
            self.clients.append(c)
            began = time.monotonic()
            l = c.try_acquire(PREFIX + "stopped")
            self.assertIsNotNone(l)
            self.assertLess(time.monotonic() - began, 60)  # not the 600 s retry timeout
            self.assertEqual(c._t._targets()[-1], addr)  # tried last for now
            l.release()
        finally:
            stopped.close()
            for s in held:
                s.close()

    def test_queued_acquire_is_handed_the_key(self):
        a, b = self.new(), self.new()
        key = PREFIX + "queue"
        la = a.try_acquire(key, ttl=30)
        got = {}

        def wait():
            got["lease"] = b.acquire(key, timeout=20)

        t = threading.Thread(target=wait)
        t.start()
        # Release only once b waits in the leader's queue (status of the
        # leader, which a learned from its grant, counts waiters).
        deadline = time.monotonic() + 10
        while int(a.status().get("waiters", "0")) < 1:
            self.assertLess(time.monotonic(), deadline, "b never queued")
            t.join(0.02)
        released = time.monotonic()
        la.release()
        t.join(20)
        self.assertFalse(t.is_alive())
        lb = got["lease"]
        self.assertGreater(lb.token, la.token)
        self.assertLess(time.monotonic() - released, 5)
        lb.release()

    def test_same_request_id_is_the_same_grant(self):
        # Rule 2: a retry after a lost reply carries the same id and gets
        # the same grant and token; a lower id is refused as stale.
        c = self.new()
        key = PREFIX + "retry"
        t = c._t
        req = {"key": key, "holder": c.holder, "requestId": "10", "ttl": "10s"}
        r1 = t.call("Acquire", req, 5)
        r2 = t.call("Acquire", req, 5)
        self.assertTrue(r1["granted"] and r2["granted"] and r2.get("retry"))
        self.assertEqual(r1["token"], r2["token"])
        with self.assertRaises(leasenode.StaleRequestError):
            c._retry.run("acquire", key, lambda: t.call("Acquire", dict(req, requestId="9"), 5))
        c._release_raw(key, int(r1["token"]))

    def test_lost_when_extends_fail(self):
        # Cut the client off: extends fail, and the lease is declared lost
        # before its validity ends (done set, not healthy), never after.
        c = self.new(ttl=1.0, retry_timeout=0.5)
        l = c.try_acquire(PREFIX + "lost")
        valid = l.valid_until
        c._t.seeds, c._t.leader = ["127.0.0.1:1"], None
        self.assertTrue(l.done.wait(5), "lease not declared lost")
        self.assertLessEqual(time.monotonic(), valid + 0.05)
        self.assertFalse(l.is_healthy())
        self.assertIsInstance(l.error, leasenode.LeaseLostError)
        self.assertLessEqual(l.valid_until, valid)

    def test_unreachable_cluster_is_no_leader(self):
        c = leasenode.Client(["127.0.0.1:1"], retry_timeout=0.5)
        self.clients.append(c)
        t0 = time.monotonic()
        with self.assertRaises(leasenode.NoLeaderError):
            c.try_acquire(PREFIX + "nowhere")
        self.assertLess(time.monotonic() - t0, 3)

    def test_wrong_address_fails_within_dial_timeout(self):
        # Nothing listens there: the client says so after dial_timeout,
        # not after its whole retry timeout (9.8 s before).
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        addr = "127.0.0.1:%d" % s.getsockname()[1]
        s.close()
        c = leasenode.Client([addr], retry_timeout=10, dial_timeout=0.5)
        self.clients.append(c)
        t0 = time.monotonic()
        with self.assertRaises(leasenode.NoLeaderError) as cm:
            c.try_acquire(PREFIX + "wrong-address")
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("dial_timeout", str(cm.exception))
        self.assertIn(addr, str(cm.exception))

    def test_list_and_invalid(self):
        c = self.new()
        ls = [c.try_acquire(PREFIX + "list/%d" % i) for i in range(3)]
        self.assertEqual([i.key for i in c.list(PREFIX + "list/")], [l.key for l in ls])
        with self.assertRaises(leasenode.InvalidError):
            c.try_acquire("")
        with self.assertRaises(leasenode.InvalidError):
            c.try_acquire(PREFIX + "bad-ttl", ttl=0.000001)
        for bad in (0, -1):  # not "the client's default TTL"
            with self.assertRaises(leasenode.InvalidError):
                c.try_acquire(PREFIX + "bad-ttl", ttl=bad)
        for l in ls:
            l.release()


if __name__ == "__main__":
    unittest.main()
