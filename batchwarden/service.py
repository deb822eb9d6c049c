"""The verbs users have, shared by the CLI and the REST API.

Business rules live here and in the store, never in a front end: both the
CLI and the API call these functions and print or serve what they return.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from batchwarden.errors import Conflict, IllegalTransition, InvalidRequests
from batchwarden.intake import Request
from batchwarden.states import JobStatus
from batchwarden.store import SqlStore
from batchwarden.store.records import Job, JobDetail, ProviderBatch


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def check_callback_url(url: str | None) -> list[str]:
    if url is None:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ["callback_url: must be an http:// or https:// URL"]
    return []


def check_metadata(metadata: Any) -> list[str]:
    if metadata is None or isinstance(metadata, dict):
        return []
    return ["metadata: must be a JSON object"]


def request_digest(requests: Iterable[Request], callback_url: str | None) -> str:
    """Fingerprint of a create call, to tell an idempotent retry from misuse."""
    digest = hashlib.sha256()
    for request in requests:
        digest.update(request.custom_id.encode() + b"\0" + request.params.encode())
    digest.update(b"\1" + (callback_url or "").encode())
    return digest.hexdigest()


async def create_job(
    store: SqlStore,
    requests: list[Request],
    *,
    callback_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    problems = check_callback_url(callback_url) + check_metadata(metadata)
    if problems:
        raise InvalidRequests(problems)
    return await store.create_job(
        requests,
        callback_url=callback_url,
        metadata=metadata,
        idempotency_key=idempotency_key,
        request_digest=request_digest(requests, callback_url),
    )


async def cancel_job(store: SqlStore, job_id: str) -> Job:
    """Cancel a job that has not been submitted to the provider yet."""
    try:
        return await store.cancel_job(job_id)
    except IllegalTransition as exc:
        if JobStatus(exc.current).terminal:
            raise Conflict(f"job {job_id} has already ended: {exc.current}") from None
        raise Conflict(
            f"job {job_id} is {exc.current}: only a job not yet submitted"
            " (created) can be cancelled in this version"
        ) from None


def job_summary(job: Job) -> dict[str, Any]:
    """A job as the listing shows it."""
    return {
        "id": job.id,
        "status": job.status.value,
        "item_count": job.item_count,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
    }


def job_document(detail: JobDetail) -> dict[str, Any]:
    """A job as `status --json`, `GET /v1/jobs/{id}` and callbacks show it."""
    job = detail.job
    callback = detail.callback
    return {
        **job_summary(job),
        "request_counts": {s.value: n for s, n in detail.item_counts.items()},
        "provider_batches": [_batch_document(b) for b in detail.provider_batches],
        "usage": detail.usage.as_dict(),
        "metadata": job.metadata,
        "error": job.error,
        "callback_url": job.callback_url,
        "callback": None
        if callback is None
        else {
            "webhook_id": callback.id,
            "status": callback.status,
            "attempts": callback.attempts,
            "last_error": callback.last_error,
            "delivered_at": iso(callback.delivered_at),
        },
    }


def _batch_document(batch: ProviderBatch) -> dict[str, Any]:
    return {
        "id": batch.provider_batch_id,
        "attempt": batch.attempt,
        "processing_status": batch.processing_status,
        "request_count": batch.request_count,
        "request_counts": batch.request_counts,
        "created_at": iso(batch.created_at),
        "ended_at": iso(batch.ended_at),
        "results_stored_at": iso(batch.results_stored_at),
    }


def item_line(custom_id: str, status: str, result: str | None) -> str:
    """One line of a results download; `result` is stored JSON text."""
    head = json.dumps({"custom_id": custom_id, "status": status})[:-1]
    return f'{head}, "result": {result or "null"}}}'
