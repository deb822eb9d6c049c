"""The store: every read and write batchwarden makes, in SQL both dialects run.

`SqlStore` holds the queries; `PostgresStore` and `SqliteStore` supply a
transaction (`Tx`) on their own connection and the few statements that differ
(bulk loading, scratch tables, the leader-row lock). Each public method is
one transaction, run in a worker thread so that trio's event loop never
blocks on the database.

Two kinds of writes:

- user writes (a new job, the cancel of a job not yet submitted) need no
  leadership;
- leader writes take the leader's `term` as a required keyword and run in a
  *fenced* transaction: it first reads the leader row under a share lock and
  aborts with `StaleTerm` unless the term is still the newest. A term bump
  waits for that lock, so no fenced transaction can commit under a term that
  has already been replaced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from batchwarden.errors import ConfigError, Conflict, StaleTerm
from batchwarden.intake import Request
from batchwarden.pricing import NO_PRICES, PriceTable
from batchwarden.states import ItemStatus, JobStatus, sources_of
from batchwarden.store.endings import end_job
from batchwarden.store.queries import (
    BATCH_COLUMNS,
    ITEMS_PAGE,
    JOB_COLUMNS,
    append_results,
    as_datetime,
    batch_from_row,
    insert_job,
    job_from_row,
    move_job,
    now,
    read_detail,
    read_job,
    replayed_job,
    statements,
)
from batchwarden.store.records import (
    ItemRow,
    Job,
    JobDetail,
    Leader,
    PoolStats,
    ProviderBatch,
    ResultRow,
    WriteOutcome,
)
from batchwarden.store.schema import MIGRATIONS, MIGRATIONS_TABLE
from batchwarden.store.tx import Tx

T = TypeVar("T")


class SqlStore:
    """The store interface; subclasses provide `_run` and `close`."""

    dialect: str
    # Prices job documents (and so callbacks) show costs with; see pricing.
    prices: PriceTable = NO_PRICES

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _run(self, work: Callable[[Tx], T], *, write: bool) -> T:
        raise NotImplementedError

    def pool_stats(self) -> PoolStats:
        """Connections open, in use and allowed, for the metrics."""
        raise NotImplementedError

    async def _fenced(self, term: int, work: Callable[[Tx], T]) -> T:
        def fenced(tx: Tx) -> T:
            current = tx.current_term()
            if current != term:
                raise StaleTerm(term, current)
            return work(tx)

        return await self._run(fenced, write=True)

    # -- schema -----------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; return their versions."""
        return await self._run(self._migrate, write=True)

    def _migrate(self, tx: Tx) -> list[int]:
        tx.lock_migrations()
        tx.execute(MIGRATIONS_TABLE)
        applied = {row[0] for row in tx.all("SELECT version FROM schema_migrations")}
        newest = max(m.version for m in MIGRATIONS)
        if applied and max(applied) > newest:
            raise ConfigError(
                f"the database's schema is at version {max(applied)}, newer than"
                f" this batchwarden knows ({newest}): upgrade batchwarden"
            )
        done = []
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            for statement in statements(getattr(migration, self.dialect)):
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at)"
                " VALUES (%s, %s, %s)",
                (migration.version, migration.name, now().isoformat()),
            )
            done.append(migration.version)
        return done

    # -- jobs -------------------------------------------------------------

    async def create_job(
        self,
        requests: Sequence[Request],
        *,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_digest: str | None = None,
    ) -> tuple[Job, bool]:
        """A new job in `created` with its items; (job, created).

        With an `idempotency_key` already used for the same `request_digest`,
        the original job comes back with created=False; used for another
        digest, `Conflict`.
        """

        def create(tx: Tx) -> tuple[Job, bool]:
            job_id = insert_job(
                tx,
                len(requests),
                callback_url,
                metadata,
                idempotency_key,
                request_digest,
            )
            if job_id is None:
                return replayed_job(tx, idempotency_key, request_digest), False
            tx.bulk_insert(
                "items",
                ("job_id", "custom_id", "position", "params"),
                (
                    (job_id, r.custom_id, position, r.params)
                    for position, r in enumerate(requests)
                ),
            )
            return read_job(tx, job_id), True

        return await self._run(create, write=True)

    async def track_batch(
        self,
        provider_batch_id: str,
        *,
        callback_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_digest: str | None = None,
    ) -> tuple[Job, bool]:
        """A new job that follows a provider batch the user created
        elsewhere. It starts `running`, since there is nothing to submit, and
        learns its items from the batch's results. `Conflict` if a job
        already has that provider batch."""

        def track(tx: Tx) -> tuple[Job, bool]:
            job_id = insert_job(
                tx,
                0,
                callback_url,
                metadata,
                idempotency_key,
                request_digest,
                status=JobStatus.RUNNING,
            )
            if job_id is None:
                return replayed_job(tx, idempotency_key, request_digest), False
            added = tx.execute(
                "INSERT INTO provider_batches (job_id, attempt, provider_batch_id,"
                " processing_status, request_count, created_at)"
                " VALUES (%s, 1, %s, 'in_progress', 0, %s)"
                " ON CONFLICT (provider_batch_id) DO NOTHING",
                (job_id, provider_batch_id, now()),
            )
            if not added:
                raise Conflict(
                    f"provider batch {provider_batch_id} already belongs to a job"
                )
            return read_job(tx, job_id), True

        return await self._run(track, write=True)

    async def get_job(self, job_id: str) -> Job:
        return await self._run(lambda tx: read_job(tx, job_id), write=False)

    async def job_detail(self, job_id: str) -> JobDetail:
        return await self._run(
            lambda tx: read_detail(tx, job_id, self.prices), write=False
        )

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Newest first; `before` is the id of the last job already shown."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = %s")
            params.append(status.value)
        if before is not None:
            clauses.append("id < %s")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT %s"
        rows = await self._run(lambda tx: tx.all(sql, (*params, limit)), write=False)
        return [job_from_row(row) for row in rows]

    async def cancel_job(self, job_id: str) -> Job:
        """The user's cancel of a job that has not been submitted yet."""

        def cancel(tx: Tx) -> Job:
            target, sources = JobStatus.CANCELLED, (JobStatus.CREATED,)
            end_job(tx, job_id, target, sources, self.prices)
            return read_job(tx, job_id)

        return await self._run(cancel, write=True)

    async def transition(
        self, job_id: str, target: JobStatus, *, term: int, error: str | None = None
    ) -> Job:
        """A leader's move of a job to `target`, fenced by `term`."""

        def move(tx: Tx) -> Job:
            return move_job(tx, job_id, target, sources_of(target), error=error)

        return await self._fenced(term, move)

    # -- provider batches and items ---------------------------------------

    async def add_provider_batch(
        self,
        job_id: str,
        *,
        attempt: int,
        request_count: int,
        term: int,
        provider_batch_id: str | None = None,
        first_position: int | None = None,
        processing_status: str = "in_progress",
    ) -> ProviderBatch:
        """Record a provider batch of a job; the submitter records a part as
        `creating` (no provider id yet) before creating it at the provider."""

        def add(tx: Tx) -> ProviderBatch:
            row = tx.one(
                "INSERT INTO provider_batches (job_id, attempt, provider_batch_id,"
                " processing_status, request_count, first_position, created_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {BATCH_COLUMNS}",
                (
                    job_id,
                    attempt,
                    provider_batch_id,
                    processing_status,
                    request_count,
                    first_position,
                    now(),
                ),
            )
            return batch_from_row(row)

        return await self._fenced(term, add)

    async def write_results(
        self,
        job_id: str,
        batch_id: int,
        attempt: int,
        rows: Sequence[ResultRow],
        *,
        term: int,
    ) -> WriteOutcome:
        """Store a chunk of item results, idempotently, in one transaction."""

        def write(tx: Tx) -> WriteOutcome:
            return append_results(tx, job_id, batch_id, attempt, rows, term)

        return await self._fenced(term, write)

    async def iter_items(
        self, job_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[ItemRow]:
        """Every item of a job in submission order, read a chunk at a time."""
        await self.get_job(job_id)
        position = -1
        while True:
            rows = await self._run(
                lambda tx, p=position: tx.all(ITEMS_PAGE, (job_id, p, chunk)),
                write=False,
            )
            for row in rows:
                status = ItemStatus(row[2]) if row[2] else ItemStatus.PENDING
                yield ItemRow(row[1], status, row[3], row[4] or 0)
            if len(rows) < chunk:
                return
            position = rows[-1][0]

    # -- leadership -------------------------------------------------------

    async def ping(self) -> None:
        """Return if the database answers a query."""
        await self._run(lambda tx: tx.one("SELECT 1"), write=False)

    async def end_sessions(self, instance_id: str) -> int:
        """End another replica's database sessions (PostgreSQL only), so that
        a stale leader's open transaction cannot delay a term bump."""
        return 0

    async def leader(self) -> Leader:
        row = await self._run(
            lambda tx: tx.one("SELECT holder, term, since FROM leader WHERE id = 1"),
            write=False,
        )
        return Leader(row[0], row[1], as_datetime(row[2]))

    async def bump_term(self, holder: str) -> int:
        """Start a new term held by `holder`; waits for open fenced writes."""

        def bump(tx: Tx) -> int:
            stamp = now()
            (term,) = tx.one(
                "UPDATE leader SET term = term + 1, holder = %s, since = %s"
                " WHERE id = 1 RETURNING term",
                (holder, stamp),
            )
            tx.execute(
                "INSERT INTO leader_terms (term, holder, since) VALUES (%s, %s, %s)",
                (term, holder, stamp),
            )
            return term

        return await self._run(bump, write=True)
