"""``task_handler = shell``: run one allowed program with arguments.

Task params: ``cmd`` (list: program and arguments, or a string program with
``args`` list).  The program must be listed in the taskrunner's
``shell-commands`` (exact match on what is sent: a name looked up in PATH or an
absolute path); there is no shell, so no metacharacter expansion.  The
final feedback is ``{"rc": exit code, "out": base64 of stdout,
"err": base64 of stderr}``; non-zero exit or ``task-timeout`` → failed.
"""

from __future__ import annotations

import base64
import os
import shutil
from typing import Any

from twisted.internet import defer, protocol
from zope.interface import implementer, provider

from ccnet.cc.daemons.tasks import ITask, ITaskFactory, TaskContext, TaskFailed

__all__ = ["ShellTask", "task_class"]

OUTPUT_LIMIT = 1024 * 1024


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        if len(self.out) < OUTPUT_LIMIT:
            self.out += data[: OUTPUT_LIMIT - len(self.out)]

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        if len(self.err) < OUTPUT_LIMIT:
            self.err += data[: OUTPUT_LIMIT - len(self.err)]

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(code)


@provider(ITaskFactory)
@implementer(ITask)
class ShellTask:
    name = "shell"

    @defer.inlineCallbacks
    def run(self, params: dict[str, Any], context: TaskContext) -> Any:
        cmd = params.get("cmd")
        args = params.get("args", [])
        if isinstance(cmd, str):
            cmd = [cmd, *args] if isinstance(args, list) else None
        if not (isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd)):
            raise TaskFailed("shell task needs 'cmd': a list of strings (program and arguments)")
        allowed = getattr(context.options, "shell_commands", ())
        if cmd[0] not in allowed:
            raise TaskFailed(f"command {cmd[0]!r} is not in shell-commands")
        program = cmd[0] if os.path.isabs(cmd[0]) else shutil.which(cmd[0])
        if program is None:
            raise TaskFailed(f"command {cmd[0]!r} not found")
        proto = _Collect()
        proc = context.reactor.spawnProcess(proto, program, cmd, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        timeout = getattr(context.options, "task_timeout", 300.0)
        killer = context.reactor.callLater(timeout, lambda: proc.signalProcess("KILL"))
        code = yield proto.done
        timed_out = not killer.active()
        if killer.active():
            killer.cancel()
        feedback = {
            "rc": code,
            "out": base64.b64encode(bytes(proto.out)).decode(),
            "err": base64.b64encode(bytes(proto.err)).decode(),
        }
        if timed_out:
            raise TaskFailed(f"killed after {timeout} s", feedback)
        if code != 0:
            raise TaskFailed(f"exit code {code}", feedback)
        return feedback


task_class = ShellTask
