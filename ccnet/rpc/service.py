"""``RPCService``: the base class DIRAC service authors subclass, and how calls run.

Writing a service is what DIRAC users already do::

    from ccnet.rpc import RPCService, S_OK, blocking

    class HelloService(RPCService):
        @classmethod
        def initializeHandler(cls, serviceInfo):
            cls.greeting = cls.srv_getCSOption("Greeting", "hello")   # once, first request

        def initializeRequest(self):
            pass                                                   # every request

        auth_sayHello = ["all"]
        types_sayHello = [str]

        def export_sayHello(self, whom):
            return S_OK(f"{self.greeting} {whom}")                # value, dict or Deferred

        @blocking                                                  # runs in the thread pool
        def export_slowThing(self):
            ...

``initializeHandler`` runs once per mounted service, before its first call; calls that
arrive while it runs wait for it.  Exports marked :func:`blocking` (or every export of a
class with ``blocking = True``) run, together with ``initializeRequest``, in the
``[rpc] threads``-bounded pool, so the reactor never blocks.  A ``finish_<method>``
hook always runs on the reactor, after its export returned, and makes the reply from
``self.result`` (DIRAC's hook for work that belongs on the event loop).
"""

from __future__ import annotations

import datetime
import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

import ccnet
from ccnet.reactors import IReactor
from ccnet.rpc.codec import JCodec
from ccnet.rpc.credentials import Credentials
from ccnet.rpc.dispatch import CallPlan, MethodTable, blocking, in_reactor, is_blocking
from ccnet.rpc.result import S_ERROR, S_OK

__all__ = ["MountedService", "RPCService", "RequestContext", "ServiceInitError", "blocking", "in_reactor", "safe_path"]

log = Logger(namespace="ccnet.rpc")
_blocking_export = blocking

_MISSING: Any = object()


class ServiceInitError(Exception):
    """``initializeHandler`` failed (already logged with its traceback); retried next call."""


@dataclass(frozen=True)
class RequestContext:
    """What a handler may know about the call it serves (never raw TLS state)."""

    credentials: Credentials
    remote_address: tuple[str, int]
    method: str
    client_vo: str | None = None
    base_url: str = ""


def safe_path(root: Path, relative: str) -> Path | None:
    """``root/relative`` as a regular file inside ``root``, or None (traversal, links out,
    missing, not a file).  Blocking (touches the disk): call it from a blocking export."""
    if not relative or "\0" in relative or os.path.isabs(relative):
        return None
    base = root.resolve()
    candidate = (base / relative).resolve()
    try:
        candidate.relative_to(base)
    except ValueError:
        return None
    return candidate if candidate.is_file() else None


def _coerce(raw: str, default: Any) -> Any:
    """Typed CS options like DIRAC's ``gConfig.getValue``: follow the default's type."""
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "yes", "true", "on", "y"):
            return True
        if lowered in ("0", "no", "false", "off", "n"):
            return False
        return default
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            return default
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            return default
    if isinstance(default, (list, tuple)):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


class RPCService:
    """Base class of every RPC service (DIRAC's ``TornadoService`` interface).

    Class attributes a subclass may set: ``auth_<method>`` / ``auth_Default`` rule lists,
    ``types_<method>`` argument type lists, ``blocking = True`` (every export in the
    thread pool), ``codec_classes`` (classes its JEncode arguments/results may carry).
    A ``finish_<method>(self)`` hook runs on the reactor after a successful export and
    returns the reply in its place, from ``self.result``.
    """

    blocking: ClassVar[bool] = False
    #: Run ``initializeHandler`` when the daemon starts, not at the first call (a service
    #: with work of its own to do, such as following another server).
    initialize_at_start: ClassVar[bool] = False
    codec_classes: ClassVar[Sequence[type]] = ()

    auth_ping: ClassVar[list[str]] = ["all"]
    auth_echo: ClassVar[list[str]] = ["all"]
    auth_whoami: ClassVar[list[str]] = ["authenticated"]

    # Set on the per-mount subclass by MountedService.
    serviceInfo: ClassVar[dict[str, Any]] = {}
    runtime: ClassVar[Any] = None
    _options: ClassVar[Mapping[str, str]] = {}
    _startTime: ClassVar[datetime.datetime] = datetime.datetime(1970, 1, 1)

    log = Logger(namespace="ccnet.rpc.service")

    #: What ``export_<method>`` returned (its Deferred or coroutine resolved); set on the
    #: reactor just before ``finish_<method>`` runs.
    result: Any = None

    def __init__(self, context: RequestContext) -> None:
        self._context = context
        self.credDict = dict(context.credentials.cred_dict)

    # -- life cycle -------------------------------------------------------------
    @classmethod
    def initializeHandler(cls, serviceInfo: dict[str, Any]) -> Any:  # noqa: N802, N803 (DIRAC API)
        """Called once before the first request; may return a Deferred."""
        return None

    @classmethod
    def stopHandler(cls) -> Any:  # noqa: N802 (named like initializeHandler)
        """Called once when the daemon stops, if ``initializeHandler`` ran: stop what it
        started (periodic jobs, clients); may return a Deferred."""
        return None

    def initializeRequest(self) -> Any:  # noqa: N802 (DIRAC API)
        """Called before each request's export; may return a Deferred (non-blocking exports)."""
        return None

    # -- DISET helpers ----------------------------------------------------------
    def getRemoteCredentials(self) -> dict[str, Any]:  # noqa: N802
        """The caller's credential dict (DN, username, group, properties, ...)."""
        return dict(self.credDict)

    srv_getRemoteCredentials = getRemoteCredentials

    def getRemoteAddress(self) -> tuple[str, int]:  # noqa: N802
        return self._context.remote_address

    srv_getRemoteAddress = getRemoteAddress

    def srv_getFormattedRemoteCredentials(self) -> str:  # noqa: N802
        host, port = self._context.remote_address
        return f"[{self.credDict.get('group')}:{self.credDict.get('username')}]({host}:{port})"

    def getUserDN(self) -> str:  # noqa: N802
        return str(self.credDict.get("DN", ""))

    def getUserName(self) -> str:  # noqa: N802
        return str(self.credDict.get("username", ""))

    def getUserGroup(self) -> str:  # noqa: N802
        return str(self.credDict.get("group", ""))

    def getProperties(self) -> list[str]:  # noqa: N802
        return list(self.credDict.get("properties", []))

    def srv_getClientVO(self) -> str | None:  # noqa: N802
        return self._context.client_vo

    @classmethod
    def srv_getCSOption(cls, name: str, default: Any = None) -> Any:  # noqa: N802
        """A free option of this service's config section, typed like ``default``."""
        raw = cls._options.get(name.lower(), _MISSING)
        if raw is _MISSING:
            return default
        return raw if default is None else _coerce(raw, default)

    getCSOption = srv_getCSOption

    @classmethod
    def srv_getCSPath(cls, name: str, default: str | None = None) -> Path | None:  # noqa: N802
        """A path option; relative paths are taken from the config file's folder."""
        raw = cls.srv_getCSOption(name, default)
        if not raw:
            return None
        path = Path(os.path.expanduser(str(raw)))
        if not path.is_absolute():
            path = Path(str(cls.serviceInfo.get("configDir") or ".")) / path
        return path

    @classmethod
    def srv_getServiceName(cls) -> str:  # noqa: N802
        return str(cls.serviceInfo.get("serviceName", ""))

    @classmethod
    def srv_getCSServiceSection(cls) -> str:  # noqa: N802
        return str(cls.serviceInfo.get("serviceSectionPath", ""))

    def srv_getURL(self) -> str:  # noqa: N802
        base = self._context.base_url or str(self.serviceInfo.get("baseURL", ""))
        return f"{base}/{self.srv_getServiceName()}"

    # -- built-in exports -------------------------------------------------------
    def export_ping(self) -> dict[str, Any]:
        """DIRAC's ping: version, times, uptimes, load, name, URL, cpu times."""
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        info: dict[str, Any] = {"version": ccnet.__version__, "time": now}
        # The same figures as /proc/uptime and /proc/loadavg, without opening a file per call.
        info["host uptime"] = int(time.clock_gettime(time.CLOCK_BOOTTIME))
        info["service start time"] = self._startTime
        info["service uptime"] = int((now - self._startTime).total_seconds())
        info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())  # DIRAC: the first three fields, as text
        info["name"] = self.srv_getServiceName()
        times = os.times()
        info["cpu times"] = {
            "user time": times.user,
            "system time": times.system,
            "children user time": times.children_user,
            "children system time": times.children_system,
            "elapsed real time": times.elapsed,
        }
        info["URL"] = self.srv_getURL()
        return S_OK(info)

    def export_echo(self, data: Any) -> dict[str, Any]:
        return S_OK(data)

    def export_whoami(self) -> dict[str, Any]:
        cred = self.getRemoteCredentials()
        cred.pop("x509Chain", None)
        return S_OK(cred)

    @_blocking_export  # the class attribute `blocking` shadows the decorator here
    def export_streamToClient(self, fileId: str, *ignored: Any) -> Any:  # noqa: N803
        """Stream a file from the ``stream-root`` folder option (files are opened here,
        in the thread pool, and sent by a producer without being read whole)."""
        root = self.srv_getCSPath("stream-root")
        if root is None:
            return S_ERROR(f"{self.srv_getServiceName()} does not serve files")
        path = safe_path(root, str(fileId))
        if path is None:
            return S_ERROR(f"no such file: {fileId}")
        return open(path, "rb")  # noqa: SIM115 (the response producer closes it)


class MountedService:
    """One ``[rpc:System/Component]``: a private subclass, its method table and state."""

    def __init__(
        self,
        name: str,
        service_class: type[RPCService],
        *,
        reactor: IReactor,
        pool: ThreadPool,
        options: Mapping[str, str] | None = None,
        config_rules: Mapping[str, Sequence[str]] | None = None,
        runtime: Any = None,
        base_url: str = "",
        config_dir: str = "",
    ) -> None:
        self.name = name
        # A subclass per mount: class state set by initializeHandler stays per service.
        self.cls: type[RPCService] = type(
            service_class.__name__,
            (service_class,),
            {"__module__": service_class.__module__, "__qualname__": service_class.__qualname__},
        )
        self.cls.serviceInfo = {
            "serviceName": name,
            "serviceSectionPath": f"rpc:{name}",
            "csPaths": [f"rpc:{name}"],
            "URL": f"{base_url}/{name}" if base_url else "",
            "baseURL": base_url,
            "runtime": runtime,
            "configDir": config_dir,
        }
        self.cls.runtime = runtime
        self.cls._options = {k.lower(): v for k, v in (options or {}).items()}
        self.cls._startTime = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.table = MethodTable(self.cls, config_rules)
        self.codec = JCodec(service_class.codec_classes)
        self._reactor = reactor
        self._pool = pool
        self._initialized = False
        self._waiters: list[Deferred[None]] | None = None

    # -- initializeHandler, once -----------------------------------------------
    def ensure_initialized(self) -> Deferred[None]:
        """Fires when ``initializeHandler`` has completed; runs it on first use only."""
        if self._initialized:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._waiters is None:
            self._waiters = [waiter]
            self._run_initialize()
        else:
            self._waiters.append(waiter)
        return waiter

    def _run_initialize(self) -> None:
        init = self.cls.initializeHandler
        if is_blocking(inspect.getattr_static(self.cls, "initializeHandler"), False):
            d = deferToThreadPool(self._reactor, self._pool, init, self.cls.serviceInfo)
        else:
            d = maybeDeferred(init, self.cls.serviceInfo)
        d.addCallbacks(self._initialize_done, self._initialize_failed)

    def _initialize_done(self, _: Any) -> None:
        self._initialized = True
        waiters, self._waiters = self._waiters or [], None
        log.info("RPC service {service} initialized", service=self.name)
        for waiter in waiters:
            waiter.callback(None)

    def _initialize_failed(self, failure: Failure) -> None:
        # Not marked initialized: the next request tries again.
        waiters, self._waiters = self._waiters or [], None
        log.failure("initializeHandler of RPC service {service} failed", failure, service=self.name)
        for waiter in waiters:
            waiter.errback(ServiceInitError(f"{self.name} failed to initialize"))

    def stop(self) -> Deferred[None]:
        """Run ``stopHandler`` if ``initializeHandler`` ran (waiting for one still running,
        so that it does not outlive the store); errors are logged, not raised."""
        if self._waiters is not None:
            pending = self.ensure_initialized()
            pending.addErrback(lambda _: None)  # already logged by _initialize_failed
            return pending.addCallback(lambda _: self.stop())
        if not self._initialized:
            return succeed(None)
        self._initialized = False
        d = maybeDeferred(self.cls.stopHandler)
        d.addErrback(lambda f: log.failure("stopHandler of RPC service {service} failed", f, service=self.name))
        return d.addCallback(lambda _: None)

    # -- calls ------------------------------------------------------------------
    def call(self, plan: CallPlan, context: RequestContext) -> Deferred[Any]:
        """Run ``initializeRequest`` + the export; fires with whatever the export returned."""
        if self._initialized:
            return self._invoke(plan, context)
        d = self.ensure_initialized()
        d.addCallback(lambda _: self._invoke(plan, context))
        return d

    def _invoke(self, plan: CallPlan, context: RequestContext) -> Deferred[Any]:
        handler = self.cls(context)
        d = self._run_export(handler, plan)
        if plan.export.has_finish:
            # A callback of the export's Deferred runs on the reactor thread, also after a
            # blocking export (deferToThreadPool fires it with callFromThread).
            d.addCallback(_run_finish, handler, getattr(handler, plan.export.finish_attr))
        return d

    def _run_export(self, handler: RPCService, plan: CallPlan) -> Deferred[Any]:
        func = getattr(handler, plan.export.attr)
        if plan.export.blocking:
            return deferToThreadPool(self._reactor, self._pool, _run_blocking, handler, func, plan.args)
        try:
            started = handler.initializeRequest()
            if started is not None and inspect.isawaitable(started):
                d: Deferred[Any] = ensureDeferred(started)  # type: ignore[arg-type]
                d.addCallback(lambda _: _as_deferred(func(*plan.args)))
                return d
            return _as_deferred(func(*plan.args))
        except BaseException:
            return fail(Failure())


def _as_deferred(result: Any) -> Deferred[Any]:
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return ensureDeferred(result)  # type: ignore[arg-type]
    return succeed(result)


def _run_finish(result: Any, handler: RPCService, finish: Callable[[], Any]) -> Deferred[Any]:
    """DIRAC's ``finish_<method>``: sees the export's value as ``self.result`` and returns
    the value to reply with, as an export would."""
    handler.result = result
    return _as_deferred(finish())


def _run_blocking(handler: RPCService, func: Any, args: tuple[Any, ...]) -> Any:
    # initializeRequest and the export run in the worker thread, as DIRAC runs them in its
    # executor (finish_<method> does not: see MountedService._invoke).
    started = handler.initializeRequest()
    if isinstance(started, Deferred) or inspect.isawaitable(started):
        raise TypeError("initializeRequest of a blocking service must not return a Deferred")
    result = func(*args)
    if isinstance(result, Deferred) or inspect.isawaitable(result):
        raise TypeError(f"blocking export {func.__name__} returned a Deferred; mark it in_reactor")
    return result

