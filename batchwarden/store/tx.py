"""The transaction a store hands to its queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class Tx(Protocol):
    """One open transaction on one connection; SQL uses %s placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert many rows at once (COPY on PostgreSQL)."""

    def try_bulk_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> bool:
        """`bulk_insert` inside a savepoint; False, with nothing inserted, if
        a row repeats a key already in the table."""

    def count_unknown_items(self, job_id: str, custom_ids: Sequence[str]) -> int:
        """How many of `custom_ids` the job has no item for."""

    def scratch_table(self, name: str, columns_sql: str) -> None:
        """An empty temporary table, private to this transaction."""

    def prefer_index_probes(self) -> None:
        """Plan the next joins of a small chunk against a large table as
        index probes, whatever the (often stale) statistics suggest."""

    def current_term(self) -> int:
        """The leader row's term, locked against a bump until commit."""

    def lock_migrations(self) -> None:
        """Keep other processes from migrating until this transaction ends."""
