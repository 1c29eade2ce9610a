"""``taskrunner`` daemon (the original README's ``taskexec``): registers this
host with a taskrouter and runs the tasks sent to it.

* ``task.register`` {host: ``local-id``} every ``reg-period`` seconds (and
  again until the taskrouter acknowledges it).
* ``task.send.<uid>`` {task_id, task_handler, ...params}: runs the task
  plugin ``task_handler`` if it is in ``allowed-tasks``
  (see :mod:`ccnet.cc.daemons.tasks`), answering ``task.reply.<uid>``
  {task_id, status, handler, feedback} with status ``starting``, then
  ``launched`` or ``failed``, ``feedback`` for progress, and finally
  ``finished`` or ``failed``.  A resent ``task.send`` with a known uid gets
  the latest status again instead of a second run.  Finished tasks are
  forgotten after ``task-grace-period`` seconds.
* Original-CC tasks: a ``task_handler`` that names a ``[package.module]``
  section of the ini (the original's task configuration, e.g.
  ``[cc.task.sample]`` with ``sudo = user``) runs as the original runs it,
  ``[sudo -n -u user] <task-python> -m package.module -d <ini>``
  (:mod:`ccnet.cc.daemons.tasks.upstream`), next to ccnet's task plugins.
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ccnet.cc.config import UpstreamTask, parse_upstream_tasks
from ccnet.cc.daemons.base import CCErrorReply, CCJob, common_keys, run_daemon
from ccnet.cc.daemons.tasks import ITask, TaskContext, TaskFailed, resolve_task, upstream
from ccnet.cc.message import CCMessage
from ccnet.config import IniFile, SectionReader

__all__ = ["TaskRunner", "TaskRunnerOptions", "parse_options"]

log = Logger()


@dataclass(frozen=True)
class TaskRunnerOptions:
    local_id: str
    reg_period: float
    maint_period: float
    task_grace_period: float
    allowed_tasks: tuple[str, ...]
    shell_commands: tuple[str, ...]
    task_timeout: float
    #: Interpreter for original-CC task modules: ``python`` on PATH, as the original ran them.
    task_python: str = "python"
    #: The ini's ``[package.module]`` task sections, by module name.
    upstream_tasks: dict[str, UpstreamTask] = field(default_factory=dict)


def parse_options(section: SectionReader, ini: IniFile) -> TaskRunnerOptions:
    local_id = section.get_str("local-id", "")
    if not local_id or local_id == "hostname":  # the original sample config literally says "hostname"
        local_id = socket.gethostname()
    opts = TaskRunnerOptions(
        local_id=local_id,
        reg_period=section.get_float("reg-period", 300.0, minimum=0.1),
        maint_period=section.get_float("maint-period", 60.0, minimum=0.1),
        task_grace_period=section.get_float("task-grace-period", 900.0, minimum=0),
        allowed_tasks=tuple(section.get_list("allowed-tasks", ["shell"])),
        shell_commands=tuple(section.get_list("shell-commands", [])),
        task_timeout=section.get_float("task-timeout", 300.0, minimum=0.1),
        task_python=section.get_str("task-python", "python"),
        upstream_tasks=parse_upstream_tasks(ini),
    )
    if section.has("task-heartbeat"):
        section.get_bool("task-heartbeat")
    common_keys(section)
    return opts


@dataclass
class TaskState:
    uid: str
    task_id: str
    handler: str
    status: str
    feedback: dict[str, Any]
    changed: float


class TaskRunner(CCJob):
    options: TaskRunnerOptions

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tasks: dict[str, TaskState] = {}
        self.registered = False
        self._registering = False
        self._launching: set[defer.Deferred[Any]] = set()

    def startJob(self) -> None:  # noqa: N802
        self.every(self.options.reg_period, self.register)
        self.every(self.options.maint_period, self.maintenance, now=False)

    def stopJob(self) -> Any:  # noqa: N802
        # Launchers of original-CC tasks exit at once (the task daemonizes): wait for them.
        return defer.DeferredList(list(self._launching), consumeErrors=True)

    @defer.inlineCallbacks
    def register(self) -> Any:
        if self._registering:
            return
        self._registering = True
        try:
            yield self.query("task.register", {"host": self.options.local_id}, timeout=2.0, retries=None)
        except CCErrorReply as exc:
            log.warn("taskrunner: registration refused: {error}", error=str(exc))
        except defer.CancelledError:
            return
        else:
            if not self.registered:
                log.info("taskrunner: registered as {host}", host=self.options.local_id)
            self.registered = True
        finally:
            self._registering = False

    def maintenance(self) -> None:
        now = float(self.clock.seconds())
        done = [u for u, t in self.tasks.items()
                if t.status in ("finished", "failed") and now - t.changed > self.options.task_grace_period]
        for uid in done:
            del self.tasks[uid]

    def reply(self, state: TaskState, status: str, feedback: dict[str, Any] | None = None) -> None:
        state.status = status
        state.changed = float(self.clock.seconds())
        if feedback is not None:
            state.feedback = feedback
        self.send(
            f"task.reply.{state.uid}",
            {"task_id": state.task_id, "status": status, "handler": state.handler, "feedback": state.feedback},
        )

    def messageReceived(self, msg: CCMessage, payload: dict[str, Any]) -> None:  # noqa: N802
        if not msg.type.startswith("task.send.") or len(msg.type) <= len("task.send."):
            log.info("taskrunner: ignoring {type}", type=msg.type)
            return
        uid = msg.type[len("task.send."):]
        known = self.tasks.get(uid)
        if known is not None:
            self.reply(known, known.status)
            return
        task_id = payload.get("task_id", "")
        handler = payload.get("task_handler", "")
        state = TaskState(uid, task_id if isinstance(task_id, str) else "", handler if isinstance(handler, str) else "",
                          "starting", {}, float(self.clock.seconds()))
        self.tasks[uid] = state
        if not isinstance(handler, str) or not handler:
            self.reply(state, "failed", {"error": "task.send needs a 'task_handler' string"})
            return
        if handler not in self.options.allowed_tasks and handler not in self.options.upstream_tasks:
            # As the original answers it (no "starting"; its client prints "out"), with our reason too.
            why = f"Task module {handler!r} not configured"
            log.warn("taskrunner: {why}", why=why)
            self.reply(state, "failed", {"rc": -1, "out": base64.encodebytes(why.encode()).decode("ascii"),
                                         "error": f"task handler {handler} is not in allowed-tasks "
                                                  f"and has no [{handler}] section"})
            return
        self.reply(state, "starting")
        if handler not in self.options.allowed_tasks:
            self._launch_upstream(state, self.options.upstream_tasks[handler], payload, msg.signature)
            return
        try:
            factory = resolve_task(handler)
            task = factory()
            if not ITask.providedBy(task):
                raise LookupError(f"{handler} does not provide ITask")
        except Exception as exc:
            self.reply(state, "failed", {"error": str(exc)})
            return
        params = {k: v for k, v in payload.items() if k not in ("req", "time", "hostname", "blob_hash")}
        ctx = TaskContext(state.task_id, self.reactor, lambda fb: self.reply(state, "feedback", fb), self.options)
        d = defer.maybeDeferred(task.run, params, ctx)
        self.reply(state, "launched")
        log.info("taskrunner: launched {handler} task {id} ({uid})", handler=handler, id=state.task_id, uid=uid)
        d.addCallbacks(self._finished, self._failed, callbackArgs=(state,), errbackArgs=(state,))

    def _launch_upstream(self, state: TaskState, spec: UpstreamTask, payload: dict[str, Any],
                         signature: bytes) -> None:
        """Run an original-CC task module; it reports its own progress from then on."""
        argv = upstream.task_command(self.options.task_python, spec.module, self.config.ini_path.absolute(),
                                     spec.sudo)
        log.info("taskrunner: launching {cmd} for task {id} ({uid})", cmd=" ".join(argv), id=state.task_id,
                 uid=state.uid)
        d = upstream.launch(self.reactor, argv, upstream.task_stdin(payload, signature))

        def launched(result: tuple[int, bytes]) -> None:
            rc, out = result
            feedback = {"rc": rc, "out": base64.encodebytes(out).decode("ascii")}
            self.reply(state, "launched" if rc == 0 else "failed", feedback)

        d.addCallback(launched)
        d.addErrback(lambda f: log.failure("taskrunner: launching {uid} failed", f, uid=state.uid))
        self._launching.add(d)
        d.addBoth(lambda _: self._launching.discard(d))

    def _finished(self, feedback: Any, state: TaskState) -> None:
        self.reply(state, "finished", feedback if isinstance(feedback, dict) else {"result": feedback})

    def _failed(self, failure: Any, state: TaskState) -> None:
        if failure.check(TaskFailed):
            fb = dict(failure.value.feedback)
            fb["error"] = str(failure.value)
        else:
            log.failure("taskrunner: task {uid} crashed", failure, uid=state.uid)
            fb = {"error": f"task crashed: {failure.getErrorMessage()}"}
        self.reply(state, "failed", fb)


def main(argv: list[str] | None = None) -> int:
    return run_daemon(TaskRunner, parse_options, argv)


if __name__ == "__main__":
    raise SystemExit(main())
