"""``[rpc]`` and ``[rpc:System/Component]`` parsing: defaults and operator-facing errors."""

from __future__ import annotations

from twisted.trial import unittest

from ccnet.config import ConfigError, IniFile
from ccnet.rpc.config import parse
from ccnet.rpc.examples.notebook import NotebookService

NOTEBOOK = "[rpc:Framework/Notebook]\nclass = ccnet.rpc.examples.notebook:NotebookService\n"


def parse_text(text: str):  # type: ignore[no-untyped-def]
    return parse(IniFile.from_string(text))


class RPCConfigTests(unittest.TestCase):
    def test_absent_section_disables_rpc(self) -> None:
        self.assertIsNone(parse_text("[other]\n"))

    def test_defaults(self) -> None:
        cfg = parse_text("[rpc]\n")
        self.assertEqual(cfg.listen, "ssl:8443")
        self.assertEqual(cfg.max_body, 10 * 1024 * 1024)
        self.assertEqual(cfg.threads, 10)
        self.assertIsNone(cfg.allow_proxies)
        self.assertFalse(cfg.trust_ssl_headers)
        self.assertEqual(cfg.services, ())

    def test_service_section_with_rules_and_free_options(self) -> None:
        cfg = parse_text(
            "[rpc]\nmax-body = 2 MB\nurl = https://rpc.example.org:8443/\n"
            + NOTEBOOK
            + "auth.set = CSAdministrator, group:admins\nauth.Default = all\nMaxValueSize = 100\n"
        )
        svc = cfg.services[0]
        self.assertEqual(cfg.max_body, 2 * 1024 * 1024)
        self.assertEqual(cfg.url, "https://rpc.example.org:8443")
        self.assertEqual(svc.name, "Framework/Notebook")
        self.assertIs(svc.service_class, NotebookService)
        self.assertEqual(svc.authorization["set"], ("CSAdministrator", "group:admins"))
        self.assertEqual(svc.authorization["default"], ("all",))
        self.assertEqual(dict(svc.options), {"maxvaluesize": "100"})

    def assertConfigError(self, text: str, *fragments: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_text(text)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_errors_name_section_and_key(self) -> None:
        self.assertConfigError("[rpc]\nthreads = 0\n", "[rpc]", "threads")
        self.assertConfigError("[rpc]\nlisten = nowhere\n", "[rpc]", "listen")
        self.assertConfigError("[rpc]\nmax-body = lots\n", "max-body")
        self.assertConfigError("[rpc]\nbogus = 1\n", "bogus", "unknown key")
        self.assertConfigError("[rpc]\nurl = http://x\n", "url", "https://")

    def test_service_errors(self) -> None:
        self.assertConfigError(NOTEBOOK, "[rpc:Framework/Notebook]", "[rpc]")
        self.assertConfigError("[rpc]\n[rpc:Framework]\nclass = a:B\n", "[rpc:Framework]", "System/Component")
        self.assertConfigError("[rpc]\n[rpc:A/B]\n", "[rpc:A/B]", "class")
        self.assertConfigError("[rpc]\n[rpc:A/B]\nclass = no.such.module:X\n", "class", "importable")
        self.assertConfigError("[rpc]\n[rpc:A/B]\nclass = ccnet.config:IniFile\n", "class", "RPCService")
        self.assertConfigError("[rpc]\n[rpc:A/B]\nclass = not a path\n", "class", "package.module:ClassName")
        self.assertConfigError("[rpc]\n" + NOTEBOOK + "auth.sett = all\n", "auth.sett", "exports")


class PathOptionTests(unittest.TestCase):
    def test_relative_paths_are_taken_from_the_config_folder(self) -> None:
        from twisted.internet import reactor
        from twisted.python.threadpool import ThreadPool

        from ccnet.rpc.examples.files import FilesService
        from ccnet.rpc.service import MountedService

        mounted = MountedService(
            "Framework/Files", FilesService, reactor=reactor, pool=ThreadPool(),
            options={"root": "files", "other": "/abs"}, config_dir="/etc/ccnet",
        )
        self.assertEqual(str(mounted.cls.srv_getCSPath("root")), "/etc/ccnet/files")
        self.assertEqual(str(mounted.cls.srv_getCSPath("other")), "/abs")
        self.assertIsNone(mounted.cls.srv_getCSPath("missing"))
        # The class given in the config is untouched: state lives on the per-mount subclass.
        self.assertIsNot(mounted.cls, FilesService)
        self.assertEqual(FilesService.serviceInfo, {})
