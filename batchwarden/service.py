"""The verbs users have, shared by the CLI and the REST API.

Business rules live here and in the store, never in a front end: both the
CLI and the API call these functions and print or serve what they return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from batchwarden.callback_urls import CallbackPolicy, CallbackRefused
from batchwarden.documents import iso, item_line, job_document, job_summary
from batchwarden.errors import Conflict, IllegalTransition, InvalidRequests
from batchwarden.intake import Request
from batchwarden.states import JobStatus
from batchwarden.store import SqlStore
from batchwarden.store.records import Job

__all__ = [
    "cancel_job",
    "create_job",
    "iso",
    "item_line",
    "job_document",
    "job_summary",
]


async def check_callback_url(url: str | None, policy: CallbackPolicy) -> list[str]:
    if url is None:
        return []
    try:
        await policy.resolve(url)
    except CallbackRefused as exc:
        return [str(exc)]
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
    policy: CallbackPolicy,
) -> tuple[Job, bool]:
    """A new job, or with a known `idempotency_key` the original one;
    (job, created). The callback URL is checked against `policy`."""
    problems = check_metadata(metadata) + await check_callback_url(callback_url, policy)
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
    """Cancel a job: at once if not yet submitted; otherwise the leader
    cancels its provider batches and the job ends `cancelled` with the
    results that arrived before."""
    try:
        return await store.cancel_job(job_id)
    except IllegalTransition as exc:
        if JobStatus(exc.current).terminal:
            raise Conflict(f"job {job_id} has already ended: {exc.current}") from None
    job = await store.request_cancel(job_id)
    if job.status.terminal:
        raise Conflict(f"job {job_id} has already ended: {job.status.value}")
    return job
