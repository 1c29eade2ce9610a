"""The unmodified mPlane SDK 0.9 client driving ccnet components: through the ccnet
supervisor (component-initiated workflow) and directly (client-initiated workflow)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.support import test_pki
from tests.test_mplane_component_support import Component, wait_until
from tests.test_mplane_support import SDKPeerTest, Supervisor, run_sdk_client


class SDKClientTests(SDKPeerTest):

    def check_result(self, out: dict[str, Any]) -> dict[str, Any]:
        self.assertTrue(out["receipt"], out)
        self.assertEqual(out["kind"], "Result", out)
        result: dict[str, Any] = json.loads(out["result"])
        self.assertEqual(result["label"], "ping-average-ip4-0")
        (row,) = result["resultvalues"]
        self.assertEqual(int(row[3]), 2)
        self.assertTrue(0 < int(row[0]) <= int(row[2]))
        return result

    @defer.inlineCallbacks
    def test_sdk_client_runs_a_ccnet_component_through_the_ccnet_supervisor(self) -> Any:
        sup = Supervisor(self.folder / "sup", users="IT.ccnet.Clients.client: guest\n", caps="ping: guest\n",
                         long_poll=15.0)
        yield sup.start()
        self.addCleanup(sup.stop)
        comp = Component(self.folder / "comp", f"https://localhost:{sup.port}")
        yield comp.start()
        self.addCleanup(comp.stop)
        yield wait_until(lambda: len(sup.state.capabilities) == 2, "registration")
        out = yield deferToThread(run_sdk_client, self.python, sup.pki, sup.url("capability"),
                                  "ping-average-ip4", "now + 2s / 1s")
        self.assertEqual(out["capabilities"], ["ping-average-ip4", "ping-detail-ip4"])
        self.check_result(out)
        # Long-poll push: two pings one second apart plus little overhead (mpsup: ~7.2 s).
        self.assertLess(out["latency"], 4.0, out)

    @defer.inlineCallbacks
    def test_sdk_client_drives_a_listening_ccnet_component_directly(self) -> Any:
        comp = Component(self.folder / "comp", None, extra="listen = ssl:0:interface=127.0.0.1\n")
        yield comp.start()
        self.addCleanup(comp.stop)
        yield comp.listeners[0].listening
        url = f"https://localhost:{comp.listener_port()}/capability"
        out = yield deferToThread(run_sdk_client, self.python, test_pki(), url, "ping-average-ip4", "now + 2s / 1s")
        self.check_result(out)

