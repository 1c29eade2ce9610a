"""The CC proxy's series for ``/metrics``, read from its :class:`~ccnet.cc.stats.CCStats` at scrape time."""

from __future__ import annotations

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ccnet.cc.stats import LATENCY_BUCKETS, CCStats
from ccnet.metrics import counter, gauge

__all__ = ["CCMetrics"]


class CCMetrics:
    """A prometheus-client collector over the CC counters (``runtime.register_metrics``)."""

    def __init__(self, stats: CCStats, prefix: str = "ccnet_cc") -> None:
        self.stats = stats
        self.prefix = prefix

    def collect(self) -> list[Metric]:
        stats, p = self.stats, self.prefix
        events = stats.events
        families = [
            self._messages(),
            counter(f"{p}_unanswered_total", "Error replies withheld from senders that did not ask for them.",
                    ["type"], {(mtype,): n for mtype, n in stats.unanswered.items()}),
            counter(f"{p}_undelivered_total", "Replies and forwards ZMQ could not deliver, by reason.", ["reason"],
                    {(name[len("undelivered."):],): n for name, n in events.items() if name.startswith("undelivered.")}),
            counter(f"{p}_disconnects_total", "Peer connections ZMQ closed.", rows={(): events.get("disconnected", 0)}),
            counter(f"{p}_read_pauses_total", "Times the ROUTER stopped reading at max-pending-bytes.",
                    rows={(): events.get("read-paused", 0)}),
            counter(f"{p}_bytes_total", "Bytes of messages received.", rows={(): stats.totals.get("bytes", 0)}),
            self._latency(),
        ]
        if stats.gauges is not None:
            families += [gauge(f"{p}_{name}", f"CC {name.replace('_', ' ')}.", rows={(): value})
                         for name, value in sorted(stats.gauges().items())]
        families.append(gauge(f"{p}_queue_depth", "Messages waiting in each handler's queue.", ["handler"],
                              {(name,): depth for name, depth in stats.queue_depth.items()}))
        return families

    def _messages(self) -> Metric:
        # Straight from the (outcome, type) cells: per type when the stats keep types
        # (messages without one, such as unparseable frames, under type=""), else per outcome.
        rows: dict[tuple[object, ...], float] = {}
        for (outcome, mtype), n in self.stats.cells.items():
            key: tuple[object, ...] = (outcome, mtype or "") if self.stats.per_type else (outcome,)
            rows[key] = rows.get(key, 0) + n
        labels = ["outcome", "type"] if self.stats.per_type else ["outcome"]
        return counter(f"{self.prefix}_messages_total", "Messages by outcome (ok, dropped, crashed, error, invalid).",
                       labels, rows)

    def _latency(self) -> Metric:
        family = HistogramMetricFamily(f"{self.prefix}_latency_seconds", "Handling time by message type.",
                                       labels=["type"])
        for mtype, latency in sorted(self.stats.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), latency.buckets, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric([mtype], buckets, latency.total)
        return family

