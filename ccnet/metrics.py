"""Operations: a small Prometheus text renderer and the plain-HTTP ``[metrics]`` listener.

The renderer (``Counter``, ``Gauge``, ``Histogram``, ``render``) is pure: protocol parts keep
their own instances and register a ``() -> str`` source with ``runtime.register_metrics``.
We write the text exposition format (version 0.0.4) ourselves: it is a few lines, and
prometheus-client's process-global registry does not fit a daemon that builds several
independent service trees in one process (the tests do).

The listener serves ``/health`` (added by the service), ``/ready`` and ``/metrics``.
"""

from __future__ import annotations

import math
import os
import resource as _resource
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ccnet.edge.shim import request_disconnected
from ccnet.runtime import Part
from ccnet.web import json_response

if TYPE_CHECKING:
    from ccnet.runtime import Runtime

__all__ = [
    "LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricsResource",
    "OpsRoot",
    "ReadyResource",
    "build",
    "escape_label",
    "process_metrics",
    "render",
]

log = Logger()

#: Default latency buckets (seconds): sub-millisecond store hits up to slow RPC exports.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


def escape_label(value: object) -> str:
    """A label value as the exposition format wants it (backslash, quote, newline escaped)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[object], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _key(self, labels: Sequence[object]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> str:
        return "\n".join(self.header() + self.samples()) + "\n"

    def samples(self) -> list[str]:
        return []


class Counter(_Family):
    """A monotonically increasing count per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: object, amount: float = 1) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, *labels: object) -> float:
        return self.values.get(self._key(labels), 0)

    def samples(self) -> list[str]:
        if not self.labelnames and not self.values:
            return [f"{self.name} 0"]
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Family):
    """A value that goes up and down; either set, or read from ``source`` at render time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                 source: Callable[[], Iterable[tuple[Sequence[object], float]]] | None = None) -> None:
        super().__init__(name, help_text, labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self.source = source

    def set(self, value: float, *labels: object) -> None:
        self.values[self._key(labels)] = value

    def samples(self) -> list[str]:
        values = dict(self.values)
        if self.source is not None:
            for labels, value in self.source():
                values[self._key(labels)] = value
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in sorted(values.items())]


class _Buckets:
    __slots__ = ("counts", "sum", "count")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.sum = 0.0
        self.count = 0


class Histogram(_Family):
    """Cumulative buckets, ``_sum`` and ``_count`` per label combination."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], _Buckets] = {}

    def observe(self, value: float, *labels: object) -> None:
        key = self._key(labels)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Buckets(len(self.buckets))
        series.counts[bisect_left(self.buckets, value)] += 1
        series.sum += value
        series.count += 1

    def count(self, *labels: object) -> int:
        series = self.series.get(self._key(labels))
        return series.count if series is not None else 0

    def samples(self) -> list[str]:
        out: list[str] = []
        for key, series in sorted(self.series.items()):
            acc = 0
            for bound, n in zip((*self.buckets, math.inf), series.counts, strict=True):
                acc += n
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {acc}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(series.sum)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {series.count}")
        return out


def render(families: Iterable[_Family]) -> str:
    """The exposition text of several families."""
    return "".join(f.render() for f in families)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(_resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss) * 1024


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def process_metrics(started: float) -> str:
    """Resident memory, open file descriptors, CPU seconds and start time of this process."""
    usage = _resource.getrusage(_resource.RUSAGE_SELF)
    rows = [
        ("ccnet_process_resident_memory_bytes", "gauge", "Resident set size.", _rss_bytes()),
        ("ccnet_process_open_fds", "gauge", "Open file descriptors.", _open_fds()),
        ("ccnet_process_cpu_seconds_total", "counter", "User and system CPU time.",
         usage.ru_utime + usage.ru_stime),
        ("ccnet_process_start_time_seconds", "gauge", "Start time, seconds since the epoch.", started),
    ]
    lines: list[str] = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
    return "\n".join(lines) + "\n"


# -- the listener ---------------------------------------------------------------------------


class ReadyResource(Resource):
    """``GET /ready``: 200 when every listener is listening, the store answers and every
    registered part (``runtime.register_part``: the supervisor's state, the component's
    outbox, managed CC daemons) is up, else 503.

    The body says what is not ready (``store: false``, ``not_listening: [names]``,
    ``not_ready: [every part that is not, listeners and store included]``), so an operator
    sees why at a glance.
    """

    isLeaf = True

    def __init__(self, runtime: Runtime, listeners: Callable[[], dict[str, bool]] | None = None,
                 store_timeout: float = 5.0) -> None:
        super().__init__()
        self._runtime = runtime
        self.listeners = listeners if listeners is not None else dict
        self._store_timeout = store_timeout

    def render_GET(self, request: Request) -> Any:  # noqa: N802 (twisted.web API)
        d = defer.maybeDeferred(self._runtime.store.ping)
        # A database that hangs (dead TCP peer) must not hang the probe with it.
        d.addTimeout(self._store_timeout, self._runtime.reactor)
        d.addErrback(lambda _: False)

        def done(ok: Any) -> None:
            listeners = self.listeners()
            store = ok is True
            parts = {name: _up(up) for name, up in self._runtime.parts.items()}
            ready = store and all(listeners.values()) and all(parts.values())
            if request.finished or request_disconnected(request):
                return
            body: dict[str, Any] = {"ready": ready, "store": store}
            down = sorted(name for name, up in listeners.items() if not up)
            if down:
                body["not_listening"] = down
            if parts:
                body["parts"] = parts
            not_ready = sorted(set(down) | {name for name, up in parts.items() if not up}
                               | (set() if store else {"store"}))
            if not_ready:
                body["not_ready"] = not_ready
            request.write(json_response(request, 200 if ready else 503, body))
            request.finish()

        d.addCallback(done)
        return NOT_DONE_YET


def _up(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        log.failure("readiness check failed")
        return False


class MetricsResource(Resource):
    """``GET /metrics``: Prometheus text exposition from every part that registered."""

    isLeaf = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self._runtime = runtime

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        parts = [
            "# HELP ccnet_info Version of this daemon.\n# TYPE ccnet_info gauge\n"
            f'ccnet_info{{version="{escape_label(self._runtime.version)}"}} 1\n'
        ]
        for name, source in sorted(self._runtime.metrics_sources.items()):
            try:
                parts.append(source())
            except Exception:
                log.failure("metrics source {name} failed", name=name)
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts).encode("utf-8")


class OpsRoot(Resource):
    """Root of the ``[metrics]`` site; the service tells it how to see its listeners."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.ready = ReadyResource(runtime)
        self.putChild(b"ready", self.ready)  # type: ignore[arg-type]
        self.putChild(b"metrics", MetricsResource(runtime))  # type: ignore[arg-type]

    def watch_listeners(self, listeners: Callable[[], dict[str, bool]]) -> None:
        self.ready.listeners = listeners


def build(runtime: Runtime, cfg: Any) -> Part:
    """Entry point for ``ccnet.service``: the ``[metrics]`` site root (GET only: a body
    worth more than a few bytes is refused)."""
    started = time.time()
    runtime.register_metrics("process", lambda: process_metrics(started))
    return Part(resource=OpsRoot(runtime), max_body=64 * 1024)
