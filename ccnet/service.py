"""Compose the daemon: one MultiService with whatever the config enables."""

from __future__ import annotations

import gc
import importlib
import os
import signal
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from prometheus_client.core import Metric
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from ccnet import __version__, sdnotify
from ccnet.config import Config, parse_listen
from ccnet.edge import shim
from ccnet.edge.connections import edge_metrics
from ccnet.edge.lifecycle import IListening, stop_first
from ccnet.edge.listener import WRITE_STALL, ListenerService
from ccnet.edge.request import bounded_request
from ccnet.edge.revocation import revocation_hook
from ccnet.identity import UserMap
from ccnet.metrics import LATENCY_BUCKETS, counter, gauge
from ccnet.reactors import IReactor, default_reactor
from ccnet.runtime import Part, Runtime
from ccnet.store import Store
from ccnet.tls import ServerTLS, TLSMaterial, check_tls_files
from ccnet.web import HealthResource, access_log_line

__all__ = ["IDLE_TIMEOUT", "WRITE_STALL", "CCNetService", "ListenerService", "DaemonMetrics", "make_service"]

log = Logger()

#: Seconds an HTTP(S) connection may sit without sending a byte (TLS handshake included:
#: the HTTP channel's timer starts when the TCP connection is accepted). Bounds what
#: slow or stuck clients can hold. twisted.web pauses the timer while a request is being
#: answered, so long-polls and slow calls are not cut by it.
IDLE_TIMEOUT = 75.0

class CCNetService(service.MultiService):
    """The whole daemon. Sends READY=1 to systemd once every listener is up."""

    def __init__(self, runtime: Runtime, config: Config) -> None:
        super().__init__()
        self.runtime = runtime
        self.config = config
        self.listeners: dict[str, ListenerService] = {}
        self.ready: defer.Deferred[None] = defer.Deferred()
        #: Set for the daemon process (``twistd ccnet``), not for services built in a test.
        self.freeze_heap_when_ready = False
        self._watchdog: task.LoopingCall | None = None
        self._old_sighup: Any = None

    def add_listener(self, listener: ListenerService) -> None:
        self.listeners[str(listener.name)] = listener
        listener.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        waits = [svc.listening for svc in self if IListening.providedBy(svc)]
        gathered = defer.gatherResults(waits, consumeErrors=True)
        # Announced only once the reactor runs: twistd starts the services before it installs
        # its signal handlers, and a SIGTERM sent on "ready" in between would kill us with -15.
        # Our SIGHUP handler goes in first for the same reason (a reload asked for on "ready").
        self.runtime.reactor.callWhenRunning(self._install_sighup)
        self.runtime.reactor.callWhenRunning(gathered.addCallbacks, self._all_listening, self._listen_failed)
        interval = sdnotify.watchdog_interval()
        if interval:
            self._watchdog = task.LoopingCall(sdnotify.notify, "WATCHDOG=1")
            self._watchdog.clock = self.runtime.reactor
            self._watchdog.start(interval)

    def _all_listening(self, _: Any) -> None:
        if self.freeze_heap_when_ready:
            # What start-up made (modules, config, the state read back) lives as long as
            # the process: out of the cyclic collector's way, whose full collections then
            # scan only what serving made (they grow with every connection held open).
            # Start-up's own garbage is collected first, not kept for ever.
            gc.collect()
            gc.freeze()
            # A connection allocates thousands of short-lived objects: young collections
            # every 20 000 allocations instead of 700 let most die before one, so fewer
            # reach the older generations (-5 % CPU per mPlane registration, docs/performance.md).
            gc.set_threshold(20_000, *gc.get_threshold()[1:])
        sdnotify.notify("READY=1\nSTATUS=ccnet serving")
        log.info(
            "ccnet {version} ready: {services}",
            version=__version__,
            services=", ".join(self.config.enabled_services()),
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
        # Read and check everything first, then swap: a bad edit in one file must not
        # leave the daemon half on new settings and half on old ones.
        try:
            if runtime.tls is not None:
                check_tls_files(runtime.tls.cfg)
            users = UserMap.load(self.config.daemon.users) if self.config.daemon.users else None
        except Exception as exc:
            log.failure("reload failed, keeping the previous settings: {error}", error=str(exc))
            return
        if runtime.tls is not None:
            runtime.tls.reload()
        if users is not None:
            runtime.users = users
        for hook in runtime.reload_hooks:
            try:
                hook()
            except Exception as exc:
                # Each part reloads all-or-nothing; TLS and users above are already new.
                log.failure("reload of {part} failed, it keeps its previous settings: {error}",
                            part=getattr(hook, "__qualname__", repr(hook)), error=str(exc))
        log.info("ccnet reloaded")

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        # twistd re-raises SIGTERM after a clean shutdown (exit status -15); a daemon that
        # drained and stopped as asked exits 0, which is what systemd and scripts expect.
        if shim.exit_signal(self.runtime.reactor) == signal.SIGTERM:
            shim.clear_exit_signal(self.runtime.reactor)
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self._old_sighup is not None:
            signal.signal(signal.SIGHUP, self._old_sighup)
            self._old_sighup = None
        # Our own clients of our own listeners (the component's long-poll) go first: the
        # drain below is for other peers' requests, not for those.
        yield stop_first(self)
        # Listeners first, and wait for their in-flight requests: the parts behind them
        # (thread pools, the supervisor's state, CC handlers) must still be there to answer.
        # Then the rest stop (flushing their queues), and the store closes last.
        draining = [defer.maybeDeferred(listener.stopService)
                    for listener in self.listeners.values() if listener.running]
        yield defer.DeferredList(draining, consumeErrors=True)
        try:
            yield defer.maybeDeferred(super().stopService)
        finally:
            yield self.runtime.store.close()
            log.info("ccnet stopped")

if TYPE_CHECKING:
    from ccnet.metrics import OpsRoot


def _build(module: str, runtime: Runtime, cfg: Any) -> Part:
    part: Part = importlib.import_module(module).build(runtime, cfg)
    _watch_parts(runtime, part.services)
    return part


def _opened(svc: Any) -> Any:
    """``() -> bool``: has ``svc.ready`` (a part opening its state) fired successfully?"""
    seen = {"up": False}

    def fired(result: Any) -> Any:
        seen["up"] = not isinstance(result, Failure)
        return result

    svc.ready.addBoth(fired)
    return lambda: seen["up"]


def _watch_parts(runtime: Runtime, services: Any) -> None:
    """Parts that open state before serving (the supervisor's state, the component's
    outbox) count for /ready until they did."""
    for svc in services:
        if isinstance(getattr(svc, "ready", None), defer.Deferred) and not isinstance(svc, ListenerService):
            runtime.register_part(str(svc.name), _opened(svc))


def make_service(config: Config, reactor: IReactor | None = None) -> CCNetService:
    """Build the daemon's service tree from a parsed config."""
    reactor = reactor if reactor is not None else default_reactor()
    tls = TLSMaterial(config.tls) if config.tls is not None else None
    users = UserMap.load(config.daemon.users) if config.daemon.users else UserMap.empty()
    store = Store.open(config.store.url, reactor, config.store.timeout)
    runtime = Runtime.from_config(config, reactor, store, tls, users, __version__)
    root = CCNetService(runtime, config)
    if tls is not None:
        # After TLS reloads (hooks run after it): a new CRL reaches open connections too.
        runtime.on_reload(revocation_hook(
            lambda: [lst.connections for lst in root.listeners.values() if lst.spec.tls], tls))
    services = config.enabled_services()
    idle_timeout = config.daemon.idle_timeout
    creators: dict[str, ServerTLS] = {}

    def https(name: str, part: Part, listen: str) -> None:
        part.resource.putChild(b"health", HealthResource(__version__, services, reactor))
        spec = parse_listen(listen)
        policy = config.listener_tls.get(name)
        creator = None
        if tls is not None:
            creator = (tls.server(policy.allow_anonymous, name, policy.allow_proxies) if policy is not None
                       else tls.server(name=name))
        if creator is not None:
            creators[name] = creator
        # A part may bring its own Site (RPC: its 413 in the protocol, lean form parsing).
        site = part.site if part.site is not None else Site(
            part.resource, requestFactory=bounded_request(part.max_body), logFormatter=access_log_line)
        site.displayTracebacks = False
        site.noisy = False
        site.timeOut = idle_timeout
        root.add_listener(
            ListenerService(reactor, name, spec, site, creator, config.daemon.shutdown_grace,
                            config.daemon.write_stall, config.limits(name))
        )

    for name, module in (("supervisor", "ccnet.mplane.supervisor"), ("rpc", "ccnet.rpc.server"),
                         ("cc", "ccnet.cc.server"), ("component", "ccnet.mplane.component")):
        cfg = getattr(config, name)
        if cfg is None:
            continue
        part = _build(module, runtime, cfg)
        for svc in part.services:
            svc.setServiceParent(root)
        for listener in part.listeners:
            root.add_listener(listener)
        if part.resource is not None:
            https(name, part, cfg.listen)
    if config.metrics is not None:
        part = _build("ccnet.metrics", runtime, config.metrics)
        ops: OpsRoot = part.resource
        ops.putChild(b"health", HealthResource(__version__, services, reactor))  # type: ignore[arg-type]
        site = Site(ops, requestFactory=bounded_request(part.max_body), logFormatter=access_log_line)
        site.noisy = False
        site.timeOut = idle_timeout
        root.add_listener(
            ListenerService(reactor, "metrics", parse_listen(config.metrics.listen), site, None,
                            config.daemon.shutdown_grace, config.daemon.write_stall, config.limits("metrics"))
        )
        ops.watch_listeners(lambda: listener_states(root))
        runtime.register_metrics("daemon", *DaemonMetrics(root, store, creators).collectors())
    return root


def listener_states(root: CCNetService) -> dict[str, bool]:
    """Every listening part by name: True while it accepts connections.

    HTTPS/HTTP listeners are ours; the CC proxy binds its ZeroMQ ROUTER itself, so it
    counts as up while its service runs with a bound socket.
    """
    states = {name: listener.up for name, listener in root.listeners.items()}
    for svc in root:
        server = getattr(svc, "server", None)
        if server is not None and hasattr(server, "endpoint") and hasattr(server, "socket"):
            states[str(svc.name)] = bool(svc.running and server.socket is not None)
    return states


class DaemonMetrics:
    """The daemon-wide series: listeners, connections, TLS rejections, store faults,
    failed periodic rounds (read at scrape time); store latency is a histogram the store
    feeds as it goes (:meth:`collectors`)."""

    def __init__(self, root: CCNetService, store: Store, creators: dict[str, ServerTLS]) -> None:
        self.root = root
        self.store = store
        self.creators = creators
        self.store_latency = Histogram("ccnet_store_seconds", "Store interaction latency.", ["outcome"],
                                       buckets=LATENCY_BUCKETS, registry=None)
        store.observer = lambda seconds, ok: self.store_latency.labels("ok" if ok else "error").observe(seconds)

    def collectors(self) -> list[Any]:
        return [self, self.store_latency]

    def collect(self) -> list[Metric]:
        root, store = self.root, self.store
        rejected: dict[tuple[object, ...], float] = {}
        for name, creator in self.creators.items():
            listener = root.listeners.get(name)
            failures = listener.connections.handshake_failures if listener is not None else {}
            for reason, n in (*creator.rejections.items(), *failures.items()):
                rejected[(name, reason)] = rejected.get((name, reason), 0) + n
        return [
            gauge("ccnet_listener_up", "1 while the listener accepts connections.", ["listener"],
                  {(n,): 1 if up else 0 for n, up in listener_states(root).items()}),
            gauge("ccnet_listener_connections", "Open connections per listener.", ["listener"],
                  {(n,): len(s.connections.protocols) for n, s in root.listeners.items()}),
            counter("ccnet_tls_handshake_failures_total",
                    "Failed TLS handshakes by listener and reason (certificate reasons from "
                    "the X509 check, others from OpenSSL).", ["listener", "reason"], rejected),
            counter("ccnet_periodic_failures_total", "Failed rounds of periodic jobs (each runs again next period).",
                    ["job"], {(job,): n for job, n in root.runtime.job_failures.items()}),
            counter("ccnet_store_timeouts_total", "Store calls that got no answer within [store] timeout.",
                    rows={(): store.timeouts}),
            counter("ccnet_store_reconnects_total", "Store calls run again on a fresh connection after a broken one.",
                    rows={(): store.reconnects}),
            *edge_metrics({n: s.connections for n, s in root.listeners.items()}),
        ]
