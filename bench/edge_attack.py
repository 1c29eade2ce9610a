"""Hostile clients against a real daemon: the figures in docs/reliability.md ("Hostile clients").

    .venv/bin/python bench/edge_attack.py [slowloris|pipelining|sigterm ...]

Runs in a scratch folder with the suite test PKI. Not a test: it prints figures.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rpc_latencies(ops: Any, n: int, pause: float = 0.1) -> list[float]:
    session = ops.session()
    out = []
    for _ in range(n):
        started = time.monotonic()
        r = ops.rpc("Framework/Notebook", "ping", session=session, timeout=60)
        assert r.status_code == 200, r.text
        out.append(time.monotonic() - started)
        time.sleep(pause)
    return out


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def _tls(ops: Any, port: int) -> ssl.SSLSocket:
    from tests.test_ops_support import tls_client

    raw = socket.create_connection(("127.0.0.1", port))
    return tls_client(ops.pki, "client").wrap_socket(raw, server_hostname="localhost")


def slowloris(ops: Any) -> None:
    """150 connections on [metrics] and 50 TLS on [rpc], a head byte every 2 s, 70 s."""
    pid = ops.daemon.process.pid
    baseline = _rpc_latencies(ops, 20)
    fds0 = _fds(pid)
    socks: list[Any] = []
    for _ in range(150):
        s = socket.create_connection(("127.0.0.1", ops.port("metrics")))
        socks.append(s)
    for _ in range(50):
        socks.append(_tls(ops, ops.port("rpc")))
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
    stop = time.monotonic() + 70
    samples = []
    latencies: list[float] = []
    i = 0
    next_sample = time.monotonic()
    while time.monotonic() < stop:
        alive = 0
        for s in socks:
            try:
                s.sendall(head[i:i + 1])
                alive += 1
            except OSError:
                pass
        i += 1
        if time.monotonic() >= next_sample:
            samples.append((round(70 - (stop - time.monotonic())), _fds(pid), alive))
            next_sample += 10
        latencies += _rpc_latencies(ops, 3, 0.0)
        time.sleep(max(0.0, 2.0 - 0.05))
    for s in socks:
        s.close()
    print(f"slowloris: fds before {fds0}; (t, fds, client sockets still writable): {samples}")
    print(f"slowloris: RPC ping latency baseline p50 {_p(baseline, .5):.1f} ms p95 {_p(baseline, .95):.1f} ms; "
          f"during p50 {_p(latencies, .5):.1f} ms p95 {_p(latencies, .95):.1f} ms")
    print("slowloris metrics:", [line for line in ops.metrics().splitlines()
                                 if line.startswith(("ccnet_listener_refused", "ccnet_listener_closed"))])


def pipelining(ops: Any, conns: int = 50, each: int = 20000) -> None:
    """``conns`` TLS connections on [rpc] each pipelining ``each`` GET /health, never reading."""
    pid = ops.daemon.process.pid
    baseline = _rpc_latencies(ops, 20)
    rss0 = _rss_mb(pid)
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = []
    done = threading.Event()

    def attacker() -> None:
        s = _tls(ops, ops.port("rpc"))
        socks.append(s)
        s.settimeout(30)
        data = req * each
        try:
            s.sendall(data)
        except OSError:
            pass

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    latencies = _rpc_latencies(ops, 100, 0.05)
    rss1 = _rss_mb(pid)
    done.set()
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    time.sleep(2)
    print(f"pipelining: {conns} x {each} GET /health never read: RSS {rss0:.1f} -> {rss1:.1f} MB "
          f"(after closing: {_rss_mb(pid):.1f} MB)")
    print(f"pipelining: RPC ping latency baseline p50 {_p(baseline, .5):.1f} ms p95 {_p(baseline, .95):.1f} ms; "
          f"during p50 {_p(latencies, .5):.1f} ms p95 {_p(latencies, .95):.1f} ms max {max(latencies) * 1000:.0f} ms; "
          f"last 50 calls p50 {_p(latencies[50:], .5):.1f} ms p95 {_p(latencies[50:], .95):.1f} ms")


def sigterm(runs: int = 5) -> None:
    """The shipped config (component long-polling its own supervisor): SIGTERM → exit."""
    from tests.support import free_port, start_daemon
    from tests.test_rpc_shipped_config import _shipped_config, _shipped_tree

    times = []
    base = Path(tempfile.mkdtemp())
    conf = _shipped_tree(base)
    for _ in range(runs):
        ports = {name: free_port() for name in ("rpc", "supervisor", "cc", "metrics")}
        daemon = start_daemon(_shipped_config(ports), conf)
        while "mPlane component registered" not in daemon.log():
            time.sleep(0.05)
        time.sleep(1.0)
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        code = daemon.process.wait(30)
        times.append(time.monotonic() - started)
        assert code == 0, daemon.log()[-2000:]
    print(f"sigterm (shipped config, component long-poll in flight): {runs} runs, "
          f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")


def main() -> None:
    which = sys.argv[1:] or ["sigterm", "pipelining", "slowloris"]
    work = Path(tempfile.mkdtemp())
    os.chdir(work)
    from tests.support import test_pki
    from tests.test_ops_support import OpsDaemon

    for name in which:
        if name == "sigterm":
            sigterm()
            continue
        ops = OpsDaemon(test_pki(), work / name)
        try:
            {"slowloris": slowloris, "pipelining": pipelining}[name](ops)
        finally:
            ops.stop()


if __name__ == "__main__":
    main()
