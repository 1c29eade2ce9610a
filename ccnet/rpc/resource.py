"""The twisted.web side: ``POST /<System>/<Component>`` to a mounted service.

Thin adapter: it reads the form fields and the verified peer identity, lets
:func:`ccnet.rpc.dispatch.plan_call` decide, runs the call and writes the reply.
Every failure is an S_ERROR JSON body with DIRAC's status code, never an HTML page:

=====================================  ======
situation                              status
=====================================  ======
handled call (S_OK or S_ERROR)         200
``method`` missing / bad ``args``      400
no certificate / not authorized        401
unknown service path                   404
not POST                               405 (``Allow: POST``)
body over ``[rpc] max-body``           413
exception in the handler               500
no ``export_<method>``                 501
=====================================  ======

Results requested with ``rawContent`` (DIRAC ``receiveFile``) are written raw: bytes,
text, or a file object sent by a pull producer, so large files never sit in memory.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping
from typing import IO, Any
from urllib.parse import unquote, unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from ccnet.edge.request import BoundedRequest, bounded_request, request_identity
from ccnet.identity import Identity, UserMap
from ccnet.rpc.codec import CodecError, encode
from ccnet.rpc.credentials import TRUSTED_HOST
from ccnet.rpc.dispatch import CallPlan, CallRequest, plan_call
from ccnet.rpc.result import (
    S_ERROR,
    ErrorReply,
    as_return_structure,
    error_reply,
    isReturnStructure,
)
from ccnet.rpc.service import MountedService, RequestContext, ServiceInitError
from ccnet.store import StoreError

__all__ = ["RPCRequest", "RPCResource", "RPCSite", "request_factory"]

log = Logger(namespace="ccnet.rpc")

_JSON = b"application/json"
_OCTETS = b"application/octet-stream"


class RPCRequest(BoundedRequest):
    """The request class of the ``[rpc]`` site.

    * Its body limit (:class:`ccnet.edge.request.BoundedRequest`) is answered in the
      protocol: the resource sends S_ERROR with status 413.
    * It parses ``application/x-www-form-urlencoded`` bodies itself: twisted.web builds an
      ``email.message`` just to read the content type, a third of a small call's cost.
    """

    max_body = 10 * 1024 * 1024
    answer_in_protocol = True
    _form: dict[bytes, list[bytes]] | None = None
    _form_type: list[bytes] | None = None

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if (
            command == b"POST"
            and ctype
            and ctype[0].split(b";", 1)[0].strip().lower() == b"application/x-www-form-urlencoded"
            and self.content is not None
            and not self.body_too_large
        ):
            self.content.seek(0)
            self._form = _parse_form(self.content.read())
            self.content.seek(0)
            # Hidden from twisted.web's own body parsing, put back before rendering.
            self._form_type = ctype
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._form_type is not None:
            self.requestHeaders.setRawHeaders(b"content-type", self._form_type)
            args: dict[bytes, list[bytes]] = self.args if self.args is not None else {}
            for key, values in (self._form or {}).items():
                args.setdefault(key, []).extend(values)
            self.args = args  # type: ignore[assignment]
        super().process()


def _parse_form(raw: bytes) -> dict[bytes, list[bytes]]:
    """``parse_qs(raw, keep_blank_values=True)`` on bytes, for any %-escaped byte.

    ``parse_qs(bytes)`` re-encodes each value as ASCII and raises on ``%C3%AD`` (UTF-8
    text), which dropped the connection without a reply; bytes are kept as bytes here
    (and this is several times faster than a round trip through text for a small call).
    """
    form: dict[bytes, list[bytes]] = {}
    for field in raw.split(b"&"):
        if not field:
            continue
        name, _, value = field.partition(b"=")
        form.setdefault(_unquote_plus(name), []).append(_unquote_plus(value))
    return form


def _unquote_plus(text: bytes) -> bytes:
    if b"+" in text:
        text = text.replace(b"+", b" ")
    return unquote_to_bytes(text) if b"%" in text else text


class RPCSite(server.Site):
    """The ``[rpc]`` site: RPC requests, and no second access-log line per call
    (the resource logs one line with identity, method and status)."""

    def log(self, request: Any) -> None:
        return None


def request_factory(max_body: int) -> type[BoundedRequest]:
    """A ``Site.requestFactory`` enforcing ``max_body`` while the body arrives."""
    return bounded_request(max_body, RPCRequest)


class RPCResource(Resource):
    """Root of the ``[rpc]`` site: ``/<System>/<Component>`` routes to mounted services.

    Children added with ``putChild`` (``/health``) take precedence.
    """

    def __init__(
        self,
        services: Mapping[str, MountedService],
        users: Callable[[], UserMap],
        *,
        max_body: int = 10 * 1024 * 1024,
        allow_proxies: bool = True,
        trust_ssl_headers: bool = False,
        base_url: Callable[[server.Request], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.services = dict(services)
        self.max_body = max_body
        self.request_factory = request_factory(max_body)
        self._users = users
        self._allow_proxies = allow_proxies
        self._trust_ssl_headers = trust_ssl_headers
        self._base_url = base_url or _url_from_request
        self._clock = clock
        self._leaf = _CallResource(self)
        #: Told (service, method, status, seconds) once per call; the daemon feeds /metrics.
        self.on_call: Callable[[str, str, int, float], None] | None = None

    def make_site(self) -> RPCSite:
        """The Site to serve this resource with (body limit, fast form parsing, one log line)."""
        site = RPCSite(self, requestFactory=self.request_factory)
        site.displayTracebacks = False
        site.noisy = False
        return site

    def getChild(self, path: bytes, request: server.Request) -> Resource:  # noqa: N802
        return self._leaf

    def render(self, request: server.Request) -> bytes | int:
        return self._leaf.render(request)

    def counted_names(self, service: str, method: str) -> tuple[str, str]:
        """(service, method) as metrics and the console count them: ``-`` for names the
        services do not export, so a client cannot grow a label set without bound."""
        mounted = self.services.get(service)
        if mounted is None:
            return "-", "-"
        return service, method if mounted.table.get(method) is not None else "-"

    # -- helpers used by the leaf ----------------------------------------------------
    def identity(self, request: server.Request) -> Identity | None:
        peer = request_identity(request)
        if self._trust_ssl_headers and self._vouches(peer):
            forwarded = _identity_from_headers(request)
            if forwarded is not None:
                return forwarded
        return peer

    def _vouches(self, peer: Identity | None) -> bool:
        """Only a TLS peer mapped with TrustedHost (the proxy itself) may forward a client."""
        record = self._users().lookup(peer) if peer is not None else None
        return record is not None and TRUSTED_HOST in record.properties


class _CallResource(Resource):
    isLeaf = True

    def __init__(self, root: RPCResource) -> None:
        super().__init__()
        self._root = root

    def render(self, request: server.Request) -> bytes | int:
        call = _Call(self._root, request)
        return call.run()


def _url_from_request(request: server.Request) -> str:
    host = request.getHost()
    return f"https://{getattr(host, 'host', 'localhost')}:{getattr(host, 'port', 8443)}"


def _identity_from_headers(request: server.Request) -> Identity | None:
    # Only reached with trust-ssl-headers = yes: a TLS-terminating proxy vouches for it.
    # str keys: getHeader answers in the type it is asked with.
    verify = request.getHeader("x-ssl_client_verify") or request.getHeader("x-ssl-client-verify")
    pem = request.getHeader("x-ssl-cert")
    if verify != "SUCCESS" or not pem:
        return None
    try:
        return Identity.from_pem(unquote_to_bytes(pem).replace(b"\t", b"\n"))
    except ValueError:
        return None


class _Call:
    """One request's trip through the resource (kept off the resource: no shared state)."""

    def __init__(self, root: RPCResource, request: server.Request) -> None:
        self.root = root
        self.request = request
        self.started = root._clock()
        self.service = "-"
        self.method = "-"
        self.who = "-"
        self.finished = False
        self.gone = False

    # -- entry ------------------------------------------------------------------------
    def run(self) -> bytes | int:
        request = self.request
        segments = [*(request.prepath or [])[-1:], *(request.postpath or [])]
        name = "/".join(unquote(s.decode("utf-8", "replace")) for s in segments)
        self.service = name or "/"
        mounted = self.root.services.get(name)
        if mounted is None:
            return self.reply_error(error_reply(404, f"{_full_url(request)} is not found"))
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return self.reply_error(error_reply(405, "only POST is allowed on RPC services"))
        if self._too_large():
            return self.reply_error(
                error_reply(413, f"request body larger than {self.root.max_body} bytes")
            )
        call_request = CallRequest.from_form(request.args or {})
        self.method = call_request.method or "-"
        identity = self.root.identity(request)
        self.who = identity.dn if identity is not None else "anonymous"
        outcome = plan_call(
            call_request,
            mounted.table,
            identity,
            self.root._users(),
            mounted.codec,
            allow_proxies=self.root._allow_proxies,
        )
        if isinstance(outcome, ErrorReply):
            return self.reply_error(outcome)
        self.who = outcome.credentials.label
        address = request.getClientAddress()
        context = RequestContext(
            credentials=outcome.credentials,
            remote_address=(getattr(address, "host", ""), getattr(address, "port", 0)),
            method=outcome.export.name,
            client_vo=outcome.client_vo,
            base_url=self.root._base_url(request),
        )
        request.notifyFinish().addErrback(self._client_gone)
        d = mounted.call(outcome, context)
        d.addCallback(self._deliver, mounted, outcome)
        d.addErrback(self._failed)
        return server.NOT_DONE_YET

    def _too_large(self) -> bool:
        request = self.request
        if getattr(request, "body_too_large", False):
            return True
        length = request.getHeader(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.root.max_body:
            return True
        content = request.content
        if content is not None and content.seekable():
            size = content.seek(0, os.SEEK_END)
            content.seek(0)
            return bool(size > self.root.max_body)
        return False

    def _client_gone(self, failure: Failure) -> None:
        self.gone = True

    # -- results ----------------------------------------------------------------------
    def _deliver(self, result: Any, mounted: MountedService, plan: CallPlan) -> None:
        payload = result
        if isReturnStructure(result) and result["OK"] and _is_raw(result["Value"]):
            payload = result["Value"]
        if self.gone:
            _close_if_file(payload)
            self._log(499)
            return
        if plan.raw_content:
            if _is_raw(payload):
                self._write_raw(payload)
                return
        elif _is_file(payload):
            _close_if_file(payload)
            self.reply_written(
                ErrorReply(200, S_ERROR(f"{self.method} streams a file: ask with rawContent"))
            )
            return
        try:
            body = mounted.codec.encode(as_return_structure(result))
        except CodecError as exc:
            _close_if_file(payload)
            log.error(
                "RPC {service}.{method}: result cannot be JEncoded: {error}",
                service=self.service,
                method=self.method,
                error=str(exc),
            )
            self.reply_written(
                error_reply(500, f"{self.method} returned a value that cannot be encoded")
            )
            return
        self._finish(200, _JSON, body.encode("utf-8"))

    def _failed(self, failure: Failure) -> None:
        if self.finished:
            log.failure("RPC {service}.{method}: error after reply", failure,
                        service=self.service, method=self.method)
            return
        if failure.check(ServiceInitError):
            if not self.gone:
                self.reply_written(error_reply(500, failure.getErrorMessage()))
            return
        if failure.check(StoreError):
            # The database failed or did not answer in time: nothing was committed.
            log.error("RPC {service}.{method} by {who}: {error}", service=self.service, method=self.method,
                      who=self.who, error=failure.getErrorMessage())
            if not self.gone:
                self.reply_written(error_reply(
                    503, f"database unavailable in {self.service} {self.method}, nothing was done: "
                         f"{failure.getErrorMessage()}"))
            else:
                self._log(499)
            return
        log.failure(
            "RPC {service}.{method} by {who} raised",
            failure,
            service=self.service,
            method=self.method,
            who=self.who,
        )
        if not self.gone:
            self.reply_written(
                error_reply(500, f"internal error in {self.service} {self.method}; see the server log")
            )
        else:
            self._log(499)

    # -- writing ------------------------------------------------------------------------
    def reply_error(self, reply: ErrorReply) -> bytes:
        body = encode(reply.body).encode("utf-8")
        request = self.request
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"content-length", b"%d" % len(body))
        self.finished = True
        self._log(reply.status, reply.message)
        return body

    def reply_written(self, reply: ErrorReply) -> None:
        """reply_error for replies produced after render returned NOT_DONE_YET."""
        body = self.reply_error(reply)
        self.request.write(body)
        self.request.finish()

    def _finish(self, status: int, content_type: bytes, body: bytes) -> None:
        request = self.request
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
        self.finished = True
        self._log(status)

    def _write_raw(self, payload: Any) -> None:
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if isinstance(payload, (bytes, bytearray, memoryview)):
            self._finish(200, _OCTETS, bytes(payload))
            return
        self._stream_file(payload)

    def _stream_file(self, handle: IO[bytes]) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", _OCTETS)
        size = _remaining_size(handle)
        if size is not None:
            request.setHeader(b"content-length", b"%d" % size)
        sender = FileSender()
        sender.CHUNK_SIZE = 64 * 1024
        d: Deferred[Any] = sender.beginFileTransfer(handle, request)

        def done(_: Any) -> None:
            handle.close()
            if not self.gone:
                request.finish()
            self.finished = True
            self._log(200 if not self.gone else 499, f"{size} bytes streamed")

        def failed(failure: Failure) -> None:
            handle.close()
            self.finished = True
            # The consumer stopped us: the client went away mid-file.
            self._log(499, failure.getErrorMessage())

        d.addCallbacks(done, failed)

    def _log(self, status: int, note: str = "") -> None:
        elapsed = (self.root._clock() - self.started) * 1000.0
        if self.root.on_call is not None:
            self.root.on_call(self.service, self.method, status, elapsed / 1000.0)
        peer = _peer(self.request)
        # The text is built once here (cheaper than re-parsing a many-field format per
        # event); the fields stay in the event for JSON logs and filters.
        line = (
            f"RPC {self.service} {self.method} by {self.who} from {peer}: "
            f"{status} in {elapsed:.1f} ms" + (f" ({note})" if note else "")
        )
        log.info(
            "{rpc_call}",
            rpc_call=line,
            service=self.service,
            method=self.method,
            who=self.who,
            peer=peer,
            status=status,
            elapsed_ms=round(elapsed, 3),
        )


def _is_file(value: Any) -> bool:
    return hasattr(value, "read") and callable(value.read)


def _is_raw(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview, str)) or _is_file(value)


def _close_if_file(value: Any) -> None:
    if hasattr(value, "read") and hasattr(value, "close"):
        value.close()


def _remaining_size(handle: IO[bytes]) -> int | None:
    try:
        total = os.fstat(handle.fileno()).st_size
        return max(0, total - handle.tell())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


def _peer(request: server.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', '')}" if host else str(address)


def _full_url(request: server.Request) -> str:
    return f"https://{request.getRequestHostname().decode('ascii', 'replace')}{request.path.decode('utf-8', 'replace')}"
