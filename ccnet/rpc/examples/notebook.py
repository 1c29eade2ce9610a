"""``Framework/Notebook``: a shared key-value notebook kept in the ccnet store.

::

    [rpc:Framework/Notebook]
    class = ccnet.rpc.examples.notebook:NotebookService
    MaxValueSize = 65536          ; bytes of JEncoded value (default 64 KB)

Anyone registered may ``get`` and ``list``; ``set`` and ``delete`` need ``NormalUser``.
A key belongs to whoever wrote it first: others may not overwrite or delete it, except
holders of ``CSAdministrator``.  Works on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from twisted.internet.defer import Deferred

from ccnet.rpc import S_ERROR, S_OK, RPCService
from ccnet.rpc.codec import CodecError, decode, encode

__all__ = ["NotebookService"]

ADMIN = "CSAdministrator"

SCHEMA = [
    "CREATE TABLE rpc_notebook ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL, author TEXT NOT NULL, updated TEXT NOT NULL)",
]


class NotebookService(RPCService):
    auth_get: ClassVar[list[str]] = ["authenticated"]
    auth_list: ClassVar[list[str]] = ["authenticated"]
    auth_set: ClassVar[list[str]] = ["NormalUser"]
    auth_delete: ClassVar[list[str]] = ["NormalUser"]
    types_get: ClassVar[list[Any]] = [str]
    types_set: ClassVar[list[Any]] = [str]
    types_delete: ClassVar[list[Any]] = [str]
    max_value_size: ClassVar[int] = 64 * 1024

    @classmethod
    def initializeHandler(cls, serviceInfo: dict[str, Any]) -> Deferred[int]:  # noqa: N802, N803
        cls.max_value_size = cls.srv_getCSOption("MaxValueSize", 64 * 1024)
        return cls.runtime.store.migrate("rpc.notebook", SCHEMA)  # type: ignore[no-any-return]

    @property
    def store(self) -> Any:
        return self.runtime.store

    def export_get(self, key: str) -> Deferred[dict[str, Any]]:
        d = self.store.run("SELECT value, author, updated FROM rpc_notebook WHERE key = ?", (key,))

        def found(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
            if not rows:
                return S_ERROR(f"no such key: {key}")
            value, author, updated = rows[0]
            return S_OK({"value": decode(value), "author": author, "updated": updated})

        return d.addCallback(found)

    def export_list(self, prefix: str = "") -> Deferred[dict[str, Any]]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        d = self.store.run(
            "SELECT key FROM rpc_notebook WHERE key LIKE ? ESCAPE '\\' ORDER BY key", (pattern,)
        )
        return d.addCallback(lambda rows: S_OK([r[0] for r in rows]))

    def export_set(self, key: str, value: Any) -> Any:
        try:
            text = encode(value)
        except CodecError as exc:
            return S_ERROR(str(exc))
        if len(text.encode("utf-8")) > self.max_value_size:
            return S_ERROR(f"value larger than {self.max_value_size} bytes")
        author = self.getUserName()
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        admin = ADMIN in self.getProperties()
        sql = self.store.sql(
            "INSERT INTO rpc_notebook (key, value, author, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated"
            + ("" if admin else " WHERE rpc_notebook.author = excluded.author")
        )

        def work(cursor: Any) -> int:
            cursor.execute(sql, (key, text, author, now))
            return int(cursor.rowcount)

        d = self.store.run_interaction(work)
        return d.addCallback(
            lambda n: S_OK(key) if n else S_ERROR(f"{key} belongs to another user")
        )

    def export_delete(self, key: str) -> Deferred[dict[str, Any]]:
        admin = ADMIN in self.getProperties()
        sql = "DELETE FROM rpc_notebook WHERE key = ?" + ("" if admin else " AND author = ?")
        params: tuple[Any, ...] = (key,) if admin else (key, self.getUserName())
        statement = self.store.sql(sql)

        def work(cursor: Any) -> int:
            cursor.execute(statement, params)
            return int(cursor.rowcount)

        d = self.store.run_interaction(work)
        return d.addCallback(
            lambda n: S_OK(key) if n else S_ERROR(f"no key {key} of yours to delete")
        )
