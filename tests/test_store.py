"""The store: same behaviour on SQLite (embedded default) and real PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ccnet.store import Store, StoreError, StoreTimeout
from tests.support import (
    PG_DSN,
    TCPProxy,
    create_database,
    drop_database,
    pg_port,
    pg_reachable,
    pg_url,
)


class StoreBehaviour:
    """Mixed into one TestCase per backend."""

    store: Store
    open_store: Callable[[], Store]  # each backend's TestCase says how to open its store

    def setUp(self) -> Any:
        self.store = self.open_store()
        self.component = f"test_{uuid.uuid4().hex[:10]}"
        self.table = self.component + "_items"
        # trial runs cleanups last-in first-out: drop the test's rows, then close.
        self.addCleanup(lambda: self.store.close())
        self.addCleanup(self._drop)
        d = self.store.run(f"DROP TABLE IF EXISTS {self.table}")
        d.addCallback(lambda _: self.store.migrate(self.component, []))  # creates ccnet_schema
        return d

    def _drop(self) -> Any:
        d = self.store.run(f"DROP TABLE IF EXISTS {self.table}")
        d.addCallback(lambda _: self.store.run("DELETE FROM ccnet_schema WHERE component = ?", (self.component,)))
        return d

    def schema(self) -> list[str]:
        return [
            f"CREATE TABLE {self.table} (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
            f"ALTER TABLE {self.table} ADD COLUMN n INTEGER DEFAULT 0",
        ]

    @defer.inlineCallbacks
    def test_migrate_is_versioned_and_idempotent(self) -> Any:
        version = yield self.store.migrate(self.component, self.schema()[:1])
        self.assertEqual(version, 1)  # type: ignore[attr-defined]
        version = yield self.store.migrate(self.component, self.schema())
        self.assertEqual(version, 2)  # type: ignore[attr-defined]
        version = yield self.store.migrate(self.component, self.schema())
        self.assertEqual(version, 2)  # type: ignore[attr-defined]
        yield self.store.run(f"INSERT INTO {self.table} (k, v, n) VALUES (?, ?, ?)", ("a", "1", 5))
        rows = yield self.store.run(f"SELECT k, v, n FROM {self.table}")
        self.assertEqual(rows, [("a", "1", 5)])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_placeholders_and_percent_signs(self) -> Any:
        yield self.store.migrate(self.component, self.schema())
        yield self.store.run(f"INSERT INTO {self.table} (k, v) VALUES (?, ?)", ("100%", "it's ? here"))
        rows = yield self.store.run(f"SELECT v FROM {self.table} WHERE k LIKE '100%'")
        self.assertEqual(rows, [("it's ? here",)])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_interaction_is_one_transaction(self) -> Any:
        yield self.store.migrate(self.component, self.schema())

        def work(cursor: Any) -> None:
            cursor.execute(self.store.sql(f"INSERT INTO {self.table} (k, v) VALUES (?, ?)"), ("x", "1"))
            raise ValueError("boom")

        yield self.assertFailure(self.store.run_interaction(work), ValueError)  # type: ignore[attr-defined]
        rows = yield self.store.run(f"SELECT k FROM {self.table}")
        self.assertEqual(rows, [])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_ping(self) -> Any:
        ok = yield self.store.ping()
        self.assertTrue(ok)  # type: ignore[attr-defined]


class SQLiteStoreTests(StoreBehaviour, unittest.TestCase):
    def open_store(self) -> Store:
        path = Path(self.mktemp()).absolute() / "state" / "ccnet.db"
        return Store.open(f"sqlite:///{path}", reactor)

    @defer.inlineCallbacks
    def test_data_survives_reopening(self) -> Any:
        yield self.store.migrate(self.component, self.schema())
        yield self.store.run(f"INSERT INTO {self.table} (k, v) VALUES (?, ?)", ("kept", "yes"))
        url = self.store.url
        yield self.store.close()
        again = Store.open(url, reactor)
        rows = yield again.run(f"SELECT v FROM {self.table} WHERE k = ?", ("kept",))
        self.assertEqual(rows, [("yes",)])
        self.store = again


class PostgreSQLStoreTests(StoreBehaviour, unittest.TestCase):
    def open_store(self) -> Store:
        return Store.open(PG_DSN, reactor)


class StoreURLTests(unittest.TestCase):
    def test_unknown_scheme_is_explained(self) -> None:
        with self.assertRaises(StoreError) as caught:
            Store.open("mysql://x", reactor)
        self.assertIn("sqlite:///", str(caught.exception))

    def test_sqlite_without_returning_is_refused_at_open_with_the_versions(self) -> None:
        # SQLite before 3.35 (RHEL 8/9's) has no UPDATE ... RETURNING, which the supervisor
        # claims work with; this machine's is newer, so its version is what is pretended.
        self.patch(sqlite3, "sqlite_version_info", (3, 34, 1))
        self.patch(sqlite3, "sqlite_version", "3.34.1")
        with self.assertRaises(StoreError) as caught:
            Store.open(f"sqlite:///{self.mktemp()}.db", reactor)
        self.assertIn("SQLite 3.34.1 is too old", str(caught.exception))
        self.assertIn("3.35", str(caught.exception))

    def test_postgres_down_fails_the_call_not_the_process(self) -> Any:
        store = Store.open("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2", reactor)
        self.addCleanup(store.close)
        d = store.run("SELECT 1")
        return self.assertFailure(d, Exception)


class MigrationAtomicityTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_failed_migration_leaves_nothing_behind(self) -> Any:
        store = Store.open(f"sqlite:///{Path(self.mktemp()).absolute() / 'm.db'}", reactor)
        self.addCleanup(store.close)
        broken = ["CREATE TABLE a (x TEXT)", "CREATE TABLE b (oops"]
        yield self.assertFailure(store.migrate("atomic", broken), Exception)
        fixed = ["CREATE TABLE a (x TEXT)", "CREATE TABLE b (y TEXT)"]
        version = yield store.migrate("atomic", fixed)
        self.assertEqual(version, 2)

    def test_passwords_are_not_shown(self) -> None:
        from ccnet.store import redact_url

        self.assertEqual(redact_url("postgresql://u:s3cret@db/x"), "postgresql://u:***@db/x")
        self.assertEqual(redact_url("postgresql://u@db/x"), "postgresql://u@db/x")


def _pg_or_skip() -> None:
    why = pg_reachable()
    if why is not None:
        raise unittest.SkipTest(why)


class PostgreSQLFaultTests(unittest.TestCase):
    """The store against PostgreSQL through a TCP proxy the test cuts, stalls and restores."""

    timeout = 60
    store_timeout = 1.0

    def setUp(self) -> Any:
        _pg_or_skip()
        self.proxy = TCPProxy(pg_port(PG_DSN))
        self.proxy.start()
        self.addCleanup(self.proxy.stop)
        self.store = Store.open(pg_url(PG_DSN, port=self.proxy.number), reactor, timeout=self.store_timeout)
        self.addCleanup(self.store.close)
        self.table = f"fault_{uuid.uuid4().hex[:10]}"
        self.addCleanup(self._drop_table)
        return self.store.run(f"CREATE TABLE {self.table} (k TEXT PRIMARY KEY)")

    @defer.inlineCallbacks
    def _drop_table(self) -> Any:
        direct = Store.open(PG_DSN, reactor)
        try:
            yield direct.run(f"DROP TABLE IF EXISTS {self.table}")
        finally:
            yield direct.close()

    def fill_pool(self) -> Any:
        """Several calls at once, so several pool threads hold a connection."""
        return defer.gatherResults([self.store.run("SELECT pg_sleep(0.05)") for _ in range(5)])

    @defer.inlineCallbacks
    def test_stalled_database_fails_calls_within_the_timeout_and_the_write_is_not_applied(self) -> Any:
        yield self.fill_pool()
        self.proxy.stall()
        started = time.monotonic()
        failure = yield self.assertFailure(
            self.store.run(f"INSERT INTO {self.table} (k) VALUES (?)", ("during",)), StoreTimeout)
        took = time.monotonic() - started
        self.assertIn("did not answer within 1s", str(failure))
        self.assertLess(took, self.store_timeout + 2, "the caller waited well past the store timeout")
        # A new connection that hangs in its start-up is bounded the same way.
        yield self.assertFailure(self.store.run("SELECT 1"), StoreTimeout)
        self.proxy.restore()
        rows = yield self.store.run(f"SELECT k FROM {self.table}")  # first call after recovery
        self.assertEqual(rows, [])  # what the caller was told failed did not happen
        yield self.store.run(f"INSERT INTO {self.table} (k) VALUES (?)", ("after",))
        self.assertEqual((yield self.store.run(f"SELECT k FROM {self.table}")), [("after",)])

    @defer.inlineCallbacks
    def test_after_a_cut_the_first_call_succeeds_on_a_fresh_connection(self) -> Any:
        yield self.fill_pool()
        yield self.proxy.cut()
        failure = yield self.assertFailure(self.store.run("SELECT 1"), StoreError)
        self.assertIn("database unavailable", str(failure))
        self.proxy.restore()
        # Every pool thread still holds a dead connection: the very first call must work anyway.
        for _ in range(6):
            self.assertEqual((yield self.store.run("SELECT 1")), [(1,)])
        self.assertGreater(self.store.reconnects, 0)


class FreshDatabaseMigrationTests(unittest.TestCase):
    """Every part migrating at once on an empty PostgreSQL database."""

    timeout = 120

    @defer.inlineCallbacks
    def test_concurrent_migrations_of_many_components_on_a_fresh_database(self) -> Any:
        _pg_or_skip()

        for attempt in range(4):
            dsn = create_database()
            self.addCleanup(drop_database, dsn)
            store = Store.open(dsn, reactor)
            try:
                parts = [f"part{i}" for i in range(6)]
                versions = yield defer.gatherResults(
                    [store.migrate(p, [f"CREATE TABLE {p}_t (x INTEGER)", f"CREATE INDEX {p}_i ON {p}_t (x)"])
                     for p in parts], consumeErrors=True)
                self.assertEqual(versions, [2] * len(parts), f"attempt {attempt}")
                rows = yield store.run("SELECT component, version FROM ccnet_schema ORDER BY component")
                self.assertEqual(rows, [(p, 2) for p in parts])
            finally:
                yield store.close()
