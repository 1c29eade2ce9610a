"""The tstat proxy's HTTP log, RRD and exporter capabilities (the RI's newer tstat set)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from ccnet.config import ConfigError, IniFile
from ccnet.mplane.model import RegistryStore, check_capability
from ccnet.mplane.probes import tstat
from ccnet.mplane.probes.tstat import exporters, logs, rrd
from tests.support import test_pki
from tests.test_mplane_probes import run_spec
from tests.test_mplane_support import material

SAMPLE = tstat.sample_dir()
RRDTOOL = shutil.which("rrdtool")
HTTP = "tstat-log_http_complete"


def _options(**kw: Any) -> tstat.TstatOptions:
    return tstat.TstatOptions(**{"mode": "replay", **kw})


def _probe(**kw: Any) -> tstat.TstatProbe:
    return tstat.TstatProbe(reactor, "tstat", _options(**kw))


def _configure(folder: Path, body: str) -> Any:
    path = folder / "ccnet.ini"
    path.write_text("[probe:tstat]\n" + body)
    ini = IniFile.load(path)
    section = ini.section("probe:tstat")
    options = tstat.probe_factory.configure(section)
    return options


def _make_rrd(path: Path, start: int, values: list[float], step: int = 300) -> None:
    """A real RRD like tstat's (one GAUGE data source, AVERAGE archive), fed ``values``."""
    subprocess.run([RRDTOOL, "create", str(path), "--start", str(start - step), "--step", str(step),
                    f"DS:value:GAUGE:{step * 2}:U:U", "RRA:AVERAGE:0.5:1:600"], check=True)
    updates = [f"{start + i * step}:{v}" for i, v in enumerate(values)]
    subprocess.run([RRDTOOL, "update", str(path), *updates], check=True)


# ---------------------------------------------------------------------------
# log_http_complete


class HttpLogTests(unittest.TestCase):
    def rows(self) -> list[list[Any]]:
        lines = logs.parse_http_log((SAMPLE / "log_http_complete").read_text())
        return logs.http_rows(lines)

    def test_sample_pairs_requests_with_their_responses(self) -> None:
        rows = self.rows()
        self.assertEqual([(r[5], r[8], r[12]) for r in rows], [
            ("GET", "/index.html", "200"), ("GET", "/old", "302"), ("GET", "/index.html", "200"),
            ("GET", "/video.mp4", "206"), ("GET", "/favicon.ico", "404"), ("POST", "/api/submit", "201")])

    def test_row_carries_the_ri_columns_with_typed_values(self) -> None:
        first, redirect, _, ranged, *_ = self.rows()
        named = dict(zip(logs.HTTP_COLUMNS, first, strict=True))
        self.assertEqual(named["source.ip4"], "127.0.0.1")
        self.assertEqual(named["destination.port"], first[3])
        self.assertEqual(named["request.hostname"], f"127.0.0.1:{first[3]}")
        self.assertEqual(named["request.user_agent"],
                         "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
        self.assertEqual(named["response.content_len"], "45")
        self.assertEqual(named["response.content_type"], "text/html; charset=utf-8")
        self.assertIsNone(named["request.fqdn"])  # "-" in the log
        self.assertEqual(named["time"].year, 2026)
        self.assertEqual(redirect[16], f"http://127.0.0.1:{first[3]}/index.html")
        self.assertEqual(ranged[15], "bytes 0-1023/40960")

    def test_unanswered_requests_and_orphan_responses_still_make_rows(self) -> None:
        text = ("10.0.0.1\t5000\t10.0.0.2\t80\t100.5\tHTTP\t200\t12\ttext/plain\tnginx\t-\t-\t-\n"
                "10.0.0.1\t5001\t10.0.0.2\t80\t101.0\tGET\tex.org\t-\t/a\t-\tcurl/8\t-\t-\n"
                "10.0.0.1\t5001\t10.0.0.2\t80\t101.1\tREQ2\t-\t-\t-\t-\t-\t-\t-\n")
        rows = logs.http_rows(logs.parse_http_log(text))
        self.assertEqual(len(rows), 2)
        orphan, unanswered = rows
        self.assertIsNone(orphan[5])
        self.assertEqual((orphan[11], orphan[12], orphan[14]), ("HTTP", "200", "text/plain"))
        self.assertEqual((unanswered[5], unanswered[8], unanswered[11]), ("GET", "/a", None))

    def test_tstat_2_rows_without_cookie_fields_are_read(self) -> None:
        text = "10.0.0.1\t5000\t10.0.0.2\t80\t100.5\tGET\tex.org\tex.org\t/p\thttp://r/\tUA 1\n"
        (row,) = logs.http_rows(logs.parse_http_log(text))
        self.assertEqual(row[6:11], ["ex.org", "ex.org", "/p", "http://r/", "UA 1"])

    def test_window_keeps_transactions_that_began_in_it(self) -> None:
        lines = logs.parse_http_log((SAMPLE / "log_http_complete").read_text())
        fourth = sorted(x.time for x in lines if not x.is_response)[3]
        self.assertEqual(len(logs.http_rows(lines, since=fourth)), 3)

    @defer.inlineCallbacks
    def test_replay_run_returns_the_recorded_transactions(self) -> Any:
        msg = yield run_spec(_probe(), HTTP, "now + 1s")
        self.assertEqual(msg.kind, "result", msg)
        self.assertEqual(len(msg.resultvalues), 6)
        self.assertEqual(msg.resultvalues[5][5], "POST")

    @defer.inlineCallbacks
    def test_live_run_switches_the_http_log_on_for_the_window_only(self) -> Any:
        folder = Path(self.mktemp())
        out = folder / "logs" / "2026_11_25_21_00.out"
        out.mkdir(parents=True)
        conf = folder / "runtime.conf"
        conf.write_text("[log]\nlog_tcp_complete = 1\nlog_http_complete = 0 # off by default\n")
        log = out / "log_http_complete"
        log.write_text((SAMPLE / "log_http_complete").read_text())

        def tstat_logs_a_request() -> None:  # during the window, stamped with its time
            with open(log, "a") as handle:
                handle.write(f"192.0.2.7\t41000\t198.51.100.9\t80\t{reactor.seconds():.6f}\tGET\tex.org\t-\t"
                             "/now\t-\tcurl/8\t-\t-\n")

        probe = _probe(mode="live", runtime_conf=conf, log_dir=folder / "logs")
        seen: list[str] = []
        reactor.callLater(0.5, lambda: (seen.append(conf.read_text()), tstat_logs_a_request()))
        msg = yield run_spec(probe, HTTP, "now + 1s")
        self.assertIn("log_http_complete = 1 # off by default", seen[0])
        self.assertIn("log_http_complete = 0 # off by default", conf.read_text())
        self.assertEqual([r[8] for r in msg.resultvalues], ["/now"])


    @defer.inlineCallbacks
    def test_overlapping_runs_keep_a_flag_on_until_the_last_one_ends(self) -> Any:
        folder = Path(self.mktemp())
        (folder / "logs").mkdir(parents=True)
        conf = folder / "runtime.conf"
        conf.write_text("log_http_complete = 0\n")
        probe = _probe(mode="live", runtime_conf=conf, log_dir=folder / "logs")
        seen: list[str] = []
        long_run = run_spec(probe, HTTP, "now + 2s")
        yield run_spec(probe, HTTP, "now + 1s")
        seen.append(conf.read_text())
        yield long_run
        self.assertEqual(seen, ["log_http_complete = 1\n"])
        self.assertEqual(conf.read_text(), "log_http_complete = 0\n")


# ---------------------------------------------------------------------------
# Capabilities and configuration


class CapabilitySetTests(unittest.TestCase):
    def test_every_capability_is_valid_in_the_registry(self) -> None:
        store = RegistryStore()
        opts = _options(rrd_dir=Path("/tmp"), export_to=("127.0.0.1:*",), log_exporter=Path("/bin/true"))
        caps = tstat.capabilities(opts)
        for cap in caps:
            check_capability(cap, store)
        self.assertEqual(len(caps), 10)  # the RI proxy's ten

    def test_ri_columns_and_parameters(self) -> None:
        opts = _options(rrd_dir=Path("/tmp"), export_to=("127.0.0.1:*",), log_exporter=Path("/bin/true"))
        caps = {str(c.label): c for c in tstat.capabilities(opts)}
        self.assertEqual(caps["tstat-log_rrds"].results[:2], ["Ethernet.Related.metrics", "IP.Related.metrics"])
        self.assertEqual(caps["tstat-exporter_rrd"].results, ["rrdtimestamp", "rrdMetirc", "rrdValue"])
        self.assertEqual(sorted(caps["tstat-exporter_streaming"].parameters),
                         ["log.folder", "log.time", "log.type", "repo.url"])
        self.assertEqual(list(caps["tstat-exporter_log"].parameters), ["repository.url"])
        self.assertEqual(str(caps["tstat-exporter_rrd"].when), "past ... future")

    def test_only_what_is_configured_is_offered(self) -> None:
        labels = [str(c.label) for c in tstat.capabilities(_options())]
        self.assertIn(HTTP, labels)
        self.assertFalse([x for x in labels if "rrd" in x or "exporter" in x])
        labels = [str(c.label) for c in tstat.capabilities(_options(export_to=("repo:9001",)))]
        self.assertIn("tstat-exporter_streaming", labels)
        self.assertNotIn("tstat-exporter_rrd", labels)

    def test_config_errors_name_the_key(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        for body, key in (("rrd-dir = /nonexistent/rrd\n", "rrd-dir"),
                          ("export-to = repository.example\n", "export-to"),
                          (f"log-exporter = {folder}\n", "log-exporter")):
            with self.assertRaises(ConfigError) as ctx:
                _configure(folder, body)
            self.assertIn(key, str(ctx.exception))

    def test_config_reads_exporter_keys(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        opts = _configure(folder, "export-to = 127.0.0.1:9000, [::1]:*\nrrd-export-interval = 60\n")
        self.assertEqual(opts.export_to, ("127.0.0.1:9000", "[::1]:*"))
        self.assertEqual(opts.rrd_export_interval, 60.0)


class RepositoryAddressTests(unittest.TestCase):
    def test_forms(self) -> None:
        self.assertEqual(exporters.parse_repository("localhost:9001", False),
                         exporters.RepositoryAddress("localhost", 9001, False))
        self.assertTrue(exporters.parse_repository("tls://10.0.0.1:9001", False).tls)
        self.assertTrue(exporters.parse_repository("repo:9000", True).tls)
        self.assertEqual(exporters.parse_repository("https://[::1]:9000/x", False).host, "::1")
        for bad in ("repo", "repo:http", "ftp://repo:21", ""):
            self.assertRaises(tstat.ProbeError, exporters.parse_repository, bad, False)

    def test_only_listed_repositories_are_allowed(self) -> None:
        addr = exporters.RepositoryAddress("10.0.0.1", 9001, False)
        exporters.check_allowed(addr, ("10.0.0.1:9001",))
        exporters.check_allowed(addr, ("10.0.0.1:*",))
        self.assertRaises(tstat.ProbeError, exporters.check_allowed, addr, ("10.0.0.1:9000", "10.0.0.2:*"))


# ---------------------------------------------------------------------------
# RRDs


FETCH = """                               value

1764100500: 1.2000000000e+01
1764100800: -nan
1764101100: 1,8000000000e+01
"""


class RrdParsingTests(unittest.TestCase):
    def test_fetch_output_gives_known_samples(self) -> None:
        samples = rrd.parse_fetch("ip_len_in.avg", FETCH)
        self.assertEqual([(s.time, s.value) for s in samples], [(1764100500.0, 12.0), (1764101100.0, 18.0)])

    def test_garbage_in_a_value_is_an_error(self) -> None:
        self.assertRaises(rrd.RrdError, rrd.parse_fetch, "x", "1764100500: banana\n")

    def test_metrics_fall_into_the_ri_groups(self) -> None:
        cases = {"ip_len_in.avg": "IP", "tcp_rtt_avg_out.idx0": "TCP", "udp_cl_p_in.avg": "UDP",
                 "L7_TCP_num_in.idx12": "Classifier", "tcp_bitrate_out.idx3": "Classifier",
                 "L7_VIDEO_num_in.idx1": "Video", "video_rate_in.idx0": "Video", "mm_avg_ipg_in.avg": "MMedia",
                 "rtcp_f_lost_in.avg": "MMedia", "profile_cpu.idx0": "Profile", "eth_frame_len.avg": "Ethernet"}
        for metric, group in cases.items():
            self.assertEqual(rrd.group_of(metric), f"{group}.Related.metrics", metric)
        self.assertIsNone(rrd.group_of("notes"))

    def test_summary_is_the_window_mean_per_metric(self) -> None:
        samples = rrd.parse_fetch("ip_len_in.avg", FETCH) + rrd.parse_fetch("tcp_rtt_avg_in.avg", "1: 3\n")
        row = rrd.summarize(samples)
        self.assertEqual(row[1], "ip_len_in.avg=15")
        self.assertEqual(row[2], "tcp_rtt_avg_in.avg=3")
        self.assertIsNone(row[0])


class RrdFolderTest(unittest.TestCase):
    timeout = 30

    def rrd_folder(self, steps_back: int, metrics: dict[str, list[float]]) -> None:
        """``self.folder`` with real RRDs whose samples start ``steps_back`` 5-minute steps ago."""
        if RRDTOOL is None:
            raise unittest.SkipTest("rrdtool is not installed (make deps installs it)")
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.start = (int(time.time()) // 300) * 300 - 300 * steps_back
        for name, values in metrics.items():
            _make_rrd(self.folder / f"{name}.rrd", self.start, values)


class RrdRunTests(RrdFolderTest):
    def setUp(self) -> None:
        self.rrd_folder(10, {"ip_len_in.avg": [100, 200, 300, 400], "tcp_anomalies_out.idx2": [1, 3, 5, 7]})

    @defer.inlineCallbacks
    def test_log_rrds_replays_the_last_hour_of_each_metric(self) -> Any:
        msg = yield run_spec(_probe(rrd_dir=self.folder, rrdtool=RRDTOOL), "tstat-log_rrds", "now + 1s")
        self.assertEqual(msg.kind, "result", msg)
        (row,) = msg.resultvalues
        named = dict(zip(rrd.GROUPS, row, strict=True))
        self.assertEqual(named["IP.Related.metrics"], "ip_len_in.avg=250")
        self.assertEqual(named["TCP.Related.metrics"], "tcp_anomalies_out.idx2=4")
        self.assertIsNone(named["Video.Related.metrics"])

    @defer.inlineCallbacks
    def test_an_unreadable_rrd_is_a_clear_mplane_exception(self) -> Any:
        (self.folder / "broken.rrd").write_text("not an rrd")
        msg = yield run_spec(_probe(rrd_dir=self.folder, rrdtool=RRDTOOL), "tstat-log_rrds", "now + 1s")
        self.assertEqual(msg.kind, "exception")
        self.assertIn("broken.rrd", str(msg.to_dict()))


class _Collector(resource.Resource):
    """The RI repository's RRD collector: POST /register/result/indirect_export."""

    isLeaf = True

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.bodies: list[Any] = []
        self.peers: list[str] = []

    def render_POST(self, request: server.Request) -> bytes:  # noqa: N802 (twisted.web API)
        if request.path != b"/register/result/indirect_export":
            request.setResponseCode(404)
            return b"no"
        cert = request.transport.getPeerCertificate()
        self.peers.append(cert.get_subject().CN if cert is not None else "-")
        if self.failures:
            self.failures -= 1
            request.setResponseCode(503)
            return b"busy"
        self.bodies.append(json.loads(request.content.read()))
        return b"ok"


class RrdExporterTests(RrdFolderTest):
    def setUp(self) -> None:
        self.rrd_folder(5, {"ip_bitrate_in.idx0": [10, 20, 30]})
        pki = test_pki()
        self.collector = _Collector(failures=1)
        site = server.Site(self.collector)
        port = reactor.listenTCP(0, material(pki, "server").server(False, "repo").wrap(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.probe = _probe(rrd_dir=self.folder, rrdtool=RRDTOOL, export_to=(f"127.0.0.1:{self.port}",),
                            rrd_export_interval=0.3)
        self.probe.use_tls(material(pki, "component"))

    @defer.inlineCallbacks
    def test_samples_reach_the_repository_once_after_a_refused_post(self) -> Any:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.start - 600))
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 3))
        msg = yield run_spec(self.probe, "tstat-exporter_rrd", f"{since} ... {until}",
                             {"repository.url": f"127.0.0.1:{self.port}"})
        self.assertEqual(msg.kind, "result", msg)
        self.assertGreaterEqual(len(self.collector.peers), 2)  # the 503, then the retry
        self.assertEqual(self.collector.peers[0], "component")
        delivered = [tuple(x) for body in self.collector.bodies for x in body]
        self.assertEqual([(m, v) for m, _, v in delivered],
                         [("ip_bitrate_in.idx0", 10.0), ("ip_bitrate_in.idx0", 20.0), ("ip_bitrate_in.idx0", 30.0)])
        self.assertEqual(len(set(delivered)), 3)
        self.assertEqual([r[1:] for r in msg.resultvalues],
                         [["ip_bitrate_in.idx0", "10.0"], ["ip_bitrate_in.idx0", "20.0"], ["ip_bitrate_in.idx0", "30.0"]])

    @defer.inlineCallbacks
    def test_a_metric_updated_late_still_gets_its_newest_step_delivered(self) -> Any:
        # tstat updates its RRDs one after the other: ip_len_out has no value for the
        # newest step in the first round, and gets it before the second.
        _make_rrd(self.folder / "ip_len_out.avg.rrd", self.start, [1, 2])
        self.collector.failures = 0
        newest = self.start + 2 * 300

        def late_update() -> None:
            subprocess.run([RRDTOOL, "update", str(self.folder / "ip_len_out.avg.rrd"), f"{newest}:3"], check=True)

        reactor.callLater(0.6, late_update)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.start - 600))
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 2))
        msg = yield run_spec(self.probe, "tstat-exporter_rrd", f"{since} ... {until}",
                             {"repository.url": f"127.0.0.1:{self.port}"})
        self.assertEqual(msg.kind, "result", msg)
        late = sorted(v for m, _, v in (x for body in self.collector.bodies for x in body) if m == "ip_len_out.avg")
        self.assertEqual(late, [1.0, 2.0, 3.0])

    @defer.inlineCallbacks
    def test_a_repository_not_in_export_to_is_refused(self) -> Any:
        msg = yield run_spec(self.probe, "tstat-exporter_rrd", "now + 1s", {"repository.url": "192.0.2.1:9000"})
        self.assertEqual(msg.kind, "exception")
        self.assertIn("export-to", str(msg.to_dict()))
        self.assertEqual(self.collector.peers, [])


# ---------------------------------------------------------------------------
# Log streaming


class _Lines(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.factory.received.append(data)  # type: ignore[attr-defined]


class StreamingExporterTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.folder = Path(self.mktemp()).resolve()
        self.first = self.folder / "2026_11_25_21_00.out"
        self.first.mkdir(parents=True)
        header = (SAMPLE / "log_tcp_complete_2014_05_14_23_44.log").read_text().splitlines()[0]
        (self.first / "log_tcp_complete").write_text(header + "\nold flow logged before the measurement\n")
        self.factory = protocol.Factory.forProtocol(_Lines)
        self.factory.received = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.probe = _probe(log_dir=self.folder, export_to=(f"127.0.0.1:{self.port}",))

    def params(self, **kw: str) -> dict[str, str]:
        return {"repo.url": f"127.0.0.1:{self.port}", "log.folder": str(self.folder),
                "log.type": "log_tcp_complete", "log.time": "5", **kw}

    def received(self) -> list[str]:
        return b"".join(self.factory.received).decode().splitlines()  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def arrived(self, count: int) -> Any:
        """The received lines once ``count`` are in (bytes sent just before the result may
        still be on their way to the repository)."""
        for _ in range(100):
            if len(self.received()) >= count:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        return self.received()

    @defer.inlineCallbacks
    def test_new_lines_and_the_rotated_log_are_streamed_with_the_header(self) -> Any:
        def grow() -> None:
            with open(self.first / "log_tcp_complete", "a") as handle:
                handle.write("flow one\nflow t")  # the second line is not complete yet

        def finish_and_rotate() -> None:
            with open(self.first / "log_tcp_complete", "a") as handle:
                handle.write("wo\n")
            second = self.folder / "2026_11_25_22_00.out"
            second.mkdir()
            (second / "log_tcp_complete").write_text("#header of the next log\nflow three\n")

        reactor.callLater(0.5, grow)
        reactor.callLater(1.5, finish_and_rotate)
        msg = yield run_spec(self.probe, "tstat-exporter_streaming", "now + 4s", self.params())
        self.assertEqual(msg.kind, "result", msg)
        first, second = str(self.first / "log_tcp_complete"), str(self.folder / "2026_11_25_22_00.out/log_tcp_complete")
        got = yield self.arrived(5)
        self.assertTrue(got[0].startswith(f"{first} #01#c_ip:1 "), got[0])
        self.assertEqual(got[1:], [f"{first} flow one", f"{first} flow two", f"{second} #header of the next log",
                                   f"{second} flow three"])

    @defer.inlineCallbacks
    def test_lines_wait_while_the_repository_is_down(self) -> Any:
        # Nothing listens at first: the exporter retries and sends everything once it can.
        dead = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        port = dead.getHost().port
        yield dead.stopListening()
        probe = _probe(log_dir=self.folder, export_to=(f"127.0.0.1:{port}",))
        later: list[Any] = []

        def come_up() -> None:
            with open(self.first / "log_tcp_complete", "a") as handle:
                handle.write("flow while down\n")
            later.append(reactor.listenTCP(port, self.factory, interface="127.0.0.1"))

        reactor.callLater(0.3, come_up)
        msg = yield run_spec(probe, "tstat-exporter_streaming", "now + 4s",
                             self.params(**{"repo.url": f"127.0.0.1:{port}"}))
        for p in later:
            yield p.stopListening()
        self.assertEqual(msg.kind, "result", msg)
        got = yield self.arrived(2)
        self.assertIn(f"{self.first / 'log_tcp_complete'} flow while down", got)

    @defer.inlineCallbacks
    def test_a_repository_that_drops_the_connection_gets_the_rest_on_the_next_one(self) -> Any:
        class DropsFirst(_Lines):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
                super().dataReceived(data)
                if self.factory.connections == 1:  # type: ignore[attr-defined]
                    self.transport.abortConnection()

            def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
                self.factory.connections += 1  # type: ignore[attr-defined]

        self.factory.protocol = DropsFirst
        self.factory.connections = 0  # type: ignore[attr-defined]

        def more() -> None:
            with open(self.first / "log_tcp_complete", "a") as handle:
                handle.write("flow after the drop\n")

        reactor.callLater(1.0, more)
        msg = yield run_spec(self.probe, "tstat-exporter_streaming", "now + 4s", self.params())
        self.assertEqual(msg.kind, "result", msg)
        got = yield self.arrived(2)
        self.assertGreaterEqual(self.factory.connections, 2)  # type: ignore[attr-defined]
        self.assertIn(f"{self.first / 'log_tcp_complete'} flow after the drop", got)

    @defer.inlineCallbacks
    def test_streaming_starts_after_the_last_complete_line(self) -> Any:
        with open(self.first / "log_tcp_complete", "a") as handle:
            handle.write("half a fl")  # tstat is writing this line as the measurement starts

        def rest() -> None:
            with open(self.first / "log_tcp_complete", "a") as handle:
                handle.write("ow\n")

        reactor.callLater(0.5, rest)
        msg = yield run_spec(self.probe, "tstat-exporter_streaming", "now + 2s", self.params())
        self.assertEqual(msg.kind, "result", msg)
        got = yield self.arrived(2)
        self.assertEqual(got[1:], [f"{self.first / 'log_tcp_complete'} half a flow"])

    @defer.inlineCallbacks
    def test_folders_outside_log_dir_and_unlisted_repositories_are_refused(self) -> Any:
        for params, words in ((self.params(**{"log.folder": "/etc"}), "outside"),
                              (self.params(**{"repo.url": "192.0.2.1:9001"}), "export-to"),
                              (self.params(**{"log.type": "../../etc/passwd"}), "log.type")):
            msg = yield run_spec(self.probe, "tstat-exporter_streaming", "now + 1s", params)
            self.assertEqual(msg.kind, "exception", params)
            self.assertIn(words, str(msg.to_dict()))
        self.assertEqual(self.received(), [])


# ---------------------------------------------------------------------------
# Bulk log exporter (external program)


class LogExporterTests(unittest.TestCase):
    timeout = 30

    def program(self, body: str) -> Path:
        folder = Path(self.mktemp()).resolve()
        folder.mkdir()
        path = folder / "math_probe"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    @defer.inlineCallbacks
    def test_program_gets_the_ri_arguments_and_is_stopped_at_the_end(self) -> Any:
        program = self.program('echo "$PWD $*" > args\ntrap "echo stopped > stopped; exit 0" TERM\n'
                               "while :; do sleep 0.1; done\n")
        config = program.parent / "math_probe.xml"
        config.write_text("<config/>")
        probe = _probe(export_to=("127.0.0.1:3000",), log_exporter=program, log_exporter_config=config)
        msg = yield run_spec(probe, "tstat-exporter_log", "now + 1s", {"repository.url": "127.0.0.1:3000"})
        self.assertEqual(msg.kind, "result", msg)
        yield task.deferLater(reactor, 0.3, lambda: None)
        args = (program.parent / "args").read_text().split()
        self.assertEqual(args[0], str(program.parent))
        self.assertEqual(args[1:6], ["--config", str(config), "--repoUrl", "127.0.0.1:3000", "--startTime"])
        self.assertRegex(args[6], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        self.assertTrue((program.parent / "stopped").exists())

    @defer.inlineCallbacks
    def test_a_failing_program_is_an_mplane_exception_with_its_words(self) -> Any:
        program = self.program('echo "cannot reach repository" >&2\nexit 3\n')
        probe = _probe(export_to=("127.0.0.1:*",), log_exporter=program)
        msg = yield run_spec(probe, "tstat-exporter_log", "now + 5s", {"repository.url": "127.0.0.1:3000"})
        self.assertEqual(msg.kind, "exception")
        text = str(msg.to_dict())
        self.assertIn("status 3", text)
        self.assertIn("cannot reach repository", text)
