"""The plain-HTTP operations listener: ``/health`` (added by the service), ``/ready``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ccnet.runtime import Runtime
from ccnet.web import json_response

__all__ = ["MetricsResource", "ReadyResource", "build"]

log = Logger()


class ReadyResource(Resource):
    """``GET /ready``: 200 when the store answers, 503 otherwise."""

    isLeaf = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self._runtime = runtime

    def render_GET(self, request: Request) -> Any:  # noqa: N802 (twisted.web API)
        d = defer.maybeDeferred(self._runtime.store.ping)

        def done(ok: bool) -> None:
            body = json_response(request, 200 if ok else 503, {"ready": bool(ok), "store": bool(ok)})
            request.write(body)
            request.finish()

        def failed(_: Any) -> None:
            request.write(json_response(request, 503, {"ready": False, "store": False}))
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class MetricsResource(Resource):
    """``GET /metrics``: Prometheus text exposition from every part that registered."""

    isLeaf = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self._runtime = runtime

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        parts = [f'ccnet_info{{version="{self._runtime.version}"}} 1\n']
        for name, render in sorted(self._runtime.metrics_sources.items()):
            try:
                parts.append(render())
            except Exception:
                log.failure("metrics source {name} failed", name=name)
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts).encode("utf-8")


def build(runtime: Runtime, cfg: Any) -> Resource:
    root = Resource()
    root.putChild(b"ready", ReadyResource(runtime))  # type: ignore[arg-type]
    root.putChild(b"metrics", MetricsResource(runtime))  # type: ignore[arg-type]
    return root
