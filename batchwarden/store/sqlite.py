"""The store on SQLite, through the standard library: the embedded default.

One connection, used by one worker thread at a time (a limiter of one):
SQLite serialises writers anyway, and one connection keeps every statement
of a transaction on the same handle. Write transactions start with
`BEGIN IMMEDIATE`, which takes the database's write lock up front; that lock
is what fences a leader's writes against a term bump from another process.
WAL mode lets the CLI read while `batchwarden run` writes.

Timestamps are stored as ISO 8601 text in UTC, which sorts by time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from batchwarden.errors import StoreUnavailable
from batchwarden.store.pipeline import PipelineStore
from batchwarden.store.records import PoolStats
from batchwarden.store.tx import Tx

T = TypeVar("T")

sqlite3.register_adapter(
    datetime, lambda value: value.isoformat(timespec="microseconds")
)


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("%s", "?")


class SqliteTx(Tx):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._connection.execute(_placeholders(sql), params).rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self._connection.execute(_placeholders(sql), params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._connection.execute(_placeholders(sql), params).fetchall()

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        marks = ", ".join("?" for _ in columns)
        self._connection.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
        )

    def try_bulk_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> bool:
        self._connection.execute("SAVEPOINT bulk")
        try:
            self.bulk_insert(table, columns, rows)
        except sqlite3.IntegrityError:
            self._connection.execute("ROLLBACK TO SAVEPOINT bulk")
            self._connection.execute("RELEASE SAVEPOINT bulk")
            return False
        self._connection.execute("RELEASE SAVEPOINT bulk")
        return True

    def count_unknown_items(self, job_id: str, custom_ids: Sequence[str]) -> int:
        return self.one(
            "SELECT count(*) FROM json_each(%s) AS c"
            " WHERE NOT EXISTS (SELECT 1 FROM items i"
            " WHERE i.job_id = %s AND i.custom_id = c.value)",
            (json.dumps(list(custom_ids)), job_id),
        )[0]

    def scratch_table(self, name: str, columns_sql: str) -> None:
        self._connection.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns_sql})"
        )
        self._connection.execute(f"DELETE FROM {name}")

    def prefer_index_probes(self) -> None:
        """SQLite joins through indexes on its own."""

    def current_term(self) -> int:
        return self.one("SELECT term FROM leader WHERE id = 1")[0]

    def lock_migrations(self) -> None:
        """BEGIN IMMEDIATE already holds the database's write lock."""


class SqliteStore(PipelineStore):
    dialect = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_s,
        )
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = NORMAL")
        self._connection.execute("PRAGMA foreign_keys = ON")
        self._limiter = trio.CapacityLimiter(1)

    async def open(self) -> None:
        """Connected in the constructor; here for symmetry with PostgreSQL."""

    async def close(self) -> None:
        async with self._limiter:
            self._connection.close()

    def pool_stats(self) -> PoolStats:
        return PoolStats(1, int(self._limiter.borrowed_tokens), 1)

    async def _run(self, work: Callable[[Tx], T], *, write: bool) -> T:
        try:
            return await trio.to_thread.run_sync(
                partial(self._work, work, write),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
        except trio.Cancelled:
            self._connection.interrupt()
            raise

    def _work(self, work: Callable[[Tx], T], write: bool) -> T:
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from None
        try:
            result = work(SqliteTx(connection))
            connection.execute("COMMIT")
            return result
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
