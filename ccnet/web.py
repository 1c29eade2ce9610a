"""Helpers shared by ccnet's HTTPS resources: caller identity, JSON replies, /health."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from ccnet.edge.request import request_identity

__all__ = ["HealthResource", "access_log_line", "json_response"]


def access_log_line(timestamp: str, request: Request) -> str:
    """Combined-log-style line that also names the caller's certificate identity."""
    identity = request_identity(request)
    peer = request.getClientAddress()
    return '{host} "{who}" {ts} "{method} {uri} {proto}" {code} {length}'.format(
        host=getattr(peer, "host", "-"),
        who=identity.dn if identity else "-",
        ts=timestamp,
        method=request.method.decode("ascii", "replace"),
        uri=request.uri.decode("ascii", "replace")[:200],
        proto=request.clientproto.decode("ascii", "replace"),
        code=request.code,
        length=request.sentLength or "-",
    )


def json_response(request: Request, code: int, obj: Any, content_type: str = "application/json") -> bytes:
    """Set status and content type; return the JSON body bytes for ``render_*``."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type.encode("ascii"))
    return json.dumps(obj, default=str).encode("utf-8")


class HealthResource(Resource):
    """``GET /health``: liveness, version, uptime and enabled services, as JSON."""

    isLeaf = True

    def __init__(self, version: str, services: list[str], clock: IReactorTime | None = None) -> None:
        super().__init__()
        self._version = version
        self._services = services
        self._clock = clock
        self._started = self._now()

    def _now(self) -> float:
        return float(self._clock.seconds()) if self._clock is not None else time.time()

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        identity = request_identity(request)
        return json_response(
            request,
            200,
            {
                "status": "ok",
                "version": self._version,
                "uptime": round(self._now() - self._started, 3),
                "services": self._services,
                "identity": identity.dn if identity else None,
            },
        )
