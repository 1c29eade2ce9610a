"""One supervisor, two wire dialects (SDK and RI fork), and what hostile or sloppy clients send.

The pure codec (``ccnet.mplane.dialect``) is tested without sockets; the rest talks to a real
supervisor over mutual TLS with raw bodies shaped exactly as the RI fork's code builds them
(``../shared/peers/mplane-ri``: ``tstat_proxy.register_to_supervisor``, ``client.do_runcap``).
"""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from ccnet.mplane import dialect as d
from ccnet.mplane import model as m
from tests.test_mplane_supervisor import SPEC, SupervisorTestBase, result_for
from tests.test_mplane_support import PING_CAP, envelope

CT = m.CONTENT_TYPE
REG = m.RegistryStore()

# A capability as the RI tstat proxy registers it (tstat_caps.tcp_flows_capability, shortened):
# RI elements, named with the core registry's URI, no parameters, no SDK-only element.
RI_TSTAT_CAP = {
    "capability": "measure", "version": 0, "registry": "http://ict-mplane.eu/registry/core",
    "label": "tstat-log_tcp_complete-core", "when": "now + inf ... future",
    "results": ["initiator.ip4", "initiator.port", "packets.forward", "bytes.forward", "duration.ms"],
    "metadata": {"System_type": "tStat", "System_ID": "tStat-Proxy", "System_version": "0.1"},
}
# An RI-only element ("delay.twoway.icmp.us.count" is the RI's spelling of the SDK's count).
RI_ONLY_CAP = {
    "capability": "measure", "version": 0, "registry": "http://ict-mplane.eu/registry/core",
    "label": "pinger_TI_test", "when": "now ... future / 1s",
    "parameters": {"destination.ip4": "*"},
    "results": ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.count"],
}

USERS = """\
IT.ccnet.Clients.client: guest
IT.ccnet.Clients.admin: admin
IT.ccnet.Components.component: probe
"""
CAPS = """\
ping-average: guest
tstat: guest
pinger: guest
"""


class CodecTests(unittest.TestCase):
    """The pure dialect layer: bodies in, messages out."""

    def test_array_registration_is_the_ri_dialect_and_bad_items_are_refused_alone(self) -> None:
        dialect, items = d.parse_registration([RI_TSTAT_CAP, {"capability": "dance", "label": "bad"}, 7])
        self.assertEqual(dialect, d.Dialect.RI)
        self.assertEqual([name for name, _ in items], ["tstat-log_tcp_complete-core", "bad", "message-2"])
        good, bad, junk = (item for _, item in items)
        assert isinstance(good, m.Statement)
        self.assertEqual(good.registry, m.RI_REGISTRY_URI)  # what the RI means by "core"
        self.assertIsInstance(bad, m.ModelError)
        self.assertIsInstance(junk, m.ModelError)

    def test_envelope_registration_is_the_sdk_dialect(self) -> None:
        dialect, items = d.parse_registration(envelope(PING_CAP))
        self.assertEqual(dialect, d.Dialect.SDK)
        ((name, cap),) = items
        self.assertEqual((name, cap.registry), ("ping-average-ip4", m.CORE_REGISTRY_URI))  # type: ignore[union-attr]

    def test_submission_keyed_by_component_is_the_ri_dialect(self) -> None:
        spec = dict(SPEC, registry=m.CORE_REGISTRY_URI)
        dialect, component, msg = d.parse_submission({"IT.ccnet.Components.component": spec})
        self.assertEqual((dialect, component), (d.Dialect.RI, "IT.ccnet.Components.component"))
        self.assertEqual(msg.registry, m.RI_REGISTRY_URI)  # type: ignore[union-attr]
        self.assertEqual(d.parse_submission(SPEC)[:2], (d.Dialect.SDK, None))

    def test_clients_see_only_what_their_registry_can_parse(self) -> None:
        ping = m.from_dict(PING_CAP)
        ri_tstat = d.from_wire(m.from_dict(RI_TSTAT_CAP), d.Dialect.RI)
        assert isinstance(ping, m.Statement) and isinstance(ri_tstat, m.Statement)
        # The SDK's count element is not in the RI registry: RI clients would crash on it.
        self.assertIsNone(d.for_client(ping, d.Dialect.RI, REG))
        self.assertEqual(d.for_client(ping, d.Dialect.SDK, REG).registry, m.CORE_REGISTRY_URI)  # type: ignore[union-attr]
        # tstat's elements are not in the SDK core: SDK clients would crash on them.
        self.assertIsNone(d.for_client(ri_tstat, d.Dialect.SDK, REG))
        shown = d.for_client(ri_tstat, d.Dialect.RI, REG)
        assert shown is not None
        self.assertEqual(shown.registry, m.CORE_REGISTRY_URI)
        self.assertIn("initiator.ip4", d.why_not_shown(ri_tstat, d.Dialect.SDK, REG))

    def test_to_wire_undoes_from_wire(self) -> None:
        cap = m.from_dict(RI_TSTAT_CAP)
        self.assertEqual(d.to_wire(d.from_wire(cap, d.Dialect.RI), d.Dialect.RI), cap)
        self.assertEqual(d.to_wire(d.from_wire(cap, d.Dialect.SDK), d.Dialect.SDK), cap)


class RIDialectTests(SupervisorTestBase):
    """Raw RI-shaped requests against the supervisor, next to SDK ones."""

    @defer.inlineCallbacks
    def start_both(self, **kw: Any) -> Any:
        yield self.start(users=USERS, caps=CAPS, **kw)
        comp_id = self.component.identity

        def ri_register(*caps: dict[str, Any]) -> Any:
            return self.component.request("POST", "register/capability", json.dumps(list(caps)).encode())
        self.ri_register = ri_register
        return comp_id

    @defer.inlineCallbacks
    def test_ri_component_registers_an_array_and_gets_the_ri_outcome_map(self) -> Any:
        yield self.start_both()
        code, ctype, body = yield self.ri_register(RI_TSTAT_CAP, {"capability": "measure", "label": "broken",
                                                                  "results": ["no.such.element"]})
        self.assertEqual((code, ctype), (200, CT))
        outcome = json.loads(body)
        self.assertEqual(outcome["tstat-log_tcp_complete-core"], {"registered": "ok"})
        self.assertEqual(outcome["broken"]["registered"], "no")
        self.assertIn("no.such.element", outcome["broken"]["reason"])

    @defer.inlineCallbacks
    def test_ri_listing_is_keyed_by_component_and_holds_only_what_the_ri_parses(self) -> Any:
        comp_id = yield self.start_both()
        yield self.register(None, PING_CAP)  # SDK envelope: the SDK's count element
        code, _, _ = yield self.ri_register(RI_TSTAT_CAP, RI_ONLY_CAP)
        self.assertEqual(code, 200)
        code, ctype, body = yield self.client.request("GET", "show/capability")
        self.assertEqual((code, ctype), (200, CT))
        listing = json.loads(body)
        self.assertEqual(list(listing), [comp_id])
        labels = sorted(c["label"] for c in listing[comp_id])
        # ping-average-ip4 uses delay.twoway.icmp.count, which the RI registry lacks.
        self.assertEqual(labels, ["pinger_TI_test", "tstat-log_tcp_complete-core"])
        self.assertTrue(all(c["registry"] == m.CORE_REGISTRY_URI for c in listing[comp_id]))
        # SDK clients see what the SDK core can parse: ping only (tstat's and the RI-only
        # element would make the SDK client fail on the whole envelope).
        _, env, _ = yield self.client.message("GET", "capability")
        self.assertEqual([c.label for c in env.contents], ["ping-average-ip4"])
        # ccnet's own client asks for everything, each in the registry it really uses.
        _, env, _ = yield self.client.message("GET", "capability?view=all")
        registries = {c.label: c.registry for c in env.contents}
        self.assertEqual(registries, {"ping-average-ip4": m.CORE_REGISTRY_URI,
                                      "pinger_TI_test": m.RI_REGISTRY_URI,
                                      "tstat-log_tcp_complete-core": m.RI_REGISTRY_URI})

    @defer.inlineCallbacks
    def test_ri_spec_round_trip_with_bare_statements(self) -> Any:
        comp_id = yield self.start_both()
        yield self.ri_register(RI_TSTAT_CAP)
        code, _, body = yield self.client.request("GET", "show/capability")
        (cap,) = json.loads(body)[comp_id]
        # The RI client's runcap: its spec, keyed by the component it was listed under.
        spec = {k: v for k, v in cap.items() if k not in ("capability", "token", "link")}
        spec.update({"specification": "measure", "when": "now + 1s"})
        code, ctype, body = yield self.client.request("POST", "register/specification", {comp_id: spec})
        self.assertEqual((code, ctype), (200, CT))
        receipt = json.loads(body)
        self.assertIn("receipt", receipt)
        self.assertEqual(receipt["registry"], m.CORE_REGISTRY_URI)
        # The RI proxy polls: a bare JSON array, its registry "core" again.
        code, ctype, body = yield self.component.request("GET", "show/specification")
        self.assertEqual((code, ctype), (200, CT))
        (sent,) = json.loads(body)
        self.assertEqual((sent["specification"], sent["registry"]), ("measure", m.CORE_REGISTRY_URI))
        result = {k: v for k, v in sent.items() if k not in ("specification", "link")}
        result.update({"result": "measure", "when": "2026-11-28 10:00:00.000000 ... 2026-11-28 10:00:01.000000",
                       "resultvalues": [["192.168.1.7", "443", "10", "1000", "2026-11-28 10:00:00.000000"]]})
        code, ctype, _ = yield self.component.request("POST", "register/result", result)
        self.assertEqual((code, ctype), (200, CT))
        code, ctype, body = yield self.client.request(
            "POST", "show/result", {"redemption": "measure", "version": 0, "registry": m.CORE_REGISTRY_URI,
                                    "token": receipt["token"], "label": receipt["label"], "when": receipt["when"]})
        self.assertEqual((code, ctype), (200, CT))
        got = json.loads(body)
        self.assertEqual((got["result"], got["token"], got["registry"]), ("measure", receipt["token"],
                                                                          m.CORE_REGISTRY_URI))
        self.assertEqual(got["resultvalues"][0][0], "192.168.1.7")

    @defer.inlineCallbacks
    def test_ri_poll_is_an_empty_array_and_is_held_until_work_arrives(self) -> Any:
        comp_id = yield self.start_both(long_poll=30.0)
        yield self.ri_register(RI_TSTAT_CAP)
        code, _, body = yield self.component.request("GET", "show/specification?wait=0")
        self.assertEqual((code, body), (200, b"[]"))
        # No ?wait: the RI proxy's own poll is held open, then answered by the submission.
        poll = self.component.request("GET", "show/specification")
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(poll.called)
        spec = dict(SPEC, label="tstat-log_tcp_complete-core", registry=m.CORE_REGISTRY_URI, when="now + 1s",
                    results=RI_TSTAT_CAP["results"])
        spec.pop("token")
        spec.pop("parameters")
        yield self.client.request("POST", "register/specification", {comp_id: spec})
        code, ctype, body = yield poll
        self.assertEqual((code, ctype), (200, CT))
        self.assertEqual([s["label"] for s in json.loads(body)], ["tstat-log_tcp_complete-core"])

    @defer.inlineCallbacks
    def test_ri_component_errors_carry_the_mplane_content_type(self) -> Any:
        yield self.start_both()
        yield self.ri_register(RI_TSTAT_CAP)
        code, ctype, body = yield self.component.request("POST", "register/result", b"{}", content_type="text/plain")
        self.assertEqual((code, ctype), (400, CT))
        self.assertIn("Invalid format", json.loads(body)["message"])
        code, ctype, _ = yield self.client.request("GET", "show/result?token=nothing")
        self.assertEqual(ctype, CT)

    @defer.inlineCallbacks
    def test_sdk_component_keeps_envelopes_beside_an_ri_component(self) -> Any:
        yield self.start_both()
        yield self.ri_register(RI_TSTAT_CAP)
        admin_comp = self.admin  # another identity, registering the SDK way
        code, _, _ = yield admin_comp.request("POST", "register/capability", envelope(PING_CAP))
        self.assertEqual(code, 200)
        code, msg, _ = yield admin_comp.message("GET", "show/specification")
        self.assertIsInstance(msg, m.Envelope)


class SubmissionTests(SupervisorTestBase):
    """Which submission is which measurement, and what is refused."""

    @defer.inlineCallbacks
    def component_answers(self, rows: list[list[str]]) -> Any:
        env = yield self.poll()
        (spec,) = [s for s in env.contents if s.label != "callback"]
        res = result_for(spec)
        res["resultvalues"] = rows
        code, _, _ = yield self.component.request("POST", "register/result", res)
        self.assertEqual(code, 200)
        return spec

    @defer.inlineCallbacks
    def test_same_relative_spec_twice_is_two_measurements_with_two_results(self) -> Any:
        yield self.start()
        yield self.register()
        spec = {k: v for k, v in SPEC.items() if k != "token"}
        spec["when"] = "now + 1s / 1s"
        first = yield self.submit(spec)
        yield self.component_answers([["1", "1", "1", "1"]])
        done = yield self.submit({"redemption": "measure", "token": first.token})
        self.assertEqual(done.resultvalues, [["1", "1", "1", "1"]])
        yield task.deferLater(reactor, 0.01, lambda: None)
        second = yield self.submit(spec)
        self.assertEqual(second.kind, "receipt")  # not the first result again
        self.assertNotEqual(second.token, first.token)
        sent = yield self.component_answers([["2", "2", "2", "2"]])
        self.assertNotIn(sent.token, (first.token, second.token))  # the component's own measurement id
        again = yield self.submit({"redemption": "measure", "token": second.token})
        self.assertEqual(again.resultvalues, [["2", "2", "2", "2"]])
        first_again = yield self.submit({"redemption": "measure", "token": first.token})
        self.assertEqual(first_again.resultvalues, [["1", "1", "1", "1"]])

    @defer.inlineCallbacks
    def test_retry_of_a_pending_absolute_spec_is_the_same_measurement(self) -> Any:
        yield self.start()
        yield self.register()
        spec = dict(SPEC, when="2099-01-01 00:00:00 + 2s / 1s")
        first = yield self.submit(spec)
        retry = yield self.submit(spec)
        self.assertEqual((retry.kind, retry.token), ("receipt", first.token))
        env = yield self.poll()
        self.assertEqual(len([s for s in env.contents if s.label != "callback"]), 1)  # handed over once
        # The same token with other parameters is another measurement, with its own token.
        other = yield self.submit(dict(spec, parameters={"destination.ip4": "127.0.0.2", "source.ip4": "127.0.0.1"}))
        self.assertEqual(other.kind, "receipt")
        self.assertNotEqual(other.token, first.token)

    @defer.inlineCallbacks
    def test_unknown_label_is_an_exception_not_another_capabilitys_receipt(self) -> Any:
        yield self.start()
        yield self.register(None, PING_CAP, dict(PING_CAP, label="ping-average-ip4-twin"))
        spec = dict(SPEC, label="no-such-measurement")
        spec.pop("token")
        msg = yield self.submit(spec)  # same schema as both ping capabilities, unknown label
        self.assertIsInstance(msg, m.ExceptionMessage)
        self.assertIn("no capability 'no-such-measurement'", msg.message)

    @defer.inlineCallbacks
    def test_deeply_nested_json_is_a_400_mplane_exception_and_the_supervisor_keeps_serving(self) -> Any:
        yield self.start()
        for path, peer in (("register/specification", self.client), ("register/capability", self.component),
                           ("register/result", self.component)):
            yield self.register()
            code, ctype, body = yield peer.request("POST", path, ("[" * 100000 + "]" * 100000).encode())
            self.assertEqual((code, ctype), (400, CT), path)
            self.assertIn("nested too deeply", json.loads(body)["message"])
            deep = '{"specification": "measure", "parameters": {"a": ' + "[" * 30000 + "]" * 30000 + "}}"
            code, ctype, body = yield peer.request("POST", path, deep.encode())
            self.assertIn(code, (200, 400), path)
            self.assertEqual(ctype, CT)
        code, _, _ = yield self.client.request("GET", "capability")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_string_version_is_refused(self) -> Any:
        yield self.start()
        yield self.register()
        code, ctype, body = yield self.client.request("POST", "register/specification", dict(SPEC, version="1"))
        self.assertEqual((code, ctype), (400, CT))
        self.assertIn("version must be a whole number", json.loads(body)["message"])


class RegistryRefusalTests(SupervisorTestBase):
    """A capability's registry is never opened or fetched because a peer named it."""

    @defer.inlineCallbacks
    def test_unknown_registries_are_refused_per_capability_and_nothing_is_opened(self) -> Any:
        yield self.start()
        folder = Path(self.mktemp())
        folder.mkdir()
        fifo = folder / "registry.fifo"
        os.mkfifo(fifo)
        plain = folder / "registry.json"
        plain.write_text(json.dumps(REG.core.to_dict()))
        caps = [dict(copy.deepcopy(PING_CAP), label=f"ping-{name}", registry=uri)
                for name, uri in (("fifo", str(fifo)), ("file", f"file://{plain}"), ("path", str(plain)),
                                  ("url", "http://127.0.0.1:9/registry.json"))]
        outcome = yield self.register(None, PING_CAP, *caps)
        self.assertEqual(outcome["ping-average-ip4"], {"registered": "ok"})
        for name in ("fifo", "file", "path", "url"):
            self.assertEqual(outcome[f"ping-{name}"]["registered"], "no", name)
            self.assertIn("unknown registry", outcome[f"ping-{name}"]["reason"])
        # Nobody holds the FIFO open for reading: a non-blocking writer finds no reader.
        with self.assertRaises(OSError) as cm:
            os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self.assertEqual(cm.exception.errno, errno.ENXIO)

    @defer.inlineCallbacks
    def test_operator_registry_file_is_known_and_shown_to_sdk_clients_only_when_core_fits(self) -> Any:
        folder = Path(self.mktemp()).absolute()
        folder.mkdir(parents=True)
        (folder / "extra.json").write_text(json.dumps({
            "registry-format": "mplane-0", "registry-uri": "http://example.org/extra",
            "includes": [m.CORE_REGISTRY_URI], "elements": [{"name": "foo.count", "prim": "natural"}]}))
        yield self.start(registries=(str(folder / "extra.json"),))
        cap = dict(copy.deepcopy(PING_CAP), label="ping-average-foo", registry="http://example.org/extra",
                   results=["foo.count"])
        outcome = yield self.register(None, cap)
        self.assertEqual(outcome["ping-average-foo"], {"registered": "ok"})
        _, env, _ = yield self.client.message("GET", "capability")
        self.assertEqual(env.contents, [])  # a file registry SDK clients cannot load
        _, env, _ = yield self.client.message("GET", "capability?view=all")
        self.assertEqual([c.label for c in env.contents], ["ping-average-foo"])
