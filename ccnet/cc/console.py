"""What the web console shows of the CC proxy (:mod:`ccnet.console.sources`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccnet.console.sources import CCRoute, CCView

if TYPE_CHECKING:
    from ccnet.cc.server import CCServer

__all__ = ["console_view"]


def console_view(server: CCServer) -> CCView:
    """What the web console shows of this proxy: its current routes and counters."""
    stats = server.stats
    return CCView(
        routes=tuple(CCRoute(p, secs) for p, secs in server.config.routes.routes),
        handlers=tuple((spec.section, spec.handler) for spec in server.config.handlers),
        counters={(outcome, mtype or ""): n for (outcome, mtype), n in stats.cells.items()},
        latency={t: (v.count, v.total / v.count if v.count else 0.0, v.maximum) for t, v in stats.latency.items()},
    )
