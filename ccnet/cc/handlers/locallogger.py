"""``handler = locallogger``: write ``log.*`` messages from daemons and tasks to
a local, size-rotated log file (``logfile``, ``max-bytes``, ``backup-count``);
without ``logfile`` they go to ccnet's own log.

Line format (the original's, with the receive date in front)::

    2026-11-25 19:07:41 [job_name@hostname] 19:07:40,123 WARNING message text
"""

from __future__ import annotations

import logging
import logging.handlers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.handler import CCHandler, CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.payload import field_number, field_str
from ccnet.cc.handlers.workers import WorkerPool

__all__ = ["LocalLoggerHandler", "LocalLoggerOptions", "format_line", "handler_class"]

log = Logger()


@dataclass(frozen=True)
class LocalLoggerOptions:
    logfile: Path | None
    max_bytes: int
    backup_count: int


def format_line(p: dict[str, Any], received: float) -> str:
    """One log line from a ``log.*`` body (pure); ``HandlerError`` on bad fields."""
    level = field_str(p, "log_level", "INFO", max_len=32).upper()
    job = field_str(p, "job_name", "?", max_len=256)
    host = field_str(p, "hostname", "?", max_len=256)
    msg = field_str(p, "log_msg", max_len=1 << 20)
    t = field_number(p, "log_time", p.get("time", received) if isinstance(p.get("time"), (int, float)) else received)
    try:
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f",{int((t % 1) * 1000):03d}"
    except (OverflowError, OSError, ValueError):
        stamp = "??:??:??,???"  # a sender's absurd clock must not lose the line
    day = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(received))
    # One message is one line: embedded newlines would forge extra entries.
    msg = msg.replace("\r", "\\r").replace("\n", "\\n")
    return f"{day} [{job}@{host}] {stamp} {level} {msg}"


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class LocalLoggerHandler(CCHandler):
    handler_name = "locallogger"
    cc_roles = frozenset({"local", "remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> LocalLoggerOptions:
        return LocalLoggerOptions(
            logfile=section.get_path("logfile", None),
            max_bytes=section.get_size("max-bytes", 10 * 1024 * 1024),
            backup_count=section.get_int("backup-count", 5, minimum=0),
        )

    def __init__(self, name: str, options: LocalLoggerOptions, server: Any) -> None:
        super().__init__(name, options, server)
        # One thread: lines stay in order and rotation never races.
        self.workers = WorkerPool(server.reactor, f"cc-{name}", 1)
        self._file: logging.Handler | None = None

    def _open(self) -> logging.Handler:
        if self._file is None:
            assert self.options.logfile is not None
            self.options.logfile.parent.mkdir(parents=True, exist_ok=True)
            h = logging.handlers.RotatingFileHandler(
                self.options.logfile, maxBytes=self.options.max_bytes,
                backupCount=self.options.backup_count, encoding="utf-8",
            )
            h.setFormatter(logging.Formatter("%(message)s"))
            self._file = h
        return self._file

    def _write(self, line: str) -> None:
        h = self._open()
        h.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))

    def stop(self) -> Any:
        d = self.workers.run(self._close, key="file") if self._file is not None else None
        if d is None:
            self.workers.stop()
            return None
        d.addBoth(lambda _: self.workers.stop())
        return d

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def handle(self, request: CCRequest) -> Any:
        if not (request.type == "log" or request.type.startswith("log.")):
            raise HandlerError(f"non-log msg: locallogger takes log.* messages, not {request.type}")
        line = format_line(request.payload or {}, request.received)
        if self.options.logfile is None:
            log.info("{line}", line=line)
            return None
        return self.workers.run(self._write, line, key="file")


handler_class = LocalLoggerHandler
