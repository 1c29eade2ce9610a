"""``handler = filter``: pass messages whose type matches ``include`` (fnmatch
wildcards; empty = everything) and not ``exclude`` (exclude wins) to the
``forward-to`` section; drop (and count) the rest."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from zope.interface import implementer, provider

from ccnet.cc.handler import CCRequest, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.forwarding import ForwardingHandler, ForwardTarget, parse_forward_to

__all__ = ["FilterHandler", "FilterOptions", "passes", "handler_class"]


@dataclass(frozen=True)
class FilterOptions:
    forward_to: ForwardTarget
    include: tuple[str, ...]
    exclude: tuple[str, ...]


def passes(mtype: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """The original filter's decision (pure)."""
    if any(fnmatch.fnmatchcase(mtype, pat) for pat in exclude):
        return False
    return not include or any(fnmatch.fnmatchcase(mtype, pat) for pat in include)


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class FilterHandler(ForwardingHandler):
    handler_name = "filter"
    cc_roles = frozenset({"local", "remote"})

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> FilterOptions:
        target = parse_forward_to(section, ini, cc)
        return FilterOptions(target, tuple(section.get_list("include", [])), tuple(section.get_list("exclude", [])))

    def __init__(self, name: str, options: FilterOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.passed = 0
        self.dropped = 0

    def handle(self, request: CCRequest) -> Any:
        if not passes(request.type, self.options.include, self.options.exclude):
            self.dropped += 1
            return None
        self.passed += 1
        return self.link.handle(request)


handler_class = FilterHandler
