"""CMS signing/encryption of CC messages, and interop with the openssl cms CLI."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

from ccnet.cc.crypto import (
    CMSCodec,
    CryptoError,
    decrypt,
    encrypt,
    sign_attached,
    sign_detached,
    verify_signed,
)
from ccnet.cc.message import ENC1, BodyError, CCMessage, make_body, parse

_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def _key(name: str) -> rsa.RSAPrivateKey:
    # RSA key generation is the slow part; reuse keys within one test run.
    if name not in _KEYS:
        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccnet"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(cn: str, key: rsa.RSAPrivateKey, issuer: x509.Name, issuer_key: rsa.RSAPrivateKey,
          ca: bool = False, expired: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=30 if expired else 1)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=30)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return b.sign(issuer_key, hashes.SHA256())


def make_keystore(path: Path) -> Path:
    """A CC keystore: ca, other-ca, signer 'client', service 'server', and
    'foreign' (signed by other-ca) and 'expired', in ccnet-pki's layout."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "private").mkdir(exist_ok=True)
    ca_key, other_key = _key("ca"), _key("other")
    ca = _cert("Test CA", ca_key, _name("Test CA"), ca_key, ca=True)
    other = _cert("Other CA", other_key, _name("Other CA"), other_key, ca=True)

    def write(name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey | None) -> None:
        (path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (path / "private" / f"{name}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    write("ca", ca, ca_key)
    write("other-ca", other, other_key)
    for name, issuer, ikey, expired in [
        ("client", ca, ca_key, False),
        ("server", ca, ca_key, False),
        ("foreign", other, other_key, False),
        ("expired", ca, ca_key, True),
    ]:
        k = _key(name)
        write(name, _cert(name, k, issuer.subject, ikey, expired=expired), k)
    return path


def _openssl() -> str:
    exe = shutil.which("openssl")
    if exe is None:
        raise SkipTest("openssl command line not installed")
    return exe


class CryptoTests(TestCase):
    def setUp(self) -> None:
        self.ks = make_keystore(Path(self.mktemp()))

    def codec(self, **kw: object) -> CMSCodec:
        return CMSCodec(keystore=self.ks, **kw)  # type: ignore[arg-type]

    def body(self, req: str = "echo.request") -> dict:
        return make_body(req, {"target": "x"}, hostname="h", now=100.0)

    def test_signed_message_verifies_and_names_the_signer(self) -> None:
        msg = self.codec(sign="client").encode((b"r",), self.body())
        self.assertTrue(msg.signature)
        obj, signer = self.codec(verify_ca=("ca",)).decode(msg, 100.0)
        self.assertEqual(obj["target"], "x")
        assert signer is not None
        self.assertEqual(signer.cn, "client")

    def test_unsigned_message_rejected_when_verify_ca_set(self) -> None:
        msg = self.codec().encode((b"r",), self.body())
        e = self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, msg, 100.0)
        self.assertIn("not signed", str(e))

    def test_tampered_body_fails_verification(self) -> None:
        msg = self.codec(sign="client").encode((b"r",), self.body())
        bad = CCMessage(msg.route, msg.type, msg.body.replace(b'"x"', b'"y"'), msg.signature)
        e = self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, bad, 100.0)
        self.assertIn("digest does not match", str(e))

    def test_signer_from_other_ca_is_rejected(self) -> None:
        msg = self.codec(sign="foreign").encode((b"r",), self.body())
        e = self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, msg, 100.0)
        self.assertIn("trusted CA", str(e))

    def test_expired_signer_is_rejected(self) -> None:
        msg = self.codec(sign="expired").encode((b"r",), self.body())
        e = self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, msg, 100.0)
        self.assertIn("expired or not yet valid", str(e))

    def test_remembered_signer_is_still_checked_for_validity(self) -> None:
        msg = self.codec(sign="client").encode((b"r",), self.body())
        codec = self.codec(verify_ca=("ca",))
        codec.decode(msg, 100.0)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
        e = self.assertRaises(CryptoError, codec.decode, msg, 100.0, later)
        self.assertIn("expired or not yet valid", str(e))

    def test_garbage_signature_is_a_crypto_error(self) -> None:
        msg = self.codec().encode((b"r",), self.body())
        bad = CCMessage(msg.route, msg.type, msg.body, b"\x30\x03garbage")
        self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, bad, 100.0)

    def test_blob_hash_is_added_before_signing_and_checked(self) -> None:
        msg = self.codec(sign="client").encode((b"r",), self.body("pub.infofile"), blob=b"DATA")
        self.assertTrue(json.loads(msg.body)["blob_hash"].startswith("SHA-1:"))
        self.codec(verify_ca=("ca",)).decode(msg, 100.0)
        swapped = CCMessage(msg.route, msg.type, msg.body, msg.signature, b"OTHER")
        e = self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, swapped, 100.0)
        self.assertIn("blob_hash does not match", str(e))

    def test_encrypted_message_round_trips(self) -> None:
        msg = self.codec(sign="client", encrypt="server").encode((b"r",), self.body())
        self.assertEqual(msg.body, ENC1)
        self.assertIsInstance(parse(msg.frames()), CCMessage)
        obj, signer = self.codec(verify_ca=("ca",), decrypt="server").decode(msg, 100.0)
        self.assertEqual(obj["req"], "echo.request")
        assert signer is not None
        self.assertEqual(signer.cn, "client")

    def test_encrypted_message_rejected_without_decrypt_and_plain_rejected_with(self) -> None:
        enc = self.codec(sign="client", encrypt="server").encode((b"r",), self.body())
        self.assertRaises(CryptoError, self.codec(verify_ca=("ca",)).decode, enc, 100.0)
        plain = self.codec(sign="client").encode((b"r",), self.body())
        e = self.assertRaises(
            CryptoError, self.codec(verify_ca=("ca",), decrypt="server").decode, plain, 100.0
        )
        self.assertIn("not encrypted", str(e))

    def test_hijacked_type_is_a_body_error(self) -> None:
        msg = self.codec(sign="client").encode((b"r",), self.body())
        moved = CCMessage(msg.route, "db.confdb", msg.body, msg.signature)
        self.assertRaises(BodyError, self.codec(verify_ca=("ca",)).decode, moved, 100.0)

    def test_time_window_rejects_old_messages(self) -> None:
        msg = self.codec(sign="client").encode((b"r",), self.body())
        codec = self.codec(verify_ca=("ca",), time_window=60)
        codec.decode(msg, 130.0)
        self.assertRaises(CryptoError, codec.decode, msg, 1000.0)

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=300), st.booleans())
    def test_random_signature_or_envelope_is_only_ever_a_crypto_error(self, junk: bytes, enc: bool) -> None:
        codec = self.codec(verify_ca=("ca",), decrypt="server") if enc else self.codec(verify_ca=("ca",))
        msg = CCMessage((b"r",), "echo", ENC1 if enc else b'{"req": "echo"}', junk)
        self.assertRaises(CryptoError, codec.decode, msg, 1.0)

    def test_encrypt_without_sign_is_refused(self) -> None:
        self.assertRaises(ValueError, self.codec, encrypt="server")


class OpenSSLInteropTests(TestCase):
    """The same structures as ``openssl cms`` reads and writes."""

    def setUp(self) -> None:
        self.openssl = _openssl()
        self.ks = make_keystore(Path(self.mktemp()))
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()

    def run_openssl(self, *args: str, stdin: bytes | None = None) -> bytes:
        p = subprocess.run(
            [self.openssl, *args], input=stdin, capture_output=True, check=False, timeout=60
        )
        if p.returncode != 0:
            self.fail(f"openssl {' '.join(args)} failed: {p.stderr.decode(errors='replace')}")
        return p.stdout

    def test_ccnet_signature_verifies_with_openssl(self) -> None:
        ks = CMSCodec(keystore=self.ks, sign="client")
        msg = ks.encode((), make_body("echo.request", {"a": 1}, "h", 1.0))
        (self.tmp / "sig.der").write_bytes(msg.signature)
        (self.tmp / "body.json").write_bytes(msg.body)
        self.run_openssl(
            "cms", "-verify", "-binary", "-inform", "DER", "-in", str(self.tmp / "sig.der"),
            "-content", str(self.tmp / "body.json"), "-CAfile", str(self.ks / "ca.crt"),
            "-purpose", "any", "-out", str(self.tmp / "out"),
        )
        self.assertEqual((self.tmp / "out").read_bytes(), msg.body)

    def test_openssl_signature_verifies_with_ccnet(self) -> None:
        body = json.dumps(make_body("echo.request", {"a": 1}, "h", 1.0)).encode()
        (self.tmp / "body.json").write_bytes(body)
        sig = self.run_openssl(
            "cms", "-sign", "-binary", "-outform", "DER", "-in", str(self.tmp / "body.json"),
            "-signer", str(self.ks / "client.crt"), "-inkey", str(self.ks / "private/client.key"),
        )
        msg = CCMessage((b"r",), "echo.request", body, sig)
        obj, signer = CMSCodec(keystore=self.ks, verify_ca=("ca",)).decode(msg, 1.0)
        self.assertEqual(obj["a"], 1)
        assert signer is not None
        self.assertEqual(signer.cn, "client")
        # and a detached verify with the wrong content fails
        self.assertRaises(CryptoError, verify_signed, sig, [], b"other")

    def test_ccnet_envelope_decrypts_and_verifies_with_openssl(self) -> None:
        ks = CMSCodec(keystore=self.ks, sign="client", encrypt="server")
        msg = ks.encode((), make_body("echo.request", {"a": 2}, "h", 1.0))
        (self.tmp / "env.der").write_bytes(msg.signature)
        inner = self.run_openssl(
            "cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(self.tmp / "env.der"),
            "-recip", str(self.ks / "server.crt"), "-inkey", str(self.ks / "private/server.key"),
        )
        (self.tmp / "inner.der").write_bytes(inner)
        out = self.run_openssl(
            "cms", "-verify", "-binary", "-inform", "DER", "-in", str(self.tmp / "inner.der"),
            "-CAfile", str(self.ks / "ca.crt"), "-purpose", "any",
        )
        self.assertEqual(json.loads(out)["a"], 2)
        # the cipher is AES-128-CBC as in the original
        info = self.run_openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(self.tmp / "env.der"))
        self.assertIn(b"aes-128-cbc", info)

    def test_openssl_envelope_decrypts_and_verifies_with_ccnet(self) -> None:
        body = json.dumps(make_body("echo.request", {"a": 3}, "h", 1.0)).encode()
        (self.tmp / "body.json").write_bytes(body)
        self.run_openssl(
            "cms", "-sign", "-binary", "-nodetach", "-outform", "DER", "-in", str(self.tmp / "body.json"),
            "-signer", str(self.ks / "client.crt"), "-inkey", str(self.ks / "private/client.key"),
            "-out", str(self.tmp / "signed.der"),
        )
        env = self.run_openssl(
            "cms", "-encrypt", "-binary", "-aes128", "-outform", "DER", "-in", str(self.tmp / "signed.der"),
            str(self.ks / "server.crt"),
        )
        msg = CCMessage((b"r",), "echo.request", ENC1, env)
        obj, _ = CMSCodec(keystore=self.ks, verify_ca=("ca",), decrypt="server").decode(msg, 1.0)
        self.assertEqual(obj["a"], 3)

    def test_attached_detached_and_envelope_primitives(self) -> None:
        ks = CMSCodec(keystore=self.ks, sign="client", verify_ca=("ca",))
        cert, key = ks.sign_cert, ks.sign_key
        assert cert is not None
        attached = sign_attached(b"hello", cert, key)
        self.assertEqual(verify_signed(attached, ks.cas)[0], b"hello")
        # a detached signature needs its content
        self.assertRaises(CryptoError, verify_signed, sign_detached(b"hello", cert, key), ks.cas)
        srv = CMSCodec(keystore=self.ks, decrypt="server", verify_ca=("ca",))
        assert srv.decrypt_cert is not None
        self.assertEqual(decrypt(encrypt(b"x", srv.decrypt_cert), srv.decrypt_cert, srv.decrypt_key), b"x")
        self.assertRaises(CryptoError, decrypt, b"garbage", srv.decrypt_cert, srv.decrypt_key)


class PKIKeystoreTests(TestCase):
    """A folder made by ccnet-pki is a CC keystore as it is (EC keys, text preamble)."""

    def test_ccnet_pki_folder_signs_verifies_and_encrypts(self) -> None:
        from tests.support import test_pki

        pki = test_pki()
        client = CMSCodec(keystore=pki.dir, sign="client", encrypt="ccservice")
        msg = client.encode((b"r",), make_body("echo.request", {"t": 1}, "h", 1.0), blob=b"B")
        server = CMSCodec(keystore=pki.dir, verify_ca=("ca",), decrypt="ccservice")
        obj, signer = server.decode(msg, 1.0)
        self.assertEqual(obj["t"], 1)
        assert signer is not None
        self.assertEqual(signer.cn, "client")
        signed = CMSCodec(keystore=pki.dir, sign="client").encode((b"r",), make_body("x", {}, "h", 1.0))
        foreign_ca = CMSCodec(keystore=pki.other_dir, verify_ca=("ca",))
        self.assertRaises(CryptoError, foreign_ca.decode, signed, 1.0)


class SignerPolicyTests(TestCase):
    """Signers are checked as strictly as TLS clients: chain, validity, EKU, CRL (suite PKI)."""

    def setUp(self) -> None:
        from tests.support import test_pki

        self.pki = test_pki()

    def signed_by(self, name: str, now: float = 1000.0) -> CCMessage:
        codec = CMSCodec(keystore=self.pki.dir, sign=name)
        return codec.encode((b"r",), make_body("task.send", {"task": "t"}, "h", now))

    def verifier(self, **kw: object) -> CMSCodec:
        kw.setdefault("crl", (self.pki.crl,))
        return CMSCodec(keystore=self.pki.dir, verify_ca=("ca",), **kw)  # type: ignore[arg-type]

    def refusal(self, name: str, **kw: object) -> str:
        e = self.assertRaises(CryptoError, self.verifier(**kw).decode, self.signed_by(name), 1000.0)
        return str(e)

    def test_valid_signer_passes_with_the_crl(self) -> None:
        _, signer = self.verifier().decode(self.signed_by("client"), 1000.0)
        assert signer is not None
        self.assertEqual(signer.cn, "client")

    def test_revoked_signer_is_refused(self) -> None:
        self.assertIn("CN=revoked,OU=Clients,O=ccnet,C=IT is revoked", self.refusal("revoked"))

    def test_revoked_signer_is_refused_even_when_its_chain_was_remembered(self) -> None:
        codec = self.verifier(crl=())
        msg = self.signed_by("revoked")
        codec.decode(msg, 1000.0)  # no CRL configured: accepted, chain remembered
        codec.crls = [x509.load_pem_x509_crl(self.pki.crl.read_bytes())]
        self.assertIn("is revoked", str(self.assertRaises(CryptoError, codec.decode, msg, 1000.0)))

    def test_expired_signer_is_refused(self) -> None:
        self.assertIn("expired or not yet valid", self.refusal("expired"))

    def test_signer_without_client_or_email_usage_is_refused(self) -> None:
        self.assertIn("extended key usage allows neither clientAuth nor emailProtection", self.refusal("serveronly"))

    def test_missing_crl_for_the_signers_issuer_is_refused(self) -> None:
        other_crl = self.pki.other_dir / "crl.pem"
        self.assertIn("no CRL for the signer's issuer", self.refusal("client", crl=(other_crl,)))

    def test_ec_certificate_for_cms_encrypt_is_refused_when_the_codec_is_built(self) -> None:
        e = self.assertRaises(ValueError, CMSCodec, keystore=self.pki.dir, sign="client", encrypt="server")
        self.assertIn("cms-encrypt = server: expected an RSA certificate", str(e))

    def test_ec_certificate_for_cms_encrypt_is_a_one_line_config_error(self) -> None:
        from ccnet.cc.config import parse
        from ccnet.config import ConfigError, IniFile

        ini = IniFile.from_string(
            f"[cc]\ncc-socket = tcp://127.0.0.1:*\ncms-keystore = {self.pki.dir}\ncms-sign = client\n"
            "cms-encrypt = server\n[routes]\n", self.pki.dir / "ccnet.ini")
        e = self.assertRaises(ConfigError, parse, ini)
        self.assertIn("cms-encrypt", str(e))
        self.assertIn("RSA", str(e))
        self.assertNotIn("\n", str(e))


class FreshnessTests(TestCase):
    """cms-time-window: bounded by default under cms-verify-ca, and a replay cache."""

    def setUp(self) -> None:
        self.ks = make_keystore(Path(self.mktemp()).absolute())

    def config(self, keys: str) -> object:
        from ccnet.cc.config import parse
        from ccnet.config import IniFile

        cfg = parse(IniFile.from_string(
            f"[cc]\ncc-socket = tcp://127.0.0.1:*\ncms-keystore = {self.ks}\n{keys}[routes]\n",
            self.ks / "ccnet.ini"))
        assert cfg is not None
        return cfg.cms

    def test_window_defaults_to_five_minutes_under_verify_ca_and_zero_means_unlimited(self) -> None:
        self.assertEqual(self.config("cms-verify-ca = ca\n").time_window, 300.0)  # type: ignore[attr-defined]
        self.assertEqual(self.config("cms-verify-ca = ca\ncms-time-window = 0\n").time_window, 0.0)  # type: ignore[attr-defined]
        self.assertEqual(self.config("cms-sign = client\n").time_window, 0.0)  # type: ignore[attr-defined]

    def test_replayed_signed_message_is_refused_and_a_new_one_is_not(self) -> None:
        sender = CMSCodec(keystore=self.ks, sign="client")
        receiver = CMSCodec.from_options(self.config("cms-verify-ca = ca\n"))
        msg = sender.encode((b"r",), make_body("task.send", {"task": "t"}, "h", 1000.0))
        receiver.decode(msg, 1001.0)
        e = self.assertRaises(CryptoError, receiver.decode, msg, 1002.0)
        self.assertIn("replayed message", str(e))
        again = sender.encode((b"r",), make_body("task.send", {"task": "t"}, "h", 1003.0))
        receiver.decode(again, 1003.0)
        # Once the window is over the time check refuses it, and the cache forgets it.
        e = self.assertRaises(CryptoError, receiver.decode, msg, 1000.0 + 301)
        self.assertIn("outside cms-time-window", str(e))

    def test_message_outside_the_window_is_refused(self) -> None:
        sender = CMSCodec(keystore=self.ks, sign="client")
        receiver = CMSCodec.from_options(self.config("cms-verify-ca = ca\n"))
        old = sender.encode((b"r",), make_body("task.send", {}, "h", 1000.0))
        e = self.assertRaises(CryptoError, receiver.decode, old, 1000.0 + 600)
        self.assertIn("outside cms-time-window", str(e))
        unlimited = CMSCodec.from_options(self.config("cms-verify-ca = ca\ncms-time-window = 0\n"))
        unlimited.decode(old, 1000.0 + 600)
        unlimited.decode(old, 1000.0 + 601)  # upstream behaviour when asked for: no freshness
