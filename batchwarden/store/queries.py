"""SQL and row helpers shared by the store's transactions.

Each helper runs inside a transaction it is handed (`Tx`); none opens one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from batchwarden import ids
from batchwarden.errors import Conflict, IllegalTransition, JobNotFound
from batchwarden.pricing import NO_PRICES, PriceTable
from batchwarden.states import TRANSIENT_ERRORS, ItemStatus, JobStatus
from batchwarden.store.records import (
    USAGE_KINDS,
    CallbackState,
    Job,
    JobDetail,
    ProviderBatch,
    ResultRow,
    Tally,
    Usage,
    WriteOutcome,
)
from batchwarden.store.tx import Tx

JOB_COLUMNS = (
    "id, status, item_count, callback_url, metadata, error,"
    " created_at, updated_at, finished_at, cancel_requested_at"
)
BATCH_COLUMNS = (
    "id, job_id, attempt, provider_batch_id, processing_status, request_count,"
    " request_counts, created_at, ended_at, results_stored_at, first_position"
)
INCOMING_COLUMNS = (
    "custom_id",
    "status",
    "result",
    *USAGE_KINDS,
    "model",
    "error_type",
)


def now() -> datetime:
    return datetime.now(UTC)


def as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def append_results(
    tx: Tx,
    job_id: str,
    batch_id: int,
    attempt: int,
    rows: Sequence[ResultRow],
    term: int,
    *,
    adopt_items: bool = False,
) -> WriteOutcome:
    """A chunk's first fetch goes straight into `item_results` (one COPY).
    Otherwise (some rows repeat stored ones, or name custom_ids the job
    lacks) the rows load into a scratch table, then one set-based INSERT
    appends those whose item exists and is not yet stored for this attempt.
    With `adopt_items` (a tracked provider batch), results of custom_ids the
    job does not know yet become its items first."""
    if rows and not adopt_items:
        fresh = _append_fresh(tx, job_id, batch_id, attempt, rows, term)
        if fresh is not None:
            return fresh
    tx.scratch_table("incoming_results", _INCOMING_SQL)
    tx.bulk_insert("incoming_results", INCOMING_COLUMNS, map(incoming_row, rows))
    tx.prefer_index_probes()
    if adopt_items:
        tx.execute(_ADOPT_ITEMS, (job_id, job_id, job_id))
        tx.execute(_COUNT_ITEMS, (job_id, job_id))
    returned = tx.all(_APPEND_RESULTS, (job_id, attempt, batch_id, term, job_id))
    stored = len(returned)
    tally = Tally.of(
        (status, model, Usage(*usage)) for status, model, *usage in returned
    )
    if stored == len(rows):
        return WriteOutcome(stored, 0, 0, tally)
    unknown = tx.one(_COUNT_UNKNOWN, (job_id,))[0]
    return WriteOutcome(stored, len(rows) - stored - unknown, unknown, tally)


def _append_fresh(
    tx: Tx,
    job_id: str,
    batch_id: int,
    attempt: int,
    rows: Sequence[ResultRow],
    term: int,
) -> WriteOutcome | None:
    """The common case, at close to the speed of a bare COPY: every row
    names an item of the job and none is stored yet. None otherwise, with
    nothing written."""
    if tx.count_unknown_items(job_id, [row.custom_id for row in rows]):
        return None
    records = [
        (job_id, custom_id, attempt, batch_id, status.value, result, *usage)
        + (model, error_type, term)
        for custom_id, status, result, usage, model, error_type in rows
    ]
    if not tx.try_bulk_insert("item_results", RESULT_COLUMNS, records):
        return None
    tally = Tally.of_results(rows)
    return WriteOutcome(len(rows), 0, 0, tally)


RESULT_COLUMNS = (
    "job_id",
    "custom_id",
    "attempt",
    "batch_id",
    "status",
    "result",
    *USAGE_KINDS,
    "model",
    "error_type",
    "term",
)


def statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def job_from_row(row: tuple) -> Job:
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


def batch_from_row(row: tuple) -> ProviderBatch:
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


def check_job_id(job_id: str) -> None:
    """An id no job can have (a typo, a NUL byte) is simply not found."""
    if not ids.is_job_id(job_id):
        raise JobNotFound(job_id)


def read_job(tx: Tx, job_id: str) -> Job:
    check_job_id(job_id)
    row = tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
    if row is None:
        raise JobNotFound(job_id)
    return job_from_row(row)


def insert_job(
    tx: Tx,
    item_count: int,
    callback_url: str | None,
    metadata: dict | None,
    idempotency_key: str | None,
    request_digest: str | None,
    status: JobStatus = JobStatus.CREATED,
) -> str | None:
    """A new job row; None if the idempotency key is taken."""
    stamp = now()
    job_id = ids.new_job_id()
    changed = tx.execute(
        "INSERT INTO jobs (id, status, item_count, callback_url, metadata,"
        " idempotency_key, request_digest, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (idempotency_key) DO NOTHING",
        (
            job_id,
            status.value,
            item_count,
            callback_url,
            json.dumps(metadata or {}),
            idempotency_key,
            request_digest,
            stamp,
            stamp,
        ),
    )
    return job_id if changed else None


def replayed_job(tx: Tx, key: str | None, digest: str | None) -> Job:
    row = tx.one(
        f"SELECT {JOB_COLUMNS}, request_digest FROM jobs WHERE idempotency_key = %s",
        (key,),
    )
    if row[-1] != digest:
        raise Conflict(
            f"idempotency key {key!r} was used for a job with a different body"
        )
    return job_from_row(row[:-1])


def move_job(
    tx: Tx,
    job_id: str,
    target: JobStatus,
    sources: Sequence[JobStatus],
    *,
    error: str | None = None,
) -> Job:
    """One guarded UPDATE; on no match, say why (unknown job or illegal)."""
    check_job_id(job_id)
    if not sources:
        current = read_job(tx, job_id).status
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
        return job_from_row(row)
    current = read_job(tx, job_id).status
    raise IllegalTransition(job_id, current.value, target.value)


def read_detail(tx: Tx, job_id: str, prices: PriceTable | None = None) -> JobDetail:
    job = read_job(tx, job_id)
    counts = {status: 0 for status in ItemStatus}
    for status, count in tx.all(_LATEST_COUNTS, (job_id,)):
        counts[ItemStatus(status)] = count
    counts[ItemStatus.PENDING] = job.item_count - sum(counts.values())
    by_model = {
        row[0] or "unknown": Usage(*(int(value or 0) for value in row[1:]))
        for row in tx.all(_USAGE_SUMS, (job_id,))
    }
    batches = tx.all(
        f"SELECT {BATCH_COLUMNS} FROM provider_batches WHERE job_id = %s ORDER BY id",
        (job_id,),
    )
    return JobDetail(
        job=job,
        item_counts=counts,
        usage=sum(by_model.values(), Usage()),
        provider_batches=[batch_from_row(row) for row in batches],
        callback=read_callback(tx, job_id),
        usage_by_model=by_model,
        cost=(prices or NO_PRICES).cost(by_model),
    )


def read_callback(tx: Tx, job_id: str) -> CallbackState | None:
    row = tx.one(
        "SELECT id, url, status, attempts, last_error, delivered_at"
        " FROM callbacks WHERE job_id = %s",
        (job_id,),
    )
    if row is None:
        return None
    return CallbackState(*row[:5], delivered_at=as_datetime(row[5]))


def incoming_row(row: ResultRow) -> tuple:
    custom_id, status, result, usage, model, error_type = row
    return (custom_id, status.value, result, *usage, model, error_type)


_INCOMING_SQL = (
    "custom_id text, status text, result text, input_tokens bigint,"
    " output_tokens bigint, cache_creation_input_tokens bigint,"
    " cache_read_input_tokens bigint, model text, error_type text"
)

_APPEND_RESULTS = """
INSERT INTO item_results (job_id, custom_id, attempt, batch_id, status, result,
    input_tokens, output_tokens, cache_creation_input_tokens,
    cache_read_input_tokens, model, error_type, term)
SELECT %s, n.custom_id, %s, %s, n.status, n.result, n.input_tokens,
    n.output_tokens, n.cache_creation_input_tokens, n.cache_read_input_tokens,
    n.model, n.error_type, %s
FROM incoming_results n
WHERE EXISTS (
    SELECT 1 FROM items i WHERE i.job_id = %s AND i.custom_id = n.custom_id
)
ON CONFLICT DO NOTHING
RETURNING status, model, input_tokens, output_tokens,
    cache_creation_input_tokens, cache_read_input_tokens
"""

# Positions continue after the job's last item, in custom_id order per chunk.
_ADOPT_ITEMS = """
INSERT INTO items (job_id, custom_id, position, params)
SELECT %s, n.custom_id,
    (SELECT COALESCE(max(position), -1) FROM items WHERE job_id = %s)
        + row_number() OVER (ORDER BY n.custom_id),
    'null'
FROM incoming_results n
WHERE NOT EXISTS (
    SELECT 1 FROM items i WHERE i.job_id = %s AND i.custom_id = n.custom_id
)
ON CONFLICT DO NOTHING
"""

_COUNT_ITEMS = """
UPDATE jobs SET item_count = (SELECT count(*) FROM items WHERE job_id = %s)
WHERE id = %s
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
SELECT model, {", ".join(f"sum({kind})" for kind in USAGE_KINDS)}
FROM item_results WHERE job_id = %s AND status = 'succeeded'
GROUP BY model
"""

ITEMS_PAGE = f"""
SELECT i.position, i.custom_id, r.status, r.result, r.attempt
FROM items i
LEFT JOIN item_results r
    ON r.job_id = i.job_id AND r.custom_id = i.custom_id AND {_LATEST}
WHERE i.job_id = %s AND i.position > %s
ORDER BY i.position
LIMIT %s
"""


def retryable(alias: str = "r") -> str:
    """SQL: the result `alias` may succeed in a new provider batch."""
    errors = ", ".join(f"'{kind}'" for kind in TRANSIENT_ERRORS)
    return (
        f"({alias}.status = 'expired' OR ({alias}.status = 'errored'"
        f" AND {alias}.error_type IN ({errors})))"
    )


# The items of a job's attempt k > 1 are those whose attempt k - 1 ended
# retryably. Results are only ever appended, so this list never changes,
# and a part of a retry round is a slice of it, as a part of attempt 1 is a
# range of positions.
def round_items(columns: str) -> str:
    """SQL selecting `columns` of items i of attempt %s + 1 of job %s, in
    submission order; parameters (job_id, previous attempt)."""
    return f"""
SELECT {columns} FROM items i
WHERE i.job_id = %s AND EXISTS (
    SELECT 1 FROM item_results r
    WHERE r.job_id = i.job_id AND r.custom_id = i.custom_id
      AND r.attempt = %s AND {retryable()}
)
ORDER BY i.position
"""
