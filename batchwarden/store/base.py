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

import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from batchwarden import ids
from batchwarden.errors import (
    ConfigError,
    Conflict,
    IllegalTransition,
    JobNotFound,
    StaleTerm,
)
from batchwarden.intake import Request
from batchwarden.states import ItemStatus, JobStatus, sources_of
from batchwarden.store.records import (
    USAGE_KINDS,
    CallbackState,
    ItemRow,
    Job,
    JobDetail,
    Leader,
    ProviderBatch,
    ResultRow,
    Usage,
    WriteOutcome,
)
from batchwarden.store.schema import MIGRATIONS, MIGRATIONS_TABLE

T = TypeVar("T")

JOB_COLUMNS = (
    "id, status, item_count, callback_url, metadata, error,"
    " created_at, updated_at, finished_at, cancel_requested_at"
)
BATCH_COLUMNS = (
    "id, job_id, attempt, provider_batch_id, processing_status, request_count,"
    " request_counts, created_at, ended_at, results_stored_at, first_position"
)
INCOMING_COLUMNS = ("custom_id", "status", "result", *USAGE_KINDS, "model")


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

    def scratch_table(self, name: str, columns_sql: str) -> None:
        """An empty temporary table, private to this transaction."""

    def prefer_index_probes(self) -> None:
        """Plan the next joins of a small chunk against a large table as
        index probes, whatever the (often stale) statistics suggest."""

    def current_term(self) -> int:
        """The leader row's term, locked against a bump until commit."""

    def lock_migrations(self) -> None:
        """Keep other processes from migrating until this transaction ends."""


def now() -> datetime:
    return datetime.now(UTC)


def as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


class SqlStore:
    """The store interface; subclasses provide `_run` and `close`."""

    dialect: str

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _run(self, work: Callable[[Tx], T], *, write: bool) -> T:
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
            for statement in _statements(getattr(migration, self.dialect)):
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
            stamp = now()
            job_id = ids.new_job_id()
            changed = tx.execute(
                "INSERT INTO jobs (id, status, item_count, callback_url, metadata,"
                " idempotency_key, request_digest, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (
                    job_id,
                    JobStatus.CREATED.value,
                    len(requests),
                    callback_url,
                    json.dumps(metadata or {}),
                    idempotency_key,
                    request_digest,
                    stamp,
                    stamp,
                ),
            )
            if not changed:
                return _replayed(tx, idempotency_key, request_digest), False
            tx.bulk_insert(
                "items",
                ("job_id", "custom_id", "position", "params"),
                (
                    (job_id, r.custom_id, position, r.params)
                    for position, r in enumerate(requests)
                ),
            )
            return _read_job(tx, job_id), True

        return await self._run(create, write=True)

    async def get_job(self, job_id: str) -> Job:
        return await self._run(lambda tx: _read_job(tx, job_id), write=False)

    async def job_detail(self, job_id: str) -> JobDetail:
        return await self._run(lambda tx: _read_detail(tx, job_id), write=False)

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
        return [_job(row) for row in rows]

    async def cancel_job(self, job_id: str) -> Job:
        """The user's cancel of a job that has not been submitted yet."""

        def cancel(tx: Tx) -> Job:
            return _move(tx, job_id, JobStatus.CANCELLED, sources=(JobStatus.CREATED,))

        return await self._run(cancel, write=True)

    async def transition(
        self, job_id: str, target: JobStatus, *, term: int, error: str | None = None
    ) -> Job:
        """A leader's move of a job to `target`, fenced by `term`."""

        def move(tx: Tx) -> Job:
            return _move(tx, job_id, target, sources_of(target), error=error)

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
    ) -> ProviderBatch:
        def add(tx: Tx) -> ProviderBatch:
            row = tx.one(
                "INSERT INTO provider_batches (job_id, attempt, provider_batch_id,"
                " processing_status, request_count, created_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {BATCH_COLUMNS}",
                (
                    job_id,
                    attempt,
                    provider_batch_id,
                    "in_progress",
                    request_count,
                    now(),
                ),
            )
            return _batch(row)

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
                lambda tx, p=position: tx.all(_ITEMS_PAGE, (job_id, p, chunk)),
                write=False,
            )
            for row in rows:
                status = ItemStatus(row[2]) if row[2] else ItemStatus.PENDING
                yield ItemRow(row[1], status, row[3])
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


def append_results(
    tx: Tx,
    job_id: str,
    batch_id: int,
    attempt: int,
    rows: Sequence[ResultRow],
    term: int,
) -> WriteOutcome:
    """Rows load into a scratch table, then one set-based INSERT appends
    those whose item exists and is not yet stored for this attempt."""
    tx.scratch_table("incoming_results", _INCOMING_SQL)
    tx.bulk_insert("incoming_results", INCOMING_COLUMNS, map(_incoming, rows))
    tx.prefer_index_probes()
    stored = tx.execute(_APPEND_RESULTS, (job_id, attempt, batch_id, term, job_id))
    if stored == len(rows):
        return WriteOutcome(stored, 0, 0)
    unknown = tx.one(_COUNT_UNKNOWN, (job_id,))[0]
    return WriteOutcome(stored, len(rows) - stored - unknown, unknown)


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _job(row: tuple) -> Job:
    return Job(
        id=row[0],
        status=JobStatus(row[1]),
        item_count=row[2],
        callback_url=row[3],
        metadata=json.loads(row[4]),
        error=row[5],
        created_at=as_datetime(row[6]),
        updated_at=as_datetime(row[7]),
        finished_at=as_datetime(row[8]),
        cancel_requested_at=as_datetime(row[9]),
    )


def _batch(row: tuple) -> ProviderBatch:
    return ProviderBatch(
        id=row[0],
        job_id=row[1],
        attempt=row[2],
        provider_batch_id=row[3],
        processing_status=row[4],
        request_count=row[5],
        request_counts=json.loads(row[6]) if row[6] else None,
        created_at=as_datetime(row[7]),
        ended_at=as_datetime(row[8]),
        results_stored_at=as_datetime(row[9]),
        first_position=row[10],
    )


def _read_job(tx: Tx, job_id: str) -> Job:
    row = tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
    if row is None:
        raise JobNotFound(job_id)
    return _job(row)


def _replayed(tx: Tx, key: str | None, digest: str | None) -> Job:
    row = tx.one(
        f"SELECT {JOB_COLUMNS}, request_digest FROM jobs WHERE idempotency_key = %s",
        (key,),
    )
    if row[-1] != digest:
        raise Conflict(
            f"idempotency key {key!r} was used for a job with a different body"
        )
    return _job(row[:-1])


def _move(
    tx: Tx,
    job_id: str,
    target: JobStatus,
    sources: Sequence[JobStatus],
    *,
    error: str | None = None,
) -> Job:
    """One guarded UPDATE; on no match, say why (unknown job or illegal)."""
    if not sources:
        current = _read_job(tx, job_id).status
        raise IllegalTransition(job_id, current.value, target.value)
    stamp = now()
    finished = stamp if target.terminal else None
    marks = ", ".join("%s" for _ in sources)
    row = tx.one(
        "UPDATE jobs SET status = %s, updated_at = %s,"
        " finished_at = COALESCE(%s, finished_at), error = COALESCE(%s, error)"
        f" WHERE id = %s AND status IN ({marks}) RETURNING {JOB_COLUMNS}",
        (target.value, stamp, finished, error, job_id, *(s.value for s in sources)),
    )
    if row is not None:
        return _job(row)
    current = _read_job(tx, job_id).status
    raise IllegalTransition(job_id, current.value, target.value)


def _read_detail(tx: Tx, job_id: str) -> JobDetail:
    job = _read_job(tx, job_id)
    counts = {status: 0 for status in ItemStatus}
    for status, count in tx.all(_LATEST_COUNTS, (job_id,)):
        counts[ItemStatus(status)] = count
    counts[ItemStatus.PENDING] = job.item_count - sum(counts.values())
    sums = tx.one(_USAGE_SUMS, (job_id,))
    batches = tx.all(
        f"SELECT {BATCH_COLUMNS} FROM provider_batches WHERE job_id = %s ORDER BY id",
        (job_id,),
    )
    return JobDetail(
        job=job,
        item_counts=counts,
        usage=Usage(*(int(value or 0) for value in sums)),
        provider_batches=[_batch(row) for row in batches],
        callback=_read_callback(tx, job_id),
    )


def _read_callback(tx: Tx, job_id: str) -> CallbackState | None:
    row = tx.one(
        "SELECT id, url, status, attempts, last_error, delivered_at"
        " FROM callbacks WHERE job_id = %s",
        (job_id,),
    )
    if row is None:
        return None
    return CallbackState(*row[:5], delivered_at=as_datetime(row[5]))


def _incoming(row: ResultRow) -> tuple:
    usage = row.usage
    return (
        row.custom_id,
        row.status.value,
        row.result,
        *(getattr(usage, kind) for kind in USAGE_KINDS),
        row.model,
    )


_INCOMING_SQL = (
    "custom_id text, status text, result text, input_tokens bigint,"
    " output_tokens bigint, cache_creation_input_tokens bigint,"
    " cache_read_input_tokens bigint, model text"
)

_APPEND_RESULTS = """
INSERT INTO item_results (job_id, custom_id, attempt, batch_id, status, result,
    input_tokens, output_tokens, cache_creation_input_tokens,
    cache_read_input_tokens, model, term)
SELECT %s, n.custom_id, %s, %s, n.status, n.result, n.input_tokens,
    n.output_tokens, n.cache_creation_input_tokens, n.cache_read_input_tokens,
    n.model, %s
FROM incoming_results n
WHERE EXISTS (
    SELECT 1 FROM items i WHERE i.job_id = %s AND i.custom_id = n.custom_id
)
ON CONFLICT DO NOTHING
"""

_COUNT_UNKNOWN = """
SELECT count(*) FROM incoming_results n
WHERE NOT EXISTS (
    SELECT 1 FROM items i WHERE i.job_id = %s AND i.custom_id = n.custom_id
)
"""

# An item's status is that of its latest attempt's result.
_LATEST = """
NOT EXISTS (
    SELECT 1 FROM item_results later
    WHERE later.job_id = r.job_id AND later.custom_id = r.custom_id
      AND later.attempt > r.attempt
)
"""

_LATEST_COUNTS = f"""
SELECT r.status, count(*) FROM item_results r
WHERE r.job_id = %s AND {_LATEST}
GROUP BY r.status
"""

# Usage counts every attempt: tokens spent on a retried item were billed too.
_USAGE_SUMS = f"""
SELECT {", ".join(f"sum({kind})" for kind in USAGE_KINDS)}
FROM item_results WHERE job_id = %s
"""

_ITEMS_PAGE = f"""
SELECT i.position, i.custom_id, r.status, r.result
FROM items i
LEFT JOIN item_results r
    ON r.job_id = i.job_id AND r.custom_id = i.custom_id AND {_LATEST}
WHERE i.job_id = %s AND i.position > %s
ORDER BY i.position
LIMIT %s
"""
