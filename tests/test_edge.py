"""ccnet.edge against hostile clients: real listeners on loopback, raw sockets in threads.

Deadlines are configured short (a fraction of a second) so the tests stay fast; the
assertions on time are generous bounds, never tight figures (those are in
docs/reliability.md).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ccnet.config import IniFile, parse_config, parse_listen
from ccnet.edge import shim
from ccnet.edge.limits import DEFAULT, METRICS_DEFAULT, EdgeLimits
from ccnet.edge.request import bounded_request
from ccnet.service import ListenerService
from tests.support import test_pki
from tests.test_ops_support import tls_client
from tests.test_tls import material

GET = b"GET /hit HTTP/1.1\r\nHost: x\r\n\r\n"


class Hit(Resource):
    """``GET /hit``: counts the requests it answered; ``POST /hit``: the body's length."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        self.hits += 1
        return b"hit %d\n" % self.hits

    def render_POST(self, request: Request) -> bytes:  # noqa: N802
        assert request.content is not None
        return b"got %d\n" % len(request.content.read())


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    """True when the server closed ``sock`` (EOF or reset) within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True


def _read_reply(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class EdgeTestCase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def listen(self, limits: EdgeLimits, tls: bool = False) -> Any:
        self.hit = Hit()
        root = Resource()
        root.putChild(b"hit", self.hit)
        site = Site(root, requestFactory=bounded_request(1024 * 1024))
        creator = material(test_pki()).server(False, "test") if tls else None
        endpoint = "ssl:0:interface=127.0.0.1" if tls else "tcp:0:interface=127.0.0.1"
        self.listener = ListenerService(reactor, "test", parse_listen(endpoint), site, creator, grace=1.0,
                                        limits=limits)
        self.listener.startService()
        yield self.listener.listening
        self.addCleanup(self.listener.stopService)
        self.port = self.listener.address.port
        self.tls = tls

    def connect(self, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        if self.tls:
            return tls_client(test_pki(), "client").wrap_socket(sock, server_hostname="localhost")
        return sock

    @property
    def closed(self) -> dict[str, int]:
        return self.listener.connections.closed

    @property
    def refused(self) -> dict[str, int]:
        return self.listener.connections.refused


class DeadlineTests(EdgeTestCase):
    @defer.inlineCallbacks
    def test_request_head_trickled_a_byte_at_a_time_is_cut_at_the_head_deadline(self) -> Any:
        yield self.listen(EdgeLimits(head_timeout=1.0))

        def trickle() -> tuple[int, float, bool]:
            sock = self.connect()
            started = time.monotonic()
            sent = 0
            try:
                for byte in GET:  # 31 bytes at 5 bytes/s: 6 s if never cut
                    sock.sendall(bytes([byte]))
                    sent += 1
                    if _closed_by_server(sock, 0.2):
                        return sent, time.monotonic() - started, True
            except OSError:
                return sent, time.monotonic() - started, True
            finally:
                sock.close()
            return sent, time.monotonic() - started, False

        sent, elapsed, cut = yield deferToThread(trickle)
        self.assertTrue(cut, "the trickling client was never cut")
        self.assertLess(sent, len(GET))
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5.0)
        self.assertEqual(self.closed, {"head-timeout": 1})
        self.assertEqual(self.hit.hits, 0)

    @defer.inlineCallbacks
    def test_tls_client_trickling_its_head_is_cut_too(self) -> Any:
        yield self.listen(EdgeLimits(head_timeout=1.0), tls=True)

        def trickle() -> bool:
            sock = self.connect()
            try:
                for byte in GET:
                    sock.sendall(bytes([byte]))
                    if _closed_by_server(sock, 0.2):
                        return True
            except OSError:
                return True
            finally:
                sock.close()
            return False

        self.assertTrue((yield deferToThread(trickle)))
        self.assertEqual(self.closed, {"head-timeout": 1})

    @defer.inlineCallbacks
    def test_keep_alive_connection_idle_between_requests_is_not_cut_by_the_head_deadline(self) -> Any:
        yield self.listen(EdgeLimits(head_timeout=0.5))

        def scenario() -> tuple[bytes, bytes]:
            with self.connect() as sock:
                sock.sendall(GET)
                first = _read_reply(sock)
                time.sleep(1.5)
                sock.sendall(GET)
                return first, _read_reply(sock)

        first, second = yield deferToThread(scenario)
        self.assertIn(b"200 OK", first)
        self.assertIn(b"200 OK", second)
        self.assertEqual(self.closed, {})

    @defer.inlineCallbacks
    def test_body_below_the_minimum_rate_is_cut_and_a_steady_body_is_not(self) -> Any:
        # A body gets head_timeout + one second per 100 bytes it delivered.
        yield self.listen(EdgeLimits(head_timeout=1.0, min_body_rate=100))
        head = b"POST /hit HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"

        def slow() -> tuple[bool, float]:
            with self.connect() as sock:
                sock.sendall(head)
                started = time.monotonic()
                try:
                    for _ in range(100):  # 10 bytes/s: 100 s if never cut
                        sock.sendall(b"x")
                        if _closed_by_server(sock, 0.1):
                            return True, time.monotonic() - started
                except OSError:
                    return True, time.monotonic() - started
                return False, time.monotonic() - started

        def steady() -> bytes:
            with self.connect() as sock:
                sock.sendall(head)
                for _ in range(10):  # 100 bytes every 0.1 s: 1000 bytes/s
                    sock.sendall(b"y" * 100)
                    time.sleep(0.1)
                return _read_reply(sock)

        cut, elapsed = yield deferToThread(slow)
        self.assertTrue(cut, "the slow body was never cut")
        self.assertLess(elapsed, 6.0)
        self.assertEqual(self.closed, {"slow-body": 1})
        reply = yield deferToThread(steady)
        self.assertIn(b"got 1000", reply)
        self.assertEqual(self.closed, {"slow-body": 1})


class HTTP10KeepAliveTests(EdgeTestCase):

    @defer.inlineCallbacks
    def test_http10_client_asking_for_keep_alive_keeps_its_connection(self) -> Any:
        yield self.listen(EdgeLimits())

        def scenario() -> tuple[bytes, bytes, bool]:
            with self.connect() as sock:
                ask = b"GET /hit HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
                sock.sendall(ask)
                first = _read_reply(sock)
                sock.sendall(ask)
                second = _read_reply(sock)
                return first, second, _closed_by_server(sock, 0.5)

        first, second, closed = yield deferToThread(scenario)
        self.assertIn(b"200 OK", first)
        self.assertIn(b"Connection: keep-alive", first)
        self.assertTrue(second.endswith(b"hit 2\n"), second)  # the second call, same connection
        self.assertFalse(closed)

    @defer.inlineCallbacks
    def test_http10_client_without_keep_alive_is_closed_after_its_reply(self) -> Any:
        yield self.listen(EdgeLimits())

        def scenario() -> tuple[bytes, bool]:
            with self.connect() as sock:
                sock.sendall(b"GET /hit HTTP/1.0\r\n\r\n")
                return _read_reply(sock), _closed_by_server(sock, 5.0)

        reply, closed = yield deferToThread(scenario)
        self.assertIn(b"200 OK", reply)
        self.assertNotIn(b"keep-alive", reply.lower())
        self.assertTrue(closed)


class CapTests(EdgeTestCase):
    @defer.inlineCallbacks
    def test_connections_over_the_per_peer_and_listener_caps_are_refused(self) -> Any:
        yield self.listen(EdgeLimits(max_connections=3, max_connections_per_peer=2))

        def scenario() -> list[bool]:
            held = []
            outcome = []
            for source in ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.3"):
                sock = self.connect(source)
                outcome.append(_closed_by_server(sock, 2.0))  # generous: a loaded reactor accepts late
                held.append(sock)
            # The admitted ones are served.
            held[0].sendall(GET)
            outcome.append(b"200 OK" in _read_reply(held[0]))
            for sock in held:
                sock.close()
            return outcome

        outcome = yield deferToThread(scenario)
        # .1 admitted twice, its third refused (per peer), .2 admitted, .3 refused (listener full)
        self.assertEqual(outcome, [False, False, True, False, True, True])
        self.assertEqual(self.refused, {"max-connections-per-peer": 1, "max-connections": 1})

    @defer.inlineCallbacks
    def test_tls_connection_over_the_cap_is_closed_before_any_handshake(self) -> Any:
        yield self.listen(EdgeLimits(max_connections_per_peer=1), tls=True)

        def scenario() -> tuple[bytes, bool]:
            first = self.connect()  # handshake done, admitted
            raw = socket.create_connection(("127.0.0.1", self.port))
            refused = _closed_by_server(raw, 2.0)  # EOF without a ServerHello
            raw.close()
            first.sendall(GET)
            reply = _read_reply(first)
            first.close()
            return reply, refused

        reply, refused = yield deferToThread(scenario)
        self.assertTrue(refused)
        self.assertIn(b"200 OK", reply)
        self.assertEqual(self.refused, {"max-connections-per-peer": 1})

    def test_shipped_defaults_bound_every_listener_metrics_port_included(self) -> None:
        self.assertEqual(DEFAULT.head_timeout, 30.0)
        self.assertLessEqual(METRICS_DEFAULT.max_connections, 64)
        self.assertLessEqual(DEFAULT.max_connections, 1024)


class PipeliningTests(EdgeTestCase):
    @defer.inlineCallbacks
    def check_non_reader_is_paused(self, tls: bool) -> Any:
        yield self.listen(DEFAULT, tls=tls)
        batch = GET * 1000

        def attack() -> int:
            sock = self.connect(rcvbuf=4096)  # and never read
            sent = 0
            blocked_since = None
            sock.settimeout(0.05)
            # Until the server stops reading us (sends block for 1 s) or 40 MB went in.
            while sent < 40 * 1024 * 1024:
                try:
                    sent += sock.send(batch)
                    blocked_since = None
                except (TimeoutError, ssl.SSLWantWriteError):
                    blocked_since = blocked_since or time.monotonic()
                    if time.monotonic() - blocked_since > 1.0:
                        break
            self.attacker = sock
            return sent

        def polite() -> list[float]:
            latencies = []
            with self.connect() as sock:
                for _ in range(10):
                    started = time.monotonic()
                    sock.sendall(GET)
                    assert b"200 OK" in _read_reply(sock)
                    latencies.append(time.monotonic() - started)
            return latencies

        sent = yield deferToThread(attack)
        self.addCleanup(self.attacker.close)
        # The server may still be answering what it had read when the sends began to
        # block (slowly, on a loaded machine): wait (bounded) until it stops for good.
        hits_when_blocked = -1
        for _ in range(40):
            if self.hit.hits == hits_when_blocked:
                break
            hits_when_blocked = self.hit.hits
            yield task.deferLater(reactor, 0.5, lambda: None)
        latencies = yield deferToThread(polite)
        # Stopped reading: far less than the 40 MB (1.3 million requests) went in...
        self.assertLess(sent, 30 * 1024 * 1024)
        self.assertLess(hits_when_blocked, sent // len(GET))
        # ... Twisted holds a bounded amount of reply bytes for it ...
        for protocol in self.listener.connections.protocols:
            self.assertLess(shim.unsent_bytes(shim.socket_transport(protocol)), 1024 * 1024)
        # ... and the polite client is answered meanwhile, no more requests of the attacker.
        self.assertLess(max(latencies), 2.0)
        self.assertEqual(self.hit.hits, hits_when_blocked + 10)

    def test_pipelining_client_that_never_reads_is_paused_and_others_are_served(self) -> Any:
        return self.check_non_reader_is_paused(tls=False)

    def test_pipelining_tls_client_that_never_reads_is_paused_and_others_are_served(self) -> Any:
        return self.check_non_reader_is_paused(tls=True)


class ConfigTests(unittest.TestCase):
    def parse(self, text: str) -> Any:
        pki = test_pki()
        base = (f"[tls]\nca = {pki.ca_cert}\ncert = {pki.cert('server')}\nkey = {pki.key('server')}\n"
                "[rpc]\nlisten = ssl:0\n[rpc:Framework/Notebook]\n"
                "class = ccnet.rpc.examples.notebook:NotebookService\n[metrics]\nlisten = tcp:0\n")
        return parse_config(IniFile.from_string(base + text, "/etc/ccnet.ini"))

    def test_ccnet_section_sets_defaults_and_a_listener_section_overrides_them(self) -> None:
        config = self.parse("[ccnet]\nhead-timeout = 5\nmin-body-rate = 2 KB\nmax-connections = 100\n"
                            "max-connections-per-peer = 10\n")
        self.assertEqual(config.limits("rpc"), EdgeLimits(5.0, 2048, 100, 10))
        self.assertEqual(config.limits("supervisor"), EdgeLimits(5.0, 2048, 100, 10))
        self.assertEqual(config.limits("metrics"), METRICS_DEFAULT)
        self.assertEqual(self.parse("").limits("rpc"), DEFAULT)

    def test_listener_section_keys(self) -> None:
        pki = test_pki()
        text = (f"[tls]\nca = {pki.ca_cert}\ncert = {pki.cert('server')}\nkey = {pki.key('server')}\n"
                "[rpc]\nlisten = ssl:0\nmax-connections = 7\nhead-timeout = 2.5\n[rpc:Framework/Notebook]\n"
                "class = ccnet.rpc.examples.notebook:NotebookService\n"
                "[metrics]\nlisten = tcp:0\nmax-connections-per-peer = 3\n")
        config = parse_config(IniFile.from_string(text, "/etc/ccnet.ini"))
        self.assertEqual(config.limits("rpc"), EdgeLimits(2.5, 1024, 7, 64))
        self.assertEqual(config.limits("metrics").max_connections_per_peer, 3)
        self.assertEqual(config.limits("metrics").max_connections, 64)

    def test_bad_value_names_file_section_and_key(self) -> None:
        from ccnet.config import ConfigError

        e = self.assertRaises(ConfigError, self.parse, "[ccnet]\nmax-connections = 0\n")
        self.assertIn("/etc/ccnet.ini: [ccnet] max-connections: an integer >= 1", str(e))
        e = self.assertRaises(ConfigError, self.parse, "[ccnet]\nmin-body-rate = fast\n")
        self.assertIn("[ccnet] min-body-rate", str(e))


class FormBodyTests(unittest.TestCase):
    """A POST's body is read as a form only when its content type is a form's (twisted.web's
    email-package parse is skipped for JSON bodies); the form arguments are as before."""

    def received(self, content_type: bytes, body: bytes) -> Request:
        from twisted.web.test.requesthelper import DummyChannel

        seen: list[Request] = []
        request = bounded_request(1024)(DummyChannel())
        request.process = lambda: seen.append(request)  # type: ignore[method-assign]
        request.requestHeaders.setRawHeaders(b"content-type", [content_type])
        request.gotLength(len(body))
        request.handleContentChunk(body)
        request.requestReceived(b"POST", b"/run?page=2", b"HTTP/1.1")
        self.assertEqual(seen, [request])
        return request

    def test_form_bodies_are_parsed_whatever_the_spelling(self) -> None:
        for ctype in (b"application/x-www-form-urlencoded", b" Application/X-WWW-Form-URLencoded ; charset=utf-8"):
            request = self.received(ctype, b"label=ping&when=now")
            self.assertEqual(request.args, {b"page": [b"2"], b"label": [b"ping"], b"when": [b"now"]})

    def test_json_bodies_are_not_forms(self) -> None:
        request = self.received(b"application/x-mplane+json", b'{"a=b": "c&d=e"}')
        self.assertEqual(request.args, {b"page": [b"2"]})
        self.assertEqual(request.content.read(), b'{"a=b": "c&d=e"}')
