"""``[metrics]``: the Prometheus text an operator scrapes, and ``/ready`` telling the truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
import zmq
from prometheus_client import CollectorRegistry, Counter, generate_latest
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from ccnet.cc.message import make_message, parse
from ccnet.cc.stats import MAX_TYPES, OTHER_TYPE
from ccnet.metrics import PartMetrics, ReadyResource, counter, gauge
from tests.support import start_service, test_pki, tls_section
from tests.test_ops_support import SPEC, OpsDaemon, tls_get


class FamilyTests(unittest.TestCase):
    """The families parts build from their own counts, as prometheus-client writes them."""

    def test_counter_lines_carry_escaped_labels(self) -> None:
        text = generate_latest(_Collect(counter("x_total", "Things.", ["who"], {('a"b\\c\nd',): 3}))).decode()
        self.assertIn("# TYPE x_total counter", text)
        self.assertIn('x_total{who="a\\"b\\\\c\\nd"} 3.0', text)

    def test_unlabelled_counter_is_exposed_as_zero_before_first_event(self) -> None:
        self.assertIn("\ny_total 0.0\n", generate_latest(_Collect(counter("y_total", "Y."))).decode())

    def test_gauge_rows_are_sorted_by_label_values(self) -> None:
        text = generate_latest(_Collect(gauge("depth", "Depth.", ["queue"], {("b",): 2, ("a",): 1}))).decode()
        self.assertLess(text.index('depth{queue="a"} 1.0'), text.index('depth{queue="b"} 2.0'))

    def test_a_failing_part_is_logged_and_the_others_still_answer(self) -> None:
        registry = CollectorRegistry()
        registry.register(PartMetrics("broken", [_Broken()]))
        registry.register(PartMetrics("fine", [_Collect(counter("fine_total", "Fine."))]))
        text = generate_latest(registry).decode()
        self.assertIn("fine_total 0.0", text)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_two_parts_cannot_expose_one_metric_name(self) -> None:
        registry = CollectorRegistry()
        registry.register(PartMetrics("a", [Counter("dup_total", "A.", registry=None)]))
        with self.assertRaises(ValueError):
            registry.register(PartMetrics("b", [Counter("dup_total", "B.", registry=None)]))


class _Collect:
    def __init__(self, *families: Any) -> None:
        self.families = families

    def collect(self) -> Any:
        return self.families


class _Broken:
    def collect(self) -> Any:
        return [1 / 0]


class _Store:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def ping(self) -> Any:
        return self.answer


class _Runtime:
    def __init__(self, store: Any, clock: Any = reactor) -> None:
        self.store = store
        self.reactor = clock
        self.parts: dict[str, Any] = {}


def _ready(resource: ReadyResource) -> tuple[int, dict[str, Any]]:
    request = DummyRequest([b""])
    resource.render_GET(request)  # type: ignore[arg-type]
    return request.responseCode or 200, json.loads(b"".join(request.written))


class ReadyResourceTests(unittest.TestCase):
    def test_ready_when_store_answers_and_every_listener_listens(self) -> None:
        code, body = _ready(ReadyResource(_Runtime(_Store(True)), lambda: {"rpc": True, "cc": True}))
        self.assertEqual((code, body), (200, {"ready": True, "store": True}))

    def test_503_names_the_listener_that_is_not_listening(self) -> None:
        code, body = _ready(ReadyResource(_Runtime(_Store(True)), lambda: {"rpc": False, "metrics": True}))
        self.assertEqual(code, 503)
        self.assertEqual(body, {"ready": False, "store": True, "not_listening": ["rpc"], "not_ready": ["rpc"]})

    def test_503_names_every_part_that_is_not_up(self) -> None:
        runtime = _Runtime(_Store(defer.fail(OSError("gone"))))
        runtime.parts = {"mplane-supervisor": lambda: False, "mplane-component": lambda: True,
                         "cc-job:broken": lambda: 1 / 0}
        code, body = _ready(ReadyResource(runtime, lambda: {"rpc": True}))
        self.assertEqual(code, 503)
        self.assertEqual(body["parts"], {"mplane-supervisor": False, "mplane-component": True, "cc-job:broken": False})
        self.assertEqual(body["not_ready"], ["cc-job:broken", "mplane-supervisor", "store"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_503_when_the_store_fails(self) -> None:
        code, body = _ready(ReadyResource(_Runtime(_Store(defer.fail(OSError("gone")))), dict))
        self.assertEqual((code, body["store"]), (503, False))

    def test_503_when_the_store_hangs_past_the_probe_timeout(self) -> None:
        clock = task.Clock()
        resource = ReadyResource(_Runtime(_Store(defer.Deferred()), clock), dict, store_timeout=5)
        request = DummyRequest([b""])
        resource.render_GET(request)  # type: ignore[arg-type]
        self.assertEqual(request.written, [])
        clock.advance(5)
        self.assertEqual(request.responseCode, 503)


def _rpc_and_metrics(case: unittest.TestCase) -> Any:
    """An in-process daemon with an RPC and a metrics listener (Deferred: its service)."""
    tmp = Path(case.mktemp()).absolute()
    tmp.mkdir()
    text = (f"[ccnet]\nstate-dir = {tmp}\n" + tls_section(test_pki())
            + "[rpc]\nlisten = ssl:0:interface=127.0.0.1\n"
            + "[metrics]\nlisten = tcp:0:interface=127.0.0.1\n")
    return start_service(case, text, tmp)


class InProcessReadyTests(unittest.TestCase):
    """make_service wires /ready to the real listeners and store."""

    @defer.inlineCallbacks
    def test_ready_turns_503_when_a_listener_stops_and_when_the_store_closes(self) -> Any:
        service = yield _rpc_and_metrics(self)
        url = f"http://127.0.0.1:{service.listeners['metrics'].address.port}/ready"
        first = yield deferToThread(requests.get, url, timeout=10)
        self.assertEqual(first.status_code, 200)
        yield service.listeners["rpc"].stopService()
        second = yield deferToThread(requests.get, url, timeout=10)
        self.assertEqual((second.status_code, second.json()["not_listening"]), (503, ["rpc"]))
        yield service.runtime.store.close()
        third = yield deferToThread(requests.get, url, timeout=10)
        self.assertEqual((third.status_code, third.json()["store"]), (503, False))

    @defer.inlineCallbacks
    def test_metrics_speak_openmetrics_when_asked_gzip_and_carry_readiness(self) -> Any:
        service = yield _rpc_and_metrics(self)
        url = f"http://127.0.0.1:{service.listeners['metrics'].address.port}/metrics"
        plain = yield deferToThread(requests.get, url, timeout=10)
        self.assertEqual(plain.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(plain.headers["content-encoding"], "gzip")  # requests asks for it, as Prometheus does
        for line in ("ccnet_ready 1.0", "ccnet_store_up 1.0", 'ccnet_listener_up{listener="rpc"} 1.0',
                     "# TYPE ccnet_rpc_calls_total counter", "ccnet_process_open_fds "):
            self.assertIn(line, plain.text)
        om = yield deferToThread(requests.get, url, timeout=10,
                                 headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
        self.assertTrue(om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0"))
        self.assertTrue(om.text.endswith("# EOF\n"))
        self.assertIn("# TYPE ccnet info", om.text)
        self.assertIn("# TYPE ccnet_rpc_calls counter", om.text)
        yield service.listeners["rpc"].stopService()
        after = yield deferToThread(requests.get, url, timeout=10)
        self.assertIn("ccnet_ready 0.0", after.text)
        self.assertIn('ccnet_listener_up{listener="rpc"} 0.0', after.text)

    @defer.inlineCallbacks
    def test_supervisor_that_cannot_open_its_state_makes_ready_503_naming_it(self) -> Any:
        import sqlite3

        pki = test_pki()
        tmp = Path(self.mktemp()).absolute()
        tmp.mkdir()
        # A table in the way of the supervisor's first migration: its state cannot open.
        db = sqlite3.connect(tmp / "ccnet.db")
        db.execute("CREATE TABLE mplane_component (x TEXT)")
        db.commit()
        db.close()
        (tmp / "caps.conf").write_text("")
        text = (f"[ccnet]\nstate-dir = {tmp}\n" + tls_section(pki)
                + "[supervisor]\nlisten = ssl:0:interface=127.0.0.1\ncaps = caps.conf\n"
                + "[rpc]\nlisten = ssl:0:interface=127.0.0.1\n"
                + "[metrics]\nlisten = tcp:0:interface=127.0.0.1\n")
        service = yield start_service(self, text, tmp)
        opened = service.getServiceNamed("mplane-supervisor").ready
        yield self.assertFailure(opened, sqlite3.OperationalError)  # the migration failed
        self.flushLoggedErrors(sqlite3.OperationalError)  # "mPlane supervisor cannot open its state"
        url = f"http://127.0.0.1:{service.listeners['metrics'].address.port}/ready"
        answer = yield deferToThread(requests.get, url, timeout=10)
        self.assertEqual(answer.status_code, 503)
        self.assertEqual(answer.json()["not_ready"], ["mplane-supervisor"])
        self.assertTrue(answer.json()["store"])


class DaemonMetricsTests(unittest.TestCase):
    """One real daemon with every protocol: each one's series show up after traffic."""

    timeout = 60

    @defer.inlineCallbacks
    def test_metrics_cover_every_protocol_tls_failures_and_the_store(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)

        def traffic() -> str:
            assert d.rpc("Framework/Notebook", "set", "metrics-key", "v").json()["OK"]
            d.rpc("Framework/Notebook", "noSuchMethod")
            d.rpc("Framework/Notebook", "x" * 40)
            assert d.register_ping().status_code == 200
            assert d.mplane("POST", "register/specification", SPEC).status_code == 200
            assert d.cc_echo() == "echo.response"
            assert tls_get(pki, d.port("rpc"), "expired") == 0
            assert tls_get(pki, d.port("supervisor"), "revoked") == 0
            assert tls_get(pki, d.port("rpc"), None) == 0
            return d.metrics()

        text = yield deferToThread(traffic)
        # prometheus-client writes labels in name order.
        for line in (
            'ccnet_rpc_calls_total{method="set",service="Framework/Notebook",status="200"} 1.0',
            # Unknown method names collapse to "-": clients cannot grow the label set.
            'ccnet_rpc_calls_total{method="-",service="Framework/Notebook",status="501"} 2.0',
            'ccnet_rpc_call_seconds_count{method="set",service="Framework/Notebook"} 1.0',
            'ccnet_mplane_events_total{capability="ping-average-ip4",event="registrations"} 1.0',
            'ccnet_mplane_events_total{capability="ping-average-ip4",event="specifications"} 1.0',
            'ccnet_mplane_queue_depth{component="IT.ccnet.Components.component"} 1.0',
            'ccnet_cc_messages_total{outcome="ok",type="echo.request"} 1.0',
            'ccnet_tls_handshake_failures_total{listener="rpc",reason="certificate has expired"} 1.0',
            'ccnet_tls_handshake_failures_total{listener="supervisor",reason="certificate revoked"} 1.0',
            'ccnet_tls_handshake_failures_total{listener="rpc",reason="peer did not return a certificate"} 1.0',
            'ccnet_listener_up{listener="rpc"} 1.0',
            'ccnet_listener_up{listener="cc"} 1.0',
        ):
            self.assertIn(line, text)
        for family in ('ccnet_store_seconds_bucket{le="0.0005",outcome="ok"}', "ccnet_cc_latency_seconds_bucket",
                       "ccnet_rpc_threadpool_queue_depth", "ccnet_process_resident_memory_bytes",
                       "ccnet_process_open_fds", 'ccnet_info{version="'):
            self.assertIn(family, text)
        ready = yield deferToThread(requests.get, d.url("metrics", "/ready"), timeout=10)
        self.assertEqual((ready.status_code, ready.json()),
                         (200, {"ready": True, "store": True, "parts": {"mplane-supervisor": True}}))


class CCTypeCardinalityTests(unittest.TestCase):
    """A CC peer chooses its message types: the series and the counters it can make are bounded."""

    timeout = 60

    @defer.inlineCallbacks
    def test_a_peer_sending_ever_new_types_cannot_grow_the_series_without_bound(self) -> Any:
        pki = test_pki()
        d = OpsDaemon(pki, Path(self.mktemp()).absolute())
        self.addCleanup(d.stop)
        sent = MAX_TYPES + 50

        def flood() -> str:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.connect(d.cc_endpoint)

                def echo() -> None:
                    # The ROUTER reads one peer's messages in order: once the echo is
                    # answered, every message sent before it has been counted.
                    sock.send_multipart(make_message("echo.request", {"target": d.cc_endpoint, "ack": True}).frames())
                    assert sock.poll(10_000), "no echo reply"
                    assert getattr(parse([b"server", *sock.recv_multipart()]), "type", None) == "echo.response"

                echo()
                for n in range(sent):  # no route for any of them: each is dropped
                    sock.send_multipart(make_message(f"flood.t{n}", {}).frames())
                echo()
            finally:
                sock.close(0)
                ctx.term()
            return d.metrics()

        text = yield deferToThread(flood)
        dropped = [line for line in text.splitlines()
                   if line.startswith('ccnet_cc_messages_total{outcome="dropped"')]
        # MAX_TYPES distinct types in all (echo.request, seen first, is one of them), the
        # rest under one label; echo.request keeps its own.
        self.assertEqual(len(dropped), MAX_TYPES)
        self.assertIn(f'ccnet_cc_messages_total{{outcome="dropped",type="{OTHER_TYPE}"}} 51.0', text)
        self.assertIn('ccnet_cc_messages_total{outcome="ok",type="echo.request"} 2.0', text)
        self.assertEqual(sum(float(line.rsplit(" ", 1)[1]) for line in dropped), sent)
