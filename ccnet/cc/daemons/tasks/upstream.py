"""Original-CC tasks: Python modules run as processes, as markokr/cc's taskrunner runs them.

A ``task.send`` whose ``task_handler`` names a ``[package.module]`` section of the
taskrunner's ini (:func:`ccnet.cc.config.parse_upstream_tasks`) is launched as::

    [sudo -n -u USER] <task-python> -m <module> -d <ini>

with ``{"task": <task.send body>, "signature": <base64 of the signature frame>}`` on
stdin.  The launcher's exit status decides ``launched`` (0) or ``failed``, with
feedback ``{"rc": status, "out": base64 of stdout+stderr}``; the task itself (a
``cc.task.CCTask``) then daemonizes (``-d``), connects to the ccserver's
``cc-socket`` and reports ``feedback``/``finished``/``failed`` on its own.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime

from ccnet.reactors import IReactor

__all__ = ["SUDO", "OUTPUT_LIMIT", "task_command", "task_stdin", "launch"]

SUDO = "/usr/bin/sudo"
OUTPUT_LIMIT = 1024 * 1024
#: Seconds to wait for the output pipe to close after the launcher exited (a
#: daemonized task that kept stdout open must not hold the launch report back).
PIPE_GRACE = 5.0


def task_command(python: str, module: str, ini: Path, sudo: str | None = None) -> list[str]:
    """The original's command line, ``sudo -n -u USER`` first when the section has ``sudo``."""
    cmd = [SUDO, "-n", "-u", sudo] if sudo else []
    return [*cmd, python, "-m", module, "-d", str(ini)]


def task_stdin(task: Mapping[str, Any], signature: bytes) -> bytes:
    """What the original writes to the task's stdin (py2 ``encode('base64')`` lines)."""
    return json.dumps({"task": dict(task), "signature": base64.encodebytes(signature).decode("ascii")}).encode()


class _Launch(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes, clock: IReactorTime) -> None:
        self.stdin = stdin
        self.clock = clock
        self.out = bytearray()
        self.code: int | None = None
        self.done: defer.Deferred[tuple[int, bytes]] = defer.Deferred()
        self._grace: Any = None

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        transport: Any = self.transport  # an IProcessTransport (zope interfaces confuse mypy)
        transport.write(self.stdin)
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        if len(self.out) < OUTPUT_LIMIT:
            self.out += data[: OUTPUT_LIMIT - len(self.out)]

    errReceived = outReceived  # the original runs the task with stderr=STDOUT

    def processExited(self, reason: Any) -> None:  # noqa: N802
        self.code = _exit_code(reason)
        self._grace = self.clock.callLater(PIPE_GRACE, self._finish)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        if self.code is None:
            self.code = _exit_code(reason)
        self._finish()

    def _finish(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if not self.done.called:
            self.done.callback((self.code if self.code is not None else -1, bytes(self.out)))


def _exit_code(reason: Any) -> int:
    code = getattr(reason.value, "exitCode", None)
    if code is None:
        signal = getattr(reason.value, "signal", None)
        return -int(signal) if signal else -1
    return int(code)


def launch(reactor: IReactor, argv: list[str], stdin: bytes, env: Mapping[str, str] | None = None,
           path: str | None = None) -> defer.Deferred[tuple[int, bytes]]:
    """Run the launcher without blocking the reactor; fires with (exit status, output)."""
    proto = _Launch(stdin, reactor)
    try:
        reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ if env is None else env), path=path)
    except OSError as exc:
        return defer.succeed((-1, f"cannot run {argv[0]}: {exc}".encode()))
    return proto.done
