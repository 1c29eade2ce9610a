# zope.interface method declarations have no self and no body; mypy reads them as code.
# mypy: disable-error-code="misc,empty-body"
"""The ``pg_logforward`` daemon's plug point (the original's ``PgLogForwardPlugin``).

The daemon's ``plugins = a, b`` names ini sections; each has ``module = pkg.mod``
(every class in that module providing :class:`IPgLogForwardPluginFactory` whose
``log_formats`` include the daemon's ``log-format``, as the original probes them)
or ``module = pkg.mod:Class``, plus the plugin's own keys.  The original's module
path ``cc.daemon.plugins.X`` maps to ``ccnet.cc.daemons.plugins.X``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import Attribute, Interface

__all__ = ["IPgLogForwardPlugin", "IPgLogForwardPluginFactory", "IPgLogForwardDaemon"]


class IPgLogForwardDaemon(Interface):
    """What a plugin gets from the daemon (the original's ``self.main``)."""

    clock = Attribute("IReactorTime (a Clock in tests): clock.seconds() is now.")
    hostname = Attribute("This host's name, as put into CC message bodies.")
    log_format = Attribute("The daemon's log-format, e.g. 'netstr'.")

    def send(req: str, fields: Mapping[str, Any], blob: bytes | None = None) -> None:
        """Publish a CC message to the daemon's CC server (the original's ccpublish)."""


class IPgLogForwardPluginFactory(Interface):
    """Provided by plugin classes."""

    log_formats = Attribute("Formats the plugin reads, e.g. ('netstr',).")

    def __call__(name: str, options: Mapping[str, str], daemon: IPgLogForwardDaemon) -> IPgLogForwardPlugin:
        """The plugin of section ``name`` with that section's keys (lower-cased, strings)."""


class IPgLogForwardPlugin(Interface):
    name = Attribute("The plugin's section name.")

    def process(record: dict[str, Any]) -> None:
        """Handle one parsed record (:func:`ccnet.cc.pglog.parse_netstr`); an exception
        is logged and counted, the daemon goes on."""

    def stop() -> None:
        """The daemon stops."""
