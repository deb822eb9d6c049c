"""Reading and checking request bodies: bounded in size, precise in errors.

The body of a job create can hold 100,000 requests, so it is read with a
size limit (`MAX_BODY_BYTES`, checked against Content-Length first and
again while reading) and parsed and validated in a worker thread: a large
body must not stall the event loop that also heartbeats the leader lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import trio
from fastapi import Request

from batchwarden.api.errors import ApiError
from batchwarden.errors import InvalidRequests
from batchwarden.intake import Request as JobRequest
from batchwarden.intake import validate_requests
from batchwarden.service import check_metadata

CREATE_FIELDS = ("requests", "provider_batch_id", "callback_url", "metadata")


@dataclass(frozen=True)
class CreateJob:
    """A create body: `requests`, or the `provider_batch_id` to track."""

    requests: list[JobRequest]
    provider_batch_id: str | None
    callback_url: str | None
    metadata: dict[str, Any] | None


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the body is larger than {limit} bytes (MAX_BODY_BYTES)")


async def parse_create(body: bytes) -> CreateJob:
    return await trio.to_thread.run_sync(parse_create_sync, body)


def parse_create_sync(body: bytes) -> CreateJob:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequests([f"body: not valid JSON ({exc})"]) from None
    if not isinstance(value, dict):
        raise InvalidRequests(["body: must be a JSON object"])
    problems = [f"{key}: unknown field" for key in value if key not in CREATE_FIELDS]
    problems += _check_optional(value)
    callback_url, metadata = value.get("callback_url"), value.get("metadata")
    if "provider_batch_id" in value:
        batch_id = value["provider_batch_id"]
        if "requests" in value:
            problems.append("requests: give requests or provider_batch_id, not both")
        if not isinstance(batch_id, str):
            problems.append("provider_batch_id: must be a string")
        if problems:
            raise InvalidRequests(problems)
        return CreateJob([], batch_id, callback_url, metadata)
    requests = value.get("requests")
    if not isinstance(requests, list):
        problems.append(
            "requests: must be a list of requests (or give provider_batch_id)"
        )
        raise InvalidRequests(problems)
    try:
        parsed = validate_requests(
            (f"requests[{index}]", item) for index, item in enumerate(requests)
        )
    except InvalidRequests as exc:
        problems += exc.problems
    if problems:
        raise InvalidRequests(problems)
    return CreateJob(parsed, None, callback_url, metadata)


def _check_optional(value: dict) -> list[str]:
    problems = check_metadata(value.get("metadata"))
    url = value.get("callback_url")
    if url is not None and not isinstance(url, str):
        problems.append("callback_url: must be a string")
    return problems
