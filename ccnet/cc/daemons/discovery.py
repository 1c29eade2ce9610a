"""``discovery`` daemon (named by the original README, never written there):
every ``discovery-period`` seconds publish ``pub.discovery`` with this host's
facts, for the remote side to keep the latest per host (``infowriter`` writes
it to ``<host>/discovery.json``).

Fields: ``facts`` {hostname, fqdn, addresses, os, release, machine, python,
uptime (s), ccnet_version}, ``services`` (the ccnet sections enabled in the
same ini and where they listen: cc-socket, listen keys) and ``endpoints``
(the ``endpoints = name=url, ...`` list of this section).  Fact gathering
(DNS, /proc) runs in a thread.
"""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from ccnet import __version__
from ccnet.cc.daemons.base import CCErrorReply, CCJob, common_keys, run_daemon
from ccnet.config import IniFile, SectionReader

__all__ = ["Discovery", "DiscoveryOptions", "parse_options", "host_facts", "enabled_services"]

log = Logger()

#: ccnet sections and the key saying where each listens.
SERVICE_KEYS = {
    "cc": "cc-socket", "ccserver": "cc-socket", "rpc": "listen", "supervisor": "listen",
    "metrics": "listen", "component": "supervisor",
}


@dataclass(frozen=True)
class DiscoveryOptions:
    period: float
    endpoints: tuple[tuple[str, str], ...]
    retry_period: float


def parse_options(section: SectionReader, ini: IniFile) -> DiscoveryOptions:
    endpoints = []
    for item in section.get_list("endpoints", []):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise section.error("endpoints", "a comma list of name=url", item)
        endpoints.append((name.strip(), url.strip()))
    opts = DiscoveryOptions(
        period=section.get_float("discovery-period", 300.0, minimum=0.1),
        endpoints=tuple(endpoints),
        retry_period=section.get_float("retry-period", 5.0, minimum=0.05),
    )
    common_keys(section)
    return opts


def host_facts() -> dict[str, Any]:
    """Blocking: facts about this host."""
    hostname = socket.gethostname()
    addresses: set[str] = set()
    try:
        for info in socket.getaddrinfo(hostname, None):
            addresses.add(str(info[4][0]))
    except OSError:
        pass
    uptime = None
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    uname = platform.uname()
    return {
        "hostname": hostname,
        "fqdn": socket.getfqdn(),
        "addresses": sorted(addresses),
        "os": uname.system,
        "release": uname.release,
        "machine": uname.machine,
        "python": platform.python_version(),
        "uptime": uptime,
        "ccnet_version": __version__,
    }


def enabled_services(ini_path: Path) -> dict[str, str]:
    """Blocking: ccnet sections of the ini and their listen endpoints."""
    try:
        ini = IniFile.load(ini_path)
    except Exception:
        return {}
    out: dict[str, str] = {}
    for name, key in SERVICE_KEYS.items():
        if ini.has_section(name):
            sect = ini.section(name)
            out[name] = sect.get_str(key, "") if sect.has(key) else ""
    return out


class Discovery(CCJob):
    options: DiscoveryOptions

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.published = 0
        self._busy = False

    def startJob(self) -> None:  # noqa: N802
        self.every(self.options.period, self.publish)

    @defer.inlineCallbacks
    def publish(self) -> Any:
        if self._busy:
            return
        self._busy = True
        try:
            pool = self.reactor.getThreadPool()
            facts = yield threads.deferToThreadPool(self.reactor, pool, host_facts)
            services = yield threads.deferToThreadPool(self.reactor, pool, enabled_services, self.config.ini_path)
            fields = {"facts": facts, "services": services, "endpoints": dict(self.options.endpoints)}
            try:
                yield self.query("pub.discovery", fields, timeout=self.options.retry_period, retries=3)
                self.published += 1
            except CCErrorReply as exc:
                log.warn("discovery: not accepted: {error}", error=str(exc))
            except defer.TimeoutError:
                log.warn("discovery: no acknowledgement, next try in {p} s", p=self.options.period)
        finally:
            self._busy = False


def main(argv: list[str] | None = None) -> int:
    return run_daemon(Discovery, parse_options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
