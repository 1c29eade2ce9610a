"""infosender and infoscript daemons against a real CC server with infowriter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from ccnet.cc.daemons.base import load_job
from ccnet.cc.daemons.infoscript import InfoScript
from ccnet.cc.daemons.infoscript import parse_options as script_options
from ccnet.cc.daemons.infosender import InfoSender, infofile_message, parse_options
from ccnet.config import ConfigError
from tests.support import free_port
from tests.test_cc_crypto import make_keystore
from tests.test_cc_handlers_common import ServerMixin, wait_for

SERVER = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
stats-period = 0
[routes]
pub.infofile = iw
log = ll
[ll]
handler = locallogger
logfile = {dst}/daemons.log
[iw]
handler = infowriter
dstdir = {dst}
host-subdirs = yes
"""

DAEMON = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
[ccnet]
hostname = sender1
[infosender]
infodir = {src}
infomask = info.*
compression = {comp}
scan-period = 0.05
retry-period = 0.3
cc-log-level = {level}
[infoscript]
info-script = printf 'line1\\nline2\\n'
info-name = script.out
info-period = 0.2
compression = bzip2
use-blob = no
"""


class InfoSenderTests(ServerMixin, TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).absolute()
        self.src = self.base / "src"
        self.dst = self.base / "dst"
        self.src.mkdir(parents=True)
        self.port = free_port()

    def job(self, cls: Any = InfoSender, section: str = "infosender", comp: str = "gzip",
            level: str = "warn") -> Any:
        ini = self.base / "daemon.ini"
        ini.write_text(DAEMON.format(port=self.port, src=self.src, comp=comp, level=level))
        cfg, opts = load_job(ini, section, script_options if cls is InfoScript else parse_options, env={})
        job = cls(cfg, opts, reactor)
        job.start()
        self.addCleanup(job.stop)
        return job

    def server(self) -> Any:
        return self.start_server(SERVER.format(port=self.port, dst=self.dst))

    @defer.inlineCallbacks
    def test_files_arrive_byte_identical_and_changes_are_resent(self) -> Any:
        self.server()
        a, b = os.urandom(20000), b"small\n"
        (self.src / "info.a").write_bytes(a)
        (self.src / "info.b").write_bytes(b)
        (self.src / "other").write_bytes(b"not matched")
        job = self.job()
        yield wait_for(lambda: job.acked >= 2)
        self.assertEqual((self.dst / "sender1" / "info.a").read_bytes(), a)
        self.assertEqual((self.dst / "sender1" / "info.b").read_bytes(), b)
        self.assertFalse((self.dst / "sender1" / "other").exists())
        os.utime(self.src / "info.b", (10, 10))  # older mtime: receiver keeps the newer one
        (self.src / "info.a").write_bytes(b"changed")
        os.utime(self.src / "info.a", (4e9, 4e9))
        yield wait_for(lambda: (self.dst / "sender1" / "info.a").read_bytes() == b"changed")

    @defer.inlineCallbacks
    def test_sender_retries_until_the_server_comes_up(self) -> Any:
        data = os.urandom(1000)
        (self.src / "info.late").write_bytes(data)
        job = self.job(comp="none")
        yield wait_for(lambda: job._pending)  # sent, unacknowledged
        self.server()
        yield wait_for(lambda: job.acked >= 1)
        self.assertEqual((self.dst / "sender1" / "info.late").read_bytes(), data)

    @defer.inlineCallbacks
    def test_infoscript_output_is_sent_as_infofile(self) -> Any:
        self.server()
        job = self.job(InfoScript, "infoscript")
        yield wait_for(lambda: job.acked >= 1)
        self.assertEqual((self.dst / "sender1" / "script.out").read_bytes(), b"line1\nline2\n")

    @defer.inlineCallbacks
    def test_daemon_log_records_reach_the_server_as_log_messages(self) -> Any:
        self.server()
        self.job(level="info")
        logfile = self.dst / "daemons.log"
        yield wait_for(lambda: logfile.exists() and "watching" in logfile.read_text())
        self.assertIn("[daemon.infosender@sender1]", logfile.read_text())
        self.assertIn(" INFO infosender: watching", logfile.read_text())

    @defer.inlineCallbacks
    def test_signed_and_encrypted_infofiles_pass_and_unsigned_are_refused(self) -> Any:
        ks = make_keystore(self.base / "keys")
        srv_text = SERVER.format(port=self.port, dst=self.dst).replace(
            "stats-period = 0", f"stats-period = 0\ncms-keystore = {ks}\ncms-verify-ca = ca\n"
            "cms-decrypt = server\ncms-sign = server")
        self.start_server(srv_text)
        data = os.urandom(4000)
        (self.src / "info.secret").write_bytes(data)
        ini = self.base / "signed.ini"
        ini.write_text(DAEMON.format(port=self.port, src=self.src, comp="gzip", level="warn").replace(
            "[infosender]", f"[infosender]\ncms-keystore = {ks}\ncms-sign = client\ncms-encrypt = server\n"
            "cms-verify-ca = ca"))
        cfg, opts = load_job(ini, "infosender", parse_options, env={})
        job = InfoSender(cfg, opts, reactor)
        job.start()
        yield wait_for(lambda: job.acked >= 1)
        yield job.stop()
        self.assertEqual((self.dst / "sender1" / "info.secret").read_bytes(), data)
        (self.src / "info.plain").write_bytes(b"unsigned")
        plain = self.job(level="none")
        with capturedLogs() as events:
            yield wait_for(lambda: str(self.src / "info.plain") in plain.sent)
        self.assertEqual(plain.acked, 0)
        self.assertFalse((self.dst / "sender1" / "info.plain").exists())
        refusals = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        self.assertTrue(any("not encrypted" in r for r in refusals), refusals)

    def test_bad_daemon_config_names_the_key(self) -> None:
        ini = self.base / "bad.ini"
        ini.write_text("[infosender]\ninfodir = /tmp\ncompression = zip\n")
        e = self.assertRaises(ConfigError, load_job, ini, "infosender", parse_options, {})
        self.assertIn("compression", str(e))
        ini.write_text("[infosender]\ninfodir = /tmp\nbogus = 1\n")
        e = self.assertRaises(ConfigError, load_job, ini, "infosender", parse_options, {})
        self.assertIn("bogus", str(e))

    def test_infofile_message_fields(self) -> None:
        mtype, fields, blob = infofile_message("/x/info.1", 5.0, b"abc", "gzip", False, "h1")
        self.assertEqual(mtype, "pub.infofile.h1")
        self.assertEqual((fields["data"], blob), ("YWJj\n", None))
        self.assertEqual(infofile_message("f", 5.0, b"abc", "none", True)[2], b"abc")
