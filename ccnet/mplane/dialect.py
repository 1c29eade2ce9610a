"""The two wire dialects of mPlane over HTTP that ccnet speaks: the SDK's and the RI fork's.

Pure: bodies in, messages out (and back). Both dialects use the same component paths
(``register/capability``, ``show/specification``, ``register/result``) and differ in body
shape; the client side differs in paths too:

========================  ============================================  ==========================================
                          SDK 0.9 (``mplane-sdk``)                      RI fork (seed 000, ``stepenta/RI``)
========================  ============================================  ==========================================
capability registration   an envelope (or one capability)               a JSON array of capabilities
specifications polled     an envelope                                   a JSON array (``[]`` when none)
capability listing        ``GET /capability``: an envelope              ``GET /show/capability``:
                                                                        ``{"<component id>": [capabilities]}``
specification submission  a specification                               ``{"<component id>": specification}``
registry ``…/core``       the SDK core registry                         the RI's 2014 ``registry.json``
========================  ============================================  ==========================================

A peer's dialect is decided from what it sends (a registration body that is an array, a
submission keyed by component) or, for listings, from the path it reads; a component's
dialect is remembered with it. Inside ccnet every statement names the registry it really
uses: :func:`from_wire` turns an RI peer's "core" into :data:`RI_REGISTRY_URI`, and
:func:`to_wire` turns it back for that peer. Clients get :func:`for_client`:
the statement re-expressed against the registry their dialect calls "core", or ``None``
when they could not parse it (an SDK or RI client fails on the whole listing at the first
element it does not know).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ccnet.mplane.model import (
    CORE_REGISTRY_URI,
    KINDS,
    RI_REGISTRY_URI,
    Element,
    Envelope,
    Message,
    ModelError,
    RegistryStore,
    Statement,
    When,
    from_dict,
    render_time,
)

__all__ = [
    "Dialect",
    "express",
    "for_client",
    "to_wire",
    "from_wire",
    "parse_registration",
    "parse_submission",
    "registration_items",
    "ri_listing",
    "statement_elements",
    "wire_registry",
]


class Dialect(enum.Enum):
    SDK = "sdk"
    RI = "ri"


#: The registry each dialect means by ``http://ict-mplane.eu/registry/core``.
CORE_MEANS = {Dialect.SDK: CORE_REGISTRY_URI, Dialect.RI: RI_REGISTRY_URI}


def statement_elements(stmt: Statement) -> set[str]:
    """Every element a statement names (parameters, metadata, result columns)."""
    return set(stmt.parameters) | set(stmt.metadata) | set(stmt.results)


M = TypeVar("M", bound=Message)


def _map_registry(msg: M, old: str, new: str) -> M:
    if isinstance(msg, Statement):
        return replace(msg, registry=new) if msg.registry == old else msg
    if isinstance(msg, Envelope):
        return replace(msg, contents=[_map_registry(m, old, new) for m in msg.contents])
    return msg


# The RI writes its open-ended "now + inf ... future" as "now + 0s" (its duration parser
# reads "inf ... future" as no time at all) and its clients accept any specification that
# starts now; read such an RI capability as what it was written as.
_RI_OPEN_ENDED = When.parse("now + 0s")
_OPEN_ENDED = When.parse("now ... future")


def from_wire(msg: M, dialect: Dialect) -> M:
    """A message from a peer of ``dialect`` in ccnet's terms (the registry it really means)."""
    msg = _map_registry(msg, CORE_REGISTRY_URI, CORE_MEANS[dialect])
    if dialect is Dialect.RI and isinstance(msg, Statement) and msg.kind == "capability" \
            and msg.when == _RI_OPEN_ENDED:
        return replace(msg, when=_OPEN_ENDED)  # type: ignore[return-value]
    return msg


def to_wire(msg: M, dialect: Dialect) -> M:
    """A message for a peer of ``dialect`` (a component, about its own capabilities): the
    inverse of :func:`from_wire`."""
    return _map_registry(msg, CORE_MEANS[dialect], CORE_REGISTRY_URI)


def for_client(stmt: Statement, dialect: Dialect, registries: RegistryStore) -> Statement | None:
    """``stmt`` as a client of ``dialect`` can parse it, or None if it cannot.

    Statements whose elements all lie in the registry the dialect calls "core" are shown
    as core statements; a statement of an operator registry served at its URL is shown as
    it is (the client can load that registry); anything else is left out.
    """
    target = registries.get(CORE_MEANS[dialect])
    if stmt.registry == target.uri or statement_elements(stmt) <= target.elements.keys():
        return replace(stmt, registry=CORE_REGISTRY_URI)
    if registries.fetchable(stmt.registry):
        return stmt
    return None


def wire_registry(uri: str) -> str:
    """How a peer names registry ``uri``: each dialect's own core is "core" on the wire."""
    return CORE_REGISTRY_URI if uri in CORE_MEANS.values() else uri


def express(stmt: Statement, uri: str, registries: RegistryStore) -> Statement:
    """``stmt`` for a peer that means registry ``uri``: named as that peer names it, and
    result values of elements that registry types differently re-written to fit it.

    The RI's registry types ``duration.ms`` and tstat's ``*.ms`` delays as times; ccnet
    measures them in milliseconds. They reach RI peers as that offset from 1970-01-01
    (a time the RI parses, and passes on, unlike a null). A value that cannot be
    expressed at all is sent as null."""
    out = replace(stmt, registry=wire_registry(uri))
    if not stmt.resultvalues or not registries.known(uri) or not registries.known(stmt.registry):
        return out
    source, target = registries.get(stmt.registry), registries.get(uri)
    retyped = [(i, source.element(name), target.element(name)) for i, name in enumerate(stmt.results)
               if name in source and name in target and source.element(name).prim != target.element(name).prim]
    if not retyped:
        return out
    rows = [list(row) for row in stmt.resultvalues]
    for row in rows:
        for i, was, now in retyped:
            if i < len(row) and row[i] is not None:
                row[i] = _retyped(str(row[i]), was, now)
    return replace(out, resultvalues=rows)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _retyped(text: str, was: Element, now: Element) -> str | None:
    try:
        now.parse(text)
        return text
    except ModelError:
        pass
    unit = _UNITS.get(was.name.rsplit(".", 1)[-1])
    if now.prim == "time" and was.prim in ("natural", "real") and unit is not None:
        try:
            return render_time(_EPOCH + timedelta(seconds=float(text) * unit))
        except (ValueError, OverflowError):
            return None
    return None


def why_not_shown(stmt: Statement, dialect: Dialect, registries: RegistryStore) -> str:
    """One line for the log: which elements keep ``stmt`` from a client of ``dialect``."""
    target = registries.get(CORE_MEANS[dialect])
    missing = sorted(statement_elements(stmt) - target.elements.keys())
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f"its elements {shown} are not in the registry {dialect.value.upper()} peers know"


# ---------------------------------------------------------------------------
# Bodies


def _label_of(item: Any, index: int) -> str:
    label = item.get("label") if isinstance(item, Mapping) else None
    return label if isinstance(label, str) and label else f"message-{index}"


def parse_registration(doc: Any) -> tuple[Dialect, list[tuple[str, Message | ModelError]]]:
    """A registration body: its dialect, and each item (named by label) decoded or refused.

    An RI array is decoded item by item, so that one bad capability is refused on its own
    (the RI's outcome map has a reason per label) instead of failing the whole request.
    """
    if isinstance(doc, list):
        out: list[tuple[str, Message | ModelError]] = []
        for i, item in enumerate(doc):
            try:
                out.append((_label_of(item, i), from_wire(from_dict(item), Dialect.RI)))
            except ModelError as exc:
                out.append((_label_of(item, i), exc))
        return Dialect.RI, out
    msg = from_dict(doc)
    return Dialect.SDK, registration_items(msg.contents if isinstance(msg, Envelope) else [msg])


def registration_items(msgs: Iterable[Message]) -> list[tuple[str, Message | ModelError]]:
    """Messages to register, each named by its label (the key of its outcome)."""
    return [(getattr(m, "label", None) or f"message-{i}", m) for i, m in enumerate(msgs)]


def parse_submission(doc: Any) -> tuple[Dialect, str | None, Message]:
    """A client's POST body: (dialect, the component it names (RI), the message).

    The RI client wraps its specification in an object keyed by the component identity
    it was listed under; anything with an mPlane kind key is an SDK-style message.
    """
    if isinstance(doc, Mapping) and len(doc) == 1 and not any(k in doc for k in KINDS):
        ((component, inner),) = doc.items()
        if isinstance(inner, Mapping):
            return Dialect.RI, str(component), from_wire(from_dict(inner), Dialect.RI)
    return Dialect.SDK, None, from_dict(doc)


def ri_listing(shown: Iterable[tuple[str, Statement]]) -> dict[str, list[dict[str, Any]]]:
    """The RI client's capability listing: ``{"<component id>": [capability, ...]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for component, cap in shown:
        out.setdefault(component, []).append(cap.to_dict())
    return out
