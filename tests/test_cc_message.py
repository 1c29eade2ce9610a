"""CC frame parsing and serialization (pure)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ccnet.cc.message import (
    ENC1,
    CCMessage,
    Invalid,
    decode_body,
    error_reply,
    make_message,
    parse,
    wants_replies,
)


def body(req: str, **extra: object) -> bytes:
    d = {"req": req, "time": 1.5, "hostname": "h", "blob_hash": ""}
    d.update(extra)
    return json.dumps(d).encode()


class ParseTests(TestCase):
    def test_testmsg_style_four_frames_parse_with_peer_route(self) -> None:
        m = parse([b"\x00peer", b"", b"echo.request", body("echo.request"), b""])
        assert isinstance(m, CCMessage)
        self.assertEqual(m.route, (b"\x00peer",))
        self.assertEqual(m.type, "echo.request")
        self.assertEqual(m.signature, b"")
        self.assertIsNone(m.blob)

    def test_missing_signature_frame_is_treated_as_empty(self) -> None:
        m = parse([b"p", b"", b"echo.request", body("echo.request")])
        assert isinstance(m, CCMessage)
        self.assertEqual(m.signature, b"")
        # re-serialized byte-exact: no signature frame is invented
        self.assertEqual(m.frames(), [b"p", b"", b"echo.request", body("echo.request")])

    def test_blob_frame_and_multi_hop_route_are_kept(self) -> None:
        frames = [b"peer2", b"Q000001", b"", b"pub.infofile", body("pub.infofile"), b"", b"BLOB"]
        m = parse(frames)
        assert isinstance(m, CCMessage)
        self.assertEqual(m.route, (b"peer2", b"Q000001"))
        self.assertEqual(m.blob, b"BLOB")
        self.assertEqual(m.frames(), frames)

    def test_no_delimiter_is_dropped_without_reply(self) -> None:
        m = parse([b"peer", b"echo", body("echo")])
        assert isinstance(m, Invalid)
        self.assertFalse(m.replyable)

    def test_bad_type_is_not_answerable(self) -> None:
        for t in [b"", b"pub..x", b"a b", b".pub", b"pub.", b"\xff"]:
            m = parse([b"peer", b"", t, body("x")])
            assert isinstance(m, Invalid), t
            self.assertFalse(m.replyable, t)

    def test_missing_json_frame_is_answered(self) -> None:
        m = parse([b"peer", b"", b"echo"])
        assert isinstance(m, Invalid)
        self.assertTrue(m.replyable)
        self.assertEqual(m.route, (b"peer",))
        self.assertIn("missing json", m.reason)

    def test_too_many_frames_is_answered(self) -> None:
        m = parse([b"peer", b"", b"echo", body("echo"), b"", b"blob", b"extra"])
        assert isinstance(m, Invalid)
        self.assertTrue(m.replyable)
        self.assertIn("too many frames", m.reason)

    def test_opt_in_is_read_from_bodies_that_are_otherwise_invalid(self) -> None:
        hijacked = parse([b"p", b"", b"echo.request", body("db.confdb", ack=True), b""])
        assert isinstance(hijacked, Invalid)
        self.assertTrue(hijacked.wants_replies)
        silent = parse([b"p", b"", b"echo.request", body("db.confdb"), b""])
        assert isinstance(silent, Invalid)
        self.assertFalse(silent.wants_replies)
        self.assertFalse(wants_replies({"ack": "yes"}))  # only JSON true opts in
        ok = parse([b"p", b"", b"echo.request", body("echo.request", ack=True), b""])
        assert isinstance(ok, CCMessage)
        self.assertTrue(wants_replies(ok.decoded))

    def test_body_validation_errors_name_the_problem(self) -> None:
        cases = {
            b"\xff\xfe": "not UTF-8",
            b"{nope": "not valid JSON",
            b"[1, 2]": "not a JSON object",
            b'{"time": 1}': "no \"req\"",
            body("other.type"): "does not match",
            body("echo", time="yesterday"): "\"time\" is not a number",
            body("echo", hostname=5): "'hostname' is not a string",
        }
        for raw, expected in cases.items():
            m = parse([b"peer", b"", b"echo", raw, b""])
            assert isinstance(m, Invalid), raw
            self.assertTrue(m.replyable)
            self.assertIn(expected, m.reason)
            self.assertEqual(m.type, "echo")

    def test_oversize_message_is_answered(self) -> None:
        m = parse([b"peer", b"", b"echo", body("echo"), b"", b"x" * 1000], max_body=500)
        assert isinstance(m, Invalid)
        self.assertTrue(m.replyable)
        self.assertIn("too large", m.reason)

    def test_encrypted_body_is_not_json_checked(self) -> None:
        m = parse([b"peer", b"", b"echo", ENC1, b"envelope"])
        assert isinstance(m, CCMessage)
        self.assertTrue(m.encrypted)

    def test_no_route_message_is_parsed_but_not_replyable_when_invalid(self) -> None:
        m = parse([b"", b"echo", b"{bad"])
        assert isinstance(m, Invalid)
        self.assertFalse(m.replyable)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=9))
    def test_random_frames_never_raise(self, frames: list[bytes]) -> None:
        m = parse(frames, max_body=64)
        self.assertIsInstance(m, (CCMessage, Invalid))
        if isinstance(m, CCMessage):
            self.assertEqual(parse(m.frames(), max_body=64), m)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.binary(min_size=1, max_size=8), max_size=3),
        st.from_regex(r"\A[a-z0-9_-]{1,5}(\.[a-z0-9_-]{1,5}){0,3}\Z"),
        st.one_of(st.binary(max_size=30), st.text(max_size=30).map(str.encode)),
        st.lists(st.binary(max_size=10), max_size=3),
    )
    def test_structured_random_frames_never_raise(
        self, route: list[bytes], mtype: str, raw: bytes, tail: list[bytes]
    ) -> None:
        m = parse([*route, b"", mtype.encode(), raw, *tail])
        self.assertIsInstance(m, (CCMessage, Invalid))
        if isinstance(m, Invalid):
            self.assertEqual(m.replyable, bool(route))


class BuildTests(TestCase):
    def test_make_message_round_trips_and_carries_base_fields(self) -> None:
        m = make_message("echo.request", {"target": "x"}, hostname="me", now=10.0, route=[b"r"])
        back = parse(m.frames())
        self.assertEqual(back, m)
        self.assertEqual(
            decode_body(m.body, "echo.request"),
            {"req": "echo.request", "time": 10.0, "hostname": "me", "blob_hash": "", "target": "x"},
        )

    def test_error_reply_carries_whole_route_and_names_the_type(self) -> None:
        e = error_reply((b"peer", b"Q000001"), "no route", "pub.x", hostname="srv", now=2.0)
        frames = e.frames()
        self.assertEqual(frames[:4], [b"peer", b"Q000001", b"", b"error"])
        d = json.loads(frames[4])
        self.assertEqual(d["req"], "error")
        self.assertEqual(d["msg"], "no route")
        self.assertEqual(d["orig_req"], "pub.x")
        self.assertEqual(frames[5], b"")

    def test_make_message_rejects_bad_type(self) -> None:
        self.assertRaises(ValueError, make_message, "bad type")
