"""The verbs users have, shared by the CLI and the REST API.

Business rules live here and in the store, never in a front end: both the
CLI and the API call these functions and print or serve what they return.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from batchwarden.callback_urls import CallbackPolicy, CallbackRefused
from batchwarden.documents import (
    iso,
    job_document,
    job_summary,
    result_line,
)
from batchwarden.errors import Conflict, IllegalTransition, InvalidRequests
from batchwarden.intake import Request
from batchwarden.states import JobStatus
from batchwarden.store import SqlStore
from batchwarden.store.records import Job

MAX_METADATA_BYTES = 16_384
PROVIDER_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

__all__ = [
    "cancel_job",
    "create_job",
    "iso",
    "job_document",
    "job_summary",
    "result_line",
    "track_batch",
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
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["metadata: must be a JSON object"]
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        return [f"metadata: at most {MAX_METADATA_BYTES} bytes of JSON"]
    return []


async def check_options(
    callback_url: str | None, metadata: Any, policy: CallbackPolicy
) -> None:
    """What every new job checks, however it was submitted."""
    problems = check_metadata(metadata) + await check_callback_url(callback_url, policy)
    if problems:
        raise InvalidRequests(problems)


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
    await check_options(callback_url, metadata, policy)
    return await store.create_job(
        requests,
        callback_url=callback_url,
        metadata=metadata,
        idempotency_key=idempotency_key,
        request_digest=request_digest(requests, callback_url),
    )


async def track_batch(
    store: SqlStore,
    provider_batch_id: str,
    *,
    callback_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    policy: CallbackPolicy,
) -> tuple[Job, bool]:
    """A job that follows a provider batch the user already created: the
    leader polls it, stores its results as the job's items and sends the
    callback. An id the provider does not know fails the job once the
    provider's propagation delay has passed."""
    if not PROVIDER_BATCH_ID.match(provider_batch_id):
        raise InvalidRequests(
            ["provider_batch_id: must be 1-128 characters of a-z, A-Z, 0-9, _ or -"]
        )
    await check_options(callback_url, metadata, policy)
    digest = hashlib.sha256(f"{provider_batch_id}\1{callback_url or ''}".encode())
    return await store.track_batch(
        provider_batch_id,
        callback_url=callback_url,
        metadata=metadata,
        idempotency_key=idempotency_key,
        request_digest=digest.hexdigest(),
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
