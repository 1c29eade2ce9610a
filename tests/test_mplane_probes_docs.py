"""The probe example in docs/probes.md works as written: loaded by module name, run for real."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from ccnet.config import IniFile
from ccnet.mplane import component_config
from ccnet.mplane.model import Statement
from tests.support import REPO
from tests.test_mplane_probes import run_spec


class _Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (twisted.web API)
        return b"hello"


class DocumentedProbeTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_fetch_probe_from_the_docs_measures_a_local_page(self) -> Any:
        text = (REPO / "docs" / "probes.md").read_text()
        code = re.search(r"## Example.*?```python\n(.*?)```", text, re.S)
        assert code is not None
        pkg = Path(self.mktemp()).resolve() / "myprobes"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "fetch.py").write_text(code.group(1))
        sys.path.insert(0, str(pkg.parent))
        self.addCleanup(sys.path.remove, str(pkg.parent))
        self.addCleanup(lambda: [sys.modules.pop(m, None) for m in ("myprobes", "myprobes.fetch")])
        port = reactor.listenTCP(0, Site(_Page()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        cfg = component_config.parse(IniFile.from_string(
            f"[component]\nlisten = ssl:0\n[probe:fetch]\nmodule = myprobes.fetch\nurl = {url}\n"))
        p = cfg.probes[0]
        probe = p.factory.build(reactor, p.name, p.options)
        msg = yield run_spec(probe, "fetch-time", "now + 2s / 1s", {"destination.url": url})
        self.assertIsInstance(msg, Statement, msg)
        self.assertEqual(msg.results, ["time", "delay.firstbyte.ms"])
        self.assertIn(len(msg.resultvalues), (2, 3))
