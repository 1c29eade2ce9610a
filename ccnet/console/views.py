"""The console's pages as pure functions: data in, HTML out (no reactor, no request).

Everything that came from a peer (identities, DNs, labels, parameter values, result
cells) goes through :func:`cell`, which escapes it; only markup built here is wrapped
in :class:`Html`. Long lists are paged (:func:`paged`): a page renders ``PAGE_SIZE``
rows at most whatever the number of components or measurements.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from ccnet.console.sources import CCView, RPCView
from ccnet.mplane.model import ExceptionMessage
from ccnet.mplane.state import PHASES, Capability, Component, Measurement, run_phase

__all__ = ["PAGE_SIZE", "Html", "Page", "ScheduleEntry", "cell", "paged", "schedule"]

T = TypeVar("T")
PAGE_SIZE = 100

STYLE = (
    "body{font-family:sans-serif;margin:0;color:#222}"
    "nav{background:#243b55;padding:8px 16px}nav a{color:#fff;margin-right:18px;text-decoration:none}"
    "main{padding:8px 16px}table{border-collapse:collapse;margin:6px 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}"
    "th{background:#eef}.pager a{margin-right:12px}.problem{color:#b00;font-weight:bold}"
    ".who{color:#555;font-size:90%}label{display:block;margin:6px 0}img.chart{max-width:100%}"
    ".row{display:flex;gap:32px;flex-wrap:wrap}"
)


class Html(str):
    """Markup built by this module: inserted as is (everything else is escaped)."""


def cell(value: Any) -> Html:
    """``value`` as safe HTML: markup of ours as is, anything else escaped."""
    if isinstance(value, Html):
        return value
    if value is None:
        return Html("")
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, list | tuple):
        value = ", ".join(map(str, value))
    return Html(html.escape(str(value), quote=True))


def link(href: str, text: Any) -> Html:
    return Html(f"<a href=\"{html.escape(href, quote=True)}\">{cell(text)}</a>")


def iso(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    number: int  # 1-based
    pages: int
    total: int


def paged(items: Sequence[T], number: int, size: int = PAGE_SIZE) -> Page[T]:
    """Page ``number`` (clamped to the pages there are) of ``items``."""
    pages = max(1, -(-len(items) // size))
    number = min(max(1, number), pages)
    start = (number - 1) * size
    return Page(list(items[start:start + size]), number, pages, len(items))


def pager(page: Page[Any], path: str, query: dict[str, str] | None = None) -> Html:
    def href(n: int) -> str:
        return f"{path}?{urlencode({**(query or {}), 'page': str(n)})}"

    parts = [f"page {page.number} of {page.pages} ({page.total} in all)"]
    if page.number > 1:
        parts.insert(0, link(href(page.number - 1), "« prev"))
    if page.number < page.pages:
        parts.append(link(href(page.number + 1), "next »"))
    return Html(f"<p class=\"pager\">{' '.join(parts)}</p>")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "none", css: str = "") -> Html:
    head = "".join(f"<th>{cell(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    if not body:
        body = f"<tr><td colspan=\"{len(columns)}\">{cell(empty)}</td></tr>"
    attr = f" class=\"{css}\"" if css else ""
    return Html(f"<table{attr}><tr>{head}</tr>{body}</table>")


NAV = (("/console/", "Overview"), ("/console/components", "Components"),
       ("/console/capabilities", "Capabilities"), ("/console/schedule", "Schedule"),
       ("/console/cc", "CC routes"), ("/console/rpc", "RPC services"))


def layout(title: str, body: str, identity: str) -> str:
    nav = "".join(link(href, text) for href, text in NAV)
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{cell(title)} · ccnet console</title><style>{STYLE}</style></head><body>"
            f"<nav>{nav}</nav><main><h1>{cell(title)}</h1>"
            f"<p class=\"who\">Signed in as {cell(identity)} (admin)</p>{body}</main></body></html>")


def forbidden(identity: str | None) -> str:
    who = cell(identity) if identity else "an unknown client"
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Forbidden</title></head><body>"
            f"<h1>403 Forbidden</h1><p>The console is for administrators; {who} does not have the "
            "admin role.</p></body></html>")


# ---------------------------------------------------------------------- pages


def overview(components: int, capabilities: int, entries: Sequence[ScheduleEntry],
             counters: dict[str, int], version: str) -> Html:
    phases = {p: sum(1 for x in entries if x.phase == p) for p in PHASES}
    rows = [
        (link("/console/components", "components"), components),
        (link("/console/capabilities", "capabilities"), capabilities),
        (link("/console/schedule?phase=future", "measurements scheduled"), phases["future"]),
        (link("/console/schedule?phase=running", "measurements running"), phases["running"]),
        (link("/console/schedule?phase=past", "measurements finished"), phases["past"]),
    ] + [(f"{name} (since start)", n) for name, n in sorted(counters.items())]
    return Html(table(["what", "count"], rows) + f"<p class=\"who\">ccnet {cell(version)}</p>")


def _holder(c: Component) -> str:
    """The daemon holding the component's poll, once supervisors run active/active (issue 17
    adds ``holder``/``held_since`` to the record); until then one daemon holds them all."""
    holder = getattr(c, "holder", None)
    since = getattr(c, "held_since", None)
    if not holder:
        return "—"
    return f"{holder} (since {iso(since)})" if since else str(holder)


def components_page(page: Page[Component], caps_by_component: dict[str, int]) -> Html:
    rows = [(c.identity, c.dn, c.dialect.value, caps_by_component.get(c.identity, 0), iso(c.last_seen),
             "yes" if c.callback else "no", c.url or "", _holder(c)) for c in page.items]
    return Html(pager(page, "/console/components")
                + table(["identity", "certificate DN", "dialect", "capabilities", "last poll", "callback",
                         "url (pulled)", "poll held by"], rows)
                + pager(page, "/console/components"))


def capabilities_page(page: Page[Capability]) -> Html:
    rows = [(c.label, c.component, c.statement.verb, str(c.statement.when).strip(), c.statement.parameters,
             c.statement.results, link(f"/console/run?{urlencode({'cap': c.key})}", "run…"))
            for c in page.items]
    return Html(pager(page, "/console/capabilities")
                + table(["label", "component", "verb", "when", "parameters", "results", ""], rows)
                + pager(page, "/console/capabilities"))


@dataclass(frozen=True)
class ScheduleEntry:
    measurement: Measurement
    phase: str  # future / running / past
    start: datetime | None
    end: datetime | None


def schedule(measurements: Iterable[Measurement], now: float) -> list[ScheduleEntry]:
    """Every measurement with its phase and resolved temporal scope (the rule is
    :func:`ccnet.mplane.state.run_phase`, as in ``/api/status``), latest start first."""
    out = [ScheduleEntry(m, *run_phase(m, now)) for m in measurements]
    out.sort(key=lambda x: (x.start.timestamp() if x.start else x.measurement.created), reverse=True)
    return out


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "—"


def schedule_page(page: Page[ScheduleEntry], phase: str | None) -> Html:
    tabs = " | ".join(link(f"/console/schedule?phase={p}", p) if p != phase else f"<b>{p}</b>"
                      for p in ("all", *PHASES))
    rows = [(link(f"/console/measurement?{urlencode({'id': x.measurement.id})}",
                  x.measurement.client_label or x.measurement.spec.label or x.measurement.id),
             x.phase, x.measurement.state, x.measurement.component, x.measurement.client, _when(x.start),
             _when(x.end), str(x.measurement.spec.when).strip(), iso(x.measurement.updated))
            for x in page.items]
    query = {"phase": phase} if phase else {}
    return Html(f"<p>{tabs}</p>" + pager(page, "/console/schedule", query)
                + table(["measurement", "phase", "state", "component", "client", "start", "end", "when",
                         "updated"], rows)
                + pager(page, "/console/schedule", query))


def facts(rows: Iterable[tuple[str, Any]]) -> Html:
    """A two-column table of names and values (no header row)."""
    body = "".join(f"<tr><th>{cell(k)}</th><td>{cell(v)}</td></tr>" for k, v in rows)
    return Html(f"<table>{body}</table>")


def measurement_page(entry: ScheduleEntry, columns: list[str], rows: Page[list[Any]],
                     chart_src: str | None) -> Html:
    m = entry.measurement
    about = facts([("capability", m.spec.label), ("component", m.component), ("client", m.client),
                   ("client token", m.client_token), ("state", m.state), ("phase", entry.phase),
                   ("when", str(m.spec.when).strip()), ("start", _when(entry.start)), ("end", _when(entry.end)),
                   ("created", iso(m.created)), ("updated", iso(m.updated))])
    params = facts(sorted(m.spec.parameters.items()))
    out = ""
    if chart_src is not None:
        out += (f"<img class=\"chart\" alt=\"chart of {cell(m.spec.label)}\" "
                f"src=\"{html.escape(chart_src, quote=True)}\">")
    out += (f"<div class=\"row\"><div><h2>Measurement</h2>{about}</div>"
            f"<div><h2>Parameters</h2>{params}</div></div>")
    if isinstance(m.reply, ExceptionMessage):
        out += f"<h2>Exception</h2><p class=\"problem\">{cell(m.reply.message)}</p>"
    if columns:
        path = "/console/measurement"
        query = {"id": m.id}
        out += (f"<h2>Results</h2>{pager(rows, path, query)}"
                f"{table(columns, rows.items, css='results')}{pager(rows, path, query)}")
    elif not isinstance(m.reply, ExceptionMessage):
        out += "<h2>Results</h2><p>No result yet.</p>"
    return Html(out)


def run_form(cap: Capability, when: str, values: dict[str, str], problem: str | None, csrf: str) -> Html:
    """The form to run ``cap``: its temporal scope and one field per parameter."""
    fields = [f"<label>when (capability: {cell(str(cap.statement.when).strip())}) "
              f"<input name=\"when\" size=\"40\" value=\"{cell(when)}\"></label>"]
    for name, constraint in sorted(cap.statement.parameters.items()):
        fields.append(f"<label>{cell(name)} (constraint: {cell(constraint)}) "
                      f"<input name=\"param:{cell(name)}\" size=\"40\" value=\"{cell(values.get(name, ''))}\">"
                      "</label>")
    shown = f"<p class=\"problem\" id=\"problem\">{cell(problem)}</p>" if problem else ""
    return Html(
        f"<p>Capability {cell(cap.label)} of {cell(cap.component)}; results: {cell(cap.statement.results)}</p>"
        f"{shown}<form id=\"run\" method=\"post\" action=\"/console/run\">"
        f"<input type=\"hidden\" name=\"cap\" value=\"{cell(cap.key)}\">"
        f"<input type=\"hidden\" name=\"csrf\" value=\"{cell(csrf)}\">"
        + "".join(fields) + "<button type=\"submit\">Run</button></form>")


def cc_page(view: CCView | None) -> Html:
    if view is None:
        return Html("<p>The CC proxy is not enabled in this daemon (no <code>[cc]</code> section).</p>")
    routes = table(["pattern", "handler sections"], [(r.pattern, ", ".join(r.sections)) for r in view.routes])
    handlers = table(["section", "handler"], view.handlers)
    counters = table(["message type", "outcome", "messages"],
                     [(t, o, n) for (o, t), n in sorted(view.counters.items(), key=lambda x: (x[0][1], x[0][0]))])
    latency = table(["message type", "handled", "mean ms", "max ms"],
                    [(t, n, f"{mean * 1000:.2f}", f"{mx * 1000:.2f}") for t, (n, mean, mx) in sorted(view.latency.items())])
    return Html(f"<h2>Routes</h2>{routes}<h2>Handlers</h2>{handlers}"
                f"<h2>Handler counters (since start)</h2>{counters}<h2>Handling time</h2>{latency}")


def rpc_page(view: RPCView | None) -> Html:
    if view is None:
        return Html("<p>The RPC services are not enabled in this daemon (no <code>[rpc]</code> section).</p>")
    services = table(["service", "exported methods"], [(s, ", ".join(ms)) for s, ms in sorted(view.services.items())])
    calls = table(["service", "method", "calls", "errors", "calls in the last minute"],
                  [(r.service, r.method, r.calls, r.errors, r.per_minute) for r in view.calls])
    return Html(f"<h2>Services</h2>{services}<h2>Calls (since start)</h2>{calls}")


