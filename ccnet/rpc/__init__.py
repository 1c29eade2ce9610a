"""DIRAC-compatible HTTPS RPC: services on the ccnet reactor, and their clients.

Service authors subclass :class:`RPCService` exactly as they subclass DIRAC's
``TornadoService``; callers use :class:`RPCClient` (Twisted/treq), :class:`SyncRPCClient`
(scripts, requests) or the ``ccnet-rpc`` command.
"""

from ccnet.rpc.codec import CodecError, JCodec, decode, encode
from ccnet.rpc.dispatch import blocking, in_reactor
from ccnet.rpc.result import S_ERROR, S_OK, isReturnStructure
from ccnet.rpc.service import RPCService

__all__ = [
    "S_ERROR",
    "S_OK",
    "CodecError",
    "JCodec",
    "RPCClient",
    "RPCService",
    "SyncRPCClient",
    "blocking",
    "decode",
    "encode",
    "in_reactor",
    "isReturnStructure",
]


def __getattr__(name: str) -> object:
    # Clients pull in treq / requests: import them only when asked for.
    if name == "RPCClient":
        from ccnet.rpc.client import RPCClient

        return RPCClient
    if name == "SyncRPCClient":
        from ccnet.rpc.syncclient import SyncRPCClient

        return SyncRPCClient
    raise AttributeError(name)
