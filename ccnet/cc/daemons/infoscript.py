"""``infoscript`` daemon: run ``info-script`` (through ``/bin/sh -c``) every
``info-period`` seconds and send its output as infofile ``info-name`` (mtime =
now), with the same compression, blob and acknowledgement handling as
``infosender``.  The script runs as a child process, never in the reactor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, threads, utils
from twisted.logger import Logger

from ccnet.cc.daemons.base import CCErrorReply, CCJob, common_keys, run_daemon
from ccnet.cc.daemons.infosender import infofile_message, parse_compression, parse_suffix
from ccnet.cc.handlers.payload import compress
from ccnet.config import IniFile, SectionReader

__all__ = ["InfoScript", "InfoScriptOptions", "parse_options"]

log = Logger()


@dataclass(frozen=True)
class InfoScriptOptions:
    info_script: str
    info_period: float
    info_name: str
    compression: str
    compression_level: int
    msg_suffix: str
    use_blob: bool
    retry_period: float


def parse_options(section: SectionReader, ini: IniFile) -> InfoScriptOptions:
    comp, level = parse_compression(section)
    opts = InfoScriptOptions(
        info_script=section.get_str("info-script"),
        info_period=section.get_float("info-period", 60.0, minimum=0.1),
        info_name=section.get_str("info-name"),
        compression=comp,
        compression_level=level,
        msg_suffix=parse_suffix(section),
        use_blob=section.get_bool("use-blob", True),
        retry_period=section.get_float("retry-period", 5.0, minimum=0.05),
    )
    common_keys(section)
    return opts


class InfoScript(CCJob):
    options: InfoScriptOptions

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.busy = False
        self.acked = 0

    def startJob(self) -> None:  # noqa: N802
        self.every(self.options.info_period, self.tick)

    @defer.inlineCallbacks
    def tick(self) -> Any:
        if self.busy:  # previous output still unacknowledged: do not pile up
            return
        self.busy = True
        try:
            yield self._run_once()
        finally:
            self.busy = False

    @defer.inlineCallbacks
    def _run_once(self) -> Any:
        o = self.options
        out, err, code = yield utils.getProcessOutputAndValue("/bin/sh", ["-c", o.info_script], reactor=self.reactor)
        if code != 0:
            log.warn("infoscript: {script} exited {code}: {err}", script=o.info_script, code=code,
                     err=err.decode("utf-8", "replace")[:500])
        mtime = float(self.clock.seconds())
        payload = yield threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), compress, out, o.compression, o.compression_level
        )
        mtype, fields, blob = infofile_message(o.info_name, mtime, payload, o.compression, o.use_blob, o.msg_suffix)
        try:
            yield self.query(mtype, fields, blob, timeout=o.retry_period, retries=None)
            self.acked += 1
        except CCErrorReply as exc:
            log.warn("infoscript: {name} refused: {error}", name=o.info_name, error=str(exc))


def main(argv: list[str] | None = None) -> int:
    return run_daemon(InfoScript, parse_options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
