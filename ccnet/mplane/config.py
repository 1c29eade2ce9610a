"""The ``[supervisor]`` section, parsed once into a frozen object.

::

    [supervisor]
    # Twisted endpoint string
    listen = ssl:8888
    # RI "identity: roles" file, or an SDK config with [Roles]
    users = users.conf
    # RI "label[, component]: roles" file, or an SDK config with [Authorizations]
    caps = caps.conf
    # this role sees every capability, measurement and the operator view
    admin-role = admin
    # if set, only identities with this role may register capabilities
    component-role =
    # seconds a component's GET show/specification may be held open
    long-poll = 20
    # finished measurements older than this are deleted (0 = keep forever)
    result-expiry = 7d
    # extra registry files or URLs, comma separated
    registries =
    # base URL written into "link" (default: from the request Host header)
    url =
    # URLs of components that listen (client-initiated workflow), and how often to
    # refresh their capabilities / redeem their receipts
    components =
    component-refresh = 60
    redeem-interval = 1
    # this daemon's name in the operator view when several supervisor daemons share one
    # PostgreSQL store (default: hostname:port of listen, hostname:pid-N for port 0)
    node-name =
    # paths, defaults equal to the mPlane SDK's
    registration-path = register/capability
    specification-path = show/specification
    result-path = register/result
    client-capability-path = show/capability
    client-specification-path = register/specification
    client-result-path = show/result
    sdk-capability-path = capability
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccnet.config import IniFile
from ccnet.mplane.model import ModelError, parse_duration

__all__ = ["SupervisorConfig", "parse", "PATH_KEYS"]

PATH_KEYS = {
    "registration_path": ("registration-path", "register/capability"),
    "specification_path": ("specification-path", "show/specification"),
    "result_path": ("result-path", "register/result"),
    "client_capability_path": ("client-capability-path", "show/capability"),
    "client_specification_path": ("client-specification-path", "register/specification"),
    "client_result_path": ("client-result-path", "show/result"),
    "sdk_capability_path": ("sdk-capability-path", "capability"),
}


@dataclass(frozen=True)
class SupervisorConfig:
    listen: str = "ssl:8888"
    users: Path | None = None
    caps: Path | None = None
    admin_role: str | None = "admin"
    component_role: str | None = None
    long_poll: float = 20.0
    result_expiry: float = 7 * 86400.0
    registries: tuple[str, ...] = ()
    url: str | None = None
    components: tuple[str, ...] = ()
    component_refresh: float = 60.0
    redeem_interval: float = 1.0
    registration_path: str = "register/capability"
    specification_path: str = "show/specification"
    result_path: str = "register/result"
    client_capability_path: str = "show/capability"
    client_specification_path: str = "register/specification"
    client_result_path: str = "show/result"
    sdk_capability_path: str = "capability"
    node_name: str | None = None

    def paths(self) -> dict[str, str]:
        return {attr: getattr(self, attr) for attr in PATH_KEYS}


def _seconds(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return parse_duration(text).total_seconds()


def get_duration(sect: Any, key: str, default: str | None) -> float | None:
    """Seconds from ``key`` (``30``, or an mPlane duration ``30s``, ``10m``, ``7d``), >= 0;
    None when it is absent and has no default."""
    raw = sect.get_str(key, default)
    if raw is None:
        return None
    try:
        value = _seconds(raw)
    except ModelError:
        raise sect.error(key, "seconds, or a duration such as 30s, 10m, 7d", raw) from None
    if value < 0:
        raise sect.error(key, "a value >= 0", raw)
    return value


def parse(ini: IniFile) -> SupervisorConfig | None:
    if not ini.has_section("supervisor"):
        return None
    sect = ini.section("supervisor")
    kwargs: dict[str, object] = {
        "listen": sect.get_endpoint("listen", "ssl:8888"),
        "users": sect.get_readable_file("users", None),
        "caps": sect.get_readable_file("caps", None),
        "admin_role": sect.get_str("admin-role", "admin").strip() or None,
        "component_role": sect.get_str("component-role", "").strip() or None,
        "registries": tuple(sect.get_list("registries", [])),
        "url": (sect.get_str("url", "").strip().rstrip("/") or None),
        "components": tuple(sect.get_list("components", [])),
        "node_name": sect.get_str("node-name", "").strip() or None,
    }
    for url in kwargs["components"]:  # type: ignore[attr-defined]
        if not str(url).startswith("https://"):
            raise sect.error("components", "https:// URLs of listening components", str(url))
    for attr, key in (("long_poll", "long-poll"), ("result_expiry", "result-expiry"),
                      ("component_refresh", "component-refresh"), ("redeem_interval", "redeem-interval")):
        value = get_duration(sect, key, None)
        if value is not None:
            kwargs[attr] = value
    seen: dict[str, str] = {}
    for attr, (key, default) in PATH_KEYS.items():
        path = sect.get_str(key, default).strip().strip("/")
        if not path or any(c in path for c in "?#"):
            raise sect.error(key, "a URL path such as register/capability", path)
        if path in seen:
            raise sect.error(key, f"a path different from {seen[path]}", path)
        seen[path] = key
        kwargs[attr] = path
    if kwargs["url"] is not None and not str(kwargs["url"]).startswith("https://"):
        raise sect.error("url", "an https:// URL", str(kwargs["url"]))
    sect.finish()
    return SupervisorConfig(**kwargs)  # type: ignore[arg-type]
