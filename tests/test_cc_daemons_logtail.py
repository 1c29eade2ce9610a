"""logtail daemon → tailwriter handler."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from ccnet.cc.daemons.base import load_job
from ccnet.cc.daemons.logtail import LogTail, parse_options
from ccnet.cc.handlers.tailwriter import append_chunk
from tests.support import free_port
from tests.test_cc_handlers_common import ServerMixin, wait_for

SERVER = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
cc-role = remote
stats-period = 0
[routes]
pub.logtail = tw
[tw]
handler = tailwriter
dstdir = {dst}
"""

DAEMON = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
[ccnet]
hostname = db1
[logtail]
logdir = {src}
logmask = *.log
compression = gzip
scan-period = 0.05
retry-period = 0.5
buffer-bytes = 100
"""


class AppendChunkTests(TestCase):
    def test_resent_chunks_are_not_appended_twice(self) -> None:
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        dst = root / "h" / "x.log"
        self.assertEqual(append_chunk(root, dst, b"abc", 0, 1, 2), ("written", 3))
        self.assertEqual(append_chunk(root, dst, b"abc", 0, 1, 2), ("duplicate", 3))
        self.assertEqual(append_chunk(root, dst, b"bcde", 1, 1, 2), ("written", 5))
        self.assertEqual(dst.read_bytes(), b"abcde")
        # a new source file (other inode) starts a new output, the old one is kept aside
        self.assertEqual(append_chunk(root, dst, b"new", 0, 1, 3), ("written", 3))
        self.assertEqual(dst.read_bytes(), b"new")
        self.assertEqual(len(list((root / "h").glob("x.log.20*"))), 1)


class LogTailTests(ServerMixin, TestCase):
    @defer.inlineCallbacks
    def start_tail(self, existing: bytes) -> Any:
        """A tailwriter server and a logtail daemon following ``src/app.log`` (which holds
        ``existing`` at start); fires with (src, dst, log) once the daemon follows it."""
        base = Path(self.mktemp()).absolute()
        src, dst = base / "src", base / "dst"
        src.mkdir(parents=True)
        port = free_port()
        log = src / "app.log"
        log.write_bytes(existing)
        self.start_server(SERVER.format(port=port, dst=dst))
        ini = base / "d.ini"
        ini.write_text(DAEMON.format(port=port, src=src))
        cfg, opts = load_job(ini, "logtail", parse_options, env={})
        job = LogTail(cfg, opts, reactor)
        job.start()
        self.addCleanup(job.stop)
        yield wait_for(lambda: str(log) in job.offsets)
        return src, dst, log

    @defer.inlineCallbacks
    def test_appended_lines_arrive_in_order_and_rotation_starts_a_new_file(self) -> Any:
        src, dst, log = yield self.start_tail(b"old line before start\n")
        lines = b"".join(b"line %03d of the log\n" % i for i in range(40))
        with open(log, "ab") as f:
            f.write(lines)
        out = dst / "db1" / "app.log"
        yield wait_for(lambda: out.exists() and out.read_bytes() == lines)
        # rotate: the source is replaced by a new file
        os.rename(log, src / "app.log.1")
        log.write_bytes(b"fresh\n")
        yield wait_for(lambda: out.exists() and out.read_bytes() == b"fresh\n")
        self.assertEqual([p.read_bytes() for p in (dst / "db1").glob("app.log.20*")], [lines])

    @defer.inlineCallbacks
    def test_lines_written_just_before_a_rename_rotation_are_not_lost(self) -> Any:
        src, dst, log = yield self.start_tail(b"")
        with open(log, "ab") as f:
            f.write(b"first\n")
        out = dst / "db1" / "app.log"
        yield wait_for(lambda: out.exists() and out.read_bytes() == b"first\n")
        # logrotate-style: the application writes its last lines, the file is renamed and a
        # new one started, all before the daemon's next scan.
        last = b"".join(b"last line %03d before rotation\n" % i for i in range(12))  # > buffer-bytes
        with open(log, "ab") as f:
            f.write(last)
        os.rename(log, src / "app.log.1")
        log.write_bytes(b"fresh\n")
        yield wait_for(lambda: out.exists() and out.read_bytes() == b"fresh\n")
        self.assertEqual([p.read_bytes() for p in (dst / "db1").glob("app.log.20*")], [b"first\n" + last])
