"""Security of a real daemon: bad client certificates on every HTTPS listener, oversize
bodies and frames, path traversal, authorization denials, and no key material in logs."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

import requests
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.cc.message import make_message, parse
from tests.support import TestPKI, test_pki
from tests.test_mplane_support import PING_CAP, envelope
from tests.test_ops_support import SPEC, OpsDaemon, tls_client, tls_get

HTTPS_LISTENERS = ("rpc", "supervisor")


def self_signed_client(folder: Path) -> tuple[str, str]:
    """A client certificate with the clientAuth EKU that nobody issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccnet"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Clients"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=10))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "selfsigned.crt", folder / "selfsigned.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def key_bodies(pki: TestPKI, extra: list[Path] = ()) -> dict[str, list[str]]:  # type: ignore[assignment]
    """The base64 lines of every private key of the test PKI (and ``extra`` key files)."""
    keys = list((pki.dir / "private").glob("*.key")) + list((pki.other_dir / "private").glob("*.key")) + list(extra)
    out: dict[str, list[str]] = {}
    for path in keys:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("-----")]
        out[str(path)] = [ln for ln in lines if len(ln) >= 32]
    return out


class SecurityTests(unittest.TestCase):
    """One daemon for the class (started by the first test, stopped at the end of the run)."""

    timeout = 90
    daemon: OpsDaemon | None = None

    def setUp(self) -> None:
        self.pki = test_pki()
        if SecurityTests.daemon is None:
            import atexit

            folder = Path(self.mktemp()).absolute()
            SecurityTests.daemon = OpsDaemon(self.pki, folder)
            atexit.register(SecurityTests.daemon.stop)
        self.d = SecurityTests.daemon

    @defer.inlineCallbacks
    def test_bad_client_certificates_are_refused_on_every_https_listener(self) -> Any:
        bad = {name: self.pki.pair(name) for name in ("expired", "notyet", "revoked", "foreign", "serveronly")}
        bad["selfsigned"] = self_signed_client(Path(self.mktemp()))

        def probe() -> dict[tuple[str, str], int]:
            seen = {}
            for listener in HTTPS_LISTENERS:
                port = self.d.port(listener)
                seen[(listener, "client")] = tls_get(self.pki, port, "client")
                seen[(listener, "none")] = tls_get(self.pki, port, None)
                for name, pair in bad.items():
                    seen[(listener, name)] = tls_get(self.pki, port, None, cert=pair)
            seen[("after", "client")] = tls_get(self.pki, self.d.port("rpc"), "client")
            return seen

        seen = yield deferToThread(probe)
        for (listener, name), status in seen.items():
            expected = 200 if name == "client" else 0
            self.assertEqual(status, expected, f"{name} on {listener}")
        log = self.d.daemon.log()
        for reason in ("certificate has expired", "certificate is not yet valid", "certificate revoked",
                       "unable to get local issuer certificate", "lacks the clientAuth extended key usage",
                       "self-signed certificate"):
            self.assertIn(reason, log)
        metrics = yield deferToThread(self.d.metrics)
        for listener in HTTPS_LISTENERS:
            self.assertIn(f'ccnet_tls_handshake_failures_total{{listener="{listener}",reason="certificate revoked"}}',
                          metrics)

    @defer.inlineCallbacks
    def test_oversize_bodies_are_refused_and_the_daemon_keeps_serving(self) -> Any:
        def scenario() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            s = self.d.session()
            big = {"method": "set", "args": json.dumps(["big", "x" * (100 * 1024)])}
            seen["rpc"] = s.post(self.d.url("rpc", "/Framework/Notebook"), data=big, timeout=30).status_code
            # Refused when announced, before any of it is read (nothing spooled to disk).
            seen["mplane"] = self._announce(self.d.port("supervisor"), "/register/capability",
                                            b"content-length: 1000000000000\r\n", tls=True)
            seen["metrics"] = self._announce(self.d.port("metrics"), "/metrics",
                                             b"transfer-encoding: chunked\r\n",
                                             body=b"20000\r\n" + b"x" * 0x20000 + b"\r\n", tls=False)
            seen["cc"] = self._cc_oversize()
            seen["cc_huge"] = self._cc_huge()
            seen["rpc_after"] = self.d.rpc("Framework/Notebook", "ping").status_code
            seen["cc_after"] = self.d.cc_echo()
            return seen

        seen = yield deferToThread(scenario)
        self.assertEqual(seen["rpc"], 413)
        self.assertEqual(seen["mplane"], 413)
        self.assertEqual(seen["metrics"], 413)
        self.assertEqual(seen["cc"], "error")
        self.assertFalse(seen["cc_huge"])
        self.assertEqual((seen["rpc_after"], seen["cc_after"]), (200, "echo.response"))

    def _announce(self, port: int, path: str, header: bytes, body: bytes = b"x" * 100, tls: bool = True) -> int:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn: Any = tls_client(self.pki, "component").wrap_socket(raw, server_hostname="localhost") if tls else raw
        with conn:
            conn.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/x-mplane+json\r\n" + header + b"\r\n" + body)
            reply = b""
            while b"\r\n" not in reply:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0

    def _cc_huge(self) -> bool:
        """A frame over twice the limit: libzmq drops the peer; nothing is buffered or answered."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.d.cc_endpoint)
            sock.send_multipart([b"", b"echo.request", b"x" * (1024 * 1024), b""])
            return bool(sock.poll(1000))
        finally:
            sock.close(0)
            ctx.term()

    def _cc_oversize(self) -> str | None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.d.cc_endpoint)
            # Over [cc] max-body-size (set to 64 KB for these daemons) but under the
            # hard per-frame cap: answered with an error instead of being handled.
            msg = make_message("echo.request", {"target": "x", "pad": "p" * (100 * 1024), "ack": True})
            sock.send_multipart(msg.frames())
            if not sock.poll(10000):
                return None
            reply = parse([b"server", *sock.recv_multipart()])
            return getattr(reply, "type", None)
        finally:
            sock.close(0)
            ctx.term()

    @defer.inlineCallbacks
    def test_no_path_traversal_out_of_a_served_folder(self) -> Any:
        def scenario() -> list[Any]:
            out = [self.d.rpc("Framework/Files", "getFileSize", "ok.txt").json()]
            for name in ("../secret.txt", "/etc/passwd", "sub/../../secret.txt", "..", "%2e%2e/secret.txt"):
                out.append(self.d.rpc("Framework/Files", "getFileSize", name).json())
            raw = requests.Session()
            raw.trust_env = False
            r = raw.get(self.d.url("supervisor", "/../../../etc/passwd"), cert=self.pki.pair("client"),
                        verify=str(self.pki.ca_cert), timeout=10)
            out.append(r.status_code)
            return out

        ok, *denied, sup = yield deferToThread(scenario)
        self.assertEqual(ok, {"OK": True, "Value": 7})
        for reply in denied:
            self.assertFalse(reply["OK"], reply)
        self.assertNotIn("root:", json.dumps(denied))
        self.assertIn(sup, (400, 403, 404))

    @defer.inlineCallbacks
    def test_authorization_denials_for_rpc_and_mplane(self) -> Any:
        def scenario() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            # A valid certificate nobody mapped: RPC needs "authenticated"/NormalUser.
            seen["rpc"] = self.d.rpc("Framework/Notebook", "set", "denied", 1, who="supervisor").status_code
            # A client may not register capabilities (component role needed).
            seen["mplane_register"] = self.d.mplane("POST", "register/capability", envelope(PING_CAP),
                                                    who="client").status_code
            # The component role may not submit specifications it cannot see.
            spec = dict(SPEC, label="secret-probe-0")
            r = self.d.mplane("POST", "register/specification", spec, who="supervisor")
            seen["mplane_spec"] = (r.status_code, r.text[:200])
            return seen

        seen = yield deferToThread(scenario)
        self.assertEqual(seen["rpc"], 401)
        self.assertIn(seen["mplane_register"], (401, 403))
        self.assertTrue(seen["mplane_spec"][0] in (401, 403) or "exception" in seen["mplane_spec"][1],
                        seen["mplane_spec"])


class SecretsInLogsTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_logs_never_contain_private_key_material(self) -> Any:
        pki = test_pki()
        folder = Path(self.mktemp()).absolute()
        d = OpsDaemon(pki, folder, own_tls=True)
        self.addCleanup(d.stop)
        wrong_key = folder / "wrong.key"
        shutil.copy(pki.key("client"), wrong_key)

        def scenario() -> str:
            tls_get(pki, d.port("rpc"), "expired")
            tls_get(pki, d.port("supervisor"), None, cert=pki.pair("foreign"))
            d.rpc("Framework/Notebook", "set", "k", "v")
            # A key not matching the certificate on reload: refused and logged by file
            # name, never by content.
            (folder / "server.key").write_bytes(wrong_key.read_bytes())
            d.daemon.process.send_signal(signal.SIGHUP)
            d.wait_log("reload failed")
            with socket.create_connection(("127.0.0.1", d.port("rpc"))) as s:
                s.sendall(b"\x16\x03\x01\x00\x05garbage")
            d.stop()
            return "".join(d.daemon.lines)

        raw_log = yield deferToThread(scenario)
        self.assertIn("reload failed", raw_log)
        self.assertNotIn("PRIVATE KEY", raw_log)
        for path, lines in key_bodies(pki, [wrong_key]).items():
            leaked = [ln for ln in lines if ln in raw_log]
            self.assertEqual(leaked, [], f"key material of {path} in the log")
        self.assertIsNone(re.search(r"-----BEGIN [A-Z ]*KEY-----", raw_log))
