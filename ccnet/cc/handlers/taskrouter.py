"""``handler = taskrouter``: route tasks to the executors (taskrunners) of hosts.

* ``task.register`` {host}: remember the sender's route as that host's
  executor for ``route-lifetime`` seconds (re-registering replaces it);
  acknowledged with ``reply.task.register`` {host, expires} when the sender
  asked (``"ack": true``: ccnet's taskrunner; the original's reads every
  message as a task, so it gets none).
* ``task.send.<uid>`` {task_host, task_handler, task_id, ...}: forwarded
  unchanged (signature included) to the host's executor, the requester's
  route kept under ``uid``, and the requester acknowledged with
  ``task.reply.<uid>`` status ``forwarded``.  Unknown host → error reply
  "cannot route to HOST".
* ``task.reply.<uid>`` (from the executor): forwarded unchanged to the
  requester; each reply keeps the uid alive for ``reply-timeout`` seconds.
  An unknown uid is logged and counted (the original drops it silently); only
  an executor that opted in gets an error reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.handler import CCHandler, CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.payload import field_str
from ccnet.periodic import every

__all__ = ["TaskRouterHandler", "TaskRouterOptions", "RouteBook", "handler_class"]

log = Logger()


@dataclass(frozen=True)
class TaskRouterOptions:
    route_lifetime: float
    reply_timeout: float
    maint_period: float


class RouteBook:
    """Host → executor route and uid → requester route, with expiry (pure)."""

    def __init__(self, route_lifetime: float, reply_timeout: float) -> None:
        self.route_lifetime = route_lifetime
        self.reply_timeout = reply_timeout
        self.hosts: dict[str, tuple[tuple[bytes, ...], float]] = {}
        self.tasks: dict[str, tuple[tuple[bytes, ...], float]] = {}

    def register(self, host: str, route: tuple[bytes, ...], now: float) -> float:
        self.hosts[host] = (route, now)
        return now + self.route_lifetime

    def host_route(self, host: str, now: float) -> tuple[bytes, ...] | None:
        hit = self.hosts.get(host)
        if hit is None or now - hit[1] > self.route_lifetime:
            return None
        return hit[0]

    def remember(self, uid: str, route: tuple[bytes, ...], now: float) -> None:
        self.tasks[uid] = (route, now)

    def requester(self, uid: str, now: float) -> tuple[bytes, ...] | None:
        hit = self.tasks.get(uid)
        if hit is None or now - hit[1] > self.reply_timeout:
            return None
        self.tasks[uid] = (hit[0], now)
        return hit[0]

    def expire(self, now: float) -> tuple[int, int]:
        old_hosts = [h for h, (_, t) in self.hosts.items() if now - t > self.route_lifetime]
        old_tasks = [u for u, (_, t) in self.tasks.items() if now - t > self.reply_timeout]
        for h in old_hosts:
            del self.hosts[h]
        for u in old_tasks:
            del self.tasks[u]
        return len(old_hosts), len(old_tasks)


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class TaskRouterHandler(CCHandler):
    handler_name = "taskrouter"
    cc_roles = frozenset({"remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> TaskRouterOptions:
        return TaskRouterOptions(
            route_lifetime=section.get_float("route-lifetime", 3600.0, minimum=1),
            reply_timeout=section.get_float("reply-timeout", 300.0, minimum=1),
            maint_period=section.get_float("maint-period", 60.0, minimum=0.1),
        )

    def __init__(self, name: str, options: TaskRouterOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.book = RouteBook(options.route_lifetime, options.reply_timeout)
        self._maint: task.LoopingCall | None = None

    def start(self) -> None:
        self._maint = every(self.server.clock, self.options.maint_period, f"cc-{self.name}-maintenance",
                            self.maintenance, now=False,
                            failures=self.server.runtime.job_failures if self.server.runtime is not None else None)

    def stop(self) -> None:
        if self._maint is not None and self._maint.running:
            self._maint.stop()

    def maintenance(self) -> None:
        hosts, tasks = self.book.expire(self.server.clock.seconds())
        if hosts or tasks:
            log.info("cc taskrouter [{section}]: expired {h} host routes, {t} task routes",
                     section=self.name, h=hosts, t=tasks)

    def handle(self, request: CCRequest) -> None:
        p = request.payload or {}
        now = self.server.clock.seconds()
        mtype = request.type
        if mtype == "task.register":
            host = field_str(p, "host", max_len=255)
            if not host:
                raise HandlerError("task.register: field 'host' is empty")
            if not request.route:
                raise HandlerError("task.register: sender has no route")
            expires = self.book.register(host, request.route, now)
            log.info("cc taskrouter [{section}]: executor for {host} registered", section=self.name, host=host)
            self.server.ack(request, "reply.task.register", {"host": host, "expires": expires})
        elif mtype.startswith("task.send.") and len(mtype) > len("task.send."):
            uid = mtype[len("task.send."):]
            host = field_str(p, "task_host", max_len=255)
            handler = field_str(p, "task_handler", "")
            task_id = field_str(p, "task_id", "")
            route = self.book.host_route(host, now)
            if route is None:
                # The original answers this one too, so every requester gets it.
                raise HandlerError(f"cannot route to {host}", always_reply=True)
            self.book.remember(uid, request.route, now)
            self.server.send_frames(request.msg.with_route(route).frames())
            self.server.reply(
                request, f"task.reply.{uid}",
                {"task_id": task_id, "status": "forwarded", "handler": handler, "feedback": {}},
            )
        elif mtype.startswith("task.reply.") and len(mtype) > len("task.reply."):
            uid = mtype[len("task.reply."):]
            route = self.book.requester(uid, now)
            if route is None:
                raise HandlerError(f"no requester known for task {uid}")
            self.server.send_frames(request.msg.with_route(route).frames())
        else:
            raise HandlerError(f"taskrouter handles task.register, task.send.*, task.reply.*; not {mtype}")


handler_class = TaskRouterHandler
