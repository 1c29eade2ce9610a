"""The shipped ``conf/ccnet.ini`` serves DIRAC users who hold RFC 3820 proxies.

The daemon runs the shipped config files unchanged except for the listening ports
(OS-chosen, never the shipped defaults), with the dev PKI made by the shipped
``pki/make-dev-pki.sh``; a DIRAC-style proxy of the dev client certificate (made here,
no DIRAC needed) calls ``whoami`` over real TLS, as ``requests``/DIRAC do with one
proxy file.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import requests
from diraccfg import CFG
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support import REPO, VENV_BIN, Daemon, free_port, start_daemon
from tests.test_cc_handlers_common import wait_for
from tests.test_rpc_fixtures import make_proxy_of

CLIENT_DN = "/C=IT/O=ccnet/OU=Clients/CN=client"


def _shipped_tree(base: Path) -> Path:
    """conf/ and a dev PKI laid out as in the repository; returns the config text's folder."""
    conf = base / "conf"
    conf.mkdir(parents=True)
    for name in ("users.conf", "caps.conf", "dirac-cs.cfg"):
        shutil.copy(REPO / "conf" / name, conf / name)
    (base / "docs").mkdir()
    # make-dev-pki.sh calls .venv/bin/ccnet-pki relative to where it runs.
    (base / ".venv").symlink_to(VENV_BIN.parent)
    subprocess.run(["bash", str(REPO / "pki" / "make-dev-pki.sh"), "pki/dev"], cwd=base, check=True,
                   stdout=subprocess.DEVNULL)
    return conf


def _shipped_config(ports: dict[str, int]) -> str:
    text = (REPO / "conf" / "ccnet.ini").read_text()
    for shipped, port in (("8443", ports["rpc"]), ("8888", ports["supervisor"]),
                          ("10000", ports["cc"]), ("9100", ports["metrics"])):
        text = text.replace(f":{shipped}", f":{port}")
    return text


class ShippedConfigProxyTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).absolute()
        conf = _shipped_tree(self.base)
        ports = {name: free_port() for name in ("rpc", "supervisor", "cc", "metrics")}
        self.port = ports["rpc"]
        self.daemon: Daemon = start_daemon(_shipped_config(ports), conf)
        self.addCleanup(self.daemon.stop)
        self.pki = self.base / "pki" / "dev"

    def _post(self, cert: Path, method: str = "whoami", service: str = "Framework/Notebook",
              args: str = "[]") -> Any:
        url = f"https://localhost:{self.port}/{service}"

        def post() -> Any:
            with requests.post(url, data={"method": method, "args": args}, cert=str(cert),
                               verify=str(self.pki / "ca.crt")) as r:
                return r.status_code, r.json()

        return deferToThread(post)

    async def test_dirac_user_proxy_gets_whoami_with_the_users_dn(self) -> None:
        proxy = make_proxy_of(self.pki / "client.crt", self.pki / "private" / "client.key",
                              Path(self.mktemp()))
        status, reply = await self._post(proxy)
        self.assertEqual(status, 200, reply)
        value = reply["Value"]
        self.assertEqual(value["DN"], CLIENT_DN)
        self.assertEqual(value["username"], "client")
        self.assertIs(value["isProxy"], True)
        self.assertIs(value["isLimitedProxy"], False)

    async def test_the_configuration_server_serves_the_shipped_dirac_cfg(self) -> None:
        proxy = make_proxy_of(self.pki / "client.crt", self.pki / "private" / "client.key",
                              Path(self.mktemp()))
        status, reply = await self._post(proxy, "getCompressedDataIfNewer", "Configuration/Server", '["0"]')
        self.assertEqual(status, 200, reply)
        self.assertEqual(reply["Value"]["newestVersion"], "2026-11-28 00:00:00")
        served = CFG().loadFromBuffer(zlib.decompress(base64.b64decode(reply["Value"]["data"])).decode())
        shipped = CFG().loadFromFile(str(REPO / "conf" / "dirac-cs.cfg"))
        self.assertEqual(str(served), str(shipped))
        self.assertEqual(served.getOption("DIRAC/Configuration/Name"), "ccnet-demo")

    async def test_limited_proxies_and_proxies_of_proxies_work_too(self) -> None:
        client = (self.pki / "client.crt", self.pki / "private" / "client.key")
        limited = make_proxy_of(*client, Path(self.mktemp()), limited=True)
        status, reply = await self._post(limited)
        self.assertEqual(status, 200, reply)
        self.assertIs(reply["Value"]["isLimitedProxy"], True)
        first = make_proxy_of(*client, Path(self.mktemp()))
        second = make_proxy_of(first, first, Path(self.mktemp()))
        status, reply = await self._post(second)
        self.assertEqual(status, 200, reply)
        self.assertEqual(reply["Value"]["DN"], CLIENT_DN)
        self.assertIs(reply["Value"]["isProxy"], True)

    async def test_the_supervisor_listener_keeps_refusing_proxies(self) -> None:
        # [tls] allow-proxies stays "no": only [rpc] opts in.
        proxy = make_proxy_of(self.pki / "client.crt", self.pki / "private" / "client.key",
                              Path(self.mktemp()))
        supervisor = self.daemon.ports["supervisor"]

        def get() -> Any:
            return requests.get(f"https://localhost:{supervisor}/health", cert=str(proxy),
                                verify=str(self.pki / "ca.crt"), timeout=30)

        with self.assertRaises(requests.exceptions.RequestException):
            await deferToThread(get)
        # the daemon's output is read by another thread: wait for the rejection's log line
        await wait_for(lambda: "proxy certificates not allowed" in self.daemon.log())


