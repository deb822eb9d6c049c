"""The shapes of API documents, for the OpenAPI document and its readers.

The documents themselves are built by `batchwarden.documents` (the CLI and
callbacks show the same ones); these models describe them, and FastAPI
checks each response against its model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from batchwarden.intake import MAX_REQUESTS
from batchwarden.states import ItemStatus, JobStatus


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class ProviderBatch(BaseModel):
    id: str | None
    attempt: int
    processing_status: str
    request_count: int
    request_counts: dict[str, int] | None
    created_at: str
    ended_at: str | None
    results_stored_at: str | None


class Callback(BaseModel):
    webhook_id: str
    status: str
    attempts: int
    last_error: str | None
    delivered_at: str | None


class Cost(BaseModel):
    currency: str
    total: float
    by_model: dict[str, float]
    unpriced_models: list[str]


class JobSummary(BaseModel):
    id: str
    status: JobStatus
    item_count: int
    created_at: str
    updated_at: str
    finished_at: str | None


class JobDocument(JobSummary):
    request_counts: dict[ItemStatus, int]
    provider_batches: list[ProviderBatch]
    usage: Usage
    usage_by_model: dict[str, Usage]
    cost: Cost | None
    metadata: dict[str, Any]
    error: str | None
    callback_url: str | None
    callback: Callback | None


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None


class Leader(BaseModel):
    instance_id: str | None
    term: int
    since: str | None
    this_replica: str
    this_replica_leads: bool


class ErrorDetail(BaseModel):
    type: str
    message: str
    problems: list[str] | None = None


class Error(BaseModel):
    error: ErrorDetail


DESCRIPTIONS = {
    401: "missing or invalid bearer token",
    404: "no job with this id",
    409: "conflicts with the job's state or an earlier request",
    413: "body larger than MAX_BODY_BYTES",
    422: "invalid input; `problems` names each bad field",
    503: "the database is unavailable; retry later",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error responses, all in the `Error` shape."""
    return {
        code: {"model": Error, "description": DESCRIPTIONS[code]}
        for code in (*codes, 401, 503)
    }


_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"type": "string", "minLength": 1},
    },
}

_REQUEST = {
    "type": "object",
    "required": ["custom_id", "params"],
    "additionalProperties": False,
    "properties": {
        "custom_id": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
        "params": {
            "type": "object",
            "description": "Messages API parameters",
            "required": ["model", "max_tokens", "messages"],
            "properties": {
                "model": {"type": "string", "minLength": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
                "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
            },
        },
    },
}


def _create_body(source: str, schema: dict) -> dict:
    return {
        "type": "object",
        "required": [source],
        "additionalProperties": False,
        "properties": {
            source: schema,
            "callback_url": {"type": "string", "format": "uri"},
            "metadata": {"type": "object"},
        },
    }


CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _create_body(
                        "requests",
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_REQUESTS,
                            "items": _REQUEST,
                            "description": "custom_id values must be unique",
                        },
                    ),
                    _create_body(
                        "provider_batch_id",
                        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
                    ),
                ]
            }
        }
    },
}
