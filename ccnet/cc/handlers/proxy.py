"""``handler = proxy``: forward messages to another CC (``remote-cc``).

Frames go out on a DEALER byte-exact, route included; whatever comes back is
sent out of the local ROUTER unchanged, so the first frame (the original
peer) routes it home and replies traverse any number of hops.  While the
remote is unreachable messages wait in a bounded queue (``zmq_hwm``
entries); on overflow the oldest is dropped and counted.  ZMQ reconnects by
itself; the queue is flushed as soon as a send succeeds again.

``ping = yes`` sends ``echo.request`` (empty route) every second and warns when
no answer came for 5 seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.config import CCConfig, ZmqOptions, parse_zmq, zmq_endpoint
from ccnet.cc.handler import CCHandler, CCRequest, ICCHandler, ICCHandlerFactory
from ccnet.cc.transport import ZmqSocket, dealer

__all__ = ["ProxyHandler", "ProxyOptions", "handler_class"]

log = Logger()

PING_PERIOD = 1.0
PING_WARN_AFTER = 5.0
#: Retry period for the waiting queue while the remote is down.
RETRY_PERIOD = 0.2


@dataclass(frozen=True)
class ProxyOptions:
    remote_cc: str
    ping: bool
    zmq: ZmqOptions


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class ProxyHandler(CCHandler):
    handler_name = "proxy"
    cc_roles = frozenset({"local", "remote"})
    # The proxy never reads payloads: encrypted or signed messages pass untouched.
    reads_payload = False

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: CCConfig) -> ProxyOptions:
        remote = zmq_endpoint(section, "remote-cc", None)
        if remote is None:
            raise section.error("remote-cc", "missing required key: expected a ZMQ endpoint of the next CC")
        return ProxyOptions(
            remote_cc=remote,
            ping=section.get_bool("ping", False),
            zmq=parse_zmq(section, cc.zmq),
        )

    def __init__(self, name: str, options: ProxyOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.queue: deque[list[bytes]] = deque()
        self.dropped = 0
        self.sock: ZmqSocket | None = None
        self._retry: Any = None
        self._ping_loop: task.LoopingCall | None = None
        self._last_pong: float | None = None
        self._warned = False

    def start(self) -> None:
        self.sock = dealer(self.server.zmq_factory, self.options.zmq, self._from_remote)
        self.sock.connect(self.options.remote_cc)
        log.info("cc proxy [{section}] forwarding to {remote}", section=self.name, remote=self.options.remote_cc)
        if self.options.ping:
            self._last_pong = self.server.clock.seconds()
            self._ping_loop = task.LoopingCall(self._ping)
            self._ping_loop.clock = self.server.clock
            self._ping_loop.start(PING_PERIOD, now=True)

    def stop(self) -> None:
        if self._ping_loop is not None and self._ping_loop.running:
            self._ping_loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.sock is not None and self.sock.factory is not None:
            self.sock.shutdown()
        self.sock = None

    # -- forward path -------------------------------------------------------------

    def handle(self, request: CCRequest) -> None:
        self._send(request.msg.frames())

    def _send(self, frames: list[bytes]) -> None:
        if not self.queue and self.sock is not None and self.sock.try_send(frames):
            return
        if len(self.queue) >= self.options.zmq.hwm:
            self.queue.popleft()
            self.dropped += 1
            self.server.stats.count("dropped", None)
            log.warn(
                "cc proxy [{section}]: {remote} unreachable, queue full, dropped oldest ({n} so far)",
                section=self.name, remote=self.options.remote_cc, n=self.dropped,
            )
        self.queue.append(frames)
        self.server.stats.queue_depth[self.name] = len(self.queue)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry is None or not self._retry.active():
            self._retry = self.server.clock.callLater(RETRY_PERIOD, self.flush)

    def flush(self) -> None:
        """Send queued messages in order while the remote takes them."""
        while self.queue and self.sock is not None:
            if not self.sock.try_send(self.queue[0]):
                self._schedule_retry()
                break
            self.queue.popleft()
        self.server.stats.queue_depth[self.name] = len(self.queue)

    # -- reverse path -------------------------------------------------------------

    def _from_remote(self, frames: list[bytes]) -> None:
        if frames and frames[0] == b"":
            # No route: an answer to our own ping.
            self._last_pong = self.server.clock.seconds()
            if self._warned:
                log.info("cc proxy [{section}]: {remote} answers again", section=self.name,
                         remote=self.options.remote_cc)
                self._warned = False
            return
        self.server.send_frames(frames)

    def _ping(self) -> None:
        now = self.server.clock.seconds()
        if self._last_pong is not None and now - self._last_pong > PING_WARN_AFTER and not self._warned:
            self._warned = True
            log.warn(
                "cc proxy [{section}]: no pong from {remote} for {secs:.0f} s",
                section=self.name, remote=self.options.remote_cc, secs=now - self._last_pong,
            )
        if self.sock is not None:
            # A ping is never queued: an old ping says nothing about the remote.
            self.sock.try_send(self.server.encode((), "echo.request", {"target": self.options.remote_cc}).frames())


handler_class = ProxyHandler
