"""CC counters and latency (pure).

Counter names follow the original ccserver stats: ``count``, ``bytes``,
``count.<outcome>`` and, per type, ``count.<outcome>.msg.<type>``.  Outcomes:
``ok`` (handled), ``dropped`` (no route / queue overflow), ``crashed`` (handler
exception), ``error`` (rejected with an error reply: bad payload, signature),
``invalid`` (unparseable frames).  Besides the outcome, ``unanswered`` (and
``unanswered.msg.<type>``) counts error replies withheld from senders that did not
opt in with ``"ack": true`` (the original CC's daemons): what the original drops
silently, ccnet logs and counts here instead of answering.

Events that are not a message's outcome are counted apart (``events``):
``undelivered.<reason>`` (a reply or forward that ZMQ could not deliver:
``peer-gone``, ``peer-queue-full``, ``queue-bytes-full``, ``closing``),
``disconnected`` (ZMQ closed a peer connection) and ``read-paused`` (the ROUTER
stopped reading because handlers held ``max-pending-bytes``).

Peers choose the types they send: the first ``MAX_TYPES`` distinct types are counted
apart, any later new one under ``OTHER_TYPE`` (bounded memory, bounded metric series).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["CCStats", "LATENCY_BUCKETS", "MAX_TYPES", "OTHER_TYPE", "OUTCOMES"]

OUTCOMES = ("ok", "dropped", "crashed", "error", "invalid")
#: Histogram bucket upper bounds, seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Distinct message types counted apart; a peer picks the types it sends, so any type first
#: seen once this many are known is counted under OTHER_TYPE (bounded memory and series).
MAX_TYPES = 200
OTHER_TYPE = "(other)"  # not a valid CC type (valid_type), so it never names a real one


@dataclass
class _Latency:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)

    def quantile(self, q: float) -> float:
        """Upper bucket bound holding the q-quantile (inf when over the last)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= target:
                return LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else float("inf")
        return float("inf")


class CCStats:
    """Totals since start plus a period view that the stats log line resets.

    The hot path only bumps one ``(outcome, type)`` cell; the original's counter
    names are derived when someone reads them.
    """

    def __init__(self, per_type: bool = True, max_types: int = MAX_TYPES) -> None:
        self.per_type = per_type
        self.max_types = max_types
        self._types: set[str] = set()
        self._cells: dict[tuple[str, str | None], int] = {}
        self._bytes = 0
        self._last_cells: dict[tuple[str, str | None], int] = {}
        self._last_bytes = 0
        self.latency: dict[str, _Latency] = {}
        self.queue_depth: dict[str, int] = {}
        #: Total handling time, as the original ``seconds`` counter.
        self.seconds = 0.0
        #: Error replies withheld (sender did not opt in), per type; not an outcome.
        self.unanswered: Counter[str] = Counter()
        self._last_unanswered: Counter[str] = Counter()
        #: Non-outcome events (module docstring).
        self.events: Counter[str] = Counter()
        self._last_events: Counter[str] = Counter()
        #: Current levels for the metrics endpoint (send queue, pending bytes).
        self.gauges: Callable[[], Mapping[str, int]] | None = None

    def event(self, name: str, n: int = 1) -> None:
        self.events[name] += n

    def _bounded(self, mtype: str) -> str:
        """``mtype``, or OTHER_TYPE when it is new and MAX_TYPES are known already."""
        types = self._types
        if mtype in types:
            return mtype
        if len(types) < self.max_types:
            types.add(mtype)
            return mtype
        return OTHER_TYPE

    def count_unanswered(self, mtype: str | None) -> None:
        self.unanswered[self._bounded(mtype) if mtype else ""] += 1

    def count(self, outcome: str, mtype: str | None = None, nbytes: int = 0) -> None:
        key = (outcome, self._bounded(mtype) if mtype is not None else None)
        cells = self._cells
        cells[key] = cells.get(key, 0) + 1
        self._bytes += nbytes

    @property
    def cells(self) -> Mapping[tuple[str, str | None], int]:
        """Messages counted since start by (outcome, type)."""
        return self._cells

    def observe(self, mtype: str, seconds: float) -> None:
        mtype = self._bounded(mtype)
        lat = self.latency.get(mtype)
        if lat is None:
            lat = self.latency[mtype] = _Latency()
        lat.observe(seconds)
        self.seconds += seconds

    def _named(
        self, cells: dict[tuple[str, str | None], int], nbytes: int, unanswered: Counter[str],
        events: Counter[str] | None = None,
    ) -> Counter[str]:
        out: Counter[str] = Counter()
        for name, n in (events or {}).items():
            if n > 0:
                out[name] += n
                if name.startswith("undelivered."):
                    out["undelivered"] += n
        for withheld, n in unanswered.items():
            if n > 0:
                out["unanswered"] += n
                if self.per_type and withheld:
                    out[f"unanswered.msg.{withheld}"] += n
        for (outcome, mtype), n in cells.items():
            if not n:
                continue
            out["count"] += n
            out[f"count.{outcome}"] += n
            if self.per_type and mtype:
                out[f"count.{outcome}.msg.{mtype}"] += n
        if nbytes:
            out["bytes"] = nbytes
        return out

    @property
    def totals(self) -> Counter[str]:
        """Counters since start, by the original names (``count.ok.msg.echo``)."""
        return self._named(self._cells, self._bytes, self.unanswered, self.events)

    def take_period(self) -> dict[str, int]:
        """Counters since the previous call (for the periodic stats log line)."""
        last = self._last_cells
        diff = {k: v - last.get(k, 0) for k, v in self._cells.items()}
        named = self._named(diff, self._bytes - self._last_bytes, self.unanswered - self._last_unanswered,
                            self.events - self._last_events)
        self._last_cells, self._last_bytes = dict(self._cells), self._bytes
        self._last_unanswered = Counter(self.unanswered)
        self._last_events = Counter(self.events)
        return dict(named)

    def snapshot(self) -> dict[str, object]:
        lat = {
            t: {"count": v.count, "avg": v.total / v.count if v.count else 0.0,
                "p99": v.quantile(0.99), "max": v.maximum}
            for t, v in self.latency.items()
        }
        return {"counters": dict(self.totals), "seconds": self.seconds, "latency": lat, "queues": dict(self.queue_depth)}
