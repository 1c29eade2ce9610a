"""Field checks and infofile payload coding shared by handlers and daemons (pure).

The original handlers indexed message dicts directly, so a missing key crashed
them.  Here every field a handler reads goes through these helpers, which
raise :class:`~ccnet.cc.handler.HandlerError` with a message naming the field:
the server turns that into an ``error`` reply.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import math
import zlib
from collections.abc import Mapping
from typing import Any

from ccnet.cc.handler import HandlerError

__all__ = [
    "COMPRESSIONS",
    "MISSING",
    "field_str",
    "field_number",
    "field_dict",
    "b64decode_lenient",
    "b64encode_py2",
    "compress",
    "decompress",
    "infofile_content",
]

MISSING: Any = object()

#: ``comp`` values of pub.infofile / pub.logtail ('' = none).
COMPRESSIONS = ("", "none", "gzip", "bzip2")


def _where(req: Mapping[str, Any]) -> str:
    req_type = req.get("req")
    return str(req_type) if isinstance(req_type, str) else "message"


def field_str(p: Mapping[str, Any], key: str, default: Any = MISSING, max_len: int = 4096) -> str:
    """A string field; ``HandlerError`` when missing (and no default) or not a string."""
    value = p.get(key, default)
    if value is MISSING:
        raise HandlerError(f"{_where(p)}: missing field {key!r}")
    if not isinstance(value, str):
        raise HandlerError(f"{_where(p)}: field {key!r} must be a string")
    if len(value) > max_len:
        raise HandlerError(f"{_where(p)}: field {key!r} longer than {max_len} characters")
    return value


def field_number(p: Mapping[str, Any], key: str, default: Any = MISSING) -> float:
    value = p.get(key, default)
    if value is MISSING:
        raise HandlerError(f"{_where(p)}: missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # The original infosender sends mtime as a float; a numeric string is accepted too.
        if isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(out):
                    return out
        raise HandlerError(f"{_where(p)}: field {key!r} must be a number")
    out = float(value)
    if not math.isfinite(out):
        raise HandlerError(f"{_where(p)}: field {key!r} must be a finite number")
    return out


def field_dict(p: Mapping[str, Any], key: str, default: Any = MISSING) -> dict[str, Any]:
    value = p.get(key, default)
    if value is MISSING:
        raise HandlerError(f"{_where(p)}: missing field {key!r}")
    if not isinstance(value, dict):
        raise HandlerError(f"{_where(p)}: field {key!r} must be an object")
    return value


def b64decode_lenient(data: str) -> bytes:
    """Python 2 ``decode('base64')`` style: newlines and missing padding tolerated."""
    clean = "".join(data.split())
    clean += "=" * (-len(clean) % 4)
    try:
        return base64.b64decode(clean, validate=True)
    except (binascii.Error, ValueError):
        raise HandlerError("field 'data' is not valid base64") from None


def b64encode_py2(data: bytes) -> str:
    """Base64 with a newline every 76 characters, as py2 ``encode('base64')``."""
    return base64.encodebytes(data).decode("ascii")


def compress(data: bytes, comp: str, level: int = 6) -> bytes:
    if comp in ("", "none"):
        return data
    if comp == "gzip":
        # mtime=0: the same content always compresses to the same bytes.
        return gzip.compress(data, compresslevel=level, mtime=0)
    if comp == "bzip2":
        return bz2.compress(data, compresslevel=max(1, level))
    raise ValueError(f"unknown compression {comp!r}")


def decompress(data: bytes, comp: str, limit: int) -> bytes:
    """Decompress, refusing output over ``limit`` bytes (a small bomb must not fill memory)."""
    if comp in ("", "none"):
        return data
    try:
        if comp == "gzip":
            d: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif comp == "bzip2":
            d = bz2.BZ2Decompressor()
        else:
            raise HandlerError(f"unknown compression {comp!r} (expected one of none, gzip, bzip2)")
        out = d.decompress(data, limit + 1)
    except (OSError, ValueError, zlib.error) as exc:
        raise HandlerError(f"cannot decompress {comp} payload: {exc}") from None
    if len(out) > limit:
        raise HandlerError(f"decompressed payload larger than {limit} bytes")
    return bytes(out)


def infofile_content(p: Mapping[str, Any], blob: bytes | None) -> tuple[bytes, str]:
    """The (still compressed) body of a pub.infofile/pub.logtail and its ``comp``."""
    comp = field_str(p, "comp", "")
    if comp not in COMPRESSIONS:
        raise HandlerError(f"{_where(p)}: field 'comp' must be one of none, gzip, bzip2, got {comp!r}")
    data = field_str(p, "data", "", max_len=1 << 31)
    if data:
        return b64decode_lenient(data), comp
    return (blob if blob is not None else b""), comp
