"""Graceful lifecycle of the real daemon: SIGTERM drains, SIGHUP reloads, systemd watchdog."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support import test_pki
from tests.test_ops_support import USERS, OpsDaemon, tls_client


def _connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class SigtermTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.pki = test_pki()
        self.folder = Path(self.mktemp()).absolute()

    @defer.inlineCallbacks
    def test_sigterm_lets_an_in_flight_call_finish_refuses_new_connections_and_exits_0(self) -> Any:
        d = OpsDaemon(self.pki, self.folder, grace=10)
        self.addCleanup(d.stop, signal.SIGKILL)
        rpc_port, sup_port = d.port("rpc"), d.port("supervisor")
        outcome: dict[str, Any] = {}

        def slow_call() -> None:
            try:
                r = d.rpc("Test/Slow", "sleep", 2.0, timeout=20)
                outcome["reply"] = (r.status_code, r.json())
            except Exception as exc:  # the assertion below shows what went wrong
                outcome["reply"] = repr(exc)
            outcome["at"] = time.monotonic()

        def scenario() -> tuple[int, float]:
            caller = threading.Thread(target=slow_call)
            caller.start()
            d.wait_log("slow call started")
            signalled = time.monotonic()
            d.daemon.process.send_signal(signal.SIGTERM)
            d.wait_log("Received SIGTERM")
            deadline = time.monotonic() + 5
            while not (_connect_refused(rpc_port) and _connect_refused(sup_port)):
                assert time.monotonic() < deadline, "listeners still accept after SIGTERM"
                time.sleep(0.05)
            outcome["refused_while_in_flight"] = "reply" not in outcome
            caller.join(20)
            code = d.daemon.process.wait(20)
            return code, signalled

        code, signalled = yield deferToThread(scenario)
        self.assertEqual(outcome["reply"], (200, {"OK": True, "Value": 2.0}))
        self.assertTrue(outcome["refused_while_in_flight"])
        self.assertGreater(outcome["at"] - signalled, 1.0)
        self.assertEqual(code, 0, d.daemon.log()[-2000:])
        self.assertIn("ccnet stopped", d.daemon.log())

    @defer.inlineCallbacks
    def test_call_longer_than_shutdown_grace_is_cut_and_daemon_still_exits_0(self) -> Any:
        d = OpsDaemon(self.pki, self.folder, grace=1)
        self.addCleanup(d.stop, signal.SIGKILL)
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["reply"] = d.rpc("Test/Slow", "sleep", 60, timeout=30).status_code
            except Exception as exc:
                outcome["reply"] = type(exc).__name__

        def scenario() -> tuple[int, float]:
            caller = threading.Thread(target=call)
            caller.start()
            d.wait_log("slow call started")
            start = time.monotonic()
            d.daemon.process.send_signal(signal.SIGTERM)
            code = d.daemon.process.wait(20)
            caller.join(20)
            return code, time.monotonic() - start

        code, took = yield deferToThread(scenario)
        self.assertEqual(code, 0)
        self.assertLess(took, 8)
        self.assertEqual(outcome["reply"], "ConnectionError")
        self.assertIn("still open after 1.0s", d.daemon.log())


def _https(port: int, pki: Any) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=tls_client(pki, "client"), timeout=10)


def _call(conn: http.client.HTTPSConnection, path: str, method: str, *args: Any) -> tuple[int, Any]:
    body = urlencode({"method": method, "args": json.dumps(list(args))})
    conn.request("POST", path, body=body, headers={"content-type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


class SighupTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_sighup_reloads_users_and_caps_while_open_connections_keep_working(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)

        def scenario() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            rpc = _https(d.port("rpc"), pki)
            seen["before"] = _call(rpc, "/Framework/Notebook", "set", "hup", "1")
            sock_before = rpc.sock
            assert d.register_ping().status_code == 200
            seen["caps_before"] = d.mplane("GET", "capability").text
            # The operator takes NormalUser away from the client and hides ping from guests.
            (d.folder / "users.conf").write_text(USERS.replace("properties = NormalUser, guest", "properties = guest"))
            (d.folder / "caps.conf").write_text("ping-average: admin\n")
            d.daemon.process.send_signal(signal.SIGHUP)
            d.wait_log("ccnet reloaded")
            seen["after"] = _call(rpc, "/Framework/Notebook", "set", "hup", "2")
            seen["same_connection"] = rpc.sock is sock_before and rpc.sock is not None
            seen["caps_after"] = d.mplane("GET", "capability").text
            seen["health"] = _call(rpc, "/Framework/Notebook", "ping")[0]
            rpc.close()
            return seen

        seen = yield deferToThread(scenario)
        self.assertEqual(seen["before"][0], 200)
        self.assertTrue(seen["before"][1]["OK"], seen["before"])
        self.assertEqual(seen["after"][0], 401)
        self.assertTrue(seen["same_connection"])
        self.assertIn("ping-average-ip4", seen["caps_before"])
        self.assertNotIn("ping-average-ip4", seen["caps_after"])
        self.assertEqual(seen["health"], 200)
        self.assertIsNone(d.daemon.process.poll())

    @defer.inlineCallbacks
    def test_broken_users_file_on_sighup_keeps_the_old_mapping(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)

        def scenario() -> tuple[str, bool]:
            (d.folder / "users.conf").write_text("[user:client\nthis is not ini")
            d.daemon.process.send_signal(signal.SIGHUP)
            d.wait_log("reload failed")
            return d.rpc("Framework/Notebook", "set", "hup-broken", "1").text, d.daemon.process.poll() is None

        body, alive = yield deferToThread(scenario)
        self.assertTrue(json.loads(body)["OK"])
        self.assertTrue(alive)


class CCRoutesReloadTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_sighup_rereads_cc_routes_on_the_bound_socket(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)

        def scenario() -> list[Any]:
            seen: list[Any] = [d.cc_echo()]
            config = d.daemon.config
            config.write_text(config.read_text().replace("[routes]\necho = echo", "[routes]\necho.other = echo"))
            d.daemon.process.send_signal(signal.SIGHUP)
            d.wait_log("cc routes reloaded")
            seen.append(d.cc_echo())
            config.write_text(config.read_text().replace("[routes]\necho.other = echo", "[routes]\necho = echo"))
            d.daemon.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while d.daemon.log().count("cc routes reloaded") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append(d.cc_echo())
            return seen

        seen = yield deferToThread(scenario)
        self.assertEqual(seen, ["echo.response", "error", "echo.response"])


class WatchdogTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_watchdog_pings_at_half_watchdogsec_once_ready(self) -> Any:
        pki = test_pki()
        # Short path: AF_UNIX addresses are limited to 108 bytes, trial's folders are long.
        sock_dir = Path(tempfile.mkdtemp(prefix="ccnet-notify-"))
        self.addCleanup(shutil.rmtree, sock_dir, True)
        address = str(sock_dir / "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(5)
        self.addCleanup(listener.close)
        d = OpsDaemon(pki, Path(self.mktemp()).absolute(), wait=False,
                      env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        self.addCleanup(d.stop)

        def collect() -> list[tuple[float, str]]:
            got: list[tuple[float, str]] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for _, m in got) < 4:
                got.append((time.monotonic(), listener.recv(4096).decode()))
            return got

        got = yield deferToThread(collect)
        messages = [m for _, m in got]
        self.assertTrue(any(m.startswith("READY=1") for m in messages), messages)
        pings = [t for t, m in got if m == "WATCHDOG=1"]
        self.assertGreaterEqual(len(pings), 4, messages)
        gaps = [b - a for a, b in zip(pings[1:], pings[2:], strict=False)]
        # WatchdogSec=0.4s: pings every 0.2s, well inside the deadline.
        self.assertTrue(all(0.1 < g < 0.35 for g in gaps), gaps)
