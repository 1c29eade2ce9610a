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


def appended_and_copied(log: Path, out: Path, data: bytes) -> Any:
    """Append ``data`` to the followed ``log``; fires once the output holds exactly it."""
    with open(log, "ab") as f:
        f.write(data)
    return wait_for(lambda: out.exists() and out.read_bytes() == data)


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


class SourceChangeTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        self.dst = self.root / "h" / "app.log"

    def rotated(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted((self.root / "h").glob("app.log.20*"))]

    def test_a_late_resend_of_the_previous_source_stays_out_of_the_new_output(self) -> None:
        # A logtail restarted from offsets saved before the rotation resends the old tail.
        append_chunk(self.root, self.dst, b"first\n", 0, 1, 10)
        append_chunk(self.root, self.dst, b"tail\n", 6, 1, 10)
        append_chunk(self.root, self.dst, b"fresh\n", 0, 1, 11)
        self.assertEqual(append_chunk(self.root, self.dst, b"tail\n", 6, 1, 10), ("duplicate", 11))
        self.assertEqual(append_chunk(self.root, self.dst, b"fresh\n", 0, 1, 11), ("duplicate", 6))
        self.assertEqual(self.dst.read_bytes(), b"fresh\n")
        self.assertEqual(self.rotated(), [b"first\ntail\n"])

    def test_a_new_file_reusing_the_previous_inode_number_is_a_new_source(self) -> None:
        append_chunk(self.root, self.dst, b"first\n", 0, 1, 10)
        append_chunk(self.root, self.dst, b"second\n", 0, 1, 11)
        # inode 10 was deleted and its number given to the next log file
        self.assertEqual(append_chunk(self.root, self.dst, b"third\n", 0, 1, 10), ("written", 6))
        self.assertEqual(self.dst.read_bytes(), b"third\n")
        self.assertEqual(self.rotated(), [b"first\n", b"second\n"])

    def test_more_of_the_previous_source_is_appended_to_its_rotated_output(self) -> None:
        append_chunk(self.root, self.dst, b"first\n", 0, 1, 10)
        append_chunk(self.root, self.dst, b"fresh\n", 0, 1, 11)
        self.assertEqual(append_chunk(self.root, self.dst, b"late\n", 6, 1, 10), ("written", 11))
        self.assertEqual(self.dst.read_bytes(), b"fresh\n")
        self.assertEqual(self.rotated(), [b"first\nlate\n"])

    def test_a_new_generation_of_the_same_inode_starts_a_new_output(self) -> None:
        append_chunk(self.root, self.dst, b"before truncation\n", 0, 1, 10)
        self.assertEqual(append_chunk(self.root, self.dst, b"after\n", 0, 1, 10, gen=1), ("written", 6))
        self.assertEqual(self.dst.read_bytes(), b"after\n")
        self.assertEqual(self.rotated(), [b"before truncation\n"])
        # Without a generation a chunk at 0 of a known inode is a resend, as before.
        self.assertEqual(append_chunk(self.root, self.dst, b"after\n", 0, 1, 10, gen=1), ("duplicate", 6))


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
        out = dst / "db1" / "app.log"
        yield appended_and_copied(log, out, b"first\n")
        # logrotate-style: the application writes its last lines, the file is renamed and a
        # new one started, all before the daemon's next scan.
        last = b"".join(b"last line %03d before rotation\n" % i for i in range(12))  # > buffer-bytes
        with open(log, "ab") as f:
            f.write(last)
        os.rename(log, src / "app.log.1")
        log.write_bytes(b"fresh\n")
        yield wait_for(lambda: out.exists() and out.read_bytes() == b"fresh\n")
        self.assertEqual([p.read_bytes() for p in (dst / "db1").glob("app.log.20*")], [b"first\n" + last])

    @defer.inlineCallbacks
    def test_a_truncated_log_starts_a_new_output_instead_of_being_dropped(self) -> Any:
        _, dst, log = yield self.start_tail(b"")
        out = dst / "db1" / "app.log"
        yield appended_and_copied(log, out, b"a long line written before the truncation\n")
        # copytruncate: the file is emptied in place (same inode) and written again.
        with open(log, "r+b") as f:
            f.truncate(0)
        with open(log, "ab") as f:
            f.write(b"short\n")
        yield wait_for(lambda: out.exists() and out.read_bytes() == b"short\n")
        self.assertEqual([p.read_bytes() for p in (dst / "db1").glob("app.log.20*")],
                         [b"a long line written before the truncation\n"])
