# zope.interface method declarations have no self and no body; mypy reads them as code.
# mypy: disable-error-code="misc,empty-body"
"""Task plugins run by the ``taskrunner`` daemon.

A task plugin is a module with a ``task_class`` providing :class:`ITaskFactory`
(or a ``package.module:Class``); ``task.send`` names it in ``task_handler``
and the taskrunner runs it only when it is listed in ``allowed-tasks``.
Short names: ``shell`` → :mod:`ccnet.cc.daemons.tasks.shell`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface

from ccnet.reactors import IReactor

__all__ = ["ITask", "ITaskFactory", "TaskContext", "TaskFailed", "resolve_task", "TASKS"]

TASKS = {"shell": "ccnet.cc.daemons.tasks.shell"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


class TaskFailed(Exception):
    """A task that ran and failed; ``feedback`` goes back with status failed."""

    def __init__(self, msg: str, feedback: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.feedback = feedback or {}


@dataclass
class TaskContext:
    """What a task gets: its id, the reactor and a way to report progress."""

    task_id: str
    reactor: IReactor
    #: feedback(dict) sends status "feedback" with that dict to the requester.
    feedback: Callable[[dict[str, Any]], None]
    #: The taskrunner's options (allowlists, timeouts).
    options: Any


class ITask(Interface):
    def run(params: dict[str, Any], context: TaskContext) -> Any:
        """Run the task; return (a Deferred of) the final feedback dict.
        Raise :class:`TaskFailed` for a failure with feedback."""


class ITaskFactory(Interface):
    name = Attribute("Short name of the task plugin.")

    def __call__() -> ITask:
        """A fresh task instance."""


def resolve_task(name: str) -> Any:
    """The task factory for ``name`` (short name, module or module:Class)."""
    if not _NAME.match(name):
        raise LookupError(f"{name!r} is not a task module name")
    target = TASKS.get(name, name)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"task module {module_name} cannot be imported ({exc})") from None
    cls = getattr(module, attr or "task_class", None)
    if cls is None:
        raise LookupError(f"task module {module_name} has no {attr or 'task_class'}")
    return cls
