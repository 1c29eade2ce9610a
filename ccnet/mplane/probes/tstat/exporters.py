"""The tstat proxy's indirect exporters: tstat data pushed to a repository.

* :class:`LogStreamer` (``tstat-exporter_streaming``): follows the newest
  ``<time>.out/<log.type>`` in a tstat log folder (and the next one when tstat rotates)
  and sends each line as ``<file> <line>\\n`` over TCP (the RI repository's streaming
  importer) or mutual TLS (``tls://host:port``); best effort, like the RI: there is no
  acknowledgement, but the file position waits while the repository is unreachable.
* :class:`RrdExporter` (``tstat-exporter_rrd``): every interval, the RRD samples newer
  than the last delivered ones are POSTed as JSON ``[[metric, time, value], ...]`` to
  ``https://<repository>/register/result/indirect_export`` (the RI repository's
  collector), with the daemon's TLS identity. A failed POST is retried next round with
  the same samples: nothing is skipped.
* :func:`run_log_exporter` (``tstat-exporter_log``): runs the bulk log exporter program
  (DBStream's ``math_probe`` in the RI) for the measurement and stops it at the end.

Where data may go is the operator's choice, not the client's: every repository address
must be listed in the probe's ``export-to``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger

from ccnet.backoff import Backoff
from ccnet.mplane.probes import ProbeError, ProbeRun, in_thread
from ccnet.reactors import IReactor

from . import rrd

__all__ = ["LogStreamer", "RepositoryAddress", "RrdExporter", "parse_repository", "run_log_exporter"]

log = Logger()

INDIRECT_EXPORT_PATH = "/register/result/indirect_export"


@dataclass(frozen=True)
class RepositoryAddress:
    host: str
    port: int
    tls: bool

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_repository(text: str, default_tls: bool) -> RepositoryAddress:
    """``host:port`` (the RI's form), ``tls://host:port``, ``tcp://host:port`` or
    ``https://host:port``; ``default_tls`` applies to the bare form."""
    raw = text.strip()
    scheme = ""
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
        raw = raw.split("/", 1)[0]
    parts = urlsplit(f"//{raw}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or scheme not in ("", "tls", "tcp", "https"):
        raise ProbeError(f"repository address {text!r}: expected host:port (or tls://host:port)")
    return RepositoryAddress(parts.hostname, port, default_tls if not scheme else scheme in ("tls", "https"))


def check_allowed(address: RepositoryAddress, allowed: tuple[str, ...]) -> None:
    """Refuse repositories the operator did not list in ``export-to``."""
    for entry in allowed:
        host, _, port = entry.rpartition(":")
        if host.strip("[]") == address.host and port in ("*", str(address.port)):
            return
    raise ProbeError(f"repository {address.netloc} is not in this probe's export-to list")


# ---------------------------------------------------------------------------
# Log streaming


class _LineSink(protocol.Protocol):
    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 (Twisted API)
        self.factory.lost(self)  # type: ignore[attr-defined]


class _SinkFactory(protocol.Factory):
    protocol = _LineSink

    def __init__(self, lost: Callable[[Any], None]) -> None:
        self.lost = lost


def newest_log(folder: Path, log_type: str) -> Path | None:
    """``<newest *.out folder>/<log_type>`` (tstat names them by start time), if it exists."""
    outs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith(".out"))
    for out in reversed(outs):
        if (out / log_type).is_file():
            return out / log_type
    return None


def _read_from(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < offset:  # truncated or replaced: start over
            offset = 0
        handle.seek(offset)
        return handle.read(limit), offset


@dataclass
class LogStreamer:
    """Streams one tstat log type to a repository until the measurement ends."""

    reactor: IReactor
    folder: Path
    log_type: str
    address: RepositoryAddress
    tls_options: Callable[[str], Any] | None = None
    poll: float = 1.0
    chunk: int = 1 << 20
    #: Reconnect back-off (``ccnet.backoff``): first step and upper bound, seconds.
    retry: float = 2.0
    retry_max: float = 30.0
    sent_lines: int = 0
    _sink: Any = field(default=None, repr=False)
    _path: Path | None = field(default=None, repr=False)
    _offset: int = field(default=0, repr=False)

    def _endpoint(self) -> Any:
        endpoint = HostnameEndpoint(self.reactor, self.address.host, self.address.port, timeout=10)
        if self.address.tls:
            if self.tls_options is None:
                raise ProbeError("tls:// repositories need the daemon's [tls] identity")
            return wrapClientTLS(self.tls_options(self.address.host), endpoint)  # type: ignore[arg-type]
        return endpoint

    def _lost(self, sink: Any) -> None:
        if self._sink is sink:
            self._sink = None

    async def _connect(self) -> None:
        try:
            self._sink = await self._endpoint().connect(_SinkFactory(self._lost))
            log.info("tstat streaming exporter: connected to {repo}", repo=self.address.netloc)
        except Exception as exc:  # noqa: BLE001 (any connect failure: retry later)
            log.warn("tstat streaming exporter: {repo} unreachable ({err}); retrying", repo=self.address.netloc,
                     err=exc)

    def _start_file(self, path: Path) -> bytes:
        """Start at the end of ``path`` (after its last complete line, so no fragment goes
        out); the header line goes first so the repository can read the columns."""
        self._path = path
        with open(path, "rb") as handle:
            head = handle.read(self.chunk)
            size = os.fstat(handle.fileno()).st_size
            tail_start = handle.seek(max(0, size - self.chunk))
            tail = handle.read(self.chunk)  # may be longer than size - tail_start: tstat writes on
        header = head.split(b"\n", 1)[0] + b"\n" if head.startswith(b"#") and b"\n" in head else b""
        self._offset = tail_start + (tail.rfind(b"\n") + 1 if b"\n" in tail else len(tail))
        return header

    def _send(self, raw_lines: list[bytes]) -> bool:
        """Hand lines to the connection; False when there is none (any more)."""
        if self._sink is None:
            return False
        name = str(self._path).encode()
        self._sink.transport.write(b"".join(name + b" " + line.rstrip(b"\r") + b"\n" for line in raw_lines))
        self.sent_lines += len(raw_lines)
        return True

    async def _deliver(self) -> bool:
        """Send the new complete lines of the current log; True when there were some."""
        assert self._path is not None
        path = self._path
        data, start = await in_thread(self.reactor, _read_from, path, self._offset, self.chunk)
        complete = data[: data.rfind(b"\n") + 1]
        if not complete or path != self._path:
            return False
        # The position moves only once the lines are handed to a live connection.
        if self._send(complete.split(b"\n")[:-1]):
            self._offset = start + len(complete)
        return True

    async def _step(self, pending_header: bytes) -> bytes:
        """One poll: deliver new complete lines; move to a newer log once this one is drained."""
        if self._sink is None:
            await self._connect()
            if self._sink is None:
                return pending_header
        if pending_header:
            if not self._send([pending_header.rstrip(b"\n")]):
                return pending_header
            pending_header = b""
        if await self._deliver() or self._sink is None:
            return pending_header
        newer = await in_thread(self.reactor, newest_log, self.folder, self.log_type)
        if newer is not None and newer != self._path:
            # tstat flushes the old log when it opens the new one: read it to its end first.
            if await self._deliver() or self._sink is None:
                return pending_header
            log.info("tstat streaming exporter: tstat rotated to {path}", path=str(newer))
            self._path, self._offset = newer, 0
        return pending_header

    async def run(self, interrupted: defer.Deferred[None]) -> int:
        first = await in_thread(self.reactor, newest_log, self.folder, self.log_type)
        if first is None:
            raise ProbeError(f"no {self.log_type} in a <time>.out folder of {self.folder}")
        header = await in_thread(self.reactor, self._start_file, first)
        sleeper = _Sleeper(self.reactor, interrupted)
        reconnect = Backoff(self.retry, self.retry_max)
        try:
            while not interrupted.called:
                header = await self._step(header)
                if interrupted.called:
                    break
                if self._sink is not None:
                    reconnect.reset()
                await sleeper.sleep(self.poll if self._sink is not None else reconnect.next_delay())
            if self._sink is not None:
                await self._step(header)  # what was logged up to the end of the window
        finally:
            if self._sink is not None:
                self._sink.transport.loseConnection()
        return self.sent_lines


def _also_fire(source: defer.Deferred[Any], target: defer.Deferred[None]) -> None:
    """Fire ``target`` (once) when ``source`` fires, leaving ``source``'s result alone."""
    def fire(result: Any) -> Any:
        if not target.called:
            target.callback(None)
        return result
    source.addBoth(fire)


class _Sleeper:
    """Waits between rounds that end early when the measurement is interrupted; one hook
    on ``interrupted`` for the whole run, however many rounds it has."""

    def __init__(self, reactor: IReactor, interrupted: defer.Deferred[None]) -> None:
        self.reactor = reactor
        self.interrupted = interrupted
        self._waiting: defer.Deferred[None] | None = None
        interrupted.addBoth(self._on_interrupt)

    def _on_interrupt(self, result: Any) -> Any:
        self._wake()
        return result

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        waiting: defer.Deferred[None] = defer.Deferred()
        if self.interrupted.called:
            waiting.callback(None)
            return waiting
        self._waiting = waiting
        call = self.reactor.callLater(seconds, self._wake)

        def stop_timer(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        waiting.addBoth(stop_timer)
        return waiting


# ---------------------------------------------------------------------------
# RRD export


@dataclass
class RrdExporter:
    """Delivers RRD samples to a repository round by round, each sample once."""

    reactor: IReactor
    rrdtool: str
    folder: Path
    post: Callable[[str, bytes], defer.Deferred[int]]  # (url, body) -> HTTP status
    address: RepositoryAddress
    interval: float = 300.0
    delivered: list[rrd.RrdSample] = field(default_factory=list)
    _since: float = 0.0
    # Per metric: the newest delivered sample (tstat updates its RRDs one by one, so a
    # metric may not have the newest step yet when another has).
    _after: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{self.address.netloc}{INDIRECT_EXPORT_PATH}"

    async def _fetch_new(self, now: float) -> list[rrd.RrdSample]:
        samples: list[rrd.RrdSample] = []
        paths = await in_thread(self.reactor, rrd.list_rrds, self.folder)
        for path in paths:
            after = self._after.get(rrd.metric_name(path), self._since)
            got = await rrd.fetch(self.reactor, self.rrdtool, path, after, now)
            samples.extend(s for s in got if s.time > after)
        return sorted(samples, key=lambda s: (s.time, s.metric))

    async def export_round(self) -> int:
        """One round: the new samples, POSTed; returns how many the repository accepted."""
        samples = await self._fetch_new(self.reactor.seconds())
        if not samples:
            return 0
        body = json.dumps([[s.metric, s.time, s.value] for s in samples]).encode()
        try:
            status = await self.post(self.url, body)
        except Exception as exc:  # noqa: BLE001 (network errors: same samples next round)
            log.warn("tstat RRD exporter: {url} failed ({err}); retrying next round", url=self.url, err=exc)
            return 0
        if status != 200:
            log.warn("tstat RRD exporter: {url} answered {status}; retrying next round", url=self.url, status=status)
            return 0
        for sample in samples:
            self._after[sample.metric] = max(sample.time, self._after.get(sample.metric, self._since))
        self.delivered.extend(samples)
        return len(samples)

    async def run(self, since: float, interrupted: defer.Deferred[None]) -> list[rrd.RrdSample]:
        self._since = since
        sleeper = _Sleeper(self.reactor, interrupted)
        while True:
            try:
                await self.export_round()
            except rrd.RrdError as exc:
                raise ProbeError(str(exc)) from None
            if interrupted.called:
                return self.delivered
            await sleeper.sleep(self.interval)


# ---------------------------------------------------------------------------
# Bulk log export (external program)


class _Exporter(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.stderr = b""

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.stderr = (self.stderr + data)[-4096:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802 (Twisted API)
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.ended.callback(code if code is not None else -(sig or 1))


async def run_log_exporter(reactor: IReactor, program: Path, config: Path | None, repository: str,
                           start_time: str, run: ProbeRun, grace: float = 3.0) -> int:
    """Run ``program --config CONFIG --repoUrl REPOSITORY --startTime START`` (the RI's
    math_probe call) in its own folder until it ends or the measurement does; returns
    its exit status (negative: the signal that stopped it at the end of the window).
    Only the program itself is signalled (SIGTERM, then SIGKILL after ``grace``)."""
    args = [str(program)]
    if config is not None:
        args += ["--config", str(config)]
    args += ["--repoUrl", repository, "--startTime", start_time]
    proto = _Exporter()
    try:
        process = reactor.spawnProcess(proto, str(program), args, env=dict(os.environ), path=str(program.parent))
    except OSError as exc:
        raise ProbeError(f"cannot start {program}: {exc}") from None
    log.info("tstat log exporter: started {program} (pid {pid}) for {repo}", program=str(program),
             pid=process.pid, repo=repository)
    stop: defer.Deferred[None] = defer.Deferred()
    _also_fire(run.interrupted, stop)
    _also_fire(proto.ended, stop)
    await stop
    if not proto.ended.called:
        _signal(process, signal.SIGTERM)
        killer = reactor.callLater(grace, _signal, process, signal.SIGKILL)
        code = await proto.ended
        if killer.active():
            killer.cancel()
        return int(code)
    code = await proto.ended
    if code != 0:
        tail = proto.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise ProbeError(f"{program.name} exited with status {code}" + (f": {' / '.join(tail)}" if tail else ""))
    return int(code)


def _signal(process: Any, sig: int) -> None:
    try:
        process.signalProcess(sig)
    except Exception:  # noqa: BLE001 (already gone)
        pass
