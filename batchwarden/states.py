"""The job status state machine and the item statuses.

A job moves only along the edges below. Each edge is written as one guarded
UPDATE (`... WHERE status IN (sources)`), so two writers racing on a job can
never both succeed and nothing reads a status before deciding to write it.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    CREATED = "created"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset({JobStatus.PENDING, JobStatus.CANCELLED}),
    JobStatus.PENDING: frozenset(
        {JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.EXPIRED,
        }
    ),
    **{status: frozenset() for status in TERMINAL},
}


def sources_of(target: JobStatus) -> tuple[JobStatus, ...]:
    """The statuses a job may be in for a move to `target` to be legal."""
    return tuple(s for s, targets in ALLOWED.items() if target in targets)


class ItemStatus(StrEnum):
    """An item's outcome, in the provider's words; `pending` until stored."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    CANCELED = "canceled"
    EXPIRED = "expired"


RESULT_STATUSES = tuple(s for s in ItemStatus if s is not ItemStatus.PENDING)


# Errored items of these types failed for the provider's reasons, not the
# request's: they may succeed in a new provider batch.
TRANSIENT_ERRORS = (
    "api_error",
    "overloaded_error",
    "rate_limit_error",
    "timeout_error",
)
