"""The CC proxy server: a txzmq ROUTER on ``cc-socket`` dispatching to handlers.

Message flow: frames → :func:`ccnet.cc.message.parse` → route lookup
(:class:`ccnet.cc.routing.RouteTable`) → optional decrypt/verify
(:class:`ccnet.cc.crypto.CMSCodec`, only when a handler on the route reads the
payload, as the original) → every handler in dispatch order.  Anything that
goes wrong is logged with the peer and counted, and answered with one ``error``
reply along the request's route when the sender opted in with ``"ack": true``
(``error-replies = always``: every sender; ``no``: none).  Peers that did not opt in
(the original CC's daemons) get only what the original CC would send them.
"""

from __future__ import annotations

import socket as _socket
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import zmq
from twisted.application.service import IService, Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccnet.cc.config import CCConfig
from ccnet.cc.crypto import CMSCodec, CryptoError
from ccnet.cc.handler import CCRequest, HandlerError, ICCHandler, ICCServer
from ccnet.cc.message import (
    BodyError,
    CCMessage,
    Invalid,
    error_body,
    make_body,
    parse,
    wants_replies,
)
from ccnet.cc.metrics import CCMetrics
from ccnet.cc.stats import CCStats
from ccnet.cc.transport import ZmqSocket, make_factory, router
from ccnet.edge.lifecycle import IListening
from ccnet.periodic import every
from ccnet.reactors import IReactor
from ccnet.runtime import Part

if TYPE_CHECKING:
    from ccnet.runtime import Runtime

__all__ = ["build", "CCServer", "CCService", "CCStartError"]

log = Logger()

#: Invalid-frame log lines per window (seconds); the rest only show in counters,
#: so a broken or hostile client cannot flood the log.
INVALID_LOG_LIMIT = 20
INVALID_LOG_WINDOW = 60.0
#: The same budget for lines about undelivered replies and ZMQ disconnects.
DELIVERY_LOG_LIMIT = 20
DELIVERY_LOG_WINDOW = 60.0


class CCStartError(RuntimeError):
    """The CC server cannot start (e.g. cc-socket cannot be bound)."""


def _peer(route: tuple[bytes, ...]) -> str:
    return route[0].hex() if route else "-"


def _frames_type(frames: list[bytes]) -> str:
    """The type frame of outgoing frames (the one after the route), for log lines."""
    try:
        return frames[frames.index(b"") + 1].decode("ascii", "replace")
    except (ValueError, IndexError):
        return "-"


class _LogBudget:
    """At most ``limit`` log lines per ``window`` seconds (the rest only count)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._start, self._used = float("-inf"), 0

    def allow(self, now: float) -> bool:
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        self._used += 1
        return self._used <= self.limit


@implementer(ICCServer)
class CCServer:
    """The dispatcher bound to one ROUTER socket (usable without twistd)."""

    def __init__(
        self,
        config: CCConfig,
        reactor: IReactor,
        hostname: str | None = None,
        runtime: Runtime | None = None,
        clock: IReactorTime | None = None,
        zmq_factory: Any = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.runtime = runtime
        self.hostname = hostname or _socket.gethostname()
        self.stats = CCStats(per_type=True)
        self.codec = CMSCodec.from_options(_with_tls_crl(config.cms, runtime))
        if self.codec.crl_paths and runtime is not None:
            runtime.on_reload(self.codec.reload_crls)  # SIGHUP re-reads the CRLs, as TLS does
        # One ZmqFactory (ZMQ context) per reactor.  A caller running several
        # servers in one reactor passes a shared one and shuts it down itself.
        self.zmq_factory: Any = zmq_factory
        self._owns_factory = zmq_factory is None
        self.socket: ZmqSocket | None = None
        self.endpoint: str | None = None
        self.handlers: dict[str, Any] = {}
        self._stats_loop: task.LoopingCall | None = None
        self._invalid_logged = 0
        self._invalid_window = float("-inf")
        self._delivery_log = _LogBudget(DELIVERY_LOG_LIMIT, DELIVERY_LOG_WINDOW)
        #: Bytes of requests whose handlers' Deferreds have not fired yet.
        self.pending_bytes = 0
        self.stats.gauges = self._gauges
        for spec in config.handlers:
            handler = spec.factory(spec.section, spec.options, self)
            if not ICCHandler.providedBy(handler):
                raise TypeError(f"handler [{spec.section}] ({spec.handler}) does not provide ICCHandler")
            self.handlers[spec.section] = handler

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Bind the ROUTER, start handlers and the stats timer; returns the bound endpoint."""
        if self.zmq_factory is None:
            self.zmq_factory = make_factory(self.reactor, self.config.zmq)
        # zmq_maxmsgsize: a hard per-frame cap in libzmq (the peer is disconnected,
        # see _disconnected) so a huge frame is never buffered; up to it,
        # oversize messages get an error reply.
        self.socket = router(self.zmq_factory, self.config.zmq, self.frames_received)
        self.socket.queue_sends(self.config.send_queue, self.config.send_queue_bytes, self._undelivered)
        self.socket.watch_disconnects(self._disconnected)
        try:
            self.endpoint = self.socket.bind(self.config.socket)
        except zmq.ZMQError as exc:
            self.socket.shutdown()
            self.socket = None
            raise CCStartError(
                f"[{self.config.section}] cc-socket = {self.config.socket}: cannot bind ({exc})"
            ) from None
        if self.config.role is None:
            log.warn("cc-role is not set: running insecure, every handler allowed")
        if self.config.ignored:
            log.info("cc: keys handled by twistd/ccnet instead: {keys}", keys=", ".join(self.config.ignored))
        log.info(
            "cc listening on {endpoint} (role {role}, {n} handler sections)",
            endpoint=self.endpoint, role=self.config.role or "insecure", n=len(self.handlers),
        )
        for h in self.handlers.values():
            h.start()
        if self.config.stats_period > 0 and self.config.cc_stats > 0:
            self._stats_loop = every(self.clock, self.config.stats_period, "cc-stats", self.log_stats, now=False,
                                      failures=self.runtime.job_failures if self.runtime is not None else None)
        return self.endpoint

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        for h in self.handlers.values():
            try:
                yield defer.maybeDeferred(h.stop)
            except Exception:
                log.failure("cc handler [{section}] failed to stop", section=h.name)
        if self.socket is not None and self.socket.factory is not None:
            self.socket.shutdown()
        self.socket = None
        if self._owns_factory and self.zmq_factory is not None:
            self.zmq_factory.shutdown()
            self.zmq_factory = None

    def reload_routes(self, new: CCConfig) -> None:
        """SIGHUP: adopt ``new``'s [routes] without touching the socket or the handlers.

        Adding or removing handler sections needs a restart; routes naming a section this
        proxy does not run are refused (ValueError) and the old routes stay.
        """
        missing = sorted({s for _, secs in new.routes.routes for s in secs} - set(self.handlers))
        if missing:
            raise ValueError(
                f"[routes] names handler sections not running here: {', '.join(missing)} (restart to add them)"
            )
        self.config = replace(self.config, routes=new.routes)
        log.info("cc routes reloaded: {n} patterns", n=len(new.routes.routes))

    def log_stats(self) -> None:
        period = self.stats.take_period()
        if self.config.cc_stats < 2:
            # cc-stats = 1 (the original default) logs totals; 2 adds per-type counters.
            period = {k: v for k, v in period.items() if ".msg." not in k}
        log.info(
            "cc stats: {stats}",
            stats=" ".join(f"{k}={v}" for k, v in sorted(period.items())) or "idle",
            cc_stats=period,
        )

    # ------------------------------------------------------------------ ICCServer

    def send_frames(self, frames: list[bytes]) -> None:
        if self.socket is None or not frames:
            self._undelivered(frames, "closing")
            return
        # Sent, or queued within send-queue/send-queue-bytes, or reported to _undelivered.
        self.socket.send_or_queue(frames)

    def _undelivered(self, frames: list[bytes], reason: str) -> None:
        """A reply or forward that ZMQ could not deliver: counted and logged, never silent."""
        self.stats.event(f"undelivered.{reason}")
        if self._delivery_log.allow(self._wallclock()):
            log.warn(
                "cc: {type} to {peer} not delivered ({reason}; send-queue {queued} messages, {qbytes} bytes)",
                type=_frames_type(frames), peer=frames[0].hex() if frames else "-", reason=reason,
                queued=self.socket.out.messages if self.socket is not None and self.socket.out else 0,
                qbytes=self.socket.out.bytes if self.socket is not None and self.socket.out else 0,
            )

    def _disconnected(self, endpoint: str) -> None:
        """ZMQ closed a peer connection: the peer left, or ZMQ cut it (a frame over
        zmq_maxmsgsize, a protocol error); libzmq does not tell which."""
        self.stats.event("disconnected")
        if self._delivery_log.allow(self._wallclock()):
            log.info(
                "cc: ZMQ closed a peer connection on {endpoint} (the peer left, or sent a frame over "
                "zmq_maxmsgsize = {limit} bytes)",
                endpoint=endpoint, limit=self.config.zmq.maxmsgsize,
            )

    def _gauges(self) -> dict[str, int]:
        out = self.socket.out if self.socket is not None else None
        return {
            "send_queue_messages": out.messages if out else 0,
            "send_queue_bytes": out.bytes if out else 0,
            "pending_bytes": self.pending_bytes,
        }

    def encode(
        self, route: tuple[bytes, ...], req: str, fields: Mapping[str, Any], blob: bytes | None = None
    ) -> CCMessage:
        body = make_body(req, fields, self.hostname, self._wallclock())
        return self.codec.encode(tuple(route), body, blob)

    def reply(
        self, request: CCRequest, req: str, fields: Mapping[str, Any], blob: bytes | None = None
    ) -> None:
        self.send_frames(self.encode(request.route, req, fields, blob).frames())

    def ack(
        self, request: CCRequest, req: str, fields: Mapping[str, Any], blob: bytes | None = None
    ) -> None:
        if request.wants_replies:
            self.reply(request, req, fields, blob)

    def error_reply(self, request: CCRequest, msg: str) -> None:
        self._error(request.route, request.type, msg, request.wants_replies)

    # ------------------------------------------------------------------ dispatch

    def _wallclock(self) -> float:
        return float(self.clock.seconds())

    def _error(self, route: tuple[bytes, ...], mtype: str | None, msg: str, opted_in: bool,
               always: bool = False) -> None:
        """The one place errors become replies.

        Only a sender that opted in (``"ack": true``) is answered, unless the original
        answers this error too (``always``) or ``error-replies = always``: a peer that
        did not ask (the original's taskrunner reads every message as a task) gets
        nothing; the error is counted (``unanswered``) and was logged by the caller.
        """
        if not self.config.error_replies or not route:
            return
        if mtype is not None and (mtype == "error" or mtype.startswith("error.")):
            return  # never answer an error with an error: two CCs would ping-pong
        if not (opted_in or always or self.config.error_replies_to_all):
            self.stats.count_unanswered(mtype)
            return
        body = error_body(msg, mtype, self.hostname, self._wallclock())
        try:
            out = self.codec.encode(route, body)
        except Exception:
            log.failure("cc: cannot build error reply")
            return
        self.send_frames(out.frames())

    def frames_received(self, frames: list[bytes]) -> None:
        started = self._wallclock()
        parsed = parse(frames, self.config.max_body)
        if isinstance(parsed, Invalid):
            self._invalid(parsed)
            return
        msg = parsed
        sections = self.config.routes.lookup(msg.type)
        if not sections:
            self.stats.count("dropped", msg.type, msg.size)
            log.warn("dropping msg, no route: {type} from {peer}", type=msg.type, peer=_peer(msg.route))
            self._error(msg.route, msg.type, f"no route for message type {msg.type}", wants_replies(msg.decoded))
            return
        handlers = [self.handlers[s] for s in sections]
        request = CCRequest(msg, started)
        runnable = handlers
        if any(h.reads_payload for h in handlers):
            try:
                payload, signer = self.codec.decode(msg, started)
            except (CryptoError, BodyError) as exc:
                self.stats.count("error", msg.type, msg.size)
                log.warn(
                    "cc: rejected {type} from {peer}: {reason}",
                    type=msg.type, peer=_peer(msg.route), reason=str(exc),
                )
                self._error(msg.route, msg.type, f"rejected {msg.type}: {exc}", wants_replies(msg.decoded))
                runnable = [h for h in handlers if not h.reads_payload]
                if not runnable:
                    return
            else:
                request.payload = payload
                request.signer = signer.as_dict() if signer else None
        # Fast path: handlers that return plainly need no Deferred machinery.
        pending: list[defer.Deferred[bool]] = []
        ok = True
        for h in runnable:
            try:
                result = h.handle(request)
            except Exception:
                ok = self._handler_failed(Failure(), h, request) and ok
                continue
            if isinstance(result, defer.Deferred):
                result.addCallbacks(lambda _: True, self._handler_failed, errbackArgs=(h, request))
                pending.append(result)
        if pending:
            self._hold(msg.size)
            d = defer.gatherResults(pending)
            d.addCallback(lambda oks: self._done([ok, *oks], request))
            d.addBoth(self._release, msg.size)
        else:
            self._done([ok], request)

    def _hold(self, nbytes: int) -> None:
        """Handlers keep a request: over max-pending-bytes, stop reading the ROUTER
        (ZMQ's queues, then TCP, push back on the senders) until they finish."""
        self.pending_bytes += nbytes
        if self.pending_bytes > self.config.max_pending_bytes and self.socket is not None \
                and not self.socket.paused:
            self.stats.event("read-paused")
            if self._delivery_log.allow(self._wallclock()):
                log.info(
                    "cc: handlers hold {n} bytes (max-pending-bytes {limit}): reading paused",
                    n=self.pending_bytes, limit=self.config.max_pending_bytes,
                )
            self.socket.pause_reading()

    def _release(self, result: Any, nbytes: int) -> Any:
        self.pending_bytes -= nbytes
        if self.socket is not None and self.socket.paused \
                and self.pending_bytes <= self.config.max_pending_bytes:
            self.socket.resume_reading()
        return result

    def _handler_failed(self, failure: Failure, handler: Any, request: CCRequest) -> bool:
        mtype, peer = request.type, _peer(request.route)
        if failure.check(HandlerError):
            self.stats.count("error", mtype)
            log.warn(
                "cc handler [{section}] refused {type} from {peer}: {reason}",
                section=handler.name, type=mtype, peer=peer, reason=failure.getErrorMessage(),
            )
            self._error(request.route, mtype, failure.getErrorMessage(), request.wants_replies,
                        always=failure.value.always_reply)
        else:
            self.stats.count("crashed", mtype)
            log.failure(
                "cc handler [{section}] crashed on {type} from {peer}",
                failure, section=handler.name, type=mtype, peer=peer,
            )
            self._error(request.route, mtype, f"handler [{handler.name}] failed on {mtype}", request.wants_replies)
        return False

    def _done(self, oks: list[bool], request: CCRequest) -> None:
        elapsed = self._wallclock() - request.received
        self.stats.observe(request.type, max(elapsed, 0.0))
        if all(oks):
            self.stats.count("ok", request.type, request.msg.size)

    def _invalid(self, bad: Invalid) -> None:
        self.stats.count("invalid", bad.type, bad.size)
        now = self._wallclock()
        if now - self._invalid_window >= INVALID_LOG_WINDOW:
            self._invalid_window, self._invalid_logged = now, 0
        if self._invalid_logged < INVALID_LOG_LIMIT:
            self._invalid_logged += 1
            log.warn("Invalid CC message from {peer}: {reason}", peer=_peer(bad.route), reason=bad.reason)
        if bad.replyable:
            self._error(bad.route, bad.type, f"invalid message: {bad.reason}", bad.wants_replies)


@implementer(IService)
@implementer(IListening)
class CCService(Service):
    """twistd service wrapper: binds on start, unbinds on stop.

    A socket that cannot be bound is one log line and a failed ``listening`` (the daemon
    then exits 1), not an exception out of ``startService``.
    """

    def __init__(self, server: CCServer) -> None:
        self.setName("cc")
        self.server = server
        self.listening: defer.Deferred[str] = defer.Deferred()

    def startService(self) -> None:  # noqa: N802 (IService)
        super().startService()
        try:
            endpoint = self.server.start()
        except CCStartError as exc:
            log.critical("ccnet {listener} cannot listen: {error}", listener=self.name, error=str(exc))
            self.listening.errback(Failure(exc))
            return
        self.listening.callback(endpoint)

    def stopService(self) -> Any:  # noqa: N802 (IService)
        super().stopService()
        return self.server.stop()


def _with_tls_crl(cms: Any, runtime: Runtime | None) -> Any:
    """Signers are checked against ``cms-crl``, else the daemon's ``[tls] crl``."""
    crl = runtime.tls_crl if runtime is not None else None
    if cms.verify_ca and not cms.crl and crl is not None:
        return replace(cms, crl=(crl,))
    return cms


def build(runtime: Runtime, cc_config: CCConfig) -> Part:
    """Entry point for ccnet.service: the CC proxy (its routes re-read on SIGHUP)."""
    server = CCServer(cc_config, runtime.reactor, hostname=runtime.hostname, runtime=runtime)
    runtime.register_metrics("cc", CCMetrics(server.stats))

    def reload_routes() -> None:
        from ccnet.cc.config import parse as parse_cc
        from ccnet.config import IniFile

        new = parse_cc(IniFile.load(cc_config.path))
        if new is not None:
            server.reload_routes(new)

    runtime.on_reload(reload_routes)
    from ccnet.cc.console import console_view

    runtime.console.cc = lambda: console_view(server)
    # cast: mypy does not know that @implementer(IService) classes provide IService
    return Part(services=[cast(IService, CCService(server))])

