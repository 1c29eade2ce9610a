"""``handler = tailwriter``: append ``pub.logtail`` chunks to per-host files.

A chunk carries filename, data (or blob), comp, fpos (its offset in the
source file), st_dev/st_ino (the source file's identity) and op_mode.  It is
appended to ``dstdir/<host>/<basename>`` (same layout keys as infowriter:
``dstmask``, ``host-subdirs``) and fsynced, and the next expected offset is
kept next to it in ``<file>.pos``, so a resent chunk (sender retry after a
lost acknowledgement) is not appended twice, also across restarts.  When the
source file is a new one (other inode, offset 0), the previous output is
renamed with a ``.%Y-%m-%d_%H-%M-%S`` suffix first; so is it when the sender says
the file was truncated (its ``gen`` counter went up), and late chunks of the previous
source still go to the renamed output.  A gap (fpos ahead of what was written) is
logged and the chunk appended, as the original did.
A sender that asked for it (``"ack": true``) is acknowledged with ``reply.pub.logtail``
{filename, fpos, next}.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.handler import CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.infowriter import DstDirWriter, destination, prepare_folder
from ccnet.cc.handlers.payload import decompress, field_number, field_str, infofile_content

__all__ = ["TailWriterHandler", "TailWriterOptions", "append_chunk", "handler_class"]

log = Logger()


@dataclass(frozen=True)
class TailWriterOptions:
    dstdir: Path
    dstmask: str | None
    host_subdirs: bool
    worker_threads: int
    max_chunk: int


def _read_pos(pos: Path) -> dict[str, Any]:
    try:
        return json.loads(pos.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _same(record: dict[str, Any], dev: Any, ino: Any, gen: int) -> bool:
    return record.get("dev") == dev and record.get("ino") == ino and int(record.get("gen", 0)) == gen


def _write(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_pos(pos_file: Path, pos: dict[str, Any]) -> None:
    tmp = pos_file.with_name(pos_file.name + ".new")
    tmp.write_text(json.dumps(pos))
    os.replace(tmp, pos_file)


def _rotate_aside(dst: Path) -> Path:
    """Move ``dst`` to a ``.%Y-%m-%d_%H-%M-%S`` name that is never reused: two rotations
    in one second must not overwrite each other's (acknowledged) data."""
    rotated = dst.with_name(dst.name + time.strftime(".%Y-%m-%d_%H-%M-%S"))
    serial = 0
    while True:
        try:
            os.link(dst, rotated)
            break
        except FileExistsError:
            serial += 1
            rotated = rotated.with_name(f"{rotated.name.split('~')[0]}~{serial}")
    os.unlink(dst)
    return rotated


def append_chunk(dstdir: Path, dst: Path, data: bytes, fpos: int, dev: Any, ino: Any,
                 gen: int = 0) -> tuple[str, int]:
    """Blocking: append ``data`` (source offset ``fpos``); returns (status, next offset).

    The source is (st_dev, st_ino, gen): another inode, or the same one truncated (the
    sender's ``gen`` went up), starts a new output and the old one is rotated aside. A
    late chunk past the start of the previous source (a sender resending the tail of a
    rotated log after a restart) goes to the rotated output, never into the new one."""
    prepare_folder(dstdir, dst)
    pos_file = dst.with_name(dst.name + ".pos")
    pos = _read_pos(pos_file)
    prev = pos.get("prev") or {}
    # A chunk at offset 0 is a new file even with the previous one's inode number (the
    # file system reuses numbers of deleted files); the tail of a rotated file is not.
    if fpos > 0 and prev and _same(prev, dev, ino, gen) and not _same(pos, dev, ino, gen):
        return _append_previous(dst, pos_file, pos, prev, data, fpos)
    same_source = _same(pos, dev, ino, gen)
    expected = int(pos.get("next", 0)) if same_source else 0
    status = "written"
    if pos and not same_source and dst.exists():
        rotated = _rotate_aside(dst)
        prev = {"dev": pos.get("dev"), "ino": pos.get("ino"), "gen": int(pos.get("gen", 0)),
                "next": int(pos.get("next", 0)), "file": rotated.name}
    elif same_source and fpos < expected:
        if fpos + len(data) <= expected:
            return "duplicate", expected
        data = data[expected - fpos:]  # partly seen: keep only the new tail
        fpos = expected
    elif same_source and fpos > expected:
        log.warn("tailwriter: gap in {dst}: expected offset {e}, got {f}", dst=str(dst), e=expected, f=fpos)
        status = "gap"
    _write(dst, data)
    nxt = fpos + len(data)
    _save_pos(pos_file, {"dev": dev, "ino": ino, "gen": gen, "next": nxt, "prev": prev})
    return status, nxt


def _append_previous(dst: Path, pos_file: Path, pos: dict[str, Any], prev: dict[str, Any], data: bytes,
                     fpos: int) -> tuple[str, int]:
    expected = int(prev.get("next", 0))
    if fpos + len(data) <= expected:
        return "duplicate", expected
    if fpos < expected:
        data = data[expected - fpos:]
        fpos = expected
    elif fpos > expected:
        log.warn("tailwriter: gap in rotated {dst}: expected offset {e}, got {f}", dst=str(dst), e=expected, f=fpos)
    _write(dst.with_name(str(prev.get("file") or dst.name + ".rotated")), data)
    nxt = fpos + len(data)
    _save_pos(pos_file, dict(pos, prev=dict(prev, next=nxt)))
    return "written", nxt


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class TailWriterHandler(DstDirWriter):
    handler_name = "tailwriter"
    cc_roles = frozenset({"remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> TailWriterOptions:
        opts = TailWriterOptions(
            dstdir=section.get_path("dstdir"),
            dstmask=section.get_str("dstmask", "") or None,
            host_subdirs=section.get_bool("host-subdirs", True),
            worker_threads=section.get_int("worker-threads", 10, minimum=1),
            max_chunk=section.get_size("max-chunk-size", 64 * 1024 * 1024),
        )
        # Original buffering keys: every chunk is written and fsynced at once here.
        for k in ("buffer-bytes", "write-interval", "close-interval"):
            if section.has(k):
                section.get_str(k)
        return opts

    def handle(self, request: CCRequest) -> Any:
        if not (request.type == "pub.logtail" or request.type.startswith("pub.logtail.")):
            raise HandlerError(f"tailwriter writes pub.logtail, not {request.type}")
        p = request.payload or {}
        o = self.options
        host = field_str(p, "hostname")
        filename = field_str(p, "filename")
        fpos = int(field_number(p, "fpos"))
        if not 0 <= fpos < 1 << 62:
            raise HandlerError("pub.logtail: field 'fpos' is negative")
        dev, ino = p.get("st_dev"), p.get("st_ino")
        # ccnet's logtail counts truncations of a file in "gen" (absent: 0, as the original).
        gen_value = field_number(p, "gen", 0)
        if not 0 <= gen_value < 1 << 31:  # also refuses nan
            raise HandlerError("pub.logtail: field 'gen' is out of range")
        gen = int(gen_value)
        raw, comp = infofile_content(p, request.msg.blob)
        dst = destination(o.dstdir, host, filename, o.dstmask, o.host_subdirs)

        def work() -> tuple[str, int]:
            return append_chunk(o.dstdir, dst, decompress(raw, comp, o.max_chunk), fpos, dev, ino, gen)

        d = self.workers.run(work, key=dst)

        def ack(result: tuple[str, int]) -> None:
            status, nxt = result
            self.server.ack(request, f"reply.{request.type}",
                              {"filename": filename, "fpos": fpos, "next": nxt, "status": status})

        d.addCallback(ack)
        return d


handler_class = TailWriterHandler
