"""The one HTTPS client policy: every outgoing HTTPS connection ccnet makes.

The mPlane component's link to its supervisor, a supervisor calling listening components,
the mPlane client, the RPC clients and the tstat exporters all connect through
:class:`ClientPolicy`: our certificate (with its chain, so peers that trust only the root
can build it), our CA as the only trust root, TLS 1.2 or newer, and the server's name
checked with service-identity (Twisted's ``optionsForClientTLS``). What differs between
callers is only where the credentials come from — the daemon's ``[tls]`` material or the
files a command-line client was given — so that is the one thing passed in.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IAgent, IPolicyForHTTPS
from zope.interface import implementer

from ccnet.reactors import IReactor

__all__ = ["ClientCredentials", "ClientPolicy", "https_agent"]


class ClientCredentials(Protocol):
    """Where a client's TLS settings come from (``ccnet.tls.TLSMaterial``, ``ccnet.rpc.client``)."""

    def client_options(self, hostname: str) -> Any: ...


@implementer(IPolicyForHTTPS)
class ClientPolicy:
    """ccnet's HTTPS client TLS; remembers the last connection it made, so a caller can
    read the verified server certificate (the component learns its supervisor's identity)."""

    def __init__(self, credentials: ClientCredentials) -> None:
        self.credentials = credentials
        self.last: Any = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802 (Twisted API)
        return _Recording(self, self.credentials.client_options(hostname.decode("ascii")))


@implementer(IOpenSSLClientConnectionCreator)
class _Recording:
    def __init__(self, policy: ClientPolicy, inner: Any) -> None:
        self.policy = policy
        self.inner = inner

    def clientConnectionForTLS(self, tls_protocol: Any) -> Any:  # noqa: N802 (Twisted API)
        self.policy.last = tls_protocol
        return self.inner.clientConnectionForTLS(tls_protocol)


def https_agent(reactor: IReactor, credentials: ClientCredentials, pool: Any = None) -> IAgent:
    """A twisted.web ``Agent`` speaking HTTPS through :class:`ClientPolicy`."""
    from twisted.web.client import Agent, HTTPConnectionPool

    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
    return Agent(reactor, contextFactory=ClientPolicy(credentials), pool=pool)  # type: ignore[return-value]
