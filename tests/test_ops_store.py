"""The daemon on PostgreSQL: fresh databases, a database that stalls or goes away.

Real ``twistd -n ccnet`` subprocesses, real PostgreSQL (CCNET_TEST_PG_DSN) reached
through a TCP proxy the test cuts, stalls and restores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.python import log
from twisted.trial import unittest

from tests.support import (
    PG_DSN,
    TCPProxy,
    create_database,
    drop_database,
    free_port,
    pg_port,
    pg_reachable,
    pg_url,
    start_daemon,
    test_pki,
    tls_section,
)
from tests.test_ops_support import SPEC, USERS, OpsDaemon

STORE_TIMEOUT = 2.0


def _skip_without_pg() -> None:
    why = pg_reachable()
    if why is not None:
        raise unittest.SkipTest(why)


def all_parts_config(folder: Path, store: str) -> str:
    """Supervisor, a component registering with it, RPC Notebook and metrics: every part
    that migrates a schema, in one daemon on one database."""
    pki = test_pki()
    (folder / "users.conf").write_text(USERS + "\n[user:self]\ndn = /C=IT/O=ccnet/OU=Supervisors/CN=supervisor\n"
                                       "group = probes\nproperties = component\n")
    (folder / "caps.conf").write_text("ping: guest\n")
    port = free_port()
    return (
        f"[ccnet]\nstate-dir = var\nusers = users.conf\n\n{tls_section(pki, 'supervisor')}"
        f"\n[store]\nurl = {store}\ntimeout = {STORE_TIMEOUT}\n"
        f"\n[supervisor]\nlisten = ssl:{port}:interface=127.0.0.1\ncaps = caps.conf\ncomponent-role = component\n"
        f"\n[component]\nsupervisor = https://localhost:{port}\nretry-min = 0.2\nretry-max = 1\n"
        "\n[probe:ping]\nmodule = ccnet.mplane.probes.ping\nip4addr = 127.0.0.1\ndestinations4 = 127.0.0.1\n"
        "\n[rpc]\nlisten = ssl:0:interface=127.0.0.1\n"
        "\n[rpc:Framework/Notebook]\nclass = ccnet.rpc.examples.notebook:NotebookService\n"
        "\n[metrics]\nlisten = tcp:0:interface=127.0.0.1\n"
    )


def session(who: str) -> requests.Session:
    pki = test_pki()
    s = requests.Session()
    s.trust_env = False
    s.cert = pki.pair(who)
    s.verify = str(pki.ca_cert)
    return s


class FreshDatabaseStartTests(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        _skip_without_pg()

    @defer.inlineCallbacks
    def test_every_part_works_on_the_first_start_on_an_empty_database(self) -> Any:
        for attempt in range(3):
            yield self.start_and_check(attempt)

    @defer.inlineCallbacks
    def start_and_check(self, attempt: int) -> Any:
        if True:
            dsn = create_database()
            self.addCleanup(drop_database, dsn)
            folder = Path(self.mktemp()).absolute()
            folder.mkdir()
            daemon = yield deferToThread(start_daemon, all_parts_config(folder, dsn), folder, "--log-format", "json")
            self.addCleanup(daemon.stop)

            def check() -> dict[str, Any]:
                client, admin = session("client"), session("admin")
                sup = f"https://127.0.0.1:{daemon.ports['supervisor']}"
                deadline = time.monotonic() + 30
                labels: list[str] = []
                while time.monotonic() < deadline:  # the component registers right after start
                    caps = client.get(f"{sup}/capability", timeout=10).json()
                    labels = sorted(c["capability"] + ":" + c["label"] for c in caps.get("contents", []))
                    if labels:
                        break
                    time.sleep(0.1)
                status = admin.get(f"{sup}/api/status", timeout=10).json()
                ready = requests.get(f"http://127.0.0.1:{daemon.ports['metrics']}/ready", timeout=15)
                rpc = f"https://127.0.0.1:{daemon.ports['rpc']}/Framework/Notebook"
                stored = client.post(rpc, data={"method": "set", "args": json.dumps(["k", attempt])}, timeout=10)
                got = client.post(rpc, data={"method": "get", "args": json.dumps(["k"])}, timeout=10)
                return {"labels": labels, "components": [c["identity"] for c in status["components"]],
                        "ready": (ready.status_code, ready.json()), "set": stored.json()["OK"],
                        "get": got.json().get("Value", {}).get("value")}

            seen = yield deferToThread(check)
            context = f"attempt {attempt}: {seen}\n{daemon.log()[-3000:]}"
            self.assertTrue(seen["labels"] and all(label.startswith("measure:ping") for label in seen["labels"]),
                            context)
            self.assertEqual(seen["components"], ["IT.ccnet.Supervisors.supervisor"], context)
            self.assertEqual(seen["ready"][0], 200, context)
            self.assertEqual(seen["ready"][1]["parts"], {"mplane-supervisor": True, "mplane-component": True},
                             context)
            self.assertEqual((seen["set"], seen["get"]), (True, attempt), context)
            self.assertNotIn("cannot open", daemon.log(), context)
            self.assertNotIn("UniqueViolation", daemon.log(), context)
            yield deferToThread(daemon.stop)


class DatabaseStallTests(unittest.TestCase):
    """PostgreSQL accepts connections but never answers: every call is bounded."""

    timeout = 120

    def setUp(self) -> None:
        _skip_without_pg()

    @defer.inlineCallbacks
    def test_stalled_database_gives_clean_errors_within_the_timeout_then_recovers(self) -> Any:
        dsn = create_database()
        self.addCleanup(drop_database, dsn)
        proxy = TCPProxy(pg_port(PG_DSN))
        proxy.start()
        self.addCleanup(proxy.stop)
        url = pg_url(dsn, port=proxy.number)
        d = OpsDaemon(test_pki(), Path(self.mktemp()).absolute(), store=f"{url}\ntimeout = {STORE_TIMEOUT}")
        self.addCleanup(d.stop)

        def before() -> tuple[int, int, int]:
            return (d.rpc("Framework/Notebook", "set", "a", 1).status_code, d.register_ping().status_code,
                    requests.get(d.url("metrics", "/ready"), timeout=15).status_code)

        self.assertEqual((yield deferToThread(before)), (200, 200, 200))
        proxy.stall()

        def during() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, call in (("set", lambda: d.rpc("Framework/Notebook", "set", "b", 2, timeout=30)),
                               ("get", lambda: d.rpc("Framework/Notebook", "get", "a", timeout=30)),
                               ("spec", lambda: d.mplane("POST", "register/specification", SPEC)),
                               ("ready", lambda: requests.get(d.url("metrics", "/ready"), timeout=30)),
                               ("ping", lambda: d.rpc("Framework/Notebook", "ping"))):
                started = time.monotonic()
                r = call()
                out[name] = (r.status_code, r.text, time.monotonic() - started)
            return out

        seen = yield deferToThread(during)
        log.msg(f"store stall figures: { {k: round(v[2], 3) for k, v in seen.items()} }")
        for name in ("set", "get"):
            status, text, took = seen[name]
            body = json.loads(text)
            self.assertEqual(status, 503, seen)
            self.assertFalse(body["OK"], seen)
            self.assertIn("database unavailable", body["Message"])
            self.assertNotIn("Traceback", body["Message"])
            self.assertLess(took, STORE_TIMEOUT + 3, f"{name} waited well past [store] timeout: {seen}")
        self.assertEqual(seen["spec"][0], 503, seen)
        self.assertIn("nothing was done", seen["spec"][1])
        self.assertEqual(seen["ready"][0], 503, seen)
        self.assertEqual(seen["ping"][0], 200, seen)  # what needs no database keeps working
        proxy.restore()

        def after() -> dict[str, Any]:
            started = time.monotonic()
            first = d.rpc("Framework/Notebook", "get", "a")
            took = time.monotonic() - started
            redemption = {k: v for k, v in SPEC.items() if k != "specification"} | {"redemption": "measure"}
            queued = d.mplane("POST", "show/result", redemption).json()
            return {"first": (first.status_code, first.json().get("Value", {}).get("value")), "took": took,
                    "set_b": d.rpc("Framework/Notebook", "get", "b").json().get("OK"),
                    "redeem": queued,
                    "ready": requests.get(d.url("metrics", "/ready"), timeout=15).status_code}

        seen_after = yield deferToThread(after)
        log.msg(f"store recovery figures: first call {seen_after['took']:.3f}s")
        self.assertEqual(seen_after["first"], (200, 1), seen_after)  # the first call after recovery works
        self.assertFalse(seen_after["set_b"], "a set that timed out must not have been applied")
        self.assertIn("exception", seen_after["redeem"], f"a specification that got 503 must not be queued: {seen_after}")
        self.assertEqual(seen_after["ready"], 200)
        self.assertIsNone(d.daemon.process.poll())
