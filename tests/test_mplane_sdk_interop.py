"""Interop with the unmodified official mPlane SDK 0.9.0 (component ``mpcom`` with the
``mplane.components.ping`` module, and the SDK client library) over mutual TLS."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread

from tests.support import free_port
from tests.test_mplane_support import (
    SDKPeerTest,
    Supervisor,
    dotted,
    run_sdk_client,
    sdk_component_config,
    start_sdk_component,
)

USERS = "IT.ccnet.Clients.client: guest\n"
CAPS = "ping-average: guest\nping-detail: guest\n"


class SDKInteropTests(SDKPeerTest):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.sup = Supervisor(self.folder, users=USERS, caps=CAPS, long_poll=15.0)
        yield self.sup.start()
        self.addCleanup(self.sup.stop)

    def start_component(self) -> Any:
        self.component_log = self.folder / "component-component.log"
        conf = sdk_component_config(self.sup.pki, self.folder, self.sup.port, dotted(self.sup.pki, "supervisor"))
        proc = start_sdk_component(self.python, conf, self.folder)

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.addCleanup(stop)
        return proc

    @defer.inlineCallbacks
    def wait_for(self, predicate: Any, what: str, seconds: float = 60) -> Any:
        deadline = reactor.seconds() + seconds
        while not predicate():
            if reactor.seconds() > deadline:
                log = self.component_log.read_text() if self.component_log.exists() else ""
                self.fail(f"timed out waiting for {what}; component log:\n{log}")
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_sdk_ping_component_and_sdk_client_run_a_measurement(self) -> Any:
        self.start_component()
        state = self.sup.state
        yield self.wait_for(lambda: len(state.capabilities) == 2, "the SDK component to register")
        comp = dotted(self.sup.pki, "component")
        self.assertEqual(sorted(c.label for c in state.capabilities.values()),
                         ["ping-average-ip4", "ping-detail-ip4"])
        self.assertTrue(state.components[comp].callback)
        out = yield deferToThread(run_sdk_client, self.python, self.sup.pki, self.sup.url("capability"),
                                  "ping-average-ip4", "now + 2s / 1s")
        self.assertEqual(out["capabilities"], ["ping-average-ip4", "ping-detail-ip4"])
        self.assertTrue(out["receipt"], out)
        self.assertEqual(out["kind"], "Result", out)
        result = json.loads(out["result"])
        self.assertEqual(result["label"], "ping-average-ip4-0")
        self.assertEqual(len(result["resultvalues"]), 1)
        self.assertEqual(len(result["resultvalues"][0]), 4)
        # 2 pings 1 s apart: anything near the SDK supervisor's 5 s polling shows up here.
        self.assertLess(out["latency"], 4.0, out)
        # The component saw its own label, never the client's "-0".
        self.assertNotIn("ping-average-ip4-0", self.component_log.read_text())


class SDKListeningComponentTests(SDKPeerTest):
    """The client-initiated component workflow: ccnet calls an SDK component that listens."""

    @defer.inlineCallbacks
    def test_supervisor_pulls_capabilities_and_runs_a_spec_on_a_listening_sdk_component(self) -> Any:
        python, folder = self.python, self.folder
        port = free_port()
        sup = Supervisor(folder, users=USERS, caps=CAPS, components=(f"https://localhost:{port}/",),
                         component_refresh=1.0, redeem_interval=0.2)
        conf = sdk_component_config(sup.pki, folder, 0, dotted(sup.pki, "supervisor"))
        text = conf.read_text().split("[component]")[0]
        conf.write_text(text + f"[component]\nworkflow = client-initiated\nlisten-port = {port}\n")
        proc = start_sdk_component(python, conf, folder)

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.addCleanup(stop)
        yield sup.start()
        self.addCleanup(sup.stop)
        log = folder / f"{conf.stem}.log"
        deadline = reactor.seconds() + 60
        while len(sup.state.capabilities) < 2:
            if reactor.seconds() > deadline:
                self.fail("capabilities not pulled; component log:\n" + (log.read_text() if log.exists() else ""))
            yield task.deferLater(reactor, 0.1, lambda: None)
        comp = sup.state.components[dotted(sup.pki, "component")]
        self.assertEqual(comp.url, f"https://localhost:{port}/")
        out = yield deferToThread(run_sdk_client, python, sup.pki, sup.url("capability"),
                                  "ping-average-ip4", "now + 2s / 1s")
        self.assertEqual(out["kind"], "Result", out)
        self.assertEqual(json.loads(out["result"])["label"], "ping-average-ip4-0")
