"""Item fetcher: ended batches -> streamed results -> items, terminal job.

Owns: ingesting one batch at a time. Results stream from the provider and
are written in chunks of `RESULTS_CHUNK` rows, each chunk one fenced,
idempotent transaction; reading the next chunk overlaps writing the last, so
memory holds at most three chunks, whatever the batch's size.
The last chunk's transaction also marks the batch stored and, when it was
the job's last batch, ends the job and writes its callback. A stream that
breaks midway leaves the batch unstored: the poller sends it again on a
later cycle, and the rows already written are skipped on the primary key.
Results for custom_ids the job lacks are counted and dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import aclosing, suppress

import trio

from batchwarden.actors.messages import CallbackDue, FetchQueue, FetchResults
from batchwarden.providers.anthropic import (
    AnthropicProvider,
    BatchNotFound,
    ProviderUnavailable,
)
from batchwarden.states import ItemStatus
from batchwarden.store.records import ProviderBatch, ResultRow, Usage
from batchwarden.supervisor.leadership import LeaderContext
from batchwarden.telemetry.tracing import tracer

log = logging.getLogger(__name__)


async def fetcher(
    context: LeaderContext,
    provider: AnthropicProvider,
    batches: trio.MemoryReceiveChannel[FetchResults],
    queue: FetchQueue,
    callbacks: trio.MemorySendChannel[CallbackDue],
) -> None:
    async for message in batches:
        batch = message.batch
        extra = {"job_id": batch.job_id, "batch_id": batch.provider_batch_id}
        gone = False
        try:
            await ingest(context, provider, batch, callbacks)
        except* ProviderUnavailable as group:
            error = group.exceptions[0]
            log.warning("results stream broke, to fetch again: %s", error, extra=extra)
        except* BatchNotFound as group:
            log.error("results are gone: %s", group.exceptions[0], extra=extra)
            gone = True
        finally:
            queue.done(batch.id)
        if gone:
            await context.store.vanish(batch.id, batch.job_id, term=context.term)


async def ingest(
    context: LeaderContext,
    provider: AnthropicProvider,
    batch: ProviderBatch,
    callbacks: trio.MemorySendChannel[CallbackDue],
) -> None:
    """Stream and store at once: one task reads the next chunk while the
    other writes the last; the channel between them holds one chunk."""
    send, receive = trio.open_memory_channel[list[ResultRow]](1)
    attributes = {
        "batchwarden.job_id": batch.job_id,
        "batchwarden.provider_batch_id": batch.provider_batch_id,
    }
    with tracer.start_as_current_span("batchwarden.ingest", attributes=attributes):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_chunks, provider, batch, context, send)
            async with receive:
                async for chunk in receive:
                    await _store(context, batch, chunk, last=False)
        ended = await _store(context, batch, [], last=True)
    if ended is not None and ended.callback:
        # A poke already waiting is enough: the sender will look anyway.
        with suppress(trio.WouldBlock):
            callbacks.send_nowait(CallbackDue())
    if ended is not None:
        context.metrics.job_transitions.labels(ended.status.value).inc()
        log.info("job ended: %s", ended.status.value, extra={"job_id": ended.job_id})


async def _read_chunks(
    provider: AnthropicProvider,
    batch: ProviderBatch,
    context: LeaderContext,
    send: trio.MemorySendChannel[list[ResultRow]],
) -> None:
    size = context.settings.results_chunk
    chunk: list[ResultRow] = []
    async with send, aclosing(provider.results(batch.provider_batch_id)) as pieces:
        async for piece in pieces:
            chunk += piece
            while len(chunk) >= size:
                await send.send(chunk[:size])
                chunk = chunk[size:]
        if chunk:
            await send.send(chunk)


def _count_tokens(context: LeaderContext, chunk: list[ResultRow], stored: int) -> None:
    """Tokens of the rows just stored (a repeated fetch stores none)."""
    if not stored:
        return
    by_model: dict[str, Usage] = {}
    for row in chunk:
        if row.status is ItemStatus.SUCCEEDED:
            model = row.model or "unknown"
            by_model[model] = by_model.get(model, Usage()) + row.usage
    for model, usage in by_model.items():
        for kind, tokens in usage.as_dict().items():
            if tokens:
                context.metrics.tokens.labels(model, kind).inc(tokens)


async def _store(context: LeaderContext, batch: ProviderBatch, chunk, *, last: bool):
    outcome, ended = await context.store.store_results(
        batch,
        chunk,
        last=last,
        term=context.term,
        max_attempts=context.settings.item_max_attempts,
    )
    counter = context.metrics.items_ingested
    for status, count in Counter(row.status.value for row in chunk).items():
        counter.labels(status).inc(count)
    _count_tokens(context, chunk, outcome.stored)
    if outcome.unknown:
        log.warning(
            "%d results for custom_ids the job lacks were dropped",
            outcome.unknown,
            extra={"job_id": batch.job_id, "batch_id": batch.provider_batch_id},
        )
    return ended
