"""Storage: one interface (`SqlStore`), on PostgreSQL or on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from batchwarden.pricing import NO_PRICES, PriceTable
from batchwarden.store.base import SqlStore
from batchwarden.store.postgres import PostgresStore
from batchwarden.store.sqlite import SqliteStore

__all__ = ["PostgresStore", "SqlStore", "SqliteStore", "connect", "open_store"]


def connect(url: str, *, instance_id: str, prices: PriceTable = NO_PRICES) -> SqlStore:
    """A store for a `postgresql://` or `sqlite:///` URL, not yet opened."""
    if url.startswith("sqlite:///"):
        store: SqlStore = SqliteStore(url.removeprefix("sqlite:///"))
    else:
        store = PostgresStore(url, instance_id=instance_id)
    store.prices = prices
    return store


@asynccontextmanager
async def open_store(
    url: str,
    *,
    instance_id: str,
    migrate: bool = True,
    prices: PriceTable = NO_PRICES,
) -> AsyncIterator[SqlStore]:
    """An open store, migrated unless told otherwise, closed on exit."""
    store = connect(url, instance_id=instance_id, prices=prices)
    await store.open()
    try:
        if migrate:
            await store.migrate()
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
