"""The Framework/Notebook example on both store backends (SQLite file, real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial import unittest

from ccnet.rpc import RPCClient
from ccnet.store import Store
from tests.support import PG_DSN
from tests.test_rpc_fixtures import start_rpc_site

NOTEBOOK = """
[rpc:Framework/Notebook]
class = ccnet.rpc.examples.notebook:NotebookService
MaxValueSize = 200
"""


class NotebookMixin:
    store_url: str

    async def _store(self) -> Store:
        from twisted.internet import reactor

        store = Store.open(self.store_url, reactor)
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        if await _table_exists(store):
            await store.run("DELETE FROM rpc_notebook")
        return store

    def client(self, site: Any, who: str) -> RPCClient:
        pki = site.pki
        c = RPCClient(site.url("Framework/Notebook"), cert=pki.cert(who), key=pki.key(who), ca=pki.ca_cert)
        self.addCleanup(c.close)  # type: ignore[attr-defined]
        return c

    async def test_owner_rules_and_value_types(self) -> None:
        store = await self._store()
        site = start_rpc_site(self, NOTEBOOK, store=store)  # type: ignore[arg-type]
        user, admin = self.client(site, "client"), self.client(site, "admin")
        check: Any = self
        check.assertTrue((await user.set("a_1", {"when": (1, 2), "bytes": b"\x01"}))["OK"])
        check.assertTrue((await user.set("a%2", "x"))["OK"])
        check.assertEqual((await user.get("a_1"))["Value"]["value"], {"when": [1, 2], "bytes": b"\x01"})
        # LIKE wildcards in the prefix are literal.
        check.assertEqual((await admin.list("a_"))["Value"], ["a_1"])
        check.assertEqual((await admin.list("a"))["Value"], ["a%2", "a_1"])
        check.assertFalse((await admin.set("big", "y" * 300))["OK"])
        check.assertTrue((await admin.set("mine", 1))["OK"])
        check.assertFalse((await user.set("mine", 2))["OK"])
        check.assertFalse((await user.delete("mine"))["OK"])
        check.assertTrue((await admin.delete("a_1"))["OK"])
        check.assertEqual((await user.list())["Value"], ["a%2", "mine"])
        rows = await store.run("SELECT author FROM rpc_notebook WHERE key = ?", ("mine",))
        check.assertEqual(rows, [("admin",)])


async def _table_exists(store: Store) -> bool:
    try:
        await store.run("SELECT 1 FROM rpc_notebook WHERE 1 = 0")
    except Exception:  # noqa: BLE001 (either backend's "no such table")
        return False
    return True


class SQLiteNotebookTests(NotebookMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.store_url = f"sqlite:///{Path(self.mktemp()).absolute()}/notebook.db"


class PostgreSQLNotebookTests(NotebookMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.store_url = PG_DSN
