"""The store: same behaviour on SQLite (embedded default) and real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ccnet.store import Store, StoreError
from tests.support import PG_DSN


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
