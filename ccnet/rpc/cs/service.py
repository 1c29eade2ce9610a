"""``Configuration/Server``: DIRAC's Configuration Server as a ccnet RPC service.

Wire-compatible with DIRAC 9.1's ``TornadoConfigurationHandler`` (what ``CSJSONClient``
and the configuration refresher of every DIRAC client call)::

    [rpc:Configuration/Server]
    class = ccnet.rpc.cs.service:ConfigurationServer
    File = dirac-cs.cfg              ; the master's DIRAC cfg (a worker: its local copy)
    ; MasterServer = https://master.example:8443/Configuration/Server   ; makes this a worker
    ; URL = https://this-host:8443/Configuration/Server   ; default: [rpc] url + /Configuration/Server
    ; RefreshTime = 300               ; worker: seconds between refreshes from the master
    ; SlavesGraceTime = 600           ; master: a worker silent this long leaves Servers

Who may do what (DIRAC's ConfigTemplate, overridable with ``auth.<method>``): reading
needs a registered identity; ``commitNewData`` and ``rollbackToVersion`` need
``CSAdministrator``; ``getVersionContents`` ``CSAdministrator`` or ``ServiceAdministrator``;
``publishSlaveServer`` ``TrustedHost``.  The logic is in :mod:`ccnet.rpc.cs.core` (pure)
and :mod:`ccnet.rpc.cs.state` (files, store, timers); this class only adapts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from ccnet.rpc.cs import core
from ccnet.rpc.cs.state import (
    CLIENT_TIMEOUT,
    SERVICE_NAME,
    MasterConfiguration,
    ReadOnly,
    WorkerConfiguration,
    log,
)
from ccnet.rpc.result import S_ERROR, S_OK
from ccnet.rpc.service import RPCService

__all__ = ["ConfigurationServer"]

ADMIN = "CSAdministrator"
MAX_HISTORY = 100


class ConfigurationServer(RPCService):
    auth_Default: ClassVar[list[str]] = ["authenticated"]
    auth_commitNewData: ClassVar[list[str]] = [ADMIN]
    auth_rollbackToVersion: ClassVar[list[str]] = [ADMIN]
    auth_getVersionContents: ClassVar[list[str]] = ["ServiceAdministrator", ADMIN]
    auth_publishSlaveServer: ClassVar[list[str]] = ["TrustedHost"]
    types_getCompressedDataIfNewer: ClassVar[list[Any]] = [str]
    types_commitNewData: ClassVar[list[Any]] = [str]
    types_getVersionContents: ClassVar[list[Any]] = [list]
    types_rollbackToVersion: ClassVar[list[Any]] = [str]
    types_publishSlaveServer: ClassVar[list[Any]] = [str]

    initialize_at_start = True
    state: ClassVar[MasterConfiguration | WorkerConfiguration]

    @classmethod
    def initializeHandler(cls, serviceInfo: dict[str, Any]) -> Any:  # noqa: N802, N803 (DIRAC API)
        runtime = cls.runtime
        url = cls.srv_getCSOption("URL") or serviceInfo.get("URL") or None
        master_url = cls.srv_getCSOption("MasterServer")
        path = cls.srv_getCSPath("File")
        if master_url:
            from ccnet.rpc.client import RPCClient

            # One call per refresh period: no kept-alive connection to outlive a stop.
            client = RPCClient(master_url, credentials=runtime.tls, reactor=runtime.reactor,
                               timeout=CLIENT_TIMEOUT, persistent=False)
            cls.state = WorkerConfiguration(
                runtime.reactor, client, path, url=url,
                refresh=cls.srv_getCSOption("RefreshTime", float(core.DEFAULT_REFRESH_TIME)),
            )
        else:
            if path is None:
                raise ValueError(f"[rpc:{SERVICE_NAME}] needs File = <the master's DIRAC cfg file>")
            cls.state = MasterConfiguration(
                runtime.reactor, runtime.store, path, url=url,
                grace=cls.srv_getCSOption("SlavesGraceTime", float(core.DEFAULT_GRACE_TIME)),
                ping=lambda worker: _ping(runtime, worker),
            )
            runtime.on_reload(lambda: _reload(cls.state))
        return defer.ensureDeferred(cls.state.start(runtime.job_failures))

    @classmethod
    def stopHandler(cls) -> Any:  # noqa: N802
        return cls.state.stop()

    # -- reads ----------------------------------------------------------------------------
    def export_getVersion(self) -> dict[str, Any]:
        return S_OK(self.state.current.version)

    def export_getCompressedData(self) -> dict[str, Any]:
        # Compressed and encoded once per version, off the reactor (core.snapshot).
        return S_OK(self.state.current.encoded)

    def export_getCompressedDataIfNewer(self, sClientVersion: str) -> dict[str, Any]:  # noqa: N803 (DIRAC API)
        current = self.state.current
        reply: dict[str, Any] = {"newestVersion": current.version}
        if sClientVersion < current.version:
            reply["data"] = current.encoded
        return S_OK(reply)

    def export_writeEnabled(self) -> dict[str, Any]:
        return S_OK(self.state.writable)

    async def export_getCommitHistory(self, limit: Any = MAX_HISTORY) -> dict[str, Any]:
        if not isinstance(limit, int) or isinstance(limit, bool):
            return S_ERROR(f"limit must be an integer, not {limit!r}")
        limit = min(limit, MAX_HISTORY) if limit > 0 else MAX_HISTORY
        return S_OK(await self.state.history(limit))

    async def export_getVersionContents(self, versionList: list[Any]) -> dict[str, Any]:  # noqa: N803
        try:
            return S_OK(await self.state.contents([str(v) for v in versionList]))
        except KeyError as exc:
            return S_ERROR(f"Can't get contents for version {exc.args[0]}: Version {exc.args[0]} does not exist")
        except ReadOnly as exc:
            return S_ERROR(str(exc))

    # -- changes --------------------------------------------------------------------------
    async def export_commitNewData(self, sData: str) -> dict[str, Any]:  # noqa: N803
        try:
            # base64 + zlib of up to MAX_CFG_BYTES (about 0.3 s for 64 MB): off the reactor.
            text = await deferToThread(core.decode_commit, sData)
        except core.CfgError as exc:
            self.log.warn("commitNewData from {who} refused: {error}", who=self.getUserName(), error=exc)
            return S_ERROR(str(exc))
        return await self._commit(text, rollback=False)

    async def export_rollbackToVersion(self, version: str) -> dict[str, Any]:
        return await self._commit(version, rollback=True)

    async def _commit(self, text_or_version: str, *, rollback: bool) -> dict[str, Any]:
        try:
            if rollback:
                new = await self.state.rollback(text_or_version, self.getUserName())
            else:
                new = await self.state.commit(text_or_version, self.getUserName())
        except KeyError:
            return S_ERROR(f"Can't get contents for version {text_or_version}: "
                           f"Version {text_or_version} does not exist")
        except (core.CfgError, core.CommitRefused, ReadOnly) as exc:
            self.log.warn("commit from {who} refused: {error}", who=self.getUserName(), error=exc)
            return S_ERROR(str(exc))
        return S_OK(new.version)

    async def export_publishSlaveServer(self, sURL: str) -> dict[str, Any]:  # noqa: N803
        try:
            core.worker_url(sURL)
        except ValueError as exc:
            self.log.warn("publishSlaveServer from {who} refused: {error}", who=self.getUserName(), error=exc)
            return S_ERROR(str(exc))
        try:
            await self.state.publish(sURL)
        except ReadOnly as exc:
            return S_ERROR(str(exc))
        return S_OK()


async def _ping(runtime: Any, url: str) -> dict[str, Any]:
    """Ping a worker with the daemon's own certificate, as DIRAC's master does."""
    from ccnet.rpc.client import RPCClient

    client = RPCClient(url, credentials=runtime.tls, reactor=runtime.reactor, timeout=CLIENT_TIMEOUT,
                       persistent=False)
    try:
        return await client.ping()  # type: ignore[no-any-return]
    finally:
        await client.close()


def _reload(state: MasterConfiguration) -> None:
    state.reload().addErrback(
        lambda failure: log.failure(
            "Configuration/Server: reloading the cfg file failed; still serving the last version", failure))
