"""Who is on the other end of a verified TLS connection, and what they may do.

Pure: no sockets, no reactor. ``Identity`` is built from the verified peer chain;
``UserMap`` maps identities to users, groups and properties (roles); ``authorize``
answers one question for all three protocols.
"""

from __future__ import annotations

import configparser
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = [
    "ANONYMOUS_GROUP",
    "ANONYMOUS_USER",
    "Identity",
    "UserMap",
    "UserRecord",
    "authorize",
    "dn_dotted",
    "dn_slash",
]

ANONYMOUS_USER = "anonymous"
ANONYMOUS_GROUP = "visitor"

# RFC 3820 proxyCertInfo and the policy OIDs that mark limited proxies.
_PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_LIMITED_PROXY_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"

_SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
}


def _attributes(name: x509.Name) -> list[tuple[str, str]]:
    pairs = []
    for rdn in name.rdns:
        for attr in rdn:
            key = _SHORT_NAMES.get(attr.oid, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("utf-8", "replace")
            pairs.append((key, value))
    return pairs


def dn_slash(name: x509.Name) -> str:
    """``/C=IT/O=mPlane/CN=x``: the OpenSSL one-line form DIRAC uses."""
    return _slash(_attributes(name))


def dn_dotted(name: x509.Name) -> str:
    """``IT.mPlane.x``: the attribute values in order, as the mPlane SDK derives identities."""
    return _dotted(_attributes(name))


def _slash(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"/{k}={v}" for k, v in pairs)


def _dotted(pairs: list[tuple[str, str]]) -> str:
    return ".".join(v for _, v in pairs)


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for general in ext.value:  # type: ignore[attr-defined]
        if isinstance(general, x509.DNSName):
            out.append(f"DNS:{general.value}")
        elif isinstance(general, x509.IPAddress):
            out.append(f"IP:{general.value}")
        elif isinstance(general, x509.RFC822Name):
            out.append(f"email:{general.value}")
        elif isinstance(general, x509.UniformResourceIdentifier):
            out.append(f"URI:{general.value}")
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _proxy_kind(cert: x509.Certificate) -> str | None:
    """'full', 'limited' or None for a non-proxy certificate (RFC 3820 or legacy GSI).

    Remembered per certificate (they hash and compare by their DER): every chain a
    connection presents ends in the same few CA certificates."""
    ext = None
    # Parsing every extension of every peer's leaf costs more than the rest of the
    # identity: look for the OID's bytes first (an RFC 3820 proxy has them).
    if _oid_in_der(_PROXY_CERT_INFO.dotted_string, cert.tbs_certificate_bytes):
        try:
            ext = cert.extensions.get_extension_for_oid(_PROXY_CERT_INFO)
        except x509.ExtensionNotFound:
            pass
    if ext is not None:
        # The raw DER carries the policy language OID; a limited proxy names the limited policy.
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
        limited_der = x509.ObjectIdentifier(_LIMITED_PROXY_POLICY).dotted_string
        return "limited" if _oid_in_der(limited_der, raw) else "full"
    subject = cert.subject
    last_cn = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    # Legacy GSI proxies: subject = issuer + one more CN=proxy / CN=limited proxy (the
    # issuer is only parsed when the last CN says so: most certificates are no proxy).
    kind = None
    if last_cn and last_cn[-1] == "limited proxy":
        kind = "limited"
    elif last_cn and (last_cn[-1] == "proxy" or str(last_cn[-1]).isdigit()):
        kind = "full"
    if kind is not None and subject.rdns and cert.issuer.rdns and subject.rdns[:-1] == cert.issuer.rdns:
        return kind
    return None


def _oid_in_der(dotted: str, der: bytes) -> bool:
    return _oid_body(dotted) in der


@functools.lru_cache(maxsize=16)
def _oid_body(dotted: str) -> bytes:
    """The DER content octets of an OBJECT IDENTIFIER."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for number in parts[2:]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        body.extend(reversed(chunk))
    return bytes(body)


@dataclass(frozen=True)
class Identity:
    """A peer identity taken from a verified certificate chain (leaf first)."""

    dn: str
    subject_dn: str
    dotted: str
    cn: str
    issuer_dn: str
    serial: int
    not_after: datetime
    is_proxy: bool
    is_limited_proxy: bool
    chain: tuple[x509.Certificate, ...]
    #: Where the end entity (the identity's certificate) is in ``chain``.
    end_entity_index: int = 0

    @functools.cached_property
    def sans(self) -> tuple[str, ...]:
        """The end entity's subject alternative names (``DNS:…``, ``IP:…``); read when
        asked, as few requests need them."""
        return _sans(self.chain[self.end_entity_index]) if self.chain else ()

    @classmethod
    def from_chain(cls, chain: Sequence[x509.Certificate]) -> Identity:
        if not chain:
            raise ValueError("an identity needs at least one certificate")
        leaf = chain[0]
        # For a proxy chain the identity is the first non-proxy certificate up the chain.
        kinds = [_proxy_kind(c) for c in chain]
        index = next((i for i, k in enumerate(kinds) if k is None), 0)
        end_entity = chain[index]
        subject = _attributes(end_entity.subject)
        cns = [v for k, v in subject if k == "CN"]
        dn = _slash(subject)
        return cls(
            dn=dn,
            subject_dn=dn if index == 0 else dn_slash(leaf.subject),
            dotted=_dotted(subject),
            cn=cns[-1] if cns else "",
            issuer_dn=dn_slash(end_entity.issuer),
            serial=end_entity.serial_number,
            # A proxy lives no longer than any certificate from it up to the end entity.
            not_after=min(c.not_valid_after_utc for c in chain[: index + 1]),
            is_proxy=kinds[0] is not None,
            is_limited_proxy="limited" in kinds,
            chain=tuple(chain),
            end_entity_index=index,
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> Identity:
        return cls.from_chain(x509.load_pem_x509_certificates(pem))

    def seconds_left(self, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        return max(0, int((self.not_after - now).total_seconds()))

    def matches_host(self, host: str) -> bool:
        """True when a DNS or IP SAN names ``host`` (used for host certificates)."""
        try:
            ip = ipaddress.ip_address(host)
            return f"IP:{ip}" in self.sans
        except ValueError:
            return f"dns:{host.lower()}" in {s.lower() for s in self.sans}

    def __str__(self) -> str:
        return self.dn


@dataclass(frozen=True)
class UserRecord:
    """What the users mapping says about one identity."""

    username: str
    group: str
    groups: frozenset[str]
    properties: frozenset[str]
    vo: str | None = None


class UserMap:
    """identity → :class:`UserRecord`, from a ``users.conf`` file.

    Format: one ``[user:NAME]`` section per user with ``dn =`` (slash form) and/or
    ``identity =`` (dotted mPlane form), ``group``, ``groups``, ``properties`` or ``roles``,
    ``vo``; and the mPlane SDK's ``[Roles]`` section (``identity = role, role``).
    """

    def __init__(self, records: dict[str, UserRecord], source: str = "<empty>") -> None:
        self._by_key = records
        self.source = source

    @classmethod
    def empty(cls) -> UserMap:
        return cls({})

    @classmethod
    def load(cls, path: Path | str) -> UserMap:
        with open(path, encoding="utf-8") as handle:
            return cls.from_string(handle.read(), str(path))

    @classmethod
    def from_string(cls, text: str, source: str = "<string>") -> UserMap:
        from ccnet.config import ConfigError

        parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # identities are case-sensitive
        try:
            parser.read_string(text, source=source)
        except configparser.Error as exc:
            raise ConfigError(source, None, None, f"valid INI syntax: {str(exc).splitlines()[0]}") from None
        records: dict[str, UserRecord] = {}
        for section in parser.sections():
            if section.lower() == "roles":
                for ident, roles in parser.items(section):
                    props = frozenset(_split(roles))
                    old = records.get(ident)
                    if old is not None:
                        props |= old.properties
                    records[ident] = UserRecord(
                        username=old.username if old else ident.rsplit(".", 1)[-1],
                        group=old.group if old else "mplane",
                        groups=old.groups if old else frozenset({"mplane"}),
                        properties=props,
                        vo=old.vo if old else None,
                    )
                continue
            if not section.startswith("user:"):
                raise ConfigError(source, section, None, "sections named [user:NAME] or [Roles]")
            username = section[len("user:") :].strip()
            opts = {k.lower(): v for k, v in parser.items(section)}
            allowed = {"dn", "identity", "group", "groups", "properties", "roles", "vo"}
            for key in opts:
                if key not in allowed:
                    raise ConfigError(source, section, key, "unknown key")
            keys = [opts[k].strip() for k in ("dn", "identity") if opts.get(k, "").strip()]
            if not keys:
                raise ConfigError(source, section, "dn", "dn = /C=../CN=.. or identity = a.b.c")
            groups = _split(opts.get("groups", ""))
            group = opts.get("group", "").strip() or (groups[0] if groups else "users")
            props = frozenset(_split(opts.get("properties", "")) + _split(opts.get("roles", "")))
            record = UserRecord(
                username=username,
                group=group,
                groups=frozenset([group, *groups]),
                properties=props,
                vo=opts.get("vo", "").strip() or None,
            )
            for key in keys:
                records[key] = record
        return cls(records, source)

    def lookup(self, identity: Identity | None) -> UserRecord | None:
        if identity is None:
            return None
        return self._by_key.get(identity.dn) or self._by_key.get(identity.dotted)

    def __len__(self) -> int:
        return len({id(r) for r in self._by_key.values()})


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.replace("\n", ",").split(",") if item.strip()]


def authorize(
    identity: Identity | None, record: UserRecord | None, rule: Iterable[str]
) -> bool:
    """May this caller do what ``rule`` guards? Any matching entry allows (OR).

    Entries: ``all``/``any`` anyone, even anonymous; ``authenticated`` a known user;
    ``group:G``; ``vo:V``; anything else is a property (role) the user must hold.
    An empty rule denies.
    """
    for entry in rule:
        entry = entry.strip()
        lowered = entry.lower()
        if lowered in ("all", "any"):
            return True
        if record is None or identity is None:
            continue
        if lowered == "authenticated":
            return True
        if lowered.startswith("group:"):
            if entry[len("group:") :] in record.groups:
                return True
        elif lowered.startswith("vo:"):
            if record.vo is not None and entry[len("vo:") :] == record.vo:
                return True
        elif entry in record.properties:
            return True
    return False
