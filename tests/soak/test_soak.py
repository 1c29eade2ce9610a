"""The bounded soak (bench/soak.py) as a test: only with ``CCNET_SOAK=1`` (``make soak``).

``CCNET_SOAK_SECONDS`` sets the length (default 600). The verdict is bench/soak.py's:
no failed operation, RSS slope after warm-up under ``CCNET_SOAK_MAX_SLOPE`` MB/min
(default 1.0), open FDs not growing, clean exit.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

REPO = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("CCNET_SOAK_SECONDS", "600"))


def _soak_module() -> Any:
    spec = importlib.util.spec_from_file_location("ccnet_bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SoakTests(unittest.TestCase):
    timeout = SECONDS + 180

    def setUp(self) -> None:
        if os.environ.get("CCNET_SOAK") != "1":
            raise unittest.SkipTest("soak runs only with CCNET_SOAK=1 (make soak)")

    @defer.inlineCallbacks
    def test_three_protocols_for_minutes_without_growth_or_errors(self) -> Any:
        soak = _soak_module()
        folder = Path(self.mktemp()).absolute()
        folder.mkdir(parents=True)
        result = yield deferToThread(soak.run, SECONDS, max(5.0, SECONDS / 60), folder, lambda line: None)
        (folder / "soak.json").write_text(json.dumps(result, indent=1))
        problems = soak.verdict(result, float(os.environ.get("CCNET_SOAK_MAX_SLOPE", "1.0")))
        self.assertEqual(problems, [], json.dumps({k: v for k, v in result.items() if k != "samples"}))
