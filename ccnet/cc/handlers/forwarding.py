"""``forward-to = <section>`` for filter and delay: hand a message to another
handler section, as the original ``ccscript.get_handler(name)`` did.

A target section that is also routed is the server's own instance; a section
named only by ``forward-to`` is parsed at start-up like a routed one (role
check, unknown keys) and owned by the forwarding handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ccnet.cc.handler import CCHandler, ICCHandler

__all__ = ["ForwardLink", "ForwardTarget", "ForwardingHandler", "parse_forward_to"]


@dataclass(frozen=True)
class ForwardTarget:
    section: str
    spec: Any  # HandlerSpec when the forwarding handler owns the target, else None


def parse_forward_to(section: Any, ini: Any, cc: Any) -> ForwardTarget:
    from ccnet.cc.config import parse_handler

    name = section.get_str("forward-to")
    if name == section.name:
        raise section.error("forward-to", "another handler section, not this one", name)
    if not ini.has_section(name):
        raise section.error("forward-to", f"a handler section that exists; no section [{name}]", name)
    if name in cc.routes.sections():
        return ForwardTarget(name, None)
    return ForwardTarget(name, parse_handler(ini, name, cc))


class ForwardLink:
    """The live target of one forwarding handler."""

    def __init__(self, target: ForwardTarget, server: Any) -> None:
        self.target = target
        self.server = server
        self.handler: Any = None
        self._owned = False

    def start(self) -> Any:
        if self.target.spec is None:
            self.handler = self.server.handlers[self.target.section]
        else:
            spec = self.target.spec
            self.handler = spec.factory(spec.section, spec.options, self.server)
            if not ICCHandler.providedBy(self.handler):
                raise TypeError(f"handler [{spec.section}] does not provide ICCHandler")
            self._owned = True
            self.handler.start()
        return self.handler

    def stop(self) -> Any:
        if self._owned and self.handler is not None:
            handler, self.handler = self.handler, None
            return handler.stop()
        return None

    @property
    def reads_payload(self) -> bool:
        if self.target.spec is not None:
            return bool(getattr(self.target.spec.factory, "reads_payload", True))
        handler = self.server.handlers.get(self.target.section)
        return bool(getattr(handler, "reads_payload", True))

    def handle(self, request: Any) -> Any:
        if self.handler is None:
            self.start()
        return self.handler.handle(request)


class ForwardingHandler(CCHandler):
    """A handler that passes (some) messages on to ``options.forward_to``."""

    def __init__(self, name: str, options: Any, server: Any) -> None:
        super().__init__(name, options, server)
        self.link = ForwardLink(options.forward_to, server)

    def start(self) -> None:
        self.link.start()
        # This handler looks at the type only; the payload is decoded when the target reads it.
        self.reads_payload = self.link.reads_payload

    def stop(self) -> Any:
        return self.link.stop()
