"""tstat's text logs, parsed (sans-IO): ``log_tcp_complete`` sets and ``log_http_complete``.

Columns of ``log_tcp_complete`` are read by the names in tstat's header line, so logs of
any tstat release (and with any optional set switched on) map onto the RI's result
columns. ``log_http_complete`` has no header; its tab-separated rows are one per HTTP
request (method name in column 6) or response (``HTTP``), laid out as tstat 2.x/3.x
write them (see :func:`parse_http_log`), and are paired into transactions per TCP
connection in order, as HTTP/1.1 answers requests.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccnet.mplane.probes import ProbeError

__all__ = ["HTTP_COLUMNS", "HTTP_FLAGS", "TCP_SETS", "HttpLine", "find_logs", "http_rows", "parse_http_log",
           "parse_log", "rows_for", "set_runtime_flags"]


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
TCP_SETS: dict[str, tuple[tuple[str, ...], list[tuple[str, str]]]] = {
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
    _, cols = TCP_SETS[label]
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


def find_logs(folder: Path, name: str = "log_tcp_complete") -> list[Path]:
    """tstat's ``<time>.out/<name>`` files (and ``<name>*`` copies), oldest first."""
    return sorted(p for p in folder.rglob(f"{name}*") if p.is_file() and not p.name.endswith(".gz"))


# ---------------------------------------------------------------------------
# log_http_complete

# runtime.conf flag of tstat's HTTP log.
HTTP_FLAGS = ("log_http_complete",)

# The RI's tstat-log_http_complete columns: one row per HTTP transaction.
HTTP_COLUMNS = ["source.ip4", "source.port", "destination.ip4", "destination.port", "time",
                "request.method", "request.hostname", "request.fqdn", "request.path", "request.referer",
                "request.user_agent", "response.http", "response.code", "response.content_len",
                "response.content_type", "response.content_range", "response.location"]

# Request fields after (c_ip, c_port, s_ip, s_port, time, method), by row length:
# tstat 3.x writes hostname, fqdn (when built with its DNS cache), path, referer,
# user agent, cookie, DNT; tstat 2.x stops after the user agent.
_REQUEST_LAYOUTS = {
    13: ("hostname", "fqdn", "path", "referer", "user_agent", "cookie", "dnt"),
    12: ("hostname", "path", "referer", "user_agent", "cookie", "dnt"),
    11: ("hostname", "fqdn", "path", "referer", "user_agent"),
    10: ("hostname", "path", "referer", "user_agent"),
}
# Response fields after (c_ip, c_port, s_ip, s_port, time, "HTTP").
_RESPONSE_FIELDS = ("code", "content_len", "content_type", "server", "content_range", "location", "set_cookie")


@dataclass(frozen=True)
class HttpLine:
    """One row of ``log_http_complete``: a request (``method``) or a response (``HTTP``)."""

    connection: tuple[str, str, str, str]  # client ip, client port, server ip, server port
    time: float  # seconds since the epoch
    kind: str  # the method (GET, POST, ...) or "HTTP"
    fields: dict[str, str | None]

    @property
    def is_response(self) -> bool:
        return self.kind == "HTTP"


def _dash(value: str) -> str | None:
    return None if value in ("", "-") else value


def parse_http_log(text: str) -> list[HttpLine]:
    """Rows of a ``log_http_complete`` file. Comment lines, tstat's ``REQ2``/``RES2``
    continuation rows (the second segment of a long header) and malformed rows are skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) < 6 or cols[5] in ("REQ2", "RES2"):
            continue
        try:
            when = float(cols[4])
        except ValueError:
            continue
        kind, rest = cols[5], cols[6:]
        if kind == "HTTP":
            names: tuple[str, ...] = _RESPONSE_FIELDS
        else:
            layout = _REQUEST_LAYOUTS.get(len(cols))
            if layout is None:
                continue
            names = layout
        fields = {n: _dash(v) for n, v in zip(names, rest, strict=False)}
        out.append(HttpLine((cols[0], cols[1], cols[2], cols[3]), when, kind, fields))
    return out


def _natural(value: str | None) -> str | None:
    return value if value is not None and value.isdigit() else None


def _transaction(request: HttpLine | None, response: HttpLine | None) -> list[Any]:
    first = request or response
    assert first is not None
    q = request.fields if request else {}
    r = response.fields if response else {}
    c_ip, c_port, s_ip, s_port = first.connection
    return [c_ip, c_port, s_ip, s_port, datetime.fromtimestamp(first.time, UTC),
            request.kind if request else None, q.get("hostname"), q.get("fqdn"), q.get("path"),
            q.get("referer"), q.get("user_agent"), "HTTP" if response else None,
            _natural(r.get("code")), _natural(r.get("content_len")), r.get("content_type"),
            r.get("content_range"), r.get("location")]


def http_rows(lines: list[HttpLine], since: float | None = None, until: float | None = None) -> list[list[Any]]:
    """Transactions (request paired with its response) in request order, as result rows of
    ``tstat-log_http_complete``; optionally those whose first line falls in ``[since, until]``.

    Responses answer the oldest unanswered request of their connection (HTTP/1.1 keeps
    order); a response with none (the capture began mid-connection) and a request never
    answered still make a row, with the other half empty."""
    pending: dict[tuple[str, str, str, str], deque[int]] = {}
    pairs: list[list[HttpLine | None]] = []
    for line in sorted(lines, key=lambda item: item.time):
        queue = pending.setdefault(line.connection, deque())
        if not line.is_response:
            queue.append(len(pairs))
            pairs.append([line, None])
        elif queue:
            pairs[queue.popleft()][1] = line
        else:
            pairs.append([None, line])
    rows = []
    for request, response in pairs:
        first = request or response
        assert first is not None
        if since is not None and first.time < since:
            continue
        if until is not None and first.time > until:
            continue
        rows.append(_transaction(request, response))
    return rows
