"""``/console/`` on the supervisor's listener: the thin twisted.web side of the console.

Every request: the caller's identity from its verified client certificate (the
supervisor's own ``peer()``), the admin role or 403. Pages are rendered by
:mod:`ccnet.console.views`. The run form goes through exactly what a client's
submission goes through (``specification_of`` as the shell, then
``SupervisorState.submit`` with the admin as the client). POSTs must be same-origin
(``Origin``, else ``Referer``) and carry the per-identity token of the form (CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import Request

from ccnet.console import views
from ccnet.console.chart import Series, result_rows, series_of, svg_chart
from ccnet.console.sources import ConsoleSources
from ccnet.edge.shim import request_disconnected
from ccnet.mplane.client import MPlaneError, specification_of
from ccnet.mplane.model import ExceptionMessage
from ccnet.mplane.shell import first_period, scope_problem
from ccnet.mplane.state import Peer
from ccnet.mplane.supervisor import HTTPError, SupervisorResource
from ccnet.store import StoreError

__all__ = ["ConsoleResource"]

log = Logger()

#: No script runs on a console page (pygal's chart script included: charts are <img>).
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; script-src 'none'; style-src 'unsafe-inline'; "
                                b"img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
    b"cache-control": b"no-store",
    b"referrer-policy": b"same-origin",
}


class _Reply(Exception):
    """Stop handling and answer ``code``: ``page`` as is, else ``text`` in the console's layout."""

    def __init__(self, code: int, text: str, page: str | None = None) -> None:
        super().__init__(text)
        self.code, self.text, self.page = code, text, page


Handler = Callable[[Request, Peer], Coroutine[Any, Any, bytes]]


class ConsoleResource(Resource):
    """The console's one leaf: routes are data (method, path below ``/console/``)."""

    isLeaf = True

    def __init__(self, supervisor: SupervisorResource, sources: ConsoleSources,
                 secret: bytes | None = None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.state = supervisor.state
        self.sources = sources
        self._secret = secret if secret is not None else os.urandom(32)
        self.routes: dict[tuple[bytes, str], Handler] = {
            (b"GET", ""): self.overview,
            (b"GET", "components"): self.components,
            (b"GET", "capabilities"): self.capabilities,
            (b"GET", "schedule"): self.schedule,
            (b"GET", "measurement"): self.measurement,
            (b"GET", "chart.svg"): self.chart,
            (b"GET", "run"): self.run_form,
            (b"POST", "run"): self.run,
            (b"GET", "cc"): self.cc,
            (b"GET", "rpc"): self.rpc,
        }

    def render(self, request: Request) -> Any:
        d = defer.ensureDeferred(self._serve(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return server.NOT_DONE_YET

    async def _serve(self, request: Request) -> None:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        path = "/".join(seg.decode("utf-8", "replace") for seg in request.postpath or []).strip("/")
        method = b"GET" if request.method == b"HEAD" else request.method
        who = "-"
        try:
            await self.supervisor.wait_ready()
            try:
                peer = self.supervisor.peer(request)
            except HTTPError as exc:
                raise _Reply(exc.code, exc.text, views.forbidden(None)) from None
            who = peer.identity
            # Checked on every request: a role removed on SIGHUP takes effect at once.
            if not self.state.policy.is_admin(peer.roles):
                raise _Reply(403, "not an admin", views.forbidden(peer.identity))
            handler = self.routes.get((method, path))
            if handler is None:
                known = any(p == path for _, p in self.routes)
                raise _Reply(405 if known else 404, "Method not allowed" if known else "Not found")
            body = await handler(request, peer)
        except defer.CancelledError:
            return
        except _Reply as exc:
            request.setResponseCode(exc.code)
            body = (exc.page or views.layout(f"{exc.code}", f"<p class=\"problem\">{views.cell(exc.text)}</p>",
                                             who)).encode()
        except StoreError as exc:
            log.error("console {path}: database unavailable: {error}", path=path, error=str(exc))
            request.setResponseCode(503)
            body = views.layout("503", "<p class=\"problem\">Database unavailable, nothing was done.</p>",
                                who).encode()
        except Exception:
            log.failure("console {method} {path} failed", method=request.method, path=path)
            request.setResponseCode(500)
            body = b"Internal error\n"
        log.debug("console {method} /{path} by {peer}: {code}", method=request.method.decode(), path=path,
                  peer=who, code=request.code)
        if not request.finished and not request_disconnected(request):
            request.write(body)
            request.finish()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def args(request: Request) -> dict[bytes, list[bytes]]:
        """The query's (and a form POST's) arguments."""
        return cast(dict[bytes, list[bytes]], request.args or {})

    @classmethod
    def arg(cls, request: Request, name: str, default: str = "") -> str:
        values = cls.args(request).get(name.encode())
        return values[0].decode("utf-8", "replace") if values else default

    def page_number(self, request: Request) -> int:
        try:
            return int(self.arg(request, "page", "1"))
        except ValueError:
            raise _Reply(400, "page must be a number") from None

    @staticmethod
    def html(title: str, body: str, peer: Peer) -> bytes:
        return views.layout(title, body, peer.dn or peer.identity).encode("utf-8")

    def csrf_token(self, peer: Peer) -> str:
        """The run form's token: bound to the admin's certificate identity (and this process)."""
        return hmac.new(self._secret, (peer.dn or peer.identity).encode(), hashlib.sha256).hexdigest()

    def check_same_origin(self, request: Request, peer: Peer) -> None:
        """A POST must come from a page of this site: same Origin (else Referer), right token."""
        host = request.getHeader("host") or ""
        origin = request.getHeader("origin")
        referer = request.getHeader("referer")
        ours = f"https://{host}"
        same = origin == ours if origin is not None else (referer or "").startswith(ours + "/")
        if not host or not same:
            log.warn("console: cross-origin POST by {peer} refused (origin {origin}, referer {referer})",
                     peer=peer.identity, origin=origin, referer=referer)
            raise _Reply(403, "Cross-site request refused (Origin/Referer is not this console)")
        if not hmac.compare_digest(self.arg(request, "csrf"), self.csrf_token(peer)):
            raise _Reply(403, "The form's token is missing or wrong: reload the form and submit again")

    # ------------------------------------------------------------------ pages

    async def overview(self, request: Request, peer: Peer) -> bytes:
        s = self.state
        entries = views.schedule(s.measurements.values(), s.clock())
        body = views.overview(len(s.components), len(s.capabilities), entries, dict(s.counters),
                              self.supervisor.version)
        return self.html("ccnet console", body, peer)

    async def components(self, request: Request, peer: Peer) -> bytes:
        caps: dict[str, int] = {}
        for c in self.state.capabilities.values():
            caps[c.component] = caps.get(c.component, 0) + 1
        ordered = sorted(self.state.components.values(), key=lambda c: c.identity)
        page = views.paged(ordered, self.page_number(request))
        return self.html("Components", views.components_page(page, caps), peer)

    async def capabilities(self, request: Request, peer: Peer) -> bytes:
        ordered = sorted(self.state.capabilities.values(), key=lambda c: (c.label or "", c.component))
        page = views.paged(ordered, self.page_number(request))
        return self.html("Capabilities", views.capabilities_page(page), peer)

    async def schedule(self, request: Request, peer: Peer) -> bytes:
        phase = self.arg(request, "phase", "all")
        if phase not in ("all", *views.PHASES):
            raise _Reply(400, f"phase must be one of all, {', '.join(views.PHASES)}")
        entries = views.schedule(self.state.measurements.values(), self.state.clock())
        if phase != "all":
            entries = [x for x in entries if x.phase == phase]
        page = views.paged(entries, self.page_number(request))
        return self.html("Schedule of measurements", views.schedule_page(page, phase), peer)

    def _entry(self, request: Request) -> views.ScheduleEntry:
        m = self.state.measurements.get(self.arg(request, "id"))
        if m is None:
            raise _Reply(404, f"No measurement {self.arg(request, 'id')!r} (finished ones expire)")
        return views.schedule([m], self.state.clock())[0]

    async def measurement(self, request: Request, peer: Peer) -> bytes:
        entry = self._entry(request)
        number = self.page_number(request)
        m = entry.measurement
        columns, rows, series = await deferToThread(_table_and_series, m.reply)
        chart = (f"/console/chart.svg?{urlencode({'id': m.id, 'v': str(m.updated)})}"
                 if series is not None else None)
        page = views.paged(rows, number)
        title = f"Measurement {m.client_label or m.spec.label or m.id}"
        return self.html(title, views.measurement_page(entry, columns, page, chart), peer)

    async def chart(self, request: Request, peer: Peer) -> bytes:
        m = self._entry(request).measurement
        _, _, series = await deferToThread(_table_and_series, m.reply)
        if series is None:
            raise _Reply(404, "This measurement has no series to chart")
        try:
            svg = await deferToThread(svg_chart, series, f"{m.spec.label} on {m.component}")
        except (OverflowError, ValueError) as exc:  # pygal on values whose range overflows a float
            log.warn("console: cannot chart measurement {id}: {error}", id=m.id, error=str(exc))
            raise _Reply(404, "The values of this measurement cannot be drawn (out of range)") from None
        request.setHeader(b"content-type", b"image/svg+xml")
        return svg.encode("utf-8")

    def _capability(self, key: str) -> Any:
        cap = self.state.capabilities.get(key)
        if cap is None:
            raise _Reply(404, f"No capability {key!r} (withdrawn?)")
        return cap

    async def run_form(self, request: Request, peer: Peer) -> bytes:
        cap = self._capability(self.arg(request, "cap"))
        form = views.run_form(cap, first_period(cap.statement), {}, None, self.csrf_token(peer))
        return self.html(f"Run {cap.label}", form, peer)

    async def run(self, request: Request, peer: Peer) -> bytes:
        self.check_same_origin(request, peer)
        cap = self._capability(self.arg(request, "cap"))
        when = self.arg(request, "when").strip() or first_period(cap.statement)
        given = {k.decode("utf-8", "replace")[len("param:"):]: v[0].decode("utf-8", "replace").strip()
                 for k, v in self.args(request).items() if k.startswith(b"param:") and v}
        params = {k: v for k, v in given.items() if v}
        # The shell's checks (scope within the capability's, values within constraints),
        # then the supervisor's own, as for any client's specification.
        problem = scope_problem(cap.statement, when, datetime.now(UTC))
        spec = None
        if problem is None:
            try:
                spec = specification_of(cap.statement, when, params, self.state.registries)
            except MPlaneError as exc:
                problem = str(exc)
        reply = await self.state.submit(peer, spec, cap_key=cap.key) if spec is not None else None
        if isinstance(reply, ExceptionMessage):
            problem = reply.message
        log.info("console: {admin} ran {label} of {component} ({when}, {params}): {outcome}",
                 admin=peer.identity, label=cap.label, component=cap.component, when=when, params=params,
                 outcome=problem or "accepted")
        if problem is not None or reply is None:
            request.setResponseCode(400)
            form = views.run_form(cap, when, given, problem or "not submitted", self.csrf_token(peer))
            return self.html(f"Run {cap.label}", form, peer)
        # The measurement just accepted under the receipt's token (the latest: tokens are
        # reused once an earlier measurement of the same text has finished).
        mine = [m for m in self.state.measurements.values()
                if m.client == peer.identity and m.client_token == reply.token]
        latest = max(mine, key=lambda m: m.created, default=None)
        target = (f"/console/measurement?{urlencode({'id': latest.id})}" if latest is not None
                  else "/console/schedule")
        request.setResponseCode(303)  # see other: the measurement's page, fetched with GET
        request.setHeader(b"location", target.encode())
        return b""

    async def cc(self, request: Request, peer: Peer) -> bytes:
        view = self.sources.cc() if self.sources.cc is not None else None
        return self.html("CC routes and handlers", views.cc_page(view), peer)

    async def rpc(self, request: Request, peer: Peer) -> bytes:
        view = self.sources.rpc() if self.sources.rpc is not None else None
        return self.html("RPC services", views.rpc_page(view), peer)


def _table_and_series(reply: Any) -> tuple[list[str], list[list[Any]], Series | None]:
    """A result's columns, rows and series: every row copied and every time parsed (about
    a second for a 16 MB result), so the console calls it in a thread."""
    columns, rows = result_rows(reply)
    return columns, rows, series_of(columns, rows)
