"""DIRAC return structures: ``S_OK`` / ``S_ERROR`` and the one place error replies are built.

Pure module.  A return structure is ``{"OK": True, "Value": v}`` or
``{"OK": False, "Message": str, "Errno": int}``; ``CallStack`` and ``ExecInfo`` never
leave the server.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ErrorReply",
    "S_ERROR",
    "S_OK",
    "as_return_structure",
    "error_reply",
    "isReturnStructure",
    "strip_private",
]

# Keys a server-side S_ERROR may carry that must not reach the client.
_PRIVATE_KEYS = ("CallStack", "ExecInfo")


def S_OK(value: Any = None) -> dict[str, Any]:
    """A successful return structure."""
    return {"OK": True, "Value": value}


def S_ERROR(errno_or_message: int | str = "", message: str = "") -> dict[str, Any]:
    """A failed return structure: ``S_ERROR("text")`` or ``S_ERROR(errno.EACCES, "text")``."""
    if isinstance(errno_or_message, int) and not isinstance(errno_or_message, bool):
        return {"OK": False, "Message": message or _errno.errorcode.get(errno_or_message, ""),
                "Errno": errno_or_message}
    text = str(errno_or_message)
    if message:
        text = f"{text}: {message}" if text else message
    return {"OK": False, "Message": text, "Errno": 0}


def isReturnStructure(obj: Any) -> bool:
    """True when ``obj`` is an S_OK/S_ERROR dict (DIRAC's test, same name)."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("OK"), bool):
        return False
    return "Value" in obj if obj["OK"] else "Message" in obj


def strip_private(result: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a return structure without CallStack/ExecInfo."""
    return {k: v for k, v in result.items() if k not in _PRIVATE_KEYS}


def as_return_structure(value: Any) -> dict[str, Any]:
    """Wrap a plain export result in S_OK; clean an existing return structure."""
    if isReturnStructure(value):
        return strip_private(value)
    return S_OK(value)


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP status with its S_ERROR body: the only way the server reports a failure."""

    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.body["Message"])


# HTTP status -> errno a DIRAC client associates with it.
_STATUS_ERRNO = {
    400: _errno.EINVAL,
    401: _errno.EACCES,
    404: _errno.ENOENT,
    405: _errno.EINVAL,
    413: _errno.EFBIG,
    500: _errno.EIO,
    501: _errno.ENOSYS,
    503: _errno.EAGAIN,
}


def error_reply(status: int, message: str) -> ErrorReply:
    """The reply for a request ccnet refuses or fails: status code + S_ERROR JSON body."""
    return ErrorReply(status, S_ERROR(_STATUS_ERRNO.get(status, _errno.EIO), message))
