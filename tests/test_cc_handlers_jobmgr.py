"""jobmgr: real child processes (spawnProcess), job.config, restarts, keepalive, shutdown."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from ccnet.cc.handlers.jobmgr import daemon_module, restart_delay
from ccnet.config import ConfigError
from ccnet.runtime import Runtime
from tests.test_cc_handlers_common import ServerMixin, alive, body, reply_body, wait_for

CC = """
[cc]
cc-socket = tcp://127.0.0.1:*
stats-period = 0
job_name = cctest
[routes]
job = jm
pub.discovery = iw
[iw]
handler = infowriter
dstdir = {dst}
host-subdirs = yes
[jm]
handler = jobmgr
daemons = d:discovery{more}
stop-timeout = 5
maint-period = 0.2
[d:discovery]
module = cc.daemon.discovery
discovery-period = 0.3
retry-period = 0.5
keepalive-period = 0.2
watchdog-formula-a = 0.1
watchdog-formula-b = 0.1
endpoints = web=https://example.org:8443
{extra}
"""

SLEEPER = """
[d:sleeper]
script = sleeper.sh
keepalive-timeout = 1
watchdog-formula-a = 0
watchdog-formula-b = 0
"""


class PureTests(TestCase):
    def test_watchdog_formula_and_module_names(self) -> None:
        self.assertEqual([restart_delay(n, 0, 5, None) for n in (1, 2, 3)], [0, 5, 10])
        self.assertEqual(restart_delay(10, 1, 5, 20), 20)
        self.assertEqual(daemon_module("cc.daemon.infosender"), "ccnet.cc.daemons.infosender")
        self.assertEqual(daemon_module("my.mod"), "my.mod")


class JobMgrTests(ServerMixin, TestCase):
    def setUp(self) -> None:
        self.folder = Path(self.mktemp()).absolute()
        self.dst = self.folder / "dst"

    def server(self, more: str = "", extra: str = "", runtime: Any = None) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        script = self.folder / "sleeper.sh"
        script.write_text("#!/bin/sh\nexec sleep 60\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return self.start_server(CC.format(dst=self.dst, more=more, extra=extra), folder=self.folder,
                                 runtime=runtime)

    @defer.inlineCallbacks
    def test_managed_daemon_counts_for_readiness_while_it_runs(self) -> Any:
        runtime = Runtime(reactor, None)  # type: ignore[arg-type]  # the CC proxy keeps no state
        parts = runtime.parts
        srv = self.server(more=", d:sleeper", extra=SLEEPER, runtime=runtime)
        self.assertEqual(sorted(parts), ["cc-job:cctest.d:discovery", "cc-job:cctest.d:sleeper"])
        self.assertTrue(all(up() for up in parts.values()))
        yield srv.stop()
        self.assertFalse(any(up() for up in parts.values()))

    @defer.inlineCallbacks
    def test_daemon_runs_answers_job_config_and_stops_with_server(self) -> Any:
        srv = self.server()
        # the discovery daemon publishes through this server; infowriter keeps it per host
        found = yield wait_for(lambda: list(self.dst.glob("*/discovery.json")))
        facts = json.loads(found[0].read_text())
        self.assertEqual(facts["endpoints"], {"web": "https://example.org:8443"})
        self.assertIn("cc", facts["services"])
        (rep,) = yield self.ask(srv, [[b"Q1", b"", b"job.config", body("job.config", job_name="cctest.d:discovery"), b""]])
        self.assertEqual(rep[2], b"job.config")
        d = reply_body(rep)
        self.assertEqual(d["job_name"], "cctest.d:discovery")
        self.assertEqual(d["config"]["discovery-period"], "0.3")
        self.assertEqual(d["config"]["cc-socket"], "tcp://127.0.0.1:*")
        (rep,) = yield self.ask(srv, [[b"", b"job.config", body("job.config", job_name="nope"), b""]])
        self.assertIn("unknown job_name 'nope'", reply_body(rep)["msg"])
        job = srv.handlers["jm"].jobs["cctest.d:discovery"]
        yield wait_for(lambda: job.last_keepalive > job.start_time)
        pid = job.pid
        yield srv.stop()
        self.assertFalse(alive(pid))

    @defer.inlineCallbacks
    def test_killed_daemon_is_restarted_with_backoff(self) -> Any:
        srv = self.server()
        job = srv.handlers["jm"].jobs["cctest.d:discovery"]
        first = job.pid
        os.kill(first, signal.SIGKILL)
        yield wait_for(lambda: job.pid is not None and job.pid != first)
        self.assertEqual(job.starts, 2)
        second = job.pid
        os.kill(second, signal.SIGKILL)
        yield wait_for(lambda: job.pid is not None and job.pid != second)
        self.assertEqual(job.starts, 3)

    @defer.inlineCallbacks
    def test_silent_daemon_is_killed_after_keepalive_timeout(self) -> Any:
        srv = self.server(more=", d:sleeper", extra=SLEEPER)
        job = srv.handlers["jm"].jobs["cctest.d:sleeper"]
        first = job.pid
        yield wait_for(lambda: job.starts >= 2)
        self.assertFalse(alive(first))

    def test_daemon_section_typo_stops_start_up(self) -> None:
        e = self.assertRaises(ConfigError, self.server, extra="disocvery-period = 3")
        self.assertIn("disocvery-period", str(e))

    def test_jobmgr_is_refused_under_remote_role(self) -> None:
        self.folder.mkdir(parents=True)
        e = self.assertRaises(ConfigError, self.start_server,
                              "[cc]\ncc-role = remote\n[routes]\njob = jm\n[jm]\nhandler = jobmgr\ndaemons =\n",
                              self.folder)
        self.assertIn("not allowed with cc-role = remote", str(e))
