"""The CC proxy end to end: real ZMQ sockets, a plain pyzmq DEALER client."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task, threads
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from ccnet.cc.config import ZmqOptions, parse
from ccnet.cc.crypto import CMSCodec
from ccnet.cc.handler import CCHandler, CCRequest
from ccnet.cc.message import make_body
from ccnet.cc.server import CCServer, CCStartError
from ccnet.cc.transport import make_factory
from ccnet.config import IniFile
from ccnet.runtime import Runtime
from tests.test_cc_crypto import make_keystore

_CTX = zmq.Context.instance()


class Recorder(CCHandler):
    """Records (section, type, route) of every call, in call order."""

    handler_name = "recorder"
    calls: list[tuple[str, str, tuple[bytes, ...]]] = []

    def handle(self, request: CCRequest) -> None:
        Recorder.calls.append((self.name, request.type, request.route))
        assert request.payload is not None


class Crasher(CCHandler):
    handler_name = "crasher"

    def handle(self, request: CCRequest) -> None:
        raise RuntimeError("boom")


class Slow(CCHandler):
    """Answers after a reactor turn, through a Deferred."""

    handler_name = "slow"

    def handle(self, request: CCRequest) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()

        def later() -> None:
            self.server.reply(request, "slow.done", {"n": request.payload["n"]})  # type: ignore[index]
            d.callback(None)

        reactor.callLater(0, later)
        return d


def body(req: str, **extra: Any) -> bytes:
    """A body from a client that reads replies ("ack": true, as ccnet's own clients)."""
    extra.setdefault("ack", True)
    return json.dumps(make_body(req, extra, hostname="client", now=time.time())).encode()


def exchange(endpoint: str, messages: list[list[bytes]], replies: int, timeout: float = 5.0) -> list[list[bytes]]:
    """Plain pyzmq DEALER (not ccnet code): send messages, collect replies.
    Runs in a thread so the reactor keeps serving."""
    s = _CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    s.connect(endpoint)
    try:
        for m in messages:
            s.send_multipart(m)
        out = []
        for _ in range(replies):
            try:
                out.append(s.recv_multipart())
            except zmq.Again:
                break
        return out
    finally:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerTestCase(TestCase):
    def start(self, text: str, clock: Any = None, zmq_factory: Any = None, runtime: Any = None) -> CCServer:
        ini = IniFile.from_string(text)
        cfg = parse(ini)
        for name in ini.claimed():
            ini.section(name).finish()
        server = CCServer(cfg, reactor, hostname="ccnet-test", clock=clock, zmq_factory=zmq_factory,
                          runtime=runtime)
        server.start()
        self.addCleanup(server.stop)
        return server

    def ask(self, server: CCServer, messages: list[list[bytes]], replies: int = 1) -> defer.Deferred[list[list[bytes]]]:
        return threads.deferToThread(exchange, server.endpoint, messages, replies)


ECHO = """
[cc]
cc-socket = tcp://127.0.0.1:*
stats-period = 0
{extra}
[routes]
echo = echo
{routes}
[echo]
handler = echo
{sections}
"""


def echo_config(extra: str = "", routes: str = "", sections: str = "") -> str:
    return ECHO.format(extra=extra, routes=routes, sections=sections)


class EchoAndErrorTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_testmsg_style_client_gets_echo_response(self) -> Any:
        srv = self.start(echo_config())
        (rep,) = yield self.ask(srv, [[b"", b"echo.request", body("echo.request", target="t1"), b""]])
        self.assertEqual(rep[:2], [b"", b"echo.response"])
        d = json.loads(rep[2])
        self.assertEqual(d["req"], "echo.response")
        self.assertEqual(d["orig_hostname"], "client")
        self.assertEqual(d["orig_target"], "t1")
        self.assertEqual(d["hostname"], "ccnet-test")
        self.assertEqual(rep[3], b"")  # unsigned
        self.assertEqual(srv.stats.totals["count.ok.msg.echo.request"], 1)

    @defer.inlineCallbacks
    def test_reqstream_query_id_comes_back_in_front(self) -> Any:
        srv = self.start(echo_config())
        (rep,) = yield self.ask(srv, [[b"Q000007", b"", b"echo.request", body("echo.request")]])
        self.assertEqual(rep[:3], [b"Q000007", b"", b"echo.response"])

    @defer.inlineCallbacks
    def test_unroutable_type_gets_error_naming_the_type(self) -> Any:
        srv = self.start(echo_config())
        (rep,) = yield self.ask(srv, [[b"", b"pub.infofile", body("pub.infofile"), b""]])
        self.assertEqual(rep[:2], [b"", b"error"])
        d = json.loads(rep[2])
        self.assertIn("no route for message type pub.infofile", d["msg"])
        self.assertEqual(d["orig_req"], "pub.infofile")
        self.assertEqual(srv.stats.totals["count.dropped.msg.pub.infofile"], 1)

    @defer.inlineCallbacks
    def test_error_replies_no_restores_silent_drop(self) -> Any:
        srv = self.start(echo_config(extra="error-replies = no"))
        # the drop is proven by the echo answer arriving first and alone
        reps = yield self.ask(
            srv,
            [[b"", b"pub.x", body("pub.x"), b""], [b"", b"echo.request", body("echo.request"), b""]],
            replies=1,
        )
        self.assertEqual([r[1] for r in reps], [b"echo.response"])
        self.assertEqual(srv.stats.totals["count.dropped"], 1)

    @defer.inlineCallbacks
    def test_malformed_frames_get_error_replies_and_server_keeps_serving(self) -> Any:
        # A malformed body cannot say "ack": only error-replies = always answers these.
        srv = self.start(echo_config(extra="error-replies = always"))
        bad = [
            [b"", b"echo.request"],  # no json frame
            [b"", b"echo.request", b"{not json", b""],
            [b"", b"echo.request", b"\xff\xfe", b""],
            [b"", b"echo.request", body("db.confdb"), b""],  # hijacked
            [b"", b"echo.request", body("echo.request"), b"", b"blob", b"extra"],
        ]
        reps = yield self.ask(srv, bad, replies=len(bad))
        self.assertEqual([r[1] for r in reps], [b"error"] * len(bad))
        msgs = [json.loads(r[2])["msg"] for r in reps]
        self.assertIn("missing json frame", msgs[0])
        self.assertIn("not valid JSON", msgs[1])
        self.assertIn("not UTF-8", msgs[2])
        self.assertIn("does not match message type", msgs[3])
        self.assertIn("too many frames", msgs[4])
        (ok,) = yield self.ask(srv, [[b"", b"echo.request", body("echo.request"), b""]])
        self.assertEqual(ok[1], b"echo.response")
        self.assertEqual(srv.stats.totals["count.invalid"], 5)

    @defer.inlineCallbacks
    def test_malformed_frames_without_opt_in_are_logged_and_counted_not_answered(self) -> Any:
        srv = self.start(echo_config())
        reps = yield self.ask(srv, [[b"", b"echo.request", b"{not json", b""],
                                    [b"", b"echo.request", body("echo.request"), b""]])
        self.assertEqual([r[1] for r in reps], [b"echo.response"])
        self.assertEqual(srv.stats.totals["count.invalid"], 1)
        self.assertEqual(srv.stats.totals["unanswered.msg.echo.request"], 1)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_unanswerable_frames_are_dropped(self) -> Any:
        srv = self.start(echo_config())
        reps = yield self.ask(
            srv,
            [
                [b"echo.request", body("echo.request")],  # no delimiter
                [b"", b"bad type!", body("x"), b""],
                [b"", b"echo.request", body("echo.request"), b""],
            ],
        )
        self.assertEqual([r[1] for r in reps], [b"echo.response"])
        self.assertEqual(srv.stats.totals["count.invalid"], 2)

    @defer.inlineCallbacks
    def test_oversize_message_is_refused(self) -> Any:
        srv = self.start(echo_config(extra="max-body-size = 1 KB\nerror-replies = always"))
        (rep,) = yield self.ask(srv, [[b"", b"echo.request", body("echo.request"), b"", b"x" * 2000]])
        self.assertIn("too large", json.loads(rep[2])["msg"])


    @defer.inlineCallbacks
    def test_error_messages_are_never_answered_with_errors(self) -> Any:
        srv = self.start(echo_config())
        reps = yield self.ask(
            srv,
            [[b"", b"error", body("error", msg="x"), b""], [b"", b"echo.request", body("echo.request"), b""]],
        )
        self.assertEqual([r[1] for r in reps], [b"echo.response"])

    @defer.inlineCallbacks
    def test_handler_refusal_is_an_error_reply_not_a_crash(self) -> Any:
        srv = self.start(echo_config())
        (rep,) = yield self.ask(srv, [[b"", b"echo.other", body("echo.other"), b""]])
        self.assertIn("answers echo.request, not echo.other", json.loads(rep[2])["msg"])
        self.assertEqual(srv.stats.totals["count.error.msg.echo.other"], 1)
        self.assertEqual(srv.stats.totals["count.crashed"], 0)

    def test_stats_are_logged_every_stats_period(self) -> None:
        clock = task.Clock()
        srv = self.start(
            echo_config().replace("stats-period = 0", "stats-period = 30\ncc-stats = 2"), clock=clock
        )
        srv.stats.count("ok", "echo.request", 10)
        with capturedLogs() as events:
            clock.advance(29)
            self.assertEqual([e for e in events if "cc_stats" in e], [])
            clock.advance(1)
        (event,) = [e for e in events if "cc_stats" in e]
        self.assertEqual(event["cc_stats"]["count.ok.msg.echo.request"], 1)
        self.assertIn("count.ok=1", formatEvent(event))
        srv.stats.count("ok", "echo.request", 10)
        srv.config = replace(srv.config, cc_stats=1)  # the original default: totals only
        with capturedLogs() as events:
            clock.advance(30)
        (event,) = [e for e in events if "cc_stats" in e]
        self.assertEqual(event["cc_stats"], {"count": 1, "count.ok": 1, "bytes": 10})
        with capturedLogs() as events:
            clock.advance(30)
        self.assertIn("idle", formatEvent([e for e in events if "cc_stats" in e][0]))


    def test_busy_cc_socket_stops_start_up_with_clear_message(self) -> None:
        first = self.start(echo_config())
        ini = IniFile.from_string(echo_config().replace("tcp://127.0.0.1:*", first.endpoint))
        cfg = parse(ini)
        second = CCServer(cfg, reactor)
        e = self.assertRaises(CCStartError, second.start)
        self.assertIn(f"cc-socket = {first.endpoint}: cannot bind", str(e))
        self.assertIsNone(second.socket)
        return second.stop()


class DispatchTests(ServerTestCase):
    def setUp(self) -> None:
        Recorder.calls = []

    @defer.inlineCallbacks
    def test_every_prefix_is_called_in_original_order(self) -> Any:
        mod = __name__
        srv = self.start(
            echo_config(
                routes="pub.infofile = full\npub = short\n* = all\npub.info = wrong",
                sections="".join(
                    f"[{n}]\nhandler = {mod}:Recorder\n" for n in ("full", "short", "all", "wrong")
                ),
            )
        )
        reps = yield self.ask(
            srv,
            [[b"Q1", b"", b"pub.infofile", body("pub.infofile"), b""],
             [b"", b"echo.request", body("echo.request"), b""]],
        )
        self.assertEqual(reps[0][1], b"echo.response")  # no error for the handled pub.infofile
        names = [c[0] for c in Recorder.calls if c[1] == "pub.infofile"]
        self.assertEqual(names, ["all", "short", "full"])
        self.assertEqual(Recorder.calls[0][2][1:], (b"Q1",))

    @defer.inlineCallbacks
    def test_crashing_handler_is_answered_counted_and_server_survives(self) -> Any:
        srv = self.start(
            echo_config(routes="job = crash", sections=f"[crash]\nhandler = {__name__}:Crasher\n")
        )
        (rep,) = yield self.ask(srv, [[b"", b"job.x", body("job.x"), b""]])
        self.assertEqual(rep[1], b"error")
        self.assertIn("handler [crash] failed on job.x", json.loads(rep[2])["msg"])
        self.assertEqual(srv.stats.totals["count.crashed.msg.job.x"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        (ok,) = yield self.ask(srv, [[b"", b"echo.request", body("echo.request"), b""]])
        self.assertEqual(ok[1], b"echo.response")

    @defer.inlineCallbacks
    def test_handler_returning_deferred_replies_later(self) -> Any:
        srv = self.start(echo_config(routes="slow = slow", sections=f"[slow]\nhandler = {__name__}:Slow\n"))
        (rep,) = yield self.ask(srv, [[b"", b"slow.go", body("slow.go", n=5), b""]])
        self.assertEqual(rep[1], b"slow.done")
        self.assertEqual(json.loads(rep[2])["n"], 5)
        self.assertEqual(srv.stats.latency["slow.go"].count, 1)


class ProxyPingTests(ServerTestCase):
    def test_ping_warns_when_remote_does_not_answer(self) -> None:
        clock = task.Clock()
        srv = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\n[routes]\n* = up\n"
            f"[up]\nhandler = proxy\nremote-cc = tcp://127.0.0.1:{free_port()}\nping = yes\n",
            clock=clock,
        )
        with capturedLogs() as events:
            for _ in range(7):
                clock.advance(1)
        warnings = [formatEvent(e) for e in events if "no pong" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("tcp://127.0.0.1:", warnings[0])
        self.assertTrue(srv.handlers["up"]._warned)

    @defer.inlineCallbacks
    def test_ping_is_answered_by_remote_echo(self) -> Any:
        remote = self.start(echo_config())
        clock = task.Clock()
        local = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\n[routes]\n* = up\n"
            f"[up]\nhandler = proxy\nremote-cc = {remote.endpoint}\nping = yes\n",
            clock=clock,
        )
        proxy = local.handlers["up"]
        proxy._last_pong = None
        for _ in range(200):
            if proxy._last_pong is not None:
                break
            clock.advance(1)  # the ping loop sends; the first may race the connect
            yield deferLater(0.01)
        self.assertIsNotNone(proxy._last_pong)
        self.assertGreaterEqual(remote.stats.totals["count.ok.msg.echo.request"], 1)

    @defer.inlineCallbacks
    def test_echo_ping_remotes_gets_pongs(self) -> Any:
        remote = self.start(echo_config())
        local = self.start(echo_config(sections=f"ping-remotes = {remote.endpoint}\nping-period = 0.1"))
        echo = local.handlers["echo"]
        first_pong = echo.pings[remote.endpoint][1]
        for _ in range(300):
            if echo.pings[remote.endpoint][1] > first_pong:
                break
            yield deferLater(0.01)
        self.assertGreater(echo.pings[remote.endpoint][1], first_pong)
        self.assertGreaterEqual(remote.stats.totals["count.ok.msg.echo.request"], 1)

    def test_echo_warns_about_silent_remote(self) -> None:
        clock = task.Clock()
        url = f"tcp://127.0.0.1:{free_port()}"
        self.start(echo_config(sections=f"ping-remotes = {url}"), clock=clock)
        with capturedLogs() as events:
            for _ in range(7):
                clock.advance(1)
        warnings = [formatEvent(e) for e in events if "no pong" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)  # after 6 and 7 silent seconds
        self.assertIn(url, warnings[0])


class ProxyChainTests(ServerTestCase):
    def chain(self, remote_extra: str = "", local_extra: str = "") -> tuple[CCServer, CCServer]:
        # Both servers share one ZmqFactory, as everything in one reactor should.
        factory = make_factory(reactor, ZmqOptions())
        self.addCleanup(factory.shutdown)
        remote = self.start(echo_config(extra="cc-role = remote\n" + remote_extra), zmq_factory=factory)
        local = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\ncc-role = local\nstats-period = 0\n" + local_extra
            + "\n[routes]\n* = up\n[up]\nhandler = proxy\n"
            f"remote-cc = {remote.endpoint}\n",
            zmq_factory=factory,
        )
        return local, remote

    @defer.inlineCallbacks
    def test_reply_travels_back_over_two_hops_with_route_intact(self) -> Any:
        Recorder.calls = []
        local, remote = self.chain()
        reps = yield self.ask(
            local,
            [[b"Q000001", b"", b"echo.request", body("echo.request", target="far"), b""],
             [b"Q000002", b"", b"nothing.here", body("nothing.here"), b""]],
            replies=2,
        )
        by_qid = {r[0]: r for r in reps}
        self.assertEqual(by_qid[b"Q000001"][1:3], [b"", b"echo.response"])
        self.assertEqual(json.loads(by_qid[b"Q000001"][3])["orig_target"], "far")
        # the remote's error for an unroutable type comes back along the same path
        self.assertEqual(by_qid[b"Q000002"][2], b"error")
        self.assertEqual(json.loads(by_qid[b"Q000002"][3])["orig_req"], "nothing.here")
        self.assertEqual(remote.stats.totals["count.ok.msg.echo.request"], 1)

    @defer.inlineCallbacks
    def test_remote_sees_full_routing_id_stack(self) -> Any:
        Recorder.calls = []
        remote = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\n[routes]\njob = rec\necho = echo\n"
            f"[rec]\nhandler = {__name__}:Recorder\n[echo]\nhandler = echo\n"
        )
        local = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\n[routes]\n* = up\n"
            f"[up]\nhandler = proxy\nremote-cc = {remote.endpoint}\n"
        )
        yield self.ask(
            local,
            [[b"Q9", b"", b"job.x", body("job.x"), b""],
             [b"", b"echo.request", body("echo.request"), b""]],
        )
        (call,) = [c for c in Recorder.calls if c[1] == "job.x"]
        route = call[2]
        self.assertEqual(len(route), 3)  # local proxy's id, client peer id, Q9
        self.assertEqual(route[2], b"Q9")

    @defer.inlineCallbacks
    def test_queue_waits_for_remote_and_drops_oldest_when_full(self) -> Any:
        port = free_port()
        local = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\nzmq_hwm = 3\n[routes]\n* = up\n"
            f"[up]\nhandler = proxy\nremote-cc = tcp://127.0.0.1:{port}\n"
        )
        proxy = local.handlers["up"]
        # send 5 while the remote is down; wait until all 5 reached the proxy
        client = _CTX.socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(local.endpoint)
        self.addCleanup(client.close)
        for i in range(5):
            client.send_multipart([f"Q{i}".encode(), b"", b"echo.request", body("echo.request"), b""])
        while local.stats.totals["count.ok"] < 5:
            yield deferLater(0.01)
        self.assertEqual(len(proxy.queue), 3)
        self.assertEqual(proxy.dropped, 2)
        self.assertEqual(local.stats.totals["count.dropped"], 2)
        # the remote comes up on that port: the newest 3 are delivered and answered
        self.start(echo_config().replace("tcp://127.0.0.1:*", f"tcp://127.0.0.1:{port}"))
        got = yield threads.deferToThread(_recv_n, client, 3)
        self.assertEqual(sorted(r[0] for r in got), [b"Q2", b"Q3", b"Q4"])
        self.assertEqual(len(proxy.queue), 0)


def _recv_n(sock: zmq.Socket, n: int) -> list[list[bytes]]:
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    return [sock.recv_multipart() for _ in range(n)]


def deferLater(seconds: float) -> defer.Deferred[None]:  # noqa: N802
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class CryptoServerTests(ServerTestCase):
    def setUp(self) -> None:
        self.ks = make_keystore(Path(self.mktemp()))

    def crypto_config(self, keys: str) -> str:
        return echo_config(extra=f"cms-keystore = {self.ks}\n{keys}")

    @defer.inlineCallbacks
    def test_verify_ca_rejects_unsigned_and_answers_signed(self) -> Any:
        srv = self.start(self.crypto_config("cms-verify-ca = ca\ncms-sign = server"))
        client = CMSCodec(keystore=self.ks, sign="client")
        signed = client.encode((), make_body("echo.request", {"target": "s", "ack": True}, "client", time.time()))
        reps = yield self.ask(
            srv, [[b"", b"echo.request", body("echo.request"), b""], signed.frames()], replies=2
        )
        self.assertEqual(reps[0][1], b"error")
        self.assertIn("not signed", json.loads(reps[0][2])["msg"])
        self.assertNotEqual(reps[0][3], b"")  # error replies are signed too
        self.assertEqual(reps[1][1], b"echo.response")
        # the server signs its replies, and the client can verify them
        from ccnet.cc.message import parse as parse_frames

        rep = parse_frames([b"peer", *reps[1]])
        obj, signer = CMSCodec(keystore=self.ks, verify_ca=("ca",)).decode(rep, time.time())  # type: ignore[arg-type]
        self.assertEqual(obj["orig_target"], "s")
        self.assertEqual(signer.cn, "server")  # type: ignore[union-attr]
        self.assertEqual(srv.stats.totals["count.error.msg.echo.request"], 1)

    @defer.inlineCallbacks
    def test_a_captured_signed_message_is_handled_once(self) -> Any:
        srv = self.start(self.crypto_config("cms-verify-ca = ca"))
        signed = CMSCodec(keystore=self.ks, sign="client").encode(
            (), make_body("echo.request", {"target": "s", "ack": True}, "client", time.time()))
        first, replayed = yield self.ask(srv, [signed.frames(), signed.frames()], replies=2)
        self.assertEqual(first[1], b"echo.response")
        self.assertEqual(replayed[1], b"error")
        self.assertIn("replayed message", json.loads(replayed[2])["msg"])
        self.assertEqual(srv.stats.totals["count.ok"], 1)

    @defer.inlineCallbacks
    def test_signer_revoked_in_the_tls_crl_gets_an_error_reply(self) -> Any:

        from tests.support import test_pki

        pki = test_pki()
        hooks: list[Any] = []
        runtime = Runtime(reactor, None, tls_crl=pki.crl)  # type: ignore[arg-type]  # CC keeps no state
        runtime.on_reload = hooks.append  # type: ignore[method-assign]
        srv = self.start(echo_config(extra=f"cms-keystore = {pki.dir}\ncms-verify-ca = ca"), runtime=runtime)
        self.assertEqual(hooks, [srv.codec.reload_crls])  # SIGHUP re-reads the CRL
        now = time.time()
        revoked = CMSCodec(keystore=pki.dir, sign="revoked").encode((), make_body("echo.request", {"ack": True}, "c", now))
        good = CMSCodec(keystore=pki.dir, sign="client").encode((), make_body("echo.request", {"ack": True}, "c", now))
        reps = yield self.ask(srv, [revoked.frames(), good.frames()], replies=2)
        self.assertEqual(reps[0][1], b"error")
        self.assertIn("is revoked", json.loads(reps[0][2])["msg"])
        self.assertEqual(reps[1][1], b"echo.response")

    @defer.inlineCallbacks
    def test_signature_from_foreign_ca_is_rejected(self) -> Any:
        srv = self.start(self.crypto_config("cms-verify-ca = ca"))
        bad = CMSCodec(keystore=self.ks, sign="foreign").encode(
            (), make_body("echo.request", {"ack": True}, "client", time.time())
        )
        (rep,) = yield self.ask(srv, [bad.frames()])
        self.assertIn("trusted CA", json.loads(rep[2])["msg"])

    @defer.inlineCallbacks
    def test_encrypted_request_is_decrypted_and_answered(self) -> Any:
        srv = self.start(self.crypto_config("cms-verify-ca = ca\ncms-decrypt = server"))
        client = CMSCodec(keystore=self.ks, sign="client", encrypt="server")
        enc = client.encode((), make_body("echo.request", {"target": "e", "ack": True}, "client", time.time()))
        reps = yield self.ask(
            srv, [enc.frames(), [b"", b"echo.request", body("echo.request"), b""]], replies=2
        )
        self.assertEqual(reps[0][1], b"echo.response")
        self.assertEqual(json.loads(reps[0][2])["orig_target"], "e")
        self.assertIn("not encrypted", json.loads(reps[1][2])["msg"])

    @defer.inlineCallbacks
    def test_proxy_forwards_signed_and_encrypted_frames_untouched(self) -> Any:
        remote = self.start(self.crypto_config("cms-verify-ca = ca\ncms-decrypt = server"))
        local = self.start(
            "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\n[routes]\n* = up\n"
            f"[up]\nhandler = proxy\nremote-cc = {remote.endpoint}\n"
        )
        client = CMSCodec(keystore=self.ks, sign="client", encrypt="server")
        enc = client.encode((), make_body("echo.request", {"target": "hop", "ack": True}, "client", time.time()))
        (rep,) = yield self.ask(local, [enc.frames()])
        self.assertEqual(rep[1], b"echo.response")
        self.assertEqual(json.loads(rep[2])["orig_target"], "hop")


class DaemonIntegrationTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_ccnet_daemon_with_only_a_cc_section_answers_echo(self) -> Any:
        from ccnet.config import parse_config
        from ccnet.service import make_service

        tmp = Path(self.mktemp())
        tmp.mkdir()
        config = parse_config(
            IniFile.from_string(
                f"[ccnet]\nstate-dir = {tmp}\nhostname = daemon-host\n"
                f"[store]\nurl = sqlite:///{tmp}/ccnet.db\n" + echo_config()
            )
        )
        service = make_service(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (cc,) = [s for s in service if getattr(s, "name", None) == "cc"]
        (rep,) = yield threads.deferToThread(
            exchange, cc.server.endpoint, [[b"", b"echo.request", body("echo.request"), b""]], 1
        )
        self.assertEqual(rep[1], b"echo.response")
        self.assertEqual(json.loads(rep[2])["hostname"], "daemon-host")


class InvalidLogLimitTests(ServerTestCase):
    def test_invalid_frames_are_logged_rate_limited_but_all_counted(self) -> None:
        from ccnet.cc import server as server_module

        clock = task.Clock()
        srv = self.start(echo_config(), clock=clock)
        with capturedLogs() as events:
            for _ in range(server_module.INVALID_LOG_LIMIT + 5):
                srv.frames_received([b"peer", b"no delimiter"])
            clock.advance(server_module.INVALID_LOG_WINDOW)
            srv.frames_received([b"peer", b"no delimiter"])
        logged = [e for e in events if "Invalid CC message" in e.get("log_format", "")]
        self.assertEqual(len(logged), server_module.INVALID_LOG_LIMIT + 1)
        self.assertEqual(srv.stats.totals["count.invalid"], server_module.INVALID_LOG_LIMIT + 6)


_frame_lists = st.one_of(
    st.lists(st.binary(max_size=30), max_size=7),
    st.tuples(
        st.lists(st.binary(min_size=1, max_size=6), max_size=2),
        st.sampled_from([b"echo.request", b"echo.response", b"echo", b"pub.x", b"error", b"bad type"]),
        st.one_of(
            st.binary(max_size=40),
            st.builds(lambda t, d: json.dumps({"req": t, **d}).encode(),
                      st.sampled_from(["echo.request", "echo", "other"]),
                      st.dictionaries(st.sampled_from(["target", "time", "hostname", "blob_hash"]),
                                      st.one_of(st.none(), st.integers(), st.text(max_size=5)))),
        ),
        st.lists(st.binary(max_size=10), max_size=3),
    ).map(lambda t: [*t[0], b"", t[1], t[2], *t[3]]),
)


class DispatchFuzzTests(ServerTestCase):
    @settings(max_examples=150, deadline=None)
    @given(frames=_frame_lists)
    def test_random_frames_never_break_dispatch(self, frames: list[bytes]) -> None:
        # Trial fails the test on any logged failure, so "no crash" is checked too.
        if not hasattr(self, "srv"):
            self.srv = self.start(echo_config())
        before = sum(self.srv.stats._cells.values())
        self.srv.frames_received(frames)
        self.assertEqual(sum(self.srv.stats._cells.values()), before + 1)
        self.assertEqual(self.srv.stats.totals["count.crashed"], 0)
