"""Connection tracking and the per-connection defences of every HTTP(S) listener.

:class:`EdgeFactory` wraps a twisted.web ``Site`` (``policies.WrappingFactory``, as
Twisted's own ``ThrottlingFactory``/``TimeoutFactory``) and knows every open connection,
so a listener can drain them, cut the ones a new CRL revokes, and enforce
:class:`~ccnet.edge.limits.EdgeLimits`:

* **caps** — over ``max-connections`` on the listener or ``max-connections-per-peer``
  from one address, ``buildProtocol`` returns None and Twisted closes the socket at
  accept (for TLS listeners :class:`GatedTLSFactory` asks before any TLS work);
* **request-head deadline** and **minimum body rate** — checked by :meth:`EdgeFactory.sweep`
  (one timer per listener, no timer per request) from marks the request class sets
  (:func:`edge_request` mixes them into the site's own request class);
* **back-pressure** — twisted.web's ``HTTPChannel`` stops reading a pipelining client only
  between requests; :class:`EdgeProtocol` stops reading the socket whenever the reply
  bytes already written are not being taken (the transport paused its producer), and
  holds the end of the current request (so twisted.web parses no further pipelined
  request) until they are. A client that pipelines without reading costs the socket
  buffers, not unbounded memory. Unparsed pipelined requests are held by twisted.web up
  to 16 KB per connection, and at most :data:`PIPELINE_BURST` of them are answered in
  one go before other connections get their turn.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from ccnet.edge import shim
from ccnet.edge.limits import DEFAULT, EdgeLimits
from ccnet.reactors import default_reactor

__all__ = ["EdgeFactory", "EdgeProtocol", "GatedTLSFactory", "edge_metrics", "edge_request", "tls_failure_reason"]

log = Logger()

#: Log lines per listener per window for cuts and refusals; the rest are only counted,
#: so an attack does not flood the log.
LOG_LIMIT = 20
LOG_WINDOW = 60.0

#: Pipelined requests answered on one connection before the reactor serves the others.
PIPELINE_BURST = 2

# Connection states for the deadlines.
_HEAD = 1  # waiting for (the rest of) a request head: head_timeout runs
_BODY = 2  # reading a request body: the minimum rate applies
_BUSY = 3  # request received, being answered: our time, not the client's
_IDLE = 4  # between requests on a keep-alive connection: idle-timeout applies


def tls_failure_reason(reason: Failure) -> str | None:
    """OpenSSL's short reason for a handshake that failed (``wrong version number``, ...)."""
    from OpenSSL import SSL

    if not reason.check(SSL.Error):
        return None
    errors = reason.value.args[0] if reason.value.args else None
    if isinstance(errors, list) and errors and isinstance(errors[-1], tuple) and len(errors[-1]) == 3:
        return str(errors[-1][2]) or "TLS error"
    return "TLS error"


@implementer(IPushProducer)
class _WriteGate:
    """Registered with the transport in the HTTP channel's place: hears when the reply
    bytes stop (and start again) being taken, and tells both the connection and the
    channel."""

    def __init__(self, edge: EdgeProtocol, producer: Any) -> None:
        self.edge = edge
        self.producer = producer

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.edge._set_write_blocked(True)
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.edge._set_write_blocked(False)
        self.producer.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.producer.stopProducing()


class EdgeProtocol(policies.ProtocolWrapper):
    """One connection: its deadline marks, its reading state and the reply bytes written."""

    factory: EdgeFactory
    transport: Any
    wrappedProtocol: Any
    #: (send-progress mark, when first seen) while reply bytes are waiting (write stall).
    stall: Any = None
    #: Reply bytes written so far (before TLS): grows whenever the reply makes progress.
    written = 0
    state = _HEAD
    #: When the current state began (reactor seconds).
    since = 0.0
    body_seen = 0
    _paused_by_channel = False
    _write_blocked = False
    _reading_paused = False
    #: Requests finished since the last read from the socket (see PIPELINE_BURST).
    burst = 0
    #: The request whose finish waits (for the peer to read, or for the next reactor turn).
    held: Any = None

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 (Twisted API)
        self.since = self.factory.now()
        super().makeConnection(transport)

    # -- deadline marks (from the request class) ------------------------------------
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self.state == _IDLE:
            self.state = _HEAD
            self.since = self.factory.now()
        self.burst = 0
        self.wrappedProtocol.dataReceived(data)

    def head_received(self, length: int | None) -> None:
        if length == 0:
            self.state = _BUSY
        else:
            self.state = _BODY
            self.since = self.factory.now()
            self.body_seen = 0

    def body_data(self, n: int) -> None:
        self.body_seen += n

    def request_received(self) -> None:
        self.state = _BUSY

    def request_done(self) -> None:
        self.state = _IDLE

    def overdue(self, now: float, limits: EdgeLimits) -> str | None:
        """Why this connection is to be cut now, or None."""
        if self.state == _HEAD:
            if now - self.since > limits.head_timeout:
                return "head-timeout"
        elif self.state == _BODY and limits.min_body_rate > 0:
            if now - self.since > limits.head_timeout + self.body_seen / limits.min_body_rate:
                return "slow-body"
        return None

    # -- back-pressure ----------------------------------------------------------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802 (Twisted API)
        if streaming:
            producer = _WriteGate(self, producer)
        self.transport.registerProducer(producer, streaming)

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        """The channel asks to stop reading (it is busy with a request)."""
        self._paused_by_channel = True
        self._update_reading()

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        self._paused_by_channel = False
        self._update_reading()

    def stopProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.transport.stopProducing()

    def _set_write_blocked(self, blocked: bool) -> None:
        self._write_blocked = blocked
        self._update_reading()
        if not blocked and self.held is not None:
            self.factory.timers.callLater(0, self._release)

    def hold(self, request: Any) -> bool:
        """Should ``request``'s finish wait? Yes while the peer is not taking the reply
        bytes, and after PIPELINE_BURST requests in one go; :meth:`_release` finishes it."""
        if self.held is request:
            return True
        self.burst += 1
        if self.burst <= PIPELINE_BURST and not self._write_blocked:
            return False
        self.held = request
        if not self._write_blocked:
            self.factory.timers.callLater(0, self._release)
        return True

    def _release(self) -> None:
        request, self.held = self.held, None
        if request is None or self._write_blocked:
            self.held = request
            return
        self.burst = 0
        if not shim.request_disconnected(request) and not request.finished:
            request._finish_now()

    def _update_reading(self) -> None:
        pause = self._paused_by_channel or self._write_blocked
        if pause == self._reading_paused or self.disconnecting:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # -- bytes out ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:  # noqa: N802 (Twisted API)
        data = list(data)
        self.written += sum(len(d) for d in data)
        self.transport.writeSequence(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # noqa: N802
        why = tls_failure_reason(reason)
        # Certificate rejections are counted, with the finer X509 reason, by ServerTLS.
        if why is not None and why != "certificate verify failed":
            failures = self.factory.handshake_failures
            failures[why] = failures.get(why, 0) + 1
        super().connectionLost(reason)


class EdgeFactory(policies.WrappingFactory):
    """Knows the open connections of one listener and enforces its :class:`EdgeLimits`."""

    protocol = EdgeProtocol
    noisy = False

    def __init__(self, wrapped: Any, name: str = "listener", limits: EdgeLimits = DEFAULT,
                 clock: IReactorTime | None = None) -> None:
        super().__init__(wrapped)
        self.name = name
        self.limits = limits
        self.clock = clock
        self.drained: list[defer.Deferred[None]] = []
        #: TLS handshakes that failed for another reason than the client certificate.
        self.handshake_failures: dict[str, int] = {}
        #: Connections refused at accept, by reason (max-connections, max-connections-per-peer).
        self.refused: dict[str, int] = {}
        #: Connections we closed, by reason (head-timeout, slow-body, revoked, write-stall).
        self.closed: dict[str, int] = {}
        self.per_peer: dict[str, int] = {}
        self._logged = 0
        self._log_window = float("-inf")
        factory_class = getattr(wrapped, "requestFactory", None)
        if isinstance(factory_class, type) and issubclass(factory_class, Request):
            wrapped.requestFactory = edge_request(factory_class)

    @property
    def timers(self) -> IReactorTime:
        """The clock given, else the global reactor (looked up late: tests pass a Clock)."""
        if self.clock is None:
            self.clock = default_reactor()
        return self.clock

    def now(self) -> float:
        return float(self.timers.seconds())

    # -- caps ---------------------------------------------------------------------------
    def admits(self, addr: Any) -> bool:
        """Room for one more connection from ``addr``? Counts and logs a refusal."""
        reason = None
        if len(self.protocols) >= self.limits.max_connections:
            reason = "max-connections"
        else:
            host = getattr(addr, "host", None)
            if host is not None and self.per_peer.get(host, 0) >= self.limits.max_connections_per_peer:
                reason = "max-connections-per-peer"
        if reason is None:
            return True
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.note("{listener}: connection from {peer} refused ({reason}: {limit})", peer=_host(addr),
                  reason=reason, limit=self.limits.max_connections if reason == "max-connections"
                  else self.limits.max_connections_per_peer)
        return False

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted API)
        if not self.admits(addr):
            return None
        return super().buildProtocol(addr)

    def registerProtocol(self, p: Any) -> None:  # noqa: N802 (Twisted API)
        super().registerProtocol(p)
        host = _host(p.getPeer())
        self.per_peer[host] = self.per_peer.get(host, 0) + 1

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802 (Twisted API)
        if p in self.protocols:
            host = _host(p.getPeer())
            left = self.per_peer.get(host, 1) - 1
            if left > 0:
                self.per_peer[host] = left
            else:
                self.per_peer.pop(host, None)
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self.drained = self.drained, []
            for d in waiting:
                d.callback(None)

    # -- deadlines ------------------------------------------------------------------------
    def sweep(self) -> None:
        """Cut the connections over the head deadline or under the minimum body rate."""
        now = self.now()
        for p in list(self.protocols):
            why = p.overdue(now, self.limits)
            if why is not None:
                self.cut(p, why, f"{now - p.since:.1f}s")

    def cut(self, p: EdgeProtocol, reason: str, detail: str) -> None:
        """Abort ``p``'s connection, counted under ``reason`` and logged (rate-limited)."""
        self.closed[reason] = self.closed.get(reason, 0) + 1
        self.note("{listener}: closing the connection from {peer} ({reason}, {detail})",
                  peer=_host(p.getPeer()), reason=reason, detail=detail)
        p.transport.abortConnection()

    def note(self, fmt: str, **fields: Any) -> None:
        now = self.now()
        if now - self._log_window > LOG_WINDOW:
            self._log_window, self._logged = now, 0
        self._logged += 1
        if self._logged <= LOG_LIMIT:
            log.warn(fmt, listener=self.name, **fields)
        elif self._logged == LOG_LIMIT + 1:
            log.warn("{listener}: more connections refused or closed in this minute are only counted "
                     "(ccnet_listener_refused_total, ccnet_listener_closed_total)", listener=self.name)

    # -- drain ----------------------------------------------------------------------------
    def drain(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.drained.append(d)
        return d


class GatedTLSFactory(TLSMemoryBIOFactory):
    """Twisted's TLS factory, asking the :class:`EdgeFactory` inside before any TLS work."""

    wrappedFactory: EdgeFactory

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted API)
        if not self.wrappedFactory.admits(addr):
            return None
        return super().buildProtocol(addr)


def _host(addr: Any) -> str:
    return str(getattr(addr, "host", None) or addr)


_EDGE_CLASSES: dict[type, type] = {}


class _EdgeRequestMixin:
    """Tells the connection where the request stands (head, body, answered)."""

    channel: Any

    def _edge(self) -> EdgeProtocol | None:
        transport = getattr(self.channel, "transport", None)
        return transport if isinstance(transport, EdgeProtocol) else None

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        edge = self._edge()
        if edge is not None:
            edge.head_received(length)
        super().gotLength(length)  # type: ignore[misc]

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        edge = self._edge()
        if edge is not None:
            edge.body_data(len(data))
        super().handleContentChunk(data)  # type: ignore[misc]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        edge = self._edge()
        if edge is not None:
            edge.request_received()
        super().requestReceived(command, path, version)  # type: ignore[misc]

    def write(self, data: bytes) -> None:
        if not self.startedWriting:  # type: ignore[attr-defined]
            keep_http10_alive(self)
        super().write(data)  # type: ignore[misc]

    def finish(self) -> Any:
        edge = self._edge()
        if edge is not None:
            if edge.hold(self):
                return None
            # Before twisted.web parses the next pipelined request (inside finish).
            edge.request_done()
        return super().finish()  # type: ignore[misc]

    def _finish_now(self) -> Any:
        edge = self._edge()
        if edge is not None:
            edge.request_done()
        return super().finish()  # type: ignore[misc]


def keep_http10_alive(request: Any) -> None:
    """Honour ``Connection: keep-alive`` from an HTTP/1.0 client (``ab -k``, proxies).

    twisted.web decides a connection's persistence when the request arrives, before the
    reply exists, and so never keeps an HTTP/1.0 connection. Here, as the reply's head is
    about to go out, it is known whether the reply is delimited by a Content-Length: if
    it is and the client asked, the connection stays open and the reply says so."""
    if request.clientproto != b"HTTP/1.0" or request.responseHeaders.getRawHeaders(b"content-length") is None:
        return
    tokens = b",".join(request.requestHeaders.getRawHeaders(b"connection", [])).lower().replace(b" ", b"")
    if b"keep-alive" in tokens.split(b","):
        request.responseHeaders.setRawHeaders(b"connection", [b"keep-alive"])
        request.channel.persistent = True


def edge_request(request_class: type[Request]) -> type[Request]:
    """``request_class`` telling the connection about head, body and reply (cached)."""
    if issubclass(request_class, _EdgeRequestMixin):
        return request_class
    made = _EDGE_CLASSES.get(request_class)
    if made is None:
        made = type(request_class.__name__, (_EdgeRequestMixin, request_class), {})
        _EDGE_CLASSES[request_class] = made
    return made



def edge_metrics(factories: dict[str, EdgeFactory]) -> list[Any]:
    """Prometheus families: connections refused at accept and closed by the edge, per listener."""
    from ccnet.metrics import counter

    refused = {(name, reason): n for name, f in factories.items() for reason, n in f.refused.items()}
    closed = {(name, reason): n for name, f in factories.items() for reason, n in f.closed.items()}
    return [
        counter("ccnet_listener_refused_total",
                "Connections refused at accept (max-connections, max-connections-per-peer).",
                ["listener", "reason"], refused),
        counter("ccnet_listener_closed_total",
                "Connections the listener closed (head-timeout, slow-body, write-stall, revoked).",
                ["listener", "reason"], closed),
    ]
