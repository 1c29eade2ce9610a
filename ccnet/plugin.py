"""``twistd ccnet`` options and service maker (the plugin file only exposes these)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from ccnet.config import ENV_VAR, ConfigError, load_config

__all__ = ["Options", "ServiceMaker"]


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, f"the ccnet INI file (default ${ENV_VAR}, else conf/ccnet.ini)"],
        ["log-format", None, "text", "log format: text or json (one JSON event per line)"],
    ]

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["log-format"] == "json" and self.parent is not None and not self.parent.get("logger"):
            self.parent["logger"] = "ccnet.logs.json_observer"
        try:
            self.config = load_config(self["config"])
        except ConfigError as exc:
            # One line, no traceback, non-zero exit: the operator fixes the file and retries.
            sys.stderr.write(f"ccnet: configuration error: {exc}\n")
            raise SystemExit(2) from None


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "ccnet"
    description = "ccnet: mPlane supervisor/probe, DIRAC-style RPC and CC message proxy over mutual TLS"
    options = Options

    def makeService(self, options: Options) -> Any:  # noqa: N802 (Twisted API)
        from ccnet.config import SetupError
        from ccnet.service import make_service
        from ccnet.store import StoreError

        try:
            svc = make_service(options.config)
            svc.freeze_heap_when_ready = True
            return svc
        except (ConfigError, SetupError, StoreError) as exc:
            # Configuration and environment mistakes: one line, exit 2, as for the INI file.
            sys.stderr.write(f"ccnet: cannot start: {exc}\n")
            raise SystemExit(2) from None
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a file the config names: keep the traceback
            sys.stderr.write(f"ccnet: cannot start: {exc.strerror or exc}: {exc.filename}\n")
            raise SystemExit(2) from None
        # Anything else is a bug: twistd prints it with its traceback (and exits non-zero).
