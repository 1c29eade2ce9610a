"""The ccnet component runtime against a real supervisor over mutual TLS, with real ping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from ccnet.mplane.client import MPlaneError
from ccnet.mplane.component import ComponentMetrics
from ccnet.mplane.model import Envelope, Statement, When
from tests.test_mplane_component_support import Component, client_for, wait_until
from tests.test_mplane_support import Supervisor

USERS = "IT.ccnet.Clients.client: guest\nIT.ccnet.Clients.admin: admin\n"
CAPS = "ping: guest\n"


class ComponentWorkflowTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.folder = Path(self.mktemp()).resolve()
        self.sup = Supervisor(self.folder / "sup", users=USERS, caps=CAPS, long_poll=10.0)
        yield self.sup.start()
        self.addCleanup(lambda: self.sup.stop() if self.sup.listener.running else None)
        self.comp = Component(self.folder / "comp", f"https://localhost:{self.sup.port}",
                              extra="long-poll = 10\nretry-min = 0.1\nretry-max = 0.5\n")
        yield self.comp.start()
        self.addCleanup(self.comp.stop)
        self.client = client_for(self.sup)
        self.addCleanup(lambda: self.client.close())

    @defer.inlineCallbacks
    def test_component_registers_its_ping_capabilities_with_the_supervisor(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        caps = yield defer.ensureDeferred(self.client.capabilities())
        self.assertEqual(sorted(c.label for c in caps), ["ping-average-ip4", "ping-detail-ip4"])
        avg = next(c for c in caps if c.label == "ping-average-ip4")
        self.assertEqual(avg.parameters["destination.ip4"], "127.0.0.1 ... 127.0.0.255")

    @defer.inlineCallbacks
    def test_client_gets_real_ping_rtts_from_the_component(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        receipt = yield defer.ensureDeferred(self.client.run("ping-average-ip4", "now + 2s / 1s",
                                                             {"destination.ip4": "127.0.0.1"}))
        self.assertEqual(receipt.kind, "receipt")
        result = yield defer.ensureDeferred(self.client.watch(receipt, timeout=20))
        self.assertIsInstance(result, Statement, result)
        self.assertEqual(result.kind, "result")
        self.assertEqual(result.label, "ping-average-ip4")
        (row,) = result.resultvalues
        mn, mean, mx, count = (int(v) for v in row)
        self.assertEqual(count, 2)
        self.assertTrue(0 < mn <= mean <= mx < 1_000_000, row)
        yield wait_until(lambda: len(self.comp.top.outbox) == 0, "the outbox to drain")
        text = generate_latest(ComponentMetrics(self.comp.top)).decode()
        self.assertIn('ccnet_mplane_component_measurements_total{capability="ping-average-ip4",outcome="result"} 1',
                      text)
        self.assertIn("ccnet_mplane_component_outbox_depth 0", text)
        self.assertIn("ccnet_mplane_component_registered 1", text)

    @defer.inlineCallbacks
    def test_detail_rows_carry_one_time_and_rtt_per_ping(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        receipt = yield defer.ensureDeferred(self.client.run("ping-detail-ip4", "now + 3s / 1s",
                                                             {"destination.ip4": "127.0.0.1"}))
        result = yield defer.ensureDeferred(self.client.watch(receipt, timeout=20))
        self.assertEqual(len(result.resultvalues), 3)
        self.assertTrue(all(r[0].startswith("20") and int(r[1]) > 0 for r in result.resultvalues))

    @defer.inlineCallbacks
    def test_repeated_spec_comes_back_as_an_envelope_of_one_result_per_subscope(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        updates: list[Any] = []
        receipt = yield defer.ensureDeferred(self.client.run(
            "ping-average-ip4", "repeat now + 3s / 1s { now + 1s / 1s }", {"destination.ip4": "127.0.0.1"}))
        reply = yield defer.ensureDeferred(self.client.watch(receipt, interval=0.1, timeout=20,
                                                             on_update=updates.append))
        self.assertIsInstance(reply, Envelope, reply)
        # Sub-scopes start on whole seconds (as the SDK iterates them): 3 or 4 fit in 3 s.
        self.assertIn(len(reply.contents), (3, 4))
        self.assertTrue(all(m.kind == "result" and m.resultvalues[0][3] == "1" for m in reply.contents), reply)
        self.assertEqual({m.token for m in reply.contents}, {receipt.token})
        self.assertTrue(updates)

    @defer.inlineCallbacks
    def test_destination_outside_the_configured_constraint_is_refused_by_the_supervisor(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        cap = yield defer.ensureDeferred(self.client.capability("ping-average-ip4"))
        spec = self.client.specification(cap, "now + 1s / 1s", {"destination.ip4": "127.0.0.1"})
        spec.parameters["destination.ip4"] = "10.1.2.3"
        with self.assertRaises(MPlaneError) as ctx:
            yield defer.ensureDeferred(self.client.submit(spec.with_token()))
        self.assertIn("destination.ip4", str(ctx.exception))

    @defer.inlineCallbacks
    def test_interrupt_stops_an_open_ended_ping_and_returns_what_it_measured(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        receipt = yield defer.ensureDeferred(self.client.run("ping-detail-ip4", "now ... future / 1s",
                                                             {"destination.ip4": "127.0.0.1"}))
        yield wait_until(lambda: any(j.runs for j in self.comp.core.scheduler.jobs.values()), "the ping to start")
        yield task.deferLater(reactor, 1.5, lambda: None)
        yield defer.ensureDeferred(self.client.interrupt(receipt))
        result = yield defer.ensureDeferred(self.client.watch(receipt, timeout=20))
        self.assertEqual(result.kind, "result", result)
        self.assertGreaterEqual(len(result.resultvalues), 1)

    @defer.inlineCallbacks
    def test_results_made_while_the_supervisor_is_down_are_delivered_after_it_restarts(self) -> Any:
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")
        # Long enough that the supervisor is surely down before the ping ends, even on a
        # loaded machine (with 2 s the result was sometimes delivered before the stop).
        receipt = yield defer.ensureDeferred(self.client.run("ping-average-ip4", "now + 4s / 1s",
                                                             {"destination.ip4": "127.0.0.1"}))
        yield wait_until(lambda: any(j.runs for j in self.comp.core.scheduler.jobs.values()), "the ping to start")
        yield self.sup.stop()
        # The ping finishes with nobody to tell: the result waits on disk.
        yield wait_until(lambda: all(j.finished for j in self.comp.core.scheduler.jobs.values()), "the ping")
        yield wait_until(lambda: len(self.comp.top.outbox) >= 1, "the queued result")
        registrations = self.comp.link.registrations
        yield self.sup.start()
        yield defer.ensureDeferred(self.client.close())
        self.client = client_for(self.sup)
        result = yield defer.ensureDeferred(self.client.watch(receipt, timeout=20))
        self.assertEqual(result.kind, "result", result)
        self.assertEqual(int(result.resultvalues[0][3]), 4)
        yield wait_until(lambda: len(self.comp.top.outbox) == 0, "the outbox to drain")
        # The poll loop backs off on its own schedule: the delivery may come first.
        yield wait_until(lambda: self.comp.link.registrations > registrations, "the component to register again")


class ComponentRestartTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_outbox_survives_a_component_restart(self) -> Any:
        folder = Path(self.mktemp()).resolve()
        # No supervisor at all: the receipt and result of a spec handed in directly stay queued.
        comp = Component(folder, "https://localhost:9", extra="retry-min = 5\n")
        yield comp.start()
        spec = Statement("specification", label="ping-average-ip4", when=When.parse("now + 1s / 1s"),
                         parameters={"source.ip4": "127.0.0.1", "destination.ip4": "127.0.0.1"},
                         results=["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
                                  "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"], token="t1")
        yield defer.ensureDeferred(comp.link._handle(spec))
        yield wait_until(lambda: len(comp.top.outbox) == 2, "receipt and result queued")
        yield comp.stop()
        again = Component(folder, "https://localhost:9", extra="retry-min = 5\n")
        yield again.start()
        self.addCleanup(again.stop)
        kinds = [item.body for item in again.top.outbox.items]
        self.assertEqual(len(kinds), 2)
        self.assertIn(b'"receipt"', kinds[0])
        self.assertIn(b'"result"', kinds[1])



    @defer.inlineCallbacks
    def test_measurement_cut_short_by_a_crash_is_answered_with_an_exception(self) -> Any:
        folder = Path(self.mktemp()).resolve()
        comp = Component(folder, "https://localhost:9", extra="retry-min = 5\n")
        yield comp.start()
        # What a crash leaves behind: a measurement accepted (journal) but never answered.
        receipt = Statement("receipt", label="ping-average-ip4", token="t9")
        yield comp.top.outbox.put(receipt, started_job=("t9", "ping-average-ip4"))
        yield comp.stop()
        again = Component(folder, "https://localhost:9", extra="retry-min = 5\n")
        yield again.start()
        self.addCleanup(again.stop)
        receipt_item, item = again.top.outbox.items
        self.assertIn(b'"receipt"', receipt_item.body)
        self.assertEqual(item.token, "t9")
        self.assertIn(b"restarted while measuring ping-average-ip4", item.body)
        rows = yield again.store.run("SELECT token FROM mplane_component_job")
        self.assertEqual(rows, [])

class ComponentAuthorizationTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_component_registers_only_what_its_caps_allow_the_supervisor(self) -> Any:
        folder = Path(self.mktemp()).resolve()
        sup = Supervisor(folder / "sup", users=USERS, caps=CAPS)
        yield sup.start()
        self.addCleanup(sup.stop)
        (folder / "sdk.conf").write_text("[Roles]\nIT.ccnet.Supervisors.supervisor = sup\n\n"
                                        "[Authorizations]\nping-detail = sup\nping-average = nobody\n")
        comp = Component(folder / "comp", f"https://localhost:{sup.port}", extra=f"caps = {folder / 'sdk.conf'}\n")
        yield comp.start()
        self.addCleanup(comp.stop)
        yield wait_until(lambda: comp.link.registrations >= 1, "registration")
        self.assertEqual([c.label for c in sup.state.capabilities.values()], ["ping-detail-ip4"])


class OutboxTests(unittest.TestCase):
    """The on-disk queue keeps order and content across reopening, on both store backends."""

    timeout = 30

    @defer.inlineCallbacks
    def check(self, url: str) -> Any:
        from ccnet.mplane.component import Outbox
        from ccnet.mplane.model import ExceptionMessage
        from ccnet.store import Store

        store = Store.open(url, reactor)
        box = Outbox(store)
        yield defer.ensureDeferred(box.open())
        for item in list(box.items):  # a shared PostgreSQL test database may hold earlier runs
            yield defer.ensureDeferred(box.remove(item))
        msgs = [Statement("receipt", label="a", token="1"), Statement("result", label="a", token="1"),
                ExceptionMessage("2", "no route")]
        yield defer.gatherResults([box.put(m) for m in msgs])
        yield defer.ensureDeferred(box.remove(box.items[0]))
        yield store.close()
        store = Store.open(url, reactor)
        self.addCleanup(store.close)
        again = Outbox(store)
        yield defer.ensureDeferred(again.open())
        self.assertEqual([i.token for i in again.items], ["1", "2"])
        self.assertIn(b'"result"', again.items[0].body)
        self.assertIn(b"no route", again.items[1].body)
        for item in list(again.items):
            yield defer.ensureDeferred(again.remove(item))

    def test_sqlite(self) -> Any:
        return self.check(f"sqlite:///{Path(self.mktemp()).resolve() / 'c.db'}")

    @defer.inlineCallbacks
    def test_postgresql(self) -> Any:
        from ccnet.store import Store
        from tests.support import PG_DSN

        probe = Store.open(PG_DSN, reactor)
        try:
            ok = yield probe.ping()
        except Exception:
            ok = False
        finally:
            yield probe.close()
        if not ok:
            raise unittest.SkipTest("PostgreSQL not reachable")
        yield self.check(PG_DSN)


class NoLongPollTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_without_long_poll_the_component_polls_every_second_and_still_delivers(self) -> Any:
        folder = Path(self.mktemp()).resolve()
        sup = Supervisor(folder / "sup", users=USERS, caps=CAPS, long_poll=0.0)
        yield sup.start()
        self.addCleanup(sup.stop)
        comp = Component(folder / "comp", f"https://localhost:{sup.port}", extra="long-poll = 0\n")
        yield comp.start()
        self.addCleanup(comp.stop)
        yield wait_until(lambda: len(sup.state.capabilities) == 2, "registration")
        client = client_for(sup)
        self.addCleanup(client.close)
        receipt = yield defer.ensureDeferred(client.run("ping-average-ip4", "now + 1s / 1s",
                                                        {"destination.ip4": "127.0.0.1"}))
        result = yield defer.ensureDeferred(client.watch(receipt, timeout=20))
        self.assertEqual(result.kind, "result", result)
        # Once a second, not in a tight loop: a few polls in a few seconds.
        polls = []
        original = sup.state.take_work

        async def counting(identity: str, link: Any) -> Any:
            polls.append(reactor.seconds())
            return await original(identity, link)
        sup.state.take_work = counting  # type: ignore[method-assign]
        yield task.deferLater(reactor, 2.5, lambda: None)
        self.assertIn(len(polls), (2, 3, 4))
