"""``pg_logforward`` daemon: the UDP stream of PostgreSQL's ``pg_logforward`` extension
handed to plugins (markokr/cc's daemon of the same name).

Keys (the original's): ``listen-host`` (127.0.0.1), ``listen-port`` (required),
``log-format`` (``netstr``, the only one the original implemented),
``log-parsing-errors`` (no: malformed datagrams are only counted; yes: one warning
each), ``stats-period`` (30), ``plugins`` (section names; see
:mod:`ccnet.cc.daemons.plugins.pg_logforward`).  Each datagram is parsed by
:func:`ccnet.cc.pglog.parse_netstr` and given to every plugin; a malformed datagram
or a failing plugin is counted and logged, never fatal.  Counters (the original's
``pg_logforward.count``/``bytes``/``seconds`` plus ``parse_errors`` and
``plugin_errors``) go to the log every ``stats-period`` seconds.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from zope.interface import implementer

from ccnet.cc.daemons.base import CCJob, common_keys, run_daemon
from ccnet.cc.daemons.plugins.pg_logforward import (
    IPgLogForwardDaemon,
    IPgLogForwardPlugin,
    IPgLogForwardPluginFactory,
)
from ccnet.cc.pglog import RecordError, parse_netstr
from ccnet.config import IniFile, SectionReader

__all__ = ["PgLogForward", "PgLogForwardOptions", "PluginSpec", "parse_options", "plugin_factories"]

log = Logger()

LOG_FORMATS = ("netstr",)
#: The extension's datagrams are at most 8192 bytes; read a little more.
RECV_MAX = 65535


@dataclass(frozen=True)
class PluginSpec:
    section: str
    factory: Any  # provides IPgLogForwardPluginFactory
    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PgLogForwardOptions:
    listen_host: str
    listen_port: int
    log_format: str
    log_parsing_errors: bool
    stats_period: float
    plugins: tuple[PluginSpec, ...]


def _module_name(name: str) -> str:
    if name.startswith("cc.daemon.plugins."):
        return "ccnet.cc.daemons.plugins." + name[len("cc.daemon.plugins."):]
    return name


def plugin_factories(module: str, log_format: str) -> list[Any]:
    """The plugin classes ``module = ...`` names that read ``log_format``; ValueError says why none."""
    module_name, _, attr = _module_name(module).partition(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"an importable plugin module ({exc})") from None
    if attr:
        candidates = [getattr(mod, attr, None)]
    else:
        candidates = [obj for _, obj in inspect.getmembers(mod, inspect.isclass) if obj.__module__ == mod.__name__]
    found = [c for c in candidates if c is not None and IPgLogForwardPluginFactory.providedBy(c)]
    if not found:
        raise ValueError(f"a module with pg_logforward plugin classes (IPgLogForwardPluginFactory) in {module_name}")
    usable = [c for c in found if log_format in getattr(c, "log_formats", ())]
    if not usable:
        raise ValueError(f"plugins that read log-format {log_format} in {module_name}")
    return usable


def parse_options(section: SectionReader, ini: IniFile) -> PgLogForwardOptions:
    log_format = section.get_choice("log-format", list(LOG_FORMATS), "netstr")
    port = section.get_int("listen-port", minimum=0)
    if port > 65535:
        raise section.error("listen-port", "a UDP port from 0 to 65535", str(port))
    specs: list[PluginSpec] = []
    for name in section.get_list("plugins", []):
        if not ini.has_section(name):
            raise section.error("plugins", f"plugin sections that exist; no section [{name}]")
        sect = ini.section(name)
        module = sect.get_str("module")
        try:
            factories = plugin_factories(module, log_format)
        except ValueError as exc:
            raise sect.error("module", str(exc), module) from None
        options = tuple(sorted((k, sect.get_str(k)) for k in sect.keys() if k != "module"))
        specs.extend(PluginSpec(name, f, options) for f in factories)
    opts = PgLogForwardOptions(
        listen_host=section.get_str("listen-host", "127.0.0.1"),
        listen_port=port,
        log_format=log_format,
        log_parsing_errors=section.get_bool("log-parsing-errors", False),
        stats_period=section.get_float("stats-period", 30.0, minimum=0),
        plugins=tuple(specs),
    )
    common_keys(section)
    return opts


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, daemon: PgLogForward) -> None:
        self.daemon = daemon

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 (Twisted API)
        self.daemon.process(datagram, addr)


@implementer(IPgLogForwardDaemon)
class PgLogForward(CCJob):
    options: PgLogForwardOptions

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.plugins: list[Any] = []
        self.port: Any = None
        self.stats: Counter[str] = Counter()
        self._last: Counter[str] = Counter()

    @property
    def hostname(self) -> str:
        return self.config.hostname

    @property
    def log_format(self) -> str:
        return self.options.log_format

    def startJob(self) -> None:  # noqa: N802
        # Plugins are ready before the first datagram, as in the original.
        for spec in self.options.plugins:
            plugin = spec.factory(spec.section, dict(spec.options), self)
            if not IPgLogForwardPlugin.providedBy(plugin):
                raise TypeError(f"plugin [{spec.section}] does not provide IPgLogForwardPlugin")
            self.plugins.append(plugin)
        if not self.plugins:
            log.warn("pg_logforward: no plugins loaded")
        self.port = self.reactor.listenUDP(self.options.listen_port, _Datagrams(self),
                                           interface=self.options.listen_host, maxPacketSize=RECV_MAX)
        host = self.port.getHost()
        log.info("pg_logforward listening on udp {host}:{port} for {fmt} records, plugins: {plugins}",
                 host=host.host, port=host.port, fmt=self.options.log_format,
                 plugins=", ".join(f"{p.name} ({type(p).__name__})" for p in self.plugins) or "none")
        if self.options.stats_period > 0:
            self.every(self.options.stats_period, self.log_stats, now=False)

    def stopJob(self) -> Any:  # noqa: N802
        for plugin in self.plugins:
            try:
                plugin.stop()
            except Exception:
                log.failure("pg_logforward: plugin [{name}] failed to stop", name=plugin.name)
        if self.port is not None:
            return self.port.stopListening()
        return None

    def process(self, data: bytes, addr: Any = None) -> None:
        started = time.monotonic()
        self.stats["count"] += 1
        self.stats["bytes"] += len(data)
        try:
            record = parse_netstr(data)
        except RecordError as exc:
            self.stats["parse_errors"] += 1
            if self.options.log_parsing_errors:
                log.warn("pg_logforward: netstr parsing error from {addr}: {reason} ({size} bytes)",
                         addr=addr, reason=str(exc), size=len(data))
            return
        for plugin in self.plugins:
            try:
                plugin.process(dict(record))
            except Exception:
                self.stats["plugin_errors"] += 1
                log.failure("pg_logforward: plugin [{name}] crashed", name=plugin.name)
        self.stats["seconds_us"] += int((time.monotonic() - started) * 1e6)

    def log_stats(self) -> None:
        period = self.stats - self._last
        self._last = Counter(self.stats)
        if not period:
            return
        log.info("pg_logforward stats: {stats}",
                 stats=" ".join(f"pg_logforward.{k}={v}" for k, v in sorted(period.items()) if k != "seconds_us")
                 + f" pg_logforward.seconds={period['seconds_us'] / 1e6:.6f}",
                 pg_logforward_stats=dict(period))


def main(argv: list[str] | None = None) -> int:
    return run_daemon(PgLogForward, parse_options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
