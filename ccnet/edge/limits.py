"""What a connection to an HTTP(S) listener may cost: time, bytes/s and how many.

Read once from ``[ccnet]`` (defaults for every listener) and from each listener's own
section (``[supervisor]``, ``[rpc]``, ``[component]``, ``[metrics]``), which wins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccnet.config import SectionReader

__all__ = ["DEFAULT", "METRICS_DEFAULT", "EdgeLimits", "parse_limits"]


@dataclass(frozen=True)
class EdgeLimits:
    """Per-listener connection limits.

    ``head_timeout``: seconds for a complete request head, from the TCP accept (TLS
    handshake included) or from the first byte of a further request on a keep-alive
    connection. ``min_body_rate``: a request body may take ``head_timeout`` seconds plus
    one second per ``min_body_rate`` bytes it has delivered (0: no check).
    ``max_connections`` / ``max_connections_per_peer``: open connections on the listener
    and from one peer address; the excess is closed at accept, before any TLS work.
    """

    head_timeout: float = 30.0
    min_body_rate: int = 1024
    max_connections: int = 512
    max_connections_per_peer: int = 64


DEFAULT = EdgeLimits()

#: The plain ``[metrics]`` port is for a few scrapers: smaller caps unless its own
#: section says otherwise.
METRICS_DEFAULT = replace(DEFAULT, max_connections=64, max_connections_per_peer=32)


def parse_limits(sect: SectionReader, base: EdgeLimits) -> EdgeLimits:
    """The limits set in ``sect``, ``base`` for the keys it does not have."""
    return EdgeLimits(
        head_timeout=sect.get_float("head-timeout", base.head_timeout, minimum=0.01),
        min_body_rate=sect.get_size("min-body-rate", base.min_body_rate),
        max_connections=sect.get_int("max-connections", base.max_connections, minimum=1),
        max_connections_per_peer=sect.get_int("max-connections-per-peer", base.max_connections_per_peer,
                                              minimum=1),
    )
