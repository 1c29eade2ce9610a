"""Probe plug points: what a measurement module provides to the component runtime.

A probe module (named by ``module =`` in a ``[probe:NAME]`` section, like the SDK's
``[module_x] module = ...``) exposes ``probe_factory``, an object providing
:class:`IProbeFactory`. At config time the factory validates its section (so a typo
stops the daemon with file, section and key); at start it builds an :class:`IProbe`.

A probe offers capabilities and runs specifications: ``run`` is called when the
scheduler starts a measurement and returns a Deferred that fires with the rows (or a
ready result). It must stop early, returning what it has, when ``run.interrupted``
fires (an interrupt from the client, or the end of the temporal scope).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, threads
from zope.interface import Attribute, Interface

from ccnet.mplane.model import Statement, When
from ccnet.reactors import IReactor

__all__ = ["IProbe", "IProbeFactory", "IUsesTLS", "ProbeError", "ProbeRun", "in_thread", "make_result"]


class ProbeError(Exception):
    """A measurement that cannot be made; the text becomes the mPlane exception message."""


class IProbe(Interface):
    """Runs the measurements of some capabilities."""

    name = Attribute("the probe section's name (e.g. 'ping')")

    def capabilities() -> list[Statement]:  # type: ignore[misc,empty-body]
        """The capabilities this probe offers (labels unique within the component)."""

    def run(spec: Statement, capability: Statement, run: ProbeRun) -> defer.Deferred[Any]:  # type: ignore[empty-body]
        """Measure ``spec`` (already matched against ``capability``) starting now.

        Fire with a result :class:`Statement` (see :func:`make_result`) or raise /
        errback with :class:`ProbeError`. Stop early when ``run.interrupted`` fires.
        """


class IProbeFactory(Interface):
    """Configures and builds one kind of probe."""

    def configure(section: Any) -> Any:  # type: ignore[empty-body]
        """Validate the ``[probe:NAME]`` section (a ccnet.config.SectionReader) into options;
        raise ``section.error(key, expected, got)`` for mistakes. Every key must be read."""

    def build(reactor: IReactor, name: str, options: Any) -> IProbe:  # type: ignore[empty-body]
        """The probe, ready to run."""


class IUsesTLS(Interface):
    """A probe that talks to other mutual-TLS services (e.g. tstat's exporters to a
    repository): the component hands it the daemon's TLS identity after building it."""

    def use_tls(material: Any) -> None:
        """``material`` is the daemon's :class:`ccnet.tls.TLSMaterial` (reloaded in place)."""


@dataclass
class ProbeRun:
    """One scheduled run of a probe: its window and the interruption signal."""

    reactor: IReactor
    start: datetime
    end: datetime | None  # when the scheduler will interrupt it (None: not before an interrupt)
    period: float | None  # seconds between samples, from the spec's "/ P"
    interrupted: defer.Deferred[None] = field(default_factory=defer.Deferred)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, (self.end - self.start).total_seconds())

    def is_interrupted(self) -> bool:
        return self.interrupted.called

    def interrupt(self) -> None:
        if not self.interrupted.called:
            self.interrupted.callback(None)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.reactor.seconds(), UTC)


def in_thread(reactor: IReactor, fn: Any, *args: Any) -> defer.Deferred[Any]:
    """``fn(*args)`` in the reactor's thread pool: blocking work (files, /proc) of a probe."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)


def make_result(spec: Statement, rows: list[list[Any]], start: datetime, end: datetime) -> Statement:
    """The result of ``spec``: its token, label, parameters and columns, the actual time span."""
    return spec.derive("result", token=spec.token, label=spec.label, link=None,
                       when=When(start, end if end > start else None),
                       resultvalues=[[_wire(v) for v in row] for row in rows])


def _wire(value: Any) -> Any:
    """Values as the SDK writes them: strings (``*`` style None kept as JSON null)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)
