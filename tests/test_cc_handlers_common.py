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
from ccnet.cc.message import make_body
from ccnet.cc.server import CCServer
from ccnet.config import IniFile

_CTX = zmq.Context.instance()


def body(req: str, **extra: Any) -> bytes:
    return json.dumps(make_body(req, extra, hostname="client", now=time.time())).encode()


def exchange(endpoint: str, messages: list[list[bytes]], replies: int, timeout: float = 5.0) -> list[list[bytes]]:
    """Plain pyzmq DEALER: send, collect up to ``replies`` answers (run in a thread)."""
    s = _CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    s.connect(endpoint)
    try:
        for m in messages:
            s.send_multipart(m)
        out = []
        for _ in range(replies):
            try:
                out.append(s.recv_multipart())
            except zmq.Again:
                break
        return out
    finally:
        s.close()


def reply_body(frames: list[bytes]) -> dict[str, Any]:
    sep = frames.index(b"")
    return json.loads(frames[sep + 2])  # type: ignore[no-any-return]


class ServerMixin:
    """Start real CC servers from ini text (written to a file when ``folder`` is given)."""

    def start_server(self, text: str, folder: Path | None = None, clock: Any = None) -> CCServer:
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
        server = CCServer(cfg, reactor, hostname="ccnet-test", clock=clock)
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
