"""The ``[component]`` section and its ``[probe:NAME]`` sections, parsed once.

::

    [component]
    # component-initiated workflow: register with, and poll, this supervisor; several
    # URLs (space or comma separated) name daemons of one active/active supervisor:
    # the component uses the first that answers and moves to the next when it fails
    supervisor = https://sup.example.org:8888
    # client-initiated workflow: listen for specifications (SDK clients, supervisors with components =)
    listen = ssl:1228
    # who may use which capability (also checked for the supervisor before registering):
    # SDK config with [Roles]/[Authorizations], or RI users.conf / caps.conf; none = any verified peer
    users =
    caps =
    # seconds a poll may wait at the supervisor for work (long-poll)
    long-poll = 20
    # wire dialect of the supervisor: auto (found out from its answers), sdk (mplane-sdk
    # 0.9's mpsup, ccnet) or ri (the RI fork's supervisor)
    dialect = auto
    # reconnect back-off, seconds: first step and upper bound (doubles in between; each
    # wait is drawn in the upper half of its step, so components do not retry in step)
    retry-min = 0.5
    retry-max = 30
    registration-path = register/capability
    specification-path = show/specification
    result-path = register/result

    [probe:ping]
    module = ccnet.mplane.probes.ping
    ip4addr = 127.0.0.1

    [probe:tstat]
    module = ccnet.mplane.probes.tstat

Probe sections may also be spelled like the SDK's (``[module_ping]``). ``module`` defaults
to ``ccnet.mplane.probes.NAME``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccnet.config import IniFile
from ccnet.mplane.config import get_duration
from ccnet.mplane.probes import IProbeFactory

__all__ = ["ComponentConfig", "ProbeConfig", "parse"]

PROBE_PREFIXES = ("probe:", "module_")


@dataclass(frozen=True)
class ProbeConfig:
    name: str
    module: str
    factory: Any  # provides IProbeFactory
    options: Any


@dataclass(frozen=True)
class ComponentConfig:
    probes: tuple[ProbeConfig, ...]
    supervisors: tuple[str, ...] = ()
    listen: str | None = None
    users: Path | None = None
    caps: Path | None = None
    long_poll: float = 20.0
    dialect: str = "auto"  # "auto", "sdk" or "ri"
    retry_min: float = 0.5
    retry_max: float = 30.0
    registration_path: str = "register/capability"
    specification_path: str = "show/specification"
    result_path: str = "register/result"

    @property
    def supervisor(self) -> str | None:
        """The first supervisor URL (None: client-initiated workflow only)."""
        return self.supervisors[0] if self.supervisors else None


def _probe(ini: IniFile, section_name: str) -> ProbeConfig:
    sect = ini.section(section_name)
    name = section_name.split(":", 1)[1] if section_name.startswith("probe:") else section_name[len("module_"):]
    if not name:
        raise sect.error(None, "a probe name after the prefix, e.g. [probe:ping]")
    module = sect.get_str("module", f"ccnet.mplane.probes.{name}")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise sect.error("module", f"an importable probe module ({exc})", module) from None
    factory = getattr(mod, "probe_factory", None)
    if factory is None or not IProbeFactory.providedBy(factory):
        raise sect.error("module", "a module with probe_factory providing ccnet.mplane.probes.IProbeFactory",
                         module)
    options = factory.configure(sect)
    sect.finish()
    return ProbeConfig(name, module, factory, options)


def parse(ini: IniFile) -> ComponentConfig | None:
    if not ini.has_section("component"):
        return None
    sect = ini.section("component")
    kwargs: dict[str, Any] = {}
    sups = tuple(url.rstrip("/") for url in sect.get_str("supervisor", "").replace(",", " ").split())
    for sup in sups:
        if not sup.startswith("https://"):
            raise sect.error("supervisor", "https:// URLs of the supervisor (space or comma separated)", sup)
    kwargs["supervisors"] = sups
    kwargs["listen"] = sect.get_endpoint("listen", None)
    if not sups and kwargs["listen"] is None:
        raise sect.error("supervisor", "supervisor = https://... (component-initiated) and/or "
                                       "listen = ssl:PORT (client-initiated)")
    kwargs["dialect"] = sect.get_choice("dialect", ("auto", "sdk", "ri"), "auto")
    kwargs["users"] = sect.get_readable_file("users", None)
    kwargs["caps"] = sect.get_readable_file("caps", None)
    for attr, key, default in (("long_poll", "long-poll", "20"), ("retry_min", "retry-min", "0.5"),
                               ("retry_max", "retry-max", "30")):
        kwargs[attr] = get_duration(sect, key, default)
    if kwargs["retry_min"] <= 0:
        raise sect.error("retry-min", "a value > 0", str(kwargs["retry_min"]))
    for attr, key, default in (("registration_path", "registration-path", "register/capability"),
                               ("specification_path", "specification-path", "show/specification"),
                               ("result_path", "result-path", "register/result")):
        path = sect.get_str(key, default).strip().strip("/")
        if not path or any(c in path for c in "?#"):
            raise sect.error(key, "a URL path such as register/capability", path)
        kwargs[attr] = path
    sect.finish()
    probes = [_probe(ini, name) for name in ini.section_names()
              if name.startswith(PROBE_PREFIXES)]
    if not probes:
        raise ini.error("component", None, "at least one probe section, e.g. [probe:ping] with "
                                           "module = ccnet.mplane.probes.ping")
    return ComponentConfig(tuple(probes), **kwargs)
