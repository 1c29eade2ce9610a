"""The pure mPlane model: scopes, constraints, messages, tokens, validation (no sockets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from ccnet.mplane import model as m

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
REG = m.RegistryStore()

# Captured from mplane-sdk 0.9.0 (unparse_json) so that the comparison needs no SDK at test time.
SDK_CAPABILITY = """{
  "capability": "measure",
  "label": "ping-average-ip4",
  "parameters": {
    "destination.ip4": "*",
    "destination.port": "1 ... 1024",
    "source.ip4": "127.0.0.1"
  },
  "registry": "http://ict-mplane.eu/registry/core",
  "results": [
    "delay.twoway.icmp.us.min",
    "delay.twoway.icmp.us.mean",
    "delay.twoway.icmp.us.max",
    "delay.twoway.icmp.count"
  ],
  "token": "%s",
  "version": 1,
  "when": "now ... future / 1s"
}"""
SDK_SPECIFICATION = """{
  "label": "ping-average-ip4",
  "parameters": {
    "destination.ip4": "10.0.37.2",
    "destination.port": "80",
    "source.ip4": "127.0.0.1"
  },
  "registry": "http://ict-mplane.eu/registry/core",
  "results": [
    "delay.twoway.icmp.us.min",
    "delay.twoway.icmp.us.mean",
    "delay.twoway.icmp.us.max",
    "delay.twoway.icmp.count"
  ],
  "specification": "measure",
  "token": "%s",
  "version": 1,
  "when": "2017-12-24 22:18:42.000000 + 1m / 1s"
}"""


class SDKCompatibilityTests(unittest.TestCase):
    def test_capability_json_round_trips_byte_for_byte(self) -> None:
        text = SDK_CAPABILITY % "40a4b2bf4d7c9e3b5a2bd6b1bbf0c8a4"
        self.assertEqual(m.to_json(m.parse_json(text)), text)

    def test_specification_json_round_trips_byte_for_byte(self) -> None:
        text = SDK_SPECIFICATION % "abc"
        self.assertEqual(m.to_json(m.parse_json(text)), text)

    def test_tokens_are_the_sdks(self) -> None:
        # Values computed by mplane-sdk 0.9.0 for the two messages above.
        cap = m.parse_json(SDK_CAPABILITY % "t")
        spec = m.parse_json(SDK_SPECIFICATION % "t")
        assert isinstance(cap, m.Statement) and isinstance(spec, m.Statement)
        self.assertEqual(cap.default_token(REG), "5848a9e7fe870aaa4a574047868a58f3")
        self.assertEqual(spec.default_token(REG), "d633294ee3ee082f53467674745d9138")

    def test_exception_and_envelope_use_the_sdk_keys(self) -> None:
        exc = m.ExceptionMessage("abc", "boom")
        self.assertEqual(exc.to_dict(), {"exception": "abc", "message": "boom"})
        env = m.Envelope([exc])
        self.assertEqual(env.to_dict(), {"envelope": "message", "version": 1, "contents": [exc.to_dict()]})

    def test_redemption_token_only_drops_the_body(self) -> None:
        spec = m.parse_json(SDK_SPECIFICATION % "tok")
        assert isinstance(spec, m.Statement)
        red = spec.derive("redemption")
        self.assertEqual(red.to_dict(token_only=True), {
            "redemption": "measure", "version": 1, "registry": m.CORE_REGISTRY_URI,
            "label": "ping-average-ip4", "token": "tok"})

    def test_schema_hash_ignores_order(self) -> None:
        self.assertEqual(m.schema_hash("r", ["b", "a"], ["y", "x"]), m.schema_hash("r", ["a", "b"], ["x", "y"]))


class WhenTests(unittest.TestCase):
    def test_forms_render_as_the_sdk_does(self) -> None:
        cases = {
            "now": "now",
            "now ... future / 1s": "now ... future / 1s",
            "now + 90s / 1s": "now + 1m30s / 1s",
            "2009-02-20 13:00:00 ... 2009-02-20 15:00:00": "2009-02-20 13:00:00.000000 ... 2009-02-20 15:00:00.000000",
            "past ... now": "past ... now",
            "repeat now + 30m / 1m { now + 5s / 1s }": "repeat now + 30m / 1m { now + 5s / 1s } ",
            "repeat now ... future cron 0 0 * 1,2,3 1 * { now + 5s / 1s }":
                "repeat now ... future cron 0 0 * 1,2,3 1 * { now + 5s / 1s } ",
        }
        for text, rendered in cases.items():
            self.assertEqual(str(m.When.parse(text)), rendered, text)

    def test_tstat_style_infinite_duration_range_is_accepted(self) -> None:
        self.assertEqual(m.When.parse("now + inf ... future"), m.When.parse("now ... future"))

    def test_bad_scopes_say_what_is_wrong(self) -> None:
        for text, words in [("tomorrow", "not an mPlane time"), ("now + 5x", "duration"),
                            ("repeat now + 1m", "period"), ("2009-02-20 ... 2009-02-19", "end is before start"),
                            ("now cron 0 0 0 0 0 0", "repeat")]:
            with self.assertRaises(m.ModelError) as cm:
                m.When.parse(text)
            self.assertIn(words, str(cm.exception), text)

    def test_containment_checks_period_start_and_end(self) -> None:
        cap = m.When.parse("now ... future / 1s")
        self.assertIsNone(cap.contains(m.When.parse("now + 5s / 1s"), T0))
        self.assertIn("period", cap.contains(m.When.parse("now + 5s"), T0) or "")
        bounded = m.When.parse("2026-11-24 09:00:00 ... 2026-11-24 11:00:00")
        self.assertIsNone(bounded.contains(m.When.parse("now + 30m"), T0))
        self.assertIn("after the capability", bounded.contains(m.When.parse("now + 2h"), T0) or "")
        self.assertIn("before", bounded.contains(m.When.parse("2026-11-24 08:00:00 + 1m"), T0) or "")

    def test_timer_delays_match_the_sdk(self) -> None:
        w = m.When.parse("2009-02-20 13:00:00 ... 2009-02-20 15:00:00")
        self.assertEqual(w.timer_delays(datetime(2009, 2, 20, 12, 0, tzinfo=UTC)), (3600, 10800))
        self.assertEqual(m.When.parse("now + 30m / 15s").timer_delays(T0), (0, 1800))
        self.assertEqual(m.When.parse("now + 0s").timer_delays(T0), (0, 0))

    def test_repeated_scope_iterates_definite_subscopes(self) -> None:
        w = m.When.parse("repeat now + 3m / 1m { now + 5s / 1s }")
        subs = list(w.iterate(T0))
        self.assertEqual(len(subs), 4)
        self.assertEqual(subs[1].datetimes(T0), (T0 + timedelta(minutes=1), T0 + timedelta(minutes=1, seconds=5)))


class ConstraintTests(unittest.TestCase):
    def test_kinds(self) -> None:
        port = REG.core.element("destination.port")
        rng = m.parse_constraint(port, "1024 ... 1")
        self.assertEqual(str(rng), "1 ... 1024")
        self.assertTrue(rng.met_by(80))
        self.assertFalse(rng.met_by(2000))
        ip = REG.core.element("source.ip4")
        lst = m.parse_constraint(ip, "10.0.0.1, 10.0.0.2")
        self.assertTrue(lst.met_by(ip.parse("10.0.0.2")))
        self.assertFalse(lst.met_by(ip.parse("10.0.0.3")))
        self.assertTrue(m.parse_constraint(ip, "*").met_by(ip.parse("1.2.3.4")))

    def test_bad_constraint_names_the_parameter(self) -> None:
        with self.assertRaises(m.ModelError) as cm:
            m.parse_constraint(REG.core.element("destination.port"), "1 ... lots")
        self.assertIn("destination.port", str(cm.exception))


class ValidationTests(unittest.TestCase):
    def setUp(self) -> None:
        cap = m.parse_json(SDK_CAPABILITY % "t")
        spec = m.parse_json(SDK_SPECIFICATION % "t")
        assert isinstance(cap, m.Statement) and isinstance(spec, m.Statement)
        self.cap = cap
        self.spec = m.Statement(**{**spec.__dict__, "when": m.When.parse("now + 5s / 1s")})

    def test_matching_spec_passes(self) -> None:
        m.match_specification(self.spec, self.cap, REG, T0)

    def assertMismatch(self, spec: m.Statement, *words: str) -> None:  # noqa: N802
        with self.assertRaises(m.ModelError) as cm:
            m.match_specification(spec, self.cap, REG, T0)
        for w in words:
            self.assertIn(w, str(cm.exception))

    def test_value_outside_range_names_parameter_and_constraint(self) -> None:
        spec = self.spec.derive("specification", parameters={**self.spec.parameters, "destination.port": "8080"})
        self.assertMismatch(spec, "destination.port", "8080", "1 ... 1024")

    def test_value_of_wrong_type(self) -> None:
        spec = self.spec.derive("specification", parameters={**self.spec.parameters, "destination.ip4": "nowhere"})
        self.assertMismatch(spec, "destination.ip4", "address")

    def test_missing_and_extra_parameters(self) -> None:
        params = dict(self.spec.parameters)
        del params["destination.port"]
        self.assertMismatch(self.spec.derive("specification", parameters=params), "missing parameter destination.port")
        params = {**self.spec.parameters, "source.port": "1"}
        self.assertMismatch(self.spec.derive("specification", parameters=params), "unexpected parameter source.port")

    def test_result_columns_must_match(self) -> None:
        self.assertMismatch(self.spec.derive("specification", results=["delay.twoway.icmp.us.min"]), "result column")

    def test_unknown_element_in_capability(self) -> None:
        cap = self.cap.derive("capability", results=["no.such.thing"])
        with self.assertRaises(m.ModelError) as cm:
            m.check_capability(cap, REG)
        self.assertIn("no.such.thing", str(cm.exception))

    def test_unknown_verb_and_kind(self) -> None:
        with self.assertRaises(m.ModelError):
            m.from_dict({"capability": "dance"})
        with self.assertRaises(m.ModelError):
            m.from_dict({"hello": "world"})


class HostileInputTests(unittest.TestCase):
    def test_version_must_be_a_json_number(self) -> None:
        cap = {"capability": "measure", "label": "x", "when": "now ... future"}
        for bad in ("1", True, 1.5, None, [1]):
            with self.assertRaises(m.ModelError) as cm:
                m.from_dict(dict(cap, version=bad))
            self.assertIn("version must be a whole number", str(cm.exception))
        self.assertEqual(m.from_dict(dict(cap, version=1)).version, 1)

    def test_deeply_nested_json_is_a_model_error(self) -> None:
        for doc in ("[" * 100000 + "]" * 100000,
                    '{"capability": "measure", "parameters": {"a": ' + "[" * 50000 + "]" * 50000 + "}}"):
            with self.assertRaises(m.ModelError) as cm:
                m.parse_json(doc)
            self.assertIn("nested too deeply", str(cm.exception))


class RegistryTests(unittest.TestCase):
    def test_core_is_the_sdk_core_and_tstat_names_its_own_registry(self) -> None:
        for name in ("source.ip4", "destination.ip4", "delay.twoway.icmp.us.mean", "delay.twoway.icmp.count",
                     "time", "start", "end", "duration.ms"):
            self.assertIn(name, REG.core)
        tstat = REG.get(m.TSTAT_REGISTRY_URI)
        for name in ("initiator.ip4", "bytes.forward", "tstat.flow.class.http", "rtt.average.ms", "request.method"):
            self.assertNotIn(name, REG.core)
            self.assertIn(name, tstat)
        self.assertIn("source.ip4", tstat)  # tstat's registry includes the core
        self.assertEqual(len(REG.core), 113)  # mplane-sdk 0.9's registry.json, no more

    def test_ri_registry_is_the_ri_fork_element_list(self) -> None:
        ri = REG.get(m.RI_REGISTRY_URI)
        self.assertIn("delay.twoway.icmp.us.count", ri)  # the RI's spelling
        self.assertNotIn("delay.twoway.icmp.count", ri)  # the SDK's
        self.assertEqual(ri.element("duration.ms").prim, "time")

    def test_operator_registry_with_include(self) -> None:
        store = m.RegistryStore()
        reg = store.parse(json.dumps({"registry-format": "mplane-0", "registry-uri": "http://example.org/extra",
                                      "includes": [m.CORE_REGISTRY_URI],
                                      "elements": [{"name": "foo.count", "prim": "natural"}]}), "extra.json")
        store.add(reg, fetchable=True)
        self.assertIn("foo.count", reg)
        self.assertIn("source.ip4", reg)
        self.assertIs(store.get("http://example.org/extra"), reg)
        self.assertTrue(store.fetchable("http://example.org/extra"))
        self.assertFalse(store.fetchable(m.CORE_REGISTRY_URI))

    def test_registry_including_an_unknown_registry_is_refused(self) -> None:
        with self.assertRaises(m.ModelError) as cm:
            m.RegistryStore().parse(json.dumps({"registry-format": "mplane-0", "registry-uri": "http://x/y",
                                                "includes": ["/etc/passwd"], "elements": []}), "x.json")
        self.assertIn("unknown registry /etc/passwd", str(cm.exception))

    def test_unknown_registry_uri_without_fetcher(self) -> None:
        with self.assertRaises(m.ModelError) as cm:
            m.RegistryStore().get("http://example.org/none")
        self.assertIn("unknown registry", str(cm.exception))


# ---------------------------------------------------------------------------- properties

durations = st.integers(min_value=1, max_value=10 * 86400).map(lambda s: timedelta(seconds=s))
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC))
special = st.sampled_from([m.NOW])
CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (0, 6), (1, 12))


@st.composite
def whens(draw: st.DrawFn) -> m.When:
    a = draw(st.one_of(special, times, st.just(m.PAST)))
    form = draw(st.sampled_from(["point", "range", "duration"]))
    b = duration = None
    if form == "range":
        b = draw(st.one_of(st.just(m.FUTURE), times.filter(lambda t: not isinstance(a, datetime) or t >= a)))
        if a == m.PAST and b == m.FUTURE:
            b = m.NOW
    elif form == "duration" and a != m.PAST:
        duration = draw(durations)
    period = draw(st.one_of(st.none(), durations))
    if draw(st.booleans()) and a != m.PAST:
        inner_d = draw(st.one_of(st.none(), durations))
        inner_p = draw(st.one_of(st.none(), durations)) if inner_d is not None else None
        cron = None
        if period is None:
            cron = tuple(draw(st.one_of(st.just("*"), st.sets(st.integers(lo, hi), min_size=1, max_size=4).map(
                lambda v: ",".join(str(x) for x in sorted(v))))) for lo, hi in CRON_RANGES)
        return m.When(a, b, duration, period, True, cron, inner_d, inner_p)
    return m.When(a, b, duration, period)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@st.composite
def statements(draw: st.DrawFn) -> m.Statement:
    kind = draw(st.sampled_from(m.STATEMENT_KINDS + m.NOTIFICATION_KINDS))
    names = draw(st.lists(st.sampled_from(sorted(REG.core.elements)), max_size=5, unique=True))
    results = draw(st.lists(st.sampled_from(sorted(REG.core.elements)), max_size=5, unique=True))
    rows = draw(st.lists(st.lists(values, min_size=len(results), max_size=len(results)), max_size=3)) \
        if kind == "result" and results else []
    return m.Statement(
        kind=kind, verb=draw(st.sampled_from(m.VERBS)), label=draw(st.one_of(st.none(), labels)),
        token=draw(st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=8, max_size=32))),
        when=draw(whens()), link=draw(st.one_of(st.none(), st.just("https://localhost:8888/register/result"))),
        parameters={n: draw(values) for n in names}, metadata={}, results=results, resultvalues=rows,
    )


class RoundTripProperties(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(whens())
    def test_when_parse_of_render_is_identity(self, when: m.When) -> None:
        self.assertEqual(m.When.parse(str(when)), when)

    @settings(max_examples=200, deadline=None)
    @given(durations)
    def test_duration_parse_of_render_is_identity(self, d: timedelta) -> None:
        self.assertEqual(m.parse_duration(m.render_duration(d)), d)

    @settings(max_examples=100, deadline=None)
    @given(times)
    def test_time_parse_of_render_is_identity(self, t: datetime) -> None:
        self.assertEqual(m.parse_time(m.render_time(t)), t)

    @settings(max_examples=150, deadline=None)
    @given(statements())
    def test_message_parse_of_render_is_identity(self, stmt: m.Statement) -> None:
        again = m.parse_json(m.to_json(stmt))
        self.assertEqual(again, stmt)
        self.assertEqual(m.to_json(again), m.to_json(stmt))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(statements(), max_size=4))
    def test_envelope_round_trip(self, items: list[m.Statement]) -> None:
        env = m.Envelope(list(items), token="t1", label="batch")
        self.assertEqual(m.parse_json(m.to_json(env)), env)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=65535), min_size=1, max_size=5),
           st.integers(min_value=0, max_value=65535), st.integers(min_value=0, max_value=65535))
    def test_constraint_render_parse_and_membership(self, items: list[int], lo: int, hi: int) -> None:
        elem = REG.core.element("destination.port")
        for c in (m.parse_constraint(elem, ",".join(map(str, items))),
                  m.parse_constraint(elem, f"{lo} ... {hi}")):
            self.assertEqual(m.parse_constraint(elem, str(c)), c)
        self.assertTrue(m.parse_constraint(elem, ",".join(map(str, items))).met_by(items[0]))
        self.assertTrue(m.parse_constraint(elem, f"{lo} ... {hi}").met_by(min(lo, hi)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
message_keys = st.sampled_from([*m.KINDS, "version", "when", "parameters", "results", "resultvalues", "contents",
                                "token", "label", "registry", "metadata", "link", "message"])


class HostileInputProperties(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(m.KINDS), st.sampled_from(m.VERBS) | json_values,
           st.dictionaries(message_keys, json_values, max_size=6))
    def test_any_json_object_parses_or_raises_model_error(self, kind: str, verb: object,
                                                          doc: dict[str, object]) -> None:
        doc = {kind: verb, **{k: v for k, v in doc.items() if k not in m.KINDS}}
        try:
            msg = m.from_dict(doc)
        except m.ModelError:
            return
        m.to_json(msg)  # whatever parsed can be rendered again
