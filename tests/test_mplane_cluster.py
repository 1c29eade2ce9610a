"""One mPlane supervisor served by several daemons on one PostgreSQL database (issue 17).

Real ``twistd -n ccnet`` subprocesses on loopback ports, one fresh PostgreSQL database per
test (CCNET_TEST_PG_DSN), a simulated component (blocking HTTPS in threads, its own
certificate) or a real component daemon listing both supervisor URLs. The pure rules
(what is due, final is final, the schedule, notification payloads) are tested first.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import requests
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.config import IniFile
from ccnet.mplane import component_config
from ccnet.mplane.client import MPlaneClient
from ccnet.mplane.cluster import parse_notice
from ccnet.mplane.model import Statement, When
from ccnet.mplane.state import (
    DONE,
    QUEUED,
    RUNNING,
    SENT,
    Measurement,
    final_is_final,
    interrupt_due,
    schedule,
    send_due,
)
from ccnet.mplane.supervisor import default_node_name
from tests.support import (
    Daemon,
    create_database,
    drop_database,
    free_port,
    pg_reachable,
    proxied_database,
    start_daemon,
    test_pki,
)
from tests.test_mplane_component_support import wait_until
from tests.test_mplane_e2e import component_ini
from tests.test_mplane_e2e import supervisor_ini as e2e_supervisor_ini
from tests.test_mplane_support import CALLBACK_CAP, PING_CAP, Supervisor, envelope, material
from tests.test_mplane_support import Peer as SupervisorPeer

MPLANE_JSON = "application/x-mplane+json"


# ---------------------------------------------------------------------------- pure rules


def measurement(state: str, created: float = 100.0, updated: float = 100.0, interrupt: bool = False,
                when: str = "now + 1s", component: str = "c1", mid: str = "m1") -> Measurement:
    spec = Statement("specification", label="ping", when=When.parse(when), token=mid)
    return Measurement(mid, "client", f"tok-{mid}", "ping", "key", component, spec, state, None, interrupt,
                       created, updated)


class RuleTests(unittest.TestCase):
    def test_a_queued_spec_is_due_and_a_sent_one_only_once_its_receipt_is_overdue(self) -> None:
        self.assertTrue(send_due(measurement(QUEUED), 100.0, 30.0))
        self.assertFalse(send_due(measurement(SENT, updated=90.0), 100.0, 30.0))
        self.assertTrue(send_due(measurement(SENT, updated=60.0), 100.0, 30.0))
        self.assertFalse(send_due(measurement(RUNNING, updated=0.0), 100.0, 30.0))

    def test_an_interrupt_is_due_only_for_a_spec_the_component_has(self) -> None:
        self.assertTrue(interrupt_due(measurement(RUNNING, interrupt=True)))
        self.assertFalse(interrupt_due(measurement(QUEUED, interrupt=True)))
        self.assertFalse(interrupt_due(measurement(DONE, interrupt=True)))

    def test_a_finished_measurement_keeps_its_outcome(self) -> None:
        change = {"state": DONE, "reply": "second", "updated": 5.0}
        self.assertEqual(final_is_final(DONE, change), {"updated": 5.0})
        self.assertEqual(final_is_final(RUNNING, change), change)

    def test_schedule_splits_runs_into_past_current_and_future_per_component(self) -> None:
        ms = [measurement(DONE, mid="a"), measurement(RUNNING, mid="b"),
              measurement(SENT, when="2030-01-01 00:00:00 + 1s", mid="c"),
              measurement(QUEUED, component="c2", mid="d"), measurement(SENT, component="c2", mid="e")]
        plan = schedule(ms, now=200.0)
        self.assertEqual({k: [r["token"] for r in v] for k, v in plan["c1"].items()},
                         {"past": ["tok-a"], "running": ["tok-b"], "future": ["tok-c"]})
        self.assertEqual(plan["c1"]["future"][0]["start"], "2030-01-01 00:00:00")
        # waiting for the component's poll is future; handed over with its scope begun, running
        self.assertEqual({k: [r["token"] for r in v] for k, v in plan["c2"].items()},
                         {"past": [], "running": ["tok-e"], "future": ["tok-d"]})

    def test_notification_payloads(self) -> None:
        self.assertEqual(parse_notice("abc m 123"), ("abc", "m", "123"))
        self.assertEqual(parse_notice("abc c IT.ccnet.Components.x"), ("abc", "c", "IT.ccnet.Components.x"))
        self.assertIsNone(parse_notice("abc x 1"))
        self.assertIsNone(parse_notice("garbage"))

    def test_node_name_defaults_to_host_and_port(self) -> None:
        self.assertEqual(default_node_name("sup1", "ssl:8888"), "sup1:8888")
        self.assertTrue(default_node_name("sup1", "ssl:0:interface=127.0.0.1").startswith("sup1:pid-"))

    def test_component_takes_several_supervisor_urls(self) -> None:
        ini = IniFile.from_string("[component]\nsupervisor = https://a:1, https://b:2/ https://c:3\n"
                                  "[probe:ping]\n", Path("x.ini"))
        cfg = component_config.parse(ini)
        assert cfg is not None
        self.assertEqual(cfg.supervisors, ("https://a:1", "https://b:2", "https://c:3"))
        self.assertEqual(cfg.supervisor, "https://a:1")


# ---------------------------------------------------------------------------- daemons


def supervisor_ini(folder: Path, port: int, store: str, node: str) -> str:
    """The three-role tests' supervisor, on ``store``, named ``node``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = e2e_supervisor_ini(folder, port)
    sqlite = f"url = sqlite:///{folder / 'var' / 'supervisor.db'}"
    assert sqlite in text
    return text.replace(sqlite, f"url = {store}") + f"node-name = {node}\n"


class Blocking:
    """Blocking HTTPS as one identity against one daemon (run it in threads)."""

    def __init__(self, port: int, who: str) -> None:
        pki = test_pki()
        self.base = f"https://localhost:{port}"
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.cert = pki.pair(who)
        self.session.verify = str(pki.ca_cert)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 40) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        resp = self.session.request(method, f"{self.base}/{path}", data=data, timeout=timeout,
                                    headers={"content-type": MPLANE_JSON})
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, resp.text


def spec(n: int, when: str = "now + 1s / 1s") -> dict[str, Any]:
    return {"specification": "measure", "version": 1, "registry": "http://ict-mplane.eu/registry/core",
            "label": "ping-average-ip4", "token": f"{n:032x}", "when": when,
            "parameters": {"destination.ip4": f"127.0.0.{n % 250 + 1}", "source.ip4": "127.0.0.1"},
            "results": PING_CAP["results"]}


def result_for(work: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in work.items() if k not in ("specification", "link")}
    d["result"] = work["specification"]
    d["when"] = "2026-11-24 10:00:00.000000 ... 2026-11-24 10:00:02.000000"
    d["resultvalues"] = [["30", "45", "60", "2"]]
    return d


def specs_of(reply: Any) -> list[dict[str, Any]]:
    return [m for m in reply.get("contents", []) if "specification" in m and m.get("label") != "callback"]


class DaemonPair(unittest.TestCase):
    """Supervisor daemons A and B on one fresh PostgreSQL database."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        why = pg_reachable()
        if why is not None:
            raise unittest.SkipTest(why)
        self.dsn = create_database()
        self.addCleanup(drop_database, self.dsn)
        self.base = Path(self.mktemp()).resolve()
        self.daemons: dict[str, Daemon] = {}
        self.ports = {"A": free_port(), "B": free_port()}
        self.folders = {name: self.base / name for name in self.ports}
        for name in self.ports:
            yield self.start(name)

    @defer.inlineCallbacks
    def start(self, name: str) -> Any:
        self.daemons[name] = yield deferToThread(
            start_daemon, supervisor_ini(self.folders[name], self.ports[name], self.dsn, name), self.folders[name])
        daemon = self.daemons[name]
        self.addCleanup(lambda: deferToThread(daemon.stop))


class TwoDaemonTests(DaemonPair):
    """Daemons A and B, simulated components."""

    timeout = 120

    def http(self, name: str, who: str) -> Blocking:
        return Blocking(self.ports[name], who)

    def logs(self) -> str:
        return "".join(f"\n--- {n}:\n{d.log()[-4000:]}" for n, d in self.daemons.items())

    @defer.inlineCallbacks
    def until(self, fn: Any, what: str, seconds: float = 20) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            value = yield deferToThread(fn)
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}{self.logs()}")
            yield deferToThread(time.sleep, 0.05)

    def holder(self, at: str) -> str | None:
        _, status = self.http(at, "admin").call("GET", "api/status")
        comps = [c for c in status["components"] if c["identity"].endswith("Components.component")]
        return comps[0]["holder"] if comps else None

    @defer.inlineCallbacks
    def register_at(self, name: str) -> Any:
        code, body = yield deferToThread(self.http(name, "component").call, "POST", "register/capability",
                                         envelope(PING_CAP, CALLBACK_CAP))
        self.assertEqual(code, 200, body)

    @defer.inlineCallbacks
    def test_spec_submitted_on_one_daemon_reaches_a_poll_held_by_the_other_and_its_result_comes_back(self) -> Any:
        yield self.register_at("B")
        client_a, comp_b = self.http("A", "client"), self.http("B", "component")
        listed = yield self.until(lambda: [c["label"] for c in client_a.call("GET", "capability?view=all")[1]
                                           ["contents"] if c["label"] == "ping-average-ip4"],
                                  "A to list the capability registered on B")
        self.assertEqual(listed, ["ping-average-ip4"])
        # The component's poll is held at B (20 s)...
        poll = deferToThread(comp_b.call, "GET", "show/specification?wait=20")
        yield self.until(lambda: self.holder("A") == "B", "A to show that B holds the component's poll")
        # ... and a specification submitted at A is in its answer: handed over by the
        # notification, not by the poll running out (its answer would be empty then).
        code, receipt = yield deferToThread(client_a.call, "POST", "register/specification", spec(1))
        self.assertEqual((code, receipt.get("receipt")), (200, "measure"), receipt)
        code, work = yield poll
        self.assertEqual(code, 200, work)
        [handed] = specs_of(work)
        self.assertEqual(handed["parameters"]["destination.ip4"], "127.0.0.2")
        code, body = yield deferToThread(comp_b.call, "POST", "register/result", result_for(handed))
        self.assertEqual(code, 200, body)
        # Redeemable at A at once: no waiting for anything.
        code, result = yield deferToThread(client_a.call, "POST", "show/result",
                                           {"redemption": "measure", "version": 1, "token": spec(1)["token"],
                                            "registry": "http://ict-mplane.eu/registry/core"})
        self.assertEqual(result.get("result"), "measure", result)
        self.assertEqual(result["resultvalues"], [["30", "45", "60", "2"]])
        # The operator view at A: the run is in the component's past, B holds its poll.
        _, status = yield deferToThread(self.http("A", "admin").call, "GET", "api/status")
        [plan] = [v for k, v in status["schedule"].items() if k.endswith("Components.component")]
        self.assertEqual([(r["token"], r["state"]) for r in plan["past"]], [(spec(1)["token"], "done")])
        self.assertEqual(status["node"], "A")

    @defer.inlineCallbacks
    def test_interrupt_at_one_daemon_reaches_the_component_polling_the_other(self) -> Any:
        yield self.register_at("B")
        client_a, comp_b = self.http("A", "client"), self.http("B", "component")
        yield self.until(lambda: client_a.call("POST", "register/specification", spec(2, "now + 1h / 1s"))[1]
                         .get("receipt"), "A to accept a specification for B's component")
        code, work = yield deferToThread(comp_b.call, "GET", "show/specification?wait=20")
        [handed] = specs_of(work)
        receipt = {k: v for k, v in handed.items() if k not in ("specification", "link")}
        receipt["receipt"] = "measure"
        code, body = yield deferToThread(comp_b.call, "POST", "register/result", receipt)
        self.assertEqual(code, 200, body)
        poll = deferToThread(comp_b.call, "GET", "show/specification?wait=20")
        yield self.until(lambda: self.holder("A") == "B", "the poll to be held at B")
        code, body = yield deferToThread(client_a.call, "POST", "register/specification",
                                         {"interrupt": "measure", "version": 1, "token": spec(2)["token"],
                                          "registry": "http://ict-mplane.eu/registry/core"})
        self.assertEqual(code, 200, body)
        code, work = yield poll
        self.assertEqual([(m.get("interrupt"), m["token"]) for m in work["contents"] if "interrupt" in m],
                         [("measure", handed["token"])])

    @defer.inlineCallbacks
    def test_a_queued_specification_interrupted_at_the_other_daemon_is_never_handed_over(self) -> Any:
        yield self.register_at("A")
        code, receipt = yield deferToThread(self.http("A", "client").call, "POST", "register/specification",
                                            spec(4))
        self.assertEqual(receipt.get("receipt"), "measure", receipt)
        code, reply = yield deferToThread(self.http("B", "client").call, "POST", "register/specification",
                                          {"interrupt": "measure", "version": 1, "token": spec(4)["token"],
                                           "registry": "http://ict-mplane.eu/registry/core"})
        self.assertEqual(reply.get("message"), "Interrupted before it started", reply)
        for name in ("A", "B"):
            code, work = yield deferToThread(self.http(name, "component").call, "GET", "show/specification?wait=0")
            self.assertEqual((code, specs_of(work)), (200, []))

    @defer.inlineCallbacks
    def test_a_withdrawal_at_one_daemon_is_seen_at_the_other(self) -> Any:
        yield self.register_at("B")
        client_a = self.http("A", "client")

        def listed() -> list[str]:
            return [c["label"] for c in client_a.call("GET", "capability?view=all")[1]["contents"]]
        yield self.until(lambda: "ping-average-ip4" in listed(), "A to list the capability")
        withdrawal = {k: v for k, v in PING_CAP.items() if k != "capability"}
        withdrawal["withdrawal"] = "measure"
        code, body = yield deferToThread(self.http("B", "component").call, "POST", "register/result", withdrawal)
        self.assertEqual((code, body), (200, {"withdrawn": 1}))
        yield self.until(lambda: "ping-average-ip4" not in listed(), "A to drop the withdrawn capability")

    @defer.inlineCallbacks
    def test_a_component_polling_both_daemons_gets_every_specification_exactly_once(self) -> Any:
        yield self.register_at("A")
        yield self.until(lambda: self.holder("B") == "A", "B to know the component")
        got: list[str] = []
        stop = threading.Event()

        def poller(name: str) -> None:
            comp = self.http(name, "component")
            while not stop.is_set():
                code, work = comp.call("GET", "show/specification?wait=2")
                if code == 200:
                    got.extend(m["token"] for m in specs_of(work))

        threads = [threading.Thread(target=poller, args=(n,), daemon=True) for n in ("A", "B")]
        for t in threads:
            t.start()
        try:
            clients = {n: self.http(n, "client") for n in ("A", "B")}
            for n in range(20):
                code, receipt = yield deferToThread(clients["AB"[n % 2]].call, "POST", "register/specification",
                                                    spec(100 + n))
                self.assertEqual(code, 200, receipt)
            yield self.until(lambda: len(got) >= 20, "20 specifications handed over", seconds=30)
            yield deferToThread(time.sleep, 0.5)  # any double delivery would show by now
        finally:
            stop.set()
            for t in threads:
                yield deferToThread(t.join, 10)
        self.assertEqual(len(got), 20, got)
        self.assertEqual(len(set(got)), 20, got)

    @defer.inlineCallbacks
    def test_a_restarted_daemon_rejoins_and_serves_what_the_other_stored_meanwhile(self) -> Any:
        yield self.register_at("A")
        yield deferToThread(self.daemons["A"].stop, signal.SIGKILL)
        yield self.register_at("B")  # the same component, moved to B
        client_b = self.http("B", "client")
        code, receipt = yield deferToThread(client_b.call, "POST", "register/specification", spec(3))
        self.assertEqual((code, receipt.get("receipt")), (200, "measure"), receipt)
        yield self.start("A")
        # A rejoined by itself: it sees B's specification, hands it to the component, and
        # later notifications from B reach it.
        comp_a = self.http("A", "component")
        code, work = yield deferToThread(comp_a.call, "GET", "show/specification?wait=20")
        [handed] = specs_of(work)
        yield deferToThread(self.http("B", "component").call, "POST", "register/result", result_for(handed))
        client_a = self.http("A", "client")
        code, result = yield deferToThread(client_a.call, "GET", f"show/result?token={spec(3)['token']}")
        self.assertEqual(result.get("result"), "measure", result)


class FailoverTests(DaemonPair):
    """A real component daemon that lists both supervisor daemons; A is killed under it."""

    timeout = 150

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        comp_dir = self.base / "component"
        comp_dir.mkdir()
        text = component_ini(comp_dir, self.ports["A"]).replace(
            f"supervisor = https://localhost:{self.ports['A']}",
            f"supervisor = https://localhost:{self.ports['A']}, https://localhost:{self.ports['B']}")
        self.component = yield deferToThread(start_daemon, text, comp_dir)
        self.addCleanup(lambda: deferToThread(self.component.stop))
        urls = f"https://localhost:{self.ports['A']} https://localhost:{self.ports['B']}"
        self.client = MPlaneClient(reactor, urls, material(test_pki(), "client"), timeout=20)
        self.addCleanup(self.client.close)

    def logs(self) -> str:
        return (f"\n--- component:\n{self.component.log()[-5000:]}"
                + "".join(f"\n--- {n}:\n{d.log()[-3000:]}" for n, d in self.daemons.items()))

    @defer.inlineCallbacks
    def until(self, fn: Any, what: str, seconds: float = 30) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            try:
                value = yield defer.ensureDeferred(fn())
            except Exception:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}{self.logs()}")
            yield deferToThread(time.sleep, 0.1)

    @defer.inlineCallbacks
    def test_kill_9_of_the_component_supervisor_loses_nothing_and_runs_nothing_twice(self) -> Any:
        async def labels() -> bool:
            return "ping-detail-ip4" in [c.label for c in await self.client.capabilities()]
        yield self.until(labels, "the component's capabilities")
        receipts = []
        for n in range(3):
            receipt = yield defer.ensureDeferred(self.client.run("ping-detail-ip4", f"now + {4 + n}s / 1s",
                                                                 {"destination.ip4": "127.0.0.1"}))
            receipts.append(receipt)

        async def all_running() -> bool:
            status = await self.client.status()
            return len([m for m in status["pending"] if m["state"] == "running"]) == 3
        yield self.until(all_running, "the component's receipts")
        yield deferToThread(self.daemons["A"].stop, signal.SIGKILL)
        # Every acknowledged specification ends with its result, through B.
        for n, receipt in enumerate(receipts):
            result = yield defer.ensureDeferred(self.client.watch(receipt, interval=0.2, timeout=60))
            self.assertEqual(result.kind, "result", f"{result}{self.logs()}")
            self.assertEqual(len(result.resultvalues), 4 + n)  # one row per ping: ran to its end
        self.assertIn(f"https://localhost:{self.ports['B']}", self.client.url)
        log = self.component.log()
        self.assertIn("registered 8 capabilities with", log.split("trying supervisor")[-1], self.logs())
        started = [line for line in log.splitlines() if "mPlane job ping-detail-ip4" in line and "started" in line]
        self.assertEqual(len(started), 3, self.logs())  # one run each, none again after the failover
        # A comes back by itself and serves the same results.
        yield self.start("A")
        again = MPlaneClient(reactor, f"https://localhost:{self.ports['A']}", material(test_pki(), "client"))
        self.addCleanup(again.close)
        for receipt in receipts:
            result = yield defer.ensureDeferred(again.result(receipt))
            self.assertEqual(result.kind, "result", result)


class OneSQLiteFileTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_a_second_daemon_on_the_same_sqlite_file_is_refused_with_one_line(self) -> Any:
        base = Path(self.mktemp()).resolve()
        store = f"sqlite:///{base / 'shared.db'}"
        first = yield deferToThread(start_daemon, supervisor_ini(base / "A", free_port(), store, "A"), base / "A")
        self.addCleanup(lambda: deferToThread(first.stop))
        second = yield deferToThread(start_daemon, supervisor_ini(base / "B", free_port(), store, "B"), base / "B",
                                     wait=False)
        code = yield deferToThread(second.process.wait, 30)
        self.assertEqual(code, 2, second.log())
        self.assertIn("is in use by another ccnet daemon", second.log())
        self.assertIn("postgresql://", second.log())
        self.assertNotIn("Traceback", second.log())
        # The first keeps serving.
        code, _ = yield deferToThread(Blocking(int(first.ports["supervisor"]), "client").call, "GET",
                                      "capability?view=all")
        self.assertEqual(code, 200)


class OperatorViewTests(unittest.TestCase):
    def test_ccnet_admin_status_shows_the_node_the_holder_and_the_schedule(self) -> None:
        from ccnet.admin import summarize

        status = {"identity": "admin", "node": "A", "pending": [], "results": [], "capabilities": [],
                  "components": [{"identity": "IT.x.probe1", "capabilities": 2, "last_seen": "2026-11-28 10:00:00",
                                  "holder": "B"}],
                  "schedule": {"IT.x.probe1": {"past": [{"token": "t1"}], "running": [],
                                               "future": [{"token": "t2", "start": "2030-01-01 00:00:00"}]}}}
        text = summarize({"supervisor": status, "supervisor_url": "https://a"})
        self.assertIn("answered by node A", text)
        [row] = [line for line in text.splitlines() if "IT.x.probe1" in line]
        self.assertIn(" B ", row)
        self.assertIn("1/0/1", row)
        self.assertIn("2030-01-01 00:00:00", row)


class LostNotificationTests(unittest.TestCase):
    """Daemon A reaches PostgreSQL through a proxy that is cut: what B changes meanwhile is
    never notified to A, and A must catch up once PostgreSQL is back (in-process daemons)."""

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        dsn, proxied, self.proxy = proxied_database(self)
        base = Path(self.mktemp()).resolve()
        users = "IT.ccnet.Clients.client: guest\n"
        self.a = Supervisor(base / "A", users=users, caps="ping: guest\n", store_url=proxied,
                            store_timeout=3.0, node_name="A")
        self.b = Supervisor(base / "B", users=users, caps="ping: guest\n", store_url=dsn, node_name="B")
        for sup in (self.a, self.b):
            yield sup.start()
            self.addCleanup(sup.stop)

    @defer.inlineCallbacks
    def test_a_daemon_cut_from_postgresql_resyncs_what_it_missed(self) -> Any:
        resyncs = self.a.state.cluster_events["resyncs"]
        yield self.proxy.cut()
        code, _, body = yield SupervisorPeer(self.b, "component").request(
            "POST", "register/capability", envelope(PING_CAP))
        self.assertEqual(code, 200, body)
        yield deferToThread(time.sleep, 1.0)
        self.assertEqual(self.a.state.capabilities, {})  # nothing reached A
        self.proxy.restore()
        yield wait_until(lambda: len(self.a.state.capabilities) == 1, "A to catch up after the outage",
                         seconds=30)
        self.assertGreater(self.a.state.cluster_events["resyncs"], resyncs)
        # And it listens again: a specification submitted at B wakes nothing at A, but A
        # sees it without another resync.
        code, msg, body = yield SupervisorPeer(self.b, "client").message("POST", "register/specification", spec(7))
        self.assertEqual(msg.kind, "receipt", body)
        yield wait_until(lambda: len(self.a.state.measurements) == 1, "A to hear of B's specification")
