"""What a replica believes about leadership, and what its workers receive."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batchwarden.config import Settings
from batchwarden.store import SqlStore
from batchwarden.supervisor.lock import LockSession
from batchwarden.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderContext:
    """Handed to each leader-only actor: every write it makes carries `term`."""

    store: SqlStore
    settings: Settings
    term: int
    metrics: Metrics

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id


LeaderActor = Callable[[LeaderContext], Awaitable[None]]


@dataclass(frozen=True)
class LockAcquired:
    """Lock retry -> lock holder: the lock is ours since at most `started`."""

    session: LockSession
    started: float


@dataclass(frozen=True)
class LockReleased:
    """Lock holder -> lock retry: leadership ended; campaign again."""

    reason: str


class Leadership:
    """This replica's belief, for metrics, readiness and the logs."""

    def __init__(self, instance_id: str, metrics: Metrics) -> None:
        self.instance_id = instance_id
        self.metrics = metrics
        self.term = 0
        self.leading = False

    def became_leader(self, term: int) -> None:
        self.term, self.leading = term, True
        self.metrics.leader.set(1)
        self.metrics.leader_term.set(term)
        self.metrics.leadership_transitions.labels("acquired").inc()
        log.info(
            "leading in term %d",
            term,
            extra={"instance": self.instance_id, "term": term},
        )

    def stepped_down(self, reason: str) -> None:
        if not self.leading:
            return
        self.leading = False
        self.metrics.leader.set(0)
        self.metrics.leadership_transitions.labels(reason).inc()
        level = logging.INFO if reason == "shutdown" else logging.WARNING
        log.log(
            level,
            "stepped down: %s",
            reason,
            extra={"instance": self.instance_id, "term": self.term},
        )
