"""``ccnet-admin status``: what an operator reads about a running daemon."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.admin import main, parse_prometheus, summarize, urls_from_config
from tests.support import free_port, test_pki, tls_section
from tests.test_ops_support import SPEC, OpsDaemon


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


class AdminStatusTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.pki = test_pki()

    def creds(self, who: str = "admin") -> list[str]:
        cert, key = self.pki.pair(who)
        return ["--cert", cert, "--key", key, "--ca", str(self.pki.ca_cert)]

    @defer.inlineCallbacks
    def test_status_summarizes_health_readiness_mplane_and_metrics(self) -> Any:
        d = OpsDaemon(self.pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)

        def scenario() -> tuple[int, str, str]:
            assert d.register_ping().status_code == 200
            assert d.mplane("POST", "register/specification", SPEC).status_code == 200
            assert d.rpc("Framework/Notebook", "set", "admin-key", 1).status_code == 200
            assert d.cc_echo() == "echo.response"
            return run("status", "--supervisor", d.url("supervisor", ""), "--daemon", d.url("rpc", ""),
                       "--metrics", d.url("metrics", ""), *self.creds())

        code, out, err = yield deferToThread(scenario)
        self.assertEqual(code, 0, out + err)
        self.assertIn("ok, ccnet ", out)
        self.assertIn("services: supervisor, rpc, cc, metrics", out)
        self.assertIn("ready    yes", out)
        self.assertIn("1 components, 1 capabilities, 1 pending measurements (as IT.ccnet.Clients.admin)", out)
        self.assertIn("IT.ccnet.Components.component", out)
        self.assertIn("rpc      1 calls, 0 not 2xx", out)
        self.assertIn("cc       ok 1 messages", out)
        self.assertIn("no client certificate rejected", out)
        self.assertRegex(out, r"process  rss \d+\.\d MB, \d+ open fds")

    @defer.inlineCallbacks
    def test_json_output_and_down_daemon_exit_status(self) -> Any:
        dead = free_port()
        code, out, _ = yield deferToThread(
            run, "status", "--daemon", f"https://127.0.0.1:{dead}", "--metrics", f"http://127.0.0.1:{dead}",
            "--json", *self.creds())
        self.assertEqual(code, 1)
        report = json.loads(out)
        self.assertIn("error", report["health"][f"https://127.0.0.1:{dead}"])
        code, out, _ = yield deferToThread(
            run, "status", "--daemon", f"https://127.0.0.1:{dead}", *self.creds())
        self.assertEqual(code, 1)
        self.assertIn("DOWN (Connection refused)", out)

    def test_https_without_a_client_certificate_is_a_usage_error(self) -> None:
        code, _, err = run("status", "--daemon", "https://localhost:8443")
        self.assertEqual(code, 2)
        self.assertIn("--cert and --key", err)

    def test_urls_come_from_the_daemon_config(self) -> None:
        config = Path(self.mktemp())
        config.write_text("[ccnet]\nstate-dir = var\n" + tls_section(self.pki)
                          + "[supervisor]\nlisten = ssl:8888\n[rpc]\nlisten = ssl:8443\n"
                          + "[metrics]\nlisten = tcp:9100:interface=127.0.0.1\n")
        found = urls_from_config(config)
        self.assertEqual(found["supervisor"], "https://localhost:8888")
        self.assertEqual(found["daemons"], ["https://localhost:8888", "https://localhost:8443"])
        self.assertEqual(found["metrics"], "http://127.0.0.1:9100")
        self.assertEqual(found["ca"], str(self.pki.ca_cert))


class SummaryTests(unittest.TestCase):
    def test_not_ready_names_the_cause(self) -> None:
        text = summarize({"health": {}, "ready": {"ready": False, "store": False, "not_listening": ["rpc"]}})
        self.assertIn("ready    NO (store not answering) (not listening: rpc)", text)

    def test_parts_that_are_not_ready_are_named(self) -> None:
        text = summarize({"health": {}, "ready": {"ready": False, "store": True,
                                                  "not_ready": ["cc-job:tstat", "mplane-supervisor"]}})
        self.assertIn("ready    NO (not ready: cc-job:tstat, mplane-supervisor)", text)

    def test_tls_rejections_are_listed_by_reason(self) -> None:
        metrics = ('ccnet_tls_handshake_failures_total{listener="rpc",reason="certificate has expired"} 2\n'
                   'ccnet_tls_handshake_failures_total{listener="supervisor",reason="certificate has expired"} 1\n')
        self.assertIn("tls      certificate has expired: 3", summarize({"metrics": metrics}))

    def test_prometheus_parser_reads_escaped_labels(self) -> None:
        ((name, labels, value),) = parse_prometheus('x_total{a="q\\"uote"} 4.5\n# HELP x y\n')
        self.assertEqual((name, labels, value), ("x_total", {"a": 'q"uote'}, 4.5))
