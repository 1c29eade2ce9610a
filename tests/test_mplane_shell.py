"""``ccnet-client`` driven like a user would: -c one-liners and commands on stdin."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ccnet.mplane.model import Statement, When
from ccnet.mplane.shell import ClientShell, format_table
from tests.support import REPO, free_port
from tests.test_mplane_component_support import Component, wait_until
from tests.test_mplane_support import Supervisor

USERS = "IT.ccnet.Clients.client: guest\nIT.ccnet.Clients.admin: admin\n"
CAPS = "ping: guest\n"


def run_shell(sup: Supervisor, args: list[str], stdin: str = "", name: str = "client",
              url: str | None = None) -> subprocess.CompletedProcess[str]:
    pki = sup.pki
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "ccnet.mplane.shell", "--url", url or f"https://localhost:{sup.port}",
            "--cert", str(pki.cert(name)), "--key", str(pki.key(name)), "--ca", str(pki.ca_cert), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=90, env=env)


class _FakeClient:
    url = "https://fake"

    def __init__(self) -> None:
        self.caps = [Statement("capability", label=label, when=When.parse("now ... future / 1s"),
                               parameters={"destination.ip4": "*", "source.ip4": "127.0.0.1"},
                               results=["delay.twoway.icmp.count"]) for label in ("ping-average-ip4", "ping-detail-ip4")]
        self.submitted: list[Statement] = []

    async def capabilities(self) -> list[Statement]:
        return self.caps

    async def capability(self, label: str) -> Statement:
        return next(c for c in self.caps if c.label == label)

    def specification(self, cap: Statement, when: str, params: dict[str, str]) -> Statement:
        return cap.derive("specification", when=When.parse(when), parameters=dict(params), token="t")

    async def submit(self, spec: Statement, cap: Any = None) -> Statement:
        self.submitted.append(spec)
        return spec.derive("receipt", token="t")


def _sync(fn: Any) -> Any:
    coro = fn()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the fake client never waits")


class CompletionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.client = _FakeClient()
        self.shell = ClientShell(self.client, _sync, stdout=io.StringIO())  # type: ignore[arg-type]

    def test_capability_labels_complete(self) -> None:
        self.assertEqual(self.shell.complete_showcap("ping-a", "showcap ping-a", 8, 14), ["ping-average-ip4"])
        self.assertEqual(self.shell.complete_runcap("", "runcap ", 7, 7), ["ping-average-ip4", "ping-detail-ip4"])

    def test_parameter_names_complete_after_the_label(self) -> None:
        line = "runcap ping-average-ip4 dest"
        self.assertEqual(self.shell.complete_runcap("dest", line, len(line) - 4, len(line)), ["destination.ip4="])
        self.assertEqual(self.shell.complete_set("so", "set so", 4, 6), ["source.ip4"])

    def test_default_scope_is_one_period_of_the_capability(self) -> None:
        self.shell.onecmd("runcap ping-average-ip4 destination.ip4=127.0.0.1")
        self.assertEqual(str(self.client.submitted[0].when), "now + 1s / 1s")

    def test_empty_answer_for_when_is_one_period_and_is_not_kept(self) -> None:
        shell = ClientShell(self.client, _sync, stdin=io.StringIO("\n127.0.0.1\n"),  # type: ignore[arg-type]
                            stdout=io.StringIO())
        self.assertFalse(shell.onecmd("runcap 1"))
        self.assertFalse(shell.failed)
        self.assertEqual(str(self.client.submitted[0].when), "now + 1s / 1s")
        self.assertEqual(self.client.submitted[0].label, "ping-average-ip4")
        self.assertIsNone(shell.default_when)

    def test_parameter_names_complete_after_a_capability_number(self) -> None:
        line = "runcap 2 dest"
        self.assertEqual(self.shell.complete_runcap("dest", line, len(line) - 4, len(line)), ["destination.ip4="])

    def test_connect_completes_the_configured_url(self) -> None:
        self.assertEqual(self.shell.complete_connect("https://f", "connect https://f", 8, 17), ["https://fake"])


class FormatTests(unittest.TestCase):
    def test_table_columns_line_up(self) -> None:
        text = format_table(["label", "n"], [["ping-average-ip4", 2], ["x", 10]])
        lines = text.splitlines()
        self.assertEqual(lines[0], "label             n")
        self.assertEqual(lines[2], "ping-average-ip4  2")
        self.assertEqual(lines[3], "x                 10")


class _WithComponent(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        folder = Path(self.mktemp()).resolve()
        self.sup = Supervisor(folder / "sup", users=USERS, caps=CAPS, long_poll=10.0)
        yield self.sup.start()
        self.addCleanup(self.sup.stop)
        comp = Component(folder / "comp", f"https://localhost:{self.sup.port}", extra="retry-min = 0.1\n")
        yield comp.start()
        self.addCleanup(comp.stop)
        yield wait_until(lambda: len(self.sup.state.capabilities) == 2, "registration")

    def shell(self, args: list[str], stdin: str = "", name: str = "client",
              url: str | None = None) -> defer.Deferred[Any]:
        return deferToThread(run_shell, self.sup, args, stdin, name, url)


class ShellTests(_WithComponent):

    @defer.inlineCallbacks
    def test_one_liner_runs_a_capability_and_prints_the_result_as_json(self) -> Any:
        out = yield self.shell(["-c", 'runcap ping-average-ip4 destination.ip4=127.0.0.1 when="now + 2s / 1s"',
                                "--wait", "--json"])
        self.assertEqual(out.returncode, 0, out.stderr)
        result = json.loads(out.stdout)
        self.assertEqual(result["result"], "measure")
        self.assertEqual(result["label"], "ping-average-ip4")
        self.assertEqual(result["resultvalues"][0][3], "2")

    @defer.inlineCallbacks
    def test_the_same_one_liner_twice_gets_a_fresh_measurement_each_time(self) -> Any:
        args = ["-c", 'runcap ping-average-ip4 destination.ip4=127.0.0.1 when="now + 1s / 1s"', "--wait", "--json"]
        first = yield self.shell(args)
        second = yield self.shell(args)
        self.assertEqual((first.returncode, second.returncode), (0, 0), first.stderr + second.stderr)
        one, two = json.loads(first.stdout), json.loads(second.stdout)
        self.assertNotEqual(one["token"], two["token"])
        self.assertNotEqual(one["when"], two["when"])  # measured again, not the first result replayed
        self.assertEqual(len(self.sup.state.measurements), 2)

    @defer.inlineCallbacks
    def test_commands_on_stdin_list_set_run_and_show_measurements(self) -> Any:
        script = "\n".join([
            "listcap",
            "showcap ping-detail-ip4",
            "set destination.ip4 127.0.0.1",
            "when now + 2s / 1s",
            "show",
            "runcap ping-detail-ip4",
            "listmeas",
            "showmeas ping-detail-ip4",
            "quit",
            "listcap",
        ]) + "\n"
        out = yield self.shell(["--wait"], script)
        self.assertEqual(out.returncode, 0, out.stderr)
        text = out.stdout
        self.assertIn("ping-average-ip4  measure  now ... future / 1s", text)
        self.assertIn("destination.ip4  127.0.0.1 ... 127.0.0.255", text)
        self.assertIn("destination.ip4  127.0.0.1", text)
        self.assertIn("when             now + 2s / 1s", text)
        self.assertIn("result ping-detail-ip4", text)
        self.assertIn("time", text)
        self.assertIn("delay.twoway.icmp.us", text)
        self.assertIn("done", text)
        # quit stops reading: the second listcap never ran.
        self.assertEqual(text.count("ping-average-ip4  measure"), 1)

    @defer.inlineCallbacks
    def test_missing_parameter_in_one_liner_is_an_error_naming_it(self) -> Any:
        out = yield self.shell(["-c", "runcap ping-average-ip4"])
        self.assertEqual(out.returncode, 1)
        self.assertIn("destination.ip4", out.stderr)

    @defer.inlineCallbacks
    def test_value_outside_the_constraint_is_refused_before_sending(self) -> Any:
        out = yield self.shell(["-c", "runcap ping-average-ip4 destination.ip4=10.0.0.1"])
        self.assertEqual(out.returncode, 1)
        self.assertIn("violates constraint", out.stderr)
        self.assertEqual(self.sup.state.counters["specifications"], 0)

    @defer.inlineCallbacks
    def test_admin_sees_the_supervisor_console_with_who_submitted_what(self) -> Any:
        out = yield self.shell(["-c", "runcap ping-average-ip4 destination.ip4=127.0.0.1 when='now + 1s / 1s'",
                                "--wait"])
        self.assertEqual(out.returncode, 0, out.stderr)
        out = yield self.shell(["-c", "components; capabilities; pending; finished"], name="admin")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("IT.ccnet.Components.component", out.stdout)
        self.assertIn("ping-detail-ip4", out.stdout)
        self.assertIn("IT.ccnet.Clients.client", out.stdout)
        self.assertIn("done", out.stdout)

    @defer.inlineCallbacks
    def test_unknown_command_fails_but_the_shell_goes_on(self) -> Any:
        out = yield self.shell([], "frobnicate\nwhen now + 2s\nwhen\n")
        self.assertEqual(out.returncode, 1)
        self.assertIn("unknown command 'frobnicate'", out.stderr)
        self.assertIn("now + 2s", out.stdout)


def numbered(text: str) -> dict[str, str]:
    """``label -> number`` from the first numbered table (listcap's, listmeas') in ``text``."""
    rows: dict[str, str] = {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"#\s+label\b", line))
    for row in lines[start + 2:]:
        m = re.match(r"(\d+)\s+(\S+)", row)
        if not m:
            break
        rows.setdefault(m.group(2), m.group(1))
    return rows


class RIFormTests(_WithComponent):
    """The RI client's forms: connect [URL], numbers from listcap/listmeas, runcap N asking."""

    @defer.inlineCallbacks
    def test_numbers_name_what_listcap_listed_and_showcap_alone_shows_all(self) -> Any:
        out = yield self.shell([], "listcap\nshowcap 1\nshowcap 2\nshowcap\nshowcap 9\n")
        self.assertEqual(out.returncode, 1)  # showcap 9
        listed = numbered(out.stdout)
        self.assertEqual(sorted(listed.values()), ["1", "2"])  # numbered from 1, as the RI client does
        by_number = {n: label for label, n in listed.items()}
        shown = re.findall(r"^capability (\S+) \(measure\)", out.stdout, re.M)
        # showcap 1, showcap 2, then showcap without an argument: every capability, in listcap's order.
        self.assertEqual(shown, [by_number["1"], by_number["2"], by_number["1"], by_number["2"]])
        self.assertIn("cap    1 ---", out.stdout)
        self.assertIn("cap    2 ---", out.stdout)
        self.assertIn("no capability 9 (listcap numbers them 1 to 2)", out.stderr)

    @defer.inlineCallbacks
    def test_runcap_by_number_asks_for_when_and_parameters_over_a_pipe(self) -> Any:
        out = yield self.shell(["-c", "listcap"])
        listed = numbered(out.stdout)
        average, detail = listed["ping-average-ip4"], listed["ping-detail-ip4"]
        script = "\n".join([
            f"runcap {average}",
            "now + 1s / 1s",                 # |when| =
            "127.0.0.1",                     # |param| destination.ip4 =
            "set destination.ip4 127.0.0.1",
            f"runcap {detail}",              # the answered scope fits: not asked again
            "listmeas",
            "showmeas 0",
            "showmeas",
        ]) + "\n"
        out = yield self.shell(["--wait"], script)
        self.assertEqual(out.returncode, 0, out.stderr)
        text = out.stdout
        self.assertEqual(text.count("|when| = now + 1s / 1s"), 1)
        self.assertIn("|param| destination.ip4 = 127.0.0.1", text)  # asked, the answer shown
        self.assertIn("|param| source.ip4 = 127.0.0.1", text)       # single value, shown as the RI does
        self.assertEqual(text.count("|param| destination.ip4"), 2)  # the second time from `set`
        self.assertIn("result ping-average-ip4 token", text)
        self.assertIn("result ping-detail-ip4 token", text)
        # listmeas numbers from 0 (the RI's way), finished ones first; showmeas 0 is listmeas' row 0.
        table = text[text.index("#  label"):]
        rows = re.findall(r"^(\d+)\s+(\S+)\s+(\S+)\s+done\b", table, re.M)
        self.assertEqual([r[0] for r in rows], ["0", "1"])
        self.assertEqual({r[1] for r in rows}, {"ping-average-ip4", "ping-detail-ip4"})
        after = text[text.index("#  label"):]
        self.assertIn(f"result {rows[0][1]} token {rows[0][2]}", after.split("meas    0")[0])
        # showmeas alone: every measurement, each under its number.
        every = after[after.index("meas    0"):]
        self.assertIn(f"result {rows[0][1]} token {rows[0][2]}", every.split("meas    1")[0])
        self.assertIn(f"result {rows[1][1]} token {rows[1][2]}", every.split("meas    1")[1])
        self.assertEqual(self.sup.state.counters["specifications"], 2)

    @defer.inlineCallbacks
    def test_one_liner_runcap_by_number_reads_its_answers_from_stdin(self) -> Any:
        out = yield self.shell(["-c", "listcap"])
        average = numbered(out.stdout)["ping-average-ip4"]
        out = yield self.shell(["-c", f"runcap {average}", "--wait", "--json"], "now + 1s / 1s\n127.0.0.1\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        result = json.loads(out.stdout)  # the prompts went to stderr: stdout is the result alone
        self.assertEqual(result["label"], "ping-average-ip4")
        self.assertEqual(result["parameters"]["destination.ip4"], "127.0.0.1")
        self.assertIn("|when| = ", out.stderr)

    @defer.inlineCallbacks
    def test_end_of_input_at_a_prompt_is_an_error_and_nothing_is_sent(self) -> Any:
        out = yield self.shell(["-c", "runcap 1"], "")
        self.assertEqual(out.returncode, 1)
        self.assertIn("no answer for when: end of input", out.stderr)
        out = yield self.shell(["-c", "runcap 1"], "now + 1s / 1s\n")
        self.assertEqual(out.returncode, 1)
        self.assertIn("no answer for destination.ip4: end of input", out.stderr)
        self.assertEqual(self.sup.state.counters["specifications"], 0)

    @defer.inlineCallbacks
    def test_a_wrong_answer_on_a_pipe_is_an_error_and_the_next_command_still_runs(self) -> Any:
        out = yield self.shell([], "runcap 1\nnow + 1s\nlistcap\n")
        self.assertEqual(out.returncode, 1)
        self.assertIn("when 'now + 1s': the capability needs a period of at least 1s", out.stderr)
        self.assertIn("ping-average-ip4  measure", out.stdout)  # listcap was a command, not an answer
        self.assertEqual(self.sup.state.counters["specifications"], 0)

    @defer.inlineCallbacks
    def test_connect_switches_supervisor_and_lists_its_capabilities(self) -> Any:
        nowhere = f"https://localhost:{free_port()}"
        out = yield self.shell([], f"listcap\nconnect http://localhost:{self.sup.port}\nshowcap 1\n",
                               url=nowhere)
        self.assertEqual(out.returncode, 1)  # the first listcap: nobody at the configured URL
        self.assertIn(f"cannot reach {nowhere}", out.stderr)
        # http:// is taken as https:// with the same TLS files, as the RI client does.
        self.assertIn(f"connected to https://localhost:{self.sup.port}", out.stdout)
        listed = numbered(out.stdout)
        self.assertEqual(set(listed), {"ping-average-ip4", "ping-detail-ip4"})
        self.assertIn("capability " + next(k for k, v in listed.items() if v == "1"), out.stdout)

    @defer.inlineCallbacks
    def test_connect_without_url_goes_back_to_the_configured_supervisor(self) -> Any:
        nowhere = f"https://localhost:{free_port()}"
        out = yield self.shell([], f"connect {nowhere}\nlistcap\nconnect\n")
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stderr.count(f"cannot reach {nowhere}"), 2)  # connect, then listcap there
        self.assertIn(f"connected to https://localhost:{self.sup.port}", out.stdout)
        self.assertEqual(set(numbered(out.stdout)), {"ping-average-ip4", "ping-detail-ip4"})


def run_in_terminal(sup: Supervisor, keys: list[bytes | tuple[bytes, bytes]], home: Path) -> tuple[str, int]:
    """The shell on a pseudo-terminal (interactive mode, readline); type ``keys`` one line at a time,
    each after the shell's prompt (or after the given ``(prompt, key)`` prompt)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    pki = sup.pki
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(home), TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-m", "ccnet.mplane.shell", "--url", f"https://localhost:{sup.port}",
                             "--cert", str(pki.cert("client")), "--key", str(pki.key("client")),
                             "--ca", str(pki.ca_cert)], stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    out = b""

    def read_until(marker: bytes, seconds: float = 30) -> None:
        nonlocal out
        deadline = time.monotonic() + seconds
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    return
    try:
        for item in keys:
            prompt, key = item if isinstance(item, tuple) else (b"|mplane| ", item)
            read_until(prompt)
            out = out.replace(prompt, b"|" + b"answered" + prompt[1:], 1)
            os.write(master, key)
        read_until(b"\x00", 5)  # drain until it exits
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return out.decode("utf-8", "replace"), code


class TerminalTests(_WithComponent):
    """Interactive mode: readline completion of labels, history kept across sessions."""

    @defer.inlineCallbacks
    def test_tab_completes_labels_and_history_is_saved(self) -> Any:
        home = Path(self.mktemp()).resolve()
        home.mkdir()
        out, code = yield deferToThread(run_in_terminal, self.sup, [b"showcap ping-av\t\r", b"quit\r"], home)
        self.assertEqual(code, 0, out)
        self.assertIn("capability ping-average-ip4 (measure)", out)
        history = (home / ".ccnet_client_history").read_text()
        self.assertIn("showcap ping-average-ip4", history)

    @defer.inlineCallbacks
    def test_runcap_by_number_asks_on_the_terminal_until_the_scope_fits(self) -> Any:
        home = Path(self.mktemp()).resolve()
        home.mkdir()
        keys: list[bytes | tuple[bytes, bytes]] = [
            b"listcap\r", b"runcap 1\r",
            (b"|when| = ", b"now + 1s\r"),           # no period: said why, asked again
            (b"|when| = ", b"now + 1s / 1s\r"),
            (b"|param| destination.ip4", b"127.0.0.1\r"),
            b"quit\r"]
        out, code = yield deferToThread(run_in_terminal, self.sup, keys, home)
        self.assertEqual(code, 0, out)
        self.assertIn("the capability needs a period of at least 1s", out)
        self.assertIn("|param| source.ip4 = 127.0.0.1", out)
        self.assertRegex(out, r"(receipt|result) ping-\S+ token [0-9a-f]+ when")
