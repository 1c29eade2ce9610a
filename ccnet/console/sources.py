"""What the daemon's parts show the console: small read-only snapshots (pure).

The supervisor's console renders the CC proxy and the RPC services of the same daemon.
Parts do not hand it their objects: each registers a callable returning a snapshot
(``runtime.console.cc = ...``) built from its public state, so the console never reaches
into a part's private attributes and a part that is not enabled is simply absent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CallTally", "CCRoute", "CCView", "ConsoleSources", "RPCMethodRow", "RPCView"]


@dataclass(frozen=True)
class CCRoute:
    pattern: str  # "*" or a dotted message type prefix, as in [routes]
    sections: tuple[str, ...]  # handler sections called, in order


@dataclass(frozen=True)
class CCView:
    """The CC proxy: its routes, its handler sections and what they did (since start)."""

    routes: tuple[CCRoute, ...]
    handlers: tuple[tuple[str, str], ...]  # (section, plugin/class name)
    #: (outcome, message type) -> messages; outcomes as ``ccnet.cc.stats.OUTCOMES``.
    counters: dict[tuple[str, str], int]
    #: message type -> (handled count, mean seconds, max seconds)
    latency: dict[str, tuple[int, float, float]]


@dataclass(frozen=True)
class RPCMethodRow:
    service: str
    method: str
    calls: int  # since start
    errors: int  # answered with an HTTP status >= 400
    per_minute: int  # calls in the last 60 seconds


@dataclass(frozen=True)
class RPCView:
    """The RPC services: each mounted service with its exported methods, and call counts."""

    services: dict[str, tuple[str, ...]]  # service -> exported methods
    calls: tuple[RPCMethodRow, ...]


@dataclass
class ConsoleSources:
    """Filled by the parts the daemon runs (None: the part is not enabled here)."""

    cc: Callable[[], CCView] | None = None
    rpc: Callable[[], RPCView] | None = None


class CallTally:
    """Calls per (service, method): totals, errors, and the calls of the last minute.

    The recent window keeps one timestamp per call of the last 60 s, capped at
    ``window_cap`` per method (past the cap the rate reads as at least the cap).
    """

    WINDOW = 60.0

    def __init__(self, clock: Callable[[], float], window_cap: int = 100_000) -> None:
        self._clock = clock
        self._cap = window_cap
        self._totals: dict[tuple[str, str], list[int]] = {}
        self._recent: dict[tuple[str, str], deque[float]] = {}

    def record(self, service: str, method: str, status: int) -> None:
        key = (service, method)
        cell = self._totals.setdefault(key, [0, 0])
        cell[0] += 1
        if status >= 400:
            cell[1] += 1
        recent = self._recent.setdefault(key, deque(maxlen=self._cap))
        recent.append(self._clock())

    def rows(self) -> tuple[RPCMethodRow, ...]:
        cutoff = self._clock() - self.WINDOW
        out = []
        for key in sorted(self._totals):
            recent = self._recent[key]
            while recent and recent[0] < cutoff:
                recent.popleft()
            calls, errors = self._totals[key]
            out.append(RPCMethodRow(key[0], key[1], calls, errors, len(recent)))
        return tuple(out)
