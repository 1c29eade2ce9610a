"""Shared pieces of the operations/reliability tests: a daemon running all three protocols.

No tests here: a slow RPC service (for drain tests), the config, and small blocking
clients (requests, pyzmq) that the tests run in threads.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import requests
import zmq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from ccnet.cc.message import make_message, parse
from ccnet.rpc import S_OK, RPCService
from tests.support import Daemon, TestPKI, free_port, start_daemon, tls_section
from tests.test_mplane_support import PING_CAP, envelope

__all__ = ["SlowService", "OpsDaemon", "ops_config", "CAPS", "USERS"]

USERS = """\
[user:client]
dn = /C=IT/O=ccnet/OU=Clients/CN=client
group = users
properties = NormalUser, guest

[user:admin]
dn = /C=IT/O=ccnet/OU=Clients/CN=admin
group = admins
properties = NormalUser, CSAdministrator, admin, guest

[user:component]
dn = /C=IT/O=ccnet/OU=Components/CN=component
group = probes
properties = component, probe
"""

CAPS = "ping-average: guest\n"

SPEC = {
    "specification": "measure", "version": 1, "registry": "http://ict-mplane.eu/registry/core",
    "label": "ping-average-ip4-0", "token": "c0ffee00c0ffee00c0ffee00c0ffee00", "when": "now + 2s / 1s",
    "parameters": {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"},
    "results": ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
                "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"],
}
MPLANE_JSON = "application/x-mplane+json"


class SlowService(RPCService):
    """``Test/Slow``: ``sleep(seconds)`` answers after a reactor delay (nothing blocks)."""

    auth_sleep = ["all"]
    types_sleep = [(int, float)]

    def export_sleep(self, seconds: float) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.log.info("slow call started: sleep {seconds}", seconds=seconds)
        clock = getattr(self.runtime, "reactor", reactor)
        clock.callLater(float(seconds), d.callback, S_OK(seconds))
        return d


def ops_config(pki: TestPKI, cc_port: int, grace: float = 5.0, store: str = "", extra: str = "",
               supervisor: str = "") -> str:
    return (
        f"[ccnet]\nstate-dir = var\nusers = users.conf\nshutdown-grace = {grace}\n\n"
        + tls_section(pki)
        + (f"\n[store]\nurl = {store}\n" if store else "")
        + "\n[supervisor]\nlisten = ssl:0:interface=127.0.0.1\ncaps = caps.conf\ncomponent-role = component\n" + supervisor
        + "\n[rpc]\nlisten = ssl:0:interface=127.0.0.1\nmax-body = 64 KB\n"
        + "\n[rpc:Framework/Notebook]\nclass = ccnet.rpc.examples.notebook:NotebookService\n"
        + "\n[rpc:Test/Slow]\nclass = tests.test_ops_support:SlowService\n"
        + "\n[rpc:Framework/Files]\nclass = ccnet.rpc.examples.files:FilesService\nroot = files\n"
        + f"\n[cc]\ncc-socket = tcp://127.0.0.1:{cc_port}\ncc-role = local\nstats-period = 0\nmax-body-size = 64 KB\n"
        + "\n[routes]\necho = echo\n\n[echo]\nhandler = echo\n"
        + "\n[metrics]\nlisten = tcp:0:interface=127.0.0.1\n"
        + extra
    )


class OpsDaemon:
    """A real ``twistd -n ccnet`` with RPC, supervisor, CC and metrics, plus blocking clients."""

    def __init__(self, pki: TestPKI, folder: Path, grace: float = 5.0, store: str = "",
                 env: dict[str, str] | None = None, extra: str = "", wait: bool = True,
                 own_tls: bool = False, supervisor: str = "") -> None:
        self.pki = pki
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "users.conf").write_text(USERS)
        (folder / "caps.conf").write_text(CAPS)
        (folder / "files").mkdir(exist_ok=True)
        (folder / "files" / "ok.txt").write_text("served\n")
        (folder / "secret.txt").write_text("not served\n")
        self.cc_port = free_port()
        self.config_text = ops_config(pki, self.cc_port, grace, store, extra, supervisor)
        if own_tls:
            # A private copy of the server certificate/key that a test may spoil.
            for src, name in ((pki.cert("server"), "server.crt"), (pki.key("server"), "server.key")):
                shutil.copy(src, folder / name)
                self.config_text = self.config_text.replace(str(src), str(folder / name))
        self.env = env
        self.daemon: Daemon = start_daemon(self.config_text, folder, "--log-format", "json",
                                           env=env, wait=wait)

    def restart(self) -> None:
        self.daemon = start_daemon(self.config_text, self.folder, "--log-format", "json", env=self.env)

    # -- addresses --------------------------------------------------------------------
    def url(self, listener: str, path: str = "/health") -> str:
        scheme = "http" if listener == "metrics" else "https"
        return f"{scheme}://127.0.0.1:{self.daemon.ports[listener]}{path}"

    def port(self, listener: str) -> int:
        return self.daemon.ports[listener]

    @property
    def cc_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.cc_port}"

    # -- blocking clients (run them in threads) ---------------------------------------
    def session(self, name: str = "client") -> requests.Session:
        # Per-request cert/verify: REQUESTS_CA_BUNDLE in the environment beats a session's.
        s = requests.Session()
        s.trust_env = False
        s.cert = self.pki.pair(name)
        s.verify = str(self.pki.ca_cert)
        return s

    def rpc(self, service: str, method: str, *args: Any, who: str = "client", session: Any = None,
            timeout: float = 15) -> requests.Response:
        s = session or self.session(who)
        data = {"method": method, "args": json.dumps(list(args))}
        return s.post(self.url("rpc", f"/{service}"), data=data, timeout=timeout)

    def mplane(self, method: str, path: str, body: Any = None, who: str = "client",
               session: Any = None) -> requests.Response:
        s = session or self.session(who)
        data = json.dumps(body).encode() if body is not None else None
        return s.request(method, self.url("supervisor", f"/{path}"), data=data,
                         headers={"content-type": MPLANE_JSON}, timeout=15)

    def register_ping(self) -> requests.Response:
        return self.mplane("POST", "register/capability", envelope(PING_CAP), who="component")

    def cc_echo(self, timeout: float = 5.0) -> str | None:
        """Send ``echo.request``; the reply's type, or None when nothing came back."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.cc_endpoint)
            # "ack": a client that reads error replies too (as ccnet-cc)
            sock.send_multipart(make_message("echo.request", {"target": self.cc_endpoint, "ack": True}).frames())
            if not sock.poll(int(timeout * 1000)):
                return None
            reply = parse([b"server", *sock.recv_multipart()])
            return getattr(reply, "type", None) or getattr(reply, "req", None) or repr(reply)
        finally:
            sock.close(0)
            ctx.term()

    def metrics(self) -> str:
        return requests.get(self.url("metrics", "/metrics"), timeout=10).text

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.daemon.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged in {timeout}s:\n{self.daemon.log()[-3000:]}")

    def stop(self, sig: int | None = None) -> int:
        return self.daemon.stop() if sig is None else self.daemon.stop(sig)


def tls_client(pki: TestPKI, name: str | None, ca: Path | None = None) -> ssl.SSLContext:
    """A stdlib client context presenting ``name``'s certificate (None: no certificate)."""
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca_cert))
    ctx.check_hostname = False
    if name is not None:
        ctx.load_cert_chain(*pki.pair(name))
    return ctx


def tls_get(pki: TestPKI, port: int, name: str | None, path: str = "/health",
            cert: tuple[str, str] | None = None) -> int:
    """One HTTPS GET over a fresh connection: the status, or 0 when the server refused us.

    With TLS 1.3 a rejected client certificate only shows when reading the reply.
    """
    ctx = tls_client(pki, None)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    elif name is not None:
        ctx.load_cert_chain(*pki.pair(name))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (ssl.SSLError, ConnectionError, OSError):
        return 0
    if not data.startswith(b"HTTP/1.1 "):
        return 0
    return int(data.split(b" ", 2)[1])
