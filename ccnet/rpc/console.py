"""What the web console shows of the RPC services (:mod:`ccnet.console.sources`)."""

from __future__ import annotations

from collections.abc import Callable

from ccnet.console.sources import CallTally, RPCView
from ccnet.rpc.resource import RPCResource

__all__ = ["console_view"]


def console_view(resource: RPCResource, clock: Callable[[], float]) -> Callable[[], RPCView]:
    """Count calls for the web console beside ``/metrics`` (chained on ``on_call``) and
    give the console its view: services, exported methods, calls and recent rate."""
    tally = CallTally(clock)
    counted = resource.on_call

    def on_call(service: str, method: str, status: int, seconds: float) -> None:
        if counted is not None:
            counted(service, method, status, seconds)
        tally.record(*resource.counted_names(service, method), status)

    resource.on_call = on_call
    return lambda: RPCView({name: tuple(m.table.names()) for name, m in resource.services.items()}, tally.rows())
