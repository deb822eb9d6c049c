"""Item fetcher: ended batches -> streamed results -> items, terminal job.

Owns: ingesting one batch at a time. Results stream from the provider and
are written in chunks of `RESULTS_CHUNK` rows, each chunk one fenced,
idempotent transaction; reading the next chunk overlaps writing the last, so
memory holds at most three chunks, whatever the batch's size. The metrics
count what each transaction reports it stored, so a repeated fetch counts
nothing twice.
The last chunk's transaction also marks the batch stored and, when it was
the job's last batch, ends the job and writes its callback. A stream that
breaks midway leaves the batch unstored (the chunks read before the break
are stored): the poller sends it again on a later cycle, and the rows
already written are skipped on the primary key.
Results for custom_ids the job lacks are counted and dropped.
"""

from __future__ import annotations

import logging
from contextlib import aclosing, suppress

import trio

from batchwarden.actors.messages import CallbackDue, FetchQueue, FetchResults
from batchwarden.providers.anthropic import (
    AnthropicProvider,
    BatchNotFound,
    ProviderUnavailable,
)
from batchwarden.store.records import ProviderBatch, ResultRow, Tally
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
    other writes the last; the channel between them holds one chunk. A
    stream that breaks ends the reading only: the chunks already read are
    still stored, and no write is cut off between its commit and its count."""
    send, receive = trio.open_memory_channel[list[ResultRow]](1)
    attributes = {
        "batchwarden.job_id": batch.job_id,
        "batchwarden.provider_batch_id": batch.provider_batch_id,
    }
    broken: list[ProviderUnavailable] = []
    with tracer.start_as_current_span("batchwarden.ingest", attributes=attributes):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_chunks, provider, batch, context, send, broken)
            async with receive:
                async for chunk in receive:
                    await _store(context, batch, chunk, last=False)
        if broken:
            raise broken[0]
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
    broken: list[ProviderUnavailable],
) -> None:
    """Whole chunks to `send`; a broken stream is put in `broken`, and the
    part of a chunk read before the break is dropped (fetched again)."""
    size = context.settings.results_chunk
    chunk: list[ResultRow] = []
    async with send, aclosing(provider.results(batch.provider_batch_id)) as pieces:
        try:
            async for piece in pieces:
                chunk += piece
                while len(chunk) >= size:
                    await send.send(chunk[:size])
                    chunk = chunk[size:]
        except ProviderUnavailable as error:
            broken.append(error)
            return
        if chunk:
            await send.send(chunk)


async def _store(context: LeaderContext, batch: ProviderBatch, chunk, *, last: bool):
    outcome, ended = await context.store.store_results(
        batch,
        chunk,
        last=last,
        term=context.term,
        max_attempts=context.settings.item_max_attempts,
    )
    _count(context, outcome.tally)
    if outcome.unknown:
        log.warning(
            "%d results for custom_ids the job lacks were dropped",
            outcome.unknown,
            extra={"job_id": batch.job_id, "batch_id": batch.provider_batch_id},
        )
    return ended


def _count(context: LeaderContext, tally: Tally) -> None:
    """Only what the transaction stored: a repeated fetch, a duplicate or an
    unknown custom_id counts nothing."""
    metrics = context.metrics
    for status, count in tally.by_status.items():
        metrics.items_ingested.labels(status).inc(count)
    for model, usage in tally.tokens_by_model.items():
        for kind, tokens in usage.as_dict().items():
            if tokens:
                metrics.tokens.labels(model, kind).inc(tokens)
