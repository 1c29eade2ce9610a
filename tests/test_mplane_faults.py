"""The supervisor when its database fails: an error reply means nothing happened, and
periodic result expiry keeps running after a failed round."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from ccnet.mplane.authz import Policy
from ccnet.mplane.model import Envelope, ExceptionMessage, RegistryStore
from ccnet.mplane.state import DONE, Measurement, SupervisorState, callback_spec
from ccnet.mplane.supervisor import SupervisorService
from ccnet.store import Store
from tests.support import proxied_database
from tests.test_mplane_supervisor import CAPS, SPEC, USERS
from tests.test_mplane_support import PING_CAP, Peer, Supervisor, envelope

STORE_TIMEOUT = 2.0


def redemption() -> dict[str, Any]:
    r = dict(SPEC, redemption="measure")
    del r["specification"]
    return r


class SupervisorDatabaseOutageTests(unittest.TestCase):
    """A supervisor on a fresh PostgreSQL database reached through a TCP proxy."""

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        _, proxied, self.proxy = proxied_database(self)
        self.sup = Supervisor(Path(self.mktemp()), users=USERS, caps=CAPS,
                              store_url=proxied, store_timeout=STORE_TIMEOUT)
        yield self.sup.start()
        self.addCleanup(self.sup.stop)
        self.client, self.component = Peer(self.sup, "client"), Peer(self.sup, "component")
        code, _, body = yield self.component.request("POST", "register/capability", envelope(PING_CAP))
        self.assertEqual(code, 200, body)

    @defer.inlineCallbacks
    def assert_nothing_was_queued(self) -> Any:
        # The first requests after the database is back succeed...
        code, _, body = yield self.component.request("GET", "show/specification")
        self.assertEqual(code, 200, body)
        # ... and the failed specification left no trace: nothing for the component, nothing
        # for the client to redeem.
        self.assertEqual(json.loads(body)["contents"], [])
        _, msg, _ = yield self.client.message("POST", "show/result", redemption())
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertEqual(self.sup.state.measurements, {})
        rows = yield self.sup.store.run("SELECT COUNT(*) FROM mplane_measurement")
        self.assertEqual(rows, [(0,)])
        # Submitting again works and is queued once.
        _, receipt, _ = yield self.client.message("POST", "register/specification", SPEC)
        self.assertEqual(receipt.kind, "receipt")
        _, work, _ = yield self.component.message("GET", "show/specification")
        self.assertIsInstance(work, Envelope)
        self.assertEqual([m.kind for m in work.contents], ["specification"])

    @defer.inlineCallbacks
    def test_specification_submitted_while_the_database_is_cut_gets_503_and_is_not_queued(self) -> Any:
        yield self.proxy.cut()
        code, _, body = yield self.client.request("POST", "register/specification", SPEC)
        self.assertEqual(code, 503, body)
        self.assertIn(b"nothing was done", body)
        self.proxy.restore()
        yield self.assert_nothing_was_queued()

    @defer.inlineCallbacks
    def test_specification_submitted_while_the_database_hangs_gets_503_within_the_timeout(self) -> Any:
        self.proxy.stall()
        started = time.monotonic()
        code, _, body = yield self.client.request("POST", "register/specification", SPEC)
        took = time.monotonic() - started
        self.assertEqual(code, 503, body)
        self.assertLess(took, STORE_TIMEOUT + 3, "the reply waited well past [store] timeout")
        self.proxy.restore()
        yield self.assert_nothing_was_queued()

    @defer.inlineCallbacks
    def test_registration_that_fails_to_commit_registers_nothing(self) -> Any:
        other = dict(PING_CAP, label="ping-other-ip4")
        yield self.proxy.cut()
        code, _, body = yield self.component.request("POST", "register/capability", envelope(other))
        self.assertEqual(code, 503, body)
        self.proxy.restore()
        _, caps, _ = yield self.client.message("GET", "capability")
        self.assertNotIn("ping-other-ip4", [c.label for c in caps.contents])
        self.assertNotIn("ping-other-ip4", [c.label for c in self.sup.state.capabilities.values()])


class ExpirySurvivesFailureTests(unittest.TestCase):
    """Result expiry on a Clock: a round that cannot write is logged, counted and retried."""

    @defer.inlineCallbacks
    def test_expiry_runs_again_after_a_failed_round(self) -> Any:
        store = Store.open(f"sqlite:///{Path(self.mktemp()).absolute() / 'state.db'}", reactor)
        self.addCleanup(store.close)
        clock = task.Clock()
        state = SupervisorState(store, RegistryStore(), Policy.from_files(None, None), clock.seconds,
                                result_expiry=60.0)
        failures: dict[str, int] = {}
        svc = SupervisorService(state, store, clock, expiry_interval=10.0, failures=failures)
        svc.startService()
        self.addCleanup(svc.stopService)
        yield svc.ready
        m = Measurement("m1", "client", "tok", None, "key", "comp", callback_spec(), DONE, None, False, 0.0, 0.0)
        yield defer.ensureDeferred(state._save_measurement(m))
        state.measurements[m.id] = m
        # The database refuses the round's DELETE: the round fails...
        yield store.run("ALTER TABLE mplane_measurement RENAME TO mplane_measurement_away")
        clock.advance(70)
        yield wait_for(lambda: failures.get("mplane-result-expiry") == 1, "the failed round to be counted")
        self.assertIn("m1", state.measurements)  # nothing removed from memory either
        # ... and the next period runs again and does the work.
        yield store.run("ALTER TABLE mplane_measurement_away RENAME TO mplane_measurement")
        clock.advance(10)
        yield wait_for(lambda: "m1" not in state.measurements, "the next round to expire the result")
        self.assertEqual((yield store.run("SELECT COUNT(*) FROM mplane_measurement")), [(0,)])
        self.assertEqual(failures, {"mplane-result-expiry": 1})


@defer.inlineCallbacks
def wait_for(predicate: Any, what: str, seconds: float = 10.0) -> Any:
    """Let the store's thread answer (real time), bounded."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)
