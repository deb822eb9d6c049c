"""The retention guard: results the provider will soon archive are fetched
first, logged and counted."""

from __future__ import annotations

import logging
from dataclasses import replace

import trio

from batchwarden.actors.messages import FetchQueue
from batchwarden.actors.poller import poll_cycle
from batchwarden.actors.submitter import submit
from batchwarden.mockprovider import Duration
from batchwarden.providers.anthropic import AnthropicProvider
from batchwarden.supervisor.leadership import LeaderContext
from batchwarden.telemetry.metrics import Metrics
from tests.harness import Harness, requests


async def submitted(context, adapter, store, prefix: str) -> None:
    await store.create_job(requests(3, prefix=prefix))
    [job] = await store.claim_jobs(term=context.term, limit=1)
    await submit(context, adapter, job)


async def test_results_near_archive_go_first_and_are_counted_and_logged(
    nursery, database_url, store, caplog
):
    harness = Harness(nursery, database_url)
    await harness.start_servers()
    term = await store.bump_term("retention-test")
    settings = harness.settings(results_retention=3600.0, archive_margin=86_400.0)
    context = LeaderContext(store, settings, term, Metrics())
    adapter = AnthropicProvider(base_url=harness.provider_url, api_key="k")
    harness.provider.behaviour.processing = Duration("fixed", 1.0)
    await submitted(context, adapter, store, "old")
    harness.provider.behaviour.processing = Duration("fixed", 0.05)
    await submitted(context, adapter, store, "new")
    await trio.sleep(1.2)  # both ended; the newer batch ended first

    send, receive = trio.open_memory_channel(10)
    with caplog.at_level(logging.WARNING, logger="batchwarden.actors.poller"):
        await poll_cycle(context, adapter, FetchQueue(send))
    first, second = receive.receive_nowait().batch, receive.receive_nowait().batch
    assert first.created_at < second.created_at and first.ended_at > second.ended_at
    assert context.metrics.near_archive._value.get() == 2
    warnings = [
        r.getMessage() for r in caplog.records if "archived in" in r.getMessage()
    ]
    assert len(warnings) == 2 and first.provider_batch_id in warnings[0]

    relaxed = replace(
        context, settings=replace(settings, results_retention=29 * 86_400)
    )
    await poll_cycle(relaxed, adapter, FetchQueue(trio.open_memory_channel(10)[0]))
    assert relaxed.metrics.near_archive._value.get() == 0
