"""Submitter: created jobs -> pending -> provider batches -> running.

Owns: claiming created jobs (oldest first) and creating their provider
batches. A job larger than the provider's limits is split, by request count
and by bytes, into parts of consecutive items. Each part is recorded
(`creating`) before it is created at the provider and gets its provider id
after; the job moves to running in the transaction that records its last
part. A job whose submission was interrupted (a crash, a hand-over) is
resumed from its first part without a provider id.

Retry rounds: when a job's last batch is stored and some items ended
retryably (expired, or errored for the provider's reasons) with attempts
left under `ITEM_MAX_ATTEMPTS`, the item fetcher records the first part of
the next attempt (`creating`, no provider id); the submitter finds it here
and creates that attempt's parts like the first attempt's, from the items
whose previous attempt ended retryably. The job stays running meanwhile.

With `PROVIDER_QUEUE_LIMIT` set, a part is created only when the requests
already at the provider (in provider batches still in progress) plus its own
stay under the limit; until then the submitter waits, and the jobs behind
it wait their turn, so jobs reach the provider in the order they arrived.
A part is never larger than the limit. A 429 on create (the provider's
queue is full for reasons of its own) is an outage: wait and retry.

Errors: a rejection fails the job with the provider's message (parts
already created stay listed on the job); an outage is retried with backoff
and the provider's `retry-after`, the job staying pending meanwhile. A
cancel asked before submission ends the job `cancelled`.

Known gap: a crash between the provider's create and the recording of its id
creates that part again on resume; the provider then processes it twice.
The provider's API takes no idempotency key for batch creation.
"""

from __future__ import annotations

import json
import logging

import trio

from batchwarden.actors.backoff import Backoff
from batchwarden.actors.messages import SubmitJob
from batchwarden.config import Settings
from batchwarden.providers.anthropic import (
    AnthropicProvider,
    ProviderRejected,
    ProviderUnavailable,
)
from batchwarden.store.records import Job
from batchwarden.supervisor.leadership import LeaderContext

log = logging.getLogger(__name__)

CLAIM_LIMIT = 10
IDLE_S = 1.0
ROOM_CHECK_S = 5.0


def plan_parts(sizes: list[int], max_requests: int, max_bytes: int) -> list[tuple]:
    """(first position, count) of each part, greedy in submission order."""
    parts: list[tuple[int, int]] = []
    first, count, size = 0, 0, 0
    for position, item_size in enumerate(sizes):
        if count and (count == max_requests or size + item_size > max_bytes):
            parts.append((first, count))
            first, count, size = position, 0, 0
        count += 1
        size += item_size
    if count:
        parts.append((first, count))
    return parts


async def submitter(
    context: LeaderContext,
    provider: AnthropicProvider,
    reclaimed: trio.MemoryReceiveChannel[SubmitJob],
) -> None:
    store, term = context.store, context.term
    backoff = Backoff()
    while True:
        jobs = await store.claim_jobs(term=term, limit=CLAIM_LIMIT)
        context.metrics.job_transitions.labels("pending").inc(len(jobs))
        jobs += [await store.get_job(m.job_id) for m in _drain(reclaimed)]
        for job in jobs:
            await _submit_until_done(context, provider, job, backoff)
        rounds = await store.retry_rounds()
        for job_id, attempt in rounds:
            job = await store.get_job(job_id)
            await _submit_until_done(context, provider, job, backoff, attempt)
        if not jobs and not rounds:
            with trio.move_on_after(IDLE_S):
                message = await reclaimed.receive()
                job = await store.get_job(message.job_id)
                await _submit_until_done(context, provider, job, backoff)


def _drain(channel: trio.MemoryReceiveChannel[SubmitJob]) -> list[SubmitJob]:
    messages = []
    while True:
        try:
            messages.append(channel.receive_nowait())
        except trio.WouldBlock:
            return messages


async def _submit_until_done(
    context: LeaderContext,
    provider: AnthropicProvider,
    job: Job,
    backoff: Backoff,
    attempt: int = 1,
) -> None:
    while True:
        try:
            await submit(context, provider, job, attempt)
            backoff.reset()
            return
        except ProviderRejected as exc:
            log.warning("provider rejected job: %s", exc, extra={"job_id": job.id})
            await context.store.fail_job(job.id, str(exc), term=context.term)
            context.metrics.job_transitions.labels("failed").inc()
            return
        except ProviderUnavailable as exc:
            delay = backoff.next(exc.retry_after_s)
            log.info(
                "provider unavailable, retrying: %s",
                exc,
                extra={"job_id": job.id, "sleep_s": round(delay, 3)},
            )
            await trio.sleep(delay)
            job = await context.store.get_job(job.id)


def part_limit(settings: Settings) -> int:
    """Most requests in one part: the provider's batch limit, and no more
    than fits in its processing queue on its own."""
    limit = settings.batch_max_requests
    if settings.provider_queue_limit is not None:
        limit = min(limit, settings.provider_queue_limit)
    return limit


async def _wait_for_room(context: LeaderContext, job: Job, count: int) -> None:
    """Wait until `count` more requests fit under PROVIDER_QUEUE_LIMIT. The
    jobs behind this one wait too: the submitter serves them in order."""
    limit = context.settings.provider_queue_limit
    if limit is None:
        return
    logged = False
    while (queued := await context.store.requests_in_flight()) + count > limit:
        if not logged:
            log.info(
                "provider queue holds %d of %d requests: waiting to add %d",
                queued,
                limit,
                count,
                extra={"job_id": job.id},
            )
            logged = True
        await trio.sleep(min(context.settings.poll_interval, ROOM_CHECK_S))


async def submit(
    context: LeaderContext, provider: AnthropicProvider, job: Job, attempt: int = 1
) -> None:
    """Create the parts of one attempt of a job that are not created yet."""
    store, term, settings = context.store, context.term, context.settings
    if job.cancel_requested_at is not None:
        await _cancel_before_submission(context, job, attempt)
        return
    sizes = await store.item_sizes(job.id, attempt)
    parts = plan_parts(sizes, part_limit(settings), settings.batch_max_bytes)
    recorded = await store.submission_parts(job.id, attempt)
    existing = {p.first_position: p for p in recorded}
    for index, (first, count) in enumerate(parts):
        part = existing.get(first)
        if part is not None and part.provider_batch_id is not None:
            continue
        await _wait_for_room(context, job, count)
        if part is None:
            part = await store.add_provider_batch(
                job.id,
                attempt=attempt,
                request_count=count,
                first_position=first,
                processing_status="creating",
                term=term,
            )
        items = await store.items_range(job.id, first, count, attempt)
        requests = [{"custom_id": c, "params": json.loads(p)} for c, p in items]
        state = await provider.create(requests)
        first_attempt_done = attempt == 1 and index == len(parts) - 1
        await store.record_created(
            part.id,
            state.id,
            processing_status=state.processing_status,
            expires_at=state.expires_at,
            job_id=job.id,
            last=first_attempt_done,
            term=term,
            request_count=count,
        )
        if first_attempt_done:
            context.metrics.job_transitions.labels("running").inc()
        log.info(
            "created provider batch %s (%d items, attempt %d)",
            state.id,
            count,
            attempt,
            extra={"job_id": job.id, "batch_id": state.id, "attempt": attempt},
        )


async def _cancel_before_submission(
    context: LeaderContext, job: Job, attempt: int
) -> None:
    if attempt == 1:
        await context.store.cancel_pending(job.id, term=context.term)
        context.metrics.job_transitions.labels("cancelled").inc()
        return
    ended = await context.store.skip_round(job.id, attempt, term=context.term)
    if ended is not None:
        context.metrics.job_transitions.labels(ended.status.value).inc()
