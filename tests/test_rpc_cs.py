"""Configuration/Server: DIRAC's CS on ccnet, over real mutual TLS, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

from diraccfg import CFG
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.rpc import RPCClient
from ccnet.rpc.cs import core
from tests.support import (
    REPO,
    create_database,
    drop_database,
    free_port,
    pg_reachable,
    start_service,
    test_pki,
    tls_section,
)
from tests.test_rpc_fixtures import USERS_TEXT

CS = "Configuration/Server"

MASTER_CFG = """\
DIRAC
{
  Setup = Test
  Configuration
  {
    Name = ccnet-test
  }
}
Systems
{
  Framework
  {
    Colour = blue
  }
}
"""


def cfg_of(compressed: bytes) -> CFG:
    """What a DIRAC client does with getCompressedData's bytes."""
    return CFG().loadFromBuffer(zlib.decompress(compressed).decode())


def edited(text: str, colour: str) -> str:
    cfg = CFG().loadFromBuffer(text)
    framework = cfg["Systems"]["Framework"]
    assert isinstance(framework, CFG)
    framework.setOption("Colour", colour)
    return str(cfg)


def encode(text: str) -> str:
    """commitNewData's argument, as DIRAC's CSJSONClient makes it."""
    return base64.b64encode(zlib.compress(text.encode(), 9)).decode()


# -- the pure core ----------------------------------------------------------------------


class CoreTests(unittest.TestCase):
    def test_versions_follow_dirac_format_and_always_sort_after_the_current(self) -> None:
        now = datetime.datetime(2026, 11, 28, 10, 0, 0, 123456)
        self.assertEqual(core.next_version(now, "0"), "2026-11-28 10:00:00.123456")
        # A clock that did not move (or went back) still gives a later version.
        later = core.next_version(now, "2026-11-28 10:00:00.123456")
        self.assertGreater(later, "2026-11-28 10:00:00.123456")
        self.assertEqual(later, "2026-11-28 10:00:00.123457")
        self.assertGreater(core.next_version(now, "2027-01-01 00:00:00"), "2027-01-01 00:00:00")

    def test_commit_needs_the_current_version_and_the_same_name(self) -> None:
        base = core.with_options(core.snapshot(MASTER_CFG), {core.VERSION_OPTION: "2026-01-01 00:00:00"})
        now = datetime.datetime(2026, 2, 1)
        new = core.prepare_commit(base, edited(base.text, "red"), now)
        self.assertEqual(new.version, "2026-02-01 00:00:00")
        self.assertEqual(cfg_of(new.compressed).getOption("Systems/Framework/Colour"), "red")
        with self.assertRaises(core.CommitRefused):
            core.prepare_commit(new, edited(base.text, "green"), now)  # stale
        renamed = core.with_options(new, {core.NAME_OPTION: "other"})
        with self.assertRaises(core.CommitRefused):
            core.prepare_commit(new, renamed.text, now)
        # A rollback: old contents take the current version first.
        back = core.prepare_commit(new, base.text, datetime.datetime(2026, 3, 1), keep_version=True)
        self.assertEqual(back.option("Systems/Framework/Colour"), "blue")
        self.assertEqual(back.version, "2026-03-01 00:00:00")

    def test_bad_commit_data_is_a_cfg_error(self) -> None:
        for bad in ["not base64!", base64.b64encode(b"not zlib").decode(),
                    base64.b64encode(zlib.compress(b"\xff\xfe")).decode(),
                    encode("DIRAC\n{\n"), encode("}\n")]:
            with self.assertRaises(core.CfgError, msg=bad):
                core.snapshot(core.decode_commit(bad))
        bomb = base64.b64encode(zlib.compress(b"a" * 2000)).decode()
        with self.assertRaises(core.CfgError):
            core.decode_commit(bomb, limit=1000)

    def test_workers_expire_after_the_grace_time(self) -> None:
        workers = core.WorkerRegistry(grace=600)
        self.assertTrue(workers.seen("https://w1/Configuration/Server", 0))
        self.assertFalse(workers.seen("https://w1/Configuration/Server", 100))
        self.assertTrue(workers.seen("https://w2/Configuration/Server", 500))
        self.assertEqual(workers.expire(700), [])
        self.assertEqual(workers.expire(701), ["https://w1/Configuration/Server"])
        self.assertEqual(core.servers_value("https://m/Configuration/Server", workers.urls),
                         "https://m/Configuration/Server, https://w2/Configuration/Server")


# -- the service in the daemon ----------------------------------------------------------


def daemon_config(folder: Path, store_url: str, cs_options: str, port: int) -> str:
    pki = test_pki()
    (folder / "users.conf").write_text(USERS_TEXT)
    return f"""
[ccnet]
state-dir = {folder / "var"}
users = {folder / "users.conf"}

{tls_section(pki)}
[store]
url = {store_url}

[rpc]
listen = ssl:{port}:interface=127.0.0.1
url = https://localhost:{port}
allow-proxies = yes

[rpc:{CS}]
class = ccnet.rpc.cs.service:ConfigurationServer
{cs_options}
"""


class CSDaemonMixin:
    """A daemon serving a master CS; ``store_url()`` picks the backend."""

    def store_url(self, folder: Path) -> str:
        raise NotImplementedError

    async def start_cs(self, cs_options: str = "File = master.cfg", text: str | None = MASTER_CFG,
                       folder: Path | None = None, port: int | None = None) -> tuple[Any, str, Path]:
        case: Any = self
        if folder is None:
            folder = Path(case.mktemp()).absolute()
            folder.mkdir()
            if text is not None:
                (folder / "master.cfg").write_text(text)
        port = port or free_port()
        config = daemon_config(folder, self.store_url(folder), cs_options, port)
        service = await start_service(case, config, folder)
        return service, f"https://localhost:{port}/{CS}", folder

    async def start_master_and_worker(self, master_options: str, worker_options: str) -> tuple[str, Any, str, Path]:
        """A master CS and a worker following it on another port:
        (master URL, worker service, worker URL, worker folder)."""
        case: Any = self
        _, master_url, _ = await self.start_cs(master_options)
        worker_folder = Path(case.mktemp()).absolute()
        worker_folder.mkdir()
        worker, worker_url, _ = await self.start_cs(
            f"MasterServer = {master_url}\nRefreshTime = 0.2\n{worker_options}", text=None, folder=worker_folder)
        return master_url, worker, worker_url, worker_folder

    async def servers_become(self, client: RPCClient, expected: str) -> None:
        """Wait (bounded) until ``client``'s CS lists ``expected`` in DIRAC/Configuration/Servers."""
        for _ in range(200):
            cfg = cfg_of(base64.b64decode((await client.getCompressedData())["Value"]))
            if cfg.getOption("DIRAC/Configuration/Servers") == expected:
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"Servers never became {expected}")  # type: ignore[attr-defined]

    def client(self, url: str, who: str = "client") -> RPCClient:
        pki = test_pki()
        c = RPCClient(url, cert=pki.cert(who), key=pki.key(who), ca=pki.ca_cert)
        self.addCleanup(c.close)  # type: ignore[attr-defined]
        return c

    async def test_version_and_compressed_data_round_trip(self) -> None:
        check: Any = self
        _, url, folder = await self.start_cs()
        user = self.client(url)
        version = (await user.getVersion())["Value"]
        # The file had no version: one was made, in DIRAC's format, with our URL as master.
        check.assertEqual(datetime.datetime.fromisoformat(version).year, datetime.datetime.now().year)
        data = (await user.getCompressedData())["Value"]
        cfg = cfg_of(base64.b64decode(data))
        check.assertEqual(cfg.getOption("DIRAC/Configuration/Version"), version)
        check.assertEqual(cfg.getOption("DIRAC/Configuration/MasterServer"), url)
        check.assertEqual(cfg.getOption("DIRAC/Configuration/Servers"), url)
        check.assertEqual(cfg.getOption("Systems/Framework/Colour"), "blue")
        # The file on disk is what is served (written back with the version).
        check.assertEqual(str(CFG().loadFromFile(str(folder / "master.cfg"))), str(cfg))
        check.assertEqual((await user.writeEnabled())["Value"], True)

        old = (await user.getCompressedDataIfNewer("2000-01-01 00:00:00"))["Value"]
        check.assertEqual(old["newestVersion"], version)
        check.assertEqual(str(cfg_of(base64.b64decode(old["data"]))), str(cfg))
        same = (await user.getCompressedDataIfNewer(version))["Value"]
        check.assertEqual(same, {"newestVersion": version})

    async def test_commit_history_and_rollback(self) -> None:
        check: Any = self
        _, url, folder = await self.start_cs()
        user, admin = self.client(url), self.client(url, "admin")
        first = (await user.getVersion())["Value"]
        text = zlib.decompress(base64.b64decode((await user.getCompressedData())["Value"])).decode()

        refused = await user.commitNewData(encode(edited(text, "red")))
        check.assertFalse(refused["OK"])
        check.assertIn("not authorized", refused["Message"])
        check.assertEqual((await user.getVersion())["Value"], first)

        committed = await admin.commitNewData(encode(edited(text, "red")))
        check.assertTrue(committed["OK"], committed)
        second = (await user.getVersion())["Value"]
        check.assertEqual(committed["Value"], second)
        check.assertGreater(second, first)
        served = cfg_of(base64.b64decode((await user.getCompressedData())["Value"]))
        check.assertEqual(served.getOption("Systems/Framework/Colour"), "red")
        check.assertEqual(CFG().loadFromFile(str(folder / "master.cfg")).getOption("Systems/Framework/Colour"), "red")

        # Based on the first version: stale, refused, nothing changes.
        stale = await admin.commitNewData(encode(edited(text, "green")))
        check.assertFalse(stale["OK"])
        check.assertIn("versions differ", stale["Message"])
        check.assertEqual((await user.getVersion())["Value"], second)

        history = (await admin.getCommitHistory())["Value"]
        check.assertEqual(history, [["admin", second], ["(file)", first]])
        check.assertEqual((await admin.getCommitHistory(1))["Value"], [["admin", second]])
        contents = (await admin.getVersionContents([first]))["Value"]
        check.assertEqual(cfg_of(contents[0]).getOption("Systems/Framework/Colour"), "blue")
        check.assertFalse((await user.getVersionContents([first]))["OK"])
        check.assertFalse((await admin.getVersionContents(["1999-01-01 00:00:00"]))["OK"])

        rolled = await admin.rollbackToVersion(first)
        check.assertTrue(rolled["OK"], rolled)
        third = (await user.getVersion())["Value"]
        check.assertGreater(third, second)
        served = cfg_of(base64.b64decode((await user.getCompressedData())["Value"]))
        check.assertEqual(served.getOption("Systems/Framework/Colour"), "blue")
        check.assertEqual(served.getOption("DIRAC/Configuration/Version"), third)
        check.assertEqual((await admin.getCommitHistory())["Value"][0], ["admin", third])
        check.assertFalse((await admin.rollbackToVersion("1999-01-01 00:00:00"))["OK"])

    async def test_history_survives_a_restart(self) -> None:
        check: Any = self
        service, url, folder = await self.start_cs()
        admin = self.client(url, "admin")
        text = zlib.decompress(base64.b64decode((await admin.getCompressedData())["Value"])).decode()
        committed = (await admin.commitNewData(encode(edited(text, "red"))))["Value"]
        await admin.close()
        await service.stopService()
        _, url, _ = await self.start_cs(folder=folder, port=int(url.split(":")[2].split("/")[0]))
        again = self.client(url, "admin")
        check.assertEqual((await again.getVersion())["Value"], committed)
        check.assertEqual([h[0] for h in (await again.getCommitHistory())["Value"]], ["admin", "(file)"])

    async def test_an_edited_file_is_served_on_reload_under_a_new_version(self) -> None:
        check: Any = self
        service, url, folder = await self.start_cs()
        user = self.client(url)
        first = (await user.getVersion())["Value"]
        path = folder / "master.cfg"
        path.write_text(edited(path.read_text(), "purple"))  # the operator's edit, same version
        service.reload()  # what SIGHUP does
        for _ in range(200):
            if (await user.getVersion())["Value"] != first:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        served = cfg_of(base64.b64decode((await user.getCompressedData())["Value"]))
        check.assertEqual(served.getOption("Systems/Framework/Colour"), "purple")
        second = served.getOption("DIRAC/Configuration/Version")
        check.assertGreater(second, first)
        check.assertEqual(CFG().loadFromFile(str(path)).getOption("DIRAC/Configuration/Version"), second)
        check.assertEqual((await user.getCommitHistory())["Value"], [["(file)", second], ["(file)", first]])
        # A reload of an unchanged file changes nothing.
        service.reload()
        await task.deferLater(reactor, 0.2, lambda: None)
        check.assertEqual((await user.getVersion())["Value"], second)

    async def test_bad_input_is_refused_and_nothing_changes(self) -> None:
        check: Any = self
        _, url, folder = await self.start_cs()
        admin = self.client(url, "admin")
        version = (await admin.getVersion())["Value"]
        on_disk = (folder / "master.cfg").read_text()
        bad_inputs = {
            "not base64": "@@@ not base64 @@@",
            "not zlib": base64.b64encode(b"plain text").decode(),
            "not cfg": encode("DIRAC\n{\n  Configuration\n  {\n"),
            "no version": encode("DIRAC\n{\n  Configuration\n  {\n    Name = ccnet-test\n  }\n}\n"),
        }
        for why, data in bad_inputs.items():
            reply = await admin.commitNewData(data)
            check.assertFalse(reply["OK"], why)
            check.assertIsInstance(reply["Message"], str)
        check.assertFalse((await admin.commitNewData(42))["OK"])  # types_commitNewData
        check.assertFalse((await admin.getCompressedDataIfNewer(1))["OK"])
        check.assertEqual((await admin.getVersion())["Value"], version)
        check.assertEqual((folder / "master.cfg").read_text(), on_disk)
        check.assertEqual(len((await admin.getCommitHistory())["Value"]), 1)

    async def test_worker_follows_the_master_on_another_port(self) -> None:
        check: Any = self
        master_url, _, worker_url, worker_folder = await self.start_master_and_worker(
            "File = master.cfg\nSlavesGraceTime = 600", "File = copy.cfg")
        admin, worker = self.client(master_url, "admin"), self.client(worker_url, "admin")

        async def worker_serves(colour: str) -> str:
            for _ in range(200):
                reply = await worker.getCompressedData()
                if reply["OK"] and reply["Value"]:
                    cfg = cfg_of(base64.b64decode(reply["Value"]))
                    if cfg.getOption("Systems/Framework/Colour") == colour:
                        return str(cfg.getOption("DIRAC/Configuration/Version"))
                await task.deferLater(reactor, 0.05, lambda: None)
            check.fail(f"the worker never served colour {colour}")
            raise AssertionError

        # The worker published itself: the master lists it in Servers (a new version).
        await self.servers_become(admin, f"{master_url}, {worker_url}")

        text = zlib.decompress(base64.b64decode((await admin.getCompressedData())["Value"])).decode()
        committed = await admin.commitNewData(encode(edited(text, "red")))
        check.assertTrue(committed["OK"], committed)
        check.assertEqual(await worker_serves("red"), committed["Value"])
        check.assertEqual((await worker.writeEnabled())["Value"], False)
        refused = await worker.commitNewData(encode(edited(text, "green")))
        check.assertEqual(refused["Message"], "Configuration modification is not allowed in this server")
        # Its local copy is the master's version.
        copy = CFG().loadFromFile(str(worker_folder / "copy.cfg"))
        check.assertEqual(copy.getOption("DIRAC/Configuration/Version"), committed["Value"])

    async def test_publish_needs_trusted_host_and_a_pingable_cs(self) -> None:
        check: Any = self
        _, url, _ = await self.start_cs()
        user = self.client(url)
        check.assertFalse((await user.publishSlaveServer("https://localhost:1/Configuration/Server"))["OK"])
        host = self.client(url, "server")  # the TrustedHost of USERS_TEXT
        version = (await host.getVersion())["Value"]
        # Nothing answers there: not listed, no new version (DIRAC ignores it too).
        check.assertTrue((await host.publishSlaveServer(f"https://localhost:{free_port()}/{CS}"))["OK"])
        check.assertEqual((await host.getVersion())["Value"], version)

    async def test_a_malformed_worker_url_is_refused_and_changes_nothing(self) -> None:
        check: Any = self
        _, url, _ = await self.start_cs()
        host = self.client(url, "server")
        version = (await host.getVersion())["Value"]
        for bad in ("https://", "https://localhost:99999/Configuration/Server", "https://[::1/Configuration/Server",
                    "https://local host/Configuration/Server", "http://localhost:1/Configuration/Server",
                    # Two URLs in one: the ping would try the first, Servers would list both.
                    f"{url}, https://elsewhere.example/Configuration/Server"):
            reply = await host.publishSlaveServer(bad)
            check.assertFalse(reply["OK"], bad)
            check.assertIn("worker URL", reply["Message"], bad)
        check.assertEqual((await host.getVersion())["Value"], version)

    async def test_a_silent_worker_leaves_servers_after_the_grace_time(self) -> None:
        check: Any = self
        master_url, worker_service, worker_url, _ = await self.start_master_and_worker(
            "File = master.cfg\nSlavesGraceTime = 1", "")
        admin = self.client(master_url, "admin")
        await self.servers_become(admin, f"{master_url}, {worker_url}")
        await worker_service.stopService()
        await self.servers_become(admin, master_url)
        check.assertEqual([h[0] for h in (await admin.getCommitHistory())["Value"]],
                          ["(workers)", "(workers)", "(file)"])

    async def test_cli_dumps_and_commits_without_dirac(self) -> None:
        check: Any = self
        _, url, folder = await self.start_cs()
        pki = test_pki()

        def cli(who: str, *args: str) -> Any:
            command = [sys.executable, "-m", "ccnet.rpc.cli", url, *args, "--cert", str(pki.cert(who)),
                       "--key", str(pki.key(who)), "--ca", str(pki.ca_cert)]
            env = dict(os.environ, PYTHONPATH=str(REPO))
            return deferToThread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=60)

        dumped = await cli("client", "cs-dump")
        check.assertEqual(dumped.returncode, 0, dumped.stderr)
        check.assertEqual(dumped.stdout, (folder / "master.cfg").read_text())
        mine = folder / "mine.cfg"
        done = await cli("client", "cs-dump", "-o", str(mine))
        check.assertEqual(done.returncode, 0, done.stderr)
        mine.write_text(edited(mine.read_text(), "red"))
        refused = await cli("client", "cs-commit", str(mine))
        check.assertEqual(refused.returncode, 1)
        committed = await cli("admin", "cs-commit", str(mine))
        check.assertEqual(committed.returncode, 0, committed.stderr)
        version = json.loads(committed.stdout)["Value"]
        check.assertEqual((await self.client(url).getVersion())["Value"], version)
        check.assertIn("Colour = red", (folder / "master.cfg").read_text())
        again = await cli("admin", "cs-commit", str(mine))  # the dump's version is stale now
        check.assertEqual(again.returncode, 1)
        check.assertIn("versions differ", json.loads(again.stdout)["Message"])


class SQLiteCSTests(CSDaemonMixin, unittest.TestCase):
    timeout = 60

    def store_url(self, folder: Path) -> str:
        return f"sqlite:///{folder / 'var' / 'ccnet.db'}"


class PostgreSQLCSTests(CSDaemonMixin, unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        why = pg_reachable()
        if why:
            raise unittest.SkipTest(why)
        self.dsn = create_database()
        self.addCleanup(drop_database, self.dsn)

    def store_url(self, folder: Path) -> str:
        return self.dsn


