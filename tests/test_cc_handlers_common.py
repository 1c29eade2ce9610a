"""Helpers shared by the CC handler/daemon tests (no tests here)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from twisted.internet import defer, reactor, task, threads

from ccnet.cc.config import parse
from ccnet.cc.server import CCServer
from ccnet.config import IniFile
from tests.test_cc_server import body, exchange  # noqa: F401 (shared with the handler tests)

_CTX = zmq.Context.instance()


def reply_body(frames: list[bytes]) -> dict[str, Any]:
    sep = frames.index(b"")
    return json.loads(frames[sep + 2])  # type: ignore[no-any-return]


class ServerMixin:
    """Start real CC servers from ini text (written to a file when ``folder`` is given)."""

    def start_server(self, text: str, folder: Path | None = None, clock: Any = None,
                     runtime: Any = None) -> CCServer:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "cc.ini"
            path.write_text(text)
            ini = IniFile.load(path)
        else:
            ini = IniFile.from_string(text)
        cfg = parse(ini)
        for name in ini.claimed():
            ini.section(name).finish()
        server = CCServer(cfg, reactor, hostname="ccnet-test", clock=clock, runtime=runtime)
        server.start()
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        return server

    def ask(self, server: CCServer, messages: list[list[bytes]], replies: int = 1,
            timeout: float = 5.0) -> defer.Deferred[list[list[bytes]]]:
        assert server.endpoint is not None
        return threads.deferToThread(exchange, server.endpoint, messages, replies, timeout)


@defer.inlineCallbacks
def wait_for(pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        yield task.deferLater(reactor, 0.05, lambda: None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
