"""Config loading: every mistake stops start-up with file, section, key and expectation."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from ccnet.config import ConfigError, IniFile, load_config, parse_config, parse_listen
from tests.support import test_pki, tls_section


class ListenSpecTests(unittest.TestCase):
    def test_ssl_endpoint_becomes_tcp_wrapped_in_ccnet_tls(self) -> None:
        spec = parse_listen("ssl:8443:interface=127.0.0.1")
        self.assertEqual(spec.endpoint, "tcp:8443:interface=127.0.0.1")
        self.assertTrue(spec.tls)
        self.assertEqual(spec.port, 8443)

    def test_tcp_endpoint_is_plain(self) -> None:
        self.assertFalse(parse_listen("tcp:9100").tls)

    def test_systemd_endpoint_is_tls_unless_told(self) -> None:
        self.assertEqual(parse_listen("systemd:domain=INET:index=0"),
                         parse_listen("systemd:domain=INET:index=0:tls=yes"))
        self.assertTrue(parse_listen("systemd:domain=INET:index=0").tls)
        self.assertFalse(parse_listen("systemd:domain=INET:index=0:tls=no").tls)

    def test_bad_endpoints_say_what_was_expected(self) -> None:
        for text, fragment in [
            ("ssl:http", "PORT"),
            ("ssl:99999", "PORT"),
            ("ssl:8443:privateKey=x.pem", "[tls]"),
            ("bogus:1", "ssl:"),
            ("systemd:index=0", "systemd:domain=INET"),
            ("", "endpoint"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parse_listen(text)
            self.assertIn(fragment, str(caught.exception), text)


class ConfigErrorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = test_pki()
        self.folder = Path(self.mktemp()).absolute()
        self.folder.mkdir()

    def write(self, text: str) -> Path:
        path = self.folder / "ccnet.ini"
        path.write_text(text)
        return path

    def assertConfigError(self, text: str, section: str | None, key: str | None, fragment: str) -> ConfigError:  # noqa: N802
        path = self.write(text)
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        err = caught.exception
        self.assertEqual(err.section, section, str(err))
        self.assertEqual(err.key, key, str(err))
        self.assertIn(fragment, str(err))
        self.assertIn(str(path), str(err))
        return err

    def test_missing_file(self) -> None:
        missing = self.folder / "nope.ini"
        with self.assertRaises(ConfigError) as caught:
            load_config(missing)
        self.assertIn("not found", str(caught.exception))
        self.assertIn(str(missing), str(caught.exception))

    def test_syntax_error(self) -> None:
        self.assertConfigError("this is not ini\n", None, None, "INI syntax")

    def test_unknown_section(self) -> None:
        self.assertConfigError(tls_section(self.pki) + "[rcp]\nlisten = ssl:0\n", "rcp", None, "unknown section")

    def test_unknown_key(self) -> None:
        self.assertConfigError(tls_section(self.pki) + "colour = blue\n", "tls", "colour", "unknown key")

    def test_nothing_enabled(self) -> None:
        self.assertConfigError(tls_section(self.pki), None, None, "at least one of")

    def test_unreadable_cert(self) -> None:
        text = tls_section(self.pki).replace(str(self.pki.cert("server")), str(self.folder / "missing.crt"))
        self.assertConfigError(text, "tls", "cert", "readable file")

    def test_cert_that_is_not_pem(self) -> None:
        junk = self.folder / "junk.crt"
        junk.write_text("hello")
        text = tls_section(self.pki).replace(str(self.pki.cert("server")), str(junk))
        self.assertConfigError(text, "tls", "cert", "PEM certificate")

    def test_key_not_matching_cert(self) -> None:
        text = tls_section(self.pki).replace(str(self.pki.key("server")), str(self.pki.key("client")))
        self.assertConfigError(text, "tls", "key", "matching the certificate")

    def test_bad_boolean_names_key(self) -> None:
        self.assertConfigError(tls_section(self.pki) + "allow-proxies = maybe\n", "tls", "allow-proxies", "yes or no")

    def test_allow_proxies_per_listener_wins_over_tls(self) -> None:
        base = tls_section(self.pki) + "[rpc]\nlisten = ssl:0\n{rpc}[supervisor]\nlisten = ssl:0\n"
        cfg = load_config(self.write(base.format(rpc="allow-proxies = yes\n")))
        self.assertTrue(cfg.listener_tls["rpc"].allow_proxies)
        self.assertFalse(cfg.listener_tls["supervisor"].allow_proxies)
        inherited = base.replace("[rpc]", "allow-proxies = yes\n[rpc]").format(rpc="allow-proxies = no\n")
        cfg = load_config(self.write(inherited))
        self.assertFalse(cfg.listener_tls["rpc"].allow_proxies)
        self.assertTrue(cfg.listener_tls["supervisor"].allow_proxies)
        self.assertConfigError(base.format(rpc="allow-proxies = perhaps\n"), "rpc", "allow-proxies", "yes or no")

    def test_bad_store_url(self) -> None:
        self.assertConfigError("[store]\nurl = mysql://x\n", "store", "url", "postgresql://")

    def test_bad_metrics_endpoint(self) -> None:
        self.assertConfigError("[metrics]\nlisten = ssl:abc\n", "metrics", "listen", "PORT")

    def test_metrics_listener_is_plain_http(self) -> None:
        self.assertConfigError("[metrics]\nlisten = ssl:9100\n", "metrics", "listen", "plain tcp:")

    def test_relative_paths_resolve_against_the_config_folder(self) -> None:
        ini = IniFile.from_string("[ccnet]\nstate-dir = var\nusers = users.conf\n", self.folder / "x.ini")
        (self.folder / "users.conf").write_text("")
        sect = ini.section("ccnet")
        self.assertEqual(sect.get_path("state-dir"), self.folder / "var")

    def test_config_from_environment_variable(self) -> None:
        path = self.write("[metrics]\nlisten = tcp:0\n")
        old = os.environ.get("CCNET_CONFIG")
        os.environ["CCNET_CONFIG"] = str(path)
        self.addCleanup(lambda: os.environ.pop("CCNET_CONFIG") if old is None else os.environ.__setitem__("CCNET_CONFIG", old))
        with self.assertRaises(ConfigError) as caught:
            load_config()
        self.assertIn(str(path), str(caught.exception))

    def test_typed_getters(self) -> None:
        ini = IniFile.from_string(
            "[x]\nsize = 64 KB\nn = 3\nf = 0.5\nflag = on\nitems = a, b,,c\nmode = fast\n"
        )
        sect = ini.section("x")
        self.assertEqual(sect.get_size("size"), 65536)
        self.assertEqual(sect.get_int("n"), 3)
        self.assertEqual(sect.get_float("f"), 0.5)
        self.assertTrue(sect.get_bool("flag"))
        self.assertEqual(sect.get_list("items"), ["a", "b", "c"])
        self.assertEqual(sect.get_choice("mode", ["fast", "slow"]), "fast")
        self.assertEqual(sect.get_int("absent", 7), 7)
        sect.finish()
        with self.assertRaises(ConfigError) as caught:
            sect.get_int("missing")
        self.assertIn("missing required key", str(caught.exception))

    def test_parse_config_knows_core_sections(self) -> None:
        ini = IniFile.from_string(
            tls_section(self.pki) + "[metrics]\nlisten = tcp:0:interface=127.0.0.1\n", self.folder / "c.ini"
        )
        with self.assertRaises(ConfigError):
            parse_config(ini)  # metrics alone enables no protocol service
