"""What every protocol part of the daemon is given when it is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ccnet.config import Config
from ccnet.identity import UserMap
from ccnet.store import Store
from ccnet.tls import TLSMaterial

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """Shared daemon state, passed explicitly (no globals).

    ``users`` is replaced on reload: read ``runtime.users`` per request, don't keep it.
    Parts that can reload register a callable with :meth:`on_reload`.
    """

    reactor: Any
    config: Config
    tls: TLSMaterial | None
    users: UserMap
    store: Store
    version: str
    reload_hooks: list[Callable[[], None]] = field(default_factory=list)
    metrics_sources: dict[str, Callable[[], str]] = field(default_factory=dict)
    #: Failed rounds of periodic jobs by job name (``ccnet.periodic``), for /metrics.
    job_failures: dict[str, int] = field(default_factory=dict)
    #: Parts that must be up for ``/ready`` (beyond listeners and the store): name -> is it up?
    parts: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def on_reload(self, hook: Callable[[], None]) -> None:
        self.reload_hooks.append(hook)

    def register_part(self, name: str, up: Callable[[], bool]) -> None:
        """Make ``/ready`` answer 503 (naming ``name``) while ``up()`` is False."""
        self.parts[name] = up

    def register_metrics(self, name: str, render: Callable[[], str]) -> None:
        """Add a part's Prometheus text exposition to ``/metrics`` on the metrics listener."""
        self.metrics_sources[name] = render
