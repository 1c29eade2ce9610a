"""pg_logforward: datagrams as the PostgreSQL extension builds them, over real UDP.

``extension_datagram`` follows ``format_netstr``/``append_netstr``/``append_string``
of mpihlak/pg_logforward's ``pg_logforward.c``: eleven netstrings, ints printed
with ``%d``, NULL as an empty string, everything cut at MAX_MESSAGE_SIZE - 1 bytes.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase
from zope.interface import implementer, provider

from ccnet.cc.daemons.base import load_job
from ccnet.cc.daemons.pg_logforward import PgLogForward, parse_options
from ccnet.cc.daemons.plugins.pg_logforward import IPgLogForwardPlugin, IPgLogForwardPluginFactory
from ccnet.cc.handler import CCHandler, CCRequest
from ccnet.cc.pglog import FIELDS, RecordError, dump, parse_netstr, pop
from ccnet.config import ConfigError
from tests.support import free_port, start_daemon
from tests.test_cc_handlers_common import ServerMixin, wait_for

MAX_MESSAGE_SIZE = 8192
ERROR, LOG = 20, 15


def extension_datagram(elevel: int, sqlerrcode: int = 0, username: str | None = "app",
                       database: str | None = "appdb", remotehost: str | None = "10.0.0.7",
                       funcname: str | None = "exec_simple_query", message: str | None = "boom",
                       detail: str | None = None, hint: str | None = None, context: str | None = None,
                       query: str | None = "select 1") -> bytes:
    buf = bytearray()
    room = [MAX_MESSAGE_SIZE]

    def append_string(src: bytes) -> None:  # append_string(): at most max - 1 bytes in all
        if not room[0]:
            return
        n = min(len(src), room[0] - 1)
        buf.extend(src[:n])
        room[0] -= n

    def append_netstr(value: str | None) -> None:
        raw = (value or "").encode()
        append_string(b"%d:" % len(raw))
        append_string(raw)
        append_string(b",")

    append_netstr(str(elevel))
    append_netstr(str(sqlerrcode))
    for value in (username, database, remotehost, funcname, message, detail, hint, context, query):
        append_netstr(value)
    return bytes(buf)


class ParserTests(TestCase):
    def test_extension_record_parses_like_the_original(self) -> None:
        rec = parse_netstr(extension_datagram(ERROR, 16777248, message="relation \"x\" does not exist",
                                              detail=None, context="SQL function"))
        self.assertEqual(rec["elevel"], ERROR)
        self.assertEqual(rec["elevel_text"], "ERROR")
        self.assertEqual(rec["sqlerrcode"], 16777248)
        self.assertEqual(rec["message"], 'relation "x" does not exist')
        self.assertEqual(rec["detail"], "")  # NULL travels as an empty netstring
        self.assertEqual(rec["context"], "SQL function")
        self.assertEqual(sorted(k for k in rec if k != "elevel_text"), sorted(FIELDS))

    def test_malformed_datagrams_raise_record_error(self) -> None:
        good = extension_datagram(ERROR)
        cases = {
            b"": "no elevel",
            b"garbage": "length prefix",
            good[:-3]: "cut short",
            good + b"1:x,": "after the last field",
            extension_datagram(99): "unknown elevel",
            b"3:abc," + good[len(b"2:20,"):]: "integers",
            b"5:12345?": "unknown tnetstring type",
            b"99999999999:x,": "length prefix",
        }
        for data, fragment in cases.items():
            with self.assertRaises(RecordError) as caught:
                parse_netstr(data)
            self.assertIn(fragment, str(caught.exception), data)

    def test_oversize_record_is_cut_as_the_extension_cuts_it(self) -> None:
        data = extension_datagram(ERROR, message="m" * 9000)
        self.assertEqual(len(data), MAX_MESSAGE_SIZE - 1)
        self.assertRaises(RecordError, parse_netstr, data)  # the original drops these too

    def test_tnetstring_types_round_trip(self) -> None:
        value = {b"a": [1, 2.5, True, None, b"x"], b"b": {b"c": False}}
        self.assertEqual(pop(dump(value)), (value, b""))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_bytes_never_raise_anything_but_record_error(self, data: bytes) -> None:
        try:
            parse_netstr(data)
        except RecordError:
            pass


@provider(IPgLogForwardPluginFactory)
@implementer(IPgLogForwardPlugin)
class CollectingPlugin:
    """A third-party plugin registered by ``module = tests...:CollectingPlugin``."""

    log_formats = ("netstr",)
    seen: list[dict[str, Any]] = []

    def __init__(self, name: str, options: Any, daemon: Any) -> None:
        self.name = name
        self.crash_on = options.get("crash-on", "")

    def process(self, record: dict[str, Any]) -> None:
        if self.crash_on and record["message"] == self.crash_on:
            raise RuntimeError("plugin bug")
        type(self).seen.append(record)

    def stop(self) -> None:
        pass


class Recorder(CCHandler):
    """CC handler keeping what arrives (registered as ``handler = tests...:Recorder``)."""

    handler_name = "recorder"
    got: list[tuple[str, dict[str, Any]]] = []

    def handle(self, request: CCRequest) -> None:
        type(self).got.append((request.type, request.payload or {}))


SERVER = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
stats-period = 0
[routes]
db = rec
[rec]
handler = tests.test_cc_daemons_pg_logforward:Recorder
"""

# As the original's docs configure it (plugin module path included); port 0 = any free one.
DAEMON = """
[ccserver]
cc-socket = tcp://127.0.0.1:{port}

[pg_logforward]
listen-host = 127.0.0.1
listen-port = 0
log-format = netstr
log-parsing-errors = {log_errors}
stats-period = 30
plugins = logwatch, collect

[logwatch]
module = cc.daemon.plugins.pg_logforward.example_logwatch
msg-suffix = confdb

[collect]
module = tests.test_cc_daemons_pg_logforward:CollectingPlugin
crash-on = crash me
"""


class DaemonTests(ServerMixin, TestCase):
    timeout = 30

    def start_daemon(self, log_errors: str = "yes") -> PgLogForward:
        CollectingPlugin.seen = []
        Recorder.got = []
        port = free_port()
        ini = Path(self.mktemp()).absolute()
        ini.parent.mkdir(parents=True, exist_ok=True)
        ini.write_text(DAEMON.format(port=port, log_errors=log_errors))
        self.server = self.start_server(SERVER.format(port=port))
        cfg, opts = load_job(ini, "pg_logforward", parse_options, env={})
        job = PgLogForward(cfg, opts, reactor)
        job.start()
        self.addCleanup(job.stop)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.udp.close)
        self.target = ("127.0.0.1", job.port.getHost().port)
        return job

    def send(self, data: bytes) -> None:
        self.udp.sendto(data, self.target)

    @defer.inlineCallbacks
    def test_error_record_becomes_a_confdb_message_and_plugins_see_every_record(self) -> Any:
        job = self.start_daemon()
        self.send(extension_datagram(LOG, message="connection received"))
        self.send(extension_datagram(ERROR, message='relation "t" does not exist', username="bob",
                                     remotehost="10.1.2.3", database="shop"))
        yield wait_for(lambda: len(Recorder.got) == 1 and len(CollectingPlugin.seen) == 2)
        mtype, body = Recorder.got[0]
        self.assertEqual(mtype, "db.confdb")
        self.assertEqual(body["function"], "log.add")
        self.assertEqual(body["params"], [job.config.hostname, None, "postgres_monitoring", "ERROR", "shop",
                                          'bob 10.1.2.3: relation "t" does not exist'])
        self.assertEqual([r["elevel_text"] for r in CollectingPlugin.seen], ["LOG", "ERROR"])
        self.assertEqual(job.stats["count"], 2)

    @defer.inlineCallbacks
    def test_malformed_datagrams_and_plugin_crashes_are_counted_logged_never_fatal(self) -> Any:
        job = self.start_daemon()
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for bad in (b"garbage", extension_datagram(ERROR)[:-4], extension_datagram(99), b"\x00" * 100):
            self.send(bad)
        self.send(extension_datagram(ERROR, message="crash me"))
        self.send(extension_datagram(ERROR, message="still here"))
        yield wait_for(lambda: any(r["message"] == "still here" for r in CollectingPlugin.seen)
                       and len(Recorder.got) == 2)
        self.assertEqual(job.stats["parse_errors"], 4)
        self.assertEqual(job.stats["plugin_errors"], 1)
        self.assertEqual(job.stats["count"], 6)
        warnings = [e for e in events if "netstr parsing error" in str(e.get("log_format", ""))]
        self.assertEqual(len(warnings), 4)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # the plugin's crash, with traceback
        # the other plugin got both error records, the crashing one only the good one
        self.assertEqual([b["params"][5] for _, b in Recorder.got], ["app 10.0.0.7: crash me", "app 10.0.0.7: still here"])
        job.log_stats()
        stats = [e for e in events if e.get("pg_logforward_stats")]
        self.assertEqual(stats[-1]["pg_logforward_stats"]["parse_errors"], 4)

    def test_config_errors_name_the_section_and_key(self) -> None:
        from ccnet.config import IniFile

        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        for text, section, key in (
            ("[pg_logforward]\nlisten-port = 1\nplugins = nope\n", "pg_logforward", "plugins"),
            ("[pg_logforward]\nlisten-port = 1\nplugins = p\n[p]\nmodule = json\n", "p", "module"),
            ("[pg_logforward]\nlisten-port = 1\nlog-format = json\n", "pg_logforward", "log-format"),
            ("[pg_logforward]\nplugins =\n", "pg_logforward", "listen-port"),
        ):
            path = folder / "pg.ini"
            path.write_text(text)
            ini = IniFile.load(path)
            with self.assertRaises(ConfigError) as caught:
                parse_options(ini.section("pg_logforward"), ini)
            self.assertEqual((caught.exception.section, caught.exception.key), (section, key), text)




MANAGED = """
[cc]
cc-socket = tcp://127.0.0.1:{cc_port}
cc-role = local
stats-period = 0

[routes]
db = uplink
job = jobs

[uplink]
handler = proxy
remote-cc = tcp://127.0.0.1:{remote_port}

[jobs]
handler = jobmgr
daemons = d:pglf

[d:pglf]
module = cc.daemon.pg_logforward
listen-port = {udp_port}
plugins = logwatch

[logwatch]
module = cc.daemon.plugins.pg_logforward.example_logwatch
"""


class ManagedDaemonTests(TestCase):
    """twistd ccnet runs pg_logforward under jobmgr; an error record sent over UDP
    arrives upstream as db.confdb through the local proxy."""

    timeout = 60

    @defer.inlineCallbacks
    def test_datagram_to_confdb_message_through_jobmgr_and_proxy(self) -> Any:
        ctx = zmq.Context.instance()
        remote = ctx.socket(zmq.ROUTER)
        remote.setsockopt(zmq.LINGER, 0)
        remote.setsockopt(zmq.RCVTIMEO, 1000)
        remote_port = remote.bind_to_random_port("tcp://127.0.0.1")
        self.addCleanup(remote.close)
        udp_port = free_port_udp()
        text = MANAGED.format(cc_port=free_port(), remote_port=remote_port, udp_port=udp_port)
        daemon = yield threads.deferToThread(start_daemon, text, Path(self.mktemp()).absolute())
        self.addCleanup(threads.deferToThread, daemon.stop)

        def scenario() -> list[bytes]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for _ in range(300):  # until the child listens (UDP has no connect to wait on)
                    udp.sendto(extension_datagram(ERROR, message="disk full"), ("127.0.0.1", udp_port))
                    try:
                        return remote.recv_multipart()  # type: ignore[no-any-return]
                    except zmq.Again:
                        continue
                raise AssertionError("nothing arrived:\n" + daemon.log())
            finally:
                udp.close()

        frames = yield threads.deferToThread(scenario)
        sep = frames.index(b"")
        self.assertEqual(frames[sep + 1], b"db.confdb")
        body = json.loads(frames[sep + 2])
        self.assertEqual(body["function"], "log.add")
        self.assertEqual(body["params"][3:], ["ERROR", "appdb", "app 10.0.0.7: disk full"])
        self.assertNotIn("Traceback", daemon.log())


def free_port_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
