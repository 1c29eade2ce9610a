"""From form fields to a call plan, or to the error reply and status code.

Pure module: the HTTP adapter (:mod:`ccnet.rpc.resource`) extracts the form fields and
the peer identity, this module decides everything else, in DIRAC's order:

====================================================  ======  ==========================
situation                                             status  body
====================================================  ======  ==========================
``method`` field missing                              400     S_ERROR
no ``export_<method>``                                501     S_ERROR(ENOSYS)
credentials refused (proxy not allowed, bad forward)  401     S_ERROR(EACCES)
not authorized by the method's rules                  401     S_ERROR(EACCES)
``args`` not a JEncode list                           400     S_ERROR(EINVAL)
``types_<method>`` or arity mismatch                  200     S_ERROR(EINVAL)
====================================================  ======  ==========================
"""

from __future__ import annotations

import errno
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ccnet.identity import Identity, UserMap, authorize
from ccnet.rpc.codec import CodecError, JCodec
from ccnet.rpc.credentials import Credentials, CredentialsError, build_credentials
from ccnet.rpc.result import S_ERROR, ErrorReply, error_reply

__all__ = [
    "DEFAULT_RULES",
    "CallPlan",
    "CallRequest",
    "ExportSpec",
    "MethodTable",
    "blocking",
    "in_reactor",
    "plan_call",
]

# ccnet decision: a method with no rule anywhere needs a registered caller (DIRAC would
# let anyone in); "all" must be written out.
DEFAULT_RULES: tuple[str, ...] = ("authenticated",)

_EXPORT = "export_"
_FINISH = "finish_"
_BLOCKING_ATTR = "ccnet_blocking"
_FALSE_WORDS = {"", "0", "false", "no", "off", "none"}

F = TypeVar("F", bound=Callable[..., Any])


def blocking(func: F) -> F:
    """Mark an export (or ``initializeHandler``) as blocking: it runs in the RPC thread pool."""
    setattr(func, _BLOCKING_ATTR, True)
    return func


def in_reactor(func: F) -> F:
    """Mark an export as non-blocking even when its class sets ``blocking = True``."""
    setattr(func, _BLOCKING_ATTR, False)
    return func


def is_blocking(func: Any, class_default: bool) -> bool:
    """Whether ``func`` must run in the thread pool."""
    if isinstance(func, (classmethod, staticmethod)):
        func = func.__func__
    marked = getattr(func, _BLOCKING_ATTR, None)
    return class_default if marked is None else bool(marked)


@dataclass(frozen=True)
class ExportSpec:
    """One exported method of a service."""

    name: str
    rules: tuple[str, ...]
    types: tuple[Any, ...] | None
    blocking: bool
    signature: inspect.Signature | None
    min_args: int = 0
    max_args: int | None = None  # None: *args
    has_finish: bool = False  # the class defines finish_<name>

    @property
    def attr(self) -> str:
        return _EXPORT + self.name

    @property
    def finish_attr(self) -> str:
        return _FINISH + self.name


class MethodTable:
    """The exported methods of a service class with their rules, computed once."""

    def __init__(
        self,
        cls: type,
        config_rules: Mapping[str, Iterable[str]] | None = None,
        default_rules: Iterable[str] = DEFAULT_RULES,
    ) -> None:
        cfg = {k.lower(): tuple(v) for k, v in (config_rules or {}).items()}
        class_blocking = bool(getattr(cls, "blocking", False))
        fallback = cfg.get("default")
        if fallback is None:
            class_default = getattr(cls, "auth_Default", None)
            fallback = tuple(class_default) if class_default is not None else tuple(default_rules)
        self._exports: dict[str, ExportSpec] = {}
        for attr in dir(cls):
            if not attr.startswith(_EXPORT) or len(attr) == len(_EXPORT):
                continue
            func = getattr(cls, attr)
            if not callable(func):
                continue
            name = attr[len(_EXPORT) :]
            rules = cfg.get(name.lower())
            if rules is None:
                own = getattr(cls, f"auth_{name}", None)
                rules = tuple(own) if own is not None else fallback
            types = getattr(cls, f"types_{name}", None)
            try:
                signature: inspect.Signature | None = inspect.signature(func)
            except (TypeError, ValueError):
                signature = None
            min_args, max_args = _arity(signature)
            self._exports[name] = ExportSpec(
                name=name,
                rules=tuple(rules),
                types=tuple(types) if types is not None else None,
                blocking=is_blocking(inspect.getattr_static(cls, attr), class_blocking),
                signature=signature,
                min_args=min_args,
                max_args=max_args,
                has_finish=callable(getattr(cls, _FINISH + name, None)),
            )
        unknown = set(cfg) - {n.lower() for n in self._exports} - {"default"}
        self.unknown_rules = sorted(unknown)

    def get(self, name: str) -> ExportSpec | None:
        return self._exports.get(name)

    def names(self) -> list[str]:
        return sorted(self._exports)


@dataclass(frozen=True)
class CallRequest:
    """The form fields of one RPC POST, as text."""

    method: str | None
    args: str | None = None
    extra_credentials: str | None = None
    client_vo: str | None = None
    raw_content: bool = False

    @classmethod
    def from_form(cls, form: Mapping[bytes, list[bytes]]) -> CallRequest:
        """Read the fields from twisted.web's ``request.args`` (bytes -> list of bytes)."""

        def field(name: bytes) -> str | None:
            values = form.get(name)
            if not values:
                return None
            return values[0].decode("utf-8", "replace")

        raw = field(b"rawContent")
        return cls(
            method=field(b"method"),
            args=field(b"args"),
            extra_credentials=field(b"extraCredentials"),
            client_vo=field(b"clientVO"),
            raw_content=raw is not None and raw.strip().lower() not in _FALSE_WORDS,
        )


@dataclass(frozen=True)
class CallPlan:
    """A call that may go ahead."""

    export: ExportSpec
    args: tuple[Any, ...]
    credentials: Credentials
    raw_content: bool
    client_vo: str | None


def _arity(signature: inspect.Signature | None) -> tuple[int, int | None]:
    """(minimum, maximum or None) positional arguments after ``self``."""
    if signature is None:
        return 0, None
    params = list(signature.parameters.values())[1:]  # exports are methods: skip self
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = sum(1 for p in positional if p.default is p.empty)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return required, None
    return required, len(positional)


def _check_types(spec: ExportSpec, args: tuple[Any, ...]) -> str | None:
    if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
        return f"{spec.name}: wrong number of arguments ({len(args)} given)"
    if spec.types is None:
        return None
    if len(args) < len(spec.types):
        return f"{spec.name} expects at least {len(spec.types)} arguments"
    for index, expected in enumerate(spec.types):
        allowed = tuple(expected) if isinstance(expected, (list, tuple)) else (expected,)
        # JSON has no tuples: a tuple parameter arrives as a list.
        if tuple in allowed:
            allowed = allowed + (list,)
        if not isinstance(args[index], allowed):
            return f"Type mismatch in parameter {index}"
    return None


def plan_call(
    request: CallRequest,
    table: MethodTable,
    identity: Identity | None,
    users: UserMap,
    codec: JCodec,
    *,
    allow_proxies: bool = True,
    now: Callable[[], datetime] | None = None,
) -> CallPlan | ErrorReply:
    """Decide what to do with one call; see the module table for the outcomes."""
    if not request.method:
        return error_reply(400, "missing 'method' field")
    spec = table.get(request.method)
    if spec is None:
        return error_reply(501, f"{request.method} is not implemented")

    extra: Any = None
    if request.extra_credentials:
        try:
            extra = codec.decode(request.extra_credentials)
        except CodecError as exc:
            return error_reply(401, f"unreadable extraCredentials: {exc}")
    try:
        credentials = build_credentials(
            identity, users, extra, allow_proxies=allow_proxies, now=now
        )
    except CredentialsError as exc:
        return error_reply(401, str(exc))
    if not authorize(credentials.identity, credentials.record, spec.rules):
        who = credentials.cred_dict["DN"] or "anonymous caller"
        return error_reply(401, f"{who} is not authorized to call {request.method}")

    if request.args is None or request.args == "":
        args: tuple[Any, ...] = ()
    else:
        try:
            decoded = codec.decode(request.args)
        except CodecError as exc:
            return error_reply(400, f"undecodable 'args': {exc}")
        if not isinstance(decoded, list):
            return error_reply(400, "'args' must be a JEncode list")
        args = tuple(decoded)
    problem = _check_types(spec, args)
    if problem is not None:
        return ErrorReply(200, S_ERROR(errno.EINVAL, problem))
    return CallPlan(
        export=spec,
        args=args,
        credentials=credentials,
        raw_content=request.raw_content,
        client_vo=request.client_vo,
    )
