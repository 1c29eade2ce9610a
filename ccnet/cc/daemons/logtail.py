"""``logtail`` daemon: follow log files and send what is appended as ``pub.logtail``.

Files: ``logname`` (one file in ``logdir``) or every file matching
``logmask``.  Every ``scan-period`` seconds each file is checked; new bytes
(up to ``buffer-bytes`` per message) are sent with their source offset
(``fpos``) and the file's st_dev/st_ino, and the offset advances only when
the receiver (tailwriter) acknowledges, so a chunk is resent until it
arrives.  A file that was replaced (new inode) or truncated is read from the
start (a truncation raises the file's ``gen``, sent with its chunks, so tailwriter starts
a new output); when it was rotated by renaming (logrotate's ``app.log`` -> ``app.log.1``, same
folder), what was appended to the old file after the last read is sent first.  When more than ``lag-max-bytes`` are waiting, the daemon skips ahead
(logged).  Offsets survive restarts in ``offset-file`` (default
``<ini dir>/<job_name>.offsets``, the original kept ``<pidfile>.save``).
Files present at first start are followed from their end.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from ccnet.cc.daemons.base import CCErrorReply, CCJob, common_keys, run_daemon
from ccnet.cc.daemons.infosender import parse_compression
from ccnet.cc.handlers.payload import b64encode_py2, compress
from ccnet.config import IniFile, SectionReader

__all__ = ["LogTail", "LogTailOptions", "find_inode", "parse_options", "read_chunk"]

log = Logger()


@dataclass(frozen=True)
class LogTailOptions:
    logdir: Path
    pattern: str
    op_mode: str
    compression: str
    compression_level: int
    use_blob: bool
    buffer_bytes: int
    lag_max_bytes: int
    scan_period: float
    retry_period: float
    offset_file: Path | None


def parse_options(section: SectionReader, ini: IniFile) -> LogTailOptions:
    logname = section.get_str("logname", "")
    logmask = section.get_str("logmask", "")
    if bool(logname) == bool(logmask):
        raise section.error("logmask", "exactly one of logmask = GLOB or logname = FILE")
    comp, level = parse_compression(section)
    opts = LogTailOptions(
        logdir=section.get_path("logdir"),
        pattern=logname or logmask,
        op_mode=section.get_choice("operation-mode", ["", "classic", "rotated"], ""),
        compression=comp,
        compression_level=level,
        use_blob=section.get_bool("use-blob", True),
        buffer_bytes=section.get_size("buffer-bytes", 1024 * 1024),
        lag_max_bytes=section.get_size("lag-max-bytes", 1024 * 1024 * 1024),
        scan_period=section.get_float("scan-period", 0.5, minimum=0.05),
        retry_period=section.get_float("retry-period", 5.0, minimum=0.05),
        offset_file=section.get_path("offset-file", None),
    )
    for k in ("file-mode", "msg-suffix", "buffer-lines"):
        if section.has(k):
            section.get_str(k)
    common_keys(section)
    return opts


def find_inode(folder: str, dev: int, ino: int) -> str | None:
    """Blocking: the file in ``folder`` that is inode (dev, ino) now, e.g. ``app.log.1``
    after logrotate renamed ``app.log``; None when it is gone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino) and entry.is_file(follow_symlinks=False):
            return entry.path
    return None


def read_chunk(path: str, offset: int, limit: int) -> tuple[int, int, int, int, bytes]:
    """Blocking: (st_dev, st_ino, size, start offset, bytes) from ``offset`` (0 if truncated)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size < offset:
            offset = 0
        f.seek(offset)
        return st.st_dev, st.st_ino, st.st_size, offset, f.read(limit)


class LogTail(CCJob):
    options: LogTailOptions

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        #: path -> [dev, ino, offset, generation (truncations seen)]
        self.offsets: dict[str, list[int]] = {}
        self.sent_bytes = 0
        self._first = True
        path = self.options.offset_file or (self.config.ini_path.parent / f"{self.config.job_name}.offsets")
        self.offset_path = Path(path)

    def startJob(self) -> None:  # noqa: N802
        try:
            # [dev, ino, offset, generation]; files of older versions have no generation.
            self.offsets = {k: (list(v) + [0])[:4] for k, v in json.loads(self.offset_path.read_text()).items()}
            self._first = False
        except (OSError, ValueError):
            self.offsets = {}
        self.every(self.options.scan_period, self.tick)

    def _save(self) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".new")
        tmp.write_text(json.dumps(self.offsets))
        os.replace(tmp, self.offset_path)

    @defer.inlineCallbacks
    def tick(self) -> Any:
        o = self.options
        pool = self.reactor.getThreadPool()
        paths = yield threads.deferToThreadPool(
            self.reactor, pool, lambda: sorted(p for p in glob.glob(os.path.join(str(o.logdir), o.pattern))
                                               if os.path.isfile(p)))
        for path in paths:
            yield self._follow(path, pool)
        self._first = False
        yield threads.deferToThreadPool(self.reactor, pool, self._save)

    @defer.inlineCallbacks
    def _follow(self, path: str, pool: Any) -> Any:
        o = self.options
        while True:
            known = self.offsets.get(path)
            offset = known[2] if known else 0
            gen = known[3] if known else 0
            try:
                dev, ino, size, start, data = yield threads.deferToThreadPool(
                    self.reactor, pool, read_chunk, path, offset, o.buffer_bytes)
            except OSError:
                return
            if known is None and self._first:
                self.offsets[path] = [dev, ino, size, 0]  # first start: follow from the end
                return
            if known is not None and (known[0], known[1]) != (dev, ino):
                # Rotated: what was appended to the old file after our last read goes out
                # first (under its old identity), then the new file from its start.
                yield self._drain_rotated(path, known, pool)
                gen = 0
                dev, ino, size, start, data = yield threads.deferToThreadPool(
                    self.reactor, pool, read_chunk, path, 0, o.buffer_bytes)
            elif known is not None and start < offset:
                # Same file, shorter than what we sent: truncated (copytruncate rotation).
                # A new generation tells the receiver to start a new output.
                gen += 1
                log.info("logtail: {path} was truncated; reading it from the start", path=path)
            if size - start > o.lag_max_bytes:
                log.warn("logtail: {path} lags {n} bytes, skipping ahead", path=path, n=size - start)
                self.offsets[path] = [dev, ino, size, gen]
                return
            if not data:
                self.offsets[path] = [dev, ino, start, gen]
                return
            yield self._send(path, dev, ino, gen, start, data)
            self.offsets[path] = [dev, ino, start + len(data), gen]
            if len(data) < o.buffer_bytes:
                return

    @defer.inlineCallbacks
    def _send(self, path: str, dev: int, ino: int, gen: int, start: int, data: bytes) -> Any:
        """One ``pub.logtail`` chunk, resent until the receiver answers."""
        o = self.options
        payload = compress(data, o.compression, o.compression_level)
        fields: dict[str, Any] = {
            "filename": path, "comp": o.compression, "mode": "b", "fpos": start,
            "op_mode": o.op_mode, "st_dev": dev, "st_ino": ino,
            "data": "" if o.use_blob else b64encode_py2(payload),
        }
        if gen:
            fields["gen"] = gen  # only after a truncation: the original's messages otherwise
        try:
            yield self.query("pub.logtail", fields, payload if o.use_blob else None,
                             timeout=o.retry_period, retries=None)
        except CCErrorReply as exc:
            log.warn("logtail: chunk of {path} refused: {error}", path=path, error=str(exc))
        self.sent_bytes += len(data)

    @defer.inlineCallbacks
    def _drain_rotated(self, path: str, known: list[int], pool: Any) -> Any:
        """Send the tail of the file ``path`` was before rotation, if it is still in the folder."""
        o = self.options
        dev, ino, offset, gen = known
        old = yield threads.deferToThreadPool(self.reactor, pool, find_inode, os.path.dirname(path), dev, ino)
        if old is None:
            return
        while True:
            try:
                got_dev, got_ino, size, start, data = yield threads.deferToThreadPool(
                    self.reactor, pool, read_chunk, old, offset, o.buffer_bytes)
            except OSError:
                return
            if (got_dev, got_ino) != (dev, ino) or not data or start != offset:
                return
            if size - start > o.lag_max_bytes:
                log.warn("logtail: rotated {path} lags {n} bytes, not sent", path=path, n=size - start)
                return
            yield self._send(path, dev, ino, gen, start, data)
            offset = start + len(data)
            self.offsets[path] = [dev, ino, offset, gen]
            if len(data) < o.buffer_bytes:
                log.info("logtail: sent the rest of rotated {path} from {old}", path=path, old=old)
                return


def main(argv: list[str] | None = None) -> int:
    return run_daemon(LogTail, parse_options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
