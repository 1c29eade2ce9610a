"""Thin txzmq adapters: a ROUTER/DEALER that hands complete frame lists to a
callback, applies the zmq_* options before bind/connect, and reports a full
send queue instead of raising (no CC semantics here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqEndpoint, ZmqEndpointType, ZmqFactory

from ccnet.cc.config import ZmqOptions

__all__ = ["make_factory", "ZmqSocket", "router", "dealer"]

log = Logger()

# Plain ints: pyzmq's enum flag arithmetic was a visible share of the per-message cost.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)


class _Factory(ZmqFactory):
    # txzmq keeps reactor/ioThreads/lingerPeriod as class attributes (the global
    # reactor); ccnet passes them per instance.
    def __init__(self, reactor: Any, opts: ZmqOptions) -> None:
        self.reactor = reactor
        self.ioThreads = opts.nthreads
        self.lingerPeriod = opts.linger
        super().__init__()


def make_factory(reactor: Any, opts: ZmqOptions) -> ZmqFactory:
    """The one ZmqFactory (ZMQ context) of a CC server and everything it runs."""
    return _Factory(reactor, opts)


class ZmqSocket(ZmqConnection):
    """One ZMQ socket in the reactor; ``on_message(frames)`` gets each message."""

    read_scheduled: Any

    def __init__(
        self,
        factory: ZmqFactory,
        socket_type: int,
        opts: ZmqOptions,
        on_message: Callable[[list[bytes]], None],
        immediate: bool = False,
    ) -> None:
        self.socketType = socket_type
        self.on_message = on_message
        super().__init__(factory)
        s = self.socket
        s.set(zmq.SNDHWM, opts.hwm)
        s.set(zmq.RCVHWM, opts.hwm)
        if opts.rcvbuf:
            s.set(zmq.RCVBUF, opts.rcvbuf)
        if opts.sndbuf:
            s.set(zmq.SNDBUF, opts.sndbuf)
        s.set(zmq.TCP_KEEPALIVE, opts.tcp_keepalive)
        if opts.tcp_keepalive > 0:
            s.set(zmq.TCP_KEEPALIVE_INTVL, opts.tcp_keepalive_intvl)
            s.set(zmq.TCP_KEEPALIVE_IDLE, opts.tcp_keepalive_idle)
            s.set(zmq.TCP_KEEPALIVE_CNT, opts.tcp_keepalive_cnt)
        s.set(zmq.LINGER, opts.linger)
        if immediate:
            # Queue only on live connections, so "remote down" shows as EAGAIN
            # and our own bounded queue decides what to drop.
            s.set(zmq.IMMEDIATE, 1)

    def bind(self, address: str) -> str:
        """Bind and return the real endpoint (``tcp://127.0.0.1:*`` → chosen port)."""
        self.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, address)])
        last = self.socket.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def connect(self, address: str) -> None:
        self.addEndpoints([ZmqEndpoint(ZmqEndpointType.connect, address)])

    def messageReceived(self, message: list[bytes]) -> None:  # noqa: N802 (txzmq API)
        self.on_message(message)

    def doRead(self) -> None:  # noqa: N802 (IReadDescriptor)
        """Drain the socket.  Same contract as txzmq's, with whole-message
        ``recv_multipart`` and without the per-message legacy log context,
        which dominated the cost per message."""
        if self.read_scheduled is not None:
            if not self.read_scheduled.called:
                self.read_scheduled.cancel()
            self.read_scheduled = None
        on_message = self.on_message
        while self.factory is not None:
            sock = self.socket
            if not sock.get(_EVENTS) & _POLLIN:
                return
            recv, get = sock.recv, sock.get
            try:
                frames = [recv(_NOBLOCK)]
                while get(_RCVMORE):
                    frames.append(recv(_NOBLOCK))
            except zmq.Again:
                continue
            try:
                on_message(frames)
            except Exception:
                # An exception escaping doRead makes the reactor drop the socket.
                log.failure("cc: message callback failed; socket kept serving")

    def try_send(self, frames: list[bytes]) -> bool:
        """Send without blocking; False when ZMQ cannot take the message now."""
        if self.socket is None:
            return False
        send = self.socket.send
        try:
            # The first frame decides: once it is queued, ZMQ takes the rest atomically.
            for frame in frames[:-1]:
                send(frame, _MORE_NOBLOCK)
            send(frames[-1], _NOBLOCK)
        except zmq.Again:
            return False
        # ZMQ's fd is edge-triggered: touching the socket can swallow the read
        # edge, so look for input on the next reactor turn (as txzmq does).
        if self.read_scheduled is None and self.factory is not None:
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)
        return True


def router(factory: ZmqFactory, opts: ZmqOptions, on_message: Callable[[list[bytes]], None]) -> ZmqSocket:
    return ZmqSocket(factory, zmq.ROUTER, opts, on_message)


def dealer(
    factory: ZmqFactory, opts: ZmqOptions, on_message: Callable[[list[bytes]], None]
) -> ZmqSocket:
    return ZmqSocket(factory, zmq.DEALER, opts, on_message, immediate=True)
