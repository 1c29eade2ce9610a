"""Persistent state behind a Deferred API: SQLite (default) or PostgreSQL via adbapi.

SQL is written once with ``?`` placeholders and translated for PostgreSQL. Schemas are
versioned per component (``migrate``), so each protocol owns its tables. SQLite runs with
one connection in WAL mode and ``synchronous=FULL``: a write that returned is on disk.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Store", "StoreError", "redact_url"]

log = Logger()

_PLACEHOLDER = re.compile(r"\?")


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class StoreError(Exception):
    """The store cannot be opened or used."""


def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.isolation_level = ""  # type: ignore[assignment]  # back to implicit transactions for adbapi's commit/rollback
    return conn


class Store:
    """Asynchronous access to the daemon's database."""

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str, url: str) -> None:
        self._pool = pool
        self.dialect = dialect
        self.url = url
        self.closed = False
        #: Called with (seconds, ok) after every interaction (the daemon feeds /metrics).
        self.observer: Callable[[float, bool], None] | None = None

    @classmethod
    def open(cls, url: str, reactor: Any = None) -> Store:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the folder for {path}: {exc.strerror}") from None
            # One connection: SQLite serialises writers anyway, and :memory: must be shared.
            pool = adbapi.ConnectionPool(
                "ccnet.store", path, cp_min=1, cp_max=1, cp_reactor=reactor,
                cp_reconnect=True,
            )
            return cls._started(pool, reactor, "sqlite", url)
        if url.startswith(("postgresql://", "postgres://")):
            pool = adbapi.ConnectionPool(
                "psycopg", url, cp_min=1, cp_max=5, cp_reactor=reactor, cp_reconnect=True,
                cp_noisy=False,
            )
            return cls._started(pool, reactor, "postgresql", url)
        raise StoreError(f"store url {redact_url(url)!r}: expected sqlite:///PATH or postgresql://...")

    @classmethod
    def _started(cls, pool: adbapi.ConnectionPool, reactor: Any, dialect: str, url: str) -> Store:
        # adbapi starts its threads when the reactor starts; a reactor that already
        # started (a test run, a store opened later) never fires that again.
        if getattr(reactor, "_started", False):
            pool.start()
        return cls(pool, dialect, url)

    def sql(self, statement: str) -> str:
        """Translate ``?`` placeholders for the backend."""
        if self.dialect == "postgresql":
            return _PLACEHOLDER.sub("%s", statement.replace("%", "%%"))
        return statement

    def run(self, statement: str, params: Sequence[Any] = ()) -> defer.Deferred[list[tuple[Any, ...]]]:
        """Run one statement in a transaction; fire with its rows ([] when none)."""
        sql = self.sql(statement)

        def work(cursor: Any) -> list[tuple[Any, ...]]:
            cursor.execute(sql, tuple(params))
            if cursor.description is None:
                return []
            return [tuple(row) for row in cursor.fetchall()]

        return self._interact(work)

    def _interact(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred[Any]:
        if self.closed:
            return defer.fail(StoreError(f"store {redact_url(self.url)} is closed"))
        d: defer.Deferred[Any] = self._pool.runInteraction(fn, *args, **kw)
        observer = self.observer
        if observer is not None:
            started = time.monotonic()

            def seen(result: Any) -> Any:
                observer(time.monotonic() - started, not isinstance(result, Failure))
                return result

            d.addBoth(seen)
        return d

    def run_interaction(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred[Any]:
        """Run ``fn(cursor, *args)`` in one transaction in the pool's thread.

        Use ``store.sql(...)`` inside ``fn`` to translate placeholders.
        """
        return self._interact(fn, *args, **kw)

    def migrate(self, component: str, statements: Sequence[str]) -> defer.Deferred[int]:
        """Apply the statements not applied yet for ``component``; fire with the new version."""

        def work(cursor: Any) -> int:
            # One transaction for the whole step: SQLite would otherwise commit each DDL
            # statement on its own and leave a half-migrated schema behind a failure.
            if self.dialect == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ccnet_schema:{component}",))
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS ccnet_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            cursor.execute(self.sql("SELECT version FROM ccnet_schema WHERE component = ?"), (component,))
            row = cursor.fetchone()
            version = int(row[0]) if row else 0
            for statement in statements[version:]:
                cursor.execute(statement)
            if row is None:
                cursor.execute(
                    self.sql("INSERT INTO ccnet_schema (component, version) VALUES (?, ?)"),
                    (component, len(statements)),
                )
            elif len(statements) > version:
                cursor.execute(
                    self.sql("UPDATE ccnet_schema SET version = ? WHERE component = ?"),
                    (len(statements), component),
                )
            return max(version, len(statements))

        return self._interact(work)

    def ping(self) -> defer.Deferred[bool]:
        """Fire True when the database answers a trivial query."""
        d: defer.Deferred[Any] = self.run("SELECT 1")
        d.addCallback(lambda rows: rows == [(1,)])
        return d

    def close(self) -> defer.Deferred[None]:
        """Stop the pool; idempotent. Later calls fail with StoreError instead of hanging."""
        if not self.closed:
            self.closed = True
            self._pool.close()
        return defer.succeed(None)


def connect(path: str, **_: Any) -> sqlite3.Connection:
    """adbapi's ``connect`` for SQLite (the pool imports this module by name)."""
    return _sqlite_connect(path)


# adbapi reads these DB-API attributes from the module it is given.
apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"
Error = sqlite3.Error
