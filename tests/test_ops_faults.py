"""Faults: slow and stuck clients, kill -9 under load, the database going away."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import requests
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.python import log
from twisted.trial import unittest

from ccnet.mplane.model import parse_json
from tests.support import PG_DSN, TCPProxy, pg_port, pg_url, start_service, test_pki, tls_section
from tests.test_mplane_supervisor import result_for
from tests.test_ops_support import SPEC, USERS, OpsDaemon, tls_client

MB = 1024 * 1024


def rss(d: OpsDaemon) -> float:
    m = re.search(r"^ccnet_process_resident_memory_bytes (\S+)$", d.metrics(), re.M)
    assert m is not None
    return float(m.group(1))


def timed_calls(d: OpsDaemon, n: int) -> list[float]:
    """``n`` RPC pings on fresh connections: the latency of each (raises on a failure)."""
    out = []
    for _ in range(n):
        start = time.monotonic()
        r = d.rpc("Framework/Notebook", "ping", timeout=10)
        assert r.status_code == 200 and r.json()["OK"], r.text
        out.append(time.monotonic() - start)
    return out


class SlowClientTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_slowloris_and_stuck_handshakes_do_not_slow_other_clients(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)

        def scenario() -> tuple[list[float], list[float], float]:
            baseline = timed_calls(d, 10)
            before = rss(d)
            held: list[Any] = []
            for _ in range(40):  # stuck before the TLS handshake
                held.append(socket.create_connection(("127.0.0.1", d.port("rpc"))))
            for _ in range(24):  # plain-HTTP metrics listener, half a request line (32 per peer)
                s = socket.create_connection(("127.0.0.1", d.port("metrics")))
                s.sendall(b"GET /metr")
                held.append(s)
            slow = []
            for _ in range(20):  # handshake done, headers dripping in
                raw = socket.create_connection(("127.0.0.1", d.port("supervisor")))
                conn = tls_client(pki, "client").wrap_socket(raw, server_hostname="localhost")
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                slow.append(conn)
            during = []
            for i in range(10):
                for conn in slow:
                    conn.sendall(b"X-Slow-%d: y\r\n" % i)
                during += timed_calls(d, 2)
            after = rss(d)
            for s in held + slow:
                s.close()
            return baseline, during, after - before

        baseline, during, grown = yield deferToThread(scenario)
        self.assertLess(max(during), max(1.0, 10 * max(baseline)))
        self.assertLess(grown, 30 * MB)

    @defer.inlineCallbacks
    def test_client_that_never_reads_a_large_download_holds_no_memory(self) -> Any:
        pki = test_pki()
        folder = Path(self.mktemp()).absolute()
        d = OpsDaemon(pki, folder)
        self.addCleanup(d.stop)
        with open(folder / "files" / "big.bin", "wb") as f:
            f.truncate(200 * MB)

        def scenario() -> tuple[float, list[float]]:
            before = rss(d)
            stuck = []
            for _ in range(3):
                raw = socket.create_connection(("127.0.0.1", d.port("rpc")))
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                conn = tls_client(pki, "client").wrap_socket(raw, server_hostname="localhost")
                body = 'method=streamToClient&rawContent=true&args=%5B%22big.bin%22%5D'
                conn.sendall(("POST /Framework/Files HTTP/1.1\r\nHost: x\r\n"
                              "Content-Type: application/x-www-form-urlencoded\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
                stuck.append(conn)  # ... and never read
            time.sleep(1.0)
            latencies = timed_calls(d, 10)
            grown = rss(d) - before
            for conn in stuck:
                conn.close()
            return grown, latencies

        grown, latencies = yield deferToThread(scenario)
        # 3 x 200 MB requested: only socket buffers and a producer's chunk each are held.
        self.assertLess(grown, 30 * MB)
        self.assertLess(max(latencies), 2.0)


class IdleTimeoutTests(unittest.TestCase):
    """A connection that sends nothing (not even a TLS handshake) is closed after idle-timeout."""

    timeout = 30

    @defer.inlineCallbacks
    def test_silent_and_half_handshake_connections_are_closed(self) -> Any:
        pki = test_pki()
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        text = f"[ccnet]\nstate-dir = {tmp}\nidle-timeout = 1\n" + tls_section(pki) + "[rpc]\nlisten = ssl:0:interface=127.0.0.1\n"
        service = yield start_service(self, text, tmp)
        port = service.listeners["rpc"].address.port

        def closed_within(seconds: float, first: bytes) -> float:
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", port)) as s:
                if first:
                    s.sendall(first)
                s.settimeout(seconds)
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
            return time.monotonic() - start

        silent = yield deferToThread(closed_within, 5, b"")
        half = yield deferToThread(closed_within, 5, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertLess(silent, 3)
        self.assertLess(half, 3)


class WriteStallTests(unittest.TestCase):
    """A client that stops reading a reply is disconnected after write-stall; a slow reader is not."""

    timeout = 60

    @defer.inlineCallbacks
    def test_reader_that_stops_is_cut_and_a_slow_reader_is_not(self) -> Any:
        pki = test_pki()
        tmp = Path(self.mktemp()).absolute()
        (tmp / "files").mkdir(parents=True)
        with open(tmp / "files" / "big.bin", "wb") as f:
            f.truncate(100 * MB)
        (tmp / "users.conf").write_text(USERS)
        text = (f"[ccnet]\nstate-dir = {tmp}\nusers = users.conf\nwrite-stall = 1\n" + tls_section(pki)
                + "[rpc]\nlisten = ssl:0:interface=127.0.0.1\n"
                + "[rpc:Framework/Files]\nclass = ccnet.rpc.examples.files:FilesService\nroot = files\n")
        service = yield start_service(self, text, tmp)
        listener = service.listeners["rpc"]
        port = listener.address.port
        request = (b"POST /Framework/Files HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 62\r\n\r\n"
                   b"method=streamToClient&rawContent=true&args=%5B%22big.bin%22%5D")

        def download(read_every: float | None, seconds: float) -> tuple[int, bool]:
            raw = socket.create_connection(("127.0.0.1", port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            conn = tls_client(pki, "client").wrap_socket(raw, server_hostname="localhost")
            conn.sendall(request)
            got, cut = 0, False
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline:
                    if read_every is None:
                        time.sleep(0.1)
                        continue
                    chunk = conn.recv(65536)
                    if not chunk:
                        cut = True
                        break
                    got += len(chunk)
                    time.sleep(read_every)
                if read_every is None:  # now look: was the connection reset meanwhile?
                    conn.settimeout(2)
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            cut = True
                            break
            except (ConnectionError, ssl.SSLError, TimeoutError):
                cut = True
            conn.close()
            return got, cut

        _, stuck_cut = yield deferToThread(download, None, 3.0)
        got, slow_cut = yield deferToThread(download, 0.1, 3.0)
        self.assertTrue(stuck_cut)
        self.assertFalse(slow_cut)
        self.assertGreater(got, 64 * 1024)


class KillNineTests(unittest.TestCase):
    """kill -9 in the middle of writes; after a restart every acknowledged write is there."""

    timeout = 90

    @defer.inlineCallbacks
    def test_acknowledged_rpc_writes_and_mplane_results_survive_kill_9(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(lambda: d.stop())
        acked_keys: dict[str, int] = {}
        acked_results: list[str] = []
        stop = threading.Event()

        def rpc_writer(n: int) -> None:
            s = d.session()
            i = 0
            while not stop.is_set():
                key = f"k9-{n}-{i}"
                try:
                    r = d.rpc("Framework/Notebook", "set", key, i, session=s, timeout=5)
                except requests.RequestException:
                    return
                if r.status_code == 200 and r.json().get("OK"):
                    acked_keys[key] = i
                i += 1

        def mplane_worker() -> None:
            assert d.register_ping().status_code == 200
            i = 0
            while not stop.is_set():
                token = f"{i:032x}"
                try:
                    if d.mplane("POST", "register/specification", dict(SPEC, token=token)).status_code != 200:
                        return
                    env = parse_json(d.mplane("GET", "show/specification", who="component").content)
                    for spec in getattr(env, "contents", []):
                        if getattr(spec, "kind", "") == "specification" and spec.label == "ping-average-ip4":
                            r = d.mplane("POST", "register/result", result_for(spec), who="component")
                            if r.status_code == 200:
                                acked_results.append(token)
                except requests.RequestException:
                    return
                i += 1

        def scenario() -> None:
            workers = [threading.Thread(target=rpc_writer, args=(n,)) for n in range(2)]
            workers.append(threading.Thread(target=mplane_worker))
            for w in workers:
                w.start()
            deadline = time.monotonic() + 10
            while (len(acked_keys) < 40 or len(acked_results) < 5) and time.monotonic() < deadline:
                time.sleep(0.05)
            d.daemon.process.send_signal(signal.SIGKILL)
            d.daemon.process.wait(10)
            stop.set()
            for w in workers:
                w.join(15)
            d.restart()

        yield deferToThread(scenario)
        self.assertGreater(len(acked_keys), 20)
        self.assertGreater(len(acked_results), 2)

        def check() -> tuple[list[str], list[str]]:
            s = d.session()
            lost = [k for k, v in acked_keys.items()
                    if d.rpc("Framework/Notebook", "get", k, session=s).json().get("Value", {}).get("value") != v]
            missing = []
            for token in acked_results:
                r = d.mplane("GET", f"show/result?token={token}")
                if '"result"' not in r.text:
                    missing.append(token)
            return lost, missing

        lost, missing = yield deferToThread(check)
        self.assertEqual(lost, [])
        self.assertEqual(missing, [])


class PostgreSQLOutageTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        try:
            psycopg.connect(PG_DSN, connect_timeout=3).close()
        except psycopg.Error as exc:
            raise unittest.SkipTest(f"PostgreSQL not reachable at {PG_DSN}: {exc}") from None

    @defer.inlineCallbacks
    def test_database_outage_gives_clean_errors_then_recovers(self) -> Any:
        proxy = TCPProxy(pg_port(PG_DSN))
        proxy.start()
        self.addCleanup(proxy.stop)
        store = pg_url(PG_DSN, port=proxy.number)
        d = OpsDaemon(test_pki(), Path(self.mktemp()).absolute(), store=store)
        self.addCleanup(d.stop)
        run = f"{time.time():.0f}"

        def ready() -> int:
            return requests.get(d.url("metrics", "/ready"), timeout=15).status_code

        def before() -> tuple[int, int]:
            # The daemon listens before every part has opened its state: wait for that
            # (bounded), it is the outage that is under test here.
            deadline = time.monotonic() + 15
            while ready() != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            return d.rpc("Framework/Notebook", "set", f"pg-{run}-a", 1).status_code, ready()

        self.assertEqual((yield deferToThread(before)), (200, 200))
        yield proxy.cut()

        def during() -> dict[str, Any]:
            start = time.monotonic()
            r = d.rpc("Framework/Notebook", "set", f"pg-{run}-b", 2, timeout=30)
            r2 = d.rpc("Framework/Notebook", "get", f"pg-{run}-a", timeout=30)
            m = d.register_ping()
            return {"set": (r.status_code, r.json()), "get": (r2.status_code, r2.json()),
                    "mplane": m.status_code, "took": time.monotonic() - start, "ready": ready(),
                    "health": d.rpc("Framework/Notebook", "ping").status_code}

        seen = yield deferToThread(during)
        for name in ("set", "get"):
            status, body = seen[name]
            self.assertEqual(status, 503, seen)
            self.assertFalse(body["OK"], seen)
            self.assertNotIn("Traceback", body["Message"])
        self.assertGreaterEqual(seen["mplane"], 500)
        self.assertLess(seen["took"], 20)
        self.assertEqual(seen["ready"], 503)
        self.assertEqual(seen["health"], 200)  # what needs no database keeps working
        log.msg(f"store cut figures: three calls in {seen['took']:.3f}s")
        proxy.restore()

        def after() -> tuple[int, Any, Any, int]:
            # The pool's connections all died with the cut: the very first call must work.
            r = d.rpc("Framework/Notebook", "set", f"pg-{run}-c", 3, timeout=15)
            got = d.rpc("Framework/Notebook", "get", f"pg-{run}-c").json()
            return r.status_code, r.json().get("OK"), got.get("Value", {}).get("value"), ready()

        self.assertEqual((yield deferToThread(after)), (200, True, 3, 200))
        self.assertIsNone(d.daemon.process.poll())

