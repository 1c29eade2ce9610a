"""The private Twisted attributes ccnet relies on, in one place.

Twisted has no public API for these; each accessor names the attribute it reads, and
``tests/test_edge_shim.py`` fails when a Twisted release renames or drops one, instead
of ccnet silently losing the behaviour.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Any

from ccnet.reactors import IReactor

__all__ = [
    "clear_exit_signal",
    "exit_signal",
    "http_channel",
    "kernel_unsent",
    "request_disconnected",
    "socket_transport",
    "unsent_bytes",
]


def request_disconnected(request: Any) -> bool:
    """The client of ``request`` went away (``Request._disconnected``).

    ``notifyFinish`` tells it too, but only to whoever asked before it happened; a
    handler resuming after an await needs to look.
    """
    return bool(getattr(request, "_disconnected", False))


def exit_signal(reactor: IReactor) -> int | None:
    """The signal that stopped the reactor (``ReactorBase._exitSignal``), if any."""
    return getattr(reactor, "_exitSignal", None)


def clear_exit_signal(reactor: IReactor) -> None:
    """Forget it: twistd re-raises that signal after a clean shutdown (exit status -15
    for SIGTERM); a daemon that drained and stopped as asked should exit 0."""
    if hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = None


def socket_transport(protocol: Any) -> Any:
    """The TCP transport under ``protocol`` (through the TLS layer when there is one):
    the first transport with a write buffer (``FileDescriptor.dataBuffer``)."""
    transport = getattr(protocol, "transport", None)
    for _ in range(4):
        if transport is None or hasattr(transport, "dataBuffer"):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def unsent_bytes(transport: Any) -> int:
    """Bytes a TCP transport still holds for the peer in Twisted's own buffers
    (``FileDescriptor.dataBuffer``, ``offset``, ``_tempDataLen``)."""
    buffered = len(getattr(transport, "dataBuffer", b""))
    return buffered - int(getattr(transport, "offset", 0)) + int(getattr(transport, "_tempDataLen", 0))


def kernel_unsent(transport: Any) -> int:
    """Bytes in the socket's send queue not yet taken by the peer (Linux TIOCOUTQ), or -1."""
    try:
        raw = fcntl.ioctl(transport.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return -1
    return int(struct.unpack("i", raw)[0])


def http_channel(protocol: Any) -> Any:
    """The HTTP/1.1 channel behind twisted.web's protocol-choosing shim
    (``_GenericHTTPChannelProtocol._channel``), or ``protocol`` itself."""
    return getattr(protocol, "_channel", protocol)
