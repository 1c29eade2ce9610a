"""The one request class with a body limit, for every ccnet HTTP(S) site.

Plain twisted.web spools any request body to a temporary file before a resource can look
at it, so a client could fill the disk or the memory. :class:`BoundedRequest` keeps
nothing of a body once it is over ``max_body`` (announced or counted so far) and marks
the request ``body_too_large``. What the client is told depends on the site:

* by default (``answer_in_protocol = False``) a raw ``413`` goes out at once and the
  connection is closed — the request is never handed to a resource;
* a site whose protocol has its own error form (the RPC site answers DIRAC's S_ERROR with
  status 413) sets ``answer_in_protocol = True`` and its resource reads ``body_too_large``.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

from twisted.web.server import Request

from ccnet.identity import Identity
from ccnet.tls import peer_identity

__all__ = ["BoundedRequest", "DEFAULT_MAX_BODY", "bounded_request", "request_identity"]

#: Body limit of sites whose protocol sets none.
DEFAULT_MAX_BODY = 16 * 1024 * 1024

_TOO_LARGE = b"request body too large\n"


class _Discard(io.RawIOBase):
    """The body of a request that is already too large: takes writes, keeps nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return b""


class BoundedRequest(Request):
    """A request whose body may not exceed ``max_body`` bytes (see the module)."""

    max_body: ClassVar[int] = DEFAULT_MAX_BODY
    answer_in_protocol: ClassVar[bool] = False
    body_too_large = False
    _body_seen = 0

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        if length is not None and length > self.max_body:
            self._too_large()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self.body_too_large:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self._too_large()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802 (Twisted API)
        # twisted.web parses the content type of every POST with the email package (about
        # a tenth of a millisecond) only to find form bodies; JSON bodies (mPlane, most of
        # the traffic) skip that. Form posts (the console, RPC) are parsed as before.
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        self._parsePOSTFormSubmission = self._parsePOSTFormSubmission and ctype is not None and _is_form(ctype[0])
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self.body_too_large and not self.answer_in_protocol:
            return  # answered (413) and closed already
        super().process()

    def _too_large(self) -> None:
        if self.body_too_large:
            return
        self.body_too_large = True
        if self.content is not None:
            self.content.close()
        self.content = _Discard()  # type: ignore[assignment]
        if self.answer_in_protocol:
            return
        transport: Any = self.channel.transport
        # Written raw (as twisted.web's own 400 for broken requests): the request has not
        # been parsed yet, and the connection is closed right after.
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: text/plain\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE)
        )
        transport.loseConnection()


def _is_form(content_type: bytes) -> bool:
    """Might twisted.web take this content type for a form body? (a superset: it decides)"""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in (b"application/x-www-form-urlencoded", b"multipart/form-data")


def request_identity(request: Request) -> Identity | None:
    """The caller's verified certificate identity (cached per TLS connection); never
    taken from a header. None without TLS or without a client certificate."""
    transport = getattr(request.channel, "transport", None)
    return peer_identity(transport) if transport is not None else None


def bounded_request(max_body: int, base: type[BoundedRequest] = BoundedRequest) -> type[BoundedRequest]:
    """``base`` with its body limit set to ``max_body`` bytes."""
    return type(base.__name__, (base,), {"max_body": max_body})
