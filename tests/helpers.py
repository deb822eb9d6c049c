"""Small builders the tests share."""

from __future__ import annotations

import json

from batchwarden.intake import Request
from batchwarden.states import ItemStatus, JobStatus
from batchwarden.store.records import ResultRow, Usage

# How a test walks a new job to each status along legal edges.
PATHS: dict[JobStatus, tuple[JobStatus, ...]] = {
    JobStatus.CREATED: (),
    JobStatus.PENDING: (JobStatus.PENDING,),
    JobStatus.RUNNING: (JobStatus.PENDING, JobStatus.RUNNING),
    JobStatus.COMPLETED: (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED),
    JobStatus.FAILED: (JobStatus.PENDING, JobStatus.FAILED),
    JobStatus.CANCELLED: (JobStatus.CANCELLED,),
    JobStatus.EXPIRED: (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.EXPIRED),
}


def request_line(custom_id: str, text: str = "hello") -> dict:
    return {
        "custom_id": custom_id,
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        },
    }


def requests(count: int, prefix: str = "req") -> list[Request]:
    return [
        Request(f"{prefix}-{i:06d}", json.dumps(request_line("x")["params"]))
        for i in range(count)
    ]


def succeeded(custom_id: str, input_tokens: int = 10, output_tokens: int = 20):
    message = {
        "id": f"msg_{custom_id}",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": f"answer to {custom_id}"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return ResultRow(
        custom_id=custom_id,
        status=ItemStatus.SUCCEEDED,
        result=json.dumps({"type": "succeeded", "message": message}),
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        model="claude-sonnet-4-5",
    )


def errored(custom_id: str) -> ResultRow:
    error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "x"},
    }
    return ResultRow(
        custom_id=custom_id,
        status=ItemStatus.ERRORED,
        result=json.dumps({"type": "errored", "error": error}),
    )
