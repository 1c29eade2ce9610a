"""The Configuration Server's state on the reactor: the master (cfg file + versions in
the store) and the worker (follows a master).

Everything CPU-bound (parse, serialize, compress) and every file access runs in a
thread; every change is serialized by one lock, recorded in the store, then written to
the cfg file (temporary file + rename), and only then served and acknowledged.
"""

from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from ccnet.periodic import every
from ccnet.reactors import IReactor
from ccnet.rpc.cs import core
from ccnet.rpc.cs.core import Snapshot

__all__ = ["MasterConfiguration", "ReadOnly", "WorkerConfiguration", "read_text", "write_atomically"]

log = Logger(namespace="ccnet.rpc.cs")

SERVICE_NAME = "Configuration/Server"
SCHEMA = [
    "CREATE TABLE rpc_cs_versions ("
    " name TEXT NOT NULL, version TEXT NOT NULL, committer TEXT NOT NULL,"
    " committed TEXT NOT NULL, cfg TEXT NOT NULL, PRIMARY KEY (name, version))",
]
#: Committer names of versions the server makes itself.
FROM_FILE = "(file)"
FROM_WORKERS = "(workers)"
CLIENT_TIMEOUT = 30.0
_EMPTY = core.snapshot("")


class ReadOnly(Exception):
    """A change asked of a worker (DIRAC's message)."""

    def __init__(self) -> None:
        super().__init__("Configuration modification is not allowed in this server")


def read_text(path: Path) -> str:
    """Blocking: the cfg file's text."""
    return path.read_text(encoding="utf-8")


def write_atomically(path: Path, text: str) -> None:
    """Blocking: replace ``path`` with ``text`` (temporary file beside it, fsync, rename),
    so a reader or a crash sees the old file or the new one, never half of one."""
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(8)}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class _Served:
    """What master and worker share: the snapshot served and the read-side answers."""

    writable = False

    def __init__(self, reactor: IReactor, url: str | None) -> None:
        self.reactor = reactor
        self.url = url
        self.current: Snapshot = _EMPTY
        self.lock = DeferredLock()
        self._loops: list[task.LoopingCall] = []

    def _every(self, interval: float, job: str, fn: Any, failures: Any, now: bool = False) -> None:
        self._loops.append(every(self.reactor, interval, job, fn, now=now, failures=failures))

    def stop(self) -> Deferred[None]:
        """Stop the periodic jobs; fires once a change or refresh in flight has finished
        (bounded by the store timeout and CLIENT_TIMEOUT), so none outlives the store."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        return self.lock.run(defer.succeed, None)

    async def history(self, limit: int) -> list[list[str]]:
        return []

    async def contents(self, versions: list[str]) -> list[bytes]:
        raise ReadOnly()

    async def commit(self, text: str, committer: str) -> Snapshot:
        """Replace the configuration with cfg ``text`` (see :func:`core.prepare_commit`)."""
        raise ReadOnly()

    async def rollback(self, version: str, committer: str) -> Snapshot:
        """Serve a kept ``version``'s contents again, under a new version (KeyError: not kept)."""
        raise ReadOnly()

    async def publish(self, url: str) -> None:
        raise ReadOnly()


class MasterConfiguration(_Served):
    """The master: its cfg file, every version in the store, the workers it lists."""

    writable = True

    def __init__(self, reactor: IReactor, store: Any, path: Path, *, url: str | None,
                 grace: float, ping: Any) -> None:
        super().__init__(reactor, url)
        self.store = store
        self.path = path
        self.workers = core.WorkerRegistry(grace)
        self._ping = ping  # url -> Deferred of ping's S_OK/S_ERROR

    async def start(self, failures: Any = None) -> None:
        await self.store.migrate("rpc.cs", SCHEMA)
        await self.lock.run(lambda: defer.ensureDeferred(self._load_file()))
        self._every(self.workers.grace, "cs-worker-expiry", self.expire_workers, failures)

    def reload(self) -> Deferred[None]:
        """SIGHUP: serve the cfg file again if the operator edited it."""
        return self.lock.run(lambda: defer.ensureDeferred(self._load_file()))

    async def _load_file(self) -> None:
        text = await deferToThread(read_text, self.path)
        loaded = await deferToThread(core.snapshot, text)
        if not loaded.name:
            raise core.CfgError(f"{self.path} has no {core.NAME_OPTION}: DIRAC needs a configuration name")
        changes: dict[str, str] = {}
        if self.url is not None:
            servers = loaded.servers
            if self.url not in servers:
                changes[core.SERVERS_OPTION] = ", ".join([self.url, *servers])
            if loaded.master != self.url:
                changes[core.MASTER_OPTION] = self.url
        stored = await self._stored_text(loaded.name, loaded.version)
        if stored == loaded.text and not changes and loaded.version == self.current.version:
            return  # a reload of the file we serve
        if stored == loaded.text and not changes and self.current is _EMPTY:
            self._serve(loaded)  # a restart
            return
        if loaded.version == "0" or stored is not None or changes or loaded.version <= self.current.version:
            # A new file, an edit without a new version, an older file put back or our URL
            # to add: a new version, so that clients and workers take it.
            changes[core.VERSION_OPTION] = core.next_version(_utcnow(), max(loaded.version, self.current.version))
            loaded = await deferToThread(core.with_options, loaded, changes)
        await self._record(loaded, FROM_FILE)
        if loaded.text != text:
            await deferToThread(write_atomically, self.path, loaded.text)
        self._serve(loaded)

    def _serve(self, snapshot: Snapshot) -> None:
        if snapshot.version != self.current.version:
            log.info("Configuration/Server serves {name} version {version}",
                     name=snapshot.name, version=snapshot.version)
        self.current = snapshot

    async def _stored_text(self, name: str, version: str) -> str | None:
        rows = await self.store.run(
            "SELECT cfg FROM rpc_cs_versions WHERE name = ? AND version = ?", (name, version))
        return str(rows[0][0]) if rows else None

    async def _record(self, snapshot: Snapshot, committer: str) -> None:
        await self.store.run(
            "INSERT INTO rpc_cs_versions (name, version, committer, committed, cfg) VALUES (?, ?, ?, ?, ?)",
            (snapshot.name, snapshot.version, committer,
             _utcnow().strftime("%Y-%m-%d %H:%M:%S"), snapshot.text),
        )

    async def _replace(self, snapshot: Snapshot, committer: str) -> Snapshot:
        # Store first (history and durability), then the file, then serve: a failure on
        # the way leaves the served version unchanged and the caller gets S_ERROR.
        await self._record(snapshot, committer)
        await deferToThread(write_atomically, self.path, snapshot.text)
        self._serve(snapshot)
        return snapshot

    # -- commits ------------------------------------------------------------------------
    async def commit(self, text: str, committer: str) -> Snapshot:
        return await self._commit(text, committer, rollback=False)

    async def rollback(self, version: str, committer: str) -> Snapshot:
        text = await self._stored_text(str(self.current.name), version)
        if text is None:
            raise KeyError(version)
        return await self._commit(text, committer, rollback=True)

    async def _commit(self, text: str, committer: str, *, rollback: bool) -> Snapshot:
        async def work() -> Snapshot:
            new = await deferToThread(core.prepare_commit, self.current, text, _utcnow(), keep_version=rollback)
            log.info("{committer} committed {name} version {version}",
                     committer=committer, name=new.name, version=new.version)
            return await self._replace(new, committer)

        return await self.lock.run(lambda: defer.ensureDeferred(work()))  # type: ignore[no-any-return]

    async def history(self, limit: int) -> list[list[str]]:
        rows = await self.store.run(
            "SELECT committer, version FROM rpc_cs_versions WHERE name = ? ORDER BY version DESC LIMIT ?",
            (self.current.name, limit))
        return [[str(committer), str(version)] for committer, version in rows]

    async def contents(self, versions: list[str]) -> list[bytes]:
        """zlib-compressed cfg of each version, as DIRAC's getVersionContents; KeyError names
        the first version not kept."""
        found = []
        for version in versions:
            text = await self._stored_text(str(self.current.name), version)
            if text is None:
                raise KeyError(version)
            found.append(text)
        return [await deferToThread(core.compress, text) for text in found]

    # -- workers ------------------------------------------------------------------------
    async def publish(self, url: str) -> None:
        """A worker says it is alive; checked as DIRAC does (a ping that names a CS)."""
        reply = await self._ping(url)
        value = reply.get("Value") if reply.get("OK") else None
        if not isinstance(value, dict) or value.get("name") != SERVICE_NAME:
            log.warn("worker {url} did not answer ping as a Configuration/Server: {reply}",
                     url=url, reply=reply.get("Message", "wrong name"))
            return
        if self.workers.seen(url, self.reactor.seconds()):
            log.info("new Configuration/Server worker {url}", url=url)
            await self._list_workers()

    async def expire_workers(self) -> None:
        dead = self.workers.expire(self.reactor.seconds())
        if dead:
            log.warn("Configuration/Server workers gone silent: {urls}", urls=", ".join(dead))
            await self._list_workers()

    def _list_workers(self) -> Deferred[Snapshot]:
        async def work() -> Snapshot:
            changes = {
                core.SERVERS_OPTION: core.servers_value(self.url, self.workers.urls),
                core.VERSION_OPTION: core.next_version(_utcnow(), self.current.version),
            }
            new = await deferToThread(core.with_options, self.current, changes)
            return await self._replace(new, FROM_WORKERS)

        return self.lock.run(lambda: defer.ensureDeferred(work()))


class WorkerConfiguration(_Served):
    """A worker: follows the master with getCompressedDataIfNewer, serves read-only,
    publishes itself to the master; keeps a local copy in its cfg file if it has one."""

    def __init__(self, reactor: IReactor, master: Any, path: Path | None, *, url: str | None,
                 refresh: float) -> None:
        super().__init__(reactor, url)
        self.master = master  # an RPCClient of the master's Configuration/Server
        self.path = path
        self.refresh_time = refresh

    async def start(self, failures: Any = None) -> None:
        if self.path is not None and self.path.exists():
            self.current = await deferToThread(lambda: core.snapshot(read_text(self.path)))  # type: ignore[arg-type]
        self._every(self.refresh_time, "cs-worker-refresh", self.refresh, failures, now=True)

    def refresh(self) -> Deferred[None]:
        return self.lock.run(lambda: defer.ensureDeferred(self._refresh()))

    async def _refresh(self) -> None:
        reply = await self.master.getCompressedDataIfNewer(self.current.version)
        if not reply.get("OK"):
            raise RuntimeError(f"master did not answer: {reply.get('Message')}")
        value = reply["Value"]
        if isinstance(value, dict) and "data" in value:
            new = await deferToThread(lambda: core.snapshot(core.decode_commit(value["data"])))
            if new.version > self.current.version:
                if self.path is not None:
                    await deferToThread(write_atomically, self.path, new.text)
                log.info("Configuration/Server worker follows {name} version {version}",
                         name=new.name, version=new.version)
                self.current = new
        if self.url is not None:
            published = await self.master.publishSlaveServer(self.url)
            if not published.get("OK"):
                log.warn("Configuration/Server worker: publishing to the master failed: {error}",
                         error=published.get("Message"))

    def stop(self) -> Deferred[None]:
        return super().stop().addCallback(lambda _: self.master.close())
