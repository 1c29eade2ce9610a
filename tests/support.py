"""Shared test fixtures: the suite-wide PKI and a real daemon in a subprocess."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccnet.pki import PKI

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PG_DSN = os.environ.get("CCNET_TEST_PG_DSN", "postgresql://postgres@127.0.0.1/test")


@dataclass
class TestPKI:
    """Certificates for the whole suite, made once per trial run (per worker folder)."""

    dir: Path
    other_dir: Path
    pki: PKI

    @property
    def ca_cert(self) -> Path:
        return self.pki.ca_cert_path

    @property
    def crl(self) -> Path:
        return self.pki.crl_path

    @property
    def other_ca_cert(self) -> Path:
        return self.other_dir / "ca.crt"

    def cert(self, name: str) -> Path:
        if name == "foreign":
            return self.other_dir / "foreign.crt"
        return self.pki.cert_path(name)

    def key(self, name: str) -> Path:
        if name == "foreign":
            return self.other_dir / "private" / "foreign.key"
        return self.pki.key_path(name)

    def pair(self, name: str) -> tuple[str, str]:
        """(cert, key) as strings, the shape requests' ``cert=`` wants."""
        return str(self.cert(name)), str(self.key(name))


_PKI: TestPKI | None = None
_PKI_LOCK = threading.Lock()


def test_pki() -> TestPKI:
    """The suite-wide PKI under the trial working folder, created on first use."""
    global _PKI
    with _PKI_LOCK:
        base = Path.cwd() / "suite-pki"
        if _PKI is not None and _PKI.dir == base / "main" and (base / "done").exists():
            return _PKI
        pki = PKI(base / "main")
        other = PKI(base / "other")
        if not (base / "done").exists():
            now = dt.datetime.now(dt.UTC)
            pki.init("/C=IT/O=ccnet/CN=ccnet test CA", force=True)
            pki.issue("server", "server", ["DNS:localhost", "IP:127.0.0.1", "IP:::1"])
            pki.issue("supervisor", "supervisor", text_preamble=True)
            pki.issue("component", "component", text_preamble=True)
            pki.issue("component", "component2", text_preamble=True)  # a second probe host
            pki.issue("client", "client", text_preamble=True)
            pki.issue("client", "admin", text_preamble=True)
            pki.issue("client", "expired", not_before=now - dt.timedelta(days=10),
                      not_after=now - dt.timedelta(days=1))
            pki.issue("client", "notyet", not_before=now + dt.timedelta(days=1),
                      not_after=now + dt.timedelta(days=10))
            pki.issue("client", "revoked")
            pki.revoke("revoked")
            # A server-only certificate presented as a client: wrong EKU.
            pki.issue("server", "serveronly", subject="/C=IT/O=ccnet/OU=Servers/CN=serveronly")
            _rewrite_eku_server_only(pki, "serveronly")
            pki.issue("service", "ccservice")
            pki.issue("server", "wronghost", ["DNS:elsewhere.example"])
            other.init("/C=IT/O=Elsewhere/CN=other CA", force=True)
            other.issue("client", "foreign")
            (base / "done").write_text("ok")
        _PKI = TestPKI(base / "main", base / "other", pki)
        return _PKI


def _rewrite_eku_server_only(pki: PKI, name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = x509.load_pem_x509_certificate(pki.cert_path(name).read_bytes())
    key = serialization.load_pem_private_key(pki.key_path(name).read_bytes(), None)
    ca_key = serialization.load_pem_private_key(pki.ca_key_path.read_bytes(), None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())  # type: ignore[arg-type,union-attr]
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    new = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    pki.cert_path(name).write_bytes(new.public_bytes(serialization.Encoding.PEM))


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def start_service(case: Any, text: str, folder: Path) -> Any:
    """The daemon's service tree built in this process from INI ``text`` (as if read from
    ``folder/ccnet.ini``), started and stopped at ``case``'s cleanup; a Deferred that
    fires with it once every listener serves."""
    from twisted.internet import defer, reactor

    from ccnet.config import IniFile, parse_config
    from ccnet.service import make_service

    service = make_service(parse_config(IniFile.from_string(text, folder / "ccnet.ini")), reactor)
    service.startService()
    # A test may stop it itself (a restart): stop it here only if it still runs.
    case.addCleanup(lambda: service.stopService() if service.running else None)

    async def ready() -> Any:
        await service.ready
        return service

    return defer.ensureDeferred(ready())


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for tools that must be told a port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tls_section(pki: TestPKI, name: str = "server", crl: bool = True) -> str:
    lines = [
        "[tls]",
        f"ca = {pki.ca_cert}",
        f"cert = {pki.cert(name)}",
        f"key = {pki.key(name)}",
    ]
    if crl:
        lines.append(f"crl = {pki.crl}")
    return "\n".join(lines) + "\n"


@dataclass
class Daemon:
    """``twistd -n ccnet`` in a subprocess, with its log lines collected."""

    config: Path
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)  # raw output
    messages: list[str] = field(default_factory=list)  # JSON events formatted as text
    ports: dict[str, int] = field(default_factory=dict)

    def _reader(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("{"):
                try:
                    from twisted.logger import eventFromJSON, formatEvent

                    line = formatEvent(eventFromJSON(line))
                except ValueError:
                    pass
            self.messages.append(line)
            m = re.search(r"ccnet (\S+) listening on \S+:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(" ready: " in line for line in self.messages):
                return
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError("daemon exited early:\n" + "".join(self.lines))
            time.sleep(0.05)
        raise RuntimeError("daemon not ready in time:\n" + "".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return "\n".join(m.rstrip("\n") for m in self.messages)


def twistd_command(config: Path, *extra: str) -> list[str]:
    return [
        str(VENV_BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "ccnet", "--config", str(config), *extra
    ]


def start_daemon(config_text: str, folder: Path, *extra: str, env: dict[str, str] | None = None,
                 wait: bool = True) -> Daemon:
    """Write ``config_text`` to ``folder/ccnet.ini`` and run the daemon on it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "ccnet.ini"
    config.write_text(config_text)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO)
    full_env.pop("NOTIFY_SOCKET", None)
    if env:
        full_env.update(env)
    process = subprocess.Popen(
        twistd_command(config, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=str(folder), env=full_env,
    )
    daemon = Daemon(config, process)
    threading.Thread(target=daemon._reader, daemon=True).start()
    if wait:
        daemon.wait_ready()
    return daemon


def pg_url(dsn: str, port: int | None = None, dbname: str | None = None) -> str:
    """``dsn`` with its port and/or database name replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    netloc = parts.netloc
    if port is not None:
        host = parts.hostname or "127.0.0.1"
        auth = netloc.rpartition("@")[0]
        netloc = (auth + "@" if auth else "") + f"{host}:{port}"
    path = f"/{dbname}" if dbname is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


def pg_port(dsn: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(dsn).port or 5432


class TCPProxy:
    """A TCP forwarder (to PostgreSQL in the tests) that a test can cut, stall and restore.

    ``cut`` closes the port and resets every connection (a server that went away);
    ``stall`` keeps accepting but forwards nothing more (a server that hangs);
    ``restore`` forwards again, on the same port.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        from twisted.protocols import portforward

        owner = self

        class Server(portforward.ProxyServer):
            def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
                owner.connections.append(self)
                if owner.stalled:
                    self.transport.pauseProducing()  # accepted, never answered
                    self.held = True
                    return
                super().connectionMade()

            def connectionLost(self, reason: object) -> None:  # noqa: N802 (Twisted API)
                if self in owner.connections:
                    owner.connections.remove(self)
                super().connectionLost(reason)  # type: ignore[arg-type]

        self.factory = portforward.ProxyFactory(host, port)
        self.factory.protocol = Server
        self.port: object = None
        self.number = 0
        self.stalled = False
        self.connections: list[object] = []

    def start(self) -> None:
        from twisted.internet import reactor

        self.port = reactor.listenTCP(self.number, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.number = self.port.getHost().port  # type: ignore[attr-defined]

    def stop(self) -> object:
        from twisted.internet import defer

        for p in list(self.connections):
            p.transport.abortConnection()  # type: ignore[attr-defined]
        if self.port is not None and self.port.connected:  # type: ignore[attr-defined]
            return self.port.stopListening()  # type: ignore[attr-defined]
        return defer.succeed(None)

    def cut(self) -> object:
        return self.stop()

    def stall(self) -> None:
        self.stalled = True
        for p in self.connections:
            p.transport.pauseProducing()  # type: ignore[attr-defined]

    def restore(self) -> None:
        self.stalled = False
        if self.port is None or not self.port.connected:  # type: ignore[attr-defined]
            self.start()
        for p in list(self.connections):
            if getattr(p, "held", False):
                p.transport.abortConnection()  # type: ignore[attr-defined]
            else:
                p.transport.resumeProducing()  # type: ignore[attr-defined]


def pg_reachable() -> str | None:
    """Why PostgreSQL at CCNET_TEST_PG_DSN cannot be used, or None when it can."""
    import psycopg

    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_DSN}: {exc}"
    return None


def create_database() -> str:
    """A new, empty database on CCNET_TEST_PG_DSN's server; returns its DSN (drop it with
    :func:`drop_database`)."""
    import uuid

    import psycopg

    name = f"ccnet_fresh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return pg_url(PG_DSN, dbname=name)


def drop_database(dsn: str) -> None:
    from urllib.parse import urlsplit

    import psycopg

    name = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def proxied_database(case: Any) -> tuple[str, str, TCPProxy]:
    """For ``case``: a fresh database and a :class:`TCPProxy` to its server, both gone at
    cleanup; ``(direct DSN, DSN through the proxy, proxy)``. Skips without PostgreSQL."""
    from twisted.trial.unittest import SkipTest

    why = pg_reachable()
    if why is not None:
        raise SkipTest(why)
    dsn = create_database()
    case.addCleanup(drop_database, dsn)
    proxy = TCPProxy(pg_port(PG_DSN))
    proxy.start()
    case.addCleanup(proxy.stop)
    return dsn, pg_url(dsn, port=proxy.number), proxy
