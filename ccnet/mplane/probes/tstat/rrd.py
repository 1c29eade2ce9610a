"""tstat's RRD databases: ``rrdtool fetch`` output parsed, metrics grouped as the RI does.

tstat's RRD engine (``-r dir -R rrd.conf``, switched by ``rrd_engine`` in runtime.conf)
keeps one RRD file per metric and statistic, e.g. ``ip_len_out.avg.rrd`` or
``L7_TCP_num_in.idx12.rrd``. The pure part here turns ``rrdtool fetch`` text into samples
and puts a metric into one of the RI's nine groups (the ``tstat-log_rrds`` columns); the
adapter runs the ``rrdtool`` command through the reactor (never blocking it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, utils

from ccnet.reactors import IReactor

__all__ = ["GROUPS", "RrdError", "RrdSample", "fetch", "group_of", "last_update", "list_rrds",
           "parse_fetch", "summarize"]

# The RI's tstat-log_rrds result columns, in its order.
GROUPS = ["Ethernet.Related.metrics", "IP.Related.metrics", "TCP.Related.metrics", "UDP.Related.metrics",
          "MMedia.Related.metrics", "Classifier.Related.metrics", "P2P-TV.Related.metrics",
          "Video.Related.metrics", "Profile.Related.metrics"]

# (file-name prefixes, group); the first match wins, so the specific ones come first
# (``L7_VIDEO_num`` is video, not classifier; ``tcp_bitrate`` is classifier, not TCP).
_PREFIXES: list[tuple[tuple[str, ...], str]] = [
    (("profile",), "Profile.Related.metrics"),
    (("video", "l7_video"), "Video.Related.metrics"),
    (("p2p", "pplive", "sopcast", "tvants", "ppstream"), "P2P-TV.Related.metrics"),
    (("mm_", "rtp_", "rtcp_"), "MMedia.Related.metrics"),
    (("l7_", "l4_", "http_bitrate", "tcp_bitrate", "udp_bitrate", "web_bitrate", "tls_bitrate", "chat_"),
     "Classifier.Related.metrics"),
    (("tcp_",), "TCP.Related.metrics"),
    (("udp_",), "UDP.Related.metrics"),
    (("ip_", "ip6_"), "IP.Related.metrics"),
    (("eth",), "Ethernet.Related.metrics"),
]


class RrdError(Exception):
    """rrdtool failed or printed something we cannot read."""


@dataclass(frozen=True)
class RrdSample:
    metric: str  # the file name without ``.rrd``
    time: float  # the end of the step, seconds since the epoch (as rrdtool prints it)
    value: float


def metric_name(path: Path) -> str:
    return path.name[:-4] if path.name.endswith(".rrd") else path.name


def group_of(metric: str) -> str | None:
    """The RI group of a tstat RRD metric, or None for names tstat does not write."""
    low = metric.lower()
    for prefixes, group in _PREFIXES:
        if low.startswith(prefixes):
            return group
    return None


def parse_fetch(metric: str, text: str) -> list[RrdSample]:
    """``rrdtool fetch`` output (a header of data-source names, then ``time: v1 v2 ...``)
    as samples of the first data source (tstat's RRDs have one); unknown (nan) steps dropped."""
    samples = []
    for line in text.splitlines():
        head, sep, values = line.partition(":")
        if not sep or not head.strip().isdigit():
            continue
        fields = values.split()
        if not fields:
            continue
        try:
            value = float(fields[0].replace(",", "."))
        except ValueError:
            raise RrdError(f"unreadable rrdtool fetch line for {metric}: {line!r}") from None
        if not math.isnan(value):
            samples.append(RrdSample(metric, float(head.strip()), value))
    return samples


def summarize(samples: Iterable[RrdSample]) -> list[str | None]:
    """One ``tstat-log_rrds`` row: per group, ``metric=mean`` over the window for every
    metric with known values, ``;``-separated and sorted (None for a group with none)."""
    sums: dict[str, list[float]] = {}
    for s in samples:
        acc = sums.setdefault(s.metric, [0.0, 0.0])
        acc[0] += s.value
        acc[1] += 1
    cells: dict[str, list[str]] = {g: [] for g in GROUPS}
    for metric in sorted(sums):
        group = group_of(metric)
        if group is not None:
            total, count = sums[metric]
            cells[group].append(f"{metric}={total / count:.6g}")
    return ["; ".join(cells[g]) or None for g in GROUPS]


def list_rrds(folder: Path) -> list[Path]:
    """The RRD files of a tstat RRD folder (any depth), by name."""
    return sorted(p for p in folder.rglob("*.rrd") if p.is_file())


async def _run(rrdtool: str, args: list[str], reactor: IReactor) -> str:
    try:
        out, err, code = await utils.getProcessOutputAndValue(rrdtool, args, env={"LC_ALL": "C", "TZ": "UTC"},
                                                              reactor=reactor)
    except OSError as exc:
        raise RrdError(f"cannot run {rrdtool}: {exc}") from None
    if code != 0:
        raise RrdError(f"{rrdtool} {args[0]} {args[1]}: {err.decode('utf-8', 'replace').strip() or f'exit {code}'}")
    return str(out.decode("utf-8", "replace"))


def fetch(reactor: IReactor, rrdtool: str, path: Path, start: float, end: float,
          resolution: int | None = None) -> defer.Deferred[list[RrdSample]]:
    """AVERAGE samples of ``path`` between ``start`` and ``end`` (epoch seconds)."""
    args = ["fetch", str(path), "AVERAGE", "-s", str(int(start)), "-e", str(int(end))]
    if resolution:
        args += ["-r", str(resolution)]

    async def go() -> list[RrdSample]:
        return parse_fetch(metric_name(path), await _run(rrdtool, args, reactor))
    return defer.ensureDeferred(go())


def last_update(reactor: IReactor, rrdtool: str, path: Path) -> defer.Deferred[float]:
    """When ``path`` was last updated (``rrdtool last``)."""
    async def go() -> float:
        text = (await _run(rrdtool, ["last", str(path)], reactor)).strip()
        try:
            return float(text)
        except ValueError:
            raise RrdError(f"unreadable rrdtool last output for {path}: {text!r}") from None
    return defer.ensureDeferred(go())
