"""Messages a ROUTER could not hand to ZMQ yet, per peer, within bounds (pure).

With ``ROUTER_MANDATORY`` a send to a peer whose pipe is at its high-water mark
fails (``EAGAIN``) instead of vanishing, and a send to a peer that is gone fails
(``EHOSTUNREACH``).  This queue keeps what could not be sent, in order per peer
(the first frame, the ZMQ routing id), bounded by a count per peer and by total
bytes; what does not fit, and what was waiting for a peer that left, is handed
back to the caller as dropped, with the reason, so it can be counted and logged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["SENT", "FULL", "GONE", "SendQueue", "PEER_FULL", "BYTES_FULL", "PEER_GONE", "CLOSING"]

#: Outcomes of one send attempt (the ``send`` callable's return value).
SENT, FULL, GONE = 0, 1, 2

#: Drop reasons (counter labels).
PEER_FULL = "peer-queue-full"
BYTES_FULL = "queue-bytes-full"
PEER_GONE = "peer-gone"
CLOSING = "closing"

Dropped = list[tuple[list[bytes], str]]


def _size(frames: list[bytes]) -> int:
    return sum(len(f) for f in frames)


class SendQueue:
    """Per-peer FIFO queues of frame lists; ``per_peer`` messages each, ``max_bytes`` in all."""

    def __init__(self, per_peer: int, max_bytes: int) -> None:
        self.per_peer = per_peer
        self.max_bytes = max_bytes
        self._peers: dict[bytes, deque[list[bytes]]] = {}
        self.bytes = 0
        self.messages = 0
        #: Most messages ever waiting at once (bench and tests read it).
        self.peak = 0

    def __bool__(self) -> bool:
        return bool(self._peers)

    def waiting(self, peer: bytes) -> bool:
        """True when ``peer`` has queued messages (a new one must go behind them)."""
        return peer in self._peers

    def push(self, frames: list[bytes]) -> str | None:
        """Queue ``frames`` for its peer; returns the drop reason when it does not fit."""
        size = _size(frames)
        q = self._peers.get(frames[0])
        if q is not None and len(q) >= self.per_peer:
            return PEER_FULL
        if self.bytes + size > self.max_bytes:
            return BYTES_FULL
        if q is None:
            q = self._peers[frames[0]] = deque()
        q.append(frames)
        self.bytes += size
        self.messages += 1
        self.peak = max(self.peak, self.messages)
        return None

    def flush(self, send: Callable[[list[bytes]], int]) -> Dropped:
        """Send queued messages in order per peer while ``send`` takes them.

        A peer whose pipe is full (``FULL``) keeps its queue and the next peer is
        tried; a peer that is gone (``GONE``) loses its whole queue: returned as
        dropped.
        """
        dropped: Dropped = []
        for peer in list(self._peers):
            q = self._peers[peer]
            while q:
                outcome = send(q[0])
                if outcome == FULL:
                    break
                frames = q.popleft()
                self.bytes -= _size(frames)
                self.messages -= 1
                if outcome == GONE:
                    dropped.append((frames, PEER_GONE))
                    while q:
                        frames = q.popleft()
                        self.bytes -= _size(frames)
                        self.messages -= 1
                        dropped.append((frames, PEER_GONE))
            if not q:
                del self._peers[peer]
        return dropped

    def clear(self) -> Dropped:
        """Everything still queued, as dropped (the socket is closing)."""
        dropped = [(frames, CLOSING) for q in self._peers.values() for frames in q]
        self._peers.clear()
        self.bytes = self.messages = 0
        return dropped
