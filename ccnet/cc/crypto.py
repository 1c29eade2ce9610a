"""CC message crypto: CMS/PKCS#7 signatures and envelopes (pure, no Twisted).

Same structures as the original (M2Crypto SMIME, DER):

* signed: signature frame = DER SignedData, detached, binary, signer cert
  embedded, over the exact json frame bytes;
* signed + encrypted: json frame = ``ENC1``, signature frame = DER
  EnvelopedData (AES-128-CBC) around an attached SignedData of the json;
* a blob is not signed; ``blob_hash = "SHA-1:<hex>"`` is put into the json
  before signing.

``cryptography`` builds the structures and decrypts; it cannot verify
SignedData, so verification is done here with ``asn1crypto`` parsing and
``cryptography`` signature checks.  ``openssl cms`` reads and writes the same
structures (interop is tested).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import cms as acms
from asn1crypto.core import Void
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from ccnet.cc.message import ENC1, BodyError, CCMessage, decode_body, encode_body

__all__ = [
    "CryptoError",
    "Keystore",
    "CMSCodec",
    "Signer",
    "blob_hash",
    "check_blob_hash",
    "sign_detached",
    "sign_attached",
    "verify_signed",
    "encrypt",
    "decrypt",
]


class CryptoError(ValueError):
    """A message failed decryption or verification; the text says why."""


@dataclass(frozen=True)
class Signer:
    """Who signed a verified message (kept for handlers and logs, no authz)."""

    subject: str
    cn: str | None
    o: str | None
    serial: int

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "cn": self.cn, "o": self.o, "serial": self.serial}


def _signer(cert: x509.Certificate) -> Signer:
    def attr(oid: x509.ObjectIdentifier) -> str | None:
        vals = cert.subject.get_attributes_for_oid(oid)
        return str(vals[0].value) if vals else None

    return Signer(
        cert.subject.rfc4514_string(),
        attr(x509.NameOID.COMMON_NAME),
        attr(x509.NameOID.ORGANIZATION_NAME),
        cert.serial_number,
    )


class Keystore:
    """``cms-keystore`` layout: ``NAME.crt`` and ``private/NAME.key`` (PEM)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def cert(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.path / f"{name}.crt").read_bytes())

    def certs(self, name: str) -> list[x509.Certificate]:
        """All certificates in ``NAME.crt`` (a CA file may hold a bundle)."""
        return x509.load_pem_x509_certificates((self.path / f"{name}.crt").read_bytes())

    def key(self, name: str) -> Any:
        return serialization.load_pem_private_key(
            (self.path / "private" / f"{name}.key").read_bytes(), password=None
        )


# ----------------------------------------------------------------------------- blob hash


def blob_hash(blob: bytes, algo: str = "SHA-1") -> str:
    h = hashlib.sha1(blob) if algo == "SHA-1" else hashlib.sha256(blob)
    return f"{algo}:{h.hexdigest()}"


def check_blob_hash(value: Any, blob: bytes) -> None:
    """Raise CryptoError unless ``value`` is ``SHA-1:``/``SHA-256:`` hex of ``blob``."""
    if not isinstance(value, str) or ":" not in value:
        raise CryptoError("blob_hash missing for a message with a blob")
    algo, _, hexdigest = value.partition(":")
    if algo not in ("SHA-1", "SHA-256"):
        raise CryptoError(f"unsupported blob_hash algorithm {algo[:20]!r}")
    if not hmac.compare_digest(blob_hash(blob, algo), f"{algo}:{hexdigest.lower()}"):
        raise CryptoError("blob_hash does not match the blob")


# ----------------------------------------------------------------------------- sign / verify

_OPTS_DETACHED = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
_OPTS_ATTACHED = [pkcs7.PKCS7Options.Binary]


def sign_detached(data: bytes, cert: x509.Certificate, key: Any) -> bytes:
    """DER SignedData over ``data``, content not included, signer cert embedded."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, _OPTS_DETACHED)
    )


def sign_attached(data: bytes, cert: x509.Certificate, key: Any) -> bytes:
    """DER SignedData with ``data`` included (the inside of an ENC1 envelope)."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, _OPTS_ATTACHED)
    )


def encrypt(data: bytes, recipient: x509.Certificate) -> bytes:
    """DER EnvelopedData, AES-128-CBC, RSA key transport to ``recipient``."""
    return (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(data)
        .add_recipient(recipient)
        .set_content_encryption_algorithm(algorithms.AES128)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def decrypt(envelope: bytes, cert: x509.Certificate, key: Any) -> bytes:
    try:
        return pkcs7.pkcs7_decrypt_der(envelope, cert, key, [])
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"cannot decrypt message: {exc}") from None


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def _find_signer_cert(sid: Any, certs: list[x509.Certificate]) -> x509.Certificate:
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer = sid.chosen["issuer"].dump()
        for c in certs:
            if c.serial_number == serial and c.issuer.public_bytes() == issuer:
                return c
    else:
        ski = sid.chosen.native
        for c in certs:
            try:
                ext = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ext.value.digest == ski:
                return c
    raise CryptoError("signer certificate not included in the signature")


def _is_ca(cert: x509.Certificate) -> bool:
    """Only a CA certificate may vouch for another (as ``openssl cms -verify`` insists)."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not basic.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.key_cert_sign)


def _check_chain(
    leaf: x509.Certificate, pool: list[x509.Certificate], cas: list[x509.Certificate], now: datetime
) -> tuple[datetime, datetime]:
    """Walk issuer links from ``leaf`` through embedded certs to one of ``cas``.
    Returns the period in which the whole walked chain is valid."""
    cert = leaf
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    for _ in range(8):
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise CryptoError(f"certificate {cert.subject.rfc4514_string()} is not valid now")
        start, end = max(start, cert.not_valid_before_utc), min(end, cert.not_valid_after_utc)
        for ca in cas:
            if ca.subject == cert.issuer:
                try:
                    cert.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return start, end
        parents = [p for p in pool if p.subject == cert.issuer and p != cert and _is_ca(p)]
        for p in parents:
            try:
                cert.verify_directly_issued_by(p)
            except (ValueError, TypeError, InvalidSignature):
                continue
            cert = p
            break
        else:
            break
    raise CryptoError("signer certificate is not issued by a trusted CA (cms-verify-ca)")


def _verify_sig(cert: x509.Certificate, algo: str, digest_name: str, sig: bytes, data: bytes) -> None:
    pub = cert.public_key()
    h = _HASHES[digest_name]()
    if isinstance(pub, rsa.RSAPublicKey):
        if algo == "rsassa_pss":
            pub.verify(sig, data, padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
        else:
            pub.verify(sig, data, padding.PKCS1v15(), h)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(sig, data, ec.ECDSA(h))
    else:
        raise CryptoError("unsupported signer key type")


_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
#: Verified signer chains remembered per codec (bounded).
CHAIN_CACHE_SIZE = 256


@dataclass(frozen=True)
class _Trusted:
    cert: x509.Certificate
    signer: Signer
    not_before: datetime
    not_after: datetime


def verify_signed(
    der: bytes,
    cas: list[x509.Certificate],
    content: bytes | None = None,
    now: datetime | None = None,
    cache: dict[bytes, _Trusted] | None = None,
) -> tuple[bytes, Signer]:
    """Verify a DER SignedData against ``cas``.

    ``content`` is the detached content; ``None`` means the content is attached.
    ``cache`` remembers signer certificates whose chain to ``cas`` was already
    verified (their validity period is still checked every time).
    Returns (content, signer).  Raises CryptoError with the reason.
    """
    now = now or datetime.now(UTC)
    try:
        info = acms.ContentInfo.load(der)
        if info["content_type"].dotted != "1.2.840.113549.1.7.2":
            raise CryptoError("signature is not a CMS SignedData")
        sd = info["content"]
        encap = sd["encap_content_info"]
        inner = encap["content"]
        attached = None if isinstance(inner, Void) else inner.native
        if content is None:
            if not isinstance(attached, bytes):
                raise CryptoError("signed data carries no content")
            content = attached
        elif attached is not None and attached != content:
            raise CryptoError("signed content differs from the message body")
        signer_infos = sd["signer_infos"]
        if not len(signer_infos):
            raise CryptoError("signature has no signer")
        si = signer_infos[0]
        raw_certs = [c.chosen for c in sd["certificates"] if c.name == "certificate"]
        certs = [x509.load_der_x509_certificate(c.dump()) for c in raw_certs]
        cert = _find_signer_cert(si["sid"], certs)
        digest_name = si["digest_algorithm"]["algorithm"].native
        if digest_name not in _HASHES:
            raise CryptoError(f"unsupported digest {digest_name}")
        sig_algo = si["signature_algorithm"]["algorithm"].native
        attrs = si["signed_attrs"]
        if not isinstance(attrs, Void) and len(attrs):
            md = ctype = None
            for a in attrs:
                oid = a["type"].dotted
                if oid == _OID_MESSAGE_DIGEST:
                    md = a["values"][0].native
                elif oid == _OID_CONTENT_TYPE:
                    ctype = a["values"][0].dotted
            if ctype is not None and ctype != encap["content_type"].dotted:
                raise CryptoError("signed content type attribute does not match")
            h = hashes.Hash(_HASHES[digest_name]())
            h.update(content)
            if md is None or not hmac.compare_digest(md, h.finalize()):
                raise CryptoError("signature digest does not match the message body")
            # Signed attributes are signed as an explicit SET OF (RFC 5652 5.4).
            signed = b"\x31" + attrs.dump()[1:]
        else:
            signed = content
        try:
            _verify_sig(cert, sig_algo, digest_name, si["signature"].native, signed)
        except InvalidSignature:
            raise CryptoError("bad signature") from None
        key = cert.public_bytes(serialization.Encoding.DER)
        trusted = cache.get(key) if cache is not None else None
        if trusted is None:
            start, end = _check_chain(cert, certs, cas, now)
            trusted = _Trusted(cert, _signer(cert), start, end)
            if cache is not None:
                if len(cache) >= CHAIN_CACHE_SIZE:
                    cache.pop(next(iter(cache)))
                cache[key] = trusted
        elif not (trusted.not_before <= now <= trusted.not_after):
            raise CryptoError(f"certificate {cert.subject.rfc4514_string()} is not valid now")
        return content, trusted.signer
    except CryptoError:
        raise
    except Exception as exc:  # malformed ASN.1 surfaces as many exception types
        raise CryptoError(f"malformed signature: {type(exc).__name__}") from None


# ----------------------------------------------------------------------------- codec


class CMSCodec:
    """Applies one server's (or client's) cms-* settings to messages."""

    def __init__(
        self,
        keystore: Path | None = None,
        sign: str | None = None,
        verify_ca: tuple[str, ...] = (),
        encrypt: str | None = None,
        decrypt: str | None = None,
        time_window: float = 0.0,
    ) -> None:
        if encrypt and not sign:
            raise ValueError("cms-encrypt needs cms-sign")
        if decrypt and not verify_ca:
            raise ValueError("cms-decrypt needs cms-verify-ca")
        ks = Keystore(keystore) if keystore is not None else None
        if (sign or verify_ca or encrypt or decrypt) and ks is None:
            raise ValueError("cms-* keys need cms-keystore")
        self.sign_cert = ks.cert(sign) if ks and sign else None
        self.sign_key = ks.key(sign) if ks and sign else None
        self.cas: list[x509.Certificate] = []
        for name in verify_ca:
            self.cas.extend(ks.certs(name))  # type: ignore[union-attr]
        self.encrypt_cert = ks.cert(encrypt) if ks and encrypt else None
        self.decrypt_cert = ks.cert(decrypt) if ks and decrypt else None
        self.decrypt_key = ks.key(decrypt) if ks and decrypt else None
        self.time_window = time_window
        self._trusted: dict[bytes, _Trusted] = {}

    @classmethod
    def from_options(cls, opts: Any) -> CMSCodec:
        """From a :class:`ccnet.cc.config.CMSOptions`."""
        return cls(opts.keystore, opts.sign, opts.verify_ca, opts.encrypt, opts.decrypt, opts.time_window)

    @property
    def signs(self) -> bool:
        return self.sign_cert is not None

    def encode(
        self,
        route: tuple[bytes, ...],
        body: Mapping[str, Any],
        blob: bytes | None = None,
    ) -> CCMessage:
        """Frame a body dict: add blob_hash, sign, encrypt as configured."""
        obj = dict(body)
        mtype = obj["req"]
        if blob is not None and self.signs:
            obj["blob_hash"] = blob_hash(blob)
        data = encode_body(obj)
        if self.encrypt_cert is not None:
            inner = sign_attached(data, self.sign_cert, self.sign_key)  # type: ignore[arg-type]
            return CCMessage(route, mtype, ENC1, encrypt(inner, self.encrypt_cert), blob)
        sig = sign_detached(data, self.sign_cert, self.sign_key) if self.signs else b""  # type: ignore[arg-type]
        return CCMessage(route, mtype, data, sig, blob)

    def decode(
        self, msg: CCMessage, now: float, cert_time: datetime | None = None
    ) -> tuple[dict[str, Any], Signer | None]:
        """Decrypt/verify/validate a received message as the original receiver does.

        ``now`` (epoch seconds, the reactor clock) is checked against the body's
        ``time`` for cms-time-window; certificates are checked at ``cert_time``
        (default: the wall clock).  Raises CryptoError (crypto or policy) or
        BodyError (payload).
        """
        signer: Signer | None = None
        when = cert_time
        if self.decrypt_cert is not None:
            if not msg.encrypted:
                raise CryptoError("message is not encrypted (cms-decrypt is set)")
            inner = decrypt(msg.signature, self.decrypt_cert, self.decrypt_key)
            data, signer = verify_signed(inner, self.cas, None, when, self._trusted)
        elif msg.encrypted:
            raise CryptoError("encrypted message, but this server has no cms-decrypt")
        elif self.cas:
            if not msg.signature:
                raise CryptoError("message is not signed (cms-verify-ca is set)")
            data, signer = verify_signed(msg.signature, self.cas, msg.body, when, self._trusted)
        else:
            data = msg.body
        obj = msg.payload() if data is msg.body else decode_body(data, msg.type)
        if self.time_window > 0:
            t = obj.get("time")
            if not isinstance(t, (int, float)) or abs(now - float(t)) > self.time_window:
                raise CryptoError("message time outside cms-time-window")
        if msg.blob is not None:
            if self.cas or msg.signature:
                check_blob_hash(obj.get("blob_hash"), msg.blob)
        elif obj.get("blob_hash"):
            raise CryptoError("blob_hash given but the message has no blob")
        return obj, signer


__all__ += ["BodyError"]
