"""End to end on loopback with real daemons (``twistd -n ccnet``):

infosender (under jobmgr) → local ccnet (role local, proxy) → remote ccnet
(role remote: infowriter + database + taskrouter), plus a taskrunner, jobmgr
restarts and a kill -9 of the remote in the middle of a stream.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
from pathlib import Path
from typing import Any

import psycopg
from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.support import PG_DSN, Daemon, free_port, start_daemon
from tests.test_cc_daemons_taskrunner import run_task
from tests.test_cc_handlers_common import alive, wait_for

REMOTE = """
[ccnet]
hostname = remote1
[cc]
cc-socket = tcp://127.0.0.1:{rport}
cc-role = remote
stats-period = 0
[routes]
pub.infofile = iw, dbrec
task = tr
[iw]
handler = infowriter
dstdir = {dst}
host-subdirs = yes
[dbrec]
handler = database
db = {dsn}
function = {schema}.record_infofile
worker-threads = 2
[tr]
handler = taskrouter
"""

LOCAL = """
[ccnet]
hostname = local1
[cc]
cc-socket = tcp://127.0.0.1:{lport}
cc-role = local
stats-period = 0
[routes]
pub = up
task = up
job = jm
[up]
handler = proxy
remote-cc = tcp://127.0.0.1:{rport}
[jm]
handler = jobmgr
daemons = d:infosender, d:taskrunner
stop-timeout = 5
[d:infosender]
module = cc.daemon.infosender
infodir = {src}
infomask = *.info
compression = gzip
scan-period = 0.1
retry-period = 1
watchdog-formula-a = 0.2
watchdog-formula-b = 0.2
[d:taskrunner]
module = cc.daemon.taskrunner
local-id = exec1
reg-period = 1
shell-commands = echo
"""

ACKED = re.compile(r"infosender: (\S+) acknowledged")
PID = re.compile(r"ccnet\.d:infosender running as pid (\d+)")


def _pg(sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


class EndToEndTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.schema = "cce2e_" + secrets.token_hex(4)
        try:
            yield threads.deferToThread(_pg, f"create schema {self.schema}")
        except psycopg.OperationalError as exc:
            raise self.skipTest(f"PostgreSQL not reachable: {exc}") from None
        s = self.schema
        yield threads.deferToThread(_pg, f"""
            create table {s}.infofiles (host text, filename text, mtime float8, size int,
                                        primary key (host, filename, mtime));
            create function {s}.record_infofile(m json) returns void language sql as $$
                insert into {s}.infofiles values (m->>'hostname', m->>'filename', (m->>'mtime')::float8,
                                                  (m->>'blob_size')::int)
                on conflict do nothing $$""")
        self.addCleanup(threads.deferToThread, _pg, f"drop schema {s} cascade")
        base = Path(self.mktemp()).absolute()
        self.src, self.dst = base / "src", base / "dst"
        self.src.mkdir(parents=True)
        self.rport, self.lport = free_port(), free_port()
        self.remote_dir, self.local_dir = base / "remote", base / "local"
        self.remote_text = REMOTE.format(rport=self.rport, dst=self.dst, dsn=PG_DSN, schema=s)
        self.remote = yield self.start(self.remote_text, self.remote_dir)
        self.local = yield self.start(
            LOCAL.format(lport=self.lport, rport=self.rport, src=self.src), self.local_dir)

    @defer.inlineCallbacks
    def start(self, text: str, folder: Path) -> Any:
        daemon: Daemon = yield threads.deferToThread(start_daemon, text, folder)

        @defer.inlineCallbacks
        def stop() -> Any:
            yield threads.deferToThread(daemon.stop)
            # As the original's test suite: no daemon may have logged a traceback.
            self.assertNotIn("Traceback", daemon.log())

        self.addCleanup(stop)
        return daemon

    def landed(self, name: str) -> Path:
        return self.dst / "local1" / name

    def same(self, name: str) -> bool:
        dst = self.landed(name)
        return dst.exists() and dst.read_bytes() == (self.src / name).read_bytes()

    @defer.inlineCallbacks
    def test_infofiles_land_byte_identical_with_rows_in_postgresql(self) -> Any:
        payloads = {f"f{i}.info": os.urandom(3000 * (i + 1)) for i in range(3)}
        for name, data in payloads.items():
            (self.src / name).write_bytes(data)
        (self.src / "skip.txt").write_bytes(b"not matched")
        yield wait_for(lambda: all(self.same(n) for n in payloads), timeout=30)
        self.assertFalse(self.landed("skip.txt").exists())
        rows = yield wait_for(lambda: len(_pg(f"select * from {self.schema}.infofiles")) >= 3 and
                              _pg(f"select filename, size from {self.schema}.infofiles order by filename"))
        self.assertEqual(
            [(Path(f).name, size) for f, size in rows],
            [(n, len(__import__("gzip").compress(d, 6, mtime=0))) for n, d in sorted(payloads.items())],
        )

    @defer.inlineCallbacks
    def test_task_round_trip_through_both_daemons(self) -> Any:
        endpoint = f"tcp://127.0.0.1:{self.rport}"

        def attempt() -> list[dict[str, Any]] | None:
            replies = run_task(endpoint, secrets.token_hex(4), {"task_handler": "shell", "task_id": "t1",
                                                               "cmd": ["echo", "from", "afar"]})
            return None if replies[-1]["_type"] == "error" else replies

        yield wait_for(lambda: "taskrunner: registered as exec1" in self.local.log(), timeout=30)
        replies = yield threads.deferToThread(attempt)
        assert replies is not None, self.local.log()
        self.assertEqual([r["status"] for r in replies], ["forwarded", "starting", "launched", "finished"])
        import base64

        self.assertEqual(base64.b64decode(replies[-1]["feedback"]["out"]), b"from afar\n")

    @defer.inlineCallbacks
    def test_jobmgr_restarts_a_killed_daemon(self) -> Any:
        first = yield wait_for(lambda: PID.findall(self.local.log()))
        os.kill(int(first[0]), signal.SIGKILL)
        pids = yield wait_for(lambda: len(PID.findall(self.local.log())) >= 2 and PID.findall(self.local.log()))
        self.assertNotEqual(pids[0], pids[1])
        self.assertTrue(alive(int(pids[1])))
        (self.src / "after.info").write_bytes(b"sent by the restarted daemon")
        yield wait_for(lambda: self.same("after.info"), timeout=30)

    @defer.inlineCallbacks
    def test_kill_9_of_the_remote_loses_no_acknowledged_infofile(self) -> Any:
        names = [f"s{i:03d}.info" for i in range(60)]

        def produce(start: int, end: int) -> None:
            for n in names[start:end]:
                (self.src / n).write_bytes(os.urandom(20000) + n.encode())

        yield threads.deferToThread(produce, 0, 30)
        yield wait_for(lambda: len(set(ACKED.findall(self.local.log()))) >= 5, timeout=30)
        self.remote.process.send_signal(signal.SIGKILL)
        yield threads.deferToThread(self.remote.process.wait)
        acked = {Path(p).name for p in ACKED.findall(self.local.log())}
        self.assertGreaterEqual(len(acked), 5)
        missing = [n for n in acked if not self.same(n)]
        self.assertEqual(missing, [], "acknowledged files lost by kill -9")
        yield threads.deferToThread(produce, 30, 60)  # keeps streaming while the remote is down
        self.remote = yield self.start(self.remote_text, self.remote_dir)
        yield wait_for(lambda: all(self.same(n) for n in names), timeout=60)
        leftovers = [p.name for p in (self.dst / "local1").iterdir() if p.name.endswith(".new")]
        self.assertEqual(leftovers, [])  # torn temp file of the killed write, if any, was replaced


class ExampleConfigsRunTests(TestCase):
    """conf/cc-local.ini and conf/cc-remote.ini run as shipped (ports, folders and
    the database schema swapped for the test's)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_example_configs_carry_an_infofile_end_to_end(self) -> Any:
        from tests.support import REPO

        schema = "ccconf_" + secrets.token_hex(4)
        try:
            yield threads.deferToThread(_pg, f"create schema {schema}")
        except psycopg.OperationalError as exc:
            raise self.skipTest(f"PostgreSQL not reachable: {exc}") from None
        self.addCleanup(threads.deferToThread, _pg, f"drop schema {schema} cascade")
        yield threads.deferToThread(_pg, f"""
            create table {schema}.cc_infofiles (host text, filename text, mtime float8, size int,
                                                primary key (host, filename, mtime));
            create function {schema}.cc_record_infofile(m json) returns void language sql as $$
                insert into {schema}.cc_infofiles values (m->>'hostname', m->>'filename',
                    (m->>'mtime')::float8, (m->>'blob_size')::int) on conflict do nothing $$""")
        base = Path(self.mktemp()).absolute()
        lport, rport = free_port(), free_port()

        def adapt(name: str) -> str:
            text = (REPO / "conf" / name).read_text()
            text = text.replace("tcp://127.0.0.1:10000", f"tcp://127.0.0.1:{lport}")
            text = text.replace("tcp://127.0.0.1:10001", f"tcp://127.0.0.1:{rport}")
            text = text.replace("../var/", f"{base}/var/")
            text = text.replace("postgresql://postgres@127.0.0.1/test", PG_DSN)
            return text.replace("public.cc_", f"{schema}.cc_")

        daemons = []
        for name in ("cc-remote.ini", "cc-local.ini"):
            d = yield threads.deferToThread(start_daemon, adapt(name), base / name.split(".")[0])
            daemons.append(d)
            self.addCleanup(threads.deferToThread, d.stop)
        info = base / "var" / "cc-local" / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "info.example").write_bytes(b"shipped config works\n")
        landed = yield wait_for(lambda: list((base / "var" / "cc-remote" / "info").glob("*/info.example")),
                                timeout=30)
        self.assertEqual(landed[0].read_bytes(), b"shipped config works\n")
        # infoscript ran `uptime` and its output arrived too; the row is in PostgreSQL
        yield wait_for(lambda: list((base / "var" / "cc-remote" / "info").glob("*/info.uptime")), timeout=30)
        rows = yield wait_for(lambda: _pg(f"select filename from {schema}.cc_infofiles"), timeout=30)
        self.assertTrue(any(r[0].endswith("info.example") for r in rows), rows)
        for d in daemons:
            self.assertNotIn("Traceback", d.log())
