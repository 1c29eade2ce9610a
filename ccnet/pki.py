"""``ccnet-pki``: a small certificate authority for ccnet deployments and tests.

Layout (compatible with the CC keystore): ``DIR/ca.crt``, ``DIR/private/ca.key``,
``DIR/NAME.crt``, ``DIR/private/NAME.key``, ``DIR/crl.pem`` and ``DIR/index.json``
(issued serials and revocations). Keys are written 0600. Certificates carry SANs and
the extended key usages their role needs; ``--text-preamble`` writes the
``openssl x509 -text``-style dump before the PEM block, from which the mPlane SDK reads
its own identity.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccnet.identity import dn_slash

__all__ = ["KINDS", "PKI", "PKIError", "main", "parse_subject", "text_dump"]

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
EMAIL = ExtendedKeyUsageOID.EMAIL_PROTECTION

# kind -> (extended key usages, organizational unit, gets default loopback SANs)
KINDS: dict[str, tuple[tuple[x509.ObjectIdentifier, ...], str, bool]] = {
    "supervisor": ((SERVER, CLIENT), "Supervisors", True),
    "component": ((SERVER, CLIENT), "Components", True),
    "client": ((CLIENT,), "Clients", False),
    "server": ((SERVER, CLIENT), "Servers", True),
    "host": ((SERVER, CLIENT), "Hosts", True),
    # CC service certificates sign and encrypt CMS messages (openssl cms checks smime purpose).
    "service": ((SERVER, CLIENT, EMAIL), "Services", True),
}

_ATTR = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
    "emailAddress": NameOID.EMAIL_ADDRESS,
}


class PKIError(Exception):
    """A PKI operation that cannot be done, explained."""


def parse_subject(text: str) -> x509.Name:
    """``/C=IT/O=mPlane/CN=x`` → Name."""
    if not text.startswith("/"):
        raise PKIError(f"subject in slash form /C=../O=../CN=.., not {text!r}")
    attrs = []
    for part in text.strip("/").split("/"):
        key, sep, value = part.partition("=")
        if not sep or key not in _ATTR or not value:
            raise PKIError(f"subject attribute {part!r}: expected one of {', '.join(_ATTR)} with a value")
        attrs.append(x509.NameAttribute(_ATTR[key], value))
    return x509.Name(attrs)


def _parse_san(text: str) -> x509.GeneralName:
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise PKIError(f"SAN {text!r}: expected DNS:name or IP:address")
    if kind.upper() == "DNS":
        return x509.DNSName(value)
    if kind.upper() == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise PKIError(f"SAN {text!r}: not an IP address") from None
    if kind.lower() == "email":
        return x509.RFC822Name(value)
    if kind.upper() == "URI":
        return x509.UniformResourceIdentifier(value)
    raise PKIError(f"SAN {text!r}: expected DNS:, IP:, email: or URI:")


def _name_text(name: x509.Name) -> str:
    return ", ".join(
        f"{_short(a.oid)} = {a.value!s}" for rdn in name.rdns for a in rdn
    )


def _short(oid: x509.ObjectIdentifier) -> str:
    for key, value in _ATTR.items():
        if value == oid:
            return key
    return oid.dotted_string


def text_dump(cert: x509.Certificate) -> str:
    """A dump in the layout of ``openssl x509 -noout -text`` (the fields the SDK and humans read)."""
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        key_line = f"            Public Key Algorithm: rsaEncryption\n                Public-Key: ({pub.key_size} bit)"
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        key_line = f"            Public Key Algorithm: id-ecPublicKey\n                Public-Key: ({pub.key_size} bit)"
    else:
        key_line = "            Public Key Algorithm: unknown"
    lines = [
        "Certificate:",
        "    Data:",
        "        Version: 3 (0x2)",
        f"        Serial Number: {cert.serial_number} ({cert.serial_number:#x})",
        f"        Signature Algorithm: {cert.signature_algorithm_oid._name}",
        f"        Issuer: {_name_text(cert.issuer)}",
        "        Validity",
        f"            Not Before: {cert.not_valid_before_utc:%b %d %H:%M:%S %Y} GMT",
        f"            Not After : {cert.not_valid_after_utc:%b %d %H:%M:%S %Y} GMT",
        f"        Subject: {_name_text(cert.subject)}",
        "        Subject Public Key Info:",
        key_line,
        "        X509v3 extensions:",
    ]
    for ext in cert.extensions:
        critical = " critical" if ext.critical else ""
        lines.append(f"            {ext.oid._name}:{critical}")
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            parts = []
            for general in value:
                if isinstance(general, x509.DNSName):
                    parts.append(f"DNS:{general.value}")
                elif isinstance(general, x509.IPAddress):
                    parts.append(f"IP Address:{general.value}")
                else:
                    parts.append(str(general.value))
            lines.append("                " + ", ".join(parts))
        elif isinstance(value, x509.ExtendedKeyUsage):
            lines.append("                " + ", ".join(u._name for u in value))
        elif isinstance(value, x509.BasicConstraints):
            lines.append(f"                CA:{'TRUE' if value.ca else 'FALSE'}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Issued:
    name: str
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate


class PKI:
    """A certificate authority kept in one folder."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    # -- paths ---------------------------------------------------------------
    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.dir / "private" / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    def cert_path(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key_path(self, name: str) -> Path:
        return self.dir / "private" / f"{name}.key"

    def exists(self) -> bool:
        return self.ca_cert_path.exists() and self.ca_key_path.exists()

    # -- index ---------------------------------------------------------------
    def _index(self) -> dict[str, object]:
        if self.index_path.exists():
            return json.loads(self.index_path.read_text())  # type: ignore[no-any-return]
        return {"issued": {}, "revoked": {}}

    def _save_index(self, index: dict[str, object]) -> None:
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
        os.replace(tmp, self.index_path)

    # -- CA ------------------------------------------------------------------
    def init(self, subject: str = "/C=IT/O=ccnet/CN=ccnet dev CA", days: int = 3650, force: bool = False) -> Issued:
        if self.exists() and not force:
            raise PKIError(f"a CA already exists in {self.dir} (use --force to replace it)")
        (self.dir / "private").mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "private", 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = parse_subject(subject)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._write_key(self.ca_key_path, key)
        self.ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._save_index({"issued": {}, "revoked": {}})
        self.crl()
        return Issued("ca", self.ca_cert_path, self.ca_key_path, cert)

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.exists():
            raise PKIError(f"no CA in {self.dir}: run 'ccnet-pki --dir {self.dir} init' first")
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        return cert, key  # type: ignore[return-value]

    @staticmethod
    def _write_key(path: Path, key: object) -> None:
        pem = key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.chmod(path, 0o600)

    # -- leaf certificates ---------------------------------------------------
    def issue(
        self,
        kind: str,
        name: str,
        sans: Sequence[str] = (),
        days: int = 825,
        subject: str | None = None,
        text_preamble: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        rsa_bits: int | None = None,
    ) -> Issued:
        if kind not in KINDS:
            raise PKIError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        if not name or "/" in name or name.startswith("."):
            raise PKIError(f"name {name!r}: expected a plain file name")
        ca_cert, ca_key = self._ca()
        usages, unit, loopback = KINDS[kind]
        subject_name = parse_subject(subject or f"/C=IT/O=ccnet/OU={unit}/CN={name}")
        general = [_parse_san(s) for s in sans]
        if not general and loopback:
            general = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                       x509.IPAddress(ipaddress.ip_address("::1"))]
            if all(c.isalnum() or c in "-." for c in name) and name != "localhost":
                general.insert(0, x509.DNSName(name))
        # RSA keys where CMS key transport (CC encryption) needs them; EC elsewhere.
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if rsa_bits or kind == "service":
            key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits or 2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start = not_before or (now - dt.timedelta(minutes=5))
        end = not_after or (now + dt.timedelta(days=days))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False, key_agreement=isinstance(key, ec.EllipticCurvePrivateKey),
                    key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if general:
            builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        self._write_key(self.key_path(name), key)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        text = (text_dump(cert) + pem) if text_preamble else pem
        self.cert_path(name).write_text(text)
        index = self._index()
        issued = index.setdefault("issued", {})
        assert isinstance(issued, dict)
        issued[str(cert.serial_number)] = {"name": name, "kind": kind, "subject": dn_slash(cert.subject)}
        self._save_index(index)
        return Issued(name, self.cert_path(name), self.key_path(name), cert)

    # -- revocation ----------------------------------------------------------
    def revoke(self, name: str) -> x509.Certificate:
        path = self.cert_path(name)
        if not path.exists():
            raise PKIError(f"no certificate {path}")
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        index = self._index()
        revoked = index.setdefault("revoked", {})
        assert isinstance(revoked, dict)
        revoked[str(cert.serial_number)] = {
            "name": name,
            "date": dt.datetime.now(dt.UTC).isoformat(),
        }
        self._save_index(index)
        self.crl()
        return cert

    def crl(self, days: int = 30) -> Path:
        ca_cert, ca_key = self._ca()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        revoked = self._index().get("revoked", {})
        assert isinstance(revoked, dict)
        for serial, info in revoked.items():
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial))
                .revocation_date(dt.datetime.fromisoformat(info["date"]))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(ca_key, hashes.SHA256())
        self.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    def show(self, name: str) -> str:
        path = self.ca_cert_path if name == "ca" else self.cert_path(name)
        if not path.exists():
            raise PKIError(f"no certificate {path}")
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        revoked = self._index().get("revoked", {})
        status = "REVOKED" if isinstance(revoked, dict) and str(cert.serial_number) in revoked else "valid"
        return text_dump(cert) + f"Status: {status}\nSlash DN: {dn_slash(cert.subject)}\n"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccnet-pki", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("CCNET_PKI_DIR", "pki/dev"),
                        help="PKI folder (default pki/dev or $CCNET_PKI_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the certificate authority")
    init.add_argument("--subject", default="/C=IT/O=ccnet/CN=ccnet dev CA")
    init.add_argument("--days", type=int, default=3650)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    issue = sub.add_parser("issue", help="issue a certificate")
    issue.add_argument("kind", choices=sorted(KINDS))
    issue.add_argument("name")
    issue.add_argument("--san", action="append", default=[], help="DNS:name or IP:address (repeatable)")
    issue.add_argument("--days", type=int, default=825)
    issue.add_argument("--subject", help="slash-form subject, default /C=IT/O=ccnet/OU=<Kind>s/CN=NAME")
    issue.add_argument("--text-preamble", action="store_true",
                       help="write the openssl -text dump before the PEM (mPlane SDK identity)")
    issue.add_argument("--rsa", type=int, metavar="BITS", help="RSA key of BITS instead of EC P-256")
    revoke = sub.add_parser("revoke", help="revoke a certificate and rewrite the CRL")
    revoke.add_argument("name")
    crl = sub.add_parser("crl", help="rewrite the CRL")
    crl.add_argument("--days", type=int, default=30)
    show = sub.add_parser("show", help="print a certificate ('ca' for the CA)")
    show.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    pki = PKI(args.dir)
    try:
        if args.command == "init":
            issued = pki.init(args.subject, args.days, args.force)
            print(f"CA written: {issued.cert_path} (key {issued.key_path})")
        elif args.command == "issue":
            issued = pki.issue(args.kind, args.name, args.san, args.days, args.subject,
                               args.text_preamble, rsa_bits=args.rsa)
            print(f"{args.kind} certificate written: {issued.cert_path} (key {issued.key_path})")
        elif args.command == "revoke":
            cert = pki.revoke(args.name)
            print(f"revoked serial {cert.serial_number}; CRL written to {pki.crl_path}")
        elif args.command == "crl":
            print(f"CRL written to {pki.crl(args.days)}")
        elif args.command == "show":
            sys.stdout.write(pki.show(args.name))
    except PKIError as exc:
        print(f"ccnet-pki: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
