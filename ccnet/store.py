"""Persistent state behind a Deferred API: SQLite (default) or PostgreSQL, on a thread pool.

SQL is written once with ``?`` placeholders and translated for PostgreSQL. Schemas are
versioned per component (``migrate``), so each protocol owns its tables; all migrations of
all components (and of every daemon sharing the database) run one at a time. SQLite runs
with one connection in WAL mode and ``synchronous=FULL``: a write that returned is on disk.

Every call is bounded by ``timeout`` seconds (PostgreSQL also gets it as connect timeout
and ``statement_timeout``): past it the caller gets :class:`StoreTimeout` and the
connection is cut, so a database that accepts connections but never answers cannot hold
a request or a pool thread. A call that failed because its connection was broken (an
outage the pool has not noticed yet) runs again on a fresh connection, as long as it
failed before its commit: the first request after an outage succeeds.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ccnet.reactors import IReactor, default_reactor

__all__ = ["DEFAULT_TIMEOUT", "Store", "StoreError", "StoreTimeout", "redact_url"]

log = Logger()

_PLACEHOLDER = re.compile(r"\?")

#: Seconds a store call may take before its caller gets StoreTimeout (``[store] timeout``).
DEFAULT_TIMEOUT = 10.0

#: The advisory lock every migration holds (PostgreSQL): one schema change at a time for
#: all components and all daemons sharing the database.
SCHEMA_LOCK = "ccnet_schema"


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


class StoreTimeout(StoreError):
    """The database did not answer within the store timeout; nothing was committed."""


#: The oldest SQLite with ``UPDATE ... RETURNING``.
MIN_SQLITE = (3, 35)


class _OneDaemonLock:
    """``<database>.lock``, locked (``flock``) by the one daemon that may use a SQLite file.

    SQLite is the embedded store of a single daemon: a second daemon on the same file
    would run a second supervisor whose memory the first never sees. The kernel drops
    the lock when the holder exits, even by ``kill -9``, so no stale lock needs cleaning.
    Stores of one process share it (a daemon's parts, tests restarting in-process).
    """

    _held: dict[str, tuple[int, int]] = {}  # path -> (fd, users)
    _guard = threading.Lock()

    @classmethod
    def acquire(cls, path: str) -> str:
        import fcntl

        lock = str(Path(path).resolve()) + ".lock"
        with cls._guard:
            if lock in cls._held:
                fd, users = cls._held[lock]
                cls._held[lock] = (fd, users + 1)
                return lock
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreError(f"cannot create {lock}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 100, 0).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise StoreError(f"sqlite:///{path} is in use by another ccnet daemon ({holder}); a SQLite "
                                 "store serves one daemon: give each daemon its own file, or share "
                                 "[store] url = postgresql://...") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            cls._held[lock] = (fd, 1)
            return lock

    @classmethod
    def release(cls, lock: str) -> None:
        with cls._guard:
            fd, users = cls._held.get(lock, (-1, 0))
            if users > 1:
                cls._held[lock] = (fd, users - 1)
            elif users == 1:
                del cls._held[lock]
                os.close(fd)


def _sqlite_connect(path: str, timeout: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.isolation_level = ""  # type: ignore[assignment]  # back to implicit transactions for the pool's commit/rollback
    return conn


def _broken(failure: Failure) -> bool:
    """Did the call fail because its connection is gone (not because of its SQL)?"""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return bool(failure.check(psycopg.OperationalError, psycopg.InterfaceError))


def _cut(conn: Any) -> None:
    """Unblock a thread waiting on ``conn``: interrupt SQLite, shut a PostgreSQL socket."""
    if isinstance(conn, sqlite3.Connection):
        conn.interrupt()
        return
    try:
        fd = conn.pgconn.socket
    except Exception:  # already closed
        return
    # shutdown() on a duplicate reaches the same socket: the waiting read sees EOF at once.
    with socket.socket(fileno=os.dup(fd)) as sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _unusable(conn: Any) -> bool:
    return bool(getattr(conn, "broken", False) or getattr(conn, "closed", False))


class _Call:
    """One store call as the pool thread and the reactor's timer both see it."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        self.fn, self.args, self.kw = fn, args, kw
        self.lock = threading.Lock()
        self.conn: Any = None  # the DB-API connection running it
        self.abandoned = False  # the caller was told it timed out: never commit it
        self.body_done = False  # ``fn`` returned: only the commit is left


def _daemon_thread(*args: Any, **kw: Any) -> threading.Thread:
    # A thread stuck on a dead database connection must not keep the process alive at exit.
    return threading.Thread(*args, daemon=True, **kw)


class _StoreThreads(ThreadPool):
    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]


class _Pool:
    """DB-API connections, one per worker thread of a Twisted thread pool.

    A connection whose call failed and that cannot roll back (or says it is broken) is
    closed and forgotten: that thread's next call opens a new one.
    """

    def __init__(self, connect: Callable[[], Any], reactor: IReactor, size: int) -> None:
        self._connect = connect
        self._reactor = reactor
        self.size = size
        self._threads = _StoreThreads(minthreads=0, maxthreads=size, name="ccnet-store")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        self._started = False
        reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        if not self._started and not self._threads.joined:
            self._started = True
            self._threads.start()
            # As adbapi: a reactor that shuts down takes the pool with it.
            self._reactor.addSystemEventTrigger("during", "shutdown", self.close)

    def run(self, call: _Call) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self._reactor, self._threads, self._in_thread, call)

    def _in_thread(self, call: _Call) -> Any:
        conn = getattr(self._local, "conn", None)
        with call.lock:
            if call.abandoned:
                raise StoreTimeout("abandoned before it started")
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        with call.lock:
            if call.abandoned:
                raise StoreTimeout("abandoned before it started")
            call.conn = conn
        try:
            cursor = conn.cursor()
            try:
                result = call.fn(cursor, *call.args, **call.kw)
            finally:
                try:
                    cursor.close()
                except Exception:
                    pass
            with call.lock:
                if call.abandoned:
                    # The caller was told it failed: it must not commit now.
                    raise StoreTimeout("abandoned before its commit")
                call.body_done = True
            conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                self._forget(conn)
            else:
                if _unusable(conn):
                    self._forget(conn)
            raise

    def _forget(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        try:
            conn.close()
        except Exception:
            pass

    def close(self) -> None:
        """Cut what is running, stop the threads, close every connection (idempotent)."""
        if self._threads.joined:
            return
        with self._lock:
            conns = list(self._open)
            self._open.clear()
        for conn in conns:
            try:
                _cut(conn)
            except Exception:
                pass
        if self._started:
            self._threads.stop()
        else:
            self._threads.joined = True
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass


class Store:
    """Asynchronous access to the daemon's database."""

    def __init__(self, pool: _Pool, dialect: str, url: str, reactor: IReactor, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._pool = pool
        self.dialect = dialect
        self.url = url
        self.reactor = reactor
        self.timeout = timeout
        self.closed = False
        #: Called with (seconds, ok) after every interaction (the daemon feeds /metrics).
        self.observer: Callable[[float, bool], None] | None = None
        #: Calls that gave up after ``timeout``, and calls run again on a fresh connection.
        self.timeouts = 0
        self.reconnects = 0
        #: Calls not answered yet: their Deferred and timeout timer (answered at close).
        self._in_flight: dict[_Call, tuple[defer.Deferred[Any], Any]] = {}
        #: The one-daemon lock of a SQLite file (released at close).
        self.lock: str | None = None

    @classmethod
    def open(cls, url: str, reactor: IReactor | None = None, timeout: float = DEFAULT_TIMEOUT) -> Store:
        reactor = reactor if reactor is not None else default_reactor()
        if url.startswith("sqlite:///"):
            if sqlite3.sqlite_version_info < MIN_SQLITE:
                # The mPlane supervisor claims work with UPDATE ... RETURNING (SQLite 3.35).
                raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old: ccnet needs "
                                 f"{'.'.join(map(str, MIN_SQLITE))} or newer (or a postgresql:// store)")
            path = url[len("sqlite:///") :]
            if path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the folder for {path}: {exc.strerror}") from None
            lock = _OneDaemonLock.acquire(path) if path != ":memory:" else None
            # One connection: SQLite serialises writers anyway, and :memory: must be shared.
            pool = _Pool(lambda: _sqlite_connect(path, timeout), reactor, 1)
            store = cls(pool, "sqlite", url, reactor, timeout)
            store.lock = lock
            return store
        if url.startswith(("postgresql://", "postgres://")):
            import psycopg

            seconds = max(1, round(timeout))
            # Bounded on the server and on the wire as well: a dead peer or a stuck
            # statement frees its connection even without the reactor's timer.
            options: dict[str, Any] = dict(
                connect_timeout=max(2, seconds), options=f"-c statement_timeout={seconds * 1000}",
                keepalives=1, keepalives_idle=seconds, keepalives_interval=max(1, seconds // 3),
                keepalives_count=3, tcp_user_timeout=seconds * 1000,
            )
            pool = _Pool(lambda: psycopg.connect(url, **options), reactor, 5)
            return cls(pool, "postgresql", url, reactor, timeout)
        raise StoreError(f"store url {redact_url(url)!r}: expected sqlite:///PATH or postgresql://...")

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
        call = _Call(fn, args, kw)
        d: defer.Deferred[Any] = defer.Deferred()
        started = time.monotonic()
        timer = self.reactor.callLater(self.timeout, self._give_up, call, d)
        self._in_flight[call] = (d, timer)
        d.addBoth(self._settled, call)
        # A broken connection fails fast; each pool thread may hold one after an outage.
        attempts = [self._pool.size + 1]

        def finished(result: Any) -> None:
            if d.called:
                return  # timed out: the caller already has its answer
            if isinstance(result, Failure) and not call.body_done and _broken(result) and not self.closed:
                # Nothing was committed (the failure came before the commit): run it again.
                attempts[0] -= 1
                if attempts[0] > 0:
                    self.reconnects += 1
                    log.info("store connection broken ({error}); running the call on a fresh one",
                             error=result.getErrorMessage() or result.type.__name__)
                    self._pool.run(call).addBoth(finished)
                    return
            timer.cancel()
            if isinstance(result, Failure):
                if _broken(result):
                    result = Failure(StoreError(f"database unavailable: {result.getErrorMessage()}"))
                d.errback(result)
            else:
                d.callback(result)

        self._pool.run(call).addBoth(finished)
        observer = self.observer
        if observer is not None:

            def seen(result: Any) -> Any:
                observer(time.monotonic() - started, not isinstance(result, Failure))
                return result

            d.addBoth(seen)
        return d

    def _settled(self, result: Any, call: _Call) -> Any:
        self._in_flight.pop(call, None)
        return result

    def _give_up(self, call: _Call, d: defer.Deferred[Any]) -> None:
        with call.lock:
            call.abandoned = True
            conn = call.conn
        self.timeouts += 1
        log.warn("store {url}: no answer within {timeout}s; the call fails and its connection is cut",
                 url=redact_url(self.url), timeout=self.timeout)
        if conn is not None:
            try:
                _cut(conn)
            except Exception as exc:  # never let the timer itself fail
                log.warn("store: cannot cut a stuck connection: {error}", error=str(exc))
        d.errback(StoreTimeout(f"the database did not answer within {self.timeout:g}s"))

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
                # One lock for every component: CREATE TABLE IF NOT EXISTS ccnet_schema (and
                # any other DDL) racing in two transactions fails on a fresh database.
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA_LOCK,))
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
            if self.lock is not None:
                _OneDaemonLock.release(self.lock)
            # Calls still in flight get their answer now, not at their timeout: nothing
            # will come back from a closed pool.
            for d, timer in list(self._in_flight.values()):
                if timer.active():
                    timer.cancel()
                if not d.called:
                    d.errback(StoreError(f"store {redact_url(self.url)} was closed during the call"))
            self._in_flight.clear()
        return defer.succeed(None)
