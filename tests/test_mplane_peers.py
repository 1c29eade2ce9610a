"""ccnet's component against supervisors we did not write: the SDK's ``mpsup`` (and, in
test_mplane_ri.py, the RI fork's own supervisor)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from ccnet.mplane.dialect import Dialect
from tests.support import free_port, stop_process, test_pki
from tests.test_mplane_component_support import PROBES, Component, wait_until
from tests.test_mplane_support import (
    SDKPeerTest,
    dotted,
    mpsup_config,
    run_sdk_client,
    start_mpsup,
    wait_log,
)

TSTAT = "[probe:tstat]\nmodule = ccnet.mplane.probes.tstat\nmode = replay\n"


class MpsupTests(SDKPeerTest):

    @defer.inlineCallbacks
    def test_ccnet_component_registers_what_mpsup_knows_and_runs_ping_through_it(self) -> Any:
        pki = test_pki()
        cport, sport = free_port(), free_port()
        conf = mpsup_config(pki, self.folder, dotted(pki, "component"), cport, sport)
        sup = start_mpsup(self.python, conf, self.folder)
        self.addCleanup(stop_process, sup)
        yield deferToThread(wait_log, self.folder / "mpsup.log", "ListenerHttpComponent running")
        # ping (core registry) and tstat (its own registry, which mpsup cannot load).
        comp = Component(self.folder / "comp", f"https://localhost:{cport}", probes=PROBES + TSTAT)
        yield comp.start()
        self.addCleanup(comp.stop)
        yield wait_until(lambda: comp.link.registered, "registration with mpsup", seconds=60)
        # mpsup fails a whole envelope on one capability it cannot parse: ccnet then
        # registered each capability on its own, so ping is in despite tstat's refusal.
        self.assertEqual(comp.link.dialect, Dialect.SDK)
        out = yield deferToThread(run_sdk_client, self.python, pki, f"https://localhost:{sport}/capability",
                                  "ping-average-ip4", "now + 1s / 1s", "127.0.0.1", 90)
        self.assertIn("ping-average-ip4", " ".join(out["capabilities"]))
        self.assertFalse([c for c in out["capabilities"] if c.startswith("tstat")], out)
        self.assertEqual(out["kind"], "Result", out)
