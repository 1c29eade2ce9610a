"""``RPCClient``: call DIRAC-style HTTPS services from Twisted code (treq underneath).

::

    client = RPCClient(["https://a:8443/Framework/Notebook", "https://b:8443/Framework/Notebook"],
                       cert="client.crt", key="client.key", ca="ca.crt")
    result = await client.executeRPC("get", "key")      # {"OK": True, "Value": ...}
    result = await client.whoami()                      # attribute calls, as in DIRAC
    result = await client.receiveFile(open("out", "wb"), "big.dat")   # streamed to the file

Every call fires with an S_OK/S_ERROR dict; network trouble is an S_ERROR too.  URLs are
tried in order; one that cannot be reached is banned and the next is tried, and only
failures proving the call never reached a server move on (see :mod:`.clientcore`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import defer, error, ssl
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived

from ccnet.edge.client import ClientCredentials as TLSCredentials
from ccnet.edge.client import ClientPolicy
from ccnet.reactors import IReactor, default_reactor
from ccnet.rpc.clientcore import (
    DEFAULT_TIMEOUT,
    RETRY_STATUSES,
    RPCClientBase,
    decode_reply,
)
from ccnet.rpc.codec import JCodec
from ccnet.rpc.result import S_ERROR, S_OK

__all__ = ["ClientCredentials", "RPCClient"]

log = Logger(namespace="ccnet.rpc.client")

# Connection-level failures: the request never reached a server, so another URL may try.
_UNREACHED = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectingCancelledError,
    error.TimeoutError,
    error.NoRouteError,
)


def _load_ca(ca: str | Path) -> list[x509.Certificate]:
    """CA certificates from a bundle file or a folder of PEM files (grid-security style)."""
    path = Path(ca)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    certs: list[x509.Certificate] = []
    for item in files:
        try:
            certs.extend(x509.load_pem_x509_certificates(item.read_bytes()))
        except ValueError:
            if not path.is_dir():
                raise
    if not certs:
        raise ValueError(f"no CA certificates in {ca}")
    return certs


class ClientCredentials:
    """Client certificate chain (a proxy file works: chain and key in one file), key and CAs."""

    def __init__(self, cert: str | Path | None, key: str | Path | None, ca: str | Path) -> None:
        self.ca = [crypto.X509.from_cryptography(c) for c in _load_ca(ca)]
        self.chain: list[crypto.X509] = []
        self.key: Any = None
        if cert is not None:
            data = Path(cert).read_bytes()
            self.chain = [crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(data)]
            key_data = Path(key).read_bytes() if key is not None else data
            self.key = crypto.PKey.from_cryptography_key(
                serialization.load_pem_private_key(key_data, password=None)  # type: ignore[arg-type]
            )

    def client_options(self, hostname: str) -> Any:
        extra: dict[str, Any] = {}
        client_cert = None
        if self.chain:
            client_cert = ssl.PrivateCertificate.fromCertificateAndKeyPair(
                ssl.Certificate(self.chain[0]), ssl.KeyPair(self.key)
            )
            if len(self.chain) > 1:
                # Proxy chains: the server needs every certificate up to the CA.
                extra["extraCertChain"] = self.chain[1:]
        trust = ssl.trustRootFromCertificates([ssl.Certificate(c) for c in self.ca])
        extra["raiseMinimumTo"] = ssl.TLSVersion.TLSv1_2
        return ssl.optionsForClientTLS(
            hostname, trustRoot=trust, clientCertificate=client_cert, extraCertificateOptions=extra
        )


def _cancelled(failure: Failure) -> bool:
    """True when our timeout cancelled the request after it was sent."""
    if failure.check(defer.CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return any(r.check(defer.CancelledError) for r in reasons)


def _tls_failure(failure: Failure) -> bool:
    """True when a ResponseNeverReceived came from a failed TLS handshake."""
    if not failure.check(ResponseNeverReceived):
        return False
    reasons = getattr(failure.value, "reasons", [])
    return any(r.check(SSL.Error) for r in reasons)


class RPCClient(RPCClientBase):
    """A DIRAC ``TornadoClient`` for the reactor: every call returns a Deferred of a dict."""

    def __init__(
        self,
        url_or_urls: str | Iterable[str],
        *,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        ca: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 30.0,
        clientVO: str | None = None,  # noqa: N803 (DIRAC keyword)
        extraCredentials: Any = None,  # noqa: N803 (DIRAC keyword)
        codec: JCodec | None = None,
        reactor: IReactor | None = None,
        persistent: bool = True,
        credentials: TLSCredentials | None = None,
    ) -> None:
        """``credentials`` (the daemon's own ``TLSMaterial``) replaces cert/key/ca: a part
        of the daemon calling another server with the daemon's certificate."""
        reactor = reactor if reactor is not None else default_reactor()
        super().__init__(url_or_urls, ca=ca if credentials is None else credentials, timeout=timeout, clientVO=clientVO,
                         extraCredentials=extraCredentials, codec=codec)
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._pool.maxPersistentPerHost = 16
        self._agent = Agent(
            reactor,
            contextFactory=ClientPolicy(credentials or ClientCredentials(cert, key, ca)),  # type: ignore[arg-type]  # checked by the base
            connectTimeout=connect_timeout,
            pool=self._pool,
        )

    # -- public API -------------------------------------------------------------------
    def executeRPC(self, method: str, *args: Any) -> Deferred[dict[str, Any]]:  # noqa: N802
        """Call ``method(*args)`` on the service; fires with S_OK/S_ERROR."""
        fields = self._fields(method, args, raw=False)
        return defer.ensureDeferred(self._call(method, fields, None))

    def receiveFile(self, dest: str | Path | IO[bytes], *args: Any) -> Deferred[dict[str, Any]]:  # noqa: N802
        """``streamToClient(*args)`` streamed into ``dest`` (a path or a binary file object)."""
        fields = self._fields("streamToClient", args, raw=True)
        return defer.ensureDeferred(self._call("streamToClient", fields, dest))

    def close(self) -> Deferred[None]:
        """Close kept-alive connections (call before the reactor stops, e.g. in tests)."""
        return self._pool.closeCachedConnections()

    # -- internals --------------------------------------------------------------------

    async def _call(
        self, method: str, fields: dict[str, str], dest: str | Path | IO[bytes] | None
    ) -> dict[str, Any]:
        problems: list[str] = []
        for url in self.rotation.candidates():
            try:
                response = await treq.post(
                    url, data=fields, agent=self._agent, timeout=self.timeout, unbuffered=True,  # type: ignore[arg-type]
                )
            except Exception as exc:  # noqa: BLE001 (mapped to S_ERROR below)
                failure = Failure(exc)
                if failure.check(*_UNREACHED) or _tls_failure(failure):
                    self.rotation.ban(url)
                    problems.append(f"{url}: {failure.getErrorMessage() or failure.type.__name__}")
                    log.info("RPC URL {url} unreachable, trying the next one: {why}",
                             url=url, why=problems[-1])
                    continue
                if _cancelled(failure):
                    return S_ERROR(errno.ETIMEDOUT, f"{method} on {url}: no reply in {self.timeout} s")
                return S_ERROR(errno.ECONNABORTED, f"{method} on {url}: {failure.getErrorMessage()}")
            if response.code in RETRY_STATUSES:
                await treq.content(response)
                self.rotation.ban(url)
                problems.append(f"{url}: HTTP {response.code}")
                continue
            self.rotation.succeeded(url)
            content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
            if dest is not None and response.code == 200 and not content_type.startswith(b"application/json"):
                return await self._save(response, dest, url)
            body = await treq.content(response)
            return decode_reply(response.code, body, url, method, self.codec)
        return S_ERROR(errno.ECONNREFUSED, "cannot reach any URL: " + "; ".join(problems))

    async def _save(self, response: Any, dest: str | Path | IO[bytes], url: str) -> dict[str, Any]:
        handle: IO[bytes]
        own = isinstance(dest, (str, Path))
        handle = open(dest, "wb") if own else dest  # type: ignore[arg-type,assignment]  # noqa: SIM115
        written = 0

        def write(chunk: bytes) -> None:
            nonlocal written
            handle.write(chunk)
            written += len(chunk)

        try:
            await treq.collect(response, write)
        except Exception as exc:  # noqa: BLE001
            return S_ERROR(errno.EIO, f"download from {url} interrupted after {written} bytes: {exc}")
        finally:
            if own:
                handle.close()
        return S_OK(written)
