"""taskrunner daemon: registers with a taskrouter, runs allowed tasks, reports."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import zmq
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from ccnet.cc.daemons.base import load_job
from ccnet.cc.daemons.taskrunner import TaskRunner, parse_options
from tests.support import free_port
from tests.test_cc_handlers_common import _CTX, ServerMixin, body, wait_for

SERVER = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
cc-role = remote
stats-period = 0
[routes]
task = tr
[tr]
handler = taskrouter
"""

DAEMON = """
[cc]
cc-socket = tcp://127.0.0.1:{port}
[taskrunner]
local-id = exec1
reg-period = 30
shell-commands = echo, false
task-timeout = 10
"""


def run_task(endpoint: str, uid: str, fields: dict[str, Any], until: tuple[str, ...] = ("finished", "failed"),
             ) -> list[dict[str, Any]]:
    """A raw requester: send task.send.<uid>, collect replies until a final status."""
    s = _CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.connect(endpoint)
    try:
        s.send_multipart([b"Q000001", b"", f"task.send.{uid}".encode(),
                          body(f"task.send.{uid}", task_host="exec1", **fields), b""])
        out = []
        while True:
            frames = s.recv_multipart()
            d = json.loads(frames[3])
            d["_type"] = frames[2].decode()
            out.append(d)
            if d.get("status") in until or d["_type"] == "error":
                return out
    finally:
        s.close()


class TaskRunnerTests(ServerMixin, TestCase):
    def setUp(self) -> None:
        self.port = free_port()
        ini = Path(self.mktemp()).absolute()
        ini.parent.mkdir(parents=True, exist_ok=True)
        ini.write_text(DAEMON.format(port=self.port))
        self.server = self.start_server(SERVER.format(port=self.port))
        cfg, opts = load_job(ini, "taskrunner", parse_options, env={})
        self.job = TaskRunner(cfg, opts, reactor)
        self.job.start()
        self.addCleanup(self.job.stop)

    def ask_task(self, uid: str, **fields: Any) -> defer.Deferred[list[dict[str, Any]]]:
        return threads.deferToThread(run_task, self.server.endpoint, uid, fields)

    @defer.inlineCallbacks
    def test_shell_task_runs_and_its_result_returns(self) -> Any:
        yield wait_for(lambda: self.job.registered)
        replies = yield self.ask_task("u1", task_handler="shell", task_id="t1", cmd=["echo", "hello", "world"])
        self.assertEqual([r["status"] for r in replies], ["forwarded", "starting", "launched", "finished"])
        self.assertTrue(all(r["_type"] == "task.reply.u1" and r["task_id"] == "t1" for r in replies))
        fb = replies[-1]["feedback"]
        self.assertEqual(fb["rc"], 0)
        self.assertEqual(base64.b64decode(fb["out"]), b"hello world\n")

    @defer.inlineCallbacks
    def test_command_outside_allowlist_and_unknown_handler_fail(self) -> Any:
        yield wait_for(lambda: self.job.registered)
        replies = yield self.ask_task("u2", task_handler="shell", task_id="t2", cmd=["rm", "-rf", "/tmp/x"])
        self.assertEqual(replies[-1]["status"], "failed")
        self.assertIn("not in shell-commands", replies[-1]["feedback"]["error"])
        replies = yield self.ask_task("u3", task_handler="os.system", task_id="t3")
        self.assertIn("not in allowed-tasks", replies[-1]["feedback"]["error"])
        replies = yield self.ask_task("u4", task_handler="shell", task_id="t4", cmd=["false"])
        self.assertEqual(replies[-1]["status"], "failed")
        self.assertEqual(replies[-1]["feedback"]["rc"], 1)

    @defer.inlineCallbacks
    def test_resent_task_is_not_run_twice(self) -> Any:
        yield wait_for(lambda: self.job.registered)
        yield self.ask_task("u5", task_handler="shell", task_id="t5", cmd=["echo", "once"])
        replies = yield threads.deferToThread(run_task, self.server.endpoint, "u5",
                                              {"task_handler": "shell", "task_id": "t5", "cmd": ["echo", "once"]})
        self.assertEqual(replies[-1]["status"], "finished")
        self.assertEqual(len(self.job.tasks), 1)
