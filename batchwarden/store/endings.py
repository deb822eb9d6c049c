"""How a job ends, inside the transaction that stores its last results.

When a job's last provider batch is stored (or its last retry round is
skipped), either some items ended retryably and may try again, and the
first part of the next attempt is recorded for the submitter, or the job
moves to its terminal status and, with a callback URL, its callback row is
written: results, status and outbox row commit together.

The other ways a job ends (a cancel before submission, a rejection by the
provider, a provider batch the provider lost) go through `end_job` too, so
each terminal status has its callback row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batchwarden import ids
from batchwarden.documents import callback_payload
from batchwarden.pricing import PriceTable
from batchwarden.states import ItemStatus, JobStatus
from batchwarden.store.queries import move_job, now, read_detail, read_job, round_items
from batchwarden.store.records import Job
from batchwarden.store.tx import Tx


@dataclass(frozen=True, slots=True)
class JobEnd:
    """A job the last chunk of results ended, and whether it has a callback."""

    job_id: str
    status: JobStatus
    callback: bool


def end_job_if_done(
    tx: Tx, job_id: str, prices: PriceTable, max_attempts: int = 1
) -> JobEnd | None:
    """End the job if none of its provider batches is still out: plan a
    retry round if some items may try again, else move the job to its
    terminal status and write its callback row. None if it goes on."""
    waiting = tx.one(
        "SELECT count(*) FROM provider_batches WHERE job_id = %s"
        " AND results_stored_at IS NULL"
        " AND processing_status NOT IN ('vanished', 'skipped')",
        (job_id,),
    )[0]
    job = read_job(tx, job_id)
    if waiting or job.status is not JobStatus.RUNNING:
        return None
    if _plan_retry(tx, job, max_attempts):
        return None
    counts = read_detail(tx, job_id).item_counts
    target = _terminal_status(job, counts)
    return end_job(tx, job_id, target, (JobStatus.RUNNING,), prices)


def end_job(
    tx: Tx,
    job_id: str,
    target: JobStatus,
    sources: Sequence[JobStatus],
    prices: PriceTable,
    *,
    error: str | None = None,
) -> JobEnd:
    """Move the job from one of `sources` to the terminal `target` and,
    with a callback URL, write its callback row: every way a job ends goes
    through here, so no terminal status goes without its callback."""
    job = move_job(tx, job_id, target, sources, error=error)
    if job.callback_url is None:
        return JobEnd(job_id, target, callback=False)
    detail = read_detail(tx, job_id, prices)
    stamp = now()
    tx.execute(
        "INSERT INTO callbacks (id, job_id, url, payload, status, next_attempt_at,"
        " created_at) VALUES (%s, %s, %s, %s, 'pending', %s, %s)"
        " ON CONFLICT DO NOTHING",
        (
            ids.new_callback_id(),
            job_id,
            job.callback_url,
            callback_payload(detail, stamp),
            stamp,
            stamp,
        ),
    )
    return JobEnd(job_id, target, callback=True)


def _plan_retry(tx: Tx, job: Job, max_attempts: int) -> bool:
    """Record the first part of the next attempt, if any item ended
    retryably and may try again; the submitter creates it."""
    if job.cancel_requested_at is not None:
        return False
    (attempt, tracked) = tx.one(
        "SELECT max(attempt), count(*) FILTER (WHERE first_position IS NULL)"
        " FROM provider_batches WHERE job_id = %s",
        (job.id,),
    )
    if tracked or attempt is None or attempt >= max_attempts:
        return False
    items = round_items("i.custom_id")
    (count,) = tx.one(f"SELECT count(*) FROM ({items}) retried", (job.id, attempt))
    if not count:
        return False
    tx.execute(
        "INSERT INTO provider_batches (job_id, attempt, processing_status,"
        " request_count, first_position, created_at)"
        " VALUES (%s, %s, 'creating', %s, 0, %s)",
        (job.id, attempt + 1, count, now()),
    )
    return True


def _terminal_status(job: Job, counts: dict[ItemStatus, int]) -> JobStatus:
    if job.cancel_requested_at is not None:
        return JobStatus.CANCELLED
    if counts[ItemStatus.EXPIRED] or counts[ItemStatus.PENDING]:
        return JobStatus.EXPIRED
    return JobStatus.COMPLETED
