"""How jobs are shown: the job document of the CLI, the API and callbacks.

Pure functions over store records, so the store can build a callback's
payload inside the transaction that ends the job.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store imports this module to build callbacks
    from batchwarden.store.records import ItemRow, Job, JobDetail, ProviderBatch


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


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
        "usage_by_model": {m: u.as_dict() for m, u in detail.usage_by_model.items()},
        "cost": detail.cost,
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


def callback_payload(detail: JobDetail, timestamp: datetime) -> str:
    """The body of a job's callback: `job.<status>` with the job document."""
    return json.dumps(
        {
            "type": f"job.{detail.job.status.value}",
            "timestamp": iso(timestamp),
            "data": job_document(detail),
        },
        separators=(",", ":"),
    )


def item_line(
    custom_id: str, status: str, result: str | None, attempts: int | None = None
) -> str:
    """One line of a results download; `result` is stored JSON text, and
    `attempts` the provider batches the item went through."""
    fields = {"custom_id": custom_id, "status": status}
    if attempts is not None:
        fields["attempts"] = attempts
    head = json.dumps(fields)[:-1]
    return f'{head}, "result": {result or "null"}}}'


def result_line(item: ItemRow) -> str:
    """An item of a job as `results` and `GET .../results` print it."""
    return item_line(item.custom_id, item.status.value, item.result, item.attempts)
