"""``handler = database`` (original name ``dbhandler``): call a PostgreSQL function
with a ``db[.<x>]`` message and reply with its result.

Request fields (original): ``function`` (``name`` or ``schema.name``),
``params`` (JSON string, list = positional, object = named ``k := v``),
``return`` (``''``/``no`` = no reply, ``all``, ``one``, ``json``), ``ident``
(echoed).  Reply ``reply.<req>``: ``data``, ``rowcount``, ``statusmessage``,
``ident``; with ``return = json`` the first column of the first row *is* the
reply body (it must carry a ``req``).

With ``function = schema.name`` in the section, every message routed there
(e.g. ``pub.infofile``) calls that function with the message JSON (without
``data``, plus ``blob_size``) as its one argument, replying per ``return``.

Calls run on a bounded ``twisted.enterprise.adbapi`` pool (``worker-threads``
connections, autocommit, psycopg 3); a lost connection is dropped and reopened
on the next call, and the failed call gets an error reply.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import fnmatch
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from twisted.enterprise import adbapi
from twisted.logger import Logger
from zope.interface import implementer, provider

from ccnet.cc.handler import CCHandler, CCRequest, HandlerError, ICCHandler, ICCHandlerFactory
from ccnet.cc.handlers.payload import field_str
from ccnet.cc.message import valid_type

__all__ = ["DatabaseHandler", "DatabaseOptions", "DBCall", "build_call", "jsonable", "handler_class"]

log = Logger()

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_PARAM_KEY = re.compile(r"^[A-Za-z0-9_]+$")
RETURNS = ("", "no", "all", "one", "json")
_MAX_PARAMS = 100


@dataclass(frozen=True)
class DatabaseOptions:
    db: str
    allowed_functions: tuple[str, ...]
    worker_threads: int
    connect_timeout: int
    #: ccnet: call this function with every message (as one JSON argument).
    function: str | None = None
    returns: str = ""


@dataclass(frozen=True)
class DBCall:
    """A validated function call: SQL text with %s / %(k)s placeholders and its params."""

    function: str
    sql: str
    params: Any
    returns: str
    ident: Any


def _quote_ident(part: str) -> str:
    return '"' + part.replace('"', '""') + '"'


def _jsonish(v: Any) -> Any:
    # Nested lists/objects go to PostgreSQL as JSON text (json/jsonb/text arguments).
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def build_call(p: dict[str, Any], allowed: Sequence[str]) -> DBCall:
    """Validate a ``db`` request (pure); ``HandlerError`` explains what is wrong."""
    fn = field_str(p, "function", max_len=200)
    parts = fn.split(".")
    if not (1 <= len(parts) <= 2 and all(_IDENT.match(x) for x in parts)):
        raise HandlerError(f"function {fn!r} is not a function name (name or schema.name)")
    if not any(a == "*" or fnmatch.fnmatchcase(fn, a) for a in allowed):
        raise HandlerError(f"function {fn} is not allowed here")
    returns = field_str(p, "return", "")
    if returns not in RETURNS:
        raise HandlerError(f"field 'return' must be one of '', no, all, one, json; got {returns!r}")
    params = p.get("params", [])
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else []
        except ValueError:
            raise HandlerError("field 'params' is a string but not JSON") from None
    qfn = ".".join(_quote_ident(x) for x in parts)
    if params is None:
        params = []
    if isinstance(params, list):
        if len(params) > _MAX_PARAMS:
            raise HandlerError(f"too many params (at most {_MAX_PARAMS})")
        sql = f"select {qfn}({', '.join(['%s'] * len(params))})"  # as CC's dbhandler
        args: Any = [_jsonish(v) for v in params]
    elif isinstance(params, dict):
        if len(params) > _MAX_PARAMS:
            raise HandlerError(f"too many params (at most {_MAX_PARAMS})")
        for k in params:
            if not _PARAM_KEY.match(k):
                raise HandlerError(f"param name {k!r} is not [A-Za-z0-9_]+")
        sql = f"select {qfn}({', '.join(f'{k} := %({k})s' for k in params)})"
        args = {k: _jsonish(v) for k, v in params.items()}
    else:
        raise HandlerError("field 'params' must be a list, an object or a JSON string of one")
    return DBCall(fn, sql, args, returns, p.get("ident"))


def jsonable(v: Any) -> Any:
    """Database values → JSON (Decimal, dates, UUIDs, bytes become strings)."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)


def _run(cursor: Any, call: DBCall) -> tuple[list[Any], int, str]:
    cursor.execute(call.sql, call.params)
    rows = cursor.fetchall() if cursor.description is not None else []
    return [list(r) for r in rows], cursor.rowcount, cursor.statusmessage or ""


@provider(ICCHandlerFactory)
@implementer(ICCHandler)
class DatabaseHandler(CCHandler):
    handler_name = "database"
    cc_roles = frozenset({"remote"})
    reads_payload = True

    @classmethod
    def parse_config(cls, section: Any, ini: Any, cc: Any) -> DatabaseOptions:
        db = section.get_str("db")
        if not db.strip():
            raise section.error("db", "a libpq connect string or postgresql:// URL")
        return DatabaseOptions(
            db=db,
            allowed_functions=tuple(section.get_list("allowed-functions", [])),
            worker_threads=section.get_int("worker-threads", 10, minimum=1),
            connect_timeout=section.get_int("connect-timeout", 10, minimum=1),
            function=section.get_str("function", "") or None,
            returns=section.get_choice("return", RETURNS, ""),
        )

    def __init__(self, name: str, options: DatabaseOptions, server: Any) -> None:
        super().__init__(name, options, server)
        self.pool: adbapi.ConnectionPool | None = None

    def start(self) -> None:
        # adbapi owns the threads (cp_max bounds concurrent calls); psycopg 3 takes
        # libpq keywords as connect() kwargs.
        self.pool = adbapi.ConnectionPool(
            "psycopg",
            self.options.db,
            autocommit=True,
            connect_timeout=self.options.connect_timeout,
            application_name=f"ccnet-cc-{self.name}"[:63],
            cp_min=1,
            cp_max=self.options.worker_threads,
            cp_reconnect=True,
            cp_noisy=False,
            cp_reactor=self.server.reactor,
        )
        self.pool.start()

    def stop(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()

    def handle(self, request: CCRequest) -> Any:
        p = request.payload or {}
        o = self.options
        if o.function is not None:
            # The whole message is the argument; the payload bytes stay out of the row.
            msg = {k: v for k, v in p.items() if k != "data"}
            msg["blob_size"] = len(request.msg.blob) if request.msg.blob is not None else None
            p = {"req": request.type, "function": o.function, "params": [json.dumps(msg)], "return": o.returns}
            call = build_call(p, (o.function,))
        else:
            call = build_call(p, o.allowed_functions)
        if self.pool is None:
            raise HandlerError("database handler is not running")
        d = self.pool.runInteraction(_run, call)
        d.addCallbacks(self._done, self._failed, callbackArgs=(request, call), errbackArgs=(request, call))
        return d

    def _done(self, result: tuple[list[Any], int, str], request: CCRequest, call: DBCall) -> None:
        rows, rowcount, status = result
        if call.returns in ("", "no"):
            return
        if call.returns == "json":
            if not rows or not rows[0]:
                raise HandlerError(f"function {call.function} returned no row for return = json")
            value = rows[0][0]
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise HandlerError(f"function {call.function} did not return JSON") from None
            if not isinstance(value, dict) or not isinstance(value.get("req"), str) or not valid_type(value["req"]):
                raise HandlerError(f"function {call.function} returned JSON without a valid \"req\"")
            reply = jsonable(value)
            self.server.reply(request, reply.pop("req"), reply)
            return
        data: Any = jsonable(rows) if call.returns == "all" else (jsonable(rows[0]) if rows else None)
        fields: dict[str, Any] = {"data": data, "rowcount": rowcount, "statusmessage": status}
        if call.ident:  # as the original: the key only when the request carried an ident
            fields["ident"] = call.ident
        self.server.reply(request, f"reply.{request.type}", fields)

    def _failed(self, failure: Any, request: CCRequest, call: DBCall) -> None:
        if failure.check(HandlerError):
            failure.raiseException()
        if failure.check(psycopg.Error, adbapi.ConnectionLost):
            log.warn(
                "cc database [{section}]: {fn} failed: {error}",
                section=self.name, fn=call.function, error=failure.getErrorMessage().strip(),
            )
            first = (failure.getErrorMessage().strip().splitlines() or ["database error"])[0]
            raise HandlerError(f"database call {call.function} failed: {first}")
        failure.raiseException()


handler_class = DatabaseHandler
