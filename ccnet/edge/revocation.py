"""A CRL reaches open connections: after a reload, peers it revokes are disconnected.

OpenSSL checks the CRL only during a handshake, so a keep-alive connection opened before
``ccnet-pki revoke`` + SIGHUP would keep working. :func:`close_revoked` looks at the
verified chain of every open TLS connection and cuts those with any revoked certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from ccnet.tls import TLSMaterial, peer_chain

__all__ = ["close_revoked", "revocation_hook", "revoked_certificate"]

log = Logger()


def revoked_certificate(chain: Sequence[x509.Certificate],
                        crls: Iterable[x509.CertificateRevocationList]) -> x509.Certificate | None:
    """The first certificate of ``chain`` that one of ``crls`` (by its issuer) revokes."""
    by_issuer: dict[bytes, list[x509.CertificateRevocationList]] = {}
    for crl in crls:
        by_issuer.setdefault(crl.issuer.public_bytes(), []).append(crl)
    for cert in chain:
        for crl in by_issuer.get(cert.issuer.public_bytes(), []):
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return cert
    return None


def close_revoked(factories: Iterable[Any], crls: Sequence[x509.CertificateRevocationList]) -> int:
    """Cut every connection of ``factories`` (:class:`~ccnet.edge.connections.EdgeFactory`)
    whose peer chain holds a certificate ``crls`` revoke; how many were cut."""
    if not crls:
        return 0
    cut = 0
    for factory in factories:
        for protocol in list(factory.protocols):
            chain = peer_chain(protocol.transport)
            if not chain:
                continue
            cert = revoked_certificate(chain, crls)
            if cert is not None:
                subject = cert.subject.rfc4514_string()
                factory.cut(protocol, "revoked", f"certificate {subject} serial {cert.serial_number:x} revoked")
                cut += 1
    return cut


def revocation_hook(factories: Callable[[], Iterable[Any]], material: TLSMaterial) -> Callable[[], None]:
    """A reload hook: after ``material`` re-read its CRLs, cut the revoked peers' connections."""

    def close_revoked_peers() -> None:
        n = close_revoked(factories(), material.crls)
        if n:
            log.info("reload: closed {n} open connections of revoked peers", n=n)

    return close_revoked_peers
