"""Helpers for the component/client tests: an in-process ccnet component and client."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

from ccnet.config import IniFile
from ccnet.mplane import component as compmod
from ccnet.mplane import component_config
from ccnet.mplane.client import MPlaneClient
from ccnet.runtime import Runtime
from ccnet.store import Store
from tests.test_mplane_support import Supervisor, material

PROBES = """\
[probe:ping]
module = ccnet.mplane.probes.ping
ip4addr = 127.0.0.1
destinations4 = 127.0.0.1 ... 127.0.0.255
"""


class Component:
    """A ccnet component built from INI text, with its own store, in this reactor."""

    def __init__(self, folder: Path, supervisor_url: str | None, extra: str = "", probes: str = PROBES,
                 name: str = "component") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        lines = ["[component]"]
        if supervisor_url:
            lines.append(f"supervisor = {supervisor_url}")
        text = "\n".join(lines) + "\n" + textwrap.dedent(extra) + "\n" + probes
        ini = IniFile.from_string(text, folder / "ccnet.ini")
        cfg = component_config.parse(ini)
        assert cfg is not None
        self.cfg = cfg
        self.name = name
        self.top: Any = None
        self.listeners: list[Any] = []

    @defer.inlineCallbacks
    def start(self) -> Any:
        from tests.support import test_pki

        self.store = Store.open(f"sqlite:///{self.folder / 'component.db'}", reactor)
        runtime = Runtime(reactor, self.store, tls=material(test_pki(), self.name), version="test")
        part = compmod.build(runtime, self.cfg)
        self.top, self.listeners = part.services[0], part.listeners
        self.top.startService()
        for listener in self.listeners:
            listener.startService()
            yield listener.listening
        yield self.top.ready
        self.core = self.top.core
        self.link = next((s for s in self.top if isinstance(s, compmod.SupervisorLink)), None)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self.top is not None and self.top.running:
            for listener in self.listeners:
                yield listener.stopService()
            yield self.top.stopService()
            yield self.store.close()

    def listener_port(self) -> int:
        from ccnet.service import ListenerService

        svc = next(s for s in self.listeners if isinstance(s, ListenerService))
        return int(svc.address.port)


def client_for(sup: Supervisor, name: str = "client") -> MPlaneClient:
    return MPlaneClient(reactor, f"https://localhost:{sup.port}", material(sup.pki, name))


@defer.inlineCallbacks
def wait_until(predicate: Any, what: str, seconds: float = 30.0) -> Any:
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)
