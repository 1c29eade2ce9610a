"""Periodic jobs that survive their failures.

A bare ``LoopingCall`` stops for good the first time its function raises or its Deferred
fails. Every periodic job of the daemon (result expiry, discovery, maintenance, stats)
runs through :func:`every` instead: a failed round is logged, counted per job name (the
daemon exposes the counts as ``ccnet_periodic_failures_total{job}``) and the next round
runs on schedule.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["every", "guarded"]

log = Logger()


def guarded(job: str, fn: Callable[[], Any],
            failures: MutableMapping[str, int] | None = None) -> Callable[[], defer.Deferred[Any]]:
    """``fn`` as a round that never fails: errors are logged and counted under ``job``."""

    def failed(failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return
        if failures is not None:
            failures[job] = failures.get(job, 0) + 1
        log.error("periodic job {job} failed, it runs again next period: {kind}: {error}", job=job,
                  kind=failure.type.__name__, error=failure.getErrorMessage())

    def round_() -> defer.Deferred[Any]:
        d = defer.maybeDeferred(fn)
        d.addCallback(lambda result: defer.ensureDeferred(result) if _is_coroutine(result) else result)
        d.addErrback(failed)
        return d

    return round_


def _is_coroutine(value: Any) -> bool:
    import inspect

    return inspect.iscoroutine(value)


def every(clock: IReactorTime, interval: float, job: str, fn: Callable[[], Any], *, now: bool = True,
          failures: MutableMapping[str, int] | None = None) -> task.LoopingCall:
    """Start ``fn`` every ``interval`` seconds on ``clock``; a failed round does not stop it."""
    loop = task.LoopingCall(guarded(job, fn, failures))
    loop.clock = clock
    loop.start(interval, now=now)
    return loop
