"""Mutual TLS for every ccnet listener and HTTPS client, in one place.

Servers: pyOpenSSL contexts with TLS >= 1.2, a client certificate required by default and
verified against the CA bundle (and CRL when configured), clientAuth EKU enforced.
The context is swapped in place on reload, so listeners keep running (SIGHUP).
Clients: :meth:`TLSMaterial.client_options` (Twisted's ``optionsForClientTLS`` with our
certificate chain, TLS >= 1.2; server host names and IP addresses are checked by
service-identity), used through the one HTTPS policy in :mod:`ccnet.edge.client`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from ccnet.config import TLSConfig
from ccnet.identity import Identity

__all__ = [
    "ServerTLS",
    "TLSMaterial",
    "check_tls_files",
    "peer_chain",
    "peer_identity",
    "verify_error_reason",
]

log = Logger()

# X509 verification error numbers (OpenSSL x509_vfy.h) worth naming in a log line.
_VERIFY_REASONS = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    12: "CRL has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    26: "certificate lacks the clientAuth extended key usage",
    40: "proxy certificates not allowed",
}


def verify_error_reason(errno: int) -> str:
    return _VERIFY_REASONS.get(errno, f"verify error {errno}")


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def check_tls_files(cfg: TLSConfig) -> None:
    """Raise ValueError((key, what was expected)) for unusable TLS files."""
    try:
        certs = x509.load_pem_x509_certificates(_read(cfg.cert))
    except ValueError:
        raise ValueError("cert", f"a PEM certificate in {cfg.cert}") from None
    try:
        x509.load_pem_x509_certificates(_read(cfg.ca))
    except ValueError:
        raise ValueError("ca", f"PEM CA certificates in {cfg.ca}") from None
    try:
        key = serialization.load_pem_private_key(_read(cfg.key), password=None)
    except (ValueError, TypeError):
        raise ValueError("key", f"an unencrypted PEM private key in {cfg.key}") from None
    ours = certs[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise ValueError("key", f"the private key matching the certificate {cfg.cert}")
    if cfg.crl is not None:
        try:
            _load_crls(cfg.crl)
        except ValueError:
            raise ValueError("crl", f"PEM or DER CRLs in {cfg.crl}") from None


def _load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL in the file: one DER CRL, or PEM blocks (the root's and intermediates')."""
    data = _read(path)
    if b"-----BEGIN" not in data:
        return [x509.load_der_x509_crl(data)]
    marker = b"-----BEGIN X509 CRL-----"
    blocks = [marker + part for part in data.split(marker)[1:]]
    if not blocks:
        raise ValueError("no CRL in the file")
    return [x509.load_pem_x509_crl(block) for block in blocks]


@dataclass
class _Loaded:
    cert_chain: list[x509.Certificate]
    key_pem: bytes
    ca_certs: list[x509.Certificate]
    crls: list[x509.CertificateRevocationList]


class TLSMaterial:
    """CA bundle, certificate, key and CRL from ``[tls]``; builds every TLS context."""

    def __init__(self, cfg: TLSConfig) -> None:
        self.cfg = cfg
        self._servers: weakref.WeakSet[ServerTLS] = weakref.WeakSet()
        self._loaded = self._load()

    def _load(self) -> _Loaded:
        check_tls_files(self.cfg)
        return _Loaded(
            cert_chain=x509.load_pem_x509_certificates(_read(self.cfg.cert)),
            key_pem=_read(self.cfg.key),
            ca_certs=x509.load_pem_x509_certificates(_read(self.cfg.ca)),
            crls=_load_crls(self.cfg.crl) if self.cfg.crl else [],
        )

    @property
    def certificate(self) -> x509.Certificate:
        return self._loaded.cert_chain[0]

    @property
    def ca_certificates(self) -> list[x509.Certificate]:
        return list(self._loaded.ca_certs)

    @property
    def crls(self) -> list[x509.CertificateRevocationList]:
        """The CRLs loaded from ``[tls] crl`` (empty without one)."""
        return list(self._loaded.crls)

    def reload(self) -> None:
        """Re-read the files; new connections use them, open ones keep theirs."""
        loaded = self._load()
        self._loaded = loaded
        for server in list(self._servers):
            server.rebuild()
        log.info("TLS material reloaded from {cert}", cert=str(self.cfg.cert))

    # -- servers -------------------------------------------------------------
    def server(
        self, allow_anonymous: bool = False, name: str = "tls", allow_proxies: bool | None = None
    ) -> ServerTLS:
        """A listener's connection creator; ``allow_proxies`` None follows ``[tls] allow-proxies``."""
        if allow_proxies is None:
            allow_proxies = self.cfg.allow_proxies
        creator = ServerTLS(self, allow_anonymous, name, allow_proxies)
        self._servers.add(creator)
        return creator

    def build_server_context(
        self, allow_anonymous: bool, on_reject: Callable[[str, str], None], allow_proxies: bool | None = None
    ) -> SSL.Context:
        loaded = self._loaded
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(
            SSL.TLS1_3_VERSION if self.cfg.min_version == "1.3" else SSL.TLS1_2_VERSION
        )
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        # Idle connections (long-polls, keep-alive) then hold no OpenSSL buffers.
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        # A resumed session has no verified chain to read the identity (and proxy
        # chain) from, so every connection does a full handshake.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.use_certificate(loaded.cert_chain[0])
        for extra in loaded.cert_chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(serialization.load_pem_private_key(loaded.key_pem, password=None))  # type: ignore[arg-type]
        ctx.check_privatekey()
        store = ctx.get_cert_store()
        assert store is not None
        for ca in loaded.ca_certs:
            store.add_cert(crypto.X509.from_cryptography(ca))
        flags = 0
        for crl in loaded.crls:
            store.add_crl(crl)
        if loaded.crls:
            flags |= crypto.X509StoreFlags.CRL_CHECK
        if self.cfg.allow_proxies if allow_proxies is None else allow_proxies:
            flags |= crypto.X509StoreFlags.ALLOW_PROXY_CERTS
        if flags:
            store.set_flags(flags)
        ctx.load_client_ca(str(self.cfg.ca).encode())
        ctx.set_session_id(b"ccnet")

        # OpenSSL verifies a server's peers for the "ssl_client" purpose: a certificate
        # whose extended key usage lacks clientAuth fails with errno 26, named below. So
        # the callback has nothing to add to a chain OpenSSL accepted (it runs for every
        # certificate of every handshake: keep that path free).
        def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
            if ok:
                return True
            on_reject(_cn(cert), verify_error_reason(errno))
            return False

        mode = SSL.VERIFY_PEER
        if not allow_anonymous:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, verify)
        return ctx

    # -- clients -------------------------------------------------------------
    def client_certificate(self) -> ssl.PrivateCertificate:
        leaf = self._loaded.cert_chain[0].public_bytes(serialization.Encoding.PEM)
        return ssl.PrivateCertificate.loadPEM(leaf + self._loaded.key_pem)

    def trust_root(self) -> Any:
        return ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in self._loaded.ca_certs]
        )

    def client_options(self, hostname: str) -> Any:
        # Intermediates go along, so peers that trust only the root can build the chain.
        extra = {"extraCertChain": [crypto.X509.from_cryptography(c) for c in self._loaded.cert_chain[1:]],
                 "raiseMinimumTo": ssl.TLSVersion.TLSv1_3 if self.cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2}
        return ssl.optionsForClientTLS(
            hostname, trustRoot=self.trust_root(), clientCertificate=self.client_certificate(),
            extraCertificateOptions=extra,
        )


def _cn(cert: crypto.X509) -> str:
    names = cert.to_cryptography().subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[-1].value) if names else "?"


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server-side TLS connections from a context that reload swaps."""

    def __init__(self, material: TLSMaterial, allow_anonymous: bool, name: str, allow_proxies: bool = False) -> None:
        self.material = material
        self.allow_anonymous = allow_anonymous
        self.allow_proxies = allow_proxies
        self.name = name
        self.rejections: dict[str, int] = {}
        self._context = material.build_server_context(allow_anonymous, self._rejected, allow_proxies)

    def _rejected(self, subject: str, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.warn(
            "TLS client certificate rejected on {listener}: {reason} (subject CN={subject})",
            listener=self.name,
            reason=reason,
            subject=subject,
        )

    def rebuild(self) -> None:
        self._context = self.material.build_server_context(self.allow_anonymous, self._rejected, self.allow_proxies)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802 (Twisted API)
        return SSL.Connection(self._context, None)

    def wrap(self, factory: Any) -> TLSMemoryBIOFactory:
        return TLSMemoryBIOFactory(self, False, factory)  # type: ignore[arg-type]


_identity_cache: weakref.WeakKeyDictionary[Any, Identity | None] = weakref.WeakKeyDictionary()


def peer_identity(transport: Any) -> Identity | None:
    """The verified peer identity of a TLS transport, or None (no TLS, no certificate)."""
    conn = _ssl_connection(transport)
    if conn is None:
        return None
    if conn in _identity_cache:
        return _identity_cache[conn]
    identity: Identity | None = None
    chain = conn.get_verified_chain(as_cryptography=True) if _verified(conn) else None
    if chain:
        identity = Identity.from_chain(list(chain))
    _identity_cache[conn] = identity
    return identity


def peer_chain(transport: Any) -> list[x509.Certificate]:
    """The peer's verified chain (leaf first) on a TLS transport; empty without one."""
    conn = _ssl_connection(transport)
    if conn is None or not _verified(conn):
        return []
    return list(conn.get_verified_chain(as_cryptography=True) or [])


def _verified(conn: SSL.Connection) -> bool:
    return conn.get_peer_certificate() is not None


def _ssl_connection(transport: Any) -> SSL.Connection | None:
    seen = 0
    while transport is not None and seen < 4:
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            obj = handle()
            if isinstance(obj, SSL.Connection):
                return obj
        transport = getattr(transport, "transport", None)
        seen += 1
    return None
