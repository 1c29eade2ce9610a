"""CC delivery under load: nothing is lost silently (real ZMQ sockets on loopback).

The clients are plain pyzmq DEALERs (not ccnet code) run in threads so the
reactor keeps serving; every server binds ``tcp://127.0.0.1:*``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import zmq
from prometheus_client import generate_latest
from twisted.internet import defer, reactor, threads
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from ccnet.cc.handler import CCHandler, CCRequest
from ccnet.cc.metrics import CCMetrics
from ccnet.cc.server import CCServer
from tests.test_cc_server import ServerTestCase, body, deferLater, echo_config

_CTX = zmq.Context.instance()


def windowed(endpoint: str, total: int, window: int, timeout: float = 5.0, busy: float = 0.0) -> dict[str, int]:
    """Keep ``window`` echo.requests in flight (each with its own query id, as
    CCReqStream does) until ``total`` were sent; stop when no reply came for
    ``timeout`` seconds.  Returns sent / received / missing counts.

    With ``busy``, the client works after each refill of its window for that
    long before reading again, with a small receive side (RCVHWM 100, an 8 KB
    kernel buffer): the replies then pile up on the server over its zmq_hwm every
    time, rather than only when the machine happens to be loaded."""
    s = _CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 100)
    s.setsockopt(zmq.RCVBUF, 8192)
    s.connect(endpoint)
    req = body("echo.request", target="window")
    outstanding: set[bytes] = set()
    sent = received = 0
    try:
        while received < total:
            while sent < total and len(outstanding) < window:
                qid = b"Q%08d" % sent
                s.send_multipart([qid, b"", b"echo.request", req, b""])
                outstanding.add(qid)
                sent += 1
            if busy:
                time.sleep(busy)
            if not s.poll(int(timeout * 1000)):
                break
            while s.poll(0):
                rep = s.recv_multipart()
                if rep[2] == b"echo.response" and rep[0] in outstanding:
                    outstanding.discard(rep[0])
                    received += 1
    finally:
        s.close()
    return {"sent": sent, "received": received, "missing": len(outstanding)}


def never_reading(endpoint: str, n: int) -> zmq.Socket:
    """A DEALER with tiny receive buffers that sends ``n`` requests and reads nothing."""
    s = _CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 10)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.setsockopt(zmq.SNDHWM, 0)
    s.connect(endpoint)
    req = body("echo.request", target="sink")
    for i in range(n):
        s.send_multipart([b"Q%08d" % i, b"", b"echo.request", req, b""])
    return s


def read_all(s: zmq.Socket, quiet: float = 1.0) -> int:
    got = 0
    while s.poll(int(quiet * 1000)):
        s.recv_multipart()
        got += 1
    return got


@defer.inlineCallbacks
def until(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        yield deferLater(0.01)


class InFlightTests(ServerTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_dealer_with_1000_in_flight_gets_every_reply_on_defaults(self) -> Any:
        # The case: on zmq_hwm = 100 the ROUTER dropped 150 of 20 000 replies.
        srv = self.start(echo_config())
        result = yield threads.deferToThread(windowed, srv.endpoint, 20_000, 1000, busy=0.05)
        self.assertEqual(result, {"sent": 20_000, "received": 20_000, "missing": 0})
        self.assertEqual(srv.stats.totals["count.ok.msg.echo.request"], 20_000)
        self.assertEqual(srv.stats.totals["undelivered"], 0)

    @defer.inlineCallbacks
    def test_replies_beyond_zmq_hwm_wait_in_the_send_queue_and_all_arrive(self) -> Any:
        srv = self.start(echo_config(extra="zmq_hwm = 5"))
        result = yield threads.deferToThread(windowed, srv.endpoint, 5000, 1000)
        self.assertEqual(result["received"], 5000)
        assert srv.socket is not None and srv.socket.out is not None
        self.assertGreater(srv.socket.out.peak, 0)  # ZMQ refused some: the queue carried them
        self.assertEqual(srv.stats.totals["undelivered"], 0)
        self.assertEqual(srv.socket.out.messages, 0)

    @defer.inlineCallbacks
    def test_peer_that_never_reads_loss_is_counted_and_logged_and_queue_bounded(self) -> Any:
        n = 3000
        srv = self.start(echo_config(extra="zmq_hwm = 10\nzmq_sndbuf = 4 KB\nsend-queue = 50"))
        with capturedLogs() as events:
            sock = yield threads.deferToThread(never_reading, srv.endpoint, n)
            self.addCleanup(sock.close)
            yield until(lambda: srv.stats.totals["count.ok.msg.echo.request"] == n)
        assert srv.socket is not None and srv.socket.out is not None
        out = srv.socket.out
        self.assertLessEqual(out.peak, 50)
        dropped = srv.stats.totals["undelivered.peer-queue-full"]
        self.assertGreater(dropped, 0)
        lines = [formatEvent(e) for e in events if "not delivered" in e.get("log_format", "")]
        self.assertTrue(lines)
        self.assertIn("echo.response", lines[0])
        self.assertIn("peer-queue-full", lines[0])
        self.assertLessEqual(len(lines), 20)  # rate-limited; the counter has them all
        self.assertIn('ccnet_cc_undelivered_total{reason="peer-queue-full"}', generate_latest(CCMetrics(srv.stats)).decode())
        # The peer reads at last: every reply was delivered or counted, none vanished.
        got = yield threads.deferToThread(read_all, sock)
        self.assertEqual(got + srv.stats.totals["undelivered"], n)
        self.assertEqual(out.messages, 0)

    @defer.inlineCallbacks
    def test_replies_queued_for_a_peer_that_left_are_counted_as_peer_gone(self) -> Any:
        srv = self.start(echo_config(extra="zmq_hwm = 10\nzmq_sndbuf = 4 KB\nsend-queue = 500"))
        sock = yield threads.deferToThread(never_reading, srv.endpoint, 2000)
        yield until(lambda: srv.stats.totals["count.ok.msg.echo.request"] == 2000)
        assert srv.socket is not None and srv.socket.out is not None
        self.assertGreater(srv.socket.out.messages, 0)
        sock.close()
        yield until(lambda: srv.socket.out.messages == 0)  # type: ignore[union-attr]
        self.assertGreater(srv.stats.totals["undelivered.peer-gone"], 0)
        yield until(lambda: srv.stats.totals["disconnected"] >= 1)


class LostEdgeTests(ServerTestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_input_the_reactor_was_never_told_about_is_read_within_a_second_and_counted(self) -> Any:
        srv = self.start(echo_config())
        sock = srv.socket
        assert sock is not None
        # Take the socket's fd away from the reactor: ZMQ's "input waiting" edge is lost.
        reactor.removeReader(sock)
        self.addCleanup(reactor.addReader, sock)
        with capturedLogs() as events:
            replies = yield self.ask(srv, [[b"", b"echo.request", body("echo.request", ack=True), b""]])
        self.assertEqual(replies[0][1], b"echo.response")  # answered anyway
        self.assertGreaterEqual(sock.lost_edges, 1)
        self.assertTrue(any("was not told about" in e.get("log_format", "") for e in events))


class Holder(CCHandler):
    """Keeps each request 50 ms (like a handler writing a file in a thread), then answers."""

    handler_name = "holder"
    seen_pending: list[int] = []

    def handle(self, request: CCRequest) -> defer.Deferred[None]:
        Holder.seen_pending.append(self.server.pending_bytes)
        d: defer.Deferred[None] = defer.Deferred()

        def done() -> None:
            self.server.reply(request, "hold.done", {"n": len(request.msg.blob or b"")})
            d.callback(None)

        reactor.callLater(0.05, done)
        return d


class Gate(CCHandler):
    """Keeps every request until the test opens the gate."""

    handler_name = "gate"
    waiting: list[tuple[CCRequest, defer.Deferred[None]]] = []

    def handle(self, request: CCRequest) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        Gate.waiting.append((request, d))
        return d

    @classmethod
    def open(cls, server: CCServer) -> None:
        waiting, cls.waiting = cls.waiting, []
        for request, d in waiting:
            server.reply(request, "gate.done", {})
            d.callback(None)


def concurrent_large(endpoint: str, peers: int, size: int) -> list[list[bytes]]:
    socks = []
    for _ in range(peers):
        s = _CTX.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    blob = b"b" * size
    try:
        for s in socks:
            s.send_multipart([b"", b"hold.it", body("hold.it"), b"", blob])
        out = []
        for s in socks:
            if s.poll(30000):
                out.append(s.recv_multipart())
        return out
    finally:
        for s in socks:
            s.close()


class LargeMessageTests(ServerTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_concurrent_large_messages_stay_within_max_pending_bytes(self) -> Any:
        Holder.seen_pending = []
        mb = 1024 * 1024
        srv = self.start(echo_config(
            extra="max-pending-bytes = 3 MB",
            routes="hold = holder", sections=f"[holder]\nhandler = {__name__}:Holder\n",
        ))
        reps = yield threads.deferToThread(concurrent_large, srv.endpoint, 10, mb)
        self.assertEqual(len(reps), 10)
        self.assertEqual({json.loads(r[2])["n"] for r in reps}, {mb})
        # Reading stops once handlers hold more than 3 MB: never more than that plus one message.
        self.assertLessEqual(max(Holder.seen_pending), 3 * mb + mb + 4096)
        self.assertGreaterEqual(srv.stats.totals["read-paused"], 1)
        self.assertEqual(srv.pending_bytes, 0)
        assert srv.socket is not None
        self.assertFalse(srv.socket.paused)

    @defer.inlineCallbacks
    def test_paused_reading_neither_spins_nor_loses_and_resumes(self) -> Any:
        Gate.waiting = []
        srv = self.start(echo_config(
            extra="max-pending-bytes = 1 KB",
            routes="gate = gate", sections=f"[gate]\nhandler = {__name__}:Gate\n",
        ))
        assert srv.socket is not None
        s = _CTX.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(srv.endpoint)
        self.addCleanup(s.close)
        for i in range(3):
            s.send_multipart([b"Q%d" % i, b"", b"gate.x", body("gate.x"), b"", b"z" * 2048])
        yield until(lambda: len(Gate.waiting) == 1 and srv.socket.paused)  # type: ignore[union-attr]
        reads = []
        original = srv.socket.doRead
        srv.socket.doRead = lambda: (reads.append(1), original())  # type: ignore[method-assign]
        # A new peer while paused: ZMQ signals its fd (a command to process).
        late = _CTX.socket(zmq.DEALER)
        late.setsockopt(zmq.LINGER, 0)
        late.connect(srv.endpoint)
        self.addCleanup(late.close)
        late.send_multipart([b"", b"echo.request", body("echo.request"), b""])
        yield deferLater(0.3)
        # While paused the loop still reads EVENTS (which clears ZMQ's fd), so the
        # reactor is not calling it over and over: a spin would be thousands of calls.
        self.assertLess(len(reads), 50)
        self.assertEqual(len(Gate.waiting), 1)  # nothing more read while paused
        for _ in range(3):
            Gate.open(srv)
            yield until(lambda: bool(Gate.waiting) or srv.stats.totals["count.ok"] == 4)
        got = yield threads.deferToThread(lambda: [s.recv_multipart()[0] for _ in range(3) if s.poll(5000)])
        self.assertEqual(sorted(got), [b"Q0", b"Q1", b"Q2"])
        self.assertTrue(late.poll(5000))  # the late peer was served once reading resumed
        self.assertFalse(srv.socket.paused)
        self.assertEqual(srv.pending_bytes, 0)

    @defer.inlineCallbacks
    def test_frame_over_zmq_maxmsgsize_disconnects_the_peer_and_is_counted(self) -> Any:
        srv = self.start(echo_config(extra="zmq_maxmsgsize = 64 KB\nerror-replies = always"))
        s = _CTX.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(srv.endpoint)
        self.addCleanup(s.close)
        with capturedLogs() as events:
            s.send_multipart([b"", b"echo.request", body("echo.request"), b"", b"x" * (100 * 1024)])
            # libzmq closes the connection at the frame header: nothing reaches ccnet,
            # the client gets no error; ccnet sees the disconnect through a socket monitor.
            yield until(lambda: srv.stats.totals["disconnected"] >= 1)
        self.assertEqual(srv.stats.totals["count"], 0)
        lines = [formatEvent(e) for e in events if "ZMQ closed a peer connection" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertIn("zmq_maxmsgsize = 65536 bytes", lines[0])
        self.assertIn("ccnet_cc_disconnects_total 1", generate_latest(CCMetrics(srv.stats)).decode())
        # The DEALER reconnects by itself; the next message is served.
        s.send_multipart([b"", b"echo.request", body("echo.request"), b""])
        ok = yield threads.deferToThread(lambda: s.recv_multipart() if s.poll(5000) else None)
        self.assertIsNotNone(ok)
        self.assertEqual(ok[1], b"echo.response")


class ConfigTests(TestCase):
    def test_delivery_keys_defaults_and_zmq_maxmsgsize(self) -> None:
        from ccnet.cc.config import parse
        from ccnet.config import IniFile

        cfg = parse(IniFile.from_string(echo_config()))
        assert cfg is not None
        self.assertEqual((cfg.send_queue, cfg.send_queue_bytes, cfg.max_pending_bytes),
                         (10000, 64 * 1024 * 1024, 64 * 1024 * 1024))
        self.assertEqual(cfg.zmq.maxmsgsize, 2 * cfg.max_body)
        cfg = parse(IniFile.from_string(echo_config(
            extra="max-body-size = 1 MB\nzmq_maxmsgsize = 5 MB\nsend-queue = 7\nsend-queue-bytes = 1 MB")))
        assert cfg is not None
        self.assertEqual((cfg.zmq.maxmsgsize, cfg.send_queue, cfg.send_queue_bytes), (5 * 1024 * 1024, 7, 1024 * 1024))
        cfg = parse(IniFile.from_string(echo_config(extra="max-body-size = 1 MB")))
        assert cfg is not None
        self.assertEqual(cfg.zmq.maxmsgsize, 2 * 1024 * 1024)


class ShutdownTests(TestCase):
    def test_factory_shutdown_closes_router_and_monitor_in_any_order(self) -> None:
        from ccnet.cc.config import ZmqOptions
        from ccnet.cc.transport import make_factory, router

        for _ in range(5):  # set order varies: the ROUTER may close its monitor first
            factory = make_factory(reactor, ZmqOptions())
            sock = router(factory, ZmqOptions(), lambda frames: None)
            sock.queue_sends(10, 1000, lambda frames, reason: None)
            sock.watch_disconnects(lambda endpoint: None)
            sock.bind("tcp://127.0.0.1:*")
            factory.shutdown()
            self.assertIsNone(sock.socket)
