"""mPlane supervisor benchmark: ccnet against the SDK's own ``mpsup``, same SDK component.

Measures, for each supervisor:

* spec→result latency seen by the unmodified SDK client library for a ping
  specification ``now + 2s / 1s`` (two pings, one second of measuring) run by the
  unmodified SDK ping component (``mpcom`` + ``mplane.components.ping``);
* capability registrations per second from simulated components (distinct
  certificates, one envelope of two capabilities each, 32 in flight);
* for ccnet: the daemon's resident memory with 1,000 simulated components registered
  and each holding a long-poll ``GET show/specification`` open;
* the RI row: spec→result latency and overhead (latency − the measurement's own 1 s)
  with the unmodified 2014 RI fork (``../shared/peers/mplane-ri``): its tstat proxy as
  the component and its client library (``mplane.client.HttpClient``) as the client,
  ``tstat-log_tcp_complete-core`` with ``when = now + 1s``, against the RI's own
  supervisor and against ccnet. The proxy is restarted for every run: it keys jobs by
  the specification's token, which for a relative ``when`` is the same every time, and
  never forgets them, so a repeated specification gets the first run's result back at
  once. Each run's client starts right after the fresh proxy's first
  ``GET show/specification``, i.e. just after a poll (the RI proxy polls every 5 s).

The platform-scale rows (10 000 components on one daemon, and 5 000 on each of two
daemons sharing PostgreSQL: registrations/s, daemon CPU per registration, RSS with every
poll held, overhead alone and loaded) are ``bench/mplane_scale_bench.py``'s, which reuses
this file's simulated components; ``make bench`` runs both.

Run: ``PYTHONPATH=. .venv/bin/python bench/mplane_bench.py [--components 1000] [--runs 3]``
(``--ri-only`` for the RI row alone, ``--skip-ri`` without it). It needs python3.11 and
network access to PyPI once (the SDK venv is cached in ``$CCNET_MPLANE_SDK_VENV``, default
/tmp/ccnet-mplane-sdk-0.9.0; the RI venv in ``$CCNET_MPLANE_RI_VENV``, default
/tmp/ccnet-mplane-ri-venv). Results are printed as JSON and Markdown tables for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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
from ccnet.edge.client import https_agent  # noqa: E402
from ccnet.tls import TLSMaterial  # noqa: E402
from tests.ri_support import (  # noqa: E402
    ensure_ri_venv,
    ri_tstat_caps,
    run_ri_client,
    start_ccnet_supervisor,
    start_ri_supervisor,
    start_ri_tstat_proxy,
    wait_ri_registration,
)
from tests.support import free_port, stop_process, test_pki  # noqa: E402
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
    wait_log,
)

CT = "application/x-mplane+json"
RI_LABEL = "tstat-log_tcp_complete-core"
RI_WHEN = "now + 1s"
RI_DURATION = 1.0  # the measurement's own duration, RI_WHEN


#: What each simulated component registers: one envelope of two capabilities.
TWO_CAPS = json.dumps(envelope(PING_CAP, dict(PING_CAP, label="ping-detail-ip4",
                                              results=["time", "delay.twoway.icmp.us"]))).encode()


#: Every simulated component connects from 127.0.0.1 and keeps its connection: the edge's
#: caps (512, 64 per peer) raised.
ONE_PEER_MANY_CONNECTIONS = "max-connections = 30000\nmax-connections-per-peer = 30000\n"


@defer.inlineCallbacks
def register_all(targets: list[tuple[Any, int]], path: str = "register/capability", in_flight: int = 32) -> Any:
    """Every (agent, port) posts :data:`TWO_CAPS` over its own connection, ``in_flight`` at once."""
    sem = defer.DeferredSemaphore(in_flight)
    failures = []

    @defer.inlineCallbacks
    def one(agent: Any, port: int) -> Any:
        resp = yield treq.post(f"https://localhost:{port}/{path}", data=TWO_CAPS,
                               headers={"Content-Type": [CT]}, agent=agent)
        yield resp.content()
        if resp.code != 200:
            failures.append(resp.code)

    t0 = time.perf_counter()
    yield defer.gatherResults([sem.run(one, a, p) for a, p in targets], consumeErrors=True)
    elapsed = time.perf_counter() - t0
    return {"components": len(targets), "seconds": round(elapsed, 3),
            "registrations_per_s": round(2 * len(targets) / elapsed, 1),
            "components_per_s": round(len(targets) / elapsed, 1), "failures": len(failures)}


def component_material(ca: Path, cert: Path, key: Path) -> TLSMaterial:
    """A simulated component's client TLS material."""
    return TLSMaterial(TLSConfig(ca=ca, cert=cert, key=key, crl=None, min_version="1.2", allow_proxies=False))


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
        self.results: dict[str, Any] = {"ccnet": {}, "mpsup": {}, "ri": {}}

    # ------------------------------------------------------------------ simulated components

    def issue_component_files(self, n: int) -> list[tuple[Path, Path]]:
        """(certificate, key) of simulated components ``sim-0`` … ``sim-<n-1>``, issued when missing."""
        files = []
        for i in range(n):
            name = f"sim-{i}"
            if not self.pki.cert(name).exists():
                self.pki.pki.issue("component", name)
            files.append((self.pki.cert(name), self.pki.key(name)))
        return files

    def issue_components(self, n: int) -> list[TLSMaterial]:
        return [component_material(self.pki.ca_cert, cert, key) for cert, key in self.issue_component_files(n)]

    @defer.inlineCallbacks
    def register_many(self, reactor: Any, port: int, mats: list[TLSMaterial], path: str) -> Any:
        self.agents = [https_agent(reactor, m, HTTPConnectionPool(reactor, persistent=True)) for m in mats]
        return (yield register_all([(a, port) for a in self.agents], path))

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
        daemon, port = yield deferToThread(start_ccnet_supervisor, folder, self.pki,
                                           {"IT.ccnet.Clients.client": ["guest"]}, {"ping": ["guest"]},
                                           long_poll=30, extra=ONE_PEER_MANY_CONNECTIONS)
        try:
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

    # ------------------------------------------------------------------ the RI fork

    def ri_latency(self, python: Path, folder: Path, port: int) -> list[float]:
        """Blocking: ``--runs`` spec→result latencies of the RI client library through the
        supervisor on 127.0.0.1:``port``, a fresh RI tstat proxy for each run."""
        lat = []
        for run in range(self.args.runs):
            run_dir = folder / f"run-{run}"
            proxy = start_ri_tstat_proxy(python, run_dir / "proxy", self.pki, "127.0.0.1", port)
            try:
                # A refusal (the proxy prints the status and exits) raises with the proxy's log.
                outcome = wait_ri_registration(proxy, run_dir / "proxy", timeout=30)
                if run == 0 and outcome.get(RI_LABEL) != "Ok":
                    raise RuntimeError(f"the RI tstat proxy's registration: {outcome}")
                out = run_ri_client(python, run_dir / "client", self.pki, port, RI_LABEL, RI_WHEN, timeout=30)
            finally:
                stop_process(proxy)
            if out.get("kind") != "Result":
                detail = out.get("error") or f"no Result within 30 s (last answer: {out.get('kind')})"
                raise RuntimeError(f"RI client run {run}: {detail}\n{out.get('log', '')}")
            lat.append(round(out["latency"], 3))
        return lat

    @defer.inlineCallbacks
    def run_ri(self, reactor: Any, python: Path) -> Any:
        """The RI row: (a) the RI's own supervisor, (b) a ccnet daemon; a failure on one
        side is recorded as that side's ``error`` and does not stop the other."""
        users = {dotted(self.pki, "client"): ["guest"]}
        caps = ri_tstat_caps(self.pki)
        res: dict[str, Any] = self.results["ri"]

        def ri_side() -> None:
            folder = self.work / "ri-supervisor"
            port = free_port()
            sup = start_ri_supervisor(python, folder, self.pki, port, users=users, caps=caps)
            try:
                res["ri_supervisor"] = {"latency_s": self.ri_latency(python, folder, port)}
            finally:
                stop_process(sup)

        def ccnet_side() -> None:
            folder = self.work / "ri-ccnet"
            daemon, port = start_ccnet_supervisor(folder, self.pki, users, caps, long_poll=30)
            try:
                res["ccnet"] = {"latency_s": self.ri_latency(python, folder, port)}
            except RuntimeError:
                log = daemon.log()
                print(f"ccnet daemon log (tail):\n{log[-3000:]}", file=sys.stderr)
                raise
            finally:
                daemon.stop()

        for name, run in (("ri_supervisor", ri_side), ("ccnet", ccnet_side)):
            try:
                yield deferToThread(run)
            except Exception as exc:  # noqa: BLE001 (reported in the table, the bench goes on)
                message = str(exc)
                print(f"RI row, {name}: {message}", file=sys.stderr)
                res[name] = {"error": message.splitlines()[0].rstrip(":") if message else type(exc).__name__}
        for side in ("ri_supervisor", "ccnet"):
            lat = res.get(side, {}).get("latency_s")
            if lat:
                res[side]["overhead_s"] = round(statistics.median(lat) - RI_DURATION, 3)


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


def ri_table(ri: dict[str, Any]) -> str:
    """The RI row: ccnet and the RI's own supervisor side by side, and their ratio."""
    rows = [f"| unmodified RI tstat proxy + RI client, `{RI_LABEL}`, `when = {RI_WHEN}` "
            "| ccnet | RI supervisor | RI / ccnet |", "|---|---|---|---|"]
    cc, rs = ri.get("ccnet", {}), ri.get("ri_supervisor", {})

    def cell(side: dict[str, Any], key: str) -> str:
        if "error" in side:
            return f"n/a ({side['error']})"
        value = side.get(key)
        if value is None:
            return "n/a"
        if key == "latency_s":
            return f"{statistics.median(value):.2f} s (runs: {', '.join(map(str, value))})"
        return f"{value:.2f} s"

    def ratio(key: str) -> str:
        a, b = cc.get(key), rs.get(key)
        if a is None or b is None:
            return "n/a"
        if key == "latency_s":
            a, b = statistics.median(a), statistics.median(b)
        return f"{b / a:.1f}×" if a > 0 else "n/a"

    rows.append(f"| median spec→result latency | {cell(cc, 'latency_s')} | {cell(rs, 'latency_s')} "
                f"| {ratio('latency_s')} |")
    rows.append(f"| overhead (latency − {RI_DURATION:g} s of measurement) | {cell(cc, 'overhead_s')} "
                f"| {cell(rs, 'overhead_s')} | {ratio('overhead_s')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=1000)
    parser.add_argument("--mpsup-components", type=int, default=200,
                        help="simulated components registered with mpsup (it keeps a thread per relay)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-mpsup", action="store_true")
    parser.add_argument("--skip-ri", action="store_true", help="leave out the RI row")
    parser.add_argument("--ri-only", action="store_true", help="only the RI row")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ccnet-mplane-bench-"))
    bench = Bench(args, work)
    python, why = (None, "--ri-only") if args.ri_only else ensure_sdk_venv()
    if python is None and not args.ri_only:
        print(f"SDK not available ({why}): measuring ccnet registrations and memory only", file=sys.stderr)
    ri_python, ri_why = (None, "--skip-ri") if args.skip_ri else ensure_ri_venv()
    if ri_python is None and not args.skip_ri:
        print(f"mPlane RI not available ({ri_why}): no RI row", file=sys.stderr)

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        try:
            if not args.ri_only:
                yield bench.run_ccnet(reactor, python)
                if python is not None and not args.skip_mpsup:
                    yield bench.run_mpsup(reactor, python)
            if ri_python is not None:
                yield bench.run_ri(reactor, ri_python)
        finally:
            print(json.dumps(bench.results, indent=1))
            if not args.ri_only:
                print()
                print(table(bench.results))
            if ri_python is not None:
                print()
                print(ri_table(bench.results["ri"]))
            if args.json:
                args.json.write_text(json.dumps(bench.results, indent=1))

    task.react(lambda reactor: run(reactor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
