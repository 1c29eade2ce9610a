"""Test fixtures for the RPC suites: a real mutual-TLS RPC site on a free port, proxies.

The RPC site is built exactly as the daemon builds it (``ccnet.rpc.server.build_resource``
from a parsed ``[rpc]`` config, ccnet's TLS material around a ``Site``), but in-process
so tests can reach into service classes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.protocols.policies import WrappingFactory
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from twisted.web.server import Site

from ccnet.config import IniFile, TLSConfig
from ccnet.identity import UserMap
from ccnet.rpc import config as rpc_config
from ccnet.rpc.resource import RPCResource
from ccnet.rpc.server import build_resource
from ccnet.runtime import Runtime
from ccnet.tls import TLSMaterial
from tests.support import TestPKI, test_pki

CLIENT_DN = "/C=IT/O=ccnet/OU=Clients/CN=client"
ADMIN_DN = "/C=IT/O=ccnet/OU=Clients/CN=admin"

USERS_TEXT = f"""
[user:client]
dn = {CLIENT_DN}
group = dirac_user
properties = NormalUser

[user:admin]
dn = {ADMIN_DN}
group = dirac_admin
properties = NormalUser, CSAdministrator

[user:gateway]
dn = /C=IT/O=ccnet/OU=Servers/CN=server
group = hosts
properties = TrustedHost
"""

# RFC 3820 proxyCertInfo, policy languages.
PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for number in parts[2:]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        body.extend(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


def _der_seq(*items: bytes) -> bytes:
    body = b"".join(items)
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def make_proxy(pki: TestPKI, name: str, out: Path, limited: bool = False) -> Path:
    """An RFC 3820 proxy of certificate ``name``, written DIRAC-style (cert, key, chain)."""
    return make_proxy_of(pki.cert(name), pki.key(name), out, limited)


def make_proxy_of(cert: Path, key_file: Path, out: Path, limited: bool = False) -> Path:
    """An RFC 3820 proxy signed by the first certificate of ``cert`` (a certificate or
    itself a proxy file: proxies of proxies), written DIRAC-style: the new proxy, its key,
    then the whole issuing chain."""
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    eec = chain[0]
    eec_key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    subject = x509.Name(
        [*eec.subject.rdns, x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial % 10**10))])]
    )
    policy = LIMITED if limited else INHERIT_ALL
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(eec.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=12))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO, _der_seq(_der_seq(_der_oid(policy)))),
            critical=True,
        )
        .sign(eec_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    )
    return out


@dataclass
class RPCSite:
    """A running RPC listener; ``url(service)`` gives its https URL."""

    port: Any
    resource: RPCResource
    pool: ThreadPool
    pki: TestPKI
    runtime: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def url(self, service: str = "Test/Service", host: str = "localhost") -> str:
        return f"https://{host}:{self.port_number}/{service}"


def start_rpc_site(
    case: unittest.TestCase,
    services: str,
    *,
    rpc_options: str = "",
    allow_anonymous: bool = False,
    allow_proxies: bool = False,
    users: str = USERS_TEXT,
    store: Any = None,
    threads: int = 4,
) -> RPCSite:
    """Parse ``[rpc]`` + ``services`` sections, listen with mutual TLS on 127.0.0.1:0."""
    pki = test_pki()
    ini = IniFile.from_string(f"[rpc]\nlisten = tcp:0\nthreads = {threads}\n{rpc_options}\n{services}")
    cfg = rpc_config.parse(ini)
    assert cfg is not None
    tls_cfg = TLSConfig(
        ca=pki.ca_cert, cert=pki.cert("server"), key=pki.key("server"), crl=pki.crl,
        min_version="1.2", allow_proxies=allow_proxies,
    )
    material = TLSMaterial(tls_cfg)
    runtime = Runtime(_reactor, store, tls=material, users=UserMap.from_string(users), version="test",
                      hostname="localhost")
    pool = ThreadPool(minthreads=0, maxthreads=cfg.threads, name="rpc-test")
    pool.start()
    case.addCleanup(pool.stop)
    # [rpc] allow-proxies when the section sets it, else the [tls] setting (as the daemon).
    resource = build_resource(runtime, cfg, pool, allow_proxies=None if cfg.allow_proxies is not None else allow_proxies)
    site = Site(resource)
    site.requestFactory = resource.request_factory
    site.displayTracebacks = False
    factory = WrappingFactory(material.server(allow_anonymous, "rpc").wrap(site))
    port = _reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(_close_connections, factory)
    case.addCleanup(port.stopListening)
    return RPCSite(port, resource, pool, pki, runtime)


async def _close_connections(factory: WrappingFactory) -> None:
    """Drop server-side connections kept alive by clients, and wait until they are gone."""
    for proto in list(factory.protocols):
        proto.transport.abortConnection()
    for _ in range(500):
        if not factory.protocols:
            return
        await task.deferLater(_reactor, 0.01, lambda: None)


class FixtureTests(unittest.TestCase):
    def test_proxy_file_holds_proxy_key_and_identity_certificate(self) -> None:
        from ccnet.identity import Identity

        path = make_proxy(test_pki(), "client", Path(self.mktemp()), limited=True)
        chain = x509.load_pem_x509_certificates(path.read_bytes())
        ident = Identity.from_chain(chain)
        self.assertTrue(ident.is_proxy)
        self.assertTrue(ident.is_limited_proxy)
        self.assertEqual(ident.dn, CLIENT_DN)
