"""Handlers given arbitrary JSON fields answer HandlerError (→ error reply), never crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import TestCase

from ccnet.cc.handler import CCRequest, HandlerError
from ccnet.cc.handlers.database import build_call
from ccnet.cc.handlers.jobmgr import JobMgrHandler, JobMgrOptions
from ccnet.cc.handlers.locallogger import format_line
from ccnet.cc.handlers.payload import field_number, infofile_content
from ccnet.cc.handlers.taskrouter import TaskRouterHandler, TaskRouterOptions
from ccnet.cc.message import make_message

KEYS = ["host", "task_host", "task_handler", "task_id", "job_name", "function", "params", "return", "ident",
        "filename", "mtime", "comp", "data", "mode", "log_level", "log_msg", "log_time", "job_name", "hostname"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
PAYLOADS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)


class FakeServer:
    def __init__(self) -> None:
        self.clock = task.Clock()
        self.sent: list[Any] = []
        self.endpoint = "tcp://127.0.0.1:1"

    def reply(self, request: Any, req: str, fields: Any, blob: Any = None) -> None:
        self.sent.append((req, fields))

    ack = reply

    def send_frames(self, frames: list[bytes]) -> None:
        self.sent.append(frames)


def request(mtype: str, p: dict[str, Any]) -> CCRequest:
    body = {"req": mtype, **p}
    return CCRequest(make_message(mtype, p, route=(b"peer",)), 0.0, payload=body)


class FuzzTests(TestCase):
    def check(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except HandlerError:
            pass

    @settings(max_examples=150, deadline=None)
    @given(PAYLOADS, st.sampled_from(["task.register", "task.send.u1", "task.reply.u1", "task.x"]))
    def test_taskrouter(self, p: dict[str, Any], mtype: str) -> None:
        h = TaskRouterHandler("tr", TaskRouterOptions(60, 60, 60), FakeServer())
        self.check(h.handle, request(mtype, p))

    @settings(max_examples=100, deadline=None)
    @given(PAYLOADS, st.sampled_from(["job.config", "job.keepalive", "job.x"]))
    def test_jobmgr(self, p: dict[str, Any], mtype: str) -> None:
        h = JobMgrHandler("jm", JobMgrOptions((), 1, 1), FakeServer())
        self.check(h.handle, request(mtype, p))

    @settings(max_examples=150, deadline=None)
    @given(PAYLOADS)
    def test_database_locallogger_infofile_fields(self, p: dict[str, Any]) -> None:
        p = {"req": "db", **p}
        self.check(build_call, p, ["*"])
        self.check(format_line, p, 0.0)
        self.check(infofile_content, p, None)

    def test_infinite_and_huge_numbers_are_refused_or_tolerated(self) -> None:
        for t in (1e300, -1e20):
            self.assertIn("??:??:??,??? INFO x", format_line({"log_msg": "x", "log_time": t}, 0.0))
        self.assertRaises(HandlerError, format_line, {"log_msg": "x", "log_time": float("inf")}, 0.0)
        self.assertRaises(HandlerError, field_number, {"mtime": float("inf")}, "mtime")
        self.assertRaises(HandlerError, field_number, {"mtime": "inf"}, "mtime")
