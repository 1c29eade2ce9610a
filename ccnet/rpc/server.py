"""Build the ``[rpc]`` part of the daemon: the site root resource and its services."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from ccnet.metrics import LATENCY_BUCKETS
from ccnet.rpc.config import RPCConfig
from ccnet.rpc.resource import RPCResource
from ccnet.rpc.service import MountedService
from ccnet.runtime import Part

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from ccnet.runtime import Runtime

__all__ = ["HandlerLifecycle", "ThreadPoolService", "build", "build_resource"]

log = Logger(namespace="ccnet.rpc")

#: A Host header worth echoing in a URL: a name or address, optionally a port.
_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?\Z")


@implementer(IService)
class ThreadPoolService(Service):
    """Starts and stops the bounded pool that runs blocking exports."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self.setName("rpc-threads")

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        self.pool.start()

    def stopService(self) -> None:  # noqa: N802 (Twisted API)
        super().stopService()
        self.pool.stop()


class HandlerLifecycle(Service):
    """Runs ``initializeHandler`` at start for the services that ask for it
    (``initialize_at_start``), and every mounted service's ``stopHandler`` at stop."""

    def __init__(self, resource: RPCResource) -> None:
        self.resource = resource
        self.setName("rpc-services")

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        for mounted in self.resource.services.values():
            if mounted.cls.initialize_at_start:
                # A failure is logged by MountedService and retried at the first call.
                mounted.ensure_initialized().addErrback(lambda _: None)

    def stopService(self) -> Deferred[Any]:  # noqa: N802 (Twisted API)
        super().stopService()
        return DeferredList([m.stop() for m in self.resource.services.values()])


def rpc_metrics(resource: RPCResource, pool: ThreadPool) -> list[Collector]:
    """Count calls by service/method/status and time them; the collectors for ``/metrics``.

    Names are counted as :meth:`RPCResource.counted_names` gives them.
    """
    calls = Counter("ccnet_rpc_calls_total", "RPC calls by service, method and HTTP status.",
                    ["service", "method", "status"], registry=None)
    latency = Histogram("ccnet_rpc_call_seconds", "RPC call latency.", ["service", "method"],
                        buckets=LATENCY_BUCKETS, registry=None)
    queued = Gauge("ccnet_rpc_threadpool_queue_depth", "Blocking calls waiting for a thread.", registry=None)
    queued.set_function(pool.q.qsize)
    busy = Gauge("ccnet_rpc_threadpool_busy", "Threads running blocking calls.", registry=None)
    busy.set_function(lambda: len(pool.working))

    def on_call(service: str, method: str, status: int, seconds: float) -> None:
        service, method = resource.counted_names(service, method)
        calls.labels(service, method, str(status)).inc()
        latency.labels(service, method).observe(seconds)

    resource.on_call = on_call
    return [calls, latency, queued, busy]


def build_resource(
    runtime: Runtime, cfg: RPCConfig, pool: ThreadPool, *, allow_proxies: bool | None = None
) -> RPCResource:
    """The ``[rpc]`` root resource for ``runtime`` (also used by tests and the bench)."""
    if allow_proxies is None:
        allow_proxies = cfg.allow_proxies
    if allow_proxies is None:
        allow_proxies = runtime.allow_proxies("rpc")  # [rpc] over [tls]
    mounted = {}
    for svc in cfg.services:
        mounted[svc.name] = MountedService(
            svc.name,
            svc.service_class,
            reactor=runtime.reactor,
            pool=pool,
            options=svc.options,
            config_rules=svc.authorization,
            runtime=runtime,
            base_url=cfg.url or "",
            config_dir=str(Path(cfg.path).parent) if cfg.path != "<string>" else "",
        )
        log.info(
            "RPC service {service} ({cls}) exports {methods}",
            service=svc.name,
            cls=svc.class_path,
            methods=", ".join(mounted[svc.name].table.names()),
        )

    def base_url(request: Request) -> str:
        if cfg.url:
            return cfg.url
        # As DIRAC (Tornado's request.full_url()): the address the client used.
        named = request.getHeader("host")
        if named and _HOST_HEADER.match(named):
            return f"https://{named}"
        host = request.getHost()
        return f"https://{runtime.hostname or getattr(host, 'host', 'localhost')}:{getattr(host, 'port', 8443)}"

    return RPCResource(
        mounted,
        # Read per request: the users mapping is swapped on reload (SIGHUP).
        lambda: runtime.users,
        max_body=cfg.max_body,
        allow_proxies=allow_proxies,
        trust_ssl_headers=cfg.trust_ssl_headers,
        base_url=base_url,
    )


def build(runtime: Runtime, cfg: RPCConfig) -> Part:
    """Entry point for ``ccnet.service``: (site root resource, services to start)."""
    pool = ThreadPool(minthreads=0, maxthreads=cfg.threads, name="ccnet-rpc")
    resource = build_resource(runtime, cfg, pool)
    runtime.register_metrics("rpc", *rpc_metrics(resource, pool))
    services: list[IService] = [ThreadPoolService(pool), HandlerLifecycle(resource)]  # type: ignore[list-item]
    from ccnet.rpc.console import console_view

    runtime.console.rpc = console_view(resource, runtime.reactor.seconds)  # after the metrics' on_call
    return Part(services=list(services), resource=resource, max_body=cfg.max_body, site=resource.make_site())
