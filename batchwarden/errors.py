"""Errors, grouped by what the caller does next.

- `Rejected`: the caller asked for something that cannot be done (bad input,
  an unknown job, an illegal transition). Report it; retrying will not help.
- `StepDown`: this replica acted on a stale belief that it leads. Its worker
  scope must stop at once; the lock holder decides what happens next.
- `RetryLater`: a dependency (the database, the provider) is unavailable for
  now. Wait with backoff and try again; nothing was changed.

Errors are translated once, at the boundary where they arise (the store, the
provider adapter, the callback sender), so callers never see a driver's
exception types.
"""

from __future__ import annotations


class BatchwardenError(Exception):
    """Base of every error batchwarden raises on purpose."""


class ConfigError(BatchwardenError):
    """A setting has a value batchwarden cannot use; the message names it."""


class Rejected(BatchwardenError):
    """The request cannot be carried out as asked; retrying will not help."""


class InvalidRequests(Rejected):
    """Submitted requests failed validation; `problems` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"invalid requests: {shown}{more}")


class JobNotFound(Rejected):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class IllegalTransition(Rejected):
    """A job status change that the state machine forbids; nothing changed."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        self.job_id = job_id
        self.current = current
        self.target = target
        super().__init__(f"job {job_id} cannot go from {current} to {target}")


class Conflict(Rejected):
    """The request clashes with what is already stored (an idempotency key
    reused with another body, a cancel of a job that has ended)."""


class StepDown(BatchwardenError):
    """This replica must stop acting as leader."""


class StaleTerm(StepDown):
    """A fenced write carried a term that is no longer the newest; the
    write changed nothing."""

    def __init__(self, held: int, current: int) -> None:
        self.held = held
        self.current = current
        super().__init__(f"term {held} is stale: the newest term is {current}")


class RetryLater(BatchwardenError):
    """A dependency is unavailable for now; nothing was changed."""


class StoreUnavailable(RetryLater):
    """The database did not answer or dropped the connection."""
