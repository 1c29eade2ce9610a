"""``handler = echo``: answers ``echo.request`` with ``echo.response``.

``ping-remotes`` (comma list of ZMQ endpoints) makes it ping those CC servers
every ``ping-period`` seconds (1, as the original) and warn when a remote has
not answered for 5 periods; round trips are logged at debug level.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.crypto import CryptoError
from ccnet.cc.handler import CCHandler, CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.message import BodyError, Invalid, parse

__all__ = ["EchoHandler", "EchoOptions", "handler_class"]

log = Logger()

#: A remote is reported when it has not answered for this many ping periods.
PONG_WARN_PERIODS = 5


@dataclass(frozen=True)
class EchoOptions:
    ping_remotes: tuple[str, ...] = ()
    ping_period: float = 1.0


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class EchoHandler(CCHandler):
    handler_name = "echo"
    cc_roles = frozenset({"local", "remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> EchoOptions:
        from ccnet.cc.config import ZMQ_ENDPOINT_HELP, valid_zmq_endpoint

        remotes = section.get_list("ping-remotes", [])
        for url in remotes:
            if not valid_zmq_endpoint(url):
                raise section.error("ping-remotes", ZMQ_ENDPOINT_HELP, url)
        return EchoOptions(tuple(remotes), section.get_float("ping-period", 1.0, minimum=0.1))

    def __init__(self, name: str, options: EchoOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self._sockets: list[Any] = []
        #: url -> [last ping time, last pong time]
        self.pings: dict[str, list[float]] = {}
        self._loop: task.LoopingCall | None = None

    def handle(self, request: CCRequest) -> None:
        p = request.payload or {}
        if request.type == "echo.request":
            target = p.get("target", "")
            if not isinstance(target, str):
                raise HandlerError("echo.request field 'target' is not a string")
            self.server.reply(
                request,
                "echo.response",
                {
                    "orig_hostname": p.get("hostname", ""),
                    "orig_target": target,
                    "orig_time": p.get("time", 0.0),
                },
            )
        elif request.type == "echo.response":
            log.info(
                "echo.response from {host} for {target}",
                host=p.get("hostname", "?"), target=p.get("orig_target", "?"),
            )
        else:
            raise HandlerError(f"echo handler answers echo.request, not {request.type}")

    # -- active pings (ping-remotes) ---------------------------------------------

    def start(self) -> None:
        if not self.options.ping_remotes:
            return
        from ccnet.cc.transport import dealer

        now = self.server.clock.seconds()
        for url in self.options.ping_remotes:
            sock = dealer(self.server.zmq_factory, self.server.config.zmq, partial(self._pong, url))
            sock.connect(url)
            self._sockets.append((url, sock))
            self.pings[url] = [now, now]
        self._loop = task.LoopingCall(self._ping)
        self._loop.clock = self.server.clock
        self._loop.start(self.options.ping_period, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for _, sock in self._sockets:
            if sock.factory is not None:
                sock.shutdown()
        self._sockets = []

    def _ping(self) -> None:
        now = self.server.clock.seconds()
        for url, sock in self._sockets:
            state = self.pings[url]
            silent = now - state[1]
            if silent > PONG_WARN_PERIODS * self.options.ping_period:
                log.warn("echo: no pong from {url} for {secs:.1f} s", url=url, secs=silent)
            # A ping that ZMQ cannot take now (remote down) is simply skipped.
            if sock.try_send(self.server.encode((), "echo.request", {"target": url}).frames()):
                state[0] = now

    def _pong(self, url: str, frames: list[bytes]) -> None:
        msg = parse([b"remote", *frames], self.server.config.max_body)
        if isinstance(msg, Invalid) or msg.type != "echo.response":
            log.warn("echo: unexpected message from {url}", url=url)
            return
        try:
            body, _ = self.server.codec.decode(msg, self.server.clock.seconds())
        except (CryptoError, BodyError) as exc:
            log.warn("echo: rejected pong from {url}: {reason}", url=url, reason=str(exc))
            return
        now = self.server.clock.seconds()
        state = self.pings[url]
        state[1] = now
        sent = body.get("orig_time")
        if isinstance(sent, (int, float)):
            log.debug("echo: {url} answered in {ms:.1f} ms", url=url, ms=(now - sent) * 1000)


handler_class = EchoHandler
