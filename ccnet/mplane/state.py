"""The supervisor's state machine: components, capabilities, measurements, results.

Almost no Twisted here (only Deferreds for the write batcher): the state is plain dictionaries, changed synchronously (the reactor
thread is the only writer) and written through to ``ccnet.store`` by ``async`` methods
whose callers await them before answering (so a result is on disk before the 200).
Memory changes only once the write committed, and then to the row as stored (which
another daemon may have finished first): a write that failed (the caller gets an
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
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

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
    # Active/active (several daemons on one PostgreSQL): who holds the component's poll,
    # and indexes for the per-component reads a notification triggers.
    "ALTER TABLE mplane_component ADD COLUMN holder TEXT",
    "ALTER TABLE mplane_component ADD COLUMN held_since DOUBLE PRECISION",
    "CREATE INDEX mplane_measurement_component ON mplane_measurement (component, state)",
    "CREATE INDEX mplane_capability_component ON mplane_capability (component)",
    # Raised by every update: of two rows of one measurement, memory keeps the newer one
    # (two writes of this daemon commit in one order, their answers may come in the other).
    "ALTER TABLE mplane_measurement ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
]

COMPONENT_COLUMNS = "identity, dn, callback, registered, last_seen, url, dialect, holder, held_since"
CAPABILITY_COLUMNS = "cap_key, component, label, body, registered"
MEASUREMENT_COLUMNS = ("id, client, client_token, client_label, cap_key, component, spec, state, reply, "
                       "interrupt, created, updated, client_registry, version")
#: The columns of a measurement that change after it is stored (the others never do).
CHANGING_COLUMNS = "state, reply, interrupt, updated, version"
#: Every update of a measurement raises its version (see :attr:`Measurement.version`).
NEXT_VERSION = "version = version + 1"

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

    @property
    def dialect(self) -> str: ...


Op = tuple[str, tuple[Any, ...]]
Rows = list[tuple[Any, ...]]


class WriteBatcher:
    """Group commit: concurrent writes share one transaction; all or none are stored."""

    def __init__(self, store: StoreLike) -> None:
        self.store = store
        self._pending: list[tuple[list[Op], defer.Deferred[list[Rows]]]] = []
        self._busy = False
        self.transactions = 0

    def write(self, ops: list[Op]) -> defer.Deferred[list[Rows]]:
        """Fires once ``ops`` committed, with the rows each of them returned (``RETURNING``)."""
        d: defer.Deferred[list[Rows]] = defer.Deferred()
        self._pending.append((ops, d))
        if not self._busy:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        self.transactions += 1
        sql = self.store.sql

        def work(cursor: Any) -> list[list[Rows]]:
            out = []
            for ops, _ in batch:
                returned = []
                for statement, params in ops:
                    cursor.execute(sql(statement), params)
                    returned.append([tuple(r) for r in cursor.fetchall()] if cursor.description else [])
                out.append(returned)
            return out

        def done(result: Any) -> None:
            # Still busy while the waiters run: a write() they make must queue, not start a
            # second transaction beside ours (it could commit out of order).
            for n, (_, d) in enumerate(batch):
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result[n])
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
    holder: str | None = None  # the daemon (node name) its poll came to last
    held_since: float | None = None


@dataclass(frozen=True)  # (CapabilityTable indexes it by component)
class Capability:
    key: str
    component: str
    label: str | None
    statement: Statement
    registered: float


class CapabilityTable(Mapping[str, "Capability"]):
    """The capabilities held, by key, and which keys each component has: replacing one
    component's capabilities (a registration another daemon made, a withdrawal) looks at
    that component's, not at every capability held (20 000 at 10 000 components)."""

    def __init__(self) -> None:
        self._by_key: dict[str, Capability] = {}
        self._by_component: dict[str, dict[str, None]] = {}  # (a dict: in registration order)

    def __getitem__(self, key: str) -> Capability:
        return self._by_key[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    # The mixins' versions go through __getitem__ and KeyError: every listing uses these.
    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: str, default: Any = None) -> Any:
        return self._by_key.get(key, default)

    def values(self) -> Any:
        return self._by_key.values()

    def items(self) -> Any:
        return self._by_key.items()

    def put(self, cap: Capability) -> None:
        old = self._by_key.get(cap.key)
        if old is not None and old.component != cap.component:
            self._unlink(old)
        self._by_key[cap.key] = cap
        self._by_component.setdefault(cap.component, {})[cap.key] = None

    def pop(self, key: str) -> Capability | None:  # type: ignore[override]
        cap = self._by_key.pop(key, None)
        if cap is not None:
            self._unlink(cap)
        return cap

    def of(self, component: str) -> list[Capability]:
        """``component``'s capabilities."""
        return [self._by_key[k] for k in self._by_component.get(component, ())]

    def _unlink(self, cap: Capability) -> None:
        keys = self._by_component.get(cap.component)
        if keys is not None:
            keys.pop(cap.key, None)
            if not keys:
                del self._by_component[cap.component]


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
    #: Raised by every update in the store: the higher of two rows is the newer.
    version: int = 0

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


def send_due(m: Measurement, now: float, redeliver_after: float) -> bool:
    """Is ``m`` to be handed to its component's poll now? (:data:`CLAIM_SQL` says the same
    in SQL, so that exactly one daemon of several hands it out.) A spec handed over without
    any receipt for a while may have been lost with its connection: it is handed over
    again (components answer a known token with the same receipt)."""
    return m.state == QUEUED or (m.state == SENT and now - m.updated > redeliver_after)


def interrupt_due(m: Measurement) -> bool:
    """Is an interrupt for ``m`` to be handed to its component? (as :data:`CLAIM_INTERRUPT_SQL`)"""
    return m.interrupt and m.state not in FINAL and m.state != QUEUED


#: Claims what :func:`send_due` says is due, for one component, atomically: of two
#: daemons racing for the same row, the second finds it no longer due.
CLAIM_SQL = (f"UPDATE mplane_measurement SET state = '{SENT}', updated = ?, {NEXT_VERSION} "
             f"WHERE component = ? AND (state = '{QUEUED}' OR (state = '{SENT}' AND updated < ?)) "
             f"RETURNING {MEASUREMENT_COLUMNS}")
CLAIM_INTERRUPT_SQL = (f"UPDATE mplane_measurement SET interrupt = 0, {NEXT_VERSION} "
                       f"WHERE component = ? AND interrupt = 1 AND state IN ('{SENT}', '{RUNNING}') "
                       f"RETURNING {MEASUREMENT_COLUMNS}")
#: The database's clock (PostgreSQL), in the seconds of ``updated``: with several daemons,
#: when a handed-over specification is due again is timed by this one clock, not by each
#: host's (skewed hosts would disagree, and hand it out early or late).
STORE_CLOCK_SQL = "SELECT date_part('epoch', clock_timestamp())"


def read_store_clock(cursor: Any, monotonic: Callable[[], float]) -> tuple[float, float]:
    """The store's clock, and its offset to ``monotonic``, read with ``cursor``. In the
    store's thread, our clock read just around the query: neither the wait for a pool
    thread nor the reactor's turn widens the error. Against a monotonic clock: a step of
    this host's wall clock (NTP) does not move the offset."""
    before = monotonic()
    cursor.execute(STORE_CLOCK_SQL)
    store_time = float(cursor.fetchone()[0])
    return store_time, store_time - (before + monotonic()) / 2


def final_is_final(state: str, change: dict[str, Any]) -> dict[str, Any]:
    """``change`` as it may apply to a measurement in ``state``: a finished measurement keeps
    its outcome (a result posted twice, or through two daemons, is stored once)."""
    if state not in FINAL:
        return change
    return {k: v for k, v in change.items() if k not in ("state", "reply", "interrupt")}


def component_from_row(row: tuple[Any, ...]) -> Component:
    ident, dn, cb, reg, seen, url, dialect, holder, held = row
    return Component(ident, dn, bool(cb), float(reg), float(seen), url, Dialect(dialect or Dialect.SDK.value),
                     holder, float(held) if held is not None else None)


def capability_from_row(row: tuple[Any, ...]) -> Capability:
    key, comp, label, body, reg = row
    msg = _loads(body)
    assert isinstance(msg, Statement)
    return Capability(key, comp, label, msg, float(reg))


def measurement_from_row(row: tuple[Any, ...]) -> Measurement:
    (mid, client, ctok, clabel, key, comp, spec, st, reply, intr, created, updated, creg, version) = row
    smsg = _loads(spec)
    assert isinstance(smsg, Statement)
    return Measurement(mid, client, ctok, clabel, key, comp, smsg, st,
                       _loads(reply) if reply else None, bool(intr), float(created), float(updated), creg,
                       int(version))


_Row = TypeVar("_Row")


def decode_rows(decode: Callable[[tuple[Any, ...]], _Row],
                rows: list[tuple[Any, ...]]) -> tuple[list[_Row], list[tuple[Any, str]]]:
    """``decode`` of each row, and ``(key, error)`` of each row that cannot be read — one bad
    row (a newer daemon's format during an upgrade, a hand edit) must not stop every
    refresh and resync. Pure (no logging): it may run in a thread."""
    out, problems = [], []
    for row in rows:
        try:
            out.append(decode(row))
        except Exception as exc:
            problems.append((row[0], repr(exc)[:200]))
    return out, problems


#: Runs a function off the reactor thread; fires with its result (``deferToThreadPool``).
Offload = Callable[[Callable[[], Any]], Awaitable[Any]]

#: Rows decoded in the reactor thread at once; more (a full resync) go to ``offload``.
DECODE_INLINE = 200


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
                 component_role: str | None = None, node: str = "", channel: str | None = None,
                 offload: Offload | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        #: Where many stored rows are decoded (a thread), not to stall the reactor; None: here.
        self.offload = offload
        #: This daemon's name in the operator view (``[supervisor] node-name``).
        self.node = node
        #: The PostgreSQL notification channel shared by every daemon on the store; None
        #: (SQLite, one daemon) when this daemon's memory is the whole truth.
        self.channel = channel
        #: Tells this daemon's own notifications from others' (a node name may be reused).
        self.instance = uuid.uuid4().hex[:12]
        # Reads from the store may overlap (a resync decoding in a thread, a request
        # re-reading one row meanwhile) and this daemon writes while they are in flight:
        # each read's queries and each change committed here take a number from one
        # sequence, and per object ("c:<component>", "m:<measurement>") memory remembers
        # the number it was last taken from. A read's rows do not overwrite what a later
        # read, or a change committed after the read began, put there. Forgotten whenever
        # no read is in flight (every later read is numbered higher than all of it).
        self._seq = 0
        self._marks: dict[str, int] = {}
        self._reads = 0
        self.registries = registries
        self.policy = policy
        self.clock = clock
        self.result_expiry = result_expiry
        self.component_role = component_role
        self.redeliver_after = 30.0
        #: Redelivery is timed by the store's clock when daemons share it (PostgreSQL):
        #: ``store_offset`` is that clock minus ``monotonic``, measured at each load and claim
        #: (until the first, our wall clock stands in for it).
        self.store_clock = store.dialect == "postgresql"
        self.monotonic = monotonic
        self.store_offset = clock() - monotonic()
        self.batcher = WriteBatcher(store)
        self.components: dict[str, Component] = {}
        self.capabilities = CapabilityTable()
        self.measurements: dict[str, Measurement] = {}
        self._by_client: dict[tuple[str, str], str] = {}
        #: Measurement ids by component: a poll looks at its own, not at every measurement.
        self._by_component: dict[str, set[str]] = {}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        # Called with a component identity whenever work is queued for it (pull workflow).
        self.on_work: Callable[[str], None] | None = None
        self.counters: dict[str, int] = {"registrations": 0, "specifications": 0, "results": 0,
                                         "exceptions": 0, "denied": 0}
        #: (event, capability label) -> count, for /metrics; labels come from accepted
        #: capabilities only, so clients cannot grow the label set.
        self.by_capability: dict[tuple[str, str], int] = {}
        self._hidden_noted: set[tuple[Dialect, str]] = set()
        #: Other daemons' notifications applied and full resyncs (see ccnet.mplane.cluster).
        self.cluster_events: dict[str, int] = {"notifications": 0, "resyncs": 0}

    # ------------------------------------------------------------------ persistence

    @property
    def shared(self) -> bool:
        """Do other daemons write to the same store? (then the store, not memory, decides)"""
        return self.channel is not None

    def store_now(self) -> float:
        """Now by the clock that times redelivery: the store's (PostgreSQL), else ours."""
        if self.store_clock:
            return self.monotonic() + self.store_offset
        return self.clock()

    async def load(self) -> None:
        """Read everything back (after a restart, or a lost notification connection)."""
        if self.store_clock:
            _, self.store_offset = await self.store.run_interaction(read_store_clock, self.monotonic)
        self._begin_read()
        try:
            since = self._number()
            comps = await self.store.run(f"SELECT {COMPONENT_COLUMNS} FROM mplane_component")
            caps = await self.store.run(f"SELECT {CAPABILITY_COLUMNS} FROM mplane_capability")
            msince = self._number()
            rows = await self.store.run(f"SELECT {MEASUREMENT_COLUMNS} FROM mplane_measurement")
            components = await self._decode(component_from_row, comps, "component")
            capabilities = await self._decode(capability_from_row, caps, "capability")
            measurements = await self._decode(measurement_from_row, rows, "measurement")
            self._apply_components({row[0] for row in comps}, components, capabilities, since, every=True)
            found = {row[0] for row in rows}
            self._apply_measurements(found | set(self.measurements), found, measurements, msince)
        finally:
            self._end_read()

    async def resync(self) -> None:
        """Everything again from the store, then wake every component with work due:
        notifications sent while we did not listen are lost."""
        await self.load()
        now = self.store_now()
        for comp in {m.component for m in self.measurements.values()
                     if send_due(m, now, self.redeliver_after) or interrupt_due(m)}:
            self._wake(comp)

    async def refresh(self, components: Iterable[str] = (), measurements: Iterable[str] = ()) -> None:
        """Re-read what another daemon changed (named by its notifications); wake the
        components that now have work."""
        comps, mids = sorted(set(components)), sorted(set(measurements))
        self._begin_read()
        try:
            for chunk in _chunks(comps):
                marks = ", ".join("?" * len(chunk))
                since = self._number()
                rows = await self.store.run(
                    f"SELECT {COMPONENT_COLUMNS} FROM mplane_component WHERE identity IN ({marks})", chunk)
                caps = await self.store.run(
                    f"SELECT {CAPABILITY_COLUMNS} FROM mplane_capability WHERE component IN ({marks})", chunk)
                self._apply_components(set(chunk), await self._decode(component_from_row, rows, "component"),
                                       await self._decode(capability_from_row, caps, "capability"), since)
            for chunk in _chunks(mids):
                marks = ", ".join("?" * len(chunk))
                since = self._number()
                rows = await self.store.run(
                    f"SELECT {MEASUREMENT_COLUMNS} FROM mplane_measurement WHERE id IN ({marks})", chunk)
                self._apply_measurements(set(chunk), {row[0] for row in rows},
                                         await self._decode(measurement_from_row, rows, "measurement"), since)
        finally:
            self._end_read()
        now = self.store_now()
        for comp in {m.component for mid in mids if (m := self.measurements.get(mid)) is not None
                     and (send_due(m, now, self.redeliver_after) or interrupt_due(m))}:
            self._wake(comp)

    def _begin_read(self) -> None:
        self._reads += 1

    def _number(self) -> int:
        """The next number of the sequence ``_marks`` holds (taken as a query is issued)."""
        self._seq += 1
        return self._seq

    def _end_read(self) -> None:
        self._reads -= 1
        if not self._reads:
            self._marks.clear()

    def _changed_here(self, key: str) -> None:
        """Note a change this daemon committed (see ``_marks``)."""
        if self._reads:
            self._marks[key] = self._number()

    def _takes(self, key: str, since: int) -> bool:
        """May rows read by the query numbered ``since`` replace ``key`` in memory? (no
        later read and no change committed here since put it there); if so, noted."""
        if self._marks.get(key, 0) > since:
            return False
        self._marks[key] = since
        return True

    async def _decode(self, decode: Callable[[tuple[Any, ...]], _Row], rows: list[tuple[Any, ...]],
                      kind: str) -> list[_Row]:
        """The rows decoded (by ``offload`` when they are many: a full resync of a large
        store would hold the reactor for seconds); those that cannot be read logged, left out."""
        if self.offload is None or len(rows) <= DECODE_INLINE:
            out, problems = decode_rows(decode, rows)
        else:
            out, problems = await self.offload(lambda: decode_rows(decode, rows))
        for key, error in problems:
            log.error("mPlane {kind} {key} in the store cannot be read, left out: {error}",
                      kind=kind, key=key, error=error)
        return out

    def _apply_components(self, asked: set[str], comps: list[Component], caps: list[Capability],
                          since: int, every: bool = False) -> None:
        """Components ``asked`` (``every``: all) and their capabilities as read by the query
        numbered ``since``, except those put in memory later (see ``_marks``)."""
        held = {c.component for c in self.capabilities.values()} if every else set()
        fresh = {comp for comp in asked | held | {c.identity for c in comps} | {c.component for c in caps}
                 if self._takes(f"c:{comp}", since)}
        for comp in comps:
            if comp.identity in fresh:
                self._merge_component(comp)
        for ident in fresh:
            for gone in self.capabilities.of(ident):
                self.capabilities.pop(gone.key)
        for cap in caps:
            if cap.component in fresh:
                self.capabilities.put(cap)

    def _apply_measurements(self, asked: set[str], found: set[str], ms: list[Measurement], since: int) -> None:
        """Measurements ``asked`` as read by the query numbered ``since`` (``found``: the ids
        of the rows read, ``ms`` those that could be decoded; absent: deleted), except those
        put in memory later: by the row's version when memory has another, else as
        ``_marks`` says."""
        for m in ms:
            known = self.measurements.get(m.id)
            if known is not None and known.version != m.version:
                self._merge_measurement(m)  # (only if newer)
            elif self._takes(f"m:{m.id}", since):
                self._merge_measurement(m)
        for mid in asked - found:
            if self._takes(f"m:{mid}", since):
                self._drop_measurement(mid)  # expired (here or by another daemon)

    def _merge_component(self, c: Component) -> Component:
        known = self.components.get(c.identity)
        if known is None:
            self.components[c.identity] = c
            return c
        known.__dict__.update(c.__dict__)  # in place: requests in flight hold the object
        return known

    def _merge_measurement(self, m: Measurement) -> Measurement:
        """``m`` into memory, unless memory holds a newer version of it."""
        known = self.measurements.get(m.id)
        if known is None:
            self._add_measurement(m)
            known = m
        elif m.version >= known.version:
            known.__dict__.update(m.__dict__)
        self._by_client[(known.client, known.client_token)] = known.id
        return known

    def _drop_measurement(self, mid: str) -> None:
        m = self.measurements.pop(mid, None)
        if m is None:
            return
        if self._by_client.get((m.client, m.client_token)) == mid:
            del self._by_client[(m.client, m.client_token)]
        mine = self._by_component.get(m.component)
        if mine is not None:
            mine.discard(mid)
            if not mine:
                del self._by_component[m.component]

    def _add_measurement(self, m: Measurement) -> None:
        self.measurements[m.id] = m
        self._by_component.setdefault(m.component, set()).add(m.id)

    def _notice(self, kind: str, ident: str) -> list[Op]:
        """The statement telling the other daemons, when this transaction commits, that
        ``kind`` (``c``: a component and its capabilities, ``m``: a measurement) changed.
        Ids only: they read the rows themselves."""
        if self.channel is None:
            return []
        return [("SELECT pg_notify(?, ?)", (self.channel, f"{self.instance} {kind} {ident}"))]

    async def ensure_component(self, identity: str) -> bool:
        """Is ``identity`` a registered component? With other daemons on the store, one
        that registered there a moment ago counts even before its notification arrives."""
        if identity not in self.components and self.shared:
            await self.refresh(components=[identity])
        return identity in self.components

    async def ensure_measurement(self, mid: str, fresh: bool = False) -> Measurement | None:
        """The measurement ``mid``; with other daemons on the store, read again when it is
        not known here yet, or (``fresh``) not finished: another daemon may have changed it."""
        m = self.measurements.get(mid)
        if self.shared and (m is None or (fresh and m.state not in FINAL)):
            await self.refresh(measurements=[mid])
            m = self.measurements.get(mid)
        return m

    @staticmethod
    def _component_op(c: Component) -> Op:
        return (
            f"INSERT INTO mplane_component ({COMPONENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (identity) DO UPDATE SET dn = excluded.dn, callback = excluded.callback, "
            "registered = excluded.registered, last_seen = excluded.last_seen, url = excluded.url, "
            "dialect = excluded.dialect, holder = excluded.holder, held_since = excluded.held_since",
            (c.identity, c.dn, int(c.callback), c.registered, c.last_seen, c.url, c.dialect.value,
             c.holder, c.held_since))

    async def _save_component(self, c: Component) -> None:
        await self.batcher.write([self._component_op(c), *self._notice("c", c.identity)])

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
            f"INSERT INTO mplane_measurement ({MEASUREMENT_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (m.id, m.client, m.client_token, m.client_label, m.cap_key, m.component, _dumps(m.spec),
             m.state, _dumps(m.reply) if m.reply is not None else None, int(m.interrupt), m.created, m.updated,
             m.client_registry, m.version))

    async def _save_measurement(self, m: Measurement) -> None:
        await self.batcher.write([self._measurement_op(m), *self._notice("m", m.id)])

    @staticmethod
    def _change_op(mid: str, columns: dict[str, Any]) -> Op:
        """Only the columns that change (``columns``: values as stored), and never a finished
        measurement's outcome (as :func:`final_is_final`): another daemon may have written
        the other columns, or finished it since this daemon read it. Returns the
        :data:`CHANGING_COLUMNS` as stored."""
        cols = []
        for name in columns:
            if name in ("state", "reply", "interrupt"):
                cols.append(f"{name} = CASE WHEN state IN ('{DONE}', '{FAILED}') THEN {name} ELSE ? END")
            else:
                cols.append(f"{name} = ?")
        cols.append(NEXT_VERSION)
        return (f"UPDATE mplane_measurement SET {', '.join(cols)} WHERE id = ? RETURNING {CHANGING_COLUMNS}",
                (*columns.values(), mid))

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

    def polls_held(self) -> int:
        """Components whose long-poll this daemon holds open right now."""
        return len(self._listeners)

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
                       dialect: Dialect = Dialect.SDK, holder: str | None = None) -> dict[str, dict[str, str]]:
        """Register capabilities (each named by its label, decoded or refused already);
        the per-label outcome map both dialects expect. Each capability is accepted or
        refused on its own."""
        now = self.clock()
        outcome: dict[str, dict[str, str]] = {}
        known = self.components.get(peer.identity)
        # Changed on a copy: memory follows once the write committed.
        comp = (replace(known, last_seen=now, dialect=dialect) if known is not None
                else Component(peer.identity, peer.dn, False, now, now, dialect=dialect))
        if holder is not None and comp.holder != holder:
            comp.holder, comp.held_since = holder, now
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
        await self.batcher.write([self._component_op(comp)] + [self._capability_op(r) for r in changed]
                                 + self._notice("c", peer.identity))
        self._changed_here(f"c:{peer.identity}")
        self._merge_component(comp)
        for r in changed:
            self.capabilities.put(r)
        self.counters["registrations"] += len(changed)
        for r in changed:
            self._count("registrations", r.label)
        return outcome

    async def withdraw(self, peer: Peer, msg: Statement) -> int:
        """Remove the component's capabilities matching the withdrawal (token, else label)."""
        gone = [c.key for c in self.capabilities.of(peer.identity)
                if ((msg.token is not None and c.statement.token == msg.token)
                     or (msg.label is not None and c.label == msg.label))]
        if gone:
            await self.batcher.write([("DELETE FROM mplane_capability WHERE cap_key = ?", (k,)) for k in gone]
                                     + self._notice("c", peer.identity))
        self._changed_here(f"c:{peer.identity}")
        for k in gone:
            self.capabilities.pop(k)
        return len(gone)

    def known_component(self, identity: str) -> bool:
        return identity in self.components

    async def hold(self, identity: str, holder: str) -> None:
        """Note that ``holder`` (a daemon) now serves ``identity``'s polls (operator view)."""
        comp = self.components.get(identity)
        if comp is None or comp.holder == holder:
            return
        await self._save_component(replace(comp, holder=holder, held_since=self.clock()))
        self._changed_here(f"c:{identity}")
        comp.holder, comp.held_since = holder, self.clock()

    def _pending(self, identity: str) -> Iterable[Measurement]:
        return (m for mid in self._by_component.get(identity, ())
                if (m := self.measurements.get(mid)) is not None and m.state not in FINAL)

    def wants_fast_polls(self, identity: str) -> bool:
        """Does the component run something whose result we wait for? (then keep it polling fast)"""
        comp = self.components.get(identity)
        return comp is not None and comp.callback

    async def take_work(self, identity: str, result_link: str | None) -> list[Message]:
        """Specifications and interrupts for the component's poll; marks them sent.

        What is due is claimed in the store with a conditional UPDATE (:data:`CLAIM_SQL`):
        when daemons race for one specification (a component polling two of them during
        a failover), exactly one hands it out."""
        now = self.clock()
        comp = self.components.get(identity)
        if comp is not None:
            comp.last_seen = now
        mine = list(self._pending(identity))
        if not any(send_due(m, self.store_now(), self.redeliver_after) or interrupt_due(m) for m in mine):
            return []  # (memory is kept current by the notifications: no query per empty poll)
        sql = self.store.sql
        notice = self._notice
        store_clock, redeliver_after, monotonic = self.store_clock, self.redeliver_after, self.monotonic

        def claim(cursor: Any) -> tuple[float | None, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            at, offset = now, None
            if store_clock:
                at, offset = read_store_clock(cursor, monotonic)
            cursor.execute(sql(CLAIM_SQL), (at, identity, at - redeliver_after))
            sent = list(cursor.fetchall())
            cursor.execute(sql(CLAIM_INTERRUPT_SQL), (identity,))
            interrupted = list(cursor.fetchall())
            for row in sent + interrupted:
                for statement, params in notice("m", row[0]):
                    cursor.execute(sql(statement), params)
            return offset, sent, interrupted

        offset, sent, interrupted = await self.store.run_interaction(claim)
        if offset is not None:
            self.store_offset = offset
        out: list[Message] = []
        for row in sent + interrupted:
            self._changed_here(f"m:{row[0]}")
        for row in sent:
            m = self._merge_measurement(measurement_from_row(row))
            out.append(replace(m.spec, link=result_link))
        for row in interrupted:
            m = self._merge_measurement(measurement_from_row(row))
            out.append(m.spec.derive("interrupt", link=None))
        return out

    async def accept(self, peer: Peer, msg: Message) -> str | None:
        """A receipt, result or exception from a component; None if accepted, else why not."""
        if isinstance(msg, Envelope):
            m = await self.ensure_measurement(msg.token or "", fresh=True)
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
        m = await self.ensure_measurement(token or "", fresh=True)
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
        """Write ``change`` to ``m``; once that committed, ``m`` is what the store holds.

        The two differ when another daemon finished the measurement after this one last
        read it: the store keeps that outcome (:meth:`_change_op`), and so does memory.
        Unless memory already holds a newer version (another write's answer came first),
        or the stored reply cannot be read (then memory keeps what it had, as a re-read)."""
        change = final_is_final(m.state, change)
        columns = dict(change)
        if columns.get("reply") is not None:
            columns["reply"] = _dumps(columns["reply"])
        if "interrupt" in columns:
            columns["interrupt"] = int(columns["interrupt"])
        returned = (await self.batcher.write([self._change_op(m.id, columns), *self._notice("m", m.id)]))[0]
        self._changed_here(f"m:{m.id}")
        if not returned:
            self._drop_measurement(m.id)  # deleted meanwhile (expired at another daemon)
            return
        state, reply, interrupt, updated, version = returned[0]
        if int(version) < m.version:
            return
        if reply is None:
            stored = None
        elif reply == columns.get("reply"):
            stored = change["reply"]  # ours, as written: no need to decode it again
        else:
            try:
                stored = _loads(reply)
            except Exception as exc:
                log.error("mPlane measurement {key}: its stored reply cannot be read, memory keeps the "
                          "measurement as it was: {error}", key=m.id, error=repr(exc)[:200])
                return
        m.state, m.reply, m.interrupt, m.updated, m.version = state, stored, bool(interrupt), float(updated), \
            int(version)

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
            c = self.capabilities.get(cap_key)  # (submit() read it from the store if it is new)
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
        if cap_key is not None and cap_key not in self.capabilities and self.shared:
            # Registered at another daemon a moment ago: its notification may be on its way.
            rows = await self.store.run("SELECT component FROM mplane_capability WHERE cap_key = ?", (cap_key,))
            await self.refresh(components=[row[0] for row in rows])
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
        self._changed_here(f"m:{mid}")
        self._add_measurement(m)
        self._by_client[(peer.identity, token)] = mid
        self.counters["specifications"] += 1
        self._count("specifications", chosen.label)
        self._wake(chosen.component)
        return m.receipt()

    async def _own(self, peer: Peer, token_or_label: str | None) -> Measurement | None:
        """The peer's measurement by its token (else its newest by label; admins: any by
        id). With other daemons on the store, what is not finished here is read again:
        the result may have been posted at another daemon a moment ago."""
        if token_or_label is None:
            return None
        m = self._own_cached(peer, token_or_label)
        if self.shared and (m is None or m.state not in FINAL):
            admin = self.policy.is_admin(peer.roles)
            rows = await self.store.run(
                "SELECT id FROM mplane_measurement WHERE (client = ? AND (client_token = ? OR client_label = ?))"
                + (" OR id = ?" if admin else ""),
                (peer.identity, token_or_label, token_or_label) + ((token_or_label,) if admin else ()))
            await self.refresh(measurements=[row[0] for row in rows])
            m = self._own_cached(peer, token_or_label)
        return m

    def _own_cached(self, peer: Peer, token_or_label: str) -> Measurement | None:
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

    async def redeem(self, peer: Peer, msg: Statement | str) -> Message:
        """The result if ready, the exception if failed, else the receipt again."""
        key = msg if isinstance(msg, str) else (msg.token or msg.label)
        m = await self._own(peer, key)
        if m is None:
            return ExceptionMessage(key, f"no measurement {key} for {peer.identity}")
        if m.reply is not None:
            return m.to_client(m.reply, self.registries)
        return m.receipt()

    async def interrupt(self, peer: Peer, msg: Statement) -> Message:
        m = await self._own(peer, msg.token or msg.label)
        if m is None:
            return ExceptionMessage(msg.token, f"no measurement {msg.token or msg.label} for {peer.identity}")
        change: dict[str, Any] = {"updated": self.store_now()}  # (restarts a redelivery wait)
        if m.state == QUEUED:
            # Never reached the component: drop it here, unless another daemon hands it
            # over this very moment (then it is interrupted at the component).
            dropped = ExceptionMessage(m.id, "Interrupted before it started")
            if await self._drop_queued(m, dropped, change["updated"]):
                return m.to_client(dropped, self.registries)
        if m.state not in FINAL:
            change["interrupt"] = True
        await self._update(m, **change)
        if change.get("interrupt"):
            self._wake(m.component)
        return m.to_client(m.reply, self.registries) if m.reply is not None else m.receipt()

    async def _drop_queued(self, m: Measurement, reply: ExceptionMessage, now: float) -> bool:
        """Fail ``m`` with ``reply`` if it is still queued in the store (a conditional
        UPDATE, as the claim: one of the two wins); else re-read it. True if dropped."""
        sql, notice = self.store.sql, self._notice("m", m.id)

        def drop(cursor: Any) -> int | None:
            cursor.execute(sql(f"UPDATE mplane_measurement SET state = '{FAILED}', reply = ?, updated = ?, "
                               f"{NEXT_VERSION} WHERE id = ? AND state = '{QUEUED}' RETURNING version"),
                           (_dumps(reply), now, m.id))
            rows = cursor.fetchall()
            if not rows:
                return None
            for statement, params in notice:
                cursor.execute(sql(statement), params)
            return int(rows[0][0])

        version = await self.store.run_interaction(drop)
        if version is not None:
            self._changed_here(f"m:{m.id}")
            if version >= m.version:
                m.state, m.reply, m.updated, m.version = FAILED, reply, now, version
            return True
        await self.refresh(measurements=[m.id])
        return False

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
        # In id order: every daemon expires the same rows, and deletes taking their row
        # locks in different orders would deadlock each other (and the writes batched along).
        old = sorted((m for m in self.measurements.values() if m.state in FINAL and m.updated < cutoff),
                     key=lambda m: m.id)
        if old:
            await self.batcher.write([op for m in old for op in
                                      [("DELETE FROM mplane_measurement WHERE id = ?", (m.id,)),
                                       *self._notice("m", m.id)]])
        for m in old:
            self._changed_here(f"m:{m.id}")
            self._drop_measurement(m.id)
        return len(old)

    def status(self, peer: Peer, recent: int = 50) -> dict[str, Any]:
        """What the operator view shows, limited to what ``peer`` may see."""
        admin = self.policy.is_admin(peer.roles)
        caps = self.visible(peer)
        comps = sorted({c.component for c in caps} | (set(self.components) if admin else set()))
        ms = sorted((m for m in self.measurements.values()
                     if admin or m.client == peer.identity), key=lambda m: m.created)
        per_component = Counter(c.component for c in caps)  # (not a scan of caps per component)

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "identity": peer.identity,
            "roles": sorted(peer.roles),
            "node": self.node,
            "polls_held": self.polls_held(),  # at this daemon, now
            "components": [
                {"identity": c, "capabilities": per_component[c],
                 "last_seen": iso(self.components[c].last_seen) if c in self.components else None,
                 "callback": self.components[c].callback if c in self.components else False,
                 # which daemon its poll came to last (several daemons on one store)
                 "holder": self.components[c].holder if c in self.components else None,
                 "held_since": (iso(held) if c in self.components and (held := self.components[c].held_since)
                                is not None else None)}
                for c in comps],
            "schedule": schedule(ms, self.clock(), recent),
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


#: The phases of a measurement in the operator view's schedule.
PHASES = ("future", "running", "past")


def run_phase(m: Measurement, now: float) -> tuple[str, datetime | None, datetime | None]:
    """``(phase, start, end)`` of ``m`` at ``now``: ``past`` once finished (result or
    exception), ``future`` while it waits for the component's poll or its scope starts
    later, else ``running``; start and end resolved from its temporal scope (None:
    unbounded, or beyond datetime's range)."""
    try:
        start, end = m.spec.when.datetimes(datetime.fromtimestamp(m.created, UTC))
    except (ValueError, OverflowError):
        start = end = None
    if m.state in FINAL:
        return "past", start, end
    if m.state == QUEUED or (start is not None and start.timestamp() > now):
        return "future", start, end
    return "running", start, end


def schedule(measurements: Iterable[Measurement], now: float, recent: int = 50) -> dict[str, dict[str, list[Any]]]:
    """Per component, its runs by :func:`run_phase` (``past`` keeps the ``recent`` newest),
    each ``{token, label, client, state, start, end}`` with times as ISO text (None:
    unbounded). Pure: ``now`` is given."""
    out: dict[str, dict[str, list[Any]]] = {}

    def iso(t: datetime | None) -> str | None:
        return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if t is not None else None

    for m in sorted(measurements, key=lambda m: m.created):
        phase, start, end = run_phase(m, now)
        entry = {"token": m.client_token, "label": m.client_label, "client": m.client, "state": m.state,
                 "start": iso(start), "end": iso(end)}
        out.setdefault(m.component, {p: [] for p in PHASES})[phase].append(entry)
    for runs in out.values():
        runs["past"] = runs["past"][-recent:]
    return out


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    """``items`` in slices short enough for one ``IN (...)`` list."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def callback_spec(when: str = "now + 0s") -> Statement:
    """The ``callback`` specification: an SDK component sleeps ``when``'s end before its next poll."""
    return Statement("specification", label=CALLBACK_LABEL, when=When.parse(when))
