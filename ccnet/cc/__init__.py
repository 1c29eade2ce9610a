"""CC: the ZMQ message proxy of markokr/cc, in the ccnet reactor.

Pure cores: :mod:`ccnet.cc.message` (frames), :mod:`ccnet.cc.routing` (routes,
roles), :mod:`ccnet.cc.crypto` (CMS), :mod:`ccnet.cc.stats`.  Twisted edges:
:mod:`ccnet.cc.transport` (txzmq sockets), :mod:`ccnet.cc.server` (dispatch),
:mod:`ccnet.cc.handlers` (plug-ins behind :class:`ccnet.cc.handler.ICCHandler`).
See docs/cc.md.
"""
