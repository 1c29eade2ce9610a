"""JEncode as DIRAC clients speak it: markers, round trips, and refusal of unknown classes."""

from __future__ import annotations

import datetime
import json
import math
from urllib.parse import parse_qs, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from ccnet.rpc.codec import CodecError, JCodec, decode, encode
from ccnet.rpc.resource import _parse_form


class Point:
    _attrToSerialize = ["x", "y"]

    def __init__(self) -> None:
        self.x = 0
        self.y = 0


class WireFormTests(unittest.TestCase):
    def test_datetime_is_marked_dt_without_microseconds(self) -> None:
        text = encode(datetime.datetime(2024, 5, 6, 7, 8, 9, 123456))
        self.assertEqual(json.loads(text), {"__dCls": "dt", "obj": "2024-05-06 07:08:09"})

    def test_aware_datetime_is_sent_as_utc(self) -> None:
        tz = datetime.timezone(datetime.timedelta(hours=2))
        text = encode(datetime.datetime(2024, 5, 6, 9, 0, 0, tzinfo=tz))
        self.assertEqual(json.loads(text)["obj"], "2024-05-06 07:00:00")

    def test_date_bytes_and_tuple_forms(self) -> None:
        self.assertEqual(
            json.loads(encode([datetime.date(2020, 1, 2), b"\x00\xff", (1, 2)])),
            [{"__dCls": "date", "obj": "2020-01-02"}, {"__dCls": "b64", "obj": "AP8="}, [1, 2]],
        )

    def test_decodes_what_a_DIRAC_client_sends(self) -> None:
        sent = '[{"__dCls": "dt", "obj": "2023-01-02 03:04:05"}, {"__dCls": "b64", "obj": "aGk="}, {"1": 2}]'
        self.assertEqual(decode(sent), [datetime.datetime(2023, 1, 2, 3, 4, 5), b"hi", {"1": 2}])

    def test_dict_keys_become_strings(self) -> None:
        self.assertEqual(decode(encode({1: "a"})), {"1": "a"})

    def test_unregistered_object_class_is_refused_without_import(self) -> None:
        text = '{"__dCls": "Popen", "__dMod": "subprocess", "args": "true"}'
        self.assertRaises(CodecError, decode, text)

    def test_absurdly_nested_args_are_a_codec_error(self) -> None:
        self.assertRaises(CodecError, decode, "[" * 200000 + "]" * 200000)

    def test_registered_class_round_trips(self) -> None:
        codec = JCodec([Point])
        p = Point()
        p.x, p.y = 3, [datetime.date(2021, 2, 3)]
        wire = json.loads(codec.encode(p))
        self.assertEqual(wire["__dCls"], "Point")
        self.assertEqual(wire["__dMod"], __name__)
        back = codec.decode(codec.encode(p))
        self.assertIsInstance(back, Point)
        self.assertEqual((back.x, back.y), (3, [datetime.date(2021, 2, 3)]))

    def test_unserializable_value_raises_codec_error(self) -> None:
        self.assertRaises(CodecError, encode, object())

    def test_nan_and_infinity_are_written_as_DIRAC_writes_them(self) -> None:
        # DIRAC's JEncode is json.dumps with its defaults: bare NaN / Infinity literals.
        value = [float("nan"), float("inf"), float("-inf"), 1.5]
        text = encode(value)
        self.assertEqual(text, json.dumps(value, separators=(",", ":")))
        self.assertEqual(text, "[NaN,Infinity,-Infinity,1.5]")
        back = decode(text)
        self.assertTrue(math.isnan(back[0]))
        self.assertEqual(back[1:], [math.inf, -math.inf, 1.5])

    def test_garbage_raises_codec_error(self) -> None:
        for text in ["[", '{"__dCls": "dt", "obj": "yesterday"}', '{"__dCls": "b64", "obj": "**"}', b"\xff"]:
            self.assertRaises(CodecError, decode, text)


_naive_dt = st.datetimes(
    min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1)
).map(lambda d: d.replace(microsecond=0))
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.dates(min_value=datetime.date(1900, 1, 1))
    | _naive_dt
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def _tuples_to_lists(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _tuples_to_lists(v) for k, v in value.items()}
    return value


class RoundTripTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(_values)
    def test_nested_values_round_trip(self, value: object) -> None:
        self.assertEqual(decode(encode(value)), value)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.tuples(st.integers(), _naive_dt, st.binary(max_size=8)), max_size=4))
    def test_tuples_come_back_as_lists(self, value: list[tuple[object, ...]]) -> None:
        self.assertEqual(decode(encode(value)), _tuples_to_lists(value))


class FormBodyTests(unittest.TestCase):
    """The RPC site reads form bodies itself; it must read them as the stdlib does."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80).map(lambda b: b.replace(b";", b",")) | st.lists(
        st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=5
    ).map(lambda pairs: urlencode(pairs).encode("ascii")))
    def test_form_fields_are_what_parse_qs_reads(self, raw: bytes) -> None:
        expected = parse_qs(raw.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        self.assertEqual(
            _parse_form(raw),
            {k.encode("latin-1"): [v.encode("latin-1") for v in vs] for k, vs in expected.items()},
        )

    def test_utf8_escapes_stay_bytes(self) -> None:
        self.assertEqual(_parse_form(b"name=Jos%C3%A9+M&args=%5B%5D"),
                         {b"name": ["José M".encode()], b"args": [b"[]"]})
