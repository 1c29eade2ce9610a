"""``handler = infowriter``: write received infofiles under ``dstdir``.

Accepts ``pub.infofile[.x]`` (original fields: filename, mtime, comp, data or
blob, mode) and ``pub.discovery`` (written as ``discovery.json`` per host).
Each file is written atomically: ``name.new`` is written and fsynced, the old
version is hard-linked to ``name<bakext>`` when ``bakext`` is set, then the
new file is renamed over it, its mtime set to the sender's, and the folder
fsynced.  Only then is a sender that asked for it (``"ack": true``, as ccnet's
infosender does; the original's never reads replies) acknowledged with ``reply.<req>``
(``status`` ``written`` or ``skipped`` when the file on disk is as new), so
an acknowledged file survives a crash.  Writes run on ``worker-threads``
threads, one file never on two threads at once.  File names that would leave
``dstdir`` are refused with an error reply.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.handler import CCHandler, CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.payload import (
    compress,
    decompress,
    field_number,
    field_str,
    infofile_content,
)
from ccnet.cc.handlers.workers import WorkerPool

__all__ = ["InfoWriterHandler", "InfoWriterOptions", "destination", "write_atomic", "handler_class"]

log = Logger()

COMP_EXT = {"gzip": ".gz", "bzip2": ".bz2"}
WRITE_COMPRESSED = ("", "no", "keep", "yes")
#: Year 5138: beyond it an mtime is a sender bug, and os.utime would overflow.
MAX_MTIME = 1e11


@dataclass(frozen=True)
class InfoWriterOptions:
    dstdir: Path
    dstmask: str | None
    host_subdirs: bool
    bakext: str
    write_compressed: str
    compression: str
    compression_level: int
    worker_threads: int
    max_file_size: int
    ack: bool


def destination(
    dstdir: Path, hostname: str, filename: str, dstmask: str | None, host_subdirs: bool, ext: str = ""
) -> Path:
    """Where an infofile goes (pure).  ``HandlerError`` for names that would
    leave ``dstdir`` ("suspicious file path")."""
    host = hostname.replace("/", "_")
    if not host or host in (".", "..") or "\0" in host:
        raise HandlerError(f"suspicious host name {hostname!r}")
    fpath = filename.replace("\\", "/")
    if "\0" in fpath:
        raise HandlerError("suspicious file path: NUL in filename")
    base = posixpath.basename(fpath)
    if base in ("", ".", ".."):
        raise HandlerError(f"suspicious file path {filename!r}: no file name")
    if dstmask:
        mask = dstmask.replace("%%", "%")
        try:
            rel = mask % {"hostname": host, "filename": base, "filepath": fpath.lstrip("/")}
        except (KeyError, ValueError, TypeError) as exc:
            raise HandlerError(f"dstmask cannot be applied: {exc}") from None
    elif host_subdirs:
        rel = f"{host}/{base}"
    else:
        rel = f"{host}--{base}"
    rel += ext
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm.startswith("../") or norm in ("..", ".") or "/../" in f"/{norm}/":
        raise HandlerError(f"suspicious file path {filename!r}: leaves dstdir")
    return dstdir / norm


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_folder(dstdir: Path, dst: Path) -> None:
    """Blocking: make ``dst``'s folder, refusing one that resolves outside ``dstdir``
    (a symlinked folder inside dstdir must not lead a write elsewhere)."""
    if not dst.parent.resolve().is_relative_to(dstdir.resolve()):
        raise HandlerError(f"suspicious file path {dst}: leaves dstdir")
    dst.parent.mkdir(parents=True, exist_ok=True)


def write_atomic(dstdir: Path, dst: Path, body: bytes, mtime: float, bakext: str = "") -> str:
    """Blocking: write ``body`` to ``dst`` atomically; ``"written"`` or ``"skipped"``."""
    mtime_ns = int(mtime * 1e9)
    prepare_folder(dstdir, dst)
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        pass
    else:
        if st.st_mtime_ns >= mtime_ns:
            return "skipped"
    tmp = dst.with_name(dst.name + ".new")
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    except OSError as exc:
        # Disk full, quota, I/O error: the previous version stays as it was, nothing half-written.
        tmp.unlink(missing_ok=True)
        raise HandlerError(f"cannot write {dst.name}: {exc.strerror}") from None
    if bakext and dst.exists():
        bak = dst.with_name(dst.name + bakext)
        try:
            bak.unlink()
        except FileNotFoundError:
            pass
        os.link(dst, bak)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    return "written"


class DstDirWriter(CCHandler):
    """A handler writing files under ``options.dstdir`` in its own bounded thread pool
    (``options.worker_threads``), so file I/O never runs on the reactor."""

    def __init__(self, name: str, options: Any, server: Any) -> None:
        super().__init__(name, options, server)
        self.workers = WorkerPool(server.reactor, f"cc-{name}", options.worker_threads)

    def start(self) -> None:
        self.options.dstdir.mkdir(parents=True, exist_ok=True)
        self.workers.start()

    def stop(self) -> None:
        self.workers.stop()


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class InfoWriterHandler(DstDirWriter):
    handler_name = "infowriter"
    cc_roles = frozenset({"remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> InfoWriterOptions:
        wc = section.get_choice("write-compressed", WRITE_COMPRESSED, "")
        compression = section.get_str("compression", "")
        if wc == "yes" and compression not in COMP_EXT:
            raise section.error("compression", "gzip or bzip2 (write-compressed = yes)", compression)
        return InfoWriterOptions(
            dstdir=section.get_path("dstdir"),
            dstmask=section.get_str("dstmask", "") or None,
            host_subdirs=section.get_bool("host-subdirs", False),
            bakext=section.get_str("bakext", ""),
            write_compressed=wc,
            compression=compression,
            compression_level=section.get_int("compression-level", 6, minimum=0),
            worker_threads=section.get_int("worker-threads", 10, minimum=1),
            max_file_size=section.get_size("max-file-size", 256 * 1024 * 1024),
            ack=section.get_bool("ack", True),
        )

    def __init__(self, name: str, options: InfoWriterOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.written = 0

    def handle(self, request: CCRequest) -> Any:
        p = request.payload or {}
        o = self.options
        host = field_str(p, "hostname")
        if request.type == "pub.discovery":
            filename, mtime = "discovery.json", field_number(p, "time")
            raw, comp = json.dumps(p, indent=2, sort_keys=True).encode(), ""
        elif request.type == "pub.infofile" or request.type.startswith("pub.infofile."):
            filename = field_str(p, "filename")
            mtime = field_number(p, "mtime")
            if not 0 <= mtime < MAX_MTIME:
                raise HandlerError(f"{request.type}: field 'mtime' out of range: {mtime}")
            mode = field_str(p, "mode", "b")
            if mode not in ("", "b"):
                log.warn("cc infowriter [{section}]: fopen mode {mode!r} ignored", section=self.name, mode=mode)
            raw, comp = infofile_content(p, request.msg.blob)
        else:
            raise HandlerError(f"infowriter writes pub.infofile and pub.discovery, not {request.type}")
        ext = ""
        if o.write_compressed == "keep" and comp not in ("", "none"):
            ext = COMP_EXT[comp]
        elif o.write_compressed == "yes":
            ext = COMP_EXT[o.compression]
        dst = destination(o.dstdir, host, filename, o.dstmask, o.host_subdirs, ext)
        d = self.workers.run(self._write, dst, raw, comp, mtime, key=dst)
        d.addCallback(self._written, request, dst, filename, mtime)
        return d

    def _write(self, dst: Path, raw: bytes, comp: str, mtime: float) -> str:
        o = self.options
        if o.write_compressed in ("", "no"):
            body = decompress(raw, comp, o.max_file_size)
        elif o.write_compressed == "keep":
            body = raw
        elif comp == o.compression:
            body = raw
        else:
            body = compress(decompress(raw, comp, o.max_file_size), o.compression, o.compression_level)
        return write_atomic(o.dstdir, dst, body, mtime, o.bakext)

    def _written(self, status: str, request: CCRequest, dst: Path, filename: str, mtime: float) -> None:
        if status == "written":
            self.written += 1
        log.debug("cc infowriter [{section}]: {status} {path}", section=self.name, status=status, path=str(dst))
        if self.options.ack:
            self.server.ack(
                request, f"reply.{request.type}",
                {"filename": filename, "mtime": mtime, "status": status},
            )


handler_class = InfoWriterHandler
