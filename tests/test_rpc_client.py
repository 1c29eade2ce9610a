"""The RPC clients against a real mutual-TLS server: treq client, sync client, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.rpc import S_ERROR, S_OK, RPCClient, RPCService, SyncRPCClient
from ccnet.rpc.clientcore import URLRotation, decode_reply, service_urls
from ccnet.rpc.codec import JCodec
from tests.support import REPO, free_port
from tests.test_rpc_fixtures import CLIENT_DN, RPCSite, start_rpc_site


class ClientSample(RPCService):
    auth_Default = ["authenticated"]

    def export_concat(self, *parts: Any) -> dict[str, Any]:
        return S_OK("".join(str(p) for p in parts))

    def export_refuse(self) -> dict[str, Any]:
        return S_ERROR("refused on purpose")

    def export_blob(self, size: int) -> bytes:
        return bytes(range(256)) * (size // 256)


SERVICES = """
[rpc:Test/Client]
class = tests.test_rpc_client:ClientSample
"""


def files_section(root: Path) -> str:
    return f"""
[rpc:Test/Files]
class = ccnet.rpc.examples.files:FilesService
root = {root}
"""


class PureClientCoreTests(unittest.TestCase):
    def test_ban_list_resets_when_everything_is_banned(self) -> None:
        rot = URLRotation(["a", "b"])
        rot.ban("a")
        self.assertEqual(rot.candidates(), ["b"])
        rot.ban("b")
        self.assertEqual(rot.candidates(), ["a", "b"])

    def test_urls_from_comma_list(self) -> None:
        self.assertEqual(service_urls("https://a/S/C, https://b/S/C/"), ["https://a/S/C", "https://b/S/C"])
        self.assertRaises(ValueError, service_urls, "")
        self.assertRaises(ValueError, service_urls, "ftp://x")

    def test_non_json_error_pages_become_DIRAC_messages(self) -> None:
        reply = decode_reply(401, b"<html>nope</html>", "https://h/S/C", "m", JCodec())
        self.assertEqual(reply["Message"], "No access to https://h/S/C")
        reply = decode_reply(501, b"", "https://h/S/C", "m", JCodec())
        self.assertEqual(reply["Message"], "m is not implemented")


class TreqClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site: RPCSite = start_rpc_site(self, SERVICES)
        self.pki = self.site.pki

    def client(self, urls: Any, who: str = "client", **kw: Any) -> RPCClient:
        c = RPCClient(urls, cert=self.pki.cert(who), key=self.pki.key(who), ca=self.pki.ca_cert, **kw)
        self.addCleanup(c.close)
        return c

    async def test_execute_rpc_and_attribute_calls(self) -> None:
        c = self.client(self.site.url("Test/Client"))
        self.assertEqual(await c.executeRPC("concat", "a", 1, (2,)), {"OK": True, "Value": "a1[2]"})
        who = await c.whoami()
        self.assertEqual(who["Value"]["DN"], CLIENT_DN)

    async def test_server_errors_arrive_as_S_ERROR(self) -> None:
        c = self.client(self.site.url("Test/Client"))
        self.assertEqual((await c.refuse())["Message"], "refused on purpose")
        self.assertEqual((await c.nosuch())["Message"], "nosuch is not implemented")
        missing = await self.client(self.site.url("Test/Nope")).ping()
        self.assertFalse(missing["OK"])

    async def test_failover_to_second_url_when_first_is_down(self) -> None:
        dead = f"https://localhost:{free_port()}/Test/Client"
        c = self.client([dead, self.site.url("Test/Client")])
        result = await c.ping()
        self.assertTrue(result["OK"], result)
        self.assertIn(dead, c.rotation.banned)
        # The banned URL is skipped next time.
        self.assertEqual(c.rotation.candidates(), [self.site.url("Test/Client")])

    async def test_all_urls_down_is_S_ERROR(self) -> None:
        c = self.client([f"https://localhost:{free_port()}/Test/Client"])
        result = await c.ping()
        self.assertFalse(result["OK"])
        self.assertIn("cannot reach", result["Message"])

    async def test_timeout_is_S_ERROR_not_retried(self) -> None:
        from tests.test_rpc_server import CONCURRENCY, ConcurrencyService

        ConcurrencyService.release = None
        site = start_rpc_site(self, CONCURRENCY)
        c = self.client([site.url("Test/Concurrent"), self.site.url("Test/Client")], timeout=0.3)
        result = await c.ping()  # initializeHandler never fires: the call hangs
        self.assertFalse(result["OK"])
        self.assertIn("no reply", result["Message"])
        self.assertEqual(c.rotation.banned, set())
        assert ConcurrencyService.release is not None
        ConcurrencyService.release.callback(None)

    async def test_receive_file_streams_into_file_object(self) -> None:
        root = Path(self.mktemp())
        root.mkdir()
        (root / "data.bin").write_bytes(os.urandom(300_000))
        site = start_rpc_site(self, files_section(root))
        c = self.client(site.url("Test/Files"))
        sink = io.BytesIO()
        result = await c.receiveFile(sink, "data.bin")
        self.assertEqual(result, {"OK": True, "Value": 300_000})
        self.assertEqual(sink.getvalue(), (root / "data.bin").read_bytes())
        refused = await c.receiveFile(io.BytesIO(), "../../etc/passwd")
        self.assertFalse(refused["OK"])


class SyncClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = start_rpc_site(self, SERVICES)
        self.pki = self.site.pki

    def run_sync(self, fn: Any) -> defer.Deferred[Any]:
        return deferToThread(fn)

    async def test_same_api_without_reactor(self) -> None:
        dead = f"https://localhost:{free_port()}/Test/Client"

        def work() -> list[Any]:
            with SyncRPCClient([dead, self.site.url("Test/Client")], cert=self.pki.cert("client"),
                               key=self.pki.key("client"), ca=self.pki.ca_cert) as c:
                return [c.executeRPC("concat", "x", 2), c.whoami(), c.refuse(), sorted(c.rotation.banned)]

        concat, who, refused, banned = await self.run_sync(work)
        self.assertEqual(concat, {"OK": True, "Value": "x2"})
        self.assertEqual(who["Value"]["username"], "client")
        self.assertEqual(refused["Message"], "refused on purpose")
        self.assertEqual(banned, [dead])

    async def test_receive_file_to_path(self) -> None:
        root = Path(self.mktemp())
        root.mkdir()
        (root / "f.txt").write_bytes(b"hello file\n" * 1000)
        site = start_rpc_site(self, files_section(root))
        dest = Path(self.mktemp())

        def work() -> Any:
            c = SyncRPCClient(site.url("Test/Files"), cert=self.pki.cert("client"),
                              key=self.pki.key("client"), ca=self.pki.ca_cert)
            return c.receiveFile(dest, "f.txt")

        result = await self.run_sync(work)
        self.assertTrue(result["OK"], result)
        self.assertEqual(dest.read_bytes(), b"hello file\n" * 1000)


class DiracClientCompatibilityTests(unittest.TestCase):
    """What DIRAC's TornadoBaseClient sends, reproduced with plain requests."""

    async def test_receive_file_the_DIRAC_way(self) -> None:
        root = Path(self.mktemp())
        root.mkdir()
        payload = os.urandom(200_000)
        (root / "blob").write_bytes(payload)
        site = start_rpc_site(self, files_section(root))
        crt, key = site.pki.pair("client")
        ca = str(site.pki.ca_cert)
        url = site.url("Test/Files")

        def dirac_receive_file() -> tuple[str, bytes]:
            import requests

            kwargs = {"method": "streamToClient", "args": json.dumps(["blob"]), "clientVO": "vo1",
                      "rawContent": True}
            chunks = []
            with requests.post(url, data=kwargs, cert=(crt, key), verify=ca, stream=True) as r:
                r.raise_for_status()
                for chunk in r.iter_content(4096):
                    chunks.append(chunk)
                return r.headers["content-type"], b"".join(chunks)

        ctype, body = await deferToThread(dirac_receive_file)
        self.assertEqual(ctype, "application/octet-stream")
        self.assertEqual(body, payload)

    async def test_trusted_host_delegates_a_user(self) -> None:
        users = """
[user:client]
dn = /C=IT/O=ccnet/OU=Clients/CN=client
group = dirac_user
properties = NormalUser
[user:gateway]
dn = /C=IT/O=ccnet/OU=Clients/CN=admin
group = hosts
properties = TrustedHost
"""
        site = start_rpc_site(self, SERVICES, users=users)
        pki = site.pki
        gateway = RPCClient(site.url("Test/Client"), cert=pki.cert("admin"), key=pki.key("admin"),
                            ca=pki.ca_cert, extraCredentials=[CLIENT_DN, "dirac_user"])
        self.addCleanup(gateway.close)
        who = await gateway.whoami()
        self.assertEqual(who["Value"]["username"], "client")
        self.assertEqual(who["Value"]["DN"], CLIENT_DN)
        # The same forwarding from a plain user is refused.
        user = RPCClient(site.url("Test/Client"), cert=pki.cert("client"), key=pki.key("client"),
                         ca=pki.ca_cert, extraCredentials=[CLIENT_DN, "dirac_user"])
        self.addCleanup(user.close)
        refused = await user.whoami()
        self.assertFalse(refused["OK"])


class CLITests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = start_rpc_site(self, SERVICES)
        self.pki = self.site.pki

    def cli(self, *args: str) -> defer.Deferred[subprocess.CompletedProcess[str]]:
        command = [sys.executable, "-m", "ccnet.rpc.cli", *args,
                   "--cert", str(self.pki.cert("client")), "--key", str(self.pki.key("client")),
                   "--ca", str(self.pki.ca_cert)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return deferToThread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=60)

    async def test_prints_json_reply_and_exits_0_on_S_OK(self) -> None:
        done = await self.cli(self.site.url("Test/Client"), "concat", '"a"', "7", "plain text")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout), {"OK": True, "Value": "a7plain text"})

    async def test_exits_1_on_S_ERROR(self) -> None:
        done = await self.cli(self.site.url("Test/Client"), "refuse")
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(json.loads(done.stdout)["Message"], "refused on purpose")
