"""The leader's reads and writes: submission, polls, result ingest, callbacks.

Every write here is fenced by the leader's term (see `SqlStore._fenced`).
The one that ends a job does so in the same transaction as the job's last
chunk of results and its callback outbox row, so a job is never terminal
with results missing, and a terminal job never lacks its callback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from batchwarden.states import JobStatus
from batchwarden.store.base import SqlStore
from batchwarden.store.endings import JobEnd, end_job, end_job_if_done
from batchwarden.store.queries import (
    BATCH_COLUMNS,
    JOB_COLUMNS,
    append_results,
    as_datetime,
    batch_from_row,
    check_job_id,
    job_from_row,
    move_job,
    now,
    read_job,
    round_items,
)
from batchwarden.store.records import (
    Job,
    JobCensus,
    ProviderBatch,
    ResultRow,
    WriteOutcome,
)
from batchwarden.store.tx import Tx

_SUBMITTED = (JobStatus.PENDING.value, JobStatus.RUNNING.value)
_OPEN = (JobStatus.CREATED.value, *_SUBMITTED)
_ALL_ITEMS = "SELECT {} FROM items i WHERE i.job_id = %s ORDER BY i.position"


@dataclass(frozen=True, slots=True)
class PollUpdate:
    """What one retrieve said about a provider batch."""

    batch_id: int
    processing_status: str
    request_counts: dict[str, int]
    ended_at: datetime | None
    expires_at: datetime | None
    archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class Callback:
    id: str
    job_id: str
    url: str
    payload: str
    attempts: int
    created_at: datetime


class PipelineStore(SqlStore):
    # -- cancel requests (user writes) ------------------------------------

    async def request_cancel(self, job_id: str) -> Job:
        """Ask the leader to cancel a submitted job; it stays in its status
        until the provider has cancelled its batches."""

        def request(tx: Tx) -> Job:
            check_job_id(job_id)
            stamp = now()
            row = tx.one(
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at,"
                " %s), updated_at = %s WHERE id = %s AND status IN (%s, %s)"
                f" RETURNING {JOB_COLUMNS}",
                (
                    stamp,
                    stamp,
                    job_id,
                    JobStatus.PENDING.value,
                    JobStatus.RUNNING.value,
                ),
            )
            return job_from_row(row) if row else read_job(tx, job_id)

        return await self._run(request, write=True)

    # -- submission ---------------------------------------------------------

    async def claim_jobs(self, *, term: int, limit: int) -> list[Job]:
        """Move up to `limit` created jobs, oldest first, to pending."""

        def claim(tx: Tx) -> list[Job]:
            stamp, created = now(), JobStatus.CREATED.value
            rows = tx.all(
                # The outer status test is not redundant: a row the scan
                # saw `created` may have been cancelled since, and only the
                # outer WHERE is checked again against the row as committed.
                "UPDATE jobs SET status = %s, claim_term = %s, updated_at = %s"
                " WHERE status = %s AND id IN (SELECT id FROM jobs WHERE status = %s"
                f" ORDER BY id LIMIT %s) RETURNING {JOB_COLUMNS}",
                (JobStatus.PENDING.value, term, stamp, created, created, limit),
            )
            return sorted((job_from_row(row) for row in rows), key=lambda job: job.id)

        return await self._fenced(term, claim)

    async def reclaim_pending(self, *, term: int) -> list[str]:
        """Pending jobs claimed in an older term (their submitter died):
        claim them for this term and return their ids, oldest first."""

        def reclaim(tx: Tx) -> list[str]:
            rows = tx.all(
                "UPDATE jobs SET claim_term = %s WHERE status = %s"
                " AND (claim_term IS NULL OR claim_term < %s) RETURNING id",
                (term, JobStatus.PENDING.value, term),
            )
            return sorted(row[0] for row in rows)

        return await self._fenced(term, reclaim)

    async def submission_parts(
        self, job_id: str, attempt: int = 1
    ) -> list[ProviderBatch]:
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM provider_batches"
            " WHERE job_id = %s AND attempt = %s ORDER BY first_position"
        )
        rows = await self._run(lambda tx: tx.all(sql, (job_id, attempt)), write=False)
        return [batch_from_row(row) for row in rows]

    async def retry_rounds(self) -> list[tuple[str, int]]:
        """(job id, attempt) of retry rounds planned but not all created, of
        jobs still running (a job that failed meanwhile needs no more)."""
        sql = (
            "SELECT DISTINCT b.job_id, b.attempt FROM provider_batches b"
            " JOIN jobs j ON j.id = b.job_id"
            " WHERE b.attempt > 1 AND b.processing_status = 'creating'"
            " AND j.status = 'running' ORDER BY b.job_id, b.attempt"
        )
        return await self._run(lambda tx: tx.all(sql), write=False)

    async def requests_in_flight(self) -> int:
        """Requests in provider batches the provider is still processing."""
        sql = (
            "SELECT COALESCE(sum(request_count), 0) FROM provider_batches"
            " WHERE processing_status IN ('in_progress', 'canceling')"
        )
        row = await self._run(lambda tx: tx.one(sql), write=False)
        return int(row[0])

    async def item_sizes(self, job_id: str, attempt: int = 1) -> list[int]:
        """The byte size of each item of an attempt, in submission order."""
        size = "length(i.params) + length(i.custom_id)"
        if attempt == 1:
            sql, params = _ALL_ITEMS.format(size), (job_id,)
        else:
            sql, params = round_items(size), (job_id, attempt - 1)
        rows = await self._run(lambda tx: tx.all(sql, params), write=False)
        return [row[0] for row in rows]

    async def items_range(
        self, job_id: str, first: int, count: int, attempt: int = 1
    ) -> list[tuple[str, str]]:
        """(custom_id, params JSON) of the attempt's items [first, first + count)."""
        columns = "i.custom_id, i.params"
        if attempt == 1:
            sql = (
                f"SELECT {columns} FROM items i WHERE i.job_id = %s"
                " AND i.position >= %s AND i.position < %s ORDER BY i.position"
            )
            params = (job_id, first, first + count)
        else:
            sql = round_items(columns) + " LIMIT %s OFFSET %s"
            params = (job_id, attempt - 1, count, first)
        return await self._run(lambda tx: tx.all(sql, params), write=False)

    async def record_created(
        self,
        batch_id: int,
        provider_batch_id: str,
        *,
        processing_status: str,
        expires_at: datetime | None,
        job_id: str,
        last: bool,
        term: int,
        request_count: int | None = None,
    ) -> None:
        """A part now exists at the provider; with the last part of the first
        attempt, the job moves to running in the same transaction."""

        def record(tx: Tx) -> None:
            tx.execute(
                "UPDATE provider_batches SET provider_batch_id = %s,"
                " processing_status = %s, expires_at = %s,"
                " request_count = COALESCE(%s, request_count) WHERE id = %s",
                (
                    provider_batch_id,
                    processing_status,
                    expires_at,
                    request_count,
                    batch_id,
                ),
            )
            if last:
                move_job(tx, job_id, JobStatus.RUNNING, (JobStatus.PENDING,))

        await self._fenced(term, record)

    async def skip_round(
        self, job_id: str, attempt: int, *, term: int
    ) -> JobEnd | None:
        """A cancel came before a retry round reached the provider: its
        parts are skipped, and the job ends if nothing else is out."""

        def skip(tx: Tx) -> JobEnd | None:
            tx.execute(
                "UPDATE provider_batches SET processing_status = 'skipped'"
                " WHERE job_id = %s AND attempt = %s AND provider_batch_id IS NULL",
                (job_id, attempt),
            )
            return end_job_if_done(tx, job_id, self.prices)

        return await self._fenced(term, skip)

    async def fail_job(self, job_id: str, error: str, *, term: int) -> Job:
        def fail(tx: Tx) -> Job:
            sources = (JobStatus.PENDING, JobStatus.RUNNING)
            end_job(tx, job_id, JobStatus.FAILED, sources, self.prices, error=error)
            return read_job(tx, job_id)

        return await self._fenced(term, fail)

    async def cancel_pending(self, job_id: str, *, term: int) -> Job:
        """A pending job whose cancel was asked before it reached the provider."""

        def cancel(tx: Tx) -> Job:
            target, sources = JobStatus.CANCELLED, (JobStatus.PENDING,)
            end_job(tx, job_id, target, sources, self.prices)
            return read_job(tx, job_id)

        return await self._fenced(term, cancel)

    # -- polling -------------------------------------------------------------

    async def open_batches(self, *, limit: int) -> list[ProviderBatch]:
        """Batches the provider is still processing, least recently polled
        first."""
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM provider_batches"
            " WHERE processing_status IN ('in_progress', 'canceling')"
            " AND provider_batch_id IS NOT NULL"
            " ORDER BY polled_at IS NOT NULL, polled_at, id LIMIT %s"
        )
        rows = await self._run(lambda tx: tx.all(sql, (limit,)), write=False)
        return [batch_from_row(row) for row in rows]

    async def unfetched_batches(self) -> list[ProviderBatch]:
        """Ended batches whose results are not stored yet, the first created
        first: the provider archives results a fixed time after creation, so
        this is also the order in which they would be lost."""
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM provider_batches"
            " WHERE processing_status = 'ended' AND results_stored_at IS NULL"
            " ORDER BY created_at, id"
        )
        rows = await self._run(lambda tx: tx.all(sql), write=False)
        return [batch_from_row(row) for row in rows]

    async def cancel_requests(self) -> list[ProviderBatch]:
        """Open batches of running jobs whose cancel was asked."""
        columns = ", ".join(f"b.{c.strip()}" for c in BATCH_COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM provider_batches b JOIN jobs j ON j.id = b.job_id"
            " WHERE j.cancel_requested_at IS NOT NULL AND j.status = 'running'"
            " AND b.processing_status = 'in_progress'"
        )
        rows = await self._run(lambda tx: tx.all(sql), write=False)
        return [batch_from_row(row) for row in rows]

    async def record_polls(self, updates: Sequence[PollUpdate], *, term: int) -> None:
        """Every status change of a poll cycle, in one set-based statement."""

        def record(tx: Tx) -> None:
            tx.scratch_table("polled", _POLLED_SQL)
            stamp = now()
            tx.bulk_insert(
                "polled", _POLLED_COLUMNS, (_polled(u, stamp) for u in updates)
            )
            tx.execute(_APPLY_POLLS)

        if updates:
            await self._fenced(term, record)

    async def vanish(self, batch_id: int, job_id: str, *, term: int) -> None:
        """The provider no longer knows a batch: the job fails, nothing is
        left half-done."""

        def vanish(tx: Tx) -> None:
            tx.execute(
                "UPDATE provider_batches SET processing_status = 'vanished'"
                " WHERE id = %s",
                (batch_id,),
            )
            sources = (JobStatus.PENDING, JobStatus.RUNNING)
            error = "the provider no longer knows one of the job's batches"
            end_job(tx, job_id, JobStatus.FAILED, sources, self.prices, error=error)

        await self._fenced(term, vanish)

    # -- results -----------------------------------------------------------------

    async def store_results(
        self,
        batch: ProviderBatch,
        rows: Sequence[ResultRow],
        *,
        last: bool,
        term: int,
        max_attempts: int = 1,
    ) -> tuple[WriteOutcome, JobEnd | None]:
        """A chunk of a batch's results; with the last chunk, the batch is
        marked stored and, if it was the job's last, either a retry round is
        planned (items that ended retryably, within `max_attempts`) or the
        job ends and its callback is written, all in this one transaction."""

        def write(tx: Tx) -> tuple[WriteOutcome, JobEnd | None]:
            outcome = append_results(
                tx,
                batch.job_id,
                batch.id,
                batch.attempt,
                rows,
                term,
                adopt_items=batch.tracked,
            )
            if not last:
                return outcome, None
            tx.execute(
                "UPDATE provider_batches SET results_stored_at = %s WHERE id = %s",
                (now(), batch.id),
            )
            return outcome, end_job_if_done(tx, batch.job_id, self.prices, max_attempts)

        return await self._fenced(term, write)

    async def job_census(self) -> JobCensus:
        """Jobs by status, and how long the oldest job of each open status
        has waited since it last changed: one index scan and a few rows."""

        def census(tx: Tx) -> JobCensus:
            counts = dict(tx.all("SELECT status, count(*) FROM jobs GROUP BY status"))
            waiting = tx.all(
                "SELECT status, min(updated_at) FROM jobs"
                " WHERE status IN (%s, %s, %s) GROUP BY status",
                _OPEN,
            )
            stamp = now()
            oldest = dict.fromkeys(_OPEN, 0.0)
            for status, since in waiting:
                oldest[status] = (stamp - as_datetime(since)).total_seconds()
            by_status = {status.value: 0 for status in JobStatus} | counts
            return JobCensus(by_status, oldest)

        return await self._run(census, write=False)

    # -- callbacks -----------------------------------------------------------------

    async def lease_callbacks(
        self, *, term: int, limit: int, lease_s: float
    ) -> list[Callback]:
        """Due callbacks, leased to this term for `lease_s` while delivered."""

        def lease(tx: Tx) -> list[Callback]:
            stamp = now()
            rows = tx.all(
                "UPDATE callbacks SET lease_term = %s, next_attempt_at = %s"
                " WHERE status = 'pending'"
                " AND id IN (SELECT id FROM callbacks WHERE status = 'pending'"
                " AND next_attempt_at <= %s ORDER BY next_attempt_at LIMIT %s)"
                " RETURNING id, job_id, url, payload, attempts, created_at",
                (term, stamp + timedelta(seconds=lease_s), stamp, limit),
            )
            return [Callback(*row[:5], as_datetime(row[5])) for row in rows]

        return await self._fenced(term, lease)

    async def record_attempt(
        self,
        callback: Callback,
        *,
        status_code: int | None,
        error: str | None,
        duration_s: float,
        next_attempt_at: datetime | None,
        term: int,
    ) -> str:
        """Record one delivery attempt; returns the callback's new status:
        `delivered` (a 2xx), `pending` (retry at `next_attempt_at`) or
        `exhausted` (no retry left)."""
        delivered = status_code is not None and 200 <= status_code < 300
        status = "delivered" if delivered else "pending"
        if not delivered and next_attempt_at is None:
            status = "exhausted"

        def record(tx: Tx) -> str:
            stamp = now()
            attempt = callback.attempts + 1
            tx.execute(
                "INSERT INTO callback_attempts (callback_id, attempt, attempted_at,"
                " status_code, error, duration_seconds) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (callback.id, attempt, stamp, status_code, error, duration_s),
            )
            tx.execute(
                "UPDATE callbacks SET status = %s, attempts = %s, last_error = %s,"
                " next_attempt_at = COALESCE(%s, next_attempt_at),"
                " delivered_at = %s WHERE id = %s",
                (
                    status,
                    attempt,
                    error,
                    next_attempt_at,
                    stamp if delivered else None,
                    callback.id,
                ),
            )
            return status

        return await self._fenced(term, record)

    async def reclaim_callbacks(self, *, term: int) -> int:
        """Callbacks leased by an older term are due again now."""

        def reclaim(tx: Tx) -> int:
            return tx.execute(
                "UPDATE callbacks SET next_attempt_at = %s, lease_term = %s"
                " WHERE status = 'pending' AND lease_term < %s",
                (now(), term, term),
            )

        return await self._fenced(term, reclaim)

    async def callback_attempts(self, callback_id: str) -> list[tuple]:
        sql = (
            "SELECT attempt, status_code, error FROM callback_attempts"
            " WHERE callback_id = %s ORDER BY attempt"
        )
        return await self._run(lambda tx: tx.all(sql, (callback_id,)), write=False)


_POLLED_COLUMNS = (
    "id",
    "processing_status",
    "request_counts",
    "ended_at",
    "expires_at",
    "archived_at",
    "polled_at",
)
# SQLite stores any timestamp type name as text, which sorts by time.
_POLLED_SQL = (
    "id bigint, processing_status text, request_counts text,"
    " ended_at timestamptz, expires_at timestamptz, archived_at timestamptz,"
    " polled_at timestamptz"
)


def _polled(update: PollUpdate, stamp: datetime) -> tuple:
    return (
        update.batch_id,
        update.processing_status,
        json.dumps(update.request_counts),
        update.ended_at,
        update.expires_at,
        update.archived_at,
        stamp,
    )


_APPLY_POLLS = """
UPDATE provider_batches SET
    processing_status = polled.processing_status,
    request_counts = polled.request_counts,
    ended_at = polled.ended_at,
    expires_at = polled.expires_at,
    archived_at = polled.archived_at,
    polled_at = polled.polled_at
FROM polled
WHERE provider_batches.id = polled.id
  AND provider_batches.processing_status <> 'ended'
"""
