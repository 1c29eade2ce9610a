"""The RI harness itself (tests/ri_support.py), without the RI: the files it writes read
the way the RI's parsers read them, and the shell driver answers prompts like a user."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.ri_support import RIClientShell, ri_certs, ri_conf_dir, ri_tstat_caps
from tests.support import test_pki
from tests.test_mplane_support import dotted

# A cmd shell with the RI client's prompt and fill_spec's questions (sys.stdout.write, then
# input()), started as "python -u -m mplane.client ..." by RIClientShell: the fake "python"
# ignores its arguments.
FAKE_SHELL = '''#!{python}
import cmd, sys
class Shell(cmd.Cmd):
    intro = "Welcome to the fake shell.\\n"
    prompt = "|mplane| "
    def do_runcap(self, arg):
        sys.stdout.write("|when| = ")
        when = input()
        print("|param| source.ip4 = 127.0.0.1")
        sys.stdout.write("|param| destination.ip4 = ")
        dest = input()
        print("ran %s when=%s dest=%s" % (arg, when, dest))
    def do_crash(self, arg):
        raise KeyError("envelope")
    def do_EOF(self, arg):
        print("Ciao!")
        return True
Shell().cmdloop()
'''


def read_setting(path: Path, param: str) -> str | None:
    """mplane.utils.read_setting, as the RI reads *-certs.conf."""
    for line in path.read_text().splitlines(keepends=True):
        if line[0] != "#":
            line = line.rstrip("\n")
            if line.split("= ")[0] == param:
                return line.split("= ")[1]
    return None


def load_roles(path: Path) -> dict[str, set[str]]:
    """mplane.sec.Authorization.load_roles."""
    roles = {}
    for line in path.read_text().splitlines(keepends=True):
        line = line.rstrip("\n")
        if line[0] != "#":
            roles[line.split(": ")[0]] = set(line.split(": ")[1].split(", "))
    return roles


def probe_dn(cert_file: Path) -> str:
    """mplane.sec.Authorization.get_probe_dn: the component's identity from its cert file."""
    dn = ""
    for line in cert_file.read_text().splitlines():
        line = line.rstrip().replace(" ", "")
        if line.startswith("Subject:"):
            for field in line[8:].split(","):
                dn = field.split("=")[1] if dn == "" else dn + "." + field.split("=")[1]
    return dn


class FilesTests(unittest.TestCase):
    def test_certs_conf_reads_back_as_the_ri_reads_it(self) -> None:
        pki = test_pki()
        path = ri_certs(Path(self.mktemp()), pki, "component")
        self.assertEqual(read_setting(path, "cert"), str(pki.cert("component")))
        self.assertEqual(read_setting(path, "key"), str(pki.key("component")))
        self.assertEqual(read_setting(path, "ca-chain"), str(pki.ca_cert))

    def test_users_and_caps_read_back_as_the_ri_reads_them(self) -> None:
        pki = test_pki()
        folder = ri_conf_dir(Path(self.mktemp()), {dotted(pki, "client"): ["guest", "admin"]},
                             ri_tstat_caps(pki))
        self.assertEqual(load_roles(folder / "users.conf"), {"IT.ccnet.Clients.client": {"guest", "admin"}})
        caps = load_roles(folder / "caps.conf")
        self.assertEqual(caps["tstat-log_tcp_complete-core, IT.ccnet.Components.component"], {"guest"})
        self.assertEqual(len(caps), 5)

    def test_suite_identities_meet_the_ri_role_rules(self) -> None:
        pki = test_pki()
        self.assertIn("Components", dotted(pki, "component"))
        self.assertIn("Clients", dotted(pki, "client"))
        self.assertIn("Clients", dotted(pki, "admin"))
        # The component names itself from the text dump in its certificate file.
        self.assertEqual(probe_dn(pki.cert("component")), dotted(pki, "component"))


class ShellDriverTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.folder = Path(self.mktemp()).resolve()
        self.folder.mkdir(parents=True)
        fake = self.folder / "python"
        fake.write_text(textwrap.dedent(FAKE_SHELL).replace("{python}", sys.executable))
        fake.chmod(0o755)
        self.fake = fake

    @defer.inlineCallbacks
    def shell(self) -> Any:
        sh = yield deferToThread(RIClientShell, self.fake, self.folder, test_pki(), 1)
        self.addCleanup(sh.close)
        return sh

    @defer.inlineCallbacks
    def test_answers_questions_and_returns_the_output_before_the_next_prompt(self) -> Any:
        sh = yield self.shell()
        self.assertEqual(sh.intro, "Welcome to the fake shell.\n\n")
        out = yield deferToThread(sh.command, "runcap 1", ["now + 1s", "127.0.0.2"])
        self.assertEqual(out, "|when| = |param| source.ip4 = 127.0.0.1\n|param| destination.ip4 = "
                              "ran 1 when=now + 1s dest=127.0.0.2\n")
        self.assertEqual(sh.close(), 0)
        self.assertTrue(sh.output.endswith("Ciao!\n"))

    @defer.inlineCallbacks
    def test_a_question_without_an_answer_is_an_error(self) -> Any:
        sh = yield self.shell()
        with self.assertRaises(RuntimeError) as caught:
            yield deferToThread(sh.command, "runcap 1", ["now + 1s"], 10)
        self.assertIn("no answer is left", str(caught.exception))

    @defer.inlineCallbacks
    def test_unused_answers_are_an_error(self) -> Any:
        sh = yield self.shell()
        with self.assertRaises(RuntimeError) as caught:
            yield deferToThread(sh.command, "help", ["now + 1s"], 10)
        self.assertIn("answers left over", str(caught.exception))

    @defer.inlineCallbacks
    def test_a_shell_that_dies_is_reported_with_its_output(self) -> Any:
        sh = yield self.shell()
        with self.assertRaises(RuntimeError) as caught:
            yield deferToThread(sh.command, "crash", (), 10)
        self.assertIn("RI client exited (1)", str(caught.exception))
        self.assertIn("KeyError: 'envelope'", str(caught.exception))
