"""Operations: the plain-HTTP ``[metrics]`` listener (``/ready``, ``/metrics``) on prometheus-client.

Every service tree has its own ``prometheus_client.CollectorRegistry`` (``runtime.metrics``),
never the process-global one, so several daemons (the tests build many) live in one process.
Parts hand their collectors to ``runtime.register_metrics(name, *collectors)``:
prometheus-client metric objects for what they count as it happens (RPC calls, store
latency), small custom collectors (``counter``/``gauge`` families below) for the counters
their pure cores keep anyway (CC stats, the supervisor's state, the edge). prometheus-client
writes the exposition: the text format, or OpenMetrics when the scraper asks for it.

The listener serves ``/health`` (added by the service), ``/ready`` and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import NOT_DONE_YET, GzipEncoderFactory, Request

from ccnet.edge.shim import request_disconnected
from ccnet.runtime import Part
from ccnet.web import json_response

if TYPE_CHECKING:
    from ccnet.runtime import Runtime

__all__ = [
    "LATENCY_BUCKETS",
    "MetricsResource",
    "OpsRoot",
    "PartMetrics",
    "ReadyResource",
    "build",
    "counter",
    "gauge",
]

log = Logger()

#: Default latency buckets (seconds): sub-millisecond store hits up to slow RPC exports.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

#: Rows of a family: label values -> value (``{(): n}`` for an unlabelled one).
Rows = Mapping[tuple[Any, ...], float]


def _family(family: CounterMetricFamily | GaugeMetricFamily, rows: Rows) -> Any:
    for labels, value in sorted(rows.items(), key=lambda item: tuple(map(str, item[0]))):
        family.add_metric([str(v) for v in labels], value)
    return family


def counter(name: str, documentation: str, labels: Sequence[str] = (), rows: Rows | None = None) -> Metric:
    """A counter family from counts a part keeps itself (``name`` ends in ``_total``).

    An unlabelled counter without ``rows`` is exposed as 0, so a series exists before its
    first event (``rate()`` and alerts see it from the first scrape)."""
    if rows is None:
        rows = {} if labels else {(): 0}
    return _family(CounterMetricFamily(name, documentation, labels=list(labels)), rows)


def gauge(name: str, documentation: str, labels: Sequence[str] = (), rows: Rows | None = None) -> Metric:
    """A gauge family from levels read at scrape time."""
    return _family(GaugeMetricFamily(name, documentation, labels=list(labels)), rows or {})


class PartMetrics:
    """One part's collectors under its name in the registry.

    A collector that fails is logged and left out of that scrape; the other parts'
    series still answer (a bug in one part must not blind the operator to all)."""

    def __init__(self, name: str, collectors: Sequence[Collector]) -> None:
        self.name = name
        self.collectors = tuple(collectors)

    def describe(self) -> list[Metric]:
        # Only the metric objects describe themselves (no collection at registration):
        # the registry refuses two parts exposing the same name.
        return [m for c in self.collectors if hasattr(c, "describe") for m in c.describe()]

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            try:
                families = list(collector.collect())
            except Exception:
                log.failure("metrics of {name} failed", name=self.name)
                continue
            yield from families


# -- the listener ---------------------------------------------------------------------------


class ReadyResource(Resource):
    """``GET /ready``: 200 when every listener is listening, the store answers and every
    registered part (``runtime.register_part``: the supervisor's state, the component's
    outbox, managed CC daemons) is up, else 503.

    The body says what is not ready (``store: false``, ``not_listening: [names]``,
    ``not_ready: [every part that is not, listeners and store included]``), so an operator
    sees why at a glance. ``/metrics`` runs the same check (``ccnet_ready``, ``ccnet_store_up``).
    """

    isLeaf = True

    def __init__(self, runtime: Runtime, listeners: Callable[[], dict[str, bool]] | None = None,
                 store_timeout: float = 5.0) -> None:
        super().__init__()
        self._runtime = runtime
        self.listeners = listeners if listeners is not None else dict
        self._store_timeout = store_timeout

    def check(self) -> defer.Deferred[dict[str, Any]]:
        """The readiness report: ``ready``, ``store`` and what is not ready."""
        d = defer.maybeDeferred(self._runtime.store.ping)
        # A database that hangs (dead TCP peer) must not hang the probe with it.
        d.addTimeout(self._store_timeout, self._runtime.reactor)
        d.addErrback(lambda _: False)

        def report(ok: Any) -> dict[str, Any]:
            listeners = self.listeners()
            store = ok is True
            parts = {name: _up(up) for name, up in self._runtime.parts.items()}
            body: dict[str, Any] = {"ready": store and all(listeners.values()) and all(parts.values()),
                                    "store": store}
            down = sorted(name for name, up in listeners.items() if not up)
            if down:
                body["not_listening"] = down
            if parts:
                body["parts"] = parts
            not_ready = sorted(set(down) | {name for name, up in parts.items() if not up}
                               | (set() if store else {"store"}))
            if not_ready:
                body["not_ready"] = not_ready
            return body

        return d.addCallback(report)

    def render_GET(self, request: Request) -> Any:  # noqa: N802 (twisted.web API)
        def answer(body: dict[str, Any]) -> None:
            if request.finished or request_disconnected(request):
                return
            request.write(json_response(request, 200 if body["ready"] else 503, body))
            request.finish()

        self.check().addCallback(answer)
        return NOT_DONE_YET


def _up(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        log.failure("readiness check failed")
        return False


class MetricsResource(Resource):
    """``GET /metrics``: the registry's exposition, in the format the scraper accepts.

    Not prometheus-client's own Twisted resource: that one collects in a thread of the
    global reactor's pool, while our collectors read state the reactor thread changes;
    here collection runs in the reactor thread, after the readiness check."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, ready: ReadyResource) -> None:
        super().__init__()
        self._registry = registry
        self._ready = ready
        self._readiness = Gauge("ccnet_ready", "1 while /ready answers 200.", registry=None)
        self._store_up = Gauge("ccnet_store_up", "1 while the store answers the readiness ping.", registry=None)

    def collectors(self) -> list[Collector]:
        return [self._readiness, self._store_up]

    def render_GET(self, request: Request) -> Any:  # noqa: N802 (twisted.web API)
        def answer(report: dict[str, Any]) -> None:
            self._readiness.set(1 if report["ready"] else 0)
            self._store_up.set(1 if report["store"] else 0)
            encode, content_type = choose_encoder(_header(request, b"accept"))
            output = encode(self._registry)
            if request.finished or request_disconnected(request):
                return
            request.setHeader(b"content-type", content_type.encode("ascii"))
            request.write(output)
            request.finish()

        def failed(failure: Any) -> None:
            log.failure("metrics exposition failed", failure)
            if not (request.finished or request_disconnected(request)):
                request.setResponseCode(500)
                request.finish()

        self._ready.check().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else (value or "")


class OpsRoot(Resource):
    """Root of the ``[metrics]`` site; the service tells it how to see its listeners."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.ready = ReadyResource(runtime)
        self.metrics = MetricsResource(runtime.metrics, self.ready)
        self.putChild(b"ready", self.ready)  # type: ignore[arg-type]
        # Prometheus asks for gzip; the text compresses about tenfold.
        self.putChild(b"metrics", EncodingResourceWrapper(self.metrics, [GzipEncoderFactory()]))  # type: ignore[arg-type]

    def watch_listeners(self, listeners: Callable[[], dict[str, bool]]) -> None:
        self.ready.listeners = listeners


def process_collectors(version: str) -> Iterable[Collector]:
    """``ccnet_info{version}`` and prometheus-client's ``ccnet_process_*`` (from /proc/self)."""
    info = Info("ccnet", "Version of this daemon.", registry=None)
    info.info({"version": version})
    return [info, ProcessCollector(namespace="ccnet", registry=None)]


def build(runtime: Runtime, cfg: Any) -> Part:
    """Entry point for ``ccnet.service``: the ``[metrics]`` site root (GET only: a body
    worth more than a few bytes is refused)."""
    root = OpsRoot(runtime)
    runtime.register_metrics("process", *process_collectors(runtime.version), *root.metrics.collectors())
    return Part(resource=root, max_body=64 * 1024)
