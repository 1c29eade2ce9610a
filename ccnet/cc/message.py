"""CC wire messages: parse and serialize multipart frames (pure, no Twisted).

A CC message on the wire is ``[route_1 .. route_n, b'', type, json, signature, blob]``.
The route is every frame before the first empty frame; ``signature`` may be absent
(treated as ``b''``) and ``blob`` is optional.  An encrypted message carries the
literal ``ENC1`` in the json frame and the CMS envelope in the signature frame.

:func:`parse` never raises: it returns either a :class:`CCMessage` or an
:class:`Invalid` that says whether (and to which route) an error reply can be sent.
Error replies are built by :func:`error_reply` only, so every component answers
bad input with the same shape.
"""

from __future__ import annotations

import json
import re
import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TYPE_RE",
    "ENC1",
    "DEFAULT_MAX_BODY",
    "CCMessage",
    "Invalid",
    "BodyError",
    "parse",
    "valid_type",
    "decode_body",
    "encode_body",
    "make_body",
    "make_message",
    "error_body",
    "error_reply",
    "ACK_FIELD",
    "wants_replies",
]

#: Body field a sender sets (``"ack": true``) to say it reads what ccnet sends back beyond
#: the original CC's replies: acknowledgements and error replies.  ccnet's own daemons
#: and ``ccnet-cc`` set it; the original's daemons never do, so they get neither.
ACK_FIELD = "ack"

TYPE_RE = re.compile(r"^[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*\Z")
ENC1 = b"ENC1"
#: Default cap on json + signature + blob bytes of one message.
DEFAULT_MAX_BODY = 32 * 1024 * 1024


def valid_type(name: str) -> bool:
    """True when ``name`` is a dotted CC message type (``pub.infofile``)."""
    return bool(TYPE_RE.match(name))


@dataclass(frozen=True)
class CCMessage:
    """One framed CC message.  ``body`` is the json frame exactly as received,
    because signatures are computed over those bytes and proxies forward them
    unchanged."""

    route: tuple[bytes, ...]
    type: str
    body: bytes
    signature: bytes = b""
    blob: bytes | None = None
    #: Whether the original frames had a signature frame; keeps proxying byte-exact.
    has_sig_frame: bool = True
    #: The body decoded by :func:`parse` (saves a second JSON decode); not compared.
    decoded: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def encrypted(self) -> bool:
        return self.body == ENC1

    @property
    def size(self) -> int:
        return len(self.body) + len(self.signature) + len(self.blob or b"")

    def frames(self) -> list[bytes]:
        """Serialize to multipart frames, route first."""
        out = list(self.route)
        out.append(b"")
        out.append(self.type.encode("ascii"))
        out.append(self.body)
        if self.has_sig_frame or self.signature or self.blob is not None:
            out.append(self.signature)
        if self.blob is not None:
            out.append(self.blob)
        return out

    def with_route(self, route: Sequence[bytes]) -> CCMessage:
        return CCMessage(
            tuple(route), self.type, self.body, self.signature, self.blob, self.has_sig_frame,
            self.decoded,
        )

    def payload(self) -> dict[str, Any]:
        """Decode the (unencrypted) json body; raises :class:`BodyError`.
        Returns a fresh dict each time (handlers may modify it)."""
        if self.decoded is not None:
            return dict(self.decoded)
        return decode_body(self.body, self.type)


@dataclass(frozen=True)
class Invalid:
    """A frame list that is not a usable CC message.

    ``replyable`` is true when the route and type were readable, so the sender
    can be told what was wrong with an error reply along ``route``.
    """

    reason: str
    route: tuple[bytes, ...] = ()
    type: str | None = None
    replyable: bool = False
    size: int = 0
    #: The json frame was readable and said ``"ack": true`` (see :func:`wants_replies`).
    wants_replies: bool = False


class BodyError(ValueError):
    """The json frame is not a valid CC body for its type frame."""


def parse(
    frames: Sequence[bytes], max_body: int = DEFAULT_MAX_BODY, check_body: bool = True
) -> CCMessage | Invalid:
    """Parse received frames (route included).  Never raises.

    ``check_body`` validates the json frame (UTF-8 object whose ``req`` equals
    the type frame) unless the message is encrypted, whose payload can only be
    checked after decryption.
    """
    if not all(type(f) is bytes for f in frames):
        try:
            frames = [bytes(f) for f in frames]
        except (TypeError, ValueError):
            return Invalid("frames are not bytes")
    size = sum(len(f) for f in frames)
    try:
        sep = frames.index(b"")
    except ValueError:
        return Invalid("no empty delimiter frame", size=size)
    route = tuple(frames[:sep])
    parts = frames[sep + 1 :]
    if not parts:
        return Invalid("no type frame", route, size=size)
    try:
        mtype = parts[0].decode("ascii")
    except UnicodeDecodeError:
        return Invalid("type frame is not ASCII", route, size=size)
    if not valid_type(mtype):
        return Invalid(f"invalid message type {mtype[:80]!r}", route, size=size)
    # Beyond here the type is known: the sender can be answered if it has a route.
    replyable = bool(route)

    def bad(reason: str, body: bytes | None = None) -> Invalid:
        return Invalid(reason, route, mtype, replyable, size, _opted_in(body, max_body))

    if len(parts) < 2:
        return bad("missing json frame")
    if len(parts) > 4:
        return bad(f"too many frames: {len(parts)} after the delimiter, at most 4", parts[1])
    body = parts[1]
    signature = parts[2] if len(parts) > 2 else b""
    blob = parts[3] if len(parts) > 3 else None
    msg_size = len(body) + len(signature) + len(blob or b"")
    if msg_size > max_body:
        return bad(f"message too large: {msg_size} bytes, limit {max_body}", body)
    decoded = None
    if check_body and body != ENC1:
        try:
            decoded = decode_body(body, mtype)
        except BodyError as e:
            return bad(str(e), body)
    return CCMessage(route, mtype, body, signature, blob, len(parts) > 2, decoded)


def _opted_in(body: bytes | None, max_body: int) -> bool:
    """Whether a json frame that failed validation still says ``"ack": true``.

    Read up to twice ``max_body``: the server caps single frames there (libzmq drops
    larger ones), so this never parses more than the socket already accepted."""
    if body is None or len(body) > 2 * max_body or b'"ack"' not in body:
        return False
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and wants_replies(obj)


def wants_replies(body: Mapping[str, Any] | None) -> bool:
    """True when a decoded body opted in to acknowledgements and error replies."""
    return body is not None and body.get(ACK_FIELD) is True


def decode_body(body: bytes, mtype: str) -> dict[str, Any]:
    """Validate and decode a json frame for message type ``mtype``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("json frame is not UTF-8") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise BodyError("json frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BodyError("json frame is not a JSON object")
    req = obj.get("req")
    if not isinstance(req, str):
        raise BodyError("json body has no \"req\" string")
    if req != mtype:
        raise BodyError(f"json req {req[:80]!r} does not match message type {mtype!r}")
    t = obj.get("time")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
        raise BodyError("json field \"time\" is not a number")
    for key in ("hostname", "blob_hash"):
        v = obj.get(key)
        if v is not None and not isinstance(v, str):
            raise BodyError(f"json field {key!r} is not a string")
    return obj


def encode_body(obj: Mapping[str, Any]) -> bytes:
    """Serialize a body dict to the json frame bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def make_body(
    req: str,
    fields: Mapping[str, Any] | None = None,
    hostname: str = "",
    now: float | None = None,
    blob_hash: str = "",
) -> dict[str, Any]:
    """A body dict with the base fields every CC message carries."""
    if not valid_type(req):
        raise ValueError(f"invalid CC message type {req!r}")
    obj: dict[str, Any] = {
        "req": req,
        "time": _time.time() if now is None else now,
        "hostname": hostname,
        "blob_hash": blob_hash,
    }
    if fields:
        obj.update(fields)
        obj["req"] = req
    return obj


def make_message(
    req: str,
    fields: Mapping[str, Any] | None = None,
    hostname: str = "",
    now: float | None = None,
    route: Sequence[bytes] = (),
    blob: bytes | None = None,
) -> CCMessage:
    """An unsigned message ready for :meth:`CCMessage.frames`."""
    body = make_body(req, fields, hostname, now)
    return CCMessage(tuple(route), req, encode_body(body), b"", blob)


def error_body(
    msg: str, orig_req: str | None = None, hostname: str = "", now: float | None = None
) -> dict[str, Any]:
    """Body of a CC ``error`` reply: ``{"req": "error", "msg": ..., "orig_req": ...}``."""
    fields: dict[str, Any] = {"msg": msg}
    if orig_req is not None:
        fields["orig_req"] = orig_req
    return make_body("error", fields, hostname, now)


def error_reply(
    route: Sequence[bytes],
    msg: str,
    orig_req: str | None = None,
    hostname: str = "",
    now: float | None = None,
) -> CCMessage:
    """The one place an (unsigned) CC ``error`` reply is built.

    The reply carries the request's whole route so it travels back over every hop.
    """
    body = error_body(msg, orig_req, hostname, now)
    return CCMessage(tuple(route), "error", encode_body(body), b"", None)
