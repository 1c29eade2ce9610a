"""The client-initiated workflow: a ccnet component that listens for specifications."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ccnet.mplane.client import SDK_PATHS, MPlaneClient, MPlaneError
from tests.support import test_pki
from tests.test_mplane_component_support import Component, client_for, wait_until
from tests.test_mplane_support import Supervisor, material

USERS = "IT.ccnet.Clients.client: guest\nIT.ccnet.Supervisors.supervisor: supervisor\n"
CAPS = "ping-average: guest, supervisor\nping-detail: supervisor\n"


class ListeningComponentTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.folder = Path(self.mktemp()).resolve()
        self.folder.mkdir(parents=True)
        (self.folder / "users.conf").write_text(USERS)
        (self.folder / "caps.conf").write_text(CAPS)
        self.comp = Component(self.folder / "comp", None, extra=f"""\
            listen = ssl:0:interface=127.0.0.1
            users = {self.folder / 'users.conf'}
            caps = {self.folder / 'caps.conf'}
            """)
        yield self.comp.start()
        self.addCleanup(self.comp.stop)
        yield self.comp.listeners[0].listening
        self.url = f"https://localhost:{self.comp.listener_port()}"

    def client(self, name: str = "client") -> MPlaneClient:
        c = MPlaneClient(reactor, self.url, material(test_pki(), name), SDK_PATHS)
        self.addCleanup(c.close)
        return c

    @defer.inlineCallbacks
    def test_client_sees_only_what_its_roles_allow_and_runs_it_directly(self) -> Any:
        client = self.client()
        caps = yield defer.ensureDeferred(client.capabilities())
        self.assertEqual([c.label for c in caps], ["ping-average-ip4"])
        self.assertEqual(caps[0].link, f"{self.url}/")
        receipt = yield defer.ensureDeferred(client.run("ping-average-ip4", "now + 2s / 1s",
                                                        {"destination.ip4": "127.0.0.1"}))
        self.assertEqual(receipt.kind, "receipt")
        result = yield defer.ensureDeferred(client.watch(receipt, timeout=20))
        self.assertEqual(result.kind, "result", result)
        self.assertEqual(result.resultvalues[0][3], "2")

    @defer.inlineCallbacks
    def test_capability_not_allowed_to_the_peer_is_refused(self) -> Any:
        client = self.client()
        cap = self.comp.core.offers[1].capability  # ping-detail-ip4: supervisor only
        spec = client.specification(cap, "now + 1s / 1s", {"destination.ip4": "127.0.0.1"})
        with self.assertRaises(MPlaneError) as ctx:
            yield defer.ensureDeferred(client.submit(spec))
        self.assertIn("no capability", str(ctx.exception))

    @defer.inlineCallbacks
    def test_component_checks_constraints_itself(self) -> Any:
        client = self.client()
        cap = self.comp.core.offers[0].capability
        spec = client.specification(cap, "now + 1s / 1s", {"destination.ip4": "127.0.0.1"})
        spec.parameters["destination.ip4"] = "192.0.2.1"
        with self.assertRaises(MPlaneError) as ctx:
            yield defer.ensureDeferred(client.submit(spec.with_token()))
        self.assertIn("violates constraint", str(ctx.exception))
        self.assertEqual(self.comp.core.scheduler.jobs, {})

    @defer.inlineCallbacks
    def test_another_peer_cannot_redeem_my_receipt(self) -> Any:
        receipt = yield defer.ensureDeferred(self.client().run("ping-average-ip4", "now + 1s / 1s",
                                                               {"destination.ip4": "127.0.0.1"}))
        with self.assertRaises(MPlaneError) as ctx:
            yield defer.ensureDeferred(self.client("admin").result(receipt))
        self.assertIn("Unknown job", str(ctx.exception))

    @defer.inlineCallbacks
    def test_another_subject_with_the_same_dotted_identity_cannot_reach_my_measurements(self) -> Any:
        receipt = yield defer.ensureDeferred(self.client().run("ping-average-ip4", "now + 1s / 1s",
                                                               {"destination.ip4": "127.0.0.1"}))
        # /C=IT/O=ccnet/CN=Clients.client joins to the client's dotted identity IT.ccnet.Clients.client.
        pki = test_pki()
        if not pki.cert("lookalike-client").exists():
            pki.pki.issue("client", "lookalike-client", subject="/C=IT/O=ccnet/CN=Clients.client")
        with self.assertRaises(MPlaneError) as ctx:
            yield defer.ensureDeferred(self.client("lookalike-client").result(receipt))
        self.assertIn("belongs to another certificate subject", str(ctx.exception))
        with self.assertRaises(MPlaneError):
            yield defer.ensureDeferred(self.client("lookalike-client").capabilities())
        result = yield defer.ensureDeferred(self.client().watch(receipt, timeout=20))
        self.assertEqual(result.kind, "result", result)

    @defer.inlineCallbacks
    def test_ccnet_supervisor_drives_the_listening_component(self) -> Any:
        sup = Supervisor(self.folder / "sup", users="IT.ccnet.Clients.client: guest\n", caps="ping: guest\n",
                         components=(f"{self.url}/",), component_refresh=1.0, redeem_interval=0.1)
        yield sup.start()
        self.addCleanup(sup.stop)
        yield wait_until(lambda: len(sup.state.capabilities) == 2, "the supervisor to pull capabilities")
        client = client_for(sup)
        self.addCleanup(client.close)
        receipt = yield defer.ensureDeferred(client.run("ping-detail-ip4", "now + 2s / 1s",
                                                        {"destination.ip4": "127.0.0.1"}))
        result = yield defer.ensureDeferred(client.watch(receipt, timeout=20))
        self.assertEqual(result.kind, "result", result)
        self.assertEqual(len(result.resultvalues), 2)
