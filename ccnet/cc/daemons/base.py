"""The CCJob base: a daemon that talks to a CC server over one DEALER socket.

A daemon reads the ``[cc]``/``[ccserver]`` section of its ini for
``cc-socket`` and the cms-* keys (its own section may override both, as the
original's daemons inherit the server's crypto config), and its own section
for the rest.  Under ``jobmgr`` the environment gives the bound cc-socket
(``CCNET_CC_SOCKET``) and the job name (``CCNET_JOB_NAME``), and the daemon
sends ``job.keepalive`` every ``keepalive-period`` seconds.

:meth:`CCJob.query` is the original ``CCReqStream``: the request carries a
query id route frame (``Q000001``) and is resent identically until a reply
with that id arrives; :meth:`CCJob.send` publishes fire-and-forget.  While the
server is unreachable, messages wait in a bounded queue.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogPublisher

from ccnet import periodic
from ccnet.cc.config import (
    CMSOptions,
    ZmqOptions,
    _parse_cms,
    zmq_endpoint,
)
from ccnet.cc.crypto import CMSCodec, CryptoError
from ccnet.cc.message import ACK_FIELD, BodyError, CCMessage, Invalid, make_body, parse
from ccnet.cc.transport import ZmqSocket, dealer, make_factory
from ccnet.config import ConfigError, IniFile, SectionReader
from ccnet.reactors import IReactor, default_reactor

__all__ = [
    "JobConfig",
    "CCJob",
    "CCErrorReply",
    "common_keys",
    "load_job",
    "run_daemon",
]

log = Logger()

#: Keys of a daemon section read by jobmgr (accepted and ignored by the daemon).
JOBMGR_KEYS = (
    "module", "script", "pidfile", "watchdog-reset", "watchdog-formula-a",
    "watchdog-formula-b", "watchdog-formula-cap", "keepalive-timeout",
)
CMS_KEYS = ("cms-keystore", "cms-sign", "cms-verify-ca", "cms-encrypt", "cms-decrypt", "cms-time-window")
#: cc-log-level values → (twisted LogLevel name, original level name); "none" = off.
LOG_LEVELS = {
    "none": None, "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR", "critical": "CRITICAL",
}
#: Outgoing queue bound while the server is unreachable (oldest dropped).
QUEUE_MAX = 1000
RETRY_PERIOD = 0.2


class CCErrorReply(Exception):
    """The server answered a query with an ``error`` message."""


@dataclass(frozen=True)
class JobConfig:
    ini_path: Path
    section: str
    job_name: str
    cc_socket: str
    hostname: str
    cms: CMSOptions
    keepalive_period: float
    managed: bool
    cc_log_level: str = "warn"


def common_keys(section: SectionReader) -> dict[str, Any]:
    """Read the keys every daemon section may have (cc-socket, job_name,
    keepalive-period, cms-* overrides, jobmgr's keys); every daemon's
    ``parse_options`` calls it so unknown-key checks pass."""
    out: dict[str, Any] = {
        "cc-socket": zmq_endpoint(section, "cc-socket", None),
        "job_name": section.get_str("job_name", "") or None,
        "keepalive-period": section.get_float("keepalive-period", 30.0, minimum=0.1),
        "cc-log-level": section.get_choice("cc-log-level", list(LOG_LEVELS), "warn"),
    }
    for k in (*JOBMGR_KEYS, *CMS_KEYS):
        if section.has(k):
            section.get_str(k)
    return out


def _cms_overrides(cc: SectionReader | None, own: SectionReader, ini: IniFile) -> CMSOptions:
    values: dict[str, str] = {}
    if cc is not None:
        for k in CMS_KEYS:
            if cc.has(k):
                values[k] = cc.get_str(k)
    for k in CMS_KEYS:
        if own.has(k):
            values[k] = own.get_str(k)
    merged = SectionReader(ini, own.name, values)
    return _parse_cms(merged, ini)


def load_job(
    ini_path: str | Path,
    section: str,
    parse_options: Callable[[SectionReader, IniFile], Any],
    env: Mapping[str, str] | None = None,
) -> tuple[JobConfig, Any]:
    """Read the daemon's config; ConfigError names file/section/key on mistakes."""
    env = os.environ if env is None else env
    ini = IniFile.load(ini_path)
    if not ini.has_section(section):
        raise ConfigError(ini.path, section, None, "missing section")
    cc_name = next((s for s in ("cc", "ccserver") if ini.has_section(s)), None)
    cc = ini.section(cc_name) if cc_name else None
    own = ini.section(section)
    options = parse_options(own, ini)
    cms = _cms_overrides(cc, own, ini)
    common = common_keys(own)
    own.finish()
    sock = env.get("CCNET_CC_SOCKET") or common["cc-socket"]
    if not sock and cc is not None:
        sock = zmq_endpoint(cc, "cc-socket", "tcp://127.0.0.1:10000")
    sock = (sock or "tcp://127.0.0.1:10000").replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace(
        "tcp://*:", "tcp://127.0.0.1:"
    )
    if sock.endswith(":*"):
        raise ConfigError(ini.path, section, "cc-socket", "a fixed port to connect to (the server's is '*')")
    cc_job = cc.get_str("job_name", ini.path.stem) if cc is not None else ini.path.stem
    job_name = env.get("CCNET_JOB_NAME") or common["job_name"] or f"{cc_job}.{section}"
    hostname = socket.gethostname()
    if ini.has_section("ccnet"):
        raw = ini.section("ccnet")
        if raw.has("hostname"):
            hostname = raw.get_str("hostname")
    cfg = JobConfig(
        ini_path=ini.path,
        section=section,
        job_name=job_name,
        cc_socket=sock,
        hostname=hostname,
        cms=cms,
        keepalive_period=common["keepalive-period"],
        managed=bool(env.get("CCNET_JOB_NAME")),
        cc_log_level=common["cc-log-level"],
    )
    return cfg, options


class CCJob:
    """Base class of the daemons; subclasses override :meth:`startJob`,
    :meth:`stopJob` and :meth:`messageReceived`."""

    def __init__(self, config: JobConfig, options: Any, reactor: IReactor, clock: IReactorTime | None = None) -> None:
        self.config = config
        self.options = options
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.codec = CMSCodec.from_options(config.cms)
        self.zmq_factory: Any = None
        self.sock: ZmqSocket | None = None
        self.queue: deque[list[bytes]] = deque()
        self.dropped = 0
        self._retry: Any = None
        self._qid = 0
        self._pending: dict[bytes, tuple[defer.Deferred[Any], list[bytes], Any]] = {}
        self._loops: list[task.LoopingCall] = []
        self._in_log = False
        self._observing = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.zmq_factory = make_factory(self.reactor, ZmqOptions())
        self.sock = dealer(self.zmq_factory, ZmqOptions(hwm=1000), self._frames)
        self.sock.connect(self.config.cc_socket)
        log.info("{job} connected to {sock}", job=self.config.job_name, sock=self.config.cc_socket)
        if self.config.managed:
            self.every(self.config.keepalive_period, self._keepalive, now=True)
        if LOG_LEVELS.get(self.config.cc_log_level):
            self._observing = True
            globalLogPublisher.addObserver(cast(ILogObserver, self._forward_log))
        self.startJob()

    def stop(self) -> Any:
        if self._observing:
            self._observing = False
            globalLogPublisher.removeObserver(cast(ILogObserver, self._forward_log))
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for _d, _, timer in list(self._pending.values()):
            if timer is not None and timer.active():
                timer.cancel()
        pending, self._pending = self._pending, {}
        d = defer.maybeDeferred(self.stopJob)

        def close(result: Any) -> Any:
            for qd, _, _ in pending.values():
                if not qd.called:
                    qd.cancel()
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            if self.sock is not None and self.sock.factory is not None:
                self.sock.shutdown()
            self.sock = None
            if self.zmq_factory is not None:
                self.zmq_factory.shutdown()
                self.zmq_factory = None
            return result

        return d.addBoth(close)

    def every(self, period: float, fn: Callable[[], Any], now: bool = True) -> task.LoopingCall:
        # A failing round must not stop the loop (ccnet.periodic logs it and runs the next).
        job = getattr(fn, "__qualname__", None) or type(self).__name__
        loop = periodic.every(self.clock, period, job, fn, now=now)
        self._loops.append(loop)
        return loop

    def startJob(self) -> None:  # noqa: N802 (Twisted naming)
        """Subclass hook: set up timers."""

    def stopJob(self) -> Any:  # noqa: N802
        """Subclass hook; may return a Deferred."""

    def messageReceived(self, msg: CCMessage, payload: dict[str, Any]) -> None:  # noqa: N802
        """Subclass hook for messages that are not replies to our queries."""
        log.info("{job}: unexpected {type}", job=self.config.job_name, type=msg.type)

    # -- sending ------------------------------------------------------------------

    def build(self, route: Sequence[bytes], req: str, fields: Mapping[str, Any], blob: bytes | None = None) -> list[bytes]:
        body = make_body(req, fields, self.config.hostname, float(self.clock.seconds()))
        # ccnet's daemons read everything the server sends back: acks and error replies.
        body[ACK_FIELD] = True
        return self.codec.encode(tuple(route), body, blob).frames()

    def send(self, req: str, fields: Mapping[str, Any], blob: bytes | None = None) -> None:
        """Publish (no reply expected)."""
        self.send_frames(self.build((), req, fields, blob))

    def send_frames(self, frames: list[bytes]) -> None:
        if not self.queue and self.sock is not None and self.sock.try_send(frames):
            return
        if len(self.queue) >= QUEUE_MAX:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(frames)
        if self._retry is None or not self._retry.active():
            self._retry = self.clock.callLater(RETRY_PERIOD, self._flush)

    def _flush(self) -> None:
        while self.queue and self.sock is not None:
            if not self.sock.try_send(self.queue[0]):
                self._retry = self.clock.callLater(RETRY_PERIOD, self._flush)
                return
            self.queue.popleft()

    def query(
        self, req: str, fields: Mapping[str, Any], blob: bytes | None = None,
        timeout: float = 10.0, retries: int | None = 3,
    ) -> defer.Deferred[tuple[CCMessage, dict[str, Any]]]:
        """Send with a query id; fire with (reply message, payload).  Resent
        identically every ``timeout`` s; ``retries`` None = until answered.
        An ``error`` reply fails with :class:`CCErrorReply`."""
        self._qid += 1
        qid = b"Q%06d" % self._qid
        frames = self.build((qid,), req, fields, blob)
        d: defer.Deferred[tuple[CCMessage, dict[str, Any]]] = defer.Deferred(lambda _: self._forget(qid))
        left = [retries]

        def resend() -> None:
            if qid not in self._pending:
                return
            if left[0] is not None:
                if left[0] <= 0:
                    self._forget(qid)
                    d.errback(defer.TimeoutError(f"no reply to {req} after {retries} retries"))
                    return
                left[0] -= 1
            log.debug("{job}: resending {req} {qid}", job=self.config.job_name, req=req, qid=qid.decode())
            self._pending[qid] = (d, frames, self.clock.callLater(timeout, resend))
            self.send_frames(frames)

        self._pending[qid] = (d, frames, self.clock.callLater(timeout, resend))
        self.send_frames(frames)
        return d

    def _forget(self, qid: bytes) -> None:
        hit = self._pending.pop(qid, None)
        if hit is not None and hit[2] is not None and hit[2].active():
            hit[2].cancel()

    # -- receiving ------------------------------------------------------------------

    def _frames(self, frames: list[bytes]) -> None:
        msg = parse(frames)
        if isinstance(msg, Invalid):
            log.warn("{job}: invalid message from server: {reason}", job=self.config.job_name, reason=msg.reason)
            return
        try:
            payload, _ = self.codec.decode(msg, float(self.clock.seconds()))
        except (CryptoError, BodyError) as exc:
            log.warn("{job}: rejected {type}: {reason}", job=self.config.job_name, type=msg.type, reason=str(exc))
            return
        if len(msg.route) == 1 and msg.route[0] in self._pending:
            d, _, timer = self._pending.pop(msg.route[0])
            if timer is not None and timer.active():
                timer.cancel()
            if msg.type == "error" or msg.type.startswith("error."):
                d.errback(CCErrorReply(str(payload.get("msg", "error"))))
            else:
                d.callback((msg, payload))
            return
        if msg.type == "error" or msg.type.startswith("error."):
            log.warn("{job}: server says: {msg}", job=self.config.job_name, msg=payload.get("msg"))
            return
        self.messageReceived(msg, payload)

    def _forward_log(self, event: dict[str, Any]) -> None:
        """Send this daemon's own log records at cc-log-level or above as
        ``log.<level>`` messages, as the original daemons did."""
        level = event.get("log_level")
        ns = str(event.get("log_namespace", ""))
        if level is None or self._in_log or not ns.startswith("ccnet.cc.daemons"):
            return
        threshold = LogLevel.levelWithName(self.config.cc_log_level)
        if level < threshold:
            return
        name = LOG_LEVELS.get(level.name) or level.name.upper()
        self._in_log = True
        try:
            self.send(f"log.{name.lower()}", {
                "log_level": name,
                "service_type": self.config.section,
                "job_name": self.config.job_name,
                "log_msg": formatEvent(event),
                "log_time": event.get("log_time", 0.0),
                "log_pid": os.getpid(),
                "log_line": 0,
                "log_function": ns,
            })
        finally:
            self._in_log = False

    def _keepalive(self) -> None:
        self.send("job.keepalive", {"job_name": self.config.job_name, "pid": os.getpid()})


def run_daemon(
    job_class: type[CCJob],
    parse_options: Callable[[SectionReader, IniFile], Any],
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m ccnet.cc.daemons.X <ini> <section> [-v] [-q] [-d]``."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    p = argparse.ArgumentParser(prog=f"python -m {job_class.__module__}")
    p.add_argument("ini", help="ccnet/ccserver ini file")
    p.add_argument("section", help="this daemon's section")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    # -d (daemonize) is what the original jobmgr passes; ccnet daemons stay in the foreground.
    p.add_argument("-d", "--daemon", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        cfg, options = load_job(args.ini, args.section, parse_options)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    level = LogLevel.debug if args.verbose else (LogLevel.warn if args.quiet else LogLevel.info)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer: Any = FilteringLogObserver(cast(ILogObserver, textFileLogObserver(sys.stdout)), [cast(Any, predicate)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    reactor = default_reactor()
    job = job_class(cfg, options, reactor)
    reactor.callWhenRunning(job.start)
    reactor.addSystemEventTrigger("before", "shutdown", job.stop)
    reactor.run()
    return 0
