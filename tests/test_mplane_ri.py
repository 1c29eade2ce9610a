"""The seed's own mPlane RI fork, unmodified (../shared/peers/mplane-ri), against ccnet.

Both directions, real processes, real mutual TLS:

* the RI tstat proxy and the RI client (its shell, driven over pipes) use ccnet's
  supervisor — while an SDK component and the SDK client use it too;
* ccnet's component (its tstat proxy, replaying the shipped sample) registers with the
  RI's own supervisor, and the RI client runs one of its capabilities there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.mplane.dialect import Dialect
from tests.ri_support import (
    RI_TSTAT_LABELS,
    RIClientShell,
    ensure_ri_venv,
    ri_proxy_log,
    ri_tstat_caps,
    start_ccnet_supervisor,
    start_ri_supervisor,
    start_ri_tstat_proxy,
    wait_ri_registration,
)
from tests.support import free_port, stop_process, test_pki
from tests.test_mplane_component_support import Component, wait_until
from tests.test_mplane_support import (
    dotted,
    ensure_sdk_venv,
    run_sdk_client,
    sdk_component_config,
    start_sdk_component,
    wait_log,
)

TSTAT = "[probe:tstat]\nmodule = ccnet.mplane.probes.tstat\nmode = replay\n"


class _RITest(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ri_python, why = yield deferToThread(ensure_ri_venv)
        if self.ri_python is None:
            raise unittest.SkipTest(why)
        self.folder = Path(self.mktemp()).resolve()
        self.folder.mkdir(parents=True)
        self.pki = test_pki()

    @defer.inlineCallbacks
    def redeem_until_result(self, shell: RIClientShell, seconds: float = 30.0) -> Any:
        """The RI shell's ``redeem`` until ``showmeas`` shows a result (the RI prints it as YAML)."""
        deadline = reactor.seconds() + seconds
        while True:
            yield deferToThread(shell.command, "redeem")
            shown = yield deferToThread(shell.command, "showmeas")
            if "result: measure" in shown:
                return shown
            if reactor.seconds() > deadline:
                raise AssertionError(f"no result in showmeas within {seconds}s:\n{shown}")
            yield task.deferLater(reactor, 0.5, lambda: None)


class RIPeersOnCcnetSupervisorTests(_RITest):
    """The unmodified RI component and client, and SDK peers, on one ccnet supervisor."""

    @defer.inlineCallbacks
    def test_ri_proxy_and_ri_client_run_a_measurement_beside_sdk_peers(self) -> Any:
        pki = self.pki
        client, component = dotted(pki, "client"), dotted(pki, "component")
        users = {client: ["guest"], component: ["probe"]}
        caps = {**ri_tstat_caps(pki, roles=("guest",)), "ping-average-ip4": ["guest"], "ping-detail-ip4": ["guest"]}
        daemon, port = yield deferToThread(start_ccnet_supervisor, self.folder / "ccnet", pki, users, caps)
        self.addCleanup(deferToThread, daemon.stop)

        # The RI tstat proxy: a JSON array of five capabilities, each accepted.
        proxy = start_ri_tstat_proxy(self.ri_python, self.folder / "proxy", pki, "127.0.0.1", port)
        self.addCleanup(stop_process, proxy)
        outcome = yield deferToThread(wait_ri_registration, proxy, self.folder / "proxy")
        self.assertEqual(outcome, {label: "Ok" for label in RI_TSTAT_LABELS})

        # An SDK component (ping) registers beside it, and the SDK client runs ping.
        sdk_python, why = yield deferToThread(ensure_sdk_venv)
        if sdk_python is not None:
            # Another probe host (its own certificate: one identity is one component).
            conf = sdk_component_config(pki, self.folder, port, dotted(pki, "supervisor"), name="component2")
            sdk_comp = start_sdk_component(sdk_python, conf, self.folder)
            self.addCleanup(stop_process, sdk_comp)
            yield deferToThread(wait_log, self.folder / f"{conf.stem}.log", "Checking for Specifications")
            out = yield deferToThread(run_sdk_client, sdk_python, pki, f"https://localhost:{port}/capability",
                                      "ping-average-ip4", "now + 1s / 1s")
            # The SDK client is shown what its registry parses: ping, not the RI's tstat.
            self.assertEqual(out["capabilities"], ["ping-average-ip4", "ping-detail-ip4"])
            self.assertEqual(out["kind"], "Result", out)

        # The RI client shell: connect, list, run capability 1, redeem, show.
        shell = RIClientShell(self.ri_python, self.folder / "client", pki, port)
        self.addCleanup(shell.close)
        yield deferToThread(shell.command, "connect")
        listed = yield deferToThread(shell.command, "listcap")
        listing = {m.group(2): (m.group(1), m.group(3))
                   for m in re.finditer(r"^(\d+) - (\S+) from (\S+)$", listed, re.M)}
        # Only what the RI registry parses: the RI's five, and of the SDK component's two
        # ping capabilities only ping-detail-ip4 (ping-average-ip4's count element is
        # spelled differently in the RI's registry).
        expected = {label: component for label in RI_TSTAT_LABELS}
        if sdk_python is not None:
            expected["ping-detail-ip4"] = dotted(pki, "component2")
        self.assertEqual({label: who for label, (_, who) in listing.items()}, expected)
        first = listing["tstat-log_tcp_complete-core"][0]
        ran = yield deferToThread(shell.command, f"runcap {first}", ["now + 1s"])
        self.assertIn("ok", ran)
        self.assertNotIn("Supervisor returned", ran)
        shown = yield self.redeem_until_result(shell)
        self.assertIn("label: tstat-log_tcp_complete-core", shown)
        self.assertIn("hello", shown)  # the RI proxy's fictitious string values
        proxy_log = ri_proxy_log(self.folder / "proxy").read_text(errors="replace")
        self.assertIn("successfully returned", proxy_log)
        # The daemon said once why the SDK client was not shown the RI's capabilities.
        self.assertIn("is not listed to SDK clients", daemon.log())


class CcnetComponentOnRISupervisorTests(_RITest):
    """ccnet's tstat proxy registers with the RI's own supervisor; the RI client gets its rows."""

    @defer.inlineCallbacks
    def test_ri_client_runs_a_ccnet_tstat_capability_through_the_ri_supervisor(self) -> Any:
        pki = self.pki
        port = free_port()
        sup = start_ri_supervisor(self.ri_python, self.folder / "sup", pki, port)
        self.addCleanup(stop_process, sup)
        comp = Component(self.folder / "comp", f"https://127.0.0.1:{port}", probes=TSTAT,
                         extra="retry-min = 0.1\n")
        yield comp.start()
        self.addCleanup(comp.stop)
        yield wait_until(lambda: comp.link.registered, "registration with the RI supervisor", seconds=60)
        self.assertEqual(comp.link.dialect, Dialect.RI)  # found out: the SDK envelope got a 500
        sup_log = (self.folder / "sup" / "ri-supervisor.log").read_text(errors="replace")
        for label in RI_TSTAT_LABELS:
            self.assertIn(f"Capability {label} received from {dotted(pki, 'component')}", sup_log)
        # What the RI registry cannot parse (HTTP logs, RRDs) is not offered to it at all.
        self.assertNotIn("tstat-log_http_complete", sup_log)

        shell = RIClientShell(self.ri_python, self.folder / "client", pki, port)
        self.addCleanup(shell.close)
        yield deferToThread(shell.command, "connect")
        listed = yield deferToThread(shell.command, "listcap")
        numbers = {m.group(2): m.group(1) for m in re.finditer(r"^(\d+) - (\S+) from ", listed, re.M)}
        self.assertEqual(sorted(numbers), sorted(RI_TSTAT_LABELS))
        ran = yield deferToThread(shell.command, f"runcap {numbers['tstat-log_tcp_complete-core']}", ["now + 1s"])
        self.assertIn("ok", ran)
        shown = yield self.redeem_until_result(shell, seconds=60)
        # ccnet's rows: the replayed sample's flows (its first is 192.168.1.2:55513 ->
        # 74.125.232.142:443), not the RI proxy's "hello" placeholders.
        self.assertNotIn("hello", shown)
        self.assertIn("- 192.168.1.2\n", shown)
        self.assertIn("- 74.125.232.142\n", shown)
