"""Capacity-aware submission: the provider's processing queue stays under
PROVIDER_QUEUE_LIMIT, and a full queue means waiting, not failing."""

from __future__ import annotations

import pytest

from batchwarden.mockprovider import Duration
from batchwarden.states import JobStatus
from tests.harness import Harness, requests, wait_terminal


@pytest.fixture
async def harness(nursery, database_url, store):
    harness = Harness(nursery, database_url)
    harness.store = store
    await harness.start_servers()
    harness.provider.behaviour.processing = Duration("fixed", 1.0)
    yield harness
    nursery.cancel_scope.cancel()


async def submit_five(harness: Harness) -> list[str]:
    ids = []
    for number in range(5):
        job, _ = await harness.store.create_job(requests(500, prefix=f"q{number}"))
        ids.append(job.id)
    return ids


async def test_the_queue_never_holds_more_than_the_limit(harness):
    await harness.start_replica(provider_queue_limit=1000, poll_interval=0.2)
    job_ids = await submit_five(harness)
    for job_id in job_ids:
        ended = await wait_terminal(harness.store, job_id, timeout=90)
        assert ended.status is JobStatus.COMPLETED
    stats = harness.provider.stats
    assert stats.max_processing_requests == 1000
    assert stats.requests_created == 2500
    assert stats.endpoints["create"].statuses.get(429, 0) == 0
    created = []
    for job_id in job_ids:
        detail = await harness.store.job_detail(job_id)
        created.append(detail.provider_batches[0].created_at)
    assert created == sorted(created), "jobs reached the provider out of order"


async def test_a_provider_that_says_full_makes_the_submitter_wait(harness):
    harness.provider.behaviour.queue_limit = 1000
    harness.provider.faults.retry_after_s = 0.2
    await harness.start_replica(poll_interval=0.2)
    job_ids = await submit_five(harness)
    for job_id in job_ids:
        ended = await wait_terminal(harness.store, job_id, timeout=90)
        assert ended.status is JobStatus.COMPLETED
    stats = harness.provider.stats
    assert stats.max_processing_requests <= 1000
    assert stats.queue_full > 0
