"""A bounded thread pool per handler (``worker-threads``) for blocking work.

File writes and database calls run here, never in the reactor thread.  Work
queued under one ``key`` runs in order (one file is never written by two
threads at once) while different keys run in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from ccnet.reactors import IReactor

__all__ = ["WorkerPool"]

T = TypeVar("T")


class WorkerPool:
    def __init__(self, reactor: IReactor, name: str, size: int) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=max(1, size), name=name)
        self._tails: dict[Hashable, defer.Deferred[Any]] = {}
        self._started = False

    def start(self) -> None:
        if not self._started:
            self.pool.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.pool.stop()

    def run(self, fn: Callable[..., T], *args: Any, key: Hashable | None = None) -> defer.Deferred[T]:
        """Run ``fn(*args)`` in the pool; with ``key``, after earlier work of that key."""
        self.start()
        if key is None:
            return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)
        prev = self._tails.get(key)
        done: defer.Deferred[None] = defer.Deferred()
        self._tails[key] = done
        result: defer.Deferred[T] = defer.Deferred()

        def finish(value: Any) -> Any:
            if self._tails.get(key) is done:
                del self._tails[key]
            done.callback(None)
            return value

        def go(_: Any = None) -> None:
            d = threads.deferToThreadPool(self.reactor, self.pool, fn, *args)
            d.addBoth(finish)
            d.chainDeferred(result)

        if prev is None:
            go()
        else:
            prev.addCallback(go)
        return result
