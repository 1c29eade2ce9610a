"""CC prefix routing, role checks and [cc] config parsing."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from twisted.trial.unittest import TestCase

from ccnet.cc.config import parse
from ccnet.cc.handler import CCHandler
from ccnet.cc.handlers import HandlerLookupError, resolve_handler
from ccnet.cc.handlers.echo import EchoHandler
from ccnet.cc.handlers.proxy import ProxyHandler
from ccnet.cc.metrics import CCMetrics
from ccnet.cc.routing import RouteError, RouteTable, role_error
from ccnet.cc.stats import CCStats
from ccnet.config import ConfigError, IniFile


class RemoteOnly(CCHandler):
    """A handler the role table allows on remote servers only."""

    handler_name = "remoteonly"
    cc_roles = frozenset({"remote"})


class RouteTableTests(TestCase):
    def table(self) -> RouteTable:
        return RouteTable.build(
            [
                ("pub.infofile", ["infowriter", "extra"]),
                ("pub", ["proxy"]),
                ("*", ["logger"]),
                ("pub.info", ["wrong"]),
                ("log", ["locallogger"]),
            ]
        )

    def test_all_prefixes_fire_in_star_short_long_order(self) -> None:
        self.assertEqual(
            list(self.table().lookup("pub.infofile")), ["logger", "proxy", "infowriter", "extra"]
        )

    def test_longer_type_still_hits_shorter_patterns(self) -> None:
        self.assertEqual(
            list(self.table().lookup("pub.infofile.dmesg")), ["logger", "proxy", "infowriter", "extra"]
        )

    def test_components_match_whole_words_only(self) -> None:
        self.assertNotIn("wrong", list(self.table().lookup("pub.infofile")))
        self.assertEqual(list(self.table().lookup("pub.info")), ["logger", "proxy", "wrong"])
        self.assertEqual(list(self.table().lookup("publish")), ["logger"])

    def test_no_star_no_match_is_empty(self) -> None:
        t = RouteTable.build([("echo", ["e"])])
        self.assertEqual(list(t.lookup("db.confdb")), [])
        self.assertEqual(list(t.lookup("echo.request")), ["e"])

    def test_config_order_within_one_pattern(self) -> None:
        t = RouteTable.build([("log", ["b", "a"]), ("log", ["c"])])
        self.assertEqual(list(t.lookup("log.info")), ["b", "a", "c"])

    def test_bad_pattern_is_rejected(self) -> None:
        for p in ["pub.*", "pub..x", "", "a b"]:
            self.assertRaises(RouteError, RouteTable.build, [(p, ["x"])])

    def test_role_table(self) -> None:
        self.assertIsNone(role_error("local", "s", "proxy", {"local", "remote"}))
        self.assertIsNone(role_error(None, "s", "infowriter", {"remote"}))
        msg = role_error("local", "writer", "infowriter", {"remote"})
        assert msg is not None
        self.assertIn("not allowed with cc-role = local", msg)
        self.assertIn("[writer]", msg)


class HandlerRegistryTests(TestCase):
    def test_short_original_and_dotted_names_resolve(self) -> None:
        self.assertIs(resolve_handler("echo"), EchoHandler)
        self.assertIs(resolve_handler("cc.handler.proxy"), ProxyHandler)
        self.assertIs(resolve_handler(f"{__name__}:RemoteOnly"), RemoteOnly)

    def test_unknown_handler_is_a_lookup_error(self) -> None:
        self.assertRaises(HandlerLookupError, resolve_handler, "nosuchhandler")
        self.assertRaises(HandlerLookupError, resolve_handler, "bad name!")
        self.assertRaises(HandlerLookupError, resolve_handler, "ccnet.cc.message:CCMessage")


BASE = """
[ccserver]
cc-socket = tcp://127.0.0.1:*
cc-role = {role}
logfile = ~/log/%(job_name)s.log
pidfile = ~/pid/%(job_name)s.pid
zmq_hwm = 50
zmq_rcvbuf = 64 KB
stats-period = 10

[routes]
echo = echo
pub = fwd

[echo]
handler = echo

[fwd]
plugin = proxy
remote-cc = tcp://10.0.0.1:10000
ping = yes
"""


class ConfigTests(TestCase):
    def parse(self, text: str):  # type: ignore[no-untyped-def]
        ini = IniFile.from_string(text)
        cfg = parse(ini)
        for name in ini.claimed():
            ini.section(name).finish()
        return cfg, ini

    def test_original_ccserver_ini_ports_over(self) -> None:
        cfg, ini = self.parse(BASE.format(role="local"))
        self.assertEqual(cfg.section, "ccserver")
        self.assertEqual(cfg.socket, "tcp://127.0.0.1:*")
        self.assertEqual(cfg.zmq.hwm, 50)
        self.assertEqual(cfg.zmq.rcvbuf, 64 * 1024)
        self.assertEqual(cfg.stats_period, 10.0)
        self.assertEqual([h.section for h in cfg.handlers], ["echo", "fwd"])
        fwd = cfg.handler("fwd")
        self.assertIs(fwd.factory, ProxyHandler)
        self.assertEqual(fwd.options.remote_cc, "tcp://10.0.0.1:10000")
        self.assertTrue(fwd.options.ping)
        self.assertEqual(fwd.options.zmq.hwm, 50)  # inherited from the server
        self.assertEqual(set(ini.claimed()), {"ccserver", "routes", "echo", "fwd"})
        self.assertIn("logfile", cfg.ignored)

    def test_zmq_endpoints(self) -> None:
        from ccnet.cc.config import valid_zmq_endpoint

        for good in ["tcp://127.0.0.1:10000", "tcp://*:10000", "tcp://[::1]:10000",
                     "tcp://cc-central.example:10000", "tcp://127.0.0.1:*", "ipc:///tmp/cc.sock"]:
            self.assertTrue(valid_zmq_endpoint(good), good)
        for bad in ["127.0.0.1:10000", "tcp://host", "tcp://host:port", "udp://h:1", "tcp://a b:1"]:
            self.assertFalse(valid_zmq_endpoint(bad), bad)

    def test_original_style_proxy_ini_with_h_sections_and_module_paths(self) -> None:
        text = (
            "[ccserver]\nlogfile = ~/log/%(job_name)s.log\npidfile = ~/pid/%(job_name)s.pid\n"
            "cc-socket = tcp://0.0.0.0:10001\ncc-role = remote\ncc-stats = 2\ncms-keystore = ./keys\n"
            "[routes]\npub.infofile = h:info\nlog = h:logs\ntask = h:tasks\n"
            "[h:info]\nhandler = cc.handler.proxy\nremote-cc = tcp://127.0.0.1:10002\n"
            "[h:logs]\nhandler = cc.handler.proxy\nremote-cc = tcp://127.0.0.1:10003\nzmq_hwm = 5\n"
            "[h:tasks]\nhandler = cc.handler.proxy\nremote-cc = tcp://127.0.0.1:10004\n"
        )
        cfg, ini = self.parse(text)
        self.assertEqual(cfg.cc_stats, 2)
        self.assertFalse(cfg.cms.enabled)
        self.assertEqual(list(cfg.routes.lookup("pub.infofile.x")), ["h:info"])
        self.assertEqual(cfg.handler("h:logs").options.zmq.hwm, 5)
        self.assertEqual(cfg.handler("h:tasks").options.zmq.hwm, 100)
        self.assertTrue(str(cfg.pidfile).endswith("pid/%(job_name)s.pid"))

    def test_absent_section_means_disabled(self) -> None:
        self.assertIsNone(parse(IniFile.from_string("[other]\nx = 1\n")))

    def test_defaults(self) -> None:
        cfg, _ = self.parse("[cc]\n")
        self.assertEqual(cfg.socket, "tcp://127.0.0.1:10000")
        self.assertIsNone(cfg.role)
        self.assertTrue(cfg.error_replies)
        self.assertEqual(cfg.zmq.hwm, 100)
        self.assertEqual(cfg.stats_period, 30.0)

    def test_role_mismatch_stops_start_up_with_clear_message(self) -> None:
        text = f"[cc]\ncc-role = local\n[routes]\npub = w\n[w]\nhandler = {__name__}:RemoteOnly\n"
        e = self.assertRaises(ConfigError, self.parse, text)
        self.assertIn("not allowed with cc-role = local", str(e))
        self.assertIn("[w]", str(e))
        # remote role (and unset = insecure) accept it
        self.parse(text.replace("local", "remote"))
        self.parse(text.replace("cc-role = local\n", ""))

    def test_mistakes_name_section_and_key(self) -> None:
        cases = [
            ("[cc]\ncc-socket = 10000\n", "cc-socket"),
            ("[cc]\ncc-role = central\n", "cc-role"),
            ("[cc]\n[routes]\necho = missing\n", "no section [missing]"),
            ("[cc]\n[routes]\necho = e\n[e]\nhandler = nosuch\n", "a known handler"),
            ("[cc]\n[routes]\necho = e\n[e]\nhandler = echo\ntypo = 1\n", "typo"),
            ("[cc]\n[routes]\necho = p\n[p]\nhandler = proxy\n", "remote-cc"),
            ("[cc]\ncms-sign = me\n", "cms-keystore"),
            ("[cc]\n[ccserver]\n", "not both"),
        ]
        for text, expected in cases:
            e = self.assertRaises(ConfigError, self.parse, text)
            self.assertIn(expected, str(e), text)

    def test_cms_pairs_and_files_are_checked(self) -> None:
        ks = Path(self.mktemp())
        (ks / "private").mkdir(parents=True)
        for n in ("me.crt", "ca.crt", "private/me.key"):
            (ks / n).write_text("x")
        e = self.assertRaises(ConfigError, self.parse, f"[cc]\ncms-keystore = {ks}\ncms-encrypt = ca\n")
        self.assertIn("cms-sign as well", str(e))
        e = self.assertRaises(ConfigError, self.parse, f"[cc]\ncms-keystore = {ks}\ncms-decrypt = me\n")
        self.assertIn("cms-verify-ca as well", str(e))
        e = self.assertRaises(ConfigError, self.parse, f"[cc]\ncms-keystore = {ks}\ncms-sign = you\n")
        self.assertIn("you.crt", str(e))
        e = self.assertRaises(ConfigError, self.parse, f"[cc]\ncms-keystore = {ks}\ncms-sign = me\n")
        self.assertIn("cms-sign: a PEM certificate", str(e))
        from tests.test_cc_crypto import make_keystore

        real = make_keystore(Path(self.mktemp()).absolute())
        cfg, _ = self.parse(f"[cc]\ncms-keystore = {real}\ncms-sign = client\ncms-verify-ca = ca\n")
        self.assertEqual(cfg.cms.verify_ca, ("ca",))


class StatsTests(TestCase):
    def test_counters_per_type_and_prometheus_text(self) -> None:
        s = CCStats()
        s.count("ok", "echo.request", 10)
        s.count("dropped", "pub.x", 5)
        s.observe("echo.request", 0.002)
        snap = s.snapshot()["counters"]
        self.assertEqual(snap["count.ok.msg.echo.request"], 1)  # type: ignore[index]
        self.assertEqual(snap["bytes"], 15)  # type: ignore[index]
        text = generate_latest(CCMetrics(s)).decode()
        self.assertIn('ccnet_cc_messages_total{outcome="ok",type="echo.request"} 1', text)
        self.assertIn('ccnet_cc_latency_seconds_count{type="echo.request"} 1', text)
        self.assertEqual(s.take_period()["count"], 2)
        self.assertEqual(s.take_period(), {})
