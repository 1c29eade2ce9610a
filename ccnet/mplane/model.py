"""The mPlane information model: registry, temporal scopes, constraints and messages.

Pure: nothing from Twisted, no network. Messages keep the wire representation of
their values (strings, as the SDK 0.9 writes them), so that ``to_dict(from_dict(d))``
reproduces what the SDK would render for ``d`` and tokens derived from the schema
are the SDK's. Typed access (``Registry.element(name).parse(...)``) and validation
(``check_capability``, ``match_specification``) raise ``ModelError`` naming the
parameter, the constraint or the clause that is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

__all__ = [
    "CONTENT_TYPE",
    "CORE_REGISTRY_URI",
    "RI_REGISTRY_URI",
    "TSTAT_REGISTRY_URI",
    "KINDS",
    "MPLANE_VERSION",
    "Constraint",
    "Element",
    "Envelope",
    "ExceptionMessage",
    "Indirection",
    "Message",
    "ModelError",
    "Registry",
    "RegistryStore",
    "Statement",
    "When",
    "check_capability",
    "from_dict",
    "load_json",
    "match_specification",
    "parse_constraint",
    "parse_duration",
    "parse_json",
    "parse_time",
    "render_duration",
    "render_time",
    "schema_hash",
    "to_json",
]

MPLANE_VERSION = 1
CONTENT_TYPE = "application/x-mplane+json"
CORE_REGISTRY_URI = "http://ict-mplane.eu/registry/core"
TSTAT_REGISTRY_URI = "urn:ccnet:mplane:registry:tstat"
RI_REGISTRY_URI = "urn:ccnet:mplane:registry:ri-2014"
REGISTRY_FORMAT = "mplane-0"

VERBS = ("measure", "query", "collect", "store", "callback")
STATEMENT_KINDS = ("capability", "specification", "result")
NOTIFICATION_KINDS = ("receipt", "redemption", "withdrawal", "interrupt")
KINDS = (*STATEMENT_KINDS, *NOTIFICATION_KINDS, "exception", "envelope", "indirection")

# The SDK's "inf" duration: 100000 days.
INFINITE_DURATION = timedelta(days=100000)


class ModelError(ValueError):
    """A message, registry or temporal scope that is not valid mPlane; the text says where."""


# ---------------------------------------------------------------------------
# Times and durations
# ---------------------------------------------------------------------------

PAST, NOW, FUTURE = "past", "now", "future"
Time = datetime | str  # a UTC datetime, or one of PAST / NOW / FUTURE

_TIME_RE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?)?Z?$")
_DUR_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_time(text: str) -> Time:
    """``now``/``past``/``future`` or ``YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]`` (UTC)."""
    text = text.strip()
    if text in (PAST, NOW, FUTURE):
        return text
    m = _TIME_RE.match(text)
    if not m:
        raise ModelError(f"{text!r} is not an mPlane time (expected now, past, future or YYYY-MM-DD HH:MM:SS.ffffff)")
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        return datetime(
            int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
            int((frac or "0").ljust(6, "0")), tzinfo=UTC,
        )
    except ValueError as exc:
        raise ModelError(f"{text!r} is not an mPlane time: {exc}") from None


def render_time(value: Time) -> str:
    """The SDK's rendering: microsecond precision, no zone (times are UTC)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def parse_duration(text: str) -> timedelta:
    """``1d2h3m4s`` (any subset, in that order) or ``inf``."""
    text = text.strip()
    if text == "inf":
        return INFINITE_DURATION
    m = _DUR_RE.match(text)
    if not text or not m:
        raise ModelError(f"{text!r} is not an mPlane duration (expected e.g. 5s, 1m30s, 2h, 1d)")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    try:
        return timedelta(days=d, hours=h, minutes=mi, seconds=s)
    except OverflowError:  # beyond timedelta's 999999999 days: an error of the message
        raise ModelError(f"{text!r} is not an mPlane duration (too long)") from None


def render_duration(value: timedelta) -> str:
    """Whole seconds, largest units first, ``0s`` for zero (as the SDK renders)."""
    secs = int(value.total_seconds())
    out = ""
    for unit, label in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if secs >= unit:
            out += f"{secs // unit}{label}"
            secs %= unit
    return out or "0s"


# ---------------------------------------------------------------------------
# Temporal scope
# ---------------------------------------------------------------------------

_CRON_FIELDS = ("seconds", "minutes", "hours", "days", "weekdays", "months")
_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (0, 6), (1, 12))


def _parse_cron_field(text: str, index: int) -> str:
    lo, hi = _CRON_RANGES[index]
    name = _CRON_FIELDS[index]
    if text == "*":
        return "*"
    values: set[int] = set()
    for part in text.split(","):
        bounds = part.split("-")
        try:
            nums = [int(b) for b in bounds]
        except ValueError:
            raise ModelError(f"cron {name} field {text!r}: {part!r} is not a number or range") from None
        if len(nums) == 2:
            values.update(range(nums[0], nums[1] + 1))
        elif len(nums) == 1:
            values.add(nums[0])
        else:
            raise ModelError(f"cron {name} field {text!r}: {part!r} is not a number or range")
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise ModelError(f"cron {name} field {text!r}: {bad[0]} is outside {lo}..{hi}")
    return ",".join(str(v) for v in sorted(values))


@dataclass(frozen=True)
class When:
    """A temporal scope: ``A``, ``A ... B`` or ``A + D``, an optional ``/ P`` period,
    optionally ``repeat``-ed with a ``cron`` clause and an inner ``{ now + D / P }``."""

    a: Time
    b: Time | None = None
    duration: timedelta | None = None
    period: timedelta | None = None
    repeated: bool = False
    cron: tuple[str, ...] | None = None
    inner_duration: timedelta | None = None
    inner_period: timedelta | None = None

    @classmethod
    def parse(cls, text: str) -> When:
        if not isinstance(text, str):
            raise ModelError(f"temporal scope must be a string, got {type(text).__name__}")
        original = text
        s = text.strip()
        repeated = False
        cron: tuple[str, ...] | None = None
        inner_duration = inner_period = None
        if s.startswith("repeat "):
            repeated = True
            s = s[len("repeat "):]
            if "{" in s:
                head, _, rest = s.partition("{")
                inner, close, tail = rest.partition("}")
                if not close or tail.strip():
                    raise ModelError(f"temporal scope {original!r}: inner scope must be '{{ now + D / P }}' at the end")
                inner_when = cls.parse(inner.strip())
                if inner_when.a != NOW or inner_when.b is not None or inner_when.repeated:
                    raise ModelError(f"temporal scope {original!r}: inner scope must be relative to now (now + D / P)")
                inner_duration, inner_period = inner_when.duration, inner_when.period
                s = head.strip()
            if " cron " in f" {s} ":
                s, _, crontext = f" {s} ".partition(" cron ")
                fields = crontext.split()
                if len(fields) != 6:
                    raise ModelError(
                        f"temporal scope {original!r}: cron needs 6 fields "
                        "(seconds minutes hours days weekdays months)")
                cron = tuple(_parse_cron_field(f, i) for i, f in enumerate(fields))
                s = s.strip()
        elif "{" in s or " cron " in f" {s} ":
            raise ModelError(f"temporal scope {original!r}: cron and inner scopes need 'repeat'")
        period = None
        if " / " in s:
            s, _, ptext = s.partition(" / ")
            period = parse_duration(ptext)
            if period <= timedelta(0):
                raise ModelError(f"temporal scope {original!r}: period must be positive")
        duration = None
        b: Time | None = None
        if " + " in s:
            s, _, dtext = s.partition(" + ")
            if " ... " in dtext:
                # "now + inf ... future" (tStat capabilities): a duration spelled inside a range.
                _, _, btext = dtext.partition(" ... ")
                b = parse_time(btext)
            else:
                duration = parse_duration(dtext)
        elif " ... " in s:
            s, _, btext = s.partition(" ... ")
            b = parse_time(btext)
        a = parse_time(s)
        if repeated and cron is None and period is None:
            raise ModelError(f"temporal scope {original!r}: repeat needs a period (/ P) or a cron clause")
        if repeated and cron is not None and period is not None:
            raise ModelError(f"temporal scope {original!r}: repeat takes a period or a cron clause, not both")
        if isinstance(a, datetime) and isinstance(b, datetime) and b < a:
            raise ModelError(f"temporal scope {original!r}: end is before start")
        if a == FUTURE or b == PAST:
            raise ModelError(f"temporal scope {original!r}: starts in the future or ends in the past")
        return cls(a, b, duration, period, repeated, cron, inner_duration, inner_period)

    def __str__(self) -> str:
        out = ("repeat " if self.repeated else "") + render_time(self.a)
        if self.b is not None:
            out += " ... " + render_time(self.b)
        elif self.duration is not None:
            out += " + " + render_duration(self.duration)
        if self.period is not None:
            out += " / " + render_duration(self.period)
        if self.cron is not None:
            out += " cron " + " ".join(self.cron)
        if self.inner_duration is not None:
            out += " { now + " + render_duration(self.inner_duration)
            if self.inner_period is not None:
                out += " / " + render_duration(self.inner_period)
            out += " } "  # the SDK ends inner scopes with " } "
        return out

    # -- evaluation ---------------------------------------------------------

    def datetimes(self, tzero: datetime) -> tuple[datetime | None, datetime | None]:
        """Absolute (start, end) given the present ``tzero``; None = unbounded."""
        start: datetime | None
        if self.a == NOW:
            start = tzero
        elif self.a == PAST:
            start = None
        else:
            start = self.a  # type: ignore[assignment]
        end: datetime | None
        if self.b == NOW:
            end = tzero
        elif self.b == FUTURE:
            end = None
        elif self.b is None:
            end = start
            if self.duration is not None and start is not None:
                try:
                    end = start + self.duration
                except OverflowError:  # after datetime's last day: unbounded, as "future"
                    end = None
        else:
            end = self.b  # type: ignore[assignment]
        return start, end

    def resolved(self, tzero: datetime) -> When:
        """The same scope with ``now`` fixed to ``tzero``: what a submission meant when it arrived."""
        return replace(self, a=tzero if self.a == NOW else self.a, b=tzero if self.b == NOW else self.b)

    def is_immediate(self) -> bool:
        return self.a == NOW

    def is_definite(self) -> bool:
        return isinstance(self.a, datetime) and (self.b is None or isinstance(self.b, datetime))

    def timer_delays(self, tzero: datetime) -> tuple[float | None, float | None]:
        """Seconds until start and until end (None: no end, or expired), as the SDK computes them."""
        start, end = self.datetimes(tzero)
        sd = max(0.0, ((start or tzero) - tzero).total_seconds())
        ed: float | None
        if self.b is not None and self.b != FUTURE and end is not None:
            ed = (end - tzero).total_seconds()
        elif self.duration is not None:
            ed = sd + self.duration.total_seconds()
        elif self.b is None:
            ed = sd
        else:
            ed = None
        if ed is not None and ed < 0:
            return None, None
        return sd, ed

    def contains(self, inner: When, tzero: datetime) -> str | None:
        """None when ``inner`` lies within this scope, else why not (used for spec vs capability)."""
        inner_period = inner.inner_period if inner.repeated else inner.period
        if self.period is not None:
            if inner_period is None:
                return f"the capability needs a period of at least {render_duration(self.period)} (add ' / {render_duration(self.period)}')"
            if inner_period < self.period:
                return (f"period {render_duration(inner_period)} is shorter than the capability's "
                        f"minimum {render_duration(self.period)}")
        start, end = self.datetimes(tzero)
        istart, iend = inner.datetimes(tzero)
        if istart is None:
            if start is not None:
                return f"starts in the indefinite past, the capability starts at {render_time(self.a)}"
        elif start is not None and istart < start:
            return f"starts at {render_time(istart)}, before the capability's scope starts ({render_time(start)})"
        if istart is not None and end is not None and istart > end:
            return f"starts at {render_time(istart)}, after the capability's scope ends ({render_time(end)})"
        if end is not None:
            if iend is None:
                return f"has no end, the capability's scope ends at {render_time(end)}"
            if iend > end:
                return f"ends at {render_time(iend)}, after the capability's scope ends ({render_time(end)})"
        return None

    def iterate(self, tzero: datetime) -> Iterator[When]:
        """Definite sub-scopes of a repeated scope, starting at ``tzero`` (whole seconds)."""
        if not self.repeated:
            yield self
            return
        start, end = self.datetimes(tzero)
        t = max(start or tzero, tzero).replace(microsecond=0)
        step = self.period or timedelta(seconds=1)
        while end is None or t <= end:
            if self.cron is None or self._cron_matches(t):
                yield When(t, None, self.inner_duration, self.inner_period)
            t += step

    def _cron_matches(self, t: datetime) -> bool:
        assert self.cron is not None
        actual = (t.second, t.minute, t.hour, t.day, (t.weekday() + 1) % 7, t.month)
        for spec, value in zip(self.cron, actual, strict=True):
            if spec != "*" and value not in {int(v) for v in spec.split(",")}:
                return False
        return True


WHEN_INFINITE = When(PAST, FUTURE)


# ---------------------------------------------------------------------------
# Primitives, elements, registries
# ---------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    if text in ("True", "1", "true"):
        return True
    if text in ("False", "0", "false"):
        return False
    raise ValueError("expected True or False")


def _parse_natural(text: str) -> int:
    value = int(float(text))  # the SDK accepts 100.0 and 1e2
    if value < 0:
        raise ValueError("expected a natural number (>= 0)")
    return value


def _parse_object(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON object nested too deeply") from None


_PRIM_PARSERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "natural": _parse_natural,
    "real": float,
    "boolean": _parse_bool,
    "time": parse_time,
    "address": ipaddress.ip_address,
    "url": str,
    "object": _parse_object,
}
PRIMITIVES = tuple(_PRIM_PARSERS)


def _render_value(prim: str, value: Any) -> str:
    if value is None:
        return "*"
    if prim == "time":
        return render_time(value)
    if prim == "object":
        return json.dumps(value, sort_keys=True)
    return str(value)


@dataclass(frozen=True)
class Element:
    """A named, typed piece of data (``source.ip4``: address)."""

    name: str
    prim: str
    desc: str | None = None
    registry: str = CORE_REGISTRY_URI

    def parse(self, text: str) -> Any:
        """The typed value of ``text``; None for ``*``. ModelError names the element."""
        if text == "*":
            return None
        try:
            return _PRIM_PARSERS[self.prim](text)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{text!r} is not a valid {self.prim} for {self.name} ({exc})") from None

    def render(self, value: Any) -> str:
        return _render_value(self.prim, value)

    def normalize(self, text: str) -> str:
        """Parse and render again: the SDK's spelling of a value (used in token hashes)."""
        return self.render(self.parse(text))


@dataclass
class Registry:
    """A named set of elements (``registry-format: mplane-0``), includes resolved."""

    uri: str
    elements: dict[str, Element] = field(default_factory=dict)
    revision: int = 0
    includes: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return name in self.elements

    def __len__(self) -> int:
        return len(self.elements)

    def element(self, name: str) -> Element:
        try:
            return self.elements[name]
        except KeyError:
            raise ModelError(f"unknown element {name!r} in registry {self.uri}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "registry-format": REGISTRY_FORMAT,
            "registry-revision": self.revision,
            "registry-uri": self.uri,
        }
        if self.includes:
            out["includes"] = list(self.includes)
        out["elements"] = [
            {"name": e.name, "prim": e.prim, **({"desc": e.desc} if e.desc else {})}
            for e in self.elements.values()
        ]
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], resolve: Callable[[str], Registry] | None = None,
                  source: str = "<registry>") -> Registry:
        """Build from the JSON document; ``resolve(uri)`` provides included registries."""
        if not isinstance(doc, Mapping):
            raise ModelError(f"{source}: a registry is a JSON object")
        if doc.get("registry-format") != REGISTRY_FORMAT:
            raise ModelError(f"{source}: unsupported registry-format {doc.get('registry-format')!r} "
                             f"(expected {REGISTRY_FORMAT!r})")
        uri = doc.get("registry-uri")
        if not isinstance(uri, str) or not uri:
            raise ModelError(f"{source}: registry-uri missing")
        try:
            revision = int(float(doc.get("registry-revision", 0)))
        except (TypeError, ValueError):
            raise ModelError(f"{source}: registry-revision must be a number") from None
        reg = cls(uri, revision=revision, includes=tuple(doc.get("includes", ())))
        for inc in reg.includes:
            if resolve is None:
                raise ModelError(f"{source}: includes {inc} but no resolver was given")
            reg.elements.update(resolve(inc).elements)
        elems = doc.get("elements")
        if not isinstance(elems, list):
            raise ModelError(f"{source}: 'elements' must be a list")
        for i, e in enumerate(elems):
            if not isinstance(e, Mapping) or not isinstance(e.get("name"), str):
                raise ModelError(f"{source}: element #{i} has no name")
            prim = e.get("prim")
            if prim not in _PRIM_PARSERS:
                raise ModelError(f"{source}: element {e['name']!r} has unknown primitive {prim!r} "
                                 f"(expected one of {', '.join(PRIMITIVES)})")
            reg.elements[e["name"]] = Element(e["name"], prim, e.get("desc"), uri)
        return reg


#: The registries ccnet ships (package data), by URI. ``core`` is the mPlane SDK 0.9 core
#: registry exactly; ``tstat`` adds the elements of ccnet's tstat capabilities; ``ri-2014``
#: is the element list of the RI fork's own ``registry.json`` — what an RI peer means when
#: it names the core registry (see :mod:`ccnet.mplane.dialect`).
BUILTIN_REGISTRIES = {
    CORE_REGISTRY_URI: "core.json",
    TSTAT_REGISTRY_URI: "tstat.json",
    RI_REGISTRY_URI: "ri-2014.json",
}


@functools.cache
def _builtin_document(uri: str) -> dict[str, Any]:
    # Package data shipped with ccnet, read once per process (never peer input).
    text = resources.files("ccnet.mplane").joinpath(f"registry/{BUILTIN_REGISTRIES[uri]}").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


class RegistryStore:
    """The registries a process knows, by URI: the built-in ones and those the operator adds.

    A registry is never looked up from peer input: an unknown URI is a ``ModelError``
    (a per-capability refusal), not a file to open or a URL to fetch. Operator
    registries are read at the edge and given to :meth:`add`; those that came from a
    URL are *fetchable* (a peer can load them too, so they may be shown as they are).
    """

    def __init__(self) -> None:
        self._registries: dict[str, Registry] = {}
        self._fetchable: set[str] = set()
        for uri in BUILTIN_REGISTRIES:
            self.add(Registry.from_dict(_builtin_document(uri), resolve=self.get, source=f"built-in registry {uri}"))

    @property
    def core(self) -> Registry:
        return self._registries[CORE_REGISTRY_URI]

    def add(self, registry: Registry, fetchable: bool = False) -> Registry:
        self._registries[registry.uri] = registry
        if fetchable:
            self._fetchable.add(registry.uri)
        return registry

    def uris(self) -> list[str]:
        return list(self._registries)

    def known(self, uri: str) -> bool:
        return uri in self._registries

    def fetchable(self, uri: str) -> bool:
        """Could a peer load this registry itself (an operator registry served at its URL)?"""
        return uri in self._fetchable

    def get(self, uri: str) -> Registry:
        try:
            return self._registries[uri]
        except KeyError:
            raise ModelError(f"unknown registry {uri} (known: {', '.join(self._registries)})") from None

    def parse(self, raw: bytes | str, source: str) -> Registry:
        """A registry document read by the caller; includes must name known registries."""
        doc = load_json(raw, source)
        return Registry.from_dict(doc, resolve=self.get, source=source)


# ---------------------------------------------------------------------------
# Constraints
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """``*`` (anything), ``a ... b`` (inclusive range) or ``a,b,c`` (one of)."""

    kind: str  # "all", "range", "set"
    values: tuple[Any, ...] = ()
    text: str = "*"

    def met_by(self, value: Any) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "range":
            lo, hi = self.values
            try:
                return bool(lo <= value <= hi)
            except TypeError:
                return False
        return value in self.values

    def single_value(self) -> Any:
        if self.kind == "set" and len(self.values) == 1:
            return self.values[0]
        if self.kind == "range" and self.values[0] == self.values[1]:
            return self.values[0]
        return None

    def __str__(self) -> str:
        return self.text


CONSTRAINT_ALL = Constraint("all")


def parse_constraint(element: Element, text: str) -> Constraint:
    """Parse a capability parameter's constraint for ``element``; errors name the parameter."""
    if not isinstance(text, str):
        text = str(text)
    text = text.strip()
    if text == "*":
        return CONSTRAINT_ALL
    try:
        if " ... " in text:
            atext, _, btext = text.partition(" ... ")
            lo, hi = element.parse(atext.strip()), element.parse(btext.strip())
            if lo is None or hi is None:
                raise ModelError("range bounds cannot be '*'")
            try:
                if lo > hi:
                    lo, hi = hi, lo
            except TypeError:
                raise ModelError(f"{element.prim} values cannot form a range") from None
            return Constraint("range", (lo, hi), f"{element.render(lo)} ... {element.render(hi)}")
        items = [t.strip() for t in text.split(",")]
        if any(not t for t in items):
            raise ModelError("empty item in list")
        values = tuple(element.parse(t) for t in items)
        return Constraint("set", values, ",".join(element.render(v) for v in values))
    except ModelError as exc:
        raise ModelError(f"parameter {element.name}: constraint {text!r} is not valid ({exc})") from None


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def schema_hash(registry: str, parameters: Iterable[str], results: Iterable[str]) -> str:
    """Identifies a schema (registry + parameter names + result columns), as the SDK does."""
    return _md5(f"{registry} p {' '.join(sorted(parameters))} r {' '.join(sorted(results))}")


@dataclass
class Statement:
    """Capability, specification, result, receipt, redemption, withdrawal or interrupt.

    ``parameters`` holds constraint strings in a capability or withdrawal and value
    strings in everything else; ``resultvalues`` holds rows as received.
    """

    kind: str
    verb: str = "measure"
    label: str | None = None
    token: str | None = None
    when: When = WHEN_INFINITE
    registry: str = CORE_REGISTRY_URI
    link: str | None = None
    export: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)
    resultvalues: list[list[Any]] = field(default_factory=list)
    version: int = MPLANE_VERSION

    # -- identity -----------------------------------------------------------

    def schema_hash(self) -> str:
        return schema_hash(self.registry, self.parameters, self.results)

    def _values(self, registries: RegistryStore | None) -> tuple[list[str], list[str]]:
        """(constraint strings, value strings) by sorted key, spelled as the SDK hashes them."""
        keys = sorted(self.parameters)
        reg = registries.get(self.registry) if registries is not None and registries.known(self.registry) else None
        if self.kind in ("capability", "withdrawal"):
            cons = []
            for k in keys:
                if reg is not None and k in reg:
                    cons.append(str(parse_constraint(reg.element(k), self.parameters[k])))
                else:
                    cons.append(self.parameters[k])
            return cons, ["*"] * len(keys)
        vals = []
        for k in keys:
            v = self.parameters[k]
            if reg is not None and k in reg:
                try:
                    v = reg.element(k).normalize(v)
                except ModelError:
                    pass
            vals.append(v)
        return ["*"] * len(keys), vals

    def default_token(self, registries: RegistryStore | None = None) -> str:
        """The SDK's token: a hash of verb, scope, schema and values (specifications: values only)."""
        keys = sorted(self.parameters)
        cons, vals = self._values(registries)
        results = " ".join(sorted(self.results))
        if self.kind == "specification":
            return _md5(f"{self.registry}{self.verb} w {self.when} pk {' '.join(keys)} "
                        f"pv {' '.join(vals)} r {results}")
        mkeys = sorted(self.metadata)
        mvals = [self.metadata[k] for k in mkeys]
        return _md5(f"{self.registry}{self.verb} w {self.when} pk {' '.join(keys)} "
                    f"pc {' '.join(cons)} pv {' '.join(vals)} mk {' '.join(mkeys)} "
                    f"mv {' '.join(mvals)} r {results} ex {self.export}")

    def get_token(self, registries: RegistryStore | None = None) -> str:
        return self.token if self.token is not None else self.default_token(registries)

    def with_token(self, registries: RegistryStore | None = None) -> Statement:
        """A copy whose token is set (explicitly, as the SDK writes it once it has been asked)."""
        return replace(self, token=self.get_token(registries))

    def derive(self, kind: str, **changes: Any) -> Statement:
        """The same statement as another kind (specification → receipt, result → …)."""
        fields: dict[str, Any] = {"kind": kind, "parameters": dict(self.parameters), "metadata": dict(self.metadata),
                  "results": list(self.results), "resultvalues": []}
        fields.update(changes)
        return replace(self, **fields)

    # -- wire form ----------------------------------------------------------

    def to_dict(self, token_only: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {self.kind: self.verb, "version": self.version, "registry": self.registry}
        if self.label is not None:
            d["label"] = self.label
        if self.link is not None and not token_only:
            d["link"] = self.link
        if self.export is not None:
            d["export"] = self.export
        if self.token is not None:
            d["token"] = self.token
        if token_only and self.token is not None and self.kind in NOTIFICATION_KINDS:
            return d
        d["when"] = str(self.when)
        if self.parameters:
            d["parameters"] = dict(self.parameters)
        if self.metadata:
            d["metadata"] = dict(self.metadata)
        if self.results:
            d["results"] = list(self.results)
            if self.resultvalues:
                d["resultvalues"] = [list(r) for r in self.resultvalues]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], kind: str) -> Statement:
        verb = d[kind]
        if not isinstance(verb, str) or verb not in VERBS:
            raise ModelError(f"{kind}: unknown verb {verb!r} (expected one of {', '.join(VERBS)})")
        version = _version(d, kind)
        for key in ("label", "token", "link", "export", "registry"):
            if key in d and d[key] is not None and not isinstance(d[key], str):
                raise ModelError(f"{kind}: {key} must be a string")
        params = d.get("parameters", {})
        if not isinstance(params, Mapping):
            raise ModelError(f"{kind}: parameters must be an object (name → value)")
        meta = d.get("metadata", {})
        if not isinstance(meta, Mapping):
            raise ModelError(f"{kind}: metadata must be an object (name → value)")
        results = d.get("results", [])
        if not isinstance(results, list) or not all(isinstance(r, str) for r in results):
            raise ModelError(f"{kind}: results must be a list of element names")
        rows = d.get("resultvalues", [])
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ModelError(f"{kind}: resultvalues must be a list of rows")
        for i, row in enumerate(rows):
            if len(row) > len(results):
                raise ModelError(f"{kind}: resultvalues row {i} has {len(row)} values for {len(results)} columns")
        try:
            when = When.parse(d["when"]) if "when" in d else WHEN_INFINITE
        except ModelError as exc:
            raise ModelError(f"{kind}: {exc}") from None
        return cls(
            kind=kind, verb=verb, label=d.get("label"), token=d.get("token"), when=when,
            registry=d.get("registry") or CORE_REGISTRY_URI, link=d.get("link"), export=d.get("export"),
            parameters={str(k): _wire_str(v) for k, v in params.items()},
            metadata={str(k): _wire_str(v) for k, v in meta.items()},
            results=list(results), resultvalues=[list(r) for r in rows], version=version,
        )


def _version(d: Mapping[str, Any], kind: str) -> int:
    raw = d.get("version", MPLANE_VERSION)
    # A JSON number, as every mPlane implementation writes it; "1" or true is not a version.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != int(raw):
        raise ModelError(f"{kind}: version must be a whole number, got {raw!r}")
    version = int(raw)
    if version > MPLANE_VERSION:
        raise ModelError(f"{kind}: version {version} is newer than supported ({MPLANE_VERSION})")
    return version


def _wire_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "*"
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


@dataclass
class ExceptionMessage:
    """An mPlane exception: ``{"exception": token, "message": text}``."""

    token: str | None
    message: str
    kind: str = "exception"

    def to_dict(self, token_only: bool = False) -> dict[str, Any]:
        return {"exception": self.token, "message": self.message}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExceptionMessage:
        token = d.get("exception")
        if token is not None and not isinstance(token, str):
            raise ModelError("exception: token must be a string or null")
        msg = d.get("message", "Unspecified exception")
        return cls(token, str(msg))


@dataclass
class Indirection:
    """Points to where the message for ``token`` can be fetched (``link``)."""

    link: str
    verb: str = "measure"
    token: str | None = None
    label: str | None = None
    version: int = MPLANE_VERSION
    kind: str = "indirection"

    def to_dict(self, token_only: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"indirection": self.verb, "version": self.version, "link": self.link}
        if self.token is not None:
            d["token"] = self.token
        if self.label is not None:
            d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Indirection:
        link = d.get("link")
        if not isinstance(link, str):
            raise ModelError("indirection: link is required")
        return cls(link, str(d["indirection"]), d.get("token"), d.get("label"), _version(d, "indirection"))


@dataclass
class Envelope:
    """A list of messages sent together (``{"envelope": "message", "contents": [...]}``)."""

    contents: list[Message] = field(default_factory=list)
    content_type: str = "message"
    token: str | None = None
    label: str | None = None
    when: When | None = None
    version: int = MPLANE_VERSION
    kind: str = "envelope"

    def to_dict(self, token_only: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"envelope": self.content_type, "version": self.version,
                             "contents": [m.to_dict(token_only) for m in self.contents]}
        if self.token is not None:
            d["token"] = self.token
        if self.when is not None:
            d["when"] = str(self.when)
        if self.label is not None:
            d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], depth: int = 0) -> Envelope:
        contents = d.get("contents")
        if not isinstance(contents, list):
            raise ModelError("envelope: contents must be a list of messages")
        if depth > 4:
            raise ModelError("envelope: nested too deeply")
        version = _version(d, "envelope")
        msgs = []
        for i, item in enumerate(contents):
            try:
                msgs.append(from_dict(item, depth + 1))
            except ModelError as exc:
                raise ModelError(f"envelope item {i}: {exc}") from None
        when = When.parse(d["when"]) if "when" in d else None
        return cls(msgs, str(d["envelope"]), d.get("token"), d.get("label"), when, version)


Message = Statement | ExceptionMessage | Envelope | Indirection


def from_dict(d: Any, depth: int = 0) -> Message:
    """Decode one mPlane message from its JSON object."""
    if not isinstance(d, Mapping):
        raise ModelError("an mPlane message is a JSON object")
    for kind in KINDS:
        if kind in d:
            if kind == "exception":
                return ExceptionMessage.from_dict(d)
            if kind == "envelope":
                return Envelope.from_dict(d, depth)
            if kind == "indirection":
                return Indirection.from_dict(d)
            return Statement.from_dict(d, kind)
    raise ModelError(f"cannot tell the message kind: no key among {', '.join(KINDS)}")


def load_json(text: str | bytes, what: str = "message") -> Any:
    """JSON from a peer: any decoding problem, and nesting too deep to decode, is a ModelError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ModelError(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"not JSON: {exc}") from None


def parse_json(text: str | bytes) -> Message:
    doc = load_json(text)
    try:
        return from_dict(doc)
    except RecursionError:
        raise ModelError("message: nested too deeply") from None


def to_json(msg: Message, token_only: bool = False) -> str:
    """The SDK's serialization (sorted keys, 2-space indent)."""
    return json.dumps(msg.to_dict(token_only), sort_keys=True, indent=2, separators=(",", ": "))


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def check_capability(cap: Statement, registries: RegistryStore) -> None:
    """Raise ModelError unless every element is known and every constraint parses."""
    if cap.kind != "capability":
        raise ModelError(f"expected a capability, got a {cap.kind}")
    what = f"capability {cap.label or '(no label)'}"
    try:
        reg = registries.get(cap.registry)
    except ModelError as exc:
        raise ModelError(f"{what}: {exc}") from None
    for name, text in cap.parameters.items():
        if name not in reg:
            raise ModelError(f"{what}: unknown element {name!r} in parameters (registry {reg.uri})")
        try:
            parse_constraint(reg.element(name), text)
        except ModelError as exc:
            raise ModelError(f"{what}: {exc}") from None
    for name in cap.metadata:
        if name not in reg:
            raise ModelError(f"{what}: unknown element {name!r} in metadata (registry {reg.uri})")
    for name in cap.results:
        if name not in reg:
            raise ModelError(f"{what}: unknown element {name!r} in results (registry {reg.uri})")
    if cap.resultvalues:
        raise ModelError(f"{what}: a capability cannot carry result values")


def match_specification(spec: Statement, cap: Statement, registries: RegistryStore,
                        tzero: datetime | None = None) -> None:
    """Raise ModelError (which parameter, which constraint, which scope) unless ``spec``
    is a valid request of ``cap``."""
    tzero = tzero or datetime.now(UTC)
    what = f"specification for {cap.label or 'capability'}"
    if spec.kind != "specification":
        raise ModelError(f"expected a specification, got a {spec.kind}")
    if spec.verb != cap.verb:
        raise ModelError(f"{what}: verb {spec.verb!r} does not match the capability's {cap.verb!r}")
    if spec.registry != cap.registry:
        raise ModelError(f"{what}: registry {spec.registry} differs from the capability's {cap.registry}")
    reg = registries.get(cap.registry)
    missing = [p for p in cap.parameters if p not in spec.parameters]
    if missing:
        raise ModelError(f"{what}: missing parameter {missing[0]}")
    extra = [p for p in spec.parameters if p not in cap.parameters]
    if extra:
        raise ModelError(f"{what}: unexpected parameter {extra[0]} (not in the capability)")
    if sorted(spec.results) != sorted(cap.results):
        lack = [r for r in cap.results if r not in spec.results]
        more = [r for r in spec.results if r not in cap.results]
        detail = f"missing result column {lack[0]}" if lack else f"unexpected result column {more[0]}"
        raise ModelError(f"{what}: {detail}")
    for name, ctext in cap.parameters.items():
        elem = reg.element(name)
        constraint = parse_constraint(elem, ctext)
        vtext = spec.parameters[name]
        if vtext == "*":
            raise ModelError(f"{what}: parameter {name} has no value")
        try:
            value = elem.parse(vtext)
        except ModelError as exc:
            raise ModelError(f"{what}: parameter {name}: {exc}") from None
        if not constraint.met_by(value):
            raise ModelError(f"{what}: parameter {name} value {vtext} violates constraint {constraint}")
    why = cap.when.contains(spec.when, tzero)
    if why:
        raise ModelError(f"{what}: temporal scope {str(spec.when).strip()!r} is not within "
                         f"{str(cap.when).strip()!r}: {why}")


def capability_matches_label(cap_label: str | None, spec_label: str | None) -> bool:
    """True if ``spec_label`` names ``cap_label`` directly or with the SDK client's ``-N`` suffix."""
    if cap_label is None or spec_label is None:
        return False
    if spec_label == cap_label:
        return True
    rest = spec_label[len(cap_label):]
    return spec_label.startswith(cap_label) and len(rest) > 1 and rest[0] == "-" and rest[1:].isdigit()

