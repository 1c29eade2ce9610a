"""Identity forms, the users mapping and authorization rules (pure, no sockets)."""

from __future__ import annotations

from cryptography import x509
from twisted.trial import unittest

from ccnet.config import ConfigError
from ccnet.identity import Identity, UserMap, authorize
from tests.support import test_pki


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
        from pathlib import Path

        from tests.test_rpc_fixtures import make_proxy

        for limited in (False, True):
            path = make_proxy(self.pki, "client", Path(self.mktemp()), limited=limited)
            ident = Identity.from_chain(x509.load_pem_x509_certificates(path.read_bytes()))
            self.assertTrue(ident.is_proxy)
            self.assertEqual(ident.is_limited_proxy, limited)
            self.assertEqual(ident.dn, "/C=IT/O=ccnet/OU=Clients/CN=client")
            self.assertTrue(ident.subject_dn.startswith("/C=IT/O=ccnet/OU=Clients/CN=client/CN="))
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
