"""``ccnet-client``: the mPlane client shell (the RI client's commands) over mutual TLS.

    ccnet-client --url https://sup:8888 --cert me.crt --key me.key --ca ca.crt
    ccnet-client --config client.ini -c 'runcap ping-average-ip4 destination.ip4=127.0.0.1 when="now + 5s / 1s"' --wait --json
    printf 'now + 1s / 1s\n127.0.0.1\n' | ccnet-client --config client.ini -c 'runcap 1' --wait

Commands: ``connect [URL]``, ``listcap``, ``showcap [N|LABEL]``, ``runcap N|LABEL``,
``listmeas``, ``showmeas [N|LABEL|TOKEN]``, ``redeem``, ``interrupt``,
``set``/``unset``/``show`` (parameter defaults), ``when``, ``help``, ``quit``; for holders
of the supervisor's admin role also ``components``, ``capabilities``, ``pending`` and
``finished`` (the RI supervisor console, served by the supervisor's ``/api/status``).

The RI client's forms work as they do there: ``listcap`` numbers capabilities from 1 and
``listmeas`` measurements from 0, and those numbers name them in ``showcap``/``runcap``/
``showmeas`` (an all-digits argument is a number, anything else a label or token);
``showcap``/``showmeas`` without an argument show everything; ``runcap N`` asks
``|when| = `` (unless the default scope fits the capability) and ``|param| NAME = `` for
every parameter without a value or a ``set`` default. Answers are read from the terminal
(readline) or, without one, from the shell's stdin, so a pipe can answer; end of input at
a prompt is an error. Interactive mode has readline history and completion of commands,
capability labels, parameter names (after a label or a number) and the ``connect`` URL.

The client library is Deferred-based; the shell runs the reactor in a background thread
and calls it with ``blockingCallFromThread`` (a thin synchronous skin, nothing else).
"""

from __future__ import annotations

import argparse
import cmd
import configparser
import json
import os
import shlex
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from twisted.internet.error import ConnectError

from ccnet.mplane.client import RI_PATHS, SDK_PATHS, SUPERVISOR_PATHS, MPlaneClient, MPlaneError
from ccnet.mplane.model import (
    Envelope,
    ExceptionMessage,
    Message,
    ModelError,
    Statement,
    When,
    render_duration,
)
from ccnet.reactors import default_reactor

__all__ = ["ClientShell", "format_table", "main"]

HISTORY = Path(os.path.expanduser("~/.ccnet_client_history"))
CAP_BASE = 1   # listcap numbers capabilities from 1, as the RI client does ...
MEAS_BASE = 0  # ... and listmeas numbers measurements from 0

T = TypeVar("T")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """A plain aligned text table (cells cut at ``max_width``)."""
    def cell(v: Any) -> str:
        text = "" if v is None else (", ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict)
                                     else ", ".join(map(str, v)) if isinstance(v, list) else str(v))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


class ShellError(Exception):
    """A command that cannot be carried out; the text is for the user."""


def number(arg: str) -> int | None:
    """The index an all-digits argument names (``showcap 2``), else None (a label or token)."""
    return int(arg) if arg.isascii() and arg.isdigit() else None


def pick(items: Sequence[T], index: int, base: int, what: str, lister: str) -> T:
    """``items[index]`` as ``lister`` numbered them (from ``base``), or a ShellError saying which exist."""
    if not 0 <= index - base < len(items):
        known = f"{base} to {base + len(items) - 1}" if items else f"none: {lister} lists no {what}"
        raise ShellError(f"no {what} {index} ({lister} numbers them {known})")
    return items[index - base]


def runcap_words(words: Sequence[str]) -> tuple[str, str | None, dict[str, str]]:
    """``runcap`` arguments: the capability (number or label), the scope if given
    (``when=...`` or loose words), and ``name=value`` parameters."""
    params: dict[str, str] = {}
    when: str | None = None
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if not eq:
            when = word if when is None else f"{when} {word}"
        elif name == "when":
            when = value
        else:
            params[name] = value
    return words[0], when, params


def scope_problem(cap: Statement, text: str, tzero: datetime) -> str | None:
    """None when ``text`` is a temporal scope ``cap`` accepts, else why not."""
    try:
        when = When.parse(text)
    except ModelError as exc:
        return str(exc)
    return cap.when.contains(when, tzero)


def needs_value(constraint: str) -> bool:
    """A parameter the user must give: its constraint allows more than one value."""
    return constraint == "*" or "," in constraint or " ... " in constraint


def connect_url(text: str) -> str:
    """The supervisor URL ``connect`` goes to: https (an ``http://`` URL is moved to https,
    as the RI client does when it has certificates); anything else is refused."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ShellError(f"connect: {text!r} is not a URL such as https://host:8888")
    return "https://" + rest.rstrip("/")


def measurements(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The measurements as ``listmeas`` numbers them: finished ones, then pending (the RI's order)."""
    return list(status["results"]) + list(status["pending"])


class ClientShell(cmd.Cmd):
    """The RI client's command set on top of :class:`MPlaneClient`."""

    intro = "ccnet mPlane client. Type help or ? to list commands."

    def __init__(self, client: MPlaneClient, call: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any],
                 stdin: TextIO | None = None, stdout: TextIO | None = None, interactive: bool = False,
                 as_json: bool = False, wait: bool = False, timeout: float = 60.0,
                 connect: Callable[[str], Coroutine[Any, Any, MPlaneClient]] | None = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.client = client
        self.call = call
        self.connect = connect  # a client for another URL, same TLS settings (None: no `connect URL`)
        self.home_url = client.url
        self.interactive = interactive
        self.use_rawinput = interactive
        self.prompt = "|mplane| " if interactive else ""
        self.as_json = as_json
        self.wait = wait
        self.timeout = timeout
        self.defaults: dict[str, str] = {}
        self.default_when: str | None = None  # None: one period (or an instant) from now
        self.receipts: dict[str, Statement] = {}
        self.failed = False
        self._labels: list[str] | None = None
        self._listed_caps: list[Statement] | None = None  # as listcap last numbered them
        self._listed_meas: list[dict[str, Any]] | None = None  # as listmeas last numbered them

    # -- plumbing ------------------------------------------------------------

    def out(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def emit(self, obj: Any, text: str) -> None:
        self.out(json.dumps(obj, sort_keys=True) if self.as_json else text)

    def onecmd(self, line: str) -> bool:
        try:
            return bool(super().onecmd(line))
        except (ShellError, MPlaneError, ModelError) as exc:
            self.failed = True
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            return False
        except (ConnectionError, OSError, ConnectError) as exc:
            self.failed = True
            sys.stderr.write(f"error: cannot reach {self.client.url}: {exc}\n")
            return False
        except Exception as exc:  # the shell must survive anything the network throws at it
            self.failed = True
            sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
            return False

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> None:
        raise ShellError(f"unknown command {line.split()[0]!r} (try help)")

    def _caps(self) -> list[Statement]:
        caps: list[Statement] = self.call(self.client.capabilities)
        self._labels = sorted(str(c.label) for c in caps if c.label)
        return caps

    def _cap(self, label: str) -> Statement:
        result: Statement = self.call(lambda: self.client.capability(label))
        return result

    def _numbered_caps(self) -> list[Statement]:
        """The capabilities as listcap last numbered them (fetched if nothing was listed yet)."""
        if self._listed_caps is None:
            self._listed_caps = self._caps()
        return self._listed_caps

    def _cap_named(self, arg: str) -> Statement:
        """The capability ``arg`` names: a listcap number or a label."""
        index = number(arg)
        if index is None:
            return self._cap(arg)
        return self._cap(str(pick(self._numbered_caps(), index, CAP_BASE, "capability", "listcap").label))

    def _show_message(self, msg: Message) -> None:
        if self.as_json:
            self.out(json.dumps(msg.to_dict(), sort_keys=True))
            return
        if isinstance(msg, ExceptionMessage):
            self.out(f"exception {msg.token}: {msg.message}")
        elif isinstance(msg, Envelope):
            self.out(f"envelope {msg.label or ''} {msg.token or ''} ({len(msg.contents)} results)".strip())
            for m in msg.contents:
                self._show_message(m)
        elif isinstance(msg, Statement) and msg.kind == "result":
            self.out(f"result {msg.label} token {msg.token} when {str(msg.when).strip()}")
            if msg.parameters:
                self.out("  " + ", ".join(f"{k}={v}" for k, v in sorted(msg.parameters.items())))
            if len(msg.results) > 8:
                # Wide results (tstat): one block per row, element per line.
                for i, row in enumerate(msg.resultvalues):
                    self.out(f"-- row {i + 1}")
                    self.out(format_table(["element", "value"], list(zip(msg.results, row, strict=False))))
            else:
                self.out(format_table(msg.results, msg.resultvalues))
        elif isinstance(msg, Statement):
            self.out(f"{msg.kind} {msg.label} token {msg.token} when {str(msg.when).strip()}")
        else:
            self.out(str(msg.to_dict()))

    # -- prompts (runcap) ----------------------------------------------------

    def _ask(self, prompt: str, what: str) -> str:
        """One answer: from the terminal (readline), else the next line of the shell's stdin
        (a pipe can answer). End of input is an error, never a wait."""
        if self.interactive:
            try:
                return input(prompt).strip()
            except (EOFError, KeyboardInterrupt):
                self.out("")
                raise ShellError(f"no answer for {what}: runcap abandoned") from None
        echo = sys.stderr if self.as_json else self.stdout
        echo.write(prompt)
        echo.flush()
        line = self.stdin.readline()
        if not self.stdin.isatty():
            echo.write(line.strip() + "\n")  # the piped answer, as a terminal would show it
            echo.flush()
        if not line:
            raise ShellError(f"no answer for {what}: end of input")
        return line.strip()

    def _ask_until(self, prompt: str, what: str, problem: Callable[[str], str | None]) -> str:
        """Ask until ``problem`` finds nothing wrong; without a terminal, a wrong answer is an
        error (asking again would read the commands that follow)."""
        while True:
            answer = self._ask(prompt, what)
            why = problem(answer)
            if why is None:
                return answer
            if not self.interactive:
                raise ShellError(f"{what} {answer!r}: {why}")
            self.out(why)

    def _note(self, text: str) -> None:
        if not self.as_json:
            self.out(text)

    def _scope(self, cap: Statement, given: str | None, ask: bool) -> str:
        """The temporal scope of a runcap: the one given, else the default (`when`); ``ask``
        (the RI form): a default that does not fit ``cap`` is asked again, and the answer becomes
        the default. No default: one period from now (``ask``: after an empty answer)."""
        if given:
            return given
        if not ask:
            return self.default_when or first_period(cap)
        if self.default_when and scope_problem(cap, self.default_when, datetime.now(UTC)) is None:
            return self.default_when
        answer = self._ask_until("|when| = ", "when",
                                 lambda a: scope_problem(cap, a, datetime.now(UTC)) if a else None)
        if not answer:
            return first_period(cap)
        self.default_when = answer
        return answer

    def _parameters(self, cap: Statement, given: dict[str, str], ask: bool, echo: bool) -> dict[str, str]:
        """Every parameter that needs a value: given, else its `set` default, else asked for
        (``ask``) or an error. ``echo`` (the RI form) shows each value it did not ask for."""
        params = dict(given)
        for name, constraint in cap.parameters.items():
            value = params.get(name, self.defaults.get(name))
            if value is None and not needs_value(constraint):
                value = constraint
            if value is not None:
                if echo:
                    self._note(f"|param| {name} = {value}")
            elif ask:
                hint = "" if constraint == "*" else f" ({constraint})"
                value = self._ask_until(f"|param| {name}{hint} = ", name, lambda a: None if a else "a value is needed")
            else:
                raise ShellError(f"{cap.label} needs {name}=VALUE (constraint: {constraint})")
            params[name] = value
        return params

    # -- capabilities --------------------------------------------------------

    def _list_caps(self) -> None:
        caps = self._listed_caps = self._caps()
        self.emit([c.to_dict() for c in caps], format_table(
            ["#", "label", "verb", "when", "parameters"],
            [[i, c.label, c.verb, str(c.when).strip(), c.parameters] for i, c in enumerate(caps, CAP_BASE)]))

    def do_connect(self, arg: str) -> None:
        """connect [URL]: connect to a supervisor (default: the configured one, same TLS files)
        and list its capabilities. An http:// URL is taken as https://."""
        words = arg.split()
        if len(words) > 1:
            raise ShellError("usage: connect [URL]")
        if self.connect is None:
            raise ShellError("connect is not available here")
        url = connect_url(words[0]) if words else self.home_url
        old, factory = self.client, self.connect
        self.client = self.call(lambda: factory(url))
        self._labels = self._listed_caps = self._listed_meas = None
        if url != old.url:
            self.receipts.clear()  # tokens of another supervisor

        async def close() -> None:
            await old.close()
        try:
            self.call(close)
        except Exception:
            pass  # the old connections are gone either way
        self._note(f"connected to {url}")
        self._list_caps()

    def do_listcap(self, arg: str) -> None:
        """listcap: list the capabilities you may use, numbered (from 1) for showcap and runcap."""
        self._list_caps()

    def _show_cap(self, cap: Statement) -> None:
        if self.as_json:
            self.out(json.dumps(cap.to_dict(), sort_keys=True))
            return
        self.out(f"capability {cap.label} ({cap.verb})\n  when       {str(cap.when).strip()}\n"
                 f"  token      {cap.token}\n  link       {cap.link}")
        if cap.parameters:
            self.out(format_table(["parameter", "constraint"], sorted(cap.parameters.items())))
        if cap.metadata:
            self.out(format_table(["metadata", "value"], sorted(cap.metadata.items())))
        self.out("results: " + ", ".join(cap.results))

    def do_showcap(self, arg: str) -> None:
        """showcap [N|LABEL]: show capability N (as listcap numbers them) or LABEL in full;
        without an argument, all of them."""
        if arg.strip():
            self._show_cap(self._cap_named(arg.strip()))
            return
        caps = self._listed_caps = self._caps()
        for i, cap in enumerate(caps, CAP_BASE):
            self._note(f"cap {i:4d} " + "-" * 39)
            self._show_cap(cap)

    def do_runcap(self, arg: str) -> None:
        """runcap N|LABEL [WHEN] [name=value ...] [when="..."]: run a capability.
        runcap N (the RI form, N as listcap numbers them) asks `|when| = ` unless the default
        scope (`when`) fits the capability (an empty answer: one period from now; an answer
        becomes the default), and `|param| NAME = ` for each parameter without a value or a
        `set` default. runcap LABEL takes the default scope (else one period from now) and
        `set` defaults; it asks for missing parameters only on a terminal.
        Answers come from the terminal, else from stdin (end of input: an error)."""
        words = shlex.split(arg)
        if not words:
            raise ShellError("usage: runcap N|LABEL [WHEN] [name=value ...]")
        target, when, given = runcap_words(words)
        ri_form = number(target) is not None
        cap = self._cap_named(target)
        when = self._scope(cap, when, ask=ri_form)
        params = self._parameters(cap, given, ask=ri_form or self.interactive, echo=ri_form)
        spec = self.client.specification(cap, when, params)
        receipt: Statement = self.call(lambda: self.client.submit(spec, cap))
        key = receipt.token or str(receipt.label)
        self.receipts[key] = receipt
        if self.wait and receipt.kind != "result":
            self._show_message(self.call(lambda: self.client.watch(receipt, timeout=self.timeout)))
            return
        if receipt.kind == "result":
            self._show_message(receipt)
        else:
            self.emit(receipt.to_dict(), f"receipt {receipt.label} token {receipt.token} "
                                         f"when {str(receipt.when).strip()} (redeem it, or use --wait)")

    # -- measurements --------------------------------------------------------

    def _measurements(self) -> list[dict[str, Any]]:
        """Your measurements, numbered from now on as listmeas shows them."""
        self._listed_meas = measurements(self._status())
        return self._listed_meas

    def _numbered_meas(self) -> list[dict[str, Any]]:
        """The measurements as listmeas last numbered them (fetched if nothing was listed yet)."""
        return self._listed_meas if self._listed_meas is not None else self._measurements()

    def do_listmeas(self, arg: str) -> None:
        """listmeas: your finished, then pending measurements, numbered (from 0) for showmeas."""
        ms = self._measurements()
        rows = [[i, m["label"], m["token"], m["state"], m.get("created") or m.get("updated"), m.get("rows", "")]
                for i, m in enumerate(ms, MEAS_BASE)]
        self.emit(ms, format_table(["#", "label", "token", "state", "time", "rows"], rows))

    def _key(self, arg: str) -> str:
        key = arg.strip()
        if not key:
            if not self.receipts:
                raise ShellError("which measurement? give a label or token (see listmeas)")
            key = list(self.receipts)[-1]
        return key

    def do_showmeas(self, arg: str) -> None:
        """showmeas [N|LABEL|TOKEN]: show measurement N (as listmeas numbers them), or the one
        with that label or token: its result, or its receipt while it runs. Without an argument,
        all of your measurements."""
        key = arg.strip()
        if key:
            index = number(key)
            if index is not None:
                key = pick(self._numbered_meas(), index, MEAS_BASE, "measurement", "listmeas")["token"]
            self._show_message(self._redeem(key))
            return
        for i, m in enumerate(self._measurements(), MEAS_BASE):
            self._note(f"meas {i:4d} " + "-" * 38)
            try:
                self._show_message(self._redeem(m["token"]))
            except MPlaneError as exc:  # e.g. expired since the listing: show the others
                self.failed = True
                sys.stderr.write(f"error: measurement {i} ({m['label']}): {exc}\n")

    def do_redeem(self, arg: str) -> None:
        """redeem [LABEL|TOKEN]: fetch the results of your receipts (all of this session by default)."""
        keys = [arg.strip()] if arg.strip() else list(self.receipts)
        if not keys:
            raise ShellError("no receipts in this session (give a label or token)")
        for key in keys:
            msg = self._redeem(key)
            self._show_message(msg)
            if not (isinstance(msg, Statement) and msg.kind == "receipt"):
                self.receipts.pop(key, None)

    def _redeem(self, key: str) -> Message:
        msg: Message = self.call(lambda: self.client.redeem(key))
        return msg

    def do_interrupt(self, arg: str) -> None:
        """interrupt LABEL|TOKEN: stop a running measurement."""
        key = self._key(arg)
        receipt = self.receipts.get(key) or Statement("receipt", token=key)
        self._show_message(self.call(lambda: self.client.interrupt(receipt)))

    # -- defaults ------------------------------------------------------------

    def do_set(self, arg: str) -> None:
        """set NAME VALUE: default value for a parameter (used by runcap)."""
        name, _, value = arg.strip().partition(" ")
        if not name or not value.strip():
            raise ShellError("usage: set NAME VALUE")
        self.defaults[name] = value.strip()

    def do_unset(self, arg: str) -> None:
        """unset NAME: forget a parameter default."""
        if self.defaults.pop(arg.strip(), None) is None:
            raise ShellError(f"no default for {arg.strip()!r}")

    def do_show(self, arg: str) -> None:
        """show: the parameter defaults and the default temporal scope."""
        rows = sorted(self.defaults.items()) + [("when", self.default_when or "(one period from now)")]
        self.emit(dict(rows), format_table(["name", "value"], rows))

    def do_when(self, arg: str) -> None:
        """when SCOPE: default temporal scope for runcap (e.g. when now + 5s / 1s)."""
        if not arg.strip():
            self.out(self.default_when or "(one period from now)")
            return
        When.parse(arg.strip())
        self.default_when = arg.strip()

    # -- supervisor console (admin role) -------------------------------------

    def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call(self.client.status)
        return status

    def do_components(self, arg: str) -> None:
        """components: components known to the supervisor (admin role: all of them)."""
        rows = self._status()["components"]
        self.emit(rows, format_table(["identity", "capabilities", "last_seen"],
                                     [[r["identity"], r["capabilities"], r["last_seen"]] for r in rows]))

    def do_capabilities(self, arg: str) -> None:
        """capabilities: every capability with the component offering it."""
        rows = self._status()["capabilities"]
        self.emit(rows, format_table(["label", "component", "when"],
                                     [[r["label"], r["component"], r["when"]] for r in rows]))

    def do_pending(self, arg: str) -> None:
        """pending: measurements not finished yet, and who submitted them."""
        rows = self._status()["pending"]
        self.emit(rows, format_table(["label", "token", "state", "client", "component", "created"],
                                     [[r["label"], r["token"], r["state"], r["client"], r["component"],
                                       r["created"]] for r in rows]))

    def do_finished(self, arg: str) -> None:
        """finished: finished measurements, and who submitted them."""
        rows = self._status()["results"]
        self.emit(rows, format_table(["label", "token", "state", "client", "rows", "updated"],
                                     [[r["label"], r["token"], r["state"], r["client"], r["rows"],
                                       r["updated"]] for r in rows]))

    # -- leaving -------------------------------------------------------------

    def do_quit(self, arg: str) -> bool:
        """quit: leave the shell."""
        return True

    do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:  # noqa: N802 (cmd.Cmd API)
        if self.interactive:
            self.out("")
        return True

    # -- completion ----------------------------------------------------------

    def _label_names(self) -> list[str]:
        if self._labels is None:
            try:
                self._caps()
            except Exception:
                self._labels = []
        return self._labels or []

    def complete_showcap(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return [label for label in self._label_names() if label.startswith(text)]

    def complete_runcap(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        words = line[:begidx].split()
        if len(words) <= 1:
            return self.complete_showcap(text, line, begidx, endidx)
        try:
            cap = self._cap_named(words[1])
        except Exception:
            return []
        names = [f"{p}=" for p in cap.parameters] + ["when="]
        return [n for n in names if n.startswith(text)]

    def complete_connect(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return sorted({u for u in (self.home_url, self.client.url) if u.startswith(text)})

    def complete_showmeas(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        try:
            listed = self._numbered_meas()
        except Exception:
            return []
        return sorted({str(m[k]) for m in listed for k in ("label", "token") if str(m[k]).startswith(text)})

    def complete_set(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        names: set[str] = set()
        for label in self._label_names():
            try:
                names.update(self._cap(label).parameters)
            except Exception:
                continue
        return sorted(n for n in names if n.startswith(text))

    complete_unset = complete_set


def first_period(cap: Statement) -> str:
    """The default scope: one sample — ``now + P / P`` for periodic capabilities, else ``now``."""
    if cap.when.period is not None:
        p = render_duration(cap.when.period)
        return f"now + {p} / {p}"
    return "now"


# ---------------------------------------------------------------------------
# Entry point


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ccnet-client", description="mPlane client shell (ccnet)")
    p.add_argument("--config", help="INI file with [tls] ca/cert/key and [client] url (and paths = ccnet|ri|sdk)")
    p.add_argument("--url", help="supervisor (or listening component) URL, e.g. https://localhost:8888; "
                                 "several (comma separated) for daemons of one supervisor: the next when one fails")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="client private key (PEM)")
    p.add_argument("--ca", help="CA bundle that signed the server (PEM)")
    p.add_argument("--sdk", action="store_const", const="sdk", dest="paths",
                   help="talk to an SDK-style listener (/capability and /)")
    p.add_argument("--ri", action="store_const", const="ri", dest="paths",
                   help="talk to the RI fork's own supervisor (/show/capability ...)")
    p.add_argument("-c", "--command", action="append", default=[],
                   help="run these commands (';' separated; may repeat) and exit")
    p.add_argument("--wait", action="store_true", help="runcap waits for the result and prints it")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a result (--wait)")
    args = p.parse_args(argv)
    if args.config:
        ini = configparser.ConfigParser(interpolation=None)
        if not ini.read(args.config):
            p.error(f"cannot read {args.config}")
        base = Path(args.config).resolve().parent
        tls = ini["tls"] if ini.has_section("tls") else {}
        client = ini["client"] if ini.has_section("client") else {}
        for attr in ("ca", "cert", "key"):
            if getattr(args, attr) is None and attr in tls:
                setattr(args, attr, str(base / tls[attr]))
        args.url = args.url or client.get("url")
        args.paths = args.paths or client.get("paths", "ccnet").strip()
    if args.paths not in (None, "ccnet", "ri", "sdk"):
        p.error(f"paths = {args.paths}: expected ccnet, ri or sdk")
    missing = [n for n in ("url", "cert", "key", "ca") if not getattr(args, n)]
    if missing:
        p.error("missing --" + ", --".join(missing) + " (or give them in --config)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _options(argv)
    from twisted.internet import defer
    from twisted.internet.threads import blockingCallFromThread

    from ccnet.config import TLSConfig
    from ccnet.tls import TLSMaterial

    reactor = default_reactor()
    try:
        material = TLSMaterial(TLSConfig(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key), crl=None,
                                         min_version="1.2", allow_proxies=False))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"ccnet-client: cannot use the TLS files: {exc}\n")
        return 2
    paths = {"sdk": SDK_PATHS, "ri": RI_PATHS}.get(args.paths or "ccnet", SUPERVISOR_PATHS)
    client = MPlaneClient(reactor, args.url, material, paths, timeout=args.timeout)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()

    def call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(fn()))

    async def connect(url: str) -> MPlaneClient:  # runs in the reactor thread, like every call
        return MPlaneClient(reactor, url, material, paths, timeout=args.timeout)

    interactive = not args.command and sys.stdin.isatty()
    shell = ClientShell(client, call, interactive=interactive, as_json=args.json, wait=args.wait,
                        timeout=args.timeout, connect=connect)
    try:
        if args.command:
            for chunk in args.command:
                for line in chunk.split(";"):
                    if line.strip() and shell.onecmd(line.strip()):
                        break
        elif interactive:
            _readline()
            try:
                shell.cmdloop()
            except KeyboardInterrupt:
                shell.out("")
            finally:
                _save_history()
        else:
            shell.cmdloop(intro="")
    finally:
        try:
            blockingCallFromThread(reactor, shell.client.close)
        except Exception:
            pass
        reactor.callFromThread(reactor.stop)
        thread.join(5)
    return 1 if shell.failed else 0


def _readline() -> None:
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input still works
        return
    readline.parse_and_bind("tab: complete")
    readline.set_completer_delims(" \t\n")
    try:
        readline.read_history_file(HISTORY)
    except OSError:
        pass
    readline.set_history_length(1000)


def _save_history() -> None:
    try:
        import readline

        readline.write_history_file(HISTORY)
    except (ImportError, OSError):
        pass


if __name__ == "__main__":
    sys.exit(main())
