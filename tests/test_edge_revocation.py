"""ccnet.edge.revocation.revoked_certificate: which certificate of a chain a set of CRLs revokes."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from ccnet.edge.revocation import revoked_certificate

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey,
          serial: int) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(issuer_key, hashes.SHA256()))


def _crl(issuer: str, key: ec.EllipticCurvePrivateKey, serials: list[int]) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(_name(issuer))
               .last_update(NOW).next_update(NOW + dt.timedelta(days=1)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build())
    return builder.sign(key, hashes.SHA256())


class RevokedCertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root_key, self.mid_key, self.leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        self.mid = _cert("intermediate", "root", self.mid_key, self.root_key, 100)
        self.leaf = _cert("leaf", "intermediate", self.leaf_key, self.mid_key, 200)
        self.chain = [self.leaf, self.mid]

    def test_nothing_revoked(self) -> None:
        crls = [_crl("root", self.root_key, [1]), _crl("intermediate", self.mid_key, [2])]
        self.assertIsNone(revoked_certificate(self.chain, crls))
        self.assertIsNone(revoked_certificate(self.chain, []))

    def test_the_leaf_revoked_by_its_issuer(self) -> None:
        crls = [_crl("root", self.root_key, []), _crl("intermediate", self.mid_key, [200])]
        self.assertEqual(revoked_certificate(self.chain, crls), self.leaf)

    def test_an_intermediate_revoked_by_the_root_revokes_the_chain(self) -> None:
        crls = [_crl("root", self.root_key, [100]), _crl("intermediate", self.mid_key, [])]
        self.assertEqual(revoked_certificate(self.chain, crls), self.mid)

    def test_a_serial_revoked_by_another_issuer_does_not_count(self) -> None:
        # The root's CRL lists 200, but the leaf with serial 200 was issued by the intermediate.
        crls = [_crl("root", self.root_key, [200])]
        self.assertIsNone(revoked_certificate(self.chain, crls))
