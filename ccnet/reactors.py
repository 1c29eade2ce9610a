"""The reactor type ccnet's parts are given (one name instead of ``Any`` everywhere).

Parts take the narrowest interface they use: ``IReactorTime`` for timers (so tests pass
``twisted.internet.task.Clock``), :class:`IReactor` when they need more of it.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorProcess,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
)

__all__ = ["IReactor", "default_reactor"]


class IReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorUDP, IReactorThreads, IReactorProcess,
               IReactorFDSet):
    """What the daemon needs of a reactor; Twisted's default reactor on Linux provides it all."""


def default_reactor() -> IReactor:
    """The global reactor (installed on first use), typed as :class:`IReactor`."""
    from twisted.internet import reactor

    # The global reactor declares each of these interfaces, not their union.
    return cast(IReactor, reactor)
