"""mPlane supervisor benchmark: ccnet against the SDK's own ``mpsup``, same SDK component.

Measures, for each supervisor:

* spec→result latency seen by the unmodified SDK client library for a ping
  specification ``now + 2s / 1s`` (two pings, one second of measuring) run by the
  unmodified SDK ping component (``mpcom`` + ``mplane.components.ping``);
* capability registrations per second from simulated components (distinct
  certificates, one envelope of two capabilities each, 32 in flight);
* for ccnet: the daemon's resident memory with 1,000 simulated components registered
  and each holding a long-poll ``GET show/specification`` open.

Run: ``PYTHONPATH=. .venv/bin/python bench/mplane_bench.py [--components 1000] [--runs 3]``.
It needs python3.11 and network access to PyPI once (the SDK venv is cached in
``$CCNET_MPLANE_SDK_VENV``, default /tmp/ccnet-mplane-sdk-0.9.0). Results are printed as
JSON and a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import treq  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.web.client import HTTPConnectionPool  # noqa: E402

from ccnet.config import TLSConfig  # noqa: E402
from ccnet.tls import TLSMaterial, https_agent  # noqa: E402
from tests.support import start_daemon, test_pki  # noqa: E402
from tests.test_mplane_support import (  # noqa: E402
    PING_CAP,
    dotted,
    ensure_sdk_venv,
    envelope,
    mpsup_config,
    run_sdk_client,
    sdk_component_config,
    start_mpsup,
    start_sdk_component,
    stop_process,
    wait_log,
)

CT = "application/x-mplane+json"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        os.chdir(work)
        self.pki = test_pki()
        self.sup_identity = dotted(self.pki, "supervisor")
        self.results: dict[str, Any] = {"ccnet": {}, "mpsup": {}}

    # ------------------------------------------------------------------ simulated components

    def issue_components(self, n: int) -> list[TLSMaterial]:
        mats = []
        for i in range(n):
            name = f"sim-{i}"
            if not self.pki.cert(name).exists():
                self.pki.pki.issue("component", name)
            mats.append(TLSMaterial(TLSConfig(ca=self.pki.ca_cert, cert=self.pki.cert(name),
                                              key=self.pki.key(name), crl=None, min_version="1.2",
                                              allow_proxies=False)))
        return mats

    @defer.inlineCallbacks
    def register_many(self, reactor: Any, port: int, mats: list[TLSMaterial], path: str) -> Any:
        body = json.dumps(envelope(PING_CAP, dict(PING_CAP, label="ping-detail-ip4",
                                                 results=["time", "delay.twoway.icmp.us"]))).encode()
        sem = defer.DeferredSemaphore(32)
        self.agents = [https_agent(reactor, m, HTTPConnectionPool(reactor, persistent=True)) for m in mats]
        failures = []

        @defer.inlineCallbacks
        def one(agent: Any) -> Any:
            resp = yield treq.post(f"https://localhost:{port}/{path}", data=body,
                                   headers={"Content-Type": [CT]}, agent=agent)
            yield resp.content()
            if resp.code != 200:
                failures.append(resp.code)

        t0 = time.perf_counter()
        yield defer.gatherResults([sem.run(one, a) for a in self.agents], consumeErrors=True)
        elapsed = time.perf_counter() - t0
        return {"components": len(mats), "seconds": round(elapsed, 3),
                "registrations_per_s": round(2 * len(mats) / elapsed, 1),
                "components_per_s": round(len(mats) / elapsed, 1), "failures": len(failures)}

    @defer.inlineCallbacks
    def hold_polls(self, reactor: Any, port: int, pid: int) -> Any:
        """Every simulated component holds a long-poll open; memory of the daemon meanwhile."""
        pending = [treq.get(f"https://localhost:{port}/show/specification?wait=20", agent=a)
                   for a in self.agents]
        for d in pending:
            d.addErrback(lambda _: None)
        yield task.deferLater(reactor, 8, lambda: None)
        rss = rss_mb(pid)
        yield defer.gatherResults(pending)
        return round(rss, 1)

    # ------------------------------------------------------------------ SDK measurement

    def sdk_latency(self, python: Path, cap_url: str) -> list[float]:
        lat = []
        for _ in range(self.args.runs):
            out = run_sdk_client(python, self.pki, cap_url, "ping-average-ip4", "now + 2s / 1s", timeout=60)
            if out["kind"] != "Result":
                raise RuntimeError(f"no result from {cap_url}: {out}")
            lat.append(round(out["latency"], 3))
        return lat

    # ------------------------------------------------------------------ ccnet

    @defer.inlineCallbacks
    def run_ccnet(self, reactor: Any, python: Path | None) -> Any:
        folder = self.work / "ccnet"
        folder.mkdir(exist_ok=True)
        (folder / "users.conf").write_text("IT.ccnet.Clients.client: guest\n")
        (folder / "caps.conf").write_text("ping: guest\n")
        conf = textwrap.dedent(f"""\
            [ccnet]
            state-dir = {folder / 'var'}
            [tls]
            ca = {self.pki.ca_cert}
            cert = {self.pki.cert('supervisor')}
            key = {self.pki.key('supervisor')}
            [supervisor]
            listen = ssl:0:interface=127.0.0.1
            users = {folder / 'users.conf'}
            caps = {folder / 'caps.conf'}
            long-poll = 30
            """)
        daemon = yield deferToThread(start_daemon, conf, folder / "run")
        try:
            port = daemon.ports["supervisor"]
            res = self.results["ccnet"]
            res["rss_idle_mb"] = round(rss_mb(daemon.process.pid), 1)
            if python is not None:
                comp_conf = sdk_component_config(self.pki, folder, port, self.sup_identity)
                comp = start_sdk_component(python, comp_conf, folder)
                try:
                    yield deferToThread(wait_log, folder / f"{comp_conf.stem}.log", "Checking for Specifications")
                    res["latency_s"] = yield deferToThread(self.sdk_latency, python,
                                                           f"https://localhost:{port}/capability")
                finally:
                    stop_process(comp)
            mats = yield deferToThread(self.issue_components, self.args.components)
            res["registration"] = yield self.register_many(reactor, port, mats, "register/capability")
            res["rss_with_components_mb"] = yield self.hold_polls(reactor, port, daemon.process.pid)
        finally:
            daemon.stop()

    # ------------------------------------------------------------------ mpsup

    @defer.inlineCallbacks
    def run_mpsup(self, reactor: Any, python: Path) -> Any:
        from tests.support import free_port

        folder = self.work / "mpsup"
        folder.mkdir(exist_ok=True)
        cport, sport = free_port(), free_port()
        conf = mpsup_config(self.pki, folder, dotted(self.pki, "component"), cport, sport)
        sup = start_mpsup(python, conf, folder)
        res = self.results["mpsup"]
        try:
            yield deferToThread(wait_log, folder / "mpsup.log", "ListenerHttpComponent running")
            res["rss_idle_mb"] = round(rss_mb(sup.pid), 1)
            comp_conf = sdk_component_config(self.pki, folder, cport, self.sup_identity)
            comp = start_sdk_component(python, comp_conf, folder)
            try:
                yield deferToThread(wait_log, folder / f"{comp_conf.stem}.log", "Checking for Specifications")
                yield task.deferLater(reactor, 1.0, lambda: None)  # mpsup adds relays from its 0.1 s loop
                res["latency_s"] = yield deferToThread(self.sdk_latency, python,
                                                       f"https://localhost:{sport}/capability")
            finally:
                stop_process(comp)
            n = min(self.args.components, self.args.mpsup_components)
            mats = yield deferToThread(self.issue_components, n)
            res["registration"] = yield self.register_many(reactor, cport, mats, "register/capability")
            res["rss_with_components_mb"] = round(rss_mb(sup.pid), 1)
        finally:
            stop_process(sup)


def table(results: dict[str, Any]) -> str:
    rows = ["| measure | ccnet | mpsup |", "|---|---|---|"]

    def get(name: str, key: str) -> Any:
        return results.get(name, {}).get(key)

    def med(v: Any) -> str:
        return f"{statistics.median(v):.2f} s (runs: {', '.join(map(str, v))})" if v else "n/a"

    rows.append(f"| spec→result latency, `now + 2s / 1s` (1 s of pings) | {med(get('ccnet', 'latency_s'))} "
                f"| {med(get('mpsup', 'latency_s'))} |")
    for name in ("ccnet", "mpsup"):
        lat = get(name, "latency_s")
        if lat:
            results[name]["overhead_s"] = round(statistics.median(lat) - 1.0, 3)
    rows.append(f"| overhead (latency − 1 s of pings) | {get('ccnet', 'overhead_s')} s | {get('mpsup', 'overhead_s')} s |")
    rc, rm = get("ccnet", "registration") or {}, get("mpsup", "registration") or {}
    rows.append(f"| capability registrations/s (2 per component, 32 in flight) | {rc.get('registrations_per_s')} "
                f"({rc.get('components')} components) | {rm.get('registrations_per_s')} ({rm.get('components')} components) |")
    rows.append(f"| RSS idle | {get('ccnet', 'rss_idle_mb')} MB | {get('mpsup', 'rss_idle_mb')} MB |")
    rows.append(f"| RSS with the simulated components registered (ccnet: each holding a long-poll) "
                f"| {get('ccnet', 'rss_with_components_mb')} MB | {get('mpsup', 'rss_with_components_mb')} MB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=1000)
    parser.add_argument("--mpsup-components", type=int, default=200,
                        help="simulated components registered with mpsup (it keeps a thread per relay)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-mpsup", action="store_true")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ccnet-mplane-bench-"))
    bench = Bench(args, work)
    python, why = ensure_sdk_venv()
    if python is None:
        print(f"SDK not available ({why}): measuring ccnet registrations and memory only", file=sys.stderr)

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        try:
            yield bench.run_ccnet(reactor, python)
            if python is not None and not args.skip_mpsup:
                yield bench.run_mpsup(reactor, python)
        finally:
            report = table(bench.results)
            print(json.dumps(bench.results, indent=1))
            print()
            print(report)
            if args.json:
                args.json.write_text(json.dumps(bench.results, indent=1))

    task.react(lambda reactor: run(reactor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
