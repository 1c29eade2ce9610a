"""CC request/reply throughput and latency: ccnet vs a raw pyzmq ROUTER echo loop.

    .venv/bin/python bench/cc_bench.py [--messages 20000] [--windows 32,200] [--json]

The servers are measured side by side, interleaved, with the same load
generator (a separate process with a plain pyzmq DEALER, default options,
keeping ``window`` requests in flight, each with its own query-id route frame,
as CCReqStream does; a request without a reply after ``--reply-timeout``
seconds counts as lost):

* ``raw``: a Python pyzmq ROUTER loop that sends every message straight back
  (no parsing at all: the ceiling for Python + ZMQ on this machine; unlimited
  HWM, so it never drops);
* ``ccnet``: the CC server in the Twisted reactor on its default settings
  (``zmq_hwm = 100``, ``send-queue``), ``[routes] echo = echo``:
  frame parsing, JSON validation, prefix routing, the echo handler, a newly
  built and serialized ``echo.response``;
* ``ccnet-signed``: the same with ``cms-verify-ca`` (every request's detached
  CMS signature verified) and ``cms-sign`` (every reply signed), RSA-2048 keys;
* ``ccnet-signed-ec``: the same with the EC P-256 keys ``ccnet-pki`` makes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- load generator


#: A request without a reply after this many seconds counts as lost.
REPLY_TIMEOUT = 3.0


def client(endpoint: str, messages: int, window: int, frames_json: str,
           reply_timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Runs in its own process: send ``messages`` requests, ``window`` in flight.

    A plain DEALER (default HWMs).  Lost replies are counted, not waited for:
    when nothing arrives for ``reply_timeout`` seconds, what is outstanding is
    lost and the window is refilled from there."""
    template = [bytes.fromhex(f) for f in json.loads(frames_json)]
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    # warm up: one round trip proves the server is there
    s.send_multipart([b"W", *template])
    if not s.poll(10000):
        raise SystemExit("server did not answer")
    s.recv_multipart()
    sent_at: dict[bytes, float] = {}
    lat: list[float] = []
    sent = 0
    errors = 0
    lost = 0
    stalled = 0.0
    start = time.perf_counter()
    while len(lat) + errors + lost < messages:
        while sent < messages and len(sent_at) < window:
            qid = b"Q%08d" % sent
            sent_at[qid] = time.perf_counter()
            s.send_multipart([qid, *template])
            sent += 1
        if not s.poll(int(reply_timeout * 1000)):
            # Whatever is still outstanding will not come: lost.
            lost += len(sent_at)
            sent_at.clear()
            stalled += reply_timeout
            continue
        rep = s.recv_multipart()
        t0 = sent_at.pop(rep[0], None)
        if t0 is None:
            continue
        if rep[2] == b"error":
            errors += 1
        else:
            lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    s.close()
    ctx.term()
    lat.sort()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    return {
        "messages": messages,
        "window": window,
        "errors": errors,
        "lost": lost,
        "seconds": elapsed,
        # Stalls waiting for lost replies are part of what loss costs a client.
        "msgs_per_s": (messages - lost) / elapsed,
        "stalled_s": stalled,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
    }


def run_client(endpoint: str, messages: int, window: int, frames: list[bytes]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", endpoint, str(messages), str(window),
         json.dumps([f.hex() for f in frames])],
        capture_output=True, check=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout)


# ----------------------------------------------------------------------------- servers


def raw_echo(ready: threading.Event, box: dict[str, Any]) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.bind("tcp://127.0.0.1:*")
    box["endpoint"] = s.getsockopt(zmq.LAST_ENDPOINT).decode()
    ready.set()
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    while not box.get("stop"):
        if poller.poll(100):
            s.send_multipart(s.recv_multipart())
    s.close()
    ctx.term()


def bench_raw(messages: int, window: int, frames: list[bytes]) -> dict[str, Any]:
    ready, box = threading.Event(), {}
    t = threading.Thread(target=raw_echo, args=(ready, box), daemon=True)
    t.start()
    ready.wait()
    try:
        return run_client(box["endpoint"], messages, window, frames)
    finally:
        box["stop"] = True
        t.join()


def bench_ccnet(messages: int, window: int, frames: list[bytes], extra: str) -> dict[str, Any]:
    """Run one CCServer in the reactor; the load generator runs from a thread."""
    from twisted.internet import reactor, threads

    from ccnet.cc.config import parse
    from ccnet.cc.server import CCServer
    from ccnet.config import IniFile

    ini = IniFile.from_string(
        "[cc]\ncc-socket = tcp://127.0.0.1:*\nstats-period = 0\n" + extra
        + "\n[routes]\necho = echo\n[echo]\nhandler = echo\n"
    )
    cfg = parse(ini)
    server = CCServer(cfg, reactor, hostname="bench")
    result: dict[str, Any] = {}

    def go() -> None:
        endpoint = server.start()
        d = threads.deferToThread(run_client, endpoint, messages, window, frames)
        d.addCallback(result.update)
        d.addErrback(lambda f: result.update(error=f.getErrorMessage()))
        d.addCallback(lambda _: result.update(
            send_queue_peak=server.socket.out.peak if server.socket and server.socket.out else 0,
            undelivered=server.stats.totals["undelivered"],
        ))
        d.addBoth(lambda _: server.stop())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    return_box = result
    if not reactor.running:
        reactor.run(installSignalHandlers=False)
    return return_box


def _ccnet_subprocess(mode: str, messages: int, window: int, keystore: str) -> dict[str, Any]:
    # The reactor cannot be restarted: each ccnet run gets its own process.
    out = subprocess.run(
        [sys.executable, __file__, "--server", mode, str(messages), str(window), keystore],
        capture_output=True, check=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout)


def _frames(signed: bool, keystore: str) -> list[bytes]:
    from ccnet.cc.crypto import CMSCodec
    from ccnet.cc.message import make_body

    codec = CMSCodec(keystore=Path(keystore), sign="client") if signed else CMSCodec()
    body = make_body("echo.request", {"target": "bench"}, "bench-client", time.time())
    return codec.encode((), body).frames()


def _keystore(path: Path, rsa_bits: int | None = None) -> None:
    """A CC keystore made with ccnet-pki: EC P-256 leaf keys by default."""
    from ccnet.pki import PKI

    pki = PKI(path)
    pki.init(force=True)
    pki.issue("client", "client", rsa_bits=rsa_bits)
    pki.issue("server", "server", rsa_bits=rsa_bits)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _, _, endpoint, n, w, frames_json = sys.argv
        print(json.dumps(client(endpoint, int(n), int(w), frames_json)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--server":
        _, _, mode, n, w, keystore = sys.argv
        signed = mode == "signed"
        extra = f"cms-keystore = {keystore}\ncms-verify-ca = ca\ncms-sign = server\n" if signed else ""
        print(json.dumps(bench_ccnet(int(n), int(w), _frames(signed, keystore), extra)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--signed-messages", type=int, default=0, help="default: messages / 4")
    ap.add_argument("--windows", default="32,200",
                    help="requests in flight, comma-separated; signed runs use the first")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best of each is reported")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    signed_n = args.signed_messages or max(args.messages // 4, 100)
    with tempfile.TemporaryDirectory() as tmp:
        ks, ec_ks = Path(tmp) / "keystore", Path(tmp) / "ec-keystore"
        _keystore(ks, rsa_bits=2048)
        _keystore(ec_ks)
        plan: list[tuple[str, Any]] = []
        for w in windows:
            plan.append((f"raw@{w}", lambda w=w: bench_raw(args.messages, w, _frames(False, str(ks)))))
            plan.append((f"ccnet@{w}", lambda w=w: _ccnet_subprocess("plain", args.messages, w, str(ks))))
        w0 = windows[0]
        plan.append((f"ccnet-signed@{w0}", lambda: _ccnet_subprocess("signed", signed_n, w0, str(ks))))
        plan.append((f"ccnet-signed-ec@{w0}", lambda: _ccnet_subprocess("signed", signed_n, w0, str(ec_ks))))
        runs: dict[str, list[dict[str, Any]]] = {}
        # Interleaved rounds, best of each: the machine is shared and noisy.
        for _ in range(args.rounds):
            for name, run in plan:
                runs.setdefault(name, []).append(run())
        results: dict[str, Any] = {}
        for name, rs in runs.items():
            best = dict(max(rs, key=lambda r: r["msgs_per_s"]))
            # Loss is never "best of": every round counts.
            best["lost_all_rounds"] = sum(r["lost"] for r in rs)
            results[name] = best
        results["rounds"] = args.rounds
    for w in windows:
        results[f"ratio@{w}"] = results[f"ccnet@{w}"]["msgs_per_s"] / results[f"raw@{w}"]["msgs_per_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'server':<16} {'window':>6} {'msgs':>7} {'msgs/s':>9} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for name, _ in plan:
        r = results[name]
        label, w = name.split("@")
        print(f"{label:<16} {w:>6} {r['messages']:>7} {r['msgs_per_s']:>9.0f} {r['lost_all_rounds']:>5} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
    for w in windows:
        c = results[f"ccnet@{w}"]
        print(f"window {w}: ccnet = {results[f'ratio@{w}']:.2f}x the raw pyzmq loop (target >= 0.5x), "
              f"{c['lost_all_rounds']} replies lost in {args.rounds} rounds, "
              f"send-queue peak {c.get('send_queue_peak', 0)}")


if __name__ == "__main__":
    main()
