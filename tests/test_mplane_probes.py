"""The ping and tstat probes: parsing, configuration and real runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from ccnet.config import ConfigError, IniFile
from ccnet.mplane import component_config
from ccnet.mplane.model import (
    ExceptionMessage,
    Message,
    RegistryStore,
    Statement,
    When,
    check_capability,
)
from ccnet.mplane.probes import ping, tstat
from ccnet.mplane.scheduler import Scheduler
from ccnet.runtime import Runtime

SAMPLE = tstat.sample_dir()


def run_spec(probe: Any, label: str, when: str, params: dict[str, str] | None = None) -> defer.Deferred[Message]:
    """Submit through a real-reactor scheduler; fire with the final reply."""
    cap = next(c for c in probe.capabilities() if c.label == label)
    spec = cap.derive("specification", when=When.parse(when), parameters=dict(params or {}), token=f"t-{label}")
    done: defer.Deferred[Message] = defer.Deferred()

    def hook(job: Any, msg: Message, final: bool) -> None:
        if final:
            done.callback(msg)
    Scheduler(reactor).submit(spec, cap, probe, "test", hook)
    return done


class PingLineTests(unittest.TestCase):
    def test_reply_line_gives_sequence_ttl_and_microseconds(self) -> None:
        line = "64 bytes from 127.0.0.1: icmp_seq=3 ttl=64 time=0.052 ms"
        self.assertEqual(ping.parse_ping_line(line), (3, 64, 52))

    def test_other_lines_are_ignored(self) -> None:
        for line in ("PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.", "", "rtt min/avg/max/mdev = 1/2/3/4 ms"):
            self.assertIsNone(ping.parse_ping_line(line))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 65535), st.integers(1, 255), st.floats(0.001, 9999, allow_nan=False))
    def test_any_reply_line_round_trips(self, seq: int, ttl: int, ms: float) -> None:
        line = f"64 bytes from ::1: icmp_seq={seq} ttl={ttl} time={ms:.3f} ms"
        self.assertEqual(ping.parse_ping_line(line), (seq, ttl, int(float(f"{ms:.3f}") * 1000)))


def parse_component(probes: str) -> Any:
    return component_config.parse(IniFile.from_string("[component]\nsupervisor = https://localhost:1\n" + probes))


class ProbeConfigTests(unittest.TestCase):
    def test_ping_capabilities_are_the_sdk_ones_and_valid_in_the_core_registry(self) -> None:
        cfg = parse_component("[probe:ping]\nip4addr = 127.0.0.1\nip6addr = ::1\n")
        caps = cfg.probes[0].factory.build(reactor, "ping", cfg.probes[0].options).capabilities()
        self.assertEqual([c.label for c in caps],
                         ["ping-average-ip4", "ping-detail-ip4", "ping-average-ip6", "ping-detail-ip6"])
        for cap in caps:
            check_capability(cap, RegistryStore())
        self.assertEqual(str(caps[0].when), "now ... future / 1s")

    def test_sdk_style_module_section_is_accepted(self) -> None:
        cfg = parse_component("[module_ping]\nmodule = ccnet.mplane.probes.ping\nip4addr = 127.0.0.1\n")
        self.assertEqual(cfg.probes[0].name, "ping")

    def test_bad_destination_constraint_names_the_key(self) -> None:
        with self.assertRaises(ConfigError) as ctx:
            parse_component("[probe:ping]\ndestinations4 = 127.0.0.1 ... banana\n")
        self.assertEqual((ctx.exception.section, ctx.exception.key), ("probe:ping", "destinations4"))

    def test_unknown_probe_key_is_an_error(self) -> None:
        with self.assertRaises(ConfigError) as ctx:
            parse_component("[probe:ping]\ncolour = blue\n")
        self.assertEqual(ctx.exception.key, "colour")

    def test_module_that_is_not_a_probe_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as ctx:
            parse_component("[probe:x]\nmodule = json\n")
        self.assertIn("IProbeFactory", str(ctx.exception))

    def test_component_without_probes_or_supervisor_is_an_error(self) -> None:
        with self.assertRaises(ConfigError):
            component_config.parse(IniFile.from_string("[component]\nsupervisor = https://x\n"))
        with self.assertRaises(ConfigError) as ctx:
            component_config.parse(IniFile.from_string("[component]\n[probe:ping]\n"))
        self.assertIn("listen", str(ctx.exception))

    def test_tstat_capabilities_are_valid_in_the_core_registry(self) -> None:
        for cap in tstat.capabilities():
            check_capability(cap, RegistryStore())
        labels = [c.label for c in tstat.capabilities()]
        self.assertIn("tstat-log_tcp_complete-core", labels)
        core = next(c for c in tstat.capabilities() if c.label == "tstat-log_tcp_complete-core")
        self.assertEqual(len(core.results), 42)

    def test_tstat_offers_the_ri_p2p_and_layer7_sets_with_the_ri_columns(self) -> None:
        caps = {c.label: c for c in tstat.capabilities()}
        self.assertEqual(caps["tstat-log_tcp_complete-p2p_stats"].results,
                         ["p2p.subtype", "ed2k.data", "ed2k.signaling", "ed2k.i2r", "ed2k.r2i", "ed2k.chat"])
        self.assertEqual(caps["tstat-log_tcp_complete-layer7"].results,
                         ["initiator.psh_separated", "responder.psh_separated", "ssl.hello.client",
                          "ssl.hello.server"])


class PingRunTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.probe = ping.PingProbe(reactor, "ping", ping.PingOptions(ip6addr="::1"))

    @defer.inlineCallbacks
    def test_average_of_two_real_pings_to_loopback(self) -> Any:
        msg = yield run_spec(self.probe, "ping-average-ip4", "now + 2s / 1s",
                             {"source.ip4": "127.0.0.1", "destination.ip4": "127.0.0.1"})
        self.assertIsInstance(msg, Statement, msg)
        mn, mean, mx, count = (int(v) for v in msg.resultvalues[0])
        self.assertEqual(count, 2)
        self.assertTrue(0 < mn <= mean <= mx)
        start, end = msg.when.datetimes(datetime.now(UTC))
        self.assertGreater(end, start)

    @defer.inlineCallbacks
    def test_ip6_ping(self) -> Any:
        msg = yield run_spec(self.probe, "ping-detail-ip6", "now + 1s / 1s",
                             {"source.ip6": "::1", "destination.ip6": "::1"})
        if isinstance(msg, ExceptionMessage):
            raise unittest.SkipTest(f"no IPv6 loopback here: {msg.message}")
        self.assertEqual(len(msg.resultvalues), 1)

    @defer.inlineCallbacks
    def test_unreachable_ping_binary_is_an_mplane_exception(self) -> Any:
        probe = ping.PingProbe(reactor, "ping", ping.PingOptions(ping="/nonexistent/ping"))
        msg = yield run_spec(probe, "ping-average-ip4", "now + 1s / 1s",
                             {"source.ip4": "127.0.0.1", "destination.ip4": "127.0.0.1"})
        self.assertIsInstance(msg, ExceptionMessage)
        self.assertIn("not found", msg.message)


class TstatParsingTests(unittest.TestCase):
    def flows(self) -> list[dict[str, str]]:
        out = []
        for path in tstat.find_logs(SAMPLE):
            out.extend(tstat.parse_log(path.read_text()))
        return out

    def test_recorded_sample_is_shipped_and_parses_by_header_names(self) -> None:
        flows = self.flows()
        self.assertEqual(len(flows), 2)
        self.assertEqual(flows[0]["c_ip"], "192.168.1.2")
        self.assertEqual(flows[0]["s_port"], "443")
        self.assertEqual(flows[1]["c_port"], "55571")

    def test_core_rows_hold_the_recorded_values_in_capability_order(self) -> None:
        rows = tstat.rows_for("tstat-log_tcp_complete-core", self.flows())
        cap = next(c for c in tstat.capabilities() if c.label == "tstat-log_tcp_complete-core")
        first = dict(zip(cap.results, rows[0], strict=True))
        self.assertEqual(first["initiator.ip4"], "192.168.1.2")
        self.assertEqual(first["responder.ip4"], "74.125.232.142")
        self.assertEqual(first["packets.forward"], "21")
        self.assertEqual(first["bytes.backward"], "5782")
        self.assertEqual(first["duration.ms"], 81764)
        self.assertEqual(first["start"], datetime(2014, 5, 14, 21, 43, 16, 934200, tzinfo=UTC))
        self.assertIs(first["initiator.ip4.isinternal"], True)

    def test_end_to_end_uses_only_flows_logged_with_that_set(self) -> None:
        rows = tstat.rows_for("tstat-log_tcp_complete-end_to_end", self.flows())
        self.assertEqual(rows, [["103.862373", "47.609000", "174.678000", "43.637202", "7", "64", "64"]])

    def test_missing_log_set_is_explained(self) -> None:
        flows = [f for f in self.flows() if "c_rtt_avg" not in f]
        with self.assertRaises(tstat.ProbeError) as ctx:
            tstat.rows_for("tstat-log_tcp_complete-end_to_end", flows)
        self.assertIn("runtime.conf", str(ctx.exception))

    def extended_log(self, extra: list[str]) -> list[dict[str, str]]:
        """The recorded core + end-to-end flow with more set columns appended; each added value
        is its column's name in angle brackets (a parser check, not a measurement)."""
        lines = (SAMPLE / "log_tcp_complete_2014_05_14_23_44.log").read_text().splitlines()
        header = lines[0] + "".join(f" {name}:{57 + i}" for i, name in enumerate(extra))
        row = lines[1] + "".join(f" <{name}>" for name in extra)
        return tstat.parse_log(header + "\n" + row + "\n")

    def test_p2p_set_columns_are_read_by_tstat_header_names(self) -> None:
        flows = self.extended_log(["p2p_st", "ed2k_data", "ed2k_sig", "ed2k_c2s", "ed2k_c2c", "ed2k_chat"])
        rows = tstat.rows_for("tstat-log_tcp_complete-p2p_stats", flows)
        self.assertEqual(rows, [["<p2p_st>", "<ed2k_data>", "<ed2k_sig>", "<ed2k_c2s>", "<ed2k_c2c>",
                                 "<ed2k_chat>"]])

    def test_layer7_set_columns_are_picked_out_of_tstat_3_layout(self) -> None:
        # tstat 3.x Layer7 set order: HTTP counters first, then PSH, TLS, DNS columns.
        layer7 = ["http_req_cnt", "http_res_cnt", "http_res", "c_pkts_push", "s_pkts_push", "c_tls_SNI",
                  "s_tls_SCN", "c_npnalpn", "s_npnalpn", "c_tls_sesid"]
        rows = tstat.rows_for("tstat-log_tcp_complete-layer7", self.extended_log(layer7))
        self.assertEqual(rows, [["<c_pkts_push>", "<s_pkts_push>", "<c_tls_SNI>", "<s_tls_SCN>"]])

    def test_layer7_accepts_the_older_c_ssl_s_ssl_header_names(self) -> None:
        flows = self.extended_log(["c_pkts_push", "s_pkts_push", "c_ssl", "s_ssl"])
        rows = tstat.rows_for("tstat-log_tcp_complete-layer7", flows)
        self.assertEqual(rows, [["<c_pkts_push>", "<s_pkts_push>", "<c_ssl>", "<s_ssl>"]])

    def test_recorded_sample_lacks_p2p_and_layer7_sets_and_says_so(self) -> None:
        for label, column in (("tstat-log_tcp_complete-p2p_stats", "p2p_st"),
                              ("tstat-log_tcp_complete-layer7", "c_pkts_push")):
            with self.assertRaises(tstat.ProbeError) as ctx:
                tstat.rows_for(label, self.flows())
            self.assertIn(column, str(ctx.exception))
            self.assertIn("runtime.conf", str(ctx.exception))

    def test_p2p_and_layer7_switch_their_runtime_conf_flags(self) -> None:
        text = "log_tcp_complete = 0\ntcplog_p2p = 0\ntcplog_layer7 = 0\n"
        p2p, _ = tstat.TCP_SETS["tstat-log_tcp_complete-p2p_stats"]
        layer7, _ = tstat.TCP_SETS["tstat-log_tcp_complete-layer7"]
        self.assertEqual(tstat.set_runtime_flags(text, p2p, True),
                         "log_tcp_complete = 1\ntcplog_p2p = 1\ntcplog_layer7 = 0\n")
        self.assertEqual(tstat.set_runtime_flags(text, layer7, True),
                         "log_tcp_complete = 1\ntcplog_p2p = 0\ntcplog_layer7 = 1\n")

    def test_runtime_conf_flags_switch_without_touching_other_lines(self) -> None:
        text = "[log]\nlog_tcp_complete = 0 # core\ntcplog_end_to_end = 0\nhistogram_engine = 10\n"
        on = tstat.set_runtime_flags(text, ("log_tcp_complete", "tcplog_end_to_end"), True)
        self.assertEqual(on, "[log]\nlog_tcp_complete = 1 # core\ntcplog_end_to_end = 1\nhistogram_engine = 10\n")
        self.assertEqual(tstat.set_runtime_flags(on, ("tcplog_end_to_end",), False),
                         "[log]\nlog_tcp_complete = 1 # core\ntcplog_end_to_end = 0\nhistogram_engine = 10\n")


class TstatRunTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_replay_returns_the_recorded_flows(self) -> Any:
        probe = tstat.TstatProbe(reactor, "tstat", tstat.TstatOptions(mode="replay"))
        msg = yield run_spec(probe, "tstat-log_tcp_complete-core", "now + 1s")
        self.assertEqual(msg.kind, "result", msg)
        self.assertEqual(len(msg.resultvalues), 2)
        self.assertEqual(msg.resultvalues[0][0], "192.168.1.2")

    @defer.inlineCallbacks
    def test_live_mode_switches_runtime_conf_for_the_measurement_window(self) -> Any:
        folder = Path(self.mktemp())
        logs = folder / "logs" / "2026_11_25_10_00.out"
        logs.mkdir(parents=True)
        conf = folder / "runtime.conf"
        conf.write_text("log_tcp_complete = 0\ntcplog_end_to_end = 0\n")
        # A flow "logged" during the window (timestamps are now), and an old one outside it.
        header = (SAMPLE / "log_tcp_complete_2014_05_14_23_44.log").read_text().splitlines()[0]
        row = (SAMPLE / "log_tcp_complete_2014_05_14_23_44.log").read_text().splitlines()[1].split()
        now_ms = reactor.seconds() * 1000 + 100
        fresh = list(row)
        fresh[28] = f"{now_ms:.6f}"
        (logs / "log_tcp_complete").write_text("\n".join([header, " ".join(row), " ".join(fresh)]) + "\n")
        probe = tstat.TstatProbe(reactor, "tstat", tstat.TstatOptions("live", conf, folder / "logs"))
        seen: list[str] = []
        reactor.callLater(0.5, lambda: seen.append(conf.read_text()))
        msg = yield run_spec(probe, "tstat-log_tcp_complete-end_to_end", "now + 1s")
        self.assertEqual(seen, ["log_tcp_complete = 1\ntcplog_end_to_end = 1\n"])
        self.assertEqual(conf.read_text(), "log_tcp_complete = 1\ntcplog_end_to_end = 0\n")
        self.assertEqual(len(msg.resultvalues), 1)


class DuplicateLabelTests(unittest.TestCase):
    def test_two_probes_offering_one_label_stop_the_start_with_both_names(self) -> None:

        from ccnet.mplane import component
        from tests.support import test_pki
        from tests.test_mplane_support import material

        cfg = parse_component("[probe:ping]\n[probe:ping2]\nmodule = ccnet.mplane.probes.ping\n")
        runtime = Runtime(reactor, None, tls=material(test_pki(), "component"))  # type: ignore[arg-type]
        with self.assertRaises(ValueError) as ctx:
            component.build(runtime, cfg)
        self.assertIn("[probe:ping2]", str(ctx.exception))
        self.assertIn("[probe:ping]", str(ctx.exception))
