"""An mPlane client over ccnet's mutual TLS: a small Deferred API.

    client = MPlaneClient(reactor, "https://sup.example.org:8888", material)
    caps = await client.capabilities()
    receipt = await client.submit(client.specification(caps[0], "now + 5s / 1s",
                                                       {"destination.ip4": "192.0.2.1"}))
    result = await client.watch(receipt)          # polls redemptions until the result is in

Works against the ccnet supervisor (``SUPERVISOR_PATHS``: every capability from
``capability?view=all``, the RI fork's ``register/specification`` and ``show/result``),
with ``paths=RI_PATHS`` against the RI fork's own supervisor (its listing is
``{"<component>": [capabilities]}``), and with ``paths=SDK_PATHS`` against an SDK-style
listener (``capability`` and ``/``). Exceptions from the other side raise
:class:`MPlaneError` carrying the mPlane exception message.

``url`` may name several daemons of one active/active supervisor (space or comma
separated): a request whose connection cannot be made goes to the next one, as does a
read (capabilities, redemptions, results, status) whose answer never came. A submission
whose answer never came is not sent again (it may have been accepted): the caller sees
the error and can redeem or submit again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet import defer, error, task
from twisted.web.client import HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from ccnet.edge.client import https_agent
from ccnet.mplane.model import (
    CONTENT_TYPE,
    KINDS,
    Envelope,
    ExceptionMessage,
    Message,
    ModelError,
    RegistryStore,
    Statement,
    When,
    from_dict,
    load_json,
    match_specification,
    parse_json,
    to_json,
)
from ccnet.reactors import IReactor
from ccnet.tls import TLSMaterial

__all__ = ["MPlaneClient", "MPlaneError", "RI_PATHS", "SDK_PATHS", "SUPERVISOR_PATHS", "specification_of"]

RI_PATHS = {"capability": "show/capability", "specification": "register/specification", "result": "show/result",
            "status": "api/status"}
SUPERVISOR_PATHS = {**RI_PATHS, "capability": "capability?view=all"}
SDK_PATHS = {"capability": "capability", "specification": "", "result": "", "status": "api/status"}


class MPlaneError(Exception):
    """The other side answered with an mPlane exception, or not with mPlane at all."""

    def __init__(self, message: str, token: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.token = token
        self.code = code


def specification_of(cap: Statement, when: str, params: Mapping[str, str] | None, registries: RegistryStore,
                     label: str | None = None) -> Statement:
    """A specification of ``cap`` for ``when`` with ``params``: single-valued constraints
    filled in, every value checked against ``cap`` (:class:`MPlaneError` saying what is
    wrong). The one check of the shell's ``runcap`` and the web console's run form."""
    values: dict[str, str] = {}
    reg = registries.get(cap.registry) if registries.known(cap.registry) else None
    for name, constraint in cap.parameters.items():
        if params and name in params:
            values[name] = str(params[name])
        elif constraint != "*" and "," not in constraint and " ... " not in constraint:
            values[name] = constraint
        else:
            raise MPlaneError(f"parameter {name} needs a value (constraint: {constraint})")
    extra = [k for k in (params or {}) if k not in cap.parameters]
    if extra:
        raise MPlaneError(f"{cap.label} has no parameter {extra[0]} (it takes: "
                          f"{', '.join(sorted(cap.parameters)) or 'none'})")
    try:
        spec = cap.derive("specification", when=When.parse(when), parameters=values, token=None,
                          label=label or cap.label, link=None)
        if reg is not None:
            match_specification(spec, cap, registries)
    except ModelError as exc:
        raise MPlaneError(str(exc)) from None
    return spec.with_token(registries)


def _final(msg: Message) -> bool:
    """A result, an exception, or a repeated measurement's envelope whose scope is over."""
    if isinstance(msg, ExceptionMessage):
        return True
    if isinstance(msg, Statement):
        return msg.kind == "result"
    if isinstance(msg, Envelope):
        return msg.when is None or msg.when.is_definite()
    return False


class MPlaneClient:
    """Capabilities, specifications, receipts and results of one supervisor (or listener)."""

    def __init__(self, reactor: IReactor, url: str, material: TLSMaterial, paths: Mapping[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        self.reactor = reactor
        self.urls = [u.rstrip("/") for u in url.replace(",", " ").split()] or [url.rstrip("/")]
        self._current = 0
        self.paths = dict(paths or SUPERVISOR_PATHS)
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = https_agent(reactor, material, self.pool)
        self.registries = RegistryStore()
        self._caps: dict[str, Statement] = {}

    @property
    def url(self) -> str:
        """The supervisor URL in use (the next one after a connection failure)."""
        return self.urls[self._current]

    def close(self) -> defer.Deferred[Any]:
        return self.pool.closeCachedConnections()

    # -- HTTP ----------------------------------------------------------------

    def _url(self, key_or_path: str) -> str:
        path = self.paths.get(key_or_path, key_or_path)
        return f"{self.url}/{path}" if path else f"{self.url}/"

    async def _call(self, method: str, url: str, msg: Message | None = None) -> Message:
        data = to_json(msg).encode() if msg is not None else None
        return self._decode(url, *(await self._http(method, url, data)))

    async def _request(self, method: str, url: str, data: bytes | None,
                       idempotent: bool = True) -> tuple[Any, bytes]:
        """The response and body from the first daemon that answers (see the module doc)."""
        headers = Headers({b"Content-Type": [CONTENT_TYPE.encode()]}) if data is not None else None
        for attempt in range(len(self.urls)):
            base = self.url
            try:
                resp = await treq.request(method, url, data=data, headers=headers, agent=self.agent,
                                          timeout=self.timeout)
                return resp, await resp.content()
            except (error.ConnectError, error.DNSLookupError, ResponseNeverReceived, ResponseFailed) as exc:
                unsent = isinstance(exc, error.ConnectError | error.DNSLookupError)
                if attempt + 1 == len(self.urls) or not (unsent or idempotent) or not url.startswith(base):
                    raise
                self._current = (self._current + 1) % len(self.urls)
                url = self.url + url[len(base):]
        raise AssertionError("unreachable")

    async def _http(self, method: str, url: str, data: bytes | None) -> tuple[int, str, bytes]:
        # Only a submission is not idempotent: redemptions and interrupts may be repeated.
        resp, body = await self._request(method, url, data, idempotent=b'"specification"' not in (data or b""))
        ctype = resp.headers.getRawHeaders("content-type", [""])[0]
        if not ctype.startswith(CONTENT_TYPE):
            raise MPlaneError(f"{url}: HTTP {resp.code}: {body[:200].decode('utf-8', 'replace').strip()}",
                              code=resp.code)
        return resp.code, ctype, body

    @staticmethod
    def _decode(url: str, code: int, ctype: str, body: bytes) -> Message:
        try:
            reply = parse_json(body)
        except ModelError as exc:
            raise MPlaneError(f"{url}: unreadable reply: {exc}", code=code) from None
        if isinstance(reply, ExceptionMessage):
            raise MPlaneError(reply.message, reply.token, code)
        if code != 200:
            raise MPlaneError(f"{url}: HTTP {code}", code=code)
        return reply

    # -- API -----------------------------------------------------------------

    async def capabilities(self) -> list[Statement]:
        """The capabilities this identity may use (remembered for :meth:`capability`)."""
        url = self._url("capability")
        code, ctype, body = await self._http("GET", url, None)
        try:
            doc = load_json(body)
        except ModelError as exc:
            raise MPlaneError(f"{url}: unreadable reply: {exc}", code=code) from None
        if isinstance(doc, dict) and code == 200 and not any(k in doc for k in KINDS):
            # The RI supervisor's listing: {"<component id>": [capabilities]}.
            try:
                items: list[Message] = [from_dict(c) for caps_of in doc.values() for c in caps_of]
            except (ModelError, TypeError) as exc:
                raise MPlaneError(f"{url}: unreadable capability listing: {exc}", code=code) from None
        else:
            reply = self._decode(url, code, ctype, body)
            items = reply.contents if isinstance(reply, Envelope) else [reply]
        caps = [m for m in items if isinstance(m, Statement) and m.kind == "capability"]
        self._caps = {str(c.label): c for c in caps if c.label}
        return caps

    async def capability(self, label: str) -> Statement:
        if label not in self._caps:
            await self.capabilities()
        try:
            return self._caps[label]
        except KeyError:
            raise MPlaneError(f"no capability {label!r} (known: {', '.join(sorted(self._caps)) or 'none'})") from None

    def specification(self, cap: Statement, when: str, params: Mapping[str, str] | None = None,
                      label: str | None = None) -> Statement:
        """A specification of ``cap``: single-valued constraints filled in, checked locally
        (so a wrong value is reported before anything is sent)."""
        return specification_of(cap, when, params, self.registries, label)

    async def submit(self, spec: Statement, cap: Statement | None = None) -> Statement:
        """Send ``spec``; the receipt (or, if it finished at once, the result)."""
        url = cap.link if cap is not None and cap.link else self._url("specification")
        for base in self.urls:
            if url.startswith(base + "/"):
                url = self.url + url[len(base):]  # a link given by another daemon of the same supervisor
                break
        reply = await self._call("POST", url, spec)
        if not isinstance(reply, Statement) or reply.kind not in ("receipt", "result"):
            raise MPlaneError(f"expected a receipt, got a {reply.kind}")
        return reply

    async def run(self, label: str, when: str, params: Mapping[str, str] | None = None) -> Statement:
        cap = await self.capability(label)
        return await self.submit(self.specification(cap, when, params), cap)

    async def result(self, receipt: Statement | str) -> Message:
        """The result if it is ready, else the receipt again."""
        msg = receipt if isinstance(receipt, Statement) else Statement("redemption", token=receipt)
        redemption = msg.derive("redemption", token=msg.token, label=msg.label, link=None)
        if self.paths["result"] == RI_PATHS["result"]:
            return await self._call("POST", self._url("result"), redemption)
        return await self._call("POST", self._url("specification"), redemption)

    async def interrupt(self, receipt: Statement | str) -> Message:
        msg = receipt if isinstance(receipt, Statement) else Statement("interrupt", token=receipt)
        return await self._call("POST", self._url("specification"),
                                msg.derive("interrupt", token=msg.token, label=msg.label, link=None))

    async def watch(self, receipt: Statement, interval: float = 0.2, timeout: float | None = None,
                    on_update: Callable[[Message], None] | None = None) -> Message:
        """Redeem until the measurement is over; ``on_update`` sees partial envelopes."""
        if receipt.kind == "result":
            return receipt
        deadline = None if timeout is None else self.reactor.seconds() + timeout
        last: Message | None = None
        while True:
            try:
                reply = await self.result(receipt)
            except MPlaneError as exc:
                if exc.token is None and exc.code is not None:
                    raise
                return ExceptionMessage(exc.token, str(exc))
            if isinstance(reply, Envelope) and on_update is not None and reply != last:
                on_update(reply)
            last = reply
            if _final(reply):
                return reply
            if deadline is not None and self.reactor.seconds() > deadline:
                raise MPlaneError(f"no result for {receipt.label or receipt.token} within {timeout:g}s")
            await task.deferLater(self.reactor, interval, lambda: None)

    async def results(self) -> list[Message]:
        """Every finished measurement of this identity (admins: of everyone)."""
        reply = await self._call("GET", self._url("result"))
        return list(reply.contents) if isinstance(reply, Envelope) else [reply]

    async def redeem(self, token_or_label: str) -> Message:
        return await self._call("GET", f"{self._url('result')}?token={quote(token_or_label)}")

    async def status(self) -> dict[str, Any]:
        """The supervisor's operator view (components, capabilities, measurements, who submitted)."""
        resp, body = await self._request("GET", self._url("status"), None)
        if resp.code != 200:
            raise MPlaneError(f"status: HTTP {resp.code}: {body[:200].decode('utf-8', 'replace')}", code=resp.code)
        return json.loads(body)  # type: ignore[no-any-return]
