"""Mutual TLS end to end: real listeners on loopback, real clients (treq and requests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import requests
import treq
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from ccnet.config import TLSConfig, parse_listen
from ccnet.edge.client import https_agent
from ccnet.service import ListenerService
from ccnet.tls import TLSMaterial
from ccnet.web import HealthResource, access_log_line
from tests.support import TestPKI, test_pki


def material(pki: TestPKI, name: str = "server", crl: bool = True, **kw: Any) -> TLSMaterial:
    return TLSMaterial(
        TLSConfig(
            ca=pki.ca_cert, cert=pki.cert(name), key=pki.key(name),
            crl=pki.crl if crl else None, min_version=kw.get("min_version", "1.2"),
            allow_proxies=False,
        )
    )


class TLSListenerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = test_pki()

    @defer.inlineCallbacks
    def listen(self, server: TLSMaterial, anonymous: bool = False) -> Any:
        root = Resource()
        root.putChild(b"health", HealthResource("test", ["rpc"]))
        self.creator = server.server(anonymous, "test")
        site = Site(root, logFormatter=access_log_line)
        listener = ListenerService(reactor, "test", parse_listen("ssl:0:interface=127.0.0.1"), site, self.creator)
        listener.grace = 5.0
        listener.startService()
        yield listener.listening
        self.addCleanup(listener.stopService)
        return listener.address.port

    def get(self, port: int, cert: str | None, host: str = "127.0.0.1", verify: str | None = None) -> defer.Deferred[Any]:
        """requests in a thread, exactly as a script would use it."""
        kwargs: dict[str, Any] = {"verify": verify or str(self.pki.ca_cert), "timeout": 10}
        if cert is not None:
            kwargs["cert"] = self.pki.pair(cert)
        return deferToThread(requests.get, f"https://{host}:{port}/health", **kwargs)

    @defer.inlineCallbacks
    def assertRejected(self, port: int, cert: str | None, reason: str | None) -> Any:  # noqa: N802
        try:
            response = yield self.get(port, cert)
        except requests.exceptions.RequestException:
            pass
        else:
            self.fail(f"{cert} was accepted: {response.status_code}")
        if reason is not None:
            self.assertIn(reason, self.creator.rejections)

    @defer.inlineCallbacks
    def test_requests_with_client_cert_gets_health_and_identity(self) -> Any:
        port = yield self.listen(material(self.pki))
        response = yield self.get(port, "client")
        self.assertEqual(response.status_code, 200)
        body = response.json()
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["identity"], "/C=IT/O=ccnet/OU=Clients/CN=client")
        self.assertEqual(body["services"], ["rpc"])

    @defer.inlineCallbacks
    def test_access_log_line_names_the_certificate_identity(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port = yield self.listen(material(self.pki))
        response = yield self.get(port, "client")
        self.assertEqual(response.status_code, 200)
        lines = [e["log_io"] for e in events if "/health" in e.get("log_io", "")]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r'^127\.0\.0\.1 "/C=IT/O=ccnet/OU=Clients/CN=client" '
                                   r'\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /health HTTP/1\.1" 200 \d+$')

    @defer.inlineCallbacks
    def test_treq_with_ccnet_client_policy(self) -> Any:
        port = yield self.listen(material(self.pki))
        agent = https_agent(reactor, material(self.pki, "admin"))
        for host in ("127.0.0.1", "localhost"):
            response = yield treq.get(f"https://{host}:{port}/health", agent=agent)
            body = json.loads((yield response.content()))
            self.assertEqual(body["identity"], "/C=IT/O=ccnet/OU=Clients/CN=admin")
        yield agent._pool.closeCachedConnections()

    @defer.inlineCallbacks
    def test_no_client_certificate_is_rejected(self) -> Any:
        port = yield self.listen(material(self.pki))
        yield self.assertRejected(port, None, None)

    @defer.inlineCallbacks
    def test_certificate_from_another_ca_is_rejected(self) -> Any:
        port = yield self.listen(material(self.pki))
        yield self.assertRejected(port, "foreign", "unable to get local issuer certificate")

    @defer.inlineCallbacks
    def test_expired_certificate_is_rejected(self) -> Any:
        port = yield self.listen(material(self.pki))
        yield self.assertRejected(port, "expired", "certificate has expired")

    @defer.inlineCallbacks
    def test_not_yet_valid_certificate_is_rejected(self) -> Any:
        port = yield self.listen(material(self.pki))
        yield self.assertRejected(port, "notyet", "certificate is not yet valid")

    @defer.inlineCallbacks
    def test_revoked_certificate_is_rejected_by_crl(self) -> Any:
        port = yield self.listen(material(self.pki))
        yield self.assertRejected(port, "revoked", "certificate revoked")

    @defer.inlineCallbacks
    def test_revoked_certificate_passes_without_crl(self) -> Any:
        port = yield self.listen(material(self.pki, crl=False))
        response = yield self.get(port, "revoked")
        self.assertEqual(response.status_code, 200)

    @defer.inlineCallbacks
    def test_certificate_without_client_auth_eku_is_rejected(self) -> Any:
        port = yield self.listen(material(self.pki))
        yield self.assertRejected(port, "serveronly", "certificate lacks the clientAuth extended key usage")

    @defer.inlineCallbacks
    def test_anonymous_listener_serves_without_certificate(self) -> Any:
        port = yield self.listen(material(self.pki), anonymous=True)
        response = yield self.get(port, None)
        self.assertEqual(response.status_code, 200)
        self.assertIsNone(response.json()["identity"])
        # A certificate, when sent, is still verified and reported.
        response = yield self.get(port, "client")
        self.assertEqual(response.json()["identity"], "/C=IT/O=ccnet/OU=Clients/CN=client")
        yield self.assertRejected(port, "expired", "certificate has expired")

    @defer.inlineCallbacks
    def test_tls_1_3_only_listener_refuses_tls_1_2(self) -> Any:
        import ssl

        port = yield self.listen(material(self.pki, min_version="1.3"))

        def connect_12() -> None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(*self.pki.pair("client"))
            import socket

            with socket.create_connection(("127.0.0.1", port)) as sock:
                with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                    pass

        yield self.assertFailure(deferToThread(connect_12), ssl.SSLError)

    @defer.inlineCallbacks
    def test_session_reuse_still_identifies_the_client(self) -> Any:
        import socket
        import ssl

        port = yield self.listen(material(self.pki))

        def two_connections() -> list[Any]:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            ctx.load_cert_chain(*self.pki.pair("client"))
            session = None
            identities = []
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port)) as raw:
                    with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
                        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        data = b""
                        while chunk := tls.recv(65536):
                            data += chunk
                        session = tls.session
                identities.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["identity"])
            return identities

        identities = yield deferToThread(two_connections)
        self.assertEqual(identities, ["/C=IT/O=ccnet/OU=Clients/CN=client"] * 2)

    @defer.inlineCallbacks
    def test_client_rejects_server_with_wrong_host_name(self) -> Any:
        port = yield self.listen(material(self.pki, "wronghost"))
        agent = https_agent(reactor, material(self.pki, "client"))
        from twisted.web._newclient import ResponseNeverReceived

        failure = yield self.assertFailure(treq.get(f"https://127.0.0.1:{port}/health", agent=agent),
                                           ResponseNeverReceived)
        self.assertIn("VerificationError", repr(failure.reasons))
        # requests agrees: the name is checked, not just the chain.
        with self.assertRaises(requests.exceptions.SSLError):
            yield self.get(port, "client")
        yield agent._pool.closeCachedConnections()

    @defer.inlineCallbacks
    def test_reload_swaps_certificate_without_dropping_the_listener(self) -> Any:
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        cert, key = folder / "srv.crt", folder / "srv.key"
        shutil.copy(self.pki.cert("wronghost"), cert)
        shutil.copy(self.pki.key("wronghost"), key)
        server = TLSMaterial(TLSConfig(ca=self.pki.ca_cert, cert=cert, key=key, crl=None,
                                       min_version="1.2", allow_proxies=False))
        port = yield self.listen(server)
        with self.assertRaises(requests.exceptions.SSLError):
            yield self.get(port, "client")
        shutil.copy(self.pki.cert("server"), cert)
        shutil.copy(self.pki.key("server"), key)
        server.reload()
        response = yield self.get(port, "client")
        self.assertEqual(response.status_code, 200)


class IntermediateChainTests(unittest.TestCase):
    """A client certificate issued by an intermediate CA: the chain is sent along."""

    def test_client_sends_its_intermediate_to_a_root_only_server(self) -> Any:
        return self.check_chain(with_crls=False)

    def test_crl_file_may_hold_the_intermediate_crl_too(self) -> Any:
        return self.check_chain(with_crls=True)

    @defer.inlineCallbacks
    def check_chain(self, with_crls: bool) -> Any:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        pki = test_pki()
        root_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        root_key = serialization.load_pem_private_key(pki.pki.ca_key_path.read_bytes(), None)
        now = dt.datetime.now(dt.UTC)

        def issue(subject: str, issuer: x509.Certificate, issuer_key: Any, ca: bool) -> tuple[Any, Any]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer.subject if issuer is not None else None)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if not ca:
                builder = builder.add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            return builder.sign(issuer_key, hashes.SHA256()), key

        inter, inter_key = issue("ccnet intermediate", root_cert, root_key, True)
        leaf, leaf_key = issue("chained-client", inter, inter_key, False)
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        pem = serialization.Encoding.PEM
        (folder / "client.crt").write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
        (folder / "client.key").write_bytes(leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

        if with_crls:
            # With CRL checking on, the intermediate's own CRL must be in the file too.
            crl = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(inter.subject)
                .last_update(now - dt.timedelta(minutes=5))
                .next_update(now + dt.timedelta(days=1))
                .sign(inter_key, hashes.SHA256())
            )
            (folder / "crls.pem").write_bytes(pki.crl.read_bytes() + crl.public_bytes(pem))
            server = TLSMaterial(TLSConfig(ca=pki.ca_cert, cert=pki.cert("server"), key=pki.key("server"),
                                           crl=folder / "crls.pem", min_version="1.2", allow_proxies=False))
        else:
            server = material(pki, crl=False)
        root = Resource()
        root.putChild(b"health", HealthResource("test", ["rpc"]))
        listener = ListenerService(reactor, "chain", parse_listen("ssl:0:interface=127.0.0.1"),
                                   Site(root), server.server(False, "chain"))
        listener.startService()
        yield listener.listening
        self.addCleanup(listener.stopService)
        client = TLSMaterial(TLSConfig(ca=pki.ca_cert, cert=folder / "client.crt", key=folder / "client.key",
                                       crl=None, min_version="1.2", allow_proxies=False))
        agent = https_agent(reactor, client)
        response = yield treq.get(f"https://127.0.0.1:{listener.address.port}/health", agent=agent)
        body = json.loads((yield response.content()))
        self.assertEqual(body["identity"], "/CN=chained-client")
        yield agent._pool.closeCachedConnections()
