"""The web console: pure views (paging, escaping, series, schedule) and the resource
over real mutual TLS (admin only, CSRF, runs through the supervisor's own checks)."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

from twisted.internet import defer, task
from twisted.trial import unittest

from ccnet.console import views
from ccnet.console.chart import MAX_POINTS, Series, result_rows, series_of, svg_chart
from ccnet.console.sources import CallTally
from ccnet.mplane.dialect import Dialect
from ccnet.mplane.model import Statement, When, from_dict
from ccnet.mplane.state import DONE, QUEUED, RUNNING, Component, Measurement, Peer
from tests.test_mplane_supervisor import USERS, SupervisorTestBase
from tests.test_mplane_support import PING_CAP

FORM = "application/x-www-form-urlencoded"
SCRIPT = "<script>alert('x')</script>"


def measurement(state: str, when: str, created: float, reply: Any = None) -> Measurement:
    spec = Statement("specification", label="ping", when=When.parse(when), parameters={"destination.ip4": "1.2.3.4"})
    return Measurement(f"m-{state}-{created}", "client", "tok", "ping", "key", "comp", spec, state, reply, False,
                       created, created)


def ping_result(rows: list[list[Any]]) -> Statement:
    return Statement("result", label="ping-detail-ip4", results=["time", "delay.twoway.icmp.us", "source.ip4"],
                     resultvalues=rows)


class ViewTests(unittest.TestCase):
    def test_a_page_holds_a_bounded_number_of_items_and_clamps_its_number(self) -> None:
        items = list(range(2501))
        first = views.paged(items, 1)
        self.assertEqual((len(first.items), first.pages, first.total), (views.PAGE_SIZE, 26, 2501))
        last = views.paged(items, 999)
        self.assertEqual((last.number, last.items), (26, [2500]))
        self.assertEqual(views.paged([], 0).pages, 1)

    def test_pager_links_prev_and_next_only_where_there_is_a_page(self) -> None:
        middle = views.pager(views.paged(list(range(300)), 2), "/console/components")
        self.assertIn('href="/console/components?page=1"', middle)
        self.assertIn('href="/console/components?page=3"', middle)
        first = views.pager(views.paged(list(range(300)), 1), "/console/components")
        self.assertNotIn("prev", first)

    def test_peer_text_is_escaped_and_our_markup_is_not(self) -> None:
        self.assertEqual(views.cell(SCRIPT), "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;")
        self.assertEqual(views.cell(views.link("/x?a=1&b=2", SCRIPT)),
                         '<a href="/x?a=1&amp;b=2">&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</a>')
        self.assertNotIn("<script", views.table(["h"], [[SCRIPT], [{"p": SCRIPT}]]))

    def test_the_poll_holder_column_lights_up_when_the_record_has_one(self) -> None:
        alone = Component("probe.example", None, False, 1.8e9, 1.8e9)
        held = Component("probe2.example", None, False, 1.8e9, 1.8e9)
        held.holder, held.held_since = "node-b", 1_800_000_000.0  # type: ignore[attr-defined]
        page = views.components_page(views.paged([alone, held], 1), {})
        self.assertIn("<td>—</td></tr>", page)
        self.assertIn("<td>node-b (since 2027-01-15 08:00:00)</td>", page)

    def test_schedule_sorts_measurements_into_future_running_and_past(self) -> None:
        now = 1_800_000_000.0
        entries = views.schedule([
            measurement(QUEUED, "now + 10s / 1s", now),  # not handed over yet
            measurement(RUNNING, "now + 10s / 1s", now - 5),  # receipt, scope begun
            measurement(DONE, "now + 1s", now - 100),
            measurement("sent", "2030-01-01 00:00:00 + 1s", now),  # handed over, starts later
            measurement(RUNNING, "2030-01-02 00:00:00 + 1s", now),  # accepted by the component, later
            measurement("sent", "now + 10s / 1s", now - 3),  # handed over, scope begun
        ], now)
        self.assertEqual(sorted(x.phase for x in entries), ["future", "future", "future", "past", "running",
                                                             "running"])
        self.assertEqual(entries[0].phase, "future")  # latest start first
        self.assertEqual(entries[0].start, datetime(2030, 1, 2, tzinfo=UTC))

    def test_a_result_with_a_time_and_numeric_columns_is_a_series(self) -> None:
        rows = [["2026-11-28 10:00:00.000000", "310", "127.0.0.1"],
                ["2026-11-28 10:00:01.000000", "290", "127.0.0.1"]]
        series = series_of(*result_rows(ping_result(rows)))
        assert series is not None
        self.assertEqual(list(series.lines), ["delay.twoway.icmp.us"])  # addresses are not numbers
        self.assertEqual(series.lines["delay.twoway.icmp.us"][1][1], 290.0)
        svg = svg_chart(series, SCRIPT)
        self.assertIn("<svg", svg[:200])
        self.assertIn("delay.twoway.icmp.us", svg)
        self.assertNotIn(SCRIPT, svg)

    def test_a_chart_draws_a_bounded_number_of_points_whatever_the_columns_and_rows(self) -> None:
        # A component chooses its result columns (tstat has dozens) and rows: the chart's
        # points (and the time to draw them) must not grow with both.
        start = datetime(2026, 11, 28, 10, tzinfo=UTC).timestamp()
        series = Series("time", {f"column{i}": [(datetime.fromtimestamp(start + k, UTC), float(k))
                                                 for k in range(MAX_POINTS + 500)] for i in range(8)})
        svg = svg_chart(series, "many columns")
        drawn = svg.count("<circle")
        self.assertLessEqual(drawn, MAX_POINTS)
        self.assertGreaterEqual(drawn, MAX_POINTS // 2)  # thinned, not emptied
        self.assertIn("column7", svg)

    def test_averages_without_a_time_column_are_no_series(self) -> None:
        avg = Statement("result", results=["delay.twoway.icmp.us.mean"], resultvalues=[["45"]])
        self.assertIsNone(series_of(*result_rows(avg)))
        self.assertEqual(result_rows(avg), (["delay.twoway.icmp.us.mean"], [["45"]]))

    def test_call_tally_counts_totals_errors_and_the_last_minute(self) -> None:
        clock = task.Clock()
        tally = CallTally(clock.seconds)
        tally.record("Framework/Notebook", "ping", 200)
        clock.advance(61)
        tally.record("Framework/Notebook", "ping", 200)
        tally.record("Framework/Notebook", "ping", 500)
        row, = tally.rows()
        self.assertEqual((row.calls, row.errors, row.per_minute), (3, 1, 2))


class ConsoleTests(SupervisorTestBase):
    """``/console/`` on a supervisor served over mutual TLS."""

    @defer.inlineCallbacks
    def page(self, path: str, who: str = "admin") -> Any:
        code, ctype, body = yield getattr(self, who).request("GET", path)
        return code, body.decode("utf-8")

    def form(self, **fields: str) -> bytes:
        from urllib.parse import urlencode

        return urlencode(fields).encode()

    def origin(self) -> dict[str, list[str]]:
        return {"Origin": [f"https://localhost:{self.sup.port}"]}

    @defer.inlineCallbacks
    def csrf_and_key(self, label: str = "ping-average-ip4") -> Any:
        cap = next(c for c in self.sup.state.capabilities.values() if c.label == label)
        _, body = yield self.page(f"console/run?cap={cap.key}")
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
        assert token is not None, body
        return token.group(1), cap.key

    @defer.inlineCallbacks
    def test_admin_sees_the_pages_and_others_get_403(self) -> Any:
        yield self.start()
        yield self.register()
        code, body = yield self.page("console/")
        self.assertEqual(code, 200, body)
        self.assertIn("Signed in as", body)
        self.assertIn('href="/console/components"', body)
        code, body = yield self.page("console/capabilities")
        self.assertIn("ping-average-ip4", body)
        self.assertIn("destination.ip4", body)
        code, body = yield self.page("console/components")
        self.assertIn(self.component.identity, body)
        self.assertIn("poll held by", body)
        for path in ("console/", "console/components", "console/run"):
            code, body = yield self.page(path, "client")
            self.assertEqual(code, 403, path)
            self.assertIn("admin role", body)
        code, body = yield self.page("console/nonesuch")
        self.assertEqual(code, 404)
        self.assertEqual(self.admin.last_headers.getRawHeaders("content-security-policy")[0].split(";")[1].strip(),
                         "script-src 'none'")

    @defer.inlineCallbacks
    def test_an_admin_role_removed_on_reload_closes_the_console_at_the_next_page(self) -> Any:
        yield self.start()
        code, _ = yield self.page("console/")
        self.assertEqual(code, 200)
        (self.sup.folder / "users.conf").write_text(USERS.replace("admin: admin", "admin: guest"))
        for hook in self.sup.runtime.reload_hooks:  # what SIGHUP runs
            hook()
        code, body = yield self.page("console/")
        self.assertEqual(code, 403)
        self.assertIn("IT.ccnet.Clients.admin does not have the admin role", body)

    @defer.inlineCallbacks
    def test_cc_and_rpc_pages_say_when_the_part_is_not_enabled(self) -> Any:
        yield self.start()
        code, body = yield self.page("console/cc")
        self.assertEqual(code, 200)
        self.assertIn("The CC proxy is not enabled in this daemon", body)
        code, body = yield self.page("console/rpc")
        self.assertIn("The RPC services are not enabled in this daemon", body)

    @defer.inlineCallbacks
    def test_a_component_page_renders_a_bounded_number_of_rows_of_thousands(self) -> Any:
        yield self.start()
        state = self.sup.state
        yield defer.gatherResults([
            defer.ensureDeferred(state.register(Peer(f"probe-{i:05d}.example", (f"probe-{i:05d}",), frozenset()), []))
            for i in range(3000)])
        code, body = yield self.page("console/components?page=2")
        self.assertEqual(code, 200)
        rows = re.findall(r"<tr><td>probe-\d{5}\.example</td>", body)
        self.assertEqual(len(rows), views.PAGE_SIZE)
        self.assertIn("probe-00100.example", body)  # page 2 starts at the 101st
        self.assertIn("page 2 of 30 (3000 in all)", body)
        self.assertIn('href="/console/components?page=1"', body)
        self.assertIn('href="/console/components?page=3"', body)

    @defer.inlineCallbacks
    def test_a_label_and_parameter_with_script_from_a_component_render_inert(self) -> Any:
        yield self.start()
        evil = copy.deepcopy(PING_CAP)
        evil["label"] = SCRIPT
        evil["parameters"]["destination.ip4"] = "*"
        outcome = yield self.register(None, evil)
        self.assertEqual(outcome[SCRIPT], {"registered": "ok"})
        for path in ("console/capabilities", "console/components"):
            code, body = yield self.page(path)
            self.assertNotIn("<script", body)
        code, body = yield self.page("console/capabilities")
        self.assertIn("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;", body)
        # A parameter value with script typed in the form comes back escaped in the problem.
        token, key = yield self.csrf_and_key(SCRIPT)
        code, _, raw = yield self.admin.request("POST", "console/run", self.form(
            cap=key, csrf=token, when="now + 1s / 1s", **{"param:destination.ip4": SCRIPT}), FORM,
            headers=self.origin())
        self.assertEqual(code, 400, raw)
        self.assertNotIn(b"<script", raw)
        self.assertIn(b"&lt;script&gt;", raw)

    @defer.inlineCallbacks
    def test_run_form_submits_through_the_supervisor_as_the_admin(self) -> Any:
        yield self.start()
        yield self.register()
        token, key = yield self.csrf_and_key()
        code, _, raw = yield self.admin.request("POST", "console/run", self.form(
            cap=key, csrf=token, when="now + 1s / 1s", **{"param:destination.ip4": "127.0.0.1"}), FORM,
            headers=self.origin(), allow_redirects=False)
        self.assertEqual(code, 303, raw)
        location = self.admin.last_headers.getRawHeaders("location")[0]
        mid = parse_qs(urlparse(location).query)["id"][0]
        m = self.sup.state.measurements[mid]
        self.assertEqual((m.client, m.state, m.spec.parameters["destination.ip4"]),
                         (self.admin.identity, QUEUED, "127.0.0.1"))
        code, body = yield self.page(location.lstrip("/"))
        self.assertEqual(code, 200)
        self.assertIn("No result yet", body)
        code, body = yield self.page("console/schedule?phase=future")
        self.assertIn(f"id={mid}", body)
        # The component gets it like any client's specification, answers; the page shows it.
        work = yield self.poll()
        spec = next(s for s in work.contents if s.label == "ping-average-ip4")
        result = spec.derive("result", when=When.parse("2026-11-28 10:00:00 ... 2026-11-28 10:00:01"))
        result = from_dict({**result.to_dict(), "resultvalues": [["30", "45", "60", "2"]]})
        code, _, raw = yield self.component.request("POST", "register/result", result)
        self.assertEqual(code, 200, raw)
        code, body = yield self.page(location.lstrip("/"))
        self.assertIn("<td>45</td>", body)
        self.assertNotIn("<img", body)  # averages: a table, no chart
        self.assertEqual(self.sup.state.components[self.component.identity].dialect, Dialect.SDK)

    @defer.inlineCallbacks
    def test_a_result_with_infinite_or_huge_values_charts_what_it_can_and_never_fails(self) -> Any:
        yield self.start()
        detail = {**PING_CAP, "label": "ping-detail-ip4",
                  "results": ["time", "delay.twoway.icmp.us", "delay.twoway.icmp.us.mean"]}
        yield self.register(None, detail)
        token, key = yield self.csrf_and_key("ping-detail-ip4")
        ids = []
        for n in range(2):
            code, _, raw = yield self.admin.request("POST", "console/run", self.form(
                cap=key, csrf=token, when=f"now + {n + 1}s / 1s", **{"param:destination.ip4": "127.0.0.1"}),
                FORM, headers=self.origin(), allow_redirects=False)
            self.assertEqual(code, 303, raw)
            ids.append(parse_qs(urlparse(self.admin.last_headers.getRawHeaders("location")[0]).query)["id"][0])
        work = yield self.poll()
        specs = [s for s in work.contents if s.label == "ping-detail-ip4"]
        self.assertEqual(len(specs), 2)
        rows = [[["2026-11-28 10:00:00.000000", "10", "1.5"], ["2026-11-28 10:00:01.000000", "20", "inf"],
                 ["2026-11-28 10:00:02.000000", "30", "nan"]],
                [["2026-11-28 10:00:00.000000", "10", "1e308"], ["2026-11-28 10:00:01.000000", "20", "-1e308"]]]
        for spec, values in zip(specs, rows, strict=True):
            result = spec.derive("result", when=When.parse("2026-11-28 10:00:00 ... 2026-11-28 10:00:02"))
            code, _, raw = yield self.component.request(
                "POST", "register/result", from_dict({**result.to_dict(), "resultvalues": values}))
            self.assertEqual(code, 200, raw)
        by_token = {self.sup.state.measurements[i].spec.when: i for i in ids}
        charts = []
        for spec in specs:
            code, ctype, body = yield self.admin.request("GET", f"console/chart.svg?id={by_token[spec.when]}")
            self.assertNotEqual(code, 500, body)
            charts.append((code, body.decode()))
        (code, svg), (huge_code, _) = charts
        # Infinite and NaN values are left out of the line; the finite points are drawn.
        self.assertEqual(code, 200)
        self.assertEqual(svg.count("<circle"), 4)
        self.assertNotIn('="nan"', svg.lower())
        # Values whose range overflows cannot be drawn: a clear 404, not an internal error.
        self.assertEqual(huge_code, 404)
        for i in ids:
            code, _ = yield self.page(f"console/measurement?id={i}")
            self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_run_form_is_validated_like_the_shell(self) -> Any:
        yield self.start()
        yield self.register()
        token, key = yield self.csrf_and_key()
        for fields, problem in [
            ({"when": "now + 1s / 1s"}, "parameter destination.ip4 needs a value"),
            ({"when": "tomorrow", "param:destination.ip4": "127.0.0.1"}, "is not an mPlane time"),
            ({"when": "now + 1s / 1s", "param:destination.ip4": "not-an-address"}, "not-an-address"),
            ({"when": "now + 99999999999999d", "param:destination.ip4": "127.0.0.1"}, "is not an mPlane duration"),
            ({"when": "2026-11-28 10:00:00 ... 2026-11-28 10:00:01 / 99999999999999999s",
              "param:destination.ip4": "127.0.0.1"}, "is not an mPlane duration"),
        ]:
            code, _, raw = yield self.admin.request("POST", "console/run", self.form(cap=key, csrf=token, **fields),
                                                    FORM, headers=self.origin())
            self.assertEqual(code, 400, raw)
            self.assertIn(problem, raw.decode(), fields)
        self.assertEqual(self.sup.state.measurements, {})

    @defer.inlineCallbacks
    def test_a_form_field_name_that_is_not_utf8_is_a_400_not_a_crash(self) -> Any:
        yield self.start()
        yield self.register()
        token, key = yield self.csrf_and_key()
        body = self.form(cap=key, csrf=token, when="now + 1s / 1s") + b"&param%3A%FF=1"
        code, _, raw = yield self.admin.request("POST", "console/run", body, FORM, headers=self.origin())
        self.assertEqual(code, 400, raw)
        self.assertIn(b"class=\"problem\"", raw)
        self.assertEqual(self.sup.state.measurements, {})
        code, _ = yield self.page("console/")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_cross_site_posts_and_wrong_tokens_are_refused(self) -> Any:
        yield self.start()
        yield self.register()
        token, key = yield self.csrf_and_key()
        fields = {"cap": key, "when": "now + 1s / 1s", "param:destination.ip4": "127.0.0.1"}
        for headers, csrf in [({}, token),  # no Origin, no Referer
                              ({"Origin": ["https://evil.example"]}, token),
                              ({"Referer": ["https://evil.example/console/run"]}, token),
                              (self.origin(), "0" * 64),
                              (self.origin(), "")]:
            code, _, raw = yield self.admin.request("POST", "console/run", self.form(csrf=csrf, **fields), FORM,
                                                    headers=headers)
            self.assertEqual(code, 403, (headers, raw))
        # The client's own token does not work for it either: it is not an admin at all.
        code, _, _ = yield self.client.request("POST", "console/run", self.form(csrf=token, **fields), FORM,
                                               headers=self.origin())
        self.assertEqual(code, 403)
        self.assertEqual(self.sup.state.measurements, {})
        # Same-origin by Referer alone is accepted (browsers that send no Origin).
        code, _, raw = yield self.admin.request(
            "POST", "console/run", self.form(csrf=token, **fields), FORM,
            headers={"Referer": [f"https://localhost:{self.sup.port}/console/run"]}, allow_redirects=False)
        self.assertEqual(code, 303, raw)
