"""ccnet.edge in the real daemon: revocation reaching open connections, SIGTERM time with
the shipped config, a taken port, the per-listener limits from the INI file."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.pki import PKI
from tests.support import VENV_BIN, free_port, start_daemon, test_pki, tls_section
from tests.test_daemon import rpc_config, run_twistd
from tests.test_ops_support import CAPS, USERS, ops_config
from tests.test_rpc_shipped_config import _shipped_config, _shipped_tree

GET = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _reply(sock: ssl.SSLSocket) -> bytes:
    """One HTTP reply on a keep-alive connection (b'' when the server closed it)."""
    sock.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(4096)
    except (ConnectionResetError, ssl.SSLError, OSError):
        return data
    return data


class RevocationTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_sighup_with_a_crl_revoking_a_peer_closes_its_open_connections_on_every_tls_listener(self) -> Any:
        # A private copy of the suite PKI: revoking here must not touch other tests' CRL.
        folder = Path(self.mktemp()).absolute()
        pki_dir = folder / "pki"
        shutil.copytree(test_pki().dir, pki_dir)
        pki = PKI(pki_dir)
        pki.issue("client", "victim", text_preamble=True)
        pki.crl()
        work = folder / "daemon"
        work.mkdir()
        (work / "users.conf").write_text(USERS)
        (work / "caps.conf").write_text(CAPS)
        (work / "files").mkdir()
        text = ops_config(test_pki(), free_port()).replace(str(test_pki().dir), str(pki_dir))
        daemon = start_daemon(text, work, "--log-format", "json")
        self.addCleanup(daemon.stop)

        def open_conn(listener: str, name: str) -> ssl.SSLSocket:
            ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
            ctx.check_hostname = False
            ctx.load_cert_chain(str(pki.cert_path(name)), str(pki.key_path(name)))
            raw = socket.create_connection(("127.0.0.1", daemon.ports[listener]))
            conn = ctx.wrap_socket(raw, server_hostname="localhost")
            conn.sendall(GET)
            assert b"200 OK" in _reply(conn), listener
            return conn

        def scenario() -> dict[str, bytes]:
            victims = {name: open_conn(name, "victim") for name in ("rpc", "supervisor")}
            bystander = open_conn("rpc", "client")
            subprocess.run([str(VENV_BIN / "ccnet-pki"), "--dir", str(pki_dir), "revoke", "victim"],
                           check=True, capture_output=True)
            daemon.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "closed 2 open connections of revoked peers" not in daemon.log():
                assert time.monotonic() < deadline, daemon.log()[-3000:]
                time.sleep(0.05)
            out = {}
            for name, conn in victims.items():
                try:
                    conn.sendall(GET)
                except OSError:
                    pass
                out[name] = _reply(conn)
                conn.close()
            bystander.sendall(GET)
            out["bystander"] = _reply(bystander)
            bystander.close()
            return out

        out = yield deferToThread(scenario)
        self.assertEqual(out["rpc"], b"")
        self.assertEqual(out["supervisor"], b"")
        self.assertIn(b"200 OK", out["bystander"])
        log = daemon.log()
        self.assertIn("revoked", log)
        self.assertIn("CN=victim", log)
        metrics = yield deferToThread(
            lambda: requests.get(f"http://127.0.0.1:{daemon.ports['metrics']}/metrics", timeout=10).text)
        for listener in ("rpc", "supervisor"):
            self.assertIn(f'ccnet_listener_closed_total{{listener="{listener}",reason="revoked"}} 1', metrics)


class LifecycleTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_sigterm_with_the_component_long_polling_its_own_supervisor_exits_at_once(self) -> Any:
        base = Path(self.mktemp()).absolute()
        conf = yield deferToThread(_shipped_tree, base)
        ports = {name: free_port() for name in ("rpc", "supervisor", "cc", "metrics")}
        # The shipped config as it is: shutdown-grace 10, the component long-polls 20 s.
        daemon = start_daemon(_shipped_config(ports), conf)
        self.addCleanup(daemon.stop, signal.SIGKILL)

        def scenario() -> tuple[int, float]:
            deadline = time.monotonic() + 30
            while "mPlane component registered" not in daemon.log():
                assert time.monotonic() < deadline, daemon.log()[-3000:]
                time.sleep(0.05)
            time.sleep(1.0)  # the long-poll is now held by the supervisor
            started = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            code = daemon.process.wait(30)
            return code, time.monotonic() - started

        code, seconds = yield deferToThread(scenario)
        self.assertEqual(code, 0, daemon.log()[-3000:])
        # Well under the 10 s grace; the measured figure (docs/reliability.md) is far lower.
        self.assertLess(seconds, 5.0, daemon.log()[-3000:])
        self.assertNotIn("still open after", daemon.log())


class PortTakenTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = test_pki()
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir()

    def check_one_line(self, text: str, listener: str) -> None:
        config = self.folder / "ccnet.ini"
        config.write_text(text)
        result = run_twistd(config)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unhandled", output)
        errors = [line for line in output.splitlines() if "#critical]" in line or "#error]" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertIn(f"ccnet {listener} cannot listen", errors[0])
        self.assertIn("Address already in use", errors[0])

    def test_https_port_taken_is_one_line_naming_the_listener_and_exit_1(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            self.check_one_line(rpc_config(self.pki, listen=f"ssl:{port}:interface=127.0.0.1"), "rpc")

    def test_cc_port_taken_is_one_line_naming_the_listener_and_exit_1(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            text = (f"[ccnet]\nstate-dir = var\n\n{tls_section(self.pki)}\n[rpc]\nlisten = ssl:0:interface=127.0.0.1\n"
                    f"[cc]\ncc-socket = tcp://127.0.0.1:{port}\ncc-role = local\n"
                    "[routes]\necho = echo\n[echo]\nhandler = echo\n")
            self.check_one_line(text, "cc")

    def test_metrics_port_taken_is_one_line_too(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            text = rpc_config(self.pki) + f"[metrics]\nlisten = tcp:{port}:interface=127.0.0.1\n"
            self.check_one_line(text, "metrics")


class ConfiguredLimitsTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_metrics_section_cap_refuses_the_excess_and_counts_it(self) -> Any:
        pki = test_pki()
        folder = Path(self.mktemp()).absolute()
        text = (rpc_config(pki, extra="head-timeout = 0.5\n")
                + "[metrics]\nlisten = tcp:0:interface=127.0.0.1\nmax-connections-per-peer = 3\n")
        daemon = start_daemon(text, folder)
        self.addCleanup(daemon.stop)

        def scenario() -> tuple[list[bool], str, bool]:
            port = daemon.ports["metrics"]
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            extra = socket.create_connection(("127.0.0.1", port))
            extra.settimeout(5)
            refused = extra.recv(10) == b""
            extra.close()
            # The three held ones sent nothing: cut at the 30 s head deadline of [metrics]
            # (not the 0.5 s of [rpc]); close them, and the port serves again.
            for sock in held:
                sock.close()
            time.sleep(0.5)
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            # [rpc] head-timeout = 0.5: a TLS client that never sends is cut.
            raw = socket.create_connection(("127.0.0.1", daemon.ports["rpc"]))
            raw.settimeout(5)
            try:
                cut = raw.recv(10) == b""
            except ConnectionResetError:
                cut = True
            raw.close()
            return [refused], metrics, cut

        refused, metrics, cut = yield deferToThread(scenario)
        self.assertEqual(refused, [True])
        self.assertIn('ccnet_listener_refused_total{listener="metrics",reason="max-connections-per-peer"} 1',
                      metrics)
        self.assertTrue(cut)
