"""Who may see and run which mPlane capability.

Pure. Two maps, as in the RI and the SDK: identities → roles (``users.conf``,
SDK ``[Roles]``) and capability labels → roles (``caps.conf``, SDK
``[Authorizations]``). A capability is allowed to an identity when the roles of the
best-matching label rule and the identity's roles intersect; deny otherwise.

Label rule matching is the SDK's: a configured label matches a capability label it
is a substring of (``ping`` matches ``ping-average-ip4``). An RI ``caps.conf`` key may
also name the component (``label, component-identity``); such a rule only applies to
that component's capability and wins over label-only rules. Among several matching
rules of the same kind the longest (most specific) label decides; equally long
matches are merged.
"""

from __future__ import annotations

import configparser
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ccnet.config import SetupError

__all__ = ["AuthzError", "CapabilityRule", "IdentityClaims", "Policy", "parse_roles_file", "parse_caps_file"]


class AuthzError(SetupError):
    """A users/caps file that cannot be read; the text names file and line (at start-up a
    configuration mistake: one line, exit 2)."""


class IdentityClaims:
    """Which certificate subject owns a dotted SDK identity.

    Everything a peer owns (capabilities, specifications, results) is keyed by the SDK's
    dotted identity, which two different subjects can share (``/O=a/CN=b.c`` and
    ``/O=a.b/CN=c`` both give ``a.b.c``): the first subject seen with it keeps it."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def conflict(self, dotted: str, dn: str, known_dn: str | None = None) -> str | None:
        """The other subject that owns ``dotted`` (``known_dn``: one remembered from
        before a restart), or None when ``dn`` may use it."""
        first = self._first.setdefault(dotted, known_dn or dn)
        return first if first != dn else None

    def bind(self, dotted: str, dn: str) -> None:
        """``dn`` owns ``dotted`` from now on: a peer we chose and verified (the configured
        supervisor) wins over any look-alike seen before it."""
        self._first[dotted] = dn


@dataclass(frozen=True)
class CapabilityRule:
    label: str
    component: str | None
    roles: frozenset[str]


def _roles(text: str) -> frozenset[str]:
    return frozenset(r.strip() for r in text.split(",") if r.strip())


def _lines(text: str, source: str) -> Iterable[tuple[int, str, str]]:
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            key, sep, value = line.rpartition(":")
        if not sep or not key.strip():
            raise AuthzError(f"{source}:{n}: expected 'name: role, role', got {raw!r}")
        yield n, key.strip(), value


def _sdk_sections(text: str, source: str) -> configparser.ConfigParser | None:
    if not any(line.strip().startswith("[") for line in text.splitlines()):
        return None
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=", ":"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # identities are case-sensitive
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise AuthzError(f"{source}: {exc}") from None
    return parser


def parse_roles_file(text: str, source: str = "<users>") -> dict[str, frozenset[str]]:
    """``identity: role, role`` lines (RI users.conf) or an INI ``[Roles]`` section (SDK)."""
    parser = _sdk_sections(text, source)
    if parser is not None:
        if not parser.has_section("Roles"):
            return {}
        return {k: _roles(v) for k, v in parser.items("Roles")}
    return {key: _roles(value) for _, key, value in _lines(text, source)}


def parse_caps_file(text: str, source: str = "<caps>") -> list[CapabilityRule]:
    """``label[, component-identity]: role, role`` lines (RI caps.conf) or ``[Authorizations]`` (SDK)."""
    parser = _sdk_sections(text, source)
    if parser is not None:
        if not parser.has_section("Authorizations"):
            return []
        return [CapabilityRule(k, None, _roles(v)) for k, v in parser.items("Authorizations")]
    rules = []
    for _, key, value in _lines(text, source):
        label, _, component = key.partition(",")
        rules.append(CapabilityRule(label.strip(), component.strip() or None, _roles(value)))
    return rules


@dataclass
class Policy:
    """The two maps plus the operator role that sees everything."""

    identity_roles: dict[str, frozenset[str]] = field(default_factory=dict)
    rules: list[CapabilityRule] = field(default_factory=list)
    admin_role: str | None = None

    @classmethod
    def from_files(cls, users: Path | None, caps: Path | None, admin_role: str | None = None) -> Policy:
        """Read RI or SDK style files (an SDK config file may serve as both)."""
        policy = cls(admin_role=admin_role)
        for path, kind in ((users, "users"), (caps, "caps")):
            if path is None:
                continue
            try:
                text = Path(path).read_text("utf-8")
            except OSError as exc:
                raise AuthzError(f"{path}: cannot read ({exc.strerror})") from None
            if kind == "users":
                policy.identity_roles.update(parse_roles_file(text, str(path)))
            else:
                policy.rules.extend(parse_caps_file(text, str(path)))
                # An SDK config passed as caps file also carries [Roles].
                if users is None:
                    policy.identity_roles.update(parse_roles_file(text, str(path)))
        return policy

    @classmethod
    def from_strings(cls, users: str = "", caps: str = "", admin_role: str | None = None) -> Policy:
        return cls(parse_roles_file(users), parse_caps_file(caps), admin_role)

    def roles_of(self, identities: Iterable[str], extra: Iterable[str] = ()) -> frozenset[str]:
        """Roles granted to any of the spellings of one peer (dotted, slash DN) plus ``extra``
        (roles known from the daemon-wide users map)."""
        out: set[str] = set(extra)
        for ident in identities:
            out |= self.identity_roles.get(ident, frozenset())
        return frozenset(out)

    def is_admin(self, roles: frozenset[str]) -> bool:
        return self.admin_role is not None and self.admin_role in roles

    def capability_roles(self, label: str | None, component: str | None) -> frozenset[str]:
        """The roles allowed to use capability ``label`` of ``component``."""
        if not label:
            return frozenset()
        for specific in (True, False):
            matches = [r for r in self.rules
                       if (r.component is not None) == specific
                       and (not specific or r.component == component)
                       and r.label and r.label in label]
            if matches:
                best = max(len(r.label) for r in matches)
                out: set[str] = set()
                for r in matches:
                    if len(r.label) == best:
                        out |= r.roles
                return frozenset(out)
        return frozenset()

    def allows(self, roles: frozenset[str], label: str | None, component: str | None) -> bool:
        """May a peer holding ``roles`` see/run capability ``label`` offered by ``component``?"""
        if self.is_admin(roles):
            return True
        return bool(self.capability_roles(label, component) & roles)

    def summary(self) -> Mapping[str, int]:
        return {"identities": len(self.identity_roles), "capability_rules": len(self.rules)}
