"""Poller: running provider batches -> provider status -> one bulk update.

Owns: the poll cycle. Every `POLL_INTERVAL` (with 10% jitter) it retrieves
the open batches, least recently polled first, concurrently under
`PROVIDER_CONCURRENCY`; writes every status change of the cycle in one
set-based, fenced statement; and sends ended batches whose results are not
stored to the item fetcher over a bounded channel. When the fetcher is
slow, the send waits: the poller slows down instead of memory growing.

It also carries out cancel requests (the provider's cancel for each open
batch of a job whose cancel was asked).

Retention guard: the provider archives a batch's results
`RESULTS_RETENTION` after its creation. Ended batches are fetched oldest
first, and those within `ARCHIVE_MARGIN` of that time are logged and counted
(`batchwarden_results_near_archive`) each cycle until stored.

A batch the provider does not know is taken for propagation delay for
`PROPAGATION_S` after its creation; after that, the batch has vanished and
its job fails.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

import trio

from batchwarden.actors.messages import FetchQueue
from batchwarden.providers.anthropic import (
    AnthropicProvider,
    BatchNotFound,
    BatchState,
    ProviderUnavailable,
)
from batchwarden.store.pipeline import PollUpdate
from batchwarden.store.queries import now
from batchwarden.store.records import ProviderBatch
from batchwarden.supervisor.leadership import LeaderContext
from batchwarden.telemetry.tracing import tracer

log = logging.getLogger(__name__)

CYCLE_LIMIT = 10_000
PROPAGATION_S = 60.0


async def poller(
    context: LeaderContext, provider: AnthropicProvider, fetch: FetchQueue
) -> None:
    while True:
        await poll_cycle(context, provider, fetch)
        interval = context.settings.poll_interval
        await trio.sleep(interval * random.uniform(0.9, 1.1))


async def poll_cycle(
    context: LeaderContext, provider: AnthropicProvider, fetch: FetchQueue
) -> None:
    """One cycle, in a span whose children are its provider calls."""
    started = time.perf_counter()
    with tracer.start_as_current_span("batchwarden.poll_cycle") as span:
        polled = await _cycle(context, provider, fetch)
        span.set_attribute("batchwarden.batches", polled)
    context.metrics.poll_cycle.observe(time.perf_counter() - started)


async def _cycle(
    context: LeaderContext, provider: AnthropicProvider, fetch: FetchQueue
) -> int:
    store = context.store
    await _carry_out_cancels(context, provider)
    batches = await store.open_batches(limit=CYCLE_LIMIT)
    states = await _retrieve_all(context, provider, batches)
    updates = [_update(batch, state) for batch, state in states if state is not None]
    await store.record_polls(updates, term=context.term)
    for batch, state in states:
        if state is None:
            await _not_found(context, batch)
    unfetched = await store.unfetched_batches()
    _guard_retention(context, unfetched)
    for batch in unfetched:
        await fetch.send(batch)
    return len(batches)


def _guard_retention(context: LeaderContext, unfetched: list[ProviderBatch]) -> None:
    """Warn about, and count, results the provider will soon archive; they
    are first in line already (`unfetched_batches` orders by creation)."""
    settings = context.settings
    retention = timedelta(seconds=settings.results_retention)
    margin = timedelta(seconds=settings.archive_margin)
    stamp = now()
    near = [b for b in unfetched if b.created_at + retention - stamp < margin]
    context.metrics.near_archive.set(len(near))
    for batch in near:
        left = (batch.created_at + retention - stamp).total_seconds()
        log.warning(
            "results of provider batch %s are not stored and will be archived"
            " in %.0f s",
            batch.provider_batch_id,
            max(left, 0.0),
            extra={"job_id": batch.job_id, "batch_id": batch.provider_batch_id},
        )


async def _retrieve_all(
    context: LeaderContext, provider: AnthropicProvider, batches: list[ProviderBatch]
) -> list[tuple[ProviderBatch, BatchState | None]]:
    limiter = trio.CapacityLimiter(context.settings.provider_concurrency)
    found: list[tuple[ProviderBatch, BatchState | None]] = []
    polls = context.metrics.polls

    async def retrieve(batch: ProviderBatch) -> None:
        async with limiter:
            try:
                found.append((batch, await provider.retrieve(batch.provider_batch_id)))
                polls.labels("success").inc()
            except BatchNotFound:
                polls.labels("failure").inc()
                found.append((batch, None))
            except ProviderUnavailable as exc:
                polls.labels("failure").inc()
                log.info("poll failed: %s", exc, extra={"batch_id": batch.id})

    async with trio.open_nursery() as nursery:
        for batch in batches:
            nursery.start_soon(retrieve, batch)
    return found


def _update(batch: ProviderBatch, state: BatchState) -> PollUpdate:
    return PollUpdate(
        batch_id=batch.id,
        processing_status=state.processing_status,
        request_counts=state.request_counts,
        ended_at=state.ended_at,
        expires_at=state.expires_at,
        archived_at=state.archived_at,
    )


async def _not_found(context: LeaderContext, batch: ProviderBatch) -> None:
    if now() - batch.created_at < timedelta(seconds=PROPAGATION_S):
        return
    log.error(
        "the provider no longer knows batch %s",
        batch.provider_batch_id,
        extra={"job_id": batch.job_id, "batch_id": batch.provider_batch_id},
    )
    await context.store.vanish(batch.id, batch.job_id, term=context.term)
    context.metrics.job_transitions.labels("failed").inc()


async def _carry_out_cancels(
    context: LeaderContext, provider: AnthropicProvider
) -> None:
    for batch in await context.store.cancel_requests():
        try:
            state = await provider.cancel(batch.provider_batch_id)
        except (ProviderUnavailable, BatchNotFound) as exc:
            log.info(
                "cancel failed, will retry: %s", exc, extra={"job_id": batch.job_id}
            )
            continue
        await context.store.record_polls([_update(batch, state)], term=context.term)
        log.info("cancelled provider batch", extra={"job_id": batch.job_id})
