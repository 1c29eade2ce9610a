"""Start and stop order shared by the daemon's parts.

* :class:`IListening` — a part that binds a port; the daemon is ready once every one
  listens, and exits 1 with one log line naming the part when one cannot.
* :class:`IStopsFirst` — a part whose outgoing connections end at this daemon's own
  listeners (the mPlane component long-polling its own supervisor); it is stopped before
  the listeners drain, so SIGTERM does not wait ``shutdown-grace`` for our own long-poll.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, IServiceCollection
from twisted.internet import defer
from zope.interface import Attribute

__all__ = ["IListening", "IStopsFirst", "stop_first"]


class IListening(IService):
    """A service that listens on a port (HTTP(S) listener, the CC ROUTER socket)."""

    listening = Attribute("Deferred: fires once listening, fails (after one log line) when it cannot")


class IStopsFirst(IService):
    """Marks a service to stop before the listeners drain (see the module docstring)."""


def _walk(svc: Any) -> list[Any]:
    found = [svc]
    if IServiceCollection.providedBy(svc):
        for child in svc:
            found += _walk(child)
    return found


def stop_first(root: Any) -> defer.Deferred[Any]:
    """Stop every running :class:`IStopsFirst` service under ``root``; fires when they stopped."""
    stopping = [defer.maybeDeferred(svc.stopService) for svc in _walk(root)[1:]
                if IStopsFirst.providedBy(svc) and svc.running]
    return defer.DeferredList(stopping, consumeErrors=True)
