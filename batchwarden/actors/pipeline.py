"""The leader's pipeline: one nursery of actors and the channels between them.

    reaper --SubmitJob--> submitter --(provider batches)--> poller
    poller --FetchResults (bounded)--> item fetcher --CallbackDue--> sender
    census (jobs by status, for the metrics)

Each channel is bounded; its depth is a metric.
"""

from __future__ import annotations

import trio

from batchwarden.actors.callback_sender import callback_sender
from batchwarden.actors.census import census
from batchwarden.actors.fetcher import fetcher
from batchwarden.actors.messages import CallbackDue, FetchQueue, FetchResults, SubmitJob
from batchwarden.actors.poller import poller
from batchwarden.actors.reaper import reaper
from batchwarden.actors.submitter import submitter
from batchwarden.providers.anthropic import AnthropicProvider
from batchwarden.supervisor.leadership import LeaderContext

FETCH_CAPACITY = 4
SUBMIT_CAPACITY = 100


def provider_for(context: LeaderContext) -> AnthropicProvider:
    settings = context.settings
    key = settings.anthropic_api_key
    return AnthropicProvider(
        base_url=settings.provider_url,
        api_key=key.reveal() if key is not None else None,
        timeout_s=settings.provider_timeout,
        metrics=context.metrics,
    )


async def pipeline(context: LeaderContext) -> None:
    provider = provider_for(context)
    metrics = context.metrics
    submit_send, submit_receive = trio.open_memory_channel[SubmitJob](SUBMIT_CAPACITY)
    fetch_send, fetch_receive = trio.open_memory_channel[FetchResults](FETCH_CAPACITY)
    poke_send, poke_receive = trio.open_memory_channel[CallbackDue](1)
    metrics.watch_channel("submit", submit_send)
    metrics.watch_channel("fetch", fetch_send)
    queue = FetchQueue(fetch_send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reaper, context, submit_send)
        nursery.start_soon(submitter, context, provider, submit_receive)
        nursery.start_soon(poller, context, provider, queue)
        nursery.start_soon(fetcher, context, provider, fetch_receive, queue, poke_send)
        nursery.start_soon(callback_sender, context, poke_receive)
        nursery.start_soon(census, context)
