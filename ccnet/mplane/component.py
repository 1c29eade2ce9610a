"""The mPlane component runtime: probes offered to a supervisor and/or to clients.

Component-initiated workflow (the seed's default): register the probes' capabilities
with the supervisor, long-poll it for specifications, run them under the
:class:`~ccnet.mplane.scheduler.Scheduler`, and return receipts, results and exceptions.
Every message for the supervisor goes through an on-disk outbox (``runtime.store``)
first, so results made while the supervisor is down — or while this daemon restarts —
are delivered once it answers again, in order, none lost. Connection failures back off
exponentially with jitter (``ccnet.backoff``, ``retry-min`` … ``retry-max``) and the component re-registers whenever
it reconnects or the supervisor answers 428.

Client-initiated workflow (``listen =``): serve ``GET /capability`` and ``POST /``
(specification → receipt, redemption → result, interrupt) like the SDK's
``ListenerHttpComponent``, so SDK clients and supervisors with ``components =`` can
drive the probes directly.

Authorization: the ``users``/``caps`` files (SDK ``[Roles]``/``[Authorizations]`` or RI
style) decide which capabilities each peer — including the supervisor — may see and run.
"""

from __future__ import annotations

import bisect
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import treq
from prometheus_client.core import Metric
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from ccnet.backoff import Backoff
from ccnet.config import SetupError, parse_listen
from ccnet.edge.client import ClientPolicy
from ccnet.edge.lifecycle import IStopsFirst
from ccnet.edge.request import request_identity
from ccnet.metrics import counter, gauge
from ccnet.mplane.authz import IdentityClaims, Policy
from ccnet.mplane.component_config import ComponentConfig
from ccnet.mplane.dialect import CORE_MEANS, Dialect, express, for_client
from ccnet.mplane.model import (
    CONTENT_TYPE,
    Envelope,
    ExceptionMessage,
    Message,
    ModelError,
    RegistryStore,
    Statement,
    capability_matches_label,
    from_dict,
    load_json,
    match_specification,
    parse_json,
    to_json,
)
from ccnet.mplane.probes import IUsesTLS
from ccnet.mplane.scheduler import Job, Scheduler
from ccnet.reactors import IReactor
from ccnet.runtime import Part
from ccnet.tls import peer_identity

if TYPE_CHECKING:
    from ccnet.runtime import Runtime

__all__ = ["ComponentCore", "ComponentMetrics", "ComponentService", "Outbox", "SupervisorLink", "build", "MIGRATIONS"]

log = Logger()

MIGRATIONS = [
    """CREATE TABLE mplane_outbox (
        id TEXT PRIMARY KEY, seq DOUBLE PRECISION NOT NULL, token TEXT, body TEXT NOT NULL)""",
    """CREATE TABLE mplane_component_job (
        token TEXT PRIMARY KEY, label TEXT, accepted DOUBLE PRECISION NOT NULL)""",
]

MAX_BODY = 16 * 1024 * 1024
# Jobs are remembered this long after their final reply (a re-sent spec gets the same answer).
JOB_MEMORY = 600.0


class HTTPStatusError(Exception):
    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"HTTP {code}: {body[:200].decode('utf-8', 'replace')}")
        self.code = code


# ---------------------------------------------------------------------------
# What the component offers and how it answers (shared by both workflows)


@dataclass
class _Offer:
    capability: Statement
    probe: Any  # provides IProbe


class ComponentCore:
    """Capabilities, authorization and the scheduler: message in, reply out."""

    def __init__(self, reactor: IReactor, probes: list[Any], policy: Policy | None,
                 users: Callable[[], Any] | None = None) -> None:
        self.reactor = reactor
        self.registries = RegistryStore()
        self.policy = policy
        self._users = users
        # Which certificate subject owns a dotted identity (listener peers and the supervisor).
        self.claims = IdentityClaims()
        self.scheduler = Scheduler(reactor, self._count)
        # (capability label, "result" | "exception" | "envelope") -> finished measurements
        self.outcomes: dict[tuple[str, str], int] = {}
        self.offers: list[_Offer] = []
        for probe in probes:
            for cap in probe.capabilities():
                self.offers.append(_Offer(cap.with_token(self.registries), probe))

    def _count(self, job: Job, msg: Message, final: bool) -> None:
        if final:
            key = (str(job.capability.label), msg.kind)
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def roles(self, names: tuple[str, ...], identity: Any = None) -> frozenset[str]:
        extra: frozenset[str] = frozenset()
        if identity is not None and self._users is not None:
            record = self._users().lookup(identity)
            extra = record.properties if record is not None else frozenset()
        return self.policy.roles_of(names, extra) if self.policy is not None else extra

    def allowed(self, roles: frozenset[str], label: str | None) -> bool:
        # Without users/caps files every verified peer (our CA) may use every capability.
        return self.policy is None or self.policy.allows(roles, label, None)

    def capabilities(self, roles: frozenset[str]) -> list[Statement]:
        return [o.capability for o in self.offers if self.allowed(roles, o.capability.label)]

    def _offer_for(self, spec: Statement, roles: frozenset[str]) -> _Offer | str:
        candidates = [o for o in self.offers if capability_matches_label(o.capability.label, spec.label)]
        if not candidates and spec.label is None:
            schema = spec.schema_hash()
            candidates = [o for o in self.offers if o.capability.schema_hash() == schema]
        candidates = [o for o in candidates if self.allowed(roles, o.capability.label)]
        if not candidates:
            return f"no capability {spec.label!r} is offered to you here"
        errors = []
        for offer in candidates:
            try:
                match_specification(spec, offer.capability, self.registries)
            except ModelError as exc:
                errors.append(str(exc))
                continue
            return offer
        return errors[0]

    def handle(self, owner: str, roles: frozenset[str], msg: Message,
               on_reply: Callable[[Job, Message, bool], None] | None = None) -> Message:
        """The immediate reply to ``msg`` from ``owner``: receipt, current result or exception."""
        if isinstance(msg, Envelope):
            return Envelope([self.handle(owner, roles, m, on_reply) for m in msg.contents])
        if not isinstance(msg, Statement):
            return ExceptionMessage(getattr(msg, "token", None), f"Unexpected message type {msg.kind}")
        token = msg.token or (msg.get_token(self.registries) if msg.kind == "specification" else None)
        if msg.kind == "specification":
            job = self.scheduler.jobs.get(token or "")
            if job is not None:
                if job.owner != owner:
                    return ExceptionMessage(token, "a measurement with this token is already running")
                return job.current_reply()  # a re-sent spec: same receipt (or its result), no second run
            offer = self._offer_for(msg, roles)
            if isinstance(offer, str):
                return ExceptionMessage(token, offer)
            submitted = self.scheduler.submit(replace(msg, token=token), offer.capability, offer.probe, owner,
                                              on_reply)
            if isinstance(submitted, ExceptionMessage):
                return submitted
            log.info("mPlane component accepted {label} ({token}) from {owner}", label=msg.label,
                     token=submitted.token, owner=owner)
            return submitted.current_reply() if submitted.finished else submitted.receipt()
        if msg.kind in ("redemption", "interrupt"):
            job = self.scheduler.jobs.get(token or "")
            if job is None and msg.label:
                mine = [j for j in self.scheduler.jobs.values() if j.owner == owner and j.spec.label == msg.label]
                job = mine[-1] if mine else None
            if job is None or job.owner != owner:
                return ExceptionMessage(token, f"Unknown job {token or msg.label}")
            if msg.kind == "interrupt":
                self.scheduler.interrupt(job.token)
            return job.current_reply()
        return ExceptionMessage(token, f"Unexpected message type {msg.kind} "
                                       "(send a specification, redemption or interrupt)")

    def forget_later(self, job: Job) -> None:
        self.scheduler.forget_later(job.token, JOB_MEMORY)


# ---------------------------------------------------------------------------
# The on-disk outbox


@dataclass(order=True)
class _Item:
    seq: float
    id: str
    token: str | None
    body: bytes


class Outbox:
    """Messages for the supervisor, written to the store before they are sent."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.items: list[_Item] = []
        self._last = 0.0
        self._waiters: list[defer.Deferred[None]] = []
        self._writes: set[defer.Deferred[Any]] = set()

    async def open(self) -> None:
        await self.store.migrate("mplane-component", MIGRATIONS)
        rows = await self.store.run("SELECT seq, id, token, body FROM mplane_outbox ORDER BY seq")
        self.items = [_Item(float(s), i, t, b.encode("utf-8")) for s, i, t, b in rows]
        if self.items:
            self._last = self.items[-1].seq
            log.info("mPlane component outbox: {n} messages from before the restart", n=len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def put(self, msg: Message, finished_job: str | None = None,
            started_job: tuple[str, str | None] | None = None) -> defer.Deferred[None]:
        """Store ``msg`` — in the same transaction, note ``started_job`` (token, label) in the
        journal or strike ``finished_job`` from it; it becomes sendable once it is on disk.
        Order is fixed when this is called, not when the write completes."""
        self._last = max(time.time(), self._last + 1e-6)
        item = _Item(self._last, uuid.uuid4().hex, getattr(msg, "token", None), to_json(msg).encode("utf-8"))
        sql = self.store.sql

        def work(cursor: Any) -> None:
            cursor.execute(sql("INSERT INTO mplane_outbox (id, seq, token, body) VALUES (?, ?, ?, ?)"),
                           (item.id, item.seq, item.token, item.body.decode("utf-8")))
            if finished_job is not None:
                cursor.execute(sql("DELETE FROM mplane_component_job WHERE token = ?"), (finished_job,))
            if started_job is not None:
                cursor.execute(sql("INSERT INTO mplane_component_job (token, label, accepted) VALUES (?, ?, ?) "
                                   "ON CONFLICT (token) DO NOTHING"), (*started_job, item.seq))

        d: defer.Deferred[Any] = self.store.run_interaction(work)
        self._writes.add(d)

        def stored(_: Any) -> None:
            self._writes.discard(d)
            bisect.insort(self.items, item)
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)

        def failed(f: Any) -> Any:
            self._writes.discard(d)
            log.failure("mPlane component cannot store a message for the supervisor", f)
            return f  # the caller must know: an unstored message is not queued

        d.addCallbacks(stored, failed)
        return d

    def first(self) -> _Item | None:
        return self.items[0] if self.items else None

    def wait(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.items:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    async def remove(self, item: _Item) -> None:
        await self.store.run("DELETE FROM mplane_outbox WHERE id = ?", (item.id,))
        if item in self.items:
            self.items.remove(item)

    def flushed(self) -> defer.Deferred[Any]:
        return defer.DeferredList(list(self._writes))

    # -- the journal of accepted measurements ----------------------------------
    # A measurement the supervisor handed us is noted until its final reply is queued.
    # After a crash the notes left over are answered with an exception, so no client
    # waits forever for a result that died with the process.

    async def recover_jobs(self) -> int:
        rows = await self.store.run("SELECT token, label FROM mplane_component_job")
        for token, label in rows:
            await self.put(ExceptionMessage(token, f"the component restarted while measuring {label}; "
                                                   "that measurement is lost"), finished_job=token)
        return len(rows)


# ---------------------------------------------------------------------------
# Component-initiated workflow


@implementer(IStopsFirst)
class SupervisorLink(service.Service):
    """Registers with the supervisor, long-polls it, and delivers the outbox."""

    def __init__(self, core: ComponentCore, cfg: ComponentConfig, outbox: Outbox, reactor: IReactor,
                 material: Any) -> None:
        self.setName("mplane-component-link")
        self.core = core
        self.cfg = cfg
        self.outbox = outbox
        self.reactor = reactor
        self.policy = ClientPolicy(material)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        self.agent = Agent(reactor, contextFactory=self.policy, pool=self.pool)
        # Deliveries get their own pool: a long-poll must never hold up a result.
        self.send_pool = HTTPConnectionPool(reactor, persistent=True)
        self.send_agent = Agent(reactor, contextFactory=ClientPolicy(material), pool=self.send_pool)
        self.registered = False
        # The supervisor's wire dialect: configured, or found out at the first registration.
        self.dialect: Dialect | None = None if cfg.dialect == "auto" else Dialect(cfg.dialect)
        # label -> the registry our capability was registered under (RI: "core" for ours).
        self._wire_registry: dict[str, str] = {}
        self.supervisor_identity: str | None = None
        # Which of the configured supervisor URLs is in use; the next one after a failure.
        self._current = 0
        self.registrations = 0
        self.delivered = 0
        self._loops: list[defer.Deferred[None]] = []
        self._outage = False

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        self._loops = [self._loop(self._poll_forever), self._loop(self._send_forever)]

    def _loop(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> defer.Deferred[None]:
        d = defer.ensureDeferred(fn())
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.addErrback(lambda f: log.failure("mPlane component loop stopped", f))
        return d

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 (Twisted API)
        super().stopService()
        for d in self._loops:
            d.cancel()
        return defer.DeferredList([self.pool.closeCachedConnections(), self.send_pool.closeCachedConnections()])

    async def _sleep(self, seconds: float) -> None:
        await task.deferLater(self.reactor, seconds, lambda: None)

    # -- HTTP ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The supervisor URL in use."""
        return self.cfg.supervisors[self._current]

    def _next_supervisor(self) -> None:
        """After a failure: the next configured URL (daemons of one supervisor share their
        store, so the outbox's results are delivered there as well)."""
        if len(self.cfg.supervisors) > 1:
            self._current = (self._current + 1) % len(self.cfg.supervisors)
            log.info("mPlane component: trying supervisor {url} next", url=self.url)

    async def _request(self, agent: Any, method: str, path: str, body: bytes | None = None,
                       timeout: float = 60) -> tuple[int, bytes]:
        headers = Headers({b"Content-Type": [CONTENT_TYPE.encode()]}) if body is not None else None
        resp = await treq.request(method, f"{self.url}/{path}", data=body, headers=headers, agent=agent,
                                  timeout=timeout)
        content = await resp.content()
        return resp.code, content

    # -- registration and polling ---------------------------------------------

    def _supervisor_roles(self) -> frozenset[str] | None:
        conn = self.policy.last
        ident = peer_identity(conn) if conn is not None else None
        if ident is None:
            return None
        self.supervisor_identity = ident.dotted
        # Measurements the supervisor submits are owned by its dotted identity: no other
        # subject joining to the same string may redeem them on our listener.
        self.core.claims.bind(ident.dotted, ident.dn)
        return self.core.roles((ident.dotted, ident.dn), ident)

    async def register(self) -> None:
        roles = self._supervisor_roles()
        if roles is None:
            raise ConnectionError("the supervisor presented no verified certificate")
        caps = self.core.capabilities(roles)
        if not caps:
            raise PermissionError(f"no capability may be shown to the supervisor {self.supervisor_identity} "
                                  "(check [component] users/caps)")
        outcome = await self._register(caps)
        refused = {k: v.get("reason") for k, v in outcome.items() if v.get("registered") != "ok"}
        self.registered = True
        self.registrations += 1
        (log.warn if refused else log.info)("mPlane component registered {n} capabilities with {supervisor} ({dialect}){refused}",
                 n=len(outcome) - len(refused), supervisor=self.supervisor_identity,
                 dialect=self.dialect.value if self.dialect else "?",
                 refused=f"; refused: {refused}" if refused else "")

    async def _register(self, caps: list[Statement]) -> dict[str, dict[str, Any]]:
        """Register ``caps`` in the supervisor's dialect (auto: the first one it accepts).

        Each capability is accepted or refused on its own: a supervisor that answers a
        whole envelope with an error (mpsup does, for one element it lacks) is sent the
        capabilities one by one."""
        attempts = [self.dialect] if self.dialect is not None else [Dialect.SDK, Dialect.RI]
        failure: HTTPStatusError | None = None
        for dialect in attempts:
            if dialect is Dialect.RI:
                code, body, outcome = await self._register_ri(caps)
            else:
                code, body = await self._request(self.agent, "POST", self.cfg.registration_path,
                                                 to_json(Envelope(list(caps))).encode())
                outcome = _outcome(body) if code == 200 else None
            if outcome is not None:
                self.dialect = dialect
                if dialect is Dialect.SDK:
                    self._wire_registry = {str(c.label): c.registry for c in caps}
                return outcome
            failure = HTTPStatusError(code, body)
        if self.dialect is Dialect.RI or len(caps) < 2:
            assert failure is not None
            raise failure
        # One capability at a time (SDK): a refusal stays that capability's.
        outcome = {}
        for cap in caps:
            code, body = await self._request(self.agent, "POST", self.cfg.registration_path,
                                             to_json(Envelope([cap])).encode())
            one = _outcome(body) if code == 200 else None
            outcome.update(one if one is not None else
                           {str(cap.label): {"registered": "no", "reason": str(HTTPStatusError(code, body))}})
        self.dialect = Dialect.SDK
        self._wire_registry = {str(c.label): c.registry for c in caps}
        return outcome

    async def _register_ri(self, caps: list[Statement]) -> tuple[int, bytes, dict[str, dict[str, Any]] | None]:
        """The RI's registration: a JSON array of what its 2014 registry can parse, named "core"."""
        wire = {str(c.label): for_client(c, Dialect.RI, self.core.registries) for c in caps}
        skipped = sorted(label for label, w in wire.items() if w is None)
        if skipped:
            log.info("mPlane component: not offered to the RI supervisor (elements outside its registry): "
                     "{labels}", labels=", ".join(skipped))
        sent = [w for w in wire.values() if w is not None]
        if not sent:
            return 0, b"no capability fits the RI registry", None
        code, body = await self._request(self.agent, "POST", self.cfg.registration_path,
                                         json.dumps([w.to_dict() for w in sent]).encode())
        outcome = _outcome(body) if code == 200 else None
        if outcome is not None:
            self._wire_registry = {str(w.label): w.registry for w in sent}
            outcome.update({label: {"registered": "no", "reason": "elements outside the RI registry"}
                            for label in skipped})
        return code, body, outcome

    def _inbound(self, msg: Message) -> Message:
        """A specification as our capability names it (the RI calls every registry "core")."""
        if isinstance(msg, Statement) and msg.label in self._wire_registry \
                and msg.registry == self._wire_registry[msg.label]:
            offer = next((o for o in self.core.offers if o.capability.label == msg.label), None)
            if offer is not None:
                return replace(msg, registry=offer.capability.registry)
        return msg

    async def _poll_forever(self) -> None:
        backoff = Backoff(self.cfg.retry_min, self.cfg.retry_max)
        while self.running:
            try:
                was_registered = self.registered
                wait = self.cfg.long_poll if was_registered else 0
                t0 = self.reactor.seconds()
                code, body = await self._request(self.agent, "GET", f"{self.cfg.specification_path}?wait={wait:g}",
                                                 timeout=wait + 30)
                if code == 428 or not self.registered:
                    if code == 428:
                        log.info("mPlane supervisor {url} asks this component to register again",
                                 url=self.url)
                    await self.register()
                    if code == 428:
                        continue
                if code != 200:
                    raise HTTPStatusError(code, body)
                work = _poll_reply(body)
                work = [self._inbound(m) for m in work if not (isinstance(m, Statement) and m.label == "callback")]
                for item in work:
                    await self._handle(item)
                backoff.reset()
                self._outage = False
                if not work and was_registered and self.reactor.seconds() - t0 < min(1.0, wait or 1.0):
                    # An empty answer at once (long-poll off here or at the supervisor): poll every second.
                    await self._sleep(1.0)
            except defer.CancelledError:
                raise
            except Exception as exc:
                if not self.running:
                    return
                # Once per outage at warning level; the retries themselves at debug.
                emit = log.debug if self._outage else log.warn
                emit("mPlane supervisor {url}: {error}; retrying with back-off", url=self.url,
                     error=str(exc) or type(exc).__name__)
                self._outage = True
                self.registered = False
                self._next_supervisor()
                await self._sleep(backoff.next_delay())

    async def _handle(self, msg: Message) -> None:
        roles = self._supervisor_roles() or frozenset()
        owner = self.supervisor_identity or "supervisor"
        known = getattr(msg, "token", None) in self.core.scheduler.jobs
        reply = self.core.handle(owner, roles, msg, self._on_reply)
        if isinstance(msg, Statement) and msg.kind == "interrupt":
            return  # the job's final result follows through _on_reply
        job = self.core.scheduler.jobs.get(getattr(reply, "token", None) or "")
        started = (job.token, job.spec.label) if not known and job is not None and not job.finished else None
        await self.outbox.put(reply, started_job=started)

    def _on_reply(self, job: Job, msg: Message, final: bool) -> None:
        d = self.outbox.put(msg, finished_job=job.token if final else None)
        if final:
            self.core.forget_later(job)
            d.addCallback(lambda _: log.info(
                "mPlane component: {kind} for {token} queued for the supervisor ({n} waiting)",
                kind=msg.kind, token=job.token, n=len(self.outbox)))
        d.addErrback(lambda _: None)  # logged by put(); the journal reports the job after a restart

    # -- delivery ------------------------------------------------------------

    def _outbound(self, body: bytes) -> bytes | None:
        """An outbox message as the supervisor's dialect takes it; None: not sent at all.

        The RI supervisor makes receipts itself and accepts only results and exceptions,
        whose registry it calls "core"."""
        if self.dialect is not Dialect.RI:
            return body
        msg = parse_json(body)
        if isinstance(msg, Statement):
            if msg.kind == "receipt":
                return None
            if str(msg.label) in self._wire_registry:
                msg = express(msg, CORE_MEANS[Dialect.RI], self.core.registries)
        return to_json(msg).encode()

    async def _send_forever(self) -> None:
        backoff = Backoff(self.cfg.retry_min, self.cfg.retry_max)
        while self.running:
            item = self.outbox.first()
            if item is None:
                await self.outbox.wait()
                continue
            body_out = self._outbound(item.body)
            if body_out is None:
                await self.outbox.remove(item)  # nothing the supervisor's dialect takes (RI: receipts)
                continue
            try:
                code, body = await self._request(self.send_agent, "POST", self.cfg.result_path, body_out)
            except defer.CancelledError:
                raise
            except Exception as exc:
                if not self.running:
                    return
                log.debug("mPlane result delivery failed: {error}", error=str(exc))
                await self._sleep(backoff.next_delay())
                continue
            if code == 200 or (400 <= code < 500 and code not in (408, 425, 428, 429)):
                if code != 200:
                    log.warn("mPlane supervisor refused the message for {token}: {error}; dropped",
                             token=item.token, error=HTTPStatusError(code, body))
                try:
                    await self.outbox.remove(item)
                except Exception as exc:
                    # Delivered but not yet forgotten: keep the loop alive and try again.
                    log.warn("mPlane component cannot drop a delivered message: {error}", error=str(exc))
                    await self._sleep(backoff.next_delay())
                    continue
                self.delivered += 1
                backoff.reset()
            else:
                log.warn("mPlane supervisor answered {code} to a delivery; retrying", code=code)
                await self._sleep(backoff.next_delay())


def _outcome(body: bytes) -> dict[str, dict[str, Any]] | None:
    """A registration outcome map ``{label: {"registered": ...}}``, or None if it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) and "registered" in v for v in doc.values()):
        return None
    return doc


def _poll_reply(body: bytes) -> list[Message]:
    """The specifications of a poll: an envelope (SDK) or a JSON array (RI)."""
    doc = load_json(body)
    if isinstance(doc, list):
        return [from_dict(item) for item in doc]
    msg = from_dict(doc)
    return list(msg.contents) if isinstance(msg, Envelope) else [msg]


# ---------------------------------------------------------------------------
# Client-initiated workflow


class ListenerResource(Resource):
    """``GET /capability[/<token>]``, ``POST /`` (and ``/capability``): the SDK listener's API."""

    isLeaf = True

    def __init__(self, core: ComponentCore) -> None:
        super().__init__()
        self.core = core

    def _peer(self, request: Request) -> tuple[str, frozenset[str]] | str:
        """(dotted identity, roles) of the client, or why it is refused."""
        ident = request_identity(request)
        if ident is None:
            return "A verified client certificate is required"
        first = self.core.claims.conflict(ident.dotted, ident.dn)
        if first is not None:
            log.warn("mPlane identity {dotted} of {dn} is already used by {first}; refused",
                     dotted=ident.dotted, dn=ident.dn, first=first)
            return f"identity {ident.dotted} belongs to another certificate subject"
        return ident.dotted, self.core.roles((ident.dotted, ident.dn), ident)

    @staticmethod
    def _reply(request: Request, msg: Message, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return to_json(msg).encode()

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        peer = self._peer(request)
        if isinstance(peer, str):
            return self._reply(request, ExceptionMessage(None, peer), 403)
        parts = [p.decode("utf-8", "replace") for p in request.postpath or [] if p]
        host = request.getHeader("host") or "localhost"
        link = f"https://{host}/"
        caps = [c.derive("capability", token=c.token, label=c.label, link=link, when=c.when)
                for c in self.core.capabilities(peer[1])]
        if parts[:1] == ["capability"] and len(parts) == 2:
            for c in caps:
                if parts[1] in (c.token, c.label):
                    return self._reply(request, c)
            return self._reply(request, ExceptionMessage(parts[1], "no such capability"), 404)
        if parts[:1] in (["capability"], []):
            return self._reply(request, Envelope(list(caps)))
        return self._reply(request, ExceptionMessage(None, "not found"), 404)

    def render_POST(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        peer = self._peer(request)
        if isinstance(peer, str):
            return self._reply(request, ExceptionMessage(None, peer), 403)
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if ctype != CONTENT_TYPE:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain")
            return b"Invalid format: the body must be application/x-mplane+json\n"
        assert request.content is not None
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        try:
            msg = parse_json(raw)
        except ModelError as exc:
            return self._reply(request, ExceptionMessage(None, f"Invalid message: {exc}"), 400)
        reply = self.core.handle(peer[0], peer[1], msg, self._on_reply)
        log.info("mPlane component: {kind} from {peer} -> {reply}", kind=msg.kind, peer=peer[0], reply=reply.kind)
        return self._reply(request, reply)

    def _on_reply(self, job: Job, msg: Message, final: bool) -> None:
        if final:
            self.core.forget_later(job)


# ---------------------------------------------------------------------------
# The service


class ComponentService(service.MultiService):
    """Opens the outbox, then runs the supervisor link and/or the listener."""

    def __init__(self, core: ComponentCore, outbox: Outbox | None) -> None:
        super().__init__()
        self.setName("mplane-component")
        self.core = core
        self.outbox = outbox
        self.ready: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        service.Service.startService(self)
        d = defer.ensureDeferred(self._open()) if self.outbox is not None else defer.succeed(None)

        def opened(_: Any) -> None:
            if self.running:
                for svc in self:
                    svc.startService()
            self.ready.callback(None)

        def failed(f: Any) -> None:
            log.failure("mPlane component cannot open its outbox", f)
            self.ready.errback(f)

        d.addCallbacks(opened, failed)

    async def _open(self) -> None:
        assert self.outbox is not None
        await self.outbox.open()
        lost = await self.outbox.recover_jobs()
        if lost:
            log.warn("mPlane component: {n} measurements were cut short by a crash; "
                     "their clients get an exception", n=lost)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        # Interrupted probes still report what they measured: let that reach the outbox.
        self.core.scheduler.stop()
        deadline = self.core.reactor.seconds() + 5.0
        while any(j._active for j in self.core.scheduler.jobs.values()) and self.core.reactor.seconds() < deadline:
            yield task.deferLater(self.core.reactor, 0.05, lambda: None)
        if self.outbox is not None:
            yield self.outbox.flushed()
        yield defer.maybeDeferred(super().stopService)


def build(runtime: Runtime, cfg: ComponentConfig) -> Part:
    """The component's services (``[component]`` in ccnet.ini)."""
    reactor = runtime.reactor
    if runtime.tls is None:
        raise SetupError("[component] needs the [tls] section (mutual TLS with supervisor and clients)")
    policy = Policy.from_files(cfg.users, cfg.caps) if (cfg.users or cfg.caps) else None
    probes = [p.factory.build(reactor, p.name, p.options) for p in cfg.probes]
    for probe in probes:
        if IUsesTLS.providedBy(probe):
            probe.use_tls(runtime.tls)
    seen: dict[str, str] = {}
    for probe in probes:
        for cap in probe.capabilities():
            if str(cap.label) in seen:
                raise SetupError(f"[probe:{probe.name}]: capability {cap.label} is also offered by "
                                 f"[probe:{seen[str(cap.label)]}] (labels must be unique per component)")
            seen[str(cap.label)] = probe.name
    core = ComponentCore(reactor, probes, policy, lambda: runtime.users)
    outbox = Outbox(runtime.store) if cfg.supervisor else None
    top = ComponentService(core, outbox)
    part = Part(services=[top])
    if cfg.supervisor and outbox is not None:
        SupervisorLink(core, cfg, outbox, reactor, runtime.tls).setServiceParent(top)
    if cfg.listen:
        from ccnet.edge.listener import ListenerService

        site = Site(ListenerResource(core))
        site.noisy = False
        spec = parse_listen(cfg.listen)
        # The daemon counts it as one of its listeners (READY=1, /ready, draining on stop).
        part.listeners.append(ListenerService(reactor, "component", spec, site,
                                              runtime.tls.server(False, "component"),
                                              limits=runtime.limits("component")))
    runtime.register_metrics("mplane-component", ComponentMetrics(top))
    log.info("mPlane component: {n} capabilities from probes {probes}", n=len(core.offers),
             probes=", ".join(p.name for p in probes))
    return part


class ComponentMetrics:
    """The component's series for ``/metrics``: measurements by capability and outcome,
    jobs, and (with a supervisor) its outbox and link state."""

    def __init__(self, top: ComponentService) -> None:
        self.top = top

    def collect(self) -> list[Metric]:
        core, top = self.top.core, self.top
        jobs = core.scheduler.jobs.values()
        families = [
            counter("ccnet_mplane_component_measurements_total",
                    "Finished measurements by capability and outcome (result, envelope, exception).",
                    ["capability", "outcome"], core.outcomes),
            gauge("ccnet_mplane_component_jobs", "Measurements held by the scheduler, by state.", ["state"],
                  {(state,): sum(1 for j in jobs if j.state == state)
                   for state in ("scheduled", "running", "done", "failed")}),
        ]
        link = next((s for s in top if isinstance(s, SupervisorLink)), None)
        if link is not None and top.outbox is not None:
            families += [
                gauge("ccnet_mplane_component_outbox_depth", "Messages on disk waiting for the supervisor.",
                      rows={(): len(top.outbox)}),
                gauge("ccnet_mplane_component_registered", "1 while registered with the supervisor.",
                      rows={(): 1 if link.registered else 0}),
                counter("ccnet_mplane_component_delivered_total", "Messages the supervisor accepted.",
                        rows={(): link.delivered}),
                counter("ccnet_mplane_component_registrations_total", "Capability registrations sent.",
                        rows={(): link.registrations}),
            ]
        return families
