"""Records of the ``pg_logforward`` PostgreSQL extension's UDP stream (pure, no Twisted).

With ``log-format = netstr`` the extension sends one datagram per log record: eleven
netstrings (``<byte length>:<bytes>,``) in a fixed order — elevel, sqlerrcode,
username, database, remotehost, funcname, message, detail, hint, context,
debug_query_string — every value as text (a NULL is ``0:,``) and the datagram cut
at 8192 bytes.  They are tnetstrings, so the original daemon parsed them with its
tnetstring reader (which also knows ``#`` ints, ``^`` floats, ``!`` booleans, ``~``
null, ``]`` lists and ``}`` dicts); :func:`pop` does the same.

:func:`parse_netstr` turns a datagram into the record dict the original's plugins
get: the fields above, ``elevel`` and ``sqlerrcode`` as ints, plus ``elevel_text``
from the original's level table.  Anything else raises :class:`RecordError`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIELDS", "PG_ELEVELS", "PG_ELEVELS_BY_NAME", "RecordError", "parse_netstr", "pop", "dump"]

#: The extension's field order (format_netstr in pg_logforward.c).
FIELDS = (
    "elevel", "sqlerrcode", "username", "database", "remotehost", "funcname",
    "message", "detail", "hint", "context", "debug_query_string",
)

#: The original daemon's level table (PostgreSQL 9.x elevel numbers).
PG_ELEVELS = {
    10: "DEBUG5", 11: "DEBUG4", 12: "DEBUG3", 13: "DEBUG2", 14: "DEBUG1", 15: "LOG",
    16: "COMMERROR", 17: "INFO", 18: "NOTICE", 19: "WARNING", 20: "ERROR", 21: "FATAL", 22: "PANIC",
}
PG_ELEVELS_BY_NAME = {v: k for k, v in PG_ELEVELS.items()}

_MAX_DEPTH = 32


class RecordError(ValueError):
    """The datagram is not a pg_logforward record."""


def pop(data: bytes, depth: int = 0) -> tuple[Any, bytes]:
    """Read one tnetstring from the front of ``data``: (value, the rest).

    Strings stay bytes (the extension sends the server's encoding)."""
    if depth > _MAX_DEPTH:
        raise RecordError("tnetstring nested too deeply")
    head, colon, rest = data.partition(b":")
    if not colon or not head.isdigit() or len(head) > 9:
        raise RecordError(f"no tnetstring length prefix at {data[:12]!r}")
    length = int(head)
    if len(rest) < length + 1:
        raise RecordError(f"tnetstring of {length} bytes cut short ({len(rest)} bytes left)")
    payload, kind, rest = rest[:length], rest[length:length + 1], rest[length + 1:]
    if kind == b",":
        return payload, rest
    if kind == b"#":
        try:
            return int(payload), rest
        except ValueError:
            raise RecordError(f"bad tnetstring integer {payload[:20]!r}") from None
    if kind == b"^":
        try:
            return float(payload), rest
        except ValueError:
            raise RecordError(f"bad tnetstring float {payload[:20]!r}") from None
    if kind == b"!":
        if payload not in (b"true", b"false"):
            raise RecordError(f"bad tnetstring boolean {payload[:20]!r}")
        return payload == b"true", rest
    if kind == b"~":
        if payload:
            raise RecordError("tnetstring null with a payload")
        return None, rest
    if kind == b"]":
        items = []
        while payload:
            value, payload = pop(payload, depth + 1)
            items.append(value)
        return items, rest
    if kind == b"}":
        result: dict[Any, Any] = {}
        while payload:
            key, payload = pop(payload, depth + 1)
            if not isinstance(key, bytes) or not payload:
                raise RecordError("tnetstring dict with a non-string key or no value")
            result[key], payload = pop(payload, depth + 1)
        return result, rest
    raise RecordError(f"unknown tnetstring type {kind!r}")


def dump(value: Any) -> bytes:
    """A tnetstring of ``value`` (bytes/str, int, float, bool, None, list, dict)."""
    if isinstance(value, bool):
        text = b"true" if value else b"false"
        return b"%d:%s!" % (len(text), text)
    if isinstance(value, int):
        text = str(value).encode()
        return b"%d:%s#" % (len(text), text)
    if isinstance(value, float):
        text = repr(value).encode()
        return b"%d:%s^" % (len(text), text)
    if value is None:
        return b"0:~"
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s," % (len(value), value)
    if isinstance(value, list):
        body = b"".join(dump(v) for v in value)
        return b"%d:%s]" % (len(body), body)
    if isinstance(value, dict):
        body = b"".join(dump(k) + dump(v) for k, v in value.items())
        return b"%d:%s}" % (len(body), body)
    raise TypeError(f"cannot write {type(value).__name__} as a tnetstring")


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def parse_netstr(data: bytes) -> dict[str, Any]:
    """The record in one ``log-format = netstr`` datagram; :class:`RecordError` says why not."""
    record: dict[str, Any] = {}
    rest = data
    for name in FIELDS:
        if not rest:
            break
        value, rest = pop(rest)
        record[name] = _text(value)
    if rest:
        raise RecordError(f"{len(rest)} bytes after the last field")
    if "elevel" not in record or "sqlerrcode" not in record:
        raise RecordError("no elevel and sqlerrcode fields")
    try:
        record["elevel"] = int(record["elevel"])
        record["sqlerrcode"] = int(record["sqlerrcode"])
    except (TypeError, ValueError):
        raise RecordError("elevel and sqlerrcode must be integers") from None
    if record["elevel"] not in PG_ELEVELS:
        raise RecordError(f"unknown elevel {record['elevel']}")
    record["elevel_text"] = PG_ELEVELS[record["elevel"]]
    for name in FIELDS:  # a shorter record (older extension) still has every key
        record.setdefault(name, None)
    return record
