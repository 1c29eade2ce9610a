"""The original CC's daemons as peers: they receive nothing they did not ask for.

The peers are raw pyzmq DEALER sockets (no ccnet code) sending frames exactly as
markokr/cc 0.8.7 builds them: ``xtx.create_cmsg(msg)`` gives
``['', req, json.dumps(Struct), '' (, blob)]`` with the ``cc.reqs`` fields
(``BaseMessage``: req, time, hostname, blob_hash) and never an ``ack`` field.
The original taskrunner reads every incoming message as a task and its infosender
never reads at all, so anything ccnet sends them beyond the original's own replies
is a crash line or a leak there.

Absence is checked without timing: a peer ends with an ``echo.request``, which the
original answers too; ZeroMQ keeps per-connection order, so anything else sent to
the peer before it arrives first.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import generate_latest
from twisted.internet import defer, threads

from ccnet.cc.metrics import CCMetrics
from tests.test_cc_handlers_common import wait_for
from tests.test_cc_server import ServerTestCase

HOST = "testhost"
_CTX = zmq.Context.instance()


def upstream_frames(req: str, blob: bytes | None = None, route: tuple[bytes, ...] = (), **fields: Any) -> list[bytes]:
    """Frames as cc.crypto.CryptoContext.create_cmsg builds them without cms keys."""
    body = {"req": req, "time": time.time(), "hostname": socket.gethostname(), "blob_hash": ""}
    body.update(fields)
    frames = [*route, b"", req.encode(), json.dumps(body).encode(), b""]
    if blob is not None:
        frames.append(blob)
    return frames


def _dealer(endpoint: str) -> zmq.Socket:  # type: ignore[type-arg]
    s = _CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.connect(endpoint)
    return s


def _types(frames_list: list[list[bytes]]) -> list[str]:
    return [f[f.index(b"") + 1].decode() for f in frames_list]


def _body(frames: list[bytes]) -> dict[str, Any]:
    return json.loads(frames[frames.index(b"") + 2])  # type: ignore[no-any-return]


def _until_echo(sock: zmq.Socket) -> list[list[bytes]]:  # type: ignore[type-arg]
    """Ask for an echo and return everything received up to and including its answer."""
    sock.send_multipart(upstream_frames("echo.request", target="sync"))
    got = []
    while True:
        frames = sock.recv_multipart()
        got.append(frames)
        if b"echo.response" in frames:
            return got


ROUTER = """
[ccserver]
cc-socket = tcp://127.0.0.1:*
cc-role = remote
stats-period = 0

[routes]
echo = h:echo
task = h:taskrouter
pub.infofile = h:infowriter

[h:echo]
handler = cc.handler.echo

[h:taskrouter]
handler = cc.handler.taskrouter

[h:infowriter]
handler = cc.handler.infowriter
dstdir = {dstdir}
"""


class UpstreamPeerTests(ServerTestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dst = Path(self.mktemp()).absolute()
        self.dst.mkdir()
        self.srv = self.start(ROUTER.format(dstdir=self.dst))
        assert self.srv.endpoint is not None
        self.endpoint: str = self.srv.endpoint

    @defer.inlineCallbacks
    def test_upstream_taskrunner_receives_only_its_tasks(self) -> Any:
        def scenario() -> dict[str, Any]:
            runner, client = _dealer(self.endpoint), _dealer(self.endpoint)
            try:
                runner.send_multipart(upstream_frames("task.register", host=HOST))
                registered = _until_echo(runner)
                # taskclient (CCReqStream): a query id route frame, task fields as cc.taskmgr sends
                send = upstream_frames("task.send.u1", route=(b"Q000001",), task_host=HOST,
                                       task_handler="cc.task.sample", task_id="u1", cmd="test")
                client.send_multipart(send)
                forwarded = client.recv_multipart()
                task = runner.recv_multipart()
                runner.send_multipart(upstream_frames("task.reply.u1", task_id="u1", status="launched",
                                                      feedback={"rc": 0, "out": ""}))
                launched = client.recv_multipart()
                # what the original drops silently: a reply for a task nobody waits for,
                # and its log records when no route takes log.*
                runner.send_multipart(upstream_frames("task.reply.gone", task_id="gone", status="stopped",
                                                      feedback={}))
                runner.send_multipart(upstream_frames(
                    "log.info", log_level="INFO", service_type="task_runner", job_name="task_runner",
                    log_msg="Registering as testhost", log_time=time.time(), log_pid=1, log_line=1,
                    log_function="periodic_reg"))
                after = _until_echo(runner)
                # the original answers "cannot route" to a requester too
                client.send_multipart(upstream_frames("task.send.u2", route=(b"Q000002",), task_host="nohost",
                                                      task_handler="cc.task.sample", task_id="u2"))
                refused = client.recv_multipart()
                return {"registered": registered, "forwarded": forwarded, "task": task, "launched": launched,
                        "after": after, "refused": refused, "sent": send}
            finally:
                runner.close()
                client.close()

        out = yield threads.deferToThread(scenario)
        self.assertEqual(_types(out["registered"]), ["echo.response"])  # no reply.task.register
        self.assertEqual(out["forwarded"][:3], [b"Q000001", b"", b"task.reply.u1"])
        self.assertEqual(_body(out["forwarded"])["status"], "forwarded")
        self.assertEqual(out["task"], out["sent"][1:])  # the task itself, byte-exact, no route left
        self.assertEqual(out["launched"][:3], [b"Q000001", b"", b"task.reply.u1"])
        self.assertEqual(_types(out["after"]), ["echo.response"])  # no error replies either
        self.assertEqual(out["refused"][:3], [b"Q000002", b"", b"error"])
        self.assertEqual(_body(out["refused"])["msg"], "cannot route to nohost")
        totals = self.srv.stats.totals
        self.assertEqual(totals["count.dropped.msg.log.info"], 1)
        self.assertEqual(totals["count.error.msg.task.reply.gone"], 1)
        self.assertEqual(totals["unanswered.msg.log.info"], 1)
        self.assertEqual(totals["unanswered.msg.task.reply.gone"], 1)
        self.assertIn('ccnet_cc_unanswered_total{type="log.info"} 1', generate_latest(CCMetrics(self.srv.stats)).decode())

    @defer.inlineCallbacks
    def test_upstream_infosender_gets_no_acknowledgements(self) -> Any:
        sender = _dealer(self.endpoint)
        self.addCleanup(sender.close)
        content = b"uptime 1 day\n"
        frames = upstream_frames("pub.infofile", blob=content, filename="/var/log/info.1", mtime=1700000000.0,
                                 comp="", data="")
        yield threads.deferToThread(sender.send_multipart, frames)
        written = self.dst / f"{socket.gethostname()}--info.1"  # host-subdirs = no, as the original
        yield wait_for(lambda: self.srv.stats.totals["count.ok.msg.pub.infofile"] == 1)
        self.assertEqual(written.read_bytes(), content)
        got = yield threads.deferToThread(_until_echo, sender)
        self.assertEqual(_types(got), ["echo.response"])

    @defer.inlineCallbacks
    def test_a_sender_that_opts_in_gets_acks_and_errors(self) -> Any:
        def scenario() -> list[list[bytes]]:
            peer = _dealer(self.endpoint)
            try:
                peer.send_multipart(upstream_frames("task.register", host=HOST, ack=True))
                peer.send_multipart(upstream_frames("task.reply.gone", task_id="gone", status="stopped",
                                                    feedback={}, ack=True))
                peer.send_multipart(upstream_frames("log.info", log_msg="x", ack=True))
                return _until_echo(peer)
            finally:
                peer.close()

        got = yield threads.deferToThread(scenario)
        self.assertEqual(_types(got), ["reply.task.register", "error", "error", "echo.response"])
        self.assertEqual(_body(got[1])["msg"], "no requester known for task gone")
        self.assertEqual(_body(got[2])["msg"], "no route for message type log.info")


# markokr/cc 0.8.7 cc/test/test_task.py's configs, as written there (TMP and PORTn
# substituted as its parsekonf does), plus a section for a task module this checkout has.
TASK_HOST_INI = """
[ccserver]
logfile = TMP/%(job_name)s.log
pidfile = TMP/%(job_name)s.pid
cc-role = local
cc-socket = PORT1

[routes]
task = h:taskproxy
job = h:jobmgr
log = h:locallogger

[h:locallogger]
handler = cc.handler.locallogger

[h:taskproxy]
handler = cc.handler.proxy
remote-cc = PORT2

[h:jobmgr]
handler = cc.handler.jobmgr
daemons = d:taskrunner

[d:taskrunner]
module = cc.daemon.taskrunner
local-id = testhost
task-python = PYTHON
#reg-period = 300
#maint-period = 60

[cc.task.sample]
# sudo = xx

[tests.upstream_task_sample]
"""

TASK_ROUTER_INI = """
[ccserver]
logfile = TMP/%(job_name)s.log
pidfile = TMP/%(job_name)s.pid
cc-role = remote
cc-socket = PORT2

[routes]
task = h:taskrouter

[h:taskrouter]
handler = cc.handler.taskrouter
#route-lifetime = 3600
#maint-period = 60
"""


def _konf(text: str, tmp: Path, ports: dict[str, int]) -> str:
    text = text.replace("TMP", str(tmp)).replace("PYTHON", sys.executable)
    for name, port in ports.items():
        text = text.replace(name, f"tcp://127.0.0.1:{port}")
    return text


class UpstreamTaskConfigTests(ServerTestCase):
    def test_task_host_ini_with_cc_task_sections_is_accepted(self) -> None:
        from ccnet.cc.daemons.base import load_job
        from ccnet.cc.daemons.taskrunner import parse_options
        from ccnet.config import IniFile, parse_config

        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        path = folder / "task-host.ini"
        path.write_text(_konf(TASK_HOST_INI, folder, {"PORT1": 3001, "PORT2": 3002}).replace(
            "# sudo = xx", "sudo = xx"))
        config = parse_config(IniFile.load(path))  # no "unknown section"
        self.assertEqual([t.module for t in config.cc.upstream_tasks], ["cc.task.sample", "tests.upstream_task_sample"])
        self.assertEqual(config.cc.upstream_tasks[0].sudo, "xx")
        _, opts = load_job(path, "d:taskrunner", parse_options, env={})
        self.assertEqual(opts.local_id, "testhost")
        self.assertEqual(sorted(opts.upstream_tasks), ["cc.task.sample", "tests.upstream_task_sample"])


class UpstreamTestTaskScenarioTests(ServerTestCase):
    """cc/test/test_task.py's scenario with two ccnet daemons standing in for the
    ccservers (the task host runs ccnet's taskrunner under jobmgr, as its config says)
    and a requester framing task.send as cc.taskmgr does."""

    timeout = 120

    @defer.inlineCallbacks
    def test_sample_crash_and_missing_module_tasks(self) -> Any:
        from tests.support import free_port, start_daemon

        base = Path(self.mktemp()).absolute()
        ports = {"PORT1": free_port(), "PORT2": free_port()}
        daemons = []
        for name, text in (("task-router", TASK_ROUTER_INI), ("task-host", TASK_HOST_INI)):
            folder = base / name
            folder.mkdir(parents=True)
            d = yield threads.deferToThread(start_daemon, _konf(text, folder, ports), folder)
            self.addCleanup(threads.deferToThread, d.stop)
            daemons.append(d)
        router = f"tcp://127.0.0.1:{ports['PORT2']}"

        def send_task(uid: str, **fields: Any) -> list[str]:
            """Send until the host is registered; statuses until a final one (cc.taskmgr's view)."""
            client = _dealer(router)
            try:
                for attempt in range(600):
                    qid = b"Q%06d" % attempt
                    client.send_multipart(upstream_frames(f"task.send.{uid}", route=(qid,), task_host=HOST,
                                                          task_id=uid, **fields))
                    first = client.recv_multipart()
                    if first[2] != b"error":
                        break
                    time.sleep(0.1)  # the taskrunner is still starting and registering
                statuses = [_body(first)["status"]]
                while statuses[-1] not in ("finished", "failed", "stopped"):
                    statuses.append(_body(client.recv_multipart())["status"])
                return statuses
            finally:
                client.close()

        done = yield threads.deferToThread(send_task, "t1", task_handler="tests.upstream_task_sample", cmd="test")
        self.assertEqual(done[:2], ["forwarded", "starting"])
        self.assertEqual(done[-1], "finished")
        crash_run = yield threads.deferToThread(send_task, "t2", task_handler="tests.upstream_task_sample",
                                                cmd="crash-run")
        self.assertIn("failed", crash_run)
        crash_launch = yield threads.deferToThread(send_task, "t3", task_handler="tests.upstream_task_sample",
                                                   cmd="crash-launch")
        self.assertEqual(crash_launch, ["forwarded", "starting", "failed"])
        missing = yield threads.deferToThread(send_task, "t4", task_handler="cc.task.nonexist")
        self.assertEqual(missing[-1], "failed")
        for d in daemons:
            self.assertNotIn("Traceback", d.log())
            self.assertNotIn("Except", d.log())


# cc/test/test_basic.py's configs, as written there.
LOG_RECV_INI = """
[ccserver]
logfile = TMP/%(job_name)s.log
pidfile = TMP/%(job_name)s.pid
cc-role = remote
cc-socket = PORT1
[routes]
log = h:locallog
[h:locallog]
handler = cc.handler.locallogger
"""

LOG_SEND_INI = """
[ccserver]
logfile = TMP/%(job_name)s.log
pidfile = TMP/%(job_name)s.pid
cc-role = local
cc-socket = PORT2

[routes]
log = h:proxy

[h:proxy]
handler = cc.handler.proxy
remote-cc = PORT1
"""


class UpstreamTestBasicScenarioTests(ServerTestCase):
    """cc/test/test_basic.py's scenario: bin/testmsg.py's frames into two ccnet daemons."""

    timeout = 120

    @defer.inlineCallbacks
    def test_log_reaches_remote_logger_and_unrouted_info_is_only_logged(self) -> Any:
        from tests.support import free_port, start_daemon

        base = Path(self.mktemp()).absolute()
        ports = {"PORT1": free_port(), "PORT2": free_port()}
        daemons = {}
        for name, text in (("log-recv", LOG_RECV_INI), ("log-send", LOG_SEND_INI)):
            folder = base / name
            folder.mkdir(parents=True)
            daemons[name] = yield threads.deferToThread(start_daemon, _konf(text, folder, ports), folder)
            self.addCleanup(threads.deferToThread, daemons[name].stop)
        now = time.time()
        # bin/testmsg.py log / info, byte for byte the frames it sends (XREQ = DEALER)
        log_msg = {"req": "log.info", "time": now, "log_time": now, "hostname": "host", "job_name": "job",
                   "log_level": "INFO", "log_msg": "Foo"}
        info_msg = {"req": "pub.infofile", "time": now, "mtime": 1314187603, "hostname": "me", "filename": "info.1",
                    "data": "cXdlcnR5\n", "comp": "", "mode": "b"}
        sender = _dealer(f"tcp://127.0.0.1:{ports['PORT2']}")
        self.addCleanup(sender.close)
        for msg in (log_msg, info_msg):
            yield threads.deferToThread(sender.send_multipart,
                                        [b"", msg["req"].encode(), json.dumps(msg).encode(), b""])
        yield wait_for(lambda: "Foo" in daemons["log-recv"].log(), timeout=30)
        yield wait_for(lambda: "no route" in daemons["log-send"].log(), timeout=30)
        for d in daemons.values():
            self.assertNotIn("Except", d.log())
            self.assertNotIn("Traceback", d.log())

