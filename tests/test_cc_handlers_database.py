"""database handler against a real PostgreSQL (CCNET_TEST_PG_DSN)."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from ccnet.cc.handler import HandlerError
from ccnet.cc.handlers.database import build_call
from tests.support import PG_DSN, free_port
from tests.test_cc_handlers_common import ServerMixin, body, reply_body

CC = """
[cc]
cc-socket = tcp://127.0.0.1:*
cc-role = remote
stats-period = 0
[routes]
db = db
[db]
handler = {handler}
db = {dsn}
allowed-functions = {allowed}
worker-threads = 2
connect-timeout = 2
"""


def _pg(sql: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql)


class BuildCallTests(TestCase):
    def test_positional_named_and_json_string_params(self) -> None:
        c = build_call({"req": "db", "function": "s.f", "params": [1, "a"], "return": "all"}, ["*"])
        self.assertEqual(c.sql, 'select "s"."f"(%s, %s)')
        c = build_call({"req": "db", "function": "f", "params": '{"a": 1}'}, ["f"])
        self.assertEqual((c.sql, c.params), ('select "f"(a := %(a)s)', {"a": 1}))

    def test_bad_requests_are_refused_with_reasons(self) -> None:
        cases = [
            ({}, "missing field 'function'"),
            ({"function": "f; drop table x"}, "is not a function name"),
            ({"function": "other"}, "not allowed"),
            ({"function": "f", "params": {"a b": 1}}, "param name"),
            ({"function": "f", "params": 5}, "must be a list"),
            ({"function": "f", "return": "many"}, "field 'return'"),
            ({"function": "f", "params": "{nope"}, "not JSON"),
        ]
        for p, why in cases:
            e = self.assertRaises(HandlerError, build_call, {"req": "db", **p}, ["f"])
            self.assertIn(why, str(e))

    def test_no_allowed_functions_allows_nothing(self) -> None:
        self.assertRaises(HandlerError, build_call, {"req": "db", "function": "f"}, [])


class DatabaseHandlerTests(ServerMixin, TestCase):
    def setUp(self) -> None:
        self.schema = "cct_" + secrets.token_hex(4)
        try:
            _pg(f"create schema {self.schema}")
        except psycopg.OperationalError as exc:
            self.skipTest(f"PostgreSQL not reachable at {PG_DSN}: {exc}")
        self.addCleanup(_pg, f"drop schema {self.schema} cascade")
        s = self.schema
        _pg(f"create table {s}.seen (host text, n int)")
        _pg(f"""create function {s}.add(h text, n int) returns table(host text, total bigint)
                language sql as $$ insert into {s}.seen values (h, n);
                select h, sum(seen.n) from {s}.seen where seen.host = h $$""")
        _pg(f"""create function {s}.as_json(x int) returns json language sql
                as $$ select json_build_object('req', 'reply.custom', 'double', x * 2) $$""")
        _pg(f"""create function {s}.record(m json) returns void language sql as $$
                insert into {s}.seen values (m->>'filename', (m->>'blob_size')::int) $$""")
        _pg(f"create function {s}.nojson() returns json language sql as $$ select '{{\"x\": 1}}'::json $$")

    def server(self, dsn: str = PG_DSN, handler: str = "database", extra: str = "") -> Any:
        text = CC.format(dsn=dsn, allowed=f"{self.schema}.*", handler=handler) + extra
        return self.start_server(text.replace("db = db\n", "db = db\npub = db\n"))

    @defer.inlineCallbacks
    def test_configured_function_gets_every_message_as_json(self) -> Any:
        srv = self.server(extra=f"function = {self.schema}.record\nreturn = all\n")
        msg = body("pub.infofile", filename="info.1", mtime=1.0, comp="", data="")
        (rep,) = yield self.ask(srv, [[b"", b"pub.infofile", msg, b"", b"12345"]])
        self.assertEqual(rep[1], b"reply.pub.infofile")
        rows = yield threads.deferToThread(self._rows)
        self.assertEqual(rows, [("info.1", 5)])

    @defer.inlineCallbacks
    def test_function_result_becomes_reply_and_row_is_stored(self) -> Any:
        srv = self.server()
        msg = body("db.stats", function=f"{self.schema}.add", params=["h1", 5], ident="x1", **{"return": "all"})
        (rep,) = yield self.ask(srv, [[b"Q000001", b"", b"db.stats", msg, b""]])
        self.assertEqual(rep[:3], [b"Q000001", b"", b"reply.db.stats"])
        d = reply_body(rep)
        # `select fn(...)` as the original: one column holding the function's record.
        self.assertEqual(d["data"], [[["h1", "5"]]])
        self.assertEqual((d["rowcount"], d["ident"]), (1, "x1"))
        self.assertEqual(d["statusmessage"], "SELECT 1")
        rows = yield threads.deferToThread(self._rows)
        self.assertEqual(rows, [("h1", 5)])

    def _rows(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(PG_DSN) as conn:
            return conn.execute(f"select host, n from {self.schema}.seen").fetchall()

    @defer.inlineCallbacks
    def test_named_params_and_return_one_with_original_name_dbhandler(self) -> Any:
        srv = self.server(handler="dbhandler")
        msg = body("db", function=f"{self.schema}.add", params={"h": "h2", "n": 3}, **{"return": "one"})
        (rep,) = yield self.ask(srv, [[b"", b"db", msg, b""]])
        self.assertEqual(reply_body(rep)["data"], [["h2", "3"]])
        self.assertNotIn("ident", reply_body(rep))  # as the original: no ident asked, none sent

    @defer.inlineCallbacks
    def test_return_json_makes_the_function_result_the_reply(self) -> Any:
        srv = self.server()
        msg = body("db", function=f"{self.schema}.as_json", params=[21], **{"return": "json"})
        (rep,) = yield self.ask(srv, [[b"", b"db", msg, b""]])
        self.assertEqual(rep[1], b"reply.custom")
        self.assertEqual(reply_body(rep)["double"], 42)

    @defer.inlineCallbacks
    def test_return_json_without_req_and_sql_errors_get_error_replies(self) -> Any:
        srv = self.server()
        reps = yield self.ask(srv, [
            [b"", b"db", body("db", function=f"{self.schema}.nojson", **{"return": "json"}), b""],
            [b"", b"db", body("db", function=f"{self.schema}.add", params=["h"], **{"return": "all"}), b""],
            [b"", b"db", body("db", function="public.secret", **{"return": "all"}), b""],
        ], replies=3)
        msgs = sorted(reply_body(r)["msg"] for r in reps)
        self.assertEqual([r[1] for r in reps], [b"error"] * 3)
        self.assertTrue(any("without a valid \"req\"" in m for m in msgs), msgs)
        self.assertTrue(any("database call" in m and "failed" in m for m in msgs), msgs)
        self.assertTrue(any("public.secret is not allowed" in m for m in msgs), msgs)

    @defer.inlineCallbacks
    def test_database_down_is_an_error_reply_and_server_keeps_serving(self) -> Any:
        srv = self.server(dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/test")
        msg = body("db", function=f"{self.schema}.add", params=["h", 1], **{"return": "all"})
        (rep,) = yield self.ask(srv, [[b"", b"db", msg, b""]])
        self.assertEqual(rep[1], b"error")
        self.assertIn("failed", reply_body(rep)["msg"])
        (rep,) = yield self.ask(srv, [[b"", b"db", msg, b""]])
        self.assertEqual(rep[1], b"error")

    @defer.inlineCallbacks
    def test_lost_connection_is_reopened(self) -> Any:
        srv = self.server()
        msg = body("db", function=f"{self.schema}.add", params=["h3", 1], **{"return": "all"})
        (rep,) = yield self.ask(srv, [[b"", b"db", msg, b""]])
        self.assertEqual(rep[1], b"reply.db")
        yield threads.deferToThread(
            _pg, "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'ccnet-cc-db'"
        )
        outcomes = []
        for _ in range(3):
            (rep,) = yield self.ask(srv, [[b"", b"db", msg, b""]])
            outcomes.append(rep[1])
        # At most the call that met the dead connection fails; then it works again.
        self.assertEqual(outcomes[-1], b"reply.db")
        self.assertIn(outcomes[0], (b"error", b"reply.db"))
        # adbapi logs the failed rollback that made it reconnect.
        self.flushLoggedErrors(psycopg.OperationalError, adbapi.ConnectionLost)
