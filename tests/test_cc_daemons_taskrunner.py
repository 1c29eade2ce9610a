"""taskrunner daemon: registers with a taskrouter, runs allowed tasks, reports."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import zmq
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from ccnet.cc.daemons.base import load_job
from ccnet.cc.daemons.taskrunner import TaskRunner, parse_options
from tests.support import REPO, free_port
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
             every: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A raw requester: send task.send.<uid>, collect replies until a final status
    (and until every status in ``every`` was seen)."""
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
            seen = {r.get("status") for r in out}
            if d["_type"] == "error" or (seen.intersection(until) and seen.issuperset(every)):
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


UPSTREAM_DAEMON = """
[ccserver]
cc-socket = tcp://127.0.0.1:{port}

[taskrunner]
local-id = exec1
reg-period = 30
# the original ran "python" from PATH; the test task needs this venv's (pyzmq)
task-python = {python}

# the original's task configuration: a section named after the task module
[tests.upstream_task_sample]
marker = {marker}
"""


class UpstreamTaskTests(ServerMixin, TestCase):
    """Original-CC task modules next to ccnet's task plugins."""

    timeout = 60

    def setUp(self) -> None:
        self.port = free_port()
        folder = Path(self.mktemp()).absolute()
        folder.mkdir(parents=True)
        self.marker = folder / "marker"
        ini = folder / "host.ini"
        ini.write_text(UPSTREAM_DAEMON.format(port=self.port, marker=self.marker, python=sys.executable))
        self.server = self.start_server(SERVER.format(port=self.port))
        # the task runs as `python -m tests.upstream_task_sample`: it needs this checkout
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(REPO)
        self.addCleanup(_restore_env, "PYTHONPATH", old)
        cfg, opts = load_job(ini, "taskrunner", parse_options, env={})
        self.assertEqual(list(opts.upstream_tasks), ["tests.upstream_task_sample"])
        self.job = TaskRunner(cfg, opts, reactor)
        self.job.start()
        self.addCleanup(self.job.stop)

    def ask_task(self, uid: str, **fields: Any) -> defer.Deferred[list[dict[str, Any]]]:
        # "launched" comes from the taskrunner once the launcher exited, the task's own
        # replies over its own socket: either may arrive first.
        return threads.deferToThread(run_task, self.server.endpoint, uid, fields,
                                     ("finished", "failed"), ("launched",) if fields.get("cmd") == "test" else ())

    @defer.inlineCallbacks
    def test_module_task_runs_as_python_m_and_reports_by_itself(self) -> Any:
        yield wait_for(lambda: self.job.registered)
        replies = yield self.ask_task("m1", task_handler="tests.upstream_task_sample", task_id="t1", cmd="test")
        statuses = [r["status"] for r in replies]
        self.assertEqual(statuses[:2], ["forwarded", "starting"])
        # "launched" (from the taskrunner) and the task's own replies come over two sockets
        self.assertEqual(sorted(statuses[2:]), ["feedback", "feedback", "feedback", "finished", "launched"])
        launched = next(r for r in replies if r["status"] == "launched")
        self.assertEqual(launched["feedback"]["rc"], 0)
        self.assertEqual(base64.b64decode(launched["feedback"]["out"]), b"got task: t1\n")
        self.assertEqual([r["feedback"]["i"] for r in replies if r["status"] == "feedback"], [0, 1, 2])
        self.assertEqual(self.marker.read_text(), "t1")  # the task read its own [section]

    @defer.inlineCallbacks
    def test_crash_before_launch_is_failed_and_crash_in_run_reports_failed(self) -> Any:
        yield wait_for(lambda: self.job.registered)
        replies = yield self.ask_task("m2", task_handler="tests.upstream_task_sample", task_id="t2",
                                      cmd="crash-launch")
        self.assertEqual([r["status"] for r in replies], ["forwarded", "starting", "failed"])
        self.assertEqual(replies[-1]["feedback"]["rc"], 1)
        self.assertIn(b"launch failed", base64.b64decode(replies[-1]["feedback"]["out"]))
        replies = yield self.ask_task("m3", task_handler="tests.upstream_task_sample", task_id="t3",
                                      cmd="crash-run")
        self.assertIn("failed", [r["status"] for r in replies])

    @defer.inlineCallbacks
    def test_module_without_a_section_is_refused(self) -> Any:
        yield wait_for(lambda: self.job.registered)
        replies = yield self.ask_task("m4", task_handler="cc.task.nonexist", task_id="t4")
        # As the original answers it: no "starting", and the reason in base64 "out".
        self.assertEqual([r["status"] for r in replies], ["forwarded", "failed"])
        self.assertEqual(replies[-1]["feedback"]["rc"], -1)
        self.assertEqual(base64.b64decode(replies[-1]["feedback"]["out"]),
                         b"Task module 'cc.task.nonexist' not configured")
        self.assertIn("no [cc.task.nonexist] section", replies[-1]["feedback"]["error"])


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class UpstreamCommandTests(TestCase):
    def test_command_line_is_the_originals_with_sudo_from_the_section(self) -> None:
        from ccnet.cc.daemons.tasks.upstream import task_command, task_stdin

        ini = Path("/etc/cc/host.ini")
        self.assertEqual(task_command("python", "cc.task.sample", ini),
                         ["python", "-m", "cc.task.sample", "-d", "/etc/cc/host.ini"])
        self.assertEqual(task_command("python2", "cc.task.sample", ini, sudo="postgres"),
                         ["/usr/bin/sudo", "-n", "-u", "postgres", "python2", "-m", "cc.task.sample", "-d",
                          "/etc/cc/host.ini"])
        stdin = json.loads(task_stdin({"req": "task.send.1", "task_id": "x"}, b"\x01" * 60))
        self.assertEqual(stdin["task"], {"req": "task.send.1", "task_id": "x"})
        self.assertEqual(base64.b64decode(stdin["signature"]), b"\x01" * 60)
        self.assertIn("\n", stdin["signature"])  # py2 encode('base64') lines, as the original
