"""What both RPC clients share, without any I/O: URL failover and reply decoding.

Behaviour follows DIRAC's ``TornadoBaseClient``: a URL that cannot be reached is banned
and the next one tried; when every URL is banned the list starts over.  Only failures
that prove the call never reached a server (connection refused, DNS, TLS handshake,
HTTP 503) move on to the next URL: a call that may have run is never sent twice.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ccnet.rpc.codec import CodecError, JCodec
from ccnet.rpc.result import S_ERROR, isReturnStructure, strip_private

__all__ = [
    "DEFAULT_TIMEOUT",
    "RPCClientBase",
    "RETRY_STATUSES",
    "URLRotation",
    "call_fields",
    "decode_reply",
    "service_urls",
]

# DIRAC's default RPC timeout (seconds).
DEFAULT_TIMEOUT = 600.0
# Statuses that say the call was not run: safe to try the next URL.
RETRY_STATUSES = frozenset({503})


def service_urls(url_or_urls: str | Iterable[str]) -> list[str]:
    """A list of service URLs from one URL, a comma separated string or an iterable."""
    if isinstance(url_or_urls, str):
        items = url_or_urls.split(",")
    else:
        items = list(url_or_urls)
    urls = [u.strip().rstrip("/") for u in items if u and u.strip()]
    if not urls:
        raise ValueError("at least one https://host:port/System/Component URL")
    for url in urls:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"an https:// URL, not {url!r}")
    return urls


class URLRotation:
    """The order in which to try URLs, with a ban list (DIRAC semantics)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.banned: set[str] = set()

    def candidates(self) -> list[str]:
        """URLs to try now, in order; resets the ban list once everything is banned."""
        left = [u for u in self.urls if u not in self.banned]
        if not left:
            self.banned.clear()
            left = list(self.urls)
        return left

    def ban(self, url: str) -> None:
        self.banned.add(url)

    def succeeded(self, url: str) -> None:
        self.banned.discard(url)


def call_fields(
    method: str,
    args: Sequence[Any],
    codec: JCodec,
    *,
    client_vo: str | None = None,
    extra_credentials: Any = None,
    raw_content: bool = False,
) -> dict[str, str]:
    """The form fields of one call, as DIRAC's client sends them."""
    fields = {"method": method, "args": codec.encode(list(args))}
    if client_vo:
        fields["clientVO"] = client_vo
    if extra_credentials is not None:
        fields["extraCredentials"] = codec.encode(extra_credentials)
    if raw_content:
        fields["rawContent"] = "True"
    return fields


class RPCClientBase:
    """Settings and call shaping shared by the reactor client and the blocking one."""

    def __init__(
        self,
        url_or_urls: str | Iterable[str],
        *,
        ca: Any,
        timeout: float,
        clientVO: str | None,  # noqa: N803 (DIRAC keyword)
        extraCredentials: Any,  # noqa: N803 (DIRAC keyword)
        codec: JCodec | None,
    ) -> None:
        if ca is None:
            raise ValueError("ca= (a CA bundle file or folder) is required to verify the server")
        self.urls = service_urls(url_or_urls)
        self.rotation = URLRotation(self.urls)
        self.timeout = timeout
        self.clientVO = clientVO
        self.extraCredentials = extraCredentials
        self.codec = codec or JCodec()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # client.whoami() is sugar for client.executeRPC("whoami"), as in DIRAC.
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.executeRPC, name)  # type: ignore[attr-defined]

    def _fields(self, method: str, args: tuple[Any, ...], raw: bool) -> dict[str, str]:
        return call_fields(
            method,
            args,
            self.codec,
            client_vo=self.clientVO,
            extra_credentials=self.extraCredentials,
            raw_content=raw,
        )


def _fallback_message(status: int, url: str, method: str) -> dict[str, Any]:
    # DIRAC's client messages, used when the body is not our S_ERROR JSON.
    if status == 401:
        return S_ERROR(errno.EACCES, f"No access to {url}")
    if status == 404:
        return S_ERROR(errno.ENOENT, f"{url} is not found")
    if status == 501:
        return S_ERROR(errno.ENOSYS, f"{method} is not implemented")
    return S_ERROR(errno.EIO, f"HTTP {status} from {url}")


def decode_reply(status: int, body: bytes, url: str, method: str, codec: JCodec) -> dict[str, Any]:
    """The S_OK/S_ERROR dict for one HTTP reply (any status)."""
    decoded: Any
    try:
        decoded = codec.decode(body) if body else None
    except CodecError:
        decoded = None
    if status == 200:
        if isReturnStructure(decoded):
            return strip_private(decoded)
        if decoded is None and body:
            return S_ERROR(errno.EPROTO, f"{url} sent a reply that is not JEncode JSON")
        # A DIRAC service may return a bare value; keep it visible to the caller.
        return {"OK": True, "Value": decoded}
    if isReturnStructure(decoded) and not decoded["OK"]:
        return strip_private(decoded)
    return _fallback_message(status, url, method)
