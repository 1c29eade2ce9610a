"""``infosender`` daemon: send changed files from ``infodir`` as ``pub.infofile``.

Every ``scan-period`` seconds (1) the files matching ``infomask`` are
stat'ed; a file whose (mtime, size) was the same on two scans in a row and
differs from what was last acknowledged is read, compressed (``compression``
none|gzip|bzip2, ``compression-level``) and sent as
``pub.infofile[.<msg-suffix>]`` {filename (full path), mtime, comp, data,
mode}, the payload in the blob frame (``use-blob = yes``) or base64 in
``data``.  Each send carries a query id and is resent identically every
``retry-period`` seconds until the receiver (infowriter) acknowledges it,
so nothing is lost while a CC hop is down.  At start every file is sent
once.  File reading and compression run in a thread.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccnet.cc.daemons.base import CCErrorReply, CCJob, common_keys, run_daemon
from ccnet.cc.handlers.payload import b64encode_py2, compress
from ccnet.cc.message import valid_type
from ccnet.config import IniFile, SectionReader

__all__ = ["InfoSender", "InfoSenderOptions", "parse_options", "scan", "read_infofile", "infofile_message"]

log = Logger()

COMPRESSIONS = ("none", "gzip", "bzip2")


@dataclass(frozen=True)
class InfoSenderOptions:
    infodir: Path
    infomask: str
    compression: str
    compression_level: int
    msg_suffix: str
    use_blob: bool
    scan_period: float
    retry_period: float
    max_inflight: int
    ack: bool


def parse_compression(section: SectionReader) -> tuple[str, int]:
    comp = section.get_str("compression", "none") or "none"
    if comp not in COMPRESSIONS:
        raise section.error("compression", "none, gzip or bzip2", comp)
    return comp, section.get_int("compression-level", 6, minimum=0)


def parse_suffix(section: SectionReader) -> str:
    suffix = section.get_str("msg-suffix", "")
    if suffix and not valid_type(suffix):
        raise section.error("msg-suffix", "dotted message type parts, e.g. host1", suffix)
    return suffix


def parse_options(section: SectionReader, ini: IniFile) -> InfoSenderOptions:
    comp, level = parse_compression(section)
    opts = InfoSenderOptions(
        infodir=section.get_path("infodir"),
        infomask=section.get_str("infomask", "*"),
        compression=comp,
        compression_level=level,
        msg_suffix=parse_suffix(section),
        use_blob=section.get_bool("use-blob", True),
        scan_period=section.get_float("scan-period", 1.0, minimum=0.05),
        retry_period=section.get_float("retry-period", 5.0, minimum=0.05),
        max_inflight=section.get_int("max-inflight", 8, minimum=1),
        ack=section.get_bool("ack", True),
    )
    # Original keys with no job in ccnet (stats go to the log of the receiving CC).
    for k in ("maint-period", "stats-period"):
        if section.has(k):
            section.get_float(k)
    common_keys(section)
    return opts


def scan(infodir: Path, mask: str) -> dict[str, tuple[float, int]]:
    """Blocking: (mtime, size) of every regular file matching the mask."""
    out: dict[str, tuple[float, int]] = {}
    for name in glob.glob(os.path.join(str(infodir), mask)):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if os.path.isfile(name):
            out[name] = (st.st_mtime, st.st_size)
    return out


def read_infofile(path: str, comp: str, level: int) -> tuple[float, int, bytes]:
    """Blocking: (mtime, size, compressed bytes), mtime/size of what was read."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return st.st_mtime, st.st_size, compress(data, comp, level)


def infofile_message(
    filename: str, mtime: float, payload: bytes, comp: str, use_blob: bool, suffix: str = ""
) -> tuple[str, dict[str, Any], bytes | None]:
    """(type, fields, blob) of one pub.infofile (pure)."""
    mtype = "pub.infofile" + (f".{suffix}" if suffix else "")
    fields = {
        "filename": filename,
        "mtime": mtime,
        "comp": comp,
        "mode": "b",
        "data": "" if use_blob else b64encode_py2(payload),
    }
    return mtype, fields, (payload if use_blob else None)


class InfoSender(CCJob):
    options: InfoSenderOptions

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.last_scan: dict[str, tuple[float, int]] = {}
        self.sent: dict[str, tuple[float, int]] = {}
        self.inflight: set[str] = set()
        self.slots = defer.DeferredSemaphore(self.options.max_inflight)
        self.acked = 0

    def startJob(self) -> None:  # noqa: N802
        log.info("infosender: watching {dir}/{mask}", dir=str(self.options.infodir), mask=self.options.infomask)
        self.every(self.options.scan_period, self.tick)

    @defer.inlineCallbacks
    def tick(self) -> Any:
        o = self.options
        now = yield threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), scan, o.infodir, o.infomask)
        for path, st in sorted(now.items()):
            if self.last_scan.get(path) == st and self.sent.get(path) != st and path not in self.inflight:
                self.inflight.add(path)
                self.slots.run(self.send_file, path).addBoth(self._sent, path)
        self.last_scan = now

    def _sent(self, result: Any, path: str) -> None:
        self.inflight.discard(path)
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            log.failure("infosender: sending {path} failed", result, path=path)

    @defer.inlineCallbacks
    def send_file(self, path: str) -> Any:
        o = self.options
        try:
            mtime, size, payload = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), read_infofile, path, o.compression, o.compression_level
            )
        except OSError as exc:
            log.warn("infosender: cannot read {path}: {error}", path=path, error=str(exc))
            return
        mtype, fields, blob = infofile_message(path, mtime, payload, o.compression, o.use_blob, o.msg_suffix)
        if not o.ack:
            self.send(mtype, fields, blob)
            self.sent[path] = (mtime, size)
            return
        try:
            _, reply = yield self.query(mtype, fields, blob, timeout=o.retry_period, retries=None)
        except CCErrorReply as exc:
            # Refused (e.g. a name the receiver will not write): resending cannot help.
            log.warn("infosender: {path} refused: {error}", path=path, error=str(exc))
        except defer.CancelledError:
            return
        else:
            self.acked += 1
            log.info("infosender: {path} acknowledged ({status})", path=path, status=reply.get("status", "?"))
        self.sent[path] = (mtime, size)


def main(argv: list[str] | None = None) -> int:
    return run_daemon(InfoSender, parse_options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
