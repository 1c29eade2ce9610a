"""``ccnet-client``: the mPlane client shell (the RI client's commands) over mutual TLS.

    ccnet-client --url https://sup:8888 --cert me.crt --key me.key --ca ca.crt
    ccnet-client --config client.ini -c 'runcap ping-average-ip4 destination.ip4=127.0.0.1 when="now + 5s / 1s"' --wait --json

Commands: ``listcap``, ``showcap``, ``runcap``, ``listmeas``, ``showmeas``, ``redeem``,
``interrupt``, ``set``/``unset``/``show`` (parameter defaults), ``when``, ``help``, ``quit``;
for holders of the supervisor's admin role also ``components``, ``capabilities``,
``pending`` and ``finished`` (the RI supervisor console, served by the supervisor's
``/api/status``). Interactive mode has readline history and completion of commands,
capability labels and parameter names.

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
from pathlib import Path
from typing import Any, TextIO

from ccnet.mplane.client import RI_PATHS, SDK_PATHS, MPlaneClient, MPlaneError
from ccnet.mplane.model import (
    Envelope,
    ExceptionMessage,
    Message,
    ModelError,
    Statement,
    When,
    render_duration,
)

__all__ = ["ClientShell", "format_table", "main"]

HISTORY = Path(os.path.expanduser("~/.ccnet_client_history"))


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


class ClientShell(cmd.Cmd):
    """The RI client's command set on top of :class:`MPlaneClient`."""

    intro = "ccnet mPlane client. Type help or ? to list commands."

    def __init__(self, client: MPlaneClient, call: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any],
                 stdin: TextIO | None = None, stdout: TextIO | None = None, interactive: bool = False,
                 as_json: bool = False, wait: bool = False, timeout: float = 60.0) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.client = client
        self.call = call
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
        except (ConnectionError, OSError) as exc:
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

    # -- capabilities --------------------------------------------------------

    def do_listcap(self, arg: str) -> None:
        """listcap: list the capabilities you may use."""
        caps = self._caps()
        self.emit([c.to_dict() for c in caps], format_table(
            ["label", "verb", "when", "parameters"],
            [[c.label, c.verb, str(c.when).strip(), c.parameters] for c in caps]))

    def do_showcap(self, arg: str) -> None:
        """showcap LABEL: show one capability in full."""
        if not arg.strip():
            raise ShellError("usage: showcap LABEL")
        cap = self._cap(arg.strip())
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

    def do_runcap(self, arg: str) -> None:
        """runcap LABEL [WHEN] [name=value ...] [when="..."]: run a capability.
        Missing parameters come from `set` defaults, else are asked for (interactive mode)."""
        words = shlex.split(arg)
        if not words:
            raise ShellError("usage: runcap LABEL [WHEN] [name=value ...]")
        label, rest = words[0], words[1:]
        params: dict[str, str] = {}
        when = None
        for word in rest:
            name, eq, value = word.partition("=")
            if not eq:
                when = word if when is None else f"{when} {word}"
            elif name == "when":
                when = value
            else:
                params[name] = value
        cap = self._cap(label)
        when = when or self.default_when or _first_period(cap)
        for name, constraint in cap.parameters.items():
            if name in params:
                continue
            if name in self.defaults:
                params[name] = self.defaults[name]
            elif constraint != "*" and "," not in constraint and " ... " not in constraint:
                continue  # single value: filled in by the client
            elif self.interactive:
                params[name] = input(f"{name} ({constraint}) = ").strip()
            else:
                raise ShellError(f"{label} needs {name}=VALUE (constraint: {constraint})")
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

    def do_listmeas(self, arg: str) -> None:
        """listmeas: your pending and finished measurements."""
        status = self.call(self.client.status)
        rows = [[m["label"], m["token"], m["state"], m.get("created") or m.get("updated"), m.get("rows", "")]
                for m in status["pending"] + status["results"]]
        self.emit(status["pending"] + status["results"],
                  format_table(["label", "token", "state", "time", "rows"], rows))

    def _key(self, arg: str) -> str:
        key = arg.strip()
        if not key:
            if not self.receipts:
                raise ShellError("which measurement? give a label or token (see listmeas)")
            key = list(self.receipts)[-1]
        return key

    def do_showmeas(self, arg: str) -> None:
        """showmeas LABEL|TOKEN: show a measurement (its result, or its receipt while it runs)."""
        self._show_message(self.call(lambda: self.client.redeem(self._key(arg))))

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
            cap = self._cap(words[1])
        except Exception:
            return []
        names = [f"{p}=" for p in cap.parameters] + ["when="]
        return [n for n in names if n.startswith(text)]

    def complete_set(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        names: set[str] = set()
        for label in self._label_names():
            try:
                names.update(self._cap(label).parameters)
            except Exception:
                continue
        return sorted(n for n in names if n.startswith(text))

    complete_unset = complete_set


def _first_period(cap: Statement) -> str:
    """The default scope: one sample — ``now + P / P`` for periodic capabilities, else ``now``."""
    if cap.when.period is not None:
        p = render_duration(cap.when.period)
        return f"now + {p} / {p}"
    return "now"


# ---------------------------------------------------------------------------
# Entry point


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ccnet-client", description="mPlane client shell (ccnet)")
    p.add_argument("--config", help="INI file with [tls] ca/cert/key and [client] url (and paths = ri|sdk)")
    p.add_argument("--url", help="supervisor (or listening component) URL, e.g. https://localhost:8888")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="client private key (PEM)")
    p.add_argument("--ca", help="CA bundle that signed the server (PEM)")
    p.add_argument("--sdk", action="store_true", help="talk to an SDK-style listener (/capability and /)")
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
        args.sdk = args.sdk or client.get("paths", "ri").strip() == "sdk"
    missing = [n for n in ("url", "cert", "key", "ca") if not getattr(args, n)]
    if missing:
        p.error("missing --" + ", --".join(missing) + " (or give them in --config)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _options(argv)
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor
    from twisted.internet.threads import blockingCallFromThread

    from ccnet.config import TLSConfig
    from ccnet.tls import TLSMaterial

    reactor: Any = _reactor
    try:
        material = TLSMaterial(TLSConfig(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key), crl=None,
                                         min_version="1.2", allow_proxies=False))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"ccnet-client: cannot use the TLS files: {exc}\n")
        return 2
    client = MPlaneClient(reactor, args.url, material, SDK_PATHS if args.sdk else RI_PATHS, timeout=args.timeout)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()

    def call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(fn()))

    interactive = not args.command and sys.stdin.isatty()
    shell = ClientShell(client, call, interactive=interactive, as_json=args.json, wait=args.wait,
                        timeout=args.timeout)
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
            blockingCallFromThread(reactor, client.close)
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
