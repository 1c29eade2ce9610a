"""Example ``pg_logforward`` plugin: PostgreSQL errors become ``db.confdb`` messages.

ccnet's counterpart of the original's ``example_logwatch.LogWatch_ProcessErrors``:
records at INFO, WARNING, ERROR or FATAL become ``db.<msg-suffix>`` messages
calling ``log.add(hostname, null, 'postgres_monitoring', level, database,
'<user> <host>: <message>')`` (a database handler with ``allowed-functions =
log.add`` on the other side stores them).  LOG records of lock waits (``ProcSleep``
"still waiting for ...") are raised to WARNING "<lock> lock waits"; other LOG
records pass as INFO once ``error_reset_interval`` seconds went by without an
error, to clear an error state.  Keys: ``msg-suffix`` (confdb),
``error_reset_interval`` (300).

Differences from the original: the function arguments go in ``params`` (the key
the database handler reads; the original's example put them in ``payload``), and
the original's second example (``LogWatch_HandleStats``, per-client statement
statistics to a PgQ queue) is not carried over.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.daemons.plugins.pg_logforward import IPgLogForwardPlugin, IPgLogForwardPluginFactory
from ccnet.cc.message import valid_type

__all__ = ["ProcessErrors"]

log = Logger()

_LOCK_WAIT = re.compile(r"process \d+ still waiting for (?P<lockname>\w+) on relation \d+ of database \d+ after [0-9.]+ ms")
_REPORTED = ("INFO", "WARNING", "ERROR", "FATAL")


@provider(IPgLogForwardPluginFactory)
@implementer(IPgLogForwardPlugin)
class ProcessErrors:
    log_formats = ("netstr",)

    def __init__(self, name: str, options: Mapping[str, str], daemon: Any) -> None:
        self.name = name
        self.daemon = daemon
        try:
            self.reset_interval = float(options.get("error_reset_interval", "300"))
        except ValueError:
            raise ValueError(f"[{name}] error_reset_interval: a number of seconds") from None
        suffix = options.get("msg-suffix", "confdb")
        if suffix and not valid_type(suffix):
            raise ValueError(f"[{name}] msg-suffix: a message type suffix such as confdb")
        self.req = f"db.{suffix}" if suffix else "db"
        self.last_error = float(daemon.clock.seconds())

    def process(self, record: dict[str, Any]) -> None:
        now = float(self.daemon.clock.seconds())
        level = record["elevel_text"]
        message = record.get("message") or ""
        if level == "LOG":
            hit = _LOCK_WAIT.search(message) if record.get("funcname") == "ProcSleep" else None
            if hit:
                level, message = "WARNING", f"{hit.group('lockname')} lock waits"
            elif now - self.last_error >= self.reset_interval:
                level = "INFO"  # let an ordinary record through now and then: clears an error state
        if level not in _REPORTED:
            return
        args = [self.daemon.hostname, None, "postgres_monitoring", level, record.get("database") or "postgres",
                f"{record.get('username')} {record.get('remotehost')}: {message}"]
        self.daemon.send(self.req, {"function": "log.add", "params": args})
        self.last_error = now

    def stop(self) -> None:
        pass
