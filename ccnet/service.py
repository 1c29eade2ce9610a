"""Compose the daemon: one MultiService with whatever the config enables."""

from __future__ import annotations

import importlib
import os
import signal
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from ccnet import __version__, sdnotify
from ccnet.config import Config, ListenSpec, parse_listen
from ccnet.identity import UserMap
from ccnet.runtime import Runtime
from ccnet.store import Store
from ccnet.tls import ServerTLS, TLSMaterial
from ccnet.web import HealthResource, access_log_line

__all__ = ["CCNetService", "ListenerService", "make_service"]

log = Logger()


class _TrackingFactory(policies.WrappingFactory):
    """Knows the open connections, so stopping can drain them."""

    protocol = policies.ProtocolWrapper

    noisy = False

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.drained: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802 (Twisted API)
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self.drained = self.drained, []
            for d in waiting:
                d.callback(None)

    def drain(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.drained.append(d)
        return d


def _idle(protocol: Any) -> bool:
    inner = getattr(protocol, "wrappedProtocol", protocol)
    inner = getattr(inner, "_channel", inner)  # twisted.web's HTTP/1.1-or-h2 shim
    requests = getattr(inner, "requests", None)
    return requests is not None and not requests


class ListenerService(service.Service):
    """Listens on one endpoint string, wrapping the factory in ccnet's mutual TLS when asked.

    Stopping closes the port first, then lets in-flight requests finish for up to
    ``grace`` seconds before cutting what is left.
    """

    def __init__(self, reactor: Any, name: str, spec: ListenSpec, factory: Any, tls: ServerTLS | None,
                 grace: float = 10.0) -> None:
        self.setName(name)
        self.reactor = reactor
        self.spec = spec
        self.tls = tls
        self.grace = grace
        self.connections = _TrackingFactory(factory)
        self.factory = tls.wrap(self.connections) if (spec.tls and tls is not None) else self.connections
        self.port: Any = None
        self.listening: defer.Deferred[Any] = defer.Deferred()

    @property
    def address(self) -> Any:
        return self.port.getHost() if self.port is not None else None

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        endpoint = endpoints.serverFromString(self.reactor, self.spec.endpoint)
        d = endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        log.info(
            "ccnet {listener} listening on {host}:{port} ({scheme})",
            listener=self.name,
            host=getattr(host, "host", "?"),
            port=getattr(host, "port", "?"),
            scheme="mutual TLS" if self.spec.tls else "plain",
        )
        self.listening.callback(port)

    def _failed(self, failure: Failure) -> None:
        log.critical(
            "ccnet {listener} cannot listen on {endpoint}: {error}",
            listener=self.name,
            endpoint=self.spec.endpoint,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            yield port.stopListening()
        open_now = list(self.connections.protocols)
        for protocol in open_now:
            if _idle(protocol):
                # Nothing in flight; a polite TLS close could wait on a peer that never answers.
                protocol.transport.abortConnection()
        if not self.connections.protocols:
            return
        drained = self.connections.drain()
        timer = self.reactor.callLater(self.grace, drained.cancel)
        try:
            yield drained
        except defer.CancelledError:
            log.warn("{listener}: {n} connections still open after {grace}s, closing them",
                     listener=self.name, n=len(self.connections.protocols), grace=self.grace)
            for protocol in list(self.connections.protocols):
                protocol.transport.abortConnection()
        else:
            timer.cancel()


class CCNetService(service.MultiService):
    """The whole daemon. Sends READY=1 to systemd once every listener is up."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.listeners: dict[str, ListenerService] = {}
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._watchdog: task.LoopingCall | None = None
        self._old_sighup: Any = None

    def add_listener(self, listener: ListenerService) -> None:
        self.listeners[str(listener.name)] = listener
        listener.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        waits = [listener.listening for listener in self.listeners.values()]
        gathered = defer.gatherResults(waits, consumeErrors=True)
        gathered.addCallbacks(self._all_listening, self._listen_failed)
        self.runtime.reactor.callWhenRunning(self._install_sighup)
        interval = sdnotify.watchdog_interval()
        if interval:
            self._watchdog = task.LoopingCall(sdnotify.notify, "WATCHDOG=1")
            self._watchdog.clock = self.runtime.reactor
            self._watchdog.start(interval)

    def _all_listening(self, _: Any) -> None:
        sdnotify.notify("READY=1\nSTATUS=ccnet serving")
        log.info(
            "ccnet {version} ready: {services}",
            version=__version__,
            services=", ".join(self.runtime.config.enabled_services()),
        )
        self.ready.callback(None)

    def _listen_failed(self, failure: Failure) -> None:
        # A daemon that cannot serve what its config asks for must not pretend to run.
        reactor = self.runtime.reactor
        if not getattr(self, "_exiting", False) and hasattr(reactor, "addSystemEventTrigger"):
            self._exiting = True
            reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            reactor.callWhenRunning(reactor.stop)
        self.ready.errback(failure)

    def _install_sighup(self) -> None:
        reactor = self.runtime.reactor
        if not hasattr(signal, "SIGHUP"):
            return
        try:
            self._old_sighup = signal.signal(
                signal.SIGHUP, lambda *_: reactor.callFromThread(self.reload)
            )
        except ValueError:  # not the main thread (e.g. embedded in tests)
            self._old_sighup = None

    def reload(self) -> None:
        """SIGHUP: re-read TLS material, the users mapping and whatever parts registered."""
        runtime = self.runtime
        try:
            if runtime.tls is not None:
                runtime.tls.reload()
            if runtime.config.daemon.users is not None:
                runtime.users = UserMap.load(runtime.config.daemon.users)
            for hook in runtime.reload_hooks:
                hook()
        except Exception as exc:
            # Keep serving with what we had: a bad edit must not take the daemon down.
            log.failure("reload failed, keeping the previous settings: {error}", error=str(exc))
            return
        log.info("ccnet reloaded")

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 (Twisted API)
        # twistd re-raises SIGTERM after a clean shutdown (exit status -15); a daemon that
        # drained and stopped as asked exits 0, which is what systemd and scripts expect.
        if getattr(self.runtime.reactor, "_exitSignal", None) == signal.SIGTERM:
            self.runtime.reactor._exitSignal = None
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self._old_sighup is not None:
            signal.signal(signal.SIGHUP, self._old_sighup)
            self._old_sighup = None
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.runtime.store.close())
        return d


def _build(module: str, runtime: Runtime, cfg: Any) -> Any:
    return importlib.import_module(module).build(runtime, cfg)


def make_service(config: Config, reactor: Any = None) -> CCNetService:
    """Build the daemon's service tree from a parsed config."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    tls = TLSMaterial(config.tls) if config.tls is not None else None
    users = UserMap.load(config.daemon.users) if config.daemon.users else UserMap.empty()
    store = Store.open(config.store.url, reactor)
    runtime = Runtime(
        reactor=reactor, config=config, tls=tls, users=users, store=store, version=__version__
    )
    root = CCNetService(runtime)
    services = config.enabled_services()

    def https(name: str, resource: Resource, listen: str) -> None:
        resource.putChild(b"health", HealthResource(__version__, services, reactor))  # type: ignore[arg-type]
        spec = parse_listen(listen)
        creator = tls.server(config.anonymous.get(name, False), name) if tls is not None else None
        # A protocol may bring its own Site (e.g. RPC: early 413, lean form parsing).
        if hasattr(resource, "make_site"):
            site = resource.make_site()
        else:
            site = Site(resource, logFormatter=access_log_line)
        site.displayTracebacks = False
        site.noisy = False
        root.add_listener(
            ListenerService(reactor, name, spec, site, creator, config.daemon.shutdown_grace)
        )

    for name, module in (("supervisor", "ccnet.mplane.supervisor"), ("rpc", "ccnet.rpc.server")):
        cfg = getattr(config, name)
        if cfg is None:
            continue
        resource, extra = _build(module, runtime, cfg)
        for svc in extra:
            svc.setServiceParent(root)
        https(name, resource, cfg.listen)
    if config.cc is not None:
        for svc in _build("ccnet.cc.server", runtime, config.cc):
            svc.setServiceParent(root)
    if config.component is not None:
        for svc in _build("ccnet.mplane.component", runtime, config.component):
            svc.setServiceParent(root)
    if config.metrics is not None:
        metrics_root = _build("ccnet.metrics", runtime, config.metrics)
        metrics_root.putChild(b"health", HealthResource(__version__, services, reactor))  # type: ignore[arg-type]
        site = Site(metrics_root, logFormatter=access_log_line)
        site.noisy = False
        root.add_listener(
            ListenerService(reactor, "metrics", parse_listen(config.metrics.listen), site, None)
        )
    return root
