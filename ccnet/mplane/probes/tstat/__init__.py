"""The tstat proxy: tstat's logs, RRDs and exporters as mPlane capabilities (the RI's tstat-proxy).

Capabilities (RI labels, parameters and result columns):

* ``tstat-log_tcp_complete-core`` (one row per TCP flow), ``-end_to_end`` (RTT/TTL),
  ``-tcp_options``, ``-p2p_stats`` and ``-layer7``: tstat's ``log_tcp_complete`` sets;
* ``tstat-log_http_complete``: one row per HTTP transaction of ``log_http_complete``;
* ``tstat-log_rrds`` (with ``rrd-dir``): tstat's RRD metrics over the window, per RI group;
* ``tstat-exporter_streaming``, ``tstat-exporter_rrd`` and (with ``log-exporter``)
  ``tstat-exporter_log``: tstat data pushed to a repository listed in ``export-to``.

A log or RRD specification runs for its temporal scope. With tstat running (*live*), the
RI's ``runtime.conf`` semantics apply: the set's flag is switched on at the start (the
core TCP set too, which every other TCP set needs) and the optional flag off again at
the end; the result holds what tstat logged in between. Without tstat (*replay*), the
result holds what is already in ``log-dir`` / ``rrd-dir`` — by default the small recorded
sample shipped with ccnet — so demos and tests get real parsed values::

    [probe:tstat]
    module = ccnet.mplane.probes.tstat
    # live | replay | auto (live when a tstat process runs)
    mode = auto
    runtime-conf = /etc/tstat/runtime.conf
    log-dir = /var/lib/tstat/logs
    rrd-dir = /var/lib/tstat/rrd
    export-to = repository.example.net:9000, repository.example.net:9001
    max-rows = 1000
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ccnet.mplane.model import TSTAT_REGISTRY_URI, Statement, When
from ccnet.mplane.probes import (
    IProbe,
    IProbeFactory,
    IUsesTLS,
    ProbeError,
    ProbeRun,
    in_thread,
    make_result,
)
from ccnet.mplane.probes.tstat import exporters, rrd
from ccnet.mplane.probes.tstat.logs import (
    HTTP_COLUMNS,
    HTTP_FLAGS,
    TCP_SETS,
    find_logs,
    http_rows,
    parse_http_log,
    parse_log,
    rows_for,
    set_runtime_flags,
)
from ccnet.reactors import IReactor

__all__ = ["LOG_LABELS", "TCP_SETS", "TstatOptions", "TstatProbe", "capabilities", "find_logs", "parse_log",
           "probe_factory", "rows_for", "sample_dir", "set_runtime_flags"]

log = Logger()

METADATA = {"System_type": "tStat", "System_ID": "tStat-Proxy", "System_version": "0.1"}

HTTP_LABEL = "tstat-log_http_complete"
RRDS_LABEL = "tstat-log_rrds"
STREAMING_LABEL = "tstat-exporter_streaming"
RRD_EXPORT_LABEL = "tstat-exporter_rrd"
LOG_EXPORT_LABEL = "tstat-exporter_log"
RRD_FLAGS = ("rrd_engine",)
RRD_EXPORT_COLUMNS = ["rrdtimestamp", "rrdMetirc", "rrdValue"]  # sic: the RI registry's spelling

# Labels whose measurement switches runtime.conf flags: label -> flags (first: kept on).
LOG_LABELS: dict[str, tuple[str, ...]] = {label: flags for label, (flags, _) in TCP_SETS.items()}
LOG_LABELS[HTTP_LABEL] = HTTP_FLAGS
LOG_LABELS[RRDS_LABEL] = RRD_FLAGS


def sample_dir() -> Path:
    return Path(str(resources.files("ccnet.mplane.probes.tstat").joinpath("sample")))


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
    rrd_dir: Path | None = None
    rrdtool: str = "rrdtool"
    export_to: tuple[str, ...] = ()
    log_exporter: Path | None = None
    log_exporter_config: Path | None = None
    rrd_export_interval: float = 300.0


def _cap(label: str, when: str, results: list[str], parameters: dict[str, str] | None = None) -> Statement:
    # Named with the registry whose elements they use (tstat's, which includes the core):
    # a supervisor that knows only the core refuses them instead of choking on them.
    return Statement("capability", label=label, when=When.parse(when), registry=TSTAT_REGISTRY_URI,
                     metadata=dict(METADATA),
                     parameters=dict(parameters or {}), results=list(results))


def capabilities(options: TstatOptions | None = None) -> list[Statement]:
    """What this tstat proxy offers: the log sets always; RRDs with ``rrd-dir``; exporters
    with ``export-to`` (and what they export)."""
    options = options or TstatOptions()
    caps = [_cap(label, "now ... future", [e for e, _ in cols]) for label, (_, cols) in TCP_SETS.items()]
    caps.append(_cap(HTTP_LABEL, "now ... future", HTTP_COLUMNS))
    if options.rrd_dir is not None:
        caps.append(_cap(RRDS_LABEL, "now ... future", rrd.GROUPS))
    if options.export_to:
        caps.append(_cap(STREAMING_LABEL, "now ... future", [],
                         {"repo.url": "*", "log.folder": "*", "log.type": "*", "log.time": "*"}))
        if options.rrd_dir is not None:
            caps.append(_cap(RRD_EXPORT_LABEL, "past ... future", RRD_EXPORT_COLUMNS, {"repository.url": "*"}))
        if options.log_exporter is not None:
            caps.append(_cap(LOG_EXPORT_LABEL, "past ... future", [], {"repository.url": "*"}))
    return caps


@implementer(IProbeFactory)
class _Factory:
    def configure(self, section: Any) -> TstatOptions:
        mode = section.get_choice("mode", ["auto", "live", "replay"], "auto")
        runtime_conf = section.get_path("runtime-conf", None)
        log_dir = section.get_path("log-dir", None)
        rrd_dir = section.get_path("rrd-dir", None)
        if mode == "live" and (runtime_conf is None or log_dir is None):
            raise section.error("runtime-conf" if runtime_conf is None else "log-dir",
                                "runtime-conf and log-dir for mode = live")
        for key, folder in (("log-dir", log_dir), ("rrd-dir", rrd_dir)):
            if folder is not None and not folder.is_dir():
                raise section.error(key, "an existing folder", str(folder))
        rrdtool = section.get_str("rrdtool", "rrdtool")
        if rrd_dir is not None:
            found = shutil.which(rrdtool)
            if found is None:
                raise section.error("rrdtool", "the rrdtool command (Debian package rrdtool) for rrd-dir", rrdtool)
            rrdtool = found
        export_to = tuple(section.get_list("export-to", []))
        for entry in export_to:
            host, _, port = entry.rpartition(":")
            if not host or not (port == "*" or port.isdigit()):
                raise section.error("export-to", "host:port entries (port may be *)", entry)
        log_exporter = section.get_path("log-exporter", None)
        if log_exporter is not None and not (log_exporter.is_file() and os.access(log_exporter, os.X_OK)):
            raise section.error("log-exporter", "an executable file (the RI's math_probe)", str(log_exporter))
        return TstatOptions(mode, runtime_conf, log_dir, section.get_int("max-rows", 1000, minimum=1),
                            rrd_dir, rrdtool, export_to, log_exporter,
                            section.get_readable_file("log-exporter-config", None),
                            section.get_float("rrd-export-interval", 300.0, minimum=1))

    def build(self, reactor: IReactor, name: str, options: TstatOptions) -> TstatProbe:
        return TstatProbe(reactor, name, options)


probe_factory = _Factory()


@implementer(IProbe, IUsesTLS)
class TstatProbe:
    def __init__(self, reactor: IReactor, name: str, options: TstatOptions) -> None:
        self.reactor = reactor
        self.name = name
        self.options = options
        self.tls: Any = None
        # runtime.conf flag -> measurements now using it: a flag goes off with the last one.
        self._flag_users: dict[str, int] = {}
        # runtime.conf edits happen one at a time, in the order they were decided.
        self._conf_lock = defer.DeferredLock()

    def use_tls(self, material: Any) -> None:
        self.tls = material

    def capabilities(self) -> list[Statement]:
        return capabilities(self.options)

    def run(self, spec: Statement, capability: Statement, run: ProbeRun) -> defer.Deferred[Any]:
        label = str(spec.label)
        if label in LOG_LABELS:
            return defer.ensureDeferred(self._measure(spec, run))
        if label == STREAMING_LABEL:
            return defer.ensureDeferred(self._stream(spec, run))
        if label == RRD_EXPORT_LABEL:
            return defer.ensureDeferred(self._export_rrd(spec, run))
        if label == LOG_EXPORT_LABEL:
            return defer.ensureDeferred(self._export_logs(spec, run))
        return defer.fail(ProbeError(f"unknown tstat capability {label}"))

    # -- log and RRD measurements ----------------------------------------------

    async def _live(self) -> bool:
        if self.options.mode != "auto":
            return self.options.mode == "live"
        if self.options.runtime_conf is None or self.options.log_dir is None:
            return False
        return bool(await in_thread(self.reactor, tstat_running))

    def _switch(self, flags: tuple[str, ...], on: bool) -> None:
        """Blocking: rewrite runtime.conf with ``flags`` on/off, atomically (tstat re-reads
        the file when it changes and must never see half of it)."""
        path = self.options.runtime_conf
        assert path is not None
        tmp = path.with_name(path.name + ".ccnet-new")
        tmp.write_text(set_runtime_flags(path.read_text(), flags, on))
        os.replace(tmp, path)

    def _set_flags(self, flags: tuple[str, ...], on: bool) -> defer.Deferred[Any]:
        return self._conf_lock.run(in_thread, self.reactor, self._switch, flags, on)

    def _claim_flags(self, flags: tuple[str, ...]) -> None:
        for flag in flags:
            self._flag_users[flag] = self._flag_users.get(flag, 0) + 1

    def _release_flags(self, flags: tuple[str, ...]) -> tuple[str, ...]:
        """The flags no other running measurement uses any more."""
        idle = []
        for flag in flags:
            self._flag_users[flag] -= 1
            if self._flag_users[flag] <= 0:
                del self._flag_users[flag]
                idle.append(flag)
        return tuple(idle)

    def _collect_tcp(self, label: str, since: float | None, until: float | None) -> list[list[Any]]:
        folder = self.options.log_dir or sample_dir()
        flows: list[dict[str, str]] = []
        for path in find_logs(folder):
            flows.extend(parse_log(path.read_text("utf-8", "replace")))
        if not flows:
            raise ProbeError(f"no tstat flows in {folder}")
        window = (since * 1000, until * 1000) if since is not None and until is not None else (None, None)
        return rows_for(label, flows, *window)

    def _collect_http(self, since: float | None, until: float | None) -> list[list[Any]]:
        folder = self.options.log_dir or sample_dir()
        lines = []
        for path in find_logs(folder, "log_http_complete"):
            lines.extend(parse_http_log(path.read_text("utf-8", "replace")))
        if not lines and since is None:
            raise ProbeError(f"no tstat HTTP log (log_http_complete) in {folder}")
        return http_rows(lines, since, until)

    async def _collect_rrds(self, since: float | None, until: float | None) -> list[list[Any]]:
        folder = self.options.rrd_dir
        assert folder is not None
        paths = await in_thread(self.reactor, rrd.list_rrds, folder)
        if not paths:
            raise ProbeError(f"no tstat RRD files in {folder}")
        samples: list[rrd.RrdSample] = []
        try:
            for path in paths:
                if since is None or until is None:  # replay: the last hour each file holds
                    last = await rrd.last_update(self.reactor, self.options.rrdtool, path)
                    window = (last - 3600, last)
                else:
                    window = (since, until)
                samples.extend(await rrd.fetch(self.reactor, self.options.rrdtool, path, *window))
        except rrd.RrdError as exc:
            raise ProbeError(str(exc)) from None
        return [rrd.summarize(samples)]

    async def _measure(self, spec: Statement, run: ProbeRun) -> Statement:
        label = str(spec.label)
        flags = LOG_LABELS[label]
        live = await self._live()
        start = run.now()
        # The RI keeps the core TCP set on once switched on; optional TCP sets, the HTTP log
        # and the RRD engine go off again when no running measurement needs them.
        optional = flags[1:] if len(flags) > 1 else (flags if label in (HTTP_LABEL, RRDS_LABEL) else ())
        if live:
            self._claim_flags(optional)
        try:
            if live:
                await self._set_flags(flags, True)
            if run.end is None or run.end > start:
                await run.interrupted
        finally:
            if live:
                idle = self._release_flags(optional)
                if idle:
                    await self._set_flags(idle, False)
        end = run.now()
        since, until = (start.timestamp(), end.timestamp()) if live else (None, None)
        if label == HTTP_LABEL:
            rows = await in_thread(self.reactor, self._collect_http, since, until)
        elif label == RRDS_LABEL:
            rows = await self._collect_rrds(since, until)
        else:
            rows = await in_thread(self.reactor, self._collect_tcp, label, since, until)
        rows = rows[: self.options.max_rows]
        log.info("tstat probe: {label} {n} rows ({mode})", label=label, n=len(rows), mode="live" if live else "replay")
        return make_result(spec, rows, start, end)

    # -- exporters -------------------------------------------------------------

    def _repository(self, spec: Statement, key: str, default_tls: bool) -> exporters.RepositoryAddress:
        address = exporters.parse_repository(str(spec.parameters.get(key, "")), default_tls)
        exporters.check_allowed(address, self.options.export_to)
        return address

    def _client_options(self, host: str) -> Any:
        if self.tls is None:
            raise ProbeError("exporting over TLS needs the daemon's [tls] identity")
        return self.tls.client_options(host)

    async def _stream(self, spec: Statement, run: ProbeRun) -> Statement:
        address = self._repository(spec, "repo.url", default_tls=False)
        log_type = str(spec.parameters.get("log.type", ""))
        if not log_type or "/" in log_type or log_type.startswith("."):
            raise ProbeError(f"log.type {log_type!r}: a tstat log name such as log_tcp_complete")
        base = (self.options.log_dir or sample_dir()).resolve()
        folder = Path(str(spec.parameters.get("log.folder", ""))).resolve()
        if folder != base and base not in folder.parents:
            raise ProbeError(f"log.folder {folder} is outside this probe's log-dir {base}")
        if not folder.is_dir():
            raise ProbeError(f"log.folder {folder} is not a folder")
        if address.tls and self.tls is None:
            raise ProbeError("exporting over TLS needs the daemon's [tls] identity")
        start = run.now()
        streamer = exporters.LogStreamer(self.reactor, folder, log_type, address,
                                         self._client_options if address.tls else None)
        sent = await streamer.run(run.interrupted)
        log.info("tstat streaming exporter: {n} lines of {type} sent to {repo}", n=sent, type=log_type,
                 repo=address.netloc)
        return make_result(spec, [], start, run.now())

    def _post(self, url: str, body: bytes) -> defer.Deferred[int]:
        import treq
        from twisted.web.client import HTTPConnectionPool

        from ccnet.edge.client import https_agent

        assert self.tls is not None
        headers: dict[bytes | str, list[bytes | str]] = {b"Content-Type": [b"application/json"]}
        # One request per round, minutes apart: no connection is kept open between them.
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        # No redirects: the repository must not send our data to a host outside export-to.
        d = treq.post(url, data=body, headers=headers, allow_redirects=False,
                      agent=https_agent(self.reactor, self.tls, pool), timeout=30)

        def status(response: Any) -> Any:
            return treq.content(response).addCallback(lambda _: response.code)
        return d.addCallback(status)

    async def _export_rrd(self, spec: Statement, run: ProbeRun) -> Statement:
        address = self._repository(spec, "repository.url", default_tls=True)
        assert self.options.rrd_dir is not None
        if self.tls is None:
            raise ProbeError("the RRD exporter needs the daemon's [tls] identity")
        start = run.now()
        begin, _ = spec.when.datetimes(start) if spec.when is not None else (start, None)
        exporter = exporters.RrdExporter(self.reactor, self.options.rrdtool, self.options.rrd_dir, self._post,
                                         address, self.options.rrd_export_interval)
        delivered = await exporter.run((begin or start).timestamp(), run.interrupted)
        rows = [[s.time, s.metric, s.value] for s in delivered][-self.options.max_rows:]
        return make_result(spec, rows, start, run.now())

    async def _export_logs(self, spec: Statement, run: ProbeRun) -> Statement:
        address = self._repository(spec, "repository.url", default_tls=False)
        assert self.options.log_exporter is not None
        start = run.now()
        begin, _ = spec.when.datetimes(start) if spec.when is not None else (start, None)
        stamp = (begin or start).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        await exporters.run_log_exporter(self.reactor, self.options.log_exporter, self.options.log_exporter_config,
                                         address.netloc, stamp, run)
        return make_result(spec, [], start, run.now())
