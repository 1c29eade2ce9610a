"""The tstat proxy: tstat's TCP log sets as mPlane capabilities (the RI's tstat-proxy).

Capabilities (RI labels and result columns): ``tstat-log_tcp_complete-core`` (one row
per TCP flow: addresses, ports, packet/byte counters, timings, classification),
``tstat-log_tcp_complete-end_to_end`` (RTT and TTL statistics),
``tstat-log_tcp_complete-tcp_options``, ``tstat-log_tcp_complete-p2p_stats`` (tstat's P2P
set: subtype and ED2K message counts) and ``tstat-log_tcp_complete-layer7`` (PSH-separated
message counts, TLS/SSL hello names); ``when = now ... future``.

A specification runs for its temporal scope. With tstat running (*live*), the RI's
``runtime.conf`` semantics apply: the log set is switched on at the start (the core set
too, which every other set needs) and the optional set off again at the end; the result
holds the flows tstat logged in between. Without tstat (*replay*), the result holds the
flows of the logs already in ``log-dir`` — by default the small recorded sample shipped
with ccnet — so demos and tests get real parsed values::

    [probe:tstat]
    module = ccnet.mplane.probes.tstat
    # live | replay | auto (live when a tstat process runs)
    mode = auto
    runtime-conf = /etc/tstat/runtime.conf
    log-dir = /var/lib/tstat/logs
    max-rows = 1000
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from ccnet.mplane.model import Statement, When
from ccnet.mplane.probes import IProbe, IProbeFactory, ProbeError, ProbeRun, make_result

__all__ = ["CAPABILITY_SETS", "TstatOptions", "TstatProbe", "parse_log", "probe_factory", "set_runtime_flags"]

log = Logger()

METADATA = {"System_type": "tStat", "System_ID": "tStat-Proxy", "System_version": "0.1"}


def _side(prefix: str, other: str) -> list[tuple[str, str]]:
    """The per-direction counters: (mPlane element, tstat column)."""
    d = "forward" if prefix == "c_" else "backward"
    who = "initiator" if prefix == "c_" else "responder"
    return [
        (f"{who}.ip4", f"{prefix}ip"), (f"{who}.port", f"{prefix}port"),
        (f"packets.{d}", f"{prefix}pkts_all"), (f"packets.{d}.syn", f"{prefix}syn_cnt"),
        (f"packets.{d}.fin", f"{prefix}fin_cnt"), (f"packets.{d}.rst", f"{prefix}rst_cnt"),
        (f"packets.{d}.ack", f"{prefix}ack_cnt"), (f"packets.{d}.pure_ack", f"{prefix}ack_cnt_p"),
        (f"packets.{d}.with_payload", f"{prefix}pkts_data"), (f"packets.{d}.rxmit", f"{prefix}pkts_retx"),
        (f"packets.{d}.outseq", f"{prefix}pkts_ooo"), (f"bytes.{d}", f"{prefix}bytes_all"),
        (f"bytes.{d}.unique", f"{prefix}bytes_uniq"), (f"bytes.{d}.rxmit", f"{prefix}bytes_retx"),
    ]


def _options(who: str, p: str) -> list[tuple[str, str]]:
    names = [("RFC1323.ws", "f1323_opt"), ("RFC1323.ts", "tm_opt"), ("win_scale", "win_scl"),
             ("SACK_set", "sack_opt"), ("SACK", "sack_cnt"), ("MSS.bytes", "mss"),
             ("segment.max.bytes", "mss_max"), ("segment.min.bytes", "mss_min"),
             ("window.max.bytes", "win_max"), ("window.min.bytes", "win_min"), ("window.zero", "win_0"),
             ("cwin.max.bytes", "cwin_max"), ("cwin.min.bytes", "cwin_min"), ("cwin.first.bytes", "cwin_ini"),
             ("rxmit.RTO", "pkts_rto"), ("rxmit.RTO.unnecessary", "pkts_unrto"), ("rxmit.FR", "pkts_fs"),
             ("rxmit.FR.unnecessary", "pkts_unfs"), ("reordering", "pkts_reor"), ("net_dup", "pkts_dup"),
             ("unknown", "pkts_unk"), ("flow_control", "pkts_fc"), ("SYN.equal_seqno", "syn_retx")]
    return [(f"{who}.{e}", f"{p}{c}") for e, c in names]


# label -> (runtime.conf flags it needs, [(result element, tstat log column)])
CAPABILITY_SETS: dict[str, tuple[tuple[str, ...], list[tuple[str, str]]]] = {
    "tstat-log_tcp_complete-core": (("log_tcp_complete",), _side("c_", "s_") + _side("s_", "c_") + [
        ("start", "first"), ("end", "last"), ("duration.ms", "durat"),
        ("initiator.TTFP.ms", "c_first"), ("responder.TTFP.ms", "s_first"),
        ("initiator.TTLP.ms", "c_last"), ("responder.TTLP.ms", "s_last"),
        ("initiator.TTFA.ms", "c_first_ack"), ("responder.TTFA.ms", "s_first_ack"),
        ("initiator.ip4.isinternal", "c_isint"), ("responder.ip4.isinternal", "s_isint"),
        ("tstat.flow.class.conn", "con_t"), ("tstat.flow.class.p2p", "p2p_t"),
        ("tstat.flow.class.http", "http_t"),
    ]),
    "tstat-log_tcp_complete-end_to_end": (("log_tcp_complete", "tcplog_end_to_end"), [
        ("rtt.average.ms", "c_rtt_avg"), ("rtt.min.ms", "c_rtt_min"), ("rtt.max.ms", "c_rtt_max"),
        ("rtt.stddev", "c_rtt_std"), ("rtt.samples", "c_rtt_cnt"), ("ttl.min", "c_ttl_min"),
        ("ttl.max", "c_ttl_max"),
    ]),
    "tstat-log_tcp_complete-tcp_options": (("log_tcp_complete", "tcplog_options"),
                                           _options("initiator", "c_") + _options("responder", "s_")),
    # tstat's P2P set (columns Y..Y+5), in tstat's order. The RI names its C2S ("client<->server
    # messages") and C2C ("client<->client messages") counters ed2k.i2r and ed2k.r2i.
    "tstat-log_tcp_complete-p2p_stats": (("log_tcp_complete", "tcplog_p2p"), [
        ("p2p.subtype", "p2p_st"), ("ed2k.data", "ed2k_data"), ("ed2k.signaling", "ed2k_sig"),
        ("ed2k.i2r", "ed2k_c2s"), ("ed2k.r2i", "ed2k_c2c"), ("ed2k.chat", "ed2k_chat"),
    ]),
    # tstat's Layer7 set: PSH-separated messages C2S/S2C (K+3, K+4), TLS client hello SNI and
    # server certificate subject CN (K+5, K+6).
    "tstat-log_tcp_complete-layer7": (("log_tcp_complete", "tcplog_layer7"), [
        ("initiator.psh_separated", "c_pkts_push"), ("responder.psh_separated", "s_pkts_push"),
        ("ssl.hello.client", "c_tls_SNI"), ("ssl.hello.server", "s_tls_SCN"),
    ]),
}

# Older tstat releases name the same hello fields c_ssl / s_ssl in their log header.
_ALIASES = {"c_tls_SNI": "c_ssl", "s_tls_SCN": "s_ssl"}

_TIMES = {"start", "end"}
_NATURALS_FROM_REAL = {"duration.ms"}
_BOOLEANS = {"initiator.ip4.isinternal", "responder.ip4.isinternal", "initiator.RFC1323.ws",
             "initiator.RFC1323.ts", "initiator.SACK_set", "initiator.SYN.equal_seqno",
             "responder.RFC1323.ws", "responder.RFC1323.ts", "responder.SACK_set", "responder.SYN.equal_seqno"}


def capabilities() -> list[Statement]:
    return [Statement("capability", label=label, when=When.parse("now ... future"), metadata=dict(METADATA),
                      results=[e for e, _ in cols]) for label, (_, cols) in CAPABILITY_SETS.items()]


# ---------------------------------------------------------------------------
# Pure helpers: log parsing, runtime.conf editing


def parse_log(text: str) -> list[dict[str, str]]:
    """Flows of a tstat log: one dict per line, keyed by the header's column names
    (``#01#c_ip:1 c_port:2 ...``; a later header line switches the layout)."""
    names: list[str] = []
    flows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            header = line[line.rfind("#") + 1:] if line.count("#") > 1 else line[1:]
            names = [field.split(":")[0] for field in header.split()]
            continue
        values = line.split()
        if names and len(values) <= len(names):
            flows.append(dict(zip(names, values, strict=False)))
    return flows


_FLAG = re.compile(r"^(\s*)([A-Za-z_0-9]+)(\s*=\s*)(\d+)(.*)$")


def set_runtime_flags(text: str, flags: Iterable[str], value: bool) -> str:
    """``runtime.conf`` with ``flags`` set to 1/0, everything else (comments too) untouched."""
    wanted = set(flags)
    out = []
    for line in text.splitlines(keepends=True):
        m = _FLAG.match(line.rstrip("\n"))
        if m and m.group(2) in wanted:
            end = "\n" if line.endswith("\n") else ""
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{1 if value else 0}{m.group(5)}{end}"
        out.append(line)
    return "".join(out)


def _value(element: str, raw: str | None) -> Any:
    if raw is None:
        return None
    if element in _TIMES:
        return datetime.fromtimestamp(float(raw) / 1000.0, UTC)
    if element in _NATURALS_FROM_REAL:
        return int(float(raw))
    if element in _BOOLEANS:
        return raw not in ("0", "0.0")
    return raw


def rows_for(label: str, flows: list[dict[str, str]], since_ms: float | None = None,
             until_ms: float | None = None) -> list[list[Any]]:
    """Result rows of capability ``label`` from parsed flows (optionally those that started in a window)."""
    _, cols = CAPABILITY_SETS[label]
    rows = []
    usable = [f for f in flows if all(_has(f, c) for _, c in cols)]
    if flows and not usable:
        missing = next(c for _, c in cols if not _has(flows[0], c))
        raise ProbeError(f"the tstat logs have no {missing} column: {label} needs its log set enabled "
                         "in tstat's runtime.conf")
    for flow in usable:
        first = float(flow.get("first", "0") or 0)
        if since_ms is not None and first < since_ms:
            continue
        if until_ms is not None and first > until_ms:
            continue
        rows.append([_value(e, _column(flow, c)) for e, c in cols])
    return rows


def _has(flow: dict[str, str], column: str) -> bool:
    return column in flow or _ALIASES.get(column, column) in flow


def _column(flow: dict[str, str], column: str) -> str | None:
    return flow.get(column, flow.get(_ALIASES.get(column, column)))


def sample_dir() -> Path:
    return Path(str(resources.files("ccnet.mplane.probes").joinpath("tstat_sample")))


def find_logs(folder: Path) -> list[Path]:
    """tstat's ``<time>.out/log_tcp_complete`` files (and ``log_tcp_complete*`` copies), oldest first."""
    return sorted(p for p in folder.rglob("log_tcp_complete*") if p.is_file())


def tstat_running() -> bool:
    """Is a process named tstat running on this host (Linux /proc)?"""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as handle:
                if handle.read().strip() == "tstat":
                    return True
        except OSError:
            continue
    return False


# ---------------------------------------------------------------------------
# Config and probe


@dataclass(frozen=True)
class TstatOptions:
    mode: str = "auto"
    runtime_conf: Path | None = None
    log_dir: Path | None = None
    max_rows: int = 1000


@implementer(IProbeFactory)
class _Factory:
    def configure(self, section: Any) -> TstatOptions:
        mode = section.get_choice("mode", ["auto", "live", "replay"], "auto")
        runtime_conf = section.get_path("runtime-conf", None)
        log_dir = section.get_path("log-dir", None)
        if mode == "live" and (runtime_conf is None or log_dir is None):
            raise section.error("runtime-conf" if runtime_conf is None else "log-dir",
                                "runtime-conf and log-dir for mode = live")
        if log_dir is not None and not log_dir.is_dir():
            raise section.error("log-dir", "an existing folder with tstat logs", str(log_dir))
        return TstatOptions(mode, runtime_conf, log_dir, section.get_int("max-rows", 1000, minimum=1))

    def build(self, reactor: Any, name: str, options: TstatOptions) -> TstatProbe:
        return TstatProbe(reactor, name, options)


probe_factory = _Factory()


@implementer(IProbe)
class TstatProbe:
    def __init__(self, reactor: Any, name: str, options: TstatOptions) -> None:
        self.reactor = reactor
        self.name = name
        self.options = options

    def capabilities(self) -> list[Statement]:
        return capabilities()

    def run(self, spec: Statement, capability: Statement, run: ProbeRun) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._run(spec, run))

    def _in_thread(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    async def _live(self) -> bool:
        if self.options.mode != "auto":
            return self.options.mode == "live"
        if self.options.runtime_conf is None or self.options.log_dir is None:
            return False
        return bool(await self._in_thread(tstat_running))

    def _switch(self, flags: tuple[str, ...], on: bool) -> None:
        path = self.options.runtime_conf
        assert path is not None
        path.write_text(set_runtime_flags(path.read_text(), flags, on))

    def _collect(self, label: str, since_ms: float | None, until_ms: float | None) -> list[list[Any]]:
        folder = self.options.log_dir or sample_dir()
        flows: list[dict[str, str]] = []
        for path in find_logs(folder):
            flows.extend(parse_log(path.read_text("utf-8", "replace")))
        if not flows:
            raise ProbeError(f"no tstat flows in {folder}")
        return rows_for(label, flows, since_ms, until_ms)[: self.options.max_rows]

    async def _run(self, spec: Statement, run: ProbeRun) -> Statement:
        label = str(spec.label)
        if label not in CAPABILITY_SETS:
            raise ProbeError(f"unknown tstat capability {label}")
        flags, _ = CAPABILITY_SETS[label]
        live = await self._live()
        start = run.now()
        if live:
            await self._in_thread(self._switch, flags, True)
        try:
            if run.end is not None and run.end > start:
                await run.interrupted
            elif run.end is None:
                await run.interrupted
        finally:
            if live and len(flags) > 1:
                # The RI keeps the core set on (other measurements may use it); optional sets go off.
                await self._in_thread(self._switch, flags[1:], False)
        end = run.now()
        window = (start.timestamp() * 1000, end.timestamp() * 1000) if live else (None, None)
        rows = await self._in_thread(self._collect, label, *window)
        log.info("tstat probe: {label} {n} flows ({mode})", label=label, n=len(rows), mode="live" if live else "replay")
        return make_result(spec, rows, start, end)
