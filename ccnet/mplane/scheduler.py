"""Runs specifications on probes at the times their temporal scope says.

A :class:`Job` is one accepted specification. ``now + 5s / 1s`` starts at once and is
interrupted 5 s later; ``2026-12-01 10:00:00 ... 2026-12-01 11:00:00`` waits for its
start; ``now ... future`` runs until interrupted; ``repeat now + 1h / 10m { now + 5s / 1s }``
runs a sub-measurement every 10 minutes for an hour and answers with an envelope of
their results (the SDK's MultiJob), updated after each one. Time comes from the
reactor (``IReactorTime``), so tests drive it with ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ccnet.mplane.model import Envelope, ExceptionMessage, Message, Statement, When
from ccnet.mplane.probes import IProbe, ProbeError, ProbeRun
from ccnet.reactors import IReactor

__all__ = ["Job", "Scheduler", "SCHEDULED", "RUNNING", "DONE", "FAILED"]

log = Logger()

SCHEDULED, RUNNING, DONE, FAILED = "scheduled", "running", "done", "failed"

ReplyHook = Callable[["Job", Message, bool], None]


@dataclass
class Job:
    """One specification being (or to be) measured."""

    token: str
    spec: Statement
    capability: Statement
    probe: IProbe
    owner: str
    state: str = SCHEDULED
    reply: Message | None = None
    results: list[Message] = field(default_factory=list)
    runs: list[ProbeRun] = field(default_factory=list)
    timers: list[Any] = field(default_factory=list)
    interrupted: bool = False
    first_start: datetime | None = None
    on_reply: ReplyHook | None = None
    _subscopes: Iterator[When] | None = None
    _active: int = 0

    @property
    def repeated(self) -> bool:
        return self.spec.when.repeated

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)

    def receipt(self) -> Statement:
        return self.spec.derive("receipt", token=self.token, label=self.spec.label, link=None)

    def current_reply(self) -> Message:
        """What a redemption gets: the result (or envelope so far), else the receipt."""
        return self.reply if self.reply is not None else self.receipt()


class Scheduler:
    """Owns the jobs of one component; ``on_reply(job, message, final)`` reports results."""

    def __init__(self, reactor: IReactor, on_reply: ReplyHook | None = None) -> None:
        self.reactor = reactor
        self.on_reply = on_reply
        self.jobs: dict[str, Job] = {}
        self._forget: dict[str, Any] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.reactor.seconds(), UTC)

    def submit(self, spec: Statement, capability: Statement, probe: IProbe, owner: str,
               on_reply: ReplyHook | None = None) -> Job | ExceptionMessage:
        """Schedule ``spec``; a spec whose token is known gets the existing job (same receipt)."""
        token = spec.get_token()
        if token in self.jobs:
            return self.jobs[token]
        tzero = self.now()
        start_delay, end_delay = spec.when.timer_delays(tzero)
        if start_delay is None:
            return ExceptionMessage(token, f"temporal scope {str(spec.when).strip()!r} has already ended")
        job = Job(token, replace(spec, token=token), capability, probe, owner, on_reply=on_reply)
        self.jobs[token] = job
        if job.repeated:
            job._subscopes = spec.when.iterate(tzero)
            if end_delay is not None and spec.when.b != "future":
                job.timers.append(self.reactor.callLater(end_delay, self._end_repeated, job))
            self._next_subscope(job)
        else:
            end = None if end_delay is None else tzero + timedelta(seconds=end_delay)
            job.timers.append(self.reactor.callLater(start_delay, self._start, job, job.spec, end))
        return job

    def interrupt(self, token: str) -> Job | None:
        """Stop a job: future runs are cancelled, running probes return what they have."""
        job = self.jobs.get(token)
        if job is None:
            return None
        job.interrupted = True
        self._halt(job)
        if job._active == 0 and not job.finished:
            self._finish(job)
        return job

    def forget(self, token: str) -> None:
        self.jobs.pop(token, None)
        timer = self._forget.pop(token, None)
        if timer is not None and timer.active():
            timer.cancel()

    def forget_later(self, token: str, seconds: float) -> None:
        """Drop a finished job after a while (until then a re-sent spec gets the same answer)."""
        if token not in self._forget:
            self._forget[token] = self.reactor.callLater(seconds, self.forget, token)

    def stop(self) -> None:
        """Shutting down: cancel every timer and interrupt every run."""
        for timer in self._forget.values():
            if timer.active():
                timer.cancel()
        self._forget.clear()
        for job in list(self.jobs.values()):
            self._halt(job)

    @staticmethod
    def _halt(job: Job) -> None:
        """No further runs of ``job``; the running ones return what they have."""
        for timer in job.timers:
            if timer.active():
                timer.cancel()
        job.timers.clear()
        job._subscopes = None
        for run in job.runs:
            run.interrupt()

    # -- single runs ---------------------------------------------------------

    def _start(self, job: Job, spec: Statement, end: datetime | None) -> None:
        if job.interrupted:
            return
        start = self.now()
        period = spec.when.period.total_seconds() if spec.when.period is not None else None
        run = ProbeRun(self.reactor, start, end, period)
        job.runs.append(run)
        job.state = RUNNING
        job._active += 1
        if job.first_start is None:
            job.first_start = start
        if end is not None and end > start:
            timer = self.reactor.callLater((end - start).total_seconds(), run.interrupt)
            job.timers.append(timer)
        else:
            timer = None
        log.info("mPlane job {label} ({token}) started for {owner}", label=spec.label, token=job.token,
                 owner=job.owner)
        probe: Any = job.probe
        d: defer.Deferred[Any] = defer.maybeDeferred(probe.run, spec, job.capability, run)
        d.addCallbacks(lambda res: self._ran(job, run, res, timer), lambda f: self._failed(job, run, f, timer))

    def _ran(self, job: Job, run: ProbeRun, result: Any, timer: Any) -> None:
        if not isinstance(result, Statement):
            self._failed(job, run, ProbeError(f"probe {job.probe.name} returned {type(result).__name__}, "
                                              "not a result"), timer)
            return
        msg = replace(result, kind="result", token=job.token, label=job.spec.label, link=None)
        self._collect(job, run, msg, timer)

    def _failed(self, job: Job, run: ProbeRun, failure: Any, timer: Any) -> None:
        exc = failure.value if hasattr(failure, "value") else failure
        if isinstance(exc, ProbeError):
            text = str(exc)
        else:
            log.failure("mPlane probe {probe} failed on {label}", failure if hasattr(failure, "value") else None,
                        probe=job.probe.name, label=job.spec.label)
            text = f"probe {job.probe.name} failed: {exc}"
        self._collect(job, run, ExceptionMessage(job.token, text), timer)

    def _collect(self, job: Job, run: ProbeRun, msg: Message, timer: Any) -> None:
        job._active -= 1
        if timer is not None and timer.active():
            timer.cancel()
        if run in job.runs:
            job.runs.remove(run)
        if not job.repeated:
            job.reply = msg
            job.state = FAILED if isinstance(msg, ExceptionMessage) else DONE
            self._report(job, msg, True)
            return
        job.results.append(msg)
        if job._subscopes is None and job._active == 0:
            self._finish(job)
        else:
            job.reply = self._envelope(job, final=False)
            self._report(job, job.reply, False)

    # -- repeated specifications ---------------------------------------------

    def _next_subscope(self, job: Job) -> None:
        if job._subscopes is None:
            return
        try:
            sub = next(job._subscopes)
        except StopIteration:
            job._subscopes = None
            if job._active == 0:
                self._finish(job)
            return
        start, end = sub.datetimes(self.now())
        assert start is not None
        delay = max(0.0, (start - self.now()).total_seconds())
        subspec = replace(job.spec, when=sub)

        def fire() -> None:
            # Sub-scopes start on whole seconds, so the first may begin up to a second late:
            # its duration counts from when it really starts.
            real_end = self.now() + sub.duration if sub.duration is not None else end
            self._start(job, subspec, real_end)
            self._next_subscope(job)

        job.timers.append(self.reactor.callLater(delay, fire))

    def _end_repeated(self, job: Job) -> None:
        job._subscopes = None
        if job._active == 0 and not job.finished:
            self._finish(job)

    def _envelope(self, job: Job, final: bool) -> Envelope:
        when = job.spec.when
        if final:
            # A definite span tells the supervisor the measurement is over.
            start = job.first_start or self.now()
            when = When(start, self.now() if self.now() > start else None)
        return Envelope(list(job.results), token=job.token, label=job.spec.label, when=when)

    def _finish(self, job: Job) -> None:
        for timer in job.timers:
            if timer.active():
                timer.cancel()
        job.timers.clear()
        if job.repeated:
            job.reply = self._envelope(job, final=True) if job.results else ExceptionMessage(
                job.token, "interrupted before any measurement ran" if job.interrupted
                else "no measurement ran in the temporal scope")
        elif job.reply is None:
            job.reply = ExceptionMessage(job.token, "interrupted before it started")
        job.state = FAILED if isinstance(job.reply, ExceptionMessage) else DONE
        self._report(job, job.reply, True)

    def _report(self, job: Job, msg: Message, final: bool) -> None:
        for hook in (job.on_reply, self.on_reply):
            if hook is not None:
                try:
                    hook(job, msg, final)
                except Exception:
                    log.failure("mPlane reply hook failed for {token}", token=job.token)
