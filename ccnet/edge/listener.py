"""One HTTP(S) listener: Twisted's ``StreamServerEndpointService`` plus ccnet's edge.

It binds in ``privilegedStartService`` as Twisted's own service does (so twistd can bind
low ports before dropping privileges), reports the outcome once (one log line, the
``listening`` Deferred), runs the edge's timers (deadlines, write stall) and drains its
connections on stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccnet.config import ListenSpec
from ccnet.edge import shim
from ccnet.edge.connections import EdgeFactory, GatedTLSFactory
from ccnet.edge.lifecycle import IListening
from ccnet.edge.limits import DEFAULT, EdgeLimits
from ccnet.reactors import IReactor

__all__ = ["WRITE_STALL", "ListenerService"]

log = Logger()

#: Seconds a connection may have reply bytes waiting without the peer taking any: a client
#: that stops reading is disconnected (its memory is bounded anyway, its socket is not).
WRITE_STALL = 120.0


def _idle(protocol: Any) -> bool:
    """Nothing in flight on this HTTP connection."""
    inner = shim.http_channel(getattr(protocol, "wrappedProtocol", protocol))
    requests = getattr(inner, "requests", None)
    return requests is not None and not requests


class _Reporting:
    """The listener's endpoint, telling the service how ``listen`` went before Twisted's
    own errback would log a traceback for a port that is taken."""

    def __init__(self, endpoint: Any, service: ListenerService) -> None:
        self.endpoint = endpoint
        self.service = service

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self.endpoint.listen(factory)
        d.addCallbacks(self.service._listening, self.service._failed)
        return d


@implementer(IListening)
class ListenerService(StreamServerEndpointService):
    """Listens on one endpoint string, wrapping the factory in ccnet's mutual TLS when asked.

    Connections are tracked and limited by :class:`ccnet.edge.connections.EdgeFactory`
    (``limits``). Stopping closes the port first, then lets in-flight requests finish for
    up to ``grace`` seconds before cutting what is left.
    """

    def __init__(self, reactor: IReactor, name: str, spec: ListenSpec, factory: Any, tls: Any,
                 grace: float = 10.0, write_stall: float | None = None,
                 limits: EdgeLimits = DEFAULT) -> None:
        self.connections = EdgeFactory(factory, name, limits, reactor)
        outer: Any = self.connections
        if spec.tls and tls is not None:
            outer = GatedTLSFactory(tls, False, self.connections)  # type: ignore[arg-type]
        super().__init__(_Reporting(endpoints.serverFromString(reactor, spec.endpoint), self), outer)
        self.setName(name)
        self.reactor = reactor
        self.spec = spec
        self.tls = tls
        self.grace = grace
        self.write_stall = WRITE_STALL if write_stall is None else write_stall
        self._stalls: task.LoopingCall | None = None
        self._deadlines: task.LoopingCall | None = None
        self.port: Any = None
        self.listening: defer.Deferred[Any] = defer.Deferred()
        self._bound = False

    def privilegedStartService(self) -> None:  # noqa: N802 (Twisted API)
        self._bound = True
        super().privilegedStartService()

    @property
    def address(self) -> Any:
        return self.port.getHost() if self.port is not None else None

    @property
    def up(self) -> bool:
        """Listening right now (False before the bind and once stopping began)."""
        return self.port is not None and bool(self.running)

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        if self.write_stall > 0:
            self._stalls = task.LoopingCall(self._cut_stalled)
            self._stalls.clock = self.reactor
            self._stalls.start(max(0.05, self.write_stall / 4), now=False)
        self._deadlines = task.LoopingCall(self.connections.sweep)
        self._deadlines.clock = self.reactor
        self._deadlines.start(min(1.0, max(0.05, self.connections.limits.head_timeout / 4)), now=False)

    def _cut_stalled(self) -> None:
        """Abort connections whose peer has taken none of the waiting reply bytes for
        ``write_stall`` seconds (checked every quarter of it)."""
        now = self.reactor.seconds()
        for protocol in list(self.connections.protocols):
            transport = shim.socket_transport(protocol)
            if transport is None:
                continue
            pending = shim.unsent_bytes(transport)
            # Any progress changes the mark: more reply written (monotonic), or the peer
            # taking bytes (from Twisted's buffer or the kernel's send queue, which only
            # shrink between writes).
            mark = (protocol.written, pending, shim.kernel_unsent(transport))
            seen = protocol.stall
            if pending <= 0:
                protocol.stall = None
            elif seen is None or seen[0] != mark:
                protocol.stall = (mark, now)
            elif now - seen[1] >= self.write_stall:
                self.connections.cut(protocol, "write-stall",
                                     f"took none of {pending} reply bytes for {self.write_stall}s")

    def _listening(self, port: Any) -> Any:
        self.port = port
        host = port.getHost()
        log.info(
            "ccnet {listener} listening on {host}:{port} ({scheme})",
            listener=self.name,
            host=getattr(host, "host", "?"),
            port=getattr(host, "port", "?"),
            scheme="mutual TLS" if self.spec.tls else "plain",
        )
        self.listening.callback(port)
        return port

    def _failed(self, failure: Failure) -> None:
        # One line; the failure goes to ``listening`` (the daemon exits 1), not on to
        # Twisted's errback, which would log it again with a traceback.
        log.critical(
            "ccnet {listener} cannot listen on {endpoint}: {error}",
            listener=self.name,
            endpoint=self.spec.endpoint,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        for loop in (self._stalls, self._deadlines):
            if loop is not None and loop.running:
                loop.stop()
        self.port = None
        if self._bound:
            yield super().stopService()  # stops listening (or cancels the attempt)
        else:
            service.Service.stopService(self)
        for protocol in list(self.connections.protocols):
            if _idle(protocol):
                # Nothing in flight; a polite TLS close could wait on a peer that never answers.
                protocol.transport.abortConnection()
        if not self.connections.protocols:
            return
        drained = self.connections.drain()
        timer = self.reactor.callLater(self.grace, drained.cancel)
        try:
            yield drained
        except defer.CancelledError:
            log.warn("{listener}: {n} connections still open after {grace}s, closing them",
                     listener=self.name, n=len(self.connections.protocols), grace=self.grace)
            for protocol in list(self.connections.protocols):
                protocol.transport.abortConnection()
        else:
            timer.cancel()
