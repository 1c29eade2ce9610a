"""The supervisor over real mutual TLS: component side, client side, authorization, persistence."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from ccnet.mplane.model import Envelope, ExceptionMessage, Statement, parse_json
from tests.test_mplane_support import CALLBACK_CAP, PING_CAP, Peer, Supervisor, envelope

USERS = """\
IT.ccnet.Clients.client: guest
IT.ccnet.Clients.admin: admin
IT.ccnet.Components.component: probe
IT.ccnet.Supervisors.supervisor: probe
"""
CAPS = """\
ping-average: guest
secret-probe: admin
"""

SPEC = {
    "specification": "measure", "version": 1, "registry": "http://ict-mplane.eu/registry/core",
    "label": "ping-average-ip4-0", "token": "c0ffee00c0ffee00c0ffee00c0ffee00", "when": "now + 2s / 1s",
    "parameters": {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"},
    "results": ["delay.twoway.icmp.us.min", "delay.twoway.icmp.us.mean",
                "delay.twoway.icmp.us.max", "delay.twoway.icmp.count"],
}


def result_for(spec: Statement) -> dict[str, Any]:
    d = spec.derive("result", when=spec.when).to_dict()
    d["when"] = "2026-11-24 10:00:00.000000 ... 2026-11-24 10:00:02.000000"
    d["resultvalues"] = [["30", "45", "60", "2"]]
    d.pop("link", None)
    return d


class SupervisorTestBase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start(self, folder: str = "sup", **kw: Any) -> Any:
        kw.setdefault("users", USERS)
        kw.setdefault("caps", CAPS)
        sup = Supervisor(Path(self.mktemp()) if folder == "sup" else Path(folder), **kw)
        yield sup.start()
        self.addCleanup(sup.stop)
        self.sup = sup
        self.client = Peer(sup, "client")
        self.admin = Peer(sup, "admin")
        self.component = Peer(sup, "component")
        return sup

    @defer.inlineCallbacks
    def register(self, peer: Peer | None = None, *caps: dict[str, Any]) -> Any:
        peer = peer or self.component
        code, _, body = yield peer.request("POST", "register/capability", envelope(*(caps or (PING_CAP,))))
        self.assertEqual(code, 200, body)
        return json.loads(body)

    @defer.inlineCallbacks
    def submit(self, spec: dict[str, Any] | None = None, peer: Peer | None = None, path: str = "register/specification") -> Any:
        code, msg, body = yield (peer or self.client).message("POST", path, spec or SPEC)
        self.assertEqual(code, 200, body)
        return msg

    @defer.inlineCallbacks
    def poll(self, peer: Peer | None = None, path: str = "show/specification") -> Any:
        code, msg, body = yield (peer or self.component).message("GET", path)
        self.assertEqual(code, 200, body)
        self.assertIsInstance(msg, Envelope)
        return msg


class ComponentSideTests(SupervisorTestBase):
    @defer.inlineCallbacks
    def test_registration_answers_per_label_like_the_sdk_supervisor(self) -> Any:
        yield self.start()
        outcome = yield self.register(None, PING_CAP, CALLBACK_CAP,
                                      {"exception": None, "message": "not a capability"})
        self.assertEqual(outcome["ping-average-ip4"], {"registered": "ok"})
        self.assertEqual(outcome["callback"], {"registered": "ok"})
        self.assertEqual(outcome["message-2"]["registered"], "no")

    @defer.inlineCallbacks
    def test_unknown_registry_element_is_refused_with_its_name(self) -> Any:
        yield self.start()
        bad = copy.deepcopy(PING_CAP)
        bad["label"] = "bogus"
        bad["results"] = ["delay.twoway.icmp.us.min", "no.such.element"]
        outcome = yield self.register(None, bad)
        self.assertEqual(outcome["bogus"]["registered"], "no")
        self.assertIn("no.such.element", outcome["bogus"]["reason"])

    @defer.inlineCallbacks
    def test_duplicate_registration_is_idempotent(self) -> Any:
        yield self.start()
        yield self.register()
        yield self.register()
        code, msg, _ = yield self.client.message("GET", "capability")
        self.assertEqual([c.label for c in msg.contents], ["ping-average-ip4"])

    @defer.inlineCallbacks
    def test_wrong_content_type_is_400_invalid_format(self) -> Any:
        yield self.start()
        code, ctype, body = yield self.component.request(
            "POST", "register/capability", json.dumps(envelope(PING_CAP)).encode(), content_type="application/json")
        self.assertEqual(code, 400)
        self.assertIn(b"Invalid format", body)

    @defer.inlineCallbacks
    def test_bad_json_is_400_with_an_mplane_exception(self) -> Any:
        yield self.start()
        code, msg, body = yield self.component.message("POST", "register/capability", b"{not json")
        self.assertEqual(code, 400)
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertIn("not JSON", msg.message)

    @defer.inlineCallbacks
    def test_a_duration_beyond_python_s_range_is_400_not_500(self) -> Any:
        yield self.start()
        yield self.register()
        for when in ("now + 99999999999999d", "now + 1s / 99999999999999999s"):
            code, msg, body = yield self.client.message("POST", "register/specification", dict(SPEC, when=when))
            self.assertEqual(code, 400, body)
            self.assertIsInstance(msg, ExceptionMessage)
            self.assertIn("duration", msg.message)
        # A duration that parses but ends after datetime's last day: open-ended, as "future".
        code, msg, body = yield self.client.message("POST", "register/specification",
                                                    dict(SPEC, when="now + 999999999d / 1s"))
        self.assertEqual(code, 200, body)
        self.assertEqual(msg.kind, "receipt")

    @defer.inlineCallbacks
    def test_withdrawal_removes_the_capability_for_clients(self) -> Any:
        yield self.start()
        yield self.register()
        withdrawal = dict(PING_CAP, withdrawal="measure")
        del withdrawal["capability"]
        code, _, body = yield self.component.request("POST", "register/result", withdrawal)
        self.assertEqual((code, json.loads(body)), (200, {"withdrawn": 1}))
        _, env, _ = yield self.client.message("GET", "capability")
        self.assertEqual(env.contents, [])

    @defer.inlineCallbacks
    def test_poll_before_registering_asks_to_register_with_428(self) -> Any:
        yield self.start()
        code, _, _ = yield self.component.request("GET", "show/specification")
        self.assertEqual(code, 428)

    @defer.inlineCallbacks
    def test_component_role_restricts_registration(self) -> Any:
        yield self.start(component_role="probe")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        code, _, _ = yield self.client.request("POST", "register/capability", envelope(PING_CAP))
        self.assertEqual(code, 403)
        # The access log has the request; the supervisor's own line says why it was refused.
        refusals = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertRegex(refusals[0], r"^mPlane POST /register/capability by \S+client refused: 403 .*may not register")
        yield self.register()


class WorkflowTests(SupervisorTestBase):
    @defer.inlineCallbacks
    def test_spec_to_result_round_trip_keeps_labels_apart(self) -> Any:
        yield self.start()
        yield self.register()
        receipt = yield self.submit()
        self.assertEqual(receipt.kind, "receipt")
        self.assertEqual(receipt.token, SPEC["token"])
        self.assertEqual(receipt.label, "ping-average-ip4-0")
        env = yield self.poll()
        [spec] = env.contents
        # The component sees its own label, a fresh token and the link for results.
        self.assertEqual(spec.kind, "specification")
        self.assertEqual(spec.label, "ping-average-ip4")
        self.assertNotEqual(spec.token, SPEC["token"])
        self.assertTrue(spec.link.endswith("/register/result"))
        # Not ready yet: the redemption gives the receipt back.
        redemption = dict(SPEC, redemption="measure")
        del redemption["specification"]
        _, again, _ = yield self.client.message("POST", "show/result", redemption)
        self.assertEqual(again.kind, "receipt")
        code, _, _ = yield self.component.request("POST", "register/result", result_for(spec))
        self.assertEqual(code, 200)
        _, result, _ = yield self.client.message("POST", "show/result", redemption)
        self.assertEqual(result.kind, "result")
        self.assertEqual(result.token, SPEC["token"])
        self.assertEqual(result.label, "ping-average-ip4-0")
        self.assertEqual(result.resultvalues, [["30", "45", "60", "2"]])
        # The SDK client redeems by POSTing to the server root (or /capability).
        _, result, _ = yield self.client.message("POST", "/", redemption)
        self.assertEqual(result.kind, "result")
        # RI-style GET show/result lists it too.
        _, listing, _ = yield self.client.message("GET", "show/result")
        self.assertEqual([m.token for m in listing.contents], [SPEC["token"]])

    @defer.inlineCallbacks
    def test_long_poll_hands_over_a_spec_the_moment_it_arrives(self) -> Any:
        yield self.start(long_poll=10.0)
        yield self.register(None, PING_CAP, CALLBACK_CAP)
        polling = self.poll()
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(polling.called)
        started = reactor.seconds()
        yield self.submit()
        env = yield polling
        self.assertLess(reactor.seconds() - started, 2.0)
        kinds = [(m.kind, m.label) for m in env.contents]
        # The callback spec comes last: the SDK component stops reading at it.
        self.assertEqual(kinds, [("specification", "ping-average-ip4"), ("specification", "callback")])
        self.assertEqual(str(env.contents[-1].when), "now + 0s")

    @defer.inlineCallbacks
    def test_component_may_ask_for_a_long_poll_with_wait(self) -> Any:
        yield self.start(long_poll=10.0)
        yield self.register()
        polling = self.poll(path="show/specification?wait=5")
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(polling.called)
        yield self.submit()
        env = yield polling
        self.assertEqual([m.label for m in env.contents], ["ping-average-ip4"])

    @defer.inlineCallbacks
    def test_abandoned_long_poll_is_forgotten(self) -> Any:
        yield self.start(long_poll=10.0)
        yield self.register()
        polling = treq.get(self.sup.url("show/specification?wait=5"), agent=self.component.agent)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.sup.state._listeners), 1)
        polling.cancel()
        yield polling.addErrback(lambda _: None)
        for _ in range(50):
            if not self.sup.state._listeners:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.sup.state._listeners, {})
        # Work submitted now waits for the next poll instead of vanishing.
        yield self.submit()
        env = yield self.poll()
        self.assertEqual(len(env.contents), 1)

    @defer.inlineCallbacks
    def test_spec_without_receipt_is_handed_over_again(self) -> Any:
        yield self.start()
        yield self.register()
        yield self.submit()
        first = yield self.poll()
        self.assertEqual(len(first.contents), 1)
        empty = yield self.poll()
        self.assertEqual(empty.contents, [])
        for m in self.sup.state.measurements.values():
            m.updated -= 60
        # (the claim reads "handed over a while ago" from the store: a second supervisor
        # daemon on the same database must agree)
        yield self.sup.store.run("UPDATE mplane_measurement SET updated = updated - 60")
        again = yield self.poll()
        self.assertEqual([m.token for m in again.contents], [first.contents[0].token])

    @defer.inlineCallbacks
    def test_component_without_callback_gets_an_immediate_empty_envelope(self) -> Any:
        yield self.start(long_poll=10.0)
        yield self.register()
        env = yield self.poll()
        self.assertEqual(env.contents, [])

    @defer.inlineCallbacks
    def test_constraint_mismatch_names_parameter_and_constraint(self) -> Any:
        yield self.start()
        yield self.register()
        bad = copy.deepcopy(SPEC)
        bad["parameters"]["source.ip4"] = "10.9.9.9"
        msg = yield self.submit(bad)
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertIn("source.ip4", msg.message)
        self.assertIn("127.0.0.1", msg.message)

    @defer.inlineCallbacks
    def test_period_shorter_than_capability_is_rejected(self) -> Any:
        yield self.start()
        yield self.register()
        bad = dict(SPEC, when="now + 2s", token="ab" * 16)
        msg = yield self.submit(bad)
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertIn("period", msg.message)

    @defer.inlineCallbacks
    def test_repeated_spec_results_come_back_as_the_components_envelope(self) -> Any:
        yield self.start()
        yield self.register()
        spec = dict(SPEC, when="repeat now + 1m / 30s { now + 2s / 1s }", token="e" * 32)
        yield self.submit(spec)
        env = yield self.poll()
        sent = env.contents[0]
        results = envelope(result_for(sent), result_for(sent))
        results.update(token=sent.token, label=sent.label, when="2026-11-24 10:00:00.000000 ... 2026-11-24 10:01:00.000000")
        code, _, _ = yield self.component.request("POST", "register/result", results)
        self.assertEqual(code, 200)
        _, reply, _ = yield self.client.message("GET", f"show/result?token={'e' * 32}")
        self.assertIsInstance(reply, Envelope)
        self.assertEqual((reply.token, reply.label), ("e" * 32, "ping-average-ip4-0"))
        self.assertEqual(len(reply.contents), 2)

    @defer.inlineCallbacks
    def test_interrupt_reaches_the_component(self) -> Any:
        yield self.start()
        yield self.register()
        yield self.submit()
        yield self.poll()
        interrupt = dict(SPEC, interrupt="measure")
        del interrupt["specification"]
        _, reply, _ = yield self.client.message("POST", "register/specification", interrupt)
        self.assertEqual(reply.kind, "receipt")
        env = yield self.poll()
        self.assertEqual([m.kind for m in env.contents], ["interrupt"])

    @defer.inlineCallbacks
    def test_result_for_someone_elses_measurement_is_refused(self) -> Any:
        yield self.start()
        yield self.register()
        yield self.register(Peer(self.sup, "supervisor"), PING_CAP)
        yield self.submit()
        env = yield self.poll()
        spec = env.contents[0]
        # The other component may not answer for it.
        code, _, _ = yield Peer(self.sup, "supervisor").request("POST", "register/result", result_for(spec))
        self.assertEqual(code, 403)


class AuthorizationTests(SupervisorTestBase):
    @defer.inlineCallbacks
    def test_another_subject_with_the_same_dotted_identity_is_refused(self) -> Any:
        yield self.start()
        yield self.register()
        # /C=IT/O=ccnet/CN=Components.component joins to the component's dotted identity.
        if not self.sup.pki.cert("lookalike").exists():
            self.sup.pki.pki.issue("component", "lookalike", subject="/C=IT/O=ccnet/CN=Components.component")
        lookalike = Peer(self.sup, "lookalike")
        self.assertEqual(lookalike.identity, self.component.identity)
        code, _, _ = yield lookalike.request("GET", "show/specification")
        self.assertEqual(code, 403)
        code, _, _ = yield lookalike.request("POST", "register/capability", envelope(PING_CAP))
        self.assertEqual(code, 403)
        yield self.poll()  # the real component is still served

    @defer.inlineCallbacks
    def test_forged_identity_header_is_ignored(self) -> Any:
        yield self.start()
        yield self.register(None, PING_CAP, dict(PING_CAP, label="secret-probe"))
        resp = yield treq.get(self.sup.url("capability"), agent=self.client.agent,
                              headers={"Forged-MPlane-Identity": ["IT.ccnet.Clients.admin"]})
        env = parse_json((yield resp.content()))
        self.assertEqual([c.label for c in env.contents], ["ping-average-ip4"])

    @defer.inlineCallbacks
    def test_client_sees_only_capabilities_its_roles_allow(self) -> Any:
        yield self.start()
        secret = dict(PING_CAP, label="secret-probe")
        yield self.register(None, PING_CAP, secret)
        _, env, _ = yield self.client.message("GET", "capability")
        self.assertEqual([c.label for c in env.contents], ["ping-average-ip4"])
        _, env, _ = yield self.admin.message("GET", "capability")
        self.assertEqual(sorted(c.label for c in env.contents), ["ping-average-ip4", "secret-probe"])

    @defer.inlineCallbacks
    def test_reload_rereads_the_caps_file(self) -> Any:
        yield self.start()
        yield self.register(None, dict(PING_CAP, label="secret-probe"))
        _, env, _ = yield self.client.message("GET", "capability")
        self.assertEqual(env.contents, [])
        (self.sup.folder / "caps.conf").write_text("ping-average: guest\nsecret-probe: guest\n")
        for hook in self.sup.runtime.reload_hooks:
            hook()
        _, env, _ = yield self.client.message("GET", "capability")
        self.assertEqual([c.label for c in env.contents], ["secret-probe"])

    @defer.inlineCallbacks
    def test_denied_specification_gets_an_exception_not_a_receipt(self) -> Any:
        yield self.start()
        yield self.register(None, dict(PING_CAP, label="secret-probe"))
        msg = yield self.submit(dict(SPEC, label="secret-probe-0"))
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertEqual(self.sup.state.measurements, {})

    @defer.inlineCallbacks
    def test_clients_never_see_each_others_results(self) -> Any:
        yield self.start(caps="ping-average: guest, admin\n")
        yield self.register()
        yield self.submit()
        env = yield self.poll()
        yield self.component.request("POST", "register/result", result_for(env.contents[0]))
        redemption = {"redemption": "measure", "version": 1, "token": SPEC["token"]}
        other = Peer(self.sup, "supervisor")  # no client role at all
        _, msg, _ = yield other.message("POST", "show/result", redemption)
        self.assertIsInstance(msg, ExceptionMessage)
        _, listing, _ = yield other.message("GET", "show/result")
        self.assertEqual(listing.contents, [])

    @defer.inlineCallbacks
    def test_same_label_from_two_components_is_offered_distinctly(self) -> Any:
        yield self.start()
        yield self.register()
        yield self.register(Peer(self.sup, "supervisor"), PING_CAP)
        _, env, _ = yield self.client.message("GET", "capability")
        labels = sorted(c.label for c in env.contents)
        self.assertEqual(labels, ["ping-average-ip4@IT.ccnet.Components.component",
                                  "ping-average-ip4@IT.ccnet.Supervisors.supervisor"])
        self.assertEqual(len({c.token for c in env.contents}), 2)
        # Post to the second capability's link: only that component gets it, under the plain label.
        target = [c for c in env.contents if c.label.endswith("supervisor")][0]
        path = target.link.split("/", 3)[3]
        yield self.submit(dict(SPEC, label=target.label + "-0"), path=path)
        env1 = yield self.poll()
        env2 = yield self.poll(Peer(self.sup, "supervisor"))
        self.assertEqual(env1.contents, [])
        self.assertEqual([m.label for m in env2.contents], ["ping-average-ip4"])

    @defer.inlineCallbacks
    def test_operator_view_lists_components_for_admin_only_what_a_client_may_see(self) -> Any:
        yield self.start()
        yield self.register(None, PING_CAP, dict(PING_CAP, label="secret-probe"))
        code, ctype, body = yield self.admin.request("GET", "/")
        self.assertEqual(code, 200)
        self.assertIn(b"secret-probe", body)
        self.assertIn(b"IT.ccnet.Components.component", body)
        code, ctype, body = yield self.client.request("GET", "api/status")
        status = json.loads(body)
        self.assertEqual([c["label"] for c in status["capabilities"]], ["ping-average-ip4"])


class PersistenceTests(SupervisorTestBase):
    @defer.inlineCallbacks
    def restarted_after(self, work: Callable[[Supervisor], Any]) -> Any:
        """A supervisor with a registration and a submission, then ``work(it)``, stopped and
        started again on the same folder; fires with the new one."""
        folder = Path(self.mktemp())
        sup = Supervisor(folder, users=USERS, caps=CAPS)
        yield sup.start()
        self.sup = sup
        self.client, self.component = Peer(sup, "client"), Peer(sup, "component")
        yield self.register()
        yield self.submit()
        yield work(sup)
        yield sup.stop()
        again = Supervisor(folder, users=USERS, caps=CAPS)
        yield again.start()
        self.addCleanup(again.stop)
        return again

    @defer.inlineCallbacks
    def test_result_survives_a_restart(self) -> Any:
        @defer.inlineCallbacks
        def answer(sup: Supervisor) -> Any:
            env = yield self.poll()
            yield self.component.request("POST", "register/result", result_for(env.contents[0]))

        again = yield self.restarted_after(answer)
        client = Peer(again, "client")
        _, msg, _ = yield client.message("GET", f"show/result?token={SPEC['token']}")
        self.assertEqual(msg.kind, "result")
        self.assertEqual(msg.resultvalues, [["30", "45", "60", "2"]])
        _, caps, _ = yield client.message("GET", "capability")
        self.assertEqual([c.label for c in caps.contents], ["ping-average-ip4"])

    @defer.inlineCallbacks
    def test_an_unreadable_stored_measurement_is_left_out_not_fatal(self) -> Any:
        # A row this version cannot read (a newer daemon's during an upgrade, a hand edit)
        # must not keep the supervisor from opening, nor a cluster refresh from applying.
        again = yield self.restarted_after(
            lambda sup: sup.store.run("UPDATE mplane_measurement SET spec = ?", ("{not json",)))
        self.assertEqual(again.state.measurements, {})
        _, caps, _ = yield Peer(again, "client").message("GET", "capability")
        self.assertEqual([c.label for c in caps.contents], ["ping-average-ip4"])
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class PostgreSQLPersistenceTests(SupervisorTestBase):
    """The same restart, with the state in PostgreSQL (the scale-out option)."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from ccnet.store import Store
        from tests.support import PG_DSN

        store = Store.open(PG_DSN, reactor)
        try:
            yield store.run("SELECT 1")
        except Exception as exc:
            yield store.close()
            raise unittest.SkipTest(f"PostgreSQL not reachable at {PG_DSN}: {exc}") from None
        for table in ("mplane_measurement", "mplane_capability", "mplane_component"):
            yield store.run(f"DROP TABLE IF EXISTS {table}")
        yield store.run("CREATE TABLE IF NOT EXISTS ccnet_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        yield store.run("DELETE FROM ccnet_schema WHERE component = ?", ("mplane",))
        yield store.close()
        self.dsn = PG_DSN

    @defer.inlineCallbacks
    def test_result_survives_a_restart_with_postgresql(self) -> Any:
        folder = Path(self.mktemp())
        sup = Supervisor(folder, users=USERS, caps=CAPS, store_url=self.dsn)
        yield sup.start()
        self.client, self.component = Peer(sup, "client"), Peer(sup, "component")
        self.sup = sup
        yield self.register()
        yield self.submit()
        env = yield self.poll()
        yield self.component.request("POST", "register/result", result_for(env.contents[0]))
        yield sup.stop()
        again = Supervisor(folder, users=USERS, caps=CAPS, store_url=self.dsn)
        yield again.start()
        self.addCleanup(again.stop)
        _, msg, _ = yield Peer(again, "client").message("GET", f"show/result?token={SPEC['token']}")
        self.assertEqual(msg.kind, "result")


class ExpiryTests(SupervisorTestBase):
    @defer.inlineCallbacks
    def test_old_results_are_deleted_after_result_expiry(self) -> Any:
        yield self.start(result_expiry=3600.0)
        yield self.register()
        yield self.submit()
        env = yield self.poll()
        yield self.component.request("POST", "register/result", result_for(env.contents[0]))
        state = self.sup.state
        self.assertEqual((yield state.expire()), 0)
        for m in state.measurements.values():
            m.updated -= 7200
        self.assertEqual((yield state.expire()), 1)
        _, msg, _ = yield self.client.message("GET", f"show/result?token={SPEC['token']}")
        self.assertIsInstance(msg, ExceptionMessage)
        rows = yield self.sup.store.run("SELECT COUNT(*) FROM mplane_measurement")
        self.assertEqual(rows, [(0,)])


class DaemonRestartTests(SupervisorTestBase):
    """The real daemon (twistd -n ccnet): stop it, start it again, the result is still redeemable."""

    timeout = 120

    @defer.inlineCallbacks
    def test_result_is_redeemable_after_daemon_restart(self) -> Any:
        import textwrap

        from twisted.internet.threads import deferToThread

        from tests.support import free_port, start_daemon, test_pki
        from tests.test_mplane_support import Endpoint

        folder = Path(self.mktemp()).resolve()
        folder.mkdir(parents=True)
        (folder / "users.conf").write_text(USERS)
        (folder / "caps.conf").write_text(CAPS)
        pki = test_pki()
        port = free_port()
        conf = textwrap.dedent(f"""\
            [ccnet]
            state-dir = {folder / 'var'}
            [tls]
            ca = {pki.ca_cert}
            cert = {pki.cert('supervisor')}
            key = {pki.key('supervisor')}
            [supervisor]
            listen = ssl:{port}:interface=127.0.0.1
            users = {folder / 'users.conf'}
            caps = {folder / 'caps.conf'}
            """)
        daemon = yield deferToThread(start_daemon, conf, folder / "run")
        self.addCleanup(daemon.stop)
        fake = Endpoint(port)
        self.sup = fake  # type: ignore[assignment]
        self.client, self.component = Peer(fake, "client"), Peer(fake, "component")
        yield self.register()
        yield self.submit()
        env = yield self.poll()
        code, _, _ = yield self.component.request("POST", "register/result", result_for(env.contents[0]))
        self.assertEqual(code, 200)
        yield deferToThread(daemon.stop)
        again = yield deferToThread(start_daemon, conf, folder / "run")
        self.addCleanup(again.stop)
        _, msg, _ = yield Peer(fake, "client").message("GET", f"show/result?token={SPEC['token']}")
        self.assertEqual(msg.kind, "result")
        self.assertEqual(msg.resultvalues, [["30", "45", "60", "2"]])


class CapabilityTableTests(unittest.TestCase):
    """The supervisor's capabilities by key, with each component's keys beside them."""

    @staticmethod
    def cap(key: str, component: str) -> Any:
        from ccnet.mplane.model import from_dict
        from ccnet.mplane.state import Capability

        return Capability(key, component, "ping", from_dict(PING_CAP), 0.0)  # type: ignore[arg-type]

    def test_a_components_capabilities_are_found_replaced_and_removed_by_component(self) -> None:
        from ccnet.mplane.state import CapabilityTable

        table = CapabilityTable()
        for key, comp in (("a1", "A"), ("b1", "B"), ("a2", "A")):
            table.put(self.cap(key, comp))
        self.assertEqual([c.key for c in table.of("A")], ["a1", "a2"])
        self.assertEqual(sorted(table), ["a1", "a2", "b1"])
        self.assertEqual(len(table), 3)
        table.put(self.cap("a1", "B"))  # the same key now B's: no longer listed under A
        self.assertEqual([c.key for c in table.of("A")], ["a2"])
        self.assertEqual(sorted(c.key for c in table.of("B")), ["a1", "b1"])
        self.assertEqual(table.pop("a2").component, "A")  # type: ignore[union-attr]
        self.assertIsNone(table.pop("a2"))
        self.assertEqual(table.of("A"), [])
        self.assertNotIn("a2", table)
        self.assertEqual(table["b1"].component, "B")
