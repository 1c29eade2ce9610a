"""Several supervisor daemons on one PostgreSQL: how each hears what the others changed.

Every write that another daemon must see carries, in its own transaction, a
``pg_notify(channel, "<instance> <kind> <id>")`` (see ``SupervisorState._notice``):
PostgreSQL delivers it when (and only if) the transaction commits. Here a dedicated
connection ``LISTEN``\\ s in a thread of its own (psycopg's ``notifies()`` blocks) and hands
the payloads to the reactor; :class:`ClusterSync` gathers them and has the state re-read
the named rows, which wakes the long-polls they concern. Payloads carry ids only: the
rows are read from the tables.

Notifications sent while the listening connection is down are lost, so every
(re)connection is followed by a full resync. With SQLite (one daemon) none of this runs:
the daemon's memory is the whole truth and local wakes are enough.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccnet.backoff import Backoff
from ccnet.mplane.state import SupervisorState
from ccnet.reactors import IReactor

__all__ = ["CHANNEL", "ClusterSync", "Listener", "parse_notice"]

log = Logger()

#: The notification channel of the mPlane supervisor tables.
CHANNEL = "ccnet_mplane"


def parse_notice(payload: str) -> tuple[str, str, str] | None:
    """``(instance, kind, id)`` of a notification payload, or None if it is not one of ours."""
    parts = payload.split(" ", 2)
    if len(parts) != 3 or parts[1] not in ("c", "m") or not parts[2]:
        return None
    return parts[0], parts[1], parts[2]


class Listener(service.Service):
    """``LISTEN channel`` on a connection of its own, in a thread of its own.

    ``on_payload(text)`` and ``on_connected()`` are called in the reactor thread. The
    connection is made again with :class:`ccnet.backoff.Backoff` (``retry_min`` doubling up
    to ``retry_max``, spread at random) whenever it breaks (PostgreSQL restarted, network cut).

    A stop waits for the thread to close its connection: about a second while it waits
    for notifications (read with a one-second timeout), longer if the server stopped
    answering in the middle of a statement (then until the connection's ``timeout``
    ends it: TCP keepalives, user timeout). Except while the thread is connecting:
    ``psycopg.connect`` cannot be interrupted and may block for the whole connect timeout
    (a server that accepts and never answers), so the stop completes at once and the
    thread, once ``connect`` returns, closes what it got and ends by itself.
    """

    def __init__(self, url: str, channel: str, reactor: IReactor, on_payload: Callable[[str], None],
                 on_connected: Callable[[], None], retry_min: float = 0.5, retry_max: float = 10.0,
                 timeout: float = 10.0) -> None:
        self.setName(f"listen-{channel}")
        self.url, self.channel, self.reactor = url, channel, reactor
        self.on_payload, self.on_connected = on_payload, on_connected
        self.retry_min, self.retry_max, self.timeout = retry_min, retry_max, timeout
        self._run_now: _Run | None = None
        self.connects = 0

    @property
    def connecting(self) -> bool:
        """Is the thread inside ``psycopg.connect`` right now?"""
        return self._run_now is not None and self._run_now.connecting

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        # Each start has its own stop flag: a thread of an earlier start still stuck in
        # connect must not be brought back to life by this one.
        run = self._run_now = _Run()
        threading.Thread(target=self._run, args=(run,), name=f"ccnet-{self.name}", daemon=True).start()

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 (Twisted API)
        super().stopService()
        run, self._run_now = self._run_now, None
        if run is None:
            return defer.succeed(None)
        with run.lock:
            run.stop.set()
            connecting = run.connecting
        if connecting:
            _fire(run.done)  # it ends by itself when connect returns
        return run.done

    def _connect(self, run: _Run) -> Any:
        """A connection, or None when stopped before or while connecting (then closed)."""
        import psycopg

        seconds = max(1, round(self.timeout))
        with run.lock:
            if run.stop.is_set():
                return None
            run.connecting = True
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, seconds),
                                   keepalives=1, keepalives_idle=seconds,
                                   keepalives_interval=max(1, seconds // 3), keepalives_count=3,
                                   tcp_user_timeout=seconds * 1000)
        finally:
            with run.lock:
                run.connecting = False
        if run.stop.is_set():
            conn.close()
            return None
        return conn

    def _run(self, run: _Run) -> None:
        import psycopg

        backoff = Backoff(self.retry_min, self.retry_max)
        outage = False
        try:
            while not run.stop.is_set():
                try:
                    conn = self._connect(run)
                    if conn is None:
                        break
                    with conn:
                        conn.execute(f'LISTEN "{self.channel}"')
                        self.connects += 1
                        if outage:
                            log.info("listening for {channel} notifications again", channel=self.channel)
                        outage = False
                        backoff.reset()
                        self.reactor.callFromThread(self.on_connected)
                        while not run.stop.is_set():
                            for note in conn.notifies(timeout=1.0):
                                self.reactor.callFromThread(self.on_payload, note.payload)
                except Exception as exc:  # psycopg.Error, or anything else: this thread must live on
                    if run.stop.is_set():
                        break
                    if not isinstance(exc, psycopg.Error):
                        log.failure("listening for {channel} notifications failed", channel=self.channel)
                    delay = backoff.next_delay()
                    (log.debug if outage else log.warn)(
                        "cannot listen for {channel} notifications ({error}); retrying in {delay:.1f}s",
                        channel=self.channel, error=str(exc).strip() or type(exc).__name__, delay=delay)
                    outage = True
                    run.stop.wait(delay)
        finally:
            self.reactor.callFromThread(_fire, run.done)


class _Run:
    """One start of a :class:`Listener`: its thread's stop flag and what the stop waits for."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connecting = False
        self.done: defer.Deferred[None] = defer.Deferred()


def _fire(d: defer.Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


class ClusterSync:
    """Gathers the other daemons' notifications and has the state re-read those rows.

    Notifications arriving while a refresh runs wait for the next one, so a burst (10 000
    registrations) costs a few ``IN (...)`` reads, not one query per notification.

    A read that fails (the store is down or slow) is tried again after a
    :class:`ccnet.backoff.Backoff` wait (``retry_min`` doubling up to ``retry_max``, spread
    at random): the same rows first, a full resync once ``escalate_after`` tries in a row
    have failed. A reconnection of the listener resyncs at once.
    """

    def __init__(self, state: SupervisorState, reactor: IReactorTime, retry_min: float = 1.0,
                 retry_max: float = 30.0, escalate_after: int = 3,
                 rng: Callable[[], float] = random.random) -> None:
        self.state = state
        self.reactor = reactor
        self.escalate_after = escalate_after
        self._backoff = Backoff(retry_min, retry_max, rng=rng)
        self._components: set[str] = set()
        self._measurements: set[str] = set()
        self._resync = False
        self._reconnected = False  # since the read in flight began: its failure retries at once
        self._busy = False
        self._call: IDelayedCall | None = None  # the pending flush (cancelled at stop)
        self._stopped = False

    @property
    def failures(self) -> int:
        """Reads failed in a row (0 once one succeeded)."""
        return self._backoff.failures

    def payload(self, text: str) -> None:
        notice = parse_notice(text)
        if notice is None:
            log.warn("ignoring a malformed {channel} notification {payload!r}", channel=CHANNEL, payload=text[:100])
            return
        instance, kind, ident = notice
        if instance == self.state.instance:
            return  # our own write: memory already has it
        self.state.cluster_events["notifications"] += 1
        (self._components if kind == "c" else self._measurements).add(ident)
        self._schedule()

    def connected(self) -> None:
        """The listening connection is (again) up: what was sent meanwhile is lost. Resync
        now, not after a retry's wait (the store answers again, most likely): also when a
        read in flight fails, its retry does not wait."""
        self._resync = True
        self._reconnected = True
        if self._call is not None and self._call.active():
            self._call.reset(0)
        else:
            self._schedule()

    def stop(self) -> None:
        """No more reads: the daemon stops."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _schedule(self, delay: float = 0.0) -> None:
        if not self._busy and not (self._call is not None and self._call.active()) and not self._stopped:
            self._call = self.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._reconnected = False
        resync = self._resync
        comps, self._components = self._components, set()
        mids, self._measurements = self._measurements, set()
        if resync:
            self._resync = False
            self.state.cluster_events["resyncs"] += 1
            work = self.state.resync()
        elif not comps and not mids:
            return
        else:
            work = self.state.refresh(comps, mids)
        self._busy = True
        d = defer.ensureDeferred(work)
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(resync, comps, mids))

    def _succeeded(self, _: Any) -> None:
        self._busy = False
        self._backoff.reset()
        if self._resync or self._components or self._measurements:
            self._schedule()

    def _failed(self, failure: Failure, resync: bool, comps: set[str], mids: set[str]) -> None:
        self._busy = False
        if self._stopped:
            # The daemon stops: its reads fail as the store and thread pools close.
            log.debug("re-read failed while stopping: {error}", error=failure.getErrorMessage())
            return
        if self._reconnected:
            # The listener reconnected while this read was in flight: resync now, and
            # count the failures from there.
            self._backoff.reset()
            self._reconnected = False
            delay = 0.0
        else:
            delay = self._backoff.next_delay()
        if resync or self._backoff.failures >= self.escalate_after:
            self._resync = True
            what = "resyncing everything"
        else:
            # The same rows again (with any notified meanwhile).
            self._components |= comps
            self._measurements |= mids
            what = f"reading the {len(comps) + len(mids)} changed rows again"
        log.warn("cannot read what another supervisor daemon changed: {error}; {what} in {delay:.1f}s",
                 error=failure.getErrorMessage(), what=what, delay=delay)
        self._schedule(delay)
