"""Storage: one interface (`SqlStore`), on PostgreSQL or on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from batchwarden.store.base import SqlStore
from batchwarden.store.postgres import PostgresStore
from batchwarden.store.sqlite import SqliteStore

__all__ = ["PostgresStore", "SqlStore", "SqliteStore", "connect", "open_store"]


def connect(url: str, *, instance_id: str) -> SqlStore:
    """A store for a `postgresql://` or `sqlite:///` URL, not yet opened."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    return PostgresStore(url, instance_id=instance_id)


@asynccontextmanager
async def open_store(
    url: str, *, instance_id: str, migrate: bool = True
) -> AsyncIterator[SqlStore]:
    """An open store, migrated unless told otherwise, closed on exit."""
    store = connect(url, instance_id=instance_id)
    await store.open()
    try:
        if migrate:
            await store.migrate()
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
