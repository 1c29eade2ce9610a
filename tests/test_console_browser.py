"""The web console in a real headless Chromium over mutual TLS: a supervisor daemon (with
RPC and CC parts) and a component daemon running the ping probe; the admin's certificate
in Chromium's NSS database. Set CCNET_CONSOLE_SCREENSHOTS=docs/console to refresh the
screenshots docs/console.md shows."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.browser_support import Browser, unavailable
from tests.support import VENV_BIN, Daemon, free_port, start_daemon, test_pki
from tests.test_mplane_e2e import component_ini, supervisor_ini

RPC_AND_CC = """
[rpc]
listen = ssl:0:interface=127.0.0.1

[rpc:Framework/Notebook]
class = ccnet.rpc.examples.notebook:NotebookService

[cc]
cc-socket = tcp://127.0.0.1:{cc_port}

[routes]
echo = echo

[echo]
handler = echo
"""


class ConsoleInChromiumTests(unittest.TestCase):
    timeout = 300

    def setUp(self) -> Any:
        why = unavailable()
        if why is not None:
            raise unittest.SkipTest(why)
        return deferToThread(self._start)

    def _start(self) -> None:
        base = Path(self.mktemp()).resolve()
        self.base = base
        sup_dir, comp_dir = base / "supervisor", base / "component"
        sup_dir.mkdir(parents=True)
        comp_dir.mkdir(parents=True)
        self.port = free_port()
        cc_port = free_port()
        ini = supervisor_ini(sup_dir, self.port) + RPC_AND_CC.format(cc_port=cc_port)
        self.supervisor: Daemon = start_daemon(ini, sup_dir)
        self.addCleanup(lambda: deferToThread(self.supervisor.stop))
        self.component: Daemon = start_daemon(component_ini(comp_dir, self.port), comp_dir)
        self.addCleanup(lambda: deferToThread(self.component.stop))
        self.origin = f"https://localhost:{self.port}"
        pki = test_pki()
        self.admin = Browser(pki, "admin", base)
        self.addCleanup(self.admin.close)
        self.client = Browser(pki, "client", base)
        self.addCleanup(self.client.close)
        shots = os.environ.get("CCNET_CONSOLE_SCREENSHOTS")
        self.shots = Path(shots).resolve() if shots else base / "screenshots"
        self.shots.mkdir(parents=True, exist_ok=True)
        # Some RPC traffic for its page (the admin's certificate, as a DIRAC client would).
        rpc = f"https://localhost:{self.supervisor.ports['rpc']}/Framework/Notebook"
        for _ in range(3):
            requests.post(rpc, data={"method": "ping", "args": "[]"}, cert=pki.pair("admin"),
                          verify=str(pki.ca_cert), timeout=30)
        # And a CC message for the CC page's counters.
        subprocess.run([str(VENV_BIN / "ccnet-cc"), "send", "echo.request", "{}", "--endpoint",
                        f"tcp://127.0.0.1:{cc_port}"], check=True, capture_output=True, timeout=60)
        self.wait(lambda: "ping-detail-ip4" in self.status().get("labels", ""), "the component's registration")

    def status(self) -> dict[str, Any]:
        pki = test_pki()
        resp = requests.get(f"{self.origin}/api/status", cert=pki.pair("admin"), verify=str(pki.ca_cert), timeout=30)
        caps = resp.json().get("capabilities", []) if resp.status_code == 200 else []
        return {"labels": " ".join(str(c["label"]) for c in caps)}

    def wait(self, predicate: Any, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}\n--- supervisor:\n{self.supervisor.log()}")
            time.sleep(0.2)

    def test_admin_browses_the_console_runs_a_ping_and_sees_its_chart(self) -> Any:
        return deferToThread(self._admin_scenario)

    def _admin_scenario(self) -> None:
        dom = self.admin.dump_dom(f"{self.origin}/console/")
        self.assertIn("ccnet console", dom, dom[:2000])
        self.assertIn("Signed in as /C=IT/O=ccnet/OU=Clients/CN=admin", dom)
        dom = self.admin.dump_dom(f"{self.origin}/console/components")
        self.assertIn("IT.ccnet.Components.component", dom)
        dom = self.admin.dump_dom(f"{self.origin}/console/capabilities")
        for label in ("ping-detail-ip4", "ping-average-ip4", "tstat-log_tcp_complete-core"):
            self.assertIn(label, dom)
        dom = self.admin.dump_dom(f"{self.origin}/console/cc")
        self.assertRegex(dom, r"<td>echo</td><td>echo</td>")  # the route: pattern, handler section
        self.assertRegex(dom, r"<td>echo.request</td><td>ok</td><td>1</td>")  # the echo handled once
        dom = self.admin.dump_dom(f"{self.origin}/console/rpc")
        self.assertIn("Framework/Notebook", dom)
        self.assertRegex(dom, r"<td>Framework/Notebook</td><td>ping</td><td>3</td><td>0</td><td>3</td>")

        b = self.admin
        b.start()
        b.navigate(f"{self.origin}/console/capabilities")
        b.screenshot(self.shots / "capabilities.png")
        # Follow the ping-detail capability's "run…" link, fill the form as a person would.
        href = b.evaluate("[...document.querySelectorAll('tr')].find(r => r.cells[0] && "
                          "r.cells[0].textContent === 'ping-detail-ip4').querySelector('a').href")
        b.navigate(href)
        self.assertIn("destination.ip4", b.evaluate("document.body.innerText"))
        b.evaluate("document.querySelector('input[name=when]').value = 'now + 4s / 1s';"
                   "document.querySelector('input[name=\"param:destination.ip4\"]').value = '127.0.0.1';"
                   "true")
        b.screenshot(self.shots / "run-form.png")
        b.evaluate("document.getElementById('run').submit(); true")
        b.wait_for("location.pathname === '/console/measurement' && document.readyState === 'complete'",
                   "the measurement page after submitting")
        page = b.evaluate("location.href")
        # Results arrive: reload until the chart is there and has loaded as an image.
        deadline = time.monotonic() + 60
        while not b.evaluate("(() => { const i = document.querySelector('img.chart');"
                             " return !!i && i.complete && i.naturalWidth > 0; })()"):
            if time.monotonic() > deadline:
                self.fail(f"no chart on {page}:\n{b.evaluate('document.body.innerText')}\n"
                          f"--- component:\n{self.component.log()[-3000:]}")
            time.sleep(1)
            b.navigate(page)
        text = b.evaluate("document.body.innerText")
        self.assertIn("delay.twoway.icmp.us", text)
        self.assertIn("done", text)
        rows = b.evaluate("document.querySelector('table.results').rows.length - 1")
        self.assertGreaterEqual(rows, 3, text)
        # The chart itself: an SVG with the delay series, fetched by the page as an image.
        svg = b.evaluate("fetch(document.querySelector('img.chart').src).then(r => r.text())")
        self.assertIn("<svg", svg)
        self.assertIn("delay.twoway.icmp.us", svg)
        b.screenshot(self.shots / "measurement.png")
        # One more, an hour from now: the schedule shows it as future, the first as past.
        later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        b.navigate(href)
        b.evaluate(f"document.querySelector('input[name=when]').value = '{later} + 5s / 1s';"
                   "document.querySelector('input[name=\"param:destination.ip4\"]').value = '127.0.0.1';"
                   "document.getElementById('run').submit(); true")
        b.wait_for("location.pathname === '/console/measurement' && document.readyState === 'complete'",
                   "the second measurement's page")
        b.navigate(f"{self.origin}/console/schedule")
        phases = b.evaluate("[...document.querySelectorAll('tr')].slice(1).map(r => r.cells[1].textContent)")
        self.assertEqual(phases, ["future", "past"])  # latest start first
        self.assertIn(later, b.evaluate("document.body.innerText"))
        b.screenshot(self.shots / "schedule.png")
        b.navigate(f"{self.origin}/console/")
        b.screenshot(self.shots / "overview.png")
        b.navigate(f"{self.origin}/console/rpc")
        b.screenshot(self.shots / "rpc.png")
        b.navigate(f"{self.origin}/console/cc")
        b.screenshot(self.shots / "cc.png")

    def test_a_non_admin_certificate_gets_403(self) -> Any:
        return deferToThread(self._client_scenario)

    def _client_scenario(self) -> None:
        dom = self.client.dump_dom(f"{self.origin}/console/")
        self.assertIn("403 Forbidden", dom)
        self.assertIn("IT.ccnet.Clients.client does not have the admin role", dom)
        self.assertNotIn("ping-detail-ip4", self.client.dump_dom(f"{self.origin}/console/capabilities"))
        # The same browser profile sees the old operator page (its own measurements only).
        self.assertIn("ccnet mPlane supervisor", self.client.dump_dom(f"{self.origin}/"))
