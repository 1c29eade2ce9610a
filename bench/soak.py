"""Bounded soak of the whole daemon: RPC, mPlane and CC at once, with RSS and open-FD sampling.

    .venv/bin/python bench/soak.py [--duration 600] [--sample 10] [--json out.json]

One ``twistd -n ccnet`` (mutual TLS, SQLite store) serves, for ``--duration`` seconds:

* RPC: two callers on keep-alive connections, ``Framework/Notebook`` ``set`` then ``get``
  over 500 rotating keys; each caller opens a new connection every 50 calls;
* mPlane: a client submitting specifications (fresh tokens), a component polling and
  posting results, the client redeeming them (``result-expiry = 20s`` so finished
  measurements are forgotten: state stays bounded by design);
* CC: a DEALER sending ``echo.request`` and waiting for each reply, a new DEALER every
  100 messages.

Every ``--sample`` seconds it records the daemon's resident memory (``VmRSS``) and open
file descriptors (``/proc/PID/fd``). It prints the samples, operations per second per
protocol, errors, and the RSS trend as a least-squares slope over the samples after the
first fifth (warm-up: caches, SQLite page cache, thread pool). Exit status 1 when
an operation failed or RSS grows faster than ``--max-slope`` MB/min, or FDs grow by more
than 10.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _proc(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as handle:
        rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, y units per t unit (0 for < 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else 0.0


class Load:
    def __init__(self, d: Any) -> None:
        self.d = d
        self.stop = threading.Event()
        self.counts = {"rpc": 0, "mplane": 0, "cc": 0}
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _error(self, name: str, exc: Any) -> None:
        with self._lock:
            if len(self.errors) < 50:
                self.errors.append(f"{name}: {exc!r}"[:300])

    def rpc(self, n: int) -> None:
        i = 0
        session = self.d.session()
        while not self.stop.is_set():
            if i % 50 == 0:
                session.close()
                session = self.d.session()
            key = f"soak-{n}-{i % 500}"
            try:
                r = self.d.rpc("Framework/Notebook", "set", key, i, session=session)
                assert r.status_code == 200 and r.json()["OK"], r.text[:200]
                r = self.d.rpc("Framework/Notebook", "get", key, session=session)
                assert r.json()["Value"]["value"] == i, r.text[:200]
                self._count("rpc")
                self._count("rpc")
            except Exception as exc:
                self._error("rpc", exc)
                time.sleep(0.5)
            i += 1

    def mplane(self) -> None:
        from ccnet.mplane.model import parse_json
        from tests.test_mplane_supervisor import result_for
        from tests.test_ops_support import SPEC

        client, component = self.d.session("client"), self.d.session("component")
        i = 0
        while not self.stop.is_set():
            try:
                if i % 200 == 0:
                    assert self.d.register_ping().status_code == 200
                token = f"{os.getpid():08x}{i:024x}"
                r = self.d.mplane("POST", "register/specification", dict(SPEC, token=token), session=client)
                assert r.status_code == 200, r.text[:200]
                env = parse_json(self.d.mplane("GET", "show/specification", who="component",
                                               session=component).content)
                for spec in getattr(env, "contents", []):
                    if getattr(spec, "kind", "") == "specification" and spec.label == "ping-average-ip4":
                        r = self.d.mplane("POST", "register/result", result_for(spec), session=component)
                        assert r.status_code == 200, r.text[:200]
                r = self.d.mplane("GET", f"show/result?token={token}", session=client)
                assert '"result"' in r.text, r.text[:200]
                self._count("mplane")
            except Exception as exc:
                self._error("mplane", exc)
                time.sleep(0.5)
            i += 1

    def cc(self) -> None:
        import zmq

        from ccnet.cc.message import make_message, parse

        ctx = zmq.Context()
        sock = None
        i = 0
        while not self.stop.is_set():
            if i % 100 == 0:
                if sock is not None:
                    sock.close(0)
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(self.d.cc_endpoint)
            try:
                assert sock is not None
                sock.send_multipart(make_message("echo.request", {"target": "soak", "n": i}).frames())
                assert sock.poll(5000), "no CC reply in 5 s"
                reply = parse([b"server", *sock.recv_multipart()])
                assert getattr(reply, "type", None) == "echo.response", reply
                self._count("cc")
            except Exception as exc:
                self._error("cc", exc)
                if sock is not None:
                    sock.close(0)
                sock = None
                i = -1
                time.sleep(0.5)
            i += 1
        if sock is not None:
            sock.close(0)
        ctx.term()


def run(duration: float, sample: float, folder: Path | None = None, log: Any = print) -> dict[str, Any]:
    """Run the soak; return the samples and the verdict's inputs."""
    from tests.support import test_pki
    from tests.test_ops_support import OpsDaemon

    work = folder or Path(tempfile.mkdtemp(prefix="ccnet-soak-"))
    cwd = os.getcwd()
    os.chdir(work)  # test_pki() makes its certificates under the working folder
    try:
        pki = test_pki()
    finally:
        os.chdir(cwd)
    d = OpsDaemon(pki, work / "daemon", supervisor="result-expiry = 20s\n")
    pid = d.daemon.process.pid
    load = Load(d)
    threads = [threading.Thread(target=load.rpc, args=(n,), daemon=True) for n in range(2)]
    threads += [threading.Thread(target=load.mplane, daemon=True), threading.Thread(target=load.cc, daemon=True)]
    start = time.monotonic()
    samples: list[dict[str, float]] = []
    try:
        rss, fds = _proc(pid)
        samples.append({"t": 0.0, "rss_mb": rss, "fds": fds, "rpc": 0, "mplane": 0, "cc": 0})
        for t in threads:
            t.start()
        while time.monotonic() - start < duration:
            time.sleep(min(sample, max(0.0, duration - (time.monotonic() - start))))
            rss, fds = _proc(pid)
            row = {"t": round(time.monotonic() - start, 1), "rss_mb": round(rss, 1), "fds": fds, **load.counts}
            samples.append(row)
            log(f"{row['t']:7.1f}s  rss {row['rss_mb']:7.1f} MB  fds {fds:4d}  "
                f"rpc {row['rpc']:7d}  mplane {row['mplane']:6d}  cc {row['cc']:7d}  errors {len(load.errors)}")
    finally:
        load.stop.set()
        for t in threads:
            t.join(15)
        alive = d.daemon.process.poll() is None
        code = d.stop()
        if folder is None:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - start
    steady = samples[max(1, len(samples) // 5):]
    return {
        "duration_s": round(elapsed, 1),
        "samples": samples,
        "ops_per_s": {k: round(v / elapsed, 1) for k, v in load.counts.items()},
        "totals": dict(load.counts),
        "errors": load.errors,
        "rss_mb": {"start": samples[0]["rss_mb"], "after_warmup": steady[0]["rss_mb"] if steady else None,
                   "end": samples[-1]["rss_mb"], "max": max(s["rss_mb"] for s in samples)},
        "rss_slope_mb_per_min": round(slope([(s["t"] / 60.0, s["rss_mb"]) for s in steady]), 3),
        "fds": {"start": samples[0]["fds"], "after_warmup": steady[0]["fds"] if steady else None,
                "end": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
        "daemon_alive_at_end": alive,
        "exit_status": code,
    }


def verdict(result: dict[str, Any], max_slope: float) -> list[str]:
    problems = []
    if result["errors"]:
        problems.append(f"{len(result['errors'])} failed operations, first: {result['errors'][0]}")
    if result["rss_slope_mb_per_min"] > max_slope:
        problems.append(f"RSS grows {result['rss_slope_mb_per_min']} MB/min after warm-up (limit {max_slope})")
    fds = result["fds"]
    if fds["after_warmup"] is not None and fds["end"] > fds["after_warmup"] + 10:
        problems.append(f"open FDs grew from {fds['after_warmup']} to {fds['end']}")
    if not result["daemon_alive_at_end"] or result["exit_status"] != 0:
        problems.append(f"daemon alive={result['daemon_alive_at_end']} exit={result['exit_status']}")
    if not all(result["totals"].values()):
        problems.append(f"a protocol made no progress: {result['totals']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--max-slope", type=float, default=1.0, help="allowed RSS growth after warm-up, MB/min")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    result = run(args.duration, args.sample)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    problems = verdict(result, args.max_slope)
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
