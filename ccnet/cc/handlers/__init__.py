"""Handler registry: short names (as in the original CC) → handler classes.

``handler = echo`` resolves through :data:`HANDLERS`; a short name missing
there falls back to the module ``ccnet.cc.handlers.<name>`` and its
``handler_class`` attribute, so a new built-in handler is one new module.
``cc.handler.<name>`` (the original module path) maps to the same short name,
and ``pkg.module:Class`` or ``pkg.module`` (with ``handler_class``) loads any
third-party handler.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ccnet.cc.handler import ICCHandler, ICCHandlerFactory

__all__ = ["HANDLERS", "resolve_handler", "HandlerLookupError"]

#: Short name → "module:Class".
HANDLERS: dict[str, str] = {
    "echo": "ccnet.cc.handlers.echo:EchoHandler",
    "proxy": "ccnet.cc.handlers.proxy:ProxyHandler",
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


class HandlerLookupError(LookupError):
    """The handler name does not name a loadable ICCHandlerFactory."""


def resolve_handler(name: str) -> Any:
    """Return the handler class for ``name`` (short, original or dotted)."""
    name = name.strip()
    if not _NAME.match(name):
        raise HandlerLookupError(f"{name!r} is not a handler name or module path")
    if name.startswith("cc.handler."):
        name = name[len("cc.handler.") :]
    if name in HANDLERS:
        target = HANDLERS[name]
    elif "." not in name and ":" not in name:
        target = f"ccnet.cc.handlers.{name}"
    else:
        target = name
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise HandlerLookupError(f"no handler named {name!r} (module {module_name} not found)") from None
        raise
    cls = getattr(module, attr or "handler_class", None)
    if cls is None:
        raise HandlerLookupError(f"module {module_name} has no {attr or 'handler_class'}")
    # A class implementing ICCHandler is its own factory (zope's class-provides
    # declarations are not inherited, so subclasses of CCHandler rely on this).
    if not (ICCHandlerFactory.providedBy(cls) or (isinstance(cls, type) and ICCHandler.implementedBy(cls))):
        raise HandlerLookupError(f"{target} does not provide ICCHandlerFactory")
    return cls
