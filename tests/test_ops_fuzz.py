"""Hypothesis-driven garbage against a real daemon: HTTP bodies for RPC and mPlane, raw bytes
on every listening port (TLS, plain HTTP, ZeroMQ). The daemon stays up, answers each bad
input with a 4xx (never a 5xx), and a well-behaved client is served all along."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support import test_pki
from tests.test_ops_support import MPLANE_JSON, OpsDaemon

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5),
    max_leaves=25,
)
mplane_keys = st.sampled_from(["capability", "specification", "result", "receipt", "envelope", "withdrawal",
                               "redemption", "interrupt", "exception", "version", "registry", "label", "when",
                               "token", "parameters", "results", "resultvalues", "contents", "link"])
mplane_like = st.dictionaries(mplane_keys, json_values, max_size=8)
content_types = st.sampled_from([None, "application/x-www-form-urlencoded", "application/json",
                                 "multipart/form-data; boundary=x", "text/plain", "application/x-mplane+json",
                                 "application/x-www-form-urlencoded; charset=\x00\xff"])


class _ValidClient:
    """Keeps calling RPC, mPlane and CC the normal way while the fuzzing runs."""

    def __init__(self, d: OpsDaemon) -> None:
        self.d = d
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rpc = self.d.session()
        while not self._stop.is_set():
            try:
                r = self.d.rpc("Framework/Notebook", "ping", session=rpc)
                assert r.status_code == 200 and r.json()["OK"], r.text
                r = self.d.mplane("GET", "show/capability")
                assert r.status_code == 200, r.text
                assert self.d.cc_echo() == "echo.response"
                self.ok += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            self._stop.wait(0.05)

    def __enter__(self) -> _ValidClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)


class FuzzTests(unittest.TestCase):
    timeout = 120
    daemon: OpsDaemon | None = None

    def setUp(self) -> None:
        self.pki = test_pki()
        if FuzzTests.daemon is None:
            import atexit

            FuzzTests.daemon = OpsDaemon(self.pki, Path(self.mktemp()).absolute())
            atexit.register(FuzzTests.daemon.stop)
        self.d = FuzzTests.daemon

    def assertAliveAndServed(self, client: _ValidClient) -> None:  # noqa: N802 (unittest style)
        self.assertIsNone(self.d.daemon.process.poll(), "daemon died")
        self.assertEqual(client.failures, [])
        self.assertGreater(client.ok, 0)

    @defer.inlineCallbacks
    def test_rpc_bodies(self) -> Any:
        d = self.d
        statuses: set[int] = set()
        session = d.session()

        field = st.one_of(st.text(max_size=60), json_values.map(json.dumps))
        methods = st.sampled_from(["ping", "echo", "whoami", "set", "get", "list", "delete", "sleep",
                                   "listFiles", "getFileSize", "streamToClient", ""]) | st.text(max_size=20)
        form = st.fixed_dictionaries(
            {"method": methods},
            optional={"args": field, "rawContent": field, "extraCredentials": field, "clientVO": field, "x": field})

        @FUZZ
        @given(body=st.one_of(st.binary(max_size=2048), form,
                              st.dictionaries(st.sampled_from(["method", "args", "rawContent", "x"]), field,
                                              max_size=4)),
               ctype=content_types,
               path=st.sampled_from(["/Framework/Notebook", "/Test/Slow", "/Framework/Files", "/", "/A/B"]))
        def one(body: Any, ctype: str | None, path: str) -> None:
            headers = {"content-type": ctype} if ctype else {}
            r = session.post(d.url("rpc", path), data=body, headers=headers, timeout=30)
            statuses.add(r.status_code)
            # 501 is DIRAC's "no such export"; everything else bad is a 4xx.
            assert r.status_code < 500 or r.status_code == 501, (body, ctype, path, r.status_code, r.text[:300])
            # Only twisted.web's own header parser answers without a JSON body (bare 400).
            json_reply = r.headers.get("content-type", "").startswith("application/json")
            assert json_reply or (r.status_code == 400 and not r.content), (r.status_code, r.headers)

        def run() -> _ValidClient:
            with _ValidClient(d) as client:
                one()
            return client

        client = yield deferToThread(run)
        self.assertAliveAndServed(client)
        self.assertIn(200, statuses)

    @defer.inlineCallbacks
    def test_mplane_bodies(self) -> Any:
        d = self.d
        component, client_s = d.session("component"), d.session("client")

        @FUZZ
        @given(body=st.one_of(st.binary(max_size=2048), mplane_like.map(json.dumps), json_values.map(json.dumps)),
               target=st.sampled_from([("component", "register/capability"), ("component", "register/result"),
                                       ("client", "register/specification"), ("client", "register/redemption"),
                                       ("client", ""), ("component", "show/specification")]),
               ctype=st.sampled_from([MPLANE_JSON, "application/json", "text/plain"]))
        def one(body: str | bytes, target: tuple[str, str], ctype: str) -> None:
            who, path = target
            s = component if who == "component" else client_s
            r = s.post(d.url("supervisor", f"/{path}"), data=body, headers={"content-type": ctype}, timeout=30)
            assert r.status_code < 500, (body, target, r.status_code, r.text[:300])

        def run() -> _ValidClient:
            with _ValidClient(d) as client:
                one()
            return client

        client = yield deferToThread(run)
        self.assertAliveAndServed(client)

    @defer.inlineCallbacks
    def test_raw_garbage_on_every_port(self) -> Any:
        d = self.d
        ports = {name: d.port(name) for name in ("rpc", "supervisor", "metrics")}
        ports["cc"] = d.cc_port
        prefixes = {
            "tls": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello's start
            "http": b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n",
            "zmtp": b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00NULL",  # a ZMTP 3 greeting's start
            "none": b"",
        }

        @FUZZ
        @given(port=st.sampled_from(sorted(ports)), prefix=st.sampled_from(sorted(prefixes)),
               garbage=st.binary(max_size=4096), half_close=st.booleans())
        def one(port: str, prefix: str, garbage: bytes, half_close: bool) -> None:
            with socket.create_connection(("127.0.0.1", ports[port]), timeout=5) as s:
                try:
                    s.sendall(prefixes[prefix] + garbage)
                    if half_close:
                        s.shutdown(socket.SHUT_WR)
                    s.settimeout(0.2)
                    s.recv(65536)
                except (TimeoutError, ConnectionError, OSError):
                    pass

        def run() -> _ValidClient:
            with _ValidClient(d) as client:
                one()
                # And a real TLS client that stops half-way through its handshake.
                for name in ("rpc", "supervisor"):
                    ctx = ssl.create_default_context()
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                    raw = socket.create_connection(("127.0.0.1", ports[name]))
                    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                    obj = ctx.wrap_bio(incoming, outgoing)
                    try:
                        obj.do_handshake()
                    except ssl.SSLWantReadError:
                        raw.sendall(outgoing.read())  # the ClientHello, then silence
                    raw.close()
                time.sleep(0.3)
            return client

        client = yield deferToThread(run)
        self.assertAliveAndServed(client)


_SECTIONS = ["ccnet", "tls", "store", "rpc", "rpc:Framework/Notebook", "rpc:bad name", "supervisor", "cc",
             "ccserver", "routes", "echo", "metrics", "component", "Roles", "unknown"]
_KEYS = ["listen", "url", "users", "state-dir", "shutdown-grace", "hostname", "ca", "cert", "key", "crl",
         "min-version", "allow-proxies", "allow-anonymous", "max-body", "threads", "class", "cc-socket",
         "cc-role", "handler", "echo", "stats-period", "max-body-size", "caps", "admin-role", "long-poll",
         "result-expiry", "registries", "components", "supervisor", "x"]
_VALUES = st.one_of(
    st.sampled_from(["ssl:0", "tcp:0:interface=127.0.0.1", "systemd:domain=INET:index=0", "ssl:port",
                     "tcp://127.0.0.1:0", "tcp://*:x", "sqlite:///:memory:", "postgresql://u@h/db", "ftp://x",
                     "yes", "no", "maybe", "10", "-1", "1e400", "64 KB", "12 parsecs", "local", "remote",
                     "ccnet.rpc.examples.notebook:NotebookService", "ccnet.rpc.examples.notebook:Nope",
                     "no_such_module_xyz:Thing", "echo", "%(here)s", "", "7d", "/nonexistent/file"]),
    st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20),
)


@st.composite
def ini_texts(draw: Any) -> str:
    out = []
    for name in draw(st.lists(st.sampled_from(_SECTIONS), max_size=6)):
        out.append(f"[{name}]")
        for key in draw(st.lists(st.sampled_from(_KEYS), max_size=5, unique=True)):
            out.append(f"{key} = {draw(_VALUES)}")
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), draw(st.text(max_size=30)))
    return "\n".join(out) + "\n"


class ParserFuzzTests(unittest.TestCase):
    """In-process parsers: malformed input is a clean, typed error, never a crash."""

    @FUZZ
    @given(text=ini_texts())
    def test_config_files_fail_only_with_config_errors(self, text: str) -> None:
        from ccnet.config import ConfigError, IniFile, parse_config

        try:
            parse_config(IniFile.from_string(text, Path("/nonexistent/ccnet.ini")))
        except ConfigError as exc:
            self.assertIn("/nonexistent/ccnet.ini", str(exc))

    @FUZZ
    @given(doc=st.one_of(mplane_like, json_values, st.lists(mplane_like, max_size=3)),
           raw=st.binary(max_size=200))
    def test_mplane_json_fails_only_with_model_errors(self, doc: Any, raw: bytes) -> None:
        from ccnet.mplane.model import ModelError, parse_json

        for data in (json.dumps(doc).encode(), raw):
            try:
                parse_json(data)
            except ModelError:
                pass
