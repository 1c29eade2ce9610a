"""ccnet-pki: files, permissions, SANs, EKUs, revocation and the SDK text preamble."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from twisted.trial import unittest

from ccnet.pki import PKI, PKIError, main


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)] + [
        f"IP:{v}" for v in ext.get_values_for_type(x509.IPAddress)
    ]


class PKIToolTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.assertEqual(main(["--dir", str(self.dir), "init"]), 0)
        self.pki = PKI(self.dir)

    def load(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.pki.cert_path(name).read_bytes())[0]

    def test_layout_matches_cc_keystore_and_keys_are_private(self) -> None:
        main(["--dir", str(self.dir), "issue", "client", "alice"])
        for path in (self.dir / "ca.crt", self.dir / "alice.crt", self.dir / "private" / "alice.key",
                     self.dir / "private" / "ca.key", self.dir / "crl.pem"):
            self.assertTrue(path.exists(), path)
        for key in (self.dir / "private").iterdir():
            self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600, key)

    def test_ekus_per_kind(self) -> None:
        expected = {
            "client": {EKU.CLIENT_AUTH},
            "supervisor": {EKU.SERVER_AUTH, EKU.CLIENT_AUTH},
            "component": {EKU.SERVER_AUTH, EKU.CLIENT_AUTH},
            "server": {EKU.SERVER_AUTH, EKU.CLIENT_AUTH},
            "host": {EKU.SERVER_AUTH, EKU.CLIENT_AUTH},
            "service": {EKU.SERVER_AUTH, EKU.CLIENT_AUTH, EKU.EMAIL_PROTECTION},
        }
        for kind, ekus in expected.items():
            self.pki.issue(kind, f"x-{kind}")
            self.assertEqual(_eku(self.load(f"x-{kind}")), ekus, kind)

    def test_sans_default_to_loopback_and_can_be_given(self) -> None:
        self.pki.issue("server", "web")
        self.assertEqual(set(_sans(self.load("web"))), {"DNS:web", "DNS:localhost", "IP:127.0.0.1", "IP:::1"})
        main(["--dir", str(self.dir), "issue", "server", "api", "--san", "DNS:api.example.org", "--san", "IP:10.1.2.3"])
        self.assertEqual(_sans(self.load("api")), ["DNS:api.example.org", "IP:10.1.2.3"])
        self.pki.issue("client", "bob")
        with self.assertRaises(x509.ExtensionNotFound):
            self.load("bob").extensions.get_extension_for_class(x509.SubjectAlternativeName)

    def test_subject_and_days(self) -> None:
        self.pki.issue("client", "carol", subject="/C=IT/O=mPlane/OU=Clients/CN=Client-1", days=10)
        cert = self.load("carol")
        self.assertEqual(cert.subject.rfc4514_string(), "CN=Client-1,OU=Clients,O=mPlane,C=IT")
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertLess(life.days, 11)

    def test_text_preamble_gives_sdk_identity(self) -> None:
        self.pki.issue("component", "probe", subject="/C=IT/O=mPlane/OU=Components/CN=Component-1",
                       text_preamble=True)
        text = self.pki.cert_path("probe").read_text()
        self.assertTrue(text.startswith("Certificate:"))
        # The SDK's reading: strip spaces, find "Subject:", join the values with dots.
        identity = ""
        for line in text.splitlines():
            line = line.replace(" ", "")
            if line.startswith("Subject:"):
                identity = ".".join(f.split("=")[1] for f in line[len("Subject:"):].split(","))
        self.assertEqual(identity, "IT.mPlane.Components.Component-1")
        self.load("probe")  # still a loadable PEM

    def test_openssl_agrees(self) -> None:
        self.pki.issue("server", "web")
        out = subprocess.run(["openssl", "verify", "-CAfile", str(self.dir / "ca.crt"),
                              "-purpose", "sslserver", str(self.dir / "web.crt")],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_revoke_writes_crl_with_serial(self) -> None:
        self.pki.issue("client", "mallory")
        serial = self.load("mallory").serial_number
        self.assertEqual(main(["--dir", str(self.dir), "revoke", "mallory"]), 0)
        crl = x509.load_pem_x509_crl((self.dir / "crl.pem").read_bytes())
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(serial))
        self.assertIn("REVOKED", self.pki.show("mallory"))

    def test_errors_are_explained(self) -> None:
        with self.assertRaises(PKIError):
            self.pki.init()  # exists
        with self.assertRaises(PKIError):
            self.pki.issue("client", "../evil")
        with self.assertRaises(PKIError):
            self.pki.issue("client", "x", sans=["FTP:x"])
        with self.assertRaises(PKIError):
            PKI(self.dir / "none").issue("client", "x")

    def test_console_script_runs(self) -> None:
        out = subprocess.run([str(Path(sys.executable).parent / "ccnet-pki"), "--dir", str(self.dir), "show", "ca"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Subject: C = IT, O = ccnet, CN = ccnet dev CA", out.stdout)
