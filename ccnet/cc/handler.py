# zope.interface method declarations have no self and no body; mypy reads them as code.
# mypy: disable-error-code="misc,empty-body"
"""The CC handler plug point.

A handler is a class named in a handler section (``handler = echo``, or the
legacy ``plugin = ...``) and called for every message whose type its section is
routed under in ``[routes]``.  The class itself provides
:class:`ICCHandlerFactory` (role table entry, config parsing, construction);
its instances provide :class:`ICCHandler`.

Third-party handlers need no change to ccnet: name them as
``handler = mypkg.mymodule:MyHandler`` (or a module with a ``handler_class``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface, implementer, provider

from ccnet.cc.message import CCMessage, wants_replies

if TYPE_CHECKING:
    from ccnet.cc.config import CCConfig
    from ccnet.config import IniFile, SectionReader

__all__ = [
    "ICCHandler",
    "ICCHandlerFactory",
    "ICCServer",
    "CCRequest",
    "CCHandler",
    "HandlerError",
]


class HandlerError(Exception):
    """Raised by a handler for bad input it understood: counted as an error, not a
    crash, logged, and the text goes back in an ``error`` reply to a sender that
    opted in (``"ack": true``).  ``always_reply`` marks the errors the original CC
    answers too (taskrouter's "cannot route to HOST"): those go to every sender."""

    def __init__(self, msg: str, *, always_reply: bool = False) -> None:
        super().__init__(msg)
        self.always_reply = always_reply


@dataclass
class CCRequest:
    """One received message as handlers see it.

    ``payload`` is the decoded (decrypted, verified) json body when any handler
    on the route reads payloads, else ``None``.  ``signer`` holds the signer
    certificate's subject fields when the message was verified.
    """

    msg: CCMessage
    received: float
    payload: dict[str, Any] | None = None
    signer: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.msg.type

    @property
    def route(self) -> tuple[bytes, ...]:
        return self.msg.route

    @property
    def wants_replies(self) -> bool:
        """The sender set ``"ack": true``: it reads acknowledgements and error replies."""
        return wants_replies(self.payload if self.payload is not None else self.msg.decoded)


class ICCServer(Interface):
    """What a handler gets from the CC server it runs in."""

    reactor = Attribute("The reactor that runs the ZMQ sockets.")
    clock = Attribute("IReactorTime for timers and timestamps (the reactor; a Clock in tests).")
    zmq_factory = Attribute("The one txzmq ZmqFactory of this reactor.")
    config = Attribute("The CCConfig of the server.")
    hostname = Attribute("Host name put into outgoing bodies.")
    stats = Attribute("ccnet.cc.stats.CCStats of the server.")
    codec = Attribute(
        "ccnet.cc.crypto.CMSCodec with the server's cms-* keys: decode(msg, now) "
        "checks messages received on a handler's own sockets like the server does."
    )
    endpoint = Attribute("The bound cc-socket endpoint (real port), once started.")
    runtime = Attribute("The ccnet Runtime (store, tls, users), or None when embedded.")

    def reply(request: CCRequest, req: str, fields: Mapping[str, Any], blob: bytes | None) -> None:
        """Send a new message of type ``req`` back along ``request``'s route,
        signed/encrypted with the server's cms-* settings.  For the replies the
        original CC sends too (echo.response, database replies, task acks)."""

    def ack(request: CCRequest, req: str, fields: Mapping[str, Any], blob: bytes | None) -> None:
        """Like reply(), for acknowledgements the original CC never sends: only
        sent when the sender opted in with ``"ack": true``."""

    def error_reply(request: CCRequest, msg: str) -> None:
        """Answer ``request`` with an ``error`` message when the sender opted in
        (``error-replies``); otherwise log and count it."""

    def send_frames(frames: list[bytes]) -> None:
        """Send raw frames out of the listening ROUTER (first frame = peer id).
        Never blocks: what ZMQ cannot take now waits in the bounded send queue;
        what cannot be delivered is counted and logged (``undelivered``)."""

    def encode(route: tuple[bytes, ...], req: str, fields: Mapping[str, Any], blob: bytes | None) -> CCMessage:
        """Build a signed/encrypted message with the server's cms-* settings."""


class ICCHandlerFactory(Interface):
    """Provided by handler classes."""

    handler_name = Attribute("Short name, e.g. 'echo'.")
    cc_roles = Attribute("frozenset of cc-role values the handler may run under.")

    def parse_config(section: SectionReader, ini: IniFile, cc: CCConfig) -> Any:
        """Read this handler's keys (and any section it owns) into a frozen object.
        Raise ConfigError for mistakes; unread keys are reported as unknown."""

    def __call__(name: str, options: Any, server: ICCServer) -> ICCHandler:
        """Create the handler of section ``name``."""


class ICCHandler(Interface):
    name = Attribute("The handler section name.")
    reads_payload = Attribute(
        "True when handle() reads request.payload: the server then decrypts and "
        "verifies the message first (cms-decrypt / cms-verify-ca) and answers "
        "failures with an error reply; proxies leave it False and see raw frames."
    )

    def start() -> None:
        """Called once the server socket is bound."""

    def stop() -> Any:
        """Called on shutdown; may return a Deferred."""

    def handle(request: CCRequest) -> Any:
        """Handle one message; may return a Deferred.  An exception (or failed
        Deferred) is counted as a crash and answered with an error reply."""


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class CCHandler:
    """Convenience base: subclasses set ``handler_name``/``cc_roles`` and
    override ``handle`` (and ``parse_config`` when they have keys)."""

    handler_name = "base"
    cc_roles: frozenset[str] = frozenset({"local", "remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: SectionReader, ini: IniFile, cc: CCConfig) -> Any:
        return None

    def __init__(self, name: str, options: Any, server: Any) -> None:
        self.name = name
        self.options = options
        #: The ICCServer this handler runs in.
        self.server: Any = server

    def start(self) -> None:
        pass

    def stop(self) -> Any:
        return None

    def handle(self, request: CCRequest) -> Any:
        raise HandlerError(f"handler [{self.name}] does not handle {request.type}")
