"""The example configs in conf/ load as they are."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from ccnet.cc.handlers.jobmgr import JobMgrHandler
from ccnet.config import load_config
from tests.support import REPO


class ExampleConfigTests(TestCase):
    def test_local_example_loads_with_all_daemons(self) -> None:
        cfg = load_config(REPO / "conf" / "cc-local.ini")
        self.assertEqual(cfg.cc.role, "local")
        jm = cfg.cc.handler("jobmgr")
        self.assertIs(jm.factory, JobMgrHandler)
        self.assertEqual([j.section for j in jm.options.jobs],
                         ["d:infosender", "d:infoscript", "d:taskrunner", "d:discovery", "d:logtail"])

    def test_remote_example_loads_with_all_handlers(self) -> None:
        cfg = load_config(REPO / "conf" / "cc-remote.ini")
        self.assertEqual(cfg.cc.role, "remote")
        self.assertEqual(
            sorted(h.handler for h in cfg.cc.handlers),
            sorted(["echo", "infowriter", "database", "database", "tailwriter", "taskrouter", "locallogger"]),
        )
