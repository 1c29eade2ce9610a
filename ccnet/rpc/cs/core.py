"""The Configuration Server's logic, without I/O: DIRAC cfg snapshots, versions, commits
and the worker registry.

Pure module (no Twisted, no files, no store).  The cfg text is parsed and written by
``diraccfg``, the parser DIRAC itself uses, so what ccnet serves is byte for byte what
a DIRAC server would serve for the same configuration.

Wire shapes follow DIRAC 9.1's ``TornadoConfigurationHandler``/``ServiceInterfaceBase``:

* the configuration travels as ``zlib.compress(str(cfg).encode(), 9)``, base64 text in
  the JSON reply (``getCompressedData``) or in the argument (``commitNewData``);
* a version is ``str(utc now)`` (``2026-11-28 10:20:31.123456``) kept in
  ``DIRAC/Configuration/Version``; clients compare versions as strings, so every new
  version must sort after the current one;
* a commit is refused unless it carries the current version and the same
  ``DIRAC/Configuration/Name`` (DIRAC's check against lost updates; ccnet does not do
  DIRAC's optional ``EnableAutoMerge``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from diraccfg import CFG

__all__ = [
    "CONFIGURATION_PATH",
    "CfgError",
    "CommitRefused",
    "Snapshot",
    "WorkerRegistry",
    "compress",
    "decode_commit",
    "encode_commit",
    "decompress",
    "next_version",
    "prepare_commit",
    "servers_value",
    "snapshot",
    "with_options",
    "worker_url",
]

CONFIGURATION_PATH = "DIRAC/Configuration"
VERSION_OPTION = f"{CONFIGURATION_PATH}/Version"
NAME_OPTION = f"{CONFIGURATION_PATH}/Name"
SERVERS_OPTION = f"{CONFIGURATION_PATH}/Servers"
MASTER_OPTION = f"{CONFIGURATION_PATH}/MasterServer"
#: DIRAC's defaults (ConfigurationData.getPropagationTime / getSlavesGraceTime), seconds.
DEFAULT_REFRESH_TIME = 300
DEFAULT_GRACE_TIME = 600
#: A commit larger than this once decompressed is refused (a zip bomb must not fill memory).
MAX_CFG_BYTES = 64 * 1024 * 1024


class CfgError(ValueError):
    """The data is not a DIRAC configuration: not base64, not zlib, not UTF-8 or not cfg."""


class CommitRefused(Exception):
    """A well-formed configuration that may not replace the current one (stale version,
    other name)."""


@dataclass(frozen=True)
class Snapshot:
    """One version of the configuration as served: normalized cfg text and its wire forms."""

    text: str
    version: str
    name: str | None
    compressed: bytes = field(repr=False)
    #: ``compressed`` in base64 text, what getCompressedData returns (made once per version).
    encoded: str = field(repr=False)
    #: ``DIRAC/Configuration/Servers`` and ``MasterServer`` (read with the rest, off the reactor).
    servers: tuple[str, ...] = ()
    master: str | None = None

    def option(self, path: str) -> str | None:
        """Any option (parses the text: call it off the reactor)."""
        return option(parse_cfg(self.text), path)


def _as_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def parse_cfg(text: str) -> CFG:
    """``text`` parsed by diraccfg; :class:`CfgError` when diraccfg refuses it."""
    try:
        return CFG().loadFromBuffer(text)
    except Exception as exc:  # noqa: BLE001 (diraccfg raises ValueError, KeyError, ...)
        raise CfgError(f"not a DIRAC cfg: {exc}") from None


def option(cfg: CFG, path: str) -> str | None:
    """The value of the option at ``path`` (``A/B/Opt``), None when absent or a section."""
    levels = [level for level in path.strip("/").split("/") if level]
    section = cfg
    for level in levels[:-1]:
        if not section.isSection(level):
            return None
        child = section[level]
        assert isinstance(child, CFG)
        section = child
    return section[levels[-1]] if section.isOption(levels[-1]) else None  # type: ignore[return-value]


def _set_options(cfg: CFG, values: Mapping[str, str]) -> None:
    for path, value in values.items():
        levels = [level for level in path.strip("/").split("/") if level]
        section = cfg
        for level in levels[:-1]:
            if level not in section.listSections():
                section.createNewSection(level)
            child = section[level]
            if not isinstance(child, CFG):
                raise CfgError(f"{level} in {path} is an option, not a section")
            section = child
        section.setOption(levels[-1], value)


def snapshot(text: str) -> Snapshot:
    """The snapshot of cfg ``text``.  CPU work (parse, serialize, compress): the service
    runs it, and every other function making snapshots, off the reactor."""
    return _snapshot_of(parse_cfg(text))


def compress(text: str) -> bytes:
    """cfg text as DIRAC sends it: zlib, level 9."""
    return zlib.compress(text.encode("utf-8"), 9)


def _snapshot_of(cfg: CFG) -> Snapshot:
    normalized = str(cfg)
    compressed = compress(normalized)
    return Snapshot(
        text=normalized,
        version=option(cfg, VERSION_OPTION) or "0",
        name=option(cfg, NAME_OPTION),
        compressed=compressed,
        encoded=base64.b64encode(compressed).decode("ascii"),
        servers=tuple(_as_list(option(cfg, SERVERS_OPTION))),
        master=option(cfg, MASTER_OPTION),
    )


def with_options(current: Snapshot, values: Mapping[str, str]) -> Snapshot:
    """``current`` with the options at the given paths set (``DIRAC/Configuration/Servers``...)."""
    cfg = parse_cfg(current.text)
    _set_options(cfg, values)
    return _snapshot_of(cfg)


def decompress(data: bytes, limit: int = MAX_CFG_BYTES) -> str:
    """zlib data to cfg text; :class:`CfgError` when it is not zlib, too big or not UTF-8."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise CfgError(f"not zlib data: {exc}") from None
    if len(raw) > limit:
        raise CfgError(f"configuration larger than {limit} bytes once decompressed")
    if not inflater.eof:
        raise CfgError("truncated zlib data")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CfgError(f"not UTF-8 text: {exc}") from None


def decode_commit(encoded: str | bytes, limit: int = MAX_CFG_BYTES) -> str:
    """``commitNewData``'s argument (base64 of zlib of cfg text) to cfg text."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CfgError(f"not base64: {exc}") from None
    return decompress(data, limit)


def encode_commit(text: str) -> str:
    """What a client sends to ``commitNewData`` for cfg ``text`` (DIRAC's CSJSONClient)."""
    return base64.b64encode(compress(text)).decode("ascii")


def next_version(now: datetime.datetime, current: str) -> str:
    """DIRAC's ``str(utcnow())`` for ``now``, moved past ``current`` if the clock did not
    advance (clients compare versions as strings: a new one must sort after the old)."""
    if now.tzinfo is not None:
        now = now.astimezone(datetime.UTC).replace(tzinfo=None)
    candidate = now
    try:
        previous = datetime.datetime.fromisoformat(current)
    except ValueError:
        previous = None
    if previous is not None and previous.tzinfo is None and candidate <= previous:
        candidate = previous + datetime.timedelta(microseconds=1)
    version = str(candidate)
    if version <= current:  # a non-date version that sorts after any date: keep ordering
        raise CommitRefused(f"cannot make a version after {current!r}")
    return version


def prepare_commit(current: Snapshot, text: str, now: datetime.datetime, *,
                   keep_version: bool = False) -> Snapshot:
    """The snapshot replacing ``current`` with cfg ``text``, under a new version.

    ``keep_version`` is DIRAC's ``updateVersionOption`` (a rollback: the old contents take
    the current version before the check).  Raises :class:`CfgError` for text diraccfg
    refuses, :class:`CommitRefused` for a stale version or another configuration name.
    """
    cfg = parse_cfg(text)
    if keep_version:
        _set_options(cfg, {VERSION_OPTION: current.version})
    remote = option(cfg, VERSION_OPTION) or "0"
    if remote != current.version:
        raise CommitRefused(
            f"Local and remote versions differ ({current.version} vs {remote}). Cannot commit."
        )
    name = option(cfg, NAME_OPTION)
    if name != current.name:
        raise CommitRefused(f"Names differ: Server is {current.name} and remote is {name}")
    _set_options(cfg, {VERSION_OPTION: next_version(now, current.version)})
    return _snapshot_of(cfg)


class WorkerRegistry:
    """Worker (slave) servers that published themselves, expired after the grace time
    (DIRAC's ``dAliveWorkerServers`` and ``_checkWorkersStatus``)."""

    def __init__(self, grace: float = DEFAULT_GRACE_TIME) -> None:
        self.grace = grace
        self._seen: dict[str, float] = {}

    def seen(self, url: str, now: float) -> bool:
        """Record that ``url`` published at ``now``; True when it is a new worker."""
        new = url not in self._seen
        self._seen[url] = now
        return new

    def expire(self, now: float) -> list[str]:
        """Forget workers silent for longer than the grace time; the ones forgotten."""
        dead = [url for url, when in self._seen.items() if now - when > self.grace]
        for url in dead:
            del self._seen[url]
        return dead

    @property
    def urls(self) -> list[str]:
        return list(self._seen)


def worker_url(url: str) -> str:
    """``url`` when it is one ``https://host[:port]/...`` URL, else ValueError saying why.

    A worker's URL goes into ``DIRAC/Configuration/Servers``, a comma separated list: a
    comma in it would list a second server that was never pinged."""
    problem = None
    if "," in url or any(c.isspace() for c in url):
        problem = "one URL, without commas or spaces"
    else:
        try:
            parts = urlsplit(url)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:  # a bad port or an unclosed [IPv6 literal
            parts, port_ok = None, False
        if parts is None or parts.scheme != "https" or not parts.hostname or not port_ok:
            problem = "https://host[:port]/System/Component"
    if problem is not None:
        raise ValueError(f"not a worker URL ({problem}): {url!r}")
    return url


def servers_value(master_url: str | None, workers: Iterable[str]) -> str:
    """``DIRAC/Configuration/Servers`` for the master and its live workers."""
    urls = [master_url] if master_url else []
    urls.extend(url for url in workers if url not in urls)
    return ", ".join(urls)
