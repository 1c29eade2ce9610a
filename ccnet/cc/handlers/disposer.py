"""``handler = disposer``: swallow messages (counted on the handler, not answered), e.g. to
silence a noisy type without "no route" errors."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer, provider

from ccnet.cc.handler import CCHandler, CCRequest, ICCHandler, ICCHandlerFactory

__all__ = ["DisposerHandler", "handler_class"]


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class DisposerHandler(CCHandler):
    handler_name = "disposer"
    cc_roles = frozenset({"local", "remote"})
    reads_payload = False

    def __init__(self, name: str, options: Any, server: Any) -> None:
        super().__init__(name, options, server)
        self.disposed = 0

    def handle(self, request: CCRequest) -> None:
        self.disposed += 1


handler_class = DisposerHandler
