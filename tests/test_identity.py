"""Identity forms, the users mapping and authorization rules (pure, no sockets)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from ccnet.config import ConfigError
from ccnet.identity import Identity, UserMap, authorize
from tests.support import test_pki


def _proxy_for(parent_cert: x509.Certificate, parent_key: ec.EllipticCurvePrivateKey, limited: bool) -> x509.Certificate:
    """An RFC 3820 proxy certificate issued by an end-entity certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([*parent_cert.subject, x509.NameAttribute(NameOID.COMMON_NAME, "12345")])
    # ProxyCertInfo ::= SEQUENCE { ProxyPolicy ::= SEQUENCE { policyLanguage OID } }
    oid = "1.3.6.1.4.1.3536.1.1.1.9" if limited else "1.3.6.1.5.5.7.21.1"
    from ccnet.identity import _oid_in_der  # the encoder is the one the parser checks against

    body = b""
    parts = [int(p) for p in oid.split(".")]
    enc = bytearray([40 * parts[0] + parts[1]])
    for number in parts[2:]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        enc.extend(reversed(chunk))
    oid_der = b"\x06" + bytes([len(enc)]) + bytes(enc)
    policy = b"\x30" + bytes([len(oid_der)]) + oid_der
    body = b"\x30" + bytes([len(policy)]) + policy
    assert _oid_in_der(oid, body)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent_cert.subject)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=12))
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"), body), critical=True
        )
        .sign(parent_key, hashes.SHA256())
    )


class IdentityTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = test_pki()

    def identity(self, name: str) -> Identity:
        return Identity.from_pem(self.pki.cert(name).read_bytes())

    def test_slash_and_dotted_forms(self) -> None:
        ident = self.identity("client")
        self.assertEqual(ident.dn, "/C=IT/O=ccnet/OU=Clients/CN=client")
        self.assertEqual(ident.dotted, "IT.ccnet.Clients.client")
        self.assertEqual(ident.cn, "client")
        self.assertEqual(ident.issuer_dn, "/C=IT/O=ccnet/CN=ccnet test CA")
        self.assertFalse(ident.is_proxy)

    def test_sans_serial_and_expiry(self) -> None:
        ident = self.identity("server")
        self.assertIn("DNS:localhost", ident.sans)
        self.assertIn("IP:127.0.0.1", ident.sans)
        self.assertTrue(ident.matches_host("127.0.0.1"))
        self.assertTrue(ident.matches_host("LOCALHOST"))
        self.assertFalse(ident.matches_host("example.org"))
        self.assertGreater(ident.serial, 0)
        self.assertGreater(ident.seconds_left(), 86400)

    def test_text_preamble_does_not_change_identity(self) -> None:
        self.assertEqual(self.identity("supervisor").dotted, "IT.ccnet.Supervisors.supervisor")

    def test_proxy_chain_reports_end_entity_dn(self) -> None:
        from cryptography.hazmat.primitives import serialization

        leaf = x509.load_pem_x509_certificate(self.pki.cert("client").read_bytes())
        key = serialization.load_pem_private_key(self.pki.key("client").read_bytes(), None)
        for limited in (False, True):
            proxy = _proxy_for(leaf, key, limited)  # type: ignore[arg-type]
            ident = Identity.from_chain([proxy, leaf])
            self.assertTrue(ident.is_proxy)
            self.assertEqual(ident.is_limited_proxy, limited)
            self.assertEqual(ident.dn, "/C=IT/O=ccnet/OU=Clients/CN=client")
            self.assertEqual(ident.subject_dn, "/C=IT/O=ccnet/OU=Clients/CN=client/CN=12345")
            self.assertLessEqual(ident.seconds_left(), 12 * 3600)


USERS = """
[user:alice]
dn = /C=IT/O=ccnet/OU=Clients/CN=client
group = dirac_user
groups = lhcb_user
properties = NormalUser
vo = lhcb

[user:probe]
identity = IT.ccnet.Components.component
roles = component

[Roles]
IT.ccnet.Clients.admin = admin, guest
"""


class UserMapTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = test_pki()
        self.users = UserMap.from_string(USERS)

    def identity(self, name: str) -> Identity:
        return Identity.from_pem(self.pki.cert(name).read_bytes())

    def test_lookup_by_slash_dn(self) -> None:
        rec = self.users.lookup(self.identity("client"))
        assert rec is not None
        self.assertEqual(rec.username, "alice")
        self.assertEqual(rec.group, "dirac_user")
        self.assertEqual(rec.groups, frozenset({"dirac_user", "lhcb_user"}))
        self.assertEqual(rec.properties, frozenset({"NormalUser"}))
        self.assertEqual(rec.vo, "lhcb")

    def test_lookup_by_dotted_identity_and_sdk_roles(self) -> None:
        probe = self.users.lookup(self.identity("component"))
        admin = self.users.lookup(self.identity("admin"))
        assert probe is not None and admin is not None
        self.assertEqual(probe.properties, frozenset({"component"}))
        self.assertEqual(admin.properties, frozenset({"admin", "guest"}))

    def test_unknown_identity(self) -> None:
        self.assertIsNone(self.users.lookup(self.identity("supervisor")))
        self.assertIsNone(self.users.lookup(None))

    def test_bad_file_names_section_and_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            UserMap.from_string("[user:x]\ncolour = red\ndn = /CN=x\n", "users.conf")
        self.assertEqual((caught.exception.section, caught.exception.key), ("user:x", "colour"))
        with self.assertRaises(ConfigError):
            UserMap.from_string("[people]\n", "users.conf")
        with self.assertRaises(ConfigError):
            UserMap.from_string("[user:nobody]\ngroup = x\n", "users.conf")


class AuthorizeTests(unittest.TestCase):
    def setUp(self) -> None:
        pki = test_pki()
        self.users = UserMap.from_string(USERS)
        self.alice = Identity.from_pem(pki.cert("client").read_bytes())
        self.alice_rec = self.users.lookup(self.alice)
        self.stranger = Identity.from_pem(pki.cert("supervisor").read_bytes())

    def test_table(self) -> None:
        cases = [
            (["all"], None, None, True),
            (["any"], self.stranger, None, True),
            (["authenticated"], None, None, False),
            (["authenticated"], self.stranger, None, False),
            (["authenticated"], self.alice, self.alice_rec, True),
            (["NormalUser"], self.alice, self.alice_rec, True),
            (["CSAdministrator"], self.alice, self.alice_rec, False),
            (["group:lhcb_user"], self.alice, self.alice_rec, True),
            (["group:other"], self.alice, self.alice_rec, False),
            (["vo:lhcb"], self.alice, self.alice_rec, True),
            (["vo:atlas"], self.alice, self.alice_rec, False),
            (["CSAdministrator", "NormalUser"], self.alice, self.alice_rec, True),
            ([], self.alice, self.alice_rec, False),
        ]
        for rule, ident, rec, expected in cases:
            self.assertEqual(authorize(ident, rec, rule), expected, (rule, ident and ident.cn))
