"""The supervisor's state machine: components, capabilities, measurements, results.

Almost no Twisted here (only Deferreds for the write batcher): the state is plain dictionaries, changed synchronously (the reactor
thread is the only writer) and written through to ``ccnet.store`` by ``async`` methods
whose callers await them before answering (so a result is on disk before the 200).
Memory changes only once the write committed: a write that failed (the caller gets an
error) leaves no trace, so an error reply always means nothing happened.
Long-poll waiters are plain callbacks registered per component.

Writes go through a group-commit batcher: every write queued while a transaction is
in flight is committed together in the next one, and each caller is answered when
the transaction holding its write has committed (one fsync for many requests).

A *measurement* is one client specification accepted by the supervisor. It is
forwarded to the component under its own token (the measurement id), so tokens of
different clients never collide at a component, and it is answered to the client
under the client's token and label — the component never sees the client's label,
and the client never sees the component's.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccnet.mplane.authz import Policy
from ccnet.mplane.dialect import (
    Dialect,
    express,
    for_client,
    from_wire,
    why_not_shown,
    wire_registry,
)
from ccnet.mplane.model import (
    Envelope,
    ExceptionMessage,
    Message,
    ModelError,
    RegistryStore,
    Statement,
    When,
    capability_matches_label,
    check_capability,
    from_dict,
    match_specification,
)

__all__ = ["Capability", "Component", "Measurement", "Peer", "SupervisorState", "MIGRATIONS"]

CALLBACK_LABEL = "callback"

log = Logger()

MIGRATIONS = [
    """CREATE TABLE mplane_component (
        identity TEXT PRIMARY KEY, dn TEXT, callback INTEGER NOT NULL DEFAULT 0,
        registered DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE mplane_capability (
        cap_key TEXT PRIMARY KEY, component TEXT NOT NULL, label TEXT, body TEXT NOT NULL,
        registered DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE mplane_measurement (
        id TEXT PRIMARY KEY, client TEXT NOT NULL, client_token TEXT NOT NULL,
        client_label TEXT, cap_key TEXT NOT NULL, component TEXT NOT NULL, spec TEXT NOT NULL,
        state TEXT NOT NULL, reply TEXT, interrupt INTEGER NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX mplane_measurement_client ON mplane_measurement (client, client_token)",
    "ALTER TABLE mplane_component ADD COLUMN url TEXT",
    "ALTER TABLE mplane_component ADD COLUMN dialect TEXT",
    "ALTER TABLE mplane_measurement ADD COLUMN client_registry TEXT",
]

# Measurement states.
QUEUED = "queued"  # waiting for the component's next poll
SENT = "sent"  # handed to the component
RUNNING = "running"  # the component sent a receipt
DONE = "done"  # result stored
FAILED = "failed"  # the component (or the supervisor) answered with an exception
FINAL = (DONE, FAILED)


class StoreLike(Protocol):
    def run(self, statement: str, params: Any = ()) -> Awaitable[list[tuple[Any, ...]]]: ...

    def run_interaction(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]: ...

    def sql(self, statement: str) -> str: ...


Op = tuple[str, tuple[Any, ...]]


class WriteBatcher:
    """Group commit: concurrent writes share one transaction; all or none are stored."""

    def __init__(self, store: StoreLike) -> None:
        self.store = store
        self._pending: list[tuple[list[Op], defer.Deferred[None]]] = []
        self._busy = False
        self.transactions = 0

    def write(self, ops: list[Op]) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._pending.append((ops, d))
        if not self._busy:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        self.transactions += 1
        sql = self.store.sql

        def work(cursor: Any) -> None:
            for ops, _ in batch:
                for statement, params in ops:
                    cursor.execute(sql(statement), params)

        def done(result: Any) -> None:
            # Still busy while the waiters run: a write() they make must queue, not start a
            # second transaction beside ours (it could commit out of order).
            for _, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            self._busy = False
            if self._pending:
                self._flush()

        self.store.run_interaction(work).addBoth(done)


@dataclass(frozen=True)
class Peer:
    """The caller of a request: its identity spellings and roles."""

    identity: str  # dotted SDK form: the key for everything the peer owns
    names: tuple[str, ...]  # every spelling authz files may use (dotted, slash DN)
    roles: frozenset[str]
    dn: str | None = None


@dataclass
class Component:
    identity: str
    dn: str | None
    callback: bool
    registered: float
    last_seen: float
    url: str | None = None  # set for components the supervisor calls (client-initiated workflow)
    dialect: Dialect = Dialect.SDK  # how it registered: its polls are answered the same way


@dataclass
class Capability:
    key: str
    component: str
    label: str | None
    statement: Statement
    registered: float


@dataclass
class Measurement:
    id: str
    client: str
    client_token: str
    client_label: str | None
    cap_key: str
    component: str
    spec: Statement  # as forwarded to the component
    state: str
    reply: Message | None
    interrupt: bool
    created: float
    updated: float
    client_registry: str | None = None  # the registry the client meant (RI clients: the RI's)

    def to_client(self, msg: Message, registries: RegistryStore) -> Message:
        """``msg`` (from the component) re-addressed to the client: its token and label, in
        the registry the client meant (see :func:`ccnet.mplane.dialect.express`)."""
        if isinstance(msg, Statement):
            msg = replace(msg, token=self.client_token, label=self.client_label)
            return express(msg, self.client_registry or msg.registry, registries)
        if isinstance(msg, ExceptionMessage):
            return replace(msg, token=self.client_token)
        if isinstance(msg, Envelope):
            return replace(msg, token=self.client_token, label=self.client_label,
                           contents=[self.to_client(m, registries) for m in msg.contents])
        return msg

    def receipt(self) -> Statement:
        return self.spec.derive("receipt", token=self.client_token, label=self.client_label, link=None,
                                registry=wire_registry(self.client_registry or self.spec.registry))


def capability_key(component: str, cap: Statement) -> str:
    """Stable per component and label: a re-registration replaces, it does not duplicate."""
    name = cap.label if cap.label is not None else f"token:{cap.get_token()}"
    return hashlib.sha256(f"{component}\n{name}".encode()).hexdigest()[:16]


def _dumps(msg: Message) -> str:
    return json.dumps(msg.to_dict(), sort_keys=True)


def _loads(text: str) -> Message:
    return from_dict(json.loads(text))


class SupervisorState:
    """Everything the supervisor knows, with write-through persistence."""

    def __init__(self, store: StoreLike, registries: RegistryStore, policy: Policy,
                 clock: Callable[[], float], result_expiry: float = 0.0,
                 component_role: str | None = None) -> None:
        self.store = store
        self.registries = registries
        self.policy = policy
        self.clock = clock
        self.result_expiry = result_expiry
        self.component_role = component_role
        self.redeliver_after = 30.0
        self.batcher = WriteBatcher(store)
        self.components: dict[str, Component] = {}
        self.capabilities: dict[str, Capability] = {}
        self.measurements: dict[str, Measurement] = {}
        self._by_client: dict[tuple[str, str], str] = {}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        # Called with a component identity whenever work is queued for it (pull workflow).
        self.on_work: Callable[[str], None] | None = None
        self.counters: dict[str, int] = {"registrations": 0, "specifications": 0, "results": 0,
                                         "exceptions": 0, "denied": 0}
        #: (event, capability label) -> count, for /metrics; labels come from accepted
        #: capabilities only, so clients cannot grow the label set.
        self.by_capability: dict[tuple[str, str], int] = {}
        self._hidden_noted: set[tuple[Dialect, str]] = set()

    # ------------------------------------------------------------------ persistence

    async def load(self) -> None:
        """Read everything back after a restart."""
        for ident, dn, cb, reg, seen, url, dialect in await self.store.run(
                "SELECT identity, dn, callback, registered, last_seen, url, dialect FROM mplane_component"):
            self.components[ident] = Component(ident, dn, bool(cb), float(reg), float(seen), url,
                                               Dialect(dialect or Dialect.SDK.value))
        for key, comp, label, body, reg in await self.store.run(
                "SELECT cap_key, component, label, body, registered FROM mplane_capability"):
            msg = _loads(body)
            assert isinstance(msg, Statement)
            self.capabilities[key] = Capability(key, comp, label, msg, float(reg))
        rows = await self.store.run(
            "SELECT id, client, client_token, client_label, cap_key, component, spec, state, reply, "
            "interrupt, created, updated, client_registry FROM mplane_measurement")
        for (mid, client, ctok, clabel, key, comp, spec, st, reply, intr, created, updated, creg) in rows:
            smsg = _loads(spec)
            assert isinstance(smsg, Statement)
            m = Measurement(mid, client, ctok, clabel, key, comp, smsg, st,
                            _loads(reply) if reply else None, bool(intr), float(created), float(updated), creg)
            self.measurements[mid] = m
            self._by_client[(client, ctok)] = mid

    @staticmethod
    def _component_op(c: Component) -> Op:
        return (
            "INSERT INTO mplane_component (identity, dn, callback, registered, last_seen, url, dialect) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (identity) DO UPDATE SET dn = excluded.dn, callback = excluded.callback, "
            "registered = excluded.registered, last_seen = excluded.last_seen, url = excluded.url, "
            "dialect = excluded.dialect",
            (c.identity, c.dn, int(c.callback), c.registered, c.last_seen, c.url, c.dialect.value))

    async def _save_component(self, c: Component) -> None:
        await self.batcher.write([self._component_op(c)])

    @staticmethod
    def _capability_op(c: Capability) -> Op:
        return (
            "INSERT INTO mplane_capability (cap_key, component, label, body, registered) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (cap_key) DO UPDATE SET label = excluded.label, body = excluded.body, "
            "registered = excluded.registered",
            (c.key, c.component, c.label, _dumps(c.statement), c.registered))

    @staticmethod
    def _measurement_op(m: Measurement) -> Op:
        return (
            "INSERT INTO mplane_measurement (id, client, client_token, client_label, cap_key, component, spec, "
            "state, reply, interrupt, created, updated, client_registry) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, reply = excluded.reply, "
            "interrupt = excluded.interrupt, updated = excluded.updated",
            (m.id, m.client, m.client_token, m.client_label, m.cap_key, m.component, _dumps(m.spec),
             m.state, _dumps(m.reply) if m.reply is not None else None, int(m.interrupt), m.created, m.updated,
             m.client_registry))

    async def _save_measurement(self, m: Measurement) -> None:
        await self.batcher.write([self._measurement_op(m)])

    # ------------------------------------------------------------------ listeners (long-poll)

    def listen(self, component: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` once when work is queued for ``component``; returns the canceller."""
        self._listeners.setdefault(component, []).append(fn)

        def cancel() -> None:
            fns = self._listeners.get(component, [])
            if fn in fns:
                fns.remove(fn)
            if not fns:
                self._listeners.pop(component, None)
        return cancel

    def _wake(self, component: str) -> None:
        for fn in self._listeners.pop(component, []):
            fn()
        if self.on_work is not None:
            self.on_work(component)

    def _count(self, event: str, label: str | None) -> None:
        key = (event, label or "-")
        self.by_capability[key] = self.by_capability.get(key, 0) + 1

    def queue_depths(self) -> dict[str, int]:
        """Specifications waiting to be handed to each component (not yet sent)."""
        depths: dict[str, int] = {}
        for m in self.measurements.values():
            if m.state == QUEUED:
                depths[m.component] = depths.get(m.component, 0) + 1
        return depths

    # ------------------------------------------------------------------ component side

    def may_register(self, peer: Peer) -> bool:
        return self.component_role is None or self.component_role in peer.roles

    async def register(self, peer: Peer, items: list[tuple[str, Message | ModelError]],
                       dialect: Dialect = Dialect.SDK) -> dict[str, dict[str, str]]:
        """Register capabilities (each named by its label, decoded or refused already);
        the per-label outcome map both dialects expect. Each capability is accepted or
        refused on its own."""
        now = self.clock()
        outcome: dict[str, dict[str, str]] = {}
        known = self.components.get(peer.identity)
        # Changed on a copy: memory follows once the write committed.
        comp = (replace(known, last_seen=now, dialect=dialect) if known is not None
                else Component(peer.identity, peer.dn, False, now, now, dialect=dialect))
        changed: list[Capability] = []
        for name, item in items:
            if isinstance(item, ModelError):
                outcome[name] = {"registered": "no", "reason": str(item)}
                continue
            if not isinstance(item, Statement) or item.kind not in ("capability", "withdrawal"):
                outcome[name] = {"registered": "no", "reason": "Not a capability"}
                continue
            if item.kind == "withdrawal":
                await self.withdraw(peer, item)
                outcome[name] = {"registered": "no", "reason": "withdrawn"}
                continue
            if item.label == CALLBACK_LABEL and not item.parameters and not item.results:
                comp.callback = True
                outcome[name] = {"registered": "ok"}
                continue
            try:
                check_capability(item, self.registries)
            except ModelError as exc:
                outcome[name] = {"registered": "no", "reason": str(exc)}
                continue
            cap = item.with_token(self.registries)
            key = capability_key(peer.identity, cap)
            record = Capability(key, peer.identity, cap.label, cap, now)
            changed.append(record)
            outcome[name] = {"registered": "ok"}
        await self.batcher.write([self._component_op(comp)] + [self._capability_op(r) for r in changed])
        if known is None:
            self.components[peer.identity] = comp
        else:
            known.last_seen, known.callback, known.dialect = comp.last_seen, comp.callback, comp.dialect
        for r in changed:
            self.capabilities[r.key] = r
        self.counters["registrations"] += len(changed)
        for r in changed:
            self._count("registrations", r.label)
        return outcome

    async def withdraw(self, peer: Peer, msg: Statement) -> int:
        """Remove the component's capabilities matching the withdrawal (token, else label)."""
        gone = [k for k, c in self.capabilities.items()
                if c.component == peer.identity
                and ((msg.token is not None and c.statement.token == msg.token)
                     or (msg.label is not None and c.label == msg.label))]
        if gone:
            await self.batcher.write([("DELETE FROM mplane_capability WHERE cap_key = ?", (k,)) for k in gone])
        for k in gone:
            self.capabilities.pop(k, None)
        return len(gone)

    def known_component(self, identity: str) -> bool:
        return identity in self.components

    def _pending(self, identity: str) -> Iterable[Measurement]:
        return (m for m in self.measurements.values() if m.component == identity and m.state not in FINAL)

    def wants_fast_polls(self, identity: str) -> bool:
        """Does the component run something whose result we wait for? (then keep it polling fast)"""
        comp = self.components.get(identity)
        return comp is not None and comp.callback

    async def take_work(self, identity: str, result_link: str | None) -> list[Message]:
        """Specifications and interrupts for the component's poll; marks them sent."""
        now = self.clock()
        out: list[Message] = []
        touched: list[tuple[Measurement, Measurement]] = []  # (held, as written)
        comp = self.components.get(identity)
        if comp is not None:
            comp.last_seen = now
        for m in self._pending(identity):
            new = m
            # A spec handed over without any receipt for a while may have been lost with
            # its connection: hand it over again (components answer a known token with
            # the same receipt).
            if m.state == QUEUED or (m.state == SENT and now - m.updated > self.redeliver_after):
                out.append(replace(m.spec, link=result_link))
                new = replace(new, state=SENT, updated=now)
            if new.interrupt and new.state not in FINAL and new.state != QUEUED:
                out.append(m.spec.derive("interrupt", link=None))
                new = replace(new, interrupt=False)
            if new is not m:
                touched.append((m, new))
        if touched:
            await self.batcher.write([self._measurement_op(new) for _, new in touched])
        for m, new in touched:
            m.state, m.updated, m.interrupt = new.state, new.updated, new.interrupt
        return out

    async def accept(self, peer: Peer, msg: Message) -> str | None:
        """A receipt, result or exception from a component; None if accepted, else why not."""
        if isinstance(msg, Envelope):
            m = self.measurements.get(msg.token or "")
            if m is not None and m.component == peer.identity:
                # Results of a repeated specification (SDK multi-job): the envelope is the
                # reply; final once its temporal scope has ended.
                now = self.clock()
                end = msg.when.datetimes(datetime.fromtimestamp(now, UTC))[1] if msg.when is not None else None
                done = end is None or end.timestamp() <= now
                await self._update(m, state=(DONE if done else RUNNING), reply=msg, updated=now)
                self.counters["results"] += 1
                self._count("results", m.spec.label)
                return None
            # A batch of separate replies: store each.
            problems = [p for p in [await self.accept(peer, m) for m in msg.contents] if p]
            return problems[0] if problems else None
        token = getattr(msg, "token", None)
        m = self.measurements.get(token or "")
        if m is None or m.component != peer.identity:
            return f"no measurement {token} was sent to {peer.identity}"
        now = self.clock()
        event = None
        if isinstance(msg, ExceptionMessage):
            change: dict[str, Any] = {"state": FAILED, "reply": msg}
            event = "exceptions"
        elif isinstance(msg, Statement) and msg.kind == "receipt":
            change = {"state": RUNNING} if m.state not in FINAL else {}
        elif isinstance(msg, Statement) and msg.kind == "result":
            change = {"state": DONE, "reply": msg}
            event = "results"
        else:
            return f"expected a receipt, result or exception, got a {msg.kind}"
        await self._update(m, updated=now, **change)
        if event is not None:
            self.counters[event] += 1
            self._count(event, m.spec.label)
        return None

    async def _update(self, m: Measurement, **change: Any) -> None:
        """Write ``m`` with ``change`` applied; only once that committed, apply it to ``m``."""
        await self._save_measurement(replace(m, **change))
        for name, value in change.items():
            setattr(m, name, value)

    # ------------------------------------------------------------------ client side

    def visible(self, peer: Peer) -> list[Capability]:
        """Capabilities the peer may see, components known, callback capabilities excluded."""
        return [c for c in self.capabilities.values()
                if self.policy.allows(peer.roles, c.label, c.component)]

    def offered(self, peer: Peer, link_base: str | None,
                dialect: Dialect | None = None) -> list[tuple[Capability, Statement]]:
        """The visible capabilities as the client sees them: distinct labels and tokens per
        component (``label@component`` when several components offer one label), a link
        to post specifications to. With a ``dialect``, only what a client of that dialect
        can parse, re-expressed for it (see :func:`ccnet.mplane.dialect.for_client`)."""
        caps = sorted(self.visible(peer), key=lambda c: (c.label or "", c.component))
        shown: list[tuple[Capability, Statement]] = []
        for c in caps:
            stmt = c.statement if dialect is None else for_client(c.statement, dialect, self.registries)
            if stmt is None:
                self._note_hidden(c, dialect)
                continue
            shown.append((c, stmt))
        counts: dict[str | None, int] = {}
        for c, _ in shown:
            counts[c.label] = counts.get(c.label, 0) + 1
        out = []
        for c, stmt in shown:
            label = c.label
            if label is not None and counts[label] > 1:
                label = f"{label}@{c.component}"
            token = hashlib.md5(f"{c.component}\n{c.statement.get_token()}".encode(),
                                usedforsecurity=False).hexdigest()
            link = f"{link_base}/{c.key}" if link_base else None
            out.append((c, replace(stmt, label=label, token=token, link=link)))
        return out

    def _note_hidden(self, cap: Capability, dialect: Dialect | None) -> None:
        if dialect is None or (dialect, cap.key) in self._hidden_noted:
            return
        self._hidden_noted.add((dialect, cap.key))
        log.info("mPlane capability {label} of {component} is not listed to {dialect} clients: {why}",
                 label=cap.label, component=cap.component, dialect=dialect.value.upper(),
                 why=why_not_shown(cap.statement, dialect, self.registries))

    def find_capability(self, peer: Peer, spec: Statement, cap_key: str | None,
                        component: str | None = None) -> list[Capability]:
        """Candidate capabilities for ``spec``: by key (from the link), else by label (of
        ``component``, when the client named it). Never by schema alone when the
        specification has a label: another capability's receipt for a label that does
        not exist would be a lie."""
        if cap_key is not None:
            c = self.capabilities.get(cap_key)
            return [c] if c is not None and self.policy.allows(peer.roles, c.label, c.component) else []
        offered = [(c, shown) for c, shown in self.offered(peer, None)
                   if component is None or c.component == component]
        byname = [c for c, shown in offered if capability_matches_label(shown.label, spec.label)]
        if not byname:
            byname = [c for c, shown in offered if capability_matches_label(c.label, spec.label)]
        if not byname and spec.label is None:
            schema = spec.schema_hash()
            byname = [c for c, _ in offered if c.statement.schema_hash() == schema]
        return byname

    def _view_for(self, cap: Capability, spec: Statement, dialect: Dialect) -> Statement:
        """``cap`` as the client of ``spec`` saw it: as listed to its dialect when that is
        the registry the specification names, else as ccnet holds it (whose registry
        mismatch the check then reports)."""
        wire = for_client(cap.statement, dialect, self.registries)
        shown = from_wire(wire, dialect) if wire is not None else None
        return shown if shown is not None and shown.registry == spec.registry else cap.statement

    async def submit(self, peer: Peer, spec: Statement, cap_key: str | None = None,
                     tzero: datetime | None = None, component: str | None = None,
                     dialect: Dialect = Dialect.SDK) -> Message:
        """Accept a client specification: a receipt, or an exception saying what is wrong.

        A submission is the same measurement as an earlier one only when it repeats the
        same client's identical specification while that is still pending: relative
        scopes (``now + 1s``) are resolved on arrival, so the same text sent twice is two
        measurements, each with its own token.
        """
        now = self.clock()
        tzero = tzero or datetime.fromtimestamp(now, UTC)
        token = spec.get_token(self.registries)
        existing = self.measurements.get(self._by_client.get((peer.identity, token), ""))
        if existing is not None and existing.state not in FINAL and existing.client_label == spec.label \
                and existing.spec.parameters == spec.parameters \
                and existing.spec.when.resolved(datetime.fromtimestamp(existing.created, UTC)) \
                == spec.when.resolved(tzero):
            return existing.receipt()  # a retry of the same pending specification
        candidates = self.find_capability(peer, spec, cap_key, component)
        if not candidates:
            self.counters["denied"] += 1
            where = f" at {component}" if component else ""
            return ExceptionMessage(token, f"no capability {spec.label!r}{where} available to {peer.identity}")
        errors = []
        chosen = None
        for cap in candidates:
            try:
                match_specification(spec, self._view_for(cap, spec, dialect), self.registries, tzero)
            except ModelError as exc:
                errors.append(str(exc))
                continue
            chosen = cap
            break
        if chosen is None:
            return ExceptionMessage(token, errors[0])
        mid = uuid.uuid4().hex
        if existing is not None:
            # The token already names another measurement of this client (finished, or
            # not the same specification): this one gets its own.
            token = hashlib.md5(f"{token} {mid}".encode(), usedforsecurity=False).hexdigest()
        forwarded = chosen.statement.derive(
            "specification", label=chosen.label, token=mid, when=spec.when,
            parameters=dict(spec.parameters), link=None)
        m = Measurement(mid, peer.identity, token, spec.label, chosen.key, chosen.component, forwarded,
                        QUEUED, None, False, now, now, spec.registry)
        await self._save_measurement(m)  # a specification whose write failed is not queued
        self.measurements[mid] = m
        self._by_client[(peer.identity, token)] = mid
        self.counters["specifications"] += 1
        self._count("specifications", chosen.label)
        self._wake(chosen.component)
        return m.receipt()

    def _own(self, peer: Peer, token_or_label: str | None) -> Measurement | None:
        if token_or_label is None:
            return None
        mid = self._by_client.get((peer.identity, token_or_label))
        if mid is not None:
            return self.measurements.get(mid)
        matches = [m for m in self.measurements.values()
                   if m.client == peer.identity and m.client_label == token_or_label]
        if matches:
            return max(matches, key=lambda m: m.created)
        if self.policy.is_admin(peer.roles):
            m = self.measurements.get(token_or_label)
            if m is not None:
                return m
        return None

    def redeem(self, peer: Peer, msg: Statement | str) -> Message:
        """The result if ready, the exception if failed, else the receipt again."""
        key = msg if isinstance(msg, str) else (msg.token or msg.label)
        m = self._own(peer, key)
        if m is None:
            return ExceptionMessage(key, f"no measurement {key} for {peer.identity}")
        if m.reply is not None:
            return m.to_client(m.reply, self.registries)
        return m.receipt()

    async def interrupt(self, peer: Peer, msg: Statement) -> Message:
        m = self._own(peer, msg.token or msg.label)
        if m is None:
            return ExceptionMessage(msg.token, f"no measurement {msg.token or msg.label} for {peer.identity}")
        change: dict[str, Any] = {"updated": self.clock()}
        if m.state == QUEUED:
            # Never reached the component: drop it here.
            change.update(state=FAILED, reply=ExceptionMessage(m.id, "Interrupted before it started"))
        elif m.state not in FINAL:
            change["interrupt"] = True
        await self._update(m, **change)
        if change.get("interrupt"):
            self._wake(m.component)
        return m.to_client(m.reply, self.registries) if m.reply is not None else m.receipt()

    def client_results(self, peer: Peer) -> list[Message]:
        """Replies (results/exceptions) of the peer's measurements, newest last."""
        mine = sorted((m for m in self.measurements.values()
                       if (m.client == peer.identity or self.policy.is_admin(peer.roles)) and m.reply is not None),
                      key=lambda m: m.created)
        return [m.to_client(m.reply, self.registries) for m in mine if m.reply is not None]

    # ------------------------------------------------------------------ housekeeping

    async def expire(self) -> int:
        """Drop finished measurements older than ``result_expiry`` seconds."""
        if self.result_expiry <= 0:
            return 0
        cutoff = self.clock() - self.result_expiry
        old = [m for m in self.measurements.values() if m.state in FINAL and m.updated < cutoff]
        if old:
            await self.batcher.write([("DELETE FROM mplane_measurement WHERE id = ?", (m.id,)) for m in old])
        for m in old:
            self.measurements.pop(m.id, None)
            self._by_client.pop((m.client, m.client_token), None)
        return len(old)

    def status(self, peer: Peer, recent: int = 50) -> dict[str, Any]:
        """What the operator view shows, limited to what ``peer`` may see."""
        admin = self.policy.is_admin(peer.roles)
        caps = self.visible(peer)
        comps = sorted({c.component for c in caps} | (set(self.components) if admin else set()))
        ms = sorted((m for m in self.measurements.values()
                     if admin or m.client == peer.identity), key=lambda m: m.created)
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "identity": peer.identity,
            "roles": sorted(peer.roles),
            "components": [
                {"identity": c, "capabilities": sum(1 for x in caps if x.component == c),
                 "last_seen": iso(self.components[c].last_seen) if c in self.components else None,
                 "callback": self.components[c].callback if c in self.components else False}
                for c in comps],
            "capabilities": [
                {"label": c.label, "component": c.component, "verb": c.statement.verb,
                 "when": str(c.statement.when).strip(), "parameters": c.statement.parameters,
                 "results": c.statement.results} for c in sorted(caps, key=lambda c: (c.label or "", c.component))],
            "pending": [
                {"token": m.client_token, "label": m.client_label, "component": m.component, "state": m.state,
                 "client": m.client, "created": iso(m.created)} for m in ms if m.state not in FINAL],
            "results": [
                {"token": m.client_token, "label": m.client_label, "component": m.component, "state": m.state,
                 "client": m.client, "updated": iso(m.updated),
                 "rows": len(m.reply.resultvalues) if isinstance(m.reply, Statement) else 0,
                 "message": m.reply.message if isinstance(m.reply, ExceptionMessage) else None}
                for m in ms if m.state in FINAL][-recent:],
            "counters": dict(self.counters),
        }


def callback_spec(when: str = "now + 0s") -> Statement:
    """The ``callback`` specification: an SDK component sleeps ``when``'s end before its next poll."""
    return Statement("specification", label=CALLBACK_LABEL, when=When.parse(when))
