"""Helpers for the mPlane tests: a supervisor on a real mutual-TLS listener, and clients."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from ccnet.config import TLSConfig, parse_listen
from ccnet.edge.client import https_agent
from ccnet.identity import Identity, UserMap
from ccnet.mplane import supervisor as supmod
from ccnet.mplane.config import SupervisorConfig
from ccnet.mplane.model import CONTENT_TYPE, Message, parse_json, to_json
from ccnet.runtime import Runtime
from ccnet.service import ListenerService
from ccnet.store import Store
from ccnet.tls import TLSMaterial
from tests.support import TestPKI, test_pki

PING_CAP = {
    "capability": "measure", "version": 1, "registry": "http://ict-mplane.eu/registry/core",
    "label": "ping-average-ip4", "when": "now ... future / 1s",
    "parameters": {"destination.ip4": "*", "source.ip4": "127.0.0.1"},
    "results": ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
                "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"],
}
CALLBACK_CAP = {"capability": "measure", "version": 1, "registry": "http://ict-mplane.eu/registry/core",
                "label": "callback", "when": "now ... future"}


def material(pki: TestPKI, name: str) -> TLSMaterial:
    return TLSMaterial(TLSConfig(ca=pki.ca_cert, cert=pki.cert(name), key=pki.key(name), crl=pki.crl,
                                 min_version="1.2", allow_proxies=False))


def dotted(pki: TestPKI, name: str) -> str:
    return Identity.from_pem(pki.cert(name).read_bytes()).dotted


def envelope(*items: dict[str, Any]) -> dict[str, Any]:
    return {"envelope": "message", "version": 1, "contents": list(items)}


class Supervisor:
    """A supervisor built with ``supervisor.build`` and served over mutual TLS on 127.0.0.1:0."""

    def __init__(self, folder: Path, users: str = "", caps: str = "", store_url: str | None = None,
                 users_map: str = "", store_timeout: float = 10.0, **cfg: Any) -> None:
        self.pki = test_pki()
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        (folder / "users.conf").write_text(users)
        (folder / "caps.conf").write_text(caps)
        self.store_url = store_url or f"sqlite:///{folder / 'state.db'}"
        self.cfg = SupervisorConfig(users=folder / "users.conf", caps=folder / "caps.conf", **cfg)
        self.users_map = users_map
        self.store_timeout = store_timeout
        self.port = 0

    @defer.inlineCallbacks
    def start(self) -> Any:
        self.store = Store.open(self.store_url, reactor, self.store_timeout)
        runtime = Runtime(reactor, self.store, tls=material(self.pki, "supervisor"), version="test",
                          users=UserMap.from_string(self.users_map) if self.users_map else UserMap.empty(),
                          config_dir=self.folder)
        self.runtime = runtime
        part = supmod.build(runtime, self.cfg)
        resource, services = part.resource, part.services
        self.resource = resource
        self.services = services
        for svc in services:
            svc.startService()
        self.state = resource.state  # type: ignore[attr-defined]
        site = Site(resource)
        site.noisy = False
        creator = material(self.pki, "supervisor").server(False, "supervisor")
        self.listener = ListenerService(reactor, "supervisor", parse_listen(f"ssl:{self.port}:interface=127.0.0.1"),
                                        site, creator)
        self.listener.startService()
        yield self.listener.listening
        self.port = self.listener.address.port
        yield services[0].ready  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def stop(self) -> Any:
        yield self.listener.stopService()
        for svc in self.services:
            yield defer.maybeDeferred(svc.stopService)
        yield self.store.close()

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}/{path.lstrip('/')}"


class Endpoint:
    """Where a supervisor listens (one started elsewhere, e.g. a daemon subprocess)."""

    def __init__(self, port: int) -> None:
        self.pki = test_pki()
        self.port = port

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}/{path.lstrip('/')}"


class Peer:
    """An HTTPS client with one of the suite's certificates (treq over ccnet's client TLS)."""

    def __init__(self, sup: Supervisor | Endpoint, name: str) -> None:
        self.sup = sup
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = https_agent(reactor, material(sup.pki, name), self.pool)
        self.identity = dotted(sup.pki, name)

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body: Any = None, content_type: str = CONTENT_TYPE,
                headers: dict[str, list[str]] | None = None, **kwargs: Any) -> Any:
        """(status, content type, body); ``headers`` and treq's ``kwargs`` go as given."""
        headers = {**({"Content-Type": [content_type]} if body is not None else {}), **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else (
                to_json(body) if not isinstance(body, dict) else json.dumps(body)).encode()
        resp = yield treq.request(method, self.sup.url(path), data=data, headers=headers, agent=self.agent,
                                  **kwargs)
        content = yield resp.content()
        self.last_headers = resp.headers
        return resp.code, resp.headers.getRawHeaders("content-type", [""])[0], content

    @defer.inlineCallbacks
    def message(self, method: str, path: str, body: Any = None) -> Any:
        code, ctype, content = yield self.request(method, path, body)
        msg: Message | None = parse_json(content) if ctype == CONTENT_TYPE and content.startswith(b"{") else None
        return code, msg, content


# ---------------------------------------------------------------------------
# The official mPlane SDK, in its own virtualenv (never imported by ccnet).


SDK_VERSION = "0.9.0"
SDK_VENV = Path(os.environ.get("CCNET_MPLANE_SDK_VENV", "/tmp/ccnet-mplane-sdk-0.9.0"))

# iputils reads the SDK's "-S <source>" as a buffer size, and test hosts may have no
# ping at all: this stand-in takes the SDK's arguments and prints ping's reply lines,
# using the real ping (with -I) when there is one.
FAKE_PING = r'''#!{python}
import os, shutil, socket, sys, time
args = sys.argv[1:]
period, count, source, dest = 1.0, None, None, args[-1]
i = 0
while i < len(args) - 1:
    a = args[i]
    if a == "-i": period = float(args[i + 1]); i += 2; continue
    if a == "-c": count = int(args[i + 1]); i += 2; continue
    if a in ("-S", "-I"): source = args[i + 1]; i += 2; continue
    i += 1
here = os.path.dirname(os.path.abspath(__file__))
path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.abspath(p) != here)
real = shutil.which("ping", path=path)
if real:
    # Use it only if it works here (unprivileged ICMP may be off): one quick probe.
    import subprocess
    try:
        probe = subprocess.run([real, "-n", "-c", "1", "-W", "1", dest], capture_output=True, timeout=5)
        real = real if probe.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        real = None
if real:
    argv = [real, "-n", "-i", str(period)] + (["-c", str(count)] if count else []) + (["-I", source] if source else []) + [dest]
    os.execv(real, argv)
print("PING %s (%s) 56(84) bytes of data." % (dest, dest), flush=True)
seq = 0
while count is None or seq < count:
    seq += 1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    t0 = time.perf_counter()
    s.sendto(b"x", s.getsockname()); s.recv(16)
    rtt = (time.perf_counter() - t0) * 1000
    s.close()
    print("64 bytes from %s: icmp_seq=%d ttl=64 time=%.3f ms" % (dest, seq, rtt), flush=True)
    if count is None or seq < count:
        time.sleep(period)
'''


def ensure_sdk_venv() -> tuple[Path | None, str]:
    """(python of a venv with mplane-sdk 0.9.0, "") or (None, why it could not be made). Blocking."""
    python = SDK_VENV / "bin" / "python"
    marker = SDK_VENV / "ccnet-ok"
    if marker.exists():
        return python, ""
    interp = shutil.which("python3.11")
    if interp is None:
        return None, "python3.11 not found (the SDK 0.9 needs ssl.wrap_socket, gone in 3.12)"
    try:
        subprocess.run([interp, "-m", "venv", str(SDK_VENV)], check=True, capture_output=True, timeout=120)
        out = subprocess.run([str(SDK_VENV / "bin" / "pip"), "install", "-q", f"mplane-sdk=={SDK_VERSION}"],
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot create the SDK venv: {exc}"
    if out.returncode != 0:
        return None, f"pip install mplane-sdk=={SDK_VERSION} failed: {out.stderr.strip()[-500:]}"
    marker.write_text("ok")
    return python, ""


class SDKPeerTest(unittest.TestCase):
    """Tests that run the official SDK in its venv: ``self.python`` (skipped without one)
    and an absolute scratch ``self.folder``."""

    timeout = 240

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.python, why = yield deferToThread(ensure_sdk_venv)
        if self.python is None:
            raise unittest.SkipTest(why)
        self.folder = Path(self.mktemp()).resolve()
        self.folder.mkdir(parents=True)


def sdk_tls_section(pki: TestPKI, name: str) -> str:
    return f"[TLS]\ncert = {pki.cert(name)}\nkey = {pki.key(name)}\nca-chain = {pki.ca_cert}\n"


def write_fake_ping(folder: Path) -> Path:
    bindir = folder / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    ping = bindir / "ping"
    ping.write_text(FAKE_PING.replace("{python}", sys.executable))
    ping.chmod(0o755)
    return bindir


def sdk_component_config(pki: TestPKI, folder: Path, port: int, supervisor_identity: str,
                         name: str = "component") -> Path:
    conf = folder / f"{name}-component.conf"
    conf.write_text(sdk_tls_section(pki, name) + textwrap.dedent(f"""\
        [Roles]
        {supervisor_identity} = supervisor

        [Authorizations]
        ping-average-ip4 = supervisor
        ping-detail-ip4 = supervisor

        [module_ping]
        module = mplane.components.ping
        ip4addr = 127.0.0.1

        [component]
        workflow = component-initiated
        client_host = localhost
        client_port = {port}
        registration_path = register/capability
        specification_path = show/specification
        result_path = register/result
        """))
    return conf


def start_sdk_component(python: Path, conf: Path, folder: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PATH"] = f"{write_fake_ping(folder)}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    log = open(folder / f"{conf.stem}.log", "wb")  # noqa: SIM115 (kept open for the child)
    return subprocess.Popen([str(python), str(python.parent / "mpcom"), "--config", str(conf)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(folder))


def mpsup_config(pki: TestPKI, folder: Path, component_identity: str, client_port: int, listen_port: int,
                 labels: tuple[str, ...] = ("ping-average-ip4", "ping-detail-ip4")) -> Path:
    """The SDK supervisor's (``mpsup``) config: components push to ``client_port``, SDK
    clients read capabilities from ``listen_port``."""
    conf = folder / "supervisor.conf"
    auth = "".join(f"{label} = guest,probe\n" for label in labels)
    conf.write_text(sdk_tls_section(pki, "supervisor") + textwrap.dedent(f"""\
        [Roles]
        {component_identity} = probe
        IT.ccnet.Clients.client = guest
        [Authorizations]
        """) + auth + textwrap.dedent(f"""\
        [client]
        workflow = component-initiated
        listen-port = {client_port}
        listen-spec-link = https://localhost:{client_port}/register/result
        registration-path = register/capability
        specification-path = show/specification
        result-path = register/result
        [component]
        workflow = client-initiated
        listen-port = {listen_port}
        listen-cap-link = https://localhost:{listen_port}/
        """))
    return conf


def start_mpsup(python: Path, conf: Path, folder: Path) -> subprocess.Popen[bytes]:
    """The unmodified SDK supervisor; its output goes to ``folder/mpsup.log``."""
    log = open(folder / "mpsup.log", "wb")  # noqa: SIM115 (kept open for the child)
    return subprocess.Popen([str(python), str(python.parent / "mpsup"), "--config", str(conf)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(folder),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_log(path: Path, needle: str, timeout: float = 60) -> str:
    """Block until ``needle`` appears in the file at ``path``; its text then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.05)
    raise RuntimeError(f"{needle!r} not seen in {path} within {timeout}s:\n"
                       + (path.read_text(errors="replace") if path.exists() else ""))


SDK_CLIENT_SCRIPT = r'''
import configparser, json, sys, time
import mplane.client, mplane.model, mplane.tls
cfg = configparser.ConfigParser(); cfg.optionxform = str
cfg.read_string(sys.argv[1])
url, label, when, dest = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
mplane.model.initialize_registry()
tls = mplane.tls.TlsState(cfg)
client = mplane.client.HttpInitiatorClient(cfg, tls)
try:
    client.retrieve_capabilities(url)
except TypeError:
    pass  # an HTML capability page (mpsup): the SDK's crawler breaks on Python >= 3.5
if not client.capability_labels():
    # Crawl the links ourselves, then talk to the server root like the SDK does.
    import re, urllib3
    u = urllib3.util.parse_url(url)
    pool = tls.pool_for(u.scheme, u.host, u.port)
    page = pool.request("GET", u.path).data.decode()
    client.set_default_url("%s://%s:%s/" % (u.scheme, u.host, u.port))
    for href in re.findall(r"href='([^']+)'", page):
        client.retrieve_capabilities("%s://%s:%s%s" % (u.scheme, u.host, u.port, href))
out = {"capabilities": sorted(client.capability_labels())}
t0 = time.time()
spec = client.invoke_capability(label, when, {"destination.ip4": dest})
out["submitted"] = time.time() - t0
out["receipt"] = spec.get_label() in client.receipt_labels() or spec.get_token() in client.receipt_tokens()
deadline = time.time() + float(sys.argv[6]) if len(sys.argv) > 6 else time.time() + 60
res = None
while time.time() < deadline:
    res = client.result_for(spec.get_label())
    if isinstance(res, (mplane.model.Result, mplane.model.Exception)):
        break
    time.sleep(0.05)
out["latency"] = time.time() - t0
out["kind"] = type(res).__name__
out["result"] = mplane.model.unparse_json(res) if res is not None else None
print("RESULT " + json.dumps(out))
'''


def run_sdk_client(python: Path, pki: TestPKI, url: str, label: str, when: str,
                   dest: str = "127.0.0.1", timeout: float = 60) -> dict[str, Any]:
    """Run the SDK client library in its venv (blocking); the JSON it reports."""
    config = sdk_tls_section(pki, "client")
    out = subprocess.run([str(python), "-c", SDK_CLIENT_SCRIPT, config, url, label, when, dest, str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 60)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]
    raise RuntimeError(f"SDK client failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
