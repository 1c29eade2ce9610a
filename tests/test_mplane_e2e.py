"""Three roles, three processes' worth: a supervisor daemon, a second daemon as component
(ping + tstat), and a client — real TLS, real ICMP, real restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.mplane.client import SDK_PATHS, MPlaneClient
from ccnet.mplane.model import Statement
from tests.support import Daemon, free_port, start_daemon, test_pki, tls_section
from tests.test_mplane_support import material

USERS = "IT.ccnet.Clients.client: guest\nIT.ccnet.Clients.admin: admin\n"
CAPS = "ping: guest\ntstat: guest\n"


def supervisor_ini(folder: Path, port: int) -> str:
    pki = test_pki()
    (folder / "users.conf").write_text(USERS)
    (folder / "caps.conf").write_text(CAPS)
    return f"""
[ccnet]
state-dir = {folder / "var"}

{tls_section(pki, "supervisor")}
[store]
url = sqlite:///{folder / "var" / "supervisor.db"}

[supervisor]
listen = ssl:{port}:interface=127.0.0.1
users = {folder / "users.conf"}
caps = {folder / "caps.conf"}
long-poll = 20
"""


def component_ini(folder: Path, port: int) -> str:
    pki = test_pki()
    return f"""
[ccnet]
state-dir = {folder / "var"}

{tls_section(pki, "component")}
[store]
url = sqlite:///{folder / "var" / "component.db"}

[component]
supervisor = https://localhost:{port}
listen = ssl:0:interface=127.0.0.1
long-poll = 20
retry-min = 0.2
retry-max = 1

[probe:ping]
module = ccnet.mplane.probes.ping
ip4addr = 127.0.0.1
destinations4 = 127.0.0.1

[probe:tstat]
module = ccnet.mplane.probes.tstat
mode = replay
"""


class ThreeRoleTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        base = Path(self.mktemp()).resolve()
        self.sup_dir, self.comp_dir = base / "supervisor", base / "component"
        self.sup_dir.mkdir(parents=True)
        self.comp_dir.mkdir(parents=True)
        self.port = free_port()
        self.supervisor: Daemon = yield deferToThread(
            start_daemon, supervisor_ini(self.sup_dir, self.port), self.sup_dir)
        self.addCleanup(lambda: deferToThread(self.supervisor.stop))
        self.component: Daemon = yield deferToThread(
            start_daemon, component_ini(self.comp_dir, self.port), self.comp_dir)
        self.addCleanup(lambda: deferToThread(self.component.stop))
        self.client = MPlaneClient(reactor, f"https://localhost:{self.port}", material(test_pki(), "client"))
        self.addCleanup(lambda: self.client.close())

    @defer.inlineCallbacks
    def wait_for(self, predicate: Any, what: str, seconds: float = 30) -> Any:
        deadline = reactor.seconds() + seconds
        while True:
            value = predicate()
            if isinstance(value, defer.Deferred):
                value = yield value
            if value:
                return value
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}\n--- supervisor:\n{self.supervisor.log()}\n"
                          f"--- component:\n{self.component.log()}")
            yield task.deferLater(reactor, 0.1, lambda: None)

    def labels(self) -> defer.Deferred[Any]:
        d = defer.ensureDeferred(self.client.capabilities())
        d.addCallback(lambda caps: sorted(c.label for c in caps))
        d.addErrback(lambda _: [])
        return d

    @defer.inlineCallbacks
    def test_client_gets_real_results_from_a_component_daemon_through_a_supervisor_daemon(self) -> Any:
        labels = yield self.wait_for(lambda: self.labels().addCallback(lambda x: x if len(x) == 8 else None),
                                     "the component's 8 capabilities")
        self.assertEqual(labels, ["ping-average-ip4", "ping-detail-ip4", "tstat-log_http_complete",
                                  "tstat-log_tcp_complete-core",
                                  "tstat-log_tcp_complete-end_to_end", "tstat-log_tcp_complete-layer7",
                                  "tstat-log_tcp_complete-p2p_stats", "tstat-log_tcp_complete-tcp_options"])
        receipt = yield defer.ensureDeferred(self.client.run("ping-average-ip4", "now + 2s / 1s",
                                                             {"destination.ip4": "127.0.0.1"}))
        result = yield defer.ensureDeferred(self.client.watch(receipt, interval=0.05, timeout=30))
        self.assertIsInstance(result, Statement, result)
        self.assertEqual(result.label, "ping-average-ip4")
        self.assertEqual(int(result.resultvalues[0][3]), 2)
        # (How fast that comes back, against the SDK's mpsup, is bench/mplane_bench.py's job.)
        receipt = yield defer.ensureDeferred(self.client.run("tstat-log_tcp_complete-core", "now"))
        flows = yield defer.ensureDeferred(self.client.watch(receipt, interval=0.05, timeout=30))
        self.assertEqual([row[0] for row in flows.resultvalues], ["192.168.1.2", "192.168.1.2"])
        receipt = yield defer.ensureDeferred(self.client.run("tstat-log_http_complete", "now"))
        http = yield defer.ensureDeferred(self.client.watch(receipt, interval=0.05, timeout=30))
        self.assertEqual([(row[5], row[12]) for row in http.resultvalues][-2:], [("GET", "404"), ("POST", "201")])
        # The same daemon also listens for clients that call it directly (client-initiated).
        direct = MPlaneClient(reactor, f"https://localhost:{self.component.ports['component']}",
                              material(test_pki(), "client"), SDK_PATHS)
        self.addCleanup(direct.close)
        receipt = yield defer.ensureDeferred(direct.run("tstat-log_tcp_complete-end_to_end", "now"))
        rtt = yield defer.ensureDeferred(direct.watch(receipt, interval=0.05, timeout=30))
        self.assertEqual(rtt.resultvalues[0][:2], ["103.862373", "47.609000"])

    @defer.inlineCallbacks
    def test_component_survives_a_supervisor_restart_and_delivers_the_queued_result(self) -> Any:
        yield self.wait_for(lambda: self.labels().addCallback(lambda x: len(x) == 8), "registration")
        receipt = yield defer.ensureDeferred(self.client.run("ping-detail-ip4", "now + 3s / 1s",
                                                             {"destination.ip4": "127.0.0.1"}))

        def running() -> defer.Deferred[Any]:
            d = defer.ensureDeferred(self.client.status())
            return d.addCallback(lambda s: any(m["state"] == "running" for m in s["pending"]))
        yield self.wait_for(running, "the component's receipt")
        yield deferToThread(self.supervisor.stop)
        yield self.wait_for(lambda: "queued for the supervisor" in self.component.log(), "the result to be queued")
        self.supervisor = yield deferToThread(start_daemon, supervisor_ini(self.sup_dir, self.port), self.sup_dir)
        result = yield defer.ensureDeferred(self.client.watch(receipt, interval=0.1, timeout=30))
        self.assertEqual(result.kind, "result", result)
        self.assertEqual(len(result.resultvalues), 3)
        yield self.wait_for(lambda: self.component.log().count("registered 8 capabilities") >= 2,
                            "the component to register again")
