"""The real daemon: twistd plugin, start-up errors, /health over mutual TLS, reload, systemd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import treq
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.config import TLSConfig
from ccnet.edge.client import https_agent
from ccnet.tls import TLSMaterial
from tests.support import (
    REPO,
    VENV_BIN,
    Daemon,
    free_port,
    start_daemon,
    test_pki,
    tls_section,
    twistd_command,
)


def rpc_config(pki: Any, listen: str = "ssl:0:interface=127.0.0.1", extra: str = "") -> str:
    return (
        "[ccnet]\nstate-dir = var\n\n"
        + tls_section(pki)
        + f"\n[rpc]\nlisten = {listen}\n"
        + extra
    )


def run_twistd(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    if env:
        full_env.update(env)
    return subprocess.run(twistd_command(config, *extra), capture_output=True, text=True,
                          timeout=60, env=full_env, cwd=str(config.parent))


class PluginTests(unittest.TestCase):
    def test_twistd_lists_the_ccnet_plugin(self) -> None:
        out = subprocess.run([str(VENV_BIN / "twistd"), "--help"], capture_output=True, text=True,
                             cwd=tempfile.gettempdir())
        self.assertIn("ccnet", out.stdout)

    def test_plugin_is_only_a_service_maker(self) -> None:
        source = (REPO / "twisted" / "plugins" / "ccnet_plugin.py").read_text()
        from twisted.application.service import IServiceMaker

        from ccnet.plugin import ServiceMaker

        self.assertTrue(IServiceMaker.providedBy(ServiceMaker()))
        self.assertLess(len([line for line in source.splitlines() if line.strip()]), 6)


class StartupErrorTests(unittest.TestCase):
    """Every mistake: one clear line, non-zero exit, no traceback."""

    def setUp(self) -> None:
        self.pki = test_pki()
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir()

    def check(self, text: str, *fragments: str) -> None:
        config = self.folder / "ccnet.ini"
        config.write_text(text)
        result = run_twistd(config)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(str(config), output)
        for fragment in fragments:
            self.assertIn(fragment, output)

    def test_missing_config_file(self) -> None:
        result = run_twistd(self.folder / "absent.ini")
        self.assertEqual(result.returncode, 2)
        self.assertIn("config file not found", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_unknown_section(self) -> None:
        self.check(rpc_config(self.pki) + "[rpcc]\n", "[rpcc]", "unknown section")

    def test_unknown_key(self) -> None:
        self.check(rpc_config(self.pki, extra="colour = red\n"), "[rpc] colour", "unknown key")

    def test_bad_endpoint(self) -> None:
        self.check(rpc_config(self.pki, listen="ssl:port"), "[rpc] listen", "PORT")

    def test_unreadable_certificate(self) -> None:
        text = rpc_config(self.pki).replace(str(self.pki.cert("server")), str(self.folder / "none.crt"))
        self.check(text, "[tls] cert", "readable file")

    def test_key_not_matching_certificate(self) -> None:
        text = rpc_config(self.pki).replace(str(self.pki.key("server")), str(self.pki.key("client")))
        self.check(text, "[tls] key", "matching the certificate")

    def test_mistake_found_while_building_a_part_is_one_line_with_exit_2(self) -> None:
        config = self.folder / "ccnet.ini"
        config.write_text("[ccnet]\nstate-dir = var\n\n[component]\nlisten = ssl:0:interface=127.0.0.1\n"
                          "\n[probe:ping]\nmodule = ccnet.mplane.probes.ping\n")
        result = run_twistd(config)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        self.assertNotIn("Traceback", output)
        self.assertIn("ccnet: cannot start: [component] needs the [tls] section", output)

    def test_port_in_use_exits_non_zero(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = self.folder / "ccnet.ini"
            config.write_text(rpc_config(self.pki, listen=f"ssl:{port}:interface=127.0.0.1"))
            result = run_twistd(config)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot listen", result.stdout + result.stderr)


class MakeServiceErrorTests(unittest.TestCase):
    """What ``twistd ccnet`` does with what escapes make_service (in-process)."""

    def make(self, error: BaseException) -> Any:
        import io
        from types import SimpleNamespace
        from unittest import mock

        from ccnet.plugin import ServiceMaker

        stderr = io.StringIO()
        with mock.patch("ccnet.service.make_service", side_effect=error), mock.patch("sys.stderr", stderr):
            try:
                ServiceMaker().makeService(SimpleNamespace(config=None))  # type: ignore[arg-type]
            except SystemExit as exit_:
                return exit_.code, stderr.getvalue()
        return None, stderr.getvalue()

    def test_setup_and_store_errors_are_one_line_and_exit_2(self) -> None:
        from ccnet.config import SetupError
        from ccnet.store import StoreError

        for error in (SetupError("[supervisor] registries: no such file"), StoreError("cannot create the folder")):
            code, text = self.make(error)
            self.assertEqual(code, 2)
            self.assertEqual(text.count("\n"), 1, text)
            self.assertIn(f"ccnet: cannot start: {error}", text)

    def test_missing_file_is_one_line_and_names_it(self) -> None:
        code, text = self.make(FileNotFoundError(2, "No such file or directory", "/etc/ccnet/users.conf"))
        self.assertEqual((code, text), (2, "ccnet: cannot start: No such file or directory: /etc/ccnet/users.conf\n"))

    def test_programming_errors_keep_their_traceback(self) -> None:
        for error in (ValueError("too many values to unpack"), TypeError("'NoneType' object is not callable"),
                      OSError(9, "Bad file descriptor")):
            with self.assertRaises(type(error)):
                self.make(error)


class RunningDaemonTests(unittest.TestCase):
    """One daemon for the class: health over mutual TLS with treq and requests, logs, reload."""

    daemon: Daemon

    def setUp(self) -> None:
        # One daemon for the whole class (trial has no setUpClass); stopped at exit.
        if "daemon" not in RunningDaemonTests.__dict__:
            RunningDaemonTests._start()

    @classmethod
    def _start(cls) -> None:
        import atexit

        cls.pki = test_pki()
        cls.folder = Path(tempfile.mkdtemp(prefix="ccnet-daemon-", dir=str(Path.cwd())))
        cls.cert = cls.folder / "server.crt"
        cls.key = cls.folder / "server.key"
        shutil.copy(cls.pki.cert("server"), cls.cert)
        shutil.copy(cls.pki.key("server"), cls.key)
        text = (
            "[ccnet]\nstate-dir = var\nusers = users.conf\n\n"
            f"[tls]\nca = {cls.pki.ca_cert}\ncert = server.crt\nkey = server.key\ncrl = {cls.pki.crl}\n\n"
            "[rpc]\nlisten = ssl:0:interface=127.0.0.1\n\n"
            "[metrics]\nlisten = tcp:0:interface=127.0.0.1\n"
        )
        (cls.folder / "users.conf").write_text("[user:client]\ndn = /C=IT/O=ccnet/OU=Clients/CN=client\n")
        cls.daemon = start_daemon(text, cls.folder, "--log-format", "json")
        atexit.register(cls.daemon.stop)

    def url(self, path: str = "/health", listener: str = "rpc", host: str = "127.0.0.1") -> str:
        scheme = "http" if listener == "metrics" else "https"
        return f"{scheme}://{host}:{self.daemon.ports[listener]}{path}"

    @defer.inlineCallbacks
    def test_health_with_requests_cert_and_verify(self) -> Any:
        response = yield deferToThread(requests.get, self.url(), cert=self.pki.pair("client"),
                                       verify=str(self.pki.ca_cert), timeout=10)
        self.assertEqual(response.status_code, 200)
        body = response.json()
        self.assertEqual(body["services"], ["rpc", "metrics"])
        self.assertGreaterEqual(body["uptime"], 0)
        self.assertEqual(body["identity"], "/C=IT/O=ccnet/OU=Clients/CN=client")

    @defer.inlineCallbacks
    def test_health_with_treq_by_host_name(self) -> Any:
        material = TLSMaterial(TLSConfig(ca=self.pki.ca_cert, cert=self.pki.cert("admin"),
                                         key=self.pki.key("admin"), crl=None, min_version="1.2",
                                         allow_proxies=False))
        agent = https_agent(reactor, material)
        response = yield treq.get(self.url(host="localhost"), agent=agent)
        body = yield response.json()
        self.assertEqual(body["status"], "ok")
        yield agent._pool.closeCachedConnections()

    @defer.inlineCallbacks
    def test_no_certificate_is_refused_and_logged(self) -> Any:
        with self.assertRaises(requests.exceptions.RequestException):
            yield deferToThread(requests.get, self.url(), verify=str(self.pki.ca_cert), timeout=10)
        with self.assertRaises(requests.exceptions.RequestException):
            yield deferToThread(requests.get, self.url(), cert=self.pki.pair("revoked"),
                                verify=str(self.pki.ca_cert), timeout=10)
        yield deferToThread(self._wait_for_log, "certificate revoked")

    def _wait_for_log(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.daemon.log():
                return
            time.sleep(0.05)
        self.fail(f"{text!r} not logged:\n{self.daemon.log()[-3000:]}")

    def test_log_lines_are_json_events(self) -> None:
        events = [json.loads(line) for line in self.daemon.lines if line.startswith("{")]
        self.assertTrue(events, self.daemon.log()[-2000:])
        self.assertTrue(any(e.get("log_namespace") == "ccnet.service" for e in events))

    @defer.inlineCallbacks
    def test_ready_and_metrics_on_plain_listener(self) -> Any:
        response = yield deferToThread(requests.get, self.url("/ready", "metrics"), timeout=10)
        self.assertEqual(response.json(), {"ready": True, "store": True})
        response = yield deferToThread(requests.get, self.url("/metrics", "metrics"), timeout=10)
        self.assertIn('ccnet_info{version="', response.text)

    @defer.inlineCallbacks
    def test_sighup_reloads_certificate_on_the_same_port(self) -> Any:
        port = self.daemon.ports["rpc"]
        shutil.copy(self.pki.cert("wronghost"), self.cert)
        shutil.copy(self.pki.key("wronghost"), self.key)
        self.addCleanup(shutil.copy, self.pki.key("server"), self.key)
        self.addCleanup(shutil.copy, self.pki.cert("server"), self.cert)
        self.daemon.process.send_signal(signal.SIGHUP)
        yield deferToThread(self._wait_for_log, "TLS material reloaded")
        with self.assertRaises(requests.exceptions.SSLError):
            yield deferToThread(requests.get, self.url(), cert=self.pki.pair("client"),
                                verify=str(self.pki.ca_cert), timeout=10)
        self.assertEqual(self.daemon.ports["rpc"], port)
        self.assertIsNone(self.daemon.process.poll())
        shutil.copy(self.pki.cert("server"), self.cert)
        shutil.copy(self.pki.key("server"), self.key)
        self.daemon.process.send_signal(signal.SIGHUP)
        yield deferToThread(lambda: time.sleep(0.5))
        response = yield deferToThread(requests.get, self.url(), cert=self.pki.pair("client"),
                                       verify=str(self.pki.ca_cert), timeout=10)
        self.assertEqual(response.status_code, 200)


class GracefulStopTests(unittest.TestCase):
    def test_sigterm_exits_zero(self) -> Any:
        pki = test_pki()
        folder = Path(self.mktemp()).absolute()

        def run() -> int:
            daemon = start_daemon(rpc_config(pki), folder)
            return daemon.stop(signal.SIGTERM)

        d = deferToThread(run)
        d.addCallback(self.assertEqual, 0)
        return d


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


class SystemdTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = test_pki()
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir()

    def test_units_pass_systemd_analyze_verify(self) -> None:
        if SYSTEMD_ANALYZE is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        # The shipped unit points at /opt/ccnet; verify checks the binary exists, so point it here.
        unit = (REPO / "conf" / "ccnet.service").read_text().replace("/opt/ccnet/.venv/bin", str(VENV_BIN))
        (self.folder / "ccnet.service").write_text(unit)
        shutil.copy(REPO / "conf" / "ccnet.socket", self.folder / "ccnet.socket")
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", "--man=no", str(self.folder / "ccnet.service"), str(self.folder / "ccnet.socket")],
            capture_output=True, text=True, timeout=60,
        )
        problems = [line for line in (result.stdout + result.stderr).splitlines()
                    if "ccnet" in line and "Documentation" not in line]
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(problems, [])

    def test_ready_is_notified_once_listening(self) -> Any:
        short = tempfile.mkdtemp(prefix="ccnet-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, short, True)
        notify_path = str(Path(short) / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.settimeout(30)
        self.addCleanup(sock.close)

        def run() -> bytes:
            daemon = start_daemon(rpc_config(self.pki), self.folder / "d", env={"NOTIFY_SOCKET": notify_path},
                                  wait=False)
            try:
                return sock.recv(4096)
            finally:
                daemon.stop()

        d = deferToThread(run)
        d.addCallback(lambda data: self.assertIn(b"READY=1", data))
        return d

    def test_socket_activation_serves_health_on_inherited_socket(self) -> Any:
        if SOCKET_ACTIVATE is None:
            raise unittest.SkipTest("systemd-socket-activate is not installed")
        port = free_port()
        config = self.folder / "ccnet.ini"
        config.write_text(rpc_config(self.pki, listen="systemd:domain=INET:index=0"))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("NOTIFY_SOCKET", None)
        proc = subprocess.Popen(
            # --fdname: Twisted, like systemd >= 227, expects LISTEN_FDNAMES beside LISTEN_FDS.
            [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=https", *twistd_command(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(self.folder),
        )
        daemon = Daemon(config, proc)
        import threading

        threading.Thread(target=daemon._reader, daemon=True).start()
        self.addCleanup(daemon.stop)

        def fetch() -> Any:
            deadline = time.monotonic() + 30
            while not any("Listening on" in line for line in daemon.lines) and time.monotonic() < deadline:
                time.sleep(0.05)
            # systemd-socket-activate starts the daemon on the first connection: this one.
            return requests.get(f"https://127.0.0.1:{port}/health", cert=self.pki.pair("client"),
                                verify=str(self.pki.ca_cert), timeout=60)

        d = deferToThread(fetch)
        d.addCallback(lambda response: self.assertEqual(response.json()["status"], "ok"))
        return d
