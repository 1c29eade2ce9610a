"""locallogger, filter, delay, disposer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from ccnet.cc.handler import CCHandler, CCRequest
from ccnet.cc.handlers.filter import passes
from ccnet.cc.handlers.locallogger import format_line
from ccnet.config import ConfigError
from tests.test_cc_handlers_common import ServerMixin, body, reply_body


class Sink(CCHandler):
    """Records the types it is given."""

    handler_name = "sink"
    seen: list[str] = []

    def handle(self, request: CCRequest) -> None:
        Sink.seen.append(request.type)
        assert request.payload is not None


SINK = f"[sink]\nhandler = {__name__}:Sink\n"
BASE = "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\ncc-role = local\n"


def log_msg(level: str, text: str, job: str = "infosender") -> list[bytes]:
    return [b"", f"log.{level.lower()}".encode(),
            body(f"log.{level.lower()}", log_level=level, job_name=job, log_msg=text, log_time=3723.5), b""]


class LocalLoggerTests(ServerMixin, TestCase):
    def test_line_format(self) -> None:
        line = format_line({"req": "log.info", "log_level": "info", "job_name": "j", "hostname": "h",
                            "log_msg": "a\nb", "log_time": 0.25}, 0.0)
        self.assertRegex(line, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[j@h\] \d\d:\d\d:00,250 INFO a\\nb$")

    @defer.inlineCallbacks
    def test_log_messages_go_to_rotating_file_and_others_are_refused(self) -> Any:
        logfile = Path(self.mktemp()).absolute() / "cc-log" / "daemons.log"
        srv = self.start_server(BASE + f"[routes]\nlog = ll\nnotlog = ll\n[ll]\nhandler = locallogger\n"
                                f"logfile = {logfile}\nmax-bytes = 300\nbackup-count = 2\n")
        msgs = [log_msg("WARNING", f"disk {i} almost full") for i in range(8)]
        msgs.append([b"", b"notlog.x", body("notlog.x"), b""])
        (rep,) = yield self.ask(srv, msgs)
        self.assertIn("non-log msg", reply_body(rep)["msg"])
        yield srv.handlers["ll"].workers.run(lambda: None, key="file")
        files = sorted(p.name for p in logfile.parent.iterdir())
        self.assertEqual(files, ["daemons.log", "daemons.log.1", "daemons.log.2"])
        text = logfile.read_text()
        self.assertIn("[infosender@client]", text)
        self.assertIn("WARNING disk 7 almost full", text)

    @defer.inlineCallbacks
    def test_log_without_log_msg_is_an_error_reply(self) -> Any:
        srv = self.start_server(BASE + "[routes]\nlog = ll\n[ll]\nhandler = locallogger\n")
        (rep,) = yield self.ask(srv, [[b"", b"log.info", body("log.info", log_level="INFO"), b""]])
        self.assertIn("missing field 'log_msg'", reply_body(rep)["msg"])


class FilterDelayDisposerTests(ServerMixin, TestCase):
    def setUp(self) -> None:
        Sink.seen = []

    def test_filter_rule(self) -> None:
        self.assertTrue(passes("pub.infofile", (), ()))
        self.assertTrue(passes("pub.infofile", ("pub.*",), ()))
        self.assertFalse(passes("pub.infofile", ("pub.*",), ("*.infofile",)))
        self.assertFalse(passes("log.info", ("pub.*",), ()))

    @defer.inlineCallbacks
    def test_filter_forwards_included_and_drops_excluded(self) -> Any:
        srv = self.start_server(
            BASE + "[routes]\n* = f\necho = e\n[e]\nhandler = echo\n"
            "[f]\nhandler = filter\nforward-to = sink\ninclude = pub.*, log.*\nexclude = pub.secret\n" + SINK
        )
        (rep,) = yield self.ask(srv, [
            [b"", b"pub.info", body("pub.info"), b""],
            [b"", b"pub.secret", body("pub.secret"), b""],
            [b"", b"log.info", body("log.info"), b""],
            [b"", b"other.x", body("other.x"), b""],
            [b"", b"echo.request", body("echo.request"), b""],
        ])
        self.assertEqual(rep[1], b"echo.response")  # dropped messages are not errors
        self.assertEqual(Sink.seen, ["pub.info", "log.info"])
        self.assertEqual(srv.handlers["f"].dropped, 3)

    def test_forward_to_missing_section_is_a_config_error(self) -> None:
        e = self.assertRaises(ConfigError, self.start_server,
                              BASE + "[routes]\n* = f\n[f]\nhandler = filter\nforward-to = nowhere\n")
        self.assertIn("no section [nowhere]", str(e))

    def test_forward_target_role_is_checked(self) -> None:
        e = self.assertRaises(ConfigError, self.start_server,
                              BASE + "[routes]\n* = f\n[f]\nhandler = filter\nforward-to = iw\n"
                              "[iw]\nhandler = infowriter\ndstdir = /tmp/x\n")
        self.assertIn("not allowed with cc-role = local", str(e))

    @defer.inlineCallbacks
    def test_delay_hands_over_after_delay(self) -> Any:
        clock = task.Clock()
        srv = self.start_server(
            BASE + "[routes]\npub = d\necho = e\n[e]\nhandler = echo\n[d]\nhandler = delay\nforward-to = sink\n"
            "delay = 5\n" + SINK, clock=clock)
        yield self.ask(srv, [[b"", b"pub.x", body("pub.x"), b""], [b"", b"echo.request", body("echo.request"), b""]])
        clock.advance(4.9)
        self.assertEqual(Sink.seen, [])
        clock.advance(0.2)
        self.assertEqual(Sink.seen, ["pub.x"])

    @defer.inlineCallbacks
    def test_disposer_swallows_silently(self) -> Any:
        srv = self.start_server(BASE + "[routes]\nnoise = x\necho = e\n[e]\nhandler = echo\n[x]\nhandler = disposer\n")
        (rep,) = yield self.ask(srv, [[b"", b"noise.a", body("noise.a"), b""],
                                      [b"", b"echo.request", body("echo.request"), b""]])
        self.assertEqual(rep[1], b"echo.response")
        self.assertEqual(srv.handlers["x"].disposed, 1)


class TailWriterRotationTests(TestCase):
    def test_rotations_in_the_same_second_keep_every_chunk(self) -> None:
        from ccnet.cc.handlers.tailwriter import append_chunk

        root = Path(self.mktemp()).absolute()
        root.mkdir()
        dst = root / "host" / "app.log"
        # Two sources alternating on one destination force a rotation at every chunk.
        for i in range(8):
            source = (1, 100 + i % 2)
            status, _ = append_chunk(root, dst, f"chunk{i}\n".encode(), 0, *source)
            self.assertEqual(status, "written")
        kept = sorted(p.read_text() for p in dst.parent.iterdir() if not p.name.endswith((".pos", ".new")))
        self.assertEqual(kept, [f"chunk{i}\n" for i in range(8)])
