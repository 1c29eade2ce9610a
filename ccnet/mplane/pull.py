"""The client-initiated component workflow: the supervisor as a client of components
that listen for specifications (the SDK's ``[component] workflow = client-initiated``,
``ListenerHttpComponent``).

For each configured component URL the supervisor fetches ``/capability`` (the SDK
serves an HTML page of links there, or a JSON envelope), registers what it finds
under the component's certificate identity, and from then on POSTs specifications
and interrupts to the component as soon as a client submits them, redeeming
receipts until the result arrives. Results land in the same state as pushed ones, so
clients cannot tell the two workflows apart.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin

import treq
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from ccnet.edge.client import ClientPolicy
from ccnet.mplane.dialect import registration_items
from ccnet.mplane.model import (
    CONTENT_TYPE,
    Envelope,
    Message,
    ModelError,
    Statement,
    parse_json,
    to_json,
)
from ccnet.mplane.state import Peer, SupervisorState
from ccnet.periodic import every
from ccnet.reactors import IReactor
from ccnet.tls import TLSMaterial, peer_identity

__all__ = ["ComponentPuller"]

log = Logger()

_HREF = re.compile(r"""href=['"]([^'"]+)['"]""")




class _Remote:
    def __init__(self, url: str, reactor: IReactor, material: TLSMaterial) -> None:
        self.url = url.rstrip("/") + "/"
        self.policy = ClientPolicy(material)
        from twisted.web.client import Agent

        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent: Any = Agent(reactor, contextFactory=self.policy, pool=self.pool)
        self.identity: str | None = None
        self.dn: str | None = None


class ComponentPuller(service.Service):
    """Drives components that wait for the supervisor to call them."""

    def __init__(self, state: SupervisorState, urls: list[str], reactor: IReactor, material: TLSMaterial | None,
                 refresh: float = 60.0, redeem_every: float = 1.0) -> None:
        self.setName("mplane-component-puller")
        self.state = state
        self.reactor = reactor
        self.material = material
        self.refresh = refresh
        self.redeem_every = redeem_every
        self.remotes = [_Remote(u, reactor, material) for u in urls] if material is not None else []
        self._loop: task.LoopingCall | None = None
        self._busy: set[str] = set()

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        self.state.on_work = self._on_work
        if self.remotes:
            self._loop = every(self.reactor, self.refresh, "mplane-component-discovery", self._discover_all)

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 (Twisted API)
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return defer.DeferredList([r.pool.closeCachedConnections() for r in self.remotes])

    def _discover_all(self) -> defer.Deferred[Any]:
        return defer.DeferredList([defer.ensureDeferred(self.discover(r)) for r in self.remotes])

    async def _get(self, remote: _Remote, url: str) -> tuple[str, bytes]:
        resp = await treq.get(url, agent=remote.agent, timeout=30)
        body = await resp.content()
        if resp.code != 200:
            raise ModelError(f"{url}: HTTP {resp.code}")
        ident = peer_identity(remote.policy.last) if remote.policy.last is not None else None
        if ident is not None:
            remote.identity, remote.dn = ident.dotted, ident.dn
        return (resp.headers.getRawHeaders("content-type", [""])[0], body)

    async def discover(self, remote: _Remote) -> None:
        """Fetch the component's capabilities and (re-)register them under its identity."""
        try:
            ctype, body = await self._get(remote, urljoin(remote.url, "capability"))
            caps: list[Message] = []
            if ctype.startswith(CONTENT_TYPE):
                msg = parse_json(body)
                caps = list(msg.contents) if isinstance(msg, Envelope) else [msg]
            else:
                for href in _HREF.findall(body.decode("utf-8", "replace")):
                    _, cbody = await self._get(remote, urljoin(remote.url, href))
                    caps.append(parse_json(cbody))
        except Exception as exc:  # a component that is down is retried at the next refresh
            log.warn("mPlane component {url} unreachable: {error}", url=remote.url, error=str(exc))
            return
        if remote.identity is None:
            log.warn("mPlane component {url} presented no verified certificate", url=remote.url)
            return
        peer = Peer(remote.identity, (remote.identity,), frozenset(), remote.dn)
        outcome = await self.state.register(peer, registration_items(caps))
        self.state.components[remote.identity].url = remote.url
        log.info("mPlane component {url} ({identity}): {outcome}", url=remote.url, identity=remote.identity,
                 outcome={k: v["registered"] for k, v in outcome.items()})
        await self._push(remote.identity)

    def _on_work(self, identity: str) -> None:
        comp = self.state.components.get(identity)
        if comp is not None and comp.url is not None:
            defer.ensureDeferred(self._push(identity)).addErrback(lambda f: log.failure("push failed", f))

    def _remote(self, identity: str) -> _Remote | None:
        for r in self.remotes:
            if r.identity == identity:
                return r
        return None

    async def _post(self, remote: _Remote, url: str, msg: Message) -> Message:
        resp = await treq.post(url, data=to_json(msg).encode(), headers=Headers({b"Content-Type": [CONTENT_TYPE.encode()]}),
                               agent=remote.agent, timeout=60)
        body = await resp.content()
        if resp.code != 200:
            raise ModelError(f"{url}: HTTP {resp.code}: {body[:200]!r}")
        return parse_json(body)

    async def _push(self, identity: str) -> None:
        remote = self._remote(identity)
        if remote is None or identity in self._busy:
            return
        self._busy.add(identity)
        try:
            while True:
                work = await self.state.take_work(identity, None)
                if not work:
                    return
                peer = Peer(identity, (identity,), frozenset(), remote.dn)
                for msg in work:
                    target = remote.url
                    try:
                        reply = await self._post(remote, target, msg)
                    except Exception as exc:
                        log.warn("mPlane component {url}: {error}", url=remote.url, error=str(exc))
                        continue
                    await self._handle_reply(remote, peer, msg, reply)
        finally:
            self._busy.discard(identity)

    async def _handle_reply(self, remote: _Remote, peer: Peer, sent: Message, reply: Message) -> None:
        await self.state.accept(peer, reply)
        if isinstance(reply, Statement) and reply.kind == "receipt" and isinstance(sent, Statement) \
                and sent.kind == "specification":
            defer.ensureDeferred(self._redeem(remote, peer, sent)).addErrback(
                lambda f: log.failure("redemption failed", f))

    async def _redeem(self, remote: _Remote, peer: Peer, spec: Statement) -> None:
        """Redeem the receipt until the component has the result (or gives up)."""
        redemption = spec.derive("redemption", link=None)
        while self.running:
            m = self.state.measurements.get(spec.token or "")
            if m is None or m.reply is not None:
                return
            await task.deferLater(self.reactor, self.redeem_every, lambda: None)
            try:
                reply = await self._post(remote, remote.url, redemption)
            except Exception as exc:
                log.warn("mPlane component {url}: redemption failed: {error}", url=remote.url, error=str(exc))
                continue
            if isinstance(reply, Statement) and reply.kind == "receipt":
                continue
            await self.state.accept(peer, reply)
