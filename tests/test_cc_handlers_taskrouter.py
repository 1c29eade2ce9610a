"""taskrouter: registration, forwarding, replies back to the requester, expiry."""

from __future__ import annotations

from typing import Any

import zmq
from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from ccnet.cc.handlers.taskrouter import RouteBook
from tests.test_cc_handlers_common import _CTX, ServerMixin, body, reply_body

CC = """
[cc]
cc-socket = tcp://127.0.0.1:*
cc-role = remote
stats-period = 0
[routes]
task = tr
[tr]
handler = taskrouter
route-lifetime = 60
reply-timeout = 30
"""


class RouteBookTests(TestCase):
    def test_routes_expire_and_reregistering_replaces(self) -> None:
        book = RouteBook(route_lifetime=10, reply_timeout=5)
        book.register("h", (b"a",), now=0)
        book.register("h", (b"b",), now=5)
        self.assertEqual(book.host_route("h", 14), (b"b",))
        self.assertIsNone(book.host_route("h", 16))
        book.remember("u", (b"r",), now=0)
        self.assertEqual(book.requester("u", 4), (b"r",))  # refreshes
        self.assertEqual(book.requester("u", 8), (b"r",))
        self.assertEqual(book.expire(100), (1, 1))
        self.assertIsNone(book.requester("u", 100))


def executor_and_client(endpoint: str) -> dict[str, Any]:
    """A raw executor (registers, answers one task) and a raw requester."""
    ex = _CTX.socket(zmq.DEALER)
    cl = _CTX.socket(zmq.DEALER)
    for s in (ex, cl):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 5000)
        s.connect(endpoint)
    try:
        ex.send_multipart([b"", b"task.register", body("task.register", host="h1"), b""])
        reg = ex.recv_multipart()
        cl.send_multipart([b"Q000001", b"", b"task.send.u1",
                           body("task.send.u1", task_host="h1", task_handler="shell", task_id="t1", cmd=["x"]), b""])
        ack = cl.recv_multipart()
        got = ex.recv_multipart()
        ex.send_multipart([b"", b"task.reply.u1",
                           body("task.reply.u1", task_id="t1", status="finished", handler="shell",
                                feedback={"rc": 0}), b""])
        final = cl.recv_multipart()
        cl.send_multipart([b"Q000002", b"", b"task.send.u2", body("task.send.u2", task_host="nohost"), b""])
        unknown = cl.recv_multipart()
        return {"reg": reg, "ack": ack, "got": got, "final": final, "unknown": unknown}
    finally:
        ex.close()
        cl.close()


class TaskRouterHandlerTests(ServerMixin, TestCase):
    @defer.inlineCallbacks
    def test_task_round_trip_through_the_router(self) -> Any:
        srv = self.start_server(CC)
        r = yield threads.deferToThread(executor_and_client, srv.endpoint)
        self.assertEqual(r["reg"][1], b"reply.task.register")
        self.assertEqual(r["ack"][:3], [b"Q000001", b"", b"task.reply.u1"])
        self.assertEqual(reply_body(r["ack"])["status"], "forwarded")
        # the executor gets the request itself, untouched
        self.assertEqual(r["got"][:2], [b"", b"task.send.u1"])
        self.assertEqual(reply_body(r["got"])["cmd"], ["x"])
        self.assertEqual(r["final"][:3], [b"Q000001", b"", b"task.reply.u1"])
        self.assertEqual(reply_body(r["final"])["feedback"], {"rc": 0})
        self.assertEqual(r["unknown"][:3], [b"Q000002", b"", b"error"])
        self.assertIn("cannot route to nohost", reply_body(r["unknown"])["msg"])

    @defer.inlineCallbacks
    def test_bad_task_messages_get_error_replies(self) -> Any:
        srv = self.start_server(CC)
        reps = yield self.ask(srv, [
            [b"", b"task.register", body("task.register"), b""],
            [b"", b"task.send.u9", body("task.send.u9"), b""],
            [b"", b"task.reply.zz", body("task.reply.zz", status="x"), b""],
            [b"", b"task.other", body("task.other"), b""],
        ], replies=4)
        msgs = [reply_body(r)["msg"] for r in reps]
        self.assertIn("missing field 'host'", msgs[0])
        self.assertIn("missing field 'task_host'", msgs[1])
        self.assertIn("no requester known for task zz", msgs[2])
        self.assertIn("not task.other", msgs[3])
