"""Census: the leader's count of jobs by status, for the metrics.

Owns: the `batchwarden_jobs{status}` and
`batchwarden_oldest_job_age_seconds{status}` gauges. Once per
`POLL_INTERVAL` it reads one grouped count and the oldest open job of each
status, so a scrape never waits on the database and the count costs the same
however often Prometheus scrapes. Only the leader counts: when its term ends the gauges
are cleared, so a dashboard's max over replicas shows the current leader's
view.
"""

from __future__ import annotations

import logging

import trio

from batchwarden.errors import RetryLater
from batchwarden.supervisor.leadership import LeaderContext

log = logging.getLogger(__name__)


async def census(context: LeaderContext) -> None:
    metrics = context.metrics
    try:
        while True:
            try:
                counted = await context.store.job_census()
            except RetryLater as exc:
                log.info("job census skipped: %s", exc)
            else:
                for status, count in counted.counts.items():
                    metrics.jobs.labels(status).set(count)
                for status, age in counted.oldest_s.items():
                    metrics.oldest_job_age.labels(status).set(age)
            await trio.sleep(context.settings.poll_interval)
    finally:
        metrics.forget_jobs()
