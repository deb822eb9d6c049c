"""The `/v1/jobs` routes: thin wrappers over the service layer.

Each route reads its input, calls one service or store function and
returns a document from `batchwarden.documents`; errors map to status codes
in `api.errors`. No business rule lives here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from batchwarden import service
from batchwarden.api import schemas
from batchwarden.api.bodies import parse_create, read_body
from batchwarden.callback_urls import CallbackPolicy
from batchwarden.config import Settings
from batchwarden.states import JobStatus
from batchwarden.store import SqlStore
from batchwarden.telemetry.tracing import tag_job

JOB_ID = r"^job_[0-9a-z]{26}$"
MAX_PAGE = 1000
RESULTS_CHUNK = 1000


def jobs_router(store: SqlStore, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    policy = CallbackPolicy(settings.callback_allowlist)

    @router.post(
        "",
        status_code=201,
        response_model=schemas.JobDocument,
        openapi_extra={"requestBody": schemas.CREATE_BODY},
        responses=schemas.errors(409, 413, 422),
        summary="Create a job",
    )
    async def create_job(
        request: Request,
        response: Response,
        idempotency_key: Annotated[
            str | None, Header(min_length=1, max_length=255)
        ] = None,
    ) -> dict:
        """Create a job from requests, or one that tracks a provider batch
        created elsewhere. A retry with the same `Idempotency-Key` and body
        returns the original job."""
        body = await parse_create(await read_body(request, settings.max_body_bytes))
        options = {
            "callback_url": body.callback_url,
            "metadata": body.metadata,
            "idempotency_key": idempotency_key,
            "policy": policy,
        }
        if body.provider_batch_id is not None:
            job, created = await service.track_batch(
                store, body.provider_batch_id, **options
            )
        else:
            job, created = await service.create_job(store, body.requests, **options)
        tag_job(job.id)
        if not created:
            response.headers["idempotent-replayed"] = "true"
        return service.job_document(await store.job_detail(job.id))

    @router.get(
        "",
        response_model=schemas.JobList,
        responses=schemas.errors(422),
        summary="List jobs, newest first",
    )
    async def list_jobs(
        status: JobStatus | None = None,
        cursor: Annotated[str | None, Query(pattern=JOB_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> dict:
        """A page of jobs; pass `next_cursor` as `cursor` for the next page.
        Jobs created meanwhile never shift a page: they sort before it."""
        jobs = await store.list_jobs(status=status, before=cursor, limit=limit)
        more = len(jobs) == limit
        return {
            "jobs": [service.job_summary(job) for job in jobs],
            "next_cursor": jobs[-1].id if more else None,
        }

    @router.get(
        "/{job_id}",
        response_model=schemas.JobDocument,
        responses=schemas.errors(404),
        summary="Show one job",
    )
    async def get_job(job_id: str) -> dict:
        tag_job(job_id)
        return service.job_document(await store.job_detail(job_id))

    @router.get(
        "/{job_id}/results",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "one JSON line per item, in submission order",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            **schemas.errors(404),
        },
        summary="Download a job's items as JSON lines",
    )
    async def job_results(job_id: str) -> StreamingResponse:
        tag_job(job_id)
        await store.get_job(job_id)
        return StreamingResponse(
            _result_lines(store, job_id), media_type="application/x-ndjson"
        )

    @router.post(
        "/{job_id}/cancel",
        response_model=schemas.JobDocument,
        responses=schemas.errors(404, 409),
        summary="Cancel a job",
    )
    async def cancel_job(job_id: str) -> dict:
        """A job not yet submitted ends `cancelled` at once; otherwise the
        leader cancels its provider batches and keeps the results so far."""
        tag_job(job_id)
        job = await service.cancel_job(store, job_id)
        return service.job_document(await store.job_detail(job.id))

    return router


async def _result_lines(store: SqlStore, job_id: str) -> AsyncIterator[bytes]:
    """Lines in chunks of a thousand items: few writes, bounded memory."""
    lines: list[str] = []
    async for item in store.iter_items(job_id, chunk=RESULTS_CHUNK):
        lines.append(service.result_line(item))
        if len(lines) == RESULTS_CHUNK:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()
