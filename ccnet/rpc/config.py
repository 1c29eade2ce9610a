"""``[rpc]`` and ``[rpc:System/Component]`` sections, parsed once into frozen objects.

::

    [rpc]
    listen = ssl:8443            ; Twisted endpoint string
    max-body = 10 MB             ; larger request bodies get 413
    threads = 10                 ; bounded pool for blocking exports
    allow-proxies = yes          ; RFC 3820 proxies at the TLS handshake and in credentials
                                 ; (default: as [tls] allow-proxies)
    trust-ssl-headers = no       ; read X-SSL-CERT from a TLS-terminating proxy
    url = https://rpc.example.org:8443   ; advertised base URL (srv_getURL)

    [rpc:Framework/Notebook]
    class = ccnet.rpc.examples.notebook:NotebookService
    auth.set = NormalUser
    auth.Default = authenticated
    MaxEntries = 1000            ; free option, read with srv_getCSOption
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ccnet.config import IniFile, SectionReader

__all__ = ["RPCConfig", "ServiceConfig", "load_service_class", "parse", "SECTION_PREFIX"]

SECTION_PREFIX = "rpc:"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$")
_CLASS_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_AUTH_PREFIX = "auth."


@dataclass(frozen=True)
class ServiceConfig:
    """One ``[rpc:System/Component]`` section."""

    name: str  # "System/Component"
    class_path: str  # "package.module:Class"
    service_class: type
    # lower-cased method name (or "default") -> rules; INI keys are case-insensitive
    authorization: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # free options, lower-cased keys, raw strings
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RPCConfig:
    """The ``[rpc]`` listener and its services."""

    listen: str = "ssl:8443"
    max_body: int = 10 * 1024 * 1024
    threads: int = 10
    allow_proxies: bool | None = None  # None: follow [tls] allow-proxies
    trust_ssl_headers: bool = False
    url: str | None = None
    services: tuple[ServiceConfig, ...] = ()
    path: str = "<string>"


def load_service_class(class_path: str) -> type:
    """Import ``package.module:Class`` and check it is an RPCService; ValueError says why."""
    from ccnet.rpc.service import RPCService

    if not _CLASS_RE.match(class_path):
        raise ValueError("package.module:ClassName")
    module_name, _, class_name = class_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"an importable module ({exc})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, RPCService):
        raise ValueError(f"{class_name} in {module_name} to be a subclass of ccnet.rpc.RPCService")
    return cls


def _parse_service(ini: IniFile, section: str) -> ServiceConfig:
    sect: SectionReader = ini.section(section)
    name = section[len(SECTION_PREFIX) :].strip()
    if not _NAME_RE.match(name):
        raise sect.error(None, "a section named [rpc:System/Component] (letters, digits, _)", section)
    class_path = sect.get_str("class")
    try:
        service_class = load_service_class(class_path)
    except ValueError as exc:
        raise sect.error("class", str(exc), class_path) from None
    authorization: dict[str, tuple[str, ...]] = {}
    for key in sect.keys():
        if key.startswith(_AUTH_PREFIX):
            method = key[len(_AUTH_PREFIX) :]
            if not method:
                raise sect.error(key, "auth.<method> = rule, rule")
            authorization[method.lower()] = tuple(sect.get_list(key))
    from ccnet.rpc.dispatch import MethodTable

    unknown = MethodTable(service_class, authorization).unknown_rules
    if unknown:
        raise sect.error(f"auth.{unknown[0]}", f"a rule for a method {class_path} exports")
    options = sect.remaining()
    sect.finish()
    return ServiceConfig(
        name=name,
        class_path=class_path,
        service_class=service_class,
        authorization=MappingProxyType(authorization),
        options=MappingProxyType(options),
    )


def parse(ini: IniFile) -> RPCConfig | None:
    """Parse ``[rpc]`` and every ``[rpc:System/Component]``; None when ``[rpc]`` is absent."""
    service_sections = ini.section_names(SECTION_PREFIX)
    if not ini.has_section("rpc"):
        if service_sections:
            raise ini.error(service_sections[0], None, "an [rpc] section to serve this service")
        return None
    sect = ini.section("rpc")
    allow_proxies: Any = sect.get_bool("allow-proxies", None)
    url = sect.get_str("url", None)
    if url is not None:
        url = url.rstrip("/")
        if not url.startswith("https://"):
            raise sect.error("url", "an https:// base URL", url)
    cfg_kwargs: dict[str, Any] = dict(
        listen=sect.get_endpoint("listen", "ssl:8443"),
        max_body=sect.get_size("max-body", "10 MB"),
        threads=sect.get_int("threads", 10, minimum=1),
        allow_proxies=allow_proxies,
        trust_ssl_headers=sect.get_bool("trust-ssl-headers", False),
        url=url,
    )
    if cfg_kwargs["max_body"] < 1024:
        raise sect.error("max-body", "a size of at least 1 KB")
    # allow-anonymous belongs to the lead's listener code; it reads it before us.
    sect.get_bool("allow-anonymous", False)
    sect.finish()
    services = tuple(_parse_service(ini, s) for s in service_sections)
    seen: set[str] = set()
    for svc in services:
        if svc.name.lower() in seen:
            raise ini.error(SECTION_PREFIX + svc.name, None, "one section per service name")
        seen.add(svc.name.lower())
    return RPCConfig(services=services, path=str(ini.path), **cfg_kwargs)
