"""ICMP round-trip time with the system ``ping`` binary (raw ICMP needs root or the
setuid/capability ping, which the binary has; ccnet itself needs no privilege).

Capabilities equal the SDK's ``mplane.components.ping``: ``ping-average-ip4`` /
``ping-detail-ip4`` (and ``-ip6``), ``when = now ... future / 1s``, the source address
fixed by config and the destination constrained by config::

    [probe:ping]
    module = ccnet.mplane.probes.ping
    ip4addr = 127.0.0.1
    # any mPlane constraint: *, a ... b, a,b,c
    destinations4 = 127.0.0.1 ... 127.255.255.255
    ip6addr = ::1
    destinations6 = ::1
    # shortest period a specification may ask for, seconds
    min-period = 1
    ping = ping
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ccnet.mplane.model import ModelError, RegistryStore, Statement, When, parse_constraint
from ccnet.mplane.probes import IProbe, IProbeFactory, ProbeError, ProbeRun, make_result
from ccnet.reactors import IReactor

__all__ = ["PingOptions", "PingProbe", "parse_ping_line", "probe_factory"]

log = Logger()

_LINE = re.compile(r"icmp_seq=(\d+)\s+\S+=(\d+)\s+time=([\d.]+)\s*ms")

AVERAGE_RESULTS = ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
                   "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"]
DETAIL_RESULTS = ["time", "delay.twoway.icmp.us"]


def parse_ping_line(line: str) -> tuple[int, int, int] | None:
    """(seq, ttl, rtt in µs) of one ``ping`` reply line, None for other lines."""
    m = _LINE.search(line)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(float(m.group(3)) * 1000)


@dataclass(frozen=True)
class PingOptions:
    ip4addr: str | None = "127.0.0.1"
    ip6addr: str | None = None
    destinations4: str = "*"
    destinations6: str = "*"
    min_period: int = 1
    ping: str = "ping"


def capabilities(opts: PingOptions) -> list[Statement]:
    period = f"{opts.min_period}s"
    out = []
    for fam, source, dests in (("ip4", opts.ip4addr, opts.destinations4), ("ip6", opts.ip6addr, opts.destinations6)):
        if source is None:
            continue
        for kind, results in (("average", AVERAGE_RESULTS), ("detail", DETAIL_RESULTS)):
            out.append(Statement("capability", label=f"ping-{kind}-{fam}", when=When.parse(f"now ... future / {period}"),
                                 parameters={f"source.{fam}": source, f"destination.{fam}": dests},
                                 results=list(results)))
    return out


@implementer(IProbeFactory)
class _Factory:
    def configure(self, section: Any) -> PingOptions:
        core = RegistryStore().core
        values: dict[str, Any] = {}
        for fam, default in (("ip4", "127.0.0.1"), ("ip6", None)):
            addr = section.get_str(f"{fam}addr", default)
            if addr is not None and addr != "":
                try:
                    parsed = ipaddress.ip_address(addr)
                except ValueError:
                    raise section.error(f"{fam}addr", f"an IP{fam[-1]} address", addr) from None
                if parsed.version != int(fam[-1]):
                    raise section.error(f"{fam}addr", f"an IP{fam[-1]} address", addr)
            values[f"{fam}addr"] = addr or None
            dests = section.get_str(f"destinations{fam[-1]}", "*")
            try:
                parse_constraint(core.element(f"destination.{fam}"), dests)
            except ModelError as exc:
                raise section.error(f"destinations{fam[-1]}", "an mPlane constraint (*, a ... b, a,b,c)",
                                    dests) from exc
            values[f"destinations{fam[-1]}"] = dests
        values["min_period"] = section.get_int("min-period", 1, minimum=1)
        values["ping"] = section.get_str("ping", "ping")
        if values["ip4addr"] is None and values["ip6addr"] is None:
            raise section.error("ip4addr", "ip4addr and/or ip6addr (the source address to ping from)")
        return PingOptions(**values)

    def build(self, reactor: IReactor, name: str, options: PingOptions) -> PingProbe:
        return PingProbe(reactor, name, options)


probe_factory = _Factory()


class _PingProcess(protocol.ProcessProtocol):
    def __init__(self, clock: IReactorTime) -> None:
        self.buffer = b""
        self.pings: list[tuple[datetime, int]] = []
        self.errors = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.clock = clock

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            parsed = parse_ping_line(line.decode("utf-8", "replace"))
            if parsed is not None:
                self.pings.append((datetime.fromtimestamp(self.clock.seconds(), UTC), parsed[2]))

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.errors = (self.errors + data)[-2000:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802 (Twisted API)
        self.ended.callback(None)

    def stop(self) -> None:
        transport: Any = self.transport
        try:
            transport.signalProcess("INT")  # ping prints its summary and exits
        except error.ProcessExitedAlready:
            pass


@implementer(IProbe)
class PingProbe:
    def __init__(self, reactor: IReactor, name: str, options: PingOptions) -> None:
        self.reactor = reactor
        self.name = name
        self.options = options
        self._binary = shutil.which(options.ping) or options.ping

    def capabilities(self) -> list[Statement]:
        return capabilities(self.options)

    def run(self, spec: Statement, capability: Statement, run: ProbeRun) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._run(spec, run))

    def argv(self, spec: Statement, run: ProbeRun) -> list[str]:
        fam = "ip6" if "destination.ip6" in spec.parameters else "ip4"
        dest = spec.parameters.get(f"destination.{fam}")
        source = spec.parameters.get(f"source.{fam}")
        if not dest or dest == "*":
            raise ProbeError(f"missing destination.{fam}")
        period = max(float(self.options.min_period), run.period or float(self.options.min_period))
        argv = [self._binary, "-n", "-i", f"{period:g}"]
        if fam == "ip6":
            argv.insert(1, "-6")
        # The spec's own duration when it has one (as the SDK counts): the run window is a
        # few milliseconds shorter than asked, which must not cost a ping.
        duration = spec.when.duration.total_seconds() if spec.when.duration is not None else run.duration
        if duration is not None:
            argv += ["-c", str(max(1, int(duration / period + 0.05)))]
        if source and source != "*":
            argv += ["-I", source]
        return argv + [dest]

    async def _run(self, spec: Statement, run: ProbeRun) -> Statement:
        argv = self.argv(spec, run)
        if not os.path.isfile(self._binary):
            raise ProbeError(f"ping binary {self.options.ping!r} not found")
        proc = _PingProcess(self.reactor)
        started = run.now()
        log.debug("ping probe running {argv}", argv=" ".join(argv))
        self.reactor.spawnProcess(proc, self._binary, argv, env=dict(os.environ))
        run.interrupted.addCallback(lambda _: proc.stop())
        await proc.ended
        pings = proc.pings
        if not pings:
            why = proc.errors.decode("utf-8", "replace").strip().splitlines()
            raise ProbeError(f"no ping replies from {argv[-1]}" + (f": {why[-1]}" if why else ""))
        usecs = [u for _, u in pings]
        if "delay.twoway.icmp.us" in spec.results:
            rows = []
            for t, usec in pings:
                row: list[Any] = []
                for col in spec.results:
                    row.append(t if col == "time" else usec if col == "delay.twoway.icmp.us" else None)
                rows.append(row)
        else:
            agg = {"delay.twoway.icmp.us.min": min(usecs),
                   "delay.twoway.icmp.us.mean": sum(usecs) // len(usecs),
                   "delay.twoway.icmp.us.50pct": sorted(usecs)[len(usecs) // 2],
                   "delay.twoway.icmp.us.max": max(usecs),
                   "delay.twoway.icmp.count": len(usecs)}
            rows = [[agg.get(col) for col in spec.results]]
        return make_result(spec, rows, pings[0][0] if pings else started, pings[-1][0])

