"""``conf/prometheus`` and ``conf/grafana``: the shipped monitoring works against a real ccnet.

promtool checks the scrape config and the alert rules and runs the rules' unit tests
(``tests/prometheus/``); every dashboard expression is valid PromQL; a real Prometheus
(the Debian package, installed by ``scripts/system-deps.sh`` when missing) scrapes a real
daemon run from the shipped ``conf/ccnet.ini`` on loopback ports the OS chose, evaluates
every shipped rule without error and raises ``CCNetDown`` once the daemon stops; every
metric the rules and the dashboard name is one the daemon exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support import REPO, free_port, start_daemon, stop_process
from tests.test_rpc_shipped_config import _shipped_config, _shipped_tree

PROMETHEUS_CONF = REPO / "conf" / "prometheus"
RULES = PROMETHEUS_CONF / "ccnet-alerts.yml"
DASHBOARD = REPO / "conf" / "grafana" / "ccnet.json"
METRIC_NAME = re.compile(r"\bccnet_[a-z0-9_]+")
#: Grafana's own variables, as Grafana replaces them before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m", "$__range": "1h"}


def _tools() -> tuple[str, str] | None:
    """(prometheus, promtool): installed by the project's own script when missing."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if None in found:
        subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], check=False)
        found = shutil.which("prometheus"), shutil.which("promtool")
    return (found[0], found[1]) if found[0] and found[1] else None


TOOLS = _tools()
SKIP = None if TOOLS else "prometheus/promtool missing and scripts/system-deps.sh could not install them"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard (panel targets and template queries)."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((\w+),.*\)$", r"\1", variable["definition"]))
    return exprs


def exposed_names(exposition: str) -> set[str]:
    """The sample names a text exposition can carry, from its ``# TYPE`` lines (families
    without samples yet included)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names.add(name)
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}.get(kind, ())
        names.update(name + suffix for suffix in suffixes)
    return names


class PromtoolTests(unittest.TestCase):
    skip = SKIP

    def test_shipped_scrape_config_and_its_rules_pass_promtool(self) -> Any:
        def check() -> None:
            result = _run(TOOLS[1], "check", "config", str(PROMETHEUS_CONF / "prometheus.yml"))  # type: ignore[index]
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            alerts = len(re.findall(r"^\s+- alert: ", RULES.read_text(), re.M))
            self.assertIn(f"SUCCESS: {alerts} rules found", result.stdout)

        return deferToThread(check)

    def test_alert_rules_fire_on_what_they_are_for_and_only_that(self) -> Any:
        def check() -> None:
            result = _run(TOOLS[1], "test", "rules", str(REPO / "tests" / "prometheus" / "ccnet-alerts.test.yml"))  # type: ignore[index]
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

        return deferToThread(check)

    def test_every_dashboard_expression_is_valid_promql(self) -> Any:
        # promtool parses each one as a recording rule; Grafana's variables filled in as Grafana does.
        exprs = dashboard_expressions()
        self.assertGreater(len(exprs), 30)
        lines = ["groups:", "  - name: dashboard", "    rules:"]
        for i, expr in enumerate(exprs):
            for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(variable, value)
            self.assertNotIn("$", expr)
            lines += [f"      - record: dashboard:expr{i}", f"        expr: {json.dumps(expr)}"]
        rules = Path(self.mktemp())
        rules.write_text("\n".join(lines) + "\n")

        def check() -> None:
            result = _run(TOOLS[1], "check", "rules", str(rules))  # type: ignore[index]
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn(f"SUCCESS: {len(exprs)} rules found", result.stdout)

        return deferToThread(check)


class LivePrometheusTests(unittest.TestCase):
    """A real Prometheus against the shipped config's daemon."""

    skip = SKIP
    timeout = 180

    def test_prometheus_scrapes_the_daemon_evaluates_every_rule_and_alerts_when_it_stops(self) -> Any:
        return deferToThread(self._scenario, Path(self.mktemp()).absolute())

    def _scenario(self, base: Path) -> None:
        conf = _shipped_tree(base)
        ports = {name: free_port() for name in ("rpc", "supervisor", "cc", "metrics")}
        daemon = start_daemon(_shipped_config(ports), conf)
        self.addCleanup(daemon.stop)
        target = f"127.0.0.1:{ports['metrics']}"

        # The component has registered with its supervisor (else CCNetMPlaneSupervisorLost
        # would rightly be pending below).
        deadline = time.monotonic() + 30
        while "\nccnet_mplane_component_registered 1.0\n" not in (
                exposition := requests.get(f"http://{target}/metrics", timeout=10).text):
            self.assertLess(time.monotonic(), deadline, daemon.log()[-3000:])
            time.sleep(0.2)

        # Every metric the rules and the dashboard name is exposed by the daemon.
        exposed = exposed_names(exposition)
        named = set(METRIC_NAME.findall(RULES.read_text()))
        named |= {n for expr in dashboard_expressions() for n in METRIC_NAME.findall(expr)}
        self.assertGreater(len(named), 30)
        self.assertEqual(named - exposed, set())

        # The shipped scrape config and rules, pointed at this daemon, at a 1 s pace.
        prom_dir = base / "prometheus"
        prom_dir.mkdir()
        shutil.copy(RULES, prom_dir / RULES.name)
        config = (PROMETHEUS_CONF / "prometheus.yml").read_text()
        self.assertIn('"127.0.0.1:9100"', config)
        config = config.replace("127.0.0.1:9100", target).replace("15s", "1s").replace("scrape_timeout: 10s",
                                                                                         "scrape_timeout: 1s")
        (prom_dir / "prometheus.yml").write_text(config)
        web = f"127.0.0.1:{free_port()}"
        with open(prom_dir / "prometheus.log", "w") as log:
            prometheus = subprocess.Popen(
                [TOOLS[0], f"--config.file={prom_dir / 'prometheus.yml'}",  # type: ignore[index]
                 f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address={web}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=prom_dir)
        self.addCleanup(stop_process, prometheus)
        api = f"http://{web}/api/v1"

        def until(what: str, probe: Any, timeout: float = 60.0) -> Any:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                assert prometheus.poll() is None, (prom_dir / "prometheus.log").read_text()[-3000:]
                try:
                    found = probe()
                except (requests.RequestException, KeyError, IndexError, ValueError):
                    found = None
                if found:
                    return found
                time.sleep(0.5)
            raise AssertionError(f"Prometheus: {what} within {timeout:.0f} s\n"
                                 + (prom_dir / "prometheus.log").read_text()[-3000:])

        def get(path: str, **params: str) -> Any:
            answer = requests.get(f"{api}/{path}", params=params, timeout=10).json()
            assert answer["status"] == "success", answer
            return answer["data"]

        (target_state,) = until("the ccnet target up", lambda: [
            t for t in get("targets")["activeTargets"] if t["health"] == "up"])
        self.assertEqual((target_state["labels"]["job"], target_state["labels"]["instance"]), ("ccnet", target))

        (rpc,) = until("a query over a ccnet metric", lambda: get("query", query='ccnet_listener_up{listener="rpc"}')[
            "result"])
        self.assertEqual((rpc["metric"]["instance"], rpc["value"][1]), (target, "1"))
        (info,) = get("query", query="ccnet_info")["result"]
        self.assertTrue(info["metric"]["version"])

        # Every shipped rule evaluated against the live series without error; none raised.
        def evaluated() -> list[Any]:
            rules = [r for g in get("rules")["groups"] for r in g["rules"]]
            done = all(r["lastEvaluation"] > "2000" for r in rules)
            return rules if done and len(rules) == len(re.findall(r"- alert: ", RULES.read_text())) else []

        rules = until("every rule evaluated", evaluated)
        self.assertEqual([(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"], [])
        self.assertEqual([a["labels"]["alertname"] for a in get("alerts")["alerts"]], [])

        # The daemon stops: its target goes down and CCNetDown is raised for it.
        daemon.stop()
        (down,) = until("CCNetDown raised", lambda: [
            a for a in get("alerts")["alerts"] if a["labels"]["alertname"] == "CCNetDown"])
        self.assertEqual((down["labels"]["instance"], down["state"]), (target, "pending"))
