"""mPlane supervisor at platform scale (issue 17): N simulated components on one daemon, and
N/2 on each of two daemons sharing one PostgreSQL database.

For each topology, with every simulated component (its own certificate, its own mutual-TLS
connection) holding a long-poll ``GET show/specification`` open:

* capability registrations per second (one envelope of two capabilities per component,
  a new connection each, 32 in flight in all, spread over the daemons), sent by several
  client processes (``--clients``) of blocking pyOpenSSL connections in threads (see
  :func:`register_slice`: a load generator that leaves the shared cores to the daemons),
  and each daemon's CPU time per registration (from ``/proc/<pid>/stat``) and the
  clients' own: on a machine whose cores the clients share, the daemon's CPU per
  registration is the figure that says what a daemon costs;
* each daemon's resident memory;
* spec→result overhead for one component: a client submits to the capability's link at
  daemon A, the component's held poll (at B when there are two) receives it, the component
  answers with the result at once, the client redeems it at A. The component does no
  measuring, so the whole time is overhead. The same is measured first with that one
  component alone on the daemon(s), side by side;
* when the SDK venv can be had (``tests.test_mplane_support.ensure_sdk_venv``), the
  spec→result latency exactly as ``bench/mplane_bench.py`` measured its 0.095 s overhead:
  the unmodified SDK ping component (at B when there are two) and SDK client (at A),
  ``now + 2s / 1s``, alone and then with every simulated component holding its poll.

Run: ``PYTHONPATH=. .venv/bin/python bench/mplane_scale_bench.py [--components 10000]
[--runs 5] [--only one|two] [--clients 3] [--no-sdk]``. The two-daemon row needs PostgreSQL
(``CCNET_BENCH_PG_DSN``, else ``CCNET_TEST_PG_DSN``; a fresh database is made and dropped).
Certificates of the simulated components are issued once into a PKI under
``$CCNET_SCALE_BENCH_DIR`` (default /tmp/ccnet-scale-bench) and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import treq  # noqa: E402
from mplane_bench import (  # noqa: E402
    ONE_PEER_MANY_CONNECTIONS,
    TWO_CAPS,
    Bench,
    component_material,
    register_all,
    rss_mb,
)
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.web.client import HTTPConnectionPool  # noqa: E402

from ccnet.edge.client import https_agent  # noqa: E402
from ccnet.mplane.model import RegistryStore, from_dict  # noqa: E402
from ccnet.mplane.state import capability_key  # noqa: E402
from tests.ri_support import start_ccnet_supervisor  # noqa: E402
from tests.support import Daemon, create_database, drop_database, stop_process, test_pki  # noqa: E402
from tests.test_mplane_support import (  # noqa: E402
    PING_CAP,
    dotted,
    ensure_sdk_venv,
    material,
    sdk_component_config,
    start_sdk_component,
    wait_log,
)

CT = "application/x-mplane+json"
#: Polls opened at once (each a new mutual-TLS connection).
POLLS_OPENING = 200


def spec_body(n: int) -> bytes:
    return json.dumps({
        "specification": "measure", "version": 1, "registry": "http://ict-mplane.eu/registry/core",
        "label": "ping-average-ip4", "token": f"{n:032x}", "when": "now + 1s / 1s",
        "parameters": {"destination.ip4": "127.0.0.1", "source.ip4": "127.0.0.1"},
        "results": PING_CAP["results"]}).encode()


def result_body(work: dict[str, Any]) -> bytes:
    d = {k: v for k, v in work.items() if k not in ("specification", "link")}
    d["result"] = work["specification"]
    d["when"] = "2026-11-24 10:00:00.000000 ... 2026-11-24 10:00:02.000000"
    d["resultvalues"] = [["30", "45", "60", "2"]]
    return json.dumps(d).encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def register_slice(job: dict[str, Any]) -> dict[str, Any]:
    """In a client process of its own (spawned): register ``job["targets"]`` (certificate,
    key, port) from ``job["start_at"]`` on, ``job["in_flight"]`` at once; the outcome, the
    process's CPU time and when it started and ended (wall clock, comparable across
    processes).

    A load generator that costs the shared cores as little as it can: blocking sockets in
    ``in_flight`` threads (OpenSSL and the socket calls run without the GIL), one pyOpenSSL
    context for all (each connection sets its component's certificate and key, read before
    the start: a context per component would cost more than the handshake), the server's
    chain verified, one request per connection (``Connection: close``)."""
    import queue
    import socket
    import struct
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import SSL, crypto

    request = (b"POST /register/capability HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               b"Content-Type: " + CT.encode() + b"\r\nContent-Length: " + str(len(TWO_CAPS)).encode()
               + b"\r\n\r\n" + TWO_CAPS)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.load_verify_locations(job["ca"])
    ctx.set_verify(SSL.VERIFY_PEER, None)
    todo: queue.SimpleQueue[tuple[Any, Any, int]] = queue.SimpleQueue()
    for cert, key, port in job["targets"]:
        todo.put((crypto.X509.from_cryptography(x509.load_pem_x509_certificate(Path(cert).read_bytes())),
                  crypto.PKey.from_cryptography_key(load_pem_private_key(Path(key).read_bytes(), None)),  # type: ignore[arg-type]
                  port))
    failures: list[str] = []
    registered = [0]  # capabilities the supervisor answered "ok" for
    lock = threading.Lock()
    stall = struct.pack("ll", 60, 0)

    def one(cert: Any, key: Any, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.settimeout(None)  # OpenSSL reads the descriptor itself: it must block,
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, stall)  # but not for ever
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, stall)
            conn = SSL.Connection(ctx, sock)
            conn.use_certificate(cert)
            conn.use_privatekey(key)
            conn.set_tlsext_host_name(b"localhost")
            conn.set_connect_state()
            conn.do_handshake()
            conn.sendall(request)
            reply = b""
            try:
                while chunk := conn.recv(65536):
                    reply += chunk
            except SSL.ZeroReturnError:
                pass
        status = reply.split(b"\r\n", 1)[0]
        if b" 200 " not in status:
            failures.append(status.decode(errors="replace"))
            return
        # 200 with each capability's outcome: only those registered count.
        ok = reply.count(b'"registered": "ok"')
        with lock:
            registered[0] += ok
        if ok != 2:
            failures.append(f"{ok} of 2 capabilities registered")

    def worker() -> None:
        while True:
            try:
                target = todo.get_nowait()
            except queue.Empty:
                return
            try:
                one(*target)
            except Exception as e:  # noqa: BLE001 (counted and shown, the worker goes on)
                failures.append(repr(e))

    time.sleep(max(0.0, job["start_at"] - time.time()))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.time()
    threads = [threading.Thread(target=worker) for _ in range(job["in_flight"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"start": start, "end": time.time(), "components": len(job["targets"]), "failures": len(failures),
            "capabilities_registered": registered[0],
            "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            "failure_kinds": sorted(set(failures))[:5]}


def register_from_processes(ca: Path, targets: list[tuple[Path, Path, int]], clients: int,
                            in_flight: int) -> dict[str, Any]:
    """Blocking: ``targets`` registered by ``clients`` processes together (``in_flight`` in
    all); the rate over the span from the first start to the last end."""
    jobs = [{"ca": str(ca), "targets": [(str(c), str(k), p) for c, k, p in targets[i::clients]],
             "in_flight": max(1, in_flight // clients), "start_at": time.time() + 10.0}
            for i in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        parts = pool.map(register_slice, jobs)
    seconds = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    n = sum(p["components"] for p in parts)
    return {"components": n, "client_processes": clients, "seconds": round(seconds, 3),
            "capabilities_registered": (caps := sum(p["capabilities_registered"] for p in parts)),
            "registrations_per_s": round(caps / seconds, 1), "components_per_s": round(n / seconds, 1),
            "client_cpu_s": round(sum(p["cpu_s"] for p in parts), 1), "failures": sum(p["failures"] for p in parts),
            "failure_kinds": sorted({k for p in parts for k in p["failure_kinds"]})[:5]}


@defer.inlineCallbacks
def polls_held(metrics_port: int) -> Any:
    """``ccnet_mplane_polls_held`` of the daemon whose metrics listen on ``metrics_port``."""
    resp = yield treq.get(f"http://127.0.0.1:{metrics_port}/metrics")
    text = (yield resp.content()).decode()
    return next(int(float(line.split()[1])) for line in text.splitlines()
                if line.startswith("ccnet_mplane_polls_held "))


class ScaleBench:
    def __init__(self, args: argparse.Namespace, work: Path, reactor: Any) -> None:
        self.args = args
        self.issuer = Bench(args, work)  # the simulated components' certificates (it chdirs to work)
        self.pki = test_pki()
        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=work))  # this run's daemons
        self.results: dict[str, Any] = {}
        self.sdk_python: Path | None = None
        if not args.no_sdk:
            self.sdk_python, why = ensure_sdk_venv()
            if self.sdk_python is None:
                print(f"SDK not available ({why}): no SDK latency", file=sys.stderr)
        self.client = https_agent(reactor, material(self.pki, "admin"), HTTPConnectionPool(reactor, persistent=True))

    def start(self, name: str, store: str | None) -> tuple[Daemon, int]:
        extra = (f"node-name = {name}\n{ONE_PEER_MANY_CONNECTIONS}"
                 "\n[metrics]\nlisten = tcp:0:interface=127.0.0.1\n"
                 + (f"\n[store]\nurl = {store}\n" if store else ""))
        # The SDK client picks a capability by its label, which every simulated component
        # shares: it ("client") sees the SDK component's only; the bench's own client
        # (certificate "admin", role "bench", no admin rights) sees sim-0's.
        users = {dotted(self.pki, "client"): ["guest"], dotted(self.pki, "admin"): ["bench"]}
        caps = {f"ping, {dotted(self.pki, 'component')}": ["guest"], f"ping, {dotted(self.pki, 'sim-0')}": ["bench"]}
        return start_ccnet_supervisor(self.work / name, self.pki, users, caps, extra=extra, long_poll=600)

    @defer.inlineCallbacks
    def overhead(self, reactor: Any, agent: Any, ident: str, comp_port: int, client_port: int) -> Any:
        """Seconds from the client's submission (at ``client_port``) to its redeemed result,
        the component's poll held at ``comp_port``; median of ``--runs``."""
        cap = from_dict(PING_CAP).with_token(RegistryStore())  # type: ignore[union-attr]
        link = f"https://localhost:{client_port}/register/specification/{capability_key(ident, cap)}"
        times = []
        for run in range(self.args.runs):
            poll = treq.get(f"https://localhost:{comp_port}/show/specification?wait=60", agent=agent)
            yield task.deferLater(reactor, 0.5, lambda: None)  # the poll is held
            token = f"{os.getpid():08x}{run:08x}{int(time.time()):016x}"
            t0 = time.perf_counter()
            resp = yield treq.post(link, data=spec_body(int(token, 16)), headers={"Content-Type": [CT]},
                                   agent=self.client)
            receipt = json.loads((yield resp.content()))
            if "receipt" not in receipt:
                raise RuntimeError(f"no receipt: {receipt}")
            resp = yield poll
            work = [m for m in json.loads((yield resp.content()))["contents"] if "specification" in m]
            if not work:
                raise RuntimeError("the held poll ended without the specification")
            resp = yield treq.post(f"https://localhost:{comp_port}/register/result", data=result_body(work[0]),
                                   headers={"Content-Type": [CT]}, agent=agent)
            yield resp.content()
            resp = yield treq.get(f"https://localhost:{client_port}/show/result?token={receipt['token']}",
                                  agent=self.client)
            result = json.loads((yield resp.content()))
            if "result" not in result:
                raise RuntimeError(f"not redeemed at once: {result}")
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times), 4)

    @defer.inlineCallbacks
    def sdk_latency(self, comp_port: int, client_port: int, tag: str) -> Any:
        """``--runs`` spec→result latencies of the SDK client at ``client_port`` with the SDK
        ping component at ``comp_port``, as ``bench/mplane_bench.py`` measures them."""
        assert self.sdk_python is not None
        folder = self.work / f"sdk-{comp_port}-{tag}"
        folder.mkdir()
        conf = sdk_component_config(self.pki, folder, comp_port, self.issuer.sup_identity)
        comp = start_sdk_component(self.sdk_python, conf, folder)
        try:
            yield deferToThread(wait_log, folder / f"{conf.stem}.log", "Checking for Specifications")
            return (yield deferToThread(self.issuer.sdk_latency, self.sdk_python,
                                        f"https://localhost:{client_port}/capability"))
        finally:
            stop_process(comp)

    @defer.inlineCallbacks
    def topology(self, reactor: Any, key: str, daemons: list[tuple[Daemon, int]]) -> Any:
        n = self.args.components
        files = yield deferToThread(self.issuer.issue_component_files, n)
        ca = self.issuer.pki.ca_cert
        agents = [https_agent(reactor, component_material(ca, cert, key), HTTPConnectionPool(reactor, persistent=True))
                  for cert, key in files]
        ports = [port for _, port in daemons]
        comp_port, client_port = ports[-1], ports[0]
        ident = dotted(self.pki, "sim-0")
        res: dict[str, Any] = {"daemons": len(daemons), "components": n}
        # sim-0 alone first: the baseline.
        yield register_all([(agents[0], comp_port)])
        res["overhead_alone_s"] = yield self.overhead(reactor, agents[0], ident, comp_port, client_port)
        if self.sdk_python is not None:
            res["sdk_latency_alone_s"] = yield self.sdk_latency(comp_port, client_port, "alone")
        pids = [d.process.pid for d, _ in daemons]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        res["registration"] = reg = yield deferToThread(
            register_from_processes, ca, [(c, k, ports[i % len(ports)]) for i, (c, k) in enumerate(files[1:], 1)],
            self.args.clients, self.args.in_flight)
        # What the registrations cost the daemons, whoever else used the cores meanwhile.
        reg["daemon_cpu_s"] = [round(cpu_seconds(pid) - c, 1) for pid, c in zip(pids, cpu0, strict=True)]
        reg["daemon_cpu_ms_per_registration"] = round(1000 * sum(reg["daemon_cpu_s"]) / max(1, reg["capabilities_registered"]), 2)
        # Every other component opens its poll on a new connection; at most POLLS_OPENING
        # handshakes at once (all at once overflows the listen queue), until every poll is
        # held as each daemon counts them (bounded wait).
        polls, failed = [], []
        t0 = time.monotonic()
        for start in range(1, n, POLLS_OPENING):
            for i in range(start, min(n, start + POLLS_OPENING)):
                d = treq.get(f"https://localhost:{ports[i % len(ports)]}/show/specification?wait=600",
                             agent=agents[i])
                d.addErrback(failed.append)
                polls.append(d)
            while True:
                held = yield defer.gatherResults([polls_held(d.ports["metrics"]) for d, _ in daemons])
                if sum(held) + len(failed) >= len(polls) - (POLLS_OPENING if len(polls) < n - 1 else 0) \
                        or time.monotonic() - t0 > 300:
                    break
                yield task.deferLater(reactor, 0.2, lambda: None)
        res["polls_failed"] = len(failed)
        res["polls_held"] = held
        res["rss_mb"] = [round(rss_mb(pid), 1) for pid in pids]
        res["overhead_loaded_s"] = yield self.overhead(reactor, agents[0], ident, comp_port, client_port)
        if self.sdk_python is not None:
            res["sdk_latency_loaded_s"] = yield self.sdk_latency(comp_port, client_port, "loaded")
        res["rss_after_mb"] = [round(rss_mb(d.process.pid), 1) for d, _ in daemons]
        for d in polls:
            d.cancel()  # closes each connection (no waiting for the polls to run out)
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.results[key] = res

    @defer.inlineCallbacks
    def run(self, reactor: Any) -> Any:
        if self.args.only in (None, "one"):
            daemon = yield deferToThread(self.start, "one", None)
            try:
                yield self.topology(reactor, "one daemon (SQLite)", [daemon])
            finally:
                yield deferToThread(daemon[0].stop)
        if self.args.only in (None, "two"):
            dsn = os.environ.get("CCNET_BENCH_PG_DSN") or os.environ.get("CCNET_TEST_PG_DSN")
            if not dsn:
                print("two daemons: skipped (set CCNET_BENCH_PG_DSN or CCNET_TEST_PG_DSN)", file=sys.stderr)
                return
            os.environ["CCNET_TEST_PG_DSN"] = dsn
            db = create_database()
            daemons = []
            try:
                for name in ("A", "B"):
                    daemons.append((yield deferToThread(self.start, name, db)))
                yield self.topology(reactor, "two daemons (PostgreSQL)", daemons)
            finally:
                for d, _ in daemons:
                    yield deferToThread(d.stop)
                drop_database(db)

    def report(self) -> None:
        print(json.dumps(self.results, indent=1))
        print(table(self.results))
        if self.args.json:
            self.args.json.write_text(json.dumps(self.results, indent=1))


def table(results: dict[str, Any]) -> str:
    lines = ["| topology | components | registrations/s | daemon CPU per registration | polls held | RSS per daemon "
             "| spec→result overhead, 1 component alone | same, all components holding a poll "
             "| SDK overhead (latency − 1 s), alone | same, all holding a poll |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def sdk(r: dict[str, Any], key: str) -> str:
        return f"{statistics.median(r[key]) - 1:.3f} s" if key in r else "-"

    for key, r in results.items():
        reg = r["registration"]
        lines.append(f"| {key} | {r['components']} | {reg['registrations_per_s']} ({reg['failures']} failed) "
                     f"| {reg['daemon_cpu_ms_per_registration']} ms | {' / '.join(map(str, r['polls_held']))} | "
                     f"{' / '.join(f'{x:.0f} MB' for x in r['rss_mb'])} | {r['overhead_alone_s']} s | "
                     f"{r['overhead_loaded_s']} s | {sdk(r, 'sdk_latency_alone_s')} | {sdk(r, 'sdk_latency_loaded_s')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("one", "two"))
    parser.add_argument("--clients", type=int, default=3, help="client processes that register the components")
    parser.add_argument("--in-flight", type=int, default=32, help="registrations in flight, all clients together")
    parser.add_argument("--no-sdk", action="store_true", help="leave out the SDK component's latency")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per component, here and there
    # Kept between runs: issuing 10 000 certificates takes a while.
    work = Path(os.environ.get("CCNET_SCALE_BENCH_DIR", "/tmp/ccnet-scale-bench"))
    work.mkdir(parents=True, exist_ok=True)

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        bench = ScaleBench(args, work, reactor)
        try:
            yield bench.run(reactor)
        finally:
            bench.report()

    task.react(lambda reactor: run(reactor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
