"""CC message crypto: CMS/PKCS#7 signatures and envelopes (pure, no Twisted).

Same structures as the original (M2Crypto SMIME, DER):

* signed: signature frame = DER SignedData, detached, binary, signer cert
  embedded, over the exact json frame bytes;
* signed + encrypted: json frame = ``ENC1``, signature frame = DER
  EnvelopedData (AES-128-CBC) around an attached SignedData of the json;
* a blob is not signed; ``blob_hash = "SHA-1:<hex>"`` is put into the json
  before signing.

``cryptography`` builds the structures and decrypts; it cannot verify
SignedData, so the signature is checked here with ``asn1crypto`` parsing and
``cryptography`` signature checks, and the signer certificate with
``cryptography.x509.verification`` (chain to ``cms-verify-ca``, validity, path length,
KeyUsage/EKU) plus the CRLs (``cms-crl``, else ``[tls] crl``), as strict as the TLS
listeners.  ``openssl cms`` reads and writes the same structures (interop is tested).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Mapping, Sequence
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
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from ccnet.cc.message import ENC1, BodyError, CCMessage, decode_body, encode_body
from ccnet.config import SetupError

__all__ = [
    "CryptoError",
    "Keystore",
    "ReplayCache",
    "key_problem",
    "load_crls",
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


#: Extended key usages that let a certificate sign CC messages (TLS clients must have
#: clientAuth; S/MIME signers emailProtection). A certificate without EKU may sign.
SIGNING_EKUS = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION,
                          ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE})

#: Longest chain (signer, intermediates, anchor) accepted.
MAX_CHAIN_DEPTH = 8


def _signer_eku(policy: Any, cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None) -> None:
    if ext is not None and not SIGNING_EKUS & set(ext):
        raise ValueError("signer certificate's extended key usage allows neither clientAuth nor emailProtection")


def _signer_key_usage(policy: Any, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not (ext.digital_signature or ext.content_commitment):
        raise ValueError("signer certificate's key usage does not allow digital signatures")


def _ca_key_usage(policy: Any, cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    # As OpenSSL: a CA without KeyUsage may sign certificates; one with it needs keyCertSign.
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("issuer's key usage does not allow signing certificates")


def _policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    """(CA, signer) policies: the Web PKI's, with what mutual-TLS PKIs (ccnet-pki, grid CAs)
    do not carry made optional (subjectAltName, authorityKeyIdentifier) and the signer's
    key usages as above."""
    agnostic = xv.Criticality.AGNOSTIC
    ca = (xv.ExtensionPolicy.webpki_defaults_ca()
          .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
          .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage))
    ee = (xv.ExtensionPolicy.webpki_defaults_ee()
          .may_be_present(x509.SubjectAlternativeName, agnostic, None)
          .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
          .may_be_present(x509.ExtendedKeyUsage, agnostic, _signer_eku)
          .may_be_present(x509.KeyUsage, agnostic, _signer_key_usage))
    return ca, ee


def load_crls(paths: Sequence[Path]) -> list[x509.CertificateRevocationList]:
    """Every CRL in the files (PEM blocks or one DER CRL each)."""
    crls: list[x509.CertificateRevocationList] = []
    for path in paths:
        data = Path(path).read_bytes()
        marker = b"-----BEGIN X509 CRL-----"
        if marker not in data:
            crls.append(x509.load_der_x509_crl(data))
            continue
        crls += [x509.load_pem_x509_crl(marker + block) for block in data.split(marker)[1:]]
    return crls


def _check_chain(
    leaf: x509.Certificate, pool: list[x509.Certificate], cas: list[x509.Certificate], now: datetime,
    crls: Sequence[x509.CertificateRevocationList] | None = None,
) -> tuple[list[x509.Certificate], datetime, datetime]:
    """Verify ``leaf`` (with the embedded ``pool`` as intermediates) up to one of ``cas``.
    Returns the chain (leaf first) and the period in which all of it is valid."""
    if not cas:
        raise CryptoError("signer certificate is not issued by a trusted CA (cms-verify-ca)")
    ca_policy, ee_policy = _policies()
    verifier = (xv.PolicyBuilder().store(xv.Store(cas)).time(now).max_chain_depth(MAX_CHAIN_DEPTH)
                .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy).build_client_verifier())
    try:
        chain = verifier.verify(leaf, [c for c in pool if c != leaf]).chain
    except xv.VerificationError as exc:
        raise CryptoError(f"signer certificate {leaf.subject.rfc4514_string()} refused: {_why(exc)}") from None
    if crls is not None:
        _check_revocation(chain, crls, now)
    start = max(c.not_valid_before_utc for c in chain)
    end = min(c.not_valid_after_utc for c in chain)
    return chain, start, end


def _why(exc: Exception) -> str:
    text = str(exc).split(" (encountered processing")[0]
    for prefix in ("validation failed: ", "candidates exhausted: "):
        text = text.removeprefix(prefix)
    if "not valid at validation time" in text:
        return "certificate is expired or not yet valid"
    if "no interior errors" in text or not text:
        return "not issued by a trusted CA (cms-verify-ca)"
    return text


def _check_revocation(chain: list[x509.Certificate], crls: Sequence[x509.CertificateRevocationList],
                      now: datetime) -> None:
    """As TLS with a CRL (OpenSSL's CRL_CHECK): the signer's issuer must have a current CRL
    and the signer must not be on it; CRLs of the CAs above are checked when present."""
    for depth, (cert, issuer) in enumerate(zip(chain, chain[1:], strict=False)):
        found = False
        for crl in crls:
            if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
            found = True
            next_update = crl.next_update_utc
            if next_update is not None and next_update < now:
                raise CryptoError(f"the CRL of {issuer.subject.rfc4514_string()} has expired")
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise CryptoError(f"signer certificate {cert.subject.rfc4514_string()} is revoked")
        if depth == 0 and not found:
            raise CryptoError(f"no CRL for the signer's issuer {issuer.subject.rfc4514_string()}")


def key_problem(cert: x509.Certificate, use: str) -> str | None:
    """Why ``cert`` cannot be used for ``use`` (``sign``, ``encrypt``, ``decrypt``), or None.

    CMS key transport (cms-encrypt/cms-decrypt) is RSA only in ``cryptography``; signing
    takes RSA or EC keys."""
    key = cert.public_key()
    kind = type(key).__name__.replace("_", "").replace("PublicKey", "") or "unknown"
    if use in ("encrypt", "decrypt") and not isinstance(key, rsa.RSAPublicKey):
        return f"an RSA certificate (CMS encryption needs RSA key transport), not a {kind} key"
    if use == "sign" and not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return f"an RSA or EC certificate, not a {kind} key"
    return None


class ReplayCache:
    """Signatures seen within the time window: a captured message cannot run twice."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: set[bytes] = set()
        self._order: deque[tuple[float, bytes]] = deque()

    def check(self, key: bytes, now: float) -> None:
        """Remember ``key``; CryptoError when it was already seen within the window."""
        while self._order and self._order[0][0] < now:
            self._seen.discard(self._order.popleft()[1])
        if key in self._seen:
            raise CryptoError("replayed message: this signature was already received within cms-time-window")
        self._seen.add(key)
        self._order.append((now + 2 * self.window, key))

    def __len__(self) -> int:
        return len(self._seen)


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
    chain: tuple[x509.Certificate, ...]
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class Verified:
    content: bytes
    signer: Signer
    signature: bytes  # the signature value: what a replay repeats


def verify_signed(
    der: bytes,
    cas: list[x509.Certificate],
    content: bytes | None = None,
    now: datetime | None = None,
    cache: dict[bytes, _Trusted] | None = None,
    crls: Sequence[x509.CertificateRevocationList] | None = None,
) -> tuple[bytes, Signer]:
    """Verify a DER SignedData against ``cas`` (and ``crls`` when given).

    ``content`` is the detached content; ``None`` means the content is attached.
    ``cache`` remembers signer certificates whose chain to ``cas`` was already
    verified (their validity period and revocation are still checked every time).
    Returns (content, signer).  Raises CryptoError with the reason.
    """
    v = _verify(der, cas, content, now, cache, crls)
    return v.content, v.signer


def _verify(
    der: bytes,
    cas: list[x509.Certificate],
    content: bytes | None,
    now: datetime | None,
    cache: dict[bytes, _Trusted] | None,
    crls: Sequence[x509.CertificateRevocationList] | None,
) -> Verified:
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
        signature = si["signature"].native
        try:
            _verify_sig(cert, sig_algo, digest_name, signature, signed)
        except InvalidSignature:
            raise CryptoError("bad signature") from None
        key = cert.public_bytes(serialization.Encoding.DER)
        trusted = cache.get(key) if cache is not None else None
        if trusted is None:
            chain, start, end = _check_chain(cert, certs, cas, now, crls)
            trusted = _Trusted(cert, _signer(cert), tuple(chain), start, end)
            if cache is not None:
                if len(cache) >= CHAIN_CACHE_SIZE:
                    cache.pop(next(iter(cache)))
                cache[key] = trusted
        else:
            if not (trusted.not_before <= now <= trusted.not_after):
                raise CryptoError(f"signer certificate {cert.subject.rfc4514_string()} refused: "
                                  "certificate is expired or not yet valid")
            if crls is not None:
                _check_revocation(list(trusted.chain), crls, now)
        return Verified(content, trusted.signer, bytes(signature))
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
        crl: Sequence[Path] = (),
    ) -> None:
        if encrypt and not sign:
            raise SetupError("cms-encrypt needs cms-sign")
        if decrypt and not verify_ca:
            raise SetupError("cms-decrypt needs cms-verify-ca")
        ks = Keystore(keystore) if keystore is not None else None
        if (sign or verify_ca or encrypt or decrypt) and ks is None:
            raise SetupError("cms-* keys need cms-keystore")
        self.sign_cert = ks.cert(sign) if ks and sign else None
        self.sign_key = ks.key(sign) if ks and sign else None
        self.cas: list[x509.Certificate] = []
        for name in verify_ca:
            self.cas.extend(ks.certs(name))  # type: ignore[union-attr]
        self.encrypt_cert = ks.cert(encrypt) if ks and encrypt else None
        self.decrypt_cert = ks.cert(decrypt) if ks and decrypt else None
        self.decrypt_key = ks.key(decrypt) if ks and decrypt else None
        for use, entry, cert in (("sign", sign, self.sign_cert), ("encrypt", encrypt, self.encrypt_cert),
                                 ("decrypt", decrypt, self.decrypt_cert)):
            problem = key_problem(cert, use) if cert is not None else None
            if problem is not None:
                raise SetupError(f"cms-{use} = {entry}: expected {problem}")
        self.time_window = time_window
        self.crl_paths = tuple(crl)
        self.crls: list[x509.CertificateRevocationList] | None = load_crls(self.crl_paths) if crl else None
        self._trusted: dict[bytes, _Trusted] = {}
        self.replays = ReplayCache(time_window)

    @classmethod
    def from_options(cls, opts: Any) -> CMSCodec:
        """From a :class:`ccnet.cc.config.CMSOptions`."""
        return cls(opts.keystore, opts.sign, opts.verify_ca, opts.encrypt, opts.decrypt, opts.time_window,
                   opts.crl)

    def reload_crls(self) -> None:
        """Re-read the CRL files (SIGHUP); a broken file raises and keeps the old CRLs."""
        if self.crl_paths:
            self.crls = load_crls(self.crl_paths)

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
        verified: Verified | None = None
        if self.decrypt_cert is not None:
            if not msg.encrypted:
                raise CryptoError("message is not encrypted (cms-decrypt is set)")
            inner = decrypt(msg.signature, self.decrypt_cert, self.decrypt_key)
            verified = _verify(inner, self.cas, None, when, self._trusted, self.crls)
            data = verified.content
        elif msg.encrypted:
            raise CryptoError("encrypted message, but this server has no cms-decrypt")
        elif self.cas:
            if not msg.signature:
                raise CryptoError("message is not signed (cms-verify-ca is set)")
            verified = _verify(msg.signature, self.cas, msg.body, when, self._trusted, self.crls)
            data = msg.body
        else:
            data = msg.body
        if verified is not None:
            signer = verified.signer
        obj = msg.payload() if data is msg.body else decode_body(data, msg.type)
        if self.time_window > 0:
            t = obj.get("time")
            if not isinstance(t, (int, float)) or abs(now - float(t)) > self.time_window:
                raise CryptoError("message time outside cms-time-window")
            if verified is not None:
                # Fresh and never seen: a captured signed message cannot be sent again
                # while its time is still inside the window (after it, the window refuses it).
                self.replays.check(hashlib.sha256(verified.signature).digest(), now)
        if msg.blob is not None:
            if self.cas or msg.signature:
                check_blob_hash(obj.get("blob_hash"), msg.blob)
        elif obj.get("blob_hash"):
            raise CryptoError("blob_hash given but the message has no blob")
        return obj, signer


__all__ += ["BodyError"]
