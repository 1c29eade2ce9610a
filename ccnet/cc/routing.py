"""CC prefix routing and cc-role checks (pure, no Twisted).

Original CC semantics: for a type ``a.b.c`` every section routed under ``*``,
``a``, ``a.b`` and ``a.b.c`` is called, in that order, and within one pattern in
config order.  Matching is by whole dotted components, so ``pub.info`` never
matches ``pub.infofile``.  It is not longest-match: all prefixes fire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ccnet.cc.message import valid_type

__all__ = [
    "ROLES",
    "BUILTIN_HANDLER_ROLES",
    "RouteTable",
    "RouteError",
    "role_error",
]

#: cc-role values; an unset role means "insecure" (everything allowed, with a warning).
ROLES = ("local", "remote")

_BOTH = frozenset(ROLES)
_LOCAL = frozenset({"local"})
_REMOTE = frozenset({"remote"})

#: Role table of the original handlers (spec §6), by short name.
BUILTIN_HANDLER_ROLES: Mapping[str, frozenset[str]] = {
    "proxy": _BOTH,
    "echo": _BOTH,
    "locallogger": _BOTH,
    "filter": _BOTH,
    "delay": _BOTH,
    "disposer": _BOTH,
    "jobmgr": _LOCAL,
    "dbhandler": _REMOTE,
    "database": _REMOTE,
    "infowriter": _REMOTE,
    "tailwriter": _REMOTE,
    "taskrouter": _REMOTE,
}


MEMO_SIZE = 4096


class RouteError(ValueError):
    """A ``[routes]`` pattern that is neither ``*`` nor a dotted type."""


@dataclass(frozen=True)
class RouteTable:
    """Pattern → section names, in config order."""

    routes: tuple[tuple[str, tuple[str, ...]], ...]
    # Per-type lookup memo (bounded: types come from the network).
    _memo: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, routes: Iterable[tuple[str, Sequence[str]]]) -> RouteTable:
        merged: dict[str, list[str]] = {}
        for pattern, sections in routes:
            if pattern != "*" and not valid_type(pattern):
                raise RouteError(
                    f"route pattern {pattern!r} is not '*' or a dotted message type"
                )
            merged.setdefault(pattern, []).extend(sections)
        return cls(tuple((p, tuple(s)) for p, s in merged.items()))

    def lookup(self, mtype: str) -> tuple[str, ...]:
        """Sections to call for ``mtype``, in dispatch order (may repeat a section
        routed under two matching patterns, as the original does)."""
        hit = self._memo.get(mtype)
        if hit is None:
            hit = self._lookup(mtype)
            if len(self._memo) < MEMO_SIZE:
                self._memo[mtype] = hit
        return hit

    def _lookup(self, mtype: str) -> tuple[str, ...]:
        table = dict(self.routes)
        out = list(table.get("*", ()))
        parts = mtype.split(".")
        for n in range(1, len(parts) + 1):
            out.extend(table.get(".".join(parts[:n]), ()))
        return tuple(out)

    def sections(self) -> list[str]:
        """Every section named by a route, first appearance order."""
        seen: dict[str, None] = {}
        for _, secs in self.routes:
            for s in secs:
                seen.setdefault(s, None)
        return list(seen)


def role_error(
    role: str | None, section: str, handler: str, allowed: Iterable[str]
) -> str | None:
    """A start-up error message when ``handler`` may not run under ``role``."""
    if role is None:
        return None
    allowed = frozenset(allowed)
    if role in allowed:
        return None
    roles = ", ".join(sorted(allowed)) or "no role"
    return (
        f"handler {handler!r} in section [{section}] is not allowed with cc-role = {role}"
        f" (allowed: {roles})"
    )
