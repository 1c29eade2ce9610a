"""Thin txzmq adapters: a ROUTER/DEALER that hands complete frame lists to a
callback, applies the zmq_* options before bind/connect, and reports a full
send queue instead of raising (no CC semantics here).

The ROUTER runs with ``ROUTER_MANDATORY``: a message ZMQ cannot queue for its
peer is kept in a bounded :class:`~ccnet.cc.sendqueue.SendQueue` and sent when
the peer reads again, or handed to ``on_dropped`` — never lost silently.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any

import zmq
from twisted.internet import task
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqEndpoint, ZmqEndpointType, ZmqFactory

from ccnet.cc.config import ZmqOptions
from ccnet.cc.sendqueue import FULL, GONE, SENT, SendQueue
from ccnet.reactors import IReactor

__all__ = ["make_factory", "ZmqSocket", "router", "dealer", "SENT", "FULL", "GONE"]

log = Logger()

# Plain ints: pyzmq's enum flag arithmetic was a visible share of the per-message cost.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_POLLOUT = int(zmq.POLLOUT)
_EHOSTUNREACH = errno.EHOSTUNREACH
#: While messages wait in the send queue, retry this often even if ZMQ's fd
#: stays quiet (a send elsewhere may have consumed the edge that said "writable").
SEND_RETRY = 0.02
#: How often the socket looks for input the reactor was not told about (see
#: :meth:`ZmqSocket._look_for_input`).
EDGE_WATCH = 1.0
#: A peer that is down is reconnected to with libzmq's own back-off (doubling from its
#: 100 ms with random jitter) up to this many milliseconds, not every 100 ms for ever.
RECONNECT_IVL_MAX_MS = 5000

#: Drop callback: (frames, reason).
OnDropped = Callable[[list[bytes], str], None]


class _Factory(ZmqFactory):
    # txzmq keeps reactor/ioThreads/lingerPeriod as class attributes (the global
    # reactor); ccnet passes them per instance.
    def __init__(self, reactor: IReactor, opts: ZmqOptions) -> None:
        self.reactor = reactor
        self.ioThreads = opts.nthreads
        self.lingerPeriod = opts.linger
        super().__init__()


def make_factory(reactor: IReactor, opts: ZmqOptions) -> ZmqFactory:
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
        # Set before txzmq's constructor: it calls doRead.
        self.paused = False
        self.out: SendQueue | None = None
        self.on_dropped: OnDropped | None = None
        self._retry: Any = None
        self._monitor: ZmqSocket | None = None
        #: Times input was found waiting without ZMQ's fd having said so (a lost edge).
        self.lost_edges = 0
        super().__init__(factory)
        self._edge_watch = task.LoopingCall(self._look_for_input)
        self._edge_watch.clock = factory.reactor
        self._edge_watch.start(EDGE_WATCH, now=False)
        s = self.socket
        s.set(zmq.SNDHWM, opts.hwm)
        s.set(zmq.RCVHWM, opts.hwm)
        if opts.maxmsgsize > 0:
            s.set(zmq.MAXMSGSIZE, opts.maxmsgsize)
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
        s.set(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
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
        # connect may process ZMQ's commands and eat the fd's edge: read EVENTS
        # now, or the first message of an inproc peer would never be signalled.
        self.doRead()

    def messageReceived(self, message: list[bytes]) -> None:  # noqa: N802 (txzmq API)
        self.on_message(message)

    def doRead(self) -> None:  # noqa: N802 (IReadDescriptor)
        """Drain the socket: the one read loop.

        Same contract as txzmq's (ZMQ's fd is edge-triggered: read ``EVENTS``
        until it says no more input), with ``recv`` + ``RCVMORE`` and without the
        per-message legacy log context, which dominated the cost per message.
        The same loop sends what waits in the send queue (ZMQ signals "a peer
        reads again" on the same fd) and honours :meth:`pause_reading`: while
        paused it still consumes the fd's edge and flushes, but reads nothing.
        """
        if self.read_scheduled is not None:
            if not self.read_scheduled.called:
                self.read_scheduled.cancel()
            self.read_scheduled = None
        on_message = self.on_message
        if self.out and self.factory is not None and self.socket.get(_EVENTS) & _POLLOUT:
            self.flush()
        while self.factory is not None:
            sock = self.socket
            # ZMQ's contract after the fd signalled: read EVENTS (it processes the
            # socket's commands and clears the fd), paused or not.
            if not sock.get(_EVENTS) & _POLLIN or self.paused:
                if self.out:
                    self.flush()
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

    def _look_for_input(self) -> None:
        """Belt and braces for the edge-triggered fd: ZMQ signals new input once, and a
        socket operation in the wrong place can swallow that signal; were that to happen
        the socket would wait forever for a wake-up that never comes. Once a second, input
        waiting with no read scheduled is read, counted and logged, so a lost edge costs
        at most a second and never goes unnoticed."""
        if self.factory is None or self.paused or self.read_scheduled is not None:
            return
        if self.socket.get(_EVENTS) & _POLLIN:
            self.lost_edges += 1
            if self.lost_edges == 1 or self.lost_edges % 100 == 0:
                log.warn("cc: ZMQ socket had input the reactor was not told about ({n} times); reading it",
                         n=self.lost_edges)
            self.doRead()

    def try_send(self, frames: list[bytes]) -> bool:
        """Send without blocking; False when ZMQ cannot take the message now."""
        return self._send(frames) == SENT

    def _send(self, frames: list[bytes]) -> int:
        """One non-blocking send: SENT, FULL (peer's pipe at its HWM, or no
        peer for a DEALER) or GONE (ROUTER_MANDATORY: no such peer)."""
        if self.socket is None:
            return GONE
        send = self.socket.send
        try:
            # The first frame decides: once it is queued, ZMQ takes the rest atomically.
            for frame in frames[:-1]:
                send(frame, _MORE_NOBLOCK)
            send(frames[-1], _NOBLOCK)
        except zmq.Again:
            # No doRead scheduled here (that would spin while the peer does not
            # read): the send queue's retry timer covers a swallowed edge.
            return FULL
        except zmq.ZMQError as exc:
            if exc.errno != _EHOSTUNREACH:
                raise
            outcome = GONE
        else:
            outcome = SENT
        # ZMQ's fd is edge-triggered: touching the socket can swallow the read
        # edge, so look for input on the next reactor turn (as txzmq does).
        if self.read_scheduled is None and self.factory is not None:
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)
        return outcome

    # -- ROUTER: nothing lost silently ---------------------------------------------

    def queue_sends(self, per_peer: int, max_bytes: int, on_dropped: OnDropped) -> None:
        """ROUTER only: make unsendable messages visible (``ROUTER_MANDATORY``)
        and keep them in a bounded per-peer queue; ``on_dropped(frames, reason)``
        gets each one that does not fit or whose peer left."""
        self.socket.set(zmq.ROUTER_MANDATORY, 1)
        self.out = SendQueue(per_peer, max_bytes)
        self.on_dropped = on_dropped

    def send_or_queue(self, frames: list[bytes]) -> None:
        """Send now, or queue behind what waits for the same peer, or drop (reported)."""
        out = self.out
        if out is None:
            raise RuntimeError("send_or_queue needs queue_sends() first")
        if not out.waiting(frames[0]):
            outcome = self._send(frames)
            if outcome == SENT:
                return
            if outcome == GONE:
                self._dropped(frames, "peer-gone")
                return
        reason = out.push(frames)
        if reason is not None:
            self._dropped(frames, reason)
        else:
            self._schedule_retry()

    def flush(self) -> None:
        """Send queued messages while ZMQ takes them (called from the read loop)."""
        out = self.out
        if out is None:
            return
        for frames, reason in out.flush(self._send):
            self._dropped(frames, reason)
        if out:
            self._schedule_retry()

    def _dropped(self, frames: list[bytes], reason: str) -> None:
        if self.on_dropped is not None:
            self.on_dropped(frames, reason)

    def _schedule_retry(self) -> None:
        if (self._retry is None or not self._retry.active()) and self.factory is not None:
            self._retry = self.factory.reactor.callLater(SEND_RETRY, self.doRead)

    # -- read back-pressure -------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop taking messages from ZMQ (its queues, then TCP, push back on senders)."""
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            # The edge for what waits was consumed while paused: drain on the next turn.
            if self.read_scheduled is None and self.factory is not None:
                self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    # -- disconnects --------------------------------------------------------------

    def watch_disconnects(self, on_disconnect: Callable[[str], None]) -> None:
        """Call ``on_disconnect(endpoint)`` whenever ZMQ closes a peer connection
        (the peer left, or ZMQ cut it: a frame over ``zmq_maxmsgsize``, a
        protocol error).  ZMQ does not say which; a socket monitor is all it offers."""
        addr = f"inproc://ccnet-monitor-{id(self):x}"
        self.socket.monitor(addr, int(zmq.EVENT_DISCONNECTED))

        def event(frames: list[bytes]) -> None:
            if len(frames) >= 2 and len(frames[0]) >= 6:
                (ev,) = struct.unpack_from("=H", frames[0])
                if ev == int(zmq.EVENT_DISCONNECTED):
                    on_disconnect(frames[1].decode("utf-8", "replace"))

        self._monitor = ZmqSocket(self.factory, zmq.PAIR, ZmqOptions(), event)
        self._monitor.connect(addr)

    def shutdown(self) -> None:
        if self.factory is None:
            return  # already closed (the ROUTER closes its monitor; the factory may try again)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._edge_watch.running:
            self._edge_watch.stop()
        if self._monitor is not None:
            if self.socket is not None:
                try:
                    self.socket.disable_monitor()
                except zmq.ZMQError:
                    pass
            if self._monitor.factory is not None:
                self._monitor.shutdown()
            self._monitor = None
        if self.out:
            for frames, reason in self.out.clear():
                self._dropped(frames, reason)
        super().shutdown()


def router(factory: ZmqFactory, opts: ZmqOptions, on_message: Callable[[list[bytes]], None]) -> ZmqSocket:
    return ZmqSocket(factory, zmq.ROUTER, opts, on_message)


def dealer(
    factory: ZmqFactory, opts: ZmqOptions, on_message: Callable[[list[bytes]], None]
) -> ZmqSocket:
    return ZmqSocket(factory, zmq.DEALER, opts, on_message, immediate=True)
