"""A slow item fetcher makes the poller wait: memory does not grow."""

from __future__ import annotations

import trio

from batchwarden.actors.messages import FetchQueue
from batchwarden.actors.poller import poll_cycle
from batchwarden.actors.submitter import submit
from batchwarden.config import Secret, Settings
from batchwarden.mockprovider import Behaviour, Duration, MockProvider, serve_mock
from batchwarden.providers.anthropic import AnthropicProvider
from batchwarden.store import open_store
from batchwarden.supervisor.leadership import LeaderContext
from batchwarden.telemetry.metrics import Metrics
from tests.harness import requests


async def wait_until(predicate) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


async def test_a_full_fetch_channel_blocks_the_poll_cycle(nursery, sqlite_url):
    mock = MockProvider(behaviour=Behaviour(processing=Duration("fixed", 0.05)))
    url = f"http://127.0.0.1:{await nursery.start(serve_mock, mock)}"
    provider = AnthropicProvider(base_url=url, api_key="k", timeout_s=5)
    async with open_store(sqlite_url, instance_id="solo") as store:
        term = await store.bump_term("solo")
        settings = Settings(database_url=sqlite_url, anthropic_api_key=Secret("k"))
        context = LeaderContext(store, settings, term, Metrics())
        for _ in range(3):
            await store.create_job(requests(5))
        for job in await store.claim_jobs(term=term, limit=10):
            await submit(context, provider, job)
        await trio.sleep(0.2)  # every provider batch has ended

        send, receive = trio.open_memory_channel(1)
        cycle_done = trio.Event()

        async def cycle() -> None:
            await poll_cycle(context, provider, FetchQueue(send))
            cycle_done.set()

        nursery.start_soon(cycle)
        fetched = []
        for _ in range(2):
            await wait_until(lambda: send.statistics().tasks_waiting_send == 1)
            assert send.statistics().current_buffer_used == 1
            assert not cycle_done.is_set()
            fetched.append(receive.receive_nowait().batch.id)
        fetched.append((await receive.receive()).batch.id)
        await cycle_done.wait()
        assert len(set(fetched)) == 3
        assert send.statistics().current_buffer_used == 0
