"""The ccnet configuration: one INI file parsed once into typed, frozen objects.

Every mistake raises :class:`ConfigError`, whose message names the file, the section,
the key and what was expected, so start-up can stop with one clear line.
Protocol packages own their sections through ``ccnet.<area>.config.parse(ini)``.
"""

from __future__ import annotations

import configparser
import importlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccnet.edge.limits import DEFAULT as EDGE_DEFAULT
from ccnet.edge.limits import METRICS_DEFAULT, EdgeLimits, parse_limits

__all__ = [
    "MISSING",
    "Config",
    "ConfigError",
    "IniFile",
    "ListenSpec",
    "SectionReader",
    "SetupError",
    "load_config",
    "parse_listen",
]

MISSING: Any = object()

ENV_VAR = "CCNET_CONFIG"

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# Endpoint option names that would carry TLS material: ccnet takes that from [tls].
_TLS_ENDPOINT_OPTIONS = {"privatekey", "certkey", "extracertchain", "cacertsdir", "dhparameters"}


class SetupError(ValueError):
    """A configuration or environment mistake found while the daemon's parts are built
    (after the INI file parsed): one line for the operator and exit 2, like ConfigError.
    Anything else escaping ``make_service`` is a bug and keeps its traceback."""


class ConfigError(Exception):
    """A configuration mistake, described for the operator in one line."""

    def __init__(
        self,
        path: Path | str,
        section: str | None,
        key: str | None,
        expected: str,
        got: str | None = None,
    ) -> None:
        self.path = str(path)
        self.section = section
        self.key = key
        self.expected = expected
        self.got = got
        where = self.path
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}"
        message = f"{where}: {expected}"
        if got is not None:
            message += f" (got {got!r})"
        super().__init__(message)


@dataclass(frozen=True)
class ListenSpec:
    """Where and how a listener listens.

    ``endpoint`` is a Twisted server endpoint string with TLS removed (``ssl:8443`` becomes
    ``tcp:8443``); ``tls`` says whether ccnet wraps it in its own mutual-TLS context.
    """

    endpoint: str
    tls: bool

    @property
    def port(self) -> int | None:
        parts = self.endpoint.split(":")
        if parts[0] in ("tcp", "tcp6") and len(parts) > 1:
            return int(parts[1])
        return None


def parse_listen(description: str) -> ListenSpec:
    """Validate an endpoint string; raise ValueError with what was expected."""
    text = description.strip()
    if not text:
        raise ValueError("an endpoint string such as ssl:8443 or tcp:9100:interface=127.0.0.1")
    parts = text.split(":")
    kind = parts[0].lower()
    options = parts[1:]
    if kind in ("ssl", "tcp", "tcp6"):
        if not options or not options[0].isdigit() or not 0 <= int(options[0]) <= 65535:
            raise ValueError(f"{kind}:PORT with PORT a number from 0 to 65535")
        extra = options[1:]
        for opt in extra:
            name, sep, _ = opt.partition("=")
            if not sep:
                raise ValueError(f"endpoint options as name=value, not {opt!r}")
            if name.lower() in _TLS_ENDPOINT_OPTIONS:
                raise ValueError(
                    f"no {name}= in the endpoint: TLS certificates come from the [tls] section"
                )
            if name.lower() not in ("interface", "backlog"):
                raise ValueError(f"known endpoint options interface= and backlog=, not {name}=")
        plain = ":".join(["tcp6" if kind == "tcp6" else "tcp", *options])
        return ListenSpec(plain, tls=(kind == "ssl"))
    if kind == "systemd":
        opts = dict(o.partition("=")[::2] for o in options)
        if opts.get("domain", "").upper() not in ("INET", "INET6", "UNIX"):
            raise ValueError("systemd:domain=INET:index=N")
        if "index" in opts and not opts["index"].isdigit():
            raise ValueError("systemd:domain=INET:index=N with N a number")
        if "index" not in opts and "name" not in opts:
            raise ValueError("systemd:domain=INET:index=N (or name=NAME)")
        tls = opts.pop("tls", "yes").lower()
        if tls not in _TRUE | _FALSE:
            raise ValueError("tls=yes or tls=no in a systemd endpoint")
        rest = ":".join(f"{k}={v}" for k, v in opts.items())
        return ListenSpec(f"systemd:{rest}", tls=tls in _TRUE)
    if kind == "unix":
        if not options or not options[0]:
            raise ValueError("unix:PATH")
        return ListenSpec(text, tls=False)
    raise ValueError("an endpoint string starting with ssl:, tcp:, tcp6:, systemd: or unix:")


class SectionReader:
    """Typed access to one INI section; remembers which keys were read."""

    def __init__(self, ini: IniFile, name: str, values: dict[str, str]) -> None:
        self._ini = ini
        self.name = name
        self._values = values
        self._read: set[str] = set()

    # -- errors --------------------------------------------------------------
    def error(self, key: str | None, expected: str, got: str | None = None) -> ConfigError:
        return ConfigError(self._ini.path, self.name, key, expected, got)

    # -- raw -----------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._values)

    def has(self, key: str) -> bool:
        return key.lower() in self._values

    def _raw(self, key: str, default: Any, expected: str) -> str | Any:
        key = key.lower()
        self._read.add(key)
        if key in self._values:
            return self._values[key]
        if default is MISSING:
            raise self.error(key, f"missing required key: expected {expected}")
        return default

    def remaining(self) -> dict[str, str]:
        """The keys not read so far (free-form options); marks them read."""
        rest = {k: v for k, v in self._values.items() if k not in self._read}
        self._read.update(rest)
        return rest

    def finish(self) -> None:
        """Fail on any key nobody asked for: a typo must not pass silently."""
        unknown = [k for k in self._values if k not in self._read]
        if unknown:
            raise self.error(unknown[0], "unknown key")

    # -- typed getters -------------------------------------------------------
    def get_str(self, key: str, default: Any = MISSING) -> str:
        value = self._raw(key, default, "a string")
        return value.strip() if isinstance(value, str) else value

    def get_int(self, key: str, default: Any = MISSING, minimum: int | None = None) -> int:
        value = self._raw(key, default, "an integer")
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        try:
            number = int(value.strip())
        except ValueError:
            raise self.error(key, "an integer", value) from None
        if minimum is not None and number < minimum:
            raise self.error(key, f"an integer >= {minimum}", value)
        return number

    def get_float(self, key: str, default: Any = MISSING, minimum: float | None = None) -> float:
        value = self._raw(key, default, "a number")
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        try:
            number = float(value.strip())
        except ValueError:
            raise self.error(key, "a number", value) from None
        if minimum is not None and number < minimum:
            raise self.error(key, f"a number >= {minimum}", value)
        return number

    def get_bool(self, key: str, default: Any = MISSING) -> bool:
        value = self._raw(key, default, "yes or no")
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise self.error(key, "yes or no (also true/false, on/off, 1/0)", value)

    def get_path(self, key: str, default: Any = MISSING, must_exist: bool = False) -> Path:
        value = self._raw(key, default, "a file or folder path")
        if value is None or isinstance(value, Path):
            path = value
        else:
            path = self._ini.resolve(value.strip())
        if must_exist and path is not None and not path.exists():
            raise self.error(key, "an existing file or folder", str(path))
        return path  # type: ignore[no-any-return,return-value]

    def get_readable_file(self, key: str, default: Any = MISSING) -> Path:
        path = self.get_path(key, default)
        if path is None:
            return path
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise self.error(key, f"a readable file ({exc.strerror})", str(path)) from None
        return path

    def get_list(self, key: str, default: Any = MISSING) -> list[str]:
        value = self._raw(key, default, "a comma separated list")
        if not isinstance(value, str):
            return list(value) if value is not None else value  # type: ignore[return-value]
        return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]

    def get_size(self, key: str, default: Any = MISSING) -> int:
        value = self._raw(key, default, "a size such as 64 KB")
        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        match = _SIZE_RE.match(value)
        if not match:
            raise self.error(key, "a size such as 1048576, 64 KB or 10 MB", value)
        unit = (match.group(2) or "").lower()[:1]
        return int(float(match.group(1)) * _SIZE_UNITS[unit])

    def get_choice(self, key: str, choices: Iterable[str], default: Any = MISSING) -> str:
        options = list(choices)
        value = self._raw(key, default, "one of " + ", ".join(options))
        if isinstance(value, str):
            value = value.strip()
        if value not in options and value is not default:
            raise self.error(key, "one of " + ", ".join(options), value)
        return value  # type: ignore[no-any-return]

    def get_endpoint(self, key: str, default: Any = MISSING) -> str:
        value = self._raw(key, default, "an endpoint string such as ssl:8443")
        if value is None:
            return value  # type: ignore[no-any-return,return-value]
        try:
            parse_listen(value)
        except ValueError as exc:
            raise self.error(key, str(exc), value) from None
        return value.strip()  # type: ignore[no-any-return]

    def get_listen(self, key: str, default: Any = MISSING) -> ListenSpec:
        return parse_listen(self.get_endpoint(key, default))


class IniFile:
    """A parsed INI file: sections are claimed by whoever understands them."""

    def __init__(self, path: Path, parser: configparser.ConfigParser) -> None:
        self.path = path
        self.dir = path.parent if str(path) != "<string>" else Path.cwd()
        self._parser = parser
        self._readers: dict[str, SectionReader] = {}

    @classmethod
    def load(cls, path: Path | str) -> IniFile:
        path = Path(path).absolute()
        parser = _new_parser()
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle, source=str(path))
        except FileNotFoundError:
            raise ConfigError(path, None, None, "config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, None, None, f"a readable UTF-8 config file ({exc})") from None
        except configparser.Error as exc:
            raise ConfigError(path, None, None, f"valid INI syntax: {_first_line(exc)}") from None
        return cls(path, parser)

    @classmethod
    def from_string(cls, text: str, path: Path | str = "<string>") -> IniFile:
        parser = _new_parser()
        try:
            parser.read_string(text, source=str(path))
        except configparser.Error as exc:
            raise ConfigError(path, None, None, f"valid INI syntax: {_first_line(exc)}") from None
        return cls(Path(path) if str(path) != "<string>" else Path("<string>"), parser)

    def resolve(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.dir / path)

    def has_section(self, name: str) -> bool:
        return self._parser.has_section(name)

    def section_names(self, prefix: str | None = None) -> list[str]:
        names = self._parser.sections()
        if prefix is None:
            return names
        return [n for n in names if n.startswith(prefix)]

    def section(self, name: str) -> SectionReader:
        if name not in self._readers:
            if not self._parser.has_section(name):
                raise ConfigError(self.path, name, None, "missing section")
            values = {k: v for k, v in self._parser.items(name, raw=True)}
            self._readers[name] = SectionReader(self, name, values)
        return self._readers[name]

    def claimed(self) -> set[str]:
        return set(self._readers)

    def error(self, section: str | None, key: str | None, expected: str, got: str | None = None) -> ConfigError:
        return ConfigError(self.path, section, key, expected, got)


def _new_parser() -> configparser.ConfigParser:
    return configparser.ConfigParser(
        interpolation=None, strict=True, empty_lines_in_values=False, default_section="\0none",
        inline_comment_prefixes=(";", "#"),
    )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


# --------------------------------------------------------------------------- core sections


@dataclass(frozen=True)
class TLSConfig:
    ca: Path
    cert: Path
    key: Path
    crl: Path | None
    min_version: str
    allow_proxies: bool


@dataclass(frozen=True)
class ListenerTLS:
    """What one HTTPS listener accepts beyond ``[tls]``'s defaults.

    ``allow-anonymous`` (clients without a certificate) and ``allow-proxies`` (RFC 3820
    proxy certificates) are read from the listener's own section; ``allow-proxies``
    there wins over ``[tls] allow-proxies``, which is the default for every listener.
    """

    allow_anonymous: bool = False
    allow_proxies: bool = False


def _parse_listener_tls(sect: SectionReader, tls: TLSConfig | None) -> ListenerTLS:
    return ListenerTLS(
        allow_anonymous=sect.get_bool("allow-anonymous", False),
        allow_proxies=sect.get_bool("allow-proxies", tls.allow_proxies if tls is not None else False),
    )


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    users: Path | None
    hostname: str
    shutdown_grace: float
    idle_timeout: float = 75.0
    write_stall: float = 120.0
    # connection limits of every HTTP(S) listener whose section does not set its own
    edge: EdgeLimits = EDGE_DEFAULT


@dataclass(frozen=True)
class StoreConfig:
    url: str
    #: Seconds a store call may take before it fails (``[store] timeout``).
    timeout: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: str


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration. Protocol parts are None when not enabled."""

    path: Path
    daemon: DaemonConfig
    tls: TLSConfig | None
    store: StoreConfig
    metrics: MetricsConfig | None = None
    supervisor: Any = None
    rpc: Any = None
    cc: Any = None
    component: Any = None
    # HTTPS listener name -> how it relaxes [tls] (anonymous clients, RFC 3820 proxies)
    listener_tls: dict[str, ListenerTLS] = field(default_factory=dict)
    # HTTP(S) listener name -> its connection limits ([ccnet] defaults, its section's keys)
    listener_limits: dict[str, EdgeLimits] = field(default_factory=dict)

    def limits(self, listener: str) -> EdgeLimits:
        """The connection limits of ``listener`` (the ``[ccnet]`` ones when it has no section)."""
        return self.listener_limits.get(listener, self.daemon.edge)

    def enabled_services(self) -> list[str]:
        names = ["supervisor", "rpc", "cc", "component", "metrics"]
        return [n for n in names if getattr(self, n) is not None]


# Protocol sections: (Config attribute, module with parse(ini), section names it owns).
PROTOCOLS: list[tuple[str, str, tuple[str, ...]]] = [
    ("supervisor", "ccnet.mplane.config", ("supervisor",)),
    ("rpc", "ccnet.rpc.config", ("rpc",)),
    ("cc", "ccnet.cc.config", ("cc", "ccserver")),
    ("component", "ccnet.mplane.component_config", ("component",)),
]

# Listener sections whose TLS may be relaxed with allow-anonymous / allow-proxies.
HTTPS_SECTIONS = ("supervisor", "rpc")

# HTTP(S) listener sections that may set their own connection limits (ccnet.edge.limits).
LIMITED_SECTIONS = ("supervisor", "rpc", "component", "metrics")


def _parse_tls(ini: IniFile) -> TLSConfig | None:
    if not ini.has_section("tls"):
        return None
    sect = ini.section("tls")
    cfg = TLSConfig(
        ca=sect.get_readable_file("ca"),
        cert=sect.get_readable_file("cert"),
        key=sect.get_readable_file("key"),
        crl=sect.get_readable_file("crl", None),
        min_version=sect.get_choice("min-version", ["1.2", "1.3"], "1.2"),
        allow_proxies=sect.get_bool("allow-proxies", False),
    )
    sect.finish()
    # Importing here keeps config free of pyOpenSSL for callers that only read INI files.
    from ccnet.tls import check_tls_files

    try:
        check_tls_files(cfg)
    except ValueError as exc:
        raise sect.error(exc.args[0], exc.args[1]) from None
    return cfg


def _parse_daemon(ini: IniFile) -> DaemonConfig:
    import socket

    if ini.has_section("ccnet"):
        sect = ini.section("ccnet")
    else:
        sect = SectionReader(ini, "ccnet", {})
    cfg = DaemonConfig(
        state_dir=sect.get_path("state-dir", ini.resolve("var")),
        users=sect.get_readable_file("users", None),
        hostname=sect.get_str("hostname", socket.gethostname()),
        shutdown_grace=sect.get_float("shutdown-grace", 10.0, minimum=0),
        idle_timeout=sect.get_float("idle-timeout", 75.0, minimum=1),
        write_stall=sect.get_float("write-stall", 120.0, minimum=1),
        edge=parse_limits(sect, EDGE_DEFAULT),
    )
    sect.finish()
    return cfg


def _parse_store(ini: IniFile, daemon: DaemonConfig) -> StoreConfig:
    default = f"sqlite:///{daemon.state_dir / 'ccnet.db'}"
    if not ini.has_section("store"):
        return StoreConfig(default)
    sect = ini.section("store")
    url = sect.get_str("url", default)
    timeout = sect.get_float("timeout", 10.0, minimum=0.1)
    sect.finish()
    if url.startswith("sqlite:///"):
        raw = url[len("sqlite:///") :]
        if raw != ":memory:":
            url = f"sqlite:///{ini.resolve(raw)}"
    elif not url.startswith(("postgresql://", "postgres://")):
        from ccnet.store import redact_url

        raise sect.error("url", "sqlite:///PATH or postgresql://user@host/db", redact_url(url))
    return StoreConfig(url, timeout)


def _parse_metrics(ini: IniFile) -> MetricsConfig | None:
    if not ini.has_section("metrics"):
        return None
    sect = ini.section("metrics")
    cfg = MetricsConfig(listen=sect.get_endpoint("listen", "tcp:9100:interface=127.0.0.1"))
    sect.finish()
    if parse_listen(cfg.listen).tls:
        # /metrics and /ready are plain HTTP for scrapers; keep them on a private address.
        raise sect.error("listen", "a plain tcp: endpoint such as tcp:9100:interface=127.0.0.1", cfg.listen)
    return cfg


def _load_protocol_parser(ini: IniFile, section: str, module: str) -> Callable[[IniFile], Any]:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ini.error(
            section, None, f"section needs {module}, which this ccnet cannot import ({exc})"
        ) from None
    return mod.parse  # type: ignore[no-any-return]


def parse_config(ini: IniFile) -> Config:
    daemon = _parse_daemon(ini)
    tls = _parse_tls(ini)
    store = _parse_store(ini, daemon)
    # Before the sections' own parsers, which fail on keys nobody read.
    listener_limits = {
        name: parse_limits(ini.section(name), METRICS_DEFAULT if name == "metrics" else daemon.edge)
        for name in LIMITED_SECTIONS if ini.has_section(name)
    }
    metrics = _parse_metrics(ini)
    listener_tls = {
        name: _parse_listener_tls(ini.section(name), tls) for name in HTTPS_SECTIONS if ini.has_section(name)
    }
    parts: dict[str, Any] = {}
    for attr, module, sections in PROTOCOLS:
        present = [s for s in sections if ini.has_section(s)]
        if not present:
            continue
        parse = _load_protocol_parser(ini, present[0], module)
        parts[attr] = parse(ini)
    unknown = [s for s in ini.section_names() if s not in ini.claimed()]
    if unknown:
        raise ini.error(unknown[0], None, "unknown section")
    for reader_name in ini.claimed():
        ini.section(reader_name).finish()
    config = Config(
        path=ini.path,
        daemon=daemon,
        tls=tls,
        store=store,
        metrics=metrics,
        listener_tls=listener_tls,
        listener_limits=listener_limits,
        **parts,
    )
    if not any(getattr(config, n) is not None for n in ("supervisor", "rpc", "cc", "component")):
        raise ini.error(
            None, None, "at least one of [supervisor], [rpc], [cc] or [component] to enable a service"
        )
    needs_tls = [n for n in HTTPS_SECTIONS if getattr(config, n) is not None]
    if needs_tls and tls is None:
        raise ini.error("tls", None, f"a [tls] section (ca, cert, key): [{needs_tls[0]}] serves HTTPS")
    return config


def load_config(path: Path | str | None = None) -> Config:
    """Load the config named by ``path``, else ``$CCNET_CONFIG``, else ``conf/ccnet.ini``."""
    if path is None:
        path = os.environ.get(ENV_VAR) or "conf/ccnet.ini"
    return parse_config(IniFile.load(path))
