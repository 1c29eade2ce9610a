"""What every protocol part of the daemon is given when it is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from ccnet.config import Config
from ccnet.console.sources import ConsoleSources
from ccnet.edge.limits import DEFAULT as DEFAULT_LIMITS
from ccnet.edge.limits import EdgeLimits
from ccnet.edge.request import DEFAULT_MAX_BODY
from ccnet.identity import UserMap
from ccnet.reactors import IReactor
from ccnet.store import Store
from ccnet.tls import TLSMaterial

__all__ = ["Part", "Runtime"]

@dataclass
class Part:
    """What a protocol part's ``build(runtime, cfg)`` gives the daemon.

    Reload hooks, metrics collectors and readiness checks go through the :class:`Runtime`
    the part was given; this is what the daemon composes."""

    #: Started and stopped with the daemon.
    services: list[Any] = field(default_factory=list)
    #: The part's own listeners (``ccnet.edge.listener.ListenerService``): counted for
    #: READY=1 and ``/ready``, drained on stop.
    listeners: list[Any] = field(default_factory=list)
    #: The root of the part's HTTPS site (supervisor, RPC), served on its ``listen``.
    resource: Any = None
    #: That site's request body limit.
    max_body: int = DEFAULT_MAX_BODY
    #: A ``twisted.web`` Site of the part's own for ``resource`` (RPC: lean form parsing,
    #: its 413 in the protocol); else the daemon makes one with ``max_body``.
    site: Any = None


@dataclass
class Runtime:
    """Shared daemon state, passed explicitly (no globals).

    A part reads what it needs from here — never the whole config: the daemon fills it
    from the parsed config (:meth:`from_config`), a test or an embedding program with the
    few fields it uses (the rest default to a stand-alone part). ``users`` is replaced on
    reload: read ``runtime.users`` per request, don't keep it. Parts that can reload
    register a callable with :meth:`on_reload`.
    """

    reactor: IReactor
    store: Store
    tls: TLSMaterial | None = None
    users: UserMap = field(default_factory=UserMap.empty)
    version: str = ""
    #: Where relative paths of the parts' settings resolve (the config file's folder).
    config_dir: Path = field(default_factory=Path.cwd)
    #: ``[ccnet] hostname``: the name the daemon gives itself (None: the OS's).
    hostname: str | None = None
    #: ``[tls] crl``: the CRL file(s) TLS checks peers against (CMS signers too).
    tls_crl: Path | None = None
    #: The daemon's parsed config, for the daemon itself (parts read the fields above).
    config: Config | None = None
    reload_hooks: list[Callable[[], None]] = field(default_factory=list)
    #: This service tree's metrics (never prometheus-client's process-global registry).
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    #: Failed rounds of periodic jobs by job name (``ccnet.periodic``), for /metrics.
    job_failures: dict[str, int] = field(default_factory=dict)
    #: Parts that must be up for ``/ready`` (beyond listeners and the store): name -> is it up?
    parts: dict[str, Callable[[], bool]] = field(default_factory=dict)
    #: What the parts show the supervisor's web console (CC routes, RPC calls), if enabled.
    console: ConsoleSources = field(default_factory=ConsoleSources)

    @classmethod
    def from_config(cls, config: Config, reactor: IReactor, store: Store, tls: TLSMaterial | None,
                    users: UserMap, version: str) -> Runtime:
        return cls(reactor=reactor, store=store, tls=tls, users=users, version=version,
                   config_dir=config.path.parent, hostname=config.daemon.hostname,
                   tls_crl=config.tls.crl if config.tls is not None else None, config=config)

    def limits(self, listener: str) -> EdgeLimits:
        """The connection limits of ``listener`` (:mod:`ccnet.edge.limits`)."""
        return self.config.limits(listener) if self.config is not None else DEFAULT_LIMITS

    def allow_proxies(self, listener: str) -> bool:
        """Does ``listener`` accept RFC 3820 proxy certificates (its section over ``[tls]``)?"""
        if self.config is None:
            return False
        policy = self.config.listener_tls.get(listener)
        if policy is not None:
            return policy.allow_proxies
        return self.config.tls.allow_proxies if self.config.tls is not None else False

    def on_reload(self, hook: Callable[[], None]) -> None:
        self.reload_hooks.append(hook)

    def register_part(self, name: str, up: Callable[[], bool]) -> None:
        """Make ``/ready`` answer 503 (naming ``name``) while ``up()`` is False."""
        self.parts[name] = up

    def register_metrics(self, name: str, *collectors: Collector) -> None:
        """Add a part's prometheus-client collectors (metric objects or custom collectors)
        to ``/metrics`` on the metrics listener; a failing one is logged and skipped."""
        from ccnet.metrics import PartMetrics  # ccnet.metrics builds on this module

        self.metrics.register(PartMetrics(name, collectors))
