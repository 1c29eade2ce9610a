"""The RPC services inside a real ``twistd ccnet`` daemon (subprocess).

Covers what only a whole daemon shows: services loaded from the INI file, the example
services on the real store, and that streaming a file larger than 50 MB does not grow
the daemon's memory by the file's size (peak RSS read from /proc, not estimated).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import requests
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.rpc import RPCClient, SyncRPCClient
from tests.support import Daemon, start_daemon, test_pki, tls_section
from tests.test_rpc_fixtures import USERS_TEXT

BIG = 64 * 1024 * 1024
MB = 1024 * 1024


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class DaemonTests(unittest.TestCase):
    daemon: Daemon
    folder: Path
    files: Path

    def setUp(self) -> None:
        # trial has no setUpClass: one daemon per test, the data files made once per run.
        cls = self
        pki = test_pki()
        cls.folder = Path("rpc-daemon").absolute()
        cls.files = cls.folder / "files"
        cls.files.mkdir(parents=True, exist_ok=True)
        (cls.folder / "users.conf").write_text(USERS_TEXT)
        big = cls.files / "big.bin"
        if not big.exists() or big.stat().st_size != BIG:
            with open(big, "wb") as handle:
                for _ in range(BIG // MB):
                    handle.write(os.urandom(MB))
        (cls.files / "small.txt").write_text("small file\n")
        config = f"""
[ccnet]
state-dir = {cls.folder / "var"}
users = {cls.folder / "users.conf"}

{tls_section(pki)}
[store]
url = sqlite:///{cls.folder / "var" / "ccnet.db"}

[rpc]
listen = ssl:0:interface=127.0.0.1
max-body = 1 MB
threads = 4

[rpc:Framework/Notebook]
class = ccnet.rpc.examples.notebook:NotebookService

[rpc:Framework/Files]
class = ccnet.rpc.examples.files:FilesService
root = {cls.files}
"""
        self.daemon = start_daemon(config, cls.folder)
        self.addCleanup(self.daemon.stop)

    def url(self, service: str) -> str:
        return f"https://localhost:{self.daemon.ports['rpc']}/{service}"

    def client(self, service: str, who: str = "client") -> RPCClient:
        pki = test_pki()
        c = RPCClient(self.url(service), cert=pki.cert(who), key=pki.key(who), ca=pki.ca_cert)
        self.addCleanup(c.close)
        return c

    async def test_notebook_set_get_list_delete_with_ownership(self) -> None:
        alice = self.client("Framework/Notebook")
        admin = self.client("Framework/Notebook", "admin")
        self.assertTrue((await alice.set("colour", {"rgb": (1, 2, 3)}))["OK"])
        got = await alice.get("colour")
        self.assertEqual(got["Value"]["value"], {"rgb": [1, 2, 3]})
        self.assertEqual(got["Value"]["author"], "client")
        self.assertIn("colour", (await admin.list("col"))["Value"])
        # Someone else's key: admin may overwrite (CSAdministrator), client may not delete admin's.
        self.assertTrue((await admin.set("colour", "red"))["OK"])
        self.assertTrue((await admin.set("admins-only", 1))["OK"])
        refused = await alice.delete("admins-only")
        self.assertFalse(refused["OK"])
        self.assertTrue((await admin.delete("admins-only"))["OK"])
        self.assertFalse((await alice.get("admins-only"))["OK"])

    async def test_seed_requests_whoami_against_daemon(self) -> None:
        pki = test_pki()
        url = self.url("Framework/Notebook")
        crt, key = str(pki.cert("client")), str(pki.key("client"))
        ca = str(pki.ca_cert)

        def seed() -> Any:
            with requests.post(url, data={"method": "whoami"}, cert=(crt, key), verify=ca) as r:
                return r.status_code, r.json()

        status, reply = await deferToThread(seed)
        self.assertEqual(status, 200)
        self.assertEqual(reply["Value"]["username"], "client")

    async def test_oversized_body_is_413_in_daemon(self) -> None:
        pki = test_pki()
        url = self.url("Framework/Notebook")
        crt, key, ca = str(pki.cert("client")), str(pki.key("client")), str(pki.ca_cert)

        def post() -> Any:
            data = {"method": "set", "args": '["k", "' + "x" * (2 * MB) + '"]'}
            with requests.post(url, data=data, cert=(crt, key), verify=ca) as r:
                return r.status_code, r.json()

        status, reply = await deferToThread(post)
        self.assertEqual(status, 413)
        self.assertFalse(reply["OK"])

    async def test_health_is_still_served_next_to_services(self) -> None:
        pki = test_pki()
        url = f"https://localhost:{self.daemon.ports['rpc']}/health"
        crt, key, ca = str(pki.cert("client")), str(pki.key("client")), str(pki.ca_cert)
        status = await deferToThread(lambda: requests.get(url, cert=(crt, key), verify=ca).status_code)
        self.assertEqual(status, 200)

    async def test_streaming_64MB_does_not_grow_daemon_memory_by_file_size(self) -> None:
        pid = self.daemon.process.pid
        client = self.client("Framework/Files")
        # Warm up: code paths, TLS session and buffers allocated once.
        warm = Path(self.mktemp())
        self.assertTrue((await client.receiveFile(str(warm), "small.txt"))["OK"])
        peak_before = _status_kb(pid, "VmHWM")
        dest = Path(self.mktemp())
        result = await client.receiveFile(str(dest), "big.bin")
        peak_after = _status_kb(pid, "VmHWM")
        self.assertEqual(result, {"OK": True, "Value": BIG})
        self.assertEqual(_sha256(dest), _sha256(self.files / "big.bin"))
        growth_mb = (peak_after - peak_before) / 1024
        # A server reading the file whole would add >= 64 MB to its peak.
        self.assertLess(growth_mb, 16, f"daemon peak RSS grew by {growth_mb:.1f} MB")

    def test_sync_client_lists_files(self) -> None:
        pki = test_pki()

        def work() -> Any:
            with SyncRPCClient(self.url("Framework/Files"), cert=pki.cert("client"),
                               key=pki.key("client"), ca=pki.ca_cert) as c:
                return c.listFiles()

        def check(result: Any) -> None:
            self.assertEqual(result["Value"]["big.bin"], BIG)

        return deferToThread(work).addCallback(check)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()
