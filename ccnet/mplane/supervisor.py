"""The mPlane supervisor as twisted.web resources (component side, client side, operator view).

Thin: HTTP in, ``SupervisorState`` calls, HTTP out. Every request is authorized by the
verified TLS identity of the caller (never by a header such as the SDK's
``Forged-MPlane-Identity``). Paths default to the mPlane SDK's so unmodified SDK
components and clients work; the RI fork's client paths are served as well.

Component polls are held open (long-poll) for components that registered the SDK's
``callback`` capability or asked with ``?wait=N``: a specification submitted by a
client is handed over the moment it arrives. Each reply to an SDK component ends with
a ``callback`` specification telling it to poll again at once (its parser stops at the
callback entry, so it must come last).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from prometheus_client.core import Metric
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ccnet.config import SetupError
from ccnet.edge.request import request_identity
from ccnet.edge.shim import request_disconnected
from ccnet.metrics import counter, gauge
from ccnet.mplane.authz import AuthzError, IdentityClaims, Policy
from ccnet.mplane.cluster import CHANNEL, ClusterSync, Listener
from ccnet.mplane.config import SupervisorConfig
from ccnet.mplane.dialect import (
    Dialect,
    from_wire,
    parse_registration,
    parse_submission,
    ri_listing,
    to_wire,
)
from ccnet.mplane.model import (
    CONTENT_TYPE,
    Envelope,
    ExceptionMessage,
    Message,
    ModelError,
    RegistryStore,
    Statement,
    from_dict,
    load_json,
    to_json,
)
from ccnet.mplane.state import MIGRATIONS, Peer, SupervisorState, callback_spec
from ccnet.periodic import every
from ccnet.reactors import IReactor
from ccnet.runtime import Part
from ccnet.store import StoreError

if TYPE_CHECKING:
    from ccnet.runtime import Runtime

__all__ = ["build", "SupervisorMetrics", "SupervisorResource", "SupervisorService"]

log = Logger()

MAX_BODY = 16 * 1024 * 1024


class HTTPError(Exception):
    """An error reply: an mPlane exception, or (``plain``) the SDK's text/plain answer,
    which RI peers get as an mPlane exception too."""

    def __init__(self, code: int, text: str, token: str | None = None, plain: bool = False) -> None:
        super().__init__(text)
        self.code, self.text, self.token, self.plain = code, text, token, plain


class SupervisorService(service.Service):
    """Opens the state (schema migration, reload after restart) and expires old results."""

    def __init__(self, state: SupervisorState, store: Any, clock: IReactorTime, expiry_interval: float,
                 preload: Callable[[], Coroutine[Any, Any, None]] | None = None,
                 failures: dict[str, int] | None = None) -> None:
        self.setName("mplane-supervisor")
        self.state = state
        self.store = store
        self.clock = clock
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._expiry_interval = expiry_interval
        self._preload = preload
        self._loop: task.LoopingCall | None = None
        self._started = False
        #: Failed periodic rounds by job (the daemon's ccnet_periodic_failures_total).
        self.failures = failures if failures is not None else {}
        #: Other daemons' notifications (PostgreSQL store only), started before the first
        #: load so that nothing written in between is missed.
        self.listener: Listener | None = None
        self.sync: ClusterSync | None = None

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        if self._started:
            return
        self._started = True
        d = defer.ensureDeferred(self._open())
        d.addCallbacks(self._opened, self._failed)

    async def _open(self) -> None:
        await self.store.migrate("mplane", MIGRATIONS)
        if not self.running:
            return
        await self.state.load()
        if self._preload is not None and self.running:
            await self._preload()
        # Listening starts after the initial load: its resync on connect covers what
        # changed since, while a resync racing the load could be overwritten by the
        # load's older snapshot.
        if self.listener is not None and self.running:
            self.listener.startService()

    def _opened(self, _: Any) -> None:
        if not self.running:  # stopped while opening: nothing to start
            self.ready.callback(None)
            return
        log.info("mPlane supervisor state loaded: {components} components, {capabilities} capabilities, "
                 "{measurements} measurements", components=len(self.state.components),
                 capabilities=len(self.state.capabilities), measurements=len(self.state.measurements))
        if self.state.result_expiry > 0:
            # A failed round (database down) is logged and counted; the next one runs.
            self._loop = every(self.clock, self._expiry_interval, "mplane-result-expiry", self.state.expire,
                               failures=self.failures)
        self.ready.callback(None)

    def _failed(self, failure: Failure) -> None:
        log.failure("mPlane supervisor cannot open its state", failure)
        if self.listener is not None and self.listener.running:
            self.listener.stopService()
        self.ready.errback(failure)

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802 (Twisted API)
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.sync is not None:
            self.sync.stop()
        if self.listener is not None and self.listener.running:
            return self.listener.stopService()
        return None


class SupervisorResource(Resource):
    """Root of the supervisor site. ``/health`` and other children may be added with putChild."""

    def __init__(self, state: SupervisorState, cfg: SupervisorConfig, ready: defer.Deferred[None],
                 reactor: IReactor, users: Callable[[], Any], version: str = "") -> None:
        super().__init__()
        self.state = state
        self.cfg = cfg
        self.reactor = reactor
        self._users = users
        self._claims = IdentityClaims()
        self._ready = ready
        self._is_ready = False
        ready.addCallback(self._set_ready)
        self.version = version
        self._leaf = _Dispatch(self)

    def _set_ready(self, _: Any) -> None:
        self._is_ready = True

    def getChild(self, path: bytes, request: Request) -> IResource:  # noqa: N802 (Twisted API)
        # Hand the whole remaining path to the dispatcher: routes are matched there.
        assert request.prepath is not None and request.postpath is not None
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._leaf  # type: ignore[return-value]

    def render(self, request: Request) -> Any:
        return self._leaf.render(request)

    # ------------------------------------------------------------------ helpers

    def peer(self, request: Request) -> Peer:
        identity = request_identity(request)
        if identity is None:
            raise HTTPError(403, "A verified client certificate is required")
        known = self.state.components.get(identity.dotted)
        first = self._claims.conflict(identity.dotted, identity.dn, known.dn if known is not None else None)
        if first is not None:
            log.warn("mPlane identity {dotted} of {dn} is already used by {first}; refused",
                     dotted=identity.dotted, dn=identity.dn, first=first)
            raise HTTPError(403, f"identity {identity.dotted} belongs to another certificate subject")
        record = self._users().lookup(identity)
        extra = record.properties if record is not None else frozenset()
        names = (identity.dotted, identity.dn)
        return Peer(identity.dotted, names, self.state.policy.roles_of(names, extra), identity.dn)

    def base_url(self, request: Request) -> str:
        if self.cfg.url:
            return self.cfg.url
        host = request.getHeader("host")
        if not host:
            addr = request.getHost()
            host = f"{addr.host}:{addr.port}"
        return f"https://{host}"

    async def wait_ready(self) -> None:
        if not self._is_ready:
            await self._ready


class _Dispatch(Resource):
    """One leaf that maps (method, path) to a handler: routes are data."""

    isLeaf = True

    def __init__(self, root: SupervisorResource) -> None:
        super().__init__()
        self.root = root
        p = root.cfg
        self.routes: dict[tuple[bytes, str], Callable[..., Coroutine[Any, Any, bytes]]] = {
            (b"POST", p.registration_path): self.register,
            (b"GET", p.specification_path): self.poll,
            (b"POST", p.result_path): self.component_result,
            (b"GET", p.client_capability_path): self.capabilities,
            (b"GET", p.sdk_capability_path): self.capabilities,
            (b"POST", p.client_specification_path): self.client_message,
            (b"POST", p.sdk_capability_path): self.client_message,
            (b"POST", p.client_result_path): self.client_message,
            (b"POST", ""): self.client_message,
            (b"GET", p.client_result_path): self.client_results,
            (b"GET", ""): self.operator_html,
            (b"GET", "api/status"): self.operator_json,
        }
        self.prefixes = [p.client_specification_path, p.sdk_capability_path]

    def render(self, request: Request) -> Any:
        path = _route_path(request)
        method = request.method
        if method == b"HEAD":
            method = b"GET"
        handler = self.routes.get((method, path))
        sub = None
        if handler is None:
            for prefix in self.prefixes:
                if path.startswith(prefix + "/") and method == b"POST":
                    handler, sub = self.client_message, path[len(prefix) + 1:]
                    break
        if handler is None:
            known = {p for (_, p) in self.routes}
            code = 405 if path in known else 404
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"text/plain")
            return b"Method not allowed\n" if code == 405 else b"Not found\n"
        d = defer.ensureDeferred(self._run(handler, request, sub))
        finished = request.notifyFinish()
        finished.addErrback(lambda _: d.cancel())
        return server.NOT_DONE_YET

    async def _run(self, handler: Callable[..., Coroutine[Any, Any, bytes]], request: Request,
                   sub: str | None) -> None:
        who = "-"
        try:
            await self.root.wait_ready()
            peer = self.root.peer(request)
            who = peer.identity
            body = await (handler(request, peer, sub) if sub is not None else handler(request, peer))
        except defer.CancelledError:
            return
        except HTTPError as exc:
            body = self._error(request, exc)
            # The access log has every request; a refusal also says why ("register first" is
            # routine: every component polls once after a supervisor lost its state).
            emit = log.debug if exc.code == 428 else log.info
            emit("mPlane {method} {path} by {peer} refused: {code} {reason}", method=request.method.decode(),
                 path=request.path.decode("utf-8", "replace")[:200], peer=who, code=exc.code,
                 reason=exc.text[:300])  # (the text can quote the peer's message)
        except StoreError as exc:
            # The write did not commit and memory was not changed: nothing happened, retry later.
            log.error("mPlane supervisor request {method} {path} failed: {error}", method=request.method,
                      path=request.path, error=str(exc))
            body = self._error(request, HTTPError(503, f"Database unavailable, nothing was done: {exc}"))
        except Exception:
            log.failure("mPlane supervisor request {method} {path} failed", method=request.method,
                        path=request.path)
            body = self._error(request, HTTPError(500, "Internal error"))
        if not request.finished and not request_disconnected(request):
            request.write(body)
            request.finish()
        else:
            # No access-log line then (that is written as a request finishes): say it here.
            # A poll whose component left is routine.
            emit = log.debug if handler == self.poll else log.info
            emit("mPlane {method} {path} by {peer}: done ({code}), the client had gone before the answer",
                 method=request.method.decode(), path=request.path.decode("utf-8", "replace")[:200], peer=who,
                 code=request.code)

    def _speaks_ri(self, request: Request) -> bool:
        """Is the peer of this request an RI-fork client or component? (RI peers get
        ``application/x-mplane+json`` on every reply, errors included.)"""
        path = _route_path(request)
        cfg = self.root.cfg
        if path in (cfg.client_capability_path, cfg.client_specification_path, cfg.client_result_path):
            return True
        identity = request_identity(request)
        comp = self.root.state.components.get(identity.dotted) if identity is not None else None
        return comp is not None and comp.dialect is Dialect.RI

    def _error(self, request: Request, exc: HTTPError) -> bytes:
        request.setResponseCode(exc.code)
        if exc.plain and not self._speaks_ri(request):
            request.setHeader(b"content-type", b"text/plain")
            return exc.text.encode() + b"\n"
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return to_json(ExceptionMessage(exc.token, exc.text)).encode()

    # ------------------------------------------------------------------ I/O helpers

    @staticmethod
    def read_json(request: Request) -> Any:
        """The request's mPlane JSON body (any shape: the dialects differ)."""
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if ctype != CONTENT_TYPE:
            raise HTTPError(400, "Invalid format: the body must be application/x-mplane+json", plain=True)
        content = request.content
        if content is None:
            raise HTTPError(400, "Invalid format: no body", plain=True)
        content.seek(0)
        raw = content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise HTTPError(413, "Message too large")
        try:
            return load_json(raw)
        except ModelError as exc:
            raise HTTPError(400, f"Invalid message: {exc}") from None

    @classmethod
    def read_message(cls, request: Request) -> Message:
        return cls.decode(from_dict, cls.read_json(request))

    @staticmethod
    def decode(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with a model error turned into a 400 mPlane exception."""
        try:
            return fn(*args)
        except ModelError as exc:
            raise HTTPError(400, f"Invalid message: {exc}") from None
        except RecursionError:
            raise HTTPError(400, "Invalid message: nested too deeply") from None

    @staticmethod
    def reply(request: Request, msg: Message | dict[str, Any] | list[Any], code: int = 200) -> bytes:
        request.setResponseCode(code)
        # Exactly this value: the SDK client drops replies with any other (even "; charset=").
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        if isinstance(msg, dict | list):
            return json.dumps(msg, sort_keys=True).encode()
        return to_json(msg).encode()

    # ------------------------------------------------------------------ component side

    async def register(self, request: Request, peer: Peer) -> bytes:
        state = self.root.state
        if not state.may_register(peer):
            raise HTTPError(403, f"{peer.identity} may not register capabilities")
        dialect, items = self.decode(parse_registration, self.read_json(request))
        outcome = await state.register(peer, items, dialect, holder=state.node)
        log.info("mPlane registration from {component} ({dialect}): {outcome}", component=peer.identity,
                 dialect=dialect.value, outcome={k: v["registered"] for k, v in outcome.items()})
        return self.reply(request, outcome)

    async def poll(self, request: Request, peer: Peer) -> bytes:
        state = self.root.state
        if not await state.ensure_component(peer.identity):
            raise HTTPError(428, "Register your capabilities first", plain=True)
        await state.hold(peer.identity, state.node)
        dialect = state.components[peer.identity].dialect
        link = f"{self.root.base_url(request)}/{self.root.cfg.result_path}"
        # Work queued while take_work awaits its claim (another daemon won it, or a new spec
        # arrived meanwhile) must not be waited for: listen from before the first look.
        woken: list[bool] = []
        stop_noting = state.listen(peer.identity, lambda: woken.append(True))
        try:
            work = await state.take_work(peer.identity, link)
        finally:
            stop_noting()
        fast = state.wants_fast_polls(peer.identity)
        # RI components poll without asking to wait and cannot be told to come back at
        # once: their poll is held (up to long-poll) and answered when work arrives.
        hold = self._hold(request, fast or dialect is Dialect.RI)
        if not work and hold > 0:
            if not woken:
                await self._wait_for_work(peer.identity, hold)
            if request.finished or request_disconnected(request):
                return b""
            work = await state.take_work(peer.identity, link)
        contents: list[Message] = [to_wire(m, dialect) for m in work]
        if dialect is Dialect.RI:
            return self.reply(request, [m.to_dict() for m in contents])
        if fast:
            contents.append(callback_spec("now + 0s" if self.root.cfg.long_poll > 0 else "now + 1s"))
        return self.reply(request, Envelope(contents))

    def _hold(self, request: Request, fast: bool) -> float:
        cfg_hold = self.root.cfg.long_poll
        args = parse_qs(request.uri.decode("utf-8", "replace").partition("?")[2])
        if "wait" in args:
            try:
                return max(0.0, min(float(args["wait"][0]), cfg_hold))
            except ValueError:
                raise HTTPError(400, "wait must be a number of seconds") from None
        # SDK components without the callback capability cannot be told to poll again at
        # once; answering immediately keeps their own 5 s rhythm (the fallback).
        return cfg_hold if fast else 0.0

    async def _wait_for_work(self, component: str, hold: float) -> None:
        d: defer.Deferred[None] = defer.Deferred()

        def wake() -> None:
            if not d.called:
                d.callback(None)

        cancel = self.root.state.listen(component, wake)
        timer = self.root.reactor.callLater(hold, wake)
        try:
            await d
        finally:
            cancel()
            if timer.active():
                timer.cancel()

    async def component_result(self, request: Request, peer: Peer) -> bytes:
        state = self.root.state
        if not await state.ensure_component(peer.identity):
            raise HTTPError(403, f"{peer.identity} has not registered as a component")
        dialect = state.components[peer.identity].dialect
        msg = from_wire(self.read_message(request), dialect)
        if isinstance(msg, Statement) and msg.kind == "withdrawal":
            n = await state.withdraw(peer, msg)
            return self.reply(request, {"withdrawn": n})
        problem = await state.accept(peer, msg)  # stored before we answer
        if problem is not None:
            raise HTTPError(403, problem, getattr(msg, "token", None))
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE.encode() if dialect is Dialect.RI else b"text/plain")
        return b""

    # ------------------------------------------------------------------ client side

    def _link_base(self, request: Request) -> str:
        return f"{self.root.base_url(request)}/{self.root.cfg.client_specification_path}"

    async def capabilities(self, request: Request, peer: Peer) -> bytes:
        state = self.root.state
        path = _route_path(request)
        if path == self.root.cfg.client_capability_path:
            # The RI client: {"<component id>": [capabilities]} of what its registry can parse.
            shown = state.offered(peer, None, Dialect.RI)
            return self.reply(request, ri_listing((c.component, stmt) for c, stmt in shown))
        args = parse_qs(request.uri.decode("utf-8", "replace").partition("?")[2])
        # SDK clients fail on the whole listing at the first element their core registry
        # lacks; ccnet's own client asks for everything with ?view=all.
        dialect = None if args.get("view") == ["all"] else Dialect.SDK
        offered = state.offered(peer, self._link_base(request), dialect)
        return self.reply(request, Envelope([shown for _, shown in offered]))

    async def client_message(self, request: Request, peer: Peer, cap_key: str | None = None) -> bytes:
        dialect, component, msg = self.decode(parse_submission, self.read_json(request))
        return self.reply(request, await self._client_reply(peer, msg, cap_key, dialect, component))

    async def _client_reply(self, peer: Peer, msg: Message, cap_key: str | None,
                            dialect: Dialect = Dialect.SDK, component: str | None = None) -> Message:
        state = self.root.state
        if isinstance(msg, Envelope):
            return Envelope([await self._client_reply(peer, m, cap_key, dialect, component) for m in msg.contents])
        if isinstance(msg, Statement):
            if msg.kind == "specification":
                reply = await state.submit(peer, msg, cap_key, component=component, dialect=dialect)
                log.info("mPlane specification {label} from {client}: {outcome}", label=msg.label,
                         client=peer.identity, outcome=reply.kind if not isinstance(reply, ExceptionMessage)
                         else reply.message)
                return reply
            if msg.kind == "redemption":
                return await state.redeem(peer, msg)
            if msg.kind == "interrupt":
                return await state.interrupt(peer, msg)
        return ExceptionMessage(getattr(msg, "token", None),
                                f"Unexpected message type {msg.kind} (send a specification, redemption or interrupt)")

    async def client_results(self, request: Request, peer: Peer) -> bytes:
        args = parse_qs(request.uri.decode("utf-8", "replace").partition("?")[2])
        values = args.get("token") or args.get("label") or []
        token = values[0] if values else None
        if token:
            return self.reply(request, await self.root.state.redeem(peer, token))
        return self.reply(request, Envelope(self.root.state.client_results(peer)))

    # ------------------------------------------------------------------ operator view

    async def operator_json(self, request: Request, peer: Peer) -> bytes:
        status = self.root.state.status(peer)
        status["version"] = self.root.version
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(status, sort_keys=True, indent=1).encode()

    async def operator_html(self, request: Request, peer: Peer) -> bytes:
        s = self.root.state.status(peer)
        e = html.escape

        def table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> str:
            head = "".join(f"<th>{e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{e(_cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
            if not rows:
                body = f"<tr><td colspan='{len(cols)}'>none</td></tr>"
            return f"<h2>{e(title)} ({len(rows)})</h2><table><tr>{head}</tr>{body}</table>"

        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ccnet mPlane supervisor</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>"
            f"<h1>ccnet mPlane supervisor</h1><p>You are {e(s['identity'])} "
            f"(roles: {e(', '.join(s['roles']) or 'none')}). Read-only; JSON at "
            "<a href='/api/status'>/api/status</a>.</p>"
            + table("Components", s["components"], ["identity", "capabilities", "last_seen", "callback", "holder"])
            + table("Capabilities", s["capabilities"], ["label", "component", "verb", "when", "parameters", "results"])
            + table("Pending specifications", s["pending"], ["label", "token", "component", "state", "client", "created"])
            + table("Recent results", s["results"], ["label", "token", "component", "state", "rows", "message", "updated"])
            + "</body></html>"
        )
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page.encode("utf-8")


def _route_path(request: Request) -> str:
    """The request's path below the supervisor's root, as the routes name it."""
    return "/".join(seg.decode("utf-8", "replace") for seg in request.postpath or []).strip("/")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _registry_fetcher(reactor: IReactor) -> Callable[[str], Coroutine[Any, Any, bytes]]:
    async def fetch(url: str) -> bytes:
        import treq

        # treq names the reactor it needs with a private interface of its own.
        resp = await treq.get(url, reactor=cast(Any, reactor), timeout=30)
        if resp.code != 200:
            raise ModelError(f"registry {url}: HTTP {resp.code}")
        return bytes(await resp.content())
    return fetch


def build(runtime: Runtime, cfg: SupervisorConfig) -> Part:
    """The supervisor's root resource and the service that opens/expires its state."""
    registries = RegistryStore()
    remote: list[str] = []
    for ref in cfg.registries:
        if ref.startswith(("http://", "https://")):
            remote.append(ref)
        else:
            # Operator registry files are read here, at start-up, never on a peer's behalf.
            path = Path(ref[len("file://"):]) if ref.startswith("file://") else runtime.config_dir / ref
            try:
                registries.add(registries.parse(path.read_bytes(), f"registry {path}"))
            except OSError as exc:
                raise SetupError(f"[supervisor] registries: cannot read {path} ({exc.strerror})") from None
            except ModelError as exc:
                raise SetupError(f"[supervisor] registries: {exc}") from None
    try:
        policy = Policy.from_files(cfg.users, cfg.caps, cfg.admin_role)
    except AuthzError as exc:
        raise SetupError(f"[supervisor]: {exc}") from None
    reactor = runtime.reactor
    shared = getattr(runtime.store, "dialect", None) == "postgresql"
    state = SupervisorState(runtime.store, registries, policy, reactor.seconds,
                            result_expiry=cfg.result_expiry, component_role=cfg.component_role,
                            node=cfg.node_name or default_node_name(runtime.hostname, cfg.listen),
                            channel=CHANNEL if shared else None,
                            offload=lambda fn: threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn))

    async def preload() -> None:
        fetch = _registry_fetcher(reactor)
        for url in remote:
            raw = await fetch(url)
            registries.add(registries.parse(raw, f"registry {url}"), fetchable=True)

    svc = SupervisorService(state, runtime.store, reactor,
                            expiry_interval=max(1.0, min(3600.0, cfg.result_expiry / 10 or 3600.0)),
                            preload=preload if remote else None,
                            failures=runtime.job_failures)
    def reload_policy() -> None:
        # SIGHUP: re-read users/caps; a broken file keeps the old policy.
        try:
            state.policy = Policy.from_files(cfg.users, cfg.caps, cfg.admin_role)
        except AuthzError as exc:
            log.error("mPlane authorization files not reloaded: {error}", error=str(exc))
            return
        log.info("mPlane authorization reloaded: {summary}", summary=dict(state.policy.summary()))

    runtime.on_reload(reload_policy)
    runtime.register_metrics("mplane", SupervisorMetrics(state))
    resource = SupervisorResource(state, cfg, svc.ready, reactor, lambda: runtime.users, runtime.version)
    from ccnet.console.resource import ConsoleResource  # it builds on this module's resource

    resource.putChild(b"console", cast(IResource, ConsoleResource(resource, runtime.console)))
    services: list[Any] = [svc]
    if shared:
        # Active/active: other daemons on this PostgreSQL tell us what they changed.
        svc.sync = sync = ClusterSync(state, reactor)
        svc.listener = Listener(runtime.store.url, CHANNEL, reactor, sync.payload, sync.connected,
                                timeout=runtime.store.timeout)
    if cfg.components:
        from ccnet.mplane.pull import ComponentPuller

        if runtime.tls is None:
            raise SetupError("[supervisor] components: calling components needs the [tls] section")
        services.append(ComponentPuller(state, list(cfg.components), reactor, runtime.tls,
                                        refresh=max(1.0, cfg.component_refresh),
                                        redeem_every=max(0.05, cfg.redeem_interval)))
    return Part(services=services, resource=resource, max_body=MAX_BODY)


def default_node_name(hostname: str | None, listen: str) -> str:
    """``hostname:port`` of the supervisor's listener; ``hostname:pid-N`` when the OS
    chooses the port (``ssl:0``), as no two daemons on a host share a pid."""
    import os
    import socket

    host = hostname or socket.gethostname()
    parts = listen.split(":")
    port = parts[1] if len(parts) > 1 and parts[1].isdigit() else ""
    return f"{host}:{port}" if port and port != "0" else f"{host}:pid-{os.getpid()}"


class SupervisorMetrics:
    """The supervisor's series for ``/metrics``, read from its state at scrape time:
    events by capability, queues, sizes, when each component was last heard from."""

    def __init__(self, state: SupervisorState) -> None:
        self.state = state

    def collect(self) -> list[Metric]:
        state = self.state
        return [
            counter("ccnet_mplane_events_total",
                    "Registrations, specifications, results and exceptions by capability.",
                    ["event", "capability"], state.by_capability),
            counter("ccnet_mplane_denied_total", "Specifications refused (no capability visible).",
                    rows={(): state.counters.get("denied", 0)}),
            gauge("ccnet_mplane_queue_depth", "Specifications not yet handed to the component.",
                  ["component"], {(c,): n for c, n in state.queue_depths().items()}),
            gauge("ccnet_mplane_objects", "Components, capabilities and measurements held.", ["kind"],
                  {("components",): len(state.components), ("capabilities",): len(state.capabilities),
                   ("measurements",): len(state.measurements)}),
            gauge("ccnet_mplane_component_last_seen_timestamp_seconds",
                  "When each component last registered or polled (seconds since the epoch).",
                  ["component"], {(c.identity,): c.last_seen for c in state.components.values()}),
            gauge("ccnet_mplane_components_by_holder",
                  "Components by the supervisor daemon (node name) their poll came to last.", ["node"],
                  self._holders()),
            gauge("ccnet_mplane_polls_held", "Component long-polls this daemon holds open now.",
                  rows={(): state.polls_held()}),
            counter("ccnet_mplane_cluster_events_total",
                    "Other supervisor daemons' notifications applied, and full resyncs (PostgreSQL store).",
                    ["event"], {(event,): n for event, n in state.cluster_events.items()}),
        ]

    def _holders(self) -> dict[tuple[str, ...], int]:
        holders: dict[tuple[str, ...], int] = {}
        for comp in self.state.components.values():
            key = (comp.holder or "-",)
            holders[key] = holders.get(key, 0) + 1
        return holders
