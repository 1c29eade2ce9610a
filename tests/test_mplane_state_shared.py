"""The supervisor state when the store is shared (active/active): memory follows the store,
redelivery is timed by the store's clock, re-reads that fail are retried with back-off,
large re-reads are decoded off the reactor, and stopping never waits for a connect.

Two ``SupervisorState`` objects on one real database play two daemons, with no listener
between them: what one changes reaches the other only when a test says so, so a stale
memory is made on purpose rather than by a race.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from ccnet.mplane.authz import Policy
from ccnet.mplane.cluster import ClusterSync, Listener
from ccnet.mplane.model import ExceptionMessage, RegistryStore, Statement, from_dict
from ccnet.mplane.state import (
    DECODE_INLINE,
    DONE,
    MEASUREMENT_COLUMNS,
    MIGRATIONS,
    QUEUED,
    RUNNING,
    SENT,
    STORE_CLOCK_SQL,
    Measurement,
    Peer,
    SupervisorState,
    callback_spec,
    measurement_from_row,
)
from ccnet.store import Store
from tests.support import create_database, drop_database, pg_reachable
from tests.test_mplane_faults import wait_for
from tests.test_mplane_supervisor import SPEC, result_for
from tests.test_mplane_support import PING_CAP

COMPONENT = Peer("component", ("component",), frozenset({"probe"}))
CLIENT = Peer("client", ("client",), frozenset({"guest"}))
CHANNEL = "ccnet_mplane_test"  # nobody listens: the test says when a daemon re-reads


class TwoDaemons:
    """Daemons A and B (two states, two stores) on one database; mixed into a TestCase."""

    def database(self) -> str:
        raise NotImplementedError

    @defer.inlineCallbacks
    def daemon(self, url: str, clock: Callable[[], float]) -> Any:
        store = Store.open(url, reactor)
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        yield store.migrate("mplane", MIGRATIONS)
        state = SupervisorState(store, RegistryStore(), Policy.from_strings(caps="ping-average: guest\n"), clock,
                                channel=CHANNEL if store.dialect == "postgresql" else None)
        yield defer.ensureDeferred(state.load())
        return state

    @defer.inlineCallbacks
    def two_daemons(self, clock_a: Callable[[], float] = time.time,
                    clock_b: Callable[[], float] = time.time) -> Any:
        """A with a registered component and one specification handed to it; B loaded after."""
        url = self.database()
        a = yield self.daemon(url, clock_a)
        outcome = yield defer.ensureDeferred(a.register(COMPONENT, [("ping", from_dict(PING_CAP))]))
        assert outcome == {"ping": {"registered": "ok"}}, outcome
        receipt = yield defer.ensureDeferred(a.submit(CLIENT, from_dict(SPEC)))
        assert receipt.kind == "receipt", receipt
        handed = yield defer.ensureDeferred(a.take_work(COMPONENT.identity, None))
        assert len(handed) == 1, handed
        b = yield self.daemon(url, clock_b)
        (m,) = a.measurements.values()
        return a, b, m.id, handed[0]

    @defer.inlineCallbacks
    def stored(self, state: SupervisorState, mid: str) -> Any:
        rows = yield state.store.run(f"SELECT {MEASUREMENT_COLUMNS} FROM mplane_measurement WHERE id = ?", (mid,))
        return measurement_from_row(rows[0])


class MemoryFollowsTheStore(TwoDaemons):
    """A finished measurement keeps its outcome in the store; the daemon whose change the
    store refused must end with that outcome in memory, not with its own."""

    @defer.inlineCallbacks
    def test_a_conflicting_exception_leaves_the_other_daemons_result_in_memory(self) -> Any:
        a, b, mid, spec = yield self.two_daemons()
        result = from_dict(result_for(spec))
        self.assertIsNone((yield defer.ensureDeferred(b.accept(COMPONENT, result))))
        stale = a.measurements[mid]
        self.assertEqual(stale.state, SENT)  # A has not heard of B's result
        yield defer.ensureDeferred(a._update(stale, state="failed", reply=ExceptionMessage(mid, "lost"),
                                             updated=time.time()))
        stored = yield self.stored(a, mid)
        self.assertEqual(stored.state, DONE)
        self.assertEqual(a.measurements[mid], stored)
        self.assertIsInstance(a.measurements[mid].reply, Statement)

    @defer.inlineCallbacks
    def test_an_interrupt_of_a_measurement_finished_elsewhere_leaves_it_finished_in_memory(self) -> Any:
        a, b, mid, spec = yield self.two_daemons()
        yield defer.ensureDeferred(b.accept(COMPONENT, from_dict(result_for(spec))))
        yield defer.ensureDeferred(a._update(a.measurements[mid], interrupt=True, updated=time.time()))
        self.assertEqual(a.measurements[mid], (yield self.stored(a, mid)))
        self.assertFalse(a.measurements[mid].interrupt)

    @defer.inlineCallbacks
    def test_an_unreadable_stored_reply_leaves_the_measurement_as_it_was_in_memory(self) -> Any:
        a, b, mid, _ = yield self.two_daemons()
        yield b.store.run("UPDATE mplane_measurement SET state = ?, reply = ? WHERE id = ?", (DONE, "{not json", mid))
        m = a.measurements[mid]
        yield defer.ensureDeferred(a._update(m, state="failed", reply=ExceptionMessage(mid, "lost"),
                                             updated=time.time()))
        self.assertEqual((m.state, m.reply), (SENT, None))

    @defer.inlineCallbacks
    def test_a_change_to_a_measurement_deleted_elsewhere_drops_it_from_memory(self) -> Any:
        a, b, mid, _ = yield self.two_daemons()
        yield b.store.run("DELETE FROM mplane_measurement WHERE id = ?", (mid,))
        yield defer.ensureDeferred(a._update(a.measurements[mid], state="running", updated=time.time()))
        self.assertNotIn(mid, a.measurements)


def sqlite_database(case: unittest.TestCase) -> str:
    """A SQLite store's URL in ``case``'s temporary directory."""
    return f"sqlite:///{Path(case.mktemp()).absolute() / 'state.db'}"


@defer.inlineCallbacks
def sqlite_store(case: unittest.TestCase) -> Any:
    """A migrated SQLite store (see :func:`sqlite_database`), closed at ``case``'s cleanup."""
    store = Store.open(sqlite_database(case), reactor)
    case.addCleanup(store.close)
    yield store.migrate("mplane", MIGRATIONS)
    return store


def fresh_database(case: unittest.TestCase) -> str:
    """A new PostgreSQL database for ``case``, dropped at its cleanup (skips without one)."""
    why = pg_reachable()
    if why is not None:
        raise unittest.SkipTest(why)
    dsn = create_database()
    case.addCleanup(drop_database, dsn)
    return dsn


class PostgreSQLMemoryFollowsTheStoreTests(MemoryFollowsTheStore, unittest.TestCase):
    timeout = 60

    def database(self) -> str:
        return fresh_database(self)


class SQLiteMemoryFollowsTheStoreTests(MemoryFollowsTheStore, unittest.TestCase):
    """The same code path on SQLite (one daemon there, but two states of one process may share a file)."""

    timeout = 60

    def database(self) -> str:
        return sqlite_database(self)


class StoreClockTests(TwoDaemons, unittest.TestCase):
    """One daemon's clock is 1000 s slow, the other's 1000 s fast: redelivery (of a
    specification handed out without a receipt) still follows PostgreSQL's clock."""

    timeout = 60

    def database(self) -> str:
        return fresh_database(self)

    @defer.inlineCallbacks
    def test_a_fast_daemon_does_not_hand_out_again_what_a_slow_one_just_handed_out(self) -> Any:
        slow, fast, mid, _ = yield self.two_daemons(lambda: time.time() - 1000, lambda: time.time() + 1000)
        self.assertEqual(fast.measurements[mid].state, SENT)
        self.assertEqual((yield defer.ensureDeferred(fast.take_work(COMPONENT.identity, None))), [])

    @defer.inlineCallbacks
    def test_a_slow_daemon_hands_out_again_what_is_overdue_by_the_store_clock(self) -> Any:
        fast, slow, mid, _ = yield self.two_daemons(lambda: time.time() + 1000, lambda: time.time() - 1000)
        # Handed out by the fast daemon, no receipt for longer than redeliver_after by PostgreSQL's clock.
        yield fast.store.run("UPDATE mplane_measurement SET updated = updated - ?", (slow.redeliver_after + 5,))
        yield defer.ensureDeferred(slow.refresh(measurements=[mid]))
        again = yield defer.ensureDeferred(slow.take_work(COMPONENT.identity, None))
        self.assertEqual([s.token for s in again], [mid])

    @defer.inlineCallbacks
    def test_a_step_of_the_wall_clock_does_not_move_the_store_clock(self) -> Any:
        wall = [time.time()]
        state = yield self.daemon(self.database(), lambda: wall[0])
        wall[0] += 1000  # NTP steps this host's clock
        rows = yield state.store.run(STORE_CLOCK_SQL)
        self.assertLess(abs(state.store_now() - float(rows[0][0])), 30)


class RetryTests(unittest.TestCase):
    """A re-read that fails is retried on a Clock with back-off: the same rows, then everything."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.store = yield sqlite_store(self)
        self.state = SupervisorState(self.store, RegistryStore(), Policy(), time.time)
        # As another daemon wrote it: stored, not in this daemon's memory.
        m = Measurement("m1", "client", "tok", None, "key", "comp", callback_spec(), QUEUED, None, False, 0.0, 0.0)
        yield defer.ensureDeferred(self.state._save_measurement(m))
        self.clock = task.Clock()
        # rng 1.0: each wait is its whole step (1, 2, 4, then capped at 5).
        self.sync = ClusterSync(self.state, self.clock, retry_min=1.0, retry_max=5.0, escalate_after=3,
                                rng=lambda: 1.0)
        self.addCleanup(self.sync.stop)

    def break_store(self) -> Any:
        return self.store.run("ALTER TABLE mplane_measurement RENAME TO mplane_measurement_away")

    def mend_store(self) -> Any:
        return self.store.run("ALTER TABLE mplane_measurement_away RENAME TO mplane_measurement")

    @defer.inlineCallbacks
    def attempt(self, wait: float, failures: int) -> Any:
        """Advance to the next try and let it fail; returns the wait before the one after."""
        self.clock.advance(wait)
        yield wait_for(lambda: self.sync.failures == failures, f"failure {failures}")
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    @defer.inlineCallbacks
    def test_a_failed_refresh_retries_the_same_rows_with_growing_waits(self) -> Any:
        yield self.break_store()
        self.sync.payload("another-daemon m m1")
        self.assertEqual((yield self.attempt(0, 1)), 1.0)
        self.assertEqual((yield self.attempt(1.0, 2)), 2.0)
        yield self.mend_store()
        self.clock.advance(2.0)
        yield wait_for(lambda: "m1" in self.state.measurements, "the retry to read m1")
        self.assertEqual(self.state.cluster_events["resyncs"], 0)  # the rows only, not everything
        self.assertEqual(self.sync.failures, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_after_three_failures_it_resyncs_everything_with_capped_waits(self) -> Any:
        yield self.break_store()
        self.sync.payload("another-daemon m m1")
        waits = [(yield self.attempt(0, 1))]
        for n, wait in enumerate([1.0, 2.0], start=2):
            waits.append((yield self.attempt(wait, n)))
        self.assertEqual(self.state.cluster_events["resyncs"], 0)
        waits.append((yield self.attempt(waits[-1], 4)))  # the fourth try is a full resync
        self.assertEqual(self.state.cluster_events["resyncs"], 1)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 5.0])
        yield self.mend_store()
        self.clock.advance(5.0)
        yield wait_for(lambda: "m1" in self.state.measurements, "the resync to read m1")
        self.assertEqual(self.state.cluster_events["resyncs"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_reconnection_resyncs_at_once_instead_of_after_the_wait(self) -> Any:
        yield self.break_store()
        self.sync.payload("another-daemon m m1")
        yield self.attempt(0, 1)
        yield self.mend_store()
        self.sync.connected()
        self.clock.advance(0)
        yield wait_for(lambda: "m1" in self.state.measurements, "the resync to read m1")
        self.assertEqual(self.state.cluster_events["resyncs"], 1)


    @defer.inlineCallbacks
    def test_a_reconnection_while_a_read_is_in_flight_retries_at_once_when_it_fails(self) -> Any:
        yield self.break_store()
        self.sync.payload("another-daemon m m1")
        self.clock.advance(0)  # the read starts (it fails in the store's thread) ...
        self.sync.connected()  # ... and the listener reconnects meanwhile
        yield wait_for(lambda: bool(self.clock.getDelayedCalls()), "the failure")
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), self.clock.seconds())  # no back-off wait
        self.assertEqual(self.sync.failures, 0)  # (counted afresh from the reconnection)
        yield self.mend_store()
        self.clock.advance(0)
        yield wait_for(lambda: "m1" in self.state.measurements, "the resync to read m1")
        self.assertEqual(self.state.cluster_events["resyncs"], 1)

    @defer.inlineCallbacks
    def test_a_read_failing_after_the_stop_is_neither_retried_nor_logged_as_a_failure(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.break_store()
        self.sync.payload("another-daemon m m1")
        self.clock.advance(0)  # the read starts ...
        self.sync.stop()  # ... and the daemon stops (its pools close: the read fails)
        yield wait_for(lambda: not self.sync._busy, "the read to end")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([e for e in events if e.get("log_namespace") == "ccnet.mplane.cluster"
                          and e["log_level"] >= LogLevel.warn], [])


class OffloadTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_a_large_load_is_decoded_in_a_thread_a_small_refresh_in_the_reactor(self) -> Any:
        store = yield sqlite_store(self)
        threads: list[int] = []

        def offload(fn: Callable[[], Any]) -> Any:
            def recorded() -> Any:
                threads.append(threading.get_ident())
                return fn()
            return deferToThread(recorded)

        state = SupervisorState(store, RegistryStore(), Policy(), time.time, offload=offload)
        many = [Measurement(f"m{n}", "client", f"tok{n}", None, "key", "comp", callback_spec(), QUEUED, None,
                            False, 0.0, 0.0) for n in range(DECODE_INLINE + 1)]
        yield state.batcher.write([state._measurement_op(m) for m in many])
        yield defer.ensureDeferred(state.load())
        self.assertEqual(sorted(state.measurements), sorted(m.id for m in many))
        self.assertEqual(state.measurements["m7"], many[7])
        self.assertTrue(threads)
        self.assertNotIn(threading.get_ident(), threads)
        decoded_off = len(threads)
        yield defer.ensureDeferred(state.refresh(measurements=["m1", "m2"]))
        self.assertEqual(len(threads), decoded_off)


class HeldAnswers:
    """A store whose transactions commit as usual but whose answers wait for ``release``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.answers: list[tuple[defer.Deferred[Any], defer.Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def run_interaction(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        answer: defer.Deferred[Any] = defer.Deferred()
        self.answers.append((self.store.run_interaction(fn, *args), answer))
        return answer

    def committed(self, n: int) -> bool:
        return len(self.answers) >= n and all(done.called for done, _ in self.answers)

    def release(self, n: int) -> None:
        done, answer = self.answers[n]
        done.chainDeferred(answer)


class AnswerOrderTests(TwoDaemons, unittest.TestCase):
    """Two writes of one daemon to one measurement commit in one order; their answers
    may come back in the other: memory keeps the newer row all the same."""

    timeout = 60

    def database(self) -> str:
        return sqlite_database(self)

    @defer.inlineCallbacks
    def test_a_claim_answered_after_a_later_update_does_not_undo_it_in_memory(self) -> Any:
        state = yield self.daemon(self.database(), time.time)
        store = state.store
        yield defer.ensureDeferred(state.register(COMPONENT, [("ping", from_dict(PING_CAP))]))
        yield defer.ensureDeferred(state.submit(CLIENT, from_dict(SPEC)))
        (m,) = state.measurements.values()
        held = HeldAnswers(store)
        state.store = state.batcher.store = held  # type: ignore[assignment]
        claimed = defer.ensureDeferred(state.take_work(COMPONENT.identity, None))  # QUEUED -> SENT
        yield wait_for(lambda: held.committed(1), "the claim to commit")
        updated = defer.ensureDeferred(state._update(m, state=RUNNING, updated=time.time()))  # -> RUNNING
        yield wait_for(lambda: held.committed(2), "the update to commit")
        held.release(1)
        yield updated
        held.release(0)
        self.assertEqual([s.token for s in (yield claimed)], [m.id])
        rows = yield store.run(f"SELECT {MEASUREMENT_COLUMNS} FROM mplane_measurement")
        self.assertEqual(measurement_from_row(rows[0]).state, RUNNING)
        self.assertEqual(state.measurements[m.id], measurement_from_row(rows[0]))


class OverlappingReadsTests(unittest.TestCase):
    """A large re-read decoded in a thread overlaps a small one made meanwhile (a request
    re-reading one row): the older read must not overwrite what the newer one found."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.store = yield sqlite_store(self)
        # The decoding thread, held by the test: each offloaded call waits for release().
        self.held: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

        def offload(fn: Callable[[], Any]) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((fn, d))
            return d

        self.state = SupervisorState(self.store, RegistryStore(), Policy(), time.time, offload=offload)
        many = [Measurement(f"m{n}", "client", f"tok{n}", None, "key", "comp", callback_spec(), SENT, None,
                            False, 0.0, 0.0) for n in range(DECODE_INLINE + 1)]
        yield self.state.batcher.write([self.state._measurement_op(m) for m in many])

    def release(self) -> None:
        for fn, d in self.held:
            d.callback(fn())

    @defer.inlineCallbacks
    def start_large_read(self, read: Callable[[], Any]) -> Any:
        """``read()`` started and waiting for its decoding (its rows read as they were)."""
        d = defer.ensureDeferred(read())
        yield wait_for(lambda: bool(self.held), "the large read to reach its decoding")
        return d

    @defer.inlineCallbacks
    def check_newer_row_survives(self, read: Callable[[], Any]) -> Any:
        large = yield self.start_large_read(read)
        # Meanwhile another daemon finishes m1 and deletes m2; a request here re-reads both.
        yield self.store.run("UPDATE mplane_measurement SET state = ?, updated = 1 WHERE id = 'm1'", (DONE,))
        yield self.store.run("DELETE FROM mplane_measurement WHERE id = 'm2'")
        yield defer.ensureDeferred(self.state.refresh(measurements=["m1", "m2"]))
        self.assertEqual(self.state.measurements["m1"].state, DONE)
        self.release()
        yield large
        self.assertEqual(self.state.measurements["m1"].state, DONE)
        self.assertNotIn("m2", self.state.measurements)
        self.assertEqual(self.state.measurements["m3"].state, SENT)  # the rest as the large read found it
        self.assertEqual(self.state._marks, {})  # forgotten once no read is in flight

    def test_a_resync_does_not_overwrite_a_row_re_read_while_it_decoded(self) -> Any:
        return self.check_newer_row_survives(self.state.load)

    def test_a_large_refresh_does_not_overwrite_a_row_re_read_while_it_decoded(self) -> Any:
        return self.check_newer_row_survives(
            lambda: self.state.refresh(measurements=[f"m{n}" for n in range(DECODE_INLINE + 1)]))

    @defer.inlineCallbacks
    def test_a_change_committed_here_while_a_large_read_decoded_stays(self) -> Any:
        yield defer.ensureDeferred(self.state.refresh(measurements=["m1"]))
        large = yield self.start_large_read(self.state.load)
        yield defer.ensureDeferred(self.state._update(self.state.measurements["m1"], state=DONE, updated=1.0))
        self.release()
        yield large
        self.assertEqual(self.state.measurements["m1"].state, DONE)


class ListenerStopTests(unittest.TestCase):
    """A stop does not wait for a connection attempt to a server that never answers."""

    timeout = 30  # far below the listener's connect timeout

    @defer.inlineCallbacks
    def test_stop_completes_while_the_thread_is_stuck_in_connect(self) -> Any:
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(20)
        port = server.getsockname()[1]
        listener = Listener(f"postgresql://nobody@127.0.0.1:{port}/nothing", CHANNEL, reactor,
                            lambda _: None, lambda: None, timeout=600.0)
        listener.startService()
        # The listener's connection, accepted and never answered: psycopg waits in connect.
        conn, _ = yield deferToThread(server.accept)
        self.addCleanup(conn.close)  # (then connect fails and the thread ends)
        self.assertTrue(listener.connecting)
        yield listener.stopService()
        self.assertFalse(listener.running)
