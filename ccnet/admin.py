"""``ccnet-admin``: an operator's view of a running daemon.

::

    ccnet-admin status --config /etc/ccnet/ccnet.ini --cert admin.crt --key admin.key
    ccnet-admin status --supervisor https://sup.example.org:8888 --daemon https://sup.example.org:8443 \\
        --metrics http://127.0.0.1:9100 --cert admin.crt --key admin.key --ca ca.crt

It reads the supervisor's ``/api/status`` and each daemon URL's ``/health`` over mutual TLS
(with the operator's client certificate), plus ``/ready`` and ``/metrics`` from the plain
metrics listener when given, and prints a short summary. ``--json`` prints what was read.
Exit status: 0 all reachable and ready, 1 something is down or not ready, 2 usage errors.
This is a standalone process: it blocks (requests), it never runs in the daemon's reactor.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["main", "parse_prometheus", "summarize", "urls_from_config"]

EXIT_OK, EXIT_DOWN, EXIT_USAGE = 0, 1, 2

def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a text exposition (prometheus-client's
    parser); what precedes a malformed line is kept."""
    out: list[tuple[str, dict[str, str], float]] = []
    try:
        for family in text_string_to_metric_families(text):
            out += [(sample.name, dict(sample.labels), sample.value) for sample in family.samples]
    except ValueError:
        pass
    return out


def _sum(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    return sum(v for n, labels, v in samples
               if n == name and all(labels.get(k) == want for k, want in match.items()))


def _by(samples: list[tuple[str, dict[str, str], float]], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, labels, v in samples:
        if n == name:
            out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + v
    return out


def _uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def summarize(report: dict[str, Any]) -> str:
    """The readable text for what ``collect`` read (pure: no I/O)."""
    lines: list[str] = []
    for url, health in report.get("health", {}).items():
        if "error" in health:
            lines.append(f"daemon   {url}: DOWN ({health['error']})")
            continue
        lines.append(
            f"daemon   {url}: {health.get('status', '?')}, ccnet {health.get('version', '?')}, "
            f"up {_uptime(float(health.get('uptime', 0)))}, services: {', '.join(health.get('services', []))}"
        )
    ready = report.get("ready")
    if ready is not None:
        if "error" in ready:
            lines.append(f"ready    DOWN ({ready['error']})")
        else:
            extra = "" if ready.get("store", True) else " (store not answering)"
            if ready.get("not_listening"):
                extra += f" (not listening: {', '.join(ready['not_listening'])})"
            others = [p for p in ready.get("not_ready", []) if p != "store" and p not in ready.get("not_listening", [])]
            if others:
                extra += f" (not ready: {', '.join(others)})"
            lines.append(f"ready    {'yes' if ready.get('ready') else 'NO'}{extra}")
    status = report.get("supervisor")
    if status is not None:
        url = report.get("supervisor_url", "")
        if "error" in status:
            lines.append(f"mPlane   {url}: DOWN ({status['error']})")
        else:
            comps = status.get("components", [])
            pending = status.get("pending", [])
            states: dict[str, int] = {}
            for m in pending + status.get("results", []):
                states[m.get("state", "?")] = states.get(m.get("state", "?"), 0) + 1
            counters = status.get("counters", {})
            lines.append(
                f"mPlane   {url}: {len(comps)} components, {len(status.get('capabilities', []))} capabilities, "
                f"{len(pending)} pending measurements (as {status.get('identity', '?')})"
            )
            if states:
                lines.append("         measurements: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
            if counters:
                lines.append("         counters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
            if status.get("node"):
                lines.append(f"         answered by node {status['node']}")
            width = max([len(c.get("identity", "")) for c in comps] + [9])
            held = max([len(str(c.get("holder") or "-")) for c in comps] + [7])
            plan = status.get("schedule", {})
            if comps:
                lines.append(f"         {'component'.ljust(width)}  caps  last seen            "
                             f"{'held by'.ljust(held)}  runs past/now/next  next start")
            for c in comps:
                runs = plan.get(c.get("identity", ""), {})
                future = runs.get("future", [])
                lines.append(f"         {c.get('identity', '').ljust(width)}  {c.get('capabilities', 0):>4}  "
                             f"{(c.get('last_seen') or '-').ljust(19)}  {str(c.get('holder') or '-').ljust(held)}  "
                             f"{len(runs.get('past', [])):>4}/{len(runs.get('running', []))}/{len(future)}"
                             f"{'':9}{min((r['start'] for r in future if r.get('start')), default='-')}")
    metrics = report.get("metrics")
    if metrics is not None:
        if isinstance(metrics, dict) and "error" in metrics:
            lines.append(f"metrics  DOWN ({metrics['error']})")
        else:
            samples = parse_prometheus(str(metrics))
            rpc_total = _sum(samples, "ccnet_rpc_calls_total")
            rpc_errors = sum(v for n, labels, v in samples
                             if n == "ccnet_rpc_calls_total" and not labels.get("status", "").startswith("2"))
            cc = _by(samples, "ccnet_cc_messages_total", "outcome")
            tls = _by(samples, "ccnet_tls_handshake_failures_total", "reason")
            rss = _sum(samples, "ccnet_process_resident_memory_bytes") / 1e6
            fds = _sum(samples, "ccnet_process_open_fds")
            lines.append(f"rpc      {rpc_total:.0f} calls, {rpc_errors:.0f} not 2xx")
            if cc:
                lines.append("cc       " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cc.items())) + " messages")
            lines.append("tls      " + (", ".join(f"{k}: {v:.0f}" for k, v in sorted(tls.items()))
                                        if tls else "no client certificate rejected"))
            conns = _by(samples, "ccnet_listener_connections", "listener")
            if conns:
                lines.append("conns    " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(conns.items())))
            lines.append(f"process  rss {rss:.1f} MB, {fds:.0f} open fds")
    return "\n".join(lines) + "\n"


def urls_from_config(path: Path) -> dict[str, Any]:
    """Supervisor/daemon/metrics URLs and the CA bundle, from a ccnet.ini (local host)."""
    from ccnet.config import load_config, parse_listen

    config = load_config(path)
    host = "localhost"
    out: dict[str, Any] = {"daemons": [], "supervisor": None, "metrics": None, "ca": None}

    def port_of(listen: str) -> tuple[str, int | None]:
        # "tcp:8443:interface=127.0.0.1"; socket-activated (systemd:) listeners have no port here.
        parts = parse_listen(listen).endpoint.split(":")
        port = int(parts[1]) if len(parts) > 1 and parts[0] in ("tcp", "ssl") and parts[1].isdigit() else None
        iface = next((p.split("=", 1)[1] for p in parts if p.startswith("interface=")), "")
        return (iface if iface and iface not in ("0.0.0.0", "::") else host), port

    if config.tls is not None:
        out["ca"] = str(config.tls.ca)
    for name in ("supervisor", "rpc"):
        section = getattr(config, name, None)
        if section is None:
            continue
        where, port = port_of(section.listen)
        if port:
            url = f"https://{where}:{port}"
            out["daemons"].append(url)
            if name == "supervisor":
                out["supervisor"] = url
    if config.metrics is not None:
        where, port = port_of(config.metrics.listen)
        if port:
            out["metrics"] = f"http://{where}:{port}"
    return out


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Read everything the summary needs; unreachable parts become ``{"error": ...}``."""
    import requests

    session = requests.Session()
    # The operator's certificate and CA, not whatever REQUESTS_CA_BUNDLE points at.
    session.trust_env = False
    session.cert = (args.cert, args.key) if args.cert else None
    session.verify = args.ca if args.ca else True

    def get(url: str) -> Any:
        try:
            r = session.get(url, timeout=args.timeout)
        except requests.RequestException as exc:
            return {"error": _short(exc)}
        if r.headers.get("content-type", "").startswith("application/json"):
            body = r.json()
            if r.status_code >= 400 and isinstance(body, dict) and "ready" not in body:
                return {"error": f"HTTP {r.status_code}: {body.get('Message') or body}"}
            return body
        if r.status_code >= 400:
            return {"error": f"HTTP {r.status_code}"}
        return r.text

    report: dict[str, Any] = {"health": {}}
    for url in args.daemon:
        report["health"][url] = get(url.rstrip("/") + "/health")
    if args.supervisor:
        report["supervisor_url"] = args.supervisor
        report["supervisor"] = get(args.supervisor.rstrip("/") + "/api/status")
    if args.metrics:
        report["ready"] = get(args.metrics.rstrip("/") + "/ready")
        report["metrics"] = get(args.metrics.rstrip("/") + "/metrics")
    return report


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("SSLError", "ConnectionRefused", "Connection refused", "timed out", "certificate"):
        if marker in text:
            m = re.search(r"\[SSL[^\]]*\][^')]*|Connection refused|timed out", text)
            return m.group(0) if m else marker
    return text[:200]


def healthy(report: dict[str, Any]) -> bool:
    parts = list(report.get("health", {}).values()) + [report.get("supervisor"), report.get("metrics")]
    if any(isinstance(p, dict) and "error" in p for p in parts if p is not None):
        return False
    ready = report.get("ready")
    return ready is None or (isinstance(ready, dict) and bool(ready.get("ready")))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccnet-admin", description="Look at a running ccnet daemon.")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="health, readiness, mPlane status and key metrics")
    st.add_argument("--config", type=Path, help="ccnet.ini to take listener ports and the CA from")
    st.add_argument("--supervisor", help="supervisor base URL (reads /api/status)")
    st.add_argument("--daemon", action="append", default=[], help="HTTPS listener base URL (reads /health)")
    st.add_argument("--metrics", help="metrics listener base URL (reads /ready and /metrics)")
    st.add_argument("--cert", help="client certificate (PEM)")
    st.add_argument("--key", help="its private key (PEM)")
    st.add_argument("--ca", help="CA bundle to verify the daemon with")
    st.add_argument("--timeout", type=float, default=10.0)
    st.add_argument("--json", action="store_true", help="print what was read as JSON")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    if args.config is not None:
        from ccnet.config import ConfigError

        try:
            found = urls_from_config(args.config)
        except (ConfigError, OSError) as exc:
            err.write(f"ccnet-admin: {exc}\n")
            return EXIT_USAGE
        args.supervisor = args.supervisor or found["supervisor"]
        args.daemon = args.daemon or found["daemons"]
        args.metrics = args.metrics or found["metrics"]
        args.ca = args.ca or found["ca"]
    if not (args.supervisor or args.daemon or args.metrics):
        err.write("ccnet-admin: nothing to ask: give --config, or --supervisor/--daemon/--metrics\n")
        return EXIT_USAGE
    if (args.supervisor or args.daemon) and not (args.cert and args.key):
        err.write("ccnet-admin: HTTPS listeners need --cert and --key (mutual TLS)\n")
        return EXIT_USAGE
    report = collect(args)
    if args.json:
        out.write(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    else:
        out.write(summarize(report))
    return EXIT_OK if healthy(report) else EXIT_DOWN


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
