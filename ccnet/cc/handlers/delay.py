"""``handler = delay``: hand each message to the ``forward-to`` section after
``delay`` seconds (timers on the server clock; pending ones are cancelled on
shutdown)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from ccnet.cc.handler import CCRequest, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.forwarding import ForwardingHandler, ForwardTarget, parse_forward_to

__all__ = ["DelayHandler", "DelayOptions", "handler_class"]


@dataclass(frozen=True)
class DelayOptions:
    forward_to: ForwardTarget
    delay: float


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class DelayHandler(ForwardingHandler):
    handler_name = "delay"
    cc_roles = frozenset({"local", "remote"})

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> DelayOptions:
        target = parse_forward_to(section, ini, cc)
        return DelayOptions(target, section.get_float("delay", 0.0, minimum=0))

    def __init__(self, name: str, options: DelayOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.pending: set[defer.Deferred[Any]] = set()

    def stop(self) -> Any:
        for d in list(self.pending):
            d.cancel()
        return super().stop()

    def handle(self, request: CCRequest) -> defer.Deferred[Any]:
        d = task.deferLater(self.server.clock, self.options.delay, self.link.handle, request)
        self.pending.add(d)

        def done(result: Any) -> Any:
            self.pending.discard(d)
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return None
            return result

        d.addBoth(done)
        return d


handler_class = DelayHandler
