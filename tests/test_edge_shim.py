"""ccnet.edge.shim: each private Twisted attribute ccnet reads still exists and means the same.

When a Twisted upgrade fails one of these, fix the shim (one module), not the callers.
"""

from __future__ import annotations

import inspect
import signal

from twisted.application import app
from twisted.internet import abstract, selectreactor
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import http
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from ccnet.edge import shim


class ShimTests(unittest.TestCase):
    def test_request_disconnected_follows_the_connection(self) -> None:
        request = Request(DummyChannel(), False)
        self.assertFalse(shim.request_disconnected(request))
        request.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(shim.request_disconnected(request))

    def test_exit_signal_is_what_twistd_re_raises_and_can_be_cleared(self) -> None:
        reactor = selectreactor.SelectReactor()
        self.addCleanup(reactor.disconnectAll)
        self.assertIsNone(shim.exit_signal(reactor))
        reactor.sigTerm(signal.SIGTERM)  # what the SIGTERM handler does
        self.assertEqual(shim.exit_signal(reactor), signal.SIGTERM)
        shim.clear_exit_signal(reactor)
        self.assertIsNone(shim.exit_signal(reactor))
        # twistd decides the exit status from it.
        self.assertIn("_exitSignal", inspect.getsource(app))

    def test_unsent_bytes_reads_the_file_descriptor_buffers(self) -> None:
        fd = abstract.FileDescriptor()
        for name in ("dataBuffer", "offset", "_tempDataLen"):
            self.assertTrue(hasattr(fd, name), name)
        fd.dataBuffer = b"x" * 10
        fd.offset = 4
        fd._tempDataLen = 3
        self.assertEqual(shim.unsent_bytes(fd), 9)

    def test_socket_transport_finds_the_buffered_transport(self) -> None:
        fd = abstract.FileDescriptor()

        class Layer:
            def __init__(self, transport: object) -> None:
                self.transport = transport

        self.assertIs(shim.socket_transport(Layer(Layer(fd))), fd)

    def test_http_channel_is_behind_the_protocol_choosing_shim(self) -> None:
        generic = http._genericHTTPChannelProtocolFactory(b"")
        self.assertIsInstance(shim.http_channel(generic), http.HTTPChannel)
        plain = http.HTTPChannel()
        self.assertIs(shim.http_channel(plain), plain)
