"""DIRAC-style RPC ``ping`` throughput and latency: ccnet vs a Tornado 6 server.

    .venv/bin/python bench/rpc_bench.py [--duration 5] [--levels 1,16,64] [--json]

Both servers run in their own process, with mutual TLS (same certificates, same CA),
one access-log line per call written to a file, and the same route and reply:
``POST /Bench/Ping`` with ``method=ping&args=[]`` answered by DIRAC's ping dictionary
JEncoded as ``{"OK": true, "Value": {...}}``.

* ``ccnet``: the whole ``twistd -n ccnet`` daemon (edge, limits, access log to stdout
  redirected to a file), ``[rpc:Bench/Ping]`` answered by the ``RPCService`` built-ins;
* ``tornado``: a Tornado 6 ``RequestHandler`` written the way DIRAC's
  ``TornadoService`` handles a call: form fields, JEncode ``args``, the peer certificate
  read per request, the export run in a thread-pool executor, JEncode reply, access log;
* ``tornado-inline`` (``--inline``): the same handler running the export on the IOLoop,
  which DIRAC does not do;
* ``tornado-minimal``: inline and without any logging -- the framework limit, the
  baseline issue 15 names (ccnet still writes its access line per call).

With ``--rounds N`` every server is started once and measured N times in turn at each
level (interleaved, so that load from elsewhere on the machine falls on all of them);
the median round is reported.

The load generator is the same for all: separate processes running asyncio with
``ssl``, one keep-alive connection per concurrent caller, each sending its next call as
soon as the previous reply is complete.  Tornado is installed only for this benchmark
(``.venv/bin/pip install 'tornado>=6,<7'``); without it the Tornado rows are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROUTE = "/Bench/Ping"
BODY = b"method=ping&args=%5B%5D"


# ----------------------------------------------------------------------------- load generator


def _request(port: int) -> bytes:
    return (
        f"POST {ROUTE} HTTP/1.1\r\nHost: localhost:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _connection(
    port: int, ctx: ssl.SSLContext, start: float, end: float, lat: list[float], errors: list[int],
    done_calls: list[int], fresh: bool = False,
) -> None:
    """One caller: calls back to back on a keep-alive connection, or (``fresh``) each call
    on a new mutual-TLS connection, handshake included in its latency (``ab`` without -k)."""
    request = _request(port)
    reader = writer = None
    try:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                break
            if writer is None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            assert reader is not None
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if match is None:
                raise RuntimeError(f"reply without content-length: {head[:200]!r}")
            body = await reader.readexactly(int(match.group(1)))
            if fresh:
                writer.close()
                writer = None
            done = time.perf_counter()
            done_calls[0] += 1
            if not head.startswith(b"HTTP/1.1 200") or not body.startswith(b'{"OK":true'):
                errors[0] += 1
            elif sent >= start:
                lat.append(done - sent)
    finally:
        if writer is not None:
            writer.close()


def _worker(port: int, conns: int, warmup: float, duration: float, cert: str, key: str, ca: str,
            t0: float, fresh: bool = False) -> tuple[list[float], int, int]:
    """One load process: ``conns`` keep-alive connections until t0 + warmup + duration."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    lat: list[float] = []
    errors = [0]
    done_calls = [0]

    async def main() -> None:
        start = t0 + warmup
        end = start + duration
        await asyncio.gather(*(_connection(port, ctx, start, end, lat, errors, done_calls, fresh)
                               for _ in range(conns)))

    asyncio.run(main())
    return lat, errors[0], done_calls[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, concurrency: int, warmup: float, duration: float, pki: dict[str, str],
            pid: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """Throughput and latency; with ``pid``, also the server's CPU time per call, which
    load from elsewhere on the machine hardly changes (unlike calls/s)."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    procs = 1 if concurrency == 1 else 2
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    t0 = time.perf_counter() + 0.3
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        results = pool.starmap(
            _worker,
            [(port, n, warmup, duration, pki["client_cert"], pki["client_key"], pki["ca"], t0, fresh)
             for n in shares],
        )
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    lat = sorted(x for part, _, _ in results for x in part)
    errors = sum(e for _, e, _ in results)
    total_calls = sum(n for _, _, n in results)
    if not lat:
        raise RuntimeError("no successful calls")

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    return {
        "concurrency": concurrency,
        "calls": len(lat),
        "errors": errors,
        "calls_per_s": len(lat) / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "cpu_us_per_call": cpu / total_calls * 1e6 if pid and total_calls else None,
    }


# ----------------------------------------------------------------------------- servers


def make_pki(folder: Path) -> dict[str, str]:
    from ccnet.pki import PKI

    pki = PKI(folder / "pki")
    pki.init("/C=IT/O=ccnet/CN=bench CA", force=True)
    pki.issue("server", "server", ["DNS:localhost", "IP:127.0.0.1"])
    pki.issue("client", "client")
    return {
        "ca": str(pki.ca_cert_path),
        "server_cert": str(pki.cert_path("server")),
        "server_key": str(pki.key_path("server")),
        "client_cert": str(pki.cert_path("client")),
        "client_key": str(pki.key_path("client")),
    }


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[Any], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"server not ready:\n{path.read_text() if path.exists() else ''}")


def start_ccnet(folder: Path, pki: dict[str, str]) -> tuple[subprocess.Popen[Any], int]:
    config = folder / "ccnet.ini"
    config.write_text(
        f"""
[ccnet]
state-dir = {folder / 'var'}

[tls]
ca = {pki['ca']}
cert = {pki['server_cert']}
key = {pki['server_key']}

[store]
url = sqlite:///{folder / 'var' / 'ccnet.db'}

[rpc]
listen = ssl:0:interface=127.0.0.1

[rpc:Bench/Ping]
class = ccnet.rpc.service:RPCService
"""
    )
    log = folder / "ccnet.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Log to stdout (as under systemd): twistd's --logfile=PATH rotates every 1 MB and
    # renames every older file on each rotation, which would dominate a long run.
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "--logfile=-",
             "ccnet", "--config", str(config)],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    port = int(_wait_for(log, r"ccnet rpc listening on \S+:(\d+)", proc).group(1))
    _wait_for(log, r" ready: ", proc)
    return proc, port


def start_tornado(folder: Path, pki: dict[str, str], mode: str) -> tuple[subprocess.Popen[Any], int]:
    """``mode``: ``executor`` (DIRAC's way), ``inline`` or ``minimal`` (inline, no logging)."""
    portfile = folder / f"tornado-{mode}.port"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-tornado", json.dumps(pki), str(folder), str(portfile), mode],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    port = int(_wait_for(portfile, r"(\d+)", proc).group(1))
    return proc, port


def serve_tornado(pki: dict[str, str], folder: Path, portfile: Path, mode: str) -> None:
    """The Tornado side: a DIRAC TornadoService-like handler for /Bench/Ping."""
    import datetime
    import logging
    from concurrent.futures import ThreadPoolExecutor

    import tornado.httpserver
    import tornado.ioloop
    import tornado.web

    from ccnet.rpc.codec import decode, encode

    if mode != "minimal":
        logging.basicConfig(filename=str(folder / f"tornado-{mode}.log"), level=logging.INFO)
    executor = ThreadPoolExecutor(max_workers=10)
    started = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    def export_ping(cred: dict[str, Any]) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        info: dict[str, Any] = {"version": "bench", "time": now}
        with open("/proc/uptime") as handle:
            info["host uptime"] = int(float(handle.readline().split()[0]))
        info["service start time"] = started
        info["service uptime"] = int((now - started).total_seconds())
        info["load"] = " ".join(str(x) for x in os.getloadavg())
        info["name"] = "Bench/Ping"
        times = os.times()
        info["cpu times"] = {
            "user time": times.user, "system time": times.system,
            "children user time": times.children_user,
            "children system time": times.children_system, "elapsed real time": times.elapsed,
        }
        info["URL"] = "https://localhost/Bench/Ping"
        return {"OK": True, "Value": info}

    class PingHandler(tornado.web.RequestHandler):
        async def post(self, system: str, component: str) -> None:
            method = self.get_argument("method")
            args = decode(self.get_body_argument("args", "[]"))
            cert = self.request.get_ssl_certificate()  # DIRAC reads the chain per request
            subject = cert.get("subject", ()) if cert else ()
            cred = {"DN": "/" + "/".join(f"{k}={v}" for rdn in subject for k, v in rdn)}
            if method != "ping" or args:
                raise tornado.web.HTTPError(501)
            if mode == "executor":
                result = await tornado.ioloop.IOLoop.current().run_in_executor(executor, export_ping, cred)
            else:
                result = export_ping(cred)
            self.set_header("Content-Type", "application/json")
            self.finish(encode(result))

    app = tornado.web.Application([(r"/(Bench)/(Ping)", PingHandler)])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    ctx.load_verify_locations(pki["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = tornado.httpserver.HTTPServer(app, ssl_options=ctx)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    portfile.write_text(str(sockets[0].getsockname()[1]))
    tornado.ioloop.IOLoop.current().start()


# ----------------------------------------------------------------------------- main


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-tornado":
        serve_tornado(json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per level (median)")
    parser.add_argument("--inline", action="store_true", help="also measure Tornado inline with logging")
    parser.add_argument("--new-connection", action="store_true",
                        help="a new mutual-TLS connection per call instead of keep-alive")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    options = parser.parse_args()
    levels = [int(x) for x in options.levels.split(",")]
    try:
        import tornado

        tornado_version: str | None = tornado.version
    except ImportError:
        tornado_version = None
        print("rpc_bench: tornado is not installed: measuring ccnet only "
              "(.venv/bin/pip install 'tornado>=6,<7' for the comparison)", file=sys.stderr)

    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="rpc-bench-") as tmp:
        folder = Path(tmp)
        pki = make_pki(folder)
        starters: list[tuple[str, Any]] = [("ccnet", lambda: start_ccnet(folder, pki))]
        if tornado_version:
            modes = ["executor", *(["inline"] if options.inline else []), "minimal"]
            for mode in modes:
                name = "tornado" if mode == "executor" else f"tornado-{mode}"
                starters.append((name, lambda mode=mode: start_tornado(folder, pki, mode)))
        running: list[tuple[str, subprocess.Popen[Any], int]] = []
        try:
            for name, start in starters:
                proc, port = start()
                running.append((name, proc, port))
            pids = {name: proc.pid for name, proc, _ in running}
            for concurrency in levels:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in running}
                for _ in range(options.rounds):
                    for name, _, port in running:
                        rounds[name].append(
                            measure(port, concurrency, options.warmup, options.duration, pki, pids[name],
                                    options.new_connection))
                for name, measured in rounds.items():
                    measured.sort(key=lambda row: row["calls_per_s"])
                    results.setdefault(name, []).append(measured[len(measured) // 2])
        finally:
            for _, proc, _ in running:
                stop(proc)

    if options.json:
        print(json.dumps({"tornado": tornado_version, "results": results}, indent=2))
        return 0
    mode = "a new connection per call" if options.new_connection else "keep-alive"
    print(f"RPC ping, mutual TLS, {mode}; {options.duration:g} s per level, median of "
          f"{options.rounds} interleaved round(s); tornado {tornado_version or '-'}")
    print(f"{'server':<16}{'conc':>6}{'calls/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU us/call':>13}")
    for name, rows in results.items():
        for row in rows:
            print(f"{name:<16}{row['concurrency']:>6}{row['calls_per_s']:>11.0f}"
                  f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['errors']:>8}{row['cpu_us_per_call']:>13.0f}")
    for other in (name for name in results if name.startswith("tornado")):
        for mine, theirs in zip(results["ccnet"], results[other], strict=True):
            print(f"ccnet / {other} at concurrency {mine['concurrency']}: "
                  f"throughput {mine['calls_per_s'] / theirs['calls_per_s']:.2f}x, "
                  f"calls per CPU second {theirs['cpu_us_per_call'] / mine['cpu_us_per_call']:.2f}x, "
                  f"p99 {mine['p99_ms']:.2f} vs {theirs['p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
