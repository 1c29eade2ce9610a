"""infowriter: atomic writes, compression, backups, path traversal."""

from __future__ import annotations

import base64
import bz2
import gzip
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from ccnet.cc.handler import HandlerError
from ccnet.cc.handlers.infowriter import destination, write_atomic
from tests.test_cc_handlers_common import ServerMixin, body, reply_body

CC = """
[cc]
cc-socket = tcp://127.0.0.1:*
cc-role = remote
stats-period = 0
[routes]
pub.infofile = iw
pub.discovery = iw
[iw]
handler = infowriter
dstdir = {dst}
{extra}
"""


def info(filename: str, mtime: float, data: bytes, comp: str = "", blob: bool = True, host: str = "me",
         mtype: str = "pub.infofile") -> list[bytes]:
    fields: dict[str, Any] = {"filename": filename, "mtime": mtime, "comp": comp, "mode": "b"}
    if blob:
        fields["data"] = ""
        frames = [b"", mtype.encode(), b"", b"", data]
    else:
        fields["data"] = base64.encodebytes(data).decode()
        frames = [b"", mtype.encode(), b"", b""]
    import json
    import time

    from ccnet.cc.message import make_body

    fields.setdefault("ack", True)  # a ccnet infosender: it reads the acknowledgement
    frames[2] = json.dumps(make_body(mtype, fields, hostname=host, now=time.time())).encode()
    return frames


class DestinationTests(TestCase):
    def test_layouts(self) -> None:
        d = Path("/dst")
        self.assertEqual(destination(d, "me", "/var/info/info.1", None, True), d / "me" / "info.1")
        self.assertEqual(destination(d, "me", "info.1", None, False), d / "me--info.1")
        self.assertEqual(destination(d, "a/b", "x", None, True), d / "a_b" / "x")
        self.assertEqual(destination(d, "me", "C:\\logs\\x.log", None, True), d / "me" / "x.log")
        self.assertEqual(
            destination(d, "me", "/var/info/i", "%%(hostname)s/%%(filepath)s", False), d / "me/var/info/i"
        )

    def test_traversal_is_refused(self) -> None:
        d = Path("/dst")
        for host, fn, mask in [
            ("me", "..", None),
            ("..", "x", None),
            ("me", "/a/../../../etc/passwd", "%(filepath)s"),
            ("me", "x", "../%(filename)s"),
            ("me", "x", "/etc/%(filename)s"),
        ]:
            e = self.assertRaises(HandlerError, destination, d, host, fn, mask, True)
            self.assertIn("suspicious", str(e))

    @settings(max_examples=150, deadline=None)
    @given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40),
           st.sampled_from([None, "%(filepath)s", "%(hostname)s/%(filepath)s", "%(hostname)s-%(filename)s"]))
    def test_destination_never_leaves_dstdir(self, host: str, fn: str, mask: str | None) -> None:
        d = Path("/dst")
        try:
            out = destination(d, host, fn, mask, True)
        except HandlerError:
            return
        self.assertTrue(os.path.normpath(out).startswith("/dst/"), out)


class WriteAtomicTests(TestCase):
    def test_newer_wins_backup_kept_no_temp_left(self) -> None:
        root = Path(self.mktemp())
        root.mkdir()
        dst = root / "h" / "f"
        self.assertEqual(write_atomic(root, dst, b"one", 100.0, ".bak"), "written")
        self.assertEqual(write_atomic(root, dst, b"old", 50.0, ".bak"), "skipped")
        self.assertEqual(write_atomic(root, dst, b"two", 200.0, ".bak"), "written")
        self.assertEqual(dst.read_bytes(), b"two")
        self.assertEqual((root / "h" / "f.bak").read_bytes(), b"one")
        self.assertEqual(os.stat(dst).st_mtime, 200.0)
        self.assertEqual(sorted(p.name for p in (root / "h").iterdir()), ["f", "f.bak"])

    def test_symlinked_folder_out_of_dstdir_is_refused(self) -> None:
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        outside = Path(self.mktemp()).absolute()
        outside.mkdir()
        (root / "h").symlink_to(outside)
        self.assertRaises(HandlerError, write_atomic, root, root / "h" / "f", b"x", 1.0)
        self.assertEqual(list(outside.iterdir()), [])


class InfoWriterHandlerTests(ServerMixin, TestCase):
    def server(self, extra: str = "host-subdirs = yes") -> tuple[Any, Path]:
        dst = Path(self.mktemp()).absolute()
        return self.start_server(CC.format(dst=dst, extra=extra)), dst

    @defer.inlineCallbacks
    def test_blob_and_base64_infofiles_land_byte_identical_and_are_acked(self) -> Any:
        srv, dst = self.server()
        data = os.urandom(5000)
        reps = yield self.ask(srv, [info("/x/info.1", 1000.5, data), info("info.2", 1000.0, data, blob=False)],
                              replies=2)
        self.assertEqual(sorted(r[1] for r in reps), [b"reply.pub.infofile"] * 2)
        self.assertEqual({reply_body(r)["status"] for r in reps}, {"written"})
        self.assertEqual((dst / "me" / "info.1").read_bytes(), data)
        self.assertEqual((dst / "me" / "info.2").read_bytes(), data)
        self.assertEqual(os.stat(dst / "me" / "info.1").st_mtime, 1000.5)

    @defer.inlineCallbacks
    def test_resent_or_older_file_is_skipped_but_still_acked(self) -> Any:
        srv, dst = self.server()
        yield self.ask(srv, [info("f", 10.0, b"new")])
        (rep,) = yield self.ask(srv, [info("f", 10.0, b"again")])
        self.assertEqual(reply_body(rep)["status"], "skipped")
        (rep,) = yield self.ask(srv, [info("f", 5.0, b"older")])
        self.assertEqual(reply_body(rep)["status"], "skipped")
        self.assertEqual((dst / "me" / "f").read_bytes(), b"new")

    @defer.inlineCallbacks
    def test_compressed_payload_is_decompressed_by_default(self) -> Any:
        srv, dst = self.server("host-subdirs = no")
        yield self.ask(srv, [info("g", 1.0, gzip.compress(b"gz" * 100), "gzip"),
                             info("b", 1.0, bz2.compress(b"bz" * 100), "bzip2")], replies=2)
        self.assertEqual((dst / "me--g").read_bytes(), b"gz" * 100)
        self.assertEqual((dst / "me--b").read_bytes(), b"bz" * 100)

    @defer.inlineCallbacks
    def test_keep_and_recompress_modes(self) -> Any:
        srv, dst = self.server("host-subdirs = yes\nwrite-compressed = keep")
        packed = gzip.compress(b"x" * 100)
        yield self.ask(srv, [info("k", 1.0, packed, "gzip")])
        self.assertEqual((dst / "me" / "k.gz").read_bytes(), packed)
        srv2, dst2 = self.server("host-subdirs = yes\nwrite-compressed = yes\ncompression = bzip2")
        yield self.ask(srv2, [info("r", 1.0, packed, "gzip")])
        self.assertEqual(bz2.decompress((dst2 / "me" / "r.bz2").read_bytes()), b"x" * 100)

    @defer.inlineCallbacks
    def test_bad_input_gets_error_replies_and_nothing_is_written(self) -> Any:
        srv, dst = self.server()
        reps = yield self.ask(srv, [
            info("../../etc/evil", 1.0, b"x", host=".."),
            info("f", 1.0, b"not gzip", "gzip"),
            info("f", 1.0, b"x", "zip"),
            [b"", b"pub.infofile", body("pub.infofile", mtime=1.0), b""],
            [b"", b"pub.infofile", body("pub.infofile", filename="f", mtime="soon"), b""],
            [b"", b"pub.infofile", body("pub.infofile", filename="f", mtime=1, data="!!"), b""],
        ], replies=6)
        msgs = [reply_body(r)["msg"] for r in reps]
        self.assertEqual([r[1] for r in reps], [b"error"] * 6, msgs)
        joined = "\n".join(msgs)
        for why in ("suspicious", "cannot decompress", "field 'comp'", "missing field 'filename'",
                    "'mtime' must be a number", "not valid base64"):
            self.assertIn(why, joined)
        self.assertFalse(any(p.is_file() for p in dst.rglob("*")))
        self.assertEqual(srv.stats.totals["count.crashed"], 0)

    @defer.inlineCallbacks
    def test_disk_full_gives_error_replies_and_keeps_the_old_file(self) -> Any:
        import subprocess

        dst = Path(self.mktemp()).absolute()
        dst.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(dst)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            raise self.skipTest(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", str(dst)], capture_output=True)
        srv = self.start_server(CC.format(dst=dst, extra="host-subdirs = yes"))
        old = os.urandom(60_000)
        (rep,) = yield self.ask(srv, [info("f", 1.0, old)])
        self.assertEqual(reply_body(rep)["status"], "written")
        # Newer version too big for what is left: refused, the previous one untouched.
        (rep,) = yield self.ask(srv, [info("f", 2.0, os.urandom(400_000))])
        self.assertEqual(rep[1], b"error")
        self.assertIn("No space left", reply_body(rep)["msg"])
        self.assertEqual((dst / "me" / "f").read_bytes(), old)
        self.assertEqual([p.name for p in (dst / "me").iterdir()], ["f"])  # no temp file left
        # Once space is back, the same writer keeps serving.
        small = b"small enough"
        (rep,) = yield self.ask(srv, [info("g", 3.0, small)])
        self.assertEqual(reply_body(rep)["status"], "written")
        self.assertEqual((dst / "me" / "g").read_bytes(), small)
        self.assertEqual(srv.stats.totals["count.crashed"], 0)

    @defer.inlineCallbacks
    def test_discovery_is_kept_per_host(self) -> Any:
        srv, dst = self.server()
        (rep,) = yield self.ask(srv, [[b"", b"pub.discovery", body("pub.discovery", facts={"os": "Linux"}), b""]])
        self.assertEqual(rep[1], b"reply.pub.discovery")
        import json

        self.assertEqual(json.loads((dst / "client" / "discovery.json").read_text())["facts"], {"os": "Linux"})

    def test_infowriter_is_refused_under_local_role(self) -> None:
        from ccnet.config import ConfigError

        e = self.assertRaises(ConfigError, self.start_server,
                              CC.format(dst="/tmp/x", extra="").replace("cc-role = remote", "cc-role = local"))
        self.assertIn("not allowed with cc-role = local", str(e))
