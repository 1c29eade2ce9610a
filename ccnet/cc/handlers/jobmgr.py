"""``handler = jobmgr``: run the daemons listed in ``daemons`` as child processes.

Each daemon section names ``module`` (``python -m MODULE <ini> <section>``;
the original ``cc.daemon.X`` maps to ``ccnet.cc.daemons.X``) or ``script``
(``SCRIPT <ini> <section>``).  Children get ``CCNET_CC_SOCKET`` (the bound
cc-socket) and ``CCNET_JOB_NAME`` in their environment; their output lines go
to ccnet's log.  A child that exits is restarted after
``watchdog-formula-a + watchdog-formula-b * (starts - 1)`` seconds (capped by
``watchdog-formula-cap``; the count resets once a child ran ``watchdog-reset``
seconds).  With ``keepalive-timeout`` a child that sent no ``job.keepalive``
for that long is killed and restarted.  ``job.config`` {job_name} is answered
with the daemon's config section (plus ``pidfile`` and the server's cms-*
keys), as the original did before 2012.  On shutdown children get SIGTERM,
then SIGKILL after ``stop-timeout`` seconds.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from ccnet.cc.handler import CCHandler, CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.payload import field_str
from ccnet.periodic import every

__all__ = ["JobMgrHandler", "JobMgrOptions", "JobSpec", "daemon_module", "restart_delay", "handler_class"]

log = Logger()

#: Keys of a daemon section that belong to jobmgr, not to the daemon.
JOB_KEYS = (
    "module", "script", "job_name", "pidfile", "watchdog-reset", "watchdog-formula-a",
    "watchdog-formula-b", "watchdog-formula-cap", "keepalive-timeout",
)


def daemon_module(name: str) -> str:
    """Original module paths map to ccnet's daemons (``cc.daemon.infosender``)."""
    if name.startswith("cc.daemon."):
        return "ccnet.cc.daemons." + name[len("cc.daemon."):]
    return name


def restart_delay(starts: int, a: float, b: float, cap: float | None) -> float:
    """The original watchdog formula ``a + b * (starts - 1)``, capped (pure)."""
    y = a + b * max(starts - 1, 0)
    if cap is not None and cap > 0:
        y = min(y, cap)
    return max(y, 0.0)


@dataclass(frozen=True)
class JobSpec:
    section: str
    job_name: str
    argv: tuple[str, ...]
    pidfile: Path | None
    watchdog_reset: float
    formula_a: float
    formula_b: float
    formula_cap: float | None
    keepalive_timeout: float
    #: The daemon's section as written (for job.config).
    config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class JobMgrOptions:
    jobs: tuple[JobSpec, ...]
    stop_timeout: float
    maint_period: float
    cc_extra: tuple[tuple[str, str], ...] = field(default=())


def _parse_job(ini: Any, name: str, cc: Any) -> JobSpec:
    from ccnet.config import IniFile

    sect = ini.section(name)
    module = sect.get_str("module", "")
    script = sect.get_str("script", "")
    if bool(module) == bool(script):
        raise sect.error("module", "exactly one of module = python.module or script = /path/to/program")
    if str(ini.path) == "<string>" or not isinstance(ini, IniFile):
        raise ini.error(name, None, "jobmgr daemons need the config in a file (children read it)")
    args = (str(ini.path), name)
    if module:
        module = daemon_module(module)
        argv: tuple[str, ...] = (sys.executable, "-m", module, *args)
    else:
        argv = (str(ini.resolve(script)), *args)
    job_name = sect.get_str("job_name", f"{cc.job_name}.{name}")
    pidfile = sect.get_path("pidfile", None)
    spec = JobSpec(
        section=name,
        job_name=job_name,
        argv=argv,
        pidfile=pidfile,
        watchdog_reset=sect.get_float("watchdog-reset", 3600.0, minimum=0),
        formula_a=sect.get_float("watchdog-formula-a", 0.0, minimum=0),
        formula_b=sect.get_float("watchdog-formula-b", 5.0, minimum=0),
        formula_cap=sect.get_float("watchdog-formula-cap", 0.0, minimum=0) or None,
        keepalive_timeout=sect.get_float("keepalive-timeout", 0.0, minimum=0),
    )
    # Validate the daemon's own keys now, so a typo stops ccnet rather than a child.
    parser = None
    if module:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise sect.error("module", f"an importable daemon module ({exc})", module) from None
        parser = getattr(mod, "parse_options", None)
    if parser is not None:
        parser(sect, ini)
    else:
        sect.remaining()
    sect.finish()
    config = tuple((k, sect.get_str(k)) for k in sect.keys() if k not in JOB_KEYS)
    return JobSpec(**{**spec.__dict__, "config": config})


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, job: JobState) -> None:
        self.job = job
        self._bufs: dict[int, bytes] = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802 (Twisted API)
        # One buffer per fd, so stdout and stderr lines never interleave mid-line.
        *lines, rest = (self._bufs.get(fd, b"") + data).split(b"\n")
        self._bufs[fd] = rest if len(rest) <= 65536 else b""
        for line in lines:
            log.info("[{job}] {line}", job=self.job.spec.job_name, line=line.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        self.job.ended(reason)


class JobState:
    """One managed daemon: its process, start count and restart timer."""

    def __init__(self, spec: JobSpec, mgr: JobMgrHandler) -> None:
        self.spec = spec
        self.mgr = mgr
        self.process: Any = None
        self.starts = 0
        self.start_time = 0.0
        self.last_keepalive = 0.0
        self.restart_call: Any = None
        self.stopping = False
        self._ended: list[defer.Deferred[None]] = []

    @property
    def pid(self) -> int | None:
        return getattr(self.process, "pid", None) if self.process is not None else None

    def start(self) -> None:
        self.restart_call = None
        if self.stopping:
            return
        clock = self.mgr.server.clock
        self.starts += 1
        self.start_time = self.last_keepalive = clock.seconds()
        env = dict(os.environ)
        env["CCNET_JOB_NAME"] = self.spec.job_name
        if self.mgr.server.endpoint:
            env["CCNET_CC_SOCKET"] = _connectable(self.mgr.server.endpoint)
        log.info("cc jobmgr: launching {job} (start {n}): {cmd}", job=self.spec.job_name, n=self.starts,
                 cmd=" ".join(self.spec.argv))
        try:
            self.process = self.mgr.server.reactor.spawnProcess(
                # In ccnet's own working directory, as the original's jobmgr started them:
                # original-CC daemons and tasks open relative paths of their ini from there.
                _ChildProtocol(self), self.spec.argv[0], list(self.spec.argv), env=env,
            )
        except OSError as exc:
            log.error("cc jobmgr: cannot launch {job}: {error}", job=self.spec.job_name, error=str(exc))
            self.process = None
            self._schedule_restart()
            return
        log.info("cc jobmgr: {job} running as pid {pid}", job=self.spec.job_name, pid=self.pid)

    def ended(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.process = None
        waiting, self._ended = self._ended, []
        for d in waiting:
            d.callback(None)
        if self.stopping:
            log.info("cc jobmgr: {job} stopped", job=self.spec.job_name)
            return
        log.warn("cc jobmgr: {job} exited (code {code}, signal {sig})", job=self.spec.job_name, code=code, sig=sig)
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        clock = self.mgr.server.clock
        if self.spec.watchdog_reset and clock.seconds() - self.start_time >= self.spec.watchdog_reset:
            self.starts = 1
        delay = restart_delay(self.starts, self.spec.formula_a, self.spec.formula_b, self.spec.formula_cap)
        log.info("cc jobmgr: restarting {job} in {delay:.1f} s", job=self.spec.job_name, delay=delay)
        self.restart_call = clock.callLater(delay, self.start)

    def keepalive(self) -> None:
        self.last_keepalive = self.mgr.server.clock.seconds()

    def check(self, now: float) -> None:
        t = self.spec.keepalive_timeout
        if t and self.process is not None and now - self.last_keepalive > t:
            log.warn("cc jobmgr: no keepalive from {job} for {secs:.0f} s, killing it", job=self.spec.job_name,
                     secs=now - self.last_keepalive)
            self.last_keepalive = now
            self.signal("KILL")

    def signal(self, name: str) -> None:
        if self.process is not None:
            try:
                self.process.signalProcess(name)
            except (error.ProcessExitedAlready, OSError):
                pass

    def stop(self, timeout: float) -> defer.Deferred[None]:
        self.stopping = True
        if self.restart_call is not None and self.restart_call.active():
            self.restart_call.cancel()
        self.restart_call = None
        if self.process is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._ended.append(d)
        self.signal("TERM")
        killer = self.mgr.server.reactor.callLater(timeout, self.signal, "KILL")
        d.addBoth(lambda r: (killer.cancel() if killer.active() else None, r)[1])
        return d


def _connectable(endpoint: str) -> str:
    return endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace("tcp://*:", "tcp://127.0.0.1:")


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class JobMgrHandler(CCHandler):
    handler_name = "jobmgr"
    cc_roles = frozenset({"local"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> JobMgrOptions:
        names = section.get_list("daemons", [])
        jobs = []
        for name in names:
            if not ini.has_section(name):
                raise section.error("daemons", f"daemon sections that exist; no section [{name}]", name)
            jobs.append(_parse_job(ini, name, cc))
        seen: set[str] = set()
        for j in jobs:
            if j.job_name in seen:
                raise section.error("daemons", f"distinct job names; {j.job_name} twice")
            seen.add(j.job_name)
        cms = cc.cms
        extra = [("cc-socket", cc.socket)]
        if cms.keystore is not None:
            extra.append(("cms-keystore", str(cms.keystore)))
        for key, value in (("cms-sign", cms.sign), ("cms-encrypt", cms.encrypt), ("cms-decrypt", cms.decrypt)):
            if value:
                extra.append((key, value))
        if cms.verify_ca:
            extra.append(("cms-verify-ca", ", ".join(cms.verify_ca)))
        return JobMgrOptions(
            jobs=tuple(jobs),
            stop_timeout=section.get_float("stop-timeout", 10.0, minimum=0.1),
            maint_period=section.get_float("maint-period", 2.0, minimum=0.1),
            cc_extra=tuple(extra),
        )

    def __init__(self, name: str, options: JobMgrOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.jobs = {j.job_name: JobState(j, self) for j in options.jobs}
        self._maint: task.LoopingCall | None = None

    def start(self) -> None:
        runtime = self.server.runtime
        for job in self.jobs.values():
            if runtime is not None:
                # /ready: a managed daemon counts while its process runs.
                runtime.register_part(f"cc-job:{job.spec.job_name}", lambda job=job: job.process is not None)
            job.start()
        self._maint = every(self.server.clock, self.options.maint_period, f"cc-{self.name}-maintenance",
                            self.maintenance, now=False,
                            failures=runtime.job_failures if runtime is not None else None)

    def maintenance(self) -> None:
        now = self.server.clock.seconds()
        for job in self.jobs.values():
            job.check(now)

    def stop(self) -> defer.Deferred[Any]:
        if self._maint is not None and self._maint.running:
            self._maint.stop()
        log.info("cc jobmgr: stopping {n} daemons", n=len(self.jobs))
        return defer.gatherResults([j.stop(self.options.stop_timeout) for j in self.jobs.values()])

    def job(self, name: str) -> JobState | None:
        hit = self.jobs.get(name)
        if hit is None:
            for j in self.jobs.values():
                if j.spec.section == name:
                    return j
        return hit

    def handle(self, request: CCRequest) -> None:
        p = request.payload or {}
        if request.type == "job.config":
            name = field_str(p, "job_name", max_len=256)
            job = self.job(name)
            if job is None:
                raise HandlerError(f"job.config: unknown job_name {name!r}")
            config = dict(self.options.cc_extra)
            config.update(job.spec.config)
            config["job_name"] = job.spec.job_name
            if job.spec.pidfile is not None:
                config["pidfile"] = str(job.spec.pidfile)
            self.server.reply(request, "job.config", {"job_name": job.spec.job_name, "config": config})
        elif request.type == "job.keepalive":
            name = field_str(p, "job_name", max_len=256)
            job = self.job(name)
            if job is None:
                raise HandlerError(f"job.keepalive: unknown job_name {name!r}")
            job.keepalive()
        else:
            raise HandlerError(f"jobmgr answers job.config and job.keepalive, not {request.type}")


handler_class = JobMgrHandler
